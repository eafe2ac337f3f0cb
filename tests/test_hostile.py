"""Hostile objects, outages and untrusted datasets: bounded memory, no computed row lost.

Each test runs the whole job against the private-bucket front (tests/conftest.py), with a fault
proxy where storage must misbehave.
"""

from __future__ import annotations

import contextlib
import io
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from servers import ACCESS_TOKEN, GatewayProxy

from gcsemb.demo.job import upload_samples
from gcsemb.embedding.job import embed
from gcsemb.embedding.writer import DestinationUnwritable, spill_dir
from gcsemb.explore.dataset import read_embeddings, read_errors
from gcsemb.model.embedder import TINY_MODEL
from gcsemb.storage import open_store


@pytest.fixture
def photos(gcs, bucket):
    """12 photos, 3 broken files and 1 copy under gs://BUCKET/photos (16 objects)."""
    upload_samples(gcs.filesystem(), bucket, 12)
    return bucket


def run(bucket, ckpt, dst="emb", **kw):
    return embed(
        f"gs://{bucket}/photos",
        f"gs://{bucket}/{dst}",
        model=TINY_MODEL,
        pretrained=ckpt,
        progress=False,
        **kw,
    )


@contextlib.contextmanager
def front(gcs, monkeypatch, fault) -> Iterator[GatewayProxy]:
    """Our own private-bucket front with a fault injector, reached as the default one is."""
    with (
        GatewayProxy(gcs.emulator.url, token=ACCESS_TOKEN, fault=fault) as proxy,
        monkeypatch.context() as mp,
    ):
        mp.setenv("STORAGE_EMULATOR_HOST", proxy.url)
        yield proxy


def _raw_rows(gcs, bucket, dst="emb") -> pd.DataFrame:
    """Every row of every shard, as written (no de-duplication by gcsemb)."""
    fs = gcs.filesystem()
    tables = [
        pq.read_table(io.BytesIO(fs.cat_file(p)))
        for p in sorted(fs.glob(f"{bucket}/{dst}/part-*.parquet"))
    ]
    return pa.concat_tables(tables).to_pandas() if tables else pd.DataFrame(columns=["uri"])


# ------------------------------------------------------------------------ bounded memory


def test_an_object_too_large_is_recorded_and_never_downloaded(gcs, photos, tiny_ckpt, monkeypatch):
    big = b"\xff\xd8\xff" + b"\0" * (3 * 2**20)  # 3 MiB named .jpg
    gcs.filesystem().pipe_file(f"{photos}/photos/huge/scan.jpg", big)
    with front(gcs, monkeypatch, None) as proxy:
        summary = run(photos, tiny_ckpt, max_object_bytes=2 * 2**20)
        errors = read_errors(f"gs://{photos}/emb")
    too_large = errors[errors["uri"].str.endswith("scan.jpg")]
    assert len(too_large) == 1 and too_large["stage"].iloc[0] == "plan"
    assert "too large: 3 MiB exceeds the 2 MiB limit" in too_large["error"].iloc[0]
    assert not [p for _, p, _, _ in proxy.requests if "scan.jpg" in p and "alt=media" in p]
    assert summary.failed == 4  # the 3 broken files and the oversized one


# ------------------------------------------------------------------------ no row lost


@pytest.mark.slow
def test_an_upload_outage_longer_than_gcsfs_retries_loses_no_row(
    gcs, photos, tiny_ckpt, monkeypatch, caplog
):
    # every shard upload answers 503 for 40 s: gcsfs gives up after ~30 s, gcsemb keeps trying
    outage: dict[str, float] = {}

    def fault(n, method, path, body):
        if method == "POST" and "/upload/" in path and b"part-" in body:  # shards only
            first = outage.setdefault("start", time.monotonic())
            if time.monotonic() - first < 40:
                return 503
        return None

    with front(gcs, monkeypatch, fault):
        summary = run(photos, tiny_ckpt)
    rows = _raw_rows(gcs, photos)
    assert summary.embedded + summary.duplicates == len(rows) == 13
    assert rows["uri"].is_unique
    assert "trying again" in caplog.text  # the writer said why it waited
    assert not list(spill_dir(open_store(f"gs://{photos}/emb")).rglob("*.parquet"))


def test_rows_dst_refuses_are_kept_and_uploaded_first_by_the_next_run(
    gcs, photos, tiny_ckpt, monkeypatch
):
    # the write check passes, then the identity loses its write permission mid-run
    refused = [True]

    def fault(n, method, path, body):
        if refused[0] and method == "POST" and "/upload/" in path and b"part-" in body:  # shards
            return 403
        return None

    with front(gcs, monkeypatch, fault):  # one endpoint: rows are kept per URL and endpoint
        with pytest.raises(DestinationUnwritable) as err:
            run(photos, tiny_ckpt, rows_per_shard=4)
        message = str(err.value)
        kept = spill_dir(open_store(f"gs://{photos}/emb"))
        assert "embedded rows of this run are kept in" in message and str(kept) in message
        assert "uploads them first" in message
        assert list(kept.rglob("*.parquet")) and _raw_rows(gcs, photos).empty
        refused[0] = False
        again = run(photos, tiny_ckpt)  # permission restored
    rows = _raw_rows(gcs, photos)
    assert len(rows) == 13 and rows["uri"].is_unique  # every image once: nothing lost or doubled
    assert again.embedded + again.duplicates + again.skipped >= 13
    assert not list(kept.rglob("*.parquet"))


# ------------------------------------------------------------------------ one writer at a time


