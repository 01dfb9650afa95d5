"""RFs through training (analysis.trajectory): retina snapshots and the RFs mapped from them.

Claims: a run with ``train.retina_snapshots`` keeps the retina's weights at its init and after
every epoch (only retina_1 and retina_2); a snapshot loaded into a model of the run's config
gives the RFs of the trained model at that epoch; runs with different widths combine into one
results-style file that the ``rf_trajectory`` notebook renders.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from analysis.rf import extract_rfs
from analysis.trajectory import combine_trajectories, rf_trajectory, trajectory_summary
from retina_raf import runs
from retina_raf.errors import DataError, RunError
from retina_raf.train import train

SNAPSHOTS = ("train.retina_snapshots=true",)
RF_OPTIONS = {"method": "gradient", "base": "gray", "gray_level": 0.5}


@pytest.fixture(scope="module")
def snapshot_runs(tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("runs")
    return [  # the tiny settings set n_bn=4: the bottleneck run sets its own again
        train(
            tiny_config(preset, epochs=2, extra=(*SNAPSHOTS, f"model.retina.n_bn={n_bn}")),
            out,
            log=lambda m: None,
        )  # fmt: skip
        for preset, n_bn in (("bp", 4), ("bp-bottleneck-2", 2))
    ]


def test_snapshots_hold_the_retina_at_init_and_after_every_epoch(snapshot_runs):
    """Epochs 0 (init), 1 and 2; keys of retina_1 and retina_2 only; the last one equals the
    final model's retina."""
    run_dir = snapshot_runs[0]
    assert sorted(runs.retina_snapshots(run_dir)) == [0, 1, 2]
    last = runs.load_retina_snapshot(run_dir, 2)
    assert {k.split(".")[1] for k in last} == {"retina_1", "retina_2"}
    final = torch.load(run_dir / "model.pt", weights_only=False)["model"]
    for key, value in last.items():
        assert torch.equal(value, final[key])
    assert not torch.equal(runs.load_retina_snapshot(run_dir, 0)[key], value)


@pytest.mark.parametrize("preset", ["raf-r2", "draf-bottleneck-2"])
def test_feedback_runs_keep_snapshots_too(preset, tmp_path, tiny_config):
    """RAF and dRAF retinas (feedback layers with Q, P, a covariance and a non-tensor extra
    state) are snapshotted like backprop's: the tensors of retina_1 and retina_2, which load
    into a model of the run's config and give its final retina_2 RFs."""
    from retina_raf.models import model_from_config

    run_dir = train(tiny_config(preset, epochs=1, extra=SNAPSHOTS), tmp_path,
                    log=lambda m: None)  # fmt: skip
    assert sorted(runs.retina_snapshots(run_dir)) == [0, 1]
    last = runs.load_retina_snapshot(run_dir, 1)
    assert all(isinstance(v, torch.Tensor) for v in last.values())
    model = model_from_config(runs.load_config(run_dir).model).eval()
    model.load_state_dict(last, strict=False)
    expected = extract_rfs(run_dir, "retina_2", progress=False, **RF_OPTIONS)
    got = extract_rfs(model, "retina_2", progress=False, **RF_OPTIONS)
    torch.testing.assert_close(torch.as_tensor(got.values), torch.as_tensor(expected.values))


def test_trajectory_at_the_last_epoch_is_the_trained_models_rfs(snapshot_runs):
    """rf_trajectory's RFs at the final epoch equal extract_rfs on the finished run."""
    run_dir = snapshot_runs[0]
    ds = rf_trajectory(run_dir, **RF_OPTIONS)
    assert dict(ds["rf"].sizes) == {"epoch": 3, "channel": 4, "y": 32, "x": 32}
    assert {"symmetry", "osi", "rf_class", "responsive", "test_acc"} <= set(ds.variables)
    assert ds["test_acc"].sel(epoch=0).isnull() and ds["test_acc"].sel(epoch=2).notnull()
    expected = extract_rfs(run_dir, "retina_2", progress=False, **RF_OPTIONS)
    torch.testing.assert_close(
        torch.as_tensor(ds["rf"].sel(epoch=2).values), torch.as_tensor(expected.values)
    )


