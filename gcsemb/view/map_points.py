"""The explorer's map as geometry: where points are drawn, how dense it is, what a gesture picks.

A million points cannot be redrawn, or scanned in Python, at every click. :class:`MapPoints`
holds the plotted coordinates once, with what answers each gesture in milliseconds:

- a click or hover: the nearest point, from a KD-tree on the 2-D coordinates (built once);
- a box: one vectorised comparison over the coordinates;
- a lasso: a grid of cells; cells the lasso's edge does not cross are wholly inside or
  outside (their centre says which), so only the points of the crossed cells are tested
  against the polygon (:meth:`matplotlib.path.Path.contains_points`);
- the picture: :func:`density_raster` counts the points per pixel cell (a 2-D histogram).

Example:
    >>> import numpy as np
    >>> points = MapPoints(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]))
    >>> points.nearest(0.9, 0.8)
    1
    >>> points.in_box(-1, -1, 1.5, 1.5).tolist()
    [0, 1]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gcsemb.view.layout import frame_limits

GRID = 256
"""Cells per side of the grid that lassos are answered with."""


class MapPoints:
    """The points of a map as plotted, indexed for picks, boxes and lassos.

    Args:
        xy: The projection's coordinates, ``(n, 2)``.

    Attributes:
        xy: The coordinates as plotted: far outliers pinned to the frame's edge
            (:func:`gcsemb.view.layout.frame_limits`), float64.
        pinned: Which points were pinned.
        lo: The frame's low corner (x, y).
        hi: The frame's high corner (x, y).

    Example:
        >>> points = MapPoints(np.random.default_rng(0).standard_normal((1000, 2)))
        >>> len(points.in_lasso([(0, 0), (3, 0), (3, 3), (0, 3)])) > 100
        True
    """

    def __init__(self, xy: np.ndarray) -> None:
        from gcsemb.extras import require

        spatial = require("scipy.spatial", "viz", "The explorer's map", package="scipy")
        raw = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
        self.lo, self.hi = frame_limits(raw)
        self.xy = np.clip(raw, self.lo, self.hi)
        self.pinned = (self.xy != raw).any(axis=1)
        # unbalanced, not compacted: builds in half the time, queries as fast in 2-D
        self._tree = spatial.cKDTree(self.xy, balanced_tree=False, compact_nodes=False)
        self._cells = cell_of(self.xy, self.lo, self.hi, (GRID, GRID))

    def __len__(self) -> int:
        return len(self.xy)

    def __repr__(self) -> str:
        return f"MapPoints({len(self):,} points, {int(self.pinned.sum())} pinned)"

    def nearest(self, x: float, y: float) -> int:
        """The row of the point nearest to ``(x, y)`` (map coordinates).

        Example:
            >>> MapPoints(np.array([[0.0, 0.0], [5.0, 5.0]])).nearest(4, 4)
            1
        """
        return int(self._tree.query([float(x), float(y)])[1])

    def in_box(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        """The rows (ascending) of the points inside the box between two corners.

        Example:
            >>> MapPoints(np.array([[0.0, 0.0], [5.0, 5.0]])).in_box(6, 6, 1, 1).tolist()
            [1]
        """
        (xa, xb), (ya, yb) = sorted((x0, x1)), sorted((y0, y1))
        x, y = self.xy[:, 0], self.xy[:, 1]
        return np.flatnonzero((x >= xa) & (x <= xb) & (y >= ya) & (y <= yb))

    def in_lasso(self, polygon: Sequence[Sequence[float]] | np.ndarray) -> np.ndarray:
        """The rows (ascending) of the points inside the closed ``polygon`` (map coordinates).

        Example:
            >>> points = MapPoints(np.array([[0.0, 0.0], [1.0, 1.0], [2.0, 0.0]]))
            >>> points.in_lasso([(-1, -1), (1.5, -1), (1.5, 2)]).tolist()
            [0, 1]
        """
        from matplotlib.path import Path

        vertices = np.asarray(polygon, dtype=np.float64).reshape(-1, 2)
        if len(vertices) < 3:
            return np.zeros(0, np.int64)
        path = Path(np.vstack([vertices, vertices[:1]]), closed=True)
        size = (self.hi - self.lo) / GRID
        # only the cells under the lasso's bounding box can be inside
        i0, j0 = np.clip(np.floor((vertices.min(axis=0) - self.lo) / size), 0, GRID).astype(int)
        i1, j1 = np.clip(np.ceil((vertices.max(axis=0) - self.lo) / size), 0, GRID).astype(int)
        cols, rows = np.meshgrid(np.arange(i0, i1), np.arange(j0, j1))
        cells = (rows * GRID + cols).ravel()
        centres = (np.column_stack([cols.ravel(), rows.ravel()]) + 0.5) * size + self.lo
        state = np.zeros(GRID * GRID, np.int8)
        state[cells[path.contains_points(centres)]] = 1  # 1: inside
        state[_crossed(vertices, self.lo, size)] = 2  # 2: the edge crosses it, test each point
        where = state[self._cells]
        inside = where == 1
        maybe = np.flatnonzero(where == 2)
        if len(maybe):
            inside[maybe[path.contains_points(self.xy[maybe])]] = True
        return np.flatnonzero(inside)


def cell_of(xy: np.ndarray, lo: np.ndarray, hi: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Each point's cell in a ``(width, height)`` grid over the frame, as ``iy * width + ix``.

    Example:
        >>> cell_of(np.array([[0.0, 0.0], [1.0, 1.0]]), np.zeros(2), np.ones(2), (4, 2)).tolist()
        [0, 7]
    """
    shape_arr = np.asarray(shape)
    span = np.where(hi - lo > 0, hi - lo, 1)
    ij = np.floor((xy - lo) / span * shape_arr).astype(np.int64)
    ij = np.clip(ij, 0, shape_arr - 1)
    return ij[:, 1] * shape[0] + ij[:, 0]


