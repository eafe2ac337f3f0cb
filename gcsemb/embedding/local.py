"""The local engine: this machine's cores and accelerator, running :mod:`~.graph`'s graph.

The source is listed in a background thread while DST's index is read; planned items flow
through fetch and decode threads into batches; the main thread embeds each batch on the device
and hands every outcome to the writer. The progress bar gets a total once the listing ends, and
then the run prints one estimate (images and bytes to do, time left); the bar's postfix names the
stage that bounds the run so far.

Example:
    >>> embed_local(run, extensions=None, limit=None, progress=True)  # doctest: +SKIP
    >>> run.summary.bound  # doctest: +SKIP
    'model'
"""

from __future__ import annotations

import gc
import itertools
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from gcsemb.embedding.graph import Budgets, Stages, build, cpu_workers
from gcsemb.embedding.prefetch import Prefetched
from gcsemb.embedding.report import StageClock, bound_stage, duration
from gcsemb.embedding.run import Run, run_metadata
from gcsemb.embedding.stages import Counts, Embedded, Item, decode_on_device, outcomes, plan
from gcsemb.embedding.tuner import ThreadTuner
from gcsemb.embedding.writer import ShardWriter
from gcsemb.explore.dataset import is_done
from gcsemb.storage import list_images

if TYPE_CHECKING:
    from gcsemb.model.embedder import Embedder


def embed_local(
    run: Run, *, extensions: frozenset[str] | None, limit: int | None, progress: bool
) -> None:
    """Run the stages on this machine; ``run.summary`` gets the counts and the stage report."""
    cfg, summary = run.config, run.summary
    clock = StageClock({"fetch": cfg.io_workers, "decode": cpu_workers(cfg)})
    listing = list_images(run.src, extensions=extensions, limit=limit)
    objects = Prefetched(listing, busy=lambda s, n: clock.add("list", seconds=s, items=n))
    counts = Counts()
    try:
        with _older_objects_frozen():
            items = _work(run, objects, counts)
            if items is not None:  # else nothing new: no model, no lease, no fetch, no shard
                _Loop(run, _load(run), clock, counts, objects).go(items, progress)
    finally:
        objects.close()
        summary.seen, summary.skipped = counts.seen, counts.skipped
        summary.stages = clock.stats()


@contextmanager
def _older_objects_frozen() -> Iterator[None]:
    """Leave the objects that existed before the run out of garbage collection while it lasts.

    A kernel holding torch and open_clip tracks some 400,000 objects, and a full collection walks
    them all while holding the GIL: 0.2 s during which no stage's Python code runs, triggered by
    the imports and first allocations of a run. The run's own objects are collected as usual;
    the older ones go back to the collector at the end. A process that froze its objects itself
    (``gc.freeze()`` before forking workers) keeps them frozen.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _work(run: Run, objects: Prefetched, counts: Counts) -> Iterator[Item] | None:
    """The planned items, once DST's lease is ours; None when DST already holds everything."""
    run.read_index()  # the listing goes on meanwhile
    items = plan(objects, run.done, counts, run.config.max_object_bytes)
    first = next(items, None)
    if first is None:
        return None
    run.begin_writing()  # DST takes writes, its lease is ours, its index fresh
    while first is not None and is_done(first.obj, run.done):  # a run that ended meanwhile
        counts.skipped += 1
        first = next(items, None)
    return None if first is None else itertools.chain([first], items)


def _load(run: Run) -> Embedder:
    from gcsemb.model.embedder import load_embedder

    cfg = run.config
    return load_embedder(
        cfg.model, cfg.pretrained, device=cfg.device, precision=cfg.precision, token=run.src
    )


