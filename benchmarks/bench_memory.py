"""Peak memory of gcsemb.decode.decode_image against image size, kind and count (issue 14).

Each case runs in a fresh subprocess that first reads its files, then decodes; the table shows how
far the peak resident set (``ru_maxrss``) rose above the resident set just before decoding, next to
the bytes PIL stores for the decoded pixels ("decoded"). ``--baseline REV`` also runs the single-
image cases with ``gcsemb/decode.py`` as of a git revision (e.g. one before issue 14).

Run: nice .venv/bin/python benchmarks/bench_memory.py [--baseline e4ea344] [--cache DIR]
Images are generated once into the cache (default: $TMPDIR/gcsemb-bench-memory), ~1 minute.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import PIL
from PIL import Image

MB = 1e6


def gradient_u16(width: int, height: int) -> np.ndarray:
    """A smooth 16-bit diagonal ramp with ripples, built row block by row block."""
    out = np.empty((height, width), np.uint16)
    x = np.arange(width, dtype=np.float32)
    for top in range(0, height, 512):
        y = np.arange(top, min(height, top + 512), dtype=np.float32)[:, None]
        v = (x + y) / (width + height) * 60000 + 2000 * np.sin(x / 97) * np.cos(y / 61)
        out[top : top + len(y)] = np.clip(v, 0, 65535)
    return out


def photo_rgb(width: int, height: int) -> Image.Image:
    """Smooth colour gradients plus mild noise: compresses and decodes like a photo."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    rgb = np.stack([x / width * 255, y / height * 255, (x + y) / (width + height) * 255], axis=-1)
    rgb += 40 * np.sin(x / 37.0)[..., None] + rng.normal(0, 8, rgb.shape).astype(np.float32)
    return Image.fromarray(np.clip(rgb, 0, 255).astype(np.uint8))


def float_tiles(width: int, height: int) -> np.ndarray:
    """Float32 in [-1000, 2900]: tiles of 40 levels, so deflate keeps the file small."""
    out = np.empty((height, width), np.float32)
    x = np.arange(width) // 50
    for top in range(0, height, 512):
        y = np.arange(top, min(height, top + 512))[:, None] // 50
        out[top : top + len(y)] = ((x + y) % 40) * 100.0 - 1000.0
    return out


IMAGES = {  # file name -> (description, maker)
    "photo-12mp.jpg": ("12 MP JPEG (4000x3000)", lambda: (photo_rgb(4000, 3000), {"quality": 90})),
    "gray16-9000.png": (
        "9000x9000 16-bit PNG",
        lambda: (Image.fromarray(gradient_u16(9000, 9000)), {"compress_level": 1}),
    ),
    "float-8000.tif": (
        "8000x8000 float TIFF",
        lambda: (Image.fromarray(float_tiles(8000, 8000)), {"compression": "tiff_deflate"}),
    ),
    "rgb-8000x6000.png": (
        "8000x6000 RGB PNG",
        lambda: (photo_rgb(8000, 6000), {"compress_level": 1}),
    ),
}


def ensure_images(cache: Path) -> dict[str, Path]:
    cache.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, (_, make) in IMAGES.items():
        path = paths[name] = cache / name
        if not path.exists():
            print(f"generating {path} ...", file=sys.stderr, flush=True)
            im, params = make()
            im.save(tmp := path.with_suffix(".part"), Image.registered_extensions()[path.suffix],
                    **params)  # fmt: skip
            tmp.rename(path)
    return paths


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(spec: dict) -> dict:
    """In a fresh process: read the files, decode them, report the rise of the peak RSS."""
    if spec.get("module"):
        loader = importlib.util.spec_from_file_location("decode_under_test", spec["module"])
        module = sys.modules[loader.name] = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        import gcsemb.decode as module
    datas = [Path(p).read_bytes() for p in spec["paths"]]
    kwargs: dict = {"min_side": spec["min_side"]}
    if "budget" in module.decode_image.__kwdefaults__:
        limit = spec.get("budget")
        kwargs["budget"] = module.PixelBudget(int(limit)) if limit else None
    before = max(rss_bytes(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)
    start = time.perf_counter()
    with ThreadPoolExecutor(spec.get("threads", 1)) as pool:
        decoded = list(pool.map(lambda d: module.decode_image(d, **kwargs), datas))
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    errors = [d.error for d in decoded if not d.ok]
    return {"rise": peak - before, "peak": peak, "seconds": seconds, "errors": errors}


def measure(spec: dict) -> dict:
    out = subprocess.run(
        [sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"worker failed for {spec}:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def decoded_size(path: Path) -> int:
    from gcsemb.decode import decoded_bytes

    with Image.open(path) as im:
        return decoded_bytes(im.size, im.mode)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir(), "gcsemb-bench-memory")
    )
    ap.add_argument("--baseline", help="git revision whose gcsemb/decode.py to compare with")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return
    paths = ensure_images(args.cache)
    baseline = None
    if args.baseline:
        src = subprocess.run(
            ["git", "show", f"{args.baseline}:gcsemb/decode.py"],
            capture_output=True,
            check=True,
            cwd=Path(__file__).resolve().parents[1],
        ).stdout
        baseline = Path(tempfile.mkdtemp(), "decode_baseline.py")
        baseline.write_bytes(src)

    gray16 = str(paths["gray16-9000.png"])
    cases = [  # (label, files, min_side, threads, budget bytes or None)
        *(
            (f"{IMAGES[name][0]}, {label}", [str(paths[name])], side, 1, None)
            for name in IMAGES
            for side, label in ((224, "min_side 224"), (None, "full size"))
        ),
        ("4 x 16-bit PNG, 2 threads, no budget", [gray16] * 4, 224, 2, 0),
        ("4 x 16-bit PNG, 2 threads, 1 GiB budget", [gray16] * 4, 224, 2, 2**30),
        ("4 x 16-bit PNG, 2 threads, 200 MiB budget", [gray16] * 4, 224, 2, 200 * 2**20),
    ]
    print(
        f"Pillow {PIL.__version__}, numpy {np.__version__}, Python {platform.python_version()}, "
        f"{os.cpu_count()} CPUs; rise = peak RSS - RSS after reading the files\n"
    )
    head = f"{'case':<46}{'file MB':>8}{'decoded MB':>11}{'rise MB':>9}{'rise/decoded':>13}{'s':>6}"
    print(head + ("  baseline: rise MB, rise/decoded, s" if baseline else ""))
    for label, files, side, threads, budget in cases:
        spec = {"paths": files, "min_side": side, "threads": threads, "budget": budget}
        got = measure(spec)
        assert not got["errors"], got["errors"]
        size = sum(decoded_size(Path(p)) for p in files[:threads])  # the most that can be in flight
        file_mb = sum(Path(p).stat().st_size for p in files) / MB
        line = (
            f"{label:<46}{file_mb:>8.0f}{size / MB:>11.0f}{got['rise'] / MB:>9.0f}"
            f"{got['rise'] / size:>13.2f}{got['seconds']:>6.1f}"
        )
        if baseline and not budget:  # the baseline has no budget
            old = measure({**spec, "module": str(baseline)})
            line += f"  {old['rise'] / MB:>9.0f}{old['rise'] / size:>13.2f}{old['seconds']:>6.1f}"
        print(line, flush=True)
    print("\ndecoded MB: PIL's storage of the full-size pixels (of the 2 in flight for 2 threads)")


if __name__ == "__main__":
    main()
