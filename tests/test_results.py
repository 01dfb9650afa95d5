"""Results as xarray (docs/results.md): run folders combine into one dataset indexed by run."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr

import analysis.rf
from analysis.results import analyze_run, combine_runs, open_results, write_results
from retina_raf import runs
from retina_raf.errors import RunError
from retina_raf.train import train

RF_OPTIONS = {"n_starts": 1, "n_steps": 3}


@pytest.fixture(scope="module")
def run_dirs(tmp_path_factory, tiny_config):
    out = tmp_path_factory.mktemp("runs")
    narrow = ["model.retina.vvs_channels=4"]
    configs = [tiny_config("bp-bottleneck-2", epochs=1, extra=["model.retina.n_bn=2"]),
               tiny_config("raf-r2", epochs=1, extra=narrow),
               tiny_config("raf-r4", epochs=1, extra=narrow),
               tiny_config("raf-r4", epochs=1, seed=1, extra=narrow)]  # fmt: skip
    return [train(cfg, out, log=lambda m: None) for cfg in configs]


def test_combined_runs_have_identity_coords_and_group_by_rank(run_dirs, tmp_path):
    """Every run becomes one entry of `run` with preset, rank, n_bn, seed, rule; groupby("rank")
    sees every rank; a bottlenecked run's missing channels are padded, not invented."""
    ds = combine_runs(run_dirs, progress=False, **RF_OPTIONS)
    assert ds.sizes["run"] == 4
    assert list(ds["preset"].values) == ["bp-bottleneck-2", "raf-r2", "raf-r4", "raf-r4"]
    assert list(ds["seed"].values) == [0, 0, 0, 1]
    assert list(ds["rule"].values) == ["bp", "raf", "raf", "raf"]
    assert sorted(ds.groupby("rank").groups) == [2, 4]
    assert list(ds.groupby("rank").groups[2]) == [0, 1]
    assert int(ds["present"].sel(run=0).sum()) == 2 and bool(ds["present"].sel(run=1).all())
    assert set(ds["rf_class"].sel(run=0).values[2:]) == {""}
    assert ds.sel(preset="raf-r4").sizes["run"] == 2  # run coordinates are indexes
    # history.nc's variables carry CF attributes into the results
    assert ds["train_loss"].attrs["long_name"].startswith("cross-entropy")
    assert ds["alignment_deg"].attrs["units"] == "degree" and ds["epoch"].attrs["units"] == "1"
    # the trained model's P against its error covariance, read from model.pt
    captured = ds["final_error_variance_captured"].sel(layer="vvs_1").values
    assert np.isnan(captured[0]) and ((captured[1:] > 0) & (captured[1:] <= 1 + 1e-9)).all()
    for key in ("retina_raf_version", "git_commit", "created", "rf_method"):
        assert key in ds.attrs
    path = write_results(ds, tmp_path / "results.nc")
    with open_results(path) as reopened:
        assert list(reopened.groupby("rank").groups) == [2, 4]


def test_cached_analysis_is_reused_without_loading_weights(run_dirs, monkeypatch):
    """A second combination with the same options reads each run's cached analysis."""
    combine_runs(run_dirs[:1], progress=False, **RF_OPTIONS)

    def no_extraction(*args, **kwargs):
        raise AssertionError("RFs were extracted again")

    monkeypatch.setattr(analysis.rf, "extract_rfs", no_extraction)
    ds = combine_runs(run_dirs[:1], progress=False, **RF_OPTIONS)
    assert ds.sizes["run"] == 1


def test_unfinished_run_fails_before_any_extraction(run_dirs, tmp_path, monkeypatch):
    """An unfinished run folder among many is refused before any RF is extracted."""
    unfinished = tmp_path / "half-done"
    unfinished.mkdir()
    monkeypatch.setattr(analysis.rf, "extract_rfs", lambda *a, **k: pytest.fail("extracted"))
    with pytest.raises(RunError, match="no model.pt"):
        combine_runs([run_dirs[1], unfinished], progress=False, recompute=True, **RF_OPTIONS)


# UDUNITS strings the project writes (`udunits2 -H` parses each one)
UDUNITS = {"1", "degree", "radian", "s"}


