"""How much does the load generator cost, and how far can it push?

The load generator shares the machine's two cores with the servers it measures, so its own
CPU cost per request is part of every capacity figure. This bench prints, side by side in one
run, for the same endpoint at the same concurrency:

* ``wrk`` (C, one thread) — the throughput ceiling of the server as a fast client sees it;
* Locust through scalesim's real driver and locustfile, benchmark mode: every user GETs one
  path with no think time (FastHttpUser, our ``events.request`` histogram hook included);
* Locust running the real user mix (login, browse, view, rent, ...) with no think time.

For each: requests/s, the generator's CPU seconds per 1,000 requests, the server's CPU
seconds per 1,000 requests, p50 and p99. Without ``--url`` a trivial asyncio HTTP server is
started (one process, one fixed JSON answer that also satisfies the user mix); with ``--url``
the server process is found by its listening port (or give ``--server-pid``, repeatable, e.g.
for the app servers behind a balancer)::

    python bench/bench_loadgen.py                       # trivial server, 20 connections, 10 s
    python bench/bench_loadgen.py --url http://127.0.0.1:8000 --path /api/books/1 --no-mix
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from scalesim.components.process import free_port, port_accepts  # noqa: E402
from scalesim.loadgen import DriverConfig, run_load  # noqa: E402

# -- the trivial server ---------------------------------------------------------------------------

_BODY = json.dumps(
    {
        "token": "bench",
        "expires_in": 3600,
        "user": {"id": 1},
        "id": 1,
        "title": "x",
        "items": [{"id": i, "title": f"Book {i}"} for i in range(1, 21)],
        "total": 2000,
    }
).encode()
_RESPONSE = (b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(_BODY)) + _BODY


class _Http(asyncio.Protocol):
    """HTTP/1.1 keep-alive (pipelining too), one fixed answer to every request."""

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        self.buffer = b""

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
            length = 0
            head = self.buffer[:end].lower()
            if (i := head.find(b"content-length:")) >= 0:
                length = int(head[i + 15 :].split(b"\r\n", 1)[0])
            if len(self.buffer) < end + 4 + length:
                return
            self.buffer = self.buffer[end + 4 + length :]
            self.transport.write(_RESPONSE)


def serve(port: int) -> None:
    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(_Http, "127.0.0.1", port, backlog=1024)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


def _wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not port_accepts(port):
        if time.monotonic() > deadline:
            raise RuntimeError(f"trivial server did not listen on {port}")
        time.sleep(0.05)


def _listening_pids(port: int) -> list[int]:
    pids = set()
    for conn in psutil.net_connections(kind="tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port and conn.pid:
            pids.add(conn.pid)
    return sorted(pids)


class _CPU:
    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(p) for p in pids]

    def sample(self) -> float | None:
        if not self.procs:
            return None
        total = 0.0
        for proc in self.procs:
            try:
                t = proc.cpu_times()
                total += t.user + t.system
            except psutil.Error:
                pass
        return total


# -- measurements ---------------------------------------------------------------------------------


@dataclass
class Row:
    label: str
    concurrency: int
    requests: int
    seconds: float
    gen_cpu_s: float | None
    server_cpu_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    failures: int = 0

    @property
    def rps(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def per_1k(self, cpu: float | None) -> str:
        return "n/a" if cpu is None or not self.requests else f"{1000 * cpu / self.requests:.3f}"


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s)", text)
    if not m:
        return float("nan")
    return float(m.group(1)) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[m.group(2)]


def run_wrk(url: str, concurrency: int, seconds: float, server: _CPU) -> Row:
    before_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = server.sample()
    proc = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{int(seconds)}s", "--latency", url],
        capture_output=True,
        text=True,
        timeout=seconds + 30,
    )
    cpu1 = server.sample()
    after_children = resource.getrusage(resource.RUSAGE_CHILDREN)
    out = proc.stdout
    if proc.returncode != 0 or "requests in" not in out:
        raise RuntimeError(f"wrk failed: {proc.stderr.strip() or out.strip()}")
    m = re.search(r"(\d+) requests in ([\d.]+)(ms|s|m)", out)
    assert m is not None
    duration = float(m.group(2)) * {"ms": 0.001, "s": 1.0, "m": 60.0}[m.group(3)]
    p50 = re.search(r"^\s+50%\s+(\S+)", out, re.M)
    p99 = re.search(r"^\s+99%\s+(\S+)", out, re.M)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    failures = int(errors.group(1)) if errors else 0
    if socket_errors:
        failures += sum(int(g) for g in socket_errors.groups())
    gen = (after_children.ru_utime + after_children.ru_stime) - (before_children.ru_utime + before_children.ru_stime)
    return Row(
        label="wrk (1 thread)",
        concurrency=concurrency,
        requests=int(m.group(1)),
        seconds=duration,
        gen_cpu_s=gen,
        server_cpu_s=None if cpu0 is None or cpu1 is None else cpu1 - cpu0,
        p50_ms=_ms(p50.group(1)) if p50 else None,
        p99_ms=_ms(p99.group(1)) if p99 else None,
        failures=failures,
    )


def run_locust(
    label: str,
    url: str,
    concurrency: int,
    seconds: float,
    server: _CPU,
    *,
    path: str | None,
    workers: int,
    out_dir: Path,
) -> Row:
    server_cpu: dict[str, float | None] = {}

    def on_event(event: dict[str, Any]) -> None:
        if event["event"] == "measure_start":
            server_cpu["start"] = server.sample()
        elif event["event"] == "step_end":
            server_cpu["end"] = server.sample()

    overrides: dict[str, Any] = {"spawn_rate": max(10.0, float(concurrency))}
    if path is not None:
        overrides["fixed_path"] = path
    result = run_load(
        host=url,
        workload={"think_time": {"min": 0, "max": 0}},
        load={"steps": [concurrency], "step_seconds": seconds, "warmup_seconds": 2},
        seeded_users=1000,
        out_dir=out_dir,
        on_event=on_event,
        locust_workers=workers,
        config=DriverConfig(locust_html=False, locust_csv=False, locust_json=False, load_overrides=overrides),
    )
    (step,) = result.steps
    start, end = server_cpu.get("start"), server_cpu.get("end")
    return Row(
        label=label,
        concurrency=concurrency,
        requests=step.total.requests,
        seconds=step.window_s,
        gen_cpu_s=step.loadgen_cpu_seconds,
        server_cpu_s=None if start is None or end is None else end - start,
        p50_ms=step.total.p50_ms,
        p99_ms=step.total.p99_ms,
        failures=step.total.failures,
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", help="a running server (default: start a trivial one)")
    parser.add_argument("--path", default="/api/books/1", help="the endpoint wrk and Locust both GET")
    parser.add_argument("--concurrency", type=int, default=20, help="wrk connections = Locust users")
    parser.add_argument("--seconds", type=float, default=10.0, help="measurement window of each run")
    parser.add_argument("--workers", type=int, default=0, help="Locust worker processes (0: one process)")
    parser.add_argument(
        "--server-pid",
        type=int,
        action="append",
        default=[],
        help="server process(es) to charge CPU to (default: whoever listens on the port)",
    )
    parser.add_argument("--no-mix", action="store_true", help="skip the user-mix run")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return 0
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install -y wrk)", file=sys.stderr)
        return 2

    server_proc: subprocess.Popen[bytes] | None = None
    try:
        if args.url:
            url = args.url.rstrip("/")
            pids = args.server_pid or _listening_pids(urlsplit(url).port or 80)
            server_label = f"{url} (pids {pids or 'unknown'})"
        else:
            port = free_port()
            server_proc = subprocess.Popen([sys.executable, __file__, "--serve", str(port)])
            _wait_listening(port)
            url = f"http://127.0.0.1:{port}"
            pids = [server_proc.pid]
            server_label = "trivial asyncio server (1 process)"
        server = _CPU(pids)
        print(
            f"server: {server_label}; endpoint {args.path}; concurrency {args.concurrency}; "
            f"{args.seconds:g} s windows; {os.cpu_count()} cores; Locust workers: {args.workers}"
        )
        rows = [run_wrk(url + args.path, args.concurrency, args.seconds, server)]
        with tempfile.TemporaryDirectory(prefix="bench-loadgen-") as tmp:
            rows.append(
                run_locust(
                    "locust FastHttpUser, GET path",
                    url,
                    args.concurrency,
                    args.seconds,
                    server,
                    path=args.path,
                    workers=args.workers,
                    out_dir=Path(tmp) / "fixed",
                )
            )
            if not args.no_mix:
                rows.append(
                    run_locust(
                        "locust FastHttpUser, user mix",
                        url,
                        args.concurrency,
                        args.seconds,
                        server,
                        path=None,
                        workers=args.workers,
                        out_dir=Path(tmp) / "mix",
                    )
                )
    finally:
        if server_proc is not None:
            server_proc.terminate()
            server_proc.wait(timeout=10)

    header = (
        f"{'generator':32} {'conc':>5} {'req/s':>9} {'gen CPU-s/1k':>13} {'server CPU-s/1k':>16} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'failed':>7}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        p50 = "n/a" if r.p50_ms is None else f"{r.p50_ms:.2f}"
        p99 = "n/a" if r.p99_ms is None else f"{r.p99_ms:.2f}"
        print(
            f"{r.label:32} {r.concurrency:>5} {r.rps:>9.0f} {r.per_1k(r.gen_cpu_s):>13} "
            f"{r.per_1k(r.server_cpu_s):>16} {p50:>8} {p99:>8} {r.failures:>7}"
        )
    wrk, fixed = rows[0], rows[1]
    if fixed.rps:
        print(f"wrk / Locust throughput on {args.path}: {wrk.rps / fixed.rps:.1f}x")
    if fixed.gen_cpu_s and wrk.gen_cpu_s:
        ratio = (fixed.gen_cpu_s / fixed.requests) / (wrk.gen_cpu_s / wrk.requests)
        print(f"Locust / wrk CPU per request: {ratio:.1f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
