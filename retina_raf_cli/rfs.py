"""``retina-raf rfs``, ``metrics``, ``trajectory``, ``feedback-rfs`` and ``results``: map and
measure the receptive fields of trained runs (and of the readout their retina learns
through), and combine runs into one results file."""

from __future__ import annotations

import click

from retina_raf_cli.options import (
    RF_METHODS_GRADIENT_FIRST,
    base_options,
    check_runs_or_experiment,
    device_option,
    emit,
    experiment_options,
    keep_earlier_option,
    markdown_out_option,
    method_option,
    netcdf_path,
    open_earlier,
    renamed,
    report_kept,
    writable,
)


# ------------------------------------------------------------------------------ rfs
@click.command("rfs", short_help="Map the RFs of one layer of a trained run.")
@click.argument("run_dir", type=click.Path(path_type=str))
@click.option("--layer", default="retina_2", show_default=True, help="Layer whose RFs to map.")
@method_option(
    "Input gradient, activation maximization, or white-noise STA (docs/design.md#rf-extraction).",
    default="actmax",
    choices=RF_METHODS_GRADIENT_FIRST,
)
@click.option(
    "--out",
    callback=writable,
    default=None,
    type=click.Path(dir_okay=False, path_type=str),
    help="NetCDF file (default: RUN_DIR/rfs_<layer>_<method>.nc); a PNG montage goes beside it.",
)
@click.option("--channels", default=None, help="Comma-separated channel indices (default: all).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1))
@device_option(default="cpu")
# the method's own settings: None takes analysis.rf.METHOD_OPTIONS's default
@click.option("--base", default=None, type=click.Choice(["zeros", "gray"]), help="Base image.")
@click.option("--gray-level", default=None, type=float, help="Pixel value of the gray base.")
@click.option("--n-starts", default=None, type=click.IntRange(1), help="actmax: random starts.")
@click.option("--start", default=None, type=click.Choice(["noise", "zeros"]), help="actmax.")
@click.option("--steps", "n_steps", default=None, type=click.IntRange(1), help="actmax: steps.")
@click.option("--step-size", default=None, type=click.FloatRange(0, min_open=True), help="actmax.")
@click.option(
    "--norm",
    default=None,
    type=click.FloatRange(0, min_open=True),
    help="actmax: L2 norm of the input perturbation.",
)
@click.option("--n-samples", default=None, type=click.IntRange(2), help="sta: noise images.")
@click.option("--noise-std", default=None, type=click.FloatRange(0, min_open=True), help="sta.")
@click.option("--batch-size", default=None, type=click.IntRange(1), help="Images per pass.")
@click.option("--no-montage", is_flag=True, help="Skip the PNG montage.")
def rfs_command(run_dir, layer, method, out, channels, seed, device, no_montage, **options):
    """Extract the RFs of one layer of the trained run RUN_DIR into NetCDF and a PNG montage.

    Options that do not belong to the method (e.g. --n-starts with --method gradient) are
    rejected; omitted options take the defaults of analysis.rf.METHOD_OPTIONS.
    """
    from pathlib import Path

    from analysis.figures.montage import save_rf_montage
    from analysis.rf import extract_rfs
    from retina_raf.io import write_netcdf

    options = {name: value for name, value in options.items() if value is not None}
    channel_list = None
    if channels is not None:
        try:
            channel_list = [int(c) for c in channels.split(",") if c.strip()]
        except ValueError:
            raise click.BadParameter(
                f"{channels!r} is not a comma-separated list of integers", param_hint="--channels"
            ) from None
    out = Path(netcdf_path(out)) if out else Path(run_dir) / f"rfs_{layer}_{method}.nc"
    rfs = extract_rfs(
        run_dir, layer, method, channels=channel_list, seed=seed, device=device, **options
    )
    write_netcdf(rfs, out)
    click.echo(f"wrote {out} ({int(rfs.responsive.sum())}/{rfs.sizes['channel']} responsive)")
    if not no_montage:
        png = save_rf_montage(rfs, out.with_suffix(".png"))
        click.echo(f"wrote {png}")


# -------------------------------------------------------------------------- metrics
@click.command("metrics", short_help="Shape metrics and classes of RFs.")
@click.argument("rfs_file", metavar="RFS.nc", type=click.Path(path_type=str))
@click.option(
    "--out",
    callback=writable,
    required=True,
    type=click.Path(dir_okay=False, path_type=str),
    help="Output NetCDF of the per-RF metrics (written atomically).",
)
def metrics_command(rfs_file: str, out: str) -> None:
    """Shape metrics and rf_class of every RF in RFS.nc (its DataArray "rf").

    The metrics: docs/design.md#rf-metrics.

    Prints one line per condition (the preset, else the whole file): fraction
    center-surround and oriented, mean symmetry and mean OSI over the responsive RFs.
    """
    from pathlib import Path

    from analysis.metrics import load_rfs, rf_metrics, summarize
    from analysis.results import write_results

    netcdf_path(out)
    if Path(out).resolve() == Path(rfs_file).resolve():
        raise click.BadParameter("must differ from the input RFs file", param_hint="--out")
    rfs = load_rfs(rfs_file)
    metrics = rf_metrics(rfs, progress=True)
    metrics.attrs["metrics_input"] = str(rfs_file)
    write_results(metrics, out)  # CF: rf_class as flag_values / flag_meanings
    for line in summarize(metrics, default_condition=Path(rfs_file).stem):
        click.echo(line)
    click.echo(f"wrote {out}")


# ----------------------------------------------------------------------- trajectory
@click.command("trajectory", short_help="RFs at every retina snapshot of runs.")
@click.argument("runs", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=str),
    callback=writable,
    help="Output .nc file.",
)
@experiment_options(
    "Instead of RUNS: every run of this experiment file that has begun training (finished or "
    "not) under --runs-dir; the runs not started are listed in the file."
)
@click.option(
    "--layer", default="retina_2", show_default=True, type=click.Choice(["retina_1", "retina_2"])
)
@method_option("RF method at every epoch.", default="gradient", choices=RF_METHODS_GRADIENT_FIRST)
@base_options("Base image of the RF maps (gray: for runs trained on unstandardized images).")
@click.option(
    "--agreement/--no-agreement",
    default=False,
    help="Also correlate the gradient, actmax and STA RFs at each run's last epoch.",
)
@click.option(
    "--rf-maps-at",
    "rf_maps_at",
    multiple=True,
    type=click.IntRange(0),
    help="Keep the RF maps in the file only at this epoch (repeat it) and at each run's last; "
    "the metrics stay at every epoch [default: maps at every epoch].",
)
@keep_earlier_option("--out")
def trajectory_cmd(
    runs,
    out,
    experiment,
    runs_dir,
    layer,
    method,
    base,
    gray_level,
    agreement,
    rf_maps_at,
    keep_earlier,
):
    """RFs through training: map and measure the RFs of LAYER at every retina snapshot
    (runs trained with train.retina_snapshots=true) of each RUN folder, or of every started
    run of an --experiment, into one NetCDF.

    Prints, per run and epoch, the responsive units, mean symmetry and OSI and the fraction
    center-surround.
    """
    from analysis.results import write_results
    from analysis.stacking import with_earlier_runs
    from analysis.trajectory import (
        combine_trajectories,
        experiment_trajectories,
        keep_rf_maps,
        trajectory_summary,
    )

    check_runs_or_experiment(runs, experiment, runs_dir)
    netcdf_path(out)
    earlier = open_earlier(out, keep_earlier)
    options = dict(agreement=agreement, base=base, gray_level=gray_level)
    if experiment:
        ds = experiment_trajectories(experiment, runs_dir, layer, method, earlier=earlier,
                                     **options)  # fmt: skip
    else:
        ds = combine_trajectories(list(runs), layer, method, **options)
        if earlier is not None:
            ds = with_earlier_runs(ds, earlier)
    if rf_maps_at:
        ds = keep_rf_maps(ds, rf_maps_at)
    report_kept(ds, out)
    write_results(ds, out)
    summary = trajectory_summary(ds)
    for run in range(ds.sizes["run"]):
        run_id = str(ds["run_id"].values[run])
        for epoch in summary["epoch"].values:
            row = summary.isel(run=run).sel(epoch=epoch)
            if int(row["n_mapped"]) == 0:
                continue  # an epoch this run has not reached (padding)
            click.echo(f"{run_id} epoch {int(epoch):>3}: {int(row['n_responsive'])} responsive, "
                       f"symmetry {float(row['symmetry']):.2f}, osi {float(row['osi']):.2f}, "
                       f"center-surround {float(row['fraction_center_surround']):.2f}")  # fmt: skip
        if agreement:
            pairs = [v for v in ds.data_vars if "_vs_" in str(v)]
            text = ", ".join(f"{p} {float(ds[p].isel(run=run).mean()):.2f}" for p in pairs)
            click.echo(f"{run_id} RF methods at the last epoch (mean correlation): {text}")
    click.echo(f"wrote {out}")


