"""Tiny loopback HTTP servers standing in for Google endpoints the emulator does not cover."""

from __future__ import annotations

import inspect
import json
import socket
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
                try:
                    status, payload = handler(self, body)
                except ConnectionAbortedError:  # a dropped connection: no answer at all
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if isinstance(payload, tuple):  # (headers, raw body) passed through
                    headers, data = payload
                else:
                    headers, data = (
                        [("Content-Type", "application/json")],
                        json.dumps(payload).encode(),
                    )
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

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


class GatewayProxy(StubServer):
    """A loopback proxy in front of the emulator: checks bearer tokens and injects faults.

    Args:
        upstream: The emulator's URL.
        token: When set, requests without ``Authorization: Bearer <token>`` get 401 (a private
            bucket); with another token, 403.
        fault: ``fault(n, method, path) -> None | int | "drop"`` for the n-th request: forward it,
            answer with that HTTP status, or close the connection without an answer. A fault
            taking a fourth argument also gets the request's body (an upload names its object
            there).
    """

    def __init__(
        self,
        upstream: str,
        token: str | None = None,
        fault: Callable[..., int | str | None] | None = None,
    ) -> None:
        import http.client
        from urllib.parse import urlsplit

        self.faults: list[tuple[str, str, int | str]] = []
        host = urlsplit(upstream)
        lock = threading.Lock()
        proxy = self
        local = threading.local()  # one kept-alive upstream connection per handler thread

        def forward(request: BaseHTTPRequestHandler, body: bytes) -> Any:
            headers = {k: v for k, v in request.headers.items() if k.lower() != "host"}
            for attempt in (0, 1):
                conn = getattr(local, "conn", None)
                if conn is None:
                    conn = local.conn = http.client.HTTPConnection(
                        host.hostname, host.port, timeout=30
                    )
                try:
                    conn.request(request.command, request.path, body=body or None, headers=headers)
                    return conn.getresponse()
                except (http.client.HTTPException, ConnectionError):
                    conn.close()
                    local.conn = None
                    if attempt:
                        raise
            raise AssertionError("unreachable")

        def handler(request: BaseHTTPRequestHandler, body: bytes) -> tuple[int, Any]:
            with lock:
                n = len(proxy.requests)
            auth = request.headers.get("Authorization")
            if token is not None and auth != f"Bearer {token}":
                code = 401 if auth is None else 403
                return code, {"error": {"code": code, "message": "Anonymous caller does not "
                              "have storage.objects.list access." if code == 401 else
                              "caller does not have storage.objects.get access."}}  # fmt: skip
            action = None
            if fault is not None:
                wants_body = len(inspect.signature(fault).parameters) > 3
                args = (n, request.command, request.path) + ((body,) if wants_body else ())
                action = fault(*args)
            if action is not None:
                proxy.faults.append((request.command, request.path, action))
                if action == "drop":
                    raise ConnectionAbortedError
                message = FAULT_MESSAGES.get(int(action), "injected fault")
                return int(action), {"error": {"code": int(action), "message": message}}
            resp = forward(request, body)
            data = resp.read()
            out = [
                (k, v.replace(upstream, proxy.url))
                for k, v in resp.getheaders()
                if k.lower() not in ("content-length", "transfer-encoding", "connection")
            ]
            return resp.status, (out, data)

        super().__init__(handler)


ACCESS_TOKEN = "ya29.c.fake-access-token-value"
FAULT_MESSAGES = {  # what GCS answers, as gcsfs sees it
    403: "embedder@demo-project.iam.gserviceaccount.com does not have storage.objects.get access "
    "to the Google Cloud Storage object. Permission 'storage.objects.get' denied on resource "
    "(or it may not exist).",
    429: "The rate of change requests to the object exceeds the rate limit.",
    503: "Backend Error",
}


SERVICE_ACCOUNT = "embedder@demo-project.iam.gserviceaccount.com"


def new_pem() -> str:
    """A new RSA private key in PEM (PKCS#8), as a service-account key holds one."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def service_account(private_key_pem: str, token_url: str, email: str = SERVICE_ACCOUNT) -> dict:
    """A service-account key, as downloaded from the Cloud console, for a given token endpoint."""
    return {
        "type": "service_account",
        "project_id": "demo-project",
        "private_key_id": "0123456789abcdef",
        "private_key": private_key_pem,
        "client_email": email,
        "client_id": "1234567890",
        "token_uri": token_url,
    }
