"""Paper section 3 / Fig. 2: learning with low-dimensional error feedback in linear networks.

Every run uses the paper's sizes (n=128, k=64, m=64) and the default task (d=16 modes);
alignment is u_j^T W2 W1 v_j / s_j (1 = mode j of Sigma_io recovered), read at the end of a
run as its mean over the last 10% of the time points (the simulation fluctuates by ~0.02).
"""

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from retina_raf.errors import ConfigError, RunError
from retina_raf.linear_theory import (
    TheoryConfig,
    figure2_data,
    integrate_ode,
    make_task,
    simulate,
)
from retina_raf_cli import main

M, D, LOW_RANK = TheoryConfig.m, TheoryConfig.d, 8
RECOVERED = 0.95  # alignment of a mode that counts as recovered


def final_alignment(ds: xr.Dataset) -> np.ndarray:
    """Alignment per mode averaged over the last 10% of the run, shape (d,)."""
    tail = max(1, ds.sizes["time"] // 10)
    return ds.alignment.isel(time=slice(-tail, None)).mean("time").values


@pytest.fixture(scope="module")
def runs():
    """Simulations and ODE solutions shared by the tests, computed on first use."""
    cache = {}

    def get(source, rule, rank):
        if (source, rule, rank) not in cache:
            run = simulate if source == "simulation" else integrate_ode
            cache[source, rule, rank] = run(rule, rank, seed=0)
        return cache[source, rule, rank]

    return get


# ----------------------------------------------------------------------------- paper claims
def test_raf_with_rank_below_m_recovers_top_r_modes(runs):
    """Fig. 2e,g: RAF (Q and P trained) with r = 8 < m = 64 recovers the top-8 singular
    modes of Sigma_io, even though the task has d = 16 > r modes."""
    for source in ("simulation", "ode"):
        top = final_alignment(runs(source, "raf", LOW_RANK))[:LOW_RANK]
        assert top.min() > RECOVERED, (source, top)


def test_raf_feedback_spans_top_output_subspace(runs):
    """Section 3.2: Oja's rule turns the rows of P to the top-r principal subspace of the
    targets, so B = QP passes exactly the error components of the top r modes."""
    overlap = runs("simulation", "raf", LOW_RANK).feedback_overlap
    assert overlap.isel(time=0) < 0.3  # random P: about r/m = 0.125
    assert overlap.isel(time=-1) > 0.95


def test_lowrank_fa_with_fixed_p_does_not_recover_top_modes(runs):
    """Fig. 2c,f: with P fixed at random and r = 8 < m, training Q alone leaves the top-8
    modes unrecovered: the fixed point of eq. (6) is not unique; RAF is clearly better."""
    for source in ("simulation", "ode"):
        fixed_p = final_alignment(runs(source, "lowrank_fa", LOW_RANK))[:LOW_RANK]
        trained_p = final_alignment(runs(source, "raf", LOW_RANK))[:LOW_RANK]
        assert (fixed_p < RECOVERED).sum() >= LOW_RANK // 2, (source, fixed_p)
        assert fixed_p.mean() < 0.85, (source, fixed_p)
        assert trained_p.mean() - fixed_p.mean() > 0.1


@pytest.mark.parametrize("rule", ["bp", "fa", "raf"])
def test_full_rank_feedback_recovers_all_modes(runs, rule):
    """Fig. 2b,d and Saxe et al.: at r = m, BP, FA and RAF all recover the top d modes
    (W2_bar W1_bar -> S)."""
    alignment = final_alignment(runs("simulation", rule, M))
    assert alignment.shape == (D,)
    assert alignment.min() > RECOVERED, alignment


@pytest.mark.parametrize("rule", ["raf", "lowrank_fa"])
def test_simulation_agrees_with_ode(runs, rule):
    """Eqs. (9)-(10) are the mean of the stochastic updates: at lr = 0.005, batch 32 the
    simulated alignment follows the ODE within RMS 0.04 over the run (time and modes), within
    0.06 per mode at the end, and the losses agree within 5% at the end."""
    sim, ode = runs("simulation", rule, LOW_RANK), runs("ode", rule, LOW_RANK)
    np.testing.assert_allclose(sim.time, ode.time)
    np.testing.assert_allclose(sim.alignment.isel(time=0), ode.alignment.isel(time=0), atol=1e-12)
    difference = sim.alignment - ode.alignment
    assert float(np.sqrt((difference**2).mean())) < 0.04
    assert np.abs(final_alignment(sim) - final_alignment(ode)).max() < 0.06
    assert abs(float(sim.loss[-1] / ode.loss[-1]) - 1) < 0.05


def test_ode_in_rotated_basis_is_exact_for_task():
    """Appendix A: A = U S V^T with orthogonal U, V; S holds the d chosen singular values."""
    task = make_task(TheoryConfig(rule="raf", d=5, signal_max=2.0, signal_min=1.0))
    np.testing.assert_allclose(task.U @ task.S @ task.V.T, task.A, atol=1e-12)
    np.testing.assert_allclose(task.U.T @ task.U, np.eye(task.U.shape[0]), atol=1e-12)
    np.testing.assert_allclose(task.V.T @ task.V, np.eye(task.V.shape[0]), atol=1e-12)
    np.testing.assert_allclose(np.linalg.svd(task.A, compute_uv=False)[:5], [2, 1.75, 1.5, 1.25, 1])


def test_ode_time_step_resolves_the_dynamics():
    """The default RK4 step (dt = 0.05 time units) integrates eqs. (9)-(10) to within 1e-3 of
    a 4x finer step, so the dashed theory curves are the ODE's solution, not RK4 error."""
    coarse = integrate_ode("raf", LOW_RANK, steps=1200, n_records=40)
    fine = integrate_ode("raf", LOW_RANK, steps=1200, n_records=40, dt=0.0125)
    assert float(np.abs(coarse.alignment - fine.alignment).max()) < 1e-3


# ----------------------------------------------------------------------------- output format
@pytest.mark.parametrize("run", [simulate, integrate_ode])
def test_dataset_has_time_and_mode_dims_and_every_parameter(run):
    """Results are labelled xarray datasets: alignment (time, mode), loss (time), with the
    time axis lr * step and every parameter as an attribute."""
    ds = run("raf", 4, d=3, steps=20, lr=0.01, n_records=10, seed=1)
    assert ds.alignment.dims == ("time", "mode")
    assert ds.loss.dims == ("time",)
    assert list(ds.mode.values) == [1, 2, 3]
    assert ds.sizes["time"] == 11
    np.testing.assert_allclose(ds.time, 0.01 * ds.step)
    for name in TheoryConfig.__dataclass_fields__:
        assert name in ds.attrs, name
    assert ds.attrs["rank"] == 4 and ds.attrs["rule"] == "raf"
    assert "u_j^T (W2 W1) v_j / s_j" in ds.attrs["alignment_definition"]
    assert np.isfinite(ds.alignment).all() and (ds.loss > 0).all()


@pytest.mark.parametrize(
    "rule, rank, params",
    [
        ("sgd", None, {}),
        ("raf", 0, {}),
        ("raf", M + 1, {}),
        ("bp", LOW_RANK, {}),
        ("fa", 2.5, {}),
        ("raf", 4, {"lr": -1.0}),
        ("raf", 4, {"d": 200}),
        ("raf", 4, {"learning_rate": 0.1}),
    ],
)
def test_bad_configuration_raises_config_error(rule, rank, params):
    """An unknown rule, a feedback rank outside 1..m (BP only at m) or a bad parameter is a
    ConfigError, raised before any work."""
    for run in (simulate, integrate_ode):
        with pytest.raises(ConfigError):
            run(rule, rank, steps=1, **params)


def test_figure2_data_checks_every_condition_before_running():
    """A bad low rank or a rule/rank/seed override fails at once with a ConfigError."""
    with pytest.raises(ConfigError):
        figure2_data(low_rank=M + 1)
    with pytest.raises(ConfigError):
        figure2_data(seed=3)


def test_diverging_run_is_a_run_error():
    """Too large a step is reported as one RunError naming the parameter to lower."""
    with pytest.raises(RunError, match="lower lr"):
        simulate("bp", steps=300, lr=0.5, d=4, n_records=5)
    with pytest.raises(RunError, match="lower dt"):
        integrate_ode("raf", 4, steps=100, lr=0.1, dt=2.0, d=4, signal_max=20.0)


# ----------------------------------------------------------------------------- CLI
@pytest.mark.parametrize("option", [["--rank", "0"], ["--rank", "65"], ["--steps", "0"]])
def test_cli_bad_option_exits_2_with_one_line_and_no_files(tmp_path, capsys, option):
    """Bad input: exit status 2, one line on stderr, nothing written."""
    out = tmp_path / "fig2"
    with pytest.raises(SystemExit) as exit_info:
        main(["theory", "--out", str(out), *option])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err
    assert not out.exists()


@pytest.mark.slow
def test_cli_writes_every_fig2_panel(tmp_path, capsys):
    """`retina-raf theory` writes panels b-g as PDF and PNG, the data as NetCDF, and prints
    one summary line per panel (end to end: 10 short runs, 12 figure files; ~15 s of CPU, most
    of it embedding TrueType fonts in the PDFs)."""
    out = tmp_path / "fig2"
    args = ["theory", "--out", str(out), "--steps", "100", "--seeds", "1", "--dim", "4"]
    with pytest.raises(SystemExit) as exit_info:
        main([*args, "--dpi", "50"])
    assert exit_info.value.code == 0
    panels = [f"fig2{letter}" for letter in "bcdefg"]
    written = sorted(p.name for p in out.iterdir())
    assert written == sorted([f"{p}.{ext}" for p in panels for ext in ("pdf", "png")] + ["fig2.nc"])
    assert all(Path(out, name).stat().st_size > 1000 for name in written)
    assert Path(out, "fig2b.pdf").read_bytes().startswith(b"%PDF")
    summary = capsys.readouterr().out.splitlines()
    assert [line.split(":")[0] for line in summary[:6]] == panels
    data = xr.open_dataset(out / "fig2.nc", engine="h5netcdf")
    assert data.alignment.dims == ("run", "source", "seed", "time", "mode")
    assert set(data.source.values) == {"simulation", "theory"}
    data.close()
