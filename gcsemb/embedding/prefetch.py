"""An iterator run ahead in a background thread: the listing goes on while DST is read.

Example:
    >>> objects = Prefetched(iter(range(3)))
    >>> list(objects), objects.count
    ([0, 1, 2], 3)
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any


class Prefetched:
    """An iterator run in a background thread, ``size`` items ahead; errors surface in order.

    Args:
        iterator: What to run ahead (e.g. a listing).
        size: How many items may wait in the queue.
        busy: Called as ``busy(seconds, items)`` with the time spent producing items (not
            waiting for room in the queue): the ``list`` stage's accounting.

    ``count`` is how many items there are in all, once the producer has seen the last one.
    """

    _END = object()

    def __init__(
        self,
        iterator: Iterator[Any],
        size: int = 2000,
        busy: Callable[[float, int], None] | None = None,
    ) -> None:
        self._queue: queue.Queue[Any] = queue.Queue(size)
        self._stop = threading.Event()
        self._busy = busy
        self.count: int | None = None
        threading.Thread(target=self._produce, args=(iterator,), daemon=True).start()

    def _produce(self, iterator: Iterator[Any]) -> None:
        try:
            produced, spent = 0, 0.0
            started = time.perf_counter()
            for item in iterator:
                spent += time.perf_counter() - started
                if not self._put(item):
                    return
                produced += 1
                if self._busy is not None and produced % 1000 == 0:
                    self._busy(spent, 1000)
                    spent = 0.0
                started = time.perf_counter()
            spent += time.perf_counter() - started
            if self._busy is not None:
                self._busy(spent, produced % 1000)
            self.count = produced
            self._put(self._END)
        except BaseException as e:  # handed to the consumer
            self._put(e)

    def _put(self, item: Any) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.2)
                return True
            except queue.Full:
                continue
        return False

    def __iter__(self) -> Prefetched:
        return self

    def __next__(self) -> Any:
        item = self._queue.get()
        if item is self._END:
            self._queue.put(item)  # later calls end too
            raise StopIteration
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        """Stop the producer thread (the run ended early)."""
        self._stop.set()
