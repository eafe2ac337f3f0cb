"""One writer per destination: the lease a run holds in DST while it writes there.

Two runs writing the same DST at once (two notebooks, a notebook and the CLI) would both embed
every image and leave two rows per image. So a run first takes the lease of DST, stops (or waits)
when another live run holds it, renews it while it writes, and gives it back at the end.

The lease is a folder of *claims*, ``DST/_lease/<run>.<tag>.json``, one JSON object per contender
(run id, host, pid, start and heartbeat times, gcsemb version, and a state: ``claiming`` or
``held``). pyarrow and gcsemb's readers skip ``_`` names. A run takes the lease like this:

1. List the claims. A live ``held`` claim of another run: the lease is busy.
2. Write its own ``claiming`` claim (a name no other run writes).
3. List again. Withdraw (delete its claim) if another run holds the lease, or if another run's
   claim ranks before its own (earlier start, then name). If claims that rank after its own are
   still there, list again shortly: those runs withdraw or win. Alone: rewrite its claim as
   ``held``. It now holds the lease.

Two runs never both hold it, on any storage whose listing shows every object written before the
listing started (GCS, a local folder, fake-gcs-server). Say both won, and X listed before Y. X
wrote its claim before it listed, and a winner never deletes its claim, so Y's listing shows X's
claim, and Y cannot have been alone. Apart from telling dead runs (below), no step relies on
timing or on a precondition, so the lease holds on fake-gcs-server, which ignores
``ifGenerationMatch``. On GCS every write and delete carries a generation precondition as well:
a paused holder that comes back cannot rewrite a claim that was taken over meanwhile, and a taker
cannot delete a claim that was renewed after it read it.

A claim not renewed for ``stale_after`` belongs to a run that died. The next run deletes it
with a warning that names that run, and takes over. A ``claiming`` claim is stale after
:data:`~gcsemb.embedding.contest.CLAIM_STALE_AFTER`. A run that cannot finish claiming within
half that time starts over. Its age is the storage's own clock, never another machine's (see
:mod:`gcsemb.embedding.claims`). A claim written on this very machine (same boot and PID
namespace) whose process is gone is taken over at once; a same-named host elsewhere (another
container) is not.

Taking the lease rides through an outage of DST as long as shard writes do (``retry_seconds``).
While held, a daemon thread renews the heartbeat every ``heartbeat`` seconds (sooner after a
failure). If the claim was deleted, or another run took over, the lease is lost:
:attr:`Lease.lost` is set, a warning is logged, and :meth:`Lease.check` raises
:class:`LeaseLost`. The writer calls :meth:`Lease.confirm` (a fresh look at DST) before each
shard. The lease also counts as lost when the run could not renew it for
``stale_after - 2 * heartbeat``, because another run may take it over soon after. Should two
runs ever both hold it (a paused run that comes back on a storage without preconditions), the
one that took it last keeps it and the other loses it at its next heartbeat.

The steps that take the lease, and the judging of other runs' claims, are in
:mod:`gcsemb.embedding.contest`; the claims' format and folder in :mod:`gcsemb.embedding.claims`.

Example:
    >>> from gcsemb.embedding.lease import Lease
    >>> from gcsemb.storage import open_store
    >>> dst = open_store("gs://my-bucket/embeddings")  # doctest: +SKIP
    >>> with Lease(dst, run="20260801-120000-123456ab").acquire(wait=60) as lease:  # doctest: +SKIP
    ...     for shard in shards:
    ...         lease.check()  # raises LeaseLost if another run took over
    ...         write(shard)
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from types import TracebackType

from gcsemb.embedding.claims import CLAIMING, HELD, ClaimFolder, Holder
from gcsemb.embedding.config import WRITE_RETRY_SECONDS
from gcsemb.embedding.contest import CLAIM_STALE_AFTER, Claimant
from gcsemb.embedding.report import duration as _duration
from gcsemb.errors import AccessDenied, AuthError, GcsembError, NotFound
from gcsemb.storage import Store

logger = logging.getLogger(__name__)

HEARTBEAT = 15.0
"""Seconds between renewals. A renewal is a listing, a read per claim and a small write: nothing
a run notices at four a minute, and often enough that 8 of them fit in :data:`STALE_AFTER`."""
STALE_AFTER = 150.0
"""Seconds without a renewal after which a holder counts as dead and its lease is taken over.
That is 10 missed heartbeats. A live run never goes that long: the renewal runs in its own
thread, so a slow GPU batch or a long shard write does not delay it. It is short because the
common dead holder is a notebook whose runtime disconnected: its user reconnects, runs again, and
waits at most this long (a holder on this very machine, in this PID namespace, whose process is
gone is taken over at once). A holder that could not renew for 2 of these 2.5 minutes stops
writing by itself (:meth:`Lease.check`)."""
POLL = 2.0
"""Seconds between looks at a busy lease while ``acquire(wait=...)`` waits."""
RETRY_DELAY = 2.0
"""Seconds before the first new try of a failed claim or renewal (claims back off up to 60 s)."""


class DestinationBusy(GcsembError):
    """Another live run holds the lease of the destination. The message names it.

    Attributes:
        holder: The run that holds the lease, as read from its claim.
    """

    def __init__(self, message: str, holder: Holder | None = None) -> None:
        super().__init__(message)
        self.holder = holder


class LeaseLost(DestinationBusy):
    """This run's lease was taken over, or could not be renewed. Stop writing to DST."""


