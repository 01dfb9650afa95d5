"""RFs through training: the retina's RFs and their metrics at every saved epoch of a run.

A run trained with ``train.retina_snapshots: true`` keeps the weights of ``retina_1`` and
``retina_2`` after every epoch (and at its init, epoch 0) in ``snapshots/``; an RF of
``retina_2`` depends on nothing else. :func:`rf_trajectory` maps those RFs at each epoch
(:func:`analysis.rf.extract_rfs`) and measures them (:func:`analysis.metrics.rf_metrics`)::

    dims    epoch, channel, y, x
    vars    rf (epoch, channel, y, x), responsive, activation (epoch, channel),
            metrics (epoch, channel): osi, symmetry, rf_class, dog_r2 ...
            history (epoch): test_acc, train_loss ... (NaN at epoch 0)
    attrs   run folder, preset, seed, layer, RF method and options

:func:`trajectory_summary` reduces it to one value per epoch (responsive units only): mean
symmetry and OSI, the fraction center-surround and oriented, and the number responsive.
:func:`plot_trajectories` draws those curves for several runs side by side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from retina_raf.errors import DataError, RunError

SUMMARY_METRICS = {
    "symmetry": "Radial symmetry",
    "osi": "Orientation selectivity (OSI)",
    "fraction_center_surround": "Fraction center-surround",
    "fraction_oriented": "Fraction oriented",
    "n_responsive": "Responsive units",
    "test_acc": "Test accuracy",
}


def rf_trajectory(
    run_dir: str | Path,
    layer: str = "retina_2",
    method: str = "gradient",
    *,
    epochs: Sequence[int] | None = None,
    seed: int = 0,
    **rf_options,
) -> xr.Dataset:
    """RFs of ``layer`` and their metrics at every retina snapshot of a run.

    Args:
        run_dir: a run folder trained with ``train.retina_snapshots: true``.
        layer: ``retina_1`` or ``retina_2`` (later layers are not in the snapshots).
        method: RF method of :func:`analysis.rf.extract_rfs` (``gradient`` is cheap).
        epochs: which snapshots (default: all).
        seed, rf_options: passed to ``extract_rfs`` (e.g. ``base="gray", gray_level=0.48``).

    Returns:
        Dataset with dims (epoch, channel, y, x) described in the module docstring.

    Raises:
        RunError: no such folder, no snapshots, or an epoch that was not saved.
        DataError: a layer outside the retina.
    """
    from analysis.metrics import rf_metrics
    from retina_raf import runs
    from retina_raf.models import model_from_config

    run_dir = Path(run_dir)
    if layer not in runs.SNAPSHOT_LAYERS:
        raise DataError(f"layer {layer!r}: snapshots hold only {', '.join(runs.SNAPSHOT_LAYERS)}")
    cfg = runs.load_config(run_dir)  # RunError for a folder that is not a run
    snapshots = runs.retina_snapshots(run_dir)
    if not snapshots:
        raise RunError(f"{run_dir} has no retina snapshots (train with train.retina_snapshots)")
    wanted = sorted(snapshots) if epochs is None else list(epochs)
    missing = [e for e in wanted if e not in snapshots]
    if missing:
        raise RunError(
            f"{run_dir}: no snapshot for epoch(s) {missing} (saved: {sorted(snapshots)})"
        )
    model = model_from_config(cfg.model).eval()
    per_epoch = []
    for epoch in wanted:
        rfs = _epoch_rfs(run_dir, model, epoch, layer, method, seed, rf_options)
        attrs = rfs.attrs
        # the per-unit coordinates become variables, so that they too get the epoch dim
        per_epoch.append(rfs.reset_coords(["responsive", "activation"]).expand_dims(epoch=[epoch]))
    maps = xr.concat(per_epoch, dim="epoch", coords="different", compat="equals")
    rfs = maps["rf"].assign_coords(responsive=maps["responsive"]).assign_attrs(attrs)
    metrics = rf_metrics(rfs)
    ds = metrics.drop_vars([c for c in metrics.coords if c not in ("epoch", "channel")])
    ds["rf"] = rfs.reset_coords(drop=True)
    for name in ("responsive", "activation"):
        ds[name] = maps[name]
    history = _history(run_dir)
    if history is not None:
        ds = ds.merge(history.reindex(epoch=ds["epoch"]), compat="override")
    ds.attrs.update({f"rf_{k}": v for k, v in rfs.attrs.items() if k != "run_dir"})
    ds.attrs.update({"run_dir": str(run_dir), "preset": cfg.preset, "seed": cfg.seed})
    return ds


def _epoch_rfs(run_dir: Path, model, epoch: int, layer, method, seed, rf_options) -> xr.DataArray:
    """The RFs of one snapshot, cached in ``<run>/analysis/trajectory/`` under a key of the
    snapshot's bytes and the RF options: a growing run maps only its new epochs."""
    from analysis.results import cache_key
    from analysis.rf import extract_rfs
    from retina_raf import runs
    from retina_raf.io import write_netcdf

    snapshot = runs.retina_snapshots(run_dir)[epoch]
    digest = hashlib.sha256(snapshot.read_bytes()).hexdigest()
    key = cache_key(layer, method, seed, rf_options, digest)
    cache = run_dir / runs.ANALYSIS_DIR / "trajectory" / f"{layer}-{method}-{key}-{epoch:03d}.nc"
    if cache.is_file():
        try:
            with xr.open_dataset(cache, engine="h5netcdf") as cached:
                rfs = cached["rf"].load()
            return rfs.assign_attrs(_decode_attrs(rfs.attrs))
        except (OSError, ValueError, KeyError):  # a damaged cache is recomputed and replaced
            pass
    model.load_state_dict(runs.load_retina_snapshot(run_dir, epoch), strict=False)
    # the spread across starts is not kept: fresh and cached epochs must look alike
    rfs = extract_rfs(model, layer, method, seed=seed, progress=False, **rf_options)
    rfs = rfs.drop_vars("spread", errors="ignore")
    write_netcdf(rfs.to_dataset(), cache)
    return rfs


