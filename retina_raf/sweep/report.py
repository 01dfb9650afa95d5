"""What a sweep shows: a progress bar while it trains, a :class:`SweepReport` of every run's
state and failure after, and the table of ``retina-raf sweep --dry-run``."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from retina_raf.sweep.experiment import ExperimentConfig, Run, expand, select_runs
from retina_raf.sweep.state import (
    STATES,
    error_file,
    is_done,
    lock_holder,
    queued_jobs,
    run_dir,
    run_state,
)


@dataclass
class SweepReport:
    """What a sweep left behind: each run's state, and where to look for failures."""

    out: Path
    states: dict[str, str]  # run_id -> state
    logs: dict[str, list[str]] = field(default_factory=dict)  # run_id -> log files
    reasons: dict[str, str] = field(default_factory=dict)  # run_id -> one-line reason

    @property
    def failed(self) -> list[str]:
        busy = ("done", "running", "queued")
        return [rid for rid, state in self.states.items() if state not in busy]

    def summary(self) -> str:
        counts = {s: list(self.states.values()).count(s) for s in STATES}
        parts = [f"{n} {s}" for s, n in counts.items() if n]
        lines = [
            f"{len(self.states)} run{'s' if len(self.states) != 1 else ''} in {self.out}: "
            + ", ".join(parts)
        ]
        for rid in self.failed:
            reason = self.reasons.get(rid, self.states[rid])
            logs = ", ".join(self.logs.get(rid, [])) or "no log"
            lines.append(f"  FAILED {rid}: {reason} (logs: {logs})")
        for rid, state in self.states.items():
            if state == "running":
                lines.append(f"  running in another process: {rid}")
            elif state == "queued":
                lines.append(f"  queued as a SLURM job of an earlier sweep: {rid}")
        return "\n".join(lines)


def report(out: Path, runs: list[Run], extra_logs: dict | None = None) -> SweepReport:
    """The state of every run, with the error file and any job logs of unfinished ones."""
    queued = queued_jobs(out, runs)
    rep = SweepReport(Path(out), {run.run_id: run_state(out, run, queued) for run in runs})
    for run in runs:
        logs = list((extra_logs or {}).get(run.run_id, []))
        err = error_file(out, run)
        if err.exists():
            logs.insert(0, str(err))
            lines = [line for line in err.read_text().splitlines() if line.strip()]
            if lines:
                rep.reasons[run.run_id] = lines[-1].strip()
        rep.logs[run.run_id] = logs
    return rep


def merge_reports(full: SweepReport, part: SweepReport) -> SweepReport:
    """``full`` with the logs and reasons that ``part`` (a report of some of its runs) adds."""
    for rid in part.states:
        full.logs[rid] = list(dict.fromkeys(full.logs.get(rid, []) + part.logs.get(rid, [])))
        if rid in part.reasons:
            full.reasons.setdefault(rid, part.reasons[rid])
    return full


def progress(out: Path, runs: list[Run], finished, poll_s: float = 2.0) -> None:
    """A progress bar of finished runs until ``finished()`` says the executor is done."""
    from tqdm import tqdm

    def n_done() -> int:
        return sum(is_done(out, run) for run in runs)

    # disable=None: no bar when the output is not a terminal (logs, CI)
    with tqdm(total=len(runs), desc="runs", unit="run", initial=n_done(), disable=None) as bar:
        while True:
            over = finished()
            bar.n = n_done()
            bar.refresh()
            if over:
                return
            time.sleep(poll_s)


def dry_run(exp: ExperimentConfig, out: Path, only: Sequence[str] = ()) -> str:
    """A table of every run (of the conditions ``only``, :func:`select_runs`) with its state
    and folder, then the counts per state."""
    runs = select_runs(expand(exp), only)
    queued = queued_jobs(out, runs)
    width = max(len(run.run_id) for run in runs)
    lines = []
    for run in runs:
        state = run_state(out, run, queued)
        extra = f"  ({lock_holder(out, run)})" if state == "running" else ""
        extra = f"  (job {queued[run.run_id]})" if state == "queued" else extra
        lines.append(f"{run.run_id:<{width}}  {state:<11}  {run_dir(out, run)}{extra}")
    counts = [f"{sum(line.split()[1] == s for line in lines)} {s}" for s in STATES]
    lines.append(
        f"{len(runs)} run{'s' if len(runs) != 1 else ''}: "
        + ", ".join(c for c in counts if not c.startswith("0 "))
    )
    return "\n".join(lines)
