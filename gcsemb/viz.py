"""Matplotlib plots of a dataset: the UMAP scatter with image thumbnails, and image grids.

Computing and drawing are separate (as in ``umap.plot``): :func:`gcsemb.projection.umap_project`
computes coordinates once; :func:`plot_projection` draws them as often as you like, into your own
Axes or a new figure. Thumbnails are fetched concurrently and cached on disk
(:mod:`gcsemb.thumbnails`), so re-plotting is fast; a dataset's rows fetch only images from the
source it was embedded from (:func:`gcsemb.thumbnails.dataset_scope`). Every label is drawn as
written: a ``$`` in a folder name, a query or a title is a dollar sign, never mathtext.

Example:
    >>> from gcsemb.projection import umap_project
    >>> from gcsemb.viz import plot_projection, image_grid
    >>> coords = umap_project("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> ax = plot_projection(coords, color_by="folder", thumbnails=60)  # doctest: +SKIP
    >>> ax.figure.savefig("umap.png", dpi=150)  # doctest: +SKIP
    >>> image_grid(search_text(dst, "a dog", k=10))  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.thumbnails import DEFAULT_SIZE, dataset_scope, thumbnails

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

THUMBNAIL_GID = "gcsemb-thumbnail"
"""The ``gid`` of every thumbnail artist, to find them: ``[a for a in ax.artists if ...]``."""
HIGHLIGHT_GID = "gcsemb-highlight"
OTHER_COLOR = "#c8c8c8"
SINGLE_COLOR = "#3b6ea8"


def _pyplot() -> Any:
    try:
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "Plots need matplotlib: pip install 'gcsemb[viz]' (or matplotlib)."
        ) from e
    return plt


def plain_text(text: object) -> str:
    r"""``text`` as matplotlib should draw it, literally: each ``$`` escaped (no mathtext).

    A folder named ``price $5$ and $x^2$`` would otherwise be typeset as math, or stop the
    drawing when it is no valid math.

    Example:
        >>> print(plain_text("price $5$"))
        price \$5\$
    """
    return str(text).replace("$", r"\$")


def _palette(n: int) -> list[Any]:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def point_style(n: int) -> tuple[float, float]:
    """Marker area (points^2) and alpha that keep ``n`` points readable, from 10 to 1M."""
    size = float(np.clip(12000 / max(n, 1), 0.4, 24))
    alpha = float(np.clip(math.sqrt(2500 / max(n, 1)), 0.12, 0.9))
    return size, alpha


def _categories(values: pd.Series, max_categories: int) -> tuple[np.ndarray, list[tuple]]:
    """Per point an index into the legend entries (-1: "other"); entries (label, count, colour)."""
    counts = values.astype(str).value_counts()
    shown = list(counts.index[:max_categories])
    colors = _palette(len(shown))
    lookup = {name: i for i, name in enumerate(shown)}
    codes = np.array([lookup.get(v, -1) for v in values.astype(str)], dtype=np.int64)
    entries = [(name, int(counts[name]), colors[i]) for i, name in enumerate(shown)]
    rest = counts.iloc[max_categories:]
    if len(rest):
        entries.append((f"{len(rest)} others", int(rest.sum()), OTHER_COLOR))
    return codes, entries


def _is_categorical(values: pd.Series) -> bool:
    import pandas as pd

    if isinstance(values.dtype, pd.CategoricalDtype) or values.dtype == bool:
        return True
    if pd.api.types.is_integer_dtype(values) and values.nunique() <= 20:
        return True
    return not pd.api.types.is_numeric_dtype(values)


def spread_sample(xy: np.ndarray, n: int, cell: tuple[float, float], seed: int = 0) -> np.ndarray:
    """Indices of up to ``n`` points at least one ``cell`` apart, from the densest areas first.

    ``xy`` is scaled to the unit square; ``cell`` is the (width, height) one thumbnail covers
    in that square. Each grid cell offers the point nearest its centre of mass; cells holding
    more points are taken first, and a point too close to one already taken is skipped, so
    thumbnails show the big clusters and never overlap.
    """
    if n <= 0 or len(xy) == 0:
        return np.zeros(0, np.int64)
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    unit = (xy - lo) / np.where(hi - lo > 0, hi - lo, 1)
    cw, ch = cell
    gx = np.floor(unit[:, 0] / cw).astype(np.int64)
    gy = np.floor(unit[:, 1] / ch).astype(np.int64)
    key = gx * 1_000_003 + gy
    order = np.argsort(key, kind="stable")
    keys, starts, counts = np.unique(key[order], return_index=True, return_counts=True)
    reps, sizes = [], []
    for start, count in zip(starts, counts, strict=True):
        members = order[start : start + count]
        centre = unit[members].mean(axis=0)
        reps.append(members[np.argmin(((unit[members] - centre) ** 2).sum(axis=1))])
        sizes.append(count)
    rng = np.random.default_rng(seed)
    ranking = np.lexsort((rng.random(len(sizes)), -np.asarray(sizes)))
    taken: list[int] = []
    for r in ranking:
        p = unit[reps[r]]
        if all(abs(p[0] - unit[t][0]) >= cw or abs(p[1] - unit[t][1]) >= ch for t in taken):
            taken.append(int(reps[r]))
            if len(taken) == n:
                break
    return np.asarray(taken, np.int64)


def plot_projection(
    coords: Any,
    ax: Axes | None = None,
    *,
    color_by: str | None = None,
    thumbnails: int = 0,
    thumbnail_size: float | None = None,
    highlight: Sequence[str] | None = None,
    title: str | None = None,
    token: Any = None,
    point_size: float | None = None,
    alpha: float | None = None,
    legend: bool = True,
    max_categories: int = 10,
    seed: int = 0,
) -> Axes:
    """Scatter a UMAP projection, coloured by a column, with image thumbnails on top.

    Args:
        coords: The DataFrame of :func:`gcsemb.projection.umap_project` (``x``, ``y``, and
            ``uri``/``md5`` for thumbnails), or an ``(n, 2)`` array.
        ax: Axes to draw into; None makes a new 10x8 inch figure.
        color_by: A column to colour by: categories (e.g. ``"folder"``; the largest
            ``max_categories`` get colours, the rest grey) or numbers (a colour bar).
        thumbnails: How many images to draw over their points, picked from the densest areas
            and never overlapping (fewer when they do not fit).
        thumbnail_size: Longest side of a thumbnail in points (default: from their number).
        highlight: URIs to mark (e.g. search results); the first gets a star.
        title: Title (default: ``"UMAP of N images"`` and what the colours mean), drawn as
            written (a ``$`` is a dollar sign, as in every label).
        token: Credentials for fetching thumbnails from ``gs://`` (or a
            :class:`~gcsemb.storage.Store` whose access to reuse); default: the access the
            dataset was read with (``coords.attrs["store"]``). Only images under the
            dataset's source are fetched (:func:`gcsemb.thumbnails.dataset_scope`).
        point_size: Marker area in points^2 (default: from the number of points).
        alpha: Marker opacity (default: from the number of points, so dense areas read darker).
        legend: Draw the legend or colour bar.
        max_categories: Colours for at most this many categories.
        seed: Seed for the drawing order and the thumbnail choice among equals.

    Returns:
        The Axes. Thumbnails are artists with ``gid == gcsemb.viz.THUMBNAIL_GID``.

    Example:
        >>> ax = plot_projection(coords, color_by="folder", thumbnails=80)  # doctest: +SKIP
        >>> ax.figure.savefig("umap.png", dpi=150, bbox_inches="tight")  # doctest: +SKIP
    """
    import pandas as pd

    plt = _pyplot()
    frame = _coords_frame(coords)
    raw = frame[["x", "y"]].to_numpy(np.float64)
    n = len(raw)
    lo, hi = frame_limits(raw)
    xy = np.clip(raw, lo, hi)  # far outliers are pinned to the frame, not left to squash the map
    pinned = (xy != raw).any(axis=1)
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 8), layout="constrained")
    auto_size, auto_alpha = point_style(n)
    size = auto_size if point_size is None else point_size
    opacity = auto_alpha if alpha is None else alpha
    order = np.random.default_rng(seed).permutation(n)  # no category hides another

    point_colors: np.ndarray | None = None
    if color_by is not None:
        if color_by not in frame:
            raise KeyError(
                f"No column {color_by!r} to colour by; columns: {', '.join(map(str, frame))}."
            )
        values = frame[color_by]
        if _is_categorical(values):
            codes, entries = _categories(values, max_categories)
            table = np.array([_rgba(e[2]) for e in entries] + [_rgba(OTHER_COLOR)])
            point_colors = table[np.where(codes >= 0, codes, len(table) - 1)]
            order = np.concatenate([order[codes[order] < 0], order[codes[order] >= 0]])
            ax.scatter(
                xy[order, 0],
                xy[order, 1],
                c=point_colors[order],
                s=size,
                alpha=opacity,
                linewidths=0,
                rasterized=True,
            )
            if legend:
                _legend(ax, entries, color_by)
        else:
            numbers = pd.to_numeric(values, errors="coerce").to_numpy(float)
            art = ax.scatter(
                xy[order, 0],
                xy[order, 1],
                c=numbers[order],
                cmap="viridis",
                s=size,
                alpha=opacity,
                linewidths=0,
                rasterized=True,
            )
            if legend:
                bar = ax.figure.colorbar(art, ax=ax, shrink=0.7, pad=0.01)
                bar.set_label(plain_text(color_by))
                bar.solids.set_alpha(1)
    else:
        ax.scatter(
            xy[order, 0],
            xy[order, 1],
            color=SINGLE_COLOR,
            s=size,
            alpha=opacity,
            linewidths=0,
            rasterized=True,
        )

    if pinned.any():
        ax.scatter(
            xy[pinned, 0],
            xy[pinned, 1],
            s=max(size, 9),
            facecolors="none",
            edgecolors=point_colors[pinned] if point_colors is not None else SINGLE_COLOR,
            linewidths=0.8,
        )
    pad = (hi - lo) * 0.03
    ax.set_xlim(lo[0] - pad[0], hi[0] + pad[0])
    ax.set_ylim(lo[1] - pad[1], hi[1] + pad[1])

    drawn = 0
    if thumbnails > 0:
        drawn = _draw_thumbnails(ax, frame, xy, thumbnails, thumbnail_size, point_colors, token)
    if highlight:
        _highlight(ax, frame, xy, list(highlight))

    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_xlabel("UMAP 1", color="0.4")
    ax.set_ylabel("UMAP 2", color="0.4")
    for spine in ax.spines.values():
        spine.set_color("0.8")
    main = title or (f"UMAP of {n:,} images" + (f", coloured by {color_by}" if color_by else ""))
    ax.set_title(plain_text(main), loc="left", fontsize=13, fontweight="bold", pad=20)
    info = frame.attrs.get("umap", {})
    details = [
        f"model {info['model']}" if info.get("model") else None,
        f"n_neighbors={info['n_neighbors']}, min_dist={info['min_dist']}"
        if "n_neighbors" in info
        else None,
        f"{drawn} thumbnails" if thumbnails else None,
        f"{pinned.sum()} far outliers pinned to the edge (hollow)" if pinned.any() else None,
    ]
    ax.annotate(
        plain_text(" · ".join(d for d in details if d)),
        xy=(0, 1),
        xycoords="axes fraction",
        xytext=(0, 5),
        textcoords="offset points",
        fontsize=8.5,
        color="0.35",
        va="bottom",
    )
    return ax


def frame_limits(
    xy: np.ndarray, reach: float = 3.0, at_most: float = 0.01
) -> tuple[np.ndarray, np.ndarray]:
    """The (low, high) corners of the area worth showing: every point but a few far outliers.

    A handful of points UMAP flings far away would squash everything else into a corner. Points
    more than ``reach`` interquartile ranges beyond the quartiles are left outside (and pinned to
    the edge by :func:`plot_projection`), but only when they are at most ``at_most`` of all
    points: larger far groups are real clusters and stay in view.
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


