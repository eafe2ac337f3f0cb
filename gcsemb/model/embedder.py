"""The cached CLIP embedder: one open_clip model per process, its weights cached on disk.

Weights come from an open_clip tag (downloaded once into the cache), a local checkpoint file, or
a ``gs://`` (any fsspec URL) checkpoint copied into the cache once. The cache root is
``$GCSEMB_CACHE``, else ``$XDG_CACHE_HOME/gcsemb`` (``~/.cache/gcsemb``); every file in it is
written to a temporary name and renamed, so an interrupted copy is never trusted later.

Example:
    >>> from gcsemb.model.embedder import load_embedder
    >>> embedder = load_embedder()  # doctest: +SKIP
    >>> embedder.embed_texts(["a photo of a cat"]).shape  # doctest: +SKIP
    (1, 512)
"""

from __future__ import annotations

import contextlib
import difflib
import html
import inspect
import io
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import open_clip
import torch
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from PIL import Image

from gcsemb.embedding.config import PRECISIONS
from gcsemb.errors import ModelLoadError
from gcsemb.model.checkpoints import (  # noqa: F401  (defaults re-exported)
    DEFAULT_MODEL,
    DEFAULT_PRETRAINED,
    TINY_MODEL,
    check_architecture,
    checkpoint_weights,
    local_checkpoint,
    normalize_tag,
    remote_checkpoint,
)
from gcsemb.storage.cache import atomic_write, cache_dir

log = logging.getLogger(__name__)

_AUTOCAST = {"fp16": torch.float16, "bf16": torch.bfloat16}
_LOADED: dict[ModelSpec, Embedder] = {}
# open_clip 3 loads checkpoints with torch.load(weights_only=True); say so where it can be said
_WEIGHTS_ONLY = (
    {"weights_only": True}
    if "weights_only" in inspect.signature(open_clip.create_model).parameters
    else {}
)
_LOCK = threading.RLock()


@dataclass(frozen=True)
class ModelSpec:
    """What an :class:`Embedder` was loaded from, resolved; the per-process cache key."""

    model: str  # architecture name, or the absolute path of a model-config JSON
    pretrained: str | None  # weights tag, absolute checkpoint path, or URL; None: random init
    device: str
    precision: str


