"""Private buckets, refused credentials, denied objects, transient faults and secrets, end to end.

A loopback proxy in front of the emulator stands in for Google: it lists, reads and writes only
for the bearer token that the loopback OAuth endpoint grants to our service-account key, and it
injects 403/429/503 answers and dropped connections on any kind of request. The last section
shows that no embedded row is lost to an outage, a lost lease or Ctrl-C.
"""

from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servers import ACCESS_TOKEN, GatewayProxy, StubServer

from gcsemb.demo.job import upload_samples
from gcsemb.embedding.job import embed
from gcsemb.embedding.lease import DestinationBusy, LeaseLost
from gcsemb.embedding.writer import DestinationUnwritable, spill_dir
from gcsemb.errors import AccessDenied, AuthError, BadURL, ModelLoadError, NotFound
from gcsemb.explore.dataset import read_embeddings, read_errors
from gcsemb.model.embedder import TINY_MODEL
from gcsemb.storage import open_store

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def photos(gcs, bucket):
    upload_samples(gcs.filesystem(), bucket, 12)
    return bucket


def private(gcs, monkeypatch, **kw) -> GatewayProxy:
    """A private bucket's front of our own (its requests recorded from the start)."""
    proxy = GatewayProxy(gcs.emulator.url, token=ACCESS_TOKEN, **kw)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
    return proxy


def run(bucket, token, ckpt, dst="emb", **kw):
    return embed(
        f"gs://{bucket}/photos",
        f"gs://{bucket}/{dst}",
        model=TINY_MODEL,
        pretrained=ckpt,
        token=token,
        progress=False,
        **kw,
    )


def test_private_bucket_with_a_service_account_key(
    gcs, photos, key_file, tiny_ckpt, monkeypatch, oauth
):
    with private(gcs, monkeypatch) as proxy:
        summary = run(photos, key_file, tiny_ckpt)
        df, _ = read_embeddings(f"gs://{photos}/emb", token=key_file)
    assert summary.failed == 3 and len(df) == summary.embedded + summary.duplicates
    auth = [
        {k.lower(): v for k, v in h.items()}.get("authorization") for _, _, h, _ in proxy.requests
    ]
    assert auth and set(auth) == {f"Bearer {ACCESS_TOKEN}"}
    assert len(oauth.requests) == 1  # one token for the whole run


@pytest.mark.parametrize(
    ("token", "fragment"),
    [("anon", "not public"), ("other-key", "may not read the dataset at")],
)
def test_denied_stops_at_once_naming_identity(
    gcs, photos, tiny_ckpt, monkeypatch, token, fragment, private_key_pem, tmp_path
):
    if token == "other-key":  # a valid key of another account: its token is refused with 403
        with StubServer(
            lambda r, b: (200, {"access_token": "ya29.other", "expires_in": 3600})
        ) as other:
            token = str(tmp_path / "other.json")
            Path(token).write_text(
                json.dumps(
                    {
                        "type": "service_account",
                        "private_key": private_key_pem,
                        "private_key_id": "1",
                        "client_email": "intruder@elsewhere.iam.gserviceaccount.com",
                        "token_uri": f"{other.url}/token",
                    }
                )
            )
            with private(gcs, monkeypatch), pytest.raises(AccessDenied) as err:
                run(photos, token, tiny_ckpt)
            assert "intruder@elsewhere" in str(err.value)
    else:
        started = time.monotonic()
        with private(gcs, monkeypatch), pytest.raises(AccessDenied) as err:
            run(photos, token, tiny_ckpt)
        assert time.monotonic() - started < 10
    assert fragment in str(err.value) and "Fix" in str(err.value)


def test_expired_or_revoked_key_fails_in_seconds(
    gcs, photos, sa_info, tmp_path, tiny_ckpt, monkeypatch
):
    refused = StubServer(
        lambda r, b: (
            400,
            {"error": "invalid_grant", "error_description": "Invalid JWT Signature."},
        )
    )
    with refused:
        key = tmp_path / "revoked.json"
        key.write_text(json.dumps(dict(sa_info, token_uri=f"{refused.url}/token")))
        started = time.monotonic()
        with private(gcs, monkeypatch), pytest.raises(AuthError) as err:
            run(photos, str(key), tiny_ckpt)
    assert time.monotonic() - started < 10
    message = str(err.value)
    assert "embedder@demo-project" in message and "invalid_grant" in message
    assert "create a new one" in message


