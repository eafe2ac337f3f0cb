"""Listing images on the real emulator: odd names, filters, globs, paging, errors."""

from __future__ import annotations

import types

import pytest
from gcsfs.core import GCSFileSystem
from servers import StubServer, deny

from gcsemb.errors import AccessDenied, BadURL, NotFound
from gcsemb.storage import list_images, open_store

# Every character GCS allows that a URL, a glob or a shell treats specially.
ODD_NAMES = [
    "with space/cat 1.jpg",
    "ünïcödé/naïve café.png",
    "hash/#1.jpeg",
    "hash/a#123.jpeg",  # a '#<digits>' suffix is a generation to version-aware fsspec
    "question/what?.webp",
    "question/b?.jpg",
    "question/bX.jpg",  # what 'b?.jpg' would match as a glob
    "brackets/photo[1].jpg",
    "brackets/photo1.jpg",  # what 'photo[1].jpg' would match as a glob
    "star/*.png",
    "braces/{a,b}.gif",
    "percent/100%25 done.JPG",
    "percent/50% off.gif",
    "a/b/c/d/e/f/g/h/i/j/deep.tiff",
    "plus+and&amp/x.bmp",
    'quote/it\'s "q".jpg',
    "emoji/📷 🐈.jpg",
]


def test_odd_names_list_and_read_back_literally(gcs, bucket):
    gcs.filesystem().pipe({f"{bucket}/{name}": name.encode() for name in ODD_NAMES})
    found = {o.uri: o for o in list_images(f"gs://{bucket}")}
    assert sorted(found) == sorted(f"gs://{bucket}/{n}" for n in ODD_NAMES)
    store = open_store(f"gs://{bucket}")
    uris = sorted(found)
    got = store.read_many([store.fs._strip_protocol(u) for u in uris])
    for uri, data in zip(uris, got, strict=True):
        # the URI we print is the one we read back: each object's own bytes, nothing else
        assert data == uri.split("/", 3)[3].encode(), uri
        obj = found[uri]
        assert obj.size == len(data)
        assert obj.md5 and obj.crc32c and obj.generation and obj.updated


def test_a_glob_that_names_an_object_literally_gives_that_object(gcs, bucket):
    gcs.filesystem().pipe({f"{bucket}/p/photo[1].jpg": b"1", f"{bucket}/p/photo2.jpg": b"2"})
    found = [o.uri for o in list_images(f"gs://{bucket}/p/photo[1].jpg")]
    assert found == [f"gs://{bucket}/p/photo[1].jpg"]


def test_thousands_of_objects_are_listed_in_pages(gcs, bucket, monkeypatch):
    fs = gcs.filesystem()
    n = 2500
    fs.pipe({f"{bucket}/many/img {i:05d} ü.jpg": b"x" for i in range(n)})
    fs.pipe({f"{bucket}/many/notes {i}.txt": b"x" for i in range(50)})
    calls = []
    real_request = GCSFileSystem._request

    async def counting_request(self, method, path, *args, **kwargs):
        calls.append(path)
        return await real_request(self, method, path, *args, **kwargs)

    monkeypatch.setattr(GCSFileSystem, "_request", counting_request)
    objects = list(list_images(f"gs://{bucket}/many"))
    assert len(objects) == n
    assert len({o.uri for o in objects}) == n
    assert [o.uri for o in objects] == sorted(o.uri for o in objects)
    assert len(calls) == 3  # 1000 per page, not one request per object


def test_listing_streams(gcs, bucket):
    fs = gcs.filesystem()
    fs.pipe({f"{bucket}/s/{i:04d}.png": b"x" for i in range(1500)})
    stream = list_images(f"gs://{bucket}/s")
    assert isinstance(stream, types.GeneratorType)
    assert next(stream).uri == f"gs://{bucket}/s/0000.png"


@pytest.mark.parametrize(
    ("extensions", "expected"),
    [
        (None, {"a.jpg", "b.JPEG", "c.png", "d.txt", "e.json", "f"}),
        ({".jpg", ".jpeg", ".png"}, {"a.jpg", "b.JPEG", "c.png"}),
        ({"txt"}, {"d.txt"}),
    ],
)
def test_extension_filter(gcs, bucket, extensions, expected):
    gcs.filesystem().pipe(
        {f"{bucket}/x/{n}": b"1" for n in ["a.jpg", "b.JPEG", "c.png", "d.txt", "e.json", "f"]}
    )
    names = {
        o.uri.rsplit("/", 1)[1] for o in list_images(f"gs://{bucket}/x", extensions=extensions)
    }
    assert names == expected


