"""Only what the user named is read or fetched, and never more of it than it claims to hold.

- A dataset's recorded source allows thumbnails from its bucket or its local folder only: no
  other protocol, nothing chained with ``::``, nothing when the source is everything.
- Thumbnail reads stop at the row's size (ranged reads) and at a fixed cap; an image is decoded
  only in the formats its name implies.
- A local source lists regular files only (a link to ``/dev/zero`` or a named pipe is skipped,
  with a reason), reads none beyond its listed size, and lists folders at any depth.
"""

from __future__ import annotations

import datetime
import io
import logging
import os
import socket
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from gcsemb.explore.dataset import read_embeddings, schema
from gcsemb.storage import list_images, open_store
from gcsemb.view.thumbnails import MAX_SOURCE_BYTES, row_thumbnails, thumbnail_bytes

MODEL = "tiny-clip/random-seed0"


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch) -> Path:
    """An empty gcsemb cache (thumbnails, checkpoint hashes) for this test only."""
    path = tmp_path / "cache"
    monkeypatch.setenv("GCSEMB_CACHE", str(path))
    return path


def _image(fmt: str = "JPEG", color: str = "red", mode: str = "RGB") -> bytes:
    out = io.BytesIO()
    Image.new(mode, (48, 32), color if mode == "RGB" else 128).save(out, fmt)
    return out.getvalue()


def _dataset(dst: str, rows: list[dict], meta: dict[str, str], fs=None, model: str = MODEL) -> None:
    """One shard in gcsemb's own schema, holding what a dataset's author chose to write."""
    dim = 4
    vectors = np.eye(dim, dtype=np.float32)[np.arange(len(rows)) % dim]
    when = datetime.datetime(2026, 1, 2, tzinfo=datetime.timezone.utc)
    full = [
        {
            "uri": r["uri"],
            "md5": f"md5-{i}",
            "size": r.get("size", 100),
            "generation": 1,
            "updated": when,
            "width": 48,
            "height": 32,
            "model": model,
            "embedding": vectors[i].tolist(),
        }
        for i, r in enumerate(rows)
    ]
    table = pa.Table.from_pylist(full, schema=schema(model, dim, meta))
    buf = io.BytesIO()
    pq.write_table(table, buf)
    if fs is None:
        Path(dst).mkdir(parents=True, exist_ok=True)
        (Path(dst) / "part-0.parquet").write_bytes(buf.getvalue())
    else:
        fs.pipe(f"{dst.removeprefix('gs://')}/part-0.parquet", buf.getvalue())


