"""One writer per DST: the lease, on the private-bucket front of the emulator and on local folders.

fake-gcs-server ignores generation preconditions, so these tests show that the lease needs none:
runs racing through the emulator (with random delays on every request) never both hold it.
Staleness rests on the storage's clock, so a dead holder is shown by waiting a short
``stale_after`` for real, never by moving a contender's clock.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import socket
import subprocess
import threading
import time
from datetime import datetime, timezone

import objstore
import pytest
from servers import ACCESS_TOKEN, GatewayProxy

from gcsemb.embedding.claims import LEASE_DIR
from gcsemb.embedding.lease import DestinationBusy, Lease, LeaseLost
from gcsemb.errors import AccessDenied, GcsembError
from gcsemb.storage import open_store

FAST = {"poll": 0.05, "heartbeat": 30.0}
SHORT = {"poll": 0.05, "heartbeat": 0.3, "stale_after": 1.0}  # a holder dead after 1 s
STORAGE_SECOND = 2.1  # GCS's Date header counts whole seconds: wait past 1 s by its clock


@pytest.fixture(params=["gcs", "local", "objstore"])
def dst(request, tmp_path):
    """A destination on the private-bucket front, a local folder that does not exist yet, or the
    test backend (an object store in a folder that enforces generations: tests/objstore.py)."""
    if request.param == "local":
        return open_store(str(tmp_path / "emb"))
    if request.param == "objstore":
        return open_store(f"{objstore.SCHEME}://{tmp_path}/emb")
    bucket = request.getfixturevalue("bucket")
    return open_store(f"gs://{bucket}/emb")


def front(gcs, monkeypatch, fault=None) -> GatewayProxy:
    """A private-bucket front of this test's own (requests recorded, faults injected)."""
    proxy = GatewayProxy(gcs.emulator.url, token=ACCESS_TOKEN, fault=fault)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    return proxy


def claims(store) -> list[dict]:
    """The lease's claims as a user would read them in DST/_lease/."""
    fs, folder = store.fs, f"{store.path}/{LEASE_DIR}"
    try:
        names = fs.ls(folder, detail=False, refresh=True)
    except FileNotFoundError:
        return []
    return [json.loads(fs.cat_file(n)) for n in names if n.endswith(".json")]


def plant(store, name: str, claim: dict | str, mtime: float | None = None) -> str:
    """Write a claim into DST/_lease/ as another machine (or a hostile user) would."""
    data = claim if isinstance(claim, str) else json.dumps(claim)
    path = f"{store.path}/{LEASE_DIR}/{name}"
    if not store.backend.local:
        store.fs.pipe_file(path, data.encode())
    else:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(data)
        if mtime is not None:
            os.utime(path, (mtime, mtime))
    return path


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat()


