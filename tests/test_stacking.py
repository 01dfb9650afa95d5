"""One results layer (analysis.stacking, retina_raf.runs.open_run): RF results, trajectories and
accuracies are stacked along ``run`` by one function, from run folders each read once.

Claims: a Run holds what the piecemeal readers return; every kind of results file has, per
run, the run's identity (its folder name and ``run_identity`` of its config) as ``run``
coordinates in one order, the values each run's own analysis gives, padding where runs are
narrower or shorter (NaN, False, ""), provenance and its ``kind``, and reads back through its
reader unchanged; the published files still open through the readers with the values they
hold; ``select_runs`` takes preset and seed together and ``ds.sel(rf_method=...)`` selects.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xarray as xr

from analysis.accuracy import (
    ACCURACY_COORDS,
    collect_accuracy,
    load_accuracy,
    run_accuracy,
    write_accuracy,
)
from analysis.provenance import KIND_ACCURACY, KIND_RF_RESULTS, KIND_TRAJECTORIES, KINDS
from analysis.results import (
    RUN_COORDS,
    analyze_run,
    combine_runs,
    load_results,
    open_results,
    results_kind,
    select_runs,
    stack_methods,
    write_results,
)
from analysis.stacking import history_variables, open_runs, stack_runs
from analysis.trajectory import combine_trajectories, rf_trajectory
from retina_raf import runs
from retina_raf.errors import DataError, RunError
from retina_raf.train import train

REPO = Path(__file__).resolve().parents[1]
SNAPSHOTS = ("train.retina_snapshots=true",)
ACTMAX = {"n_starts": 1, "n_steps": 3}
GRADIENT = {"method": "gradient", "base": "gray", "gray_level": 0.5}
PROVENANCE = ("retina_raf_version", "git_commit", "created")


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_config) -> dict[str, Path]:
    """bp (4 channels, 1 epoch), raf-r2 seeds 0 and 1 (32 channels, 2 epochs), all finished;
    bp seed 1 stopped after 2 of its epochs (no DONE: in flight). All keep retina snapshots."""
    out = tmp_path_factory.mktemp("runs")
    plan = {"bp": ("bp", 1, 0), "raf0": ("raf-r2", 2, 0), "raf1": ("raf-r2", 2, 1),
            "inflight": ("bp", 2, 1)}  # fmt: skip
    dirs = {
        name: train(
            tiny_config(preset, epochs=epochs, seed=seed, extra=SNAPSHOTS), out, log=lambda m: None
        )  # fmt: skip
        for name, (preset, epochs, seed) in plan.items()
    }
    runs.mark_unfinished(dirs["inflight"])
    return dirs


@pytest.fixture(scope="module")
def finished(trained) -> list[Path]:
    return [trained["bp"], trained["raf0"], trained["raf1"]]


@pytest.fixture(scope="module")
def rf_results(finished, tmp_path_factory) -> tuple[xr.Dataset, Path]:
    """actmax and gradient RFs of the finished runs, stacked by method and written."""
    actmax = combine_runs(finished, method="actmax", progress=False, **ACTMAX)
    gradient = combine_runs(finished, method="gradient", progress=False)
    path = write_results(stack_methods([actmax, gradient]), tmp_path_factory.mktemp("rf") / "r.nc")
    return actmax, path


def run_coordinates(ds: xr.Dataset) -> list[str]:
    return [str(name) for name in ds.coords if ds[name].dims == ("run",)]


def assert_identity(ds: xr.Dataset, run_dirs: list[Path], names=RUN_COORDS) -> None:
    """Each run's coordinates are its folder name and run_identity of its config."""
    for i, run_dir in enumerate(run_dirs):
        expected = {"run_id": run_dir.name, **runs.run_identity(runs.load_config(run_dir))}
        got = {name: ds[name].values[i].item() for name in names}
        assert got == {name: expected[name] for name in names}
    for name in ("rank", "n_bn", "seed"):
        assert ds[name].dtype == np.int64
    for name in ("run_id", "preset", "rule"):
        assert ds[name].dtype.kind == "U"