def test_results_index_runs_and_write_cf_netcdf(tmp_path, make_report_results):
    """Run coordinates are indexes (ds.sel(preset="raf-r2") works, after a round
    trip too); the file has a Conventions attribute, UDUNITS units, and rf_class as CF
    flag_values/flag_meanings, read back as class names with the padding as ""."""
    import numpy as np
    import xarray as xr

    from analysis.metrics import CLASSES
    from analysis.results import index_run_coords

    ds = index_run_coords(make_report_results())
    assert ds.sel(preset="raf-r2").sizes["run"] == 2
    assert list(ds.sel(rank=32)["preset"].values) == ["bp", "bp", "raf-r32", "raf-r32"]
    assert sorted(ds.groupby("rank").groups) == [2, 32]
    path = write_results(ds, tmp_path / "results.nc")
    with xr.open_dataset(path, engine="h5netcdf", mask_and_scale=False) as raw:
        assert raw.attrs["Conventions"].startswith("CF-")
        codes = raw["rf_class"]
        assert codes.dtype == np.int8 and codes.attrs["_FillValue"] == -1
        assert list(codes.attrs["flag_values"]) == [0, 1, 2, 3]
        assert codes.attrs["flag_meanings"].split() == list(CLASSES)
        units = {str(v.attrs["units"]) for v in raw.variables.values() if "units" in v.attrs}
        assert units <= UDUNITS
    with open_results(path) as reopened:
        assert (reopened["rf_class"].values == ds["rf_class"].values).all()
        assert "" in set(reopened["rf_class"].values.ravel())  # bottleneck padding
        assert reopened.sel(preset="bp-bottleneck-2").sizes["run"] == 2
    with open_results([path, path]) as lazy:  # dask-backed (open_mfdataset)
        assert lazy.sizes["run"] == 16 and lazy.sel(preset="raf-r2").sizes["run"] == 4


def test_extended_run_is_analyzed_again_not_paired_with_stale_rfs(tmp_path, tiny_config):
    """Train 1 epoch, results, train to 2 epochs, results: the second results hold the RFs
    of the 2-epoch weights (the cache is keyed on the SHA-256 of model.pt), not the cached
    1-epoch RFs next to a 2-epoch history."""
    out = tmp_path / "runs"
    run_dir = train(tiny_config("raf-r2", epochs=1), out, log=lambda m: None)
    first = combine_runs([run_dir], progress=False, **RF_OPTIONS)
    train(tiny_config("raf-r2", epochs=2), out, log=lambda m: None)
    second = combine_runs([run_dir], progress=False, **RF_OPTIONS)
    fresh = analyze_run(run_dir, recompute=True, progress=False, **RF_OPTIONS)
    assert first.sizes["epoch"] == 1 and second.sizes["epoch"] == 2
    assert not first["rf"].equals(second["rf"])
    assert second["rf"].isel(run=0).reset_coords(drop=True).equals(fresh["rf"])
    cached = run_dir / "analysis" / "retina_2-actmax.nc"
    with xr.open_dataset(cached, engine="h5netcdf") as ds:
        assert ds.attrs["weights_sha256"] == runs.weights_digest(run_dir)


