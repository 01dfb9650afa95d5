"""What every benchmark prints with its figures: the hardware and software it ran on."""

from __future__ import annotations

import platform

import torch


def hardware() -> str:
    """One line: CPU model (or GPU name), torch version and threads."""
    cpu = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    line = f"{cpu}; torch {torch.__version__}; {torch.get_num_threads()} threads"
    if torch.cuda.is_available():
        line += f"; GPU {torch.cuda.get_device_name(0)}"
    return line
