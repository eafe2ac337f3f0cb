"""On a CPU, how many threads torch gets: all of them only when the model needs them.

Example:
    >>> tuner = ThreadTuner(enabled=True)  # doctest: +SKIP
    >>> for batch in batches:  # doctest: +SKIP
    ...     busy = time.perf_counter(); embed(batch); tuner.step(time.perf_counter() - busy)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


class ThreadTuner:
    """On a CPU, give torch every core only when the model needs them.

    The model runs in the main thread while decode threads share the same cores, and torch's
    idle threads spin: a model that is not the bottleneck still starves the decoders if it has
    every core. The tuner watches the main thread. While it never has to wait for a batch, the
    model is the bottleneck and keeps all its threads. Once it waits, the input side is behind:
    the tuner gives torch one thread and measures, over ``trial`` batches, the share of wall
    time the main thread is then busy. At most ``target`` (the model keeps up with one thread)
    it stays at one thread, leaving the other cores to decoding; above, all threads come back.
    Measured with one thread, the share is not inflated by spinning threads fighting the
    decoders for cores. Only the trial batches of a model that needs every core run slower.

    Example:
        >>> tuner = ThreadTuner(enabled=True)  # doctest: +SKIP
        >>> for batch in batches:  # doctest: +SKIP
        ...     busy = time.perf_counter(); embed(batch); tuner.step(time.perf_counter() - busy)
        >>> tuner.threads  # doctest: +SKIP
        1
    """

    def __init__(
        self,
        enabled: bool,
        trial: int = 4,
        patience: int = 12,
        target: float = 0.8,
        clock: Callable[[], float] = time.perf_counter,
    ) -> None:
        import torch

        self._torch, self._clock = torch, clock
        self.original = self.threads = torch.get_num_threads()
        self.settled = not enabled or self.original == 1
        self.trial, self.patience, self.target = trial, patience, target
        self.seen, self.window, self.busy, self.wall = 0, -1, 0.0, 0.0
        self._last = clock()

    def step(self, busy: float) -> None:
        """Account a batch that kept the main thread busy ``busy`` seconds since the last call."""
        now = self._clock()
        wall, self._last = now - self._last, now
        if self.settled:
            return
        self.seen += 1
        if self.window < 0:  # watching, with every thread
            if self.seen > 1 and _waited(wall - busy, busy):  # (the first batch had to wait)
                self.window = 0
                self._set(1)
            elif self.seen > self.patience:  # never waited: the model is the bottleneck
                self._settle(1.0)
            return
        self.window += 1
        self.busy, self.wall = self.busy + busy, self.wall + wall
        if self.window == self.trial:
            self._settle(self.busy / self.wall)

    def _set(self, threads: int) -> None:
        self.threads = threads
        self._torch.set_num_threads(threads)

    def _settle(self, share: float) -> None:
        self._set(1 if share <= self.target else self.original)
        self.settled = True
        log.debug("main thread busy %.0f%%: %d torch threads", share * 100, self.threads)

    def restore(self) -> None:
        """Give the process its thread count back."""
        self._torch.set_num_threads(self.original)


def _waited(wait: float, busy: float) -> bool:
    """Whether the main thread waited for a batch long enough to say the input is behind.

    Over 2 ms and a tenth of the batch's own work: a hiccup in a slow model's stream is not.
    """
    return wait >= 0.002 + 0.1 * busy
