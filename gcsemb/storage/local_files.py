"""Local folders as a source: regular files only, read no further than their listed size.

A folder a user points gcsemb at may hold more than photos: a link to ``/dev/zero`` named
``zero.jpg`` (endless bytes), a named pipe ``pipe.jpg`` (a read that never returns), sockets,
broken links, links that loop back to a parent, folders a thousand levels deep.
:func:`regular_files` lists only regular files (after following a link), each folder once, with
an explicit stack instead of recursion; everything else is skipped, and one warning at the end of
the listing says how many entries were left out and why (each one is logged at DEBUG level).
:func:`read_regular` refuses anything but a regular file at the moment it is opened (without
blocking on a pipe) and reads at most one byte more than the listed size.

Example:
    >>> from gcsemb.storage.local_files import regular_files
    >>> [info["name"] for info in regular_files("/etc/hostname")]  # doctest: +SKIP
    ['/etc/hostname']
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)

_KINDS = (
    (stat.S_ISFIFO, "a named pipe"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISDIR, "a folder"),
)


def kind(mode: int) -> str:
    """What a file of this ``st_mode`` is, in words (``"a named pipe"``, ...).

    Example:
        >>> kind(stat.S_IFIFO)
        'a named pipe'
    """
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def followed_type(path: str) -> str:
    """``"file"`` (regular), ``"directory"`` or ``"other"``: what a local path is, links followed.

    Example:
        >>> followed_type("/dev/null")
        'other'
    """
    try:
        mode = os.stat(path).st_mode
    except OSError:  # a broken link, a loop of links
        return "other"
    return "file" if stat.S_ISREG(mode) else "directory" if stat.S_ISDIR(mode) else "other"


def ensure_regular(path: str) -> None:
    """Raise OSError unless ``path`` (links followed) is a regular file: never open a pipe."""
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise OSError(f"{path} is {kind(mode)}, not a regular file: not read")


def read_regular(path: str, limit: int | None = None) -> bytes:
    """The bytes of the regular file at ``path`` (links followed), at most ``limit + 1`` of them.

    The file is opened without blocking (a named pipe with no writer does not hang the caller)
    and checked to be a regular file before a byte is read.

    Args:
        path: A local path.
        limit: The listed size: at most one byte more is read, so a caller can tell a file that
            grew; None reads the whole regular file.

    Raises:
        OSError: The path is no regular file (a pipe, a device, a socket, a folder), or cannot
            be read.

    Example:
        >>> len(read_regular("/etc/hostname", 2)) <= 3  # doctest: +SKIP
        True
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    with open(fd, "rb", buffering=0, closefd=True) as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is {kind(st.st_mode)}, not a regular file: not read")
        if limit is None:
            return f.read()
        chunks, left = [], limit + 1
        ask = min(limit, st.st_size) + 1  # no buffer larger than the file (a cap may be large)
        while left > 0:  # FileIO.read may return less than asked (a big file, a signal)
            chunk = f.read(min(ask, left))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
            ask = left  # the file grew while read: up to the limit
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def regular_files(root: str) -> Iterator[dict[str, Any]]:
    """fsspec-style infos (``name``, ``size``, ``mtime``) of the regular files under ``root``.

    Folder by folder in name order (a folder's files, then its subfolders), with an explicit
    stack: any depth works. Links are followed, to files and to folders, but every folder is
    listed once (a link back to a parent ends there). Entries that are no regular file after
    following their link (pipes, devices, sockets, broken links) are skipped; a warning at the
    end says how many and gives one example.

    Args:
        root: An existing local folder (or file) path.

    Raises:
        OSError: ``root`` itself cannot be listed (folders below it that cannot be are skipped).
    """
    top = os.stat(root)
    if not stat.S_ISDIR(top.st_mode):
        if stat.S_ISREG(top.st_mode):
            yield _info(root, top)
        else:
            log.warning("skipping %s: it is %s, not a regular file", root, kind(top.st_mode))
        return
    skipped: list[str] = []
    try:
        yield from _walk(root, skipped)
    finally:
        if skipped:
            log.warning(
                "skipped %d entr%s under %s that %s no regular file, e.g. %s",
                len(skipped),
                "y" if len(skipped) == 1 else "ies",
                root,
                "is" if len(skipped) == 1 else "are",
                skipped[0],
            )


def _walk(root: str, skipped: list[str]) -> Iterator[dict[str, Any]]:
    """The walk of :func:`regular_files`; what it leaves out goes into ``skipped``."""
    stack, seen = [root], set()
    while stack:
        folder = stack.pop()
        try:
            here = os.stat(folder)
            if (here.st_dev, here.st_ino) in seen:
                continue  # reached again through a link
            seen.add((here.st_dev, here.st_ino))
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            if folder == root:
                raise
            skipped.append(f"{folder} (cannot be listed: {e.strerror or e})")
            continue
        folders = []
        for entry in entries:
            try:
                st = entry.stat()  # follows a link
            except OSError:
                skipped.append(f"{entry.path} (a broken link)")
                continue
            if stat.S_ISDIR(st.st_mode):
                folders.append(entry.path)
            elif stat.S_ISREG(st.st_mode):
                yield _info(entry.path, st)
            else:
                link = "a link to " if entry.is_symlink() else ""
                skipped.append(f"{entry.path} ({link}{kind(st.st_mode)})")
                log.debug("skipping %s", skipped[-1])
        stack.extend(reversed(folders))


def _info(path: str, st: os.stat_result) -> dict[str, Any]:
    return {"name": path, "size": st.st_size, "mtime": st.st_mtime, "type": "file"}
