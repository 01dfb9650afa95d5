"""Shared fixtures: paths to the real data set, a CLI runner, deterministic torch, a tiny
run config, and a tiny results dataset for the report notebooks.

Test modules do not import each other (tests/test_hygiene.py): what several of them use lives
here, as fixtures.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr

from retina_raf.config import parse_overrides, resolve_run_config
from retina_raf.data import DATA_ROOT_ENV, fetch_command, resolve_data
from retina_raf_cli import main

IN_CI = bool(os.environ.get("CI"))

torch.set_num_threads(min(2, torch.get_num_threads()))


def _full_data(name: str) -> Path:
    path = resolve_data(name, must_exist=False)
    if not path.exists():
        if IN_CI:
            pytest.fail(f"{path} must exist in CI ({DATA_ROOT_ENV} names the data root)")
        pytest.skip(
            f"full CIFAR-10 absent ({path}): `{fetch_command(name)}`, or set {DATA_ROOT_ENV} "
            "to a folder that holds it"
        )
    return path


@pytest.fixture(scope="session")
def full_data():
    """``full_data(name)``: the file of a full data set (``cifar10-gray``, ``cifar10``) in the
    data root (RETINA_RAF_DATA, else data/); the test is skipped when it is absent, except in
    CI (.ci/run sets the root), where it fails."""
    return _full_data


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


# ------------------------------------------------------------------------- a tiny run
# `--set` values of a tiny network on a few hundred images: a run trains in about a second
TINY_SETS = (
    "model.retina.retina_channels=4", "model.retina.n_bn=4", "model.retina.vvs_channels=4",
    "model.retina.vvs_layers=1", "model.retina.kernel_size=5", "model.retina.fc_units=16",
    "train.batch_size=50", "train.progress=false",
    "train.num_threads=1", "data.train_limit=200", "data.test_limit=100", "train.lr=0.001",
    "train.checkpoint_every=1",
)  # fmt: skip


def _tiny_config(preset="raf-r2", epochs=2, seed=0, extra=()):
    sets = [*TINY_SETS, f"train.epochs={epochs}", *extra]
    if preset.startswith("raf-r"):
        sets = [s for s in sets if not s.startswith("model.retina.n_bn")]
    return resolve_run_config(preset, seed, parse_overrides(sets))


@pytest.fixture(scope="session")
def tiny_sets() -> tuple[str, ...]:
    """The tiny network's settings as ``key=value`` strings (for ``--set``)."""
    return TINY_SETS


@pytest.fixture(scope="session")
def tiny_config():
    """``tiny_config(preset="raf-r2", epochs=2, seed=0, extra=())``: the resolved RunConfig of
    the preset with the tiny settings, then ``extra`` overrides (a raf-r preset keeps its
    own n_bn)."""
    return _tiny_config


# ------------------------------------------------------- a results dataset for the notebooks
REPORT_CONDITIONS = {  # preset: (rule, rank, n_bn, probability of a center-surround RF)
    "bp": ("bp", 32, 32, 0.2),
    "bp-bottleneck-2": ("bp", 2, 2, 0.9),
    "raf-r2": ("raf", 2, 32, 0.8),
    "raf-r32": ("raf", 32, 32, 0.2),
}
N_SEEDS, N_CHANNELS, SIZE, N_EPOCHS = 2, 4, 32, 3
LAYERS = ["vvs_1", "vvs_2"]


def _rf(center_surround: bool, rng) -> np.ndarray:
    y, x = np.mgrid[:SIZE, :SIZE] - (SIZE - 1) / 2 + rng.normal(0, 1, 2)[:, None, None]
    if center_surround:  # difference of Gaussians
        r2 = x**2 + y**2
        return np.exp(-r2 / 8) - 0.4 * np.exp(-r2 / 50)
    theta = rng.uniform(0, np.pi)  # Gabor
    along = x * np.cos(theta) + y * np.sin(theta)
    return np.exp(-(x**2 + y**2) / 32) * np.cos(2 * np.pi * along / 6)


