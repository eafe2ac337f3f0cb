"""What a kind of storage offers gcsemb: the few operations the rest of the package uses.

A :class:`Store` (:mod:`gcsemb.storage.handle`) is a URL plus its access; its :attr:`Store.backend`
is the :class:`Backend` for the URL's scheme, and every storage call outside this package goes
through one of these operations. A backend lives in one file: :mod:`gcsemb.storage.gcs` (Google
Cloud Storage and endpoints speaking its JSON API), :mod:`gcsemb.storage.files` (local folders,
and any other fsspec filesystem). Adding one (S3, Azure, a local object store in the tests) is
a subclass and :func:`register`; nothing else branches on the scheme.

Example:
    >>> backend_class("gs://b/photos").__name__, backend_class("/tmp").__name__
    ('GcsBackend', 'LocalBackend')
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import IO, TYPE_CHECKING, Any, ClassVar

from gcsemb.errors import BadURL, GcsembError

if TYPE_CHECKING:
    from gcsemb.storage.auth import Identity
    from gcsemb.storage.handle import Store
    from gcsemb.storage.objects import Entry, ObjectInfo
    from gcsemb.storage.scope import FetchScope

_BACKENDS: dict[str, type[Backend]] = {}


@dataclass(frozen=True)
class Access:
    """How to reach a storage location: one bundle instead of four loose options.

    Attributes:
        token: Credentials (see :mod:`gcsemb.storage.auth`); on a handle that is itself on
            Google Cloud Storage, the resolved :class:`~gcsemb.storage.auth.Identity`.
        project: Google Cloud project (billing for requester-pays buckets).
        requester_pays: Bill reads to ``project`` (or to this project id, if a string).
        endpoint: A storage endpoint other than Google's (an emulator); only the URL changes.

    Example:
        >>> Access(project="my-project", requester_pays=True).project
        'my-project'
    """

    token: Any = None
    project: str | None = None
    requester_pays: bool | str = False
    endpoint: str | None = None

    def __repr__(self) -> str:  # never a key: only whether one is there
        token = "..." if self.token is not None else None
        return (
            f"Access(token={token}, project={self.project!r}, "
            f"requester_pays={self.requester_pays!r}, endpoint={self.endpoint!r})"
        )

    def with_token(self, token: Any) -> Access:
        """The same access with other credentials."""
        return replace(self, token=token)


class Backend:
    """The operations one kind of storage offers, for one :class:`Store`.

    Subclasses set :attr:`schemes` and override what differs; the defaults serve any fsspec
    filesystem (unconditional writes, no generations, no storage clock).

    Attributes:
        store: The handle this backend serves.
    """

    schemes: ClassVar[tuple[str, ...]] = ()
    local: ClassVar[bool] = False
    """Paths are files on this machine (``open()``, ``np.load(mmap_mode=...)`` work on them)."""
    literal_names: ClassVar[bool] = False
    """Its URLs name objects literally (``?``, ``#``, ``@`` are part of a name, not a query)."""
    signs_in: ClassVar[bool] = False
    """Reaching it takes Google credentials (a notebook signs in first)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # --- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, url: str, access: Access) -> tuple[Identity, Access]:
        """Who gcsemb is at ``url``, and the access a handle keeps (credentials resolved or not).

        The default keeps the credentials unresolved, for a ``gs://`` URL reached later from
        this handle (:meth:`Store.at`).
        """
        from gcsemb.storage.auth import Identity

        return Identity(None, f"{_scheme(url)} (no Google account)"), access

    def filesystem(self) -> Any:
        """The fsspec filesystem for :attr:`store`'s URL (called once per handle)."""
        import fsspec

        try:
            return fsspec.core.url_to_fs(self.store.url)[0]
        except (ImportError, ValueError) as e:
            raise BadURL(f"Cannot open {self.store.url!r}: {e}") from e

    @property
    def fs(self) -> Any:
        """The store's fsspec filesystem."""
        return self.store.fs

    def uri(self, path: str) -> str:
        """The full URI of a path inside the filesystem."""
        return self.fs.unstrip_protocol(path)

    def where(self, path: str) -> str:
        """How messages name ``path`` (a full URI; a plain path for a local folder)."""
        return self.uri(path)

    # --- listing -------------------------------------------------------------------------

    def objects(self, path: str) -> Iterator[ObjectInfo]:
        """Every object under ``path`` (a folder or one file), streamed in name order.

        Raises:
            FileNotFoundError: Nothing is at ``path``.
        """
        from gcsemb.storage.files import object_from_info

        fs = self.fs
        if not fs.exists(path):
            raise FileNotFoundError(path)
        if fs.isfile(path):
            yield object_from_info(fs, fs.info(path))
            return
        for _folder, _dirs, files in fs.walk(path, detail=True):
            for name in sorted(files):
                yield object_from_info(fs, files[name])

    def named(self, path: str) -> ObjectInfo | None:
        """The object ``path`` names literally (``photo[1].jpg``) that a listing missed, or None."""
        from gcsemb.storage.files import object_from_info
        from gcsemb.storage.listing import glob_base

        if glob_base(path)[1] is None:  # a plain path: listed already, file or folder
            return None
        return object_from_info(self.fs, self.fs.info(path)) if self.fs.isfile(path) else None

    def children(self, path: str) -> tuple[list[str], list[ObjectInfo]]:
        """One level of ``path``: its folders (paths) and its objects (regular files only).

        Raises:
            FileNotFoundError: No such folder.
        """
        from gcsemb.storage.files import object_from_info

        folders, files = [], []
        for info in self.fs.ls(path, detail=True):
            if info.get("type") == "directory":
                folders.append(info["name"].rstrip("/"))
            elif info.get("type") == "file":
                files.append(object_from_info(self.fs, info))
        return folders, files

    def entries(self, folder: str) -> tuple[list[Entry], float | None]:
        """The objects directly in ``folder``, read fresh (never from a listing cache).

        Returns:
            One :class:`Entry` per object, and the storage's time now where it tells (None:
            use this machine's clock).
        """
        from gcsemb.storage.files import mtime
        from gcsemb.storage.objects import Entry

        try:
            infos = self.fs.ls(folder, detail=True, refresh=True)
        except FileNotFoundError:
            return [], None
        found = [Entry(i["name"], None, mtime(i)) for i in infos if i.get("type") == "file"]
        return found, None

    # --- reading -------------------------------------------------------------------------

    def read_many(self, paths: list[str], limits: list[int | None]) -> list[bytes | BaseException]:
        """Read objects by exact name, a few at once; a failure comes back in its place."""
        from concurrent.futures import ThreadPoolExecutor

        def one(path: str, limit: int | None) -> bytes | BaseException:
            try:
                return within(self.store, path, limit, self.read(path, limit))
            except Exception as e:
                return e

        with ThreadPoolExecutor(min(8, len(paths))) as pool:
            return list(pool.map(one, paths, limits))

    def read(self, path: str, limit: int | None = None) -> bytes:
        """One object's bytes (at most ``limit + 1`` of them, where a limit is given)."""
        end = None if limit is None else limit + 1
        return self.fs.cat_file(path, start=0, end=end)

    def open_input(self, path: str) -> Any:
        """A seekable file for pyarrow to read ``path`` from (a parquet shard: footer first)."""
        # a plain read-ahead buffer: gcsfs's "adaptive" cache leaves asyncio tasks behind
        return self.fs.open(path, "rb", cache_type="readahead", block_size=1 << 20)

    # --- writing -------------------------------------------------------------------------

    @contextlib.contextmanager
    def output(self, path: str) -> Iterator[IO[bytes]]:
        """A file to write ``path`` through that appears whole or not at all.

        An object store publishes an upload only when it is complete; local files are
        written under a temporary name and renamed.
        """
        with self.fs.open(path, "wb") as f:
            yield f

    def write(self, path: str, data: bytes, *, if_generation: int | None = None) -> int | None:
        """Write ``data`` atomically, conditionally where the store keeps generations.

        With ``if_generation``, only if the object is still that version (0: only if absent);
        a store without generations (a local folder) ignores it.

        Returns:
            The new generation, where the store keeps them; else None.

        Raises:
            FileExistsError: The store refused the precondition: the object changed or went.
        """
        with self.output(path) as f:
            f.write(data)
        return None

    def delete(self, path: str, *, if_generation: int | None = None) -> None:
        """Delete an object (with ``if_generation``: only if it is still that version).

        Raises:
            FileNotFoundError: It is not there.
            FileExistsError: The store refused the precondition: the object changed.
        """
        self.fs.rm_file(path)

    # --- policy --------------------------------------------------------------------------

    @classmethod
    def scope(cls, source: str) -> FetchScope:
        """What rows of a dataset whose images came from ``source`` may fetch (default: none)."""
        from gcsemb.storage.scope import NOTHING

        return NOTHING(f"its source {source} is no gs:// bucket and no local folder")

    @classmethod
    def own_scope(cls, url: str) -> FetchScope:
        """What rows of a dataset at ``url`` that records no source may fetch (default: none)."""
        from gcsemb.storage.scope import NOTHING

        return NOTHING(f"{url} records no source and is not in GCS")

    @classmethod
    def inside(cls, root: str, uri: str) -> bool:
        """Whether ``uri`` (of this backend's scheme) lies in a scope's ``root``."""
        return False

    def denied(self, uri: str, action: str, text: str) -> str:
        """The message for a refused ``action`` (403), naming what to do."""
        return f"No permission to {action} {uri} ({text}): pick a folder you own."

    def missing(self, uri: str, action: str) -> str:
        """What does not exist when ``action`` on ``uri`` found nothing."""
        return uri


def register(backend: type[Backend]) -> type[Backend]:
    """Make ``backend`` serve URLs of its :attr:`~Backend.schemes` (usable as a decorator)."""
    for scheme in backend.schemes:
        _BACKENDS[scheme] = backend
    return backend


@functools.cache
def _defaults() -> None:
    import gcsemb.storage.files
    import gcsemb.storage.gcs  # noqa: F401  (registers itself)


def backend_class(url: str) -> type[Backend]:
    """The backend for ``url``'s scheme: a registered one, else the plain fsspec one."""
    _defaults()
    return _BACKENDS.get(_scheme(url), Backend)


def _scheme(url: str) -> str:
    """``url``'s scheme, lower-case (``file`` for a plain path)."""
    return url.split("://", 1)[0].lower() if "://" in url else "file"


def local_path(url: str) -> str | None:
    """The path on this machine that ``url`` names (``file://`` dropped), or None if remote.

    Example:
        >>> local_path("file:///models/tuned.pt"), local_path("gs://bucket/tuned.pt")
        ('/models/tuned.pt', None)
    """
    if not backend_class(url).local:
        return None
    return url.split("://", 1)[1] if "://" in url else url


def within(store: Store, path: str, limit: int | None, data: bytes) -> bytes:
    """``data``, unless the object held more than ``limit`` bytes (then an error)."""
    if limit is not None and len(data) > limit:
        raise GcsembError(
            f"{store.uri(path)} holds more than the {limit:,} bytes listed (it changed since, or "
            "its record is wrong): not read further"
        )
    return data