@dataclass(frozen=True)
class _Outage:
    """Tries at the lease that failed in a row: since when, and the wait before the next."""

    since: float = field(default_factory=time.monotonic)
    delay: float = RETRY_DELAY


class Lease:
    """The right to write one destination, held by one run at a time.

    Args:
        store: The destination (DST).
        run: This run's id, as named in shard files and messages.
        stale_after: Take over a lease whose heartbeat is older than this (seconds).
        heartbeat: Renew the held lease this often (seconds).
        poll: Look at a busy lease this often while waiting (seconds).
        clock: Wall-clock time in seconds since the epoch: the times a claim shows, and the
            ages of claims in a local folder (this machine's files). Tests move it.
        retry_seconds: How long taking the lease is retried while DST fails (as long as a shard
            write, by default); a refusal (403, 401, no bucket) is never retried.

    Attributes:
        held: Whether this run holds the lease.
        lost: Whether the held lease was taken over or could not be renewed.
        lost_to: The run that took it over, if known.
        took_over_from: The dead run whose lease this run took over, if any.
        uri: This run's claim, ``DST/_lease/RUN.TAG.json``.

    Example:
        >>> lease = Lease(open_store("/tmp/emb"), run="run-1").acquire(wait=60)  # doctest: +SKIP
        >>> try:  # doctest: +SKIP
        ...     for shard in shards:
        ...         lease.check()  # raises LeaseLost if another run took over
        ...         write(shard)
        ... finally:  # errors and Ctrl-C too
        ...     lease.release()
    """

    def __init__(
        self,
        store: Store,
        run: str,
        *,
        stale_after: float = STALE_AFTER,
        heartbeat: float = HEARTBEAT,
        poll: float = POLL,
        clock: Callable[[], float] = time.time,
        retry_seconds: float = WRITE_RETRY_SECONDS,
    ) -> None:
        if not 0 < 2 * heartbeat < stale_after:
            raise ValueError(
                f"heartbeat={heartbeat} and stale_after={stale_after}: the lease must be "
                "renewed at least twice before it goes stale (0 < 2 * heartbeat < stale_after)."
            )
        self.store, self.run = store, run
        self.stale_after, self.heartbeat = stale_after, heartbeat
        self.poll, self.clock, self.retry_seconds = poll, clock, retry_seconds
        self.claimant = Claimant(ClaimFolder(store, clock), run, stale_after, clock)
        self.held = self.lost = False
        self.lost_to: Holder | None = None
        self._reason = ""
        self._io = threading.RLock()  # one storage sequence at a time (renewal, release)
        self._state = threading.Lock()  # the flags; never held during a request
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- taking and giving back -------------------------------------------------------------

    def acquire(self, wait: float = 0.0) -> Lease:
        """Take the lease. If another live run holds it, wait up to ``wait`` seconds for it.

        Args:
            wait: The longest to wait for another run to finish (seconds). 0 means stop at once.

        Returns:
            This lease, held, for use in a ``with`` statement.

        Raises:
            DestinationBusy: Another live run still holds the lease. The message names it.
            AccessDenied: This identity may not write, list or delete in DST.
            GcsembError: DST failed (or was too slow) for ``retry_seconds``.
        """
        if self.held:
            return self
        deadline = time.monotonic() + max(0.0, wait)
        told: set[str] = set()
        outage: _Outage | None = None  # tries that failed in a row
        while True:
            try:
                won, holder = self.claimant.attempt()
            except (AccessDenied, AuthError, NotFound):
                raise  # refused: another try changes nothing
            except GcsembError as e:
                outage = self._wait_out(outage or _Outage(), e)
                continue
            if won:
                break
            if holder is None:  # claiming took too long to be trusted: try again
                slow = GcsembError(
                    f"Could not take the lease of {self.dst}: the storage is too slow (a try "
                    f"took over {_duration(CLAIM_STALE_AFTER / 2)}). Try again."
                )
                outage = self._wait_out(outage or _Outage(), slow)
                continue
            outage = None
            left = deadline - time.monotonic()
            if left <= 0:
                if holder.state == CLAIMING:  # it may itself lose: name whoever wins
                    holder = self.claimant.winner(holder)
                raise DestinationBusy(self.claimant.busy_message(holder), holder)
            if holder.uri not in told:
                told.add(holder.uri)
                logger.info("%s is busy: waiting for %s.", self.dst, holder.describe())
            time.sleep(min(self.poll, left))
        self.held, self.lost, self.lost_to, self._reason = True, False, None, ""
        self._stop.clear()
        self._thread = threading.Thread(
            target=self._beat_forever, name=f"gcsemb-lease-{self.run}", daemon=True
        )
        self._thread.start()
        return self

    def _wait_out(self, outage: _Outage, error: GcsembError) -> _Outage:
        """Wait before the next try at the lease; raise ``error`` after ``retry_seconds``."""
        if time.monotonic() + outage.delay - outage.since > self.retry_seconds:
            raise error
        logger.warning(
            "Could not take the lease of %s (%s); trying again in %.0f s.",
            self.dst,
            error,
            outage.delay,
        )
        time.sleep(outage.delay)
        return replace(outage, delay=min(outage.delay * 2, 60.0))

    def release(self) -> None:
        """Give the lease back: stop renewing it and delete this run's claim.

        Only this run's own claim is deleted, never another run's. Storage errors are logged,
        not raised, because a release often runs while another error is on its way up. A claim
        that stays behind is taken over once its heartbeat is ``stale_after`` old.
        """
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join()
        with self._io:
            self.held = False
            try:
                self.claimant.withdraw()
            except Exception as e:  # reported, never raised: see docstring
                logger.warning(
                    "Could not remove the lease %s (%s). The next run takes it over once its "
                    "heartbeat is %s old, or delete it by hand.",
                    self.uri,
                    e,
                    _duration(self.stale_after),
                )

    @property
    def took_over_from(self) -> Holder | None:
        """The dead run whose lease this run took over, if any."""
        return self.claimant.took_over_from

    @property
    def uri(self) -> str:
        """This run's claim, ``DST/_lease/RUN.TAG.json`` (what to delete by hand, if ever)."""
        return self.claimant.uri

    @property
    def dst(self) -> str:
        """The destination's URL."""
        return self.store.url

    def __enter__(self) -> Lease:
        return self.acquire()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # --- while held ------------------------------------------------------------------------

    def check(self) -> None:
        """Raise :class:`LeaseLost` if this run may no longer write to DST.

        Cheap: it reads flags that the heartbeat thread sets, and never waits for storage.
        Call it before each shard write.

        Raises:
            LeaseLost: Another run took the lease over, its claim was deleted, or it could not
                be renewed for so long that another run may take it over.
            GcsembError: The lease was never acquired, or was released.
        """
        if not self.held and not self.lost:
            raise GcsembError(f"Run {self.run} does not hold the lease of {self.dst}: acquire it.")
        self._expire()
        if self.lost:
            raise LeaseLost(self._lost_message(), self.lost_to)

    def confirm(self) -> None:
        """Look at DST now: raise :class:`LeaseLost` unless this run still holds the lease.

        The writer calls it before each shard, so that no shard is written after the claim was
        deleted or taken over, however recently. It renews the lease on the way. When DST cannot
        be reached, the heartbeat's verdict stands (:meth:`check`).

        Raises:
            LeaseLost: The claim is gone, another run took over, or the lease could not be
                renewed for so long that another run may take it over.
        """
        try:
            self.beat()
        except GcsembError as e:  # an outage: the heartbeat thread keeps trying
            logger.debug("Could not look at the lease of %s: %s", self.dst, e)
        self.check()

    def beat(self) -> None:
        """Renew the lease now, or notice that it was lost. The heartbeat thread calls this.

        Raises:
            GcsembError: DST could not be reached. The thread logs it and tries again.
        """
        with self._io:
            if not self.held or self.lost or self._stop.is_set():
                return
            claims = self.claimant.claims.read()
            mine = next((c for c in claims if c.uri == self.uri), None)
            others = [c for c in claims if c.uri != self.uri and not self.claimant.stale(c)]
            newer = [c for c in others if c.state == HELD and c.rank > self.claimant.rank]
            if newer:  # the one that took over last keeps it; the other yields
                self._lose(newer[0], f"{newer[0].describe()} took it over")
            elif mine is None:
                holder = next((c for c in others if c.state == HELD), None)
                self._lose(holder, "its claim was deleted (taken over, or deleted by hand)")
            else:
                started = time.monotonic()
                try:
                    self.claimant.put(HELD, self.clock(), self.claimant.generation)
                except FileExistsError:  # GCS: the claim changed or went since we read it
                    self._lose(None, "its claim was deleted (taken over, or deleted by hand)")
                    return
                self.claimant.renewed = started

    @property
    def _grace(self) -> float:
        """How long the holder may fail to renew before it must count the lease as lost."""
        return max(self.stale_after - 2 * self.heartbeat, self.stale_after / 2)

    def _lose(self, holder: Holder | None, reason: str) -> None:
        """Mark the lease lost (once). The claim goes at :meth:`release`."""
        with self._state:
            if self.lost:
                return
            self.lost, self.lost_to, self._reason = True, holder, reason
        self._stop.set()
        logger.warning("%s", self._lost_message())

    def _expire(self) -> None:
        """Count the lease lost once it has gone unrenewed so long that others may take it."""
        if self.held and not self.lost and time.monotonic() - self.claimant.renewed > self._grace:
            self._lose(None, f"it could not be renewed for {_duration(self._grace)}")

    def _beat_forever(self) -> None:
        """Renew every ``heartbeat`` seconds; after a failure, sooner, until the grace is over."""
        pause = self.heartbeat
        while not self._stop.wait(pause):
            pause = self.heartbeat
            try:
                self.beat()
            except Exception as e:  # the thread must go on; check() reports
                logger.warning("Could not renew the lease of %s: %s", self.dst, e)
                pause = min(self.heartbeat, RETRY_DELAY)
            self._expire()

    # --- messages --------------------------------------------------------------------------

    def _lost_message(self) -> str:
        return (
            f"Run {self.run} lost its lease of {self.dst}: {self._reason}. It must stop "
            "writing there, since another run may be writing now. Rows already written stay, "
            "and a later run skips them: run again once the other run has finished."
        )
