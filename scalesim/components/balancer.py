"""The load balancer: Caddy's reverse proxy, round robin with active health checks.

A dead app server is taken out of rotation by the health check (``/healthz`` every second) and,
until then, a request that fails to reach it is retried on another upstream for up to
``try_duration``. A request the dead server had already received is retried too when that is safe:
a read, or a write carrying an ``Idempotency-Key`` (the app answers a repeated key with what the
first attempt did). With these settings killing an upstream loses no request. Caddy's admin API and
automatic HTTPS are off, and its state folders point into the run folder so nothing is written to
the user's home.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scalesim.components.process import LOOPBACK, ManagedProcess, ensure_port_free, http_ok
from scalesim.measure.budgets import CpuGroup


@dataclass(frozen=True, kw_only=True)
class BalancerSettings:
    policy: str = "round_robin"
    health_uri: str = "/healthz"
    health_interval: str = "1s"
    try_duration: str = "2s"
    try_interval: str = "50ms"
    # A request whose upstream died after it was sent is retried on another only when that is safe:
    # reads, and writes that carry an Idempotency-Key (the app answers a repeat with the first result).
    retry_methods: tuple[str, ...] = ("GET", "HEAD")
    retry_header: str = "Idempotency-Key"
    # A retried write must be sent again whole: Caddy keeps request bodies up to this size (the
    # app's own limit) so that it can.
    request_buffers: str = "16KiB"
    keepalive_idle_conns: int = 64
    start_timeout: float = 15.0


@dataclass(kw_only=True)
class Balancer:
    name: str
    port: int
    upstreams: tuple[int, ...]
    process: ManagedProcess

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"


def caddyfile(*, port: int, upstreams: Sequence[str], settings: BalancerSettings, bind: str | None = LOOPBACK) -> str:
    """The balancer's Caddyfile: locally bound to loopback; in a container (``bind=None``) on every
    interface of the container, where only the host's published port decides who can reach it.
    Indented with spaces, so that YAML (compose configs, Kubernetes ConfigMaps) can carry it as a block.
    """
    site = f"http://{bind}:{port}" if bind else f"http://:{port}"
    bind_line = f"\n    bind {bind}" if bind else ""
    return f"""{{
    admin off
    auto_https off
    persist_config off
}}

{site} {{{bind_line}
    reverse_proxy {" ".join(upstreams)} {{
        lb_policy {settings.policy}
        lb_try_duration {settings.try_duration}
        lb_try_interval {settings.try_interval}
        lb_retry_match {{
            method {" ".join(settings.retry_methods)}
        }}
        lb_retry_match {{
            header {settings.retry_header} *
        }}
        health_uri {settings.health_uri}
        health_interval {settings.health_interval}
        request_buffers {settings.request_buffers}
        transport http {{
            keepalive_idle_conns {settings.keepalive_idle_conns}
        }}
    }}
}}
"""


def start_balancer(*, binary: Path, run_dir: Path, port: int, upstreams: Sequence[int],
                   settings: BalancerSettings | None = None, name: str = "balancer",
                   cpu_group: CpuGroup | None = None) -> Balancer:
    settings = settings or BalancerSettings()
    ensure_port_free(port, role=name)
    home = (run_dir / "data" / name).resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "Caddyfile"
    config.write_text(caddyfile(port=port, upstreams=[f"{LOOPBACK}:{upstream}" for upstream in upstreams],
                                settings=settings))
    env = {"HOME": str(home), "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"),
           "PATH": "/usr/bin:/bin"}
    process = ManagedProcess(name=name, log_path=(run_dir / "logs" / f"{name}.log").resolve(), env=env,
                             cpu_group=cpu_group,
                             argv=[str(binary), "run", "--config", str(config), "--adapter", "caddyfile"])
    balancer = Balancer(name=name, port=port, upstreams=tuple(upstreams), process=process)
    process.start()
    process.wait_ready(lambda: http_ok(f"{balancer.url}{settings.health_uri}"), timeout=settings.start_timeout)
    return balancer
