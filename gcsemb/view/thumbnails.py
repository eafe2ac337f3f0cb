"""Small thumbnails of the images behind a dataset, fetched concurrently and cached on disk.

A plot with 100 thumbnails or an image grid of search results needs 100 small pictures of images
that live in a bucket. :func:`thumbnail_bytes` checks the local cache first, fetches every missing
image in one concurrent batch (``fs.cat([...], on_error="return")``: many requests in flight, one
failure never spoils the rest), decodes them with :func:`gcsemb.images.decode.decode_image` (JPEGs
at a reduced size, threads), shrinks them and stores JPEG thumbnails under
``cache_dir()/thumbnails/<sha1 of uri, md5 and size>.jpg``. The md5 is part of the key, so an image
replaced in the bucket gets a fresh thumbnail; the next plot of the same images reads only the disk.

A dataset may come from anyone, and its ``uri`` column names what would be fetched. So
:func:`row_thumbnails` fetches the rows of a dataset only under the source it was embedded from
(:mod:`gcsemb.storage.scope`); the others are left blank, with one log line saying why. URIs
you pass yourself (a list, to :func:`thumbnail_bytes`) are fetched as given. Every read is capped
(ranged): at the row's ``size`` when known, and at :data:`MAX_SOURCE_BYTES`; one fetch holds at
most 512 MiB of caps. An image is decoded only in the formats its name implies, as in a run (a
PCX file named ``.jpg`` gets no thumbnail).

Example:
    >>> from gcsemb.view.thumbnails import as_image, thumbnail_bytes
    >>> jpegs = thumbnail_bytes(["gs://my-bucket/photos/cat.jpg"], size_px=128)  # doctest: +SKIP
    >>> as_image(jpegs[0]).size  # doctest: +SKIP
    (128, 96)
"""

from __future__ import annotations

import hashlib
import io
import logging
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from gcsemb.storage.scope import FetchScope, dataset_scope

log = logging.getLogger(__name__)

DEFAULT_SIZE_PX = 128
"""Longest side of a thumbnail, in pixels."""

_FETCH_BATCH = 256  # objects per concurrent fetch
_GROUP_BYTES = 512 << 20  # the most bytes a concurrent fetch may bring in (sum of read caps)
MAX_SOURCE_BYTES = 64 << 20
"""The most bytes read of one image for its thumbnail: a larger image stays blank."""


def cache_root() -> Path:
    """The folder thumbnails are cached in: ``gcsemb.storage.cache.cache_dir() / "thumbnails"``."""
    from gcsemb.storage.cache import cache_dir

    return cache_dir() / "thumbnails"


def thumbnail_path(uri: str, md5: str | None, size_px: int = DEFAULT_SIZE_PX) -> Path:
    """Where the thumbnail of this version of ``uri`` at ``size_px`` pixels is cached.

    Example:
        >>> thumbnail_path("gs://b/cat.jpg", "abc==", 128).suffix
        '.jpg'
    """
    key = hashlib.sha1(f"{uri}\n{md5 or ''}\n{size_px}".encode()).hexdigest()
    return cache_root() / key[:2] / f"{key}.jpg"


def make_thumbnail(
    data: bytes, size_px: int = DEFAULT_SIZE_PX, name: str | None = None
) -> bytes | None:
    """JPEG bytes of a thumbnail (longest side ``size_px``) of image bytes; None if undecodable.

    Args:
        data: The image file's bytes.
        size_px: Longest side of the thumbnail, in pixels.
        name: The image's name or URI: as in a run, its extension picks the decoders that may
            run (:func:`gcsemb.images.decode.allowed_formats`; a PCX file named ``.jpg`` stays
            undecoded). None allows every format but EPS.

    Example:
        >>> buf = io.BytesIO()
        >>> Image.new("RGB", (640, 480), "red").save(buf, "PNG")
        >>> Image.open(io.BytesIO(make_thumbnail(buf.getvalue(), 64))).size
        (64, 48)
    """
    from gcsemb.images.decode import decode_image

    decoded = decode_image(data, min_side=size_px, name=name)
    if not decoded.ok:
        return None
    image = decoded.image
    image.thumbnail((size_px, size_px), Image.Resampling.LANCZOS, reducing_gap=2.0)
    out = io.BytesIO()
    image.save(out, "JPEG", quality=85, optimize=True)
    return out.getvalue()


