"""What a UMAP map shows, computed apart from drawing: colours, legend, frame, highlights, labels.

:func:`projection_plot` turns a projection's rows into a :class:`ProjectionPlot`;
:mod:`gcsemb.view.viz` only draws it (as ``umap.plot`` separates computing from drawing). Every
label here is already escaped for matplotlib (:func:`plain_text`): a ``$`` in a folder name, a query
or a title is a dollar sign, never mathtext.

Example:
    >>> import pandas as pd
    >>> coords = pd.DataFrame({"x": [0.0, 1.0, 2.0], "y": [0.0, 1.0, 0.5], "folder": list("aab")})
    >>> plot = projection_plot(coords, color_by="folder")
    >>> [entry.label for entry in plot.legend]
    ['a (2)', 'b (1)']
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.view.layout import PAD, frame_limits, point_style

if TYPE_CHECKING:
    import pandas as pd

OTHER_COLOR = "#c8c8c8"
SINGLE_COLOR = "#3b6ea8"

RGBA = tuple[float, float, float, float]


def plain_text(text: object) -> str:
    r"""``text`` as matplotlib should draw it, literally: each ``$`` escaped (no mathtext).

    A folder named ``price $5$ and $x^2$`` would otherwise be typeset as math, or stop the
    drawing when it is no valid math.

    Example:
        >>> print(plain_text("price $5$"))
        price \$5\$
    """
    return str(text).replace("$", r"\$")


@dataclass(frozen=True)
class LegendEntry:
    """One line of the legend: an escaped label with its count, and its colour."""

    label: str
    color: RGBA


@dataclass(frozen=True)
class ProjectionPlot:
    """Everything a projection plot shows but the thumbnails, ready to draw.

    Attributes:
        xy: The points, far outliers pinned to the frame's edge.
        pinned: Which points were pinned (drawn hollow).
        order: The drawing order (random, categories above the grey "others").
        colors: Each point's RGBA colour (its category's, else the single colour); thumbnails
            and pinned points are framed in it.
        values: With a numeric ``color_by``: the numbers the colour map shows; else None.
        size: Marker area in points^2.
        alpha: Marker opacity.
        xlim: The x range shown.
        ylim: The y range shown.
        highlight: Rows to mark, the first with a star.
        legend: The legend's entries (categories only).
        legend_title: Title of the legend or label of the colour bar ("" without colours).
        title: The plot's title.
        about: What the caption says of the projection (model tag, UMAP parameters).
    """

    xy: np.ndarray
    pinned: np.ndarray
    order: np.ndarray
    colors: np.ndarray
    values: np.ndarray | None
    size: float
    alpha: float
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    highlight: np.ndarray
    legend: tuple[LegendEntry, ...]
    legend_title: str
    title: str
    about: tuple[str, ...]


def coords_frame(coords: Any) -> pd.DataFrame:
    """The rows to plot: a projection's DataFrame as it is, or an ``(n, 2)`` array as x/y.

    Example:
        >>> list(coords_frame(np.zeros((3, 2))).columns)
        ['x', 'y']
    """
    import pandas as pd

    if isinstance(coords, pd.DataFrame):
        if not {"x", "y"} <= set(coords.columns):
            raise ValueError(
                "These rows have no x/y columns: compute them first with "
                "gcsemb.umap_project(dataset), then plot the DataFrame it returns."
            )
        return coords
    array = np.asarray(coords, dtype=float)
    if array.ndim != 2 or array.shape[1] != 2:
        raise ValueError(f"Expected (n, 2) coordinates, got shape {array.shape}.")
    return pd.DataFrame({"x": array[:, 0], "y": array[:, 1]})


def projection_plot(
    frame: pd.DataFrame,
    *,
    color_by: str | None = None,
    highlight: Sequence[str] | None = None,
    title: str | None = None,
    point_size: float | None = None,
    alpha: float | None = None,
    max_categories: int = 10,
    seed: int = 0,
) -> ProjectionPlot:
    """What :func:`gcsemb.view.viz.plot_projection` draws for these rows (see its arguments).

    Example:
        >>> import pandas as pd
        >>> plot = projection_plot(pd.DataFrame({"x": [0.0, 1.0], "y": [1.0, 0.0]}))
        >>> plot.title, plot.values is None
        ('UMAP of 2 images', True)
    """
    raw = frame[["x", "y"]].to_numpy(np.float64)
    n = len(raw)
    lo, hi = frame_limits(raw)
    xy = np.clip(raw, lo, hi)  # far outliers are pinned to the frame, not left to squash the map
    auto_size, auto_alpha = point_style(n)
    order = np.random.default_rng(seed).permutation(n)  # no category hides another
    colors, values, legend, others = _colors(frame, color_by, max_categories)
    order = np.concatenate([order[others[order]], order[~others[order]]])  # grey ones under
    pad = (hi - lo) * PAD
    main = title or (f"UMAP of {n:,} images" + (f", coloured by {color_by}" if color_by else ""))
    return ProjectionPlot(
        xy=xy,
        pinned=(xy != raw).any(axis=1),
        order=order,
        colors=colors,
        values=values,
        size=auto_size if point_size is None else point_size,
        alpha=auto_alpha if alpha is None else alpha,
        xlim=(lo[0] - pad[0], hi[0] + pad[0]),
        ylim=(lo[1] - pad[1], hi[1] + pad[1]),
        highlight=_rows_of(frame, highlight) if highlight else np.zeros(0, np.int64),
        legend=legend,
        legend_title=plain_text(color_by) if color_by else "",
        title=plain_text(main),
        about=_about(frame.attrs.get("umap", {})),
    )


def caption(plot: ProjectionPlot, thumbnails: int | None = None) -> str:
    """The line above the plot: model, UMAP parameters, thumbnails drawn, outliers pinned.

    Example:
        >>> import pandas as pd
        >>> caption(projection_plot(pd.DataFrame({"x": [0.0], "y": [0.0]})), thumbnails=0)
        '0 thumbnails'
    """
    pinned = int(plot.pinned.sum())
    details = [
        *plot.about,
        f"{thumbnails} thumbnails" if thumbnails is not None else None,
        f"{pinned} far outliers pinned to the edge (hollow)" if pinned else None,
    ]
    return plain_text(" · ".join(d for d in details if d))


def _about(info: Mapping[str, Any]) -> tuple[str, ...]:
    """The caption's words about a projection (``coords.attrs["umap"]``)."""
    about = [f"model {info['model_tag']}"] if info.get("model_tag") else []
    if "n_neighbors" in info:
        about.append(f"n_neighbors={info['n_neighbors']}, min_dist={info['min_dist']}")
    return tuple(about)


