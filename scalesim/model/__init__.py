"""scalesim's capacity model: a closed queueing network, solved exactly and simulated.

The model answers what-if questions that the machine at hand cannot measure (40 app servers,
6 replicas, 20,000 users) from demands measured on it:

``network``
    The network: stations (queues with one or more servers, replicated copies, delays), request
    classes with their routes, users' think time; loaded from YAML/JSON or built in code.
``mva``
    Exact mean value analysis, multi-server stations included, and asymptotic bounds.
``simulate``
    A SimPy simulation of the same network: percentiles, confidence intervals, and what MVA cannot
    model (non-exponential service).
``whatif``
    Capacity curves, the bottleneck at each load, and what to add next.

Nothing here runs at import time; the command line lives in ``scalesim.model.cli``.
"""

from scalesim.model.mva import Bounds, MvaCurve, asymptotic_bounds, mva_curve, solve_mva
from scalesim.model.network import (
    Distribution,
    ModelError,
    Network,
    RequestClass,
    Station,
    Visit,
    load_network,
    network_from_dict,
)
from scalesim.model.solution import ClassMetrics, Solution, StationMetrics

__all__ = [
    "Bounds",
    "ClassMetrics",
    "Distribution",
    "ModelError",
    "MvaCurve",
    "Network",
    "RequestClass",
    "Solution",
    "Station",
    "StationMetrics",
    "Visit",
    "asymptotic_bounds",
    "load_network",
    "mva_curve",
    "network_from_dict",
    "solve_mva",
]
