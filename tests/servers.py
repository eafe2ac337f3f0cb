"""Tiny loopback HTTP servers standing in for Google endpoints the emulator does not cover."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Handler = Callable[[BaseHTTPRequestHandler, bytes], tuple[int, dict[str, Any]]]


class StubServer:
    """Serve ``handler(request, body) -> (status, json_body)`` on 127.0.0.1; record requests."""

    def __init__(self, handler: Handler) -> None:
        self.requests: list[tuple[str, str, dict[str, str], bytes]] = []
        stub = self

        class _Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                stub.requests.append((self.command, self.path, dict(self.headers), body))
                status, payload = handler(self, body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StubServer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def deny(status: int = 403) -> Handler:
    """A GCS endpoint that refuses everything with a GCS-style JSON error."""
    message = {
        401: "Anonymous caller does not have storage.objects.list access to the bucket.",
        403: "caller does not have storage.objects.list access to the bucket.",
    }

    def handler(request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, Any]]:
        return status, {"error": {"code": status, "message": message.get(status, "denied")}}

    return handler


def token_endpoint(access_token: str = "ya29.test-access-token") -> Handler:
    """An OAuth2 token endpoint that grants ``access_token`` to any JWT assertion."""

    def handler(request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, Any]]:
        return 200, {"access_token": access_token, "expires_in": 3600, "token_type": "Bearer"}

    return handler


def private_bucket(access_token: str, names: list[str]) -> Handler:
    """A GCS listing endpoint that answers only requests bearing ``access_token``."""

    def handler(request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, dict[str, Any]]:
        auth = request.headers.get("Authorization")
        if auth is None:
            return 401, {
                "error": {
                    "code": 401,
                    "message": "Anonymous caller does not have "
                    "storage.objects.list access to the bucket.",
                }
            }
        if auth != f"Bearer {access_token}":
            return 403, {"error": {"code": 403, "message": "wrong token"}}
        items = [
            {
                "name": n,
                "size": "3",
                "md5Hash": "abc=",
                "generation": "7",
                "updated": "2026-01-02T03:04:05Z",
            }
            for n in names
        ]
        return 200, {"kind": "storage#objects", "items": items}

    return handler


def metadata_server(access_token: str, email: str) -> Handler:
    """The GCE / Vertex Workbench metadata server's token and identity endpoints."""

    def handler(request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, Any]:
        if "/token" in request.path:
            return 200, {"access_token": access_token, "expires_in": 3600, "token_type": "Bearer"}
        return 200, {
            "email": email,
            "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
            "aliases": ["default"],
        }

    return handler
