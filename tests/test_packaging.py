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
PACKAGES = ("retina_raf", "analysis", "retina_raf_cli")


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
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in (n.split(".")[0] for n in names):
                    if name in sys.stdlib_module_names or name in PACKAGES:
                        continue
                    dist = DISTRIBUTIONS.get(name, name).lower().replace("_", "-")
                    if dist not in declared:
                        missing.add(f"{dist} ({path.relative_to(REPO)})")
    assert sorted(missing) == []


def test_version_floors_match_the_apis_called():
    """torch >= 2.4: torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype
    (the precision helpers, next test); xarray >= 2024.7: Dataset.drop_attrs (a run's
    history in its results, the test after)."""
    declared = requirements()
    assert floor(declared["torch"]) >= (2, 4)
    assert floor(declared["torchvision"]) >= (0, 19)
    assert floor(declared["xarray"]) >= (2024, 7)
    assert floor(declared["pandas"]) >= (2, 0)


def test_the_precision_helpers_follow_autocast_of_the_tensors_device_type():
    """What the torch floor is for: under CPU autocast (bf16) autocast_inputs casts the
    floating tensors to autocast's dtype and leaves the others; outside autocast, and inside
    no_autocast, nothing is cast; no_autocast switches autocast off only while it lasts."""
    import torch

    from retina_raf.precision import autocast_inputs, no_autocast

    x, index = torch.ones(3), torch.arange(3)
    assert all(
        a is b for a, b in zip(autocast_inputs(x, None, index), (x, None, index), strict=True)
    )
    with torch.autocast("cpu", dtype=torch.bfloat16):
        cast, absent, same = autocast_inputs(x, None, index)
        assert cast.dtype == torch.bfloat16 and absent is None and same is index
        with no_autocast("cpu"):
            assert not torch.is_autocast_enabled("cpu")
            assert autocast_inputs(x)[0] is x
        assert torch.is_autocast_enabled("cpu")
    with no_autocast("cpu"):  # autocast off already: nothing to switch
        assert autocast_inputs(x)[0] is x


def test_a_runs_history_enters_its_results_without_the_files_attributes(tmp_path):
    """What the xarray floor is for: the history a run contributes to its results has none
    of history.nc's own attributes (provenance, config) and keeps its variables' CF ones."""
    import xarray as xr

    from analysis.stacking import history_variables
    from retina_raf import runs

    loss = ("epoch", [2.0, 1.5], {"long_name": "cross-entropy", "units": "1"})
    xr.Dataset({"train_loss": loss}, coords={"epoch": [1, 2]},
               attrs={"preset": "bp", "config": "seed: 0\n"}).to_netcdf(
        tmp_path / runs.HISTORY_FILE, engine="h5netcdf")  # fmt: skip
    history = history_variables(runs.load_history(tmp_path))
    assert history.attrs == {}
    assert history["train_loss"].attrs == {"long_name": "cross-entropy", "units": "1"}
    assert list(history["train_loss"].values) == [2.0, 1.5]


def test_one_version_string():
    """pyproject.toml takes the version from retina_raf.__version__ (dynamic), writes none of
    its own, and the installed metadata says the same (else: reinstall, `pip install -e .`)."""
    from importlib.metadata import version

    import retina_raf

    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "version" not in pyproject["project"]
    assert "version" in pyproject["project"]["dynamic"]
    dynamic = pyproject["tool"]["setuptools"]["dynamic"]["version"]
    assert dynamic == {"attr": "retina_raf.__version__"}
    assert version("retina-raf") == retina_raf.__version__


def test_every_package_data_pattern_names_a_file():
    """Each pattern of [tool.setuptools.package-data] matches at least one file of its package
    (``*``: of any package); the packages read no data files of their own at run time today,
    so the table may be absent."""
    setuptools = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = sorted({p.parent for p in REPO.glob("*/**/__init__.py")} - {REPO})
    packages = [p for p in packages if p.relative_to(REPO).parts[0] in PACKAGES]
    unmatched = []
    for package, patterns in setuptools.get("package-data", {}).items():
        folders = packages if package == "*" else [REPO / package.replace(".", "/")]
        for pattern in patterns:
            found = [f for folder in folders for f in folder.glob(pattern)
                     if f.is_file() and "__pycache__" not in f.parts]  # fmt: skip
            if not found:
                unmatched.append(f"{package}: {pattern}")
    assert unmatched == []


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
