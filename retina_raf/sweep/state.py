"""The state of a sweep's runs in its output folder: one owner for the layout below.

Run ids, the definition of finished, the lock and the run folder itself are those of
:mod:`retina_raf.runs`; this module adds what a sweep keeps beside the run folders::

    <out>/<run_id>/             a run folder (retina_raf.runs; DONE when finished)
    <out>/.locks/<run_id>.lock  held (fcntl.flock) by the process that trains the run
    <out>/.queued/<run_id>      the SLURM job id of a run submitted without waiting
    <out>/sweep.log             journal: one line per start/resume/done/failed/busy event
    <out>/logs/<run_id>.err     traceback of a run's last failure

:func:`run_state` reads a run's state from them, and :func:`train_run` trains one run under
its lock, the one place that writes the journal and the error file; both executors
(:mod:`retina_raf.sweep.local`, :mod:`retina_raf.sweep.slurm`) call it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import traceback
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from retina_raf import runs
from retina_raf.io import write_text
from retina_raf.sweep.experiment import Run

STATES = ("done", "running", "queued", "failed", "interrupted", "pending")


# ------------------------------------------------------------------ run folder state
def run_dir(out: Path, run: Run) -> Path:
    """The run's folder, ``<out>/<run_id>``."""
    return Path(out) / run.run_id


def error_file(out: Path, run: Run) -> Path:
    """Where the traceback of the run's last failure is kept."""
    return Path(out) / "logs" / f"{run.run_id}.err"


def is_done(out: Path, run: Run) -> bool:
    """Whether the run is finished with at least the epochs its config asks for."""
    return runs.is_finished(run_dir(out, run), run.config().train.epochs)


def run_state(out: Path, run: Run, queued: dict | None = None) -> str:
    """One of :data:`STATES`: ``done`` (finished, :func:`is_done`), ``running`` (a process
    holds its lock), ``queued`` (its SLURM job, in ``queued``, is waiting), ``failed`` (the
    last attempt raised), ``interrupted`` (has a checkpoint to resume from) or ``pending``."""
    folder = run_dir(out, run)
    if is_done(out, run):
        return "done"
    if lock_holder(out, run) is not None:
        return "running"
    if queued and run.run_id in queued:
        return "queued"
    if error_file(out, run).exists():
        return "failed"
    if (folder / runs.CHECKPOINT_FILE).exists():
        return "interrupted"
    return "pending"


@contextlib.contextmanager
def run_lock(out: Path, run: Run) -> Iterator[bool]:
    """:func:`retina_raf.runs.run_lock` of the run's folder: yields whether this process
    has the lock (``<out>/.locks/<run_id>.lock``)."""
    with runs.run_lock(run_dir(out, run)) as mine:
        yield mine


def lock_holder(out: Path, run: Run) -> str | None:
    """``"host pid=... [job=...]"`` of the process training the run, or None if nobody is."""
    return runs.lock_holder(run_dir(out, run))


def journal(out: Path, event: str, run: Run, detail: str = "") -> None:
    """Append one line to ``<out>/sweep.log`` (one ``write`` with O_APPEND: lines of
    concurrent processes do not interleave)."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    line = f"{stamp} {runs.whoami()} {event} {run.run_id}" + (f" {detail}" if detail else "")
    path = Path(out) / "sweep.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
    finally:
        os.close(fd)


# ----------------------------------------------------------------------- one run
def train_run(run: Run, out: Path) -> str:
    """Train one run unless it is finished or another process is training it.

    Returns ``"trained"``, ``"done"`` (finished before) or ``"busy"`` (locked elsewhere).
    A failure writes ``<out>/logs/<run_id>.err`` and re-raises; an interrupted run (Ctrl-C,
    a signal, a time limit) keeps its checkpoint and resumes next time.
    """
    from retina_raf.train import train

    out = Path(out)
    with run_lock(out, run) as mine:
        if not mine:
            journal(out, "busy", run, f"held by {lock_holder(out, run)}")
            return "busy"
        if is_done(out, run):
            return "done"
        resume = (run_dir(out, run) / runs.CHECKPOINT_FILE).exists()
        journal(out, "resume" if resume else "start", run)
        try:
            train(run.config(), out, name=run.run_id, locked=True)
        except Exception:
            write_text(traceback.format_exc(), error_file(out, run))
            journal(out, "failed", run, f"see {error_file(out, run)}")
            raise
        except BaseException as exc:  # RunInterrupted (SIGTERM), KeyboardInterrupt, SystemExit
            journal(out, "interrupted", run, type(exc).__name__)
            raise
        error_file(out, run).unlink(missing_ok=True)
        journal(out, "done", run)
        return "trained"


# ------------------------------------------------------------- runs queued on SLURM
def queued_path(out: Path, run: Run) -> Path:
    """Where a run's SLURM job id is kept while the sweep that submitted it does not wait."""
    return Path(out) / ".queued" / run.run_id


def queued_jobs(out: Path, runs: list[Run]) -> dict[str, str]:
    """run_id -> SLURM job id, for runs whose job (submitted by an earlier sweep) SLURM
    still lists as pending or running: such runs are not submitted again."""
    submitted = {}
    for run in runs:
        path = queued_path(out, run)
        if path.exists():
            submitted[run.run_id] = path.read_text().strip()
    if not submitted or shutil.which("squeue") is None:
        return {}
    active = active_slurm_jobs({job.split("_")[0] for job in submitted.values()}) or set()
    return {rid: job for rid, job in submitted.items() if job in active}


def active_slurm_jobs(base_ids: set[str]) -> set[str] | None:
    """Ids (``123`` or ``123_4``) of our jobs that SLURM still lists as pending or running;
    None when ``squeue`` cannot tell (controller busy or down)."""
    # COMPLETING too: a job being requeued (time limit) passes through it
    states = "PENDING,RUNNING,CONFIGURING,COMPLETING,REQUEUED,REQUEUE_HOLD,RESIZING,SUSPENDED"
    cmd = ["squeue", "-h", "-r", "-o", "%i", "-t", states, "-j", ",".join(sorted(base_ids))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return set() if "Invalid job id" in proc.stderr else None
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()}
