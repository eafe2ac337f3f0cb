"""A JPEG's size, orientation and coding, read from its markers without decoding any pixel.

:func:`read_jpeg_header` walks the marker segments up to the first scan and says what the tensor
path (:mod:`gcsemb.images.tensor_decode`) needs to know, or why it does not take the file: not a
JPEG, CMYK, 12-bit, arithmetic-coded, hierarchical or lossless, RGB-coded, truncated or corrupt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["JpegHeader", "read_jpeg_header"]

_SOF_OK = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended sequential, progressive
_SOF_OTHER = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')


@dataclass(frozen=True)
class JpegHeader:
    """What the tensor path needs from a JPEG's header, read without decoding pixels.

    Attributes:
        width: Stored width (before EXIF orientation).
        height: Stored height.
        components: Colour components: 1 (grayscale) or 3 (YCbCr); others are refused.
        orientation: EXIF orientation 1..8 (from EXIF, else XMP ``tiff:Orientation``, else 1).
        progressive: Whether the JPEG is progressive (nvJPEG decodes those without hardware).
    """

    width: int
    height: int
    components: int
    orientation: int = 1
    progressive: bool = False

    @property
    def upright_size(self) -> tuple[int, int]:
        """``(width, height)`` after EXIF orientation, as :mod:`gcsemb.images.decode` reports it."""
        if self.orientation >= 5:
            return self.height, self.width
        return self.width, self.height


def _exif_orientation(tiff: bytes) -> int | None:
    """The orientation tag of IFD0 in a TIFF-structured EXIF block, None when absent."""
    order = {b"II": "little", b"MM": "big"}.get(tiff[:2])
    if order is None or len(tiff) < 8:
        return None

    def num(at: int, size: int) -> int:
        return int.from_bytes(tiff[at : at + size], order)  # type: ignore[arg-type]

    ifd = num(4, 4)
    if ifd + 2 > len(tiff):
        return None
    for i in range(num(ifd, 2)):
        entry = ifd + 2 + 12 * i
        if entry + 12 > len(tiff):
            break
        if num(entry, 2) == 0x0112:
            kind = num(entry + 2, 2)
            return num(entry + 8, 2) if kind == 3 else num(entry + 8, 4) if kind == 4 else None
    return None


@dataclass
class _Markers:
    """What the marker segments before the first scan say (filled by :func:`_read_markers`).

    Attributes:
        scan: Offset of the start-of-scan marker.
        exif: Orientation from the first EXIF block, None when absent.
        seen_exif: Whether an EXIF block was met (PIL reads the first one only).
        xmp: Orientation from XMP's ``tiff:Orientation``, None when absent.
        adobe: The colour transform of an Adobe segment, None when absent.
        sof: The start-of-frame marker and its segment, None when absent.
    """

    scan: int = 0
    exif: int | None = None
    seen_exif: bool = False
    xmp: int | None = None
    adobe: int | None = None
    sof: tuple[int, bytes] | None = None


def _note_segment(found: _Markers, marker: int, segment: bytes) -> None:
    """Records what one marker segment says about orientation, colour transform or frame."""
    if marker == 0xE1 and segment.startswith(b"Exif\0\0") and not found.seen_exif:
        found.exif, found.seen_exif = _exif_orientation(segment[6:]), True  # PIL reads the first
    elif marker == 0xE1 and segment.startswith(_XMP):
        match = _XMP_ORIENTATION.search(segment)
        found.xmp = int(match[2]) if match else None
    elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
        found.adobe = segment[11]
    elif marker in _SOF_OK or marker in _SOF_OTHER:
        found.sof = marker, segment


def _read_markers(data: bytes) -> _Markers | str:
    """Walks the marker segments after SOI up to the first scan; a reason when they are broken."""
    found, pos, n = _Markers(), 2, len(data)
    while True:
        if pos + 4 > n:
            return "truncated JPEG (header incomplete)"
        if data[pos] != 0xFF:
            return "corrupt JPEG (no marker where one is due)"
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # markers without a length
            pos += 2
            continue
        if marker == 0xD9:
            return "corrupt JPEG (ends before any image data)"
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if length < 2:
            return "corrupt JPEG (bad segment length)"
        if marker == 0xDA:
            found.scan = pos
            return found
        segment = data[pos + 4 : pos + 2 + length]
        if len(segment) < length - 2:
            return "truncated JPEG (header incomplete)"
        _note_segment(found, marker, segment)
        pos += 2 + length


def _header(found: _Markers, data: bytes) -> JpegHeader | str:
    """The header the markers describe, or why the tensor path refuses such a JPEG."""
    if found.sof is None or len(found.sof[1]) < 6:
        return "corrupt JPEG (no frame header)"
    marker, frame = found.sof
    if marker not in _SOF_OK:
        return "arithmetic-coded, hierarchical or lossless JPEG"
    precision, components = frame[0], frame[5]
    height, width = int.from_bytes(frame[1:3], "big"), int.from_bytes(frame[3:5], "big")
    if precision != 8:
        return f"{precision}-bit JPEG"
    if components == 4:
        return "CMYK JPEG (4 components)"
    if components not in (1, 3):
        return f"JPEG with {components} colour components"
    ids = bytes(frame[6 + 3 * i] for i in range(components)) if len(frame) >= 6 + 9 else b""
    if components == 3 and (found.adobe == 0 or ids == b"RGB"):
        return "RGB-coded JPEG (not YCbCr)"
    if width == 0 or height == 0:
        return "JPEG without height in its frame header"
    # entropy-coded data never holds 0xFFD9, so an end marker after the first scan means the file
    # is whole (trailers after it, as some phones write, are fine)
    if data.rfind(b"\xff\xd9") < found.scan:
        return "truncated JPEG (no end-of-image marker)"
    orientation = found.exif if found.exif is not None else found.xmp
    return JpegHeader(
        width,
        height,
        components,
        orientation if orientation in range(1, 9) else 1,
        progressive=marker == 0xC2,
    )


def read_jpeg_header(data: bytes) -> JpegHeader | str:
    """Read a JPEG's markers up to the first scan; a reason string when the tensor path refuses it.

    Args:
        data: The file's bytes.

    Returns:
        A :class:`JpegHeader`, or why the tensor path does not take these bytes (e.g. ``"not a
        JPEG"``, ``"CMYK JPEG (4 components)"``, ``"truncated JPEG (no end-of-image marker)"``).

    Example:
        >>> import io
        >>> from PIL import Image
        >>> buf, exif = io.BytesIO(), Image.Exif()
        >>> exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
        >>> Image.new("L", (64, 48)).save(buf, "JPEG", exif=exif)
        >>> read_jpeg_header(buf.getvalue())
        JpegHeader(width=64, height=48, components=1, orientation=6, progressive=False)
        >>> read_jpeg_header(buf.getvalue()).upright_size
        (48, 64)
    """
    if not data.startswith(b"\xff\xd8\xff"):
        return "not a JPEG"
    found = _read_markers(data)
    return found if isinstance(found, str) else _header(found, data)
