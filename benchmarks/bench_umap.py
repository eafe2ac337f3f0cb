"""UMAP at scale: gcsemb's ``umap_project`` beside plain umap-learn, time, peak memory, quality.

The embeddings: 512-d unit vectors in 2,000 clusters on the sphere plus noise (CLIP-like: an
image's cosine neighbours are its cluster mates), the same recipe as ``bench_explore.py``.

Per size, each measurement runs in a child process of its own, so its peak RSS (``VmHWM``) is
its own: ``gcsemb`` is :func:`gcsemb.umap_project` given the kNN graph (``knn=``, as it gets it
from the neighbour index), all cores; ``umap-learn`` is ``umap.UMAP(metric="cosine",
n_jobs=-1)`` computing its own neighbours (NN-descent), as a user would call it. Both report
wall and CPU seconds (on a shared machine CPU seconds are the steadier figure), umap's own
timestamped stage lines in ``<work>/<who>-<n>.npy.log`` (where the time goes), and the
neighbourhood preservation of the layout: the share of each point's 15 nearest neighbours by
cosine kept among its 15 nearest in 2-D, on a 100k sample.

The functions :func:`umap_rows` and :func:`print_rows` are what ``bench_explore.py`` imports for
its UMAP step.

Run: .venv/bin/python benchmarks/bench_umap.py [--sizes 100000 1000000]
    [--baseline-max 200000] [--init auto] [--epochs N]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

K = 15


def make_embeddings(n: int, dim: int = 512, clusters: int | None = None, seed: int = 0):
    """``(matrix, labels)``: ``n`` unit vectors around ``clusters`` random centres (2,000, or
    one per 50 points when that is fewer)."""
    clusters = clusters or min(2000, max(n // 50, 1))
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    labels = rng.integers(0, clusters, n)
    matrix = np.empty((n, dim), np.float32)
    for lo in range(0, n, 100_000):  # in blocks: no n x dim temporaries
        block = centres[labels[lo : lo + 100_000]]
        block += (0.6 / np.sqrt(dim)) * rng.standard_normal(block.shape, dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        matrix[lo : lo + 100_000] = block
    return matrix, labels


def cluster_knn(matrix: np.ndarray, labels: np.ndarray, k: int = K):
    """The exact cosine kNN graph of :func:`make_embeddings`' data (neighbours are cluster mates:
    random centres in 512-d are near-orthogonal), self first; seconds, not an O(n^2) search."""
    n = len(matrix)
    indices = np.empty((n, k), np.int64)
    distances = np.empty((n, k), np.float32)
    order = np.argsort(labels, kind="stable")
    bounds = np.searchsorted(labels[order], np.arange(labels.max() + 2))
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        rows = order[lo:hi]
        sims = matrix[rows] @ matrix[rows].T
        np.fill_diagonal(sims, 2.0)  # self first
        top = np.argsort(-sims, axis=1)[:, :k]
        indices[rows] = rows[top]
        distances[rows] = np.maximum(1 - np.take_along_axis(sims, top, axis=1), 0)
    return indices, distances


def _peak_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def child(which: str, n: int, out: str, options: dict[str, Any]) -> None:
    """One measurement, in this (child) process: prints a JSON line, saves the layout."""
    matrix, labels = make_embeddings(n)
    knn = cluster_knn(matrix, labels) if which == "gcsemb" else None
    del labels
    before = _peak_mb()
    wall, cpu = time.perf_counter(), _cpu_s()
    # umap's verbose stage lines (timestamped) go to OUT.log: where the time goes
    with open(f"{out}.log", "w") as log, contextlib.redirect_stdout(log):
        if which == "gcsemb":
            from gcsemb.explore.projection import umap_project

            coords = umap_project(
                matrix,
                knn=knn,
                backend="umap-learn",
                init=options["init"],
                n_epochs=options["epochs"],
                verbose=True,
            )
            xy = coords[["x", "y"]].to_numpy(np.float32)
        else:
            from gcsemb.explore.umap_cache import import_umap

            umap = import_umap()  # the same numba cache: no compile time in either figure
            reducer = umap.UMAP(metric="cosine", n_jobs=-1, low_memory=True, verbose=True)
            xy = reducer.fit_transform(matrix).astype(np.float32)
    wall, cpu = time.perf_counter() - wall, _cpu_s() - cpu
    np.save(out, xy)
    print(json.dumps({"wall": wall, "cpu": cpu, "peak_mb": _peak_mb(), "data_mb": before}))


def _measure(which: str, n: int, work: Path, options: dict[str, Any]) -> dict[str, Any]:
    out = work / f"{which}-{n}.npy"
    done = subprocess.run(
        [sys.executable, __file__, "--child", which, str(n), str(out), json.dumps(options)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"{which} at {n:,} failed:\n{done.stderr[-3000:]}")
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    figures["xy"] = np.load(out)
    return figures


def umap_rows(
    n: int,
    *,
    baseline: bool = True,
    init: str = "auto",
    epochs: int | None = None,
    work: Path | None = None,
) -> list[dict[str, Any]]:
    """gcsemb's and (if ``baseline``) plain umap-learn's figures at ``n`` points."""
    from gcsemb.explore.umap_backends import neighbourhood_preservation

    work = work or Path(tempfile.mkdtemp(prefix="bench-umap-"))
    options = {"init": init, "epochs": epochs}
    rows = []
    for which in ("gcsemb", "umap-learn") if baseline else ("gcsemb",):
        figures = _measure(which, n, work, options)
        rows.append({"n": n, "who": which, **figures})
    matrix, labels = make_embeddings(n)
    truth = cluster_knn(matrix, labels, K + 1)[0]
    del matrix
    for row in rows:
        row["kept"] = neighbourhood_preservation(truth, row.pop("xy"), k=K)
    return rows


def print_rows(rows: list[dict[str, Any]]) -> None:
    """The table: time, CPU time, peak RSS, preservation, and gcsemb's ratio to umap-learn."""
    print(f"{'n':>9}  {'umap':<11} {'wall s':>8} {'cpu s':>8} {'peak MB':>8} {'kept@15':>8}")
    for row in rows:
        print(
            f"{row['n']:>9,}  {row['who']:<11} {row['wall']:8.1f} {row['cpu']:8.1f} "
            f"{row['peak_mb']:8.0f} {row['kept']:8.3f}"
        )
    ours = {r["n"]: r for r in rows if r["who"] == "gcsemb"}
    for row in rows:
        if row["who"] == "umap-learn" and row["n"] in ours:
            mine = ours[row["n"]]
            print(
                f"{row['n']:>9,}  gcsemb / umap-learn: time {mine['wall'] / row['wall']:.2f}x, "
                f"peak {mine['peak_mb'] / row['peak_mb']:.2f}x, "
                f"preservation {mine['kept'] - row['kept']:+.3f}"
            )


