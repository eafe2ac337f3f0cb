"""How a run is made: one frozen value, stored in every shard's metadata.

Example:
    >>> cfg = EmbedConfig(batch_size=64, decode_workers=4)
    >>> cfg.model, cfg.decode
    ('ViT-B-32', 'auto')
"""

from __future__ import annotations

import os
from dataclasses import MISSING, dataclass, field, fields
from typing import Any

from gcsemb.model.checkpoints import DEFAULT_MODEL, DEFAULT_PRETRAINED

BATCH_SIZE = {"cpu": 32, "cuda": 256}  # default images per forward pass, by device type
MIB = 1 << 20
DECODES = ("auto", "cpu", "gpu")
MAX_OBJECT_BYTES = 256 * MIB
PRECISIONS = ("fp32", "fp16", "bf16")
DEVICE_HELP = "auto, cpu, cuda or cuda:N"
WRITE_RETRY_SECONDS = 600.0
"""How long a write to DST (a shard, or the claim that takes DST's lease) is retried, with backoff
up to a minute, before the run gives up on it (a shard's rows are then kept locally): an outage of
Cloud Storage or of the network rarely lasts longer, and ten minutes of waiting costs less than
recomputing a shard's embeddings on a GPU."""


def option_field(default: Any, text: str, *, shown: str | None = None) -> Any:
    """A dataclass field with a default, and its help on the command line (see :func:`field_help`).

    ``shown``: how the help states the default, where it is not the field's own value.
    """
    metadata = {"help": text} if shown is None else {"help": text, "shown": shown}
    return field(default=default, metadata=metadata)


def field_help(owner: Any, name: str) -> str:
    """The command-line help of the dataclass field ``name`` of ``owner``, with its default.

    Example:
        >>> field_help(EmbedConfig, "io_workers")
        'fetch groups in flight at once (default: 4)'
        >>> field_help(RayEngine, "gpus_per_worker")
        'ray: GPUs per embedding actor (default: 0: embed on CPU)'
    """
    spec = {f.name: f for f in fields(owner)}[name]
    shown = spec.metadata.get("shown", spec.default)
    if shown is None or isinstance(shown, bool) or shown is MISSING:
        return spec.metadata["help"]
    return f"{spec.metadata['help']} (default: {shown})"


def field_default(owner: Any, name: str) -> Any:
    """The default of the dataclass field ``name`` of ``owner`` (None: one made per instance).

    Example:
        >>> field_default(EmbedConfig, "model")
        'ViT-B-32'
    """
    default = {f.name: f for f in fields(owner)}[name].default
    return None if default is MISSING else default


def default_batch_size(device_type: str) -> int:
    """Images per forward pass when none is given: 32 on a CPU, 256 on a GPU.

    On a CPU, larger batches spill the caches and run slower per image (ViT-B-32 on 2 cores:
    20.7 images/s at 32, 18.7 at 64); a GPU wants enough images to fill it.
    """
    return BATCH_SIZE.get(device_type, BATCH_SIZE["cpu"])


