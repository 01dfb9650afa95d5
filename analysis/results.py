"""Results as xarray (DESIGN.md 11): many run folders -> one labelled dataset.

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

On disk (:func:`write_results`) the file follows CF: ``Conventions``, UDUNITS units,
``rf_class`` as ``flag_values``/``flag_meanings``; :func:`open_results` restores the class
names and the run indexes. Metrics of dask-backed RFs stay lazy (``analysis.metrics``).

Runs with fewer channels (feedforward bottlenecks) are padded: ``present`` is False there,
numeric variables NaN and ``rf_class`` the empty string. Each run's analysis is cached next
to its weights (``<run>/analysis/<layer>-<method>.nc``) and reused when its options match.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm import tqdm  # not tqdm.auto: its notebook widget needs ipywidgets

import retina_raf
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


def _options_key(layer: str, method: str, seed: int, options: dict) -> str:
    text = json.dumps({"layer": layer, "method": method, "seed": seed, **options}, sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def analyze_run(
    run_dir: str | Path,
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
    used when it was made with the same layer, method, seed and options.
    """
    from analysis.metrics import rf_metrics
    from analysis.rf import extract_rfs

    run_dir = Path(run_dir)
    key = _options_key(layer, method, seed, rf_options)
    cache = run_dir / "analysis" / f"{layer}-{method}.nc"
    if cache.exists() and not recompute:
        with xr.open_dataset(cache, engine="h5netcdf") as cached:
            if cached.attrs.get("options_key") == key:
                return cached.load()
    rfs = extract_rfs(run_dir, layer, method, seed=seed, device=device, progress=progress,
                      **rf_options)  # fmt: skip
    metrics = rf_metrics(rfs)
    ds = metrics.drop_vars([c for c in metrics.coords if c not in ("channel",)], errors="ignore")
    ds["rf"] = rfs.reset_coords(drop=True)
    ds["rf_spread"] = rfs["spread"].reset_coords(drop=True)
    for name in ("responsive", "activation"):
        ds[name] = rfs[name].reset_coords(drop=True)
    ds.attrs = {**{f"rf_{k}": v for k, v in rfs.attrs.items()}, **metrics.attrs,
                "options_key": key}  # fmt: skip
    write_netcdf(ds, cache)
    return ds


def _history(run_dir: Path) -> xr.Dataset | None:
    path = run_dir / "history.nc"
    if not path.exists():
        return None
    with xr.open_dataset(path, engine="h5netcdf") as history:
        return history.load().drop_attrs(deep=False)  # keep the variables' CF attributes


def _git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)  # fmt: skip
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def provenance(**extra) -> dict:
    """Attributes every results file carries: package version, git commit, date, ..."""
    return {
        "retina_raf_version": retina_raf.__version__,
        "git_commit": _git_commit(),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        **extra,
    }


def _require_finished(run_dir: Path) -> None:
    if not (run_dir / "model.pt").is_file():
        raise RunError(f"{run_dir} has no model.pt (the run is unfinished or not a run folder)")


def run_dataset(
    run_dir: str | Path, layer: str = "retina_2", method: str = "actmax", **kwargs
) -> xr.Dataset:
    """One run's RFs, metrics and history with its identity as ``run``-dim coordinates."""
    from retina_raf.config import dump_yaml, load_run_config, to_dict
    from retina_raf.train import run_identity

    run_dir = Path(run_dir)
    _require_finished(run_dir)
    cfg = load_run_config(run_dir / "config.yaml")  # the weights load only if not cached
    config = to_dict(cfg)
    ds = analyze_run(run_dir, layer, method, **kwargs)
    history = _history(run_dir)
    if history is not None:
        ds = xr.merge([ds, history], combine_attrs="override")
    ds["present"] = ("channel", np.ones(ds.sizes["channel"], dtype=bool))
    ds = ds.expand_dims("run")
    identity = {"run_id": run_dir.name, **run_identity(config)}
    ds = ds.assign_coords({k: ("run", [v]) for k, v in identity.items()})
    ds["config"] = ("run", [dump_yaml(cfg)])
    return ds


def combine_runs(
    run_dirs: Sequence[str | Path],
    layer: str = "retina_2",
    method: str = "actmax",
    *,
    progress: bool = True,
    **kwargs,
) -> xr.Dataset:
    """Stack the analyses of many run folders along ``run`` (module docstring has the schema).

    Args:
        run_dirs: finished run folders (each with ``model.pt``).
        layer, method: which RFs; ``**kwargs`` go to :func:`analyze_run` (seed, device,
            RF options).

    Raises:
        RunError: an unfinished or missing run folder; DataError: no run folders at all.
    """
    run_dirs = [Path(r) for r in run_dirs]
    if not run_dirs:
        raise DataError("no run folders to combine")
    for run_dir in run_dirs:  # fail before hours of extraction, not after
        _require_finished(run_dir)
    parts = []
    for run_dir in tqdm(run_dirs, desc="analyzing runs", unit="run", disable=not progress):
        parts.append(run_dataset(run_dir, layer, method, progress=False, **kwargs))
    attrs = parts[0].attrs
    for part in parts:  # encodings of the cached files (e.g. int dtypes) do not fit padding
        for var in part.variables.values():
            var.encoding = {}
    combined = xr.concat(parts, dim="run", join="outer", combine_attrs="drop_conflicts",
                         data_vars="all", coords="minimal", compat="override")  # fmt: skip
    combined["present"] = combined["present"].fillna(False).astype(bool)
    combined["responsive"] = combined["responsive"].fillna(False).astype(bool)
    if "rf_class" in combined:
        combined["rf_class"] = combined["rf_class"].fillna("").astype(str)
    inherited = {
        k: v
        for k, v in attrs.items()
        if k.startswith(("rf_", "threshold", "classification")) and k != "rf_run_dir"
    }
    combined.attrs = provenance(**{**inherited, "rf_layer": layer, "rf_method": method})
    return index_run_coords(combined)


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
    return write_netcdf(ds, path)


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

    return index_run_coords(decode_rf_class(ds))


def load_results(
    path: str | Path,
    metrics: Sequence[str] | str = (),
    require: Sequence[str] = (),
    history: Sequence[str] | str = (),
) -> xr.Dataset:
    """Open a results file into memory and check it has what a notebook asks for.

    Args:
        path: the results NetCDF file.
        metrics: per-unit metrics to be summarized per run: numeric ``(run, channel)``
            variables (``symmetry``, ``osi``, ...) or ``"fraction_center_surround"`` (needs
            ``rf_class``); one name or a list.
        require: other variables that must be present (``rf``, ``rf_class``, ...).
        history: per-epoch variables to be plotted: numeric ``(run, epoch)`` variables
            (``train_loss``, ``test_acc``, ...); one name or a list.

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
        ds = opened.load()
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
    """Finished run folders (holding ``model.pt``) under ``root``, sorted by name."""
    root = Path(root)
    if not root.exists():
        raise RunError(f"no such folder: {root}")
    if (root / "model.pt").exists():
        return [root]
    return sorted(p.parent for p in root.glob("*/model.pt"))
