"""Any loaded PIL image to 8-bit RGB, box-reduced on the way, without full-size temporaries.

:func:`to_rgb` is the last step of :func:`gcsemb.images.decode.decode_image`: 16-bit, 32-bit and
float grayscale become 8-bit in float32 strips of about a million pixels (never a float64 copy),
transparency is composited over a background colour, and a huge image is box-reduced (PIL's
``Image.reduce``) before its mode is converted, strip by strip.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np
from PIL import Image

__all__ = ["to_rgb"]

_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_STRIP_PIXELS = 1 << 20  # conversions work on strips this big: float32 temporaries of 4 MB


def _strips(im: Image.Image, factor: int = 1) -> Iterator[tuple[int, Image.Image]]:
    """Copies of horizontal strips of about a million pixels: (top row, strip)."""
    width, height = im.size
    rows = max(factor, _STRIP_PIXELS // max(width, 1) // factor * factor)
    for top in range(0, height, rows):
        yield top, im.crop((0, top, width, min(height, top + rows)))


def _map_strips(
    im: Image.Image,
    factor: int,
    convert: Callable[[Image.Image], Image.Image],
    mode: str = "RGB",
) -> Image.Image:
    """``convert(im).reduce(factor).convert(mode)``, strip by strip: no full-size temporary."""
    width, height = im.size
    out = Image.new(mode, (-(-width // factor), -(-height // factor)))
    for top, strip in _strips(im, factor):
        small = convert(strip)
        small = small.reduce(factor) if factor > 1 else small
        out.paste(small if small.mode == mode else small.convert(mode), (0, top // factor))
    return out


def _float32(strip: Image.Image) -> np.ndarray:
    """A strip's pixels as a new float32 array, NaN and infinities set to 0."""
    a = np.array(strip, dtype=np.float32)
    return np.nan_to_num(a, copy=False, nan=0.0, posinf=0.0, neginf=0.0)


def _gray_to_rgb(im: Image.Image, factor: int = 1) -> Image.Image:
    """Maps a 16-bit, 32-bit integer or float grayscale image to 8-bit RGB, box-reduced by factor.

    16-bit keeps the high byte. 32-bit and float data in [0, 1] (float) or [0, 255] is scaled as
    is, data in [0, 65535] as 16-bit, anything else stretched from its minimum to its maximum
    over the full-size image. NaN and infinities count as 0. Arithmetic is integer or float32,
    a strip at a time; a huge image is reduced (in float32) before it is scaled.
    """
    if im.mode.startswith("I;16"):
        return _map_strips(im, factor, lambda s: Image.fromarray((np.asarray(s) >> 8).astype("u1")))
    float_data, extremes = im.mode == "F", [np.inf, -np.inf]

    def clean(strip: Image.Image) -> Image.Image:
        a = _float32(strip)
        extremes[:] = min(extremes[0], float(a.min())), max(extremes[1], float(a.max()))
        return Image.fromarray(a)

    if factor > 1:
        im = _map_strips(im, factor, clean, mode="F")
    else:
        for _, strip in _strips(im):
            clean(strip)
    lo, hi = extremes
    if lo >= 0 and hi <= (1.0 if float_data else 255):
        scale, lo = (255.0 if float_data else 1.0), 0.0
    elif lo >= 0 and hi <= 65535:
        scale, lo = 1 / 257, 0.0  # 16-bit data in a 32-bit container (e.g. old PNG "I" mode)
    else:
        scale = 255.0 / (hi - lo) if hi > lo else 0.0  # arbitrary range: stretch to 0..255

    def to_8bit(strip: Image.Image) -> Image.Image:
        a = _float32(strip)
        a -= np.float32(lo)
        a *= np.float32(scale)
        a += np.float32(0.5)
        return Image.fromarray(np.clip(a, 0, 255, out=a).astype(np.uint8))

    return _map_strips(im, 1, to_8bit)


def _composite(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Converts an 8-bit image of any mode to RGB, compositing transparency over background."""
    if im.mode in _ALPHA_MODES or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")  # applies palette / colour-key transparency too
        out = Image.new("RGB", im.size, background)
        out.paste(rgba, mask=rgba)  # alpha 0 -> exactly background, alpha 255 -> exactly image
        return out
    return im if im.mode == "RGB" else im.convert("RGB")


def to_rgb(im: Image.Image, background: tuple[int, int, int], factor: int = 1) -> Image.Image:
    """A loaded image of any mode as RGB, box-reduced by ``factor``, without full-size copies.

    Transparency of 16-bit, 32-bit and float images is rare and dropped.
    """
    if im.mode.startswith("I") or im.mode == "F":
        return _gray_to_rgb(im, factor)
    if im.mode in ("RGB", "L") and im.info.get("transparency") is None:
        # conversion commutes with the box average
        im = im.reduce(factor) if factor > 1 else im
        return im if im.mode == "RGB" else im.convert("RGB")
    return _map_strips(im, factor, lambda strip: _composite(strip, background))
