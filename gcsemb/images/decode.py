"""Bytes to a correct RGB image, or a recorded failure with a short reason, in bounded memory.

:func:`decode_image` is called from many threads for every object of a bucket, so it never raises
for a bad image: it returns a :class:`Decoded` whose ``error`` says what went wrong and whether the
cause is this environment (``environmental``: a missing decoder, out of memory; worth retrying after
an upgrade) or the bytes themselves. It handles EXIF orientation, CMYK, 16-bit and float grayscale,
palettes, transparency (composited over a background colour, never dropped) and the first frame of
animations; it refuses truncated files, non-images, decompression bombs and images too large to
decode, all checked from the header before any pixel is decoded.

Memory stays near the size of the decoded pixels: 16-bit, 32-bit and float images become 8-bit in
float32 strips of about a million pixels (never a float64 copy), and when the caller only needs
``min_side`` pixels a huge image is box-reduced (PIL's ``Image.reduce``) before any mode conversion,
strip by strip. A :class:`PixelBudget` shared by all decode threads bounds the pixels in flight.

Decoders are picked by the object's name (:func:`allowed_formats`): Pillow's exotic plugins (PSD,
FITS, SPIDER, ...) only run on files whose extension names them.

Importing this module sets two process-wide PIL settings once: ``ImageFile.LOAD_TRUNCATED_IMAGES``
is forced to False (truncated files are refused, not padded with grey), and all PIL plugins are
registered (by :mod:`gcsemb.images.image_formats`). Nothing global is changed per call.

The format policy and sniffing live in :mod:`gcsemb.images.image_formats`, the pixel limits and the
budget in :mod:`gcsemb.images.pixel_budget` (their public names are importable from here too), the
mode conversion in :mod:`gcsemb.images.rgb_conversion`.
"""

from __future__ import annotations

import ctypes
import io
import re
import sys
from contextlib import nullcontext
from dataclasses import dataclass

import PIL
from PIL import Image, ImageFile, UnidentifiedImageError, features

from gcsemb.images.image_formats import (
    COMMON_FORMATS,
    allowed_formats,
    decoder_versions,
    extension,
    identify,
    implied_format,
    looks_truncated,
    sniff,
)
from gcsemb.images.pixel_budget import (
    DEFAULT_BUDGET,
    DEFAULT_BUDGET_BYTES,
    DEFAULT_MAX_DECODED_BYTES,
    DEFAULT_MAX_PIXELS,
    PixelBudget,
    decoded_bytes,
)
from gcsemb.images.rgb_conversion import to_rgb

__all__ = [
    "COMMON_FORMATS",
    "DEFAULT_BUDGET",
    "DEFAULT_BUDGET_BYTES",
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_MAX_PIXELS",
    "Decoded",
    "PixelBudget",
    "allowed_formats",
    "decode_image",
    "decoded_bytes",
    "decoder_versions",
]

ImageFile.LOAD_TRUNCATED_IMAGES = False

