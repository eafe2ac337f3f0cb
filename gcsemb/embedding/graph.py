"""The local engine's graph: the stages wired with ``torchdata.nodes``, all running at once.

::

    planned items in groups (fetch_batch objects, 32 MiB at most) ─ ParallelMapper(fetch:
    io_workers groups, every object of a group in flight at once) ─ Unbatcher ─
    ParallelMapper(decode + preprocess: decode_workers threads; with GPU decode, JPEGs pass
    through for the device) ─ Batcher(batch_size) ─ Prefetcher ─ Loader → the main thread

Queues between the stages are bounded, and two byte budgets bound memory: fetched bytes until
they are decoded (``max_bytes_in_flight``) and decoded pixels (``decode_memory``). torchdata is
imported here only: the stages themselves (:mod:`gcsemb.embedding.stages`) are plain functions.

Example:
    >>> loader = build(items, src_store, embedder, cfg, clock, gpu=False)  # doctest: +SKIP
    >>> for batch in loader: ...  # doctest: +SKIP
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gcsemb.embedding.config import EmbedConfig, default_batch_size
from gcsemb.embedding.report import StageClock
from gcsemb.embedding.stages import Item, decode, defer_jpeg, fetch, fetch_groups
from gcsemb.extras import require
from gcsemb.images.decode import PixelBudget
from gcsemb.storage import Store

if TYPE_CHECKING:
    from gcsemb.model.embedder import Embedder


@dataclass
class Budgets:
    """The run's two memory bounds, shared by every thread."""

    fetched: PixelBudget
    pixels: PixelBudget

    @classmethod
    def of(cls, cfg: EmbedConfig) -> Budgets:
        """The budgets a config asks for."""
        return cls(PixelBudget(cfg.max_bytes_in_flight), PixelBudget(cfg.decode_memory))


@dataclass
class Stages:
    """The per-item stage calls with their accounting, as the graph's mappers run them."""

    src: Store
    embedder: Embedder
    clock: StageClock
    budgets: Budgets
    gpu: bool = False
    min_side: int = field(init=False)

    def __post_init__(self) -> None:
        self.min_side = self.embedder.image_size

    def fetch(self, group: list[Item]) -> list[Item]:
        """Fetch a group; its wall time is the fetch stage's busy time."""
        started = time.perf_counter()
        fetch(self.src, group, self.budgets.fetched)
        got = [it for it in group if it.data is not None]
        self.clock.add(
            "fetch",
            seconds=time.perf_counter() - started,
            items=len(got),
            nbytes=sum(len(it.data) for it in got if it.data is not None),
        )
        return group

    def decode(self, item: Item) -> Item:
        """Decode one image on the CPU (a JPEG waits for the device when decoding on the GPU)."""
        if item.data is None or (self.gpu and defer_jpeg(item)):
            return item
        started = time.perf_counter()
        decode(
            item,
            self.embedder.preprocess,
            self.min_side,
            self.budgets.pixels,
            self.budgets.fetched,
        )
        self.clock.add("decode", seconds=time.perf_counter() - started, items=1)
        return item


def cpu_workers(cfg: EmbedConfig) -> int:
    """Decode threads that can run at once: no more than the CPU cores."""
    return max(1, min(cfg.decode_workers, os.cpu_count() or 1))


def build(items: Iterator[Item], stages: Stages, cfg: EmbedConfig) -> Any:
    """The ``torchdata.nodes`` Loader yielding decoded batches of ``batch_size`` items."""
    nodes = require(
        "torchdata.nodes",
        None,
        "The local engine",
        hint="pip install 'torchdata>=0.11' (see the README if it no longer installs)",
    )

    node: Any = nodes.IterableWrapper(fetch_groups(items, cfg.fetch_batch))
    node = nodes.ParallelMapper(
        node, stages.fetch, num_workers=cfg.io_workers, method="thread", in_order=True
    )
    node = nodes.Unbatcher(node)
    node = nodes.ParallelMapper(
        node, stages.decode, num_workers=cfg.decode_workers, method="thread", in_order=True
    )
    batch_size = cfg.batch_size or default_batch_size(stages.embedder.device.type)
    node = nodes.Batcher(node, batch_size, drop_last=False)
    node = nodes.Prefetcher(node, prefetch_factor=2)
    return nodes.Loader(node)
