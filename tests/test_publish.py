"""Publishing (docs/design.md#reports): `make publish` and `make publish-trajectories` only
call commands of the CLI, each writing its own files, and the published reports hold each
figure panel once."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
from pathlib import Path

import pytest

from analysis.results import write_results

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"
PUBLISH_TARGETS = ("publish", "publish-trajectories", "publish-fig3")


def _recipe(target: str) -> list[str]:
    """The commands `make TARGET` would run (make -n), continuation lines joined; the
    install step is left out."""
    printed = subprocess.run(
        [
            "make",
            "--no-print-directory",
            "-n",
            target,
            "STAMP=",
            "TRAJECTORY=1",
            "EXPERIMENT=paper_fig4",
            "RUNS=/runs",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return [line for line in printed.replace("\\\n", " ").splitlines() if line.strip()]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
@pytest.mark.parametrize("target", PUBLISH_TARGETS)
def test_publish_targets_only_call_commands(target):
    """Every step is a `retina-raf` command that writes its own output (--out): no pipe,
    redirection or shell text processing of what a command printed."""
    commands = _recipe(target)
    assert commands
    for command in commands:
        assert command.startswith(".venv/bin/retina-raf "), command
        assert not set("|><;`") & set(command), command
        assert "$(" not in command and "$$" not in command, command


@pytest.mark.skipif(shutil.which("make") is None, reason="needs make")
def test_milestones_reach_the_notebook_as_a_list():
    """MILESTONES (a make list) becomes the rf_trajectory notebook's montage_epochs, and each
    milestone a --epoch of findings."""
    commands = _recipe("publish-trajectories")
    assert any('-p montage_epochs "[0,10,30,60,120]"' in command for command in commands)
    findings = next(command for command in commands if " findings " in command)
    assert "--epoch 0 --epoch 10 --epoch 30 --epoch 60 --epoch 120" in findings
    assert findings.endswith("--out reports/paper_fig4/findings.md")


def test_findings_out_writes_what_findings_prints(make_report_results, tmp_path, run_cli):
    """`findings RESULTS --out FILE`: the file holds exactly what the command prints, and
    nothing is printed."""
    results = write_results(make_report_results(), tmp_path / "results.nc")
    code, printed, err = run_cli("findings", results)
    assert code == 0, err
    assert printed.startswith("| condition | seeds |")
    out = tmp_path / "published" / "findings.md"
    code, written, err = run_cli("findings", results, "--out", out)
    assert code == 0, err
    assert written == "" and out.read_text() == printed
    assert [path.name for path in out.parent.iterdir()] == ["findings.md"]  # no temp file


# the published experiments: each has its findings page (what `make demo` renders has none)
PUBLISHED = sorted(path.parent.name for path in REPORTS.glob("*/README.md"))


@pytest.mark.parametrize("experiment", PUBLISHED)
def test_published_reports_hold_each_panel_once(experiment):
    """A paper panel is in the experiment's figures/ (`retina-raf figures`), never again
    in a report's own figures/, under its name or another (the same picture twice)."""
    folder = REPORTS / experiment
    paper = {path.stem for path in (folder / "figures").glob("*.svg")}
    own = {path.stem for path in folder.glob("*/figures/*.svg")}
    assert not paper & own
    panels = sorted(folder.rglob("*.svg"))
    digests = {hashlib.sha256(path.read_bytes()).hexdigest(): path for path in panels}
    twice = sorted(str(path) for path in set(panels) - set(digests.values()))
    assert not twice, f"the same panel as another file: {twice}"
