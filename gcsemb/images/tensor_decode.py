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

The JPEG header parser lives in :mod:`gcsemb.images.jpeg_header`, the preprocess (resize,
orientation, crop) in :mod:`gcsemb.images.tensor_preprocess`; their public names are importable from
here too.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torchvision.io import ImageReadMode, decode_jpeg

from gcsemb.images.decode import DEFAULT_MAX_PIXELS
from gcsemb.images.jpeg_header import JpegHeader, read_jpeg_header
from gcsemb.images.tensor_preprocess import Preprocess, resize_into

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
_SOURCE_LOCATION = re.compile(r"^.*?\.(?:cpp|cu|h):\d+, ")
_CHUNK_PIXELS = {"cuda": 1 << 27, "cpu": 1 << 25}  # pixels decoded and resized at once


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


def _read_headers(
    data: Sequence[bytes], max_pixels: int
) -> tuple[dict[int, JpegHeader], dict[int, str]]:
    """Reads every input's JPEG header: the headers taken, by position, and the refusals."""
    headers: dict[int, JpegHeader] = {}
    fallback: dict[int, str] = {}
    for i, blob in enumerate(data):
        header = read_jpeg_header(bytes(blob) if not isinstance(blob, bytes) else blob)
        if isinstance(header, str):
            fallback[i] = header
        elif header.width * header.height > max_pixels:
            fallback[i] = f"decompression bomb: {header.width}x{header.height} pixels"
        else:
            headers[i] = header
    return headers, fallback


def _decode_chunk(
    chunk: list[int],
    data: Sequence[bytes],
    headers: dict[int, JpegHeader],
    *,
    device: torch.device,
    fallback: dict[int, str],
) -> dict[int, torch.Tensor]:
    """Decodes one chunk's images, one call per colour mode; each failure goes to ``fallback``.

    Args:
        chunk: Input positions to decode.
        data: The inputs' bytes.
        headers: The header of each position in ``chunk``.
        device: Where to decode.
        fallback: Position -> reason, filled with the images that cannot be decoded here.

    Returns:
        The decoded uint8 ``(c, h, w)`` tensor of each position decoded, on ``device``.
    """
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
    return decoded


def _by_size(headers: dict[int, JpegHeader]) -> dict[tuple[int, int, int], list[int]]:
    """Positions grouped by stored ``(height, width, orientation)``, ascending in each group."""
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i in sorted(headers):
        h = headers[i]
        groups.setdefault((h.height, h.width, h.orientation), []).append(i)
    return groups


def _normalise(out: torch.Tensor, cfg: Preprocess) -> None:
    """Normalises a batch of 0..255 values in place: ``(x / 255 - mean) / std``."""
    mean = torch.tensor(cfg.mean, device=out.device).view(1, 3, 1, 1) * 255
    std = torch.tensor(cfg.std, device=out.device).view(1, 3, 1, 1) * 255
    out.sub_(mean).div_(std)


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
            where :func:`gcsemb.images.decode.decode_image` refuses them as decompression bombs.
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
    headers, fallback = _read_headers(data, max_pixels)
    ok = sorted(headers)
    row = {i: r for r, i in enumerate(ok)}
    th, tw = cfg.size
    out = torch.empty((len(ok), 3, th, tw), dtype=torch.float32, device=device)
    done: list[int] = []
    # group equal stored size and orientation: one resize call per group chunk
    groups = _by_size(headers)
    order = [i for group in groups.values() for i in group]
    key_of = {i: key for key, group in groups.items() for i in group}
    for chunk in _chunks(order, headers, budget):
        decoded = _decode_chunk(chunk, data, headers, device=device, fallback=fallback)
        same: dict[tuple[int, int, int], list[int]] = {}
        for i in decoded:
            same.setdefault(key_of[i], []).append(i)
        for key, members in same.items():
            resize_into(members, decoded, key, cfg, out=out, row=row)
            done.extend(members)
        del decoded
    done.sort()
    if len(done) < len(ok):
        out = out[torch.tensor([row[i] for i in done], dtype=torch.long, device=device)]
    _normalise(out, cfg)
    return TensorBatch(
        pixels=out,
        indices=done,
        sizes=[headers[i].upright_size for i in done],
        fallback=dict(sorted(fallback.items())),
    )


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