# --------------------------------------------------------------------- feedback-rfs
@click.command("feedback-rfs", short_help="RFs of the readout the retina learns through.")
@click.argument("runs", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--layer",
    default="vvs_1",
    show_default=True,
    help="The layer whose feedback trains the layers below it.",
)
@experiment_options(
    "Instead of RUNS: the runs of this experiment file under --runs-dir that have a "
    "checkpoint (dRAF runs left out: their retina learns through the direct feedback)."
)
@method_option("RF method (docs/design.md#rf-extraction).", default="actmax",
               choices=RF_METHODS_GRADIENT_FIRST)  # fmt: skip
@base_options("Base image of the RF maps.")
@click.option(
    "--results",
    "results_path",
    callback=writable,
    default=None,
    type=click.Path(dir_okay=False, path_type=str),
    help="Also write the RFs and their metrics to this NetCDF file.",
)
@click.option(
    "--figures",
    callback=writable,
    default=None,
    type=click.Path(file_okay=False, path_type=str),
    help="Also draw each run's readout RFs into this folder (readout_<run id>.png).",
)
@keep_earlier_option("--results")
@markdown_out_option("the table")
def feedback_rfs_cmd(
    runs,
    layer,
    experiment,
    runs_dir,
    method,
    base,
    gray_level,
    results_path,
    figures,
    out,
    keep_earlier,
):
    """RFs of the readout through which LAYER's feedback trains the layers below it. A RAF
    layer sends them conv2d_input(Q, P delta): the gradient of <P delta, z> for the readout
    z = conv2d(h, Q) of its input h, so the retina learns as if read out by z's r units
    (backprop: Q = W, the layer's pre-activation). For each RUN (finished or in flight),
    from its checkpoint: the RFs of z's center units and their metrics. A Markdown table."""
    from pathlib import Path

    from analysis.feedback_readout import (
        experiment_runs_with_readout,
        readout_dataset,
        readout_table,
        with_earlier_readouts,
    )
    from retina_raf.errors import DataError

    check_runs_or_experiment(runs, experiment, runs_dir)
    if results_path is not None:
        netcdf_path(results_path, "--results")
    if keep_earlier and results_path is None:
        raise click.UsageError("--keep-earlier needs --results (the file whose runs to keep)")
    earlier = open_earlier(results_path, keep_earlier) if results_path else None
    planned = None
    if experiment:
        from retina_raf.sweep import expand, load_experiment

        planned = [run.run_id for run in expand(load_experiment(experiment))]
        runs = experiment_runs_with_readout(experiment, runs_dir, layer)
        if not runs and earlier is None:
            raise DataError(f"no run of {experiment} in {runs_dir} has a checkpoint yet")
    rf_options = {"base": base, "gray_level": gray_level} if base == "gray" else {"base": base}
    readout = readout_dataset(list(runs), layer, method, **rf_options) if runs else None
    if earlier is not None:
        readout = with_earlier_readouts(readout, earlier, planned)
        report_kept(readout, results_path)
    if results_path is not None:
        from analysis.results import write_results

        write_results(readout, results_path)
    if figures is not None:
        from analysis.figures import save_readout_montages

        for path in save_readout_montages(readout, Path(figures)):
            click.echo(f"wrote {path}", err=True)
    emit(readout_table(readout), out)