def test_combined_trajectories_pad_narrow_runs_and_summarize_per_epoch(snapshot_runs):
    """bp (4 channels) and bp-bottleneck-2 (2 channels) stack along run; the padding is not
    present, has class "" and is not counted as a unit in the summary; the RF methods'
    agreement at the last epoch comes along per unit."""
    ds = combine_trajectories(snapshot_runs, agreement=True, **RF_OPTIONS)
    assert ds.sizes["run"] == 2 and ds.sizes["channel"] == 4
    assert ds["gradient_vs_actmax"].dims == ("run", "channel") and ds.attrs["agreement_epoch"] == 2
    assert ds["gradient_vs_actmax"].isel(run=1, channel=[2, 3]).isnull().all()  # padding
    assert ds["present"].sum("channel").values.tolist() == [4, 2]
    assert set(ds["rf_class"].isel(run=1, channel=[2, 3]).values.ravel()) == {""}
    summary = trajectory_summary(ds)
    assert (summary["n_responsive"].isel(run=1) <= 2).all()
    assert summary["fraction_center_surround"].dims == ("run", "epoch")


def test_trajectory_cli_writes_a_results_file_the_notebook_renders(snapshot_runs, tmp_path,
                                                                   run_cli):  # fmt: skip
    """`retina-raf trajectory RUNS --out X.nc` then the rf_trajectory report: curves and
    montages exported as panels."""
    from analysis.report import run_report
    from analysis.results import open_results

    out = tmp_path / "trajectories.nc"
    code, stdout, err = run_cli("trajectory", *map(str, snapshot_runs), "--out", str(out),
                                "--base", "gray")  # fmt: skip
    assert code == 0, err
    assert "epoch   2" in stdout and out.exists()
    with open_results(out) as ds:
        assert ds.sizes["run"] == 2 and list(ds["preset"].values) == ["bp", "bp-bottleneck-2"]
    html = run_report("notebooks/rf_trajectory.ipynb", {"trajectories": str(out)},
                      out_dir=tmp_path / "reports")  # fmt: skip
    figures = html.parent / "figures"
    assert (figures / "trajectory_curves.png").exists()
    assert len(list(figures.glob("rfs_*_epoch002.png"))) == 2


def test_trajectory_refuses_what_it_cannot_map(snapshot_runs, tmp_path, run_cli, tiny_config):
    """A layer outside the retina, a run without snapshots, a missing epoch: one-line errors."""
    with pytest.raises(DataError, match="retina_1, retina_2"):
        rf_trajectory(snapshot_runs[0], layer="vvs_1")
    plain = train(tiny_config("bp", epochs=1), tmp_path, log=lambda m: None)
    with pytest.raises(RunError, match="no retina snapshots"):
        rf_trajectory(plain)
    with pytest.raises(RunError, match="epoch"):
        rf_trajectory(snapshot_runs[0], epochs=[7])
    code, _, err = run_cli("trajectory", str(plain), "--out", str(tmp_path / "x.nc"))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.nc").exists()


def test_demo_renders_published_trajectories_and_skips_missing_ones(snapshot_runs, tmp_path):
    """render_published (what `make demo` adds): a committed trajectories file becomes the
    rf_trajectory report under <reports>/<name>/; a missing one is skipped with a note."""
    from analysis.pipeline import render_published
    from analysis.results import write_results

    source = write_results(combine_trajectories(snapshot_runs, **RF_OPTIONS),
                           tmp_path / "trajectories.nc")  # fmt: skip
    notes = []
    published = [
        ("pilot", "rf_trajectory", "trajectories", str(source)),
        ("gone", "rf_trajectory", "trajectories", str(tmp_path / "missing.nc")),
    ]
    paths = render_published(tmp_path / "reports", published, log=notes.append)
    assert set(paths) == {"pilot"}
    assert paths["pilot"] == tmp_path / "reports" / "pilot" / "pilot.html"
    assert (tmp_path / "reports" / "pilot" / "figures" / "trajectory_curves.pdf").is_file()
    assert any("missing.nc not found" in note for note in notes)


