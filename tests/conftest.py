"""Shared fixtures: paths to the real data set, a CLI runner, deterministic torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from retina_raf.cli import main

# the full CIFAR-10 lies in ../shared next to the checkout (development machines and CI)
SHARED_CIFAR = Path(
    os.environ.get(
        "RETINA_RAF_CIFAR_DIR",
        Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10",
    )
)
IN_CI = bool(os.environ.get("CI"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def shared_file(name: str) -> Path:
    """A file of the full CIFAR-10 in ../shared; skipped outside CI when absent, fails in CI."""
    path = SHARED_CIFAR / name
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{path} must exist in CI")
        pytest.skip(f"{path} not present on this machine")
    return path


@pytest.fixture
def run_cli(capsys):
    """Run ``retina-raf ARGS`` in-process; return (exit status, stdout, stderr)."""

    def _run(*args: str) -> tuple[int, str, str]:
        try:
            main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        out, err = capsys.readouterr()
        return code, out, err

    return _run
