"""A test backend: a local "object store" in a folder, with generations that are enforced.

It implements the :class:`gcsemb.storage.Backend` operations the way an object store does
(every write makes a new generation; a write or delete conditional on a generation is refused
with ``FileExistsError`` when the object changed), unlike fake-gcs-server, which ignores
preconditions. URLs are ``genfolder:///abs/path``. Registering it is all gcsemb needs: the lease
and the shard writer run on it through :class:`~gcsemb.storage.Store` alone.
"""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from typing import IO, Any

from fsspec.implementations.local import LocalFileSystem

from gcsemb.storage import Backend, Entry, register

SCHEME = "genfolder"
_LOCK = threading.Lock()  # one writer at a time: a precondition is checked and acted on at once


class GenerationFS(LocalFileSystem):
    """Local files under ``genfolder://`` URLs."""

    protocol = (SCHEME,)

    @classmethod
    def _strip_protocol(cls, path: Any) -> str:
        path = str(path)
        if path.startswith(f"{SCHEME}://"):
            path = path[len(SCHEME) + 3 :]
        return super()._strip_protocol(path)

    def unstrip_protocol(self, name: str) -> str:
        return f"{SCHEME}://{self._strip_protocol(name)}"


@register
class GenerationFolder(Backend):
    """An object store in a temporary folder: generations are the files' mtimes (ns)."""

    schemes = (SCHEME,)
    local = True

    def filesystem(self) -> Any:
        return GenerationFS()

    def entries(self, folder: str) -> tuple[list[Entry], float | None]:
        try:
            names = sorted(os.listdir(folder))
        except FileNotFoundError:
            return [], None
        found = []
        for name in names:
            path = f"{folder}/{name}"
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(path)
                found.append(Entry(path, st.st_mtime_ns, st.st_mtime_ns / 1e9))
        return found, None

    @contextlib.contextmanager
    def output(self, path: str) -> Iterator[IO[bytes]]:
        buf = io.BytesIO()
        yield buf
        self.write(path, buf.getvalue())

    def write(self, path: str, data: bytes, *, if_generation: int | None = None) -> int | None:
        with _LOCK:
            current = _generation(path)
            if if_generation is not None and if_generation != current:
                raise FileExistsError(f"{path}: generation {current}, not {if_generation}")
            os.makedirs(os.path.dirname(path), exist_ok=True)
            # written beside the store, never in it: a kill mid-write leaves nothing visible
            tmp = os.path.join(tempfile.gettempdir(), f"genfolder-{threading.get_ident()}.part")
            with open(tmp, "wb") as f:
                f.write(data)
            new = max(time.time_ns(), current + 1)
            os.utime(tmp, ns=(new, new))
            os.replace(tmp, path)
            return new

    def delete(self, path: str, *, if_generation: int | None = None) -> None:
        with _LOCK:
            current = _generation(path)
            if not current:
                raise FileNotFoundError(path)
            if if_generation and if_generation != current:
                raise FileExistsError(f"{path}: generation {current}, not {if_generation}")
            os.unlink(path)


def _generation(path: str) -> int:
    """The object's generation, 0 if it does not exist."""
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return 0
