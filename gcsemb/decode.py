"""Bytes to a correct RGB image, or a recorded failure with a short reason.

:func:`decode_image` is called from many threads for every object of a bucket, so it never raises
for a bad image: it returns a :class:`Decoded` whose ``error`` says what went wrong. It handles EXIF
orientation, CMYK, 16-bit and float grayscale, palettes, transparency (composited over a background
colour, never dropped), the first frame of animations, and refuses truncated files, non-images and
decompression bombs (checked from the header, before any pixel is decoded).

Importing this module sets two process-wide PIL settings once: ``ImageFile.LOAD_TRUNCATED_IMAGES``
is forced to False (truncated files are refused, not padded with grey), and all PIL plugins are
registered. Nothing global is changed per call.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageFile, UnidentifiedImageError

__all__ = ["DEFAULT_MAX_PIXELS", "Decoded", "decode_image"]

DEFAULT_MAX_PIXELS = 89_478_485
"""PIL's default ``Image.MAX_IMAGE_PIXELS`` (the warning limit): about 9459x9459 pixels."""

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.init()  # register every plugin now, so the allow-list below sees them all

# EPS is rendered by a Ghostscript subprocess: not something to run on arbitrary bucket contents.
_REFUSED_FORMATS = frozenset({"EPS"})
_MAGIC = {  # leading bytes -> format, to name what was meant when PIL could not even open it
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG": "PNG",
    b"GIF8": "GIF",
    b"RIFF": "WebP",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})