@dataclass
class _Loop:
    """The main thread of a local run: decode on the device (if so), embed, write, report."""

    run: Run
    embedder: Embedder
    clock: StageClock
    counts: Counts
    objects: Prefetched
    gpu: bool = field(init=False, default=False)  # JPEGs decoded in batches on the device
    budgets: Budgets = field(init=False)
    stages: Stages = field(init=False)
    writer: ShardWriter = field(init=False)

    def go(self, items: Iterator[Item], progress: bool) -> None:
        """Embed every planned item; the writer keeps what is done, even on Ctrl-C."""
        from tqdm.auto import tqdm

        from gcsemb.images.tensor_decode import resolve_decode

        cfg, summary, embedder = self.run.config, self.run.summary, self.embedder
        self.gpu = resolve_decode(cfg.decode, embedder.device) == "gpu"
        summary.device, summary.precision = str(embedder.device), embedder.spec.precision
        summary.decode = "gpu" if self.gpu else "cpu"
        if self.gpu:
            self.clock.set_workers("decode", 1)  # batches decode in the main thread
        self.budgets = Budgets.of(cfg)
        self.stages = Stages(self.run.src, embedder, self.clock, self.budgets, self.gpu)
        self.writer = ShardWriter(
            self.run.dst,
            embedder.name,
            embedder.dim,
            rows_per_shard=cfg.rows_per_shard,
            seconds_per_shard=cfg.seconds_per_shard,
            metadata=run_metadata(self.run.src, cfg),
            retry_seconds=cfg.write_retry_seconds,
            lease=self.run.lease,  # looked at before each shard: none after a takeover
            run=self.run.id,
        )
        bar = tqdm(desc="embedding", unit="img", disable=not progress, dynamic_ncols=True)
        estimate = _Estimate(bar, self.counts)
        tuner = ThreadTuner(enabled=embedder.device.type == "cpu")
        try:
            for batch in build(items, self.stages, cfg):
                busy = time.perf_counter()
                self._batch(batch)
                tuner.step(time.perf_counter() - busy)
                summary.seen, summary.skipped = self.counts.seen, self.counts.skipped
                estimate.update(self.objects.count, summary, self.clock)
                if self.run.lease is not None:
                    self.run.lease.check()  # another run took DST over: stop writing
            summary.seen, summary.skipped = self.counts.seen, self.counts.skipped
            bar.update(summary.done - bar.n)  # skipped after the last batch of the listing
            bar.total = bar.n  # 100% even if the listing's end came after the last batch
        finally:
            tuner.restore()
            bar.close()
            self.writer.flush()

    def _batch(self, batch: list[Item]) -> None:
        if self.gpu:
            with self.clock.time("decode", items=sum(it.data is not None for it in batch)):
                decode_on_device(
                    batch,
                    self.embedder.preprocess_cfg,
                    self.embedder.device,
                    min_side=self.stages.min_side,
                    cpu_preprocess=self.embedder.preprocess,
                    fetched=self.budgets.fetched,
                )
        results = outcomes(batch, self._embed)
        with self.clock.time("write", items=len(batch)):
            _record(batch, results, self.writer, self.run)

    def _embed(self, tensors: list[Any]) -> Any:
        import torch

        device = self.embedder.device
        batch = torch.stack([t.to(device) for t in tensors])
        with self.clock.time("model", items=len(tensors)):
            return self.embedder.embed_tensors(batch)


def _record(batch: list[Item], results: list[Any], writer: ShardWriter, run: Run) -> None:
    """Hand every outcome to the writer; count embedded, duplicates and failures."""
    summary = run.summary
    for it, outcome in zip(batch, results, strict=True):
        if isinstance(outcome, Embedded):
            writer.add(it.obj, it.md5, outcome.width, outcome.height, outcome.vector)
            if it.twin is not None:
                summary.duplicates += 1
            else:
                summary.embedded += 1
            continue
        summary.failed += 1
        writer.add_error(
            it.obj,
            it.md5,
            outcome.stage,
            outcome.error,
            environmental=outcome.environmental,
            decoders=outcome.decoders,
        )


class _Estimate:
    """The progress bar's total, the one estimate printed, the bound stage in the postfix."""

    def __init__(self, bar: Any, counts: Counts) -> None:
        self.bar, self.counts = bar, counts
        self.printed = False
        self.started = time.perf_counter()

    def update(self, listed: int | None, summary: Any, clock: StageClock) -> None:
        """After a batch: progress, the postfix, and (once) the estimate."""
        bar = self.bar
        if bar.total is None and listed is not None:  # the listing is complete
            bar.total = listed
        bar.update(summary.done - bar.n)
        bound = bound_stage(clock.stats())
        bar.set_postfix(
            failed=summary.failed, skipped=summary.skipped, bound=bound or "-", refresh=False
        )
        elapsed = time.perf_counter() - self.started
        made = summary.embedded + summary.duplicates + summary.failed
        if bar.disable or self.printed or bar.total is None or made < 2 or elapsed < 2:
            return
        self.printed = True
        rate = made / elapsed
        left = (bar.total - summary.done) / rate
        gigabytes = self.counts.to_fetch_bytes / 2**30
        bar.write(
            f"to do: {bar.total - summary.skipped:,} images, {gigabytes:.2f} GB to download; "
            f"about {duration(left)} left at {rate:.1f} images/s (bound by {bound})"
        )
