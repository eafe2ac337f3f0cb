"""What a run did and where its time went: per-stage accounting, the bound stage, the summary.

Every stage adds its busy seconds, items and bytes to a :class:`StageClock` (thread-safe; the
stages run at once, in different threads). A stage's *capacity* is how many images per second it
could deliver if it never waited: items per busy second, times the workers that run it in
parallel (``io_workers`` fetch groups; decode threads, at most one per CPU core since decoding is
CPU-bound; one main thread for the model and the writer). The *bound* stage is the one with the
lowest capacity: the one that makes the others wait.

Example:
    >>> clock = StageClock({"decode": 2})
    >>> clock.add("decode", seconds=1.0, items=40)
    >>> clock.add("model", seconds=1.0, items=400)
    >>> clock.stats()["decode"].capacity, bound_stage(clock.stats())
    (80.0, 'decode')
"""

from __future__ import annotations

import html
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

STAGES = ("list", "fetch", "decode", "model", "write")


@dataclass(frozen=True)
class StageStats:
    """One stage's share of a run.

    Attributes:
        seconds: Busy seconds, summed over its workers.
        items: Images it handled.
        nbytes: Bytes it moved (fetch: downloaded).
        workers: How many of it run in parallel (its capacity multiplier).
    """

    seconds: float = 0.0
    items: int = 0
    nbytes: int = 0
    workers: int = 1

    @property
    def capacity(self) -> float:
        """Images per second it could deliver if it never waited (``inf`` when never busy)."""
        return self.items / self.seconds * self.workers if self.seconds > 0 else float("inf")

    @property
    def bytes_per_second(self) -> float:
        """Throughput of its busy time, in bytes per second (0 without bytes)."""
        return self.nbytes / self.seconds * self.workers if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, float | int]:
        """JSON-friendly: seconds busy, items, items/s (its capacity), workers, bytes/s."""
        cap = self.capacity
        return {
            "seconds": round(self.seconds, 4),
            "items": self.items,
            "items_per_second": round(cap, 2) if cap != float("inf") else None,
            "workers": self.workers,
            "bytes_per_second": round(self.bytes_per_second),
        }


class StageClock:
    """Thread-safe busy-time accounting per stage.

    Args:
        workers: Parallel workers per stage (default 1).
    """

    def __init__(self, workers: dict[str, int] | None = None) -> None:
        self._workers = dict(workers or {})
        self._totals: dict[str, list[float]] = {s: [0.0, 0, 0] for s in STAGES}
        self._lock = threading.Lock()

    def set_workers(self, stage: str, workers: int) -> None:
        """How many of ``stage`` run in parallel (e.g. decoding moved to the GPU: one)."""
        with self._lock:
            self._workers[stage] = workers

    def add(self, stage: str, *, seconds: float, items: int = 0, nbytes: int = 0) -> None:
        """Account ``seconds`` of work on ``items`` images (and ``nbytes`` bytes)."""
        with self._lock:
            total = self._totals.setdefault(stage, [0.0, 0, 0])
            total[0] += seconds
            total[1] += items
            total[2] += nbytes

    @contextmanager
    def time(self, stage: str, items: int = 0, nbytes: int = 0) -> Iterator[None]:
        """Account the block's wall time to ``stage``."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, seconds=time.perf_counter() - started, items=items, nbytes=nbytes)

    def stats(self) -> dict[str, StageStats]:
        """A snapshot: every stage's :class:`StageStats`."""
        with self._lock:
            return {
                s: StageStats(t[0], int(t[1]), int(t[2]), self._workers.get(s, 1))
                for s, t in self._totals.items()
            }


def bound_stage(stages: dict[str, StageStats]) -> str | None:
    """The stage with the lowest capacity among those that did work (None before any)."""
    busy = {name: s for name, s in stages.items() if s.items and s.seconds > 0}
    return min(busy, key=lambda name: busy[name].capacity) if busy else None


def hint(bound: str | None, stages: dict[str, StageStats], device: str, decode: str) -> str:
    """One line saying what limits the run and what to try."""
    if bound is None:
        return ""
    rate = stages[bound].capacity
    if bound == "model":
        if device.startswith("cuda"):
            return (
                f"the model bounds this run: {rate:.0f} images/s on {device}; a larger "
                "--batch-size or a smaller model goes faster"
            )
        return (
            f"the model bounds this run: {rate:.0f} images/s on the CPU; a GPU runs it 20-100x "
            "faster (see notebook 02)"
        )
    if bound == "decode":
        if decode == "gpu":
            return (
                f"decode bounds this run: the GPU decodes about {rate:.0f} of these images/s "
                "(images it cannot take go to the CPU, one at a time)"
            )
        cores = stages["decode"].workers
        more = (
            "on a GPU try --decode gpu"
            if device.startswith("cuda")
            else "more CPU cores (or a GPU with --decode gpu) decode faster"
        )
        return (
            f"decode bounds this run: {cores} core{'s' if cores > 1 else ''} decode about "
            f"{rate:.0f} of these images/s; {more}"
        )
    if bound == "fetch":
        mbps = stages["fetch"].bytes_per_second / 2**20
        return (
            f"fetch bounds this run: about {rate:.0f} images/s ({mbps:.0f} MB/s) from storage; "
            "more requests in flight help: --io-workers 16 --fetch-batch 64"
        )
    if bound == "list":
        return f"listing bounds this run: about {rate:.0f} objects/s listed"
    return f"writing shards bounds this run: about {rate:.0f} rows/s written"


