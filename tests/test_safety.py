"""A dataset may come from anyone: what it names is never fetched or loaded on its word alone.

- Weights: a checkpoint recorded in the dataset is used only while its bytes hash to the recorded
  sha256 (the local file, or a copy in gcsemb's cache), and gcsemb says which file it used; a URL
  written in a dataset (as weights or as the checkpoint's location) causes no request at all.
- Thumbnails: a dataset's rows fetch only under the source it was embedded from; ``http(s)://``
  rows, local files outside the source folder and other buckets stay blank.
- Labels: a ``$`` in a folder name or a query is drawn as a dollar sign, never as mathtext.
"""

from __future__ import annotations

import datetime
import io
import logging
import subprocess
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import pytest  # noqa: E402
from matplotlib import cbook  # noqa: E402
from PIL import Image  # noqa: E402
from servers import StubServer  # noqa: E402

from gcsemb.embedding.job import embed  # noqa: E402
from gcsemb.errors import GcsembError  # noqa: E402
from gcsemb.explore.dataset import read_embeddings  # noqa: E402
from gcsemb.explore.search import search_image, search_text  # noqa: E402
from gcsemb.model.embedder import TINY_MODEL, load_embedder, save_random_checkpoint  # noqa: E402
from gcsemb.storage.scope import dataset_scope  # noqa: E402
from gcsemb.view.thumbnails import thumbnail_bytes  # noqa: E402
from gcsemb.view.viz import image_grid, plot_projection  # noqa: E402

GCSEMB = str(Path(sys.executable).parent / "gcsemb")
COLORS = ["red", "green", "blue", "orange", "purple", "teal"]


def _jpeg(color: str, size: tuple[int, int] = (96, 64)) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", size, color).save(out, "JPEG")
    return out.getvalue()


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty gcsemb cache (weights, checkpoint hashes, thumbnails) for this test only."""
    path = tmp_path / "cache"
    monkeypatch.setenv("GCSEMB_CACHE", str(path))
    return path


def _photos(gcs, bucket: str, n: int = 4) -> str:
    gcs.filesystem().pipe(
        {f"{bucket}/photos/{c}.jpg": _jpeg(c) for c in COLORS[:n]}, content_type="image/jpeg"
    )
    return f"gs://{bucket}/photos"


def _craft(dst: str, rows: list[dict], meta: dict[str, str], fs=None) -> None:
    """Write one parquet shard as gcsemb writes them, with what a dataset's author chose."""
    dim = 4
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((len(rows), dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    when = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)
    full = [
        {
            "uri": r["uri"],
            "md5": r.get("md5", f"md5-{i}"),
            "size": 100,
            "generation": 1,
            "updated": when,
            "width": 96,
            "height": 64,
            "model": r["model"],
            "embedding": vectors[i].tolist(),
        }
        for i, r in enumerate(rows)
    ]
    schema = pa.schema(
        [
            ("uri", pa.string()),
            ("md5", pa.string()),
            ("size", pa.int64()),
            ("generation", pa.int64()),
            ("updated", pa.timestamp("us", tz="UTC")),
            ("width", pa.int32()),
            ("height", pa.int32()),
            ("model", pa.string()),
            ("embedding", pa.list_(pa.float32())),
        ],
        metadata={
            b"gcsemb.model": rows[0]["model"].encode(),
            b"gcsemb.dim": str(dim).encode(),
            **{f"gcsemb.{k}".encode(): v.encode() for k, v in meta.items()},
        },
    )
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(full, schema=schema), buf)
    if fs is None:
        Path(dst).mkdir(parents=True, exist_ok=True)
        (Path(dst) / "part-0.parquet").write_bytes(buf.getvalue())
    else:
        fs.pipe(f"{dst.removeprefix('gs://')}/part-0.parquet", buf.getvalue())


def _jpeg_server():
    """A loopback web server that would hand a picture to anyone who asked (nobody should)."""
    picture = _jpeg("black")
    return StubServer(lambda request, body: (200, ([("Content-Type", "image/jpeg")], picture)))


# ------------------------------------------------------------------------------------ weights


