"""Caddy balances round robin and loses no request when an upstream dies."""

from __future__ import annotations

import collections
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from scalesim.components.balancer import start_balancer
from scalesim.components.binaries import find_binaries
from scalesim.components.process import ManagedProcess, free_port, http_ok

UPSTREAM = """
import http.server, sys
name, port = sys.argv[1], int(sys.argv[2])
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = name.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


@pytest.fixture
def upstreams(tmp_path: Path):  # type: ignore[no-untyped-def]
    started = []
    for name in ("a", "b", "c"):
        port = free_port()
        process = ManagedProcess(name=name, argv=[sys.executable, "-c", UPSTREAM, name, str(port)],
                                 log_path=tmp_path / f"{name}.log")
        process.start()
        process.wait_ready(lambda port=port: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=10)
        started.append((name, port, process))
    yield started
    for _, _, process in started:
        process.stop()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_round_robin_and_no_lost_request_when_an_upstream_dies(tmp_path: Path, upstreams) -> None:  # type: ignore[no-untyped-def]
    balancer = start_balancer(binary=find_binaries("embedded").caddy, run_dir=tmp_path, port=free_port(),
                              upstreams=[port for _, port, _ in upstreams])
    try:
        served = collections.Counter(_get(f"{balancer.url}/x") for _ in range(30))
        assert served == {"a": 10, "b": 10, "c": 10}
        upstreams[0][2].stop()  # kill "a" without telling the balancer
        answers = [_get(f"{balancer.url}/x") for _ in range(60)]  # every one must succeed
        assert len(answers) == 60 and set(answers) <= {"b", "c"}
    finally:
        balancer.process.stop()
    assert not balancer.process.alive()


DYING_UPSTREAM = """
import http.server, os, sys, time
port, dies = int(sys.argv[1]), sys.argv[2] == "dies"
class Handler(http.server.BaseHTTPRequestHandler):
    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        if dies and self.path.startswith("/die"):  # the request is in hand, then the server is gone
            time.sleep(0.1)
            os._exit(9)
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")
    do_GET = do_POST = answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def _send(url: str, method: str, headers: dict[str, str]) -> int:
    data = b'{"book_id": 1}' if method == "POST" else None
    request = urllib.request.Request(url, method=method, data=data, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


@pytest.mark.parametrize(("method", "headers", "retried"), [
    ("GET", {}, True),
    ("POST", {"Idempotency-Key": "k1"}, True),
    ("POST", {}, False),  # a plain write may have taken effect: never sent twice
])
def test_a_request_whose_server_dies_in_hand_is_retried_only_when_safe(
        tmp_path: Path, method: str, headers: dict[str, str], retried: bool) -> None:
    port, healthy_port = free_port(), free_port()
    dying = ManagedProcess(name="dying", argv=[sys.executable, "-c", DYING_UPSTREAM, str(port), "dies"],
                           log_path=tmp_path / "dying.log")
    healthy = ManagedProcess(name="healthy", argv=[sys.executable, "-c", DYING_UPSTREAM, str(healthy_port), "lives"],
                             log_path=tmp_path / "healthy.log")
    for process, at in ((dying, port), (healthy, healthy_port)):
        process.start()
        process.wait_ready(lambda at=at: http_ok(f"http://127.0.0.1:{at}/healthz"), timeout=10)
    balancer = start_balancer(binary=find_binaries("embedded").caddy, run_dir=tmp_path, port=free_port(),
                              upstreams=[port, healthy_port])
    try:
        statuses = []
        for _ in range(2):  # round robin: one of the two lands on the dying server
            if not dying.alive():
                dying.start()
                dying.wait_ready(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), timeout=10)
                assert _wait_healthy(balancer.url)
            statuses.append(_send(f"{balancer.url}/die", method, headers))
        assert (statuses == [200, 200]) is retried, statuses
    finally:
        balancer.process.stop()
        dying.stop()
        healthy.stop()


def _wait_healthy(url: str) -> bool:
    time.sleep(1.2)  # one active health check interval: the restarted server is back in rotation
    return http_ok(f"{url}/healthz")
