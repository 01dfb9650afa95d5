"""Shared fixtures: paths to the real data set, a CLI runner, deterministic torch."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from retina_raf.data import DATA_ROOT_ENV, fetch_command, resolve_data
from retina_raf_cli import main

IN_CI = bool(os.environ.get("CI"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def full_data(name: str) -> Path:
    """The file of a full data set (``cifar10-gray``, ``cifar10``) in the data root
    (RETINA_RAF_DATA, else data/); skipped when absent, except in CI (.ci/run sets the root)."""
    path = resolve_data(name, must_exist=False)
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{path} must exist in CI ({DATA_ROOT_ENV} names the data root)")
        pytest.skip(
            f"full CIFAR-10 absent ({path}): `{fetch_command(name)}`, or set {DATA_ROOT_ENV} "
            "to a folder that holds it"
        )
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