def test_trajectory_maps_each_snapshot_once(snapshot_runs, monkeypatch):
    """RFs of a snapshot are cached under a key of its bytes and the options: a second call
    (a run that grew by an epoch maps only the new one) extracts nothing and gives the same."""
    import analysis.rf

    options = {**RF_OPTIONS, "method": "actmax", "n_starts": 2, "n_steps": 3}
    rf_trajectory(snapshot_runs[1], epochs=[0, 1], **options)  # epoch 2 not yet mapped
    first = rf_trajectory(snapshot_runs[1], **options)  # cached and fresh epochs together
    monkeypatch.setattr(analysis.rf, "extract_rfs", lambda *a, **k: pytest.fail("recomputed"))
    again = rf_trajectory(snapshot_runs[1], **options)
    assert again["rf"].equals(first["rf"]) and again["rf_class"].equals(first["rf_class"])


@pytest.fixture(scope="module")
def inflight(tmp_path_factory):
    """An experiment of three runs: raf-r2 finished (2 epochs), bp stopped after its first of
    two epochs (no DONE, snapshots 0 and 1), bp-bottleneck-1 not started."""
    from retina_raf.sweep import expand, load_experiment, run_dir

    tmp_path = tmp_path_factory.mktemp("inflight")
    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        "name: inflight\npresets: [raf-r2, bp, bp-bottleneck-1]\nunconstrained_rule: bp\n"
        "seeds: [0]\noverrides:\n  model: {retina: {retina_channels: 4, vvs_channels: 4,"
        " vvs_layers: 1, kernel_size: 5, fc_units: 16}}\n"
        "  train: {epochs: 2, batch_size: 50, progress: false,"
        " num_threads: 1, retina_snapshots: true, checkpoint_every: 1}\n"
        "  data: {train_limit: 200, test_limit: 100}\n"
    )
    out = tmp_path / "runs"
    raf, bp, not_started = expand(load_experiment(experiment))
    train(raf.config(), out, name=raf.run_id, log=lambda m: None)
    cfg = bp.config()
    cfg.train.epochs = 1
    train(cfg, out, name=bp.run_id, log=lambda m: None)
    runs.mark_unfinished(run_dir(out, bp))
    return experiment, out, (raf, bp, not_started)


def test_an_experiment_in_flight_is_published_with_every_run_accounted_for(
    inflight, tmp_path, run_cli
):
    """experiment_trajectories takes the finished and the running runs of an experiment (a
    run in flight at the epochs it reached) and lists those not started; the findings table
    says which is which, and gives the alignment of the feedback into the retina for the RAF
    run (per epoch, from its history) and none for backprop."""
    from analysis.trajectory import experiment_trajectories, findings_table
    from retina_raf.sweep import run_lock

    experiment, out, (raf, bp, not_started) = inflight
    with run_lock(out, bp) as mine:  # a worker is training bp
        assert mine
        ds = experiment_trajectories(experiment, out, **RF_OPTIONS)
    assert list(ds["run_id"].values) == [raf.run_id, bp.run_id]
    assert list(ds["finished"].values) == [True, False]
    assert list(ds["being_trained"].values) == [False, True]
    assert list(ds["epochs_planned"].values) == [2, 2]
    assert ds.attrs["missing_runs"] == not_started.run_id
    summary = trajectory_summary(ds)
    angle = summary["alignment_deg"].sel(run=0)
    assert angle.sel(epoch=0).isnull() and angle.sel(epoch=[1, 2]).notnull().all()
    assert summary["alignment_deg"].sel(run=1).isnull().all()  # backprop: no feedback layer
    captured = summary["error_variance_captured"].sel(run=0, epoch=2)
    assert 0 <= float(captured) <= 1

    table = findings_table(ds).splitlines()
    assert len(table) == 2 + 3  # header, rule, one row per planned run
    assert table[0].endswith("| P's share of top-r variance | P vs top-r subspace (\u00b0) |")
    assert table[2].startswith("| raf-r2 | 0 | finished | 2 |")
    assert table[3].startswith("| bp | 0 | training (1 of 2) | 1 |") and table[3].endswith(
        "| \u2013 | \u2013 |"
    )
    assert table[4].startswith("| bp-bottleneck-1 | 0 | not started |")

    # written while no worker trains bp: it has stopped at epoch 1, to resume later
    path = tmp_path / "trajectories.nc"
    code, _, err = run_cli("trajectory", "--experiment", experiment, "--runs-dir", out,
                           "--out", path, "--base", "gray", "--gray-level", "0.5")  # fmt: skip
    assert code == 0, err
    stopped = [row.replace("training (1 of 2)", "stopped (1 of 2)") for row in table]
    assert stopped != table
    code, printed, err = run_cli("findings", path)
    assert code == 0, err
    assert printed.strip().splitlines() == stopped
    code, printed, err = run_cli("findings", path, "--epoch", "0", "--epoch", "1", "--epoch", "9")
    assert code == 0, err
    assert "At epoch 0 " in printed and "At epoch 1 " in printed  # milestones some run reached
    assert "At epoch 9" not in printed and printed.count("| bp | 0 | stopped (1 of 2) |") == 3
    assert printed.count("not started") == 1  # listed once, under each run's last epoch
    code, _, err = run_cli("trajectory", raf.run_id, "--experiment", experiment, "--out", path)
    assert code == 2 and "not both" in err


