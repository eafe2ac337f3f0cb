"""Time the Explorer on a synthetic map of 100k and 1M points, beside a plain matplotlib scatter.

The map: 2-D coordinates in 2,000 Gaussian clusters of uneven size plus 2% uniform noise (what
UMAP makes of a large photo collection), 50 folders, and a matrix of random unit vectors (512-d
float32) standing in for the embeddings. Steps, each the median of several runs:

- open: :class:`gcsemb.view.explorer.ExplorerState` (KD-tree, grids, URI tables) and the map drawn
  once (:func:`gcsemb.view.map_picture.render_map`), then the whole widget
  (:class:`gcsemb.view.widgets.Explorer`) when ipywidgets is installed;
- pick (a KD-tree query), box and lasso selections (count and a sample of 24), highlight of
  10,000 URIs, repainting the map with them (the PNG the widget shows);
- text query, model only: :meth:`ExplorerState.query` with a stand-in text embedder (a row of
  the matrix), i.e. the search itself (:func:`gcsemb.explore.search.search_text`) plus the
  explorer's own work, printed apart;
- the widget's query, box and lasso (thumbnails of these fake URIs are not fetched);
- the baseline: ``ax.scatter`` of every point to a PNG, as the explorer drew it before.

Peak RSS beyond what the data takes is measured from a reset high-water mark (Linux
``/proc/self/clear_refs``), beside the process's own peak. :func:`explorer_steps` is what
``bench_explore.py`` imports (with its own dataset; without a projection it makes one up).

Run: .venv/bin/python benchmarks/bench_explorer.py [--sizes 100000 1000000] [--dim 512]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def map_coordinates(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(xy, cluster)``: 2,000 Gaussian clusters of uneven size plus 2% uniform noise."""
    rng = np.random.default_rng(seed)
    sizes = rng.pareto(1.2, 2000) + 1
    cluster = rng.choice(2000, n, p=sizes / sizes.sum())
    centres = rng.uniform(-40, 40, (2000, 2))
    spread = rng.uniform(0.1, 1.5, 2000)
    xy = centres[cluster] + rng.standard_normal((n, 2)) * spread[cluster, None]
    noise = rng.random(n) < 0.02
    xy[noise] = rng.uniform(-45, 45, (int(noise.sum()), 2))
    return xy, cluster


def synthetic_map(n: int, dim: int = 512, seed: int = 0) -> tuple[Any, np.ndarray, Any]:
    """``(df, matrix, coords)``: rows with uri/md5/model/folder, unit vectors, a clustered map."""
    import pandas as pd

    rng = np.random.default_rng(seed)
    xy, cluster = map_coordinates(n, seed)
    matrix = np.empty((n, dim), np.float32)
    for start in range(0, n, 100_000):  # in blocks: no 2x temporary
        block = rng.standard_normal((min(100_000, n - start), dim), dtype=np.float32)
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        matrix[start : start + len(block)] = block
    folder = np.array([f"folder{i:02d}" for i in range(50)])[cluster % 50]
    uri = pd.Series([f"gs://bench/{f}/img{i:07d}.jpg" for i, f in enumerate(folder)])
    df = pd.DataFrame({"uri": uri, "md5": uri.str[-15:], "model": "bench/random"})
    coords = pd.DataFrame({"uri": uri, "x": xy[:, 0], "y": xy[:, 1], "folder": folder})
    return df, matrix, coords


class _TextModel:
    """A stand-in text embedder: the query embeds as one row of the matrix."""

    name = "bench/random"

    def __init__(self, matrix: np.ndarray) -> None:
        self.matrix = matrix

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        return self.matrix[[len(texts[0]) % len(self.matrix)]]


def _rss_mib(field: str = "VmRSS") -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _reset_peak() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def _median(fn: Callable[[], Any], repeat: int) -> tuple[float, Any]:
    times, out = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def _lasso(state: Any) -> np.ndarray:
    """A wavy 200-vertex lasso around a quarter of the map."""
    lo, hi = state.points.lo, state.points.hi
    centre, radius = (lo + hi) / 2, (hi - lo) / 4
    angle = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    wave = 1 + 0.3 * np.sin(5 * angle)
    return centre + np.column_stack([np.cos(angle) * wave, np.sin(angle)]) * radius


