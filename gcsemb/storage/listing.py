"""Streaming image listings: a prefix, a glob, or one object named literally.

Example:
    >>> from gcsemb import list_images
    >>> for obj in list_images("gs://my-bucket/photos/**/*.jpg"):  # doctest: +SKIP
    ...     print(obj.uri, obj.size, obj.md5)
"""

from __future__ import annotations

import fnmatch
import os
import re
from collections.abc import Iterator
from typing import Any

from gcsemb.storage.explain import explain
from gcsemb.storage.handle import Store, open_store
from gcsemb.storage.objects import IMAGE_EXTENSIONS, ObjectInfo

_GLOB_CHARS = re.compile(r"[*\[]")


def list_images(
    url: str | Store,
    *,
    token: Any = None,
    extensions: frozenset[str] | set[str] | None = IMAGE_EXTENSIONS,
    limit: int | None = None,
) -> Iterator[ObjectInfo]:
    """Stream the image objects under a prefix, a glob, or a single object.

    ``gs://b/photos`` lists everything below ``photos/``; ``gs://b/photos/**/*.jpg`` and
    ``gs://b/*/cat[0-9].png`` filter by glob (``*``, ``**``, ``[...]``; ``?`` is taken literally
    since object names often contain it). A glob that matches nothing but names an object
    literally (``photo[1].jpg``) gives that object. Listing streams page by page (1000 objects
    per request), so a bucket of millions is never held in memory.

    Args:
        url: What to list (``gs://``, a local folder, or any fsspec URL), or a :class:`Store`.
        token: Credentials (see :mod:`gcsemb.storage.auth`); billing and another endpoint
            come with a :class:`Store` (:func:`open_store`).
        extensions: File name endings counted as images (case-insensitive); ``None`` keeps all.
        limit: Stop after this many images.

    Returns:
        An iterator of one :class:`ObjectInfo` per image, in name order.

    Raises:
        AuthError: No credentials, or Google refuses them (raised by the call itself).
        NotFound: The bucket or local folder does not exist (raised while iterating).
        AccessDenied: The identity may not list there; the message names the fix.

    Example:
        >>> objs = list_images("gs://my-bucket/photos", limit=10)  # doctest: +SKIP
        >>> [o.uri for o in objs]  # doctest: +SKIP
        ['gs://my-bucket/photos/a.jpg', ...]
    """
    store = open_store(url, token=token)  # now, not on the first next(): credentials fail here
    return _list(store, extensions, limit)


def glob_base(path: str) -> tuple[str, re.Pattern[str] | None]:
    """Split a path into the folder to list and the glob every name must match (or None)."""
    match = _GLOB_CHARS.search(path)
    if not match:
        return path, None
    head = path[: match.start()]
    return (head.rsplit("/", 1)[0] if "/" in head else ""), _glob_regex(path)


def normalize_extensions(extensions: frozenset[str] | set[str] | None) -> set[str]:
    """``{"JPG", ".png"}`` -> ``{".jpg", ".png"}``; None or empty keeps every file."""
    return {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions or ()}


def _list(
    store: Store, extensions: frozenset[str] | set[str] | None, limit: int | None
) -> Iterator[ObjectInfo]:
    backend, path = store.backend, store.path
    base, pattern = glob_base(path)
    exts = normalize_extensions(extensions)
    count = 0
    try:
        for obj in backend.objects(base):
            name = store.fs._strip_protocol(obj.uri)
            if pattern and not pattern.match(name):
                continue
            if exts and os.path.splitext(name)[1].lower() not in exts:
                continue
            yield obj
            count += 1
            if limit is not None and count >= limit:
                return
        if count == 0 and not path.endswith("/"):
            # ``gs://b/a.jpg`` or ``photo[1].jpg``: one object, named literally
            named = backend.named(path)
            if named is not None:
                yield named
    except Exception as e:
        raise explain(e, store.url, store, "list") from e


def _glob_regex(pattern: str) -> re.Pattern[str]:
    """``*`` within one folder, ``**`` across folders, ``[...]`` classes; ``?`` stays literal."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
        elif pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "[" and "]" in pattern[i + 1 :]:
            end = pattern.index("]", i + 1)
            out.append(fnmatch.translate(pattern[i : end + 1])[4:-3])
            i = end + 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return re.compile("".join(out) + r"\Z", re.DOTALL)
