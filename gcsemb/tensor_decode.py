"""JPEG bytes to a model-ready batch with torchvision: nvJPEG on CUDA, libjpeg on CPU.

:func:`decode_batch` turns a list of JPEG byte strings into the ``(n, 3, S, S)`` float batch the
CLIP model takes, on the model's device, matching open_clip's own PIL preprocess (antialiased
bicubic resize, centre crop, ``/255``, mean/std) for ``resize_mode`` ``shortest``, ``longest`` and
``squash``. On CUDA, nvJPEG decodes batches (one call per chunk) and the GPU resizes them, so the
CPU cores no longer bound the run. On CPU the same code runs after a per-image libjpeg decode:
faster than PIL for small JPEGs (torch resizes uint8 as PIL does), slower for large photos, which
PIL decodes at reduced size (``draft``); it also tests the GPU code where there is no GPU.

Every JPEG header is read here first (size, EXIF orientation, colour components, coding). What
the tensor path does not take — other formats, CMYK, 12-bit, arithmetic or lossless JPEGs,
truncated files, decompression bombs, and anything torchvision's decoder raises on — is returned
in :attr:`TensorBatch.fallback` for the caller's CPU PIL path, one image at a time; one bad image
never fails the batch.

Importing this module installs one targeted warnings filter: torchvision 0.29's
``DeprecationWarning`` for its image decoders (raised on every call; their successor, TorchCodec,
is not a dependency).

Example:
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO()
    >>> Image.new("RGB", (640, 480), (255, 0, 0)).save(buf, "JPEG")
    >>> cfg = {"size": 224, "mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    >>> out = decode_batch([buf.getvalue(), b"GIF89a..."], cfg, device="cpu")
    >>> out.pixels.shape, out.indices, out.sizes, out.fallback
    (torch.Size([1, 3, 224, 224]), [0], [(640, 480)], {1: 'not a JPEG'})
    >>> round(float(out.pixels[0, 0].mean()), 2)  # red: (254/255 - 0.5) / 0.5
    0.99
"""

from __future__ import annotations

import functools
import io
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as nnf
from torchvision.io import ImageReadMode, decode_jpeg

from gcsemb.decode import DEFAULT_MAX_PIXELS

__all__ = [
    "DecodeSetting",
    "JpegHeader",
    "Preprocess",
    "TensorBatch",
    "decode_batch",
    "gpu_decode_available",
    "read_jpeg_header",
    "resolve_decode",
]

warnings.filterwarnings(
    "ignore",
    message="The image decoding and encoding capabilities of TorchVision",
    category=DeprecationWarning,
)

