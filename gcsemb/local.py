"""The local engine: this machine's cores and accelerator, the graph of :mod:`gcsemb.graph`.

The source is listed in a background thread while DST's index is read; planned items flow
through fetch and decode threads into batches; the main thread embeds each batch on the device
and hands every outcome to the writer. The progress bar gets a total once the listing ends, and
then the run prints one estimate (images and bytes to do, time left); the bar's postfix names the
stage that bounds the run so far.

Example:
    >>> summary = embed_local(run, progress=True)  # doctest: +SKIP
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from gcsemb.config import EmbedConfig
from gcsemb.dataset import is_done
from gcsemb.graph import Budgets, Stages, build, cpu_workers
from gcsemb.prefetch import Prefetched
from gcsemb.report import StageClock, bound_stage
from gcsemb.run import Run, run_metadata
from gcsemb.stages import Counts, Embedded, Item, decode_on_device, outcomes, plan
from gcsemb.tuner import ThreadTuner
from gcsemb.writer import ShardWriter

if TYPE_CHECKING:
    pass


def embed_local(
    run: Run,
    *,
    extensions: frozenset[str] | None,
    limit: int | None,
    progress: bool,
) -> None:
    """Run the stages on this machine; ``run.summary`` holds the counts and the stage report."""
    from gcsemb.storage import list_images

    cfg, summary = run.config, run.summary
    clock = StageClock({"fetch": cfg.io_workers, "decode": cpu_workers(cfg)})
    listing = list_images(run.src, extensions=extensions, limit=limit)
    objects = Prefetched(listing, busy=lambda s, n: clock.add("list", seconds=s, items=n))
    counts = Counts()
    try:
        run.read_index()  # the listing goes on meanwhile
        items = plan(objects, run.done, counts, cfg.max_object_bytes)
        first = next(items, None)
        if first is None:  # nothing new: no model loaded, no lease, no fetch, no shard
            return
        run.begin_writing()  # DST takes writes, its lease is ours, its index fresh
        if is_done(first.obj, run.done):  # written by a run that ended meanwhile
            counts.skipped += 1
            first = next(items, None)
            if first is None:
                return
        _embed(run, _chain(first, items), objects, counts, clock, progress)
    finally:
        objects.close()
        summary.seen, summary.skipped = counts.seen, counts.skipped
        summary.stages = clock.stats()


def _embed(
    run: Run,
    items: Iterator[Item],
    objects: Prefetched,
    counts: Counts,
    clock: StageClock,
    progress: bool,
) -> None:
    import torch
    from tqdm.auto import tqdm

    from gcsemb.embedder import load_embedder
    from gcsemb.tensor_decode import resolve_decode

    cfg, summary = run.config, run.summary
    embedder = load_embedder(
        cfg.model, cfg.pretrained, device=cfg.device, precision=cfg.precision, token=run.src
    )
    gpu = resolve_decode(cfg.decode, embedder.device) == "gpu"
    summary.device, summary.precision = str(embedder.device), embedder.spec.precision
    summary.decode = "gpu" if gpu else "cpu"
    if gpu:
        clock = _gpu_clock(clock, cfg)
    budgets = Budgets.of(cfg)
    stages = Stages(run.src, embedder, clock, budgets, gpu)
    writer = ShardWriter(
        run.dst,
        embedder.name,
        embedder.dim,
        rows_per_shard=cfg.rows_per_shard,
        seconds_per_shard=cfg.seconds_per_shard,
        metadata=run_metadata(run.src, cfg),
        retry_seconds=cfg.write_retry_seconds,
    )

    def embed_tensors(tensors: list[Any]) -> Any:
        batch = torch.stack([t.to(embedder.device) for t in tensors])
        with clock.time("model", items=len(tensors)):
            return embedder.embed_tensors(batch)

    bar = tqdm(desc="embedding", unit="img", disable=not progress, dynamic_ncols=True)
    estimate = _Estimate(bar, counts)
    tuner = ThreadTuner(enabled=embedder.device.type == "cpu")
    try:
        for batch in build(items, stages, cfg):
            busy = time.perf_counter()
            if gpu:
                with clock.time("decode", items=sum(it.data is not None for it in batch)):
                    decode_on_device(
                        batch,
                        embedder.preprocess_cfg,
                        embedder.device,
                        stages.min_side,
                        embedder.preprocess,
                        budgets.fetched,
                    )
            results = outcomes(batch, embed_tensors)
            with clock.time("write", items=len(batch)):
                _record(batch, results, writer, run)
            tuner.step(time.perf_counter() - busy)
            summary.seen, summary.skipped = counts.seen, counts.skipped
            estimate.update(objects.count, summary, clock)
            if run.lease is not None:
                run.lease.check()  # another run took DST over: stop before writing more
        summary.seen, summary.skipped = counts.seen, counts.skipped
        bar.update(summary.done - bar.n)  # skipped after the last batch of the listing
        bar.total = bar.n  # 100% even if the last batch came before the listing's end was seen
    finally:
        tuner.restore()
        bar.close()
        writer.flush()  # keep what is done, even on Ctrl-C
        summary.stages = clock.stats()


def _gpu_clock(clock: StageClock, cfg: EmbedConfig) -> StageClock:
    """With GPU decode, decoding runs in the main thread: one worker, not the cores."""
    gpu = StageClock({"fetch": cfg.io_workers, "decode": 1})
    for name, stats in clock.stats().items():
        gpu.add(name, seconds=stats.seconds, items=stats.items, nbytes=stats.nbytes)
    return gpu


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
        else:
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
        if self.printed or bar.total is None or made < 2 or elapsed < 2:
            return
        self.printed = True
        left = bar.total - summary.done
        rate = made / elapsed
        gigabytes = self.counts.to_fetch_bytes / 2**30
        bar.write(
            f"to do: {bar.total - summary.skipped:,} images, {gigabytes:.2f} GB to download; "
            f"about {_duration(left / rate if rate else 0)} left at {rate:.1f} images/s"
            f" (bound by {bound})"
        )


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _chain(first: Item, rest: Iterator[Item]) -> Iterator[Item]:
    yield first
    yield from rest
