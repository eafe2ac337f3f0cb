"""One entry point from a URL to a configured filesystem, and streaming image listings.

``filesystem(url, token=...)`` gives an fsspec filesystem for ``gs://`` URLs (authenticated with
:mod:`gcsemb.auth`), local paths and any other fsspec URL. URIs are rebuilt with
``fs.unstrip_protocol`` so the tuple-valued ``fs.protocol`` of gcsfs (``("gs", "gcs")``) is never
concatenated into a URL by hand.

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
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from typing import Any

from gcsemb.auth import Identity, resolve, verify
from gcsemb.errors import AUTH_FIXES, AccessDenied, BadURL, GcsembError, NotFound

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".avif"}
)
GCS_PROTOCOLS = ("gs", "gcs")
EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# gcsfs >= 2026.3 asks a gRPC control API for the bucket type before reads; against an emulator
# that retries for a minute per call. It is read when gcsfs is imported, so set it early.
ZB_HNS_ENV = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
PAGE_SIZE = 1000  # the most GCS returns per listing call
_LIST_FIELDS = "items(name,size,md5Hash,crc32c,generation,contentType,updated),nextPageToken"
_GLOB_CHARS = re.compile(r"[*\[]")


@dataclass(frozen=True, slots=True)
class ObjectInfo:
    """One listed image object: what later stages need without downloading it.

    Attributes:
        uri: Full URI, e.g. ``gs://bucket/photos/cat.jpg``.
        size: Bytes.
        md5: Base64 MD5 as GCS reports it (``None`` where the store gives none, e.g. composite
            objects or local files).
        crc32c: Base64 CRC32C as GCS reports it, or ``None``.
        generation: GCS object generation (changes on every overwrite), or ``None``.
        content_type: MIME type as stored.
        updated: Last modification time (UTC).
    """

    uri: str
    size: int
    md5: str | None = None
    crc32c: str | None = None
    generation: int | None = None
    content_type: str | None = None
    updated: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict (``updated`` as ISO 8601)."""
        out = asdict(self)
        out["updated"] = self.updated.isoformat() if self.updated else None
        return out


def is_gcs(url: str) -> bool:
    """Whether ``url`` names Google Cloud Storage (``gs://`` or ``gcs://``)."""
    return url.split("://", 1)[0].lower() in GCS_PROTOCOLS if "://" in url else False


def emulator_filesystem(endpoint: str, **options: Any) -> Any:
    """A gcsfs filesystem for a GCS emulator at ``endpoint`` (anonymous by default).

    Uses gcsfs's core class, which never asks the gRPC control API about bucket types (that
    lookup stalls for a minute per call against an emulator).
    """
    os.environ.setdefault(ZB_HNS_ENV, "false")
    from gcsfs.core import GCSFileSystem

    options.setdefault("token", "anon")
    options["project"] = options.get("project") or "emulator"  # silences gcsfs's project warning
    return GCSFileSystem(endpoint_url=endpoint, **options)


def filesystem(
    url: str,
    token: Any = None,
    *,
    project: str | None = None,
    requester_pays: bool | str = False,
    **storage_options: Any,
) -> tuple[Any, str]:
    """Return ``(fs, path)`` for a URL: a configured fsspec filesystem and the path inside it.

    Args:
        url: ``gs://bucket/prefix``, a local path, or any fsspec URL.
        token: Credentials for ``gs://`` (see :mod:`gcsemb.auth`); ignored elsewhere.
        project: Google Cloud project (billing for requester-pays buckets).
        requester_pays: Bill reads to ``project`` (or to this project id, if a string).
        **storage_options: Passed to the filesystem (e.g. ``endpoint_url``).

    Returns:
        The filesystem and the protocol-less path. For GCS the filesystem carries the
        resolved :class:`~gcsemb.auth.Identity` as ``fs.gcsemb_identity``.

    Raises:
        AuthError: Credentials could not be resolved.
        BadURL: The URL is empty or names no bucket.

    Example:
        >>> fs, path = filesystem("/tmp")
        >>> path
        '/tmp'
    """
    if not url:
        raise BadURL("Empty URL: give gs://bucket/prefix, a local folder, or an fsspec URL.")
    if not is_gcs(url):
        import fsspec

        try:
            return fsspec.core.url_to_fs(url, **storage_options)
        except (ImportError, ValueError) as e:
            raise BadURL(f"Cannot open {url!r}: {e}") from e
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if not bucket:
        raise BadURL(f"{url!r} names no bucket: write gs://BUCKET/optional/prefix.")
    emulator = os.environ.get(EMULATOR_ENV)
    endpoint = storage_options.pop("endpoint_url", None) or emulator
    identity = verify(resolve(token, emulator=endpoint == emulator))
    options = dict(
        token=identity.token, project=project, requester_pays=requester_pays, **storage_options
    )
    if endpoint:
        fs = emulator_filesystem(endpoint, **options)
    else:
        import gcsfs

        fs = gcsfs.GCSFileSystem(**options)
    fs.gcsemb_identity = identity
    return fs, fs._strip_protocol(url)