def test_default_filter_is_case_insensitive_and_skips_non_images(gcs, bucket):
    gcs.filesystem().pipe(
        {f"{bucket}/{n}": b"1" for n in ["A.JPG", "b.WebP", "c.csv", "d.parquet"]}
    )
    assert {o.uri.rsplit("/", 1)[1] for o in list_images(f"gs://{bucket}")} == {"A.JPG", "b.WebP"}


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("**/*.jpg", {"top.jpg", "cats/a.jpg", "cats/old/b.jpg", "dogs/c.jpg"}),
        ("*.jpg", {"top.jpg"}),
        ("cats/*.jpg", {"cats/a.jpg"}),
        ("cats/**", {"cats/a.jpg", "cats/old/b.jpg", "cats/x.png"}),
        ("*/[ac].*", {"cats/a.jpg", "dogs/c.jpg"}),
        ("dogs/what?.png", {"dogs/what?.png"}),
    ],
)
def test_globs(gcs, bucket, pattern, expected):
    names = [
        "top.jpg",
        "cats/a.jpg",
        "cats/old/b.jpg",
        "cats/x.png",
        "dogs/c.jpg",
        "dogs/what?.png",
        "dogs/whatX.png",
    ]
    gcs.filesystem().pipe({f"{bucket}/{n}": b"1" for n in names})
    found = {o.uri.split("/", 3)[3] for o in list_images(f"gs://{bucket}/{pattern}")}
    assert found == expected


def test_prefix_means_folder_and_single_object_works(gcs, bucket):
    gcs.filesystem().pipe({f"{bucket}/{n}": b"1" for n in ["cat/1.jpg", "catalog/2.jpg"]})
    assert [o.uri for o in list_images(f"gs://{bucket}/cat")] == [f"gs://{bucket}/cat/1.jpg"]
    assert [o.uri for o in list_images(f"gs://{bucket}/catalog/2.jpg")] == [
        f"gs://{bucket}/catalog/2.jpg"
    ]


def test_limit(gcs, bucket):
    gcs.filesystem().pipe({f"{bucket}/{i}.jpg": b"1" for i in range(20)})
    assert len(list(list_images(f"gs://{bucket}", limit=7))) == 7


def test_local_folder(tmp_path):
    (tmp_path / "sub dir").mkdir()
    (tmp_path / "sub dir" / "a b.jpg").write_bytes(b"123")
    (tmp_path / "c.png").write_bytes(b"1")
    (tmp_path / "notes.txt").write_text("x")
    objects = list(list_images(str(tmp_path)))
    assert sorted(o.uri.rsplit("/", 1)[1] for o in objects) == ["a b.jpg", "c.png"]
    fs = open_store(str(tmp_path)).fs
    assert all(fs.cat(o.uri) for o in objects)  # URIs open again as they are


def test_missing_bucket_is_a_clear_error(gcs):
    with pytest.raises(NotFound, match=r"gs://no-such-bucket-x does not exist"):
        list(list_images("gs://no-such-bucket-x/photos"))


def test_missing_local_folder(tmp_path):
    with pytest.raises(NotFound, match="does not exist"):
        list(list_images(str(tmp_path / "nope")))


@pytest.mark.parametrize("url", ["gs://", "gs:///photos", ""])
def test_bad_url(url, gcs):
    with pytest.raises(BadURL):
        list(list_images(url))


@pytest.mark.parametrize(("status", "fragment"), [(403, "may not list"), (401, "not public")])
def test_denied_access_names_identity_and_fix(status, fragment):
    with StubServer(deny(status)) as server, pytest.raises(AccessDenied) as err:
        list(list_images(open_store("gs://private/photos", token="anon", endpoint=server.url)))
    message = str(err.value)
    assert fragment in message and "anonymous" in message
    assert "gcloud auth application-default login" in message
    if status == 403:
        assert "roles/storage.objectViewer" in message and "storage.objects.list" in message
