"""The slurm executor on a real SLURM cluster (docs/cli.md#sweeps): the same experiment file that
runs on a laptop runs unchanged as SLURM job arrays.

CI starts a one-node cluster on localhost with ``.ci/slurm-up.sh``; there these tests must
run. Elsewhere they are skipped when no SLURM cluster answers (run the script as root to
get one).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
import xarray as xr
import yaml

from retina_raf.config import dump_yaml
from retina_raf.sweep import DONE_FILE, expand, load_experiment, run_dir
from retina_raf.train import load_trained

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "experiments" / "smoke.yaml"
RUN_FILES = ("config.yaml", "checkpoint.pt", "history.nc", "model.pt", DONE_FILE)


def slurm_cluster_up() -> str | None:
    """None when a SLURM controller answers and has an idle node, else why not."""
    for tool in ("sbatch", "squeue", "sinfo"):
        if shutil.which(tool) is None:
            return f"{tool} not found"
    try:
        states = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True,
                                timeout=20)  # fmt: skip
    except subprocess.TimeoutExpired:
        return "sinfo timed out"
    if not any(s.strip().rstrip("*") in ("idle", "mixed") for s in states.stdout.splitlines()):
        return f"no idle SLURM node (sinfo: {states.stdout.strip() or states.stderr.strip()})"
    return None


@pytest.fixture
def slurm():
    """Skip without a SLURM cluster, except in CI, where its absence is a failure."""
    why = slurm_cluster_up()
    if why is not None:
        message = f"no SLURM cluster: {why} (start one with: sudo bash .ci/slurm-up.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.mark.slow
def test_smoke_sweep_runs_to_completion_as_slurm_jobs(slurm, tmp_path, run_cli):
    """smoke.yaml through --executor slurm: every run is trained inside a SLURM job, and every
    run folder is complete and loadable; a second sweep finds nothing left to do."""
    out = tmp_path / "smoke"
    code, text, err = run_cli("sweep", SMOKE, "--executor", "slurm", "--out", out)
    assert code == 0, err + text
    runs = expand(load_experiment(SMOKE))
    for run in runs:
        folder = run_dir(out, run)
        assert all((folder / name).is_file() for name in RUN_FILES), sorted(folder.iterdir())
        model, config = load_trained(folder)
        assert config["seed"] == run.seed and config["preset"] == run.preset
        with xr.open_dataset(folder / "history.nc", engine="h5netcdf") as history:
            assert history.sizes["epoch"] == run.config().train.epochs
    journal = (out / "sweep.log").read_text().splitlines()
    for run in runs:  # trained by a SLURM job (its job id is in the journal line)
        (line,) = [x for x in journal if x.endswith(f" done {run.run_id}")]
        assert " job=" in line
    assert len(list((out / "slurm").glob("*/*_log.out"))) == len(runs)

    code, text, _ = run_cli("sweep", SMOKE, "--executor", "slurm", "--out", out)
    assert code == 0 and f"{len(runs)} finished, running or queued, 0 to train" in text


@pytest.mark.slow
def test_failed_slurm_job_is_reported_with_its_logs(slurm, tmp_path, run_cli):
    """A run whose job fails is named, with its error and the job's SLURM log files; the
    sweep exits 2."""
    smoke = yaml.safe_load(SMOKE.read_text())
    path = tmp_path / "one.yaml"
    path.write_text(yaml.safe_dump({**smoke, "presets": ["bp"], "seeds": [0]}))
    (run,) = expand(load_experiment(path))
    out = tmp_path / "out"
    # The folder holds a checkpoint of another run: training refuses to resume it.
    folder = run_dir(out, run)
    folder.mkdir(parents=True)
    other = yaml.safe_load(dump_yaml(run.config()))
    other["seed"] = 7
    (folder / "config.yaml").write_text(yaml.safe_dump(other))
    (folder / "checkpoint.pt").write_bytes(b"")

    code, text, err = run_cli("sweep", path, "--executor", "slurm", "--out", out)
    assert code == 2 and "1 of 1 runs did not finish" in err
    (line,) = [x for x in text.splitlines() if x.strip().startswith("FAILED")]
    assert run.run_id in line and "different run" in line
    logs = line.split("(logs: ")[1].rstrip(")").split(", ")
    assert any("/slurm/" in log and log.endswith("_log.err") for log in logs)
    assert all(Path(log).is_file() for log in logs)