def dead_pid() -> int:
    """The id of a process that has ended."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_one_holder_names_itself_and_release_deletes_it(dst):
    lease = Lease(dst, "run-one", **FAST).acquire()
    try:
        (doc,) = claims(dst)
        assert doc["run"] == "run-one" and doc["state"] == "held"
        assert doc["host"] == socket.gethostname() and doc["pid"] == os.getpid()
        assert doc["since"].endswith("+00:00") and doc["gcsemb"]
        lease.check()  # held: no error
    finally:
        lease.release()
    assert claims(dst) == []
    with pytest.raises(GcsembError, match="does not hold"):
        lease.check()


def test_second_run_is_refused_naming_the_holder_then_waits_for_it(dst):
    first = Lease(dst, "run-first", **FAST).acquire()
    second = Lease(dst, "run-second", **FAST)
    with pytest.raises(DestinationBusy) as busy:
        second.acquire()
    message = str(busy.value)
    assert "run-first" in message and socket.gethostname() in message
    assert f"pid {os.getpid()}" in message and "last heartbeat 0 s ago" in message
    assert "wait_for_lease" in message and "--wait" in message
    assert "older than 2 min 30 s" in message and first.uri in message  # what to delete
    assert "this very process" in message
    assert [d["run"] for d in claims(dst)] == ["run-first"]  # the refused run left nothing

    got: list[float] = []
    waiter = threading.Thread(target=lambda: got.append(second.acquire(wait=10) and time.time()))
    waiter.start()
    time.sleep(0.3)
    assert not got  # still waiting while the first run holds it
    released = time.time()
    first.release()
    waiter.join(10)
    try:
        assert got and got[0] - released < 2 and second.held
        assert [d["run"] for d in claims(dst)] == ["run-second"]
    finally:
        second.release()


def _race(store, n: int, round_: int) -> tuple[list[Lease], list[DestinationBusy]]:
    leases = [Lease(store, f"run-{round_}-{i}", **FAST) for i in range(n)]
    barrier = threading.Barrier(n)
    winners: list[Lease] = []
    refused: list[DestinationBusy] = []

    def go(lease: Lease) -> None:
        barrier.wait()
        try:
            lease.acquire()
            winners.append(lease)
        except DestinationBusy as e:
            refused.append(e)

    threads = [threading.Thread(target=go, args=(lease,)) for lease in leases]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return winners, refused


@pytest.mark.parametrize("where", ["gcs", "local", "objstore"])
def test_racing_runs_exactly_one_wins(where, gcs, bucket, tmp_path, monkeypatch):
    """Six runs at once, five rounds: one holds the lease, five are refused naming it."""
    if where == "gcs":  # every request delayed at random: writes and listings interleave
        jitter = random.Random(14)
        proxy = front(gcs, monkeypatch, lambda n, method, path: time.sleep(jitter.random() / 100))
        proxy.__enter__()
        store = open_store(f"gs://{bucket}/emb")
    elif where == "objstore":
        store = open_store(f"{objstore.SCHEME}://{tmp_path}/emb")
    else:
        store = open_store(str(tmp_path / "emb"))
    try:
        for round_ in range(5):
            winners, refused = _race(store, 6, round_)
            assert len(winners) == 1 and len(refused) == 5, (round_, winners, refused)
            (winner,) = winners
            assert all(e.holder.run == winner.run for e in refused), [str(e) for e in refused]
            assert [d["run"] for d in claims(store)] == [winner.run]
            winner.release()
            assert claims(store) == []
    finally:
        if where == "gcs":
            proxy.__exit__(None, None, None)


def test_racing_processes_on_the_emulator(gcs, bucket, tmp_path):
    """Separate processes (each its own gcsfs, loop and clock) race through the private front."""
    import subprocess
    import sys

    script = tmp_path / "race.py"
    script.write_text(
        "import sys\n"
        "from gcsemb.embedding.lease import DestinationBusy, Lease\n"
        "from gcsemb.storage import open_store\n"
        "store = open_store(sys.argv[1]); store.fs\n"
        "print('ready', flush=True); sys.stdin.readline()\n"
        "try:\n"
        "    lease = Lease(store, sys.argv[2], poll=0.05).acquire()\n"
        "    print('won', flush=True); sys.stdin.readline(); lease.release()\n"
        "except DestinationBusy as e:\n"
        "    print('busy', e.holder.run, flush=True)\n"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), f"gs://{bucket}/emb", f"proc-{i}"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(3)
    ]
    try:
        assert [p.stdout.readline() for p in procs] == ["ready\n"] * 3
        for p in procs:  # all at once: each only waits for this line
            p.stdin.write("go\n")
            p.stdin.flush()
        outs = [p.stdout.readline().split() for p in procs]  # the winner holds on meanwhile
    finally:
        for p in procs:
            p.stdin.close()
            p.wait(30)
    won = [f"proc-{i}" for i, out in enumerate(outs) if out[:1] == ["won"]]
    assert len(won) == 1, outs
    assert sorted(out[1] for out in outs if out[:1] == ["busy"]) == won * 2
    assert claims(open_store(f"gs://{bucket}/emb")) == []


def test_stale_lease_is_taken_over_with_a_warning(dst, caplog):
    dead = Lease(dst, "run-dead", **FAST).acquire()  # renews every 30 s: not during this test
    time.sleep(STORAGE_SECOND)  # older than the heir's stale_after of 1 s, by the storage's clock
    heir = Lease(dst, "run-heir", **SHORT)
    with caplog.at_level(logging.WARNING, logger="gcsemb.embedding.lease"):
        heir.acquire()
    try:
        assert heir.took_over_from is not None and heir.took_over_from.run == "run-dead"
        (warning,) = [r.getMessage() for r in caplog.records if "Taking over" in r.getMessage()]
        assert "run-dead" in warning and socket.gethostname() in warning
        assert re.search(r"its last heartbeat was [123] s ago \(more than 1 s\)", warning), warning
        assert [d["run"] for d in claims(dst)] == ["run-heir"]
        dead.beat()  # the old holder, were it only paused, notices at its next heartbeat
        assert dead.lost
        with pytest.raises(LeaseLost) as lost:
            dead.check()
        assert "run-dead lost its lease" in str(lost.value) and "stop" in str(lost.value)
        assert [d["run"] for d in claims(dst)] == ["run-heir"]  # not brought back
    finally:
        dead.release()
        heir.release()
    assert claims(dst) == []


def test_heartbeat_advances_and_a_takeover_makes_check_raise(dst):
    lease = Lease(dst, "run-beating", heartbeat=0.1, poll=0.05).acquire()
    try:
        (before,) = claims(dst)
        time.sleep(0.35)
        (after,) = claims(dst)
        assert after["heartbeat"] > before["heartbeat"] and after["since"] == before["since"]
        lease.check()

        # a run that took the lease later (a paused holder came back): the later one keeps it
        later = {**after, "run": "run-thief", "host": "elsewhere", "since": iso(time.time() + 1)}
        thief = plant(dst, "run-thief.0000.json", later)
        deadline = time.monotonic() + 5
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(LeaseLost) as lost:
            lease.check()
        assert "run-thief" in str(lost.value)
        assert isinstance(lost.value, DestinationBusy) and lost.value.holder.run == "run-thief"
        lease.release()
        assert [d["run"] for d in claims(dst)] == ["run-thief"]
        dst.fs.rm(thief)
    finally:
        lease.release()


def test_unrenewable_lease_counts_as_lost(gcs, bucket, monkeypatch):
    """A holder that cannot renew for most of stale_after stops before anyone takes over."""
    cut = threading.Event()

    def refuse_renewals(n, method, path):
        return 403 if cut.is_set() and "/upload/" in path else None

    with front(gcs, monkeypatch, refuse_renewals):
        store = open_store(f"gs://{bucket}/emb")
        lease = Lease(store, "run-cut-off", poll=0.05, heartbeat=0.5, stale_after=3.0).acquire()
        try:
            cut.set()
            time.sleep(0.5)  # renewals fail, but still inside stale_after - 2 * heartbeat (2 s)
            lease.check()
            deadline = time.monotonic() + 10
            while not lease.lost and time.monotonic() < deadline:
                time.sleep(0.05)
            with pytest.raises(LeaseLost, match="could not be renewed for 2 s"):
                lease.check()
        finally:
            cut.clear()
            lease.release()


def test_a_destination_we_may_not_write_is_access_denied(gcs, bucket, monkeypatch):
    def refuse_uploads(n, method, path):
        return 403 if method == "POST" and "/upload/" in path else None

    with front(gcs, monkeypatch, refuse_uploads):
        store = open_store(f"gs://{bucket}/emb")
        with pytest.raises(AccessDenied) as denied:
            Lease(store, "run-denied", **FAST).acquire()
    message = str(denied.value)
    assert "gs://" in message and "_lease" in message and "roles/storage.objectUser" in message


def test_context_manager_releases_on_errors_and_ctrl_c(dst):
    for error in (RuntimeError("boom"), KeyboardInterrupt()):
        with pytest.raises(type(error)), Lease(dst, "run-ctx", **FAST):
            assert [d["run"] for d in claims(dst)] == ["run-ctx"]
            raise error
        assert claims(dst) == []


def _generation_match(path: str) -> str | None:
    from urllib.parse import parse_qs, urlsplit

    return parse_qs(urlsplit(path).query).get("ifGenerationMatch", [None])[0]


def test_on_gcs_writes_carry_the_preconditions_gcs_enforces(gcs, bucket, monkeypatch):
    with front(gcs, monkeypatch) as proxy:
        lease = Lease(open_store(f"gs://{bucket}/emb"), "run-pre", **FAST).acquire()
        lease.beat()
        lease.release()
    writes = [_generation_match(p) for m, p, _, _ in proxy.requests if "/upload/" in p]
    assert writes[0] == "0"  # the claim is created only if absent
    assert len(writes) == 3 and all(g and g != "0" for g in writes[1:])  # held, then renewed


def test_on_gcs_a_refused_renewal_means_the_lease_is_lost(gcs, bucket, monkeypatch):
    """GCS answers 412 when the claim changed since we wrote it: taken over, or deleted."""
    armed = threading.Event()

    def refuse_renewals(n, method, path):
        return 412 if armed.is_set() and "/upload/" in path else None

    with front(gcs, monkeypatch, refuse_renewals):
        lease = Lease(open_store(f"gs://{bucket}/emb"), "run-refused", **FAST).acquire()
        armed.set()
        lease.beat()
        with pytest.raises(LeaseLost, match="deleted"):
            lease.check()
        lease.release()


def test_on_gcs_a_claim_renewed_since_it_was_read_is_not_taken_over(gcs, bucket, monkeypatch):
    """GCS refuses (412) to delete a claim whose generation moved: that run is alive after all."""

    renewed = threading.Event()

    def refuse_conditional_deletes(n, method, path):
        return 412 if renewed.is_set() and method == "DELETE" and _generation_match(path) else None

    with front(gcs, monkeypatch, refuse_conditional_deletes):
        store = open_store(f"gs://{bucket}/emb")
        alive = Lease(store, "run-alive", **FAST).acquire()
        heir = Lease(store, "run-heir", clock=lambda: time.time() + 700, **FAST)
        renewed.set()
        with pytest.raises(DestinationBusy) as busy:
            heir.acquire()
        assert busy.value.holder.run == "run-alive" and heir.took_over_from is None
        alive.release()  # its own claim: deleted without a precondition
        assert claims(store) == []


# ------------------------------------------------------------------------ clocks, hosts, hostility


def test_a_contender_whose_clock_runs_ahead_takes_no_live_lease(gcs, bucket, caplog):
    """Another machine 200 s ahead: by the storage's clock the holder renewed just now."""
    store = open_store(f"gs://{bucket}/emb")
    holder = Lease(store, "run-holder", **FAST).acquire()
    try:
        ahead = Lease(store, "run-ahead", clock=lambda: time.time() + 200, **FAST)
        with pytest.raises(DestinationBusy) as busy:
            ahead.acquire()
        assert busy.value.holder.run == "run-holder" and ahead.took_over_from is None
        assert "last heartbeat 0 s ago" in str(busy.value) or "1 s ago" in str(busy.value)
        assert "Taking over" not in caplog.text
        holder.check()  # still the holder, rightly
        assert [d["run"] for d in claims(store)] == ["run-holder"]
    finally:
        holder.release()