class Embedder:
    """An open_clip model that embeds images and texts; get one from :func:`load_embedder`.

    Example:
        >>> embedder = load_embedder(TINY_MODEL, pretrained="tiny.pt")  # doctest: +SKIP
        >>> embedder.embed_images([Image.new("RGB", (32, 32))]).shape  # doctest: +SKIP
        (1, 64)
    """

    def __init__(
        self,
        model: Any,
        *,
        transform: Callable,
        tokenizer: Callable,
        spec: ModelSpec,
        arch: str,
        weights: str,
        dim: int,
    ) -> None:
        self.spec, self.dim, self.device = spec, dim, torch.device(spec.device)
        self._model, self._transform, self._tokenizer = model, transform, tokenizer
        self._arch, self._weights = arch, weights
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        """``"<arch>/<weights>"``, the tag stored in parquet's ``model`` column."""
        return f"{self._arch}/{self._weights}"

    @property
    def preprocess_cfg(self) -> dict[str, Any]:
        """open_clip's preprocess settings (size, mean, std, interpolation, resize mode)."""
        return dict(self._model.visual.preprocess_cfg)

    @property
    def image_size(self) -> int:
        """The shorter side images are resized to before the model sees them (e.g. 224)."""
        return image_size(self._model.visual.preprocess_cfg)

    def preprocess(self, image: Image.Image) -> torch.Tensor:
        """The model's own open_clip transform: a CHW float tensor (thread-safe)."""
        return self._transform(image)

    def embed_tensors(self, batch: torch.Tensor) -> np.ndarray:
        """Embed a batch of preprocessed images: ``(n, dim)`` float32, rows of unit length."""
        return self._encode(self._model.encode_image, batch)

    def embed_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Preprocess and embed PIL images: ``(n, dim)`` float32, rows of unit length."""
        if not images:
            return np.zeros((0, self.dim), np.float32)
        return self.embed_tensors(torch.stack([self.preprocess(im) for im in images]))

    def embed_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Embed texts (e.g. search queries): ``(n, dim)`` float32, rows of unit length."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if not texts:
            return np.zeros((0, self.dim), np.float32)
        return self._encode(self._model.encode_text, self._tokenizer(texts))

    def _encode(self, encode: Callable, batch: torch.Tensor) -> np.ndarray:
        if len(batch) == 0:
            return np.zeros((0, self.dim), np.float32)
        gpu = self.device.type == "cuda"
        if gpu and batch.device.type == "cpu":
            batch = batch.pin_memory()
        dtype = _AUTOCAST.get(self.spec.precision)
        amp = torch.autocast(self.device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with self._lock, torch.inference_mode(), amp:
            features = encode(batch.to(self.device, non_blocking=gpu)).float()
            features = features / features.norm(dim=-1, keepdim=True)
        return np.ascontiguousarray(features.cpu().numpy(), dtype=np.float32)

    def summary(self) -> dict[str, Any]:
        """Model, weights, device, precision and embedding dimension, as a dict."""
        return {
            "model": self._arch,
            "weights": self._weights,
            "device": self.spec.device,
            "precision": self.spec.precision,
            "dim": self.dim,
        }

    def __repr__(self) -> str:
        return "Embedder(" + ", ".join(f"{k}={v!r}" for k, v in self.summary().items()) + ")"

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in self.summary().items()
        )
        return f"<table><caption>gcsemb Embedder</caption>{rows}</table>"


def load_embedder(
    model: str = DEFAULT_MODEL,
    pretrained: str | None = DEFAULT_PRETRAINED,
    *,
    device: str = "auto",
    precision: str = "auto",
    token: object = None,
) -> Embedder:
    """Load an open_clip model once per process (later calls with the same arguments reuse it).

    Args:
        model: An open_clip architecture name, or the path of an open_clip model-config JSON.
        pretrained: An open_clip weights tag, a local checkpoint file, a ``gs://`` (or other
            fsspec) checkpoint URL, or None for random weights.
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        precision: ``"auto"`` (see :func:`auto_precision`: bf16 where the GPU runs it natively,
            fp16 on older GPUs, fp32 on a CPU), or one of PRECISIONS.
        token: Credentials for a ``gs://`` checkpoint, as for the data (see gcsemb.storage.auth), or
            a :class:`~gcsemb.storage.Store` whose access to reuse.

    Returns:
        The cached :class:`Embedder`.

    Raises:
        ModelLoadError: Unknown architecture, weights unavailable offline, or a bad checkpoint.

    Example:
        >>> embedder = load_embedder("ViT-B-32", "laion2b_s34b_b79k")  # doctest: +SKIP
        >>> load_embedder("ViT-B-32", "laion2b_s34b_b79k") is embedder  # doctest: +SKIP
        True
    """
    spec, arch = _resolve(model, pretrained, device, precision)
    with _LOCK:
        if spec not in _LOADED:
            _LOADED[spec] = _load(spec, arch, token)
        return _LOADED[spec]


def save_random_checkpoint(
    path: str | os.PathLike, model: str = TINY_MODEL, *, seed: int = 0
) -> Path:
    """Save seeded random weights for ``model`` as a checkpoint that :func:`load_embedder` loads.

    For tests and the offline demo; ``path`` may be a folder (the file is named after the model).

    Example:
        >>> ckpt = save_random_checkpoint("/tmp/random-seed0.pt")  # doctest: +SKIP
        >>> load_embedder(TINY_MODEL, pretrained=str(ckpt)).name  # doctest: +SKIP
        'tiny-clip/random-seed0.pt#...'
    """
    arch = architecture(model)
    target = Path(path).expanduser()
    if target.is_dir():
        target = target / f"{arch}-random-seed{seed}.pt"
    net = _create(arch, None, seed=seed)
    buf = io.BytesIO()  # saved to memory: a file name would end up inside the archive
    torch.save(net.state_dict(), buf)
    atomic_write(target, lambda tmp: Path(tmp).write_bytes(buf.getvalue()))
    return target


def _create(
    arch: str, ckpt: str | None, device: str = "cpu", tag_cfg: dict | None = None, seed: int = 0
) -> Any:
    """open_clip's model with ``ckpt`` loaded; seeded random weights when it is None."""
    tag_cfg = tag_cfg or {}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return open_clip.create_model(
            arch,
            pretrained=ckpt,
            device=device,
            precision="fp32",
            pretrained_text=False,
            force_quick_gelu=bool(tag_cfg.get("quick_gelu")),  # as the tag's weights were trained
            force_preprocess_cfg=merge_preprocess_dict({}, tag_cfg),
            cache_dir=str(cache_dir() / "open_clip"),
            **_WEIGHTS_ONLY,  # tensors only: a checkpoint can never run code when loaded
        )


