"""Fault injectors for the chaos tests: a failing S3 proxy, and a Dask worker killed while it runs a task.

- :class:`FaultyS3Proxy`: a threaded HTTP proxy on 127.0.0.1 in front of an S3 endpoint (moto).
  A seeded schedule picks, per request (method, path and query), how many of its first attempts
  fail and how: a 500 ``InternalError``, a 503 ``SlowDown`` or a connection reset. Every later
  attempt of the same request is forwarded, so a client that retries long enough loses nothing.
  The schedule depends only on the seed and the request, never on thread timing.
- :func:`kill_worker_running`: SIGKILL the process of the first Dask worker seen executing a task
  whose key starts with a given prefix; returns what it killed, for the test to check that the
  kill happened mid-task.
- :func:`task_run_states`: what Prefect recorded for a flow run's task runs.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import signal
import socket
import struct
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

FAULTS = ("500", "503", "reset")
_ERROR_BODY = {
    "500": (500, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>InternalError</Code>"
                 b"<Message>We encountered an internal error. Please try again.</Message></Error>"),
    "503": (503, b"<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>SlowDown</Code>"
                 b"<Message>Please reduce your request rate.</Message></Error>"),
}
_HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-connection",
               "content-length"}


class FaultyS3Proxy:
    """An HTTP proxy on 127.0.0.1 that forwards to ``upstream`` and fails requests by a seeded schedule.

    ``rate``: share of distinct requests that fail at first; each of those fails its first
    ``min_failures .. max_failures`` attempts (drawn from the seed), each attempt with one of :data:`FAULTS`.
    ``max_failures`` above the client library's own attempts (botocore: 5) makes some requests
    fail through the library, so only a retry above it (the Store's) saves them.
    ``injected`` counts the faults sent by kind; ``forwarded`` the requests passed on.
    """

    def __init__(self, upstream: str, seed: int, rate: float = 0.25, max_failures: int = 7, min_failures: int = 1):
        self.upstream = urlsplit(upstream)
        self.seed, self.rate, self.max_failures, self.min_failures = seed, rate, max_failures, min_failures
        self.injected: Counter = Counter()
        self.planned: list[int] = []  # failures planned per request that had any
        self.forwarded = 0
        self.enabled = True
        self._attempts: Counter = Counter()
        self._lock = threading.Lock()
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _handle(self):
                body = self._read_body()
                fault = proxy._fault_for(self.command, self.path)
                if fault == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    self.close_connection = True
                    self.connection.close()  # an RST, not a response
                    return
                if fault:
                    status, payload = _ERROR_BODY[fault]
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", "0" if self.command == "HEAD" else str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                status, headers, payload = proxy._forward(self.command, self.path, dict(self.headers.items()), body)
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in _HOP_BY_HOP:
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)) if self.command != "HEAD"
                                 else dict((k.lower(), v) for k, v in headers).get("content-length", "0"))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(payload)

            def _read_body(self) -> bytes:
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                length = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(length) if length else b""

            do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> "FaultyS3Proxy":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def failures_planned(self, method: str, path: str) -> int:
        """How many first attempts of this request fail (0 for most): from the seed and the request only."""
        digest = hashlib.sha256(f"{self.seed}|{method}|{path}".encode()).digest()
        if int.from_bytes(digest[:4], "big") / 2**32 >= self.rate:
            return 0
        return self.min_failures + digest[4] % (self.max_failures - self.min_failures + 1)

    def _fault_for(self, method: str, path: str) -> str | None:
        with self._lock:
            attempt = self._attempts[(method, path)]
            self._attempts[(method, path)] += 1
            planned = self.failures_planned(method, path)
            if attempt == 0 and planned:
                self.planned.append(planned)
            if not self.enabled or attempt >= planned:
                self.forwarded += 1
                return None
            digest = hashlib.sha256(f"{self.seed}|{method}|{path}|{attempt}".encode()).digest()
            fault = FAULTS[digest[0] % len(FAULTS)]
            self.injected[fault] += 1
            return fault

    def _forward(self, method: str, path: str, headers: dict, body: bytes):
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=60)
        try:
            connection.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            for name, value in headers.items():
                if name.lower() not in _HOP_BY_HOP and name.lower() != "expect":
                    connection.putheader(name, value)
            connection.putheader("Content-Length", str(len(body)))
            connection.endheaders(body)
            response = connection.getresponse()
            payload = response.read()
            return response.status, response.getheaders(), payload
        finally:
            connection.close()


def kill_worker_running(client, key_prefix: str, timeout: float = 120.0, poll: float = 0.05) -> dict:
    """SIGKILL the process of the first worker seen executing a task whose key starts with ``key_prefix``.

    Returns ``{"pid", "key", "worker"}`` of the kill (``{}`` when no such task ran within ``timeout``).
    The worker's own state is asked (not the scheduler's), so the task had started when it died.
    """
    pids = client.run(os.getpid)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            running = client.run(_executing_keys)
        except Exception:  # noqa: BLE001 - a worker coming or going: ask again
            running = {}
        for worker, keys in running.items():
            key = next((k for k in keys if k.startswith(key_prefix)), None)
            if key and worker in pids:
                os.kill(pids[worker], signal.SIGKILL)
                return {"pid": pids[worker], "key": key, "worker": worker}
        time.sleep(poll)
    return {}


def _executing_keys(dask_worker) -> list[str]:
    return [str(ts.key) for ts in list(dask_worker.state.executing)] + \
        [str(ts.key) for ts in list(getattr(dask_worker.state, "long_running", ()))]


def kill_in_background(client, key_prefix: str, timeout: float = 120.0):
    """:func:`kill_worker_running` in a thread; returns (thread, result dict filled when it fires)."""
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(kill_worker_running(client, key_prefix, timeout)),
                              daemon=True)
    thread.start()
    return thread, result


def task_run_states(flow_run_id, name_prefix: str) -> list[str]:
    """State names of a flow run's task runs whose name starts with ``name_prefix`` (subflows not included), sorted."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    return sorted(run.state.name for run in runs if run.name.startswith(name_prefix))
