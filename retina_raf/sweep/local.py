"""The local executor: the runs of a sweep in this process, or in one worker process per
visible GPU (``python -m retina_raf.sweep OUT``, the runs as JSON on stdin; each worker's
output goes to ``<out>/logs/worker-<i>.log``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import traceback
from dataclasses import asdict
from pathlib import Path

from retina_raf.errors import EXIT_INTERRUPTED, RunInterrupted
from retina_raf.sweep.experiment import Run
from retina_raf.sweep.report import SweepReport, progress, report
from retina_raf.sweep.state import train_run


def visible_gpus() -> list[str]:
    """Ids of the GPUs this process may use (respecting CUDA_VISIBLE_DEVICES)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in listed.split(",") if x.strip()] if listed else []
    return ids[:count] if len(ids) >= count else [str(i) for i in range(count)]


def run_local(runs: list[Run], out: Path, workers: int | None = None) -> SweepReport:
    """Train ``runs``: one after the other in this process on the CPU or a single GPU, or
    with one worker process per visible GPU (``workers`` overrides the number of processes;
    several workers share the GPUs round-robin).

    Workers take runs in order, skipping any run another process holds, so they share the
    work without a queue. A failed run is recorded and the sweep goes on.
    """
    out = Path(out)
    gpus = [] if all(run.config().train.device == "cpu" for run in runs) else visible_gpus()
    n_workers = workers or max(1, len(gpus))
    if n_workers == 1:
        for i, run in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {run.run_id}", flush=True)
            try:
                train_run(run, out)
            except Exception as exc:
                print(f"[{i}/{len(runs)}] {run.run_id} FAILED: {exc}", flush=True)
        return report(out, runs)

    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    payload = json.dumps([asdict(run) for run in runs])
    procs = []
    for i in range(n_workers):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        log = open(log_dir / f"worker-{i}.log", "a")  # closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "retina_raf.sweep", str(out)],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        proc.stdin.write(payload)
        proc.stdin.close()
        procs.append((proc, log))
    where = f"GPUs {', '.join(gpus)}" if gpus else "the CPU"
    print(f"{n_workers} workers on {where}; logs in {log_dir}", flush=True)
    try:
        progress(out, runs, lambda: all(p.poll() is not None for p, _ in procs))
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.terminate()
            proc.wait()
            log.close()
    logs = {
        run.run_id: [str(log_dir / f"worker-{i}.log") for i in range(n_workers)] for run in runs
    }
    return report(out, runs, logs)


def worker_main(out: str) -> None:
    """A local worker: train the runs (JSON on stdin) that nobody else has taken."""
    todo = [Run(**item) for item in json.loads(sys.stdin.read())]
    for run in todo:
        try:
            train_run(run, Path(out))
        except RunInterrupted as exc:  # the sweep is being stopped: so is this worker
            print(f"worker stopped: {exc}", flush=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception:
            traceback.print_exc()
