"""The claims of a lease: ``DST/_lease/<run>.<tag>.json``, written, read and aged.

A claim is one small JSON object per contender for a destination's lease (run id, host, pid,
start and heartbeat times, gcsemb version, boot id, and a state: ``claiming`` or ``held``);
:mod:`gcsemb.embedding.lease` decides with them who writes DST. This module is their format
(:func:`claim_json`, :func:`parse_claim`) and their folder (:class:`ClaimFolder`).

How old a claim is never rests on another machine's clock (the times inside a claim are shown,
never trusted): it is the storage's own time since the claim was last written (on GCS the
object's ``updated`` time against the ``Date`` of the listing; in a local folder the file's
modification time against this machine's clock), or how long this reader has seen it unchanged
(``time.monotonic``), whichever is longer. So a contender whose clock runs ahead takes no live
lease, and a claim dated in the future blocks no one for longer than the lease's
``stale_after``.

Example:
    >>> data = claim_json("run-1", "host", 42, since=0.0, heartbeat=60.0, state=HELD)
    >>> parse_claim(data, "/tmp/emb/_lease/run-1.ab.json", None, 60.0).describe()
    'run run-1 on host host (pid 42)'
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Any

from gcsemb.storage import Store, explain, parse_time

LEASE_DIR = "_lease"
"""The folder of claims under DST. Readers skip names that start with ``_``."""
CLAIMING, HELD = "claiming", "held"


@dataclass(frozen=True)
class Holder:
    """One claim on the lease, as read from ``DST/_lease/``.

    Attributes:
        run: The run id of the claimant (its shard names start with it).
        host: The machine it runs on.
        pid: Its process id on that machine.
        since: When it claimed the lease (seconds since the epoch, its clock: shown only).
        heartbeat: When it last renewed the lease (seconds since the epoch, its clock: shown
            only).
        state: ``"claiming"`` while it acquires, ``"held"`` once it holds the lease.
        version: Its gcsemb version.
        uri: Where the claim is, e.g. ``gs://bucket/emb/_lease/RUN.TAG.json``.
        generation: The GCS generation of the claim, if any.
        age: Seconds since the claim last changed when it was read: by the storage's clock, or
            as long as the reader has seen it unchanged, whichever is longer.
        boot: Its machine's boot id and PID namespace (Linux), where its pid means a process.
    """

    run: str
    host: str
    pid: int
    since: float
    heartbeat: float
    state: str
    version: str
    uri: str
    generation: int | None = None
    age: float = 0.0
    boot: str | None = None

    @property
    def rank(self) -> tuple[float, str]:
        """The order among runs that claim at the same moment: earlier start first."""
        return (self.since, self.uri)

    def describe(self) -> str:
        """``run R on host H (pid P)``."""
        return f"run {self.run} on host {self.host} (pid {self.pid})"


def claim_json(
    run: str,
    host: str,
    pid: int,
    *,
    since: float,
    heartbeat: float,
    state: str,
    boot: str | None = None,
) -> bytes:
    """A claim's JSON: who claims, since when, its last heartbeat (its clock) and its state."""
    from gcsemb import __version__

    doc = {
        "run": run,
        "host": host,
        "pid": pid,
        "since": _iso(since),
        "heartbeat": _iso(heartbeat),
        "state": state,
        "gcsemb": __version__,
        "boot": boot,
    }
    return json.dumps(doc, indent=1).encode()


def parse_claim(data: bytes, uri: str, generation: int | None, mtime: float) -> Holder:
    """A claim from its JSON. An unreadable one blocks until its file is ``stale_after`` old."""
    try:
        doc = json.loads(data)
        boot = doc.get("boot")
        return Holder(
            run=str(doc["run"]),
            host=str(doc["host"]),
            pid=int(doc["pid"]),
            since=_ts(doc["since"]),
            heartbeat=_ts(doc["heartbeat"]),
            state=CLAIMING if doc.get("state") == CLAIMING else HELD,
            version=str(doc.get("gcsemb", "?")),
            uri=uri,
            generation=generation,
            boot=boot if isinstance(boot, str) else None,
        )
    except (ValueError, KeyError, TypeError, AttributeError, OverflowError):
        return Holder("(unreadable claim)", "?", 0, mtime, mtime, HELD, "?", uri, generation)


