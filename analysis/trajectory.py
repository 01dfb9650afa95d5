"""RFs through training: the retina's RFs and their metrics at every saved epoch of a run.

A run trained with ``train.retina_snapshots: true`` keeps the weights of ``retina_1`` and
``retina_2`` after every epoch (and at its init, epoch 0) in ``snapshots/``; an RF of
``retina_2`` depends on nothing else. :func:`rf_trajectory` maps those RFs at each epoch
(:func:`analysis.rf.extract_rfs`) and measures them (:func:`analysis.metrics.rf_metrics`)::

    dims    epoch, channel, y, x
    vars    rf (epoch, channel, y, x), responsive, activation (epoch, channel),
            metrics (epoch, channel): osi, symmetry, rf_class, dog_r2 ...
            history (epoch): test_acc, train_loss ... (NaN at epoch 0)
            feedback diagnostics (epoch, layer), per feedback layer: alignment_deg (B vs
            W^T), principal_angle_max_rad (P vs the error's top subspace),
            error_variance_captured (P's share of the top-r error variance) ...
    attrs   run folder, preset, seed, layer, RF method and options

:func:`experiment_trajectories` does that for every run of an experiment that has begun
training (finished or not), and lists the runs not started yet, so that a long experiment
can be published as it goes.

:func:`trajectory_summary` reduces it to one value per epoch (responsive units only): mean
symmetry and OSI, the fraction center-surround and oriented, the number responsive, and the
alignment of the feedback into the retina (layer ``vvs_1``).
:func:`plot_trajectories` draws those curves for several runs side by side.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import xarray as xr

from analysis import stacking
from analysis.results import epochs_shown
from retina_raf import runs
from retina_raf.errors import DataError, RunError

SUMMARY_METRICS = {
    "symmetry": "Radial symmetry",
    "osi": "Orientation selectivity (OSI)",
    "fraction_center_surround": "Fraction center-surround",
    "fraction_oriented": "Fraction oriented",
    "n_responsive": "Responsive units",
    "test_acc": "Test accuracy",
    "alignment_deg": "B vs W$^T$ at vvs_1 (\u00b0)",
    "principal_angle_deg": "P vs top-r error subspace (\u00b0)",
    "error_variance_captured": "P's share of top-r error variance",
}
ALIGNMENT_LAYER = "vvs_1"  # the layer whose feedback reaches the retina


def rf_trajectory(
    run_dir: str | Path | runs.Run,
    layer: str = "retina_2",
    method: str = "gradient",
    *,
    epochs: Sequence[int] | None = None,
    seed: int = 0,
    **rf_options,
) -> xr.Dataset:
    """RFs of ``layer`` and their metrics at every retina snapshot of a run.

    Args:
        run_dir: a run folder trained with ``train.retina_snapshots: true``, finished or in
            flight, or the :class:`~retina_raf.runs.Run` that ``open_run`` made of it.
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
    from retina_raf.models import model_from_config

    if layer not in runs.SNAPSHOT_LAYERS:
        raise DataError(f"layer {layer!r}: snapshots hold only {', '.join(runs.SNAPSHOT_LAYERS)}")
    run = _opened(run_dir)  # RunError for a folder that is not a run
    run_dir, cfg = run.path, run.config
    snapshots = runs.retina_snapshots(run_dir)
    if not snapshots:
        raise RunError(f"{run_dir} has no retina snapshots (train with train.retina_snapshots)")
    # a run in flight saves an epoch's snapshot just before its history row: map only the
    # epochs the history (read when the run was opened) records, so each RF has its metrics
    recorded = [e for e in sorted(snapshots) if e <= run.epochs]
    wanted = recorded if epochs is None else list(epochs)
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
    # per epoch, and per epoch and feedback layer (the diagnostics of the learning rules)
    history = stacking.history_variables(run.history, dims=[("epoch",), ("epoch", "layer")])
    if history is not None:
        ds = ds.merge(history.reindex(epoch=ds["epoch"]), compat="override")
    ds.attrs.update({f"rf_{k}": v for k, v in rfs.attrs.items() if k != "run_dir"})
    ds.attrs.update({"run_dir": str(run_dir), "preset": cfg.preset, "seed": cfg.seed})
    return ds


