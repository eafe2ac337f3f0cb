"""Limits on decoded pixels: the per-image caps and the byte budget shared by decode threads.

:func:`gcsemb.images.decode.decode_image` refuses an image from its header when it has more than
:data:`DEFAULT_MAX_PIXELS` pixels or would take more than :data:`DEFAULT_MAX_DECODED_BYTES` once
decoded (:func:`decoded_bytes`), and holds a :class:`PixelBudget` for the bytes it decodes, so
that all decode threads together keep about :data:`DEFAULT_BUDGET_BYTES` of pixels in flight.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import ImageMode

__all__ = [
    "DEFAULT_BUDGET",
    "DEFAULT_BUDGET_BYTES",
    "DEFAULT_MAX_DECODED_BYTES",
    "DEFAULT_MAX_PIXELS",
    "PixelBudget",
    "decoded_bytes",
]

DEFAULT_MAX_PIXELS = 89_478_485
"""PIL's default ``Image.MAX_IMAGE_PIXELS`` (the warning limit): about 9459x9459 pixels."""

DEFAULT_MAX_DECODED_BYTES = 512 * 2**20
"""Largest decoded image accepted, in bytes of PIL's storage (see :func:`decoded_bytes`).

512 MiB admits everything the default pixel cap does, whatever the bit depth: PIL stores at most
4 bytes per pixel, and 89.5 Mpx x 4 B = 341 MiB (a 9000x9000 16-bit scan is 154 MiB, an 8000x8000
float TIFF 244 MiB, a 9000x9000 RGB photo 309 MiB). It binds when ``max_pixels`` is raised
(scans, astronomy): then an 8-bit grayscale image may have four times the pixels of an RGB one, and
one image never needs more than half of :data:`DEFAULT_BUDGET_BYTES`.
"""

DEFAULT_BUDGET_BYTES = 2**30
"""Decoded pixels in flight across all decode threads: 1 GiB.

Two images at :data:`DEFAULT_MAX_DECODED_BYTES` decode at once; photos never wait (a 12 MP JPEG
decoded at full size costs 96 MB, reduced for the model about 2 MB). With the pipeline's one decode
thread per core, a 16-core machine meeting 16 large TIFFs would otherwise hold 16 x 256 MB.
"""


class PixelBudget:
    """A byte budget for decoded pixels, shared by decode threads; first come, first served.

    A thread holds an image's estimated bytes while its pixels are decoded and reduced. A request
    that does not fit waits until enough is released; one bigger than the whole budget waits
    until nothing else is held and then runs alone, so the budget never deadlocks.

    Example:
        >>> budget = PixelBudget(100)
        >>> with budget.hold(60):
        ...     budget.in_use
        60
    """

    def __init__(self, limit: int = DEFAULT_BUDGET_BYTES) -> None:
        """Creates a budget of ``limit`` bytes (> 0)."""
        if limit <= 0:
            raise ValueError(f"PixelBudget limit must be > 0, got {limit}")
        self.limit = limit
        self.in_use = 0
        self.peak = 0  # the most ever held at once, for tests and benchmarks
        self._cond = threading.Condition()
        self._queue: deque[object] = deque()

    @contextmanager
    def hold(self, nbytes: int) -> Iterator[None]:
        """Waits until ``nbytes`` fit (or nothing else is held), holds them for the block."""
        nbytes = self.acquire(nbytes)
        try:
            yield
        finally:
            self.release(nbytes)

    def acquire(self, nbytes: int) -> int:
        """Waits until ``nbytes`` fit (or nothing else is held) and takes them; returns them.

        For holds that outlive a block (bytes fetched by one thread and freed by another):
        every :meth:`acquire` needs its :meth:`release`, possibly in parts.
        """
        nbytes = max(0, int(nbytes))
        ticket = object()
        with self._cond:
            self._queue.append(ticket)
            try:
                while self._queue[0] is not ticket or (
                    self.in_use and self.in_use + nbytes > self.limit
                ):
                    self._cond.wait()
            finally:  # granted, or interrupted while waiting: either way leave the queue
                self._queue.remove(ticket)
                self._cond.notify_all()
            self.in_use += nbytes
            self.peak = max(self.peak, self.in_use)
        return nbytes

    def release(self, nbytes: int) -> None:
        """Gives back ``nbytes`` taken by :meth:`acquire`."""
        with self._cond:
            self.in_use -= max(0, int(nbytes))
            self._cond.notify_all()

    def __repr__(self) -> str:
        return f"PixelBudget(limit={self.limit}, in_use={self.in_use}, peak={self.peak})"


DEFAULT_BUDGET = PixelBudget()
"""The budget :func:`~.decode.decode_image` uses unless told otherwise: one per process."""


def decoded_bytes(size: tuple[int, int], mode: str) -> int:
    """Bytes PIL stores for an image: 1 per pixel for 1/L/P, 2 for I;16, else 4 (RGB too)."""
    try:
        m = ImageMode.getmode(mode)
    except KeyError:
        return size[0] * size[1] * 4
    return size[0] * size[1] * (4 if len(m.bands) > 1 else int(m.typestr[-1]))
