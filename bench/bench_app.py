"""CPU cost per request: the reference app against a bare Starlette + asyncpg handler.

The project models each app server by its CPU demand per request, so the reference app must not
waste CPU: on the book-detail request it should cost at most 1.5 times what the thinnest possible
handler costs for the same work. This benchmark measures both, side by side, in one run:

1. start a real PostgreSQL primary (scalesim's own component, on a free port) and seed it with the
   stage0 data set (1000 users, 400 authors, 2000 books, 20 rentals per user);
2. start two uvicorn processes on free ports, one each, with the same uvicorn options:
   * the reference app with stage0's config (``reference_app.app:create_app --factory``);
   * a bare app: one Starlette route that runs the *same* SQL text (the reference app's compiled
     stage0 book-detail statement, a primary-key lookup joined to the authors) on an asyncpg pool of
     the same size, builds the same JSON document and returns Starlette's ``JSONResponse``;
3. drive each in turn with the same concurrency for the same time, requesting ``/api/books/<id>``
   for uniformly random ids (``wrk`` when it is on PATH, else a small asyncio HTTP/1.1 client in a
   separate process), alternating the two servers over several rounds so that drift in machine
   load affects both alike;
4. read each server process's CPU seconds (user + system, psutil) before and after each round and
   print CPU-seconds per 1,000 requests for both and their ratio (the goal is <= 1.5).

Usage::

    python bench/bench_app.py [--seconds 8] [--connections 16] [--rounds 2]

The bare app lives in this file too (``create_bare_app``); the benchmark starts it with
``--app-dir`` pointing here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
BOOKS = 2000
STAGE0_DATA = {"users": 1000, "authors": 400, "books": BOOKS, "rentals_per_user": 20, "seed": 42}
POOL_SIZE = 10


# -- the bare app (imported by uvicorn in its own process) ------------------------------------------------


def create_bare_app() -> Any:
    """The thinnest reasonable handler for GET /api/books/{id}: one asyncpg query, one JSON document."""
    import asyncpg
    from starlette.applications import Starlette
    from starlette.responses import JSONResponse
    from starlette.routing import Route

    database_url = os.environ["BENCH_DATABASE_URL"]
    sql = os.environ["BENCH_BOOK_SQL"]
    pool_size = int(os.environ.get("BENCH_POOL_SIZE", "10"))
    state: dict[str, Any] = {}

    async def book(request: Any) -> JSONResponse:
        rows = await state["pool"].fetch(sql, int(request.path_params["book_id"]))
        if not rows:
            return JSONResponse({"error": "no such book"}, status_code=404)
        first = rows[0]
        return JSONResponse(
            {
                "id": first[0],
                "title": first[1],
                "category": first[2],
                "daily_price_cents": first[3],
                "copies": first[4],
                "available": first[5],
                "authors": [{"id": row[6], "name": row[7]} for row in rows if row[6] is not None],
            }
        )

    async def healthz(request: Any) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    async def lifespan(app: Any) -> Any:
        state["pool"] = await asyncpg.create_pool(database_url, min_size=pool_size, max_size=pool_size)
        yield
        await state["pool"].close()

    from contextlib import asynccontextmanager

    return Starlette(
        routes=[Route("/api/books/{book_id}", book), Route("/healthz", healthz)],
        lifespan=asynccontextmanager(lifespan),
    )


# -- load generation ------------------------------------------------------------------------------------

WRK_SCRIPT = f"""
math.randomseed(os.time())
request = function()
  return wrk.format("GET", "/api/books/" .. math.random(1, {BOOKS}))