def protocols(fs: Any) -> tuple[str, ...]:
    """A filesystem's protocol names as a tuple (gcsfs and local files give several)."""
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def identity_of(fs: Any) -> str:
    """The identity a filesystem uses, for messages (``"local files"`` outside GCS)."""
    identity: Identity | None = getattr(fs, "gcsemb_identity", None)
    return identity.description if identity else "local files"


def explain(exc: BaseException, uri: str, fs: Any, action: str = "read") -> GcsembError:
    """Translate a storage exception into a :class:`GcsembError` that names the fix.

    Args:
        exc: What gcsfs or fsspec raised.
        uri: The URI being accessed.
        fs: The filesystem in use (for the identity).
        action: ``"list"``, ``"read"`` or ``"write"``.
    """
    if isinstance(exc, GcsembError):
        return exc
    who = identity_of(fs)
    text = str(exc).split("\n")[-1][:300]
    code = getattr(exc, "code", None)
    if isinstance(exc, FileNotFoundError):
        target = f"gs://{uri[5:].split('/', 1)[0]}" if uri.startswith("gs://") else uri
        return NotFound(f"{target} does not exist (looked up as {who}). Check the name for typos.")
    if (code == 401 or "Invalid Credentials" in text) and who.startswith("anonymous"):
        return AccessDenied(
            f"{uri} is not public: anonymous requests are refused (401). {AUTH_FIXES}"
        )
    if code == 401 or "Invalid Credentials" in text:
        return AccessDenied(f"Google rejected the credentials of {who} (401). {AUTH_FIXES}")
    if isinstance(exc, PermissionError):
        return AccessDenied(f"No permission to {action} {uri} ({text}): pick a folder you own.")
    if code == 403 or str(exc).startswith("Forbidden"):
        role = {"list": "roles/storage.objectViewer", "read": "roles/storage.objectViewer"}.get(
            action, "roles/storage.objectCreator"
        )
        return AccessDenied(
            f"{who} may not {action} {uri} (403: {text}). Grant it {role} on the bucket, "
            f"or use another identity. {AUTH_FIXES}"
        )
    if "requester pays" in text.lower():
        return GcsembError(
            f"{uri} is a requester-pays bucket: pass requester_pays=True and project=... "
            "(CLI: --requester-pays --project ID) to bill reads to your project."
        )
    return GcsembError(f"Could not {action} {uri} as {who}: {type(exc).__name__}: {text}")


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