def _rgba(color: Any) -> tuple[float, float, float, float]:
    from matplotlib.colors import to_rgba

    return to_rgba(color)


def _coords_frame(coords: Any) -> pd.DataFrame:
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


def _legend(ax: Axes, entries: list[tuple], title: str) -> None:
    from matplotlib.lines import Line2D

    handles = [
        Line2D(
            [],
            [],
            marker="o",
            linestyle="",
            markersize=7,
            color=color,
            label=f"{plain_text(name)} ({n:,})",
        )
        for name, n, color in entries
    ]
    ax.legend(
        handles=handles,
        title=plain_text(title),
        loc="upper left",
        bbox_to_anchor=(1.01, 1),
        frameon=False,
        fontsize=9,
        title_fontsize=10,
        borderaxespad=0,
    )


def _draw_thumbnails(
    ax: Axes,
    frame: pd.DataFrame,
    xy: np.ndarray,
    count: int,
    size_pt: float | None,
    point_colors: np.ndarray | None,
    token: Any,
) -> int:
    """Draw up to ``count`` non-overlapping thumbnails; return how many were drawn."""
    from matplotlib.offsetbox import AnnotationBbox, OffsetImage

    if "uri" not in frame:
        raise ValueError("Thumbnails need a 'uri' column: pass the DataFrame of umap_project.")
    fig = ax.figure
    box = ax.get_position()
    width_pt = box.width * fig.get_figwidth() * 72
    height_pt = box.height * fig.get_figheight() * 72
    auto = size_pt is None
    if size_pt is None:
        size_pt = float(np.clip(math.sqrt(width_pt * height_pt * 0.15 / count), 24, 64))
    while True:
        # the points span 1/1.06 of the axes (3% padding each side, see plot_projection)
        cell = (size_pt * 1.08 * 1.06 / width_pt, size_pt * 1.08 * 1.06 / height_pt)
        picked, spots = place_thumbnails(xy, count, cell)
        if len(picked) >= count or not auto or size_pt <= 24:
            break
        size_pt = max(24.0, size_pt * 0.85)  # clusters leave room for fewer: make them smaller
    if not len(picked):
        return 0
    md5s = frame["md5"].to_numpy()[picked] if "md5" in frame else None
    access = token if token is not None else frame.attrs.get("store")
    images = thumbnails(
        frame["uri"].to_numpy()[picked],
        md5s,
        size=DEFAULT_SIZE,
        token=access,
        scope=dataset_scope(frame.attrs),  # a dataset's rows fetch only from its source
    )
    drawn = 0
    for i, spot, image in zip(picked, spots, images, strict=True):
        if image is None:
            continue
        edge = point_colors[i] if point_colors is not None else SINGLE_COLOR
        moved = not np.allclose(spot, xy[i], rtol=0, atol=1e-6 * (np.abs(xy).max() + 1))
        art = AnnotationBbox(
            OffsetImage(np.asarray(image), zoom=size_pt / max(image.size)),
            (xy[i, 0], xy[i, 1]),
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
            ax.scatter(*xy[i], s=14, color=edge, edgecolors="white", linewidths=0.6, zorder=5)
        drawn += 1
    return drawn


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
    """
    if n <= 0 or len(xy) == 0:
        return np.zeros(0, np.int64), np.zeros((0, 2))
    lo, hi = xy.min(axis=0), xy.max(axis=0)
    span = np.where(hi - lo > 0, hi - lo, 1)
    unit = (xy - lo) / span
    size = np.asarray(cell, dtype=float)
    # points per rectangle, from a summed-area table of a grid 4x finer than a thumbnail
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
        ok = np.all((spots - size / 2 >= -0.03) & (spots + size / 2 <= 1.03), axis=1)
        if centres:
            placed = np.asarray(centres)
            gap = np.abs(spots[:, None, :] - placed[None, :, :])
            ok &= ~np.any(np.all(gap < size, axis=2), axis=1)
        if not ok.any():
            continue
        cost = np.where(ok, covered(spots) + penalty * distance, np.inf)
        best = int(np.argmin(cost))
        chosen.append(int(row))
        centres.append(spots[best])
        if len(chosen) == n:
            break
    spots = np.asarray(centres).reshape(-1, 2) * span + lo
    return np.asarray(chosen, np.int64), spots


def _highlight(ax: Axes, frame: pd.DataFrame, xy: np.ndarray, uris: list[str]) -> None:
    if "uri" not in frame:
        raise ValueError("highlight= needs a 'uri' column: pass the DataFrame of umap_project.")
    where = {u: i for i, u in enumerate(frame["uri"])}
    rows = [where[u] for u in uris if u in where]
    if not rows:
        return
    art = ax.scatter(
        xy[rows, 0],
        xy[rows, 1],
        s=70,
        facecolors="none",
        edgecolors="black",  # no category colour is black
        linewidths=1.6,
        zorder=5,
    )
    art.set_gid(HIGHLIGHT_GID)
    star = ax.scatter(
        xy[rows[:1], 0],
        xy[rows[:1], 1],
        s=260,
        marker="*",
        color="#ffc800",
        edgecolors="black",
        linewidths=0.8,
        zorder=6,
    )
    star.set_gid(HIGHLIGHT_GID)


def image_grid(
    results: Any,
    *,
    ncols: int | None = None,
    fig: Figure | None = None,
    tile: float = 2.0,
    max_images: int = 60,
    title: str | None = None,
    token: Any = None,
    thumbnail_size: int = 256,
) -> Figure:
    """Draw search results (or near-duplicate pairs) as a grid of images with their scores.

    Args:
        results: The DataFrame of :func:`~gcsemb.search.search_text` /
            :func:`~gcsemb.search.search_image` (``uri``, ``score``), of
            :func:`~gcsemb.search.near_duplicates` (``uri_a``, ``uri_b``, ``score``: one pair
            per row, side by side), or a list of URIs. A DataFrame's images are fetched only
            under its dataset's source (:func:`gcsemb.thumbnails.dataset_scope`); the URIs of a
            list are fetched as given.
        ncols: Images per row (default: 5; pairs: 2 pairs per row).
        fig: Figure to draw into (cleared); None makes one sized to the grid.
        tile: Inches per image.
        max_images: Draw at most this many images.
        title: Title (default: how many results), drawn as written (a ``$`` is a dollar sign).
        token: Credentials for ``gs://`` (or a :class:`~gcsemb.storage.Store`); default: the
            access the results' dataset was read with.
        thumbnail_size: Pixels of the thumbnails fetched.

    Returns:
        The Figure (not registered with pyplot, so a notebook shows it once; save it with
        ``fig.savefig(path)``).

    Example:
        >>> fig = image_grid(search_image(dst, "gs://b/photos/cat.jpg", k=10))  # doctest: +SKIP
        >>> fig.savefig("neighbours.png", dpi=150)  # doctest: +SKIP
    """
    import pandas as pd

    plt = _pyplot()
    pairs = isinstance(results, pd.DataFrame) and {"uri_a", "uri_b"} <= set(results.columns)
    if pairs:
        rows = results.head(max_images // 2)
        uris = [u for a, b in zip(rows["uri_a"], rows["uri_b"], strict=True) for u in (a, b)]
        scores = [s for s in rows.get("score", [None] * len(rows)) for _ in (0, 1)]
        md5s = None
        ncols = ncols or min(4, len(uris)) or 1
    elif isinstance(results, pd.DataFrame):
        rows = results.head(max_images)
        uris = list(rows["uri"])
        scores = list(rows["score"]) if "score" in rows else [None] * len(rows)
        md5s = list(rows["md5"]) if "md5" in rows else None
        ncols = ncols or min(5, len(uris)) or 1
    else:
        uris = [str(u) for u in results][:max_images]
        scores, md5s = [None] * len(uris), None
        ncols = ncols or min(5, len(uris)) or 1
    nrows = max(1, math.ceil(len(uris) / ncols))
    if fig is None:
        fig = plt.figure(figsize=(ncols * tile, nrows * (tile + 0.45) + 0.6))
        plt.close(fig)  # shown once when returned in a notebook, not again by pyplot
    else:
        fig.clear()
    scope = None  # a list: the caller named these URIs
    if isinstance(results, pd.DataFrame):
        token = results.attrs.get("store") if token is None else token
        scope = dataset_scope(results.attrs)  # a dataset's rows: only from its source
    images = thumbnails(uris, md5s, size=thumbnail_size, token=token, scope=scope) if uris else []
    for k in range(nrows * ncols):
        ax = fig.add_subplot(nrows, ncols, k + 1)
        ax.set_axis_off()
        if k >= len(uris):
            continue
        if images[k] is not None:
            ax.imshow(np.asarray(images[k]))
        else:
            ax.text(0.5, 0.5, "unavailable", ha="center", va="center", color="0.5", fontsize=9)
        name = _short(uris[k])
        label = f"{scores[k]:.3f}\n{name}" if scores[k] is not None else name
        if pairs:
            label = f"pair {k // 2 + 1} · {label}"
        ax.set_title(plain_text(label), fontsize=8)
    if not uris:
        fig.text(0.5, 0.5, "no results", ha="center", va="center", color="0.5")
    heading = title or (
        f"{len(uris) // 2} near-duplicate pairs" if pairs else f"{len(uris)} results"
    )
    fig.suptitle(plain_text(heading), fontsize=12, fontweight="bold")
    fig.set_layout_engine("constrained")
    return fig


def _short(uri: str, limit: int = 28) -> str:
    """The last two path parts of a URI, shortened in the middle to ``limit`` characters."""
    name = "/".join(uri.rstrip("/").split("/")[-2:])
    return name if len(name) <= limit else name[: limit // 2 - 1] + "…" + name[-(limit // 2) :]
