"""Caddy balances round robin and loses no request when an upstream dies."""

from __future__ import annotations

import collections
import sys
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