@dataclass(frozen=True)
class EmbedConfig:
    """How to run: stored with each shard (its ``gcsemb.config`` metadata) and hashable.

    Attributes:
        model: open_clip architecture name or model-config JSON path.
        pretrained: open_clip weights tag, local or gs:// checkpoint (``None``: random weights).
        batch_size: Images per forward pass (``None``: :func:`default_batch_size` of the device).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        precision: ``auto`` (bf16 where the GPU runs it natively, fp16 on older GPUs, fp32 on a
            CPU), ``fp32``, ``fp16`` or ``bf16``.
        decode: ``auto`` (JPEGs decoded in batches on the GPU with nvJPEG when the model runs on
            CUDA, else on the CPU), ``cpu`` or ``gpu``.
        fetch_batch: Objects fetched by one concurrent request group.
        io_workers: Fetch groups in flight at once.
        decode_workers: Threads decoding and preprocessing on the CPU.
        rows_per_shard: Rows per parquet shard.
        seconds_per_shard: Write a shard at least this often.
        max_object_bytes: Objects larger than this (from the listing) are recorded as too large,
            never downloaded. 256 MiB: a 100-megapixel JPEG is about 50 MB and a 16-bit
            8000x6000 TIFF about 290 MB uncompressed, far above any photo, while a few such
            objects in flight stay inside a notebook's memory.
        max_bytes_in_flight: Downloaded bytes held at once across all fetches and decoders (one
            larger object still goes, alone). 1 GiB: a few hundred phone photos in flight, and
            a GPU host's cores stay fed.
        decode_memory: Decoded pixel bytes in flight across all decode threads (see
            :class:`gcsemb.images.decode.PixelBudget`).
        write_retry_seconds: How long a shard that DST will not take is retried before its rows
            are kept locally for the next run (see :mod:`gcsemb.embedding.writer`), and how long
            taking DST's lease is retried through an outage (see :mod:`gcsemb.embedding.lease`).
        retry_failed: Try every recorded failure again (by default only failures with an
            environmental cause are, and failures after a decoder upgrade).
        wait_for_lease: Seconds to wait while another run writes to DST (0: stop at once).
    """

    # metadata: the command line's help (``gcsemb embed --help``) and, where the default is not
    # the field's own value, how that help states it
    model: str = option_field(DEFAULT_MODEL, "open_clip architecture or config JSON")
    pretrained: str | None = option_field(
        DEFAULT_PRETRAINED, "weights tag, checkpoint path or gs:// URL; 'random' for random weights"
    )
    batch_size: int | None = option_field(
        None,
        "images per forward pass",
        shown=f"{BATCH_SIZE['cpu']} on a CPU, {BATCH_SIZE['cuda']} on a GPU",
    )
    device: str = option_field("auto", DEVICE_HELP)
    precision: str = option_field(
        "auto", "auto: bf16 where the GPU runs it natively, fp16 on older GPUs, fp32 on a CPU"
    )
    decode: str = option_field(
        "auto",
        "where JPEGs are decoded: gpu (in batches, with nvJPEG), cpu (threads), or auto: on the "
        "GPU when the model runs on CUDA",
    )
    fetch_batch: int = option_field(32, "objects fetched together by one group")
    io_workers: int = option_field(4, "fetch groups in flight at once")
    decode_workers: int = field(
        default_factory=lambda: max(2, os.cpu_count() or 2),
        metadata={"help": "CPU threads decoding", "shown": "the CPU cores"},
    )
    rows_per_shard: int = option_field(5000, "rows per parquet shard")
    seconds_per_shard: float = 60.0
    max_object_bytes: int = option_field(
        MAX_OBJECT_BYTES,
        "objects larger than this are recorded as too large, never downloaded",
        shown=f"{MAX_OBJECT_BYTES // MIB} MiB",
    )
    max_bytes_in_flight: int = 1024 * MIB
    decode_memory: int = 1024 * MIB
    write_retry_seconds: float = WRITE_RETRY_SECONDS
    retry_failed: bool = option_field(
        False, "try every recorded failure again (by default: those with an environmental cause)"
    )
    wait_for_lease: float = option_field(
        0.0, "wait this long while another run writes to DST", shown="0: stop at once"
    )

    def __post_init__(self) -> None:
        if self.decode not in DECODES:
            raise ValueError(f"decode={self.decode!r}: use one of {DECODES}.")
        for name in ("fetch_batch", "io_workers", "decode_workers", "rows_per_shard"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)!r}: it must be at least 1.")


@dataclass(frozen=True)
class RayEngine:
    """Run on a Ray cluster (``embed(..., engine=RayEngine(...))``; needs ``gcsemb[ray]``).

    Attributes:
        address: The cluster (``auto``, ``ray://host:10001``, ``vertex_ray://...``); None joins
            the Ray already initialised, else starts a local one.
        workers: Embedding actors (default: one per ``gpus_per_worker`` GPUs, else 1).
        gpus_per_worker: GPUs per embedding actor (0: embed on CPUs).

    Example:
        >>> RayEngine(address="auto", gpus_per_worker=1)
        RayEngine(address='auto', workers=None, gpus_per_worker=1)
    """

    address: str | None = option_field(
        None, "ray: cluster to join (auto, ray://HOST:10001, vertex_ray://...)"
    )
    workers: int | None = option_field(
        None, "ray: embedding actors", shown="one per --gpus-per-worker"
    )
    gpus_per_worker: float = option_field(
        0, "ray: GPUs per embedding actor", shown="0: embed on CPU"
    )
