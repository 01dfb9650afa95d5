"""What every benchmark shares: the hardware line it prints, and the interleaved timing loop.

Benchmarks run as scripts (``python benchmarks/<name>.py``), so this folder is on their
import path and they import this module as ``common``.
"""

from __future__ import annotations

import platform
import statistics

import torch


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo (or what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def hardware() -> str:
    """One line: CPU model (and GPU name), torch version and threads."""
    line = f"{cpu_name()}; torch {torch.__version__}; {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        line += f"; GPU {torch.cuda.get_device_name(0)}"
    return line


def interleaved(variants: dict, repeats: int, warmup: int, clock) -> dict[str, float]:
    """Median seconds of each variant's step (``{name: callable}``), the variants run in turn
    ``warmup + repeats`` times so that they share the machine's state (its speed drifts)."""
    times = {name: [] for name in variants}
    for i in range(warmup + repeats):
        for name, step in variants.items():
            start = clock()
            step()
            if i >= warmup:
                times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}
