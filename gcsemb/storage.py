"""One entry point from a URL to a storage handle, and streaming image listings.

``open_store(url, token=...)`` gives a :class:`Store`: the URL, the resolved credentials (with
:mod:`gcsemb.auth`), billing settings, the endpoint and, once used, the fsspec filesystem. Every
gcsemb function passes this handle on, so credentials are resolved once per run, and a local
emulator differs from Google only by the endpoint URL. Listed objects are fetched by their exact
names (:func:`cat_many`): glob characters belong only to the user's own URL.

Example:
    >>> from gcsemb import list_images
    >>> for obj in list_images("gs://my-bucket/photos/**/*.jpg"):  # doctest: +SKIP
    ...     print(obj.uri, obj.size, obj.md5)
"""

from __future__ import annotations

import fnmatch
import functools
import os
import re
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import datetime, timezone
from typing import Any
from urllib.parse import urlsplit

from gcsemb.auth import ANONYMOUS, Identity, resolve, verify
from gcsemb.auth import json_text as auth_json_text
from gcsemb.errors import (
    AUTH_FIXES,
    READ_ROLE,
    WRITE_ROLE,
    AccessDenied,
    AuthError,
    BadURL,
    GcsembError,
    NotFound,
)
from gcsemb.local_files import read_regular, regular_files

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


OBJECT_FIELDS = tuple(f.name for f in fields(ObjectInfo))
"""The fields of :class:`ObjectInfo`, in order: CSV columns, Arrow columns, constructor order."""


def object_schema() -> Any:
    """The Arrow schema of :class:`ObjectInfo` records (for engines that move them as tables)."""
    import pyarrow as pa

    types = {
        "uri": pa.string(),
        "size": pa.int64(),
        "md5": pa.string(),
        "crc32c": pa.string(),
        "generation": pa.int64(),
        "content_type": pa.string(),
        "updated": pa.timestamp("us", tz="UTC"),
    }
    return pa.schema([pa.field(n, types[n], nullable=n != "uri") for n in OBJECT_FIELDS])


def is_gcs(url: str) -> bool:
    """Whether ``url`` names Google Cloud Storage (``gs://`` or ``gcs://``)."""
    return url.split("://", 1)[0].lower() in GCS_PROTOCOLS if "://" in url else False


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


LOCAL = Identity(None, "local files", "local")


@dataclass(frozen=True, eq=False)
class Store:
    """One storage location and how to reach it: the handle every gcsemb function passes on.

    Made once by :func:`open_store` from a URL, credentials, billing settings and an endpoint.
    Credentials are resolved (and a token fetched) once, when the handle is made; the fsspec
    filesystem is opened on first use. :meth:`at` gives the same access to another URL.

    A handle pickles without secrets (for Ray workers): it carries *how* to get the credentials
    again (``identity.recipe``: a key file's path, ``"adc"``, ``"metadata"``, ``"anon"``), never a
    private key or an access token. Credentials that cannot travel that way (a key given as a
    dict or as text, a credentials object) refuse to pickle with a message saying what to pass;
    a local folder's handle holding such credentials pickles, and says so when a ``gs://`` URL
    is reached from it in the other process.

    Attributes:
        url: What this handle points at, e.g. ``gs://my-bucket/photos`` or a local folder.
        identity: Who gcsemb is there (its repr and ``description`` show no secret).
        project: Google Cloud project (billing for requester-pays buckets).
        requester_pays: Bill reads to ``project`` (or to this project id, if a string).
        endpoint: A storage endpoint other than Google's (an emulator); only the URL changes.
        gcs_token: For a handle that is not on GCS (a local folder): the credentials it was
            given, unresolved, which a ``gs://`` URL reached from it (:meth:`at`) gets.

    Example:
        >>> store = open_store("gs://my-bucket/photos")  # doctest: +SKIP
        >>> store  # doctest: +SKIP
        Store('gs://my-bucket/photos' as service account embedder@proj.iam.gserviceaccount.com)
        >>> store.fs.ls(store.path)  # doctest: +SKIP
    """

    url: str
    identity: Identity
    project: str | None = None
    requester_pays: bool | str = False
    endpoint: str | None = None
    gcs_token: Any = field(default=None, repr=False)

    @property
    def gcs(self) -> bool:
        """Whether this is Google Cloud Storage (or an endpoint speaking its API)."""
        return is_gcs(self.url)

    @functools.cached_property
    def fs(self) -> Any:
        """The fsspec filesystem (gcsfs for ``gs://``), opened once per handle."""
        if not self.gcs:
            import fsspec

            try:
                return fsspec.core.url_to_fs(self.url)[0]
            except (ImportError, ValueError) as e:
                raise BadURL(f"Cannot open {self.url!r}: {e}") from e
        return gcs_filesystem(self.identity.token, self.project, self.requester_pays, self.endpoint)

    @property
    def path(self) -> str:
        """The protocol-less path of :attr:`url` inside :attr:`fs` (``bucket/prefix``)."""
        return self.fs._strip_protocol(self.url)

    def uri(self, path: str) -> str:
        """The full URI of ``path`` (a path inside :attr:`fs`), e.g. ``gs://bucket/a.jpg``."""
        return f"gs://{path}" if self.gcs else self.fs.unstrip_protocol(path)

    def at(self, url: str) -> Store:
        """Exactly this access (credentials, billing, endpoint) for another URL.

        Between two ``gs://`` URLs the filesystem is shared too. From a local folder to a bucket,
        the credentials, project, requester-pays setting and endpoint given for the folder apply.

        Example:
            >>> dst = open_store("gs://b/photos").at("gs://b/embeddings")  # doctest: +SKIP
        """
        if self.gcs and is_gcs(url):
            other = replace(self, url=url)
            if "fs" in self.__dict__:
                other.__dict__["fs"] = self.__dict__["fs"]
            return other
        if isinstance(self.gcs_token, _Stayed):
            raise self.gcs_token.error()
        return open_store(
            url,
            token=self.identity if self.gcs else self.gcs_token,
            project=self.project,
            requester_pays=self.requester_pays,
            endpoint=self.endpoint,
        )

    def __repr__(self) -> str:
        return f"Store({self.url!r} as {self.identity.description})"

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        recipe = self.identity.recipe if self.gcs else _recipe(self.gcs_token)
        if recipe is None and self.gcs:
            raise _Stayed(self.identity.description).error()
        access = (self.project, self.requester_pays, self.endpoint)
        return (_reopen, (self.url, recipe, *access))

    def __copy__(self) -> Store:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> Store:
        return self