DecodeSetting = Literal["auto", "cpu", "gpu"]
"""The ``decode`` setting: see :func:`resolve_decode`."""
_SOF_OK = frozenset({0xC0, 0xC1, 0xC2})  # baseline, extended sequential, progressive
_SOF_OTHER = frozenset({0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
_XMP = b"http://ns.adobe.com/xap/1.0/\x00"
_XMP_ORIENTATION = re.compile(rb'tiff:Orientation(="|>)([0-9])')
_SOURCE_LOCATION = re.compile(r"^.*?\.(?:cpp|cu|h):\d+, ")
_CHUNK_PIXELS = {"cuda": 1 << 27, "cpu": 1 << 25}  # pixels decoded and resized at once


@dataclass(frozen=True)
class Preprocess:
    """The model's inference preprocess, as open_clip's ``image_transform_v2`` applies it.

    Attributes:
        size: Output ``(height, width)``.
        mean: Per-channel mean, on the 0..1 scale.
        std: Per-channel standard deviation, on the 0..1 scale.
        interpolation: ``"bicubic"`` or ``"bilinear"``.
        resize_mode: ``"shortest"`` (resize the shorter side, centre crop), ``"longest"``
            (resize the longer side, pad with ``fill_color``) or ``"squash"`` (resize to size).
        fill_color: Padding value (0..255) of ``"longest"``.
    """

    size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = (0.48145466, 0.4578275, 0.40821073)
    std: tuple[float, float, float] = (0.26862954, 0.26130258, 0.27577711)
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"
    fill_color: int = 0

    @classmethod
    def from_cfg(cls, cfg: Any) -> Preprocess:
        """Build from ``model.visual.preprocess_cfg`` (a dict), a ``PreprocessCfg``, or a model.

        Args:
            cfg: A mapping with open_clip's keys (``size``, ``mean``, ``std``, ``interpolation``,
                ``resize_mode``, ``fill_color``; missing ones take open_clip's defaults), an
                open_clip ``PreprocessCfg``, a :class:`Preprocess`, an object with a
                ``preprocess_cfg`` attribute, or an open_clip model (``model.visual``).

        Returns:
            The resolved :class:`Preprocess`.

        Example:
            >>> Preprocess.from_cfg({"size": 256, "interpolation": "random"}).size
            (256, 256)
        """
        if isinstance(cfg, Preprocess):
            return cfg
        if not isinstance(cfg, Mapping) and is_dataclass(cfg) and not isinstance(cfg, type):
            cfg = asdict(cfg)
        for attr in ("preprocess_cfg", "visual", "_model"):  # an Embedder or open_clip model
            if not isinstance(cfg, Mapping) and hasattr(cfg, attr):
                return cls.from_cfg(getattr(cfg, attr))
        if not isinstance(cfg, Mapping):
            raise TypeError(f"no preprocess config in {type(cfg).__name__}")
        size = cfg.get("size", 224)
        size = (int(size), int(size)) if isinstance(size, int | float) else tuple(size)[-2:]

        def triple(value: Any, default: tuple[float, float, float]) -> tuple[float, float, float]:
            if value is None:
                return default
            value = (value,) * 3 if isinstance(value, int | float) else tuple(value)
            return (float(value[0]), float(value[1]), float(value[2]))

        mode = cfg.get("resize_mode") or "shortest"
        if mode not in ("shortest", "longest", "squash"):
            raise ValueError(f"unknown resize_mode {mode!r}")
        return cls(
            size=(int(size[0]), int(size[1])),
            mean=triple(cfg.get("mean"), cls.mean),
            std=triple(cfg.get("std"), cls.std),
            # open_clip maps anything but "bilinear" (e.g. "random") to bicubic at inference
            interpolation="bilinear" if cfg.get("interpolation") == "bilinear" else "bicubic",
            resize_mode=mode,
            fill_color=int(cfg.get("fill_color") or 0),
        )

    def resized_size(self, width: int, height: int) -> tuple[int, int]:
        """The ``(height, width)`` an upright image is resized to, before crop or pad.

        Follows torchvision's ``Resize(int)`` (shorter side to size, longer side truncated) for
        square ``shortest`` and open_clip's ``ResizeKeepRatio`` (rounded) otherwise.
        """
        th, tw = self.size
        if self.resize_mode == "squash":
            return th, tw
        if self.resize_mode == "shortest" and th == tw:
            short, long = min(width, height), max(width, height)
            new_long = int(th * long / short)
            return (new_long, th) if width <= height else (th, new_long)
        ratios = (height / th, width / tw)
        # open_clip's ResizeKeepRatio ignores the interpolation and fits the shorter side for
        # "shortest" with a non-square size; "longest" fits the longer side
        ratio = max(ratios) if self.resize_mode == "longest" else min(ratios)
        return round(height / ratio), round(width / ratio)

    @property
    def mode(self) -> str:
        """The interpolation mode name of ``torch.nn.functional.interpolate``.

        Non-square ``shortest`` always uses bicubic, as open_clip's ``ResizeKeepRatio`` does.
        """
        square_shortest = self.resize_mode == "shortest" and self.size[0] == self.size[1]
        if self.resize_mode == "squash" or square_shortest or self.resize_mode == "longest":
            return self.interpolation
        return "bicubic"


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
        """``(width, height)`` after EXIF orientation, as :mod:`gcsemb.decode` reports it."""
        if self.orientation >= 5:
            return self.height, self.width
        return self.width, self.height


@dataclass
class TensorBatch:
    """The result of :func:`decode_batch`.

    Attributes:
        pixels: ``(len(indices), 3, H, W)`` float32 on the target device, normalised.
        indices: Position in the input of each row of ``pixels``, ascending.
        sizes: Full-size ``(width, height)`` after EXIF orientation of each row of ``pixels``.
        fallback: Input position -> reason, for each image to decode on the CPU PIL path.
    """

    pixels: torch.Tensor
    indices: list[int] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)
    fallback: dict[int, str] = field(default_factory=dict)


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


def read_jpeg_header(data: bytes) -> JpegHeader | str:  # noqa: C901 (one branch per marker)
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
    pos, n = 2, len(data)
    exif = xmp = adobe = sof = None
    seen_exif = False
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
            break
        segment = data[pos + 4 : pos + 2 + length]
        if len(segment) < length - 2:
            return "truncated JPEG (header incomplete)"
        if marker == 0xE1 and segment.startswith(b"Exif\0\0") and not seen_exif:
            exif, seen_exif = _exif_orientation(segment[6:]), True  # PIL reads the first
        elif marker == 0xE1 and segment.startswith(_XMP):
            match = _XMP_ORIENTATION.search(segment)
            xmp = int(match[2]) if match else None
        elif marker == 0xEE and segment.startswith(b"Adobe") and len(segment) >= 12:
            adobe = segment[11]
        elif marker in _SOF_OK or marker in _SOF_OTHER:
            sof = marker, segment
        pos += 2 + length
    if sof is None or len(sof[1]) < 6:
        return "corrupt JPEG (no frame header)"
    marker, frame = sof
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
    if components == 3 and (adobe == 0 or ids == b"RGB"):
        return "RGB-coded JPEG (not YCbCr)"
    if width == 0 or height == 0:
        return "JPEG without height in its frame header"
    # entropy-coded data never holds 0xFFD9, so an end marker after the first scan means the file
    # is whole (trailers after it, as some phones write, are fine)
    if data.rfind(b"\xff\xd9") < pos:
        return "truncated JPEG (no end-of-image marker)"
    orientation = exif if exif is not None else xmp
    return JpegHeader(
        width,
        height,
        components,
        orientation if orientation in range(1, 9) else 1,
        progressive=marker == 0xC2,
    )


def _orient(x: torch.Tensor, orientation: int) -> torch.Tensor:
    """Make ``(..., H, W)`` upright for an EXIF orientation, as PIL's ``exif_transpose``."""
    if orientation == 2:
        return x.flip(-1)
    if orientation == 3:
        return x.flip(-2, -1)
    if orientation == 4:
        return x.flip(-2)
    if orientation == 5:
        return x.transpose(-2, -1)
    if orientation == 6:
        return x.rot90(-1, (-2, -1))
    if orientation == 7:
        return x.transpose(-2, -1).flip(-2, -1)
    if orientation == 8:
        return x.rot90(1, (-2, -1))
    return x


def _place(src: torch.Tensor, dst: torch.Tensor, fill: float) -> None:
    """Centre-crop or pad ``src`` (k, 3, h, w) into ``dst`` (k, 3, H, W), as torchvision does."""
    slices_src, slices_dst = [], []
    for have, want in zip(src.shape[-2:], dst.shape[-2:], strict=True):
        if have >= want:
            start = int(round((have - want) / 2.0))
            slices_src.append(slice(start, start + want))
            slices_dst.append(slice(0, want))
        else:
            start = (want - have) // 2
            slices_src.append(slice(0, have))
            slices_dst.append(slice(start, start + have))
    if src.shape[-2] < dst.shape[-2] or src.shape[-1] < dst.shape[-1]:
        dst.fill_(fill)
    dst[..., slices_dst[0], slices_dst[1]] = src[..., slices_src[0], slices_src[1]]


def _decode(
    data: list[torch.Tensor], mode: ImageReadMode, device: torch.device
) -> list[torch.Tensor | Exception]:
    """Decode JPEG byte tensors: one call on CUDA, retried image by image if it raises."""
    if device.type == "cuda" and len(data) > 1:
        try:
            return list(decode_jpeg(data, mode=mode, device=device))
        except Exception:  # noqa: BLE001 - some image of the batch; find which below
            pass
    out: list[torch.Tensor | Exception] = []
    for tensor in data:
        try:
            out.append(decode_jpeg(tensor, mode=mode, device=device))
        except Exception as e:  # noqa: BLE001 - reported for the CPU path
            out.append(e)
    return out


def _reason(error: Exception) -> str:
    """The message of a torchvision error, without its C++ source location."""
    lines = str(error).strip().splitlines() or [type(error).__name__]
    return _SOURCE_LOCATION.sub("", lines[-1])[:200]


def _chunks(items: list[int], headers: dict[int, JpegHeader], budget: int) -> list[list[int]]:
    """Split positions into runs whose decoded pixels stay within ``budget`` (one at least)."""
    chunks: list[list[int]] = []
    total = budget + 1
    for i in items:
        pixels = headers[i].width * headers[i].height
        if total + pixels > budget:
            chunks.append([])
            total = 0
        chunks[-1].append(i)
        total += pixels
    return chunks


def decode_batch(
    data: Sequence[bytes],
    preprocess: Any,
    device: str | torch.device = "cpu",
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    chunk_pixels: int | None = None,
) -> TensorBatch:
    """Decode JPEGs and preprocess them for the model, on ``device``; never raises per image.

    Each JPEG's header is read first; refused images go to ``fallback`` undecoded. The rest are
    decoded in chunks of at most ``chunk_pixels`` decoded pixels (one nvJPEG call per chunk and
    colour mode on CUDA; per image on CPU); if a call raises, its images are decoded one by one
    and only those that fail go to ``fallback``. Then each image is resized (antialiased; on CUDA
    in float32, one call per group of equal stored size and orientation, rounded to 0..255 like
    PIL's 8-bit result; on CPU in uint8, as PIL does), made upright, centre-cropped (or padded)
    and normalised.

    Args:
        data: JPEG file bytes (anything else is reported in ``fallback``).
        preprocess: The model's preprocess config: ``model.visual.preprocess_cfg``, an open_clip
            ``PreprocessCfg`` or model, or a :class:`Preprocess` (see :meth:`Preprocess.from_cfg`).
        device: Where to decode and return the batch: ``"cuda"`` (nvJPEG) or ``"cpu"``.
        max_pixels: Images with more pixels than this (from the header) go to ``fallback``,
            where :func:`gcsemb.decode.decode_image` refuses them as decompression bombs.
        chunk_pixels: Decoded pixels held at once; bounds memory (3 bytes per pixel decoded,
            12 while resizing). Default 2**27 on CUDA (about 11 12-MP photos), 2**25 on CPU.

    Returns:
        A :class:`TensorBatch`: the pixels of the images decoded here, their input positions
        and upright full sizes, and the positions and reasons of the others.

    Example:
        >>> import io
        >>> from PIL import Image
        >>> jpeg = io.BytesIO()
        >>> Image.new("RGB", (4000, 3000)).save(jpeg, "JPEG")
        >>> out = decode_batch([jpeg.getvalue(), jpeg.getvalue()[:999]], {"size": 224})
        >>> tuple(out.pixels.shape), out.sizes, out.fallback
        ((1, 3, 224, 224), [(4000, 3000)], {1: 'truncated JPEG (no end-of-image marker)'})
    """
    device = torch.device(device)
    cfg = Preprocess.from_cfg(preprocess)
    budget = chunk_pixels or _CHUNK_PIXELS.get(device.type, _CHUNK_PIXELS["cpu"])
    fallback: dict[int, str] = {}
    headers: dict[int, JpegHeader] = {}
    for i, blob in enumerate(data):
        header = read_jpeg_header(bytes(blob) if not isinstance(blob, bytes) else blob)
        if isinstance(header, str):
            fallback[i] = header
        elif header.width * header.height > max_pixels:
            fallback[i] = f"decompression bomb: {header.width}x{header.height} pixels"
        else:
            headers[i] = header
    ok = sorted(headers)
    row = {i: r for r, i in enumerate(ok)}
    th, tw = cfg.size
    out = torch.empty((len(ok), 3, th, tw), dtype=torch.float32, device=device)
    done: list[int] = []
    # group equal stored size and orientation: one resize call per group chunk
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i in ok:
        h = headers[i]
        groups.setdefault((h.height, h.width, h.orientation), []).append(i)
    order = [i for group in groups.values() for i in group]
    key_of = {i: key for key, group in groups.items() for i in group}
    for chunk in _chunks(order, headers, budget):
        decoded: dict[int, torch.Tensor] = {}
        for components, mode in ((3, ImageReadMode.RGB), (1, ImageReadMode.GRAY)):
            todo = [i for i in chunk if headers[i].components == components]
            if not todo:
                continue
            tensors = [torch.frombuffer(bytearray(data[i]), dtype=torch.uint8) for i in todo]
            try:
                results = _decode(tensors, mode, device)
            except Exception as e:  # noqa: BLE001 - e.g. a CUDA decoder that cannot start
                results = [e] * len(todo)
            for i, result in zip(todo, results, strict=True):
                if isinstance(result, Exception):
                    fallback[i] = f"torchvision cannot decode: {_reason(result)}"
                elif tuple(result.shape[-2:]) != (headers[i].height, headers[i].width):
                    fallback[i] = "decoded size differs from the header"
                else:
                    decoded[i] = result.to(device)
        same: dict[tuple[int, int, int], list[int]] = {}
        for i in decoded:
            same.setdefault(key_of[i], []).append(i)
        for key, members in same.items():
            _resize_into(members, decoded, key, cfg, out=out, row=row)
            done.extend(members)
        del decoded
    done.sort()
    if len(done) < len(ok):
        out = out[torch.tensor([row[i] for i in done], dtype=torch.long, device=device)]
    mean = torch.tensor(cfg.mean, device=device).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.std, device=device).view(1, 3, 1, 1) * 255
    out.sub_(mean).div_(std)  # (x / 255 - mean) / std
    return TensorBatch(
        pixels=out,
        indices=done,
        sizes=[headers[i].upright_size for i in done],
        fallback=dict(sorted(fallback.items())),
    )