def _opened(run_dir: str | Path | runs.Run) -> runs.Run:
    """The run itself, or its folder opened as it stands (finished or in flight)."""
    return run_dir if isinstance(run_dir, runs.Run) else runs.open_run(run_dir)


def _epoch_rfs(run_dir: Path, model, epoch: int, layer, method, seed, rf_options) -> xr.DataArray:
    """The RFs of one snapshot, cached in ``<run>/analysis/trajectory/`` under a key of the
    snapshot's bytes and the RF options: a growing run maps only its new epochs."""
    from analysis.results import cache_key
    from analysis.rf import extract_rfs
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


def final_method_agreement(
    run_dir: str | Path | runs.Run, layer: str = "retina_2", **rf_options
) -> xr.Dataset:
    """:func:`analysis.rf.method_agreement` (gradient, actmax, STA) at a run's last snapshot:
    whether the three RF methods tell the same story about its trained retina."""
    from analysis.rf import method_agreement
    from retina_raf.models import model_from_config

    run = _opened(run_dir)
    run_dir, cfg = run.path, run.config
    snapshots = runs.retina_snapshots(run_dir)
    if not snapshots:
        raise RunError(f"{run_dir} has no retina snapshots (train with train.retina_snapshots)")
    model = model_from_config(cfg.model).eval()
    model.load_state_dict(runs.load_retina_snapshot(run_dir, max(snapshots)), strict=False)
    common = {k: v for k, v in rf_options.items() if k in ("base", "gray_level", "seed")}
    agreement = method_agreement(model, layer, **common)
    return agreement.assign_attrs(agreement_epoch=max(snapshots))


def combine_trajectories(
    run_dirs: Sequence[str | Path | runs.Run],
    layer: str = "retina_2",
    method: str = "gradient",
    agreement: bool = False,
    **kwargs,
) -> xr.Dataset:
    """:func:`rf_trajectory` of several runs stacked along ``run`` (a results-style dataset).

    Run coordinates as in :mod:`analysis.results` (run_id, preset, rank, n_bn, seed, rule),
    ``finished`` (the run has its ``DONE``: a run still training has only the epochs it
    reached), ``being_trained`` (a process held the run's lock, :func:`retina_raf.runs.lock_holder`,
    when the dataset was built: an unfinished run without one has stopped, to resume later)
    and ``epochs_planned``, and ``config`` (run): each run's resolved config as YAML;
    runs with fewer channels (bottlenecks) or epochs are padded: ``present`` (run, channel)
    is False there, numbers NaN and ``rf_class`` "". ``agreement``: also the correlations
    of the gradient, actmax and STA RFs at each run's last epoch (``gradient_vs_actmax``
    ... over (run, channel); :func:`final_method_agreement`). Write it with
    :func:`analysis.results.write_results`, read it with :func:`analysis.results.open_results`.
    """
    from analysis.provenance import KIND_TRAJECTORIES

    if not run_dirs:
        raise RunError("no run folders given")

    def reduce(run: runs.Run) -> xr.Dataset:
        ds = rf_trajectory(run, layer, method, **kwargs)
        if agreement:
            check = final_method_agreement(run, layer, **kwargs)
            ds = ds.merge(check.drop_attrs(), compat="override")
            ds.attrs["agreement_epoch"] = check.attrs["agreement_epoch"]
        # which run it is: the run coordinates say that, per run
        return ds.drop_attrs(deep=False).assign_attrs(
            {k: v for k, v in ds.attrs.items() if k not in ("run_dir", "preset", "seed")}
        )

    def identity(run: runs.Run) -> dict:
        return {**stacking.run_coords(run), "finished": run.finished,
                "being_trained": runs.lock_holder(run.path) is not None,
                "epochs_planned": run.config.train.epochs}  # fmt: skip

    return stacking.stack_runs(run_dirs, reduce, kind=KIND_TRAJECTORIES, identity=identity,
                               require_finished=False)  # fmt: skip