class Listener:
    """A loopback TCP port that records every connection made to it (and hangs up)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def __enter__(self) -> Listener:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()
        self.sock.close()


# ------------------------------------------------------------------------------- fetch scopes

HOSTILE = {  # a recorded source, and a row under it, as a dataset's author could write them
    "simplecache": ("simplecache::http://127.0.0.1:{port}/photos", "/x.jpg"),
    "zip": ("zip://x.jpg::http://127.0.0.1:{port}/photos.zip", ""),
    "webhdfs": ("webhdfs://127.0.0.1:{port}/photos", "/x.jpg"),
    "ftp": ("ftp://127.0.0.1:{port}/photos", "/x.jpg"),
}


@pytest.mark.parametrize("kind", sorted(HOSTILE))
def test_a_source_of_another_protocol_makes_no_request(kind, gcs, bucket, fresh_cache, caplog):
    from gcsemb.view.grid import image_grid

    caplog.set_level(logging.WARNING, logger="gcsemb.view.thumbnails")
    with Listener() as server:
        source, tail = HOSTILE[kind]
        source = source.format(port=server.port)
        crafted = f"gs://{bucket}/shared"  # a dataset in a shared bucket
        _dataset(crafted, [{"uri": source + tail}], {"source": source}, gcs.filesystem())
        df, _ = read_embeddings(crafted)
        fig = image_grid(df)
        assert [ax for ax in fig.axes if ax.images] == []  # "unavailable"
    assert server.connections == 0
    said = [r.getMessage() for r in caplog.records if "not fetching" in r.getMessage()]
    assert len(said) == 1 and "no gs:// bucket and no local folder" in said[0], said


@pytest.mark.parametrize("whole", ["/", "gs://"])
def test_a_source_that_is_everything_allows_nothing(
    whole, gcs, bucket, tmp_path, fresh_cache, caplog
):
    caplog.set_level(logging.WARNING, logger="gcsemb.view.thumbnails")
    if whole == "/":
        picture = tmp_path / "elsewhere" / "x.jpg"  # any file on the machine
        picture.parent.mkdir()
        picture.write_bytes(_image())
        uri, dst, fs = f"file://{picture}", str(tmp_path / "crafted"), None
    else:
        fs = gcs.filesystem()
        other = f"{bucket}-any"
        fs.mkdir(other)
        fs.pipe(f"{other}/x.jpg", _image(), content_type="image/jpeg")
        uri, dst = f"gs://{other}/x.jpg", f"gs://{bucket}/crafted"
    _dataset(dst, [{"uri": uri}], {"source": whole}, fs)
    df, _ = read_embeddings(dst)
    before = len(gcs.proxy.requests)

    assert row_thumbnails(df.uri, df.md5, df.attrs) == [None]
    assert not [p for _, p, _, _ in gcs.proxy.requests[before:] if "x.jpg" in p]
    said = [r.getMessage() for r in caplog.records if "not fetching" in r.getMessage()]
    reason = "the whole file system" if whole == "/" else "names no bucket"
    assert len(said) == 1 and reason in said[0], said
    assert thumbnail_bytes([uri]) != [None]  # named by the user: fetched


# ----------------------------------------------------------------------- thumbnail size caps


@pytest.mark.slow
def test_thumbnails_read_no_further_than_the_rows_size(gcs, bucket, fresh_cache):
    from gcsemb.view.grid import image_grid

    fs = gcs.filesystem()
    big = 24 << 20  # each row claims 10 bytes
    rows = []
    for name in ("a.jpg", "b.jpg"):
        fs.pipe(f"{bucket}/photos/{name}", _image() + bytes(big), content_type="image/jpeg")
        rows.append({"uri": f"gs://{bucket}/photos/{name}", "size": 10})
    _dataset(f"gs://{bucket}/emb", rows, {"source": f"gs://{bucket}/photos"}, fs)
    df, _ = read_embeddings(f"gs://{bucket}/emb")
    before = len(gcs.proxy.requests)

    tracemalloc.start()
    try:
        fig = image_grid(df)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert [ax for ax in fig.axes if ax.images] == []  # more than claimed: no thumbnail
    reads = [h for m, p, h, _ in gcs.proxy.requests[before:] if m == "GET" and "alt=media" in p]
    assert len(reads) == 2 and all(h.get("Range") == "bytes=0-10" for h in reads), reads
    assert peak < 16 << 20, f"{peak / 2**20:.0f} MiB traced while fetching two 10-byte rows"


@pytest.mark.slow
def test_a_thumbnail_read_stops_at_the_cap(tmp_path, fresh_cache):
    huge = tmp_path / "huge.jpg"  # named by the user, no size known: the cap applies
    with huge.open("wb") as f:
        f.write(_image())
        f.truncate(MAX_SOURCE_BYTES * 4)  # sparse: no disk used
    tracemalloc.start()
    try:
        assert thumbnail_bytes([str(huge)]) == [None]
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < MAX_SOURCE_BYTES * 1.5, f"{peak / 2**20:.0f} MiB for a capped read"


@pytest.mark.parametrize(
    ("fmt", "mode", "named"),
    [("PCX", "RGB", "x.pcx"), ("SGI", "RGB", "x.sgi"), ("SPIDER", "F", "x.spider")],
)
def test_thumbnails_decode_only_the_format_the_name_implies(
    fmt, mode, named, tmp_path, fresh_cache
):
    data = _image(fmt, mode=mode)
    as_jpg, as_itself = tmp_path / "photo.jpg", tmp_path / named
    as_jpg.write_bytes(data)
    as_itself.write_bytes(data)
    assert thumbnail_bytes([str(as_jpg)], cache=False) == [None]
    (thumb,) = thumbnail_bytes([str(as_itself)], cache=False)
    assert thumb is not None and Image.open(io.BytesIO(thumb)).format == "JPEG"


# --------------------------------------------------------------------------- local sources


def _odd_folder(tmp_path: Path) -> Path:
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    (photos / "a.jpg").write_bytes(_image(color="red"))
    (photos / "sub" / "b.jpg").write_bytes(_image(color="blue"))
    (photos / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(photos / "pipe.jpg")
    (photos / "gone.jpg").symlink_to(tmp_path / "missing.jpg")
    (photos / "sub" / "up").symlink_to(photos)  # a loop back to the top
    (photos / "linked.jpg").symlink_to(photos / "a.jpg")  # a link to a regular file counts
    return photos


@pytest.mark.timeout(300)
def test_a_local_folder_lists_regular_files_only_and_the_run_finishes(
    tmp_path, fresh_cache, caplog
):
    from gcsemb.embedding.job import embed
    from gcsemb.model.embedder import TINY_MODEL

    photos = _odd_folder(tmp_path)
    caplog.set_level(logging.WARNING, logger="gcsemb.storage.local_files")
    names = sorted(Path(o.uri).name for o in list_images(str(photos)))
    assert names == ["a.jpg", "b.jpg", "linked.jpg"]
    said = " ".join(r.getMessage() for r in caplog.records)
    assert "skipped 3 entries" in said and "no regular file" in said, said

    summary = embed(
        str(photos), str(tmp_path / "emb"), model=TINY_MODEL, pretrained=None, progress=False
    )
    assert (summary.seen, summary.failed) == (3, 0)
    assert summary.embedded + summary.duplicates == 3


def test_a_local_read_stops_at_the_listed_size(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(_image())
    (obj,) = list_images(str(photos))
    store = open_store(str(photos))
    path = store.fs._strip_protocol(obj.uri)

    (photos / "a.jpg").unlink()
    (photos / "a.jpg").symlink_to("/dev/zero")  # swapped after the listing
    (got,) = store.read_many([path], [obj.size])
    assert isinstance(got, OSError) and "character device" in str(got)

    (photos / "a.jpg").unlink()
    with (photos / "a.jpg").open("wb") as f:  # grew after the listing
        f.write(_image())
        f.truncate(1 << 30)
    tracemalloc.start()
    try:
        (got,) = store.read_many([path], [obj.size])
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "holds more than" in str(got) and peak < 1 << 20

    (photos / "a.jpg").unlink()
    os.mkfifo(photos / "a.jpg")  # a pipe: refused at once, not read forever
    (got,) = store.read_many([path], [obj.size])
    assert isinstance(got, OSError) and "named pipe" in str(got)


def _remove_tree(top: Path) -> None:
    """``rm -r`` without recursion (shutil.rmtree and pytest's cleanup stop at ~1000 levels)."""
    stack, folders = [str(top)], []
    while stack:
        folders.append(stack.pop())
        with os.scandir(folders[-1]) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
                else:
                    os.unlink(entry.path)
    for folder in reversed(folders):
        os.rmdir(folder)


@pytest.mark.slow
def test_1100_nested_folders_list_every_image(tmp_path):
    folder = tmp_path / "deep"
    expected = []
    try:
        for depth in range(1100):
            folder = folder / "d"
            if depth % 100 == 99:
                folder.mkdir(parents=True)
                (folder / f"{depth}.jpg").write_bytes(b"x")
                expected.append(f"{depth}.jpg")
        listed = [Path(o.uri).name for o in list_images(str(tmp_path / "deep"))]
        assert listed == expected
    finally:
        _remove_tree(tmp_path / "deep")  # else pytest's own cleanup fails on it, at any later run


def test_the_ray_listing_skips_what_is_no_regular_file(tmp_path):
    from gcsemb.embedding.ray_listing import fan_out

    photos = _odd_folder(tmp_path)
    parts, _ = fan_out(open_store(str(photos)), None, {})
    top = sorted(Path(o.uri).name for part in parts if part.url is None for o in part.objects)
    assert top == ["a.jpg", "linked.jpg"]  # no zero.jpg, pipe.jpg or gone.jpg
    assert [Path(part.url).name for part in parts if part.url is not None] == ["sub"]
