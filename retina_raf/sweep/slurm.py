"""The SLURM executor: one job per run, submitted as job arrays through submitit.

Each job runs :class:`RunJob` (pickled by submitit, so it is importable as
``retina_raf.sweep.slurm.RunJob`` and as ``retina_raf.sweep.RunJob``). submitit's files and
the SLURM logs of each job go to ``<out>/slurm/<job_id>/``.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from retina_raf.errors import ConfigError, RunError
from retina_raf.io import write_text
from retina_raf.sweep.experiment import Run, SlurmConfig
from retina_raf.sweep.report import SweepReport, progress, report
from retina_raf.sweep.state import active_slurm_jobs, queued_path, train_run


class RunJob:
    """The callable one SLURM job runs (pickled by submitit). It has a ``checkpoint``
    method, so submitit requeues the job when it nears its time limit (SIGUSR2); training
    first stops at the next batch boundary and writes its checkpoint (retina_raf.resume), and
    the requeued job resumes from it."""

    def __init__(self, run: Run, out: str):
        self.run = run
        self.out = out

    def __call__(self) -> str:
        return train_run(self.run, Path(self.out))

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def submitit_parameters(name: str, slurm: SlurmConfig) -> dict:
    """``AutoExecutor.update_parameters`` arguments for one run per job."""
    params = {
        "name": f"retina-raf-{name}",
        "timeout_min": slurm.time_min,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": slurm.cpus_per_task,
        "slurm_array_parallelism": slurm.array_parallelism,
    }
    if slurm.gpus_per_job:  # no --gpus-per-node=0: clusters without GPUs may reject it
        params["gpus_per_node"] = slurm.gpus_per_job
    if slurm.mem_gb is not None:
        params["mem_gb"] = slurm.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(slurm, key) is not None:
            params[f"slurm_{key}"] = getattr(slurm, key)
    if slurm.setup:
        params["slurm_setup"] = list(slurm.setup)
    if slurm.additional:
        params["slurm_additional_parameters"] = {
            k.replace("-", "_"): v for k, v in slurm.additional.items()
        }
    return params


def run_slurm(
    runs: list[Run],
    out: Path,
    name: str,
    slurm: SlurmConfig,
    cluster: str = "slurm",
    wait: bool = True,
    poll_s: float = 5.0,
) -> SweepReport | None:
    """Submit one job per run as job arrays through submitit; with ``wait``, wait for the
    jobs to end and report which runs failed and where their logs are.

    ``cluster="local"`` runs the same jobs with submitit's local executor (no SLURM).
    Job states come from the run folders and ``squeue``, not ``sacct``: many small clusters
    run without the accounting database that ``sacct`` needs.
    """
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "the slurm executor needs submitit: pip install 'retina-raf[slurm]'"
        ) from None
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise RunError("sbatch not found: the slurm executor needs a SLURM cluster")
    out = Path(out)
    logging.getLogger("submitit").addFilter(lambda rec: "sacct" not in rec.getMessage())
    executor = submitit.AutoExecutor(folder=out / "slurm" / "%j", cluster=cluster)
    executor.update_parameters(**submitit_parameters(name, slurm))
    with executor.batch():
        jobs = [executor.submit(RunJob(run, str(out))) for run in runs]
    ids = sorted({job.job_id.split("_")[0] for job in jobs})
    if cluster == "slurm":
        for run, job in zip(runs, jobs, strict=True):
            write_text(f"{job.job_id}\n", queued_path(out, run))
    print(f"submitted {len(jobs)} jobs ({', '.join(ids)}); files in {out / 'slurm'}", flush=True)
    if not wait:
        return None
    slurm_jobs = cluster == "slurm"
    progress(out, runs, lambda: _jobs_over(jobs, slurm_jobs), poll_s=poll_s)
    for run in runs:  # their jobs are over (a job that is completing would look queued)
        queued_path(out, run).unlink(missing_ok=True)
    logs, reasons = {}, {}
    for run, job in zip(runs, jobs, strict=True):
        logs[run.run_id] = [str(job.paths.stderr), str(job.paths.stdout)]
        reasons[run.run_id] = _job_reason(job)
    rep = report(out, runs, logs)
    for rid, reason in reasons.items():
        rep.reasons.setdefault(rid, reason)
    return rep


def _jobs_over(jobs, slurm_jobs: bool) -> bool:
    active = active_slurm_jobs({j.job_id.split("_")[0] for j in jobs}) if slurm_jobs else None
    for job in jobs:
        if job.paths.result_pickle.exists():
            continue
        if slurm_jobs:
            if active is None or job.job_id in active:
                return False
        elif not job.done():
            return False
    return True


def _job_reason(job) -> str:
    """One line on how a job ended, from its result file."""
    from submitit.core.utils import pickle_load

    if not job.paths.result_pickle.exists():
        return f"job {job.job_id} ended without a result (killed, out of memory or time?)"
    outcome, value = pickle_load(job.paths.result_pickle)
    if outcome == "success":
        return f"job {job.job_id}: {value}"
    lines = [line for line in str(value).splitlines() if line.strip()]
    return f"job {job.job_id}: {lines[-1].strip() if lines else 'error'}"