def test_search_uses_the_recorded_checkpoint_while_its_hash_matches(
    gcs, bucket, tmp_path, fresh_cache, capsys
):
    ckpt = save_random_checkpoint(tmp_path / "weights" / "mine.pt", TINY_MODEL, seed=4242)
    dst = f"gs://{bucket}/emb"
    embed(_photos(gcs, bucket), dst, model=TINY_MODEL, pretrained=str(ckpt), progress=False)
    df, matrix = read_embeddings(dst)
    assert df.attrs["dataset"]["checkpoint"] == str(ckpt.resolve())
    capsys.readouterr()

    hits = search_text(dst, "a photo", k=3)  # no model, no pretrained: the dataset knows
    note = capsys.readouterr().err
    assert "using the checkpoint the dataset records" in note and str(ckpt) in note
    assert len(note.strip().splitlines()) == 1
    expected = search_text((df, matrix), "a photo", k=3, pretrained=str(ckpt))
    assert list(hits.uri) == list(expected.uri)

    save_random_checkpoint(ckpt, TINY_MODEL, seed=4243)  # other bytes at the same path
    with pytest.raises(GcsembError, match="sha256 differs") as refused:
        search_text(dst, "a photo", k=3)
    assert str(ckpt) in str(refused.value) and "pretrained=" in str(refused.value)


def test_a_remote_checkpoint_is_used_from_the_cache_and_never_fetched(
    gcs, bucket, tmp_path, fresh_cache, monkeypatch, capsys
):
    local = save_random_checkpoint(tmp_path / "remote.pt", TINY_MODEL, seed=4244)
    gcs.filesystem().pipe(f"{bucket}/models/remote.pt", local.read_bytes())
    remote = f"gs://{bucket}/models/remote.pt"
    dst = f"gs://{bucket}/emb"
    embed(_photos(gcs, bucket), dst, model=TINY_MODEL, pretrained=remote, progress=False)
    df, matrix = read_embeddings(dst)
    assert df.attrs["dataset"]["checkpoint"] == remote
    capsys.readouterr()

    before = len(gcs.proxy.requests)
    assert len(search_text((df, matrix), "a photo", k=2)) == 2  # the copy made when embedding
    assert "from gcsemb's cache" in capsys.readouterr().err
    assert len(gcs.proxy.requests) == before

    monkeypatch.setenv("GCSEMB_CACHE", str(tmp_path / "empty-cache"))  # another machine
    with pytest.raises(GcsembError, match="does not fetch a location written in a dataset") as e:
        search_text((df, matrix), "a photo", k=2)
    sha = df.attrs["dataset"]["checkpoint_sha256"]
    assert remote in str(e.value) and sha in str(e.value) and "pretrained=" in str(e.value)
    assert len(gcs.proxy.requests) == before  # not one request, to GCS or anywhere
    # the user vouches for it: passed explicitly, it is fetched
    assert len(search_text((df, matrix), "a photo", k=2, pretrained=remote)) == 2


