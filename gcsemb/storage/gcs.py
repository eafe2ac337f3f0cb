"""Google Cloud Storage (and any endpoint speaking its JSON API, such as fake-gcs-server).

The one file that knows GCS: credentials resolved for Google or a named endpoint, gcsfs opened
with them, listings paged 1000 objects a call, writes and deletes conditional on an object's
generation (``ifGenerationMatch``), the server's ``Date`` as the lease's clock, and error
messages that name the IAM role a refused identity needs.

Example:
    >>> GcsBackend.inside("photos", "gs://photos/cats/1.jpg")
    True
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import re
import warnings
from collections.abc import Iterator
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

from gcsemb.errors import READ_ROLE, WRITE_ROLE, BadURL
from gcsemb.storage.auth import ANONYMOUS, Identity, resolve, verify
from gcsemb.storage.backend import Access, Backend, register
from gcsemb.storage.objects import Entry, ObjectInfo, parse_time
from gcsemb.storage.scope import NOTHING, FetchScope

EMULATOR_ENV = "STORAGE_EMULATOR_HOST"
# gcsfs >= 2026.3 asks a gRPC control API for the bucket type before reads; against an emulator
# that retries for a minute per call. It is read when gcsfs is imported, so set it early.
ZB_HNS_ENV = "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT"
PAGE_SIZE = 1000  # the most GCS returns per listing call
_LIST_FIELDS = "items(name,size,md5Hash,crc32c,generation,contentType,updated),nextPageToken"


@register
class GcsBackend(Backend):
    """``gs://`` and ``gcs://`` URLs, on Google or on ``endpoint``."""

    schemes = ("gs", "gcs")
    signs_in = True
    literal_names = True

    @classmethod
    def open(cls, url: str, access: Access) -> tuple[Identity, Access]:
        """Resolve the credentials (a token is fetched now: a refused key fails here)."""
        bucket = url.split("://", 1)[1].split("/", 1)[0]
        if not bucket:
            raise BadURL(f"{url!r} names no bucket: write gs://BUCKET/optional/prefix.")
        endpoint = access.endpoint or os.environ.get(EMULATOR_ENV) or None
        if endpoint and "://" not in endpoint:
            endpoint = f"http://{endpoint}"  # STORAGE_EMULATOR_HOST may be host:port
        if access.token is None and not receives_found_credentials(endpoint):
            identity = _withheld(endpoint)
        else:
            identity = verify(resolve(access.token, local_endpoint=is_loopback(endpoint)))
        return identity, Access(identity, access.project, access.requester_pays, endpoint)

    def filesystem(self) -> Any:
        """A gcsfs filesystem with this handle's credentials, billing and endpoint."""
        access = self.store.access
        return gcs_filesystem(
            self.store.identity.token, access.project, access.requester_pays, access.endpoint
        )

    def uri(self, path: str) -> str:
        """``gs://bucket/name``."""
        return f"gs://{path}"

    # --- listing -------------------------------------------------------------------------

    def objects(self, path: str) -> Iterator[ObjectInfo]:
        """Every object under the prefix, one listing call per 1000 objects."""
        bucket, _, prefix = path.partition("/")
        if not bucket:
            raise BadURL(f"{self.store.url!r}: the bucket name cannot be a glob.")
        prefix = prefix.rstrip("/") + "/" if prefix.strip("/") else ""
        for item in self._pages(bucket, prefix, _LIST_FIELDS, maxResults=PAGE_SIZE):
            yield object_from_resource(bucket, item["name"], item)

    def named(self, path: str) -> ObjectInfo | None:
        """The object a prefix names (``gs://b/a.jpg`` is listed as a folder first)."""
        if "/" not in path.rstrip("/"):
            return None
        try:
            info = self.fs.info(path)
        except FileNotFoundError:
            return None
        if info.get("type") != "file":
            return None
        bucket, _, name = path.partition("/")
        return object_from_resource(bucket, name, info)

    def children(self, path: str) -> tuple[list[str], list[ObjectInfo]]:
        """One delimiter listing: the prefix's folders and its objects."""
        folders, files = [], []
        for info in self.fs.ls(path, detail=True, refresh=True):
            name = info["name"].rstrip("/")
            if info.get("type") == "directory":
                folders.append(name)
            elif info.get("type") == "file":
                bucket, _, key = name.partition("/")
                files.append(object_from_resource(bucket, key, info))
        return folders, files

    def entries(self, folder: str) -> tuple[list[Entry], float | None]:
        """The folder's objects with their generations, and the server's time.

        The time is the listing's ``Date`` header, or the newest write if later (``Date``
        counts whole seconds).
        """
        bucket, _, key = folder.partition("/")
        clock: list[float] = []
        fields = "items(name,generation,updated),nextPageToken"
        found = [
            Entry(f"{bucket}/{i['name']}", int(i["generation"]), _seconds(i["updated"]))
            for i in self._pages(bucket, f"{key}/", fields, clock)
        ]
        return found, max([*clock, *(e.updated for e in found)])

    def _pages(
        self, bucket: str, prefix: str, fields: str, clock: list[float] | None = None, **kw: Any
    ) -> Iterator[dict[str, Any]]:
        """The object resources of one listing, page by page (``clock`` gets each ``Date``)."""
        token = None
        while True:
            headers, body = self.fs.call(
                "GET", "b/{}/o", bucket, prefix=prefix or None, fields=fields, pageToken=token, **kw
            )
            page = json.loads(body)
            if clock is not None:
                clock.append(_date(headers))
            yield from page.get("items", [])
            token = page.get("nextPageToken")
            if not token:
                return

    # --- reading and writing -------------------------------------------------------------

    def read_many(self, paths: list[str], limits: list[int | None]) -> list[bytes | BaseException]:
        """Every object one request, all gathered on gcsfs's event loop."""
        import asyncio

        from fsspec.asyn import sync

        from gcsemb.storage.backend import within

        fs = self.fs

        async def fetch(path: str, limit: int | None) -> bytes:
            if limit is not None and limit <= 0:
                return b""  # nothing to read (a ranged read of an empty object is refused)
            end = None if limit is None else limit + 1
            return within(self.store, path, limit, await fs._cat_file(path, start=0, end=end))

        async def gather() -> list[Any]:
            jobs = (fetch(p, n) for p, n in zip(paths, limits, strict=True))
            return await asyncio.gather(*jobs, return_exceptions=True)

        return sync(fs.loop, gather)

    def write(self, path: str, data: bytes, *, if_generation: int | None = None) -> int | None:
        """One upload (GCS publishes an object only when whole); conditional if asked.

        fake-gcs-server ignores the precondition, and the lease does not depend on it. If GCS
        answers 412, the object is read back: a retried request whose first try had already
        landed is not a conflict.
        """
        if if_generation is None:
            self.fs.pipe_file(path, data)
            return None
        fs, (bucket, key) = self.fs, path.split("/", 1)
        location = getattr(fs, "_location", None) or "https://storage.googleapis.com"
        try:
            out = fs.call(
                "POST",
                f"{location}/upload/storage/v1/b/{{}}/o",
                bucket,
                uploadType="media",
                name=key,
                headers={"Content-Type": "application/json"},
                data=data,
                json_out=True,
                ifGenerationMatch=str(if_generation),
            )
            return int(out["generation"])
        except FileExistsError:
            md5 = base64.b64encode(hashlib.md5(data).digest()).decode()  # GCS reports MD5
            try:
                meta = fs.call("GET", "b/{}/o/{}", bucket, key, json_out=True)
            except FileNotFoundError:
                raise FileExistsError(path) from None
            if meta.get("md5Hash") == md5:
                return int(meta["generation"])
            raise

    def delete(self, path: str, *, if_generation: int | None = None) -> None:
        """One DELETE, with ``ifGenerationMatch`` when a generation is given."""
        bucket, key = path.split("/", 1)
        kw = {"ifGenerationMatch": str(if_generation)} if if_generation else {}
        self.fs.call("DELETE", "b/{}/o/{}", bucket, key, **kw)

    # --- policy --------------------------------------------------------------------------

    @classmethod
    def scope(cls, source: str) -> FetchScope:
        """The source's bucket (nothing, for a source naming no bucket)."""
        bucket = _bucket(source)
        if not bucket:
            return NOTHING(f"its source {source} names no bucket")
        return FetchScope(cls, bucket, f"only gs://{bucket} (the bucket of its source) is fetched")

    @classmethod
    def own_scope(cls, url: str) -> FetchScope:
        """The dataset's own bucket."""
        bucket = _bucket(url)
        return FetchScope(
            cls, bucket, f"it records no source: only its own bucket gs://{bucket} is fetched"
        )

    @classmethod
    def inside(cls, root: str, uri: str) -> bool:
        """An object of bucket ``root`` (any bucket for ``""``)."""
        return root in ("", _bucket(uri))

    def denied(self, uri: str, action: str, text: str) -> str:
        """Names the permission and the IAM role the identity needs."""
        from gcsemb.errors import AUTH_FIXES

        need = {
            "list": f"storage.objects.list ({READ_ROLE}) on the source bucket",
            "read": f"storage.objects.get ({READ_ROLE}) on the bucket",
        }.get(action, f"{WRITE_ROLE} on the destination bucket")
        verb = "read the dataset at" if action == "index" else action
        who = self.store.identity.description
        return (
            f"{who} may not {verb} {uri} (403: {text}). It needs {need}: grant it, or use "
            f"another identity. {AUTH_FIXES}"
        )

    def missing(self, uri: str, action: str) -> str:
        """The bucket, for a listing; else the object."""
        return f"gs://{_bucket(uri)}" if action == "list" else uri