def test_a_run_folder_opens_into_one_object_with_what_the_readers_return(trained):
    """open_run: config, identity, history, DONE, epochs, weights digest and model are the
    piecemeal readers' values; a run in flight opens as it stands unless a finished run is
    required, and a missing folder is one RunError."""
    run_dir = trained["raf0"]
    run = runs.open_run(run_dir, require_finished=True)
    assert run.path == run_dir and run.run_id == run_dir.name
    assert run.config == runs.load_config(run_dir)
    assert run.identity == runs.run_identity(run.config)
    assert run.history.equals(runs.load_history(run_dir))
    assert run.finished and run.epochs == runs.finished_epochs(run_dir) == 2
    assert run.weights_digest == runs.weights_digest(run_dir)
    model, _ = runs.load_model(run_dir)
    state = run.model().state_dict()
    assert not run.model().training
    assert all(np.array_equal(state[k], v) for k, v in model.state_dict().items())

    inflight = runs.open_run(trained["inflight"])
    assert not inflight.finished and inflight.epochs == 2 == inflight.history.sizes["epoch"]
    with pytest.raises(RunError, match="not finished"):
        runs.open_run(trained["inflight"], require_finished=True)
    with pytest.raises(RunError, match="not finished"):
        open_runs([inflight], require_finished=True)
    with pytest.raises(RunError, match="no such run folder"):
        runs.open_run(run_dir.parent / "absent")


def test_stack_runs_pads_keeps_identity_and_sets_kind(trained, finished):
    """A reduction of one's own: runs of different widths and lengths stack with booleans
    padded False, text "" and numbers NaN; attributes are those every run agrees on (or the
    first run's), with provenance and kind; unfinished runs are refused before any
    reduction; an unknown kind or no runs at all is a DataError."""

    def reduce(run: runs.Run) -> xr.Dataset:
        width = 4 if run.identity["rule"] == "bp" else 6
        history = history_variables(run.history, dims=[("epoch",)])
        units = xr.Dataset(
            {"on": ("channel", np.ones(width, dtype=bool)), "label": ("channel", ["unit"] * width)},
            coords={"channel": np.arange(width)},
        )
        return xr.merge([history[["train_loss"]], units]).assign_attrs(shared=1, own=run.run_id)

    ds = stack_runs(finished, reduce, kind=KIND_RF_RESULTS)
    assert run_coordinates(ds) == list(RUN_COORDS)
    assert_identity(ds, finished)
    assert ds["on"].dtype == bool and ds["on"].values[0].tolist() == [True] * 4 + [False] * 2
    assert ds["present"].values[0].tolist() == [True] * 4 + [False] * 2
    assert ds["label"].values[0].tolist() == ["unit"] * 4 + [""] * 2
    assert np.isnan(ds["train_loss"].values[0, 1]) and np.isfinite(ds["train_loss"][1:]).all()
    assert ds.attrs["kind"] == KIND_RF_RESULTS and ds.attrs["shared"] == 1
    assert "own" not in ds.attrs and all(key in ds.attrs for key in PROVENANCE)
    first = stack_runs(finished, reduce, kind=KIND_RF_RESULTS, attrs="first", config=False)
    assert first.attrs["own"] == finished[0].name and "config" not in first
    assert "history.nc" not in str(ds["config"].values[0])  # the run's config as YAML

    def never(run):
        raise AssertionError("reduced before every run was checked")

    with pytest.raises(RunError, match="not finished"):
        stack_runs([*finished, trained["inflight"]], never, kind=KIND_RF_RESULTS)
    with pytest.raises(DataError, match="unknown kind"):
        stack_runs(finished, reduce, kind="spectra")
    with pytest.raises(DataError, match="no run folders"):
        stack_runs([], reduce, kind=KIND_RF_RESULTS)


def test_rf_results_hold_each_runs_analysis_padded_and_read_back(finished, rf_results):
    """combine_runs: per run, the RFs and metrics of its own (cached) analysis and its
    history; the narrow bp run padded; written and reopened, the same values (RF maps to 12
    significand bits) and the kind open_results and load_results need."""
    ds, path = rf_results
    assert run_coordinates(ds) == list(RUN_COORDS)
    assert_identity(ds, finished)
    for i, run_dir in enumerate(finished):
        own = analyze_run(run_dir, progress=False, **ACTMAX)
        at = ds.isel(run=i).sel(channel=own["channel"])
        for name in ("rf", "symmetry", "osi", "rf_class", "responsive"):
            assert at[name].variable.equals(own[name].variable)
        history = runs.load_history(run_dir)
        epochs = history["epoch"].values
        assert np.array_equal(ds["train_loss"].sel(epoch=epochs).values[i], history["train_loss"])
    narrow = ds.isel(run=0)  # bp: 4 of the 32 channels, 1 of the 2 epochs
    assert narrow["present"].values.tolist() == [True] * 4 + [False] * 28
    assert not narrow["responsive"].values[4:].any()
    assert set(narrow["rf_class"].values[4:]) == {""} and narrow["rf"][4:].isnull().all()
    assert narrow["train_loss"].sel(epoch=2).isnull()
    assert ds.attrs["kind"] == KIND_RF_RESULTS and ds.attrs["rf_method"] == "actmax"
    assert all(key in ds.attrs for key in PROVENANCE)

    reopened = load_results(path, metrics=["symmetry"], history=["train_loss"],
                            require=["rf", "rf_class", "present"], method="actmax")  # fmt: skip
    assert results_kind(reopened) == KIND_RF_RESULTS
    assert_identity(reopened, finished)
    for name in ("symmetry", "osi", "present", "responsive", "rf_class", "train_loss", "config"):
        assert reopened[name].variable.equals(ds[name].variable)
    np.testing.assert_allclose(reopened["rf"], ds["rf"], rtol=2.0**-12, atol=0)


