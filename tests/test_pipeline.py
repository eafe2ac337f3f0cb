"""The main job end to end on the emulator: rows, schema, re-runs, kills, duplicates, failures."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import objstore
import pandas as pd
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
from gcsfs.core import GCSFileSystem
from servers import StubServer, deny

from gcsemb.demo.job import upload_samples
from gcsemb.embedding.job import embed
from gcsemb.errors import AccessDenied
from gcsemb.explore.dataset import read_embeddings, read_errors
from gcsemb.images.decode import decode_image
from gcsemb.model.embedder import TINY_MODEL, load_embedder
from gcsemb.storage import list_images

COLUMNS = ["uri", "md5", "size", "generation", "updated", "width", "height", "model", "embedding"]


@pytest.fixture
def photos(gcs, bucket):
    """30 sample photos, 3 broken files and one exact copy under gs://BUCKET/photos."""
    count = upload_samples(gcs.filesystem(), bucket, 30)
    return f"gs://{bucket}/photos", count


def run(src, dst, ckpt, **kw):
    return embed(src, dst, model=TINY_MODEL, pretrained=ckpt, progress=False, **kw)


def test_rows_schema_and_failures(photos, bucket, tiny_ckpt, gcs):
    src, count = photos
    dst = f"gs://{bucket}/emb"
    summary = run(src, dst, tiny_ckpt)
    assert (summary.seen, summary.embedded, summary.duplicates, summary.failed) == (
        count,
        count - 4,
        1,
        3,
    )
    df = pd.read_parquet(dst, storage_options={"token": gcs.key_file})  # a user's plain read
    assert list(df.columns) == COLUMNS
    assert len(df) == count - 3 and df["uri"].is_unique
    listed = {o.uri for o in list_images(src)}
    assert set(df["uri"]) == listed - {u for u in listed if "/broken/" in u}
    matrix = np.stack(df["embedding"].to_numpy())
    assert matrix.dtype == np.float32 and matrix.shape[1] == 64
    np.testing.assert_allclose(np.linalg.norm(matrix, axis=1), 1, atol=1e-5)
    assert (df["model"] == summary.model).all() and summary.model.startswith("tiny-clip/")
    fs = GCSFileSystem(endpoint_url=os.environ["STORAGE_EMULATOR_HOST"])  # gcsfs's own ADC
    shard = sorted(fs.glob(f"{bucket}/emb/part-*.parquet"))[0]
    meta = pq.read_schema(io.BytesIO(fs.cat(shard))).metadata
    assert meta[b"gcsemb.model"].decode() == summary.model and meta[b"gcsemb.dim"] == b"64"
    assert pads.dataset(f"{bucket}/emb", filesystem=fs).count_rows() == count - 3
    errors = read_errors(dst)
    assert sorted(errors["uri"].str.rsplit("/", n=1).str[1]) == [
        "empty.png",
        "not-an-image.jpg",
        "truncated.jpg",
    ]
    assert set(errors["stage"]) == {"decode"} and errors["error"].str.len().min() > 5


def test_embeddings_match_the_model_on_the_same_image(photos, bucket, tiny_ckpt, gcs):
    src, _ = photos
    run(src, f"gs://{bucket}/emb", tiny_ckpt)
    df, matrix = read_embeddings(f"gs://{bucket}/emb")
    embedder = load_embedder(TINY_MODEL, tiny_ckpt)
    fs = gcs.filesystem()
    for i in df.index[df["uri"].str.endswith(".png")][:3]:
        decoded = decode_image(fs.cat(df.at[i, "uri"]))
        assert (df.at[i, "width"], df.at[i, "height"]) == (decoded.width, decoded.height)
        reference = embedder.embed_images([decoded.image])[0]
        assert float(matrix[i] @ reference) >= 0.999


