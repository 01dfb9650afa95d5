"""``retina-raf sweep``: train every run of an experiment that is not finished, with the
local or the SLURM executor."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from retina_raf.errors import ConfigError, DataError
from retina_raf.io import write_text
from retina_raf.sweep.experiment import (
    ExperimentConfig,
    Run,
    expand,
    experiment_yaml,
    select_runs,
)
from retina_raf.sweep.local import run_local
from retina_raf.sweep.report import SweepReport, merge_reports, report
from retina_raf.sweep.slurm import run_slurm
from retina_raf.sweep.state import queued_jobs, run_state


def run_sweep(
    exp: ExperimentConfig,
    out: Path,
    executor: str = "local",
    workers: int | None = None,
    wait: bool = True,
    slurm_cluster: str = "slurm",
    only: Sequence[str] = (),
) -> SweepReport | None:
    """Train every run of ``exp`` that is not finished: skip ``done`` and ``running`` runs,
    resume ``interrupted`` and ``failed`` ones from their checkpoints, start the rest.
    ``only``: just the runs of these conditions (:func:`select_runs`); the others are left
    as they are, e.g. a run resting at a plateau while the rest of the queue trains."""
    out = Path(out)
    runs = select_runs(expand(exp), only)
    queued = queued_jobs(out, runs)
    todo = [run for run in runs if run_state(out, run, queued) not in ("done", "running", "queued")]
    _check_data(todo)
    out.mkdir(parents=True, exist_ok=True)
    write_text(experiment_yaml(exp), out / "experiment.yaml")
    print(
        f"{exp.name}: {len(runs)} run{'s' if len(runs) != 1 else ''}, "
        f"{len(runs) - len(todo)} finished, running or queued, "
        f"{len(todo)} to train ({executor})",
        flush=True,
    )
    if todo:
        if executor == "local":
            run_local(todo, out, workers)
        elif executor == "slurm":
            rep = run_slurm(todo, out, exp.name, exp.slurm, cluster=slurm_cluster, wait=wait)
            if rep is None:
                return None
            return merge_reports(report(out, runs), rep)
        else:
            raise ConfigError(f"unknown executor {executor!r} (allowed: local, slurm)")
    return report(out, runs)


def _check_data(runs: list[Run]) -> None:
    """Fail before training or submitting anything when a run's data set is missing: an
    unknown or unfetched data set name (the error names the fetch command), or a path that
    is not there."""
    from retina_raf.data import resolve_data

    for source in {run.config().data.path for run in runs} - {None}:
        path = resolve_data(source)
        if not path.exists():
            raise DataError(f"data set not found: {path} (set `data:` in the file or --data)")