def image_size(preprocess_cfg: dict[str, Any]) -> int:
    """The shorter side a model takes, from open_clip's preprocess config (``size``).

    Example:
        >>> image_size({"size": (224, 256)}), image_size({"size": 336})
        (224, 336)
    """
    size = preprocess_cfg["size"]
    return int(min(size) if isinstance(size, tuple | list) else size)


def architecture(model: str) -> str:
    """The open_clip name of ``model``, registering a config JSON with open_clip first."""
    if model.endswith(".json"):
        path = Path(model).expanduser().resolve()
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as e:
            raise ModelLoadError(f"Cannot read the model config {path}: {e}") from e
        missing = {"embed_dim", "vision_cfg", "text_cfg"} - set(config)
        if missing:
            raise ModelLoadError(
                f"{path} is no open_clip model config: it lacks {sorted(missing)}."
            )
        if open_clip.get_model_config(path.stem) != config:
            open_clip.add_model_config(path)
        return path.stem
    return check_architecture(model, open_clip.list_models())


def _resolve(
    model: str, pretrained: str | None, device: str, precision: str
) -> tuple[ModelSpec, str]:
    """The resolved :class:`ModelSpec` and the architecture name."""
    arch = architecture(model)
    if model.endswith(".json"):
        model = str(Path(model).expanduser().resolve())
    try:
        dev = torch.device(
            ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        )
    except RuntimeError as e:
        raise ModelLoadError(f"Unknown device {device!r}: use 'auto', 'cpu' or 'cuda[:N]'.") from e
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError(f"device={device!r} but torch sees no CUDA GPU: use 'auto' or 'cpu'.")
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())  # "cuda" and "cuda:0": one model
    capability = torch.cuda.get_device_capability(dev) if dev.type == "cuda" else None
    if precision == "auto":
        precision = auto_precision(capability)
    if precision not in PRECISIONS:
        raise ModelLoadError(f"Unknown precision {precision!r}: use 'auto' or one of {PRECISIONS}.")
    if precision == "bf16" and capability is not None and capability < (8, 0):
        raise ModelLoadError(
            f"precision='bf16' on {torch.cuda.get_device_name(dev)} (compute capability "
            f"{capability[0]}.{capability[1]}): bf16 is native only from 8.0 (A100, L4, H100), "
            "and convolutions have no bf16 kernels below it. Use 'fp16' or 'auto'."
        )
    local = local_checkpoint(pretrained) if pretrained else None
    if pretrained and open_clip.get_pretrained_cfg(arch, pretrained):
        pretrained = normalize_tag(pretrained)
    elif local is not None:
        pretrained = str(local)
    return ModelSpec(model, pretrained, str(dev), precision), arch


def auto_precision(capability: tuple[int, int] | None) -> str:
    """The autocast precision for a device: bf16 where native, fp16 on older GPUs, fp32 on CPU.

    bf16 is native from compute capability 8.0 (A100, A10, L4, H100); a T4 (7.5) or V100 (7.0)
    only emulates it, slowly (``torch.cuda.is_bf16_supported()`` counts emulation), so they get
    fp16.

    Args:
        capability: The GPU's ``(major, minor)`` compute capability; None for a CPU.

    Example:
        >>> auto_precision((7, 5)), auto_precision((8, 0)), auto_precision(None)
        ('fp16', 'bf16', 'fp32')
    """
    if capability is None:
        return "fp32"
    return "bf16" if tuple(capability) >= (8, 0) else "fp16"