class ClaimFolder:
    """``DST/_lease/``: claims written and deleted only if unchanged, read fresh with their age.

    Args:
        store: The destination (DST).
        clock: Wall-clock time in seconds since the epoch: the ages of claims where the store
            has no clock of its own (a local folder: this machine's files).

    Attributes:
        path: The folder, in ``store``'s terms.
    """

    def __init__(self, store: Store, clock: Callable[[], float] = time.time) -> None:
        self.store, self.clock = store, clock
        self.path = f"{store.path.rstrip('/')}/{LEASE_DIR}"
        self._seen: dict[tuple[Any, ...], float] = {}  # claim version -> monotonic first seen

    def put(self, path: str, data: bytes, generation: int | None) -> int | None:
        """Write a claim, if its generation is still ``generation`` (0: if absent).

        The precondition holds where the store keeps generations (GCS).

        Returns:
            The new generation, where the store keeps them, else None.

        Raises:
            FileExistsError: The store refused the precondition: the claim changed or went.
        """
        try:
            return self.store.write(path, data, if_generation=generation)
        except FileExistsError:
            raise
        except Exception as e:
            raise explain(e, self.store.where(path), self.store, "write") from e

    def delete(self, uri: str, generation: int | None) -> None:
        """Delete a claim (only if its generation is still ``generation``, where kept).

        Raises:
            FileExistsError: The store refused the precondition: the claim changed.
        """
        try:
            self.store.delete(self.store.fs._strip_protocol(uri), if_generation=generation)
        except FileNotFoundError:
            pass  # already gone
        except FileExistsError:
            raise
        except Exception as e:
            raise explain(e, uri, self.store, "delete") from e

    def read(self) -> list[Holder]:
        """Every claim in the folder (the reader's own too), read fresh, with its age.

        The age is the storage's time since the claim was written (a local folder: this
        machine's clock against the file's time), or how long this folder has seen the claim
        unchanged, whichever is longer: no claim looks younger than it is for long, whatever
        clock or dates its writer had.
        """
        try:
            listed, now = self.store.entries(self.path)
        except Exception as e:
            raise explain(e, self.store.where(self.path), self.store, "index") from e
        now = self.clock() if now is None else now
        entries = [e for e in listed if _is_claim(e.path)]
        datas = self.store.read_many([e.path for e in entries])
        claims, seen, looked = [], {}, time.monotonic()
        for (path, generation, written), data in zip(
            ((e.path, e.generation, e.updated) for e in entries), datas, strict=True
        ):
            if isinstance(data, FileNotFoundError):
                continue  # withdrawn or released since the listing
            if isinstance(data, BaseException):
                raise explain(data, self.store.where(path), self.store, "index") from data
            claim = parse_claim(data, self.store.where(path), generation, written)
            version = (claim.uri, claim.generation, claim.heartbeat, claim.state)
            seen[version] = self._seen.get(version, looked)
            claims.append(replace(claim, age=max(now - written, looked - seen[version])))
        self._seen = seen
        return claims


def alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (in this PID namespace)."""
    if pid <= 0:  # 0 and negative ids name process groups, never one process
        return False
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, OverflowError):  # none, or an id no process can have
        return False
    except OSError:  # e.g. another user's process: it exists
        return True
    return True


def boot_id() -> str | None:
    """This kernel's boot id and this process's PID namespace, where a pid names one process.

    None where unknown (not Linux): then no claim is ever taken for a process that is gone.
    """
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot} {os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def _is_claim(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.endswith(".json") and not base.startswith(".")


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="microseconds")


def _ts(text: str) -> float:
    return parse_time(text).timestamp()


def utc(t: float) -> str:
    """``t`` (seconds since the epoch) as ``2026-08-01 12:00:00 UTC``."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
