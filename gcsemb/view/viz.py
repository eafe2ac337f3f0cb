"""Matplotlib plots of a dataset: the UMAP scatter with image thumbnails, and image grids.

Computing and drawing are separate (as in ``umap.plot``):
:func:`gcsemb.explore.projection.umap_project` computes coordinates once;
:func:`gcsemb.view.plot_content.projection_plot` computes what a plot shows (colours, legend, frame,
highlights) and :func:`gcsemb.view.layout.plan_thumbnails` where thumbnails go; the functions here
fetch the thumbnails and draw. :func:`plot_projection` does it all, into your own Axes or a new
figure. Thumbnails are fetched concurrently and cached on disk (:mod:`gcsemb.view.thumbnails`), so
re-plotting is fast; a dataset's rows fetch only images from the source it was embedded from
(:mod:`gcsemb.storage.scope`). Every label is drawn as written: a ``$``
in a folder name, a query or a title is a dollar sign, never mathtext. Grids of search results:
:func:`image_grid` (:mod:`gcsemb.view.grid`).

Example:
    >>> from gcsemb.explore.projection import umap_project
    >>> from gcsemb.view.viz import plot_projection, image_grid
    >>> coords = umap_project("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> ax = plot_projection(coords, color_by="folder", thumbnails=60)  # doctest: +SKIP
    >>> ax.figure.savefig("umap.png", dpi=150)  # doctest: +SKIP
    >>> image_grid(search_text(dst, "a dog", k=10))  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.extras import require
from gcsemb.view.grid import image_grid
from gcsemb.view.layout import ThumbnailPlan, plan_thumbnails
from gcsemb.view.plot_content import ProjectionPlot, caption, coords_frame, projection_plot
from gcsemb.view.thumbnails import as_image, row_thumbnails

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from PIL import Image

THUMBNAIL_GID = "gcsemb-thumbnail"
"""The ``gid`` of every thumbnail artist, to find them: ``[a for a in ax.artists if ...]``."""
HIGHLIGHT_GID = "gcsemb-highlight"
DENSITY_FROM = 20_000
"""From this many points on, a map is a shaded 2-D histogram (single points only where sparse)."""

__all__ = [
    "DENSITY_FROM",
    "HIGHLIGHT_GID",
    "THUMBNAIL_GID",
    "axes_points",
    "draw_caption",
    "draw_density",
    "draw_projection",
    "draw_thumbnails",
    "fetch_thumbnails",
    "image_grid",  # drawn by gcsemb.view.grid; here as well, beside plot_projection
    "plot_projection",
]


def plot_projection(
    coords: Any,
    ax: Axes | None = None,
    *,
    color_by: str | None = None,
    thumbnails: int = 0,
    thumbnail_points: float | None = None,
    highlight: Sequence[str] | None = None,
    title: str | None = None,
    token: Any = None,
    point_size: float | None = None,
    alpha: float | None = None,
    legend: bool = True,
    max_categories: int = 10,
    seed: int = 0,
    density: bool | None = None,
) -> Axes:
    """Scatter a UMAP projection, coloured by a column, with image thumbnails on top.

    Args:
        coords: The DataFrame of :func:`gcsemb.explore.projection.umap_project` (``x``, ``y``, and
            ``uri``/``md5`` for thumbnails), or an ``(n, 2)`` array.
        ax: Axes to draw into; None makes a new 10x8 inch figure.
        color_by: A column to colour by: categories (e.g. ``"folder"``; the largest
            ``max_categories`` get colours, the rest grey) or numbers (a colour bar).
        thumbnails: How many images to draw over their points, picked from the densest areas
            and never overlapping (fewer when they do not fit).
        thumbnail_points: Longest side of a thumbnail in points (default: from their number).
        highlight: URIs to mark (e.g. search results); the first gets a star.
        title: Title (default: ``"UMAP of N images"`` and what the colours mean), drawn as
            written (a ``$`` is a dollar sign, as in every label).
        token: Credentials for fetching thumbnails from ``gs://`` (or a
            :class:`~gcsemb.storage.Store` whose access to reuse); default: the access the
            dataset was read with (``coords.attrs["store"]``). Only images under the
            dataset's source are fetched (:func:`gcsemb.storage.scope.dataset_scope`).
        point_size: Marker area in points^2 (default: from the number of points).
        alpha: Marker opacity (default: from the number of points, so dense areas read darker).
        legend: Draw the legend or colour bar.
        max_categories: Colours for at most this many categories.
        seed: Seed for the drawing order and the thumbnail choice among equals.
        density: Draw a shaded 2-D histogram where points overlap and single points only where
            sparse (:func:`draw_density`: a million points in about a second); None: from
            :data:`DENSITY_FROM` points on.

    Returns:
        The Axes. Thumbnails are artists with ``gid == gcsemb.view.viz.THUMBNAIL_GID``.

    Example:
        >>> ax = plot_projection(coords, color_by="folder", thumbnails=80)  # doctest: +SKIP
        >>> ax.figure.savefig("umap.png", dpi=150, bbox_inches="tight")  # doctest: +SKIP
    """
    frame = coords_frame(coords)
    plot = projection_plot(
        frame,
        color_by=color_by,
        highlight=highlight,
        title=title,
        point_size=point_size,
        alpha=alpha,
        max_categories=max_categories,
        seed=seed,
    )
    if ax is None:
        plt = require(
            "matplotlib.pyplot", "viz", "Plots", "pip install 'gcsemb[viz]' (or matplotlib)"
        )
        _, ax = plt.subplots(figsize=(10, 8), layout="constrained")
    if density is None:
        density = len(frame) >= DENSITY_FROM
    width, height = axes_points(ax)  # about two pixels per cell at 150 dpi
    cells = (max(int(width * 150 / 72 / 2), 8), max(int(height * 150 / 72 / 2), 8))
    draw_projection(ax, plot, legend=legend, density=cells if density else None)
    drawn = 0 if thumbnails else None
    if thumbnails > 0:  # placed in the axes as drawn: a colour bar leaves them less room
        plan = plan_thumbnails(plot.xy, thumbnails, axes_points(ax), thumbnail_points)
        drawn = draw_thumbnails(ax, plot, plan, fetch_thumbnails(frame, plan.rows, token=token))
    draw_caption(ax, caption(plot, drawn))
    return ax


def axes_points(ax: Axes) -> tuple[float, float]:
    """Width and height of ``ax`` in points, as it is placed in its figure now.

    Example:
        >>> from matplotlib.figure import Figure
        >>> ax = Figure(figsize=(4, 3)).add_axes((0, 0, 0.5, 1))
        >>> axes_points(ax)
        (144.0, 216.0)
    """
    box = ax.get_position()
    width, height = ax.figure.get_size_inches() * 72
    return float(box.width * width), float(box.height * height)


def fetch_thumbnails(
    frame: pd.DataFrame, rows: np.ndarray, *, token: Any = None
) -> list[Image.Image | None]:
    """The thumbnails of ``frame``'s ``rows`` (None where unavailable).

    From the disk cache, or fetched with the dataset's access and only under its source
    (:func:`gcsemb.view.thumbnails.row_thumbnails`).

    Example:
        >>> images = fetch_thumbnails(coords, plan.rows)  # doctest: +SKIP
    """
    if "uri" not in frame:
        raise ValueError("Thumbnails need a 'uri' column: pass the DataFrame of umap_project.")
    if not len(rows):
        return []
    uris = frame["uri"].to_numpy()[rows]
    md5s = frame["md5"].to_numpy()[rows] if "md5" in frame else None
    sizes = frame["size"].to_numpy()[rows] if "size" in frame else None  # read no further
    jpegs = row_thumbnails(uris, md5s, frame.attrs, token=token, sizes=sizes)
    return [as_image(j) for j in jpegs]


def draw_projection(
    ax: Axes, plot: ProjectionPlot, legend: bool = True, *, density: tuple[int, int] | None = None
) -> None:
    """Draw the points, their legend or colour bar, the highlights, the frame and the title.

    ``density=(width, height)`` draws a shaded 2-D histogram of that many cells where points
    overlap, and single points only where the map is sparse: a million points draw in about a
    second (:func:`draw_density`). None draws every point.

    Example:
        >>> import pandas as pd
        >>> from matplotlib.figure import Figure
        >>> ax = Figure().add_subplot()
        >>> draw_projection(ax, projection_plot(pd.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0]})))
        >>> ax.get_title(loc="left")
        'UMAP of 2 images'
    """
    order = plot.order
    numeric = plot.values is not None
    if density is not None:
        art = draw_density(ax, plot, density)
    else:
        art = ax.scatter(
            plot.xy[order, 0],
            plot.xy[order, 1],
            c=(plot.values if numeric else plot.colors)[order],
            cmap="viridis" if numeric else None,
            s=plot.size,
            alpha=plot.alpha,
            linewidths=0,
            rasterized=True,
        )
    if legend and numeric:
        bar = ax.figure.colorbar(art, ax=ax, shrink=0.7, pad=0.01)
        bar.set_label(plot.legend_title)
        bar.solids.set_alpha(1)
    elif legend and plot.legend:
        _draw_legend(ax, plot)
    if plot.pinned.any():
        ax.scatter(
            *plot.xy[plot.pinned].T,
            s=max(plot.size, 9),
            facecolors="none",
            edgecolors=plot.colors[plot.pinned],
            linewidths=0.8,
        )
    ax.set_xlim(*plot.xlim)
    ax.set_ylim(*plot.ylim)
    _draw_highlight(ax, plot)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1", color="0.4")
    ax.set_ylabel("UMAP 2", color="0.4")
    for spine in ax.spines.values():
        spine.set_color("0.8")
    ax.set_title(plot.title, loc="left", fontsize=13, fontweight="bold", pad=20)


def draw_density(ax: Axes, plot: ProjectionPlot, cells: tuple[int, int], sparse: int = 2) -> Any:
    """Draw the points as a shaded 2-D histogram, and as single markers where sparse.

    Each of the ``(width, height)`` cells over the frame is painted in the mean colour of its
    points (their category's, or the colour map's for numbers), more opaque the more points it
    holds (log-shaded). Points with at most ``sparse`` points in the cell four times coarser
    around them are drawn as markers instead (at most 20,000 of them), so outliers and small
    clusters stay visible.

    Returns:
        What a colour bar reads its colour map from (numeric colours), else the image.

    Example:
        >>> draw_density(ax, projection_plot(coords), (320, 240))  # doctest: +SKIP
    """
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    from gcsemb.view.map_points import cell_of, density_raster

    lo, hi = np.array([plot.xlim[0], plot.ylim[0]]), np.array([plot.xlim[1], plot.ylim[1]])
    numeric = plot.values is not None
    values = np.nan_to_num(plot.values, nan=np.nanmin(plot.values)) if numeric else None
    norm = Normalize(*(np.nanmin(plot.values), np.nanmax(plot.values)) if numeric else (0, 1))
    shown = norm(values) if numeric else plot.colors[:, :3]
    # sparse: few points in a cell four times coarser (a marker's reach); drawn as markers
    coarse = (max(cells[0] // 4, 1), max(cells[1] // 4, 1))
    around = np.bincount(cell_of(plot.xy, lo, hi, coarse), minlength=coarse[0] * coarse[1])
    single = around[cell_of(plot.xy, lo, hi, coarse)] <= sparse
    if single.sum() > 20_000:  # too many to draw one by one: all in the histogram
        single[:] = False
    sums = density_raster(
        plot.xy[~single],
        lo,
        hi,
        cells,
        weights=np.column_stack([np.ones((~single).sum()), shown[~single]]),
    )
    dense = sums[..., 0]
    mean = sums[..., 1:] / np.maximum(dense, 1)[..., None]
    rgb = colormaps["viridis"](mean[..., 0])[..., :3] if numeric else mean
    shade = np.log1p(dense) / np.log1p(max(dense.max(), 1))
    image = np.dstack([rgb, np.where(dense > 0, 0.3 + 0.7 * shade, 0.0)])
    art = ax.imshow(image, origin="lower", extent=(*plot.xlim, *plot.ylim), aspect="auto", zorder=1)
    rows = plot.order[single[plot.order]]
    ax.scatter(
        *plot.xy[rows].T,
        c=colormaps["viridis"](norm(values[rows])) if numeric else plot.colors[rows],
        s=max(plot.size, 4.0),
        alpha=max(plot.alpha, 0.6),
        linewidths=0,
        zorder=2,
    )
    return ScalarMappable(norm, "viridis") if numeric else art


def _draw_legend(ax: Axes, plot: ProjectionPlot) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], marker="o", linestyle="", markersize=7, color=e.color, label=e.label)
        for e in plot.legend
    ]
    ax.legend(
        handles=handles,
        title=plot.legend_title,
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        frameon=False,
        fontsize=9,
        title_fontsize=10,
        borderaxespad=0,
    )


def _draw_highlight(ax: Axes, plot: ProjectionPlot) -> None:
    """Black rings (no category colour is black) on the highlighted rows, a star on the first."""
    if not len(plot.highlight):
        return
    rows = plot.highlight
    style = {"facecolors": "none", "edgecolors": "black", "linewidths": 1.6}
    ring = ax.scatter(*plot.xy[rows].T, s=70, zorder=5.5, **style)  # above thumbnails' dots
    star = ax.scatter(
        *plot.xy[rows[:1]].T,
        s=260,
        marker="*",
        color="#ffc800",
        edgecolors="black",
        linewidths=0.8,
        zorder=6,
    )
    for art in (ring, star):
        art.set_gid(HIGHLIGHT_GID)


def draw_thumbnails(
    ax: Axes, plot: ProjectionPlot, plan: ThumbnailPlan, images: Sequence[Image.Image | None]
) -> int:
    """Draw the planned thumbnails that have an image, framed in their point's colour.

    Returns:
        How many were drawn.

    Example:
        >>> plan = plan_thumbnails(plot.xy, 40, axes_points(ax))  # doctest: +SKIP
        >>> draw_thumbnails(ax, plot, plan, fetch_thumbnails(coords, plan.rows))  # doctest: +SKIP
        37
    """
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    drawn = 0
    for i, spot, moved, image in zip(plan.rows, plan.spots, plan.moved, images, strict=True):
        if image is None:
            continue
        edge, point = plot.colors[i], plot.xy[i]
        art = AnnotationBbox(
            OffsetImage(np.asarray(image), zoom=plan.points / max(image.size)),
            (point[0], point[1]),
            xybox=(spot[0], spot[1]),
            boxcoords="data",
            frameon=True,
            pad=0.12,
            bboxprops={"edgecolor": edge, "linewidth": 1.4, "facecolor": "white"},
            arrowprops={"arrowstyle": "-", "color": edge, "linewidth": 0.9} if moved else None,
        )
        art.set_gid(THUMBNAIL_GID)
        art.set_zorder(4)
        art.set_in_layout(False)  # a thumbnail at the edge must not shrink the axes
        ax.add_artist(art)
        if moved:  # the image's own point, where its leader line ends
            ax.scatter(*point, s=14, color=edge, edgecolors="white", linewidths=0.6, zorder=5)
        drawn += 1
    return drawn


def draw_caption(ax: Axes, text: str) -> None:
    """Write the small grey line between the title and the plot.

    Example:
        >>> draw_caption(ax, caption(plot, thumbnails=12))  # doctest: +SKIP
    """
    ax.annotate(
        text,
        xy=(0, 1),
        xycoords="axes fraction",
        xytext=(0, 5),
        textcoords="offset points",
        fontsize=8.5,
        color="0.35",
        va="bottom",
    )
