"""The lean read, the footer check, the index kept beside a dataset, and near-duplicate groups."""

from __future__ import annotations

import logging
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import gcsemb
from gcsemb.explore.dataset import schema
from gcsemb.explore.index import index_url

MODEL = "tiny/test"
DIM = 16


def write_shard(folder, name, x, first=0, md5=None, updated=0, model=MODEL):
    """A shard in gcsemb's own format with the rows ``x``."""
    n = len(x)
    table = pa.table(
        {
            "uri": [f"gs://b/p/{first + i:05d}.jpg" for i in range(n)],
            "md5": md5 or [f"m{first + i}" for i in range(n)],
            "size": pa.array(np.full(n, 1000 + first, np.int64)),
            "generation": pa.array(np.arange(n, dtype=np.int64)),
            "updated": pa.array(np.full(n, updated, np.int64), pa.timestamp("us", "UTC")),
            "width": pa.array(np.full(n, 100, np.int32)),
            "height": pa.array(np.full(n, 100, np.int32)),
            "model": [model] * n,
            "embedding": pa.array(list(x.astype(np.float32)), pa.list_(pa.float32())),
        },
        schema=schema(model, DIM),
    )
    pq.write_table(table, folder / f"part-{name}.parquet", compression="zstd")


def unit(rng, n):
    x = rng.standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def dst(tmp_path, monkeypatch):
    monkeypatch.setenv("GCSEMB_CACHE", str(tmp_path / "cache"))
    rng = np.random.default_rng(0)
    folder = tmp_path / "emb"
    folder.mkdir()
    x = unit(rng, 600)
    x[10] = x[5]  # an exact copy
    x[20] = x[7] + 0.01 * rng.standard_normal(DIM)  # a near copy
    x[20] /= np.linalg.norm(x[20])
    write_shard(folder, "a", x[:300])
    write_shard(folder, "b", x[300:], first=300)
    return folder, x


def test_lean_read_matrix_and_no_embedding_column(dst):
    folder, x = dst
    df, matrix = gcsemb.read_embeddings(str(folder))
    assert "embedding" not in df and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix, x)
    half = gcsemb.read_embeddings(str(folder), dtype=np.float16)[1]
    assert half.dtype == np.float16 and np.abs(half - x).max() < 1e-3
    with_column = gcsemb.read_embeddings(str(folder), with_embeddings=True)[0]
    np.testing.assert_array_equal(np.stack(with_column["embedding"]), x)
    streamed = list(gcsemb.iter_embeddings(str(folder)))
    assert [len(r) for r, _ in streamed] == [300, 300]
    np.testing.assert_array_equal(np.concatenate([m for _, m in streamed]), x)


def test_newest_version_kept(dst):
    folder, x = dst
    write_shard(folder, "c", x[:1][::-1] * -1, updated=10)  # image 0 re-embedded later
    df, matrix = gcsemb.read_embeddings(str(folder))
    assert len(df) == 600
    np.testing.assert_array_equal(matrix[df.uri == "gs://b/p/00000.jpg"][0], -x[0])


@pytest.mark.parametrize("seed", range(4))
def test_the_newest_row_of_each_uri_is_chosen_as_pandas_would(seed):
    """Re-embedded images: ties keep the later row and a row with no date counts as newest."""
    from gcsemb.explore.shards import _newest

    rng = np.random.default_rng(seed)
    n = 500
    updated = rng.integers(0, 5, n).astype(object)
    updated[rng.random(n) < 0.1] = None
    table = pa.table(
        {
            "uri": [f"u{i}" for i in rng.integers(0, 120, n)],
            "updated": pa.array(updated, pa.timestamp("us", "UTC")),
        }
    )
    df = table.to_pandas()
    expected = df.sort_values("updated", kind="stable").drop_duplicates("uri", keep="last")
    assert _newest(table).tolist() == sorted(expected.index)


def test_only_the_chosen_models_shards_are_read_past_the_first_few(tmp_path, monkeypatch):
    from gcsemb.explore import shards

    folder = tmp_path / "emb"
    folder.mkdir()
    for i in range(12):
        write_shard(folder, f"a{i:02d}", unit(np.random.default_rng(i), 10), first=10 * i)
        x = unit(np.random.default_rng(50 + i), 10)
        write_shard(folder, f"b{i:02d}", x, first=10 * i, model="other/model")
    read = []
    original = shards._shard_flat
    monkeypatch.setattr(
        shards, "_shard_flat", lambda s, p, **k: read.append(p) or original(s, p, **k)
    )
    with pytest.raises(ValueError, match="several models"):
        gcsemb.read_embeddings(str(folder))
    read.clear()
    df, matrix = gcsemb.read_embeddings(str(folder), model_tag="other/model")
    assert len(df) == len(matrix) == 120 and (df.model == "other/model").all()
    # the first shards are read while the rows are decided; after that, only the model's
    assert sum("part-a" in p for p in read) <= 9
    assert sum("part-b" in p for p in read) == 12


