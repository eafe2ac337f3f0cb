"""Where things go on a UMAP map: the frame, the marker style, and the thumbnails' places.

Pure geometry on an ``(n, 2)`` array of coordinates, no drawing and no network, so
:mod:`gcsemb.view.viz` and the explorer's map agree on what is shown where.

Example:
    >>> import numpy as np
    >>> xy = np.random.default_rng(0).standard_normal((500, 2))
    >>> plan = plan_thumbnails(xy, 10, box_points=(600.0, 450.0))
    >>> len(plan.rows) == len(plan.spots) <= 10
    True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

PAD = 0.03
"""Margin around the points, as a fraction of their span on each side."""
MIN_THUMBNAIL_POINTS = 24.0
"""Thumbnails never shrink below this many points (longest side)."""


def point_style(n: int) -> tuple[float, float]:
    """Marker area (points^2) and alpha that keep ``n`` points readable, from 10 to 1M.

    Example:
        >>> point_style(100)
        (24.0, 0.9)
    """
    size = float(np.clip(12000 / max(n, 1), 0.4, 24))
    alpha = float(np.clip(math.sqrt(2500 / max(n, 1)), 0.12, 0.9))
    return size, alpha


def frame_limits(
    xy: np.ndarray, reach: float = 3.0, at_most: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """The (low, high) corners of the area worth showing: every point but a few far outliers.

    A handful of points UMAP flings far away would squash everything else into a corner. Points
    more than ``reach`` interquartile ranges beyond the quartiles are left outside (and pinned to
    the edge by :func:`gcsemb.view.viz.plot_projection`), but only when they are at most ``at_most``
    of all points: larger far groups are real clusters and stay in view.

    Example:
        >>> lo, hi = frame_limits(np.array([[0.0, 0.0], [1.0, 2.0]]))
        >>> lo.tolist(), hi.tolist()
        ([0.0, 0.0], [1.0, 2.0])
    """
    if len(xy) == 0:
        return np.zeros(2), np.ones(2)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    q1, q3 = np.percentile(xy, [25, 75], axis=0)
    inner_lo, inner_hi = q1 - reach * (q3 - q1), q3 + reach * (q3 - q1)
    outside = ((xy < inner_lo) | (xy > inner_hi)).any(axis=1)
    if 0 < outside.sum() <= at_most * len(xy):
        lo, hi = xy[~outside].min(axis=0), xy[~outside].max(axis=0)
    flat = hi - lo <= 0
    return np.where(flat, lo - 0.5, lo), np.where(flat, hi + 0.5, hi)


def _unit(xy: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``xy`` scaled to the unit square, with the low corner and span that undo it."""
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1)
    return (xy - lo) / span, lo, span


def spread_sample(xy: np.ndarray, n: int, cell: tuple[float, float], seed: int = 0) -> np.ndarray:
    """Indices of up to ``n`` points at least one ``cell`` apart, from the densest areas first.

    ``xy`` is scaled to the unit square; ``cell`` is the (width, height) one thumbnail covers
    in that square. Each grid cell offers the point nearest its centre of mass; cells holding
    more points are taken first, and a point too close to one already taken is skipped, so
    thumbnails show the big clusters and never overlap.

    Example:
        >>> spread_sample(np.array([[0.0, 0.0], [0.01, 0.0], [1.0, 1.0]]), 5, (0.5, 0.5)).tolist()
        [0, 2]
    """
    if n <= 0 or len(xy) == 0:
        return np.zeros(0, np.int64)
    unit = _unit(xy)[0]
    cw, ch = cell
    gx = np.floor(unit[:, 0] / cw).astype(np.int64)
    gy = np.floor(unit[:, 1] / ch).astype(np.int64)
    key = gx * 1_000_003 + gy
    order = np.argsort(key, kind="stable")
    _, starts, counts = np.unique(key[order], return_index=True, return_counts=True)
    reps = []
    for start, count in zip(starts, counts, strict=True):
        members = order[start : start + count]
        centre = unit[members].mean(axis=0)
        reps.append(members[np.argmin(((unit[members] - centre) ** 2).sum(axis=1))])
    rng = np.random.default_rng(seed)
    ranking = np.lexsort((rng.random(len(counts)), -counts))
    taken: list[int] = []
    for r in ranking:
        p = unit[reps[r]]
        if all(abs(p[0] - unit[t][0]) >= cw or abs(p[1] - unit[t][1]) >= ch for t in taken):
            taken.append(int(reps[r]))
            if len(taken) == n:
                break
    return np.asarray(taken, np.int64)