def _resize_into(
    members: list[int],
    decoded: dict[int, torch.Tensor],
    key: tuple[int, int, int],
    cfg: Preprocess,
    *,
    out: torch.Tensor,
    row: dict[int, int],
) -> None:
    """Resize, orient and crop images of one stored size into their rows of ``out`` (0..255).

    Resizing happens in the stored orientation (with the target size swapped for orientations
    5..8), before the flips: resizing commutes with them, and flips of the small image are cheap.
    """
    height, width, orientation = key
    upright_w, upright_h = (height, width) if orientation >= 5 else (width, height)
    rh, rw = cfg.resized_size(upright_w, upright_h)
    if orientation >= 5:  # resize in stored orientation; resizing commutes with flips
        rh, rw = rw, rh
    fill = float(cfg.fill_color) if cfg.resize_mode == "longest" else 0.0
    if out.device.type == "cpu":  # one at a time: torch resizes uint8 like PIL, no copies
        batches = [([i], decoded.pop(i)[None]) for i in members]
    else:  # one call for the group
        batches = [(members, torch.stack([decoded.pop(i).expand(3, -1, -1) for i in members]))]
    for rows, x in batches:
        if (rh, rw) != (height, width):
            x = _resize(x, (rh, rw), cfg.mode)
        x = _orient(x, orientation)
        for j, i in enumerate(rows):
            _place(x[j : j + 1], out[row[i] : row[i] + 1], fill)


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """Antialiased resize of a uint8 ``(k, c, h, w)`` batch, with values rounded to 0..255.

    On CPU torch resizes uint8 directly, as PIL does (8-bit intermediate, about 50 times faster
    than in float); elsewhere in float32, then clamped and rounded like PIL's 8-bit result.
    """
    if x.device.type == "cpu":
        return nnf.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)
    x = nnf.interpolate(x.float(), size=size, mode=mode, align_corners=False, antialias=True)
    return x.clamp_(0, 255).round_()


