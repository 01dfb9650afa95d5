"""How to cite and license the project: CITATION.cff is valid YAML naming the software and
the two papers it builds on, and LICENSE, CITATION.cff and pyproject.toml name one license."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from retina_raf import __version__

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
# SPDX identifier -> the first line of that license's standard text
LICENSE_HEADINGS = {"MIT": "MIT License"}


def citation() -> dict:
    return yaml.safe_load((ROOT / "CITATION.cff").read_text(encoding="utf-8"))


def test_citation_names_the_software_and_both_papers():
    """cff-version 1.2.0, title and authors; references to Hanut & Kadmon
    (arXiv:2502.20580) and Lindsey et al. (ICLR 2019, arXiv:1901.00945)."""
    cff = citation()
    assert cff["cff-version"] == "1.2.0"
    assert cff["title"] == "retina-raf" and cff["type"] == "software"
    assert cff["authors"] and all(a.get("name") or a.get("family-names") for a in cff["authors"])
    references = {ref["doi"]: ref for ref in cff["references"]}
    assert set(references) == {"10.48550/arXiv.2502.20580", "10.48550/arXiv.1901.00945"}
    raf = references["10.48550/arXiv.2502.20580"]
    assert raf["title"] == "Training Large Neural Networks With Low-Dimensional Error Feedback"
    assert [a["family-names"] for a in raf["authors"]] == ["Hanut", "Kadmon"]
    assert raf["year"] == 2025
    lindsey = references["10.48550/arXiv.1901.00945"]
    assert lindsey["title"].startswith("A unified theory of early visual representations")
    assert [a["family-names"] for a in lindsey["authors"]] == ["Lindsey", "Ocko", "Ganguli", "Deny"]
    assert lindsey["year"] == 2019 and "ICLR 2019" in lindsey["conference"]["name"]


def test_citation_version_is_the_package_version():
    """CITATION.cff repeats the one version string, retina_raf.__version__."""
    assert str(citation()["version"]) == __version__


def test_license_file_citation_and_pyproject_agree():
    """pyproject's SPDX license is the one LICENSE holds (its standard heading) and the one
    CITATION.cff declares; the wheel ships LICENSE."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    spdx = project["license"]
    assert isinstance(spdx, str), "license: an SPDX expression, not the deprecated table"
    assert project["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text()
    assert text.splitlines()[0] == LICENSE_HEADINGS[spdx]
    assert "Copyright (c) 2026 the retina-raf authors" in text
    assert citation()["license"] == spdx