@dataclass
class EmbedSummary:
    """What a run did and where the time went. Printed by the CLI, a table in notebooks.

    Attributes:
        src: The source URL.
        dst: The destination URL.
        model: The model tag written into every row.
        device: Where the model ran (``cpu``, ``cuda:0``).
        precision: Autocast precision (``fp32``, ``fp16``, ``bf16``).
        decode: Where JPEGs were decoded (``cpu`` or ``gpu``).
        seen: Images listed.
        embedded: Images embedded by this run.
        skipped: Images DST already held (or whose bytes failed before with these decoders).
        duplicates: Images with the same bytes as another one this run embedded.
        failed: Images recorded in ``_errors/``.
        seconds: Wall time of the run.
        stages: Per-stage accounting (see :mod:`gcsemb.embedding.report`).
    """

    src: str
    dst: str
    model: str = ""
    device: str = ""
    precision: str = ""
    decode: str = ""
    seen: int = 0
    embedded: int = 0
    skipped: int = 0
    duplicates: int = 0
    failed: int = 0
    seconds: float = 0.0
    stages: dict[str, StageStats] = field(default_factory=dict)

    @property
    def done(self) -> int:
        """Images with an outcome: embedded, identical to another, failed or done before."""
        return self.embedded + self.duplicates + self.failed + self.skipped

    @property
    def images_per_second(self) -> float:
        """Images embedded (or reused) per second of the run."""
        return (self.embedded + self.duplicates) / self.seconds if self.seconds else 0.0

    @property
    def bound(self) -> str | None:
        """The stage that limited the run (see :func:`bound_stage`)."""
        return bound_stage(self.stages)

    @property
    def hint(self) -> str:
        """What limits the run, and what to try, in one line."""
        return hint(self.bound, self.stages, self.device, self.decode)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly: the counts, images/s, the stages, the bound stage and its hint."""
        return {
            "src": self.src,
            "dst": self.dst,
            "model": self.model,
            "device": self.device,
            "precision": self.precision,
            "decode": self.decode,
            "seen": self.seen,
            "embedded": self.embedded,
            "skipped": self.skipped,
            "duplicates": self.duplicates,
            "failed": self.failed,
            "seconds": round(self.seconds, 3),
            "images_per_second": round(self.images_per_second, 2),
            "stages": {name: s.to_dict() for name, s in self.stages.items() if s.items},
            "bound": self.bound,
            "hint": self.hint,
        }

    def __str__(self) -> str:
        where = f" on {self.device} ({self.precision})" if self.device else ""
        line = (
            f"{self.seen} images seen under {self.src}: {self.embedded} embedded, "
            f"{self.skipped} skipped as already done, {self.duplicates} identical to another, "
            f"{self.failed} failed; {self.seconds:.1f} s ({self.images_per_second:.1f} images/s)"
            f"{where} -> {self.dst}"
        )
        return f"{line}\n{self.hint}" if self.hint else line

    def _repr_html_(self) -> str:
        rows = "".join(
            f"<tr><th style='text-align:left'>{k}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in [
                ("source", self.src),
                ("destination", self.dst),
                ("model", self.model),
                ("device", f"{self.device} ({self.precision}, decode on {self.decode})"),
                ("seen", self.seen),
                ("embedded", self.embedded),
                ("skipped (done before)", self.skipped),
                ("identical bytes", self.duplicates),
                ("failed", self.failed),
                ("images/s", f"{self.images_per_second:.1f}"),
                ("bound by", self.hint or "-"),
            ]
        )
        stages = "".join(
            f"<tr><td>{name}</td><td>{s.seconds:.2f}</td><td>{s.items}</td>"
            f"<td>{s.capacity:.0f}</td><td>{'&#9664; bound' if name == self.bound else ''}</td>"
            "</tr>"
            for name, s in self.stages.items()
            if s.items
        )
        table = (
            "<table><tr><th>stage</th><th>busy s</th><th>items</th><th>capacity images/s</th>"
            f"<th></th></tr>{stages}</table>"
            if stages
            else ""
        )
        return f"<table>{rows}</table>{table}"


def duration(seconds: float) -> str:
    """A span of time for a person: ``42 s``, ``9 min 48 s``, ``2 h 5 min``.

    Example:
        >>> duration(588), duration(7500)
        ('9 min 48 s', '2 h 5 min')
    """
    s = max(0, round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s" if s % 60 else f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60} min"