_MODE_NAMES = {
    "I;16": "16-bit grayscale",
    "I;16L": "16-bit grayscale",
    "I;16B": "16-bit grayscale",
    "I;16N": "16-bit grayscale",
    "I": "32-bit grayscale",
    "F": "float grayscale",
    "L": "grayscale",
    "P": "palette",
    "1": "1-bit",
}
_TRANSPOSE = {  # EXIF orientation -> the operation making it upright, as ImageOps.exif_transpose
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
_TRIM_BYTES = 64 * 2**20  # after an image this big, freed memory goes back to the OS
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform == "linux" else None
# Bytes PIL hands its decoder per call (its default: 64 KiB). Each call releases the GIL and must
# take it back, waiting up to 5 ms when another thread holds it: a 12 MP JPEG in 64 KiB blocks
# waited 54 times. A whole photo per call; a huge file in blocks of this size, so that the copy
# PIL reads each block into stays small beside the file itself.
_DECODER_BLOCK = 16 * 2**20
# Only images above 16 Mpx (a 4096x4096; phones take 12 MP) are reduced for min_side: smaller
# ones come back at full size, as before, their RGB copy costing at most 64 MiB.
_HUGE_PIXELS = 4096 * 4096
_REDUCING_GAP = 2  # reduce to >= 2 x min_side, as Image.thumbnail: the final resize stays fair


@dataclass(frozen=True)
class Decoded:
    """Outcome of decoding one image: an RGB image and its size, or the reason it failed.

    Attributes:
        image: The decoded image in mode ``"RGB"``, upright; None when decoding failed. May be
            smaller than ``width`` x ``height`` when a reduced decode was asked for (``min_side``).
        width: Width of the full-size image after EXIF orientation (0 if failed).
        height: Height of the full-size image after EXIF orientation (0 if failed).
        error: A short human reason when decoding failed, e.g. ``"empty file (0 bytes)"``.
        environmental: True when the failure comes from this environment rather than the bytes
            (a decoder missing, e.g. HEIC without pillow-heif; out of memory): another run may
            succeed. False for corrupt, truncated, refused, too large or not an image.
    """

    image: Image.Image | None
    width: int
    height: int
    error: str | None = None
    environmental: bool = False

    @property
    def ok(self) -> bool:
        """Whether decoding succeeded (``image`` is set and ``error`` is None)."""
        return self.error is None and self.image is not None


def _trim() -> None:
    """Hands memory freed by big images back to the OS.

    glibc serves allocations of more than its (adaptive, up to 32 MiB) mmap threshold from the
    calling thread's arena and keeps what is freed there, so without this the resident set grows
    to the sum of every decode thread's largest image, whatever the budget.
    """
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


def _failed(reason: str, environmental: bool = False) -> Decoded:
    return Decoded(None, 0, 0, reason[:300], environmental)


def _not_an_image(data: bytes) -> Decoded:
    """Names what the bytes look like when no allowed PIL plugin recognised them."""
    head, kind = data[:512].lstrip().lower(), sniff(data)
    if b"<svg" in head:
        return _failed("unsupported format (SVG vector image)")
    if kind == "HEIF" and kind not in Image.ID:
        return _failed("unsupported format (HEIF/HEIC; install and register pillow-heif)", True)
    avif = kind in Image.ID and ("avif" not in features.modules or features.check_module("avif"))
    if kind == "AVIF" and not avif:
        return _failed(f"unsupported format (AVIF; not decoded by Pillow {PIL.__version__})", True)
    if kind != "image":
        return _failed(f"corrupt {kind} (header unreadable)")
    if head.startswith(b"<"):
        return _failed("not an image (looks like HTML/XML)")
    if head and all(32 <= c < 127 or c in b"\t\r\n" for c in head):
        return _failed("not an image (looks like text)")
    return _failed("not an image (no known format)")


def _orientation(im: Image.Image) -> int:
    """The EXIF orientation tag (1..8), 1 when absent or unreadable."""
    try:
        value = im.getexif().get(0x0112, 1)
    except Exception:  # malformed EXIF must not cost us the image
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _reduction(size: tuple[int, int], min_side: int | None) -> int:
    """The box-reduce factor for a huge image: both sides stay >= _REDUCING_GAP x min_side."""
    if not min_side or size[0] * size[1] <= _HUGE_PIXELS:
        return 1
    return max(1, min(size) // (_REDUCING_GAP * min_side))


def _too_large(im: Image.Image, nbytes: int, limit: int) -> str:
    """Why an image whose decoded pixels take ``nbytes`` is refused under ``limit``."""
    mode = _MODE_NAMES.get(im.mode, im.mode)
    return (
        f"too large: {im.size[0]}x{im.size[1]} {mode} = {nbytes / 2**20:.0f} MiB decoded"
        f" exceeds the {limit / 2**20:.0f} MiB limit"
    )


@dataclass(frozen=True)
class _Plan:
    """How an opened image is decoded, read from its header before any pixel is.

    Attributes:
        width: Stored width of the full-size image.
        height: Stored height of the full-size image.
        nbytes: Bytes of the decoded pixels (after a JPEG's reduced decode).
        out_bytes: Bytes of the RGB result, after the box reduction.
        factor: The box-reduce factor (1: none).
    """

    width: int
    height: int
    nbytes: int
    out_bytes: int
    factor: int


def _plan(
    im: Image.Image,
    fmt: str,
    *,
    min_side: int | None,
    max_pixels: int,
    max_decoded_bytes: int,
) -> _Plan | str:
    """Checks an opened image's header and sets up a JPEG's reduced decode.

    Args:
        im: The image, opened but not loaded; a JPEG's draft mode is set here.
        fmt: Its format, for the messages.
        min_side: As :func:`decode_image`'s.
        max_pixels: As :func:`decode_image`'s.
        max_decoded_bytes: As :func:`decode_image`'s.

    Returns:
        The :class:`_Plan`, or why the image is refused.
    """
    width, height = im.size
    if width <= 0 or height <= 0:
        return f"empty {fmt} ({width}x{height} pixels)"
    if width * height > max_pixels:
        return f"decompression bomb: {width}x{height} pixels exceeds limit of {max_pixels}"
    if min_side and fmt in ("JPEG", "MPO"):
        im.draft("RGB", (min_side, min_side))  # both sides stay >= min_side
    nbytes = decoded_bytes(im.size, im.mode)
    if nbytes > max_decoded_bytes:
        return _too_large(im, nbytes, max_decoded_bytes)
    factor = _reduction(im.size, min_side)
    out_bytes = decoded_bytes((-(-im.size[0] // factor), -(-im.size[1] // factor)), "RGB")
    return _Plan(width, height, nbytes, out_bytes, factor)


def _upright(rgb: Image.Image, orientation: int, plan: _Plan) -> Decoded:
    """The decoded result: ``rgb`` turned upright, with the upright full size."""
    if orientation in _TRANSPOSE:
        rgb = rgb.transpose(_TRANSPOSE[orientation])
    if orientation >= 5:
        return Decoded(rgb, plan.height, plan.width)
    return Decoded(rgb, plan.width, plan.height)


def _unidentified(data: bytes, name: str | None, formats: list[str]) -> Decoded:
    """The failure for bytes no allowed decoder opened: another format's, or not an image."""
    implied = implied_format(name)
    other = identify(data, formats) if implied else None
    if other:
        ext = extension(name)
        return _failed(f"not a {implied}: the bytes are a {other} file (refused for {ext})")
    return _not_an_image(data)


def _failure(
    error: Exception,
    data: bytes,
    *,
    fmt: str,
    name: str | None,
    formats: list[str],
    max_pixels: int,
) -> Decoded:
    """The failure for an exception PIL raised while opening or decoding ``data``.

    Args:
        error: What PIL raised.
        data: The file's bytes.
        fmt: The format, as far as it is known.
        name: The object's name, as given to :func:`decode_image`.
        formats: The formats that were allowed to open it.
        max_pixels: As :func:`decode_image`'s.

    Returns:
        A failed :class:`Decoded` naming the cause; ``environmental`` for a missing decoder or
        out of memory.
    """
    if isinstance(error, Image.DecompressionBombError):  # PIL's own limit, hit in open()
        pixels = re.search(r"\((\d+) pixels\)", str(error))
        if pixels and int(pixels[1]) > max_pixels:
            return _failed(f"decompression bomb: {pixels[1]} pixels exceeds limit of {max_pixels}")
        return _failed(f"decompression bomb: {error}")
    if isinstance(error, UnidentifiedImageError):  # an OSError: before the one below
        return _unidentified(data, name, formats)
    if isinstance(error, (OSError, EOFError, SyntaxError)):
        if re.search(r"decoder \S+ not available", str(error)):
            return _failed(f"unsupported {fmt}: {error}", environmental=True)
        cause = "truncated" if looks_truncated(data, error) else "corrupt"
        return _failed(f"{cause} {fmt}: {str(error) or type(error).__name__}")
    if isinstance(error, MemoryError):
        return _failed(f"out of memory decoding {fmt}", environmental=True)
    return _failed(f"cannot decode {fmt}: {type(error).__name__}: {error}")


def decode_image(
    data: bytes,
    *,
    min_side: int | None = None,
    background: tuple[int, int, int] = (255, 255, 255),
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_decoded_bytes: int = DEFAULT_MAX_DECODED_BYTES,
    name: str | None = None,
    budget: PixelBudget | None = DEFAULT_BUDGET,
) -> Decoded:
    """Decodes image bytes to an upright RGB image, never raising for a bad image.

    Args:
        data: The file's bytes (any format PIL reads: JPEG, PNG, WebP, GIF, TIFF, BMP, ...).
        min_side: When given, the image may come back reduced as long as both sides stay
            >= ``min_side``: JPEGs are decoded at 1/2, 1/4 or 1/8 size by the JPEG decoder
            itself (much faster), and any image of more than 16 Mpx is box-reduced (both sides
            staying >= 2 x ``min_side``) before its mode is converted. None decodes and returns
            the full size.
        background: RGB colour that transparent pixels are composited over.
        max_pixels: Images with more pixels than this (read from the header) are refused as
            decompression bombs before any pixel is decoded. PIL's own
            ``Image.MAX_IMAGE_PIXELS`` (refusing above twice its value) also still applies.
        max_decoded_bytes: Images whose decoded pixels would take more bytes than this (the
            size after a JPEG's reduced decode, times the bytes PIL stores per pixel for the
            header's mode: :func:`decoded_bytes`) are refused as ``"too large"`` before any
            pixel is decoded. See :data:`DEFAULT_MAX_DECODED_BYTES`.
        name: The object's name or URI. Its extension picks the decoders that may run
            (:func:`allowed_formats`); None allows all but EPS.
        budget: Held for the image's decoded bytes (plus its RGB result) while it is decoded
            and reduced, so that threads sharing it bound the pixels in flight. None: unbounded.

    Returns:
        A :class:`Decoded`: the RGB image with the full-size width and height after EXIF
        orientation, or ``image=None``, a short ``error`` reason and whether the cause is
        ``environmental``.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buf = io.BytesIO()
        >>> Image.new("RGBA", (64, 48)).save(buf, "PNG")
        >>> d = decode_image(buf.getvalue(), background=(0, 128, 255), name="a.jpg")
        >>> d.ok, d.image.mode, (d.width, d.height), d.image.getpixel((0, 0))
        (True, 'RGB', (64, 48), (0, 128, 255))
        >>> decode_image(b"<html>Not Found</html>").error
        'not an image (looks like HTML/XML)'
    """
    if not data:
        return _failed("empty file (0 bytes)")
    fmt = sniff(data)  # replaced by PIL's name once the header is read
    formats = allowed_formats(name)
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
        im.decodermaxblock = max(im.decodermaxblock, min(len(data), _DECODER_BLOCK))
        fmt = im.format or fmt
        plan = _plan(
            im, fmt, min_side=min_side, max_pixels=max_pixels, max_decoded_bytes=max_decoded_bytes
        )
        if isinstance(plan, str):
            return _failed(plan)
        with budget.hold(plan.nbytes + plan.out_bytes) if budget else nullcontext():
            im.load()  # decodes the pixels (first frame): truncation and corruption surface here
            orientation = _orientation(im)
            rgb = to_rgb(im, background, plan.factor)
            del im  # the full-size pixels go before the budget is released
            if plan.nbytes >= _TRIM_BYTES:
                _trim()
        return _upright(rgb, orientation, plan)
    except Exception as e:  # one bad image must never stop a bucket: each cause named
        return _failure(e, data, fmt=fmt, name=name, formats=formats, max_pixels=max_pixels)
