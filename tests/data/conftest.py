"""Fixtures for the data tests: a real HTTP server on 127.0.0.1 imitating Zenodo, which misbehaves on request."""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from nanomorph.data.fetchers.http import RetryPolicy

# Fast retries: the tests check the number and order of attempts, not the waiting.
FAST = RetryPolicy(retries=3, backoff_s=0.01, timeout_s=10)


@dataclass
class Route:
    body: bytes
    content_type: str = "application/octet-stream"
    # One behaviour per request, in order; 'ok' once the list is used up.
    # ok | 503 | drop (send the headers, then half of the promised bytes, then close) | 404
    script: list[str] = field(default_factory=list)


@dataclass
class Request:
    path: str
    range: str | None


class FakeServer:
    """Serves `routes` (path -> Route) with HTTP Range support; logs every request."""

    def __init__(self) -> None:
        self.routes: dict[str, Route] = {}
        self.log: list[Request] = []
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep pytest output clean
                pass

            def do_GET(self):
                path = self.path.split("?", 1)[0]
                with server._lock:
                    server.log.append(Request(path, self.headers.get("Range")))
                    route = server.routes.get(path)
                    action = route.script.pop(0) if route and route.script else "ok"
                if route is None or action == "404":
                    self.send_error(404, "Not Found")
                    return
                if action == "503":
                    self.send_response(503, "Service Unavailable")
                    self.send_header("Retry-After", "0")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body, start = route.body, 0
                wanted = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
                if wanted and int(wanted.group(1)) < len(body):
                    start = int(wanted.group(1))
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                rest = body[start:]
                self.send_header("Content-Type", route.content_type)
                self.send_header("Content-Length", str(len(rest)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if action == "drop":
                    self.wfile.write(rest[: len(rest) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(rest)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def add(self, path: str, body: bytes, script: list[str] | None = None, content_type: str = "application/octet-stream") -> str:
        self.routes[path] = Route(body, content_type, list(script or []))
        return self.url + path

    def add_json(self, path: str, payload) -> str:
        return self.add(path, json.dumps(payload).encode(), content_type="application/json")

    def requests_for(self, path: str) -> list[Request]:
        return [r for r in self.log if r.path == path]


@pytest.fixture
def server():
    fake = FakeServer()
    fake.thread.start()
    yield fake
    fake.httpd.shutdown()
    fake.httpd.server_close()


def _publish_record(server: FakeServer, record_id: str, files: dict[str, bytes],
                    checksums: dict[str, str] | None = None, scripts: dict[str, list[str]] | None = None) -> str:
    """Publish files as a Zenodo record (records API JSON + file links); returns the API base URL."""
    entries = []
    for key, body in files.items():
        link = server.add(f"/api/records/{record_id}/files/{key}/content", body, (scripts or {}).get(key))
        checksum = (checksums or {}).get(key, "md5:" + hashlib.md5(body).hexdigest())
        entries.append({"id": key, "key": key, "size": len(body), "checksum": checksum, "links": {"self": link}})
    server.add_json(f"/api/records/{record_id}", {"id": int(record_id), "files": entries})
    return server.url + "/api"


@pytest.fixture
def publish_record(server):
    """publish_record(record_id, {key: bytes}, checksums=None, scripts=None) -> API base URL."""
    return lambda *args, **kwargs: _publish_record(server, *args, **kwargs)


@pytest.fixture
def fast_policy() -> RetryPolicy:
    return FAST
