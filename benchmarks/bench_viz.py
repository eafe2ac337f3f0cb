"""Time the UMAP projection, the plot with thumbnails, and near-duplicate search at 10k and 100k.

The embeddings are random unit vectors of 512 dimensions in 50 clusters (Gaussian blobs on the
sphere), with 1% planted near-copies. Each projection runs twice in this process: the first call
includes numba's compile (or loading it from numba's on-disk cache), the second does not. Run once
with ``--cold`` (numba's cache moved to an empty temporary folder: a fresh machine) and once
without (the cache warm from an earlier run) to see both first-call costs.

Run: .venv/bin/python benchmarks/bench_viz.py [--sizes 10000 100000] [--cold] [--png-dir DIR]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path


def clustered(n: int, dim: int = 512, clusters: int = 50, seed: int = 0):
    """Unit vectors around ``clusters`` random centres, and 1% near-copies of other rows."""
    import numpy as np

    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, clusters, n)
    x = centres[labels] + 0.03 * rng.standard_normal((n, dim)).astype(np.float32)
    copies = rng.choice(n, n // 100, replace=False)
    x[copies[: len(copies) // 2]] = x[copies[len(copies) // 2 :]] + 0.002 * rng.standard_normal(
        (len(copies) // 2, dim)
    ).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), labels


def dummy_images(folder: Path, count: int = 200) -> list[str]:
    """``count`` small JPEGs of flat colours with a label, standing in for a bucket."""
    from PIL import Image, ImageDraw

    folder.mkdir(parents=True, exist_ok=True)
    uris = []
    for i in range(count):
        path = folder / f"img{i:03d}.jpg"
        if not path.exists():
            image = Image.new("RGB", (320, 240), ((i * 37) % 256, (i * 91) % 256, (i * 53) % 256))
            ImageDraw.Draw(image).text((20, 100), f"image {i}", fill="white")
            image.save(path, "JPEG", quality=85)
        uris.append(path.as_uri())
    return uris


def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--cold", action="store_true", help="numba cache in an empty folder")
    parser.add_argument("--thumbnails", type=int, default=100)
    parser.add_argument("--png-dir", default=None, help="keep the plots here")
    parser.add_argument("--no-duplicates", action="store_true", help="skip near_duplicates")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-viz-"))
    if args.cold:
        os.environ["NUMBA_CACHE_DIR"] = str(work / "numba")  # before numba is imported
    os.environ.setdefault("GCSEMB_CACHE", str(work / "cache"))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import pandas as pd

    from gcsemb.explore.duplicates import near_duplicates
    from gcsemb.explore.projection import umap_project
    from gcsemb.explore.umap_cache import import_umap
    from gcsemb.view.viz import THUMBNAIL_GID, plot_projection

    _, import_s = timed(import_umap)
    pool = dummy_images(work / "images")
    png_dir = Path(args.png_dir) if args.png_dir else work
    png_dir.mkdir(parents=True, exist_ok=True)
    print(
        f"# bench_viz: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {sys.version.split()[0]}, numba cache {'cold' if args.cold else 'as found'}"
    )
    print(f"import umap (+ pynndescent, numba cache on): {import_s:.1f} s")
    print(f"{'n':>7}  {'step':<36} {'seconds':>8}")
    for n in args.sizes:
        matrix, labels = clustered(n)
        frame = pd.DataFrame(
            {
                "uri": [pool[i % len(pool)] for i in range(n)],  # thumbnails need real files
                "md5": None,
                "cluster": [f"c{c:02d}" for c in labels],
                "model": "bench/random",
            }
        )
        # as if embedded from that folder: thumbnails are fetched only under a dataset's source
        frame.attrs["dataset"] = {"source": str(work / "images")}
        for call in ("1st", "2nd"):
            coords, seconds = timed(umap_project, (frame, matrix), save=False, seed=42)
            print(f"{n:>7}  {'umap_project (seed 42), ' + call + ' call':<36} {seconds:8.1f}")
        coords, seconds = timed(umap_project, (frame, matrix), save=False, seed=None)
        print(f"{n:>7}  {'umap_project (seed None: all cores)':<36} {seconds:8.1f}")
        for call in ("1st (fetch)", "2nd (cached)"):
            start = time.perf_counter()
            ax = plot_projection(coords, color_by="cluster", thumbnails=args.thumbnails)
            drawn = sum(1 for a in ax.artists if a.get_gid() == THUMBNAIL_GID)
            png = png_dir / f"umap-{n}.png"
            ax.figure.savefig(png, dpi=120)
            plt.close(ax.figure)
            seconds = time.perf_counter() - start
            label = f"plot + PNG, {drawn} thumbnails, {call}"
            print(f"{n:>7}  {label:<36} {seconds:8.1f}")
        if not args.no_duplicates:
            pairs, seconds = timed(near_duplicates, (frame, matrix), threshold=0.99)
            label = f"near_duplicates >= 0.99 ({len(pairs)} pairs)"
            print(f"{n:>7}  {label:<36} {seconds:8.1f}")
        del matrix, coords
    print(f"PNGs in {png_dir}")


if __name__ == "__main__":
    main()