def _load(spec: ModelSpec, arch: str, token: object) -> Embedder:
    """Build the Embedder of ``spec`` (uncached)."""
    tag_cfg = open_clip.get_pretrained_cfg(arch, spec.pretrained) if spec.pretrained else {}
    ckpt: str | None = None
    if spec.pretrained is None:
        weights = "random-seed0"
    elif tag_cfg:
        ckpt, weights = _hub_checkpoint(arch, spec.pretrained, tag_cfg), spec.pretrained
    else:
        ckpt = str(
            remote_checkpoint(spec.pretrained, token)
            if "://" in spec.pretrained
            else _local_checkpoint(arch, spec.pretrained)
        )
        weights = checkpoint_weights(Path(ckpt))
    try:
        model = _create(arch, ckpt, spec.device, tag_cfg)
        tokenizer = open_clip.get_tokenizer(arch, cache_dir=str(cache_dir() / "open_clip"))
    except Exception as e:
        in_cache = ckpt is not None and Path(ckpt).resolve().is_relative_to(cache_dir().resolve())
        fix = "delete it and load again to fetch a fresh copy" if in_cache else "copy it again"
        raise ModelLoadError(
            f"Could not load {arch} weights from {ckpt or 'random init'} ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:120]}...). The file may be truncated or corrupt ({fix}), "
            f"or made for another architecture than {arch}: pass the model it was trained as."
        ) from e
    transform = image_transform_v2(PreprocessCfg(**model.visual.preprocess_cfg), is_train=False)
    dim = int(open_clip.get_model_config(arch)["embed_dim"])
    log.info("loaded %s/%s on %s (%s)", arch, weights, spec.device, spec.precision)
    return Embedder(
        model.eval(),
        transform=transform,
        tokenizer=tokenizer,
        spec=spec,
        arch=arch,
        weights=weights,
        dim=dim,
    )


def _hub_checkpoint(arch: str, tag: str, cfg: dict[str, Any]) -> str:
    """A tag's weights: from our cache without touching the network, else downloaded into it."""
    root = cache_dir() / "open_clip"
    repo, filename = os.path.split(cfg.get("hf_hub", ""))
    if repo:
        from huggingface_hub import try_to_load_from_cache

        default = filename or "open_clip_pytorch_model.bin"  # open_clip prefers .safetensors
        safe = (f"{os.path.splitext(default)[0]}.safetensors", "open_clip_model.safetensors")
        for name in (*safe, default):
            hit = try_to_load_from_cache(repo, name, cache_dir=root)
            if isinstance(hit, str) and os.path.isfile(hit):
                return hit
    try:
        return open_clip.download_pretrained(cfg, cache_dir=str(root))
    except Exception as e:
        raise ModelLoadError(
            f"The {arch} weights {tag!r} are not in the cache ({root}) and could not be downloaded "
            f"({type(e).__name__}: {str(e)[:200]}). Options: (1) pass a local checkpoint file, "
            "pretrained='/path/open_clip_pytorch_model.bin'; (2) pass one in a bucket, "
            "pretrained='gs://bucket/model.bin' (copied into the cache once); (3) pre-cache on a "
            'machine with internet: GCSEMB_CACHE=/some/dir python -c "from gcsemb import '
            f"load_embedder; load_embedder('{arch}', '{tag}')\", then copy /some/dir here and set "
            "GCSEMB_CACHE to it."
        ) from e


def _local_checkpoint(arch: str, pretrained: str) -> str:
    """``pretrained`` if it is a checkpoint file; else an error naming what would work."""
    if os.path.isfile(pretrained):
        return pretrained
    tags = open_clip.list_pretrained_tags_by_model(arch)
    close = difflib.get_close_matches(pretrained, tags, n=3)
    raise ModelLoadError(
        f"pretrained={pretrained!r} is no checkpoint file, no gs:// URL and no weights tag of "
        f"{arch}"
        + (f" (did you mean {', '.join(close)}?)" if close else "")
        + f". Tags of {arch}: {', '.join(tags) or 'none'}."
    )
