"""JSON to and from bytes: orjson when it is installed, the standard library otherwise.

Responses, cached query rows and cached profiles all pass through these two functions. orjson is
several times faster and writes dates as ISO strings on its own; the fallback teaches the standard
encoder the same, so both produce the same documents. Both raise ``ValueError`` (or a subclass) on malformed input.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import date
from typing import Any


def _default(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


def _stdlib_dumps(value: Any) -> bytes:
    return json.dumps(value, default=_default, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


dumps: Callable[[Any], bytes]
loads: Callable[[bytes | str], Any]
try:
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    dumps, loads = _stdlib_dumps, json.loads
else:
    dumps, loads = orjson.dumps, orjson.loads
