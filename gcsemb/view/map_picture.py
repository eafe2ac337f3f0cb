r"""The explorer's map: drawn to pixels once, with highlights painted over it in milliseconds.

Redrawing a matplotlib scatter of a million points at every query would take seconds, so
:func:`render_map` draws the map once per projection (:func:`gcsemb.view.viz.draw_projection`: a
shaded 2-D histogram where points overlap, single points where sparse, from 20,000 points on)
and keeps its pixels with the affine map from data to pixels. :func:`painted_png` then paints
:class:`Overlay`\ s (search results, highlighted groups, a selection's outline and sample) with
numpy and PIL: only the few points involved are touched.

Example:
    >>> import pandas as pd
    >>> picture = render_map(pd.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0]}))
    >>> results = Overlay(np.array([[1.0, 1.0]]), style="rings")
    >>> painted_png(picture, [results]).startswith(b"\x89PNG")
    True
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

RINGS_AT_MOST = 100
"""Rings for at most this many results; the rest are dots."""


@dataclass(frozen=True)
class MapPicture:
    """A rendered map.

    Attributes:
        rgb: The pixels, ``(height, width, 3)`` uint8.
        scale: Pixels per data unit along x and y (y counted upwards).
        offset: The pixel (from the bottom-left corner) of the data point (0, 0).
    """

    rgb: np.ndarray
    scale: np.ndarray
    offset: np.ndarray

    def to_pixels(self, xy: np.ndarray) -> np.ndarray:
        """Pixels ``(x, y)`` from the top-left corner of the data points ``xy``, ``(n, 2)``.

        Example:
            >>> picture.to_pixels(np.array([[0.0, 0.0]]))  # doctest: +SKIP
            array([[ 61.2, 442.7]])
        """
        px = np.asarray(xy, dtype=np.float64).reshape(-1, 2) * self.scale + self.offset
        return np.column_stack([px[:, 0], self.rgb.shape[0] - px[:, 1]])

    def to_data(self, x: float, y: float) -> tuple[float, float]:
        """The data point under the pixel ``(x, y)`` counted from the top-left corner.

        Example:
            >>> picture.to_data(*picture.to_pixels(np.array([[2.0, 3.0]]))[0])  # doctest: +SKIP
            (2.0, 3.0)
        """
        up = self.rgb.shape[0] - float(y)
        return (
            float((x - self.offset[0]) / self.scale[0]),
            float((up - self.offset[1]) / self.scale[1]),
        )


@dataclass(frozen=True)
class Overlay:
    """Something painted over the map.

    Attributes:
        xy: Its points, in data coordinates, ``(n, 2)``.
        color: Their colour (RGB).
        style: ``"rings"``: black rings and a yellow star on the first (search results);
            ``"dots"``: dots outlined in black (any number of points).
        outline: A closed polygon drawn around them (a selection), data coordinates.
        label: Written in the map's key (bottom left), beside the overlay's colour.
    """

    xy: np.ndarray
    color: tuple[int, int, int] = (0, 0, 0)
    style: str = "dots"
    outline: np.ndarray | None = None
    label: str = ""


def render_map(
    coords: pd.DataFrame,
    color_by: str | None = None,
    size_inches: tuple[float, float] = (6.4, 5.0),
    *,
    density: bool | None = None,
) -> MapPicture:
    """Draw the projection ``coords`` once, at 100 dpi, and keep how data maps to pixels.

    Args:
        coords: The projection (``x``, ``y``, and the ``color_by`` column).
        color_by: A column to colour by (see :func:`gcsemb.view.viz.plot_projection`).
        size_inches: The picture's size.
        density: Draw a shaded 2-D histogram (single points where sparse); None: from
            :data:`gcsemb.view.viz.DENSITY_FROM` points on.

    Example:
        >>> import pandas as pd
        >>> render_map(pd.DataFrame({"x": [0.0, 1.0], "y": [0.0, 1.0]})).rgb.shape
        (500, 640, 3)
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from gcsemb.view.plot_content import caption, projection_plot
    from gcsemb.view.viz import DENSITY_FROM, draw_caption, draw_projection

    fig = Figure(figsize=size_inches, dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    plot = projection_plot(coords, color_by=color_by, max_categories=10)
    if density is None:
        density = len(coords) >= DENSITY_FROM
    # about two pixels per cell: the axes take roughly 3/4 of the figure's width
    cells = (int(size_inches[0] * 100 * 0.75 / 2), int(size_inches[1] * 100 * 0.8 / 2))
    draw_projection(ax, plot, density=cells if density else None)
    draw_caption(ax, caption(plot))
    fig.canvas.draw()
    rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
    corners = ax.transData.transform([[0.0, 0.0], [1.0, 1.0]])
    return MapPicture(rgb, corners[1] - corners[0], corners[0])


def painted_png(picture: MapPicture, overlays: Sequence[Overlay]) -> bytes:
    """PNG bytes of the map with ``overlays`` painted on, the first on top.

    Example:
        >>> png = painted_png(picture, [Overlay(xy, style="rings")])  # doctest: +SKIP
    """
    from PIL import Image, ImageDraw

    rgb = picture.rgb.copy()
    for overlay in overlays[::-1]:
        rest = overlay.xy if overlay.style == "dots" else overlay.xy[RINGS_AT_MOST:]
        _dots(rgb, picture.to_pixels(rest), overlay.color)
    image = Image.fromarray(rgb)
    draw = ImageDraw.Draw(image)
    for overlay in overlays[::-1]:
        if overlay.outline is not None and len(overlay.outline):
            corners = [tuple(p) for p in picture.to_pixels(overlay.outline)]
            draw.line([*corners, corners[0]], fill=overlay.color, width=2)
        if overlay.style == "rings":
            _rings(draw, picture.to_pixels(overlay.xy[:RINGS_AT_MOST]))
    labelled = [o for o in overlays if o.label]
    for i, overlay in enumerate(labelled):  # a small key, bottom left
        y = image.height - 16 * (len(labelled) - i) - 4
        draw.rectangle((6, y + 2, 16, y + 12), fill=overlay.color, outline=(0, 0, 0))
        draw.text((21, y), overlay.label, fill=(20, 20, 20))
    out = io.BytesIO()
    image.save(out, "PNG", optimize=False, compress_level=1)  # fast: painted at every action
    return out.getvalue()


def _dots(rgb: np.ndarray, px: np.ndarray, color: tuple[int, int, int]) -> None:
    """Paint 3x3 dots of ``color`` ringed in black at the pixels ``px``, in place.

    Works on masks of the picture's size, not per point: a million dots cost what ten do.
    """
    height, width = rgb.shape[:2]
    centre = np.rint(px).astype(np.int64)
    inside = (centre[:, 0] >= 0) & (centre[:, 0] < width)
    inside &= (centre[:, 1] >= 0) & (centre[:, 1] < height)
    at = np.zeros((height + 4, width + 4), bool)  # 2 pixels of margin on each side
    at[centre[inside, 1] + 2, centre[inside, 0] + 2] = True
    for radius, paint in ((2, (0, 0, 0)), (1, color)):
        mask = np.zeros((height, width), bool)
        for dy in range(-radius, radius + 1):
            for dx in range(-radius, radius + 1):
                mask |= at[2 + dy : 2 + dy + height, 2 + dx : 2 + dx + width]
        rgb[mask] = paint


def _rings(draw: Any, px: np.ndarray) -> None:
    """Black rings on the points ``px``, and a yellow star on the first.

    Black: no category colour is black.
    """
    for x, y in px[1:][::-1]:
        draw.ellipse((x - 6, y - 6, x + 6, y + 6), outline=(0, 0, 0), width=2)
    if len(px):  # the best match (or the picked image): a yellow star
        x, y = px[0]
        angles = np.pi / 2 + np.arange(10) * np.pi / 5
        radii = np.where(np.arange(10) % 2 == 0, 11.0, 4.5)
        star = [(x + r * np.cos(a), y - r * np.sin(a)) for r, a in zip(radii, angles, strict=True)]
        draw.polygon(star, fill=(255, 200, 0), outline=(0, 0, 0), width=1)