def _point_counter(unit: np.ndarray, size: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """A function counting the points a ``size`` rectangle hides at each of many centres.

    Counts come from a summed-area table of a grid 4x finer than a thumbnail.
    """
    bins = np.maximum(np.ceil(4 / size).astype(int), 1)
    hist, _, _ = np.histogram2d(unit[:, 0], unit[:, 1], bins=bins, range=[[0, 1], [0, 1]])
    table = np.zeros((bins[0] + 1, bins[1] + 1))
    table[1:, 1:] = hist.cumsum(0).cumsum(1)

    def covered(centres: np.ndarray) -> np.ndarray:
        a = np.clip(np.floor((centres - size / 2) * bins).astype(int), 0, bins)
        b = np.clip(np.ceil((centres + size / 2) * bins).astype(int), 0, bins)
        return (
            table[b[:, 0], b[:, 1]]
            - table[a[:, 0], b[:, 1]]
            - table[b[:, 0], a[:, 1]]
            + (table[a[:, 0], a[:, 1]])
        )

    return covered


def place_thumbnails(
    xy: np.ndarray, n: int, cell: tuple[float, float], reach: int = 3, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Choose up to ``n`` points to show as thumbnails, and where to put each thumbnail.

    Candidates come from :func:`spread_sample` (dense areas first), then random points. Each
    thumbnail goes to the nearby spot (up to ``reach`` half-cells away) that hides the fewest
    points, without overlapping a thumbnail already placed; a thumbnail moved off its point is
    drawn with a leader line. So a tight cluster stays visible next to its picture, and in a
    dense map thumbnails sit on their points.

    Returns:
        The chosen row indices and the thumbnail centres (data coordinates), same order.

    Example:
        >>> rows, spots = place_thumbnails(np.array([[0.0, 0.0], [1.0, 1.0]]), 2, (0.2, 0.2))
        >>> sorted(rows.tolist()), spots.shape
        ([0, 1], (2, 2))
    """
    if n <= 0 or len(xy) == 0:
        return np.zeros(0, np.int64), np.zeros((0, 2))
    unit, lo, span = _unit(xy)
    size = np.asarray(cell, dtype=float)
    covered = _point_counter(unit, size)
    steps = np.arange(-reach, reach + 1)
    offsets = np.array([(i, j) for i in steps for j in steps], dtype=float)
    distance = np.hypot(offsets[:, 0], offsets[:, 1]) / 2  # in thumbnails
    offsets = offsets * size / 2
    # moving a thumbnail one size away must spare 5% of the points it would hide on average
    penalty = max(1.0, 0.05 * len(xy) * size[0] * size[1])
    chosen: list[int] = []
    centres: list[np.ndarray] = []
    # candidates half a thumbnail apart (placement itself keeps thumbnails from overlapping);
    # then random points, so large or crowded clusters can show a second, third... image
    spread = spread_sample(xy, 3 * n, (size[0] / 2, size[1] / 2), seed)
    extra = np.random.default_rng(seed).permutation(len(xy))[: 5 * n]
    for row in np.concatenate([spread, extra[~np.isin(extra, spread)]]):
        spots = unit[row] + offsets
        ok = np.all((spots - size / 2 >= -PAD) & (spots + size / 2 <= 1 + PAD), axis=1)
        if centres:
            gap = np.abs(spots[:, None, :] - np.asarray(centres)[None, :, :])
            ok &= ~np.any(np.all(gap < size, axis=2), axis=1)
        if not ok.any():
            continue
        cost = np.where(ok, covered(spots) + penalty * distance, np.inf)
        chosen.append(int(row))
        centres.append(spots[int(np.argmin(cost))])
        if len(chosen) == n:
            break
    spots = np.asarray(centres).reshape(-1, 2) * span + lo
    return np.asarray(chosen, np.int64), spots


@dataclass(frozen=True)
class ThumbnailPlan:
    """Which points get a thumbnail, where it goes and how large it is drawn.

    Attributes:
        rows: The chosen row indices.
        spots: The thumbnails' centres (data coordinates), one per row.
        moved: Whether each thumbnail sits off its point (then a leader line joins them).
        points: Longest side of a thumbnail, in points.
    """

    rows: np.ndarray
    spots: np.ndarray
    moved: np.ndarray
    points: float


def plan_thumbnails(
    xy: np.ndarray,
    count: int,
    box_points: tuple[float, float],
    thumbnail_points: float | None = None,
) -> ThumbnailPlan:
    """Up to ``count`` non-overlapping thumbnails for the points ``xy`` in a box of that size.

    Args:
        xy: The plotted coordinates (after :func:`frame_limits` pinned far outliers).
        count: How many thumbnails are wanted.
        box_points: Width and height of the axes, in points.
        thumbnail_points: Longest side of a thumbnail in points; None picks one from ``count``
            and the box, and shrinks it (to 24 points at least) while fewer than ``count`` fit.

    Example:
        >>> xy = np.random.default_rng(0).standard_normal((200, 2))
        >>> plan_thumbnails(xy, 5, (600.0, 450.0), thumbnail_points=40).points
        40.0
    """
    width, height = box_points
    auto = thumbnail_points is None
    size = float(
        np.clip(math.sqrt(width * height * 0.15 / max(count, 1)), MIN_THUMBNAIL_POINTS, 64)
        if thumbnail_points is None
        else thumbnail_points
    )
    while True:
        # the points span 1/(1 + 2 * PAD) of the axes (see gcsemb.view.viz.projection_plot)
        side = size * 1.08 * (1 + 2 * PAD)
        rows, spots = place_thumbnails(xy, count, (side / width, side / height))
        if len(rows) >= count or not auto or size <= MIN_THUMBNAIL_POINTS:
            break
        size = max(MIN_THUMBNAIL_POINTS, size * 0.85)  # clusters leave room for fewer: smaller
    tolerance = 1e-6 * (np.abs(xy).max() + 1) if len(xy) else 0.0
    moved = np.abs(spots - xy[rows]).max(axis=1) > tolerance if len(rows) else np.zeros(0, bool)
    return ThumbnailPlan(rows, spots, moved, size)