def experiment_trajectories(
    experiment: str | Path,
    runs_dir: str | Path,
    layer: str = "retina_2",
    method: str = "gradient",
    earlier: xr.Dataset | None = None,
    **kwargs,
) -> xr.Dataset:
    """:func:`combine_trajectories` of every run of an experiment file that has finished an
    epoch (its folder under ``runs_dir`` has a retina snapshot after epoch 1 or later),
    finished or not; a run that has only its initial snapshot counts as not started (it has
    no history yet to stand beside its RFs).

    The runs not started yet are listed (run ids) in the ``missing_runs`` attribute, and the
    experiment's name in ``experiment``, so that the file accounts for every planned run.
    Runs in flight are read as they stand: each snapshot is written whole after its epoch.

    ``earlier``: the same experiment's trajectories as published before (a file read with
    :func:`analysis.results.open_results`): a run it holds whose folder in ``runs_dir`` is
    gone (e.g. with the machine that trained it), or was started again and has not yet
    passed the epoch the record reached, keeps its earlier record, with ``in_runs_dir``
    False (:func:`analysis.stacking.with_earlier_runs`; ``being_trained`` where a process
    trains the new folder; :func:`run_status` says which).

    Raises:
        RunError: no run of the experiment has a snapshot in ``runs_dir`` (or in ``earlier``).
    """
    from retina_raf.sweep import expand, load_experiment, run_dir

    exp = load_experiment(experiment)
    planned = expand(exp)
    folders = {run.run_id: run_dir(Path(runs_dir), run) for run in planned}
    started = [run for run in planned
               if max(runs.retina_snapshots(folders[run.run_id]), default=0) >= 1]  # fmt: skip
    reached_earlier = (
        {}
        if earlier is None
        else dict(zip(earlier["run_id"].values.astype(str), epochs_shown(earlier), strict=True))
    )
    # a folder started again (its machine replaced) that has not yet caught up with the
    # published record does not replace it: the record stays until the new run passes it
    behind = [run for run in started if max(runs.retina_snapshots(folders[run.run_id]))
              < reached_earlier.get(run.run_id, -1)]  # fmt: skip
    started = [run for run in started if run not in behind]
    kept = [run for run in planned if run not in started and run.run_id in reached_earlier]
    if not started and not kept:
        raise RunError(f"no run of {exp.name} in {runs_dir} has finished an epoch yet")
    ds = None
    if started:
        ds = combine_trajectories([folders[run.run_id] for run in started], layer, method,
                                  **kwargs)  # fmt: skip
        # what the experiment asks for, not what a run's folder was last started with
        ds = ds.assign_coords(
            epochs_planned=("run", [run.config().train.epochs for run in started])
        )
    if kept:
        ds = stacking.with_earlier_runs(ds, earlier, keep=[run.run_id for run in kept],
                                        order=[run.run_id for run in planned])  # fmt: skip
        # a kept run is trained only where its folder, started again, is held by a process
        being_trained = [
            bool(held) if here else runs.lock_holder(folders[run_id]) is not None
            for run_id, here, held in zip(ds["run_id"].values.astype(str),
                                          ds["in_runs_dir"].values, ds["being_trained"].values,
                                          strict=True)
        ]  # fmt: skip
        ds = ds.assign_coords(being_trained=("run", being_trained))
    ds.attrs.update(
        experiment=exp.name,
        missing_runs=" ".join(
            run.run_id for run in planned if run not in started and run not in kept
        ),  # fmt: skip
    )
    return ds


