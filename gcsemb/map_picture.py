r"""The explorer's map: a UMAP plot rendered to pixels once, with results painted on quickly.

Redrawing a matplotlib scatter of 100k points for every query would take seconds, so
:func:`render_map` draws the plot once (:func:`gcsemb.viz.plot_projection`, no thumbnails) and
keeps its pixels and where each point landed; :func:`marked_png` then paints black rings on the
results and a yellow star on the best one with PIL, in milliseconds.

Example:
    >>> import pandas as pd
    >>> picture = render_map(pd.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0]}))
    >>> marked_png(picture, [1]).startswith(b"\x89PNG")
    True
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd


@dataclass(frozen=True)
class MapPicture:
    """A rendered map.

    Attributes:
        rgb: The pixels, ``(height, width, 3)`` uint8.
        points: Each row's point in pixels, ``(n, 2)`` as (x, y) from the top-left corner.
    """

    rgb: np.ndarray
    points: np.ndarray


def render_map(
    coords: pd.DataFrame, color_by: str | None = None, size_inches: tuple[float, float] = (6.4, 5.0)
) -> MapPicture:
    """Draw the projection ``coords`` once, at 100 dpi, and note where its points landed.

    Example:
        >>> import pandas as pd
        >>> render_map(pd.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0]})).rgb.shape
        (500, 640, 3)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from gcsemb.plot_content import caption, projection_plot
    from gcsemb.viz import draw_caption, draw_projection

    fig = Figure(figsize=size_inches, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    plot = projection_plot(coords, color_by=color_by, max_categories=10)
    draw_projection(ax, plot)
    draw_caption(ax, caption(plot))
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    xy = ax.transData.transform(plot.xy)  # as plotted: far outliers pinned to the edge
    return MapPicture(rgb, np.column_stack([xy[:, 0], rgb.shape[0] - xy[:, 1]]))


def marked_png(picture: MapPicture, rows: Sequence[int]) -> bytes:
    """PNG bytes of the map with black rings on ``rows`` and a yellow star on the first.

    Black: no category colour is black.

    Example:
        >>> png = marked_png(render_map(coords), [17, 3, 40])  # doctest: +SKIP
    """
    from PIL import Image, ImageDraw

    image = Image.fromarray(picture.rgb)
    draw = ImageDraw.Draw(image)
    for i in list(rows)[1:][::-1]:
        x, y = picture.points[i]
        draw.ellipse((x - 6, y - 6, x + 6, y + 6), outline=(0, 0, 0), width=2)
    if len(rows):  # the best match (or the picked image): a yellow star
        x, y = picture.points[rows[0]]
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 11.0, 4.5)
        star = [(x + r * np.cos(a), y - r * np.sin(a)) for r, a in zip(radii, angles, strict=True)]
        draw.polygon(star, fill=(255, 200, 0), outline=(0, 0, 0), width=1)
    out = io.BytesIO()
    image.save(out, "PNG", optimize=False)
    return out.getvalue()