def _decode_attrs(attrs: dict) -> dict:
    # NetCDF turns lists into arrays: back to lists, as extract_rfs returns them
    return {k: v.tolist() if isinstance(v, np.ndarray) else v for k, v in attrs.items()}


def _history(run_dir: Path) -> xr.Dataset | None:
    from retina_raf import runs

    history = runs.load_history(run_dir)
    if history is None:
        return None
    keep = [v for v in history.data_vars if history[v].dims == ("epoch",)]
    return history[keep].drop_attrs(deep=False) if keep else None


def final_method_agreement(
    run_dir: str | Path, layer: str = "retina_2", **rf_options
) -> xr.Dataset:
    """:func:`analysis.rf.method_agreement` (gradient, actmax, STA) at a run's last snapshot:
    whether the three RF methods tell the same story about its trained retina."""
    from analysis.rf import method_agreement
    from retina_raf import runs
    from retina_raf.models import model_from_config

    cfg = runs.load_config(run_dir)
    snapshots = runs.retina_snapshots(run_dir)
    if not snapshots:
        raise RunError(f"{run_dir} has no retina snapshots (train with train.retina_snapshots)")
    model = model_from_config(cfg.model).eval()
    model.load_state_dict(runs.load_retina_snapshot(run_dir, max(snapshots)), strict=False)
    common = {k: v for k, v in rf_options.items() if k in ("base", "gray_level", "seed")}
    agreement = method_agreement(model, layer, **common)
    return agreement.assign_attrs(agreement_epoch=max(snapshots))


def combine_trajectories(
    run_dirs: Sequence[str | Path],
    layer: str = "retina_2",
    method: str = "gradient",
    agreement: bool = False,
    **kwargs,
) -> xr.Dataset:
    """:func:`rf_trajectory` of several runs stacked along ``run`` (a results-style dataset).

    Run coordinates as in :mod:`analysis.results` (run_id, preset, rank, n_bn, seed, rule),
    and ``config`` (run): each run's resolved config as YAML;
    runs with fewer channels (bottlenecks) or epochs are padded: ``present`` (run, channel)
    is False there, numbers NaN and ``rf_class`` "". ``agreement``: also the correlations
    of the gradient, actmax and STA RFs at each run's last epoch (``gradient_vs_actmax``
    ... over (run, channel); :func:`final_method_agreement`). Write it with
    :func:`analysis.results.write_results`, read it with :func:`analysis.results.open_results`.
    """
    from retina_raf import runs
    from retina_raf.config import dump_yaml

    if not run_dirs:
        raise RunError("no run folders given")
    per_run = []
    for run_dir in run_dirs:
        ds = rf_trajectory(run_dir, layer, method, **kwargs)
        ds["present"] = ("channel", np.ones(ds.sizes["channel"], dtype=bool))
        if agreement:
            check = final_method_agreement(run_dir, layer, **kwargs)
            ds = ds.merge(check.drop_attrs(), compat="override")
            ds.attrs["agreement_epoch"] = check.attrs["agreement_epoch"]
        cfg = runs.load_config(run_dir)
        identity = {"run_id": Path(run_dir).name, **runs.run_identity(cfg)}
        ds = ds.expand_dims("run").assign_coords({k: ("run", [v]) for k, v in identity.items()})
        ds["config"] = ("run", [dump_yaml(cfg)])  # the run's whole recipe, data set included
        ds.attrs = {k: v for k, v in ds.attrs.items() if k not in ("run_dir", "preset", "seed")}
        per_run.append(ds)
    out = xr.concat(
        per_run,
        dim="run",
        join="outer",
        coords="different",
        compat="equals",
        combine_attrs="drop_conflicts",
    )
    out["present"] = out["present"].fillna(False).astype(bool)
    out["rf_class"] = out["rf_class"].where(out["rf_class"].notnull(), "").astype(str)
    out["responsive"] = out["responsive"].fillna(False).astype(bool)
    for name in [v for v in out.data_vars if str(v).startswith("responsive_")]:
        out[name] = out[name].fillna(False).astype(bool)
    return out


