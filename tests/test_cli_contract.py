"""The command line's contract: bad input gets one clear line and exit status 2 before anything
is computed or written (an output that cannot be written, a missing report input, settings
that would make a meaningless run or map)."""

from __future__ import annotations

import pytest

COMMANDS = [
    ["train", "--preset", "bp", "--epochs", "1", "--out", "{bad}"],
    ["rfs", "{run}", "--out", "{bad}/rfs.nc"],
    ["metrics", "{run}/rfs.nc", "--out", "{bad}/metrics.nc"],
    ["trajectory", "{run}", "--out", "{bad}/t.nc"],
    ["results", "{run}", "--out", "{bad}/r.nc"],
    ["report", "notebooks/compare_ranks.ipynb", "--out", "{bad}"],
    ["figures", "{run}/r.nc", "--out", "{bad}"],
    ["theory", "--out", "{bad}"],
    ["sweep", "experiments/smoke.yaml", "--out", "{bad}"],
    ["sweep", "experiments/smoke.yaml", "--collect", "--results", "{bad}/r.nc"],
    ["demo", "--out", "{bad}"],
    ["data", "sample", "--source", "cifar10", "--out", "{bad}/s.npz"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: "-".join(c[:2]))
def test_an_unwritable_output_is_refused_before_computing(command, tmp_path, run_cli):
    """The output lies under a regular file (unwritable even for root, unlike a read-only
    folder): the command stops while reading its options."""
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    args = [a.format(bad=blocker / "out", run=tmp_path / "run") for a in command]
    before = sorted(tmp_path.rglob("*"))
    code, out, err = run_cli(*args)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "is a file, not a folder" in err
    assert sorted(tmp_path.rglob("*")) == before


def test_a_report_on_a_missing_input_file_is_refused_before_executing(tmp_path, run_cli):
    """`report -p results missing.nc`: one line, exit 2, no partial report and no FAILED."""
    missing, reports = str(tmp_path / "missing.nc"), str(tmp_path / "reports")
    code, _, err = run_cli(
        "report", "notebooks/compare_ranks.ipynb", "-p", "results", missing, "--out", reports
    )
    assert code == 2 and len(err.strip().splitlines()) == 1 and "no such file" in err
    assert not (tmp_path / "reports").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["train", "--preset", "bp", "--epochs", "0"], "0 is not in the range x>=1"),
        (["train", "--preset", "bp", "--set", "train.epochs=0"], "train.epochs: 0 is out of range"),
        (["train", "--preset", "bp-bottleneck-64", "--config-only"], "wider than the retina's 32"),
        (["rfs", "{run}", "--method", "actmax", "--steps", "0"], "0 is not in the range x>=1"),
    ],
    ids=["epochs-0", "set-epochs-0", "bottleneck-wider-than-retina", "actmax-0-steps"],
)
def test_settings_that_make_nothing_meaningful_are_refused(args, message, tmp_path, run_cli):
    """An untrained "finished" run, a wider-than-the-retina "bottleneck", an RF map without
    a single optimization step: refused in one line, nothing written."""
    args = [a.format(run=tmp_path) for a in args]
    code, _, err = run_cli(*args, *(["--out", str(tmp_path / "runs")] if args[0] == "train"
                                    and "--config-only" not in args else []))  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and message in err, err
    assert not (tmp_path / "runs").exists()


def test_no_progress_bar_is_written_to_a_log(tmp_path, run_cli):
    """Output that is not a terminal (a log file, a pipe, CI) gets the result lines only, no
    progress-bar carriage returns."""
    code, out, err = run_cli("theory", "--out", str(tmp_path), "--steps", "20", "--seeds", "1")
    assert code == 0, err
    assert "\r" not in err and "\r" not in out and "wrote" in out
