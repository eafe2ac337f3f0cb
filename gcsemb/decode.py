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
registered. Nothing global is changed per call.
"""

from __future__ import annotations

import ctypes
import functools
import importlib.metadata
import io
import posixpath
import re
import struct
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass

import numpy as np
import PIL
from PIL import Image, ImageFile, ImageMode, UnidentifiedImageError, features

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

DEFAULT_MAX_PIXELS = 89_478_485
"""PIL's default ``Image.MAX_IMAGE_PIXELS`` (the warning limit): about 9459x9459 pixels."""

DEFAULT_MAX_DECODED_BYTES = 512 * 2**20
"""Largest decoded image accepted, in bytes of PIL's storage (see :func:`decoded_bytes`).

512 MiB admits everything the default pixel cap does, whatever the bit depth: PIL stores at most
4 bytes per pixel, and 89.5 Mpx x 4 B = 341 MiB (a 9000x9000 16-bit scan is 154 MiB, an 8000x8000
float TIFF 244 MiB, a 9000x9000 RGB photo 309 MiB). It binds when ``max_pixels`` is raised
(scans, astronomy): then an 8-bit grayscale image may have four times the pixels of an RGB one, and
one image never needs more than half of :data:`DEFAULT_BUDGET_BYTES`.
"""

DEFAULT_BUDGET_BYTES = 2**30
"""Decoded pixels in flight across all decode threads: 1 GiB.

Two images at :data:`DEFAULT_MAX_DECODED_BYTES` decode at once; photos never wait (a 12 MP JPEG
decoded at full size costs 96 MB, reduced for the model about 2 MB). With the pipeline's one decode
thread per core, a 16-core machine meeting 16 large TIFFs would otherwise hold 16 x 256 MB.
"""

COMMON_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF"})
"""Formats any image name may hold (a PNG named .jpg is common); MPO is opened as JPEG."""

ImageFile.LOAD_TRUNCATED_IMAGES = False
Image.init()  # register every plugin now, so the allow-list below sees them all

