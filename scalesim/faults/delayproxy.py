"""A TCP proxy that can add latency to one server: how a latency fault reaches the wire.

Every server of a local run listens on 127.0.0.1, where a round trip takes microseconds. Linux can
delay loopback packets (``tc netem``), but only as root and only on kernels built with the netem
queueing discipline, which many VMs and containers are not. This proxy works anywhere: for a run
with a latency fault on, say, the primary, the app servers and workers are given the proxy's port
instead of the primary's, and the proxy forwards every byte both ways. While the fault is in force
each chunk the *client* sends waits ``delay`` from the moment it arrived before it is passed on, in
order, as a slower network would hold each packet; answers are not delayed, so every round trip
takes the delay longer. Outside the fault the proxy only forwards.

Control is by signal, so that the process has no port of its own to protect: SIGUSR1 reads the
delay in milliseconds from the control file and turns it on, SIGUSR2 turns it off, SIGTERM stops.

    python -m scalesim.faults.delayproxy --listen-port 6001 --upstream-port 5432 --control FILE

The proxy has a cost of its own (a Python process copying every byte), present from the start of
the run: compare a latency fault against the seconds before it in the same run, not against a run
without the proxy.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from scalesim.components.process import ManagedProcess, free_port, port_accepts

LOOPBACK = "127.0.0.1"
CHUNK = 65536


class DelayProxy:
    def __init__(self, *, upstream_port: int, control: Path) -> None:
        self.upstream_port = upstream_port
        self.control = control
        self.delay_s = 0.0
        self.connections = 0

    def turn_on(self) -> None:
        try:
            self.delay_s = max(0.0, float(self.control.read_text().strip())) / 1000.0
        except (OSError, ValueError) as exc:
            print(f"delayproxy: cannot read the delay from {self.control}: {exc}", file=sys.stderr, flush=True)
            return
        print(f"delayproxy: delay {self.delay_s * 1000:g} ms on", flush=True)

    def turn_off(self) -> None:
        self.delay_s = 0.0
        print("delayproxy: delay off", flush=True)

    async def serve_client(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(LOOPBACK, self.upstream_port)
        except OSError:
            client_writer.close()  # the server is down: the client sees a closed connection, as it would
            return
        try:
            await asyncio.gather(self._pipe(client_reader, upstream_writer, delayed=True),
                                 self._pipe(upstream_reader, client_writer, delayed=False))
        finally:
            for writer in (client_writer, upstream_writer):
                with contextlib.suppress(Exception):
                    writer.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, delayed: bool) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()

        async def forward() -> None:
            while True:
                arrived, data = await queue.get()
                if not data:
                    break
                wait = arrived + self.delay_s - time.monotonic() if delayed else 0.0
                if wait > 0:
                    await asyncio.sleep(wait)
                writer.write(data)
                await writer.drain()
            with contextlib.suppress(OSError, RuntimeError):
                writer.write_eof()

        forwarder = asyncio.ensure_future(forward())
        try:
            while True:
                data = await reader.read(CHUNK)
                queue.put_nowait((time.monotonic(), data))
                if not data:
                    break
            await forwarder
        except (ConnectionError, OSError):
            forwarder.cancel()
            with contextlib.suppress(Exception):
                writer.close()


async def serve(*, listen_port: int, upstream_port: int, control: Path) -> None:
    proxy = DelayProxy(upstream_port=upstream_port, control=control)
    loop = asyncio.get_running_loop()
    stopped = asyncio.Event()
    loop.add_signal_handler(signal.SIGUSR1, proxy.turn_on)
    loop.add_signal_handler(signal.SIGUSR2, proxy.turn_off)
    loop.add_signal_handler(signal.SIGTERM, stopped.set)
    loop.add_signal_handler(signal.SIGINT, stopped.set)
    server = await asyncio.start_server(proxy.serve_client, LOOPBACK, listen_port)
    print(f"delayproxy: {LOOPBACK}:{listen_port} -> {LOOPBACK}:{upstream_port}", flush=True)
    async with server:
        await stopped.wait()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m scalesim.faults.delayproxy", description=__doc__.split("\n")[0])
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--control", type=Path, required=True, help="file holding the delay in ms (read on SIGUSR1)")
    args = parser.parse_args(argv)
    try:
        asyncio.run(serve(listen_port=args.listen_port, upstream_port=args.upstream_port, control=args.control))
    except OSError as exc:
        print(f"delayproxy: {exc}", file=sys.stderr)
        raise SystemExit(1) from None


# -- started and steered by scalesim ------------------------------------------------------------------


@dataclass(kw_only=True)
class DelayProxyProcess:
    """A running delay proxy in front of one node: its port, process and control file."""

    target: str
    port: int
    process: ManagedProcess
    control: Path

    def delay(self, milliseconds: float) -> None:
        self.control.write_text(f"{milliseconds:g}\n")
        self.process.signal_tree(signal.SIGUSR1)

    def no_delay(self) -> None:
        self.process.signal_tree(signal.SIGUSR2)


def start_delay_proxy(*, target: str, upstream_port: int, run_dir: Path, start_timeout: float = 15.0
                      ) -> DelayProxyProcess:
    port = free_port()
    control = (run_dir / "data" / f"proxy-{target}.delay").resolve()
    control.parent.mkdir(parents=True, exist_ok=True)
    control.write_text("0\n")
    process = ManagedProcess(
        name=f"delay proxy for {target}", log_path=(run_dir / "logs" / f"proxy-{target}.log").resolve(),
        argv=[sys.executable, "-m", "scalesim.faults.delayproxy", "--listen-port", str(port),
              "--upstream-port", str(upstream_port), "--control", str(control)], stop_timeout=5)
    process.start()
    process.wait_ready(lambda: port_accepts(port), timeout=start_timeout)
    return DelayProxyProcess(target=target, port=port, process=process, control=control)


if __name__ == "__main__":
    main()