def test_a_dataset_naming_urls_makes_no_request(tmp_path, fresh_cache, caplog):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "inside.jpg").write_bytes(_jpeg("red"))
    outside = tmp_path / "elsewhere" / "secret.jpg"
    outside.parent.mkdir()
    outside.write_bytes(_jpeg("green"))
    with _jpeg_server() as server:
        tag = f"ViT-B-32/{server.url}/weights.bin"  # a URL where the weights tag should be
        uris = [
            f"file://{photos / 'inside.jpg'}",
            f"{server.url}/x.jpg",
            f"file://{outside}",
            "file:///etc/hostname",
        ]
        crafted = str(tmp_path / "crafted")
        _craft(crafted, [{"uri": u, "model": tag} for u in uris], {"source": str(photos)})

        with pytest.raises(GcsembError, match="loads no weights a dataset names"):
            search_text(crafted, "a photo")
        with pytest.raises(GcsembError, match="loads no weights a dataset names"):
            search_image(crafted, _jpeg("red"))

        # a checkpoint tag whose recorded location is a web URL
        hidden = str(tmp_path / "hidden")
        sha = "0123abcd" + "0" * 56
        meta = {"source": str(photos), "checkpoint": f"{server.url}/m.bin"}
        _craft(
            hidden,
            [{"uri": uris[0], "model": "tiny-clip/m.bin#0123abcd"}],
            {**meta, "checkpoint_sha256": sha},
        )
        with pytest.raises(GcsembError, match="does not fetch") as e:
            search_text(hidden, "a photo")
        assert f"{server.url}/m.bin" in str(e.value) and sha in str(e.value)

        # the command line says the same in one line, and asks nothing either
        done = subprocess.run(
            [GCSEMB, "search", crafted, "a photo"], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 1 and "loads no weights" in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1

        # thumbnails of its rows: only the image under the source folder
        caplog.set_level(logging.WARNING, logger="gcsemb.view.thumbnails")
        df, matrix = read_embeddings(crafted)
        hits = search_image((df, matrix), uris[0], k=4)  # a dataset uri: its stored vector
        fig = image_grid(hits)
        drawn = [ax for ax in fig.axes if ax.images]
        assert len(drawn) == 1 and "inside.jpg" in drawn[0].get_title()
        refusals = [r.getMessage() for r in caplog.records if "not fetching" in r.getMessage()]
        assert len(refusals) == 1 and "3 image(s)" in refusals[0]  # one line, not one per image
        jpegs = thumbnail_bytes(df.uri, scope=dataset_scope(df.attrs))
        assert [j is not None for j in jpegs] == [True, False, False, False]
    assert server.requests == []


def test_the_explorer_shows_only_thumbnails_from_the_source(tmp_path, fresh_cache):
    pytest.importorskip("ipywidgets")
    from gcsemb.view.widgets import Explorer

    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(_jpeg("red"))
    (tmp_path / "b.jpg").write_bytes(_jpeg("blue"))
    with _jpeg_server() as server:
        uris = [f"file://{photos / 'a.jpg'}", f"file://{tmp_path / 'b.jpg'}", f"{server.url}/c.jpg"]
        crafted = str(tmp_path / "crafted")
        _craft(
            crafted,
            [{"uri": u, "model": "tiny-clip/random-seed0"} for u in uris],
            {"source": str(photos)},
        )
        ex = Explorer(crafted, umap=False, k=3)
        ex.select(uris[0])
        shown = {tile.uri: bytes(tile.children[0].value) for tile in ex.result_box.children}
    assert shown[uris[0]].startswith(b"\xff\xd8")  # a JPEG thumbnail
    assert shown[uris[1]] == b"" and shown[uris[2]] == b""  # left blank
    assert server.requests == []


def test_thumbnails_of_rows_in_another_bucket_are_not_fetched(gcs, bucket, fresh_cache):
    fs = gcs.filesystem()
    other = f"{bucket}-other"
    fs.mkdir(other)
    fs.pipe(f"{other}/x.jpg", _jpeg("blue"), content_type="image/jpeg")
    source = _photos(gcs, bucket, 1)
    mine, theirs = f"{source}/{COLORS[0]}.jpg", f"gs://{other}/x.jpg"
    rows = [{"uri": mine, "model": "tiny-clip/random-seed0"}]
    rows.append({"uri": theirs, "model": "tiny-clip/random-seed0"})
    _craft(f"gs://{bucket}/emb", rows, {"source": source}, fs)
    old = [dict(r, md5=f"old-{i}") for i, r in enumerate(rows)]  # not in the thumbnail cache
    _craft(f"gs://{bucket}/old", old, {}, fs)  # an older dataset: no source recorded

    for dst in (f"gs://{bucket}/emb", f"gs://{bucket}/old"):
        df, matrix = read_embeddings(dst)
        before = len(gcs.proxy.requests)
        fig = image_grid(search_image((df, matrix), mine, k=2))
        assert [ax.get_title().endswith(".jpg") for ax in fig.axes if ax.images] == [True]
        asked = [path for _, path, _, _ in gcs.proxy.requests[before:]]
        assert asked and not any(other in path for path in asked), asked

    before = len(gcs.proxy.requests)
    fig = image_grid([theirs])  # named by the user: fetched
    assert len([ax for ax in fig.axes if ax.images]) == 1
    assert any(other in path for _, path, _, _ in gcs.proxy.requests[before:])


def test_fetch_scope_of_each_kind_of_dataset(tmp_path):
    from gcsemb.storage import open_store

    (tmp_path / "photos" / "a").mkdir(parents=True)
    (tmp_path / "photos" / "a" / "x.jpg").write_bytes(b"x")
    (tmp_path / "other.jpg").write_bytes(b"x")
    local = dataset_scope({"dataset": {"source": f"{tmp_path}/photos/**/*.jpg"}})
    assert local.allows(f"file://{tmp_path}/photos/a/x.jpg")
    assert local.allows(f"{tmp_path}/photos/a/x.jpg")
    assert not local.allows(f"file://{tmp_path}/other.jpg")
    assert not local.allows(f"file://{tmp_path}/photos/../other.jpg")
    assert not local.allows(f"file://{tmp_path}/photos/missing.jpg")
    assert not local.allows("gs://b/photos/a/x.jpg") and not local.allows("http://h/x.jpg")

    gcs = dataset_scope(
        {"dataset": {"source": "gs://b/photos"}, "store": open_store(str(tmp_path))}
    )
    assert gcs.allows("gs://b/other/y.jpg") and gcs.allows("gcs://b/y.jpg")
    assert not gcs.allows("gs://c/y.jpg") and not gcs.allows("https://b/y.jpg")
    assert not gcs.allows(f"file://{tmp_path}/other.jpg")

    web = dataset_scope({"dataset": {"source": "https://example.com/photos"}})
    assert not web.allows("https://example.com/photos/x.jpg")
    no_source_local = dataset_scope({"dataset": {}, "store": open_store(str(tmp_path))})
    assert not no_source_local.allows(f"file://{tmp_path}/other.jpg")
    by_hand = dataset_scope({})
    assert by_hand.allows("gs://any/x.jpg") and not by_hand.allows(f"{tmp_path}/other.jpg")


# ------------------------------------------------------------------------------------- labels

DOLLARS = "price $5$ and $x^2$"
BROKEN = r"bad $\notacommand{$ math"


def test_dollar_signs_in_folders_and_queries_draw_as_text(tmp_path):
    rng = np.random.default_rng(0)
    folders = [DOLLARS] * 10 + [BROKEN] * 10 + ["plain"] * 10

    coords = pd.DataFrame(
        {
            "uri": [f"gs://b/{f}/{i}.jpg" for i, f in enumerate(folders)],
            "x": rng.standard_normal(30),
            "y": rng.standard_normal(30),
            "folder": folders,
        }
    )
    ax = plot_projection(coords, color_by="folder", title="UMAP of “$x$” folders")
    ax.figure.savefig(tmp_path / "map.png", dpi=60)  # mathtext would fail on BROKEN here
    assert Image.open(tmp_path / "map.png").size[0] > 300
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert len(labels) == 3
    for text in [*labels, ax.get_title(loc="left")]:
        assert not cbook.is_math_text(text)  # drawn literally, dollar signs and all

    folder = tmp_path / DOLLARS
    folder.mkdir()
    paths = []
    for color in COLORS[:3]:
        (folder / f"{color} $1$.jpg").write_bytes(_jpeg(color))
        paths.append(str(folder / f"{color} $1$.jpg"))
    fig = image_grid(paths, title=f"Top 3: “{BROKEN}”")  # a list the user names: fetched
    fig.savefig(tmp_path / "grid.png", dpi=60)
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 3
    assert not any(cbook.is_math_text(ax.get_title()) for ax in shown)
    assert not cbook.is_math_text(fig._suptitle.get_text())


def test_weights_a_dataset_may_name(tmp_path, fresh_cache):
    """Random weights and open_clip's own tags need nothing passed; nothing else is taken."""
    from gcsemb.model.dataset_embedder import dataset_weights

    assert dataset_weights("ViT-B-32/random-seed0") is None
    assert dataset_weights("ViT-B-32/laion2b_s34b_b79k") == "laion2b_s34b_b79k"
    for tag in (
        "ViT-B-32/https://127.0.0.1:9/x.bin",
        "ViT-B-32//etc/passwd",
        "ViT-B-32/hf-hub:someone/weights",
        "tiny-clip/laion2b_s34b_b79k",  # a real tag, of another architecture
        "ViT-B-32/m.bin#0123abcd",  # a checkpoint the dataset does not locate
    ):
        with pytest.raises(GcsembError, match="pretrained="):
            dataset_weights(tag, {})

    crafted = str(tmp_path / "crafted")
    _craft(crafted, [{"uri": "gs://b/x.jpg", "model": "tiny-clip/random-seed0"}], {})
    df, _ = read_embeddings(crafted)
    matrix = load_embedder(TINY_MODEL, None).embed_texts(["a photo"])  # right dimension
    hits = search_text((df, matrix), "a photo", k=1)  # no model, no weights passed
    assert hits.score[0] == pytest.approx(1.0, abs=1e-5)
    for tag in ("/etc/x.json/random-seed0", "x.json/random-seed0", "https:/x/random-seed0"):
        with pytest.raises(GcsembError, match="architecture"):
            search_text((df.assign(model=tag), matrix), "a photo", k=1)
