"""The loopback web server really serves, and really fails where the truth file says."""

import http.client
import json
import socket
import time
import urllib.error
import urllib.request

import pandas as pd
import pytest

from tasks.demo_pool.server import DemoWebServer


def _url(small_web, server, truth, failure):
    uid = truth.loc[truth["url_failure"] == failure, "uid"].iloc[0]
    index = pd.read_parquet(small_web / "pool.parquet").set_index("uid")
    return server.base_url + index.loc[uid, "path"], index.loc[uid]


def test_serves_the_image_bytes(small_web, small_truth):
    with DemoWebServer(small_web) as server:
        url, row = _url(small_web, server, small_truth, "")
        assert server.base_url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=5) as response:
            data = response.read()
            assert response.headers["Content-Type"] in ("image/jpeg", "image/png")
        import hashlib

        assert hashlib.sha256(data).hexdigest() == row["sha256"]
        assert server.requests["file"] == 1


def test_planted_failures_fail(small_web, small_truth):
    with DemoWebServer(small_web, hang_seconds=20) as server:
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(_url(small_web, server, small_truth, "http_404")[0], timeout=5)
        assert missing.value.code == 404
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(server.base_url + "/not/in/the/routes.jpg", timeout=5)

        started = time.monotonic()
        with pytest.raises((socket.timeout, TimeoutError, urllib.error.URLError)):
            urllib.request.urlopen(_url(small_web, server, small_truth, "timeout")[0], timeout=0.5).read()
        assert time.monotonic() - started < 5

        with pytest.raises(http.client.IncompleteRead):
            urllib.request.urlopen(_url(small_web, server, small_truth, "truncated")[0], timeout=5).read()

        with urllib.request.urlopen(_url(small_web, server, small_truth, "not_an_image")[0], timeout=5) as response:
            assert response.headers["Content-Type"].startswith("text/html")
            assert response.read().startswith(b"<!doctype html>")
        assert {k: server.requests[k] for k in ("http_404", "timeout", "truncated", "not_an_image")} == {
            "http_404": 2, "timeout": 1, "truncated": 1, "not_an_image": 1}


def test_stop_releases_hanging_requests(small_web, small_truth):
    server = DemoWebServer(small_web, hang_seconds=120).start()
    url = _url(small_web, server, small_truth, "timeout")[0]
    import threading

    errors = []
    client = threading.Thread(target=lambda: errors.append(_fetch(url)))
    client.start()
    time.sleep(0.5)
    started = time.monotonic()
    server.stop()
    client.join(timeout=15)
    assert not client.is_alive() and time.monotonic() - started < 15


def _fetch(url):
    try:
        urllib.request.urlopen(url, timeout=60).read()
    except Exception as exc:  # noqa: BLE001
        return exc
    return None


def test_not_a_web_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="routes.json"):
        DemoWebServer(tmp_path)


def test_routes_cover_every_index_row(small_web):
    routes = json.loads((small_web / "routes.json").read_text())
    index = pd.read_parquet(small_web / "pool.parquet")
    assert set(index["path"]) == set(routes)