end
"""


@dataclass
class LoadResult:
    requests: int
    errors: int
    seconds: float


def run_wrk(port: int, *, seconds: float, connections: int, script: Path) -> LoadResult:
    done = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "-s", str(script), f"http://127.0.0.1:{port}"],
        capture_output=True,
        text=True,
        check=True,
    )
    match = re.search(r"(\d+) requests in ([\d.]+)(m?s)", done.stdout)
    if match is None:
        raise RuntimeError(f"cannot parse wrk output:\n{done.stdout}")
    elapsed = float(match.group(2)) / (1000 if match.group(3) == "ms" else 1)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    socket_errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", done.stdout)
    failed = int(errors.group(1)) if errors else 0
    if socket_errors:
        failed += sum(int(g) for g in socket_errors.groups())
    return LoadResult(requests=int(match.group(1)), errors=failed, seconds=elapsed)


async def _drive(port: int, seconds: float, connections: int) -> LoadResult:
    """Fallback load: keep-alive HTTP/1.1 connections, one outstanding request each."""
    deadline = time.monotonic() + seconds
    counts = {"ok": 0, "errors": 0}

    async def one_connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.monotonic() < deadline:
                path = f"/api/books/{random.randint(1, BOOKS)}"
                writer.write(f"GET {path} HTTP/1.1\r\nHost: bench\r\n\r\n".encode())
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(re.search(rb"(?i)content-length: (\d+)", head).group(1))  # type: ignore[union-attr]
                await reader.readexactly(length)
                counts["ok" if head.startswith(b"HTTP/1.1 200") else "errors"] += 1
        finally:
            writer.close()

    started = time.monotonic()
    await asyncio.gather(*(one_connection() for _ in range(connections)))
    return LoadResult(
        requests=counts["ok"] + counts["errors"], errors=counts["errors"], seconds=time.monotonic() - started
    )


def run_python_load(port: int, *, seconds: float, connections: int) -> LoadResult:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--drive", str(port), str(seconds), str(connections)],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(done.stdout)
    return LoadResult(**data)


# -- servers --------------------------------------------------------------------------------------------


def _wait_healthy(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    from scalesim.components.process import http_ok

    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server on port {port} exited: {log.read_text()[-2000:]}")
        if http_ok(f"http://127.0.0.1:{port}/healthz", timeout=1):
            return
        time.sleep(0.1)
    raise RuntimeError(f"server on port {port} did not become healthy")


def start_uvicorn(target: str, *, port: int, env: dict[str, str], log: Path, app_dir: Path) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "uvicorn", target, "--factory", "--host", "127.0.0.1", "--port", str(port),
        "--no-access-log", "--log-level", "warning", "--app-dir", str(app_dir),
    ]  # fmt: skip
    with log.open("wb") as out:
        process = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    _wait_healthy(port, process, log)
    return process


def stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def cpu_seconds(pid: int) -> float:
    import psutil

    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


# -- the benchmark --------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=8.0, help="measured seconds per server per round")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=float, default=2.0)
    parser.add_argument("--drive", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.drive:
        port, seconds, connections = int(args.drive[0]), float(args.drive[1]), int(args.drive[2])
        print(json.dumps(asyncio.run(_drive(port, seconds, connections)).__dict__))
        return 0

    sys.path.insert(0, str(REPO))
    from reference_app.config import AppConfig
    from reference_app.queries import build_queries
    from reference_app.seed import seed_database
    from scalesim.components.binaries import find_binaries
    from scalesim.components.postgres import PostgresCluster
    from scalesim.components.process import free_port

    run_dir = Path(tempfile.mkdtemp(prefix="bench-app-"))
    cluster = PostgresCluster(binaries=find_binaries("embedded"), run_dir=run_dir / "pg")
    processes: list[subprocess.Popen[bytes]] = []
    try:
        cluster.start_primary(port=free_port())
        url = cluster.primary.url
        summary = asyncio.run(seed_database(url, **STAGE0_DATA))
        print(
            f"seeded {summary.users} users, {summary.books} books, {summary.rentals} rentals in {summary.seconds:.2f} s"
        )

        env = {k: v for k, v in os.environ.items() if k != "SCALESIM_APP_CONFIG"}
        env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
        config = AppConfig(server_name="app-1", database_url=url, pool_size=POOL_SIZE)
        ref_port, bare_port = free_port(), free_port()
        reference = start_uvicorn(
            "reference_app.app:create_app",
            port=ref_port,
            env={**env, "SCALESIM_APP_CONFIG": config.to_json()},
            log=run_dir / "reference.log",
            app_dir=REPO,
        )
        processes.append(reference)
        bare = start_uvicorn(
            "bench_app:create_bare_app",
            port=bare_port,
            env={
                **env,
                "BENCH_DATABASE_URL": url,
                "BENCH_BOOK_SQL": build_queries().book_joined.sql,
                "BENCH_POOL_SIZE": str(POOL_SIZE),
            },
            log=run_dir / "bare.log",
            app_dir=HERE,
        )
        processes.append(bare)

        script = run_dir / "books.lua"
        script.write_text(WRK_SCRIPT)
        use_wrk = shutil.which("wrk") is not None

        def load(port: int, seconds: float) -> LoadResult:
            if use_wrk:
                return run_wrk(port, seconds=seconds, connections=args.connections, script=script)
            return run_python_load(port, seconds=seconds, connections=args.connections)

        print(
            f"load: {'wrk' if use_wrk else 'python asyncio client'}, {args.connections} connections, "
            f"{args.seconds:g} s per server per round, {args.rounds} rounds, GET /api/books/<random id>"
        )
        totals = {"reference": [0.0, 0], "bare": [0.0, 0]}
        errors = {"reference": 0, "bare": 0}
        for port in (ref_port, bare_port):
            load(port, args.warmup)  # warm both: connections, prepared statements, caches
        for round_number in range(1, args.rounds + 1):
            for name, process, port in (("reference", reference, ref_port), ("bare", bare, bare_port)):
                before = cpu_seconds(process.pid)
                result = load(port, args.seconds)
                used = cpu_seconds(process.pid) - before
                totals[name][0] += used
                totals[name][1] += result.requests
                errors[name] += result.errors
                print(
                    f"  round {round_number} {name:9s}: {result.requests:7d} requests "
                    f"({result.requests / result.seconds:7.0f}/s), server CPU {used:6.2f} s, "
                    f"{1000 * used / max(1, result.requests):.3f} CPU-s per 1000 requests"
                )
        per_1000 = {name: 1000 * cpu / max(1, count) for name, (cpu, count) in totals.items()}
        ratio = per_1000["reference"] / per_1000["bare"]
        print()
        print(f"{'server':10s} {'requests':>9s} {'errors':>7s} {'CPU s':>7s} {'CPU-s/1000 req':>15s}")
        for name in ("reference", "bare"):
            cpu, count = totals[name]
            print(f"{name:10s} {count:9d} {errors[name]:7d} {cpu:7.2f} {per_1000[name]:15.3f}")
        verdict = "within" if ratio <= 1.5 else "ABOVE"
        print(f"ratio reference / bare: {ratio:.2f} ({verdict} the 1.5 goal)")
        return 0 if not any(errors.values()) else 1
    finally:
        for process in processes:
            stop(process)
        cluster.stop()
        cluster.cleanup_data()
        shutil.rmtree(run_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