class _Stayed:
    """Credentials of a local handle that stayed in the process that resolved them."""

    def __init__(self, description: str) -> None:
        self.description = description

    def error(self) -> AuthError:
        return AuthError(
            f"The credentials of {self.description} cannot be sent to other processes (they "
            "were given as a key dict, key text or a credentials object, which gcsemb never "
            "copies). Pass a key file path that exists on every worker, or use application "
            "default credentials (token=None)."
        )


def _recipe(token: Any) -> str | _Stayed | None:
    """How another process gets the credentials ``token`` names, without any secret."""
    if token is None or isinstance(token, _Stayed):
        return token
    if isinstance(token, Identity):
        return token.recipe if token.recipe is not None else _Stayed(token.description)
    if isinstance(token, str | os.PathLike) and auth_json_text(os.fspath(token)) is None:
        return os.fspath(token)  # a keyword or a key file's path
    return _Stayed("the key given for this folder")


def _reopen(
    url: str,
    recipe: str | _Stayed | None,
    project: str | None,
    requester_pays: bool | str,
    endpoint: str | None,
) -> Store:
    """Unpickle a :class:`Store`: resolve its credentials again, from their recipe."""
    if not is_gcs(url):
        return open_store(
            url, token=recipe, project=project, requester_pays=requester_pays, endpoint=endpoint
        )
    token = None if recipe == "adc" else recipe
    return open_store(
        url, token=token, project=project, requester_pays=requester_pays, endpoint=endpoint
    )


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


def open_store(
    url: str | Store,
    *,
    token: Any = None,
    project: str | None = None,
    requester_pays: bool | str = False,
    endpoint: str | None = None,
) -> Store:
    """The one entry point from a URL (and credentials) to a :class:`Store`.

    Args:
        url: ``gs://bucket/prefix``, a local path, or any fsspec URL; a :class:`Store` is returned
            as it is.
        token: Credentials for ``gs://`` (see :mod:`gcsemb.auth`; default: application default
            credentials); elsewhere kept unresolved, with ``project``, ``requester_pays`` and
            ``endpoint``, for a ``gs://`` URL reached from the handle (:meth:`Store.at`). A
            :class:`Store` here lends its access (credentials, billing, endpoint) to ``url``, as
            :meth:`Store.at` does.
        project: Google Cloud project (billing for requester-pays buckets).
        requester_pays: Bill reads to ``project`` (or to this project id, if a string).
        endpoint: Another GCS endpoint (an emulator), else ``$STORAGE_EMULATOR_HOST``, else
            Google. Credentials found on this machine (``token=None``) go only to Google and to
            an endpoint on this machine (:func:`receives_found_credentials`); any other endpoint
            is reached anonymously unless ``token`` is given (the identity says which). Against
            an endpoint on this machine with no credentials at all, requests go anonymously too.

    Returns:
        The handle, with credentials resolved and a token fetched (so a refused key fails here,
        within seconds, before any storage request).

    Raises:
        AuthError: No credentials, an unreadable key, or credentials Google refuses.
        BadURL: The URL is empty or names no bucket.

    Example:
        >>> open_store("/tmp").identity
        Identity('local files')
    """
    if isinstance(url, Store):
        return url
    if isinstance(token, Store):
        return token.at(url)
    if not url:
        raise BadURL("Empty URL: give gs://bucket/prefix, a local folder, or an fsspec URL.")
    if not is_gcs(url):
        scheme = url.split("://", 1)[0] if "://" in url else "file"
        local = scheme in ("file", "local")
        identity = LOCAL if local else Identity(None, f"{scheme} (no Google account)")
        return Store(str(url), identity, project, requester_pays, endpoint, gcs_token=token)
    bucket = url.split("://", 1)[1].split("/", 1)[0]
    if not bucket:
        raise BadURL(f"{url!r} names no bucket: write gs://BUCKET/optional/prefix.")
    endpoint = endpoint or os.environ.get(EMULATOR_ENV) or None
    if endpoint and "://" not in endpoint:
        endpoint = f"http://{endpoint}"  # STORAGE_EMULATOR_HOST may be host:port
    if token is None and not receives_found_credentials(endpoint):
        identity = _withheld(endpoint)
    else:
        identity = verify(resolve(token, local_endpoint=is_loopback(endpoint)))
    return Store(url, identity, project, requester_pays, endpoint)