def test_rerun_embeds_only_new_or_changed(photos, bucket, tiny_ckpt, gcs):
    src, count = photos
    dst = f"gs://{bucket}/emb"
    run(src, dst, tiny_ckpt)
    fs = gcs.filesystem()
    shards = fs.ls(f"{bucket}/emb")
    again = run(src, dst, tiny_ckpt)
    assert (again.embedded, again.failed, again.skipped) == (0, 0, count)
    assert fs.ls(f"{bucket}/emb", refresh=True) == shards  # nothing written
    first = sorted(fs.glob(f"{bucket}/photos/astronaut/*"))[0]
    chelsea = sorted(fs.glob(f"{bucket}/photos/chelsea/*"))[0]
    fs.pipe(f"{bucket}/photos/new/one.jpg", fs.cat(chelsea))
    fs.pipe(first, fs.cat(chelsea))  # an image replaced by other bytes
    third = run(src, dst, tiny_ckpt)
    assert third.embedded + third.duplicates == 2 and third.skipped == count - 1
    df, _ = read_embeddings(dst)
    assert df["uri"].is_unique and len(df) == count - 3 + 1
    row = df.set_index("uri").loc[f"gs://{first}"]
    assert row["md5"] == fs.info(first)["md5Hash"]


def test_identical_bytes_are_fetched_once(photos, bucket, tiny_ckpt, monkeypatch):
    src, _ = photos
    fetched = []
    real = GCSFileSystem._cat_file

    async def counting(self, path, *args, **kwargs):
        fetched.append(path)
        return await real(self, path, *args, **kwargs)

    monkeypatch.setattr(GCSFileSystem, "_cat_file", counting)
    summary = run(src, f"gs://{bucket}/emb", tiny_ckpt)
    assert summary.duplicates == 1
    assert not [p for p in fetched if "copies/" in p]
    df, matrix = read_embeddings(f"gs://{bucket}/emb")
    copy = df.index[df["uri"].str.contains("copies/")][0]
    twin = df.index[(df["md5"] == df.at[copy, "md5"]) & (df.index != copy)][0]
    np.testing.assert_array_equal(matrix[copy], matrix[twin])


