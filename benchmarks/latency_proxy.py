"""A loopback HTTP reverse proxy that adds a fixed latency to every request.

Stands between gcsfs and the GCS emulator so that a benchmark sees round trips like a real
network's: each request waits ``delay`` seconds, then is forwarded (method, path and query,
headers, body) to the target, and the target's answer (status, headers, body) comes back.
asyncio (aiohttp), so thousands of requests can wait at once without threads.

Run alone: ``.venv/bin/python benchmarks/latency_proxy.py http://127.0.0.1:PORT --delay-ms 30``
prints ``http://127.0.0.1:PORT2`` once it listens. From Python::

    with LatencyProxy(emulator.url, delay=0.03) as proxy:
        os.environ["STORAGE_EMULATOR_HOST"] = proxy.url

``LatencyProxy`` runs the proxy in a child process, so its work does not take the benchmark's
GIL (it still shares the machine's cores, as any local proxy would).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
from typing import Any

HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "content-length",  # recomputed from the body
        "host",
    }
)


def _filter(headers: Any) -> list[tuple[str, str]]:
    return [(k, v) for k, v in headers.items() if k.lower() not in HOP_BY_HOP]


async def serve(target: str, delay: float, host: str = "127.0.0.1", port: int = 0) -> None:
    """Run the proxy forever; print its URL (one line on stdout) once it listens."""
    import aiohttp
    from aiohttp import web

    target = target.rstrip("/")
    session: aiohttp.ClientSession | None = None
    stats = {"requests": 0}

    async def handle(request: web.Request) -> web.StreamResponse:
        stats["requests"] += 1
        body = await request.read()
        await asyncio.sleep(delay)
        assert session is not None
        async with session.request(
            request.method,
            target + request.rel_url.raw_path_qs,
            headers=_filter(request.headers),
            data=body if body else None,
            allow_redirects=False,
        ) as upstream:
            payload = await upstream.read()
            headers = _filter(upstream.headers)
        own = str(request.url.origin())
        headers = [
            (k, v.replace(target, own) if k.lower() == "location" else v) for k, v in headers
        ]
        return web.Response(status=upstream.status, headers=headers, body=payload)

    async def count(request: web.Request) -> web.StreamResponse:
        return web.json_response(stats)

    app = web.Application(client_max_size=1 << 30)
    app.router.add_route("GET", "/_proxy/stats", count)
    app.router.add_route("*", "/{tail:.*}", handle)
    connector = aiohttp.TCPConnector(limit=0)  # no pool limit: the emulator takes them all
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    sockets = site._server.sockets  # type: ignore[union-attr]
    print(f"http://{host}:{sockets[0].getsockname()[1]}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await session.close()
        await runner.cleanup()


class LatencyProxy:
    """The proxy in a child process, as a context manager; ``url`` is where it listens."""

    def __init__(self, target: str, delay: float = 0.03) -> None:
        self.target, self.delay = target, delay
        self.url = ""
        self._process: subprocess.Popen[str] | None = None

    def start(self) -> LatencyProxy:
        self._process = subprocess.Popen(
            [sys.executable, __file__, self.target, "--delay-ms", str(self.delay * 1000)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._process.stdout is not None
        line = self._process.stdout.readline().strip()
        if not line.startswith("http://"):
            self.stop()
            raise RuntimeError(f"latency proxy did not start: {line!r}")
        self.url = line
        return self

    def requests(self) -> int:
        """Requests the proxy has forwarded so far (its own stats call not counted)."""
        import json
        import urllib.request

        with urllib.request.urlopen(f"{self.url}/_proxy/stats", timeout=5) as r:
            return int(json.load(r)["requests"])

    def stop(self) -> None:
        if self._process is not None:
            from gcsemb.demo.emulator import stop_process

            stop_process(self._process)
            self._process = None

    def __enter__(self) -> LatencyProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("target", help="URL to forward to, e.g. http://127.0.0.1:4443")
    parser.add_argument("--delay-ms", type=float, default=30.0, help="added to every request")
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args.target, args.delay_ms / 1000, port=args.port))


if __name__ == "__main__":
    main()