def density_raster(
    xy: np.ndarray,
    lo: np.ndarray,
    hi: np.ndarray,
    shape: tuple[int, int],
    weights: np.ndarray | None = None,
) -> np.ndarray:
    """How many points fall in each cell of a ``(width, height)`` grid: a 2-D histogram.

    Args:
        xy: The points, ``(n, 2)``.
        lo: The grid's low corner.
        hi: The grid's high corner.
        shape: Cells along x and along y.
        weights: Per-point values, ``(n,)`` or ``(n, k)``: their sums per cell instead.

    Returns:
        ``(height, width)`` counts (or ``(height, width, k)`` sums), row 0 at the lowest y.

    Example:
        >>> xy = np.random.default_rng(0).uniform(0, 1, (1000, 2))
        >>> density_raster(xy, np.zeros(2), np.ones(2), (8, 4)).sum()
        np.float64(1000.0)
    """
    cells = cell_of(xy, lo, hi, shape)
    count = shape[0] * shape[1]
    if weights is None:
        return np.bincount(cells, minlength=count).astype(np.float64).reshape(shape[1], shape[0])
    weights = np.asarray(weights, dtype=np.float64)
    columns = weights.reshape(len(xy), weights.shape[1] if weights.ndim > 1 else 1)
    sums = [np.bincount(cells, columns[:, j], minlength=count) for j in range(columns.shape[1])]
    out = np.stack(sums, axis=-1).reshape(shape[1], shape[0], -1)
    return out[..., 0] if np.ndim(weights) == 1 else out


def _crossed(vertices: np.ndarray, lo: np.ndarray, size: np.ndarray) -> np.ndarray:
    """The flat indices of the grid cells a closed polygon's edges pass through (or touch).

    Edges are sampled at a third of a cell; each sample marks its cell and the eight around
    it, so a cell whose corner an edge clips between two samples is marked too.
    """
    ends = np.vstack([vertices[1:], vertices[:1]])
    steps = np.maximum(np.ceil(np.abs((ends - vertices) / size).max(axis=1) * 3), 1).astype(int)
    edge = np.repeat(np.arange(len(vertices)), steps + 1)
    t = np.concatenate([np.linspace(0, 1, s + 1) for s in steps])[:, None]
    samples = vertices[edge] + t * (ends[edge] - vertices[edge])
    ij = np.floor((samples - lo) / size).astype(np.int64)
    around = np.array([(a, b) for a in (-1, 0, 1) for b in (-1, 0, 1)])
    ij = (ij[:, None, :] + around[None]).reshape(-1, 2)
    ij = ij[((ij >= 0) & (ij < GRID)).all(axis=1)]
    return np.unique(ij[:, 1] * GRID + ij[:, 0])