def test_a_snapshot_ahead_of_the_history_waits_for_its_epoch(snapshot_runs, tmp_path):
    """A run in flight writes an epoch's snapshot just before its history row: the trajectory
    maps only the epochs the history records, so every RF has its accuracy and diagnostics."""
    import shutil

    run_dir = tmp_path / snapshot_runs[0].name
    shutil.copytree(snapshot_runs[0], run_dir)
    snapshots = run_dir / "snapshots"
    shutil.copy(snapshots / "epoch_002.pt", snapshots / "epoch_003.pt")  # epoch 3 under way
    ds = rf_trajectory(run_dir, **RF_OPTIONS)
    assert list(ds["epoch"].values) == [0, 1, 2]
    assert ds["test_acc"].sel(epoch=[1, 2]).notnull().all()


def test_reports_and_panels_read_a_trajectory_at_an_epoch(inflight, tmp_path, run_cli):
    """What reads RF results (load_results, the compare_ranks report, `retina-raf figures`)
    reads a trajectories file as the RF results at one epoch: each run at that epoch, or at
    its last where it has not reached it (as the findings tables), with the history up to it."""
    from analysis.report import run_report
    from analysis.results import load_results, open_results, write_results
    from analysis.trajectory import experiment_trajectories

    experiment, out, _ = inflight
    trajectories = experiment_trajectories(experiment, out, **RF_OPTIONS)
    path = write_results(trajectories, tmp_path / "trajectories.nc")
    with open_results(path) as opened:  # RFs are stored rounded: compare with what is stored
        trajectories = opened.load()

    last = load_results(path, metrics=["symmetry", "fraction_center_surround"])
    assert last.attrs["kind"] == "rf_results" and last["symmetry"].dims == ("run", "channel")
    assert last["rf_epoch"].values.tolist() == [2, 1]  # raf-r2 finished, bp at its first epoch
    for run, epoch in enumerate([2, 1]):
        expected = trajectories["symmetry"].isel(run=run).sel(epoch=epoch)
        assert np.array_equal(last["symmetry"].isel(run=run), expected, equal_nan=True)
        assert np.array_equal(last["rf"].isel(run=run), trajectories["rf"].isel(run=run)
                              .sel(epoch=epoch), equal_nan=True)  # fmt: skip
    assert last["test_acc"].sel(epoch=2).isnull().values.tolist() == [False, True]

    first = load_results(path, metrics=["osi"], epoch=1)
    assert first["rf_epoch"].values.tolist() == [1, 1]
    assert first["test_acc"].sel(epoch=1).notnull().all() and first.sizes["epoch"] == 1
    assert load_results(path, epoch=9)["rf_epoch"].values.tolist() == [2, 1]  # not reached
    results = write_results(last, tmp_path / "results.nc")
    with pytest.raises(DataError, match="trajectories file"):
        load_results(results, epoch=1)
    code, printed, err = run_cli("findings", path, "--plateau", results, "--window", "2")
    assert code == 0, err
    assert "Flat over the last 2 epochs" in printed and "| raf-r2 | 0 | 1-2 |" in printed
    assert "| bp | 0 | 1 (< 2) |" in printed
    code, _, err = run_cli("findings", results, "--plateau", results)
    assert code == 2 and "trajectories" in err

    code, printed, err = run_cli("figures", path, "--epoch", "1", "--out", tmp_path / "figures",
                                 "--format", "png", "--dpi", "60")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "figures" / "symmetry_vs_rank.png").is_file()
    html = run_report("notebooks/compare_ranks.ipynb", {"results": str(path)},
                      out_dir=tmp_path / "reports")  # fmt: skip
    assert "per run: raf-r2 s0: 2, bp s0: 1" in html.read_text()