def _timestamp(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _gcs_objects(fs: Any, path: str) -> Iterator[ObjectInfo]:
    """Objects under ``bucket/prefix``, one listing call per 1000 objects."""
    bucket, _, prefix = path.partition("/")
    page_token = None
    while True:
        page = fs.call(
            "GET",
            "b/{}/o",
            bucket,
            json_out=True,
            prefix=prefix or None,
            maxResults=PAGE_SIZE,
            pageToken=page_token,
            fields=_LIST_FIELDS,
        )
        for item in page.get("items", []):
            yield _from_resource(bucket, item["name"], item)
        page_token = page.get("nextPageToken")
        if not page_token:
            return


def _fsspec_objects(fs: Any, path: str) -> Iterator[ObjectInfo]:
    """Files under ``path`` on any fsspec filesystem, folder by folder (streamed)."""
    if fs.isfile(path):
        yield _info_to_object(fs, fs.info(path))
        return
    for _folder, _dirs, files in fs.walk(path, detail=True):
        for name in sorted(files):
            yield _info_to_object(fs, files[name])


def _info_to_object(fs: Any, info: dict[str, Any]) -> ObjectInfo:
    mtime = info.get("mtime") or info.get("LastModified")
    if isinstance(mtime, int | float):
        mtime = datetime.fromtimestamp(mtime, tz=timezone.utc)
    return ObjectInfo(
        uri=fs.unstrip_protocol(info["name"]),
        size=int(info.get("size") or 0),
        md5=info.get("md5Hash"),
        updated=mtime,
    )


def list_images(
    url: str,
    token: Any = None,
    *,
    project: str | None = None,
    requester_pays: bool | str = False,
    extensions: frozenset[str] | set[str] | None = IMAGE_EXTENSIONS,
    limit: int | None = None,
    **storage_options: Any,
) -> Iterator[ObjectInfo]:
    """Stream the image objects under a prefix, a glob, or a single object.

    ``gs://b/photos`` lists everything below ``photos/``; ``gs://b/photos/**/*.jpg`` and
    ``gs://b/*/cat[0-9].png`` filter by glob (``*``, ``**``, ``[...]``; ``?`` is taken literally
    since object names often contain it). Listing streams page by page (1000 objects per request),
    so a bucket of millions is never held in memory.

    Args:
        url: What to list (``gs://``, a local folder, or any fsspec URL).
        token: Credentials (see :mod:`gcsemb.auth`).
        project: Google Cloud project, for requester-pays buckets.
        requester_pays: Bill the reads to ``project``.
        extensions: File name endings counted as images (case-insensitive); ``None`` keeps all.
        limit: Stop after this many images.
        **storage_options: Passed to the filesystem.

    Yields:
        One :class:`ObjectInfo` per image, in name order.

    Raises:
        NotFound: The bucket or local folder does not exist.
        AccessDenied: The identity may not list there; the message names the fix.

    Example:
        >>> import itertools
        >>> objs = list_images("gs://my-bucket/photos", limit=10)  # doctest: +SKIP
        >>> [o.uri for o in objs]  # doctest: +SKIP
        ['gs://my-bucket/photos/a.jpg', ...]
    """
    fs, path = filesystem(
        url, token, project=project, requester_pays=requester_pays, **storage_options
    )
    gcs = is_gcs(url)
    match = _GLOB_CHARS.search(path)
    if match:
        base = path[: match.start()].rsplit("/", 1)[0] if "/" in path[: match.start()] else ""
        pattern = _glob_regex(path)
        if gcs and "/" not in path[: match.start()]:
            raise BadURL(f"{url!r}: the bucket name cannot be a glob.")
    else:
        base, pattern = path, None
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions or ()}
    count = 0
    try:
        if gcs:
            prefix = base if pattern else (base.rstrip("/") + "/" if "/" in base else base)
            objects = _gcs_objects(fs, prefix)
        else:
            if not fs.exists(base):
                raise NotFound(f"{base} does not exist. Check the path for typos.")
            objects = _fsspec_objects(fs, base)
        for obj in objects:
            name = fs._strip_protocol(obj.uri)
            if pattern and not pattern.match(name):
                continue
            if exts and os.path.splitext(name)[1].lower() not in exts:
                continue
            yield obj
            count += 1
            if limit is not None and count >= limit:
                return
        if count == 0 and gcs and not pattern and not path.endswith("/") and "/" in path:
            # ``gs://b/a.jpg`` names one object rather than a folder
            yield from _single_gcs_object(fs, path)
    except Exception as e:
        raise explain(e, url, fs, "list") from e


def _single_gcs_object(fs: Any, path: str) -> Iterator[ObjectInfo]:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return
    if info.get("type") == "file":
        bucket, _, name = path.partition("/")
        yield _from_resource(bucket, name, info)


def _from_resource(bucket: str, name: str, item: dict[str, Any]) -> ObjectInfo:
    """An :class:`ObjectInfo` from a GCS object resource (as listed, or as gcsfs's info)."""
    return ObjectInfo(
        uri=f"gs://{bucket}/{name}",
        size=int(item.get("size", 0)),
        md5=item.get("md5Hash"),
        crc32c=item.get("crc32c"),
        generation=int(item["generation"]) if item.get("generation") else None,
        content_type=item.get("contentType"),
        updated=_timestamp(item.get("updated")),
    )
