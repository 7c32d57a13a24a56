"""Load generation: Locust in its own process, stepped load, and per-step statistics.

:func:`run_load` runs ``reference_app/locustfile.py`` with Locust (a single process, or a
master and workers), steps the number of users through a scenario's ``load`` section and
returns one :class:`StepStats` per step: throughput, mean / p50 / p95 / p99 / max latency per
endpoint and in total, failures, and the CPU seconds the load generator itself used. None of
these modules imports Locust (it monkey-patches gevent on import); only the locustfile does,
inside the Locust process.
"""

from scalesim.loadgen.config import ENV_VAR, DriverConfig, LoadConfig
from scalesim.loadgen.driver import LoadgenError, LoadResult, ProcessTreeCPU, run_load
from scalesim.loadgen.stats import EndpointStats, LogHistogram, StepStats, WindowRecorder

__all__ = [
    "ENV_VAR",
    "DriverConfig",
    "EndpointStats",
    "LoadConfig",
    "LoadResult",
    "LoadgenError",
    "LogHistogram",
    "ProcessTreeCPU",
    "StepStats",
    "WindowRecorder",
    "run_load",
]