def trajectory_summary(trajectory: xr.Dataset) -> xr.Dataset:
    """Per-epoch summary of a :func:`rf_trajectory` (or of :func:`combine_trajectories`, then
    per run) over the responsive units.

    Returns a Dataset over ``epoch`` (and ``run``) with ``symmetry`` and ``osi`` (means over
    responsive units), ``fraction_center_surround`` and ``fraction_oriented`` (of responsive
    units), ``n_responsive``, ``n_mapped`` (channels mapped at that epoch; 0 for epochs a
    run has not reached) and, where the run's history has them, ``test_acc`` and the
    diagnostics of the feedback into the retina (layer ``vvs_1``): ``alignment_deg``,
    ``principal_angle_deg`` and ``error_variance_captured``.
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
            # channels mapped at that epoch: 0 where a run has no snapshot (padding, class "")
            "n_mapped": (trajectory["rf_class"] != "").sum("channel"),
        }
    )
    if "test_acc" in trajectory:
        out["test_acc"] = trajectory["test_acc"]
    has_layer = "layer" in trajectory.dims and ALIGNMENT_LAYER in trajectory["layer"].values
    if has_layer:
        at = trajectory.sel(layer=ALIGNMENT_LAYER)
        for name in ("alignment_deg", "error_variance_captured"):
            if name in at:
                out[name] = at[name].drop_vars("layer")
        if "principal_angle_max_rad" in at:
            out["principal_angle_deg"] = np.degrees(at["principal_angle_max_rad"]).drop_vars(
                "layer"
            )
    out.attrs = {k: trajectory.attrs[k] for k in ("preset", "seed", "run_dir")
                 if k in trajectory.attrs}  # fmt: skip
    return out


def run_status(trajectories: xr.Dataset, run: int, epoch: int) -> str:
    """``finished``, or, with the epoch reached of the epochs planned, ``training`` (a process
    was training it when the file was written) or ``stopped`` (none was: it resumes from its
    checkpoint when started again), for one run of :func:`combine_trajectories`. A record
    kept from an earlier file (``in_runs_dir`` False: no checkpoint) is ``stopped (E of N),
    no checkpoint``, or ``restarted (first attempt: E of N)`` while its folder, started again
    from scratch, is being trained. Files written before ``being_trained`` was recorded say
    ``training`` for every unfinished run."""
    if "finished" not in trajectories.coords or bool(trajectories["finished"].values[run]):
        return "finished"
    planned = int(trajectories["epochs_planned"].values[run])
    if "in_runs_dir" in trajectories.coords and not bool(trajectories["in_runs_dir"].values[run]):
        if bool(trajectories["being_trained"].values[run]):
            return f"restarted (first attempt: {epoch} of {planned})"
        return f"stopped ({epoch} of {planned}), no checkpoint"
    if "being_trained" in trajectories.coords and not bool(
        trajectories["being_trained"].values[run]
    ):
        return f"stopped ({epoch} of {planned})"
    return f"training ({epoch} of {planned})"


def missing_runs(trajectories: xr.Dataset) -> list[tuple[str, str, int | None]]:
    """(run id, preset, seed) of the runs of the experiment not in the file (not started),
    from its ``missing_runs`` attribute (:func:`experiment_trajectories`)."""
    from retina_raf.runs import parse_run_id

    ids = str(trajectories.attrs.get("missing_runs", "")).split()
    return [(run_id, *parse_run_id(run_id)) for run_id in ids]


def keep_rf_maps(trajectories: xr.Dataset, epochs: Sequence[int]) -> xr.Dataset:
    """The trajectories with the RF maps (``rf``) kept only at ``epochs`` and at each run's
    last epoch, NaN elsewhere; every metric stays at every epoch.

    The maps are most of a trajectories file (about 50 kB per run and epoch, compressed),
    while the findings, curves and tests read only the metrics: a long experiment publishes
    its maps at its milestones (the montages) and where each run stands. The attribute
    ``rf_maps_kept`` lists the epochs kept besides each run's last.
    """
    last = xr.DataArray(epochs_shown(trajectories), dims="run")
    kept = trajectories["epoch"].isin(list(epochs)) | (trajectories["epoch"] == last)
    out = trajectories.copy()
    out["rf"] = trajectories["rf"].where(kept)
    out.attrs["rf_maps_kept"] = " ".join(str(int(e)) for e in sorted(set(epochs)))
    return out


def findings_table(
    trajectories: xr.Dataset, epoch: int | None = None, not_started: bool = True
) -> str:
    """A Markdown table of the RFs of every run at one epoch (default: each run's last).

    Columns: condition, seed, status (:func:`run_status`: finished; training or stopped, with
    the epoch reached of those planned), epoch, test accuracy, responsive units (of the run's
    channels), mean symmetry and OSI over them, fractions center-surround and oriented, and,
    where any run has them, the feedback into the retina at that epoch: the angle between B and
    W^T at ``vvs_1``, P's share of the top-r error variance and P's largest principal angle to
    the top-r eigenvectors (a share near 1 can hide a P that misses one of them: the angle says
    so; "\u2013" for backprop, whose feedback is W^T).
    A run that has not reached ``epoch`` is shown at its last; the runs of the experiment
    not started yet (``missing_runs``) close the table, so that it accounts for every run
    (unless ``not_started`` is False). A value a run does not have at that epoch (test
    accuracy of the untrained network, alignment under backprop) is "\u2013".
    The findings pages quote this table; ``retina-raf findings FILE`` prints it.
    """
    summary = trajectory_summary(trajectories)
    alignment = [m for m in ("alignment_deg", "error_variance_captured", "principal_angle_deg")
                 if m in summary]  # fmt: skip
    header = ["condition", "seed", "status", "epoch", "test acc.", "responsive units",
              "symmetry", "OSI", "center-surround", "oriented"]  # fmt: skip
    header += [{"alignment_deg": f"B vs W^T ({ALIGNMENT_LAYER}, \u00b0)",
                "error_variance_captured": "P's share of top-r variance",
                "principal_angle_deg": "P vs top-r subspace (\u00b0)"}[m]
               for m in alignment]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    shown, last = epochs_shown(trajectories, epoch), epochs_shown(trajectories)
    for run in range(trajectories.sizes["run"]):
        at = int(shown[run])
        row = summary.isel(run=run).sel(epoch=at)
        channels = int(trajectories["present"].isel(run=run).sum())
        acc = float(row["test_acc"]) if "test_acc" in row else float("nan")
        acc_text = f"{acc:.3f}" if np.isfinite(acc) else "\u2013"  # epoch 0: not trained
        cells = [
            str(trajectories["preset"].values[run]),
            str(int(trajectories["seed"].values[run])),
            run_status(trajectories, run, int(last[run])),
            str(at),
            acc_text,
            f"{int(row['n_responsive'])} of {channels}",
            f"{float(row['symmetry']):.2f}",
            f"{float(row['osi']):.2f}",
            f"{float(row['fraction_center_surround']):.2f}",
            f"{float(row['fraction_oriented']):.2f}",
        ]
        for metric in alignment:
            value = float(row[metric])
            digits = 2 if metric == "error_variance_captured" else 1
            cells.append(f"{value:.{digits}f}" if np.isfinite(value) else "\u2013")
        lines.append("| " + " | ".join(cells) + " |")
    for _, preset, seed in missing_runs(trajectories) if not_started else []:
        blank = ["\u2013"] * (len(header) - 3)
        lines.append("| " + " | ".join([preset, str(seed), "not started", *blank]) + " |")
    return "\n".join(lines)


def milestone_tables(trajectories: xr.Dataset, epochs: Sequence[int]) -> str:
    """:func:`findings_table` at each run's last epoch (with the runs not started), then at
    each of ``epochs`` that some run has reached (a run short of it is shown at its last; the
    runs not started are not repeated), each under a heading."""
    reached = trajectory_summary(trajectories)["n_mapped"].max("run") > 0
    reached = {int(e) for e in reached["epoch"].values[reached.values]}
    parts = ["At each run's last epoch:", "", findings_table(trajectories)]
    for epoch in sorted(set(epochs) & reached):
        parts += ["", f"At epoch {epoch} (a run that has not reached it: at its last):", ""]
        parts.append(findings_table(trajectories, epoch, not_started=False))
    return "\n".join(parts)


PLATEAU_METRICS = ("symmetry", "osi", "fraction_center_surround")


def _drift(values: xr.DataArray) -> float:
    """|slope| x (epochs spanned) of a least-squares line through a per-epoch metric (NaN
    epochs left out; NaN with fewer than two)."""
    known = values.dropna("epoch")
    if known.sizes["epoch"] < 2:
        return np.nan
    epochs = known["epoch"].values.astype(float)
    slope = np.polyfit(epochs, known.values.astype(float), 1)[0]
    return float(abs(slope) * (epochs[-1] - epochs[0]))


def plateau_table(
    trajectories: xr.Dataset,
    reference: xr.Dataset,
    window: int = 20,
    metrics: Sequence[str] = PLATEAU_METRICS,
) -> str:
    """Whether each run's RF metrics have stopped moving: a Markdown table.

    A run has flattened when every metric (its per-epoch value over responsive units,
    :func:`trajectory_summary`) drifted over the run's last ``window`` epochs by less than
    the spread between seeds (s.d., ddof 1) of the same condition in ``reference``, RF
    results of more seeds (e.g. a shorter experiment's): then training on would not change
    the metric by more than a different seed does. The drift is the change along a
    least-squares line through the window (slope x (window - 1)), not the range: a unit
    whose class flickers for one epoch widens the range without moving the metric, and the
    range of a settled run is its epoch-to-epoch noise. The range is shown beside it. A run
    with fewer than ``window`` epochs, or whose condition ``reference`` lacks (or has with
    one seed), is not judged ("–").

    Args:
        trajectories: :func:`combine_trajectories` (runs finished or still training).
        reference: single-method RF results (:func:`analysis.results.load_results`).
        window: epochs over which the movement is measured (>= 2).
        metrics: per-unit metrics of both files, or ``fraction_center_surround``.

    Returns:
        One row per run: condition, seed, the epochs of the window, per metric
        "drift (range) / s.d." and a verdict (flat, moving, or –).
    """
    from analysis.stats import summary_table

    if int(window) < 2:
        raise DataError(f"the plateau window must be at least 2 epochs, not {window}")
    unknown = [m for m in metrics if m not in PLATEAU_METRICS]
    if unknown:
        raise DataError(f"no plateau metric {unknown}; choose from {', '.join(PLATEAU_METRICS)}")
    summary = trajectory_summary(trajectories)
    # s.d. over seeds per condition (ddof 1; NaN with one seed)
    per_condition = summary_table(reference, metrics).set_index("condition")
    spread = {(preset, metric): float(row[f"{metric}_sd"])
              for preset, row in per_condition.iterrows() for metric in metrics}  # fmt: skip
    names = {"symmetry": "symmetry", "osi": "OSI", "fraction_center_surround": "center-surround"}
    header = ["condition", "seed", "epochs",
              *(f"{names[m]}: drift (range) / s.d." for m in metrics), "verdict"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    last_epochs = epochs_shown(trajectories)
    for run in range(trajectories.sizes["run"]):
        preset = str(trajectories["preset"].values[run])
        last = int(last_epochs[run])
        cells = [preset, str(int(trajectories["seed"].values[run]))]
        if last < window:
            lines.append("| " + " | ".join(cells + [f"{last} (< {window})"]
                                           + ["–"] * (len(metrics) + 1)) + " |")  # fmt: skip
            continue
        cells.append(f"{last - window + 1}-{last}")
        flat = []
        for metric in metrics:
            values = summary[metric].isel(run=run).sel(epoch=slice(last - window + 1, last))
            drift, moved = _drift(values), float(values.max() - values.min())
            sd = spread.get((preset, metric), np.nan)
            cells.append(
                f"{drift:.3f} ({moved:.3f}) / " + (f"{sd:.3f}" if np.isfinite(sd) else "–")
            )
            flat.append(drift < sd or moved == 0)  # NaN (nothing measured) is not flat
        judged = all(np.isfinite(spread.get((preset, m), np.nan)) for m in metrics)
        cells.append(("flat" if all(flat) else "moving") if judged else "–")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_trajectories(
    summaries: dict[str, xr.Dataset],
    metrics: Sequence[str] | None = None,
    width: str | float = "double",
):
    """One panel per metric, one line per run: how the RFs change with training.

    Args:
        summaries: label -> :func:`trajectory_summary` of a run.
        metrics: keys of ``SUMMARY_METRICS`` to draw (default: those any run has; the
            alignment panels only where a run has feedback diagnostics).
        width: journal width of the figure.

    Returns the figure.
    """
    from analysis.figures import condition_color, new_figure

    if metrics is None:
        metrics = [m for m in SUMMARY_METRICS
                   if any(m in s and s[m].notnull().any() for s in summaries.values())]  # fmt: skip

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
        if metric.startswith("fraction") or metric in (
            "symmetry",
            "osi",
            "error_variance_captured",
        ):
            ax.set_ylim(-0.02, 1.02)
        elif metric.endswith("_deg"):
            ax.set_ylim(0, 92)  # 90 degrees: orthogonal, no alignment at all
    for ax in list(axes.flat)[len(metrics) :]:
        ax.set_visible(False)
    axes.flat[0].legend(frameon=False, fontsize="small")
    return fig
