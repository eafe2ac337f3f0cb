"""Search results (or near-duplicate pairs) as a grid of images with their scores.

:func:`grid_content` computes what the grid shows (images, labels, shape), :func:`fetch_grid`
fetches the thumbnails and :func:`draw_grid` draws them; :func:`image_grid` does all three. A
DataFrame's images are fetched only under its dataset's source (:mod:`gcsemb.storage.scope`); the
URIs of a list are fetched as given. Labels are drawn as written (a ``$`` is a dollar sign).

Example:
    >>> from gcsemb.view.grid import image_grid
    >>> fig = image_grid(search_text(dst, "a dog", k=10))  # doctest: +SKIP
    >>> fig.savefig("dogs.png", dpi=150)  # doctest: +SKIP
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from gcsemb.extras import require
from gcsemb.view.plot_content import plain_text
from gcsemb.view.thumbnails import DEFAULT_SIZE_PX, as_image, row_thumbnails, thumbnail_bytes

if TYPE_CHECKING:
    from matplotlib.figure import Figure
    from PIL import Image


@dataclass(frozen=True)
class GridContent:
    """The images of an image grid, their labels and the grid's shape, ready to draw.

    Attributes:
        uris: The images, in order (pairs side by side).
        md5s: Their md5, when known (for the thumbnail cache).
        labels: Each image's title (score and short name).
        ncols: Images per row.
        nrows: Rows.
        title: The grid's title.
        attrs: The results' ``df.attrs`` (their dataset's access and source), or None for a
            list of URIs the caller named.
        sizes: Their size in bytes, when the rows say (no image is read beyond it).
    """

    uris: tuple[str, ...]
    md5s: tuple[Any, ...] | None
    labels: tuple[str, ...]
    ncols: int
    nrows: int
    title: str
    attrs: Mapping[str, Any] | None
    sizes: tuple[Any, ...] | None = None


def grid_content(
    results: Any, *, ncols: int | None = None, max_images: int = 60, title: str | None = None
) -> GridContent:
    """What :func:`image_grid` draws for ``results`` (see its arguments).

    Example:
        >>> grid = grid_content(["gs://b/cats/1.jpg", "gs://b/dogs/2.jpg"])
        >>> grid.labels, grid.ncols, grid.title
        (('cats/1.jpg', 'dogs/2.jpg'), 2, '2 results')
    """
    import pandas as pd

    frame = isinstance(results, pd.DataFrame)
    sizes = None
    pairs = frame and {"uri_a", "uri_b"} <= set(results.columns)
    if pairs:
        rows = results.head(max_images // 2)
        uris = [u for a, b in zip(rows["uri_a"], rows["uri_b"], strict=True) for u in (a, b)]
        scores = [s for s in rows.get("score", [None] * len(rows)) for _ in (0, 1)]
        md5s = None
    elif frame:
        rows = results.head(max_images)
        uris = list(rows["uri"])
        scores = list(rows["score"]) if "score" in rows else [None] * len(rows)
        md5s = tuple(rows["md5"]) if "md5" in rows else None
        sizes = tuple(rows["size"]) if "size" in rows else None
    else:
        uris = [str(u) for u in results][:max_images]
        scores, md5s = [None] * len(uris), None
    labels = [_label(uri, score) for uri, score in zip(uris, scores, strict=True)]
    if pairs:
        labels = [f"pair {k // 2 + 1} · {label}" for k, label in enumerate(labels)]
    ncols = ncols or min(4 if pairs else 5, len(uris)) or 1
    heading = title or (
        f"{len(uris) // 2} near-duplicate pairs" if pairs else f"{len(uris)} results"
    )
    return GridContent(
        uris=tuple(uris),
        md5s=md5s,
        labels=tuple(plain_text(label) for label in labels),
        ncols=ncols,
        nrows=max(1, math.ceil(len(uris) / ncols)),
        title=plain_text(heading),
        attrs=results.attrs if frame else None,
        sizes=sizes,
    )


def _label(uri: str, score: float | None) -> str:
    name = short_name(uri)
    return f"{score:.3f}\n{name}" if score is not None else name


def short_name(uri: str, limit: int = 28) -> str:
    """The last two path parts of a URI, shortened in the middle to ``limit`` characters.

    Example:
        >>> short_name("gs://bucket/photos/cats/a-very-long-file-name-indeed.jpg")
        'cats/a-very-l…ame-indeed.jpg'
    """
    name = "/".join(uri.rstrip("/").split("/")[-2:])
    return name if len(name) <= limit else name[: limit // 2 - 1] + "…" + name[-(limit // 2) :]


def image_grid(
    results: Any,
    *,
    ncols: int | None = None,
    fig: Figure | None = None,
    tile_inches: float = 2.0,
    max_images: int = 60,
    title: str | None = None,
    token: Any = None,
    thumbnail_px: int = 256,
) -> Figure:
    """Draw search results (or near-duplicate pairs) as a grid of images with their scores.

    Args:
        results: The DataFrame of :func:`~gcsemb.explore.search.search_text` /
            :func:`~gcsemb.explore.search.search_image` (``uri``, ``score``), of
            :func:`~gcsemb.explore.duplicates.near_duplicates` (``uri_a``, ``uri_b``, ``score``: one
            pair per row, side by side), or a list of URIs. A DataFrame's images are fetched only
            under its dataset's source (:func:`gcsemb.storage.scope.dataset_scope`); the URIs of
            a list are fetched as given.
        ncols: Images per row (default: 5; pairs: 2 pairs per row).
        fig: Figure to draw into (cleared); None makes one sized to the grid.
        tile_inches: Inches per image.
        max_images: Draw at most this many images.
        title: Title (default: how many results), drawn as written (a ``$`` is a dollar sign).
        token: Credentials for ``gs://`` (or a :class:`~gcsemb.storage.Store`); default: the
            access the results' dataset was read with.
        thumbnail_px: Pixels of the thumbnails fetched (longest side).

    Returns:
        The Figure (not registered with pyplot, so a notebook shows it once; save it with
        ``fig.savefig(path)``).

    Example:
        >>> fig = image_grid(search_image(dst, "gs://b/photos/cat.jpg", k=10))  # doctest: +SKIP
        >>> fig.savefig("neighbours.png", dpi=150)  # doctest: +SKIP
    """
    grid = grid_content(results, ncols=ncols, max_images=max_images, title=title)
    if fig is None:
        plt = require(
            "matplotlib.pyplot", "viz", "Image grids", "pip install 'gcsemb[viz]' (or matplotlib)"
        )
        size = (grid.ncols * tile_inches, grid.nrows * (tile_inches + 0.45) + 0.6)
        fig = plt.figure(figsize=size)
        plt.close(fig)  # shown once when returned in a notebook, not again by pyplot
    else:
        fig.clear()
    draw_grid(fig, grid, fetch_grid(grid, thumbnail_px=thumbnail_px, token=token))
    return fig


def fetch_grid(
    grid: GridContent, *, thumbnail_px: int = DEFAULT_SIZE_PX, token: Any = None
) -> list[Image.Image | None]:
    """The thumbnails of a grid's images (None where unavailable).

    A dataset's rows are fetched only under its source, with its access (unless ``token``); URIs
    the caller listed, as given.

    Example:
        >>> images = fetch_grid(grid_content(hits), thumbnail_px=128)  # doctest: +SKIP
    """
    if not grid.uris:
        return []
    if grid.attrs is None:  # a list: the caller named these URIs
        jpegs = thumbnail_bytes(grid.uris, size_px=thumbnail_px, token=token)
    else:
        jpegs = row_thumbnails(
            grid.uris, grid.md5s, grid.attrs, size_px=thumbnail_px, token=token, sizes=grid.sizes
        )
    return [as_image(j) for j in jpegs]


def draw_grid(fig: Figure, grid: GridContent, images: Sequence[Image.Image | None]) -> None:
    """Draw a grid's images (or "unavailable") with their labels, and its title.

    Example:
        >>> from matplotlib.figure import Figure
        >>> fig = Figure()
        >>> draw_grid(fig, grid_content(["gs://b/cats/1.jpg"]), [None])
        >>> fig.axes[0].get_title()
        'cats/1.jpg'
    """
    for k in range(grid.nrows * grid.ncols):
        ax = fig.add_subplot(grid.nrows, grid.ncols, k + 1)
        ax.set_axis_off()
        if k >= len(grid.uris):
            continue
        if images[k] is not None:
            ax.imshow(np.asarray(images[k]))
        else:
            ax.text(0.5, 0.5, "unavailable", ha="center", va="center", color="0.5", fontsize=9)
        ax.set_title(grid.labels[k], fontsize=8)
    if not grid.uris:
        fig.text(0.5, 0.5, "no results", ha="center", va="center", color="0.5")
    fig.suptitle(grid.title, fontsize=12, fontweight="bold")
    fig.set_layout_engine("constrained")
