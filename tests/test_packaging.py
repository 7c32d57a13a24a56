"""The wheel carries every package, the stage files and the report template (the list is explicit)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_every_python_package_is_listed_in_pyproject() -> None:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    found = {".".join(init.parent.relative_to(ROOT).parts)
             for top in ("scalesim", "reference_app") for init in (ROOT / top).rglob("__init__.py")}
    assert found - listed == set()
    assert config["package-dir"]["scalesim.scenarios"] == "scenarios"
    assert sorted(p.name for p in (ROOT / "scenarios").glob("stage*.yaml")) == [f"stage{n}.yaml" for n in range(6)]