# -------------------------------------------------------------------------- results
@click.command("results", short_help="Combine run folders into one results file.")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=str),
    callback=writable,
    help="Output .nc file.",
)
@click.option("--layer", default="retina_2", show_default=True, help="Layer whose RFs to map.")
@method_option(
    "RF method; repeat it to store several in one file (a `method` dimension, and "
    "their per-unit correlations).",
    default=("actmax",),
    multiple=True,
)
@click.option(
    "--rf-seed",
    default=None,
    type=click.IntRange(0),
    help="Seed of the RF mapping's random starts (not a training seed).  [default: 0]",
)
@click.option("--seed", default=None, type=click.IntRange(0), hidden=True,
              help="Deprecated name of --rf-seed.")  # fmt: skip
@base_options(
    "Base image of the RF maps (gray: for runs trained on unstandardized images, at "
    "--gray-level, e.g. 0.4734, grayscale CIFAR-10's mean pixel in [0, 1])."
)
@device_option()
def results_cmd(runs, out, layer, methods, rf_seed, seed, base, gray_level, device):
    """Combine run folders (or folders of runs) into one results dataset (NetCDF).

    Maps the RFs of LAYER in every finished run (with DONE), measures them, reads each
    history and stacks everything along a `run` dimension with coordinates preset, rank,
    n_bn, seed, rule (each an index: ds.sel(preset="raf-r4")). Every run is checked before
    any RF is mapped; cached analyses are reused only for the same weights.
    """
    from analysis.results import combine_methods, find_runs, write_results

    netcdf_path(out)
    seed = renamed(seed, "--seed", rf_seed, "--rf-seed") or 0
    methods = list(dict.fromkeys(methods))
    run_dirs = [run for root in runs for run in find_runs(root)]
    if not run_dirs:
        raise click.ClickException(f"no finished run folders (with DONE) under {runs[0]}")
    rf_options = {"base": base, "gray_level": gray_level} if base == "gray" else {}
    ds = combine_methods(run_dirs, layer, methods, seed=seed, device=device, **rf_options)
    path = write_results(ds, out)
    n_runs = ds.sizes["run"]
    click.echo(f"wrote {path}: {n_runs} run{'s' if n_runs != 1 else ''}, {layer} RFs by "
               f"{', '.join(methods)}")  # fmt: skip
    for name in [v for v in ds.data_vars if "_vs_" in str(v)]:
        click.echo(f"{name}: median per-unit correlation {float(ds[name].median()):.2f}")