def test_each_damaged_or_foreign_shard_is_named_once(dst, caplog):
    """Shards are read ahead while the rows are decided; a skip is still said once, not twice."""
    folder, x = dst
    pq.write_table(pa.table({"uri": ["a"], "score": [1.0]}), folder / "part-foreign.parquet")
    rows = pq.read_table(folder / "part-a.parquet").drop_columns(["embedding"]).slice(0, 3)
    rows = rows.set_column(0, "uri", pa.array([f"gs://b/p/new{i}.jpg" for i in range(3)]))
    pq.write_table(rows, folder / "part-noemb.parquet")
    with caplog.at_level(logging.WARNING):
        df, matrix = gcsemb.read_embeddings(str(folder))
    assert len(df) == len(matrix) == 600
    skips = [r.getMessage() for r in caplog.records if "skipping" in r.getMessage()]
    assert len(skips) == 2, skips
    assert any("part-foreign.parquet" in m for m in skips)
    assert any("part-noemb.parquet" in m and "embedding" in m for m in skips)


def test_footer_check_skips_a_zip_bomb(dst, caplog):
    folder, x = dst
    bomb = pa.table(
        {
            "uri": ["a" * (80 << 20)],
            "md5": ["x"],
            "size": [1],
            "updated": [None],
            "model": [MODEL],
            "embedding": [[0.0] * DIM],
        }
    )
    pq.write_table(bomb, folder / "part-bomb.parquet", compression="zstd")
    assert (folder / "part-bomb.parquet").stat().st_size < 1 << 20
    with caplog.at_level(logging.WARNING):
        df, matrix = gcsemb.read_embeddings(str(folder))
    assert len(df) == 600
    assert "part-bomb.parquet: not a gcsemb shard" in caplog.text


def test_a_pipe_named_like_a_shard_is_skipped_not_waited_on(dst, caplog):
    import os
    import threading

    folder, x = dst
    os.mkfifo(folder / "part-pipe.parquet")  # opening it for reading would wait for a writer
    got = []
    with caplog.at_level(logging.WARNING):
        reader = threading.Thread(
            target=lambda: got.append(gcsemb.read_embeddings(str(folder))), daemon=True
        )
        reader.start()
        reader.join(20)
    assert got, "read_embeddings waited on a named pipe"
    assert len(got[0][0]) == 600 and "part-pipe.parquet" in caplog.text


def test_index_incremental_and_invalidated(dst, monkeypatch):
    folder, x = dst
    index = gcsemb.build_index(str(folder), progress=False)
    assert len(index.keys) == 600 and len(index.manifest["segments"]) == 1
    write_shard(folder, "c", unit(np.random.default_rng(1), 50), first=600)
    from gcsemb.explore import indexing as index_module

    read = []
    original = index_module._add_segment
    monkeypatch.setattr(
        index_module,
        "_add_segment",
        lambda s, m, i, files, *a, **k: read.append(files) or original(s, m, i, files, *a, **k),
    )
    grown = gcsemb.build_index(str(folder), progress=False)
    assert [f.rsplit("/", 1)[1] for f in read[0]] == ["part-c.parquet"]  # only the new shard
    assert len(grown.keys) == 650 and len(grown.manifest["segments"]) == 2
    write_shard(folder, "a", x[:290])  # a shard changed under the index: rebuilt whole
    rebuilt = gcsemb.build_index(str(folder), progress=False)
    assert len(read[-1]) == 3 and len(rebuilt.keys) == 640
    forced = gcsemb.build_index(str(folder), rebuild=True, progress=False)
    on_disk = sorted(p.name for p in (folder / "_index").glob("*/seg-*"))
    assert on_disk == sorted(forced.manifest["segments"])  # the old segments are gone