def _first_attempt_fails(kind):
    seen: set[tuple[str, str]] = set()

    def fault(n, method, path):
        if (method, path) in seen:
            return None
        seen.add((method, path))
        return kind

    return fault


@pytest.mark.parametrize("kind", [503, 429, "drop"])
def test_transient_faults_change_nothing(gcs, photos, tiny_ckpt, monkeypatch, kind):
    clean = run(photos, None, tiny_ckpt, dst="clean")
    with GatewayProxy(gcs.url, fault=_first_attempt_fails(kind)) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        faulty = run(photos, None, tiny_ckpt, dst="faulty")
        got, got_x = read_embeddings(f"gs://{photos}/faulty")
        errors = read_errors(f"gs://{photos}/faulty")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs.url)
    want, want_x = read_embeddings(f"gs://{photos}/clean")
    kinds = {p.split("?")[0].split("/")[1] for _, p, _ in proxy.faults}
    assert {"storage", "download", "upload"} <= kinds  # listing, reads and writes all hit
    assert (faulty.embedded, faulty.failed) == (clean.embedded, clean.failed)
    assert list(got["uri"]) == list(want["uri"])
    np.testing.assert_allclose(got_x, want_x, atol=1e-6)
    assert set(errors["stage"]) == {"decode"}  # only the broken files, no fetch failures


@pytest.mark.slow
def test_an_object_that_keeps_failing_is_recorded(gcs, photos, tiny_ckpt, monkeypatch):
    def fault(n, method, path):
        return 503 if "alt=media" in path and "chelsea" in path else None

    with GatewayProxy(gcs.url, fault=fault) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        summary = run(photos, None, tiny_ckpt)
        errors = read_errors(f"gs://{photos}/emb")
    fetch = errors[errors["stage"] == "fetch"]
    assert len(fetch) == 1 and "chelsea" in fetch["uri"].iloc[0]
    assert "503" in fetch["error"].iloc[0] and summary.failed == 4


def test_secrets_never_leak(gcs, photos, key_file, sa_info, tiny_ckpt, monkeypatch, caplog, capsys):
    caplog.set_level(logging.DEBUG)
    secrets = [ACCESS_TOKEN, sa_info["private_key"].splitlines()[1], sa_info["private_key_id"]]
    texts = []
    with private(gcs, monkeypatch):
        summary = embed(
            f"gs://{photos}/photos",
            f"gs://{photos}/emb",
            model=TINY_MODEL,
            pretrained=tiny_ckpt,
            token=key_file,
            progress=True,
        )
        texts += [str(summary), repr(summary), summary._repr_html_()]
        from gcsemb.storage import open_store

        for token in (key_file, sa_info, json.dumps(sa_info)):
            store = open_store(f"gs://{photos}", token=token)
            texts += [repr(store), str(store), repr(store.identity), str(store.identity)]
        fs = store.fs
        shard = sorted(fs.glob(f"{photos}/emb/part-*.parquet"))[0]
        texts.append(str(pq.read_schema(io.BytesIO(fs.cat(shard))).metadata))
        texts.append(read_errors(f"gs://{photos}/emb", token=key_file).to_string())
        with pytest.raises(AccessDenied) as err:
            run(photos, "anon", tiny_ckpt)
        texts.append(str(err.value))
    out = capsys.readouterr()
    texts += [out.out, out.err, caplog.text]
    texts += [p.read_text() for p in (ROOT / "notebooks").glob("*.ipynb")]
    for secret in secrets:
        assert not [t for t in texts if secret in t], f"secret leaked: {secret[:10]}..."