def test_damaged_history_fails_before_any_rf_is_mapped(run_dirs, tmp_path, run_cli, monkeypatch):
    """`results` over runs of which one has a damaged history.nc: one line naming it, exit 2,
    no RF extracted and no output written (every run is checked first)."""
    import shutil

    broken = tmp_path / "runs" / "broken"
    shutil.copytree(run_dirs[1], broken)
    (broken / "history.nc").write_bytes(b"CDF\x01 not really")
    monkeypatch.setattr(analysis.rf, "extract_rfs", lambda *a, **k: pytest.fail("extracted"))
    out = tmp_path / "results.nc"
    code, _, err = run_cli("results", run_dirs[0], broken, "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "history.nc" in err and "broken" in err and not out.exists()


def test_two_rf_methods_in_one_file_read_back_as_either(run_dirs, tmp_path):
    """actmax and gradient RFs of the same runs stack along `rf_method`; the file is read back as
    either method's single-method view (what the notebooks use), with that method's options,
    and carries the per-unit correlation of the two maps, equal to the one computed directly."""
    import numpy as np

    from analysis.results import load_results, select_method, stack_methods
    from analysis.rf import rf_correlation
    from retina_raf.errors import DataError

    actmax = combine_runs(run_dirs[:2], method="actmax", progress=False, **RF_OPTIONS)
    gradient = combine_runs(run_dirs[:2], method="gradient", progress=False)
    stacked = stack_methods([actmax, gradient])
    assert list(stacked["rf_method"].values) == ["actmax", "gradient"]
    assert stacked["rf"].dims[0] == "rf_method" and "rf_method" not in stacked["test_acc"].dims
    path = write_results(stacked, tmp_path / "both.nc")
    for method, single in (("actmax", actmax), ("gradient", gradient)):
        ds = load_results(path, metrics=["symmetry"], method=method)
        assert ds.attrs["rf_method"] == method and "rf_method" not in ds.dims
        # the file keeps the maps to 12 significand bits (write_results)
        np.testing.assert_allclose(ds["rf"].values, single["rf"].values, rtol=2.0**-13,
                                   equal_nan=True)  # fmt: skip
        assert list(ds["rf_class"].values.ravel()) == list(single["rf_class"].values.ravel())
    assert load_results(path).attrs["rf_method"] == "actmax"  # the first by default
    assert load_results(path, method="actmax").attrs["rf_n_steps"] == RF_OPTIONS["n_steps"]
    assert "rf_n_steps" not in load_results(path, method="gradient").attrs  # its own options
    expected = rf_correlation(actmax["rf"], gradient["rf"])
    with open_results(path) as reopened:
        np.testing.assert_allclose(reopened["actmax_vs_gradient"].values, expected.values,
                                   equal_nan=True)  # fmt: skip
        with pytest.raises(DataError, match="no RFs by 'sta'"):
            select_method(reopened, "sta")
    with pytest.raises(DataError, match="same runs"):
        stack_methods([actmax, combine_runs(run_dirs[1:3], method="gradient", progress=False)])


def test_results_command_stores_each_method_it_is_given(run_dirs, tmp_path, run_cli):
    """`retina-raf results RUNS --method gradient --method sta`: one file, an `rf_method` dimension
    in the order given, their per-unit correlation, and the median printed."""
    out = tmp_path / "both.nc"
    code, stdout, err = run_cli("results", run_dirs[0], run_dirs[1], "--out", out,
                                "--method", "gradient", "--method", "sta")  # fmt: skip
    assert code == 0, err
    assert "gradient_vs_sta: median per-unit correlation" in stdout
    with open_results(out) as ds:
        assert list(ds["rf_method"].values) == ["gradient", "sta"] and ds.sizes["run"] == 2
        assert ds["gradient_vs_sta"].dims == ("run", "channel")
    code, stdout, err = run_cli("findings", out, "--method", "sta")
    assert code == 0, err
    assert stdout.splitlines()[0].startswith("| condition | seeds | test acc. |")
    assert "gradient vs sta r" in stdout.splitlines()[0]
    assert any(line.startswith("| raf-r2 | 1 |") for line in stdout.splitlines())
    code, _, err = run_cli("findings", out, "--epoch", "1")
    assert code == 2 and "--epoch applies to trajectories" in err


def test_rf_maps_are_stored_to_12_significand_bits_and_nothing_else_changes(tmp_path):
    """write_results keeps the RF maps (rf, rf_spread) to 12 significand bits, relative error
    <= 2^-13, NaN padding kept; every other variable is written exactly."""
    rng = np.random.default_rng(0)
    rf = rng.normal(size=(2, 3, 5, 5)).astype(np.float32) * 10.0 ** rng.integers(
        -4, 3, (2, 3, 1, 1)
    )
    rf[1, 2] = np.nan  # a bottleneck run's padding channel
    dims = ("run", "channel", "y", "x")
    ds = xr.Dataset(
        {"rf": (dims, rf), "rf_spread": (dims, np.abs(rf)),
         "osi": (("run", "channel"), rng.uniform(size=(2, 3)))},
        coords={"run_id": ("run", ["a", "b"]), "channel": [0, 1, 2]},
    )  # fmt: skip
    with open_results(write_results(ds, tmp_path / "r.nc")) as back:
        stored = back["rf"].values
        assert np.array_equal(np.isnan(stored), np.isnan(rf))
        finite = np.isfinite(rf)
        assert np.all(np.abs(stored - rf)[finite] <= 2.0**-13 * np.abs(rf)[finite])
        assert not np.array_equal(stored[finite], rf[finite])  # rounded, not copied
        assert np.array_equal(back["osi"].values, ds["osi"].values)
        assert back["rf"].attrs["significand_bits"] == 12


def test_results_command_maps_rfs_around_a_gray_base(run_dirs, tmp_path, run_cli):
    """`retina-raf results --base gray --gray-level L` (as `sweep --collect` has it): the RFs
    are mapped around the gray image, recorded in the file's attributes, and differ from the
    black base's."""
    files = {}
    for base in ("zeros", "gray"):
        files[base] = tmp_path / f"{base}.nc"
        code, _, err = run_cli("results", run_dirs[1], "--out", files[base], "--method",
                               "gradient", "--base", base, "--gray-level", "0.4734")  # fmt: skip
        assert code == 0, err
    with open_results(files["gray"]) as gray, open_results(files["zeros"]) as zeros:
        assert gray.attrs["rf_base"] == "gray" and gray.attrs["rf_gray_level"] == 0.4734
        assert zeros.attrs["rf_base"] == "zeros"
        assert not np.allclose(gray["rf"].values, zeros["rf"].values)
    code, _, err = run_cli("results", run_dirs[1], "--out", tmp_path / "x.nc", "--base", "white")
    assert code == 2 and "white" in err


def test_rf_method_and_run_keys_select_as_labels_and_old_files_still_open(run_dirs, tmp_path):
    """`ds.sel(rf_method="gradient")` selects one method (a dimension named `method` was
    taken by sel as its own argument and silently selected nothing); `select_runs` takes
    several run coordinates together; every file says what it holds (`kind`); a file written
    with the dimension `method` and no `kind` opens as today's."""
    import xarray as xr

    from analysis.results import KIND_RF_RESULTS, select_runs, stack_methods
    from retina_raf.errors import DataError

    actmax = combine_runs(run_dirs[:3], method="actmax", progress=False, **RF_OPTIONS)
    gradient = combine_runs(run_dirs[:3], method="gradient", progress=False)
    path = write_results(stack_methods([actmax, gradient]), tmp_path / "both.nc")
    with open_results(path) as ds:
        assert ds.attrs["kind"] == KIND_RF_RESULTS
        one = ds.sel(rf_method="gradient")
        assert "rf_method" not in one["rf"].dims and one["rf"].ndim == ds["rf"].ndim - 1
        preset, seed = str(ds["preset"].values[0]), int(ds["seed"].values[0])
        picked = select_runs(ds, preset=preset, seed=seed)
        assert list(picked["preset"].values) == [preset] and list(picked["seed"].values) == [seed]
        both = select_runs(ds, preset=list(map(str, ds["preset"].values)))
        assert both.sizes["run"] == ds.sizes["run"]
        with pytest.raises(DataError, match="not a run coordinate"):
            select_runs(ds, colour="red")
        with pytest.raises(DataError, match="no run with"):
            select_runs(ds, preset=preset, seed=seed + 100)
        old = (
            ds.load()
            .rename({"rf_method": "method"})
            .drop_indexes(
                [
                    c
                    for c in ("run_id", "preset", "rank", "n_bn", "seed", "rule")
                    if c in ds.xindexes
                ]
            )
        )
    del old.attrs["kind"]
    old_path = tmp_path / "old.nc"
    old.to_netcdf(old_path, engine="h5netcdf")
    with open_results(old_path) as reopened, xr.open_dataset(old_path, engine="h5netcdf") as raw:
        assert "method" in raw.dims and "kind" not in raw.attrs
        assert "rf_method" in reopened.dims and reopened.attrs["kind"] == KIND_RF_RESULTS
        assert list(reopened["rf_method"].values) == ["actmax", "gradient"]


def test_a_file_without_a_kind_gets_it_from_its_variables_when_opened():
    """upgrade_layout: `symmetry` per run is RF results, per run and epoch trajectories;
    `test_acc` with a `constrain` coordinate accuracies; a file with none of them has no
    kind, which results_kind refuses in one line."""
    from analysis.results import (
        KIND_ACCURACY,
        KIND_RF_RESULTS,
        KIND_TRAJECTORIES,
        results_kind,
        upgrade_layout,
    )
    from retina_raf.errors import DataError

    per_run = xr.Dataset({"symmetry": (("run", "channel"), np.zeros((2, 3)))})
    per_epoch = xr.Dataset({"symmetry": (("run", "epoch", "channel"), np.zeros((2, 2, 3)))})
    accuracy = xr.Dataset({"test_acc": (("run", "epoch"), np.zeros((2, 2)))},
                          coords={"constrain": ("run", ["fc_1", "all"])})  # fmt: skip
    rfs_only = xr.Dataset({"rf": (("run", "channel", "y", "x"), np.zeros((1, 1, 3, 3)))})
    for ds, kind in ((per_run, KIND_RF_RESULTS), (per_epoch, KIND_TRAJECTORIES),
                     (accuracy, KIND_ACCURACY)):  # fmt: skip
        assert results_kind(upgrade_layout(ds)) == kind
        assert results_kind(upgrade_layout(ds.assign_attrs(kind="unknown"))) == kind
    assert results_kind(upgrade_layout(per_run.assign_attrs(kind=KIND_ACCURACY))) == KIND_ACCURACY
    assert "kind" not in upgrade_layout(rfs_only).attrs
    with pytest.raises(DataError, match="not a results dataset"):
        results_kind(upgrade_layout(rfs_only))