def _bucket(url: str) -> str:
    return url.split("://", 1)[-1].split("/", 1)[0]


def _seconds(value: str) -> float:
    """A GCS time as seconds since the epoch."""
    return parse_time(value).timestamp()


def _date(headers: Any) -> float:
    """The server's time, from a response's ``Date`` header (0 without one)."""
    try:
        return parsedate_to_datetime(headers.get("Date", "")).timestamp()
    except (TypeError, ValueError, IndexError):
        return 0.0


def object_from_resource(bucket: str, name: str, item: dict[str, Any]) -> ObjectInfo:
    """An :class:`ObjectInfo` from a GCS object resource (as listed, or as gcsfs's info)."""
    return ObjectInfo(
        uri=f"gs://{bucket}/{name}",
        size=int(item.get("size", 0)),
        md5=item.get("md5Hash"),
        crc32c=item.get("crc32c"),
        generation=int(item["generation"]) if item.get("generation") else None,
        content_type=item.get("contentType"),
        updated=parse_time(item.get("updated")),
    )


# --- who gets which credentials --------------------------------------------------------------


def is_loopback(endpoint: str | None) -> bool:
    """Whether a storage endpoint runs on this machine (a local emulator)."""
    if not endpoint:
        return False
    host = (
        urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}").hostname or ""
    ).lower()
    return host in ("localhost", "::1") or host.startswith("127.")