@functools.lru_cache(maxsize=8)
def gpu_decode_available(device: str = "cuda") -> bool:
    """Whether torchvision's nvJPEG decode works on ``device`` (probed once per device).

    Example:
        >>> gpu_decode_available("cpu")
        False
    """
    dev = torch.device(device)
    if dev.type != "cuda" or not torch.cuda.is_available():
        return False
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 100, 50)).save(buf, "JPEG")
    try:
        tensor = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
        image = decode_jpeg([tensor], mode=ImageReadMode.RGB, device=dev)[0]
        return image.shape == (3, 16, 16) and abs(int(image[0].float().mean()) - 200) < 8
    except Exception:  # noqa: BLE001 - no nvJPEG in this build, driver trouble, ...
        return False


def resolve_decode(
    decode: DecodeSetting | str, device: str | torch.device
) -> Literal["cpu", "gpu"]:
    """Resolve the ``decode`` setting for an embedder on ``device``.

    Args:
        decode: ``"auto"`` (GPU decode when ``device`` is CUDA and nvJPEG works there), ``"cpu"``
            (PIL in CPU threads) or ``"gpu"`` (required: raises if unavailable).
        device: The embedder's device, e.g. ``embedder.device``.

    Returns:
        ``"gpu"`` or ``"cpu"``.

    Raises:
        ValueError: Unknown setting, or ``"gpu"`` where GPU decode cannot run.

    Example:
        >>> resolve_decode("auto", "cpu")
        'cpu'
    """
    dev = torch.device(device)
    if decode not in ("auto", "cpu", "gpu"):
        raise ValueError(f"decode must be 'auto', 'cpu' or 'gpu', not {decode!r}")
    if decode == "cpu":
        return "cpu"
    available = dev.type == "cuda" and gpu_decode_available(str(dev))
    if decode == "gpu" and not available:
        why = "the model is not on a CUDA device" if dev.type != "cuda" else "nvJPEG failed"
        raise ValueError(f"decode='gpu' needs torchvision's nvJPEG decode on CUDA: {why}.")
    return "gpu" if available else "cpu"
