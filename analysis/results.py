"""Results as xarray (docs/results.md): many run folders -> one labelled dataset.

``combine_runs(run_dirs)`` maps the RFs of one layer of every run (:mod:`analysis.rf`),
measures them (:mod:`analysis.metrics`), reads each run's ``history.nc``, and stacks it all
along a ``run`` dimension::

    dims    run, channel, y, x, epoch, layer (feedback layers of the diagnostics)
    coords  run_id, preset, rank, n_bn, seed, rule   (on run, each an index:
            ``ds.sel(preset="raf-r4")`` and ``ds.groupby("rank")`` work)
    vars    rf (run, channel, y, x), rf_spread, responsive, present (run, channel),
            metrics (run, channel): osi, symmetry, orientedness, dog_r2, gabor_r2, rf_class ...
            history (run, epoch): train_loss, test_loss, train_acc, test_acc, lr ...
            diagnostics (run, epoch, layer): alignment_deg ...
    attrs   rf_layer, rf_method, rf options, package version, git commit, date

One file can hold the RFs of several methods (:func:`stack_methods`, ``retina-raf results
--method actmax --method gradient``): then what depends on the RFs (rf, rf_spread,
responsive, the metrics) has a leading ``method`` dimension, ``<a>_vs_<b>`` (run, channel)
is the per-unit correlation of two methods' RFs, and :func:`load_results` (``method=``)
or :func:`select_method` gives the single-method view the notebooks and panels read.

On disk (:func:`write_results`) the file follows CF: ``Conventions``, UDUNITS units,
``rf_class`` as ``flag_values``/``flag_meanings``; :func:`open_results` restores the class
names and the run indexes. Metrics of dask-backed RFs stay lazy (``analysis.metrics``).

Runs with fewer channels (feedforward bottlenecks) are padded: ``present`` is False there,
numeric variables NaN and ``rf_class`` the empty string. Only finished runs (``DONE``, see
:mod:`retina_raf.runs`) are analyzed, and every run is checked (config, history, weights
present) before any RF is mapped. Each run's analysis is cached next to its weights
(``<run>/analysis/<layer>-<method>.nc``) and reused only when it was computed from the same
``model.pt`` (SHA-256 of its bytes) with the same options: a run that was extended since is
analyzed again.

The networks of the paper's Fig. 3 have no retina: their results are test accuracies
(:mod:`analysis.accuracy`, ``results_accuracy.nc``); :func:`collect_experiment` picks the
kind by the runs' ``model.arch``.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np
import xarray as xr

# the kinds of results files and the provenance every one carries (shared with analysis.accuracy
# and analysis.trajectory), also importable from here
from analysis import stacking
from analysis.provenance import (
    KIND_ACCURACY,
    KIND_RF_RESULTS,
    KIND_TRAJECTORIES,
    KINDS,
    provenance,  # noqa: F401 (importable from here)
)
from retina_raf import runs
from retina_raf.config import sectioned_model
from retina_raf.errors import DataError, RunError
from retina_raf.io import write_netcdf

RUN_COORDS = ("run_id", "preset", "rank", "n_bn", "seed", "rule")
CONVENTIONS = "CF-1.10"
# CF attributes of the coordinates; UDUNITS has no pixel, so pixel positions are "1"
COORD_ATTRS = {
    "run_id": {"long_name": "run folder name"},
    "preset": {"long_name": "condition (preset) of the run"},
    "rank": {"long_name": "rank of the error feedback sent into the retina", "units": "1"},
    "n_bn": {"long_name": "retina output channels (feedforward bottleneck N_bn)", "units": "1"},
    "seed": {"long_name": "training seed of the run"},
    "rule": {"long_name": "learning rule family (bp, raf, draf)"},
    "channel": {"long_name": "channel of the RF layer"},
    "y": {"long_name": "input row, pixels from the top", "units": "1"},
    "x": {"long_name": "input column, pixels from the left", "units": "1"},
    "epoch": {"long_name": "training epoch", "units": "1"},
    "layer": {"long_name": "layer of the feedback diagnostics"},
}


def index_run_coords(ds: xr.Dataset) -> xr.Dataset:
    """Each run coordinate (preset, rank, n_bn, seed, rule, run_id) as an xarray index, so
    that ``ds.sel(preset="raf-r4")`` selects runs by label (one coordinate per ``sel``;
    chain them: ``ds.sel(preset="raf-r4").sel(seed=0)``). NetCDF does not store indexes:
    :func:`open_results` sets them again."""
    for name in RUN_COORDS:
        if name in ds.coords and ds[name].dims == ("run",) and name not in ds.xindexes:
            ds = ds.set_xindex(name)
    return ds


def cache_key(layer: str, method: str, seed: int, options: dict, weights: str) -> str:
    """What a cached analysis depends on: its options and the SHA-256 of the weights."""
    text = json.dumps({"layer": layer, "method": method, "seed": seed, **options,
                       "weights_sha256": weights}, sort_keys=True)  # fmt: skip
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def analyze_run(
    run_dir: str | Path | runs.Run,
    layer: str = "retina_2",
    method: str = "actmax",
    *,
    seed: int = 0,
    device=None,
    progress: bool = True,
    recompute: bool = False,
    **rf_options,
) -> xr.Dataset:
    """RFs and their metrics for one finished run, as a Dataset with dims (channel, y, x).

    Cached in ``<run_dir>/analysis/<layer>-<method>.nc`` (written atomically); the cache is
    used when it was made from the same ``model.pt`` (its SHA-256, attribute
    ``weights_sha256``) with the same layer, method, seed and options. ``run_dir``: a run
    folder or an opened :class:`~retina_raf.runs.Run` (whose digest is read once).
    """
    from analysis.metrics import rf_metrics
    from analysis.rf import extract_rfs

    if isinstance(run_dir, runs.Run):
        run_dir, weights = run_dir.path, run_dir.weights_digest
    else:
        run_dir = Path(run_dir)
        weights = runs.weights_digest(run_dir)
    key = cache_key(layer, method, seed, rf_options, weights)
    cache = run_dir / runs.ANALYSIS_DIR / f"{layer}-{method}.nc"
    if cache.exists() and not recompute:
        try:
            with xr.open_dataset(cache, engine="h5netcdf") as cached:
                if cached.attrs.get("options_key") == key:
                    return cached.load()
        except (OSError, ValueError):  # a damaged cache is recomputed and replaced
            pass
    rfs = extract_rfs(run_dir, layer, method, seed=seed, device=device, progress=progress,
                      **rf_options)  # fmt: skip
    metrics = rf_metrics(rfs)
    ds = metrics.drop_vars([c for c in metrics.coords if c not in ("channel",)], errors="ignore")
    ds["rf"] = rfs.reset_coords(drop=True)
    ds["rf_spread"] = rfs["spread"].reset_coords(drop=True)
    for name in ("responsive", "activation"):
        ds[name] = rfs[name].reset_coords(drop=True)
    ds.attrs = {**{f"rf_{k}": v for k, v in rfs.attrs.items()}, **metrics.attrs,
                "options_key": key, "weights_sha256": weights}  # fmt: skip
    write_netcdf(ds, cache)
    return ds


def _final_variance_captured(ds: xr.Dataset, run: runs.Run) -> xr.Dataset:
    """``final_error_variance_captured`` (layer): the trained model's P against its error
    covariance (:func:`retina_raf.feedback.diagnostics.variance_captured`), from model.pt, so
    that runs whose history predates that diagnostic have it too."""
    if "layer" not in ds.coords:
        return ds
    from retina_raf.feedback import model_diagnostics

    final = model_diagnostics(run.model())
    values = [final.get(str(name), {}).get("error_variance_captured", np.nan)
              for name in ds["layer"].values]  # fmt: skip
    ds["final_error_variance_captured"] = ("layer", np.asarray(values, dtype=float))
    ds["final_error_variance_captured"].attrs = {
        "long_name": "fraction of the error's top-r variance captured by P's rows, trained model",
        "units": "1",
    }
    return ds


def run_rfs(run: runs.Run, layer: str = "retina_2", method: str = "actmax", **kwargs) -> xr.Dataset:
    """The per-run reduction of :func:`combine_runs`: one finished run's RFs and metrics
    (channel, y, x), its history (epoch, layer) and ``final_error_variance_captured``
    (layer). Attributes: the RF options (``rf_*``) and classification thresholds.
    ``**kwargs`` go to :func:`analyze_run`; the weights load only if its cache is stale."""
    ds = analyze_run(run, layer, method, **kwargs)
    history = stacking.history_variables(run.history)
    if history is not None:
        ds = xr.merge([ds, history], combine_attrs="override")
        ds = _final_variance_captured(ds, run)
    kept = ("rf_", "threshold", "classification")  # the RF options and class thresholds
    inherited = {k: v for k, v in ds.attrs.items() if k.startswith(kept) and k != "rf_run_dir"}
    return ds.drop_attrs(deep=False).assign_attrs(
        {**inherited, "rf_layer": layer, "rf_method": method}
    )


def run_dataset(
    run_dir: str | Path | runs.Run, layer: str = "retina_2", method: str = "actmax", **kwargs
) -> xr.Dataset:
    """One run's RFs, metrics and history with its identity as ``run``-dim coordinates
    (:func:`combine_runs` of that run alone)."""
    kwargs.pop("progress", None)  # one run: no bar
    return combine_runs([run_dir], layer, method, progress=False, **kwargs)


def combine_runs(
    run_dirs: Sequence[str | Path | runs.Run],
    layer: str = "retina_2",
    method: str = "actmax",
    *,
    progress: bool = True,
    **kwargs,
) -> xr.Dataset:
    """Stack the analyses of many run folders along ``run`` (module docstring has the schema):
    :func:`run_rfs` of each run, stacked by :func:`analysis.stacking.stack_runs`.

    Args:
        run_dirs: finished run folders (each with ``DONE``), or opened runs.
        layer, method: which RFs; ``**kwargs`` go to :func:`analyze_run` (seed, device,
            RF options).

    Raises:
        RunError: a missing, unfinished or damaged run folder (config, history or weights),
            before any RF is mapped; DataError: no run folders at all.
    """
    if not run_dirs:
        raise DataError("no run folders to combine")

    def reduce(run: runs.Run) -> xr.Dataset:
        return run_rfs(run, layer, method, progress=False, **kwargs)

    # the first run's RF options stand for all (rf_layer_shape differs between widths)
    combined = stacking.stack_runs(run_dirs, reduce, kind=KIND_RF_RESULTS, attrs="first",
                                   progress=progress, desc="analyzing runs")  # fmt: skip
    return index_run_coords(combined)


def _json_attr(value):
    return value.tolist() if hasattr(value, "tolist") else value


def stack_methods(parts: Sequence[xr.Dataset]) -> xr.Dataset:
    """The results of the same runs by several RF methods, as one dataset.

    Args:
        parts: :func:`combine_runs` datasets of the same runs (same ``run_id`` order), one per
            method (attribute ``rf_method``), e.g. actmax and gradient.

    Returns:
        Dataset with a ``method`` dimension (in the order given) on every variable that has
        a ``channel`` dimension (rf, rf_spread, responsive, activation, the metrics), except
        ``present``; histories, diagnostics and configs once. Per pair of methods,
        ``<a>_vs_<b>`` (run, channel): Pearson correlation of the two RFs over pixels (NaN
        where either is flat). Attributes ``rf_methods`` and ``rf_options_by_method`` (JSON:
        each method's ``rf_*`` and threshold attributes, restored by :func:`select_method`).

    Raises:
        DataError: fewer than two parts, a method twice, or parts of different runs.
    """
    from analysis.rf import rf_correlation

    methods = [str(part.attrs.get("rf_method", "")) for part in parts]
    if len(parts) < 2 or len(set(methods)) != len(methods) or "" in methods:
        raise DataError(
            f"stack_methods needs results of two or more distinct methods, got {methods}"
        )
    run_ids = [list(part["run_id"].values) for part in parts]
    if any(ids != run_ids[0] for ids in run_ids):
        raise DataError("the results to stack are not of the same runs in the same order")
    per_method = [str(v) for v, var in parts[0].data_vars.items()
                  if "channel" in var.dims and v != "present"]  # fmt: skip
    options = {m: {k: _json_attr(v) for k, v in part.attrs.items()
                   if k.startswith(("rf_", "threshold", "classification"))}
               for m, part in zip(methods, parts, strict=True)}  # fmt: skip
    stacked = xr.concat(
        [part.drop_indexes([n for n in RUN_COORDS if n in part.xindexes]) for part in parts],
        dim=xr.DataArray(methods, dims="rf_method", name="rf_method"),
        data_vars=per_method,
        coords="minimal",
        compat="override",
        join="outer",
        combine_attrs="override",
    )
    for (first, a), (second, b) in combinations(zip(methods, parts, strict=True), 2):
        stacked[f"{first}_vs_{second}"] = rf_correlation(a["rf"], b["rf"]).assign_attrs(
            long_name=f"Pearson correlation of the {first} and {second} RFs", units="1"
        )
    common = {k: v for k, v in parts[0].attrs.items() if not k.startswith("rf_")}
    layer = parts[0].attrs.get("rf_layer", "")
    stacked.attrs = {**common, "rf_layer": layer, "rf_methods": methods,
                     "rf_options_by_method": json.dumps(options)}  # fmt: skip
    return index_run_coords(stacked)


def combine_methods(
    run_dirs: Sequence[str | Path | runs.Run], layer: str, methods: Sequence[str], **kwargs
) -> xr.Dataset:
    """:func:`combine_runs` by one method, or by several stacked by :func:`stack_methods`
    (each run folder is read once for all methods)."""
    methods = list(dict.fromkeys(methods))
    run_dirs = stacking.open_runs(run_dirs)
    parts = [combine_runs(run_dirs, layer, method, **kwargs) for method in methods]
    return parts[0] if len(parts) == 1 else stack_methods(parts)


def epochs_shown(trajectories: xr.Dataset, epoch: int | None = None) -> np.ndarray:
    """Per run, the epoch at which the findings tables and :func:`results_at_epoch` show it:
    ``epoch`` where the run has RFs at that epoch, else (None, or an epoch it has not
    reached) its last epoch with RFs. Shape (run,), int.

    Raises:
        DataError: a run without RFs at any epoch.
    """
    mapped = (trajectories["rf_class"] != "").any("channel")  # padding: class ""
    mapped = mapped.transpose("run", "epoch").values
    epochs = np.asarray(trajectories["epoch"].values)
    shown = []
    for run, row in enumerate(mapped):
        if not row.any():
            raise DataError(f"run {trajectories['run_id'].values[run]} has no RFs at any epoch")
        reached = epochs[row]
        shown.append(int(epoch if epoch is not None and epoch in reached else reached.max()))
    return np.asarray(shown, dtype=int)


def results_at_epoch(trajectories: xr.Dataset, epoch: int | None = None) -> xr.Dataset:
    """A trajectories dataset as RF results at one epoch, for what reads RF results (the
    ``compare_ranks`` report, ``retina-raf figures``) while the runs are still training.

    Each run is taken at :func:`epochs_shown` (``epoch``, or its last where it has not
    reached it, as the findings tables do), which the coordinate ``rf_epoch`` (run) records.

    Args:
        trajectories: :func:`analysis.trajectory.combine_trajectories` (or its file,
            opened by :func:`open_results`): dims run, epoch, channel, y, x.
        epoch: the epoch to show (None: each run's last).

    Returns:
        A results dataset (kind ``rf_results``): the RFs and
        per-unit metrics over (run, channel[, y, x]) at each run's ``rf_epoch``; the history
        and feedback diagnostics over (run, epoch[, layer]) for epochs 1 to ``rf_epoch``
        (NaN after it: what the run had done when its RFs were taken); attribute
        ``trajectory_epoch`` (the epoch asked for, or "last").
    """
    shown = xr.DataArray(epochs_shown(trajectories, epoch), dims="run")

    def per_unit(var: xr.DataArray) -> bool:  # RFs and metrics, not history or diagnostics
        return {"epoch", "channel"} <= set(var.dims)

    unit_coords = [n for n, c in trajectories.coords.items() if per_unit(c)]  # n_active_starts
    ds = trajectories.reset_coords(unit_coords)
    units = [name for name, var in ds.data_vars.items() if per_unit(var)]
    history = [name for name, var in ds.data_vars.items()
               if "epoch" in var.dims and name not in units]  # fmt: skip
    at = ds[units].sel(epoch=shown).drop_vars("epoch")
    done = ds[history].where(ds["epoch"] <= shown).sel(epoch=slice(1, int(shown.max())))
    rest = ds.drop_vars(units + history).drop_dims("epoch", errors="ignore")
    out = xr.merge([rest, at, done], combine_attrs="override").set_coords(unit_coords)
    out = out.assign_coords(rf_epoch=shown.assign_attrs(long_name="epoch of the RFs", units="1"))
    out.attrs = {**trajectories.attrs, "kind": KIND_RF_RESULTS,
                 "trajectory_epoch": "last" if epoch is None else int(epoch)}  # fmt: skip
    return index_run_coords(out)


def rf_results_view(
    ds: xr.Dataset, method: str | None = None, epoch: int | None = None
) -> xr.Dataset:
    """The single-method RF results that reports and panels read, from an opened file of
    RF results (:func:`select_method`) or of trajectories (each run at ``epoch``, or at its
    last where it has not reached it: :func:`results_at_epoch`).

    Raises:
        DataError: a file of accuracies (no RFs), ``epoch`` given for RF results (which hold
            one epoch per run), or no RFs by ``method``.
    """
    kind = ds.attrs.get("kind")  # one built in memory may have none: RF results
    if kind == KIND_TRAJECTORIES:
        return select_method(results_at_epoch(ds, epoch), method)
    if kind == KIND_ACCURACY:
        raise DataError("this file holds test accuracies, not RFs (`retina-raf findings` reads it)")
    if epoch is not None:
        raise DataError("an epoch applies to a trajectories file; RF results hold one per run")
    return select_method(ds, method)


def select_method(ds: xr.Dataset, method: str | None = None) -> xr.Dataset:
    """The single-method view of a results dataset: ``method`` of a :func:`stack_methods`
    file (None: its first), with that method's attributes; a single-method file is returned
    as it is (``method``, if given, must be its ``rf_method``).

    Raises:
        DataError: the file has no RFs by ``method``.
    """
    if "rf_method" not in ds.dims:
        if method is not None and method != ds.attrs.get("rf_method", method):
            raise DataError(f"these results hold RFs by {ds.attrs['rf_method']}, not {method}")
        return ds
    methods = [str(m) for m in ds["rf_method"].values]
    method = methods[0] if method is None else method
    if method not in methods:
        raise DataError(f"no RFs by {method!r} in these results; they hold {', '.join(methods)}")
    out = ds.sel(rf_method=method, drop=True)
    options = json.loads(ds.attrs["rf_options_by_method"])[method]
    kept = {k: v for k, v in ds.attrs.items() if k not in ("rf_methods", "rf_options_by_method")}
    out.attrs = {**kept, **options, "rf_method": method, "rf_methods_in_file": methods}
    return out


def write_results(ds: xr.Dataset, path: str | Path) -> Path:
    """Write a results (or metrics) dataset to NetCDF atomically (h5netcdf), the CF way:
    a ``Conventions`` attribute, coordinates with ``long_name`` (and UDUNITS ``units``),
    ``rf_class`` as flag codes with ``flag_values``/``flag_meanings``. :func:`open_results`
    reads it back as it was (class names, run indexes)."""
    from analysis.metrics import encode_rf_class

    ds = encode_rf_class(ds.drop_indexes([n for n in RUN_COORDS if n in ds.xindexes]))
    for name, attrs in COORD_ATTRS.items():
        if name in ds.coords:
            ds[name].attrs = {**attrs, **ds[name].attrs}
    ds.attrs = {"Conventions": CONVENTIONS, **ds.attrs}
    ds = ds.copy()  # new variables: the caller's encodings stay as they were
    for name in RF_MAP_VARIABLES:
        if name in ds and np.issubdtype(ds[name].dtype, np.floating):
            ds[name] = ds[name].copy(data=round_significand(ds[name].values, RF_MAP_BITS))
            ds[name].attrs["significand_bits"] = RF_MAP_BITS
    for name, var in ds.data_vars.items():  # bottlenecked runs' RF maps are mostly NaN padding
        if var.ndim >= 2 and np.issubdtype(var.dtype, np.number):
            ds[name].encoding = {**var.encoding, "zlib": True, "complevel": 4, "shuffle": True}
    return write_netcdf(ds, path)


# The RF maps are most of a results file, and their low significand bits are noise that zlib
# cannot compress: kept to 12 bits (relative error < 2^-13 = 1.2e-4, far below the maps' own
# noise), a published file shrinks by about a third (docs/performance.md#analysis). The metrics
# are computed before writing, from the full maps.
RF_MAP_VARIABLES = ("rf", "rf_spread")
RF_MAP_BITS = 12


def round_significand(values: np.ndarray, bits: int) -> np.ndarray:
    """float32 copy of ``values`` rounded to ``bits`` explicit significand bits (of 23), to
    nearest; NaN and inf unchanged. Relative error at most 2^-(bits + 1)."""
    values = np.asarray(values, dtype=np.float32)
    dropped = 23 - bits
    as_int = values.view(np.int32)
    rounded = (as_int + np.int32(1 << (dropped - 1))) & np.int32(~((1 << dropped) - 1))
    return np.where(np.isfinite(values), rounded.view(np.float32), values)


def open_results(paths: str | Path | Sequence[str | Path]) -> xr.Dataset:
    """Open one results file, or many concatenated along ``run`` (dask-backed, lazily).

    Raises:
        DataError: a missing file or one that is not a results dataset.
    """
    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    for path in paths:
        if not path.is_file():
            raise DataError(f"no such results file: {path}")
    try:
        if len(paths) == 1:
            ds = xr.open_dataset(paths[0], engine="h5netcdf")
        else:
            ds = xr.open_mfdataset(paths, engine="h5netcdf", combine="nested", concat_dim="run",
                                   join="outer", combine_attrs="drop_conflicts")  # fmt: skip
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read results {paths[0]}: {exc}") from exc
    if "run" not in ds.dims:
        raise DataError(f"{paths[0]} is not a results dataset (no 'run' dimension)")
    from analysis.metrics import decode_rf_class

    return index_run_coords(decode_rf_class(upgrade_layout(ds)))


def results_kind(ds: xr.Dataset) -> str:
    """What a results dataset holds: its ``kind`` attribute, one of
    :data:`analysis.provenance.KINDS` (a file written before that attribute existed gets its
    kind when opened: :func:`upgrade_layout`).

    Raises:
        DataError: no known kind.
    """
    kind = ds.attrs.get("kind")
    if kind not in KINDS:
        raise DataError("not a results dataset of retina-raf (no RF metrics and no accuracies)")
    return kind


def upgrade_layout(ds: xr.Dataset) -> xr.Dataset:
    """The one place where results files of an earlier layout are read as today's
    (:func:`open_results` calls it on every file):

    - the RF method dimension ``method`` (whose name ``ds.sel(method=...)`` took as sel's own
      argument) is ``rf_method``;
    - a file without a known ``kind`` gets it from its variables: ``symmetry`` per run (RF
      results) or per run and epoch (trajectories), ``test_acc`` with ``constrain``
      (accuracies); nothing for e.g. RFs without metrics;
    - a file of a retina or VVS layer's RFs without ``rf_support`` (the crop box of the RFs,
      ``support`` of :func:`analysis.rf.extract_rfs`) gets the box its runs' configs give, when
      they all give the same one: the center unit of the d-th k x k convolution sees
      ``d (k - 1) + 1`` pixels around the image's center.
    """
    if "method" in ds.dims and "rf_method" not in ds.dims:
        ds = ds.rename({"method": "rf_method"})
    if ds.attrs.get("kind") not in KINDS:
        if "symmetry" in ds:
            trajectories = "epoch" in ds["symmetry"].dims
            ds = ds.assign_attrs(kind=KIND_TRAJECTORIES if trajectories else KIND_RF_RESULTS)
        elif "test_acc" in ds and "constrain" in ds.coords:
            ds = ds.assign_attrs(kind=KIND_ACCURACY)
    by_method = json.loads(ds.attrs.get("rf_options_by_method", "{}"))
    if "rf_support" not in ds.attrs and not any("rf_support" in o for o in by_method.values()):
        support = _support_from_configs(ds)
        if support is not None:
            ds = ds.assign_attrs(rf_support=support)
    return ds


def _support_from_configs(ds: xr.Dataset) -> list[int] | None:
    """:func:`upgrade_layout`'s crop box from the runs' ``config`` (None: a layer that is not a
    retina or VVS convolution, a config without kernel and image size, or runs that differ)."""
    import yaml

    match = re.fullmatch(r"(retina|vvs)_(\d+)", str(ds.attrs.get("rf_layer", "")))
    if "config" not in ds or not match:
        return None
    depth = int(match.group(2)) + (2 if match.group(1) == "vvs" else 0)  # two retina layers
    boxes = set()
    for text in np.asarray(ds["config"].values).ravel():
        try:
            model = sectioned_model(yaml.safe_load(str(text)).get("model", {}))
        except (yaml.YAMLError, AttributeError):
            return None
        kernel = model.get("retina", {}).get("kernel_size")
        size = model.get("image_size", ds.sizes.get("y"))
        if not isinstance(kernel, int) or not isinstance(size, int):
            return None
        half, center = depth * (kernel // 2), size // 2
        boxes.add((max(center - half, 0), min(center + half + 1, size)) * 2)
    return list(boxes.pop()) if len(boxes) == 1 else None


def select_runs(ds: xr.Dataset, **keys) -> xr.Dataset:
    """The runs whose coordinates match every key, e.g. ``select_runs(ds, preset="bp",
    seed=0)`` or ``select_runs(ds, preset=["bp", "raf-r2"], seed=[0, 1])`` (a list: any of
    its values). ``ds.sel`` takes one run coordinate at a time; this takes any together.

    Raises:
        DataError: a key that is not a run coordinate, or no run matching.
    """
    mask = np.ones(ds.sizes["run"], dtype=bool)
    for key, wanted in keys.items():
        if key not in ds.coords or ds[key].dims != ("run",):
            run_coords = [str(c) for c in ds.coords if ds[c].dims == ("run",)]
            raise DataError(f"{key!r} is not a run coordinate (have: {', '.join(run_coords)})")
        values = wanted if isinstance(wanted, (list, tuple, set)) else [wanted]
        mask &= np.isin(np.asarray(ds[key].values), list(values))
    if not mask.any():
        raise DataError(f"no run with {keys}")
    return ds.isel(run=np.flatnonzero(mask))


def load_results(
    path: str | Path,
    metrics: Sequence[str] | str = (),
    require: Sequence[str] = (),
    history: Sequence[str] | str = (),
    method: str | None = None,
    epoch: int | None = None,
) -> xr.Dataset:
    """Open a results file into memory and check it has what a notebook asks for.

    A trajectories file (``retina-raf trajectory``) is read as the RF results at ``epoch``
    (None: each run's last; :func:`rf_results_view`), so that the reports can follow
    runs still training.

    Args:
        path: the results NetCDF file.
        metrics: per-unit metrics to be summarized per run: numeric ``(run, channel)``
            variables (``symmetry``, ``osi``, ...) or ``"fraction_center_surround"`` (needs
            ``rf_class``); one name or a list.
        require: other variables that must be present (``rf``, ``rf_class``, ...).
        history: per-epoch variables to be plotted: numeric ``(run, epoch)`` variables
            (``train_loss``, ``test_acc``, ...); one name or a list.
        method: the RF method, for a file that holds several (:func:`select_method`; None:
            the first).
        epoch: for a trajectories file, the epoch of the RFs (a run that has not reached
            it: its last; None: each run's last).

    Raises:
        DataError: a missing or unreadable file, an empty one, an unknown metric or a
            missing variable; ConfigError: ``metrics`` is not a name or a list of names.
    """
    from retina_raf.errors import ConfigError

    def names_of(value, what: str) -> list[str]:
        names = [value] if isinstance(value, str) else value
        if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
            raise ConfigError(f"{what} must be a name or a list of names, not {value!r}")
        return list(names)

    names = names_of(metrics, "metrics")
    history_names = names_of(history, "history variables")
    with open_results(path) as opened:
        ds = rf_results_view(opened.load(), method, epoch)
    if ds.sizes["run"] == 0:
        raise DataError(f"{path} holds no runs")
    per_unit = [
        name
        for name, var in ds.data_vars.items()
        if set(var.dims) == {"run", "channel"} and np.issubdtype(var.dtype, np.number)
    ]
    if "rf_class" in ds:
        per_unit.append("fraction_center_surround")
    unknown = [m for m in names if m not in per_unit]
    if unknown:
        raise DataError(f"no metric {unknown} in {path}; it has: {', '.join(per_unit)}")
    missing = [name for name in require if name not in ds.variables]
    if missing:
        raise DataError(f"{path} lacks {missing}, which this analysis needs")
    per_epoch = [
        name
        for name, var in ds.data_vars.items()
        if set(var.dims) == {"run", "epoch"} and np.issubdtype(var.dtype, np.number)
    ]
    unknown = [name for name in history_names if name not in per_epoch]
    if unknown:
        raise DataError(
            f"no per-epoch variable {unknown} in {path}; it has: {', '.join(per_epoch) or 'none'}"
        )
    return ds


def find_runs(root: str | Path) -> list[Path]:
    """Finished run folders (with ``DONE``) under ``root``, sorted by name."""
    return runs.find_runs(root)


def collect_experiment(
    exp,
    out: str | Path,
    layer: str = "retina_2",
    method: str | Sequence[str] = "actmax",
    device: str | None = None,
    path: str | Path | None = None,
    **rf_options,
) -> Path:
    """The results dataset of an experiment's finished runs, for the notebooks
    (``retina-raf sweep FILE --collect``).

    Retina runs: :func:`combine_runs` maps and measures the RFs of ``layer`` in every run of
    the experiment (:class:`retina_raf.sweep.ExperimentConfig`) that finished the epochs it
    asks for, and stacks them with the histories along ``run`` (coordinates run_id, preset,
    rank, n_bn, seed, rule). Several methods (a list) are stacked by :func:`stack_methods`.
    Written to ``path``, by default ``<out>/results_<layer>_<method[-method...]>.nc``.
    ``rf_options``: options every method takes (``base``, ``gray_level``;
    :func:`analysis.rf.extract_rfs`).

    The Fig. 3 networks (``model.arch`` mlp, vgg, vit) have no retina: the test accuracy of
    every finished run by rule, constrained layer, rank, d and seed
    (:func:`analysis.accuracy.collect_accuracy`), written to ``path``, by default
    ``<out>/results_accuracy.nc`` (``layer``, ``method``, ``device`` and ``rf_options`` are
    not used).

    In both, each grid setting (of the experiment and of its ``conditions``) is a ``run``
    coordinate too, named by its last part (e.g. ``lr``), unless a coordinate has that name
    already; JSON text when its values are mappings, lists, or missing (``null``) for the
    runs of a condition without that axis. Unfinished runs are left out and listed in the
    ``missing_runs`` attribute, so the file accounts for every planned run.

    Raises:
        RunError: no run of the experiment is finished, or a finished one is damaged.
    """
    from retina_raf.sweep import expand, experiment_grid_keys, experiment_yaml, is_done, run_dir

    out = Path(out)
    methods = [method] if isinstance(method, str) else list(dict.fromkeys(method))
    planned = expand(exp)
    finished = [run for run in planned if is_done(out, run)]
    if not finished:
        raise RunError(f"no finished runs of {exp.name} in {out}: run the sweep first")
    run_dirs = [run_dir(out, run) for run in finished]
    fig3 = any(run.config().model.arch != "retina" for run in finished)
    if fig3:
        from analysis.accuracy import collect_accuracy

        ds = collect_accuracy(run_dirs)
    else:
        ds = combine_methods(run_dirs, layer, methods, device=device, **rf_options)
    for key in experiment_grid_keys(exp):
        name = key.rsplit(".", 1)[-1]
        if name not in ds.coords:
            values = [run.point.get(key) for run in finished]
            if any(v is None or isinstance(v, (dict, list)) for v in values):
                values = [json.dumps(v) for v in values]
            ds = ds.assign_coords({name: ("run", values)})
    ds.attrs.update(
        experiment=exp.name,
        experiment_yaml=experiment_yaml(exp),
        missing_runs=" ".join(run.run_id for run in planned if run not in finished),
    )
    if fig3:
        from analysis.accuracy import write_accuracy

        return write_accuracy(ds, path or out / "results_accuracy.nc")
    return write_results(ds, path or out / f"results_{layer}_{'-'.join(methods)}.nc")