def _summary_inputs(symmetry: np.ndarray, presets: list[str]) -> xr.Dataset:
    """A trajectories dataset with given per-(run, epoch) symmetry, the same on each of 3
    responsive center-surround units, OSI 0.1 throughout."""
    n_runs, n_epochs = symmetry.shape
    shape = (n_runs, n_epochs, 3)
    return xr.Dataset(
        {
            "symmetry": (("run", "epoch", "channel"), np.repeat(symmetry[..., None], 3, -1)),
            "osi": (("run", "epoch", "channel"), np.full(shape, 0.1)),
            "rf_class": (("run", "epoch", "channel"), np.full(shape, "center-surround")),
            "rf": (("run", "epoch", "channel", "y", "x"), np.ones((*shape, 2, 2))),
            "present": (("run", "channel"), np.ones((n_runs, 3), bool)),
        },
        coords={"epoch": np.arange(n_epochs), "preset": ("run", presets),
                "seed": ("run", [0] * n_runs), "run_id": ("run", [f"{p}-s0" for p in presets])},
    )  # fmt: skip


def test_a_run_is_flat_when_no_metric_moves_more_than_a_different_seed_would():
    """plateau_table: over the last `window` epochs, each metric's drift (along a
    least-squares line) against the s.d. over seeds of the same condition in the reference;
    flat only if every metric drifted less, however far it jitters from epoch to epoch; a
    run shorter than the window, or a condition the reference lacks, is not judged."""
    from analysis.trajectory import plateau_table

    epochs = np.arange(8)
    settled = 0.3 + 0.001 * (epochs >= 5)  # drifts 0.0009 over the last 4 epochs
    rising = 0.05 * epochs  # drifts 0.15 over them
    jittering = 0.3 + 0.08 * np.array([0, 0, 0, 0, 1, -1, -1, 1])  # range 0.16, no drift
    trajectories = _summary_inputs(np.stack([settled, rising, settled, jittering]),
                                   ["raf-r2", "bp", "raf-r4", "raf-r2"])  # fmt: skip
    reference = xr.Dataset(  # three seeds each of raf-r2 and bp: symmetry s.d. 0.05
        {"symmetry": (("run", "channel"), np.repeat([[0.25], [0.3], [0.35]] * 2, 2, axis=1)),
         "osi": (("run", "channel"), np.repeat([[0.1], [0.2], [0.3]] * 2, 2, axis=1)),
         "rf_class": (("run", "channel"), np.full((6, 2), "oriented"))},
        coords={"preset": ("run", ["raf-r2"] * 3 + ["bp"] * 3),
                "rule": ("run", ["raf"] * 3 + ["bp"] * 3), "rank": ("run", [2] * 3 + [32] * 3),
                "n_bn": ("run", [32] * 6), "seed": ("run", [0, 1, 2] * 2),
                "run_id": ("run", [f"r{i}" for i in range(6)])},
    )  # fmt: skip
    rows = plateau_table(trajectories, reference, window=4, metrics=["symmetry", "osi"])
    rows = rows.splitlines()[2:]
    assert rows[0] == "| raf-r2 | 0 | 4-7 | 0.001 (0.001) / 0.050 | 0.000 (0.000) / 0.100 | flat |"
    assert rows[1] == "| bp | 0 | 4-7 | 0.150 (0.150) / 0.050 | 0.000 (0.000) / 0.100 | moving |"
    assert rows[2].endswith("| 0.001 (0.001) / \u2013 | 0.000 (0.000) / \u2013 | \u2013 |")
    assert rows[3] == "| raf-r2 | 0 | 4-7 | 0.000 (0.160) / 0.050 | 0.000 (0.000) / 0.100 | flat |"
    short = plateau_table(trajectories, reference, window=9, metrics=["symmetry"])
    assert "| raf-r2 | 0 | 7 (< 9) |" in short and "flat" not in short
    with pytest.raises(DataError, match="at least 2"):
        plateau_table(trajectories, reference, window=1)


