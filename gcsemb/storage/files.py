"""Local folders: regular files only, reads capped at the listed size, writes renamed into place.

The backend for paths and ``file://`` URLs. Listing follows links but yields only regular files
(:mod:`gcsemb.storage.local_files`), a read refuses anything else, and every write goes through
:func:`atomic_path`: a temporary name beside the target, renamed once complete, so no reader
ever sees half a file. :func:`atomic_path` is the one such helper: the cache uses it too.

Example:
    >>> import tempfile, pathlib
    >>> dest = pathlib.Path(tempfile.mkdtemp()) / "a" / "b.txt"
    >>> with atomic_path(dest) as tmp:
    ...     _ = pathlib.Path(tmp).write_text("whole or nothing")
    >>> dest.read_text()
    'whole or nothing'
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

from gcsemb.storage.auth import Identity
from gcsemb.storage.backend import Access, Backend, register
from gcsemb.storage.local_files import (
    ensure_regular,
    followed_type,
    read_regular,
    regular_files,
)
from gcsemb.storage.objects import ObjectInfo, parse_time
from gcsemb.storage.scope import FetchScope

LOCAL = Identity(None, "local files", "local")


@register
class LocalBackend(Backend):
    """Paths on this machine (``/data/photos``, ``file:///data/photos``)."""

    schemes = ("file", "local")
    local = True
    literal_names = True

    @classmethod
    def open(cls, url: str, access: Access) -> tuple[Identity, Access]:
        """Local files need no credentials: those given wait for a ``gs://`` URL reached later."""
        return LOCAL, access

    def where(self, path: str) -> str:
        """A local path names itself in messages."""
        return path

    def objects(self, path: str) -> Iterator[ObjectInfo]:
        """Regular files under ``path`` (links followed, any depth), streamed."""
        if not os.path.lexists(path):
            raise FileNotFoundError(path)
        for info in regular_files(path):
            yield object_from_info(self.fs, info)

    def children(self, path: str) -> tuple[list[str], list[ObjectInfo]]:
        """One level: folders, and regular files (links followed; pipes and devices left out)."""
        folders, files = [], []
        for info in self.fs.ls(path, detail=True):
            name, kind = info["name"].rstrip("/"), info.get("type")
            if kind == "other":  # a link, pipe or device: what it leads to
                kind = followed_type(name)
            if kind == "directory":
                folders.append(name)
            elif kind == "file":
                files.append(object_from_info(self.fs, info))
        return folders, files

    def read(self, path: str, limit: int | None = None) -> bytes:
        """A regular file's bytes, at most ``limit + 1`` (never a pipe or a device)."""
        return read_regular(path, limit)

    def open_input(self, path: str) -> Any:
        """A native pyarrow file on the regular file ``path`` (never a pipe or a device).

        Its reads run without Python (no lock held, no copy through a bytes object), so reading
        a local dataset is as fast as pyarrow reading it itself.
        """
        import pyarrow as pa

        ensure_regular(path)
        return pa.OSFile(path)

    @contextlib.contextmanager
    def output(self, path: str) -> Iterator[IO[bytes]]:
        """A temporary file beside ``path``, renamed to it when complete."""
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            yield f

    @classmethod
    def scope(cls, source: str) -> FetchScope:
        """Files under the source folder (never the whole file system)."""
        from gcsemb.storage.listing import glob_base

        rest = _path(source)
        folder = os.path.normpath(os.path.abspath(os.path.expanduser(glob_base(rest)[0] or "/")))
        if os.path.dirname(folder) == folder:  # "/" (or a drive's root): every file there is
            why = f"its source {source} is the whole file system: nothing is read"
            return FetchScope(None, "", why)
        return FetchScope(cls, folder, f"only files under its source {folder} are read")

    @classmethod
    def inside(cls, root: str, uri: str) -> bool:
        """A regular file under ``root``, by its absolute, normalized path."""
        path = _path(uri)
        if not os.path.isabs(path):
            return False
        path = os.path.normpath(path)
        try:
            inside = os.path.commonpath([root, path]) == root
        except ValueError:
            return False
        return inside and os.path.isfile(path)  # a regular file, never a device or a pipe


def _path(uri: str) -> str:
    """The local path of a ``file://`` URI or a bare path (``~`` expanded)."""
    return uri.split("://", 1)[1] if "://" in uri else os.path.expanduser(uri)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str], size: int | None = None) -> Iterator[str]:
    """A temporary path beside ``dest``, renamed to ``dest`` when the block ends without error.

    Args:
        dest: The file to write (its folders are made).
        size: The bytes the file must hold at the end (a copy that stopped short is an error).

    Raises:
        OSError: The file does not hold ``size`` bytes.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    os.close(fd)
    try:
        yield tmp
        if size is not None and os.path.getsize(tmp) != size:
            raise OSError(f"copied {os.path.getsize(tmp)} bytes of {size}: interrupted?")
        os.chmod(tmp, 0o644)  # mkstemp's 0600 would hide a shared cache from other users
        os.replace(tmp, dest)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


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


def mtime(info: dict[str, Any]) -> float:
    """When a file of an fsspec listing was last written, in seconds since the epoch."""
    value = info.get("mtime") or info.get("updated") or info.get("created") or 0.0
    if isinstance(value, datetime):
        return value.timestamp()
    if isinstance(value, str):
        return parse_time(value).timestamp()
    return float(value)