def receives_found_credentials(endpoint: str | None) -> bool:
    """Whether credentials gcsemb *found* (not passed) may go to ``endpoint``.

    Google itself (no endpoint, or an ``https://`` host under ``googleapis.com``, such as a
    Private Service Connect endpoint) and an endpoint on this machine (a local emulator) get
    them. Any other endpoint, such as one that ``STORAGE_EMULATOR_HOST`` names, gets only
    credentials passed for it (``token=``, ``--token``), as google-cloud-storage does: a
    variable set by someone else never sends your token to their server, or in clear over http.

    Example:
        >>> receives_found_credentials("http://10.0.0.5:4443")
        False
        >>> receives_found_credentials("http://127.0.0.1:4443")
        True
    """
    if not endpoint or is_loopback(endpoint):
        return True
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    host = (parts.hostname or "").lower()
    return parts.scheme == "https" and (
        host == "googleapis.com" or host.endswith(".googleapis.com")
    )


def _withheld(endpoint: str) -> Identity:
    """Anonymous, saying why: credentials found on this machine are not sent to ``endpoint``."""
    host = urlsplit(endpoint).netloc
    return Identity(
        ANONYMOUS.token,
        f"anonymous (credentials found on this machine are not sent to {host}; pass token=... "
        "or --token to send some)",
        ANONYMOUS.recipe,
    )


# --- gcsfs -----------------------------------------------------------------------------------


def gcs_filesystem(
    token: Any, project: str | None, requester_pays: bool | str, endpoint: str | None
) -> Any:
    """A gcsfs filesystem for Google (or ``endpoint``): same class, options and credentials."""
    if endpoint:
        # read when gcsfs is imported; an emulator has no bucket-type control API to ask
        os.environ.setdefault(ZB_HNS_ENV, "false")
    import gcsfs
    import gcsfs.core

    cls = gcsfs.GCSFileSystem
    if endpoint and cls is not gcsfs.core.GCSFileSystem:
        cls = gcsfs.core.GCSFileSystem  # imported with the bucket-type lookup on: skip it
    cls = _readahead(cls)
    options: dict[str, Any] = {"token": _for_gcsfs(token), "requester_pays": requester_pays}
    options["project"] = project or ("emulator" if endpoint else None)
    if endpoint:
        options["endpoint_url"] = endpoint
    with warnings.catch_warnings():  # gcsemb never lists or creates buckets: no project needed
        warnings.filterwarnings("ignore", "GCS project not set", UserWarning)
        return cls(**options)


def _for_gcsfs(token: Any) -> Any:
    """``token`` as this gcsfs takes it.

    gcsfs before 2025.3.1 (Colab holds 2025.3.0) tries to refresh a credentials object that has
    a token but no expiry, and fails: such a token (given as ``Credentials(token=...)``) gets a
    copy with an expiry a day ahead, which it then uses until Google refuses it, as later gcsfs
    does. Nothing of the caller's object changes.
    """
    kind = type(token)
    if not kind.__module__.startswith("google.oauth2.credentials") or token.expiry is not None:
        return token
    if not token.token or token.refresh_token:
        return token
    import datetime

    import gcsfs

    if tuple(int(p) for p in re.findall(r"\d+", gcsfs.__version__)[:3]) >= (2025, 3, 1):
        return token
    now = datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None)  # naive UTC
    expiry = now + datetime.timedelta(days=1)
    return kind(token=token.token, expiry=expiry)


@functools.cache
def _readahead(cls: type) -> type:
    """``cls`` opening files with a plain read-ahead buffer unless a reader asks otherwise.

    gcsfs 2026's default "adaptive" cache starts a background prefetch task per open file and
    leaves it pending when a reader such as pyarrow or DuckDB drops the file, which surfaces
    later as asyncio errors in a notebook cell. Readers that pass ``cache_type`` still get theirs.
    """

    def _open(self: Any, path: str, mode: str = "rb", **kwargs: Any) -> Any:
        kwargs.setdefault("cache_type", "readahead")
        return cls._open(self, path, mode, **kwargs)

    sub = type(f"Readahead{cls.__name__}", (cls,), {"_open": _open, "__module__": __name__})
    globals()[sub.__name__] = sub  # picklable by name, like any fsspec filesystem
    return sub