def umap_step(bench: Any) -> dict[str, Any]:
    """``bench_explore.py``'s UMAP step on its dataset: ``umap_project(dst)``, the kNN graph
    from the dataset's index (``knn_graph``), and its neighbourhood preservation.

    Register it there with ``step("umap")(bench_umap.umap_step)``; the plain umap-learn baseline
    of the same run is :func:`umap_rows` (this file's ``main``).
    """
    import gcsemb
    from gcsemb.explore.umap_backends import neighbourhood_preservation

    start = time.perf_counter()
    knn = gcsemb.knn_graph(bench.path, K + 1, progress=False)
    knn_s = time.perf_counter() - start
    coords = gcsemb.umap_project(bench.path, backend="umap-learn", save=False)
    return {
        "knn_graph s": knn_s,
        "umap_project s": coords.attrs["umap"]["seconds"],
        "kept@15": neighbourhood_preservation(knn[0], coords[["x", "y"]].to_numpy(), k=K),
    }


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5]))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument(
        "--baseline-max",
        type=int,
        default=200_000,
        help="run plain umap-learn up to this size (its NN-descent at 1M takes an hour here)",
    )
    parser.add_argument("--init", default="auto", help="umap_project's init (default auto)")
    parser.add_argument("--epochs", type=int, default=None, help="umap_project's n_epochs")
    args = parser.parse_args()
    print(
        f"# bench_umap: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"load {os.getloadavg()[0]:.1f}, python {sys.version.split()[0]}, "
        f"init {args.init}, epochs {args.epochs or 'umap default'}",
        flush=True,
    )
    for n in args.sizes:
        rows = umap_rows(n, baseline=n <= args.baseline_max, init=args.init, epochs=args.epochs)
        print_rows(rows)
        print(f"# load after {n:,}: {os.getloadavg()[0]:.1f}", flush=True)


if __name__ == "__main__":
    main()
