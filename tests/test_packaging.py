"""Packaging: the declared dependencies match what the code imports and calls, and
the conda environment installs the package instead of repeating its dependency list."""

from __future__ import annotations

import ast
import re
import sys
from pathlib import Path

import pytest
import yaml

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

REPO = Path(__file__).resolve().parents[1]
# import name -> distribution name, where they differ
DISTRIBUTIONS = {"yaml": "pyyaml", "skimage": "scikit-image"}


def requirements() -> dict[str, str]:
    """Distribution name (lower case, '-' for '_') -> version specifier, extras included."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    listed = list(project["dependencies"])
    listed += [r for extra in project["optional-dependencies"].values() for r in extra]
    out = {}
    for requirement in listed:
        name, spec = re.match(r"([A-Za-z0-9_.-]+)(.*)", requirement).groups()
        out[name.lower().replace("_", "-")] = spec
    return out


def floor(spec: str) -> tuple[int, ...]:
    (low,) = re.findall(r">=\s*([0-9.]+)", spec)
    return tuple(int(part) for part in low.split("."))


def test_every_imported_package_is_declared():
    """Each third-party module that retina_raf, analysis or the command line (retina_raf_cli)
    imports is a declared dependency (pandas was not)."""
    declared = requirements()
    missing = set()
    packages = ("retina_raf", "analysis", "retina_raf_cli")
    for package in packages:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in (n.split(".")[0] for n in names):
                    if name in sys.stdlib_module_names or name in packages:
                        continue
                    dist = DISTRIBUTIONS.get(name, name).lower().replace("_", "-")
                    if dist not in declared:
                        missing.add(f"{dist} ({path.relative_to(REPO)})")
    assert sorted(missing) == []


def test_version_floors_match_the_apis_called():
    """torch >= 2.4: torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype;
    xarray >= 2024.7: Dataset.drop_attrs."""
    declared = requirements()
    rules = (REPO / "retina_raf" / "precision.py").read_text()
    assert "torch.get_autocast_dtype(" in rules
    assert "torch.is_autocast_enabled(device_type)" in rules
    assert floor(declared["torch"]) >= (2, 4)
    assert floor(declared["torchvision"]) >= (0, 19)
    assert ".drop_attrs(" in (REPO / "analysis" / "results.py").read_text()
    assert floor(declared["xarray"]) >= (2024, 7)
    assert floor(declared["pandas"]) >= (2, 0)


def test_conda_environment_installs_the_package():
    """environment.yml installs this checkout with pip (`-e .[...]`), so the dependency list
    lives in one place."""
    env = yaml.safe_load((REPO / "environment.yml").read_text())
    pip = next(item["pip"] for item in env["dependencies"] if isinstance(item, dict))
    assert len(pip) == 1 and re.fullmatch(r"-e \.\[[a-z,]+\]", pip[0]), pip
    extras = set(pip[0][len("-e .[") : -1].split(","))
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert extras == set(project["optional-dependencies"])
    conda = [item for item in env["dependencies"] if isinstance(item, str)]
    assert all(item.split("=")[0] in ("python", "pip") for item in conda), conda
