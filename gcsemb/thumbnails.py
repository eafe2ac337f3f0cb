"""Small thumbnails of the images behind a dataset, fetched concurrently and cached on disk.

A plot with 100 thumbnails or an image grid of search results needs 100 small pictures of images
that live in a bucket. :func:`thumbnail_bytes` checks the local cache first, fetches every missing
image in one concurrent batch (``fs.cat([...], on_error="return")``: many requests in flight, one
failure never spoils the rest), decodes them with :func:`gcsemb.decode.decode_image` (JPEGs at a
reduced size, threads), shrinks them and stores JPEG thumbnails under
``cache_dir()/thumbnails/<sha1 of uri, md5 and size>.jpg``. The md5 is part of the key, so an image
replaced in the bucket gets a fresh thumbnail; the next plot of the same images reads only the disk.

A dataset may come from anyone, and its ``uri`` column names what would be fetched. So the rows of
a dataset are fetched only under the source it was embedded from (:func:`dataset_scope`: the same
bucket for ``gs://``, the source folder for local files); ``http(s)://`` URIs, local files outside
that folder and other buckets are left blank, with one log line saying why. URIs you pass yourself
(a list) are fetched as given.

Example:
    >>> from gcsemb.thumbnails import thumbnails
    >>> images = thumbnails(["gs://my-bucket/photos/cat.jpg"], size=128)  # doctest: +SKIP
    >>> images[0].size  # doctest: +SKIP
    (128, 96)
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_SIZE = 128
"""Longest side of a thumbnail, in pixels."""

_FETCH_BATCH = 256  # objects per concurrent fetch; bounds the memory of full-size images


_GCS = ("gs", "gcs")
_LOCAL = ("file", "local")


@dataclass(frozen=True)
class FetchScope:
    """Which image URIs the rows of a dataset may make gcsemb fetch.

    Attributes:
        scheme: ``"gs"``, ``"file"`` or another fsspec protocol; ``""`` allows nothing.
        root: The bucket (``gs://``, other protocols: the first path part), the absolute source
            folder (local files), or ``""`` for any bucket.
        why: What is fetched, said in the log line about URIs left out.

    Example:
        >>> scope = FetchScope("gs", "photos-bucket", "only gs://photos-bucket is fetched")
        >>> scope.allows("gs://photos-bucket/a.jpg"), scope.allows("https://example.com/a.jpg")
        (True, False)
    """

    scheme: str
    root: str
    why: str

    def allows(self, uri: str) -> bool:
        """Whether ``uri`` is inside this scope (never ``http(s)://``)."""
        scheme, rest = _split(uri)
        if not self.scheme or scheme in ("http", "https"):
            return False
        if scheme in _GCS or self.scheme in _GCS:
            return scheme in _GCS and self.scheme in _GCS and self.root in ("", _bucket(rest))
        if scheme in _LOCAL or self.scheme in _LOCAL:
            if scheme not in _LOCAL or self.scheme not in _LOCAL or not os.path.isabs(rest):
                return False
            path = os.path.normpath(rest)
            try:
                inside = os.path.commonpath([self.root, path]) == self.root
            except ValueError:
                return False
            return inside and os.path.isfile(path)  # a regular file, never a device or a pipe
        return scheme == self.scheme and self.root == _bucket(rest)


def dataset_scope(attrs: Mapping[str, Any]) -> FetchScope:
    """What the rows of a dataset may fetch, from a DataFrame's ``attrs``.

    - The dataset records its source (``attrs["dataset"]["source"]``): URIs in the source's
      bucket (``gs://``), under the source folder (local; regular files only), or in the same
      bucket of another fsspec protocol. An ``http(s)://`` source allows nothing.
    - No recorded source (an older dataset): the bucket the dataset itself is in
      (``attrs["store"]``), and nothing local.
    - Neither (rows built by hand, ``pandas.read_parquet``): ``gs://`` URIs only.

    Args:
        attrs: ``df.attrs`` of :func:`gcsemb.read_embeddings`, search results or a projection.

    Example:
        >>> dataset_scope({"dataset": {"source": "gs://b/photos"}}).allows("gs://b/x/y.jpg")
        True
    """
    info = attrs.get("dataset") or {}
    source = str(info.get("source") or "") if isinstance(info, Mapping) else ""
    if source:
        scheme, rest = _split(source)
        if scheme in _GCS:
            bucket = _bucket(rest)
            why = f"only gs://{bucket} (the bucket of its source {source}) is fetched"
            return FetchScope("gs", bucket, why)
        if scheme in _LOCAL:
            from gcsemb.storage import glob_base

            folder = os.path.normpath(os.path.abspath(os.path.expanduser(glob_base(rest)[0])))
            return FetchScope("file", folder, f"only files under its source {folder} are read")
        if scheme in ("http", "https"):
            return FetchScope("", "", f"its source {source} is a web URL: nothing is fetched")
        why = f"only {scheme}://{_bucket(rest)} (the bucket of its source {source}) is fetched"
        return FetchScope(scheme, _bucket(rest), why)
    store = attrs.get("store")
    url = str(getattr(store, "url", "") or "")
    if url:
        scheme, rest = _split(url)
        if scheme in _GCS:
            why = f"it records no source: only its own bucket gs://{_bucket(rest)} is fetched"
            return FetchScope("gs", _bucket(rest), why)
        return FetchScope("", "", f"{url} records no source and is not in GCS: nothing is fetched")
    return FetchScope("gs", "", "rows that name no dataset fetch gs:// URIs only")


def _split(uri: str) -> tuple[str, str]:
    """``(scheme, rest)`` of a URI; a bare path is ``("file", path)``."""
    if "://" not in uri:
        return "file", os.path.expanduser(uri)
    scheme, rest = uri.split("://", 1)
    return scheme.lower(), rest


def _bucket(rest: str) -> str:
    return rest.split("/", 1)[0]


def cache_root() -> Path:
    """The folder thumbnails are cached in: ``gcsemb.checkpoints.cache_dir() / "thumbnails"``."""
    from gcsemb.checkpoints import cache_dir

    return cache_dir() / "thumbnails"


def thumbnail_path(uri: str, md5: str | None, size: int = DEFAULT_SIZE) -> Path:
    """Where the thumbnail of this version of ``uri`` at ``size`` pixels is cached.

    Example:
        >>> thumbnail_path("gs://b/cat.jpg", "abc==", 128).suffix
        '.jpg'
    """
    key = hashlib.sha1(f"{uri}\n{md5 or ''}\n{size}".encode()).hexdigest()
    return cache_root() / key[:2] / f"{key}.jpg"


def make_thumbnail(data: bytes, size: int = DEFAULT_SIZE) -> bytes | None:
    """JPEG bytes of a thumbnail (longest side ``size``) of image bytes; None if undecodable.

    Example:
        >>> buf = io.BytesIO()
        >>> Image.new("RGB", (640, 480), "red").save(buf, "PNG")
        >>> Image.open(io.BytesIO(make_thumbnail(buf.getvalue(), 64))).size
        (64, 48)
    """
    from gcsemb.decode import decode_image

    decoded = decode_image(data, min_side=size)
    if not decoded.ok:
        return None
    image = decoded.image
    image.thumbnail((size, size), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


def thumbnail_bytes(
    uris: Sequence[str],
    md5s: Sequence[str | None] | None = None,
    *,
    size: int = DEFAULT_SIZE,
    token: Any = None,
    cache: bool = True,
    workers: int = 4,
    scope: FetchScope | None = None,
) -> list[bytes | None]:
    """JPEG thumbnails of many images: from the disk cache, else fetched concurrently.

    Args:
        uris: Image URIs (``gs://...``, ``file://...``, local paths, any fsspec URL).
        md5s: Their md5 (the dataset's ``md5`` column), so a changed image is fetched again.
            None: cached per URI only.
        size: Longest side of the thumbnails, in pixels.
        token: Credentials for ``gs://`` (see :mod:`gcsemb.auth`), or the
            :class:`~gcsemb.storage.Store` whose access to reuse (a dataset's, for its images).
        cache: Read and write the disk cache (``cache_root()``).
        workers: Threads decoding images.
        scope: Fetch only the URIs it allows (:func:`dataset_scope` of the rows' dataset); the
            others get None and one warning. None: every URI (the caller named them).

    Returns:
        One entry per URI, in order: JPEG bytes, or None where the image could not be fetched
        or decoded (the reason is logged at DEBUG level) or is outside ``scope``.

    Example:
        >>> jpegs = thumbnail_bytes(df["uri"][:100], df["md5"][:100])  # doctest: +SKIP
    """
    uris = [str(u) for u in uris]
    md5s = list(md5s) if md5s is not None else [None] * len(uris)
    if len(md5s) != len(uris):
        raise ValueError(f"{len(uris)} uris but {len(md5s)} md5s: pass one md5 per uri (or none).")
    out: list[bytes | None] = [None] * len(uris)
    missing: dict[str, list[int]] = {}
    refused = [u for u in dict.fromkeys(uris) if scope is not None and not scope.allows(u)]
    if refused:
        log.warning(
            "not fetching %d image(s) the dataset's rows name, e.g. %s: %s (to fetch others, "
            "pass their URIs as a list)",
            len(refused),
            refused[0],
            scope.why if scope is not None else "",
        )
    skip = set(refused)
    for i, (uri, md5) in enumerate(zip(uris, md5s, strict=True)):
        if uri in skip:
            continue
        path = thumbnail_path(uri, md5, size)
        if cache and path.is_file():
            try:
                out[i] = path.read_bytes()
                continue
            except OSError:
                pass
        missing.setdefault(uri, []).append(i)
    if not missing:
        return out
    by_fs: dict[str, list[str]] = {}
    for uri in missing:
        by_fs.setdefault(uri.split("://", 1)[0] if "://" in uri else "file", []).append(uri)
    with ThreadPoolExecutor(workers) as pool:
        for group in by_fs.values():
            for start in range(0, len(group), _FETCH_BATCH):
                chunk = group[start : start + _FETCH_BATCH]
                fetched = _fetch(chunk, token)
                thumbs = pool.map(
                    lambda data: make_thumbnail(data, size) if data else None, fetched
                )
                for uri, thumb in zip(chunk, thumbs, strict=True):
                    if thumb is None:
                        log.debug("no thumbnail for %s", uri)
                        continue
                    for i in missing[uri]:
                        out[i] = thumb
                    if cache:
                        _store(thumbnail_path(uri, md5s[missing[uri][0]], size), thumb)
    return out


def thumbnails(
    uris: Sequence[str],
    md5s: Sequence[str | None] | None = None,
    *,
    size: int = DEFAULT_SIZE,
    token: Any = None,
    cache: bool = True,
    scope: FetchScope | None = None,
) -> list[Image.Image | None]:
    """Like :func:`thumbnail_bytes`, as RGB PIL images (None where unavailable).

    Example:
        >>> images = thumbnails(results["uri"], results["md5"])  # doctest: +SKIP
    """
    out: list[Image.Image | None] = []
    for data in thumbnail_bytes(uris, md5s, size=size, token=token, cache=cache, scope=scope):
        if data is None:
            out.append(None)
            continue
        image = Image.open(io.BytesIO(data))
        image.load()
        out.append(image.convert("RGB"))
    return out


def _fetch(uris: list[str], token: Any) -> list[bytes | None]:
    """The bytes of each URI (None on failure), all requests of the batch in flight at once."""
    from gcsemb.storage import cat_many, open_store

    try:
        store = open_store(uris[0], token=token)
        got = cat_many(store, [store.fs._strip_protocol(u) for u in uris])
    except Exception as e:  # e.g. credentials refused for the whole batch
        log.warning("cannot fetch thumbnails from %s: %s", uris[0], e)
        return [None] * len(uris)
    out: list[bytes | None] = []
    for uri, data in zip(uris, got, strict=True):
        if isinstance(data, BaseException):
            log.debug("cannot fetch %s: %s", uri, data)
            out.append(None)
        else:
            out.append(bytes(data))
    return out


def _store(path: Path, data: bytes) -> None:
    """Write a thumbnail into the cache atomically; a read-only cache only costs re-fetching."""
    from gcsemb.checkpoints import atomic_write

    try:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    except OSError as e:
        log.debug("cannot cache %s: %s", path, e)
