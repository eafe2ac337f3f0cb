"""Taking the lease: this run's claim, its rivals, and who goes first.

The steps :class:`~gcsemb.embedding.lease.Lease` takes before it holds the lease of DST (see
:mod:`gcsemb.embedding.lease` for the protocol and why two runs never both win): list the other
runs' claims and take over the dead ones, write this run's ``claiming`` claim, list again, and
withdraw or become ``held``. :class:`Claimant` holds what this run wrote (its claim's name,
generation and start) and judges other runs' claims (alive, stale, or of a process that is gone
on this very machine). It tells the user who is in the way, too.

Example:
    >>> from gcsemb.embedding.claims import ClaimFolder
    >>> claimant = Claimant(ClaimFolder(dst), run="run-1", stale_after=150)  # doctest: +SKIP
    >>> won, holder = claimant.attempt()  # doctest: +SKIP
    >>> won or print(claimant.busy_message(holder))  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from gcsemb.embedding.claims import (
    CLAIMING,
    HELD,
    ClaimFolder,
    Holder,
    alive,
    boot_id,
    claim_json,
    utc,
)
from gcsemb.embedding.report import duration as _duration

logger = logging.getLogger(__name__)

CLAIM_STALE_AFTER = 60.0
"""Seconds after which a claim that never became ``held`` counts as abandoned. Claiming takes
two or three requests. A run that takes longer than half of this starts over, so a live
contender's claim is never mistaken for an abandoned one."""
RESOLVE_POLL = 0.05
"""Seconds between looks while runs that started at the same moment sort out who goes first."""
WAIT_HINT = "wait_for_lease=SECONDS (CLI: --wait SECONDS)"
"""How a user asks a run to wait for a busy destination. The busy message names it."""