def explorer_steps(
    df: Any, matrix: np.ndarray, coords: Any = None, *, widget: bool = True
) -> list[tuple[str, float, str]]:
    """Time the explorer's steps on these rows: ``(step, seconds, note)`` for each.

    ``coords`` None: a synthetic clustered map of ``df``'s rows (:func:`map_coordinates`), for
    a dataset that has no projection yet. Memory rows are in MiB (note ``"MiB"``).

    Example:
        >>> for step, seconds, note in explorer_steps(*synthetic_map(10_000)):  # doctest: +SKIP
        ...     print(step, seconds, note)
    """
    from gcsemb.explore.search import search_text
    from gcsemb.view.explorer import ExplorerState
    from gcsemb.view.map_picture import painted_png, render_map

    if coords is None:
        import pandas as pd

        xy, cluster = map_coordinates(len(df))
        folder = [f"folder{c % 50:02d}" for c in cluster]
        coords = pd.DataFrame({"uri": df["uri"], "x": xy[:, 0], "y": xy[:, 1], "folder": folder})
    rows: list[tuple[str, float, str]] = []
    model = _TextModel(matrix)
    _reset_peak()
    before = _rss_mib()
    start = time.perf_counter()
    state = ExplorerState((df, matrix), model, coords=coords)
    state._embedder_checked = True  # the stand-in model: no weights to check  # noqa: SLF001
    picture = render_map(coords, "folder")
    rows.append(("open: model + map drawn", time.perf_counter() - start, ""))
    rng = np.random.default_rng(1)
    spots = rng.uniform(state.points.lo, state.points.hi, (50, 2))
    it = iter(spots)
    seconds, _ = _median(lambda: state.pick(*next(it)), 50)
    rows.append(("pick (nearest point)", seconds, ""))
    lo, hi = state.points.lo, state.points.hi
    box = (*(lo + (hi - lo) * 0.3), *(lo + (hi - lo) * 0.6))
    seconds, chosen = _median(lambda: state.select_box(*box), 5)
    rows.append(("box selection", seconds, f"{chosen.count:,} points"))
    seconds, chosen = _median(lambda: state.select_lasso(_lasso(state)), 5)
    rows.append(("lasso selection", seconds, f"{chosen.count:,} points, 200 vertices"))
    marked = coords["uri"].sample(min(10_000, len(coords)), random_state=0)
    seconds, _ = _median(lambda: state.highlight(marked, "near-duplicates"), 5)
    rows.append(("highlight 10,000 URIs", seconds, ""))
    seconds, png = _median(lambda: painted_png(picture, state.overlays()), 5)
    rows.append(("repaint the map with them", seconds, f"{len(png) // 1024} KiB PNG"))
    words = iter(f"query {'x' * i}" for i in range(100))
    search, _ = _median(lambda: search_text((df, matrix), next(words), k=12, embedder=model), 5)
    total, _ = _median(lambda: state.query(next(words), 12), 5)
    rows.append(("text query, model only", total, f"search_text alone {search * 1e3:.0f} ms"))
    if widget:
        rows += _widget_steps(df, matrix, coords, model, box, _lasso(state))
    rows.append(("peak RSS beyond the data", _rss_mib("VmHWM") - before, "MiB"))
    rows.append(("peak RSS of the process", _rss_mib("VmHWM"), "MiB"))
    return rows


def _widget_steps(
    df: Any, matrix: np.ndarray, coords: Any, model: Any, box: tuple, lasso: np.ndarray
) -> list[tuple[str, float, str]]:
    """The same gestures through the ipywidgets Explorer (what a user waits for)."""
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return [("widget steps", float("nan"), "no ipywidgets")]
    from gcsemb.view.widgets import Explorer

    start = time.perf_counter()
    explorer = Explorer((df, matrix), model, coords=coords)
    explorer.state._embedder_checked = True  # noqa: SLF001
    rows = [("widget: open", time.perf_counter() - start, "")]
    words = iter(f"widget query {'y' * i}" for i in range(100))
    seconds, _ = _median(lambda: explorer.query(next(words)), 3)
    rows.append(("widget: text query, model only", seconds, "no thumbnails fetched"))
    seconds, _ = _median(lambda: explorer.select_box(*box), 3)
    rows.append(("widget: box selection", seconds, ""))
    seconds, _ = _median(lambda: explorer.select_lasso(lasso), 3)
    rows.append(("widget: lasso selection", seconds, ""))
    explorer.widget.close()
    return rows


def scatter_baseline(coords: Any) -> float:
    """Seconds for a plain matplotlib scatter of every point, to PNG bytes."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    start = time.perf_counter()
    fig = Figure(figsize=(6.4, 5.0), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.scatter(coords["x"], coords["y"], s=0.4, alpha=0.12, linewidths=0, rasterized=True)
    fig.savefig(io.BytesIO(), format="png")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--no-widget", action="store_true", help="skip the ipywidgets steps")
    args = parser.parse_args()
    import logging

    import matplotlib

    matplotlib.use("Agg")
    logging.getLogger("gcsemb").setLevel(logging.ERROR)  # fake URIs: no thumbnails, no noise
    print(
        f"# bench_explorer: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"python {sys.version.split()[0]}"
    )
    for n in args.sizes:
        df, matrix, coords = synthetic_map(n, args.dim)
        print(f"\n## {n:,} points, matrix {matrix.nbytes / 2**20:,.0f} MiB")
        baseline = scatter_baseline(coords)
        for step, value, note in explorer_steps(df, matrix, coords, widget=not args.no_widget):
            shown = f"{value:8.0f} MiB" if note == "MiB" else f"{value * 1e3:8.2f} ms"
            print(f"{step:<34} {shown}  {'' if note == 'MiB' else note}")
        print(f"{'baseline: matplotlib scatter, PNG':<34} {baseline * 1e3:8.1f} ms")
        del df, matrix, coords


if __name__ == "__main__":
    main()
