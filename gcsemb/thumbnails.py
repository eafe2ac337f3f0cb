"""Small thumbnails of the images behind a dataset, fetched concurrently and cached on disk.

A plot with 100 thumbnails or an image grid of search results needs 100 small pictures of images
that live in a bucket. :func:`thumbnail_bytes` checks the local cache first, fetches every missing
image in one concurrent batch (``fs.cat([...], on_error="return")``: many requests in flight, one
failure never spoils the rest), decodes them with :func:`gcsemb.decode.decode_image` (JPEGs at a
reduced size, threads), shrinks them and stores JPEG thumbnails under
``cache_dir()/thumbnails/<sha1 of uri, md5 and size>.jpg``. The md5 is part of the key, so an image
replaced in the bucket gets a fresh thumbnail; the next plot of the same images reads only the disk.

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
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

DEFAULT_SIZE = 128
"""Longest side of a thumbnail, in pixels."""

_FETCH_BATCH = 256  # objects per concurrent fetch; bounds the memory of full-size images


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

    Returns:
        One entry per URI, in order: JPEG bytes, or None where the image could not be fetched
        or decoded (the reason is logged at DEBUG level).

    Example:
        >>> jpegs = thumbnail_bytes(df["uri"][:100], df["md5"][:100])  # doctest: +SKIP
    """
    uris = [str(u) for u in uris]
    md5s = list(md5s) if md5s is not None else [None] * len(uris)
    if len(md5s) != len(uris):
        raise ValueError(f"{len(uris)} uris but {len(md5s)} md5s: pass one md5 per uri (or none).")
    out: list[bytes | None] = [None] * len(uris)
    missing: dict[str, list[int]] = {}
    for i, (uri, md5) in enumerate(zip(uris, md5s, strict=True)):
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
) -> list[Image.Image | None]:
    """Like :func:`thumbnail_bytes`, as RGB PIL images (None where unavailable).

    Example:
        >>> images = thumbnails(results["uri"], results["md5"])  # doctest: +SKIP
    """
    out: list[Image.Image | None] = []
    for data in thumbnail_bytes(uris, md5s, size=size, token=token, cache=cache):
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