class Claimant:
    """This run's claim in ``DST/_lease/`` and the steps that take the lease with it.

    Args:
        claims: The lease folder of DST.
        run: This run's id, as named in shard files and messages.
        stale_after: A ``held`` claim whose heartbeat is older than this is taken over (seconds).
        clock: Wall-clock time in seconds since the epoch, as the claim shows it.

    Attributes:
        path: This run's claim, in the store's terms: ``<DST>/_lease/RUN.TAG.json``.
        uri: The same, as the user reads it.
        since: When this run's latest try at the lease began (0 before the first).
        generation: Of this run's claim where the store keeps them (GCS); None: not written.
        renewed: ``time.monotonic()`` of the last write of the claim that reached DST.
        took_over_from: The dead run whose claim this run deleted to take over, if any.
    """

    def __init__(
        self,
        claims: ClaimFolder,
        run: str,
        stale_after: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.claims, self.run, self.stale_after, self.clock = claims, run, stale_after, clock
        self.dst = claims.store.url
        self.path = f"{claims.path}/{run}.{uuid.uuid4().hex[:8]}.json"
        self.uri = claims.store.where(self.path)
        self.host, self.pid, self.boot = socket.gethostname(), os.getpid(), boot_id()
        self.since = 0.0
        self.generation: int | None = None
        self.renewed = 0.0
        self.took_over_from: Holder | None = None

    @property
    def rank(self) -> tuple[float, str]:
        """Where this run's claim sorts among contenders: earlier start first, then name."""
        return (self.since, self.uri)

    def attempt(self) -> tuple[bool, Holder | None]:
        """One try at the lease: (True, None) when taken, else (False, the run that has it).

        (False, None): this try took too long to be trusted (see :data:`CLAIM_STALE_AFTER`).
        """
        holder = next((c for c in self.rivals() if c.state == HELD), None)
        if holder is not None:
            return False, holder
        self.since = self.clock()
        started = time.monotonic()
        try:
            return self._claim(started)
        except FileExistsError:  # GCS: our claim went meanwhile (taken for abandoned): again
            self.withdraw()
            return False, None
        except BaseException:
            try:
                self.withdraw()
            except Exception:  # the first error is the one to report
                logger.debug("Could not withdraw %s", self.uri, exc_info=True)
            raise

    def _claim(self, started: float) -> tuple[bool, Holder | None]:
        """Write this run's claim, then settle who goes first (see the lease's steps)."""
        self.put(CLAIMING, self.since, 0)
        while True:
            others = self.rivals()
            blocker = next((c for c in others if c.state == HELD), None) or min(
                (c for c in others if c.rank < self.rank), key=lambda c: c.rank, default=None
            )
            if blocker is not None:
                self.withdraw()
                return False, blocker
            if time.monotonic() - started > CLAIM_STALE_AFTER / 2:  # others may call it dead
                self.withdraw()
                return False, None
            if not others:
                self.put(HELD, self.clock(), self.generation)
                if time.monotonic() - started > CLAIM_STALE_AFTER / 2:
                    self.withdraw()
                    return False, None
                self.renewed = time.monotonic()
                return True, None
            time.sleep(RESOLVE_POLL)  # later claims withdraw once they see ours

    def winner(self, claimant: Holder, patience: float = 2.0) -> Holder:
        """The run that ends up holding the lease, or ``claimant`` if none does within a while."""
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            held = next((c for c in self.rivals() if c.state == HELD), None)
            if held is not None:
                return held
            time.sleep(RESOLVE_POLL)
        return claimant

    def rivals(self) -> list[Holder]:
        """Other runs' live claims. Stale ones are deleted (taken over) on the way."""
        live = []
        for claim in self.claims.read():
            if claim.uri == self.uri:
                continue
            if not self.stale(claim):
                live.append(claim)
                continue
            try:
                self.claims.delete(claim.uri, claim.generation)
            except FileExistsError:  # GCS: renewed since we read it, so it is alive
                live.append(claim)
                continue
            if claim.state == HELD:
                why = (
                    "its process is gone"
                    if claim.age <= self.stale_after
                    else f"its last heartbeat was {_duration(claim.age)} ago (more than "
                    f"{_duration(self.stale_after)})"
                )
                logger.warning(
                    "Taking over the lease of %s from %s: %s, so that run has stopped.",
                    self.dst,
                    claim.describe(),
                    why,
                )
                self.took_over_from = claim
        return live

    def stale(self, claim: Holder) -> bool:
        """Whether ``claim`` belongs to a run that died (too old, or its process is gone)."""
        return claim.age > self.limit(claim) or self._gone(claim)

    def limit(self, claim: Holder) -> float:
        """How old ``claim`` may grow before its run counts as dead."""
        return self.stale_after if claim.state == HELD else min(self.stale_after, CLAIM_STALE_AFTER)

    def _gone(self, claim: Holder) -> bool:
        """Whether ``claim`` is of a run on this machine whose process ended (kill -9, a restart).

        Only where the claim names this boot and PID namespace: the same host name with another
        boot id, or in another container, may be a live run elsewhere.
        """
        same = self.boot is not None and claim.boot == self.boot and claim.host == self.host
        return same and claim.pid != self.pid and not alive(claim.pid)

    def put(self, state: str, heartbeat: float, generation: int | None) -> None:
        """Write this run's claim, if its generation is still ``generation`` (0: if absent).

        Keeps the new generation where the store has them (see :meth:`ClaimFolder.put`).

        Raises:
            FileExistsError: The store refused the precondition: the claim changed or went.
        """
        data = claim_json(
            self.run,
            self.host,
            self.pid,
            since=self.since,
            heartbeat=heartbeat,
            state=state,
            boot=self.boot,
        )
        self.generation = self.claims.put(self.path, data, generation)

    def withdraw(self) -> None:
        """Delete this run's claim, if it was written (its name is ours alone: no precondition)."""
        if self.since:
            self.claims.delete(self.uri, None)

    def busy_message(self, holder: Holder) -> str:
        """What the user is told when ``holder`` is in the way: who, since when, what to do."""
        doing = "has been claiming" if holder.state == CLAIMING else "has held"
        left = max(0.0, self.limit(holder) - holder.age)
        due = self.clock() + left
        text = (
            f"{self.dst} is being written by {holder.describe()}, another gcsemb run: it "
            f"{doing} the lease since {utc(holder.since)}, last heartbeat "
            f"{_duration(holder.age)} ago (gcsemb {holder.version}). "
            f"Wait for it to finish: pass {WAIT_HINT} to wait up to that long. If that run has "
            f"stopped, its lease is taken over automatically once its heartbeat is older than "
            f"{_duration(self.limit(holder))} (at {utc(due)}, in {_duration(left)}); if you "
            f"are sure it died, delete {holder.uri}."
        )
        if holder.host == self.host and holder.pid == self.pid and holder.boot == self.boot:
            text += (
                f" That run is in this very process (pid {self.pid}): unless it is still going "
                "on here, it ended without releasing its lease. Call release() on its Lease, or "
                "restart the kernel."
            )
        return text