def test_a_file_can_keep_the_rf_maps_at_milestones_and_every_metric(inflight, tmp_path, run_cli):
    """keep_rf_maps (trajectory --rf-maps-at): the maps stay at the given epochs and at each
    run's last, NaN elsewhere; the metrics, findings and summaries are those of the full file,
    which is larger."""
    from analysis.results import open_results, write_results
    from analysis.trajectory import experiment_trajectories, findings_table, keep_rf_maps

    experiment, out, _ = inflight
    full = experiment_trajectories(experiment, out, **RF_OPTIONS)
    thin = keep_rf_maps(full, [0])
    has_maps = np.isfinite(thin["rf"]).any(("channel", "y", "x"))
    assert has_maps.sel(run=0).values.tolist() == [True, False, True]  # raf-r2: 0 and last (2)
    assert has_maps.sel(run=1).values.tolist() == [True, True, False]  # bp: 0 and last (1)
    for name in ("symmetry", "osi", "rf_class", "test_acc", "alignment_deg"):
        assert thin[name].equals(full[name])
    assert findings_table(thin) == findings_table(full) and thin.attrs["rf_maps_kept"] == "0"
    assert trajectory_summary(thin).equals(trajectory_summary(full))
    sizes = [write_results(ds, tmp_path / f"{n}.nc").stat().st_size
             for n, ds in (("full", full), ("thin", thin))]  # fmt: skip
    assert sizes[1] < sizes[0]
    path = tmp_path / "cli.nc"
    code, _, err = run_cli("trajectory", "--experiment", experiment, "--runs-dir", out,
                           "--out", path, "--base", "gray", "--gray-level", "0.5",
                           "--rf-maps-at", "0")  # fmt: skip
    assert code == 0, err
    with open_results(path) as written:
        assert np.isfinite(written["rf"]).any(("channel", "y", "x")).values.tolist() == [
            [True, False, True], [True, True, False]]  # fmt: skip


def test_actmax_trajectories_stack_a_feedback_run_before_a_backprop_run(inflight):
    """A RAF run (feedback diagnostics along `layer`) first, then a backprop run without
    them and with fewer epochs: actmax's per-epoch n_active_starts of each run is stacked
    along run, each run's own (xarray could not compare it across the two)."""
    from retina_raf.sweep import run_dir

    _, out, (raf, bp, _) = inflight
    ds = combine_trajectories([run_dir(out, raf), run_dir(out, bp)], method="actmax",
                              base="gray", gray_level=0.5)  # fmt: skip
    assert ds["n_active_starts"].dims == ("run", "epoch", "channel")
    alone = rf_trajectory(run_dir(out, bp), method="actmax", base="gray", gray_level=0.5)
    np.testing.assert_array_equal(
        ds["n_active_starts"].isel(run=1).sel(epoch=alone["epoch"]).values,
        alone["n_active_starts"].values,
    )
    assert "layer" in ds.dims and ds["alignment_deg"].isel(run=1).isnull().all()


def test_a_run_with_only_its_initial_snapshot_counts_as_not_started(inflight, tmp_path):
    """A run that has just started (its epoch-0 snapshot written, no epoch finished, no
    history) is listed with the runs not started, not stacked without its history."""
    import shutil

    from analysis.trajectory import experiment_trajectories
    from retina_raf.sweep import run_dir

    experiment, out, (raf, bp, just_started) = inflight
    copy = tmp_path / "runs"
    shutil.copytree(out, copy)
    initial = run_dir(copy, just_started) / "snapshots"
    initial.mkdir(parents=True)
    shutil.copy(run_dir(copy, bp) / "snapshots" / "epoch_000.pt", initial / "epoch_000.pt")
    ds = experiment_trajectories(experiment, copy, "retina_2", "gradient")
    assert ds["run_id"].values.tolist() == [raf.run_id, bp.run_id]
    assert ds.attrs["missing_runs"] == just_started.run_id


