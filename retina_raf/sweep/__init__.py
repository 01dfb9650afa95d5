"""Experiment grids and the executors that train them (docs/design.md#sweeps).

An experiment file is a grid of presets x ranks x grid overrides x seeds, or several such
grids under one set of seeds (``conditions``). :func:`expand` turns it into :class:`Run`s
with stable, readable ids; :func:`run_sweep` trains those that are not finished yet with an
executor, so one file runs unchanged on a laptop, a multi-GPU box and a SLURM cluster:

- ``local``: sequentially in this process on the CPU, or one worker process per visible GPU;
- ``slurm``: one SLURM job per run, submitted as job arrays through submitit.

The package, one concern per module (everything public is importable from
``retina_raf.sweep`` directly):

    experiment  the experiment file: schema, loading, checking, expansion into Runs
    state       a run's state in the output folder: locks, journal, queued jobs, train_run
    report      SweepReport, the progress bar and the --dry-run table
    local       the local executor and its worker processes (``python -m retina_raf.sweep``)
    slurm       the SLURM executor (submitit)
    runner      run_sweep: the runs that are not finished, with either executor

Everything lives in the sweep's output folder::

    <out>/<run_id>/             a run folder (retina_raf.runs; DONE when finished)
    <out>/.locks/<run_id>.lock  held (fcntl.flock) by the process that trains the run
    <out>/sweep.log             journal: one line per start/resume/done/failed/busy event
    <out>/logs/<run_id>.err     traceback of a run's last failure
    <out>/logs/worker-<i>.log   output of the local worker processes
    <out>/slurm/<job_id>/       submitit's files and the SLURM logs of each job

Run ids, the definition of finished, the lock and the folder layout are those of
:mod:`retina_raf.runs`, so ``retina-raf train`` with a run's config works on the same folder.
Concurrency: only the process holding a run's lock trains it, and the DONE check happens
under the lock, so two sweeps (or two jobs, or a sweep and ``retina-raf train``) never train
one run twice nor write one run folder at once. The OS releases the lock of a process that
dies (kill -9, node failure, a SLURM time limit), and the run then resumes from its
checkpoint. SIGTERM stops a run at a batch boundary with a checkpoint (retina_raf.resume), and
a sweep told to stop stops. Combining finished runs into a results dataset is analysis:
``analysis.results.collect_experiment`` (``retina-raf sweep --collect``).
"""

from retina_raf.runs import DONE_FILE, identity_settings, run_id
from retina_raf.sweep.experiment import (
    CONDITION_KEYS,
    ExperimentConfig,
    Run,
    SlurmConfig,
    check_experiment,
    expand,
    experiment_grid_keys,
    experiment_overrides,
    experiment_parts,
    experiment_yaml,
    grid_points,
    load_experiment,
    normalize_overrides,
    select_runs,
    update_experiment,
)
from retina_raf.sweep.local import run_local, visible_gpus
from retina_raf.sweep.report import SweepReport, dry_run, report
from retina_raf.sweep.runner import run_sweep
from retina_raf.sweep.slurm import RunJob, run_slurm, submitit_parameters
from retina_raf.sweep.state import (
    STATES,
    error_file,
    is_done,
    journal,
    lock_holder,
    queued_jobs,
    run_dir,
    run_lock,
    run_state,
    train_run,
)

__all__ = [
    "CONDITION_KEYS",
    "DONE_FILE",
    "STATES",
    "ExperimentConfig",
    "Run",
    "RunJob",
    "SlurmConfig",
    "SweepReport",
    "check_experiment",
    "dry_run",
    "error_file",
    "expand",
    "experiment_grid_keys",
    "experiment_overrides",
    "experiment_parts",
    "experiment_yaml",
    "grid_points",
    "identity_settings",
    "is_done",
    "journal",
    "load_experiment",
    "lock_holder",
    "normalize_overrides",
    "queued_jobs",
    "report",
    "run_dir",
    "run_id",
    "run_local",
    "run_lock",
    "run_slurm",
    "run_state",
    "run_sweep",
    "select_runs",
    "submitit_parameters",
    "train_run",
    "update_experiment",
    "visible_gpus",
]