def protocols(fs: Any) -> tuple[str, ...]:
    """A filesystem's protocol names as a tuple (gcsfs and local files give several)."""
    return fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)


def http_status(exc: BaseException) -> int | None:
    """The HTTP status of a storage error (gcsfs's ``code``), or None."""
    code = getattr(exc, "code", None)
    if isinstance(code, int):
        return code
    if isinstance(exc, PermissionError) or str(exc).startswith("Forbidden"):
        return 403
    return None


def explain(exc: BaseException, uri: str, store: Store, action: str = "read") -> GcsembError:
    """Translate a storage exception into a :class:`GcsembError` that names the fix.

    Args:
        exc: What gcsfs or fsspec raised.
        uri: The URI being accessed.
        store: The handle in use (for the identity).
        action: ``"list"`` (the source), ``"read"`` (an object), ``"index"`` (read the
            destination's dataset), ``"write"`` or ``"delete"`` (the destination).
    """
    if isinstance(exc, GcsembError):
        return exc
    who = store.identity.description
    text = str(exc).split("\n")[-1][:300]
    code = http_status(exc)
    if isinstance(exc, FileNotFoundError):
        listing = uri.startswith("gs://") and action == "list"
        target = f"gs://{uri[5:].split('/', 1)[0]}" if listing else uri
        return NotFound(f"{target} does not exist (looked up as {who}). Check the name for typos.")
    if (code == 401 or "Invalid Credentials" in text) and store.identity.anonymous:
        why = "" if who == ANONYMOUS.description else f" gcsemb is {who}."
        return AccessDenied(
            f"{uri} is not public: anonymous requests are refused (401).{why} {AUTH_FIXES}"
        )
    if code == 401 or "Invalid Credentials" in text:
        return AuthError(f"Google rejected the credentials of {who} (401). {AUTH_FIXES}")
    if code == 403 and not store.gcs:
        return AccessDenied(f"No permission to {action} {uri} ({text}): pick a folder you own.")
    if code == 403:
        need = {
            "list": f"storage.objects.list ({READ_ROLE}) on the source bucket",
            "read": f"storage.objects.get ({READ_ROLE}) on the bucket",
        }.get(action, f"{WRITE_ROLE} on the destination bucket")
        verb = "read the dataset at" if action == "index" else action
        return AccessDenied(
            f"{who} may not {verb} {uri} (403: {text}). It needs {need}: grant it, or use "
            f"another identity. {AUTH_FIXES}"
        )
    if "requester pays" in text.lower():
        return GcsembError(
            f"{uri} is a requester-pays bucket: pass requester_pays=True and project=... "
            "(CLI: --requester-pays --project ID) to bill reads to your project."
        )
    return GcsembError(f"Could not {action} {uri} as {who}: {type(exc).__name__}: {text}")