def test_bad_arguments_fail_before_any_work(gcs, photos, tiny_ckpt, tmp_path, monkeypatch):
    with GatewayProxy(gcs.url) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        with pytest.raises(NotFound, match="does not exist"):
            embed(
                "gs://no-such-bucket-zz/photos",
                f"gs://{photos}/emb",
                model=TINY_MODEL,
                pretrained=tiny_ckpt,
                progress=False,
            )
        with pytest.raises(BadURL, match="inside the source"):
            embed(
                f"gs://{photos}/photos",
                f"gs://{photos}/photos/emb",
                model=TINY_MODEL,
                pretrained=tiny_ckpt,
                progress=False,
            )
        with pytest.raises(ModelLoadError, match="Did you mean ViT-B-32"):
            embed(
                f"gs://{photos}/photos",
                f"gs://{photos}/emb",
                model="ViT-B-23",
                pretrained=None,
                progress=False,
            )
        broken = tmp_path / "broken.pt"
        broken.write_bytes(b"\x80\x02 not a checkpoint")
        with pytest.raises(ModelLoadError, match="truncated or corrupt"):
            embed(
                f"gs://{photos}/photos",
                f"gs://{photos}/emb",
                model=TINY_MODEL,
                pretrained=str(broken),
                progress=False,
            )
    images = [p for _, p, _, _ in proxy.requests if "alt=media" in p and "_lease" not in p]
    assert not images  # no image fetched
    with GatewayProxy(gcs.url, fault=lambda n, m, p: 403 if "upload" in p else None) as proxy:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        with pytest.raises(AccessDenied, match="may not write"):
            run(photos, None, tiny_ckpt, dst="readonly")
    assert not [p for _, p, _, _ in proxy.requests if "alt=media" in p and "_lease" not in p]