def test_a_large_dataset_is_indexed_in_bounded_segments(tmp_path, monkeypatch):
    from gcsemb.explore import indexing as index_module
    from gcsemb.explore.search import search_image

    monkeypatch.setenv("GCSEMB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(index_module, "SEGMENT_BYTES", 256 * DIM * 4)  # 256 rows a segment
    folder = tmp_path / "emb"
    folder.mkdir()
    x = unit(np.random.default_rng(3), 600)
    x[550] = x[50]  # copies far apart: in different segments
    for i in range(6):
        write_shard(folder, f"{i}", x[i * 100 : (i + 1) * 100], first=i * 100)
    index = gcsemb.build_index(str(folder), progress=False)
    sizes = [len(s) for s in index.segments]
    assert sizes == [200, 200, 200]  # streamed: never more than 256 rows read at once
    assert (index.rows_of(gcsemb.read_embeddings(str(folder))[0]) == np.arange(600)).all()
    pairs = gcsemb.near_duplicates(str(folder), threshold=0.95, method="index", progress=False)
    assert pairs[["uri_a", "uri_b"]].values.tolist() == [
        ["gs://b/p/00050.jpg", "gs://b/p/00550.jpg"]
    ]
    pair = gcsemb.read_embeddings(str(folder))
    found = search_image(pair, "gs://b/p/00123.jpg", k=3, method="index")
    assert (
        found.uri.tolist()
        == search_image(pair, "gs://b/p/00123.jpg", k=3, method="exact").uri.tolist()
    )
    for i in range(6):  # six small updates: the small segments merge, the large ones stay
        write_shard(folder, f"new{i}", unit(np.random.default_rng(10 + i), 10), first=600 + 10 * i)
        index = gcsemb.build_index(str(folder), progress=False)
    sizes = [len(s) for s in index.segments]
    assert sizes[:3] == [200, 200, 200] and sum(sizes) == 660 and len(sizes) <= 3 + 4
    assert (index.rows_of(gcsemb.read_embeddings(str(folder))[0]) == np.arange(660)).all()
    # image 300 re-embedded as a copy of 400: its old row (in a segment) is no longer read
    write_shard(folder, "redo", x[400:401], first=300, updated=10)
    for method in ("exact", "index"):
        found = gcsemb.near_duplicates(str(folder), threshold=0.95, method=method, progress=False)
        assert sorted(map(sorted, found[["uri_a", "uri_b"]].values.tolist())) == [
            ["gs://b/p/00050.jpg", "gs://b/p/00550.jpg"],
            ["gs://b/p/00300.jpg", "gs://b/p/00400.jpg"],
        ], method


def test_streaming_shards_never_reads_far_ahead_of_its_consumer(tmp_path, monkeypatch):
    import time

    from gcsemb.explore import shards
    from gcsemb.storage import open_store

    folder = tmp_path / "emb"
    folder.mkdir()
    for i in range(8):
        write_shard(folder, f"{i}", unit(np.random.default_rng(i), 20), first=i * 20)
    read = []
    original = shards._shard_flat
    monkeypatch.setattr(
        shards, "_shard_flat", lambda s, path, **k: read.append(path) or original(s, path, **k)
    )
    stream = shards.iter_shards(shards.plan(open_store(str(folder))))
    next(stream)
    time.sleep(0.3)  # a slow consumer (an index build): the rest of the dataset stays unread
    assert len(read) <= 3
    assert sum(len(x) for _, x in stream) == 140 and len(read) == 8


def test_index_finds_the_exact_pairs_and_groups(dst):
    folder, x = dst
    exact = gcsemb.near_duplicates(str(folder), threshold=0.95, method="exact")
    index = gcsemb.near_duplicates(str(folder), threshold=0.95, method="index", progress=False)
    assert len(exact) == 2
    assert exact[["uri_a", "uri_b"]].values.tolist() == index[["uri_a", "uri_b"]].values.tolist()
    groups = gcsemb.near_duplicates(str(folder), threshold=0.95, groups=True)
    assert sorted(groups.groupby("group").size()) == [2, 2]
    assert groups.representative.sum() == 2 and (groups.score > 0.95).all()
    indices, distances = gcsemb.knn_graph(str(folder), k=5, method="index", progress=False)
    assert indices.shape == (600, 5) and (indices[:, 0] == np.arange(600)).all()
    assert (distances[:, 0] == 0).all() and (np.diff(distances, axis=1) >= -1e-6).all()


def test_a_pickle_in_the_index_is_never_unpickled(dst, monkeypatch):
    folder, x = dst
    index = gcsemb.build_index(str(folder), progress=False)
    seg = index.manifest["segments"][0]
    target = folder / "_index" / index_url(index.store, MODEL).rsplit("/", 1)[1] / seg / "ids.npy"

    class Boom:
        def __reduce__(self):
            return (pytest.fail, ("unpickled",))

    np.save(target, np.array([Boom()], dtype=object), allow_pickle=True)
    assert b"pytest" in target.read_bytes() and pickle  # a real pickle payload
    again = gcsemb.build_index(str(folder), progress=False)  # rebuilt, not unpickled
    assert len(again.keys) == 600


def test_cli_index_says_what_it_covers(dst, capsys):
    from gcsemb.cli import main

    folder, _ = dst
    assert main(["index", str(folder), "--no-progress"]) == 0
    assert "600 rows of tiny/test, 2 shards, 1 segments" in capsys.readouterr().out


@pytest.mark.parametrize("share", [0.25, 0.0])  # the index's vectors in memory, or on disk only
def test_search_by_index_matches_exact(dst, monkeypatch, share):
    from gcsemb.explore import ranking
    from gcsemb.explore.search import search_image

    monkeypatch.setattr(ranking, "RESIDENT_SHARE", share)
    monkeypatch.setitem(ranking.NPROBE, "image", 10_000)  # every list: the exact answer
    folder, x = dst
    gcsemb.build_index(str(folder), progress=False)
    pair = gcsemb.read_embeddings(str(folder))
    for row in (0, 5, 333):
        uri = pair[0].uri[row]
        exact = search_image(pair, uri, k=5, method="exact")
        index = search_image(pair, uri, k=5, method="index")
        assert index.uri[0] == uri
        assert index.uri.tolist() == exact.uri.tolist()


def test_a_large_dataset_is_searched_from_a_float16_matrix(dst, monkeypatch):
    from gcsemb.explore import inputs, ranking
    from gcsemb.explore.inputs import embeddings_of
    from gcsemb.explore.search import search_image

    folder, x = dst
    gcsemb.build_index(str(folder), progress=False)
    assert embeddings_of(str(folder), lean=True)[1].dtype == np.float32  # small: as it is
    for module in (inputs, ranking):  # 600 rows are "large" now: read lean, searched by index
        monkeypatch.setattr(module, "SEARCH_EXACT_MAX", 100)
    monkeypatch.setitem(ranking.NPROBE, "image", 10_000)
    df, matrix, _ = embeddings_of(str(folder), lean=True)
    assert matrix.dtype == np.float16 and matrix.nbytes == 600 * DIM * 2  # half the memory
    exact = search_image((df, x.astype(np.float32)), df.uri[42], k=5, method="exact")
    found = search_image(str(folder), df.uri[42], k=5)
    assert found.uri.tolist() == exact.uri.tolist()
    assert np.allclose(found.score, exact.score, atol=2e-3)


def test_index_on_the_emulator(bucket, tmp_path, monkeypatch):
    from gcsemb.storage import open_store

    monkeypatch.setenv("GCSEMB_CACHE", str(tmp_path / "cache"))
    local = tmp_path / "src"
    local.mkdir()
    x = unit(np.random.default_rng(2), 300)
    x[9] = x[3]
    write_shard(local, "a", x)
    store = open_store(f"gs://{bucket}/emb")
    store.fs.pipe_file(f"{bucket}/emb/part-a.parquet", (local / "part-a.parquet").read_bytes())
    index = gcsemb.build_index(store, progress=False)
    assert len(index.keys) == 300 and (tmp_path / "cache" / "index").is_dir()  # local copy
    pairs = gcsemb.near_duplicates(store, threshold=0.95, method="index", progress=False)
    assert pairs[["uri_a", "uri_b"]].values.tolist() == [
        ["gs://b/p/00003.jpg", "gs://b/p/00009.jpg"]
    ]


def test_an_index_manifest_is_never_a_list_of_places_to_write(bucket, tmp_path, monkeypatch):
    """A dataset's manifest naming ``../`` segments: nothing written outside the cache."""
    import json

    from gcsemb.explore.index import index_url
    from gcsemb.storage import open_store

    monkeypatch.setenv("GCSEMB_CACHE", str(tmp_path / "cache"))
    local = tmp_path / "src"
    local.mkdir()
    write_shard(local, "a", unit(np.random.default_rng(4), 100))
    store = open_store(f"gs://{bucket}/hostile")
    store.fs.pipe_file(f"{bucket}/hostile/part-a.parquet", (local / "part-a.parquet").read_bytes())
    first = gcsemb.build_index(store, progress=False)
    folder = store.fs._strip_protocol(index_url(store, MODEL))
    manifest = dict(first.manifest, segments=["../../../../escaped"])
    store.fs.pipe_file(f"{folder}/manifest.json", json.dumps(manifest).encode())
    store.fs.pipe_file(f"{bucket}/escaped/offsets.npy", b"planted")
    for name in ("offsets", "ids", "vectors", "second", "keys"):  # objects named with ../
        store.fs.pipe_file(f"{folder}/../../../../escaped/{name}.npy", b"planted")
    again = gcsemb.build_index(store, progress=False)  # ignored with a warning, then rebuilt
    assert len(again.keys) == 100
    assert not list(tmp_path.rglob("escaped")) and not list(tmp_path.parent.glob("escaped"))
    assert store.fs.cat_file(f"{bucket}/escaped/offsets.npy") == b"planted"  # never removed
    cached = sorted(p.name for p in (tmp_path / "cache" / "index").glob("*/seg-*"))
    assert cached == sorted(again.manifest["segments"])  # the first build's copy is gone