def _colors(
    frame: pd.DataFrame, color_by: str | None, max_categories: int
) -> tuple[np.ndarray, np.ndarray | None, tuple[LegendEntry, ...], np.ndarray]:
    """Colours of the points: RGBA each, numbers (numeric column), legend, and the grey ones.

    The last array says which points fall in no category of the legend (drawn grey).
    """
    import pandas as pd

    single = np.tile(_rgba(SINGLE_COLOR), (len(frame), 1))
    none = np.zeros(len(frame), bool)
    if color_by is None:
        return single, None, (), none
    if color_by not in frame:
        raise KeyError(
            f"No column {color_by!r} to colour by; columns: {', '.join(map(str, frame))}."
        )
    values = frame[color_by]
    if not _is_categorical(values):
        return single, pd.to_numeric(values, errors="coerce").to_numpy(float), (), none
    names = values.astype(str)
    counts = names.value_counts()
    shown = list(counts.index[:max_categories])
    palette = [_rgba(c) for c in _palette(len(shown))]
    table = np.array([*palette, _rgba(OTHER_COLOR)])  # index -1 (not shown): grey
    colors = table[pd.Index(shown).get_indexer(names)]  # vectorised: a million rows in ms
    legend = [
        LegendEntry(f"{plain_text(s)} ({int(counts[s]):,})", palette[i])
        for i, s in enumerate(shown)
    ]
    rest = counts.iloc[max_categories:]
    if len(rest):
        legend.append(LegendEntry(f"{len(rest)} others ({int(rest.sum()):,})", _rgba(OTHER_COLOR)))
    return colors, None, tuple(legend), ~names.isin(shown).to_numpy()


def _is_categorical(values: pd.Series) -> bool:
    import pandas as pd

    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == bool:
        return True
    if pd.api.types.is_integer_dtype(values) and values.nunique() <= 20:
        return True
    return not pd.api.types.is_numeric_dtype(values)


def _palette(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _rgba(color: Any) -> RGBA:
    from matplotlib.colors import to_rgba

    return to_rgba(color)


def _rows_of(frame: pd.DataFrame, uris: Sequence[str]) -> np.ndarray:
    """The rows of ``uris`` that ``frame`` holds, in the order given."""
    if "uri" not in frame:
        raise ValueError("highlight= needs a 'uri' column: pass the DataFrame of umap_project.")
    where = {u: i for i, u in enumerate(frame["uri"])}
    return np.asarray([where[u] for u in uris if u in where], np.int64)
