"""The results of a run, as one JSON document with a versioned schema.

``results.json`` is what every other part reads back (the report, ``compare``, the model's
calibration, the CI benchmark), so its shape is fixed here and documented in docs/results.md. A
reader checks ``schema`` first: a file from an incompatible version is refused with one line
rather than misread.
"""

from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path
from typing import Any

from scalesim.errors import ScalesimError

SCHEMA = "scalesim.results"
SCHEMA_VERSION = 1
RESULTS_FILE = "results.json"


def machine_facts() -> dict[str, Any]:
    load1, load5, load15 = os.getloadavg()
    return {
        "cores": os.cpu_count(),
        "load_average": [round(load1, 2), round(load5, 2), round(load15, 2)],
        "platform": platform.platform(),
        "python": sys.version.split()[0],
    }


def save_results(results: dict[str, Any], run_dir: Path) -> Path:
    document = {"schema": SCHEMA, "schema_version": SCHEMA_VERSION, **results}
    path = run_dir / RESULTS_FILE
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(document, indent=2, sort_keys=False))
    tmp.replace(path)  # never leave a half-written results file behind
    return path


def load_results(path: Path) -> dict[str, Any]:
    """Read a results file, or the results.json inside a run folder."""
    if path.is_dir():
        path = path / RESULTS_FILE
    try:
        document: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ScalesimError(f"{path}: no such results file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ScalesimError(f"{path}: not a readable results file: {exc}") from None
    if document.get("schema") != SCHEMA:
        raise ScalesimError(f"{path}: not a scalesim results file")
    if document.get("schema_version") != SCHEMA_VERSION:
        raise ScalesimError(f"{path}: results schema version {document.get('schema_version')} is not supported "
                            f"(this scalesim reads version {SCHEMA_VERSION})")
    document["_path"] = str(path)
    return document