@pytest.mark.parametrize("kind", ["local", "objstore"])
def test_killed_run_resumes_exactly_once(kind, tmp_path, tiny_ckpt):
    """Also through the test backend (tests/objstore.py): the writer needs only a Store."""
    from gcsemb.demo.samples import sample_images

    src, dst = tmp_path / "photos", tmp_path / "emb"
    dst_url = f"{objstore.SCHEME}://{dst}" if kind == "objstore" else str(dst)
    for name, data in sample_images(120):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    code = (
        f"import sys; sys.path.insert(0, {os.path.dirname(__file__)!r}); import objstore\n"
        "from gcsemb.embedding.job import embed\n"
        f"embed({str(src)!r}, {dst_url!r}, model={TINY_MODEL!r}, pretrained={tiny_ckpt!r}, "
        "progress=False, batch_size=4, rows_per_shard=4, decode_workers=1)\n"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and len(list(dst.glob("part-*.parquet"))) < 3:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    written = len(pd.read_parquet(dst)) if list(dst.glob("part-*.parquet")) else 0
    assert 0 < written < 120, "the kill should land mid-run"
    (claim,) = [json.loads(p.read_text()) for p in dst.glob("_lease/*.json")]
    shards = [p.name for p in dst.glob("part-*.parquet")]
    assert all(name.startswith(f"part-{claim['run']}-") for name in shards), (claim, shards)
    summary = run(str(src), dst_url, tiny_ckpt)
    assert summary.skipped == written and summary.embedded + summary.duplicates == 120 - written
    raw = pd.read_parquet(dst)  # every shard, no de-duplication by us
    assert len(raw) == 120 and raw["uri"].is_unique
    assert not list(dst.glob(".*"))  # no half-written temporary left visible


def test_local_folder_to_local_folder_and_duckdb(tmp_path, tiny_ckpt):
    import duckdb

    from gcsemb.demo.samples import sample_images

    src = tmp_path / "my photos"
    for name, data in sample_images(12):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    (src / "notes.txt").write_text("not an image")
    summary = run(str(src), str(tmp_path / "emb"), tiny_ckpt)
    assert summary.embedded + summary.duplicates == 12 and summary.failed == 0
    df = pd.read_parquet(tmp_path / "emb")
    assert df["uri"].str.startswith("file://").all() and df["md5"].notna().all()
    n, dim = duckdb.sql(
        f"SELECT count(*), max(len(embedding)) FROM '{tmp_path / 'emb'}/*.parquet'"
    ).fetchall()[0]
    assert (n, dim) == (12, 64)
    assert run(str(src), str(tmp_path / "emb"), tiny_ckpt).skipped == 12
    changed = next(src.rglob("*.jpg"))
    os.utime(changed, (time.time(), changed.stat().st_mtime + 60))  # edited: a newer mtime
    again = run(str(src), str(tmp_path / "emb"), tiny_ckpt)
    assert (again.embedded, again.skipped) == (1, 11)


def test_denied_source_stops_at_once(tiny_ckpt, monkeypatch, tmp_path):
    with StubServer(deny(403)) as server:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
        started = time.monotonic()
        with pytest.raises(AccessDenied, match="may not list"):
            run("gs://private/photos", str(tmp_path / "emb"), tiny_ckpt)
        assert time.monotonic() - started < 30


def test_cli_embed_and_nothing_to_do_loads_no_model(photos, bucket, tiny_ckpt):
    src, count = photos
    dst = f"gs://{bucket}/emb"
    gcsemb = str(Path(sys.executable).parent / "gcsemb")
    args = [
        gcsemb,
        "embed",
        src,
        dst,
        "--model",
        TINY_MODEL,
        "--pretrained",
        tiny_ckpt,
        "--no-progress",
    ]
    out = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert f"{count} images seen" in out.stdout and f"{count - 4} embedded" in out.stdout
    code = (
        "import sys; from gcsemb.embedding.job import embed; "
        f"s = embed({src!r}, {dst!r}, model={TINY_MODEL!r}, pretrained={tiny_ckpt!r}, "
        "progress=False); print(s.skipped, 'torch' in sys.modules)"
    )
    again = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert again.stdout.split() == [str(count), "False"], again.stderr


@pytest.mark.parametrize(
    ("busy", "idle", "threads"),
    [
        (0.015, 0.06, 1),  # a small model waits for decoding: its threads go to the decoders
        (1.6, 0.0, 2),  # the model is the bottleneck: it keeps every thread
        (1.6, 0.05, 2),  # a short hiccup in a big model's stream changes nothing
        (0.05, 0.008, 2),  # waits, but with one thread it would be the bottleneck: all back
    ],
)
def test_thread_tuner_gives_torch_only_the_threads_the_model_needs(busy, idle, threads):
    torch = pytest.importorskip("torch")
    from gcsemb.embedding.tuner import ThreadTuner

    now = [0.0]
    saved = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        tuner = ThreadTuner(enabled=True, clock=lambda: now[0])
        for _ in range(20):
            now[0] += idle + busy  # waited for the batch, then embedded it
            tuner.step(busy)
        assert tuner.settled
        assert torch.get_num_threads() == tuner.threads == threads
        tuner.restore()
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(saved)


def test_progress_bar_shows_a_total_and_counts_what_was_done_before(
    photos, bucket, tiny_ckpt, capsys
):
    src, count = photos
    dst = f"gs://{bucket}/progress"
    embed(src, dst, model=TINY_MODEL, pretrained=tiny_ckpt, limit=10)
    first = capsys.readouterr().err
    assert "100%" in first and "10/10" in first
    embed(src, dst, model=TINY_MODEL, pretrained=tiny_ckpt)
    again = capsys.readouterr().err
    assert f"{count}/{count}" in again and "skipped=10" in again


def test_every_object_name_is_fetched_literally(gcs, bucket, tiny_ckpt):
    from test_storage import ODD_NAMES

    from gcsemb.demo.samples import sample_images

    photos = [data for _, data in sample_images(len(ODD_NAMES))]
    gcs.filesystem().pipe(
        {f"{bucket}/odd/{name}": data for name, data in zip(ODD_NAMES, photos, strict=True)}
    )
    summary = run(f"gs://{bucket}/odd", f"gs://{bucket}/emb", tiny_ckpt)
    df, matrix = read_embeddings(f"gs://{bucket}/emb")
    assert summary.failed == 0 and len(read_errors(f"gs://{bucket}/emb")) == 0
    assert sorted(df["uri"]) == sorted(f"gs://{bucket}/odd/{n}" for n in ODD_NAMES)
    # each row holds its own object's bytes: 'b?.jpg' is not 'bX.jpg', 'photo[1]' not 'photo1'
    embedder = load_embedder(TINY_MODEL, tiny_ckpt)
    size = embedder.image_size
    want = embedder.embed_images([decode_image(p, min_side=size).image for p in photos])
    by_uri = dict(zip(df["uri"], matrix, strict=True))
    got = np.stack([by_uri[f"gs://{bucket}/odd/{name}"] for name in ODD_NAMES])
    assert list((got @ want.T).argmax(axis=1)) == list(range(len(ODD_NAMES)))
    np.testing.assert_allclose(np.einsum("ij,ij->i", got, want), 1, atol=1e-4)


@pytest.mark.parametrize("frozen_by_the_user", [False, True])
def test_a_run_hands_the_garbage_collector_back_as_it_found_it(
    tmp_path, tiny_ckpt, frozen_by_the_user
):
    """Objects older than a run sit out its collections (a full one walks the whole kernel while
    holding the GIL); afterwards they are collectable again, and a user's own freeze stands."""
    import gc

    from gcsemb.demo.samples import sample_images

    src = tmp_path / "src"
    for name, data in sample_images(4):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        (src / name).write_bytes(data)
    during: list[int] = []

    def watch(phase: str, info: dict) -> None:
        if phase == "start" and not any(during):  # (counting the frozen objects walks them all)
            during.append(gc.get_freeze_count())

    if frozen_by_the_user:
        gc.freeze()
    thresholds = gc.get_threshold()
    gc.set_threshold(100, 1000, 1000)  # young collections while the run lasts, for certain
    gc.callbacks.append(watch)
    try:
        summary = run(str(src), str(tmp_path / "dst"), tiny_ckpt)
    finally:
        gc.callbacks.remove(watch)
        gc.set_threshold(*thresholds)
        after = gc.get_freeze_count()
        gc.unfreeze()
    assert summary.embedded + summary.duplicates == 4
    assert max(during) > 0  # collections during the run skipped the older objects
    assert (after > 0) == frozen_by_the_user  # ours undone, the user's kept


@pytest.mark.parametrize(
    ("fetch_batch", "sizes", "groups"),
    [
        (32, [10] * 40, [1, 2, 4, 8, 16, 9]),  # decoding starts after one object, not 32
        (4, [10] * 12, [1, 2, 4, 4, 1]),
        (32, [20 * 2**20] * 4, [1, 1, 1, 1]),  # 32 MiB per group at most, big ones alone
    ],
)
def test_the_first_fetch_groups_are_small_so_decoding_starts_at_once(fetch_batch, sizes, groups):
    from gcsemb.embedding.stages import Item, fetch_groups
    from gcsemb.storage import ObjectInfo

    items = [Item(ObjectInfo(f"gs://b/{i}.jpg", size)) for i, size in enumerate(sizes)]
    assert [len(group) for group in fetch_groups(items, fetch_batch)] == groups