def test_two_concurrent_runs_write_each_image_once(gcs, photos, tiny_ckpt, tmp_path):
    gcsemb = str(Path(sys.executable).parent / "gcsemb")
    args = [
        gcsemb, "embed", f"gs://{photos}/photos", f"gs://{photos}/emb", "--model", TINY_MODEL,
        "--pretrained", tiny_ckpt, "--no-progress", "--rows-per-shard", "2", "--batch-size", "2",
    ]  # fmt: skip
    runs = [
        subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outs = [(p.wait(timeout=300), *p.communicate()) for p in runs]
    codes = sorted(code for code, _, _ in outs)
    rows = _raw_rows(gcs, photos)
    assert len(rows) == 13 and rows["uri"].is_unique  # exactly one row per image (1 copy)
    if codes == [0, 1]:  # the second refused at once, naming the holder
        refused = next(err for code, _, err in outs if code == 1)
        assert "being written by run" in refused or "is writing to" in refused, refused
        assert "--wait" in refused
    else:  # or it came second and found everything done
        assert codes == [0, 0]


# ------------------------------------------------------------------------ the failure ledger


def test_environmental_failures_are_retried_and_the_ledger_stays_true(
    gcs, photos, tiny_ckpt, monkeypatch
):
    def fault(n, method, path):  # one image cannot be fetched on the first run
        return 503 if "alt=media" in path and "coffee" in path else None

    with front(gcs, monkeypatch, fault):
        first = run(photos, tiny_ckpt)
    errors = read_errors(f"gs://{photos}/emb")
    fetch_failed = errors[errors["stage"] == "fetch"]
    assert len(fetch_failed) == 1 and fetch_failed["environmental"].iloc[0]
    decode_failed = errors[errors["stage"] == "decode"]
    assert len(decode_failed) == 3 and not decode_failed["environmental"].any()
    assert all("Pillow" in json.loads(d) for d in decode_failed["decoders"])
    second = run(photos, tiny_ckpt)  # storage works again
    assert (second.embedded, second.failed) == (1, 0)  # the fetch failure, not the broken files
    assert first.failed == 4
    after = read_errors(f"gs://{photos}/emb")
    assert set(after["stage"]) == {"decode"} and len(after) == 3  # only images with no row
    third = run(photos, tiny_ckpt, retry_failed=True)
    assert (third.embedded, third.failed) == (0, 3)  # every recorded failure tried again


# ------------------------------------------------------------------------ damaged DST files


def test_a_corrupt_or_foreign_file_in_dst_is_skipped_with_a_warning(gcs, photos, tiny_ckpt, caplog):
    run(photos, tiny_ckpt)
    fs = gcs.filesystem()
    fs.pipe_file(f"{photos}/emb/part-20990101-000000-broken-00000.parquet", b"PAR1 garbage PAR1")
    buf = io.BytesIO()
    pq.write_table(pa.table({"name": ["a"], "value": [1]}), buf)  # another tool's parquet
    fs.pipe_file(f"{photos}/emb/other-tool.parquet", buf.getvalue())
    again = run(photos, tiny_ckpt)
    df, matrix = read_embeddings(f"gs://{photos}/emb")
    assert again.embedded == 0 and again.skipped == 16  # nothing redone because of them
    assert len(df) == len(matrix) == 13
    assert "part-20990101-000000-broken-00000.parquet" in caplog.text
    assert "other-tool.parquet" in caplog.text and "not a gcsemb shard" in caplog.text


@pytest.mark.parametrize("checksum", ["crc32c", "md5"])
def test_a_download_that_does_not_match_the_listing_is_recorded(tmp_path, checksum):
    from gcsemb.embedding.stages import Item, fetch
    from gcsemb.storage import ObjectInfo

    (tmp_path / "a.jpg").write_bytes(b"the bytes that arrived")
    store = open_store(str(tmp_path))
    listed = {checksum: "AAAAAA==" if checksum == "crc32c" else "1B2M2Y8AsgTpgAmY7PhCfg=="}
    good = ObjectInfo(store.uri(str(tmp_path / "a.jpg")), 22)
    bad = ObjectInfo(store.uri(str(tmp_path / "a.jpg")), 22, **listed)
    items = fetch(store, [Item(good), Item(bad)])
    assert items[0].data == b"the bytes that arrived" and items[0].md5  # computed, none listed
    assert items[1].data is None and "checksum does not match" in items[1].failure.error
    assert items[1].failure.environmental  # the next run fetches it again


def test_failed_fetches_give_their_memory_budget_back(tmp_path):
    # every failed fetch must free what it held, or a run with many failures would stall
    from gcsemb.embedding.stages import Item, fetch
    from gcsemb.images.decode import PixelBudget
    from gcsemb.storage import ObjectInfo

    (tmp_path / "ok.jpg").write_bytes(b"x" * 100)
    store = open_store(str(tmp_path))
    budget = PixelBudget(1000)
    missing = [ObjectInfo(store.uri(str(tmp_path / f"gone{i}.jpg")), 400) for i in range(5)]
    for obj in missing:  # 5 x 400 bytes against a 1000-byte budget: each must come back
        (item,) = fetch(store, [Item(obj)], budget)
        assert item.failure is not None and item.failure.stage == "fetch"
    (ok,) = fetch(store, [Item(ObjectInfo(store.uri(str(tmp_path / "ok.jpg")), 100))], budget)
    assert ok.data == b"x" * 100 and budget.in_use == 100  # only the fetched bytes are held