def _report_results(seed: int = 0) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    rows = [(preset, s) for preset in REPORT_CONDITIONS for s in range(N_SEEDS)]
    shape = (len(rows), N_CHANNELS)
    rf = np.full((*shape, SIZE, SIZE), np.nan)
    present, responsive = np.zeros(shape, bool), np.zeros(shape, bool)
    rf_class = np.full(shape, "", dtype=object)
    osi, symmetry = np.full(shape, np.nan), np.full(shape, np.nan)
    for run, (preset, _) in enumerate(rows):
        _, _, n_bn, p_center_surround = REPORT_CONDITIONS[preset]
        for channel in range(min(n_bn, N_CHANNELS)):
            present[run, channel] = True
            if channel == N_CHANNELS - 1:  # one silent unit per full-width run
                rf[run, channel], rf_class[run, channel] = 0.0, "unresponsive"
                continue
            center_surround = rng.random() < p_center_surround
            rf[run, channel] = _rf(center_surround, rng) + rng.normal(0, 0.05, (SIZE, SIZE))
            responsive[run, channel] = True
            rf_class[run, channel] = "center-surround" if center_surround else "oriented"
            osi[run, channel] = rng.uniform(0, 0.2) if center_surround else rng.uniform(0.5, 0.9)
            symmetry[run, channel] = rng.uniform(0.7, 0.9) if center_surround else rng.uniform(
                0.1, 0.4)  # fmt: skip
    epochs = np.arange(1, N_EPOCHS + 1)
    loss = 2.3 * np.exp(-epochs / 4) + rng.normal(0, 0.02, (len(rows), N_EPOCHS))
    alignment = np.full((len(rows), N_EPOCHS, len(LAYERS)), np.nan)
    for run, (preset, _) in enumerate(rows):
        if REPORT_CONDITIONS[preset][0] != "bp":
            alignment[run] = 88 - 10 * epochs[:, None] + rng.normal(0, 1, (N_EPOCHS, len(LAYERS)))
    return xr.Dataset(
        {
            "rf": (("run", "channel", "y", "x"), rf),
            "present": (("run", "channel"), present),
            "responsive": (("run", "channel"), responsive),
            "rf_class": (("run", "channel"), rf_class.astype(str)),
            "osi": (("run", "channel"), osi),
            "symmetry": (("run", "channel"), symmetry),
            "train_loss": (("run", "epoch"), loss),
            "test_loss": (("run", "epoch"), loss + 0.1),
            "train_acc": (("run", "epoch"), 1 - loss / 2.5),
            "test_acc": (("run", "epoch"), 0.95 - loss / 2.5),
            "alignment_deg": (("run", "epoch", "layer"), alignment),
            # Oja's P turning towards the error's top subspace: 60, 40, 20 degrees
            "principal_angle_max_rad": (("run", "epoch", "layer"), np.deg2rad(alignment - 18)),
        },
        coords={
            "run_id": ("run", [f"{p}-s{s}" for p, s in rows]),
            "preset": ("run", [p for p, _ in rows]),
            "rank": ("run", [REPORT_CONDITIONS[p][1] for p, _ in rows]),
            "n_bn": ("run", [REPORT_CONDITIONS[p][2] for p, _ in rows]),
            "seed": ("run", [s for _, s in rows]),
            "rule": ("run", [REPORT_CONDITIONS[p][0] for p, _ in rows]),
            "channel": np.arange(N_CHANNELS),
            "epoch": epochs,
            "layer": LAYERS,
        },
        attrs={"rf_layer": "retina_2", "rf_method": "actmax"},
    )


@pytest.fixture(scope="session")
def make_report_results():
    """``make_report_results(seed=0)``: a tiny results dataset of the analysis.results schema
    that the report notebooks render: 4 conditions (bp, bp-bottleneck-2, raf-r2, raf-r32) x
    2 seeds, 4 retina channels of 32x32 RFs (bottleneck runs padded), history and
    alignment."""
    return _report_results
