"""The demo web server: serves a generated web root on 127.0.0.1.

In:  a web root written by :func:`tasks.demo_pool.generate.generate_demo_pool` and a port
     (0 picks a free one).
Out: a running :class:`DemoWebServer` (a context manager) whose ``base_url`` prefixes the pool's
     URL paths; ``latency_seconds`` delays every answer, like a slow remote host. Each path answers as ``routes.json`` says:

- ``file``: 200 with the bytes and a matching Content-Type;
- ``http_404``: 404 Not Found (also for any path not in the routes);
- ``timeout``: accepts, sends nothing, and closes after ``hang_seconds`` or at shutdown;
- ``truncated``: 200 with the full Content-Length but only half of the bytes, then closes;
- ``not_an_image``: 200 with an HTML page.

The server counts requests per route kind (``requests``), so tests can check that it really
served and really failed.
"""

from __future__ import annotations

import json
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

CONTENT_TYPES = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png"}
HTML_PAGE = b"<!doctype html><html><head><title>Page moved</title></head><body><p>This page has moved.</p></body></html>"


class DemoWebServer:
    """A threaded HTTP server on 127.0.0.1 serving one web root."""

    def __init__(self, web_root: str | Path, port: int = 0, hang_seconds: float = 60.0,
                 latency_seconds: float = 0.0):
        self.web_root = Path(web_root)
        routes_file = self.web_root / "routes.json"
        if not routes_file.exists():
            raise FileNotFoundError(f"{routes_file}: not a generated web root (no routes.json)")
        self.routes: dict[str, list[str]] = json.loads(routes_file.read_text())
        self.hang_seconds = hang_seconds
        self.latency_seconds = latency_seconds
        self.requests: Counter[str] = Counter()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "DemoWebServer":
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.2},
                                        name="demo-web-server", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # releases hanging handlers
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def __enter__(self) -> "DemoWebServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _count(self, kind: str) -> None:
        with self._lock:
            self.requests[kind] += 1

    def _handler_class(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format, *args):  # noqa: A002 - silence per-request logs
                return

            def do_GET(self):  # noqa: N802 - http.server's naming
                path = self.path.split("?", 1)[0]
                kind, file = server.routes.get(path, ("http_404", ""))
                server._count(kind)
                if server.latency_seconds:
                    server._stopping.wait(server.latency_seconds)
                if kind == "file":
                    self._send(200, (server.web_root / "files" / file).read_bytes(),
                               CONTENT_TYPES.get(file.rsplit(".", 1)[-1], "application/octet-stream"))
                elif kind == "truncated":
                    data = (server.web_root / "files" / file).read_bytes()
                    self.send_response(200)
                    self.send_header("Content-Type", CONTENT_TYPES.get(file.rsplit(".", 1)[-1], "image/jpeg"))
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                elif kind == "timeout":
                    server._stopping.wait(server.hang_seconds)
                    self.close_connection = True
                elif kind == "not_an_image":
                    self._send(200, HTML_PAGE, "text/html; charset=utf-8")
                else:
                    self._send(404, b"not found", "text/plain")

            def _send(self, code: int, body: bytes, content_type: str) -> None:
                self.send_response(code)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        return Handler