def test_cli_check(gcs, photos, key_file, monkeypatch):
    gcsemb = str(Path(sys.executable).parent / "gcsemb")
    with private(gcs, monkeypatch) as proxy:
        env = {**__import__("os").environ, "STORAGE_EMULATOR_HOST": proxy.url}
        good = subprocess.run(
            [gcsemb, "check", f"gs://{photos}/photos", "--token", key_file],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
        anon = subprocess.run(
            [gcsemb, "check", f"gs://{photos}/photos", "--token", "anon"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    assert good.returncode == 0, good.stderr
    assert "identity: service account embedder@demo-project" in good.stdout
    for action in ("list", "read", "write"):
        assert f"{action}" in good.stdout
    assert good.stdout.count(": yes") == 3
    assert anon.returncode == 1 and "list  gs://" in anon.stdout and ": no: " in anon.stdout
    assert ACCESS_TOKEN not in good.stdout + good.stderr


def test_one_denied_object_is_recorded_and_the_run_goes_on(gcs, photos, tiny_ckpt, monkeypatch):
    # a per-object ACL or a CMEK key the caller may not use: 403 on that object only
    def fault(n, method, path):
        return 403 if "alt=media" in path and "coffee" in path else None

    with private(gcs, monkeypatch, fault=fault):
        first = run(photos, None, tiny_ckpt)
        again = run(photos, None, tiny_ckpt)  # a re-run tries it again, and goes on again
        errors = read_errors(f"gs://{photos}/emb")
        df, _ = read_embeddings(f"gs://{photos}/emb")
    denied = errors[errors["stage"] == "fetch"]
    assert len(denied) == 1 and "coffee" in denied["uri"].iloc[0]
    reason = denied["error"].iloc[0]
    assert "403" in reason and "storage.objects.get" in reason
    assert "embedder@demo-project.iam.gserviceaccount.com" in reason  # who was refused
    assert first.seen == 16  # 12 photos, 3 broken files, 1 copy
    assert first.embedded + first.duplicates == len(df) == 16 - 3 - 1  # 3 broken, 1 denied
    assert (again.embedded, again.failed) == (0, 1)  # the denied one again; nothing lost


def test_a_writer_that_may_not_delete_passes_the_write_check(
    gcs, photos, tiny_ckpt, monkeypatch, caplog
):
    # roles/storage.objectCreator: create objects, never delete them
    with private(gcs, monkeypatch, fault=lambda n, m, p: 403 if m == "DELETE" else None):
        summary = run(photos, None, tiny_ckpt)
    assert summary.embedded > 0
    assert "could not delete" in caplog.text and "_gcsemb-write-check" in caplog.text


def test_errors_readme_notebooks_and_ray_docs_name_the_same_roles():
    import re

    from gcsemb.errors import READ_ROLE, WRITE_ROLE

    docs = [ROOT / "README.md", ROOT / "examples" / "ray_vertex.py"]
    docs += sorted((ROOT / "notebooks").glob("*.ipynb")) + sorted((ROOT / "gcsemb").glob("*.py"))
    named = {}
    for path in docs:
        for role in re.findall(r"roles/storage\.\w+", path.read_text()):
            named.setdefault(role, set()).add(path.name)
    # objectCreator appears only where the docs explain what it lacks
    assert set(named) - {"roles/storage.objectCreator"} == {READ_ROLE, WRITE_ROLE}, named
    assert {"README.md", "ray_vertex.py", "02_embed_on_gpu.ipynb"} <= named[WRITE_ROLE]


# ------------------------------------------------------------------------ outages, leases, Ctrl-C

ROWS = 13  # the photos fixture: 12 photos and 1 exact copy embedded, 3 broken files failed


def _shard_upload(method: str, path: str, body: bytes) -> bool:
    return method == "POST" and "/upload/" in path and b"part-" in body


def _rows(gcs, bucket, dst="emb") -> pd.DataFrame:
    """Every row of every shard in DST, as written (no de-duplication by gcsemb)."""
    fs = gcs.filesystem()
    tables = [
        pq.read_table(io.BytesIO(fs.cat_file(p)))
        for p in sorted(fs.glob(f"{bucket}/{dst}/part-*.parquet"))
    ]
    return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(columns=["uri"])


def _kept(bucket) -> list[Path]:
    """The row files kept locally for gs://BUCKET/emb at the endpoint in use now."""
    return sorted(spill_dir(open_store(f"gs://{bucket}/emb")).glob("part-*.parquet"))


@pytest.mark.slow
def test_an_upload_outage_right_after_the_write_check_loses_no_row(
    gcs, photos, tiny_ckpt, monkeypatch, caplog
):
    # the write check passes; then every upload, the lease's claim first, answers 503 for 40 s:
    # longer than gcsfs's own half-minute of retries
    outage: dict[str, float] = {}

    def fault(n, method, path, body):
        if method != "POST" or "/upload/" not in path or b"gcsemb checks that it" in body:
            return None  # the write check's probe passes
        return 503 if time.monotonic() - outage.setdefault("start", time.monotonic()) < 40 else None

    with private(gcs, monkeypatch, fault=fault) as proxy:
        summary = run(photos, None, tiny_ckpt)
    rows = _rows(gcs, photos)
    assert summary.embedded + summary.duplicates == len(rows) == ROWS and rows["uri"].is_unique
    assert any("_lease" in p for _, p, code in proxy.faults)  # the claim itself was refused
    assert "Could not take the lease" in caplog.text and "trying again" in caplog.text


def test_ctrl_c_while_a_shard_write_is_retried_keeps_every_row(
    gcs, photos, tiny_ckpt, monkeypatch, caplog
):
    down = threading.Event()
    down.set()

    def fault(n, method, path, body):
        if down.is_set() and _shard_upload(method, path, body):
            if not proxy.faults:  # the user presses Ctrl-C while gcsemb retries the shard
                os.kill(os.getpid(), signal.SIGINT)
            return 503
        return None

    with private(gcs, monkeypatch, fault=fault) as proxy:
        with pytest.raises(KeyboardInterrupt):
            run(photos, None, tiny_ckpt)
        kept = _kept(photos)
        assert _rows(gcs, photos).empty  # nothing reached DST...
        assert sum(pq.read_metadata(p).num_rows for p in kept) == ROWS  # ...all kept here
        assert str(kept[0].parent) in caplog.text  # and the warning said where
        down.clear()
        again = run(photos, None, tiny_ckpt)  # the same DST, once it takes writes again
    rows = _rows(gcs, photos)
    assert len(rows) == ROWS and rows["uri"].is_unique  # every row exactly once
    assert again.embedded == 0 and not _kept(photos)  # uploaded, not embedded again


def test_no_shard_is_written_after_the_claim_is_deleted(gcs, photos, tiny_ckpt, monkeypatch):
    fs = gcs.filesystem()
    late: list[str] = []  # shard uploads sent after the claim went
    deleted = threading.Event()

    def fault(n, method, path, body):
        if _shard_upload(method, path, body):
            if deleted.is_set():
                late.append(path)
            else:  # while the first shard is written, the claim is deleted (by hand, or taken)
                for claim in fs.ls(f"{photos}/emb/_lease", refresh=True):
                    fs.rm_file(claim)
                deleted.set()
        return None

    with private(gcs, monkeypatch, fault=fault):
        with pytest.raises(LeaseLost) as lost:
            run(photos, None, tiny_ckpt, rows_per_shard=4, batch_size=2)
        kept = list(spill_dir(open_store(f"gs://{photos}/emb")).rglob("*.parquet"))
        assert deleted.is_set() and late == []  # the run stopped writing at once
        assert len(_rows(gcs, photos)) == 4  # the shard that was on its way when it went
        assert "its claim was deleted" in str(lost.value) and "are kept in" in str(lost.value)
        assert kept  # what was pending (here the failures of that batch) is kept locally
        run(photos, None, tiny_ckpt)  # once the other run is done: the rest, nothing twice
    rows = _rows(gcs, photos)
    assert len(rows) == ROWS and rows["uri"].is_unique


def _refuse_shards(armed: threading.Event):
    def fault(n, method, path, body):
        return 403 if armed.is_set() and _shard_upload(method, path, body) else None

    return fault


def test_a_damaged_spill_file_does_not_lock_dst(gcs, photos, tiny_ckpt, monkeypatch, caplog):
    refuse = threading.Event()
    refuse.set()
    with private(gcs, monkeypatch, fault=_refuse_shards(refuse)):
        with pytest.raises(DestinationUnwritable):  # the identity may not write shards
            run(photos, None, tiny_ckpt, rows_per_shard=4, batch_size=2)
        (damaged,) = _kept(photos)
        damaged.write_bytes(damaged.read_bytes()[:100])  # a disk that filled up, a bad sector
        refuse.clear()
        with caplog.at_level(logging.WARNING, logger="gcsemb.embedding.writer"):
            again = run(photos, None, tiny_ckpt)
        assert not _kept(photos) and damaged.with_name(f"{damaged.name}.damaged").exists()
        assert run(photos, None, tiny_ckpt).embedded == 0  # not busy: nothing left to do
    assert str(damaged) in caplog.text and "Moved it aside" in caplog.text
    rows = _rows(gcs, photos)
    assert len(rows) == ROWS and rows["uri"].is_unique  # its images were embedded again
    assert again.embedded + again.duplicates == ROWS


def test_a_run_whose_preamble_fails_gives_the_lease_back(gcs, photos, tiny_ckpt, monkeypatch):
    refuse = threading.Event()
    refuse.set()
    with private(gcs, monkeypatch, fault=_refuse_shards(refuse)):
        with pytest.raises(DestinationUnwritable):
            run(photos, None, tiny_ckpt, rows_per_shard=4, batch_size=2)
        with pytest.raises(DestinationUnwritable, match="still refuses them"):
            run(photos, None, tiny_ckpt)  # the kept rows cannot be uploaded yet
        refuse.clear()
        try:
            run(photos, None, tiny_ckpt)  # the next run is not kept waiting by the last one
        except DestinationBusy as e:
            pytest.fail(f"a failed run kept DST's lease: {e}")
    rows = _rows(gcs, photos)
    assert len(rows) == ROWS and rows["uri"].is_unique


def test_an_emulator_dst_and_google_dst_of_one_url_spill_apart(gcs, key_file, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    google = open_store("gs://same-name/emb", token=key_file)
    emulated = open_store("gs://same-name/emb", token=key_file, endpoint=gcs.url)
    again = open_store("gs://same-name/emb/", token=key_file, endpoint=gcs.url)
    assert google.endpoint is None and emulated.endpoint == gcs.url
    assert spill_dir(google) != spill_dir(emulated) == spill_dir(again)
