"""Explore at scale: gcsemb's read, index, search and near-duplicates beside the direct baseline.

The dataset is synthetic, in gcsemb's own format (``part-*.parquet`` shards of 5,000 rows, the
real schema and metadata): 512-d CLIP-like vectors, 2,000 clusters on the unit sphere (all in a
cone, as CLIP's are) plus noise, with 120 injected near-copies (cosine 0.95-0.999) and 20 exact
copies (same md5). Image queries are new points of the clusters; text queries sit across a
"modality gap" (a direction shared by all texts), with cosine about 0.3 to their best images, as
CLIP's texts do. Each dataset is generated once into ``$GCSEMB_BENCH_DIR`` (default
``~/.cache/gcsemb/bench``) and reused.

Every step runs in a child process of its own (started from this small parent), which reports its
wall time (gcsemb, pandas and pyarrow imported before the clock starts, as in a notebook) and its
peak resident memory (``VmHWM`` of ``/proc/self/status``; ``ru_maxrss`` would inherit the
parent's).
Each gcsemb step runs beside its baseline: the same work done directly with pyarrow, numpy or the
index library.

Steps live in :data:`STEPS` (name -> function taking a :class:`Bench` and returning a dict of
figures); other steps register with :func:`step`. Run:

    python benchmarks/bench_explore.py --sizes 100000 [--only read search] [--big] [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

DIM = 512
CLUSTERS = 2000
NEAR_COPIES = 120
EXACT_COPIES = 20
ROWS_PER_SHARD = 5000
MODEL = "ViT-B-32/laion2b_s34b_b79k"
QUERIES = 200


@dataclass(frozen=True)
class Bench:
    """What a step gets: the dataset's folder, its size, and where its queries are."""

    path: str
    size: int

    def queries(self, kind: str) -> np.ndarray:
        """``QUERIES`` unit vectors: ``"image"`` or ``"text"`` queries (see the module doc)."""
        return np.load(f"{self.path}/_bench/{kind}.npy")


STEPS: dict[str, Callable[[Bench], dict[str, Any]]] = {}
SLOW = {"umap"}  # run with --only umap (about 8 minutes at 1M on 2 cores)


def step(name: str) -> Callable[[Callable[[Bench], dict[str, Any]]], Callable]:
    """Register a step function under ``name`` (run with ``--only name``)."""

    def register(fn: Callable[[Bench], dict[str, Any]]) -> Callable:
        STEPS[name] = fn
        return fn

    return register


# ---------------------------------------------------------------- the synthetic dataset


