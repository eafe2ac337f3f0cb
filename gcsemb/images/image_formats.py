"""Which PIL decoders may run on an object, and what its bytes look like before PIL opens them.

:func:`allowed_formats` picks decoders by the object's name: Pillow's exotic plugins (PSD, FITS,
SPIDER, ...) only run on files whose extension names them, and EPS (Ghostscript) never does. The
sniffing helpers name a format from its leading bytes, so that
:func:`gcsemb.images.decode.decode_image` can say what a file meant to be when PIL cannot open it,
and :func:`decoder_versions` records the libraries PIL decodes with.

Importing this module registers every PIL plugin (``Image.init()``), so that the allow-list sees
them all.
"""

from __future__ import annotations

import functools
import importlib.metadata
import posixpath
import struct

import PIL
from PIL import Image, features

__all__ = [
    "COMMON_FORMATS",
    "allowed_formats",
    "decoder_versions",
    "extension",
    "identify",
    "implied_format",
    "looks_truncated",
    "sniff",
]

COMMON_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF", "AVIF", "HEIF"})
"""Formats any image name may hold (a PNG named .jpg is common); MPO is opened as JPEG."""

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
_BRANDS = {b"avif": "AVIF", b"avis": "AVIF"} | dict.fromkeys(
    (b"heic", b"heix", b"heim", b"heis", b"hevc", b"mif1", b"msf1"), "HEIF"
)


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


def extension(name: str | None) -> str:
    """The lower-case extension of an object's name or URI, ``""`` when it has none."""
    return posixpath.splitext(name or "")[1].lower()


def implied_format(name: str | None) -> str | None:
    """The format an object's name implies (MPO counts as JPEG), None when none is known."""
    ext = extension(name)
    if not ext:  # Pillow 11 may register "" (an image saved without a name): no extension
        return None
    fmt = _EXTENSIONS.get(ext) or Image.EXTENSION.get(ext)
    return "JPEG" if fmt == "MPO" else fmt


def allowed_formats(name: str | None = None) -> list[str]:
    """The PIL format ids :func:`~.decode.decode_image` may use for an object of this name.

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
    implied = implied_format(name)
    return [
        f
        for f in Image.ID
        if f not in _REFUSED_FORMATS and (implied is None or f in COMMON_FORMATS or f == implied)
    ]


def sniff(data: bytes) -> str:
    """The format named by the leading bytes, or "image"."""
    if data[4:8] == b"ftyp":  # ISO media: the brand names it
        return _BRANDS.get(data[8:12], "image")
    return next((name for magic, name in _MAGIC.items() if data.startswith(magic)), "image")


def _is_spider(data: bytes) -> bool:
    from PIL import SpiderImagePlugin  # it has no accept() check; use its own header test

    return len(data) >= 108 and any(
        SpiderImagePlugin.isSpiderHeader(struct.unpack(f"{e}27f", data[:108])) for e in "<>"
    )


def identify(data: bytes, skip: list[str]) -> str | None:
    """The first format outside ``skip`` whose cheap prefix check accepts the bytes."""
    for fmt in Image.ID:
        accept = Image.OPEN[fmt][1] if fmt in Image.OPEN else None
        try:
            if fmt not in skip and (_is_spider(data) if fmt == "SPIDER" else accept(data[:16])):
                return fmt
        except Exception:  # accept is None, or a plugin's check choked on odd bytes
            continue
    return None


def looks_truncated(data: bytes, error: BaseException) -> bool:
    """Whether a decode error means the file was cut short."""
    if isinstance(error, EOFError) or "truncated" in str(error).lower():
        return True
    # RIFF (WebP) declares its length; libwebp only says "could not create decoder object"
    return data.startswith(b"RIFF") and int.from_bytes(data[4:8], "little") + 8 > len(data)