def thumbnail_bytes(
    uris: Sequence[str],
    md5s: Sequence[str | None] | None = None,
    *,
    size_px: int = DEFAULT_SIZE_PX,
    token: Any = None,
    cache: bool = True,
    workers: int = 4,
    scope: FetchScope | None = None,
    sizes: Sequence[Any] | None = None,
) -> list[bytes | None]:
    """JPEG thumbnails of many images: from the disk cache, else fetched concurrently.

    Each image is read no further than its size (``sizes``) and :data:`MAX_SOURCE_BYTES`, with
    ranged reads, and decoded only in the formats its name implies (as a run decodes it).

    Args:
        uris: Image URIs (``gs://...``, ``file://...``, local paths, any fsspec URL).
        md5s: Their md5 (the dataset's ``md5`` column), so a changed image is fetched again.
            None: cached per URI only.
        size_px: Longest side of the thumbnails, in pixels.
        token: Credentials for ``gs://`` (see :mod:`gcsemb.storage.auth`), or the
            :class:`~gcsemb.storage.Store` whose access to reuse (a dataset's, for its images).
        cache: Read and write the disk cache (``cache_root()``).
        workers: Threads decoding images.
        scope: Fetch only the URIs it allows (:func:`dataset_scope` of the rows' dataset); the
            others get None and one warning. None: every URI (the caller named them).
        sizes: Their size in bytes (the dataset's ``size`` column): an image holding more is
            not read further and gets no thumbnail. None (or a missing value): up to
            :data:`MAX_SOURCE_BYTES`.

    Returns:
        One entry per URI, in order: JPEG bytes, or None where the image could not be fetched
        or decoded (the reason is logged at DEBUG level) or is outside ``scope``.

    Example:
        >>> jpegs = thumbnail_bytes(df["uri"][:100], df["md5"][:100])  # doctest: +SKIP
    """
    uris = [str(u) for u in uris]
    md5s = list(md5s) if md5s is not None else [None] * len(uris)
    caps = [_cap(n) for n in sizes] if sizes is not None else [MAX_SOURCE_BYTES] * len(uris)
    if not len(md5s) == len(caps) == len(uris):
        raise ValueError(
            f"{len(uris)} uris but {len(md5s)} md5s and {len(caps)} sizes: pass one per uri."
        )
    out: list[bytes | None] = [None] * len(uris)
    skip = _refused(uris, scope)
    missing: dict[str, list[int]] = {}
    for i, (uri, md5) in enumerate(zip(uris, md5s, strict=True)):
        if uri not in skip:
            out[i] = _cached(thumbnail_path(uri, md5, size_px)) if cache else None
            if out[i] is None and caps[i] is None:
                log.debug("no thumbnail for %s: larger than %d bytes", uri, MAX_SOURCE_BYTES)
            elif out[i] is None:
                missing.setdefault(uri, []).append(i)
    if missing:
        todo = {uri: caps[rows[0]] for uri, rows in missing.items()}
        with ThreadPoolExecutor(workers) as pool:
            for uri, thumb in _fetch_thumbnails(todo, size_px, token, pool):
                for i in missing[uri]:
                    out[i] = thumb
                if cache:
                    _store(thumbnail_path(uri, md5s[missing[uri][0]], size_px), thumb)
    return out


def row_thumbnails(
    uris: Sequence[str],
    md5s: Sequence[str | None] | None,
    attrs: Mapping[str, Any],
    *,
    size_px: int = DEFAULT_SIZE_PX,
    token: Any = None,
    sizes: Sequence[Any] | None = None,
) -> list[bytes | None]:
    """:func:`thumbnail_bytes` of a dataset's rows: with its access, and only under its source.

    Args:
        uris: The rows' ``uri`` values.
        md5s: Their ``md5`` values, or None.
        attrs: ``df.attrs`` of the rows (:func:`gcsemb.read_embeddings`, search results, a
            projection): the dataset's access and source.
        size_px: Longest side of the thumbnails, in pixels.
        token: Credentials to use instead of the dataset's access.
        sizes: Their ``size`` values, or None: no image is read beyond its row's size.

    Example:
        >>> jpegs = row_thumbnails(hits["uri"], hits["md5"], hits.attrs)  # doctest: +SKIP
    """
    access = attrs.get("store") if token is None else token
    scope = dataset_scope(attrs)  # a dataset's rows fetch only from its source
    return thumbnail_bytes(uris, md5s, size_px=size_px, token=access, scope=scope, sizes=sizes)