def cat_many(
    store: Store, paths: list[str], limits: list[int | None] | None = None
) -> list[bytes | BaseException]:
    """Fetch objects by their exact names, concurrently; a failure comes back in its place.

    Names are taken literally: ``photo[1].jpg`` or ``what?.jpg`` are never glob patterns (as
    they would be for ``fs.cat``). On gcsfs every object is one request, all gathered on its
    event loop; other filesystems read in a few threads. Local files are read only when they are
    regular files (never a pipe or a device, even behind a link).

    Args:
        store: Where the objects are.
        paths: Paths inside ``store.fs`` (``bucket/name`` for GCS).
        limits: The most bytes each object may hold (its listed size), or None per path (or in
            all) for no limit. One byte more is asked for (a ranged read); an object holding
            more fails with a :class:`GcsembError` instead of being read to its end.

    Returns:
        One entry per path, in order: the bytes, or the exception its read raised.

    Example:
        >>> cat_many(open_store("/etc"), ["/etc/hostname"], [4])  # doctest: +SKIP
        [GcsembError('file:///etc/hostname holds more than the 4 bytes listed ...')]
    """
    if not paths:
        return []
    fs = store.fs
    limits = list(limits) if limits is not None else [None] * len(paths)
    if getattr(fs, "async_impl", False):
        import asyncio

        from fsspec.asyn import sync

        async def fetch(path: str, limit: int | None) -> bytes:
            if limit is not None and limit <= 0:
                return b""  # nothing to read (a ranged read of an empty object is refused)
            end = None if limit is None else limit + 1
            return _within(store, path, limit, await fs._cat_file(path, start=0, end=end))

        async def gather() -> list[Any]:
            jobs = (fetch(p, n) for p, n in zip(paths, limits, strict=True))
            return await asyncio.gather(*jobs, return_exceptions=True)

        return sync(fs.loop, gather)
    from concurrent.futures import ThreadPoolExecutor

    local = "file" in protocols(fs)

    def one(path: str, limit: int | None) -> bytes | BaseException:
        try:
            if local:
                return _within(store, path, limit, read_regular(path, limit))
            end = None if limit is None else limit + 1
            return _within(store, path, limit, fs.cat_file(path, start=0, end=end))
        except Exception as e:
            return e

    with ThreadPoolExecutor(min(8, len(paths))) as pool:
        return list(pool.map(one, paths, limits))


def _within(store: Store, path: str, limit: int | None, data: bytes) -> bytes:
    """``data``, unless the object held more than ``limit`` bytes (then an error)."""
    if limit is not None and len(data) > limit:
        raise GcsembError(
            f"{store.uri(path)} holds more than the {limit:,} bytes listed (it changed since, or "
            "its record is wrong): not read further"
        )
    return data


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


def parse_time(value: str | None) -> datetime | None:
    """A GCS JSON API time (RFC 3339, ``Z`` or an offset) as an aware datetime; None if empty.

    Example:
        >>> parse_time("2026-12-05T06:00:00.5Z").timestamp()
        1796450400.5
    """
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
            yield object_from_resource(bucket, item["name"], item)
        page_token = page.get("nextPageToken")
        if not page_token:
            return


def _fsspec_objects(fs: Any, path: str) -> Iterator[ObjectInfo]:
    """Files under ``path`` on any fsspec filesystem, folder by folder (streamed).

    Local folders list regular files only, links followed, at any depth
    (:func:`gcsemb.local_files.regular_files`).
    """
    if "file" in protocols(fs):
        for info in regular_files(path):
            yield object_from_info(fs, info)
        return
    if fs.isfile(path):
        yield object_from_info(fs, fs.info(path))
        return
    for _folder, _dirs, files in fs.walk(path, detail=True):
        for name in sorted(files):
            yield object_from_info(fs, files[name])


def object_from_info(fs: Any, info: dict[str, Any]) -> ObjectInfo:
    """An :class:`ObjectInfo` from fsspec's ``info`` of a file on any filesystem."""
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
    url: str | Store,
    *,
    token: Any = None,
    project: str | None = None,
    requester_pays: bool | str = False,
    endpoint: str | None = None,
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
        token: Credentials (see :mod:`gcsemb.auth`).
        project: Google Cloud project, for requester-pays buckets.
        requester_pays: Bill the reads to ``project``.
        endpoint: Another GCS endpoint (see :func:`open_store`).
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
    store = open_store(  # now, not on the first next(): credentials fail at the call
        url, token=token, project=project, requester_pays=requester_pays, endpoint=endpoint
    )
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
    fs, path, gcs = store.fs, store.path, store.gcs
    base, pattern = glob_base(path)
    if pattern is not None and gcs and not base:
        raise BadURL(f"{store.url!r}: the bucket name cannot be a glob.")
    exts = normalize_extensions(extensions)
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
        if count == 0 and gcs and not path.endswith("/") and "/" in path:
            # ``gs://b/a.jpg`` (or ``gs://b/photo[1].jpg``) names one object, not a folder
            yield from _single_gcs_object(fs, path)
        elif count == 0 and pattern and fs.isfile(path):
            yield object_from_info(fs, fs.info(path))
    except Exception as e:
        raise explain(e, store.url, store, "list") from e


def _single_gcs_object(fs: Any, path: str) -> Iterator[ObjectInfo]:
    try:
        info = fs.info(path)
    except FileNotFoundError:
        return
    if info.get("type") == "file":
        bucket, _, name = path.partition("/")
        yield object_from_resource(bucket, name, info)


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