def test_preset_and_seed_select_together_and_rf_method_selects(finished, rf_results):
    """On a stacked file: select_runs takes preset and seed at once (either alone picks two
    runs here), and ds.sel(rf_method="gradient") gives that method's RFs."""
    _, path = rf_results
    with open_results(path) as ds:
        assert select_runs(ds, preset="raf-r2").sizes["run"] == 2
        assert select_runs(ds, seed=0).sizes["run"] == 2
        both = select_runs(ds, preset="raf-r2", seed=0)
        assert both["run_id"].values.tolist() == [finished[1].name]
        gradient = ds.sel(rf_method="gradient")
        assert "rf_method" not in gradient["rf"].dims
        assert gradient["rf"].dims == ("run", "channel", "y", "x")
        assert not gradient["rf"].equals(ds.sel(rf_method="actmax")["rf"])


def test_trajectories_of_finished_and_running_runs_stack_with_padding(trained, tmp_path):
    """combine_trajectories: each run's own rf_trajectory, its identity, finished,
    being_trained (no process trains the unfinished run here) and epochs_planned; the
    4-channel, 1-epoch bp run padded; written and reopened unchanged."""
    run_dirs = [trained["bp"], trained["raf0"], trained["inflight"]]
    ds = combine_trajectories(run_dirs, **GRADIENT)
    assert run_coordinates(ds) == [*RUN_COORDS, "finished", "being_trained", "epochs_planned"]
    assert_identity(ds, run_dirs)
    assert ds["finished"].values.tolist() == [True, True, False]
    assert ds["being_trained"].values.tolist() == [False, False, False]
    assert ds["epochs_planned"].values.tolist() == [1, 2, 2]
    for i, run_dir in enumerate(run_dirs):
        own = rf_trajectory(run_dir, **GRADIENT)
        at = ds.isel(run=i).sel(epoch=own["epoch"], channel=own["channel"])
        for name in ("rf", "symmetry", "rf_class", "responsive", "test_acc"):
            assert at[name].variable.equals(own[name].variable)
    assert ds["present"].sum("channel").values.tolist() == [4, 32, 4]
    bp = ds.isel(run=0)
    assert bp["rf"].sel(epoch=2).isnull().all()
    assert set(bp["rf_class"].values[:, 4:].ravel()) == {""}
    assert ds.attrs["kind"] == KIND_TRAJECTORIES and all(k in ds.attrs for k in PROVENANCE)
    path = write_results(ds, tmp_path / "trajectories.nc")
    with open_results(path) as reopened:
        assert results_kind(reopened) == KIND_TRAJECTORIES
        assert_identity(reopened, run_dirs)
        kept = ("symmetry", "rf_class", "present", "responsive", "finished", "being_trained")
        for name in (*kept, "config"):
            assert reopened[name].variable.equals(ds[name].variable)


def test_accuracies_stack_with_curves_padded_and_read_back(finished, tmp_path):
    """collect_accuracy: the accuracy coordinates from each run's identity (a retina run: no
    constrained layer, width 0), its final and best accuracies, curves NaN past its end;
    written and loaded unchanged."""
    ds = collect_accuracy(finished)
    assert run_coordinates(ds) == list(ACCURACY_COORDS)
    labels = [name for name in ACCURACY_COORDS if name != "rank_fraction"]  # NaN: no equality
    for i, run_dir in enumerate(finished):
        row = run_accuracy(run_dir)
        assert {name: ds[name].values[i].item() for name in labels} == {n: row[n] for n in labels}
        for name in ("test_acc", "best_test_acc", "epochs"):
            assert ds[name].values[i] == row[name]
        identity = runs.run_identity(runs.load_config(run_dir))
        assert {k: row[k] for k in ("preset", "rank", "seed", "rule")} == {
            k: identity[k] for k in ("preset", "rank", "seed", "rule")
        }
    assert ds["constrain"].values.tolist() == ["none"] * 3 and np.isnan(ds["rank_fraction"]).all()
    assert ds["epochs"].dtype == np.int64 and ds["epochs"].values.tolist() == [1, 2, 2]
    assert np.isnan(ds["test_acc_curve"].values[0, 1]) and ds["epoch"].values.tolist() == [1, 2]
    assert ds.attrs["kind"] == KIND_ACCURACY and all(k in ds.attrs for k in PROVENANCE)
    loaded = load_accuracy(write_accuracy(ds, tmp_path / "accuracy.nc"))
    assert loaded.equals(ds) and loaded.attrs["kind"] == KIND_ACCURACY