def as_image(jpeg: bytes | None) -> Image.Image | None:
    """The RGB picture of a thumbnail's JPEG bytes (None stays None).

    Example:
        >>> as_image(None) is None
        True
    """
    if jpeg is None:
        return None
    image = Image.open(io.BytesIO(jpeg))
    image.load()
    return image.convert("RGB")


def _refused(uris: list[str], scope: FetchScope | None) -> set[str]:
    """The URIs ``scope`` does not allow, said in one warning."""
    if scope is None:
        return set()
    refused = [u for u in dict.fromkeys(uris) if not scope.allows(u)]
    if refused:
        log.warning(
            "not fetching %d image(s) the dataset's rows name, e.g. %s: %s (to fetch others, "
            "pass their URIs as a list)",
            len(refused),
            refused[0],
            scope.why,
        )
    return set(refused)


def _cached(path: Path) -> bytes | None:
    """The thumbnail cached at ``path``, if any."""
    try:
        return path.read_bytes() if path.is_file() else None
    except OSError:
        return None


def _cap(size: Any) -> int | None:
    """The most bytes to read of an image of this claimed size; None: more than allowed."""
    try:
        claimed = int(size)
    except (TypeError, ValueError, OverflowError):  # None, NaN: no size known
        return MAX_SOURCE_BYTES
    return max(claimed, 0) if claimed <= MAX_SOURCE_BYTES else None


def _fetch_thumbnails(
    caps: dict[str, int], size_px: int, token: Any, pool: ThreadPoolExecutor
) -> Iterator[tuple[str, bytes]]:
    """``(uri, thumbnail)`` of each URI that could be fetched and decoded, group by group.

    A group holds at most ``_FETCH_BATCH`` images and ``_GROUP_BYTES`` of read caps, so the
    bytes in memory at once stay bounded whatever the images hold.
    """
    by_fs: dict[str, list[str]] = {}
    for uri in caps:
        by_fs.setdefault(uri.split("://", 1)[0] if "://" in uri else "file", []).append(uri)
    for group in by_fs.values():
        for chunk in _chunks(group, caps):
            fetched = _fetch(chunk, [caps[u] for u in chunk], token)
            thumbs = pool.map(
                lambda uri, data: make_thumbnail(data, size_px, uri) if data else None,
                chunk,
                fetched,
            )
            for uri, thumb in zip(chunk, thumbs, strict=True):
                if thumb is None:
                    log.debug("no thumbnail for %s", uri)
                else:
                    yield uri, thumb


def _chunks(uris: list[str], caps: dict[str, int]) -> Iterator[list[str]]:
    """``uris`` in groups of at most ``_FETCH_BATCH`` and ``_GROUP_BYTES`` of read caps."""
    chunk: list[str] = []
    nbytes = 0
    for uri in uris:
        if chunk and (len(chunk) >= _FETCH_BATCH or nbytes + caps[uri] > _GROUP_BYTES):
            yield chunk
            chunk, nbytes = [], 0
        chunk.append(uri)
        nbytes += caps[uri]
    if chunk:
        yield chunk


def _fetch(uris: list[str], caps: list[int], token: Any) -> list[bytes | None]:
    """The bytes of each URI (None on failure), all requests of the batch in flight at once."""
    from gcsemb.storage import open_store

    try:
        store = open_store(uris[0], token=token)
        paths = [store.fs._strip_protocol(u) for u in uris]
        got = store.read_many(paths, list(caps))
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
    from gcsemb.storage.cache import atomic_write

    try:
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(data))
    except OSError as e:
        log.debug("cannot cache %s: %s", path, e)