# EPS is rendered by a Ghostscript subprocess: not something to run on arbitrary bucket contents.
_REFUSED_FORMATS = frozenset({"EPS"})
_EXTENSIONS = {  # beyond PIL's own Image.EXTENSION (pillow-heif registers HEIF when imported)
    ".heic": "HEIF",
    ".heif": "HEIF",
    ".hif": "HEIF",
    ".pjpeg": "JPEG",
    ".pjp": "JPEG",
    ".jif": "JPEG",
}
_MAGIC = {  # leading bytes -> format, to name what was meant when PIL could not even open it
    b"\xff\xd8\xff": "JPEG",
    b"\x89PNG": "PNG",
    b"GIF8": "GIF",
    b"RIFF": "WebP",
    b"BM": "BMP",
    b"II*\x00": "TIFF",
    b"MM\x00*": "TIFF",
}
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
_BRANDS = {b"avif": "AVIF", b"avis": "AVIF"} | dict.fromkeys(
    (b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1"), "HEIF"
)
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
_TRIM_BYTES = 64 * 2**20  # after an image this big, freed memory goes back to the OS
_MALLOC_TRIM = getattr(ctypes.CDLL(None), "malloc_trim", None) if sys.platform == "linux" else None
# Bytes PIL hands its decoder per call (its default: 64 KiB). Each call releases the GIL and must
# take it back, waiting up to 5 ms when another thread holds it: a 12 MP JPEG in 64 KiB blocks
# waited 54 times. A whole photo per call; a huge file in blocks of this size, so that the copy
# PIL reads each block into stays small beside the file itself.
_DECODER_BLOCK = 16 * 2**20
_STRIP_PIXELS = 1 << 20  # conversions work on strips this big: float32 temporaries of 4 MB
# Only images above 16 Mpx (a 4096x4096; phones take 12 MP) are reduced for min_side: smaller
# ones come back at full size, as before, their RGB copy costing at most 64 MiB.
_HUGE_PIXELS = 4096 * 4096
_REDUCING_GAP = 2  # reduce to >= 2 x min_side, as Image.thumbnail: the final resize stays fair


class PixelBudget:
    """A byte budget for decoded pixels, shared by decode threads; first come, first served.

    A thread holds an image's estimated bytes while its pixels are decoded and reduced. A request
    that does not fit waits until enough is released; one bigger than the whole budget waits
    until nothing else is held and then runs alone, so the budget never deadlocks.

    Example:
        >>> budget = PixelBudget(100)
        >>> with budget.hold(60):
        ...     budget.in_use
        60
    """

    def __init__(self, limit: int = DEFAULT_BUDGET_BYTES) -> None:
        """Creates a budget of ``limit`` bytes (> 0)."""
        if limit <= 0:
            raise ValueError(f"PixelBudget limit must be > 0, got {limit}")
        self.limit = limit
        self.in_use = 0
        self.peak = 0  # the most ever held at once, for tests and benchmarks
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Waits until ``nbytes`` fit (or nothing else is held), holds them for the block."""
        nbytes = self.acquire(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)

    def acquire(self, nbytes: int) -> int:
        """Waits until ``nbytes`` fit (or nothing else is held) and takes them; returns them.

        For holds that outlive a block (bytes fetched by one thread and freed by another):
        every :meth:`acquire` needs its :meth:`release`, possibly in parts.
        """
        nbytes = max(0, int(nbytes))
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or (
                    self.in_use and self.in_use + nbytes > self.limit
                ):
                    self._cond.wait()
            finally:  # granted, or interrupted while waiting: either way leave the queue
                self._queue.remove(ticket)
                self._cond.notify_all()
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
        return nbytes

    def release(self, nbytes: int) -> None:
        """Gives back ``nbytes`` taken by :meth:`acquire`."""
        with self._cond:
            self.in_use -= max(0, int(nbytes))
            self._cond.notify_all()

    def __repr__(self) -> str:
        return f"PixelBudget(limit={self.limit}, in_use={self.in_use}, peak={self.peak})"


DEFAULT_BUDGET = PixelBudget()
"""The budget :func:`decode_image` uses unless told otherwise: one per process."""


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


def decoder_versions() -> dict[str, str | None]:
    """Versions of Pillow and the libraries it decodes with; None where one is missing.

    Meant to be stored with each decode failure, so that a later run can tell whether the
    environment changed, e.g. ``{"Pillow": "13.0.0", "libjpeg-turbo": "3.2.0", ...,
    "libavif": "1.4.2", "pillow-heif": None}``.
    """
    return dict(_decoder_versions())


@functools.cache
def _decoder_versions() -> dict[str, str | None]:
    try:
        heif: str | None = importlib.metadata.version("pillow-heif")
    except importlib.metadata.PackageNotFoundError:
        heif = None
    return {
        "Pillow": PIL.__version__,
        "libjpeg": features.version("jpg"),
        "libjpeg-turbo": features.version_feature("libjpeg_turbo"),
        "zlib": features.version("zlib"),
        "zlib-ng": features.version_feature("zlib_ng"),
        "libtiff": features.version("libtiff"),
        "libwebp": features.version("webp"),
        "libavif": features.version("avif"),
        "openjpeg": features.version("jpg_2000"),
        "pillow-heif": heif,
    }


def _extension(name: str | None) -> str:
    return posixpath.splitext(name or "")[1].lower()


def _implied(name: str | None) -> str | None:
    """The format an object's name implies (MPO counts as JPEG), None when none is known."""
    ext = _extension(name)
    if not ext:  # Pillow 11 may register "" (an image saved without a name): no extension
        return None
    fmt = _EXTENSIONS.get(ext) or Image.EXTENSION.get(ext)
    return "JPEG" if fmt == "MPO" else fmt


def allowed_formats(name: str | None = None) -> list[str]:
    """The PIL format ids :func:`decode_image` may use for an object of this name.

    Policy: a name whose extension PIL knows (``.jpg``, ``.png``, ``.psd``, ...) allows the
    common formats (:data:`COMMON_FORMATS`, as registered in this process) plus the one the
    extension names; the exotic decoders (PSD, FITS, SPIDER, ICNS, IM, PCX, XBM, ...) run only
    when the extension names them. No extension, or one PIL does not know, allows every
    registered format. EPS is never allowed (it runs Ghostscript).

    Args:
        name: The object's name or URI; only its extension is used.

    Returns:
        Format ids for ``Image.open(formats=...)``.

    Example:
        >>> "PSD" in allowed_formats("a.jpg"), "PSD" in allowed_formats("a.psd")
        (False, True)
    """
    implied = _implied(name)
    return [
        f
        for f in Image.ID
        if f not in _REFUSED_FORMATS and (implied is None or f in COMMON_FORMATS or f == implied)
    ]


def decoded_bytes(size: tuple[int, int], mode: str) -> int:
    """Bytes PIL stores for an image: 1 per pixel for 1/L/P, 2 for I;16, else 4 (RGB too)."""
    try:
        m = ImageMode.getmode(mode)
    except KeyError:
        return size[0] * size[1] * 4
    return size[0] * size[1] * (4 if len(m.bands) > 1 else int(m.typestr[-1]))


def _sniff(data: bytes) -> str:
    """The format named by the leading bytes, or "image"."""
    if data[4:8] == b"ftyp":  # ISO media: the brand names it
        return _BRANDS.get(data[8:12], "image")
    return next((name for magic, name in _MAGIC.items() if data.startswith(magic)), "image")


def _is_spider(data: bytes) -> bool:
    from PIL import SpiderImagePlugin  # it has no accept() check; use its own header test

    return len(data) >= 108 and any(
        SpiderImagePlugin.isSpiderHeader(struct.unpack(f"{e}27f", data[:108])) for e in "<>"
    )


def _identify(data: bytes, skip: list[str]) -> str | None:
    """The first format outside ``skip`` whose cheap prefix check accepts the bytes."""
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1] if fmt in Image.OPEN else None
        try:
            if fmt not in skip and (_is_spider(data) if fmt == "SPIDER" else accept(data[:16])):
                return fmt
        except Exception:  # accept is None, or a plugin's check choked on odd bytes
            continue
    return None