def trajectory_summary(trajectory: xr.Dataset) -> xr.Dataset:
    """Per-epoch summary of a :func:`rf_trajectory` (or of :func:`combine_trajectories`, then
    per run) over the responsive units.

    Returns a Dataset over ``epoch`` (and ``run``) with ``symmetry`` and ``osi`` (means over
    responsive units), ``fraction_center_surround`` and ``fraction_oriented`` (of responsive
    units), ``n_responsive``, ``n_mapped`` (channels with an RF at that epoch; 0 for epochs a
    run has not reached) and, where the run's history has it, ``test_acc``.
    """
    # padding (rf_class "") of bottlenecked runs in a combined file is not a unit
    responsive = (trajectory["rf_class"] != "unresponsive") & (trajectory["rf_class"] != "")
    n_responsive = responsive.sum("channel")
    safe = n_responsive.where(n_responsive > 0)
    out = xr.Dataset(
        {
            "symmetry": trajectory["symmetry"].where(responsive).mean("channel"),
            "osi": trajectory["osi"].where(responsive).mean("channel"),
            "fraction_center_surround": (trajectory["rf_class"] == "center-surround").sum("channel")
            / safe,
            "fraction_oriented": (trajectory["rf_class"] == "oriented").sum("channel") / safe,
            "n_responsive": n_responsive,
            # channels with an RF at that epoch: 0 where a run has no snapshot (padding)
            "n_mapped": np.isfinite(trajectory["rf"]).any(("y", "x")).sum("channel"),
        }
    )
    if "test_acc" in trajectory:
        out["test_acc"] = trajectory["test_acc"]
    out.attrs = {k: trajectory.attrs[k] for k in ("preset", "seed", "run_dir")
                 if k in trajectory.attrs}  # fmt: skip
    return out


def findings_table(trajectories: xr.Dataset, epoch: int | None = None) -> str:
    """A Markdown table of the RFs of every run at one epoch (default: each run's last).

    Columns: condition, seed, epoch, test accuracy, responsive units (of the run's channels),
    mean symmetry and OSI over them, fractions center-surround and oriented. The README's
    findings quote this table; ``retina-raf findings FILE`` prints it.
    """
    summary = trajectory_summary(trajectories)
    lines = [
        "| condition | seed | epoch | test acc. | responsive units | symmetry | OSI | "
        "center-surround | oriented |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for run in range(trajectories.sizes["run"]):
        row = summary.isel(run=run)
        reached = row["epoch"].values[row["n_mapped"].values > 0]
        at = int(epoch if epoch is not None else reached.max())
        row = row.sel(epoch=at)
        channels = int(trajectories["present"].isel(run=run).sum())
        acc = float(row["test_acc"]) if "test_acc" in row else float("nan")
        lines.append(
            f"| {trajectories['preset'].values[run]} | {int(trajectories['seed'].values[run])} "
            f"| {at} | {acc:.3f} | {int(row['n_responsive'])} of {channels} "
            f"| {float(row['symmetry']):.2f} | {float(row['osi']):.2f} "
            f"| {float(row['fraction_center_surround']):.2f} "
            f"| {float(row['fraction_oriented']):.2f} |"
        )
    return "\n".join(lines)


def plot_trajectories(
    summaries: dict[str, xr.Dataset],
    metrics: Sequence[str] = tuple(SUMMARY_METRICS),
    width: str | float = "double",
):
    """One panel per metric, one line per run: how the RFs change with training.

    Args:
        summaries: label -> :func:`trajectory_summary` of a run.
        metrics: keys of ``SUMMARY_METRICS`` to draw.
        width: journal width of the figure.

    Returns the figure.
    """
    from analysis.figures import condition_color, new_figure

    unknown = [m for m in metrics if m not in SUMMARY_METRICS]
    if unknown or not summaries:
        raise DataError(f"plot_trajectories: unknown metrics {unknown} or no runs")
    ncols = min(3, len(metrics))
    nrows = int(np.ceil(len(metrics) / ncols))
    fig, axes = new_figure(width, height_mm=45.0 * nrows, nrows=nrows, ncols=ncols, squeeze=False)
    from matplotlib.ticker import MaxNLocator

    epochs = np.concatenate([np.asarray(s["epoch"]) for s in summaries.values()])
    for ax, metric in zip(axes.flat, metrics, strict=False):
        for label, summary in summaries.items():
            if metric not in summary:
                continue
            preset = str(summary.attrs.get("preset", label))
            values = summary[metric]
            if "n_mapped" in summary:  # epochs the run has not reached are not zeros
                values = values.where(summary["n_mapped"] > 0)
            ax.plot(summary["epoch"], values, marker="o", markersize=2.5,
                    color=condition_color(preset), label=label)  # fmt: skip
        ax.set_xlabel("Epoch")
        ax.set_xlim(epochs.min() - 0.5, epochs.max() + 0.5)  # every panel on one epoch axis
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(SUMMARY_METRICS[metric])
        if metric.startswith("fraction") or metric in ("symmetry", "osi"):
            ax.set_ylim(-0.02, 1.02)
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    axes.flat[0].legend(frameon=False, fontsize="small")
    return fig
