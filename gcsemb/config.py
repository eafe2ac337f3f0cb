"""How a run is made: one frozen value, stored in every shard's metadata.

Example:
    >>> cfg = EmbedConfig(batch_size=64, decode_workers=4)
    >>> cfg.model, cfg.decode
    ('ViT-B-32', 'auto')
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from gcsemb.checkpoints import DEFAULT_MODEL, DEFAULT_PRETRAINED

BATCH_SIZE = {"cpu": 32, "cuda": 256}  # default images per forward pass, by device type
MIB = 1 << 20
DECODES = ("auto", "cpu", "gpu")
WRITE_RETRY_SECONDS = 600.0
"""How long a write to DST (a shard, or the claim that takes DST's lease) is retried, with backoff
up to a minute, before the run gives up on it (a shard's rows are then kept locally): an outage of
Cloud Storage or of the network rarely lasts longer, and ten minutes of waiting costs less than
recomputing a shard's embeddings on a GPU."""


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
            :class:`gcsemb.decode.PixelBudget`).
        write_retry_seconds: How long a shard that DST will not take is retried before its rows
            are kept locally for the next run (see :mod:`gcsemb.writer`), and how long taking
            DST's lease is retried through an outage (see :mod:`gcsemb.lease`).
        retry_failed: Try every recorded failure again (by default only failures with an
            environmental cause are, and failures after a decoder upgrade).
        wait_for_lease: Seconds to wait while another run writes to DST (0: stop at once).
    """

    model: str = DEFAULT_MODEL
    pretrained: str | None = DEFAULT_PRETRAINED
    batch_size: int | None = None
    device: str = "auto"
    precision: str = "auto"
    decode: str = "auto"
    fetch_batch: int = 32
    io_workers: int = 4
    decode_workers: int = field(default_factory=lambda: max(2, os.cpu_count() or 2))
    rows_per_shard: int = 5000
    seconds_per_shard: float = 60.0
    max_object_bytes: int = 256 * MIB
    max_bytes_in_flight: int = 1024 * MIB
    decode_memory: int = 1024 * MIB
    write_retry_seconds: float = WRITE_RETRY_SECONDS
    retry_failed: bool = False
    wait_for_lease: float = 0.0

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

    address: str | None = None
    workers: int | None = None
    gpus_per_worker: float = 0