def bench_dir() -> Path:
    """Where generated datasets are kept between runs."""
    if os.environ.get("GCSEMB_BENCH_DIR"):
        return Path(os.environ["GCSEMB_BENCH_DIR"])
    return Path("~/.cache/gcsemb/bench").expanduser()


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def _geometry(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Cluster centres (in a cone around a common direction) and the text "gap" direction."""
    rng = np.random.default_rng(seed)
    cone = _unit(rng.standard_normal(DIM))
    centres = _unit(0.5 * cone + _unit(rng.standard_normal((CLUSTERS, DIM))))
    gap = rng.standard_normal(DIM)
    gap -= (gap @ cone) * cone
    return centres, _unit(gap)


def _points(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    labels = rng.integers(0, len(centres), n)
    noise = rng.standard_normal((n, DIM), dtype=np.float32) / np.sqrt(DIM)
    return _unit(centres[labels] + 0.6 * noise)


def text_queries(rng: np.random.Generator, centres: np.ndarray, gap: np.ndarray) -> np.ndarray:
    """Texts: a little of a cluster's direction, mostly the shared gap (cosine ~0.3 to images)."""
    labels = rng.integers(0, len(centres), QUERIES)
    own = _unit(gap + 0.35 * rng.standard_normal((QUERIES, DIM)) / np.sqrt(DIM))
    return _unit(0.36 * centres[labels] + np.sqrt(1 - 0.36**2) * own)


def generate(size: int, seed: int = 0) -> Bench:
    """The dataset of ``size`` rows (generated once, then reused), shard by shard."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from gcsemb.explore.dataset import schema

    path = bench_dir() / f"synthetic-{size}"
    done = path / "_bench" / "done.json"
    if done.exists():
        return Bench(str(path), size)
    (path / "_bench").mkdir(parents=True, exist_ok=True)
    centres, gap = _geometry(seed)
    rng = np.random.default_rng(seed + size)
    copies = rng.choice(size - ROWS_PER_SHARD - 10, NEAR_COPIES + EXACT_COPIES, replace=False)
    near, exact = copies[:NEAR_COPIES], copies[NEAR_COPIES:]
    sch = schema(MODEL, DIM, {"source": "gs://bench/photos"})
    kept: dict[int, tuple[np.ndarray, str]] = {}
    start = time.perf_counter()
    for first in range(0, size, ROWS_PER_SHARD):
        n = min(ROWS_PER_SHARD, size - first)
        x = _points(rng, centres, n)
        md5 = [f"{first + i:022x}==" for i in range(n)]
        ids = np.arange(first, first + n)
        for i in range(n):
            kept_row = kept.get(first + i)
            if kept_row is not None:  # this row copies an earlier one
                x[i], md5[i] = kept_row
        for j, source in enumerate(copies):
            if first <= source < first + n:  # its copy goes one shard later, at a fixed row
                target = source + ROWS_PER_SHARD + (j % 7)
                vec = x[source - first]
                if j < NEAR_COPIES:
                    t = 0.05 + 0.25 * (j / NEAR_COPIES)
                    noise = rng.standard_normal(DIM).astype(np.float32) / np.sqrt(DIM)
                    kept[target] = (_unit(vec + t * noise), f"near{j:018x}==")
                else:
                    kept[target] = (vec.copy(), md5[source - first])
        flat = pa.array(x.reshape(-1))
        emb = pa.ListArray.from_arrays(
            pa.array(np.arange(0, (n + 1) * DIM, DIM, dtype=np.int32)), flat
        )
        table = pa.table(
            {
                "uri": [f"gs://bench/photos/{i:08d}.jpg" for i in ids],
                "md5": md5,
                "size": pa.array(rng.integers(20_000, 4_000_000, n)),
                "generation": pa.array(ids + 1_700_000_000_000_000),
                "updated": pa.array(1_700_000_000_000_000 + ids * 1000, pa.timestamp("us", "UTC")),
                "width": pa.array(rng.integers(200, 4000, n).astype(np.int32)),
                "height": pa.array(rng.integers(200, 4000, n).astype(np.int32)),
                "model": [MODEL] * n,
                "embedding": emb,
            },
            schema=sch,
        )
        pq.write_table(
            table, path / f"part-bench-{first // ROWS_PER_SHARD:05d}.parquet", compression="zstd"
        )
    qrng = np.random.default_rng(seed + 1)
    np.save(path / "_bench" / "image.npy", _points(qrng, centres, QUERIES))
    np.save(path / "_bench" / "text.npy", text_queries(qrng, centres, gap))
    done.write_text(
        json.dumps(
            {"near": near.tolist(), "exact": exact.tolist(), "seconds": time.perf_counter() - start}
        )
    )
    return Bench(str(path), size)


# ---------------------------------------------------------------- steps


def _recall(got: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(t)) / len(t) for g, t in zip(got, truth, strict=True)]))


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` best rows of ``x`` per query of ``q``, best first (numpy, exact)."""
    s = q @ x.T
    part = np.argpartition(-s, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(s, part, 1), axis=1)
    return np.take_along_axis(part, order, 1)


def exact_top_blocks(x: np.ndarray, q: np.ndarray, k: int, block: int = 1 << 18) -> np.ndarray:
    """:func:`exact_top` over a matrix of any dtype, a block of rows (as float32) at a time."""
    rows = np.zeros((len(q), 0), np.int64)
    scores = np.zeros((len(q), 0), np.float32)
    for a in range(0, len(x), block):
        part = q @ np.asarray(x[a : a + block], np.float32).T
        top = np.argpartition(-part, k, axis=1)[:, :k]
        rows = np.concatenate([rows, top + a], axis=1)
        scores = np.concatenate([scores, np.take_along_axis(part, top, 1)], axis=1)
    order = np.argsort(-scores, axis=1)[:, :k]
    return np.take_along_axis(rows, order, 1)


@step("read")
def _read(bench: Bench) -> dict[str, Any]:
    import gcsemb

    _, matrix = gcsemb.read_embeddings(bench.path)
    return {"rows": len(matrix)}


@step("read-baseline")
def _read_baseline(bench: Bench) -> dict[str, Any]:
    import pyarrow.parquet as pq

    column = pq.read_table(bench.path, columns=["embedding"]).column("embedding")
    matrix = column.combine_chunks().flatten().to_numpy().reshape(-1, DIM)
    return {"rows": len(matrix)}


@step("search")
def _search(bench: Bench) -> dict[str, Any]:
    """Exact search per query beside numpy, and a search through the index: time and recall."""
    import pandas as pd

    import gcsemb
    from gcsemb.explore.ranking import NPROBE, ranked, top_k

    df, x = gcsemb.read_embeddings(bench.path)
    gcsemb.build_index(bench.path, progress=False)
    where = pd.Index(df.uri)  # uri -> row, to score the results against the exact rows
    out: dict[str, Any] = {}
    for kind in ("image", "text"):
        q = bench.queries(kind)
        truth = np.concatenate([exact_top(x, q[a : a + 20], 10) for a in range(0, len(q), 20)])
        start = time.perf_counter()
        for v in q[:50]:
            s = x @ v
            np.argpartition(-s, 10)[:10]
        out[f"{kind} numpy ms"] = (time.perf_counter() - start) / 50 * 1000
        start = time.perf_counter()
        for v in q[:50]:
            top_k(df, x, v, 10)
        out[f"{kind} exact ms"] = (time.perf_counter() - start) / 50 * 1000
        out[f"{kind} exact / numpy"] = out[f"{kind} exact ms"] / out[f"{kind} numpy ms"]
        start = time.perf_counter()  # the first pass opens the index and pages its lists in
        got = [ranked(df, x, v, 10, method="index", kind=kind) for v in q]
        out[f"{kind} index ms, first pass"] = (time.perf_counter() - start) / len(q) * 1000
        start = time.perf_counter()
        got = [ranked(df, x, v, 10, method="index", kind=kind) for v in q]
        out[f"{kind} index ms (nprobe {NPROBE[kind]})"] = (
            (time.perf_counter() - start) / len(q) * 1000
        )
        out[f"{kind} recall@10"] = _recall([where.get_indexer(r.uri) for r in got], truth)
    return out


@step("search-faiss")
def _search_faiss(bench: Bench) -> dict[str, Any]:
    """The same IVF search done by faiss (IVF-flat, same lists and probes): the library baseline.

    Skipped (with a note) where faiss is not installed: it is not a gcsemb dependency
    (``pip install faiss-cpu`` to compare).
    """
    try:
        import faiss
    except ImportError:
        return {"skipped": "pip install faiss-cpu to compare"}
    import gcsemb
    from gcsemb.explore.ivf import nlist_for
    from gcsemb.explore.ranking import NPROBE

    _, x = gcsemb.read_embeddings(bench.path)
    start = time.perf_counter()
    quantizer = faiss.IndexFlatIP(x.shape[1])
    index = faiss.IndexIVFFlat(quantizer, x.shape[1], nlist_for(len(x)), faiss.METRIC_INNER_PRODUCT)
    index.train(x[np.random.default_rng(0).choice(len(x), min(len(x), 40 * index.nlist), False)])
    index.add(x)
    out: dict[str, Any] = {"build s": time.perf_counter() - start}
    for kind in ("image", "text"):
        q = np.ascontiguousarray(bench.queries(kind), np.float32)
        truth = np.concatenate([exact_top(x, q[a : a + 20], 10) for a in range(0, len(q), 20)])
        index.nprobe = NPROBE[kind]
        index.search(q, 10)  # a first pass, as for gcsemb's
        start = time.perf_counter()
        got = np.concatenate([index.search(v[None], 10)[1] for v in q])
        out[f"{kind} ms (nprobe {NPROBE[kind]})"] = (time.perf_counter() - start) / len(q) * 1000
        out[f"{kind} recall@10"] = _recall(got, truth)
    return out


@step("search-fp16")
def _search_fp16(bench: Bench) -> dict[str, Any]:
    """What 10M rows need: a float16 read, then search through the index saved on disk."""
    import pandas as pd

    import gcsemb
    from gcsemb.explore.ranking import NPROBE, ranked

    start = time.perf_counter()
    df, x = gcsemb.read_embeddings(bench.path, dtype=np.float16)
    out: dict[str, Any] = {"read fp16 s": time.perf_counter() - start}
    where = pd.Index(df.uri)  # uri -> row, to score the results against the exact rows
    for kind in ("image", "text"):
        q = bench.queries(kind)[:20]
        ranked(df, x, q[0], 10, method="index", kind=kind)  # opens the index once
        start = time.perf_counter()
        got = [ranked(df, x, v, 10, method="index", kind=kind) for v in q]
        out[f"{kind} index ms (nprobe {NPROBE[kind]})"] = (time.perf_counter() - start) / 20 * 1e3
        truth = exact_top_blocks(x, q, 10)
        out[f"{kind} recall@10"] = _recall([where.get_indexer(r.uri) for r in got], truth)
    return out


@step("near-duplicates")
def _near(bench: Bench) -> dict[str, Any]:
    import gcsemb

    start = time.perf_counter()
    index = gcsemb.near_duplicates(bench.path, threshold=0.95, method="index", progress=False)
    seconds = time.perf_counter() - start
    out = {"index s": seconds, "pairs": len(index)}
    if bench.size <= 200_000:
        exact = gcsemb.near_duplicates(bench.path, threshold=0.95, method="exact")
        got = set(zip(index.uri_a, index.uri_b, strict=True))
        want = set(zip(exact.uri_a, exact.uri_b, strict=True))
        out["recall vs exact"] = len(got & want) / max(len(want), 1)
    return out


@step("index")
def _index(bench: Bench) -> dict[str, Any]:
    """Build the dataset's index from scratch (time and peak of the build alone)."""
    import gcsemb

    index = gcsemb.build_index(bench.path, rebuild=True, progress=False)
    return {"indexed rows": len(index.keys)}


@step("umap")
def _umap(bench: Bench) -> dict[str, Any]:
    """kNN graph from the index, then ``umap_project`` on all cores (bench_umap.py's step)."""
    from bench_umap import umap_step

    return umap_step(bench)


@step("explorer")
def _explorer(bench: Bench) -> dict[str, Any]:
    """The Explorer's open, pick, selections, highlight and text query (bench_explorer.py)."""
    import logging

    from bench_explorer import explorer_steps

    import gcsemb

    logging.getLogger("gcsemb").setLevel(logging.ERROR)  # fake URIs: no thumbnails, no noise
    df, matrix = gcsemb.read_embeddings(bench.path)
    df["model"] = "bench/random"  # bench_explorer's stand-in text model embeds the queries
    return {f"{name} ({note or 's'})": value for name, value, note in explorer_steps(df, matrix)}


def _child(name: str, size: int, conn: Any) -> None:
    # imported before the clock starts, as in a notebook (pandas, and what pyarrow and pandas
    # import on first use; fsspec, which gcsemb's first read of any store imports, ~20 ms):
    # a step times its work, not Python's imports
    import fsspec  # noqa: F401
    import pandas  # noqa: F401
    import pyarrow.compute  # noqa: F401
    import pyarrow.dataset  # noqa: F401
    import pyarrow.parquet  # noqa: F401

    import gcsemb  # noqa: F401

    bench = Bench(str(bench_dir() / f"synthetic-{size}"), size)
    start = time.perf_counter()
    figures = STEPS[name](bench)
    figures["seconds"] = time.perf_counter() - start
    status = Path("/proc/self/status").read_text()
    hwm = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmHWM"))
    figures["peak MiB"] = hwm / 1024
    conn.send(figures)


def _run(name: str, size: int) -> dict[str, Any]:
    """One step in a fresh child process: its figures."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    proc = context.Process(target=_child, args=(name, size, child))
    proc.start()
    figures = parent.recv()
    proc.join()
    return figures


def _median(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Each numeric figure's median over ``runs`` (other values from the first run)."""
    return {
        k: float(np.median([r[k] for r in runs])) if isinstance(v, float) else v
        for k, v in runs[0].items()
    }


def _show(size: int, name: str, runs: list[dict[str, Any]]) -> None:
    figures = _median(runs)
    shown = ", ".join(
        f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in figures.items()
    )
    if len(runs) > 1:
        times = [r["seconds"] for r in runs]
        shown += f" (median of {len(runs)} runs; seconds {min(times):.3g}-{max(times):.3g})"
    print(f"{size:>9,} {name:<16} {shown}", flush=True)


def _read_ratio(size: int, ours: list[dict[str, Any]], bare: list[dict[str, Any]]) -> None:
    """The read's ratios to pyarrow's, pair by pair (runs alternate, so drift cancels)."""
    time_ratio = [a["seconds"] / b["seconds"] for a, b in zip(ours, bare, strict=True)]
    peak_ratio = [a["peak MiB"] / b["peak MiB"] for a, b in zip(ours, bare, strict=True)]
    spread = f" (pairs {min(time_ratio):.2f}-{max(time_ratio):.2f}x)" if len(ours) > 1 else ""
    print(
        f"{size:>9,} {'read ratio':<16} time {np.median(time_ratio):.2f}x{spread}, "
        f"peak {np.median(peak_ratio):.2f}x of pyarrow's",
        flush=True,
    )


def main() -> None:
    """Run the chosen steps at the chosen sizes, each in a child process."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--big", action="store_true", help="also 3M rows")
    parser.add_argument("--only", nargs="+", choices=sorted(STEPS), help="these steps only")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="run the steps N times in turn (A B A B ...) and print medians: short steps on a "
        "noisy machine need 5 or more",
    )
    args = parser.parse_args()
    sizes = [*args.sizes, *([3_000_000] if args.big else [])]
    print(f"{platform.node()}: {os.cpu_count()} cores, Python {sys.version.split()[0]}")
    names = list(dict.fromkeys(args.only or [n for n in STEPS if n not in SLOW]))
    for size in sizes:
        generate(size)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
        for _ in range(args.repeat):
            for name in names:
                results[name].append(_run(name, size))
                if args.repeat == 1:
                    _show(size, name, results[name])
        if args.repeat > 1:
            for name in names:
                _show(size, name, results[name])
        if {"read", "read-baseline"} <= set(results):
            _read_ratio(size, results["read"], results["read-baseline"])


if __name__ == "__main__":
    main()