PUBLISHED = sorted(
    str(path.relative_to(REPO))
    for pattern in ("results.nc", "trajectories.nc", "accuracy.nc")
    for path in REPO.glob(f"reports/*/{pattern}")
)


@pytest.mark.parametrize("relative", PUBLISHED)
def test_published_files_open_through_the_readers_with_their_values(relative):
    """Every published results file opens through open_results (an accuracy file also
    through load_accuracy) with a known kind, its run coordinates, and the values stored in
    it; preset and seed select together."""
    path = REPO / relative
    with open_results(path) as ds, xr.open_dataset(path, engine="h5netcdf") as raw:
        kind = results_kind(ds)
        assert kind in KINDS
        names = ACCURACY_COORDS if kind == KIND_ACCURACY else RUN_COORDS
        assert set(names) <= set(run_coordinates(ds))
        for name, var in raw.data_vars.items():
            if name != "rf_class" and np.issubdtype(var.dtype, np.number):
                np.testing.assert_array_equal(ds[name].values, var.values)
        preset, seed = str(ds["preset"].values[-1]), int(ds["seed"].values[-1])
        picked = select_runs(ds, preset=preset, seed=seed)
        assert set(picked["preset"].values) == {preset} and set(picked["seed"].values) == {seed}
        if "rf_method" in ds.dims:
            method = str(ds["rf_method"].values[-1])
            assert "rf_method" not in ds.sel(rf_method=method)["rf"].dims
    if kind == KIND_ACCURACY:
        loaded = load_accuracy(path)
        np.testing.assert_array_equal(loaded["test_acc"].values, ds["test_acc"].values)


def _runs(ids: list[str], channels: int, value: float, being_trained: bool) -> xr.Dataset:
    """Stacked runs of ``channels`` units whose metric is ``value`` everywhere."""
    n = len(ids)
    return xr.Dataset(
        {"symmetry": (("run", "channel"), np.full((n, channels), value)),
         "rf_class": (("run", "channel"), np.full((n, channels), "oriented")),
         "present": (("run", "channel"), np.ones((n, channels), dtype=bool))},
        coords={"run_id": ("run", ids), "channel": np.arange(channels),
                "being_trained": ("run", [being_trained] * n)},
    )  # fmt: skip


def test_earlier_runs_fill_in_what_the_folders_no_longer_give():
    """with_earlier_runs: the earlier file's runs that the current dataset lacks are added
    (padded to the wider runs, in the given order), marked in_runs_dir False and not being
    trained; a run in both stays as read now unless the earlier record is preferred; keep
    limits what may be added; nothing at all is refused."""
    from analysis.stacking import with_earlier_runs
    from retina_raf.errors import DataError

    current = _runs(["b"], channels=1, value=2.0, being_trained=True)
    earlier = _runs(["a", "b", "c"], channels=3, value=1.0, being_trained=True)
    both = with_earlier_runs(current, earlier, keep=["a", "b"], order=["a", "b", "c"])
    assert both["run_id"].values.tolist() == ["a", "b"]  # c may not be kept
    assert both["in_runs_dir"].values.tolist() == [False, True]
    assert both["being_trained"].values.tolist() == [False, True]
    assert both["symmetry"].sel(channel=0).values.tolist() == [1.0, 2.0]  # b as read now
    assert both["present"].values.tolist() == [[True] * 3, [True, False, False]]
    assert both["rf_class"].values[1].tolist() == ["oriented", "", ""]  # padding, not NaN
    preferred = with_earlier_runs(current, earlier, prefer_earlier=["b"])
    assert preferred["run_id"].values.tolist() == ["a", "b", "c"]
    assert preferred["symmetry"].sel(channel=0).values.tolist() == [1.0, 1.0, 1.0]
    assert not preferred["in_runs_dir"].values.any()
    assert with_earlier_runs(None, earlier, keep=["c"])["run_id"].values.tolist() == ["c"]
    with pytest.raises(DataError, match="none to keep"):
        with_earlier_runs(None, earlier, keep=[])