def test_a_holder_with_our_host_name_in_another_pid_namespace_is_not_taken_over(dst, caplog):
    """The same host name and a pid free here is no proof: a container elsewhere may be alive."""
    probe = Lease(dst, "run-probe", **FAST).acquire()
    (ours,) = claims(dst)  # what a run in this very PID namespace writes
    probe.release()
    gone = dead_pid()
    elsewhere = {**ours, "run": "run-elsewhere", "pid": gone, "boot": "0b0b pid:[4026532999]"}
    legacy = {k: v for k, v in {**ours, "run": "run-legacy", "pid": gone}.items() if k != "boot"}
    for name, claim in (("elsewhere", elsewhere), ("legacy", legacy)):  # a claim without one
        path = plant(dst, f"{name}.json", claim)
        with pytest.raises(DestinationBusy) as busy:
            Lease(dst, "run-new", **FAST).acquire()
        assert busy.value.holder.run == f"run-{name}", name
        dst.fs.rm(path)
    assert "Taking over" not in caplog.text

    plant(dst, "here.json", {**ours, "run": "run-here", "pid": gone})  # our namespace: gone
    with caplog.at_level(logging.WARNING, logger="gcsemb.embedding.lease"):
        heir = Lease(dst, "run-heir", **FAST).acquire()
    try:
        assert heir.took_over_from.run == "run-here"
        assert "run-here" in caplog.text and "its process is gone" in caplog.text
    finally:
        heir.release()


def test_hostile_claims_neither_crash_nor_block_forever(dst, caplog):
    """A heartbeat dated ten years ahead, a pid of 2**70 or of Infinity: taken over in seconds."""
    probe = Lease(dst, "run-probe", **FAST).acquire()
    (ours,) = claims(dst)  # this machine: the pid is looked up, and must not crash
    probe.release()
    future = time.time() + 10 * 365 * 86400
    claim = {"since": iso(future), "heartbeat": iso(future), "state": "held", "gcsemb": "9"}
    plant(dst, "huge.json", {**ours, **claim, "run": "run-huge", "pid": 2**70})
    plant(dst, "future.json", {**claim, "run": "run-future", "host": "far", "pid": 7}, future)
    plant(dst, "inf.json", json.dumps({**claim, "run": "run-inf", "pid": float("inf")}), future)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="gcsemb.embedding.lease"):
        heir = Lease(dst, "run-heir", **SHORT).acquire(wait=20)
    try:
        assert time.monotonic() - started < 10  # stale_after (1 s) by the storage, not the dates
        assert [d["run"] for d in claims(dst)] == ["run-heir"]
        assert "run-huge" in caplog.text and "run-future" in caplog.text
    finally:
        heir.release()