def _is_truncated(data: bytes, error: BaseException) -> bool:
    """Whether a decode error means the file was cut short."""
    if isinstance(error, EOFError) or "truncated" in str(error).lower():
        return True
    # RIFF (WebP) declares its length; libwebp only says "could not create decoder object"
    return data.startswith(b"RIFF") and int.from_bytes(data[4:8], "little") + 8 > len(data)


def _not_an_image(data: bytes) -> Decoded:
    """Names what the bytes look like when no allowed PIL plugin recognised them."""
    head, kind = data[:512].lstrip().lower(), _sniff(data)
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


def _to_rgb(im: Image.Image, background: tuple[int, int, int], factor: int = 1) -> Image.Image:
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


def _reduction(size: tuple[int, int], min_side: int | None) -> int:
    """The box-reduce factor for a huge image: both sides stay >= _REDUCING_GAP x min_side."""
    if not min_side or size[0] * size[1] <= _HUGE_PIXELS:
        return 1
    return max(1, min(size) // (_REDUCING_GAP * min_side))


def _too_large(im: Image.Image, nbytes: int, limit: int) -> str:
    mode = _MODE_NAMES.get(im.mode, im.mode)
    return (
        f"too large: {im.size[0]}x{im.size[1]} {mode} = {nbytes / 2**20:.0f} MiB decoded"
        f" exceeds the {limit / 2**20:.0f} MiB limit"
    )


def decode_image(  # noqa: C901 (every failure PIL can raise, named in one place)
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
    fmt = _sniff(data)  # replaced by PIL's name once the header is read
    formats = allowed_formats(name)
    try:
        im = Image.open(io.BytesIO(data), formats=formats)
        im.decodermaxblock = max(im.decodermaxblock, min(len(data), _DECODER_BLOCK))
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
        nbytes = decoded_bytes(im.size, im.mode)
        if nbytes > max_decoded_bytes:
            return _failed(_too_large(im, nbytes, max_decoded_bytes))
        factor = _reduction(im.size, min_side)
        out_bytes = decoded_bytes((-(-im.size[0] // factor), -(-im.size[1] // factor)), "RGB")
        with budget.hold(nbytes + out_bytes) if budget else nullcontext():
            im.load()  # decodes the pixels (first frame): truncation and corruption surface here
            orientation = _orientation(im)
            rgb = _to_rgb(im, background, factor)
            del im  # the full-size pixels go before the budget is released
            if nbytes >= _TRIM_BYTES:
                _trim()
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
        implied = _implied(name)
        other = _identify(data, formats) if implied else None
        if other:
            ext = _extension(name)
            return _failed(f"not a {implied}: the bytes are a {other} file (refused for {ext})")
        return _not_an_image(data)
    except (OSError, EOFError, SyntaxError) as e:
        if re.search(r"decoder \S+ not available", str(e)):
            return _failed(f"unsupported {fmt}: {e}", environmental=True)
        cause = "truncated" if _is_truncated(data, e) else "corrupt"
        return _failed(f"{cause} {fmt}: {str(e) or type(e).__name__}")
    except MemoryError:
        return _failed(f"out of memory decoding {fmt}", environmental=True)
    except Exception as e:  # last resort: one bad image must never stop a bucket
        return _failed(f"cannot decode {fmt}: {type(e).__name__}: {e}")