def test_a_run_whose_folder_is_gone_keeps_its_published_record(inflight, tmp_path, run_cli):
    """Published with --keep-earlier, a run whose folder has gone (with the machine that
    trained it) keeps the record the earlier file holds, says it has no checkpoint to resume
    from, and is not listed as not started; a run whose folder is there is read from it."""
    import shutil

    from analysis.results import open_results, write_results
    from retina_raf.sweep import run_dir

    experiment, out, (raf, bp, not_started) = inflight
    path = tmp_path / "trajectories.nc"
    options = ("--experiment", experiment, "--out", path, "--base", "gray", "--gray-level", "0.5")
    code, _, err = run_cli("trajectory", "--runs-dir", out, *options)
    assert code == 0, err
    with open_results(path) as first:
        published = first.load()
    copy = tmp_path / "runs"
    copy.mkdir()
    shutil.copytree(run_dir(out, bp), run_dir(copy, bp))  # raf's folder is gone

    code, _, err = run_cli("trajectory", "--runs-dir", copy, *options)  # without: raf is lost
    assert code == 0, err
    with open_results(path) as forgotten:
        assert forgotten["run_id"].values.tolist() == [bp.run_id]
    shutil.copy(tmp_path / "trajectories.nc", tmp_path / "bp_only.nc")
    write_results(published, path)
    code, _, err = run_cli("trajectory", "--runs-dir", copy, *options, "--keep-earlier")
    assert code == 0, err
    assert f"{raf.run_id}: kept from" in err
    kept = open_results(path)
    assert kept["run_id"].values.tolist() == [raf.run_id, bp.run_id]  # the experiment's order
    assert kept["in_runs_dir"].values.tolist() == [False, True]
    assert kept.attrs["missing_runs"] == not_started.run_id
    for name in ("symmetry", "rf_class", "test_acc"):
        np.testing.assert_array_equal(kept[name].values[0], published[name].values[0])
    with open_results(tmp_path / "bp_only.nc") as bp_only:
        bp_epochs = kept["symmetry"].isel(run=1).sel(epoch=bp_only["epoch"])  # padded to raf's
        np.testing.assert_array_equal(bp_epochs.values, bp_only["symmetry"].values[0])
    code, printed, err = run_cli("findings", path)
    assert code == 0, err
    rows = printed.strip().splitlines()
    assert rows[2].startswith("| raf-r2 | 0 | finished | 2 |")  # finished: nothing to resume
    assert rows[3].startswith("| bp | 0 | stopped (1 of 2) | 1 |")

    # the raf run stopped before it was lost: it has no checkpoint to resume from
    published = published.assign_coords(finished=("run", [False, False]))
    write_results(published, path)
    shutil.rmtree(run_dir(copy, bp))
    code, _, err = run_cli("trajectory", "--runs-dir", copy, *options, "--keep-earlier")
    assert code == 0, err
    code, printed, err = run_cli("findings", path)
    assert "| raf-r2 | 0 | stopped (2 of 2), no checkpoint | 2 |" in printed
    assert "| bp | 0 | stopped (1 of 2), no checkpoint | 1 |" in printed
    code, _, err = run_cli("trajectory", "--runs-dir", tmp_path / "empty", *options)
    assert code != 0 and "has finished an epoch yet" in err

    # raf started again from scratch and behind its record (epoch 1 of the 2 published): the
    # record stays, and while a process trains the new folder the run is 'restarted'
    from analysis.trajectory import experiment_trajectories, findings_table
    from retina_raf.sweep import run_lock

    again = run_dir(copy, raf)
    shutil.copytree(run_dir(out, raf), again)
    (again / "snapshots" / "epoch_002.pt").unlink()
    with open_results(path) as earlier, run_lock(copy, raf) as mine:
        assert mine
        ds = experiment_trajectories(experiment, copy, earlier=earlier.load(), **RF_OPTIONS)
    assert ds["in_runs_dir"].values.tolist() == [False, False]
    assert "| raf-r2 | 0 | restarted (first attempt: 2 of 2) | 2 |" in findings_table(ds)