_TRANSPOSE = {  # EXIF orientation -> the operation making it upright, as ImageOps.exif_transpose
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


@dataclass(frozen=True)
class Decoded:
    """Outcome of decoding one image: an RGB image and its size, or the reason it failed.

    Attributes:
        image: The decoded image in mode ``"RGB"``, upright; None when decoding failed. May be
            smaller than ``width`` x ``height`` when a reduced decode was asked for (``min_side``).
        width: Width of the full-size image after EXIF orientation (0 if failed).
        height: Height of the full-size image after EXIF orientation (0 if failed).
        error: A short human reason when decoding failed, e.g. ``"empty file (0 bytes)"``.
    """

    image: Image.Image | None
    width: int
    height: int
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether decoding succeeded (``image`` is set and ``error`` is None)."""
        return self.error is None and self.image is not None


def _failed(reason: str) -> Decoded:
    return Decoded(None, 0, 0, reason[:300])


def _sniff(data: bytes) -> str:
    """The format named by the leading bytes, or "image"."""
    return next((name for magic, name in _MAGIC.items() if data.startswith(magic)), "image")


def _is_truncated(data: bytes, error: BaseException) -> bool:
    """Whether a decode error means the file was cut short."""
    if isinstance(error, EOFError) or "truncated" in str(error).lower():
        return True
    # RIFF (WebP) declares its length; libwebp only says "could not create decoder object"
    return data.startswith(b"RIFF") and int.from_bytes(data[4:8], "little") + 8 > len(data)


def _not_an_image(data: bytes) -> str:
    """Names what the bytes look like when no PIL plugin recognised them."""
    head = data[:512].lstrip().lower()
    if b"<svg" in head:
        return "unsupported format (SVG vector image)"
    if data[4:8] == b"ftyp" and data[8:12] in (b"heic", b"heix", b"mif1", b"msf1", b"hevc"):
        return "unsupported format (HEIF/HEIC; install and register pillow-heif)"
    if _sniff(data) != "image":
        return f"corrupt {_sniff(data)} (header unreadable)"
    if head.startswith(b"<"):
        return "not an image (looks like HTML/XML)"
    if head and all(32 <= c < 127 or c in b"\t\r\n" for c in head):
        return "not an image (looks like text)"
    return "not an image (no known format)"


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1..8), 1 when absent or unreadable."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF must not cost us the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _to_8bit(im: Image.Image) -> Image.Image:
    """Maps a 16-bit, 32-bit integer or float grayscale image to mode "L" without clipping."""
    a = np.asarray(im)
    if im.mode.startswith("I;16"):
        return Image.fromarray((a >> 8).astype(np.uint8), "L")
    a = np.nan_to_num(a.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    if lo >= 0 and hi <= (1.0 if im.mode == "F" else 255):
        scale, lo = (255.0 if im.mode == "F" else 1.0), 0.0
    elif lo >= 0 and hi <= 65535:
        scale, lo = 1 / 257, 0.0  # 16-bit data in a 32-bit container (e.g. old PNG "I" mode)
    else:
        scale = 255.0 / (hi - lo) if hi > lo else 0.0  # arbitrary range: stretch to 0..255
    return Image.fromarray(np.clip((a - lo) * scale + 0.5, 0, 255).astype(np.uint8), "L")


def _to_rgb(im: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Converts a loaded image of any mode to RGB, compositing transparency over background."""
    if im.mode.startswith("I") or im.mode == "F":
        im = _to_8bit(im)  # transparency of such images is rare and dropped
    elif im.mode in _ALPHA_MODES or im.info.get("transparency") is not None:
        rgba = im.convert("RGBA")  # applies palette / colour-key transparency too
        out = Image.new("RGB", im.size, background)
        out.paste(rgba, mask=rgba)  # alpha 0 -> exactly background, alpha 255 -> exactly image
        return out
    return im if im.mode == "RGB" else im.convert("RGB")


def decode_image(
    data: bytes,
    *,
    min_side: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Decoded:
    """Decodes image bytes to an upright RGB image, never raising for a bad image.

    Args:
        data: The file's bytes (any format PIL reads: JPEG, PNG, WebP, GIF, TIFF, BMP, ...).
        min_side: When given, JPEGs may be decoded at a reduced size (1/2, 1/4 or 1/8, by the
            JPEG decoder itself, much faster) as long as the shorter side stays >= ``min_side``.
            None decodes at full size.
        background: RGB colour that transparent pixels are composited over.
        max_pixels: Images with more pixels than this (read from the header) are refused as
            decompression bombs before any pixel is decoded. PIL's own
            ``Image.MAX_IMAGE_PIXELS`` (refusing above twice its value) also still applies.

    Returns:
        A :class:`Decoded`: the RGB image with the full-size width and height after EXIF
        orientation, or ``image=None`` and a short ``error`` reason.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buf = io.BytesIO()
        >>> Image.new("RGBA", (64, 48)).save(buf, "PNG")
        >>> d = decode_image(buf.getvalue(), background=(0, 128, 255))
        >>> d.ok, d.image.mode, (d.width, d.height), d.image.getpixel((0, 0))
        (True, 'RGB', (64, 48), (0, 128, 255))
        >>> decode_image(b"<html>Not Found</html>").error
        'not an image (looks like HTML/XML)'
    """
    if not data:
        return _failed("empty file (0 bytes)")
    fmt = _sniff(data)  # replaced by PIL's name once the header is read
    try:
        formats = [f for f in Image.ID if f not in _REFUSED_FORMATS]
        im = Image.open(io.BytesIO(data), formats=formats)
        fmt = im.format or fmt
        width, height = im.size
        if width <= 0 or height <= 0:
            return _failed(f"empty {fmt} ({width}x{height} pixels)")
        if width * height > max_pixels:
            return _failed(
                f"decompression bomb: {width}x{height} pixels exceeds limit of {max_pixels}"
            )
        if min_side and fmt in ("JPEG", "MPO"):
            im.draft("RGB", (min_side, min_side))  # both sides stay >= min_side
        im.load()  # decodes the pixels (first frame): truncation and corruption surface here
        orientation = _orientation(im)
        rgb = _to_rgb(im, background)
        if orientation in _TRANSPOSE:
            rgb = rgb.transpose(_TRANSPOSE[orientation])
        if orientation >= 5:
            width, height = height, width
        return Decoded(rgb, width, height)
    except Image.DecompressionBombError as e:  # PIL's own limit, hit in open(); not an OSError
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        if pixels and int(pixels[1]) > max_pixels:
            return _failed(f"decompression bomb: {pixels[1]} pixels exceeds limit of {max_pixels}")
        return _failed(f"decompression bomb: {e}")
    except UnidentifiedImageError:
        return _failed(_not_an_image(data))
    except (OSError, EOFError, SyntaxError) as e:
        cause = "truncated" if _is_truncated(data, e) else "corrupt"
        return _failed(f"{cause} {fmt}: {str(e) or type(e).__name__}")
    except MemoryError:
        return _failed(f"out of memory decoding {fmt}")
    except Exception as e:  # last resort: one bad image must never stop a bucket
        return _failed(f"cannot decode {fmt}: {type(e).__name__}: {e}")
