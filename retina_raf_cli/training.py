"""``retina-raf train``, ``sweep``, ``kp-decay`` and ``error-subspace``: train runs and
experiments, and ask what training did to RAF's feedback (Kolen-Pollack's Q, Oja's P)."""

from __future__ import annotations

import os

import click

from retina_raf_cli.options import (
    base_options,
    check_runs_or_experiment,
    data_root_option,
    device_option,
    emit,
    experiment_options,
    history_option,
    markdown_out_option,
    method_option,
    netcdf_path,
    renamed,
    writable,
)


# ---------------------------------------------------------------------------- train
@click.command("train", short_help="Train (or resume) one run into its folder.")
@click.option(
    "--preset",
    default=None,
    help="bp, bp-bottleneck-<k>, raf-r<k>, raf-pca-r<k>, raf-aligned-r<k>, "
    "draf-bottleneck-<k> or raf (docs/design.md#model).",
)
@click.option(
    "--config",
    "config_file",
    default=None,
    type=click.Path(path_type=str),
    help="YAML with any run settings (preset, seed, model, train, data), e.g. a run's "
    "config.yaml; its model.layer_rule / layer_rank replace the preset's; options override it.",
)
@click.option("--seed", default=None, type=click.IntRange(0, 2**31 - 1), help="Default: 0.")
@click.option("--epochs", default=None, type=click.IntRange(1), help="Default: 120 (paper).")
@click.option(
    "--data",
    default=None,
    type=click.Path(path_type=str),
    help="Data set name (cifar10-gray, cifar10; see --data-root), CIFAR-10 .npz or "
    "cifar-10-batches-py folder (default: the embedded sample).",
)
@data_root_option
@click.option(
    "--out",
    callback=writable,
    default="runs",
    show_default=True,
    type=click.Path(path_type=str),
    help="Parent folder of run folders.",
)
@click.option(
    "--name",
    default=None,
    help="Run folder name (default: the run id, <preset>-s<seed>[-<settings hash>]).",
)
@device_option("Default: cuda when available.", choices=("auto", "cpu", "cuda"))
@click.option("--amp", is_flag=True, help="bf16 autocast (CUDA or CPU).")
@click.option(
    "--unconstrained-rule",
    default=None,
    type=click.Choice(["raf", "bp"]),
    help="Rule of the layers the preset leaves unconstrained: RAF at full rank (default) "
    "or backprop.",
)
@click.option("--others", default=None, type=click.Choice(["raf", "bp"]), hidden=True,
              help="Deprecated name of --unconstrained-rule.")  # fmt: skip
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any config field, e.g. --set train.batch_size=128 --set n_bn=8.",
)
@click.option("--config-only", is_flag=True, help="Print the resolved config and exit.")
def train_cmd(
    preset,
    config_file,
    seed,
    epochs,
    data,
    out,
    name,
    device,
    amp,
    unconstrained_rule,
    others,
    sets,
    config_only,
):
    """Train one run (or resume it, or skip it when finished) into OUT/<run id>/.

    The run id is <preset>-s<seed>, plus a hash of the settings that differ from the
    preset's (the epochs, device, data path, threads, progress and checkpoint_every excepted:
    a run asked for more epochs is continued). SIGTERM stops at the next batch with a
    checkpoint and exit status 143; the same command resumes.
    """
    from retina_raf.config import dump_yaml
    from retina_raf.train import config_from_cli, train

    others = renamed(others, "--others", unconstrained_rule, "--unconstrained-rule") or "raf"
    cfg = config_from_cli(preset, seed, epochs, data, device, amp, others, sets, config_file)
    if config_only:
        click.echo(dump_yaml(cfg), nl=False)
        return
    run_dir = train(cfg, out, name=name, log=lambda msg: click.echo(msg, err=True))
    click.echo(str(run_dir))


# ---------------------------------------------------------------------------- sweep
@click.command("sweep", short_help="Train, inspect or collect an experiment.")
@click.argument("file", type=click.Path(path_type=str))
@click.option(
    "--executor",
    default="local",
    show_default=True,
    type=click.Choice(["local", "slurm"]),
    help="local: one process per visible GPU, or sequential on the CPU; "
    "slurm: one job per run (job arrays) through submitit.",
)
@click.option("--dry-run", is_flag=True, help="List the runs and their states; train nothing.")
@click.option(
    "--collect", is_flag=True, help="Combine the finished runs into one dataset for the notebooks."
)
@click.option(
    "--out",
    callback=writable,
    default=None,
    type=click.Path(path_type=str),
    help="Output folder (default: the file's `out`, else runs/<name>).",
)
@click.option(
    "--data",
    default=None,
    type=click.Path(path_type=str),
    help="Image data set of every run: a name (cifar10-gray, cifar10; see --data-root) or a "
    "path (not part of run ids).",
)
@data_root_option
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override a setting of every run (changes the run ids).",
)
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(1),
    help="local: parallel worker processes (default: one per visible GPU, or 1).",
)
@click.option("--partition", default=None, help="slurm: partition.")
@click.option("--time-min", default=None, type=click.IntRange(1), help="slurm: minutes per job.")
@click.option("--gpus-per-job", default=None, type=click.IntRange(0), help="slurm: GPUs per job.")
@click.option(
    "--slurm",
    "slurm_options",
    multiple=True,
    metavar="KEY=VALUE",
    help="slurm: any other option, e.g. --slurm account=lab --slurm mail-type=END.",
)
@click.option("--no-wait", is_flag=True, help="slurm: submit and return without waiting.")
@click.option(
    "--seeds",
    default=None,
    metavar="N|LIST",
    help="Seeds to run in place of the file's: N (0..N-1) or a comma list (0,3,4; "
    "'0,' for seed 0 alone).",
)
@click.option(
    "--only",
    default=None,
    metavar="LIST",
    help="Train (or, with --dry-run, list) only the runs of these conditions, a comma list of "
    "the names --dry-run shows (raf-r4 for rank 4 over raf-r2); the others are left as they "
    "are, e.g. a run resting at a plateau while the rest of the queue trains.",
)
@click.option(
    "--layer", default="retina_2", show_default=True, help="--collect: RFs of this layer."
)
@method_option(
    "--collect: RF method; repeat it to store several in one file.",
    default=("actmax",),
    multiple=True,
)
@click.option(
    "--results",
    "results_path",
    callback=writable,
    default=None,
    type=click.Path(path_type=str),
    help="--collect: the results file [default: OUT/results_<layer>_<method>.nc].",
)
@base_options(
    "--collect: base image of the RF maps (gray: for runs trained on unstandardized "
    "images, at --gray-level, e.g. 0.4734, grayscale CIFAR-10's mean pixel in [0, 1]).",
    "--collect.",
)
@device_option("--collect.")
def sweep_command(
    file,
    executor,
    dry_run,
    collect,
    out,
    data,
    sets,
    workers,
    partition,
    time_min,
    gpus_per_job,
    slurm_options,
    no_wait,
    seeds,
    only,
    layer,
    methods,
    results_path,
    base,
    gray_level,
    device,
):
    """Train every run of the experiment FILE (presets x ranks x grid x seeds) that is not
    finished: finished runs are skipped, interrupted ones resume, the rest start.

    --dry-run lists the runs and their states; --collect combines the finished runs into
    OUT/results_<layer>_<method>.nc or --results (RFs, metrics, histories; the unfinished
    runs listed in its missing_runs attribute) for the notebooks, or, for the Fig. 3
    networks (model.arch mlp, vgg, vit), OUT/results_accuracy.nc or --results (test
    accuracy by rule, constrained layer, rank, d and seed; --layer, --method, --base and
    --device do not apply)."""
    from pathlib import Path

    from retina_raf import sweep
    from retina_raf.errors import RunError
    from retina_raf.sweep import load_experiment, update_experiment

    named = {"partition": partition, "time_min": time_min, "gpus_per_job": gpus_per_job}
    slurm_options = [f"{k}={v}" for k, v in named.items() if v is not None] + list(slurm_options)
    exp = update_experiment(load_experiment(file), data, sets, slurm_options, seeds)
    out = Path(out or exp.out or Path("runs") / exp.name)
    conditions = [name.strip() for name in (only or "").split(",") if name.strip()]
    if only is not None and not conditions:
        raise click.BadParameter("expects a comma list of conditions", param_hint="--only")
    if collect and conditions:
        raise click.BadParameter(
            "selects runs to train; --collect combines every finished run", param_hint="--only"
        )
    if dry_run:
        click.echo(sweep.dry_run(exp, out, conditions))
        return
    if collect:
        from analysis.results import collect_experiment

        if results_path is not None:
            netcdf_path(results_path, "--results")
        rf_options = {"base": base, "gray_level": gray_level} if base == "gray" else {}
        path = collect_experiment(exp, out, layer, list(methods), device, results_path,
                                  **rf_options)  # fmt: skip
        click.echo(f"wrote {path}")
        return
    rep = sweep.run_sweep(exp, out, executor=executor, workers=workers, wait=not no_wait,
                          only=conditions)  # fmt: skip
    if rep is None:
        click.echo(f"check progress with: retina-raf sweep {file} --dry-run --out {out}")
        return
    click.echo(rep.summary())
    if rep.failed:
        raise RunError(
            f"{len(rep.failed)} of {len(rep.states)} runs did not finish "
            "(listed above); run the sweep again to resume them"
        )


# ------------------------------------------------------------------------- kp-decay
@click.command("kp-decay", short_help="Can weight decay align KP's feedback?")
@click.argument("runs", nargs=-1, type=click.Path(path_type=str))
@click.option("--layer", default="vvs_1", show_default=True, help="The RAF layer whose Q to read.")
@experiment_options(
    "Instead of RUNS: the runs of this experiment file under --runs-dir whose LAYER learns Q "
    "by Kolen-Pollack and that have a checkpoint."
)
@history_option(
    "Also keep these rows in this CSV file (replacing the row of the same run) and show "
    "every run it holds: a run whose folder is gone keeps its last row."
)
@markdown_out_option("the table")
def kp_decay_cmd(runs, layer, experiment, runs_dir, history, out):
    """Can weight decay align Kolen-Pollack's feedback? For each RUN (finished or in flight,
    RMSprop), from its checkpoint: the decay of Q - P W per step (lr * lambda / sqrt(v) at
    the median sqrt(v) of Q), its e-folding time in epochs, the share of Q - P W that decay
    can still remove in the run's epochs and in any number of epochs, and the angle between
    B = QP and W^T now. A Markdown table."""
    from analysis.alignment import (
        experiment_runs_with_learned_feedback,
        kp_decay_frame,
        kp_decay_markdown,
        update_kp_decay_history,
        weight_decay_alignment,
    )

    check_runs_or_experiment(runs, experiment, runs_dir)
    if experiment:
        runs = experiment_runs_with_learned_feedback(experiment, runs_dir, layer)
    frame = kp_decay_frame(
        [
            (os.path.basename(os.path.normpath(run)), weight_decay_alignment(run, layer))
            for run in runs
        ]  # fmt: skip
    )
    if history is not None:
        frame = update_kp_decay_history(history, frame)
    emit(kp_decay_markdown(frame), out)


# ------------------------------------------------------------------- error-subspace
@click.command("error-subspace", short_help="Which error directions does P span?")
@click.argument("runs", nargs=-1, type=click.Path(path_type=str))
@click.option("--layer", default="vvs_1", show_default=True, help="The RAF layer whose P to read.")
@experiment_options(
    "Instead of RUNS: the runs of this experiment file under --runs-dir whose LAYER has a P "
    "learned or set from the error (raf, raf_pca, raf_aligned) and a checkpoint."
)
@click.option(
    "--eigenvectors",
    "n_eigen",
    default=None,
    type=click.IntRange(1),
    help="How many of the error's leading eigenvectors [default: the rank + 2].",
)
@history_option(
    "Also keep these rows in this CSV file (replacing those of the same run and epoch) "
    "and show every epoch it holds: run after each epoch, it records where P was at each."
)
@click.option(
    "--figure",
    default=None,
    callback=writable,
    type=click.Path(dir_okay=False, path_type=str),
    help="Also draw the overlaps and eigenvalues per epoch of the runs whose P has fewer rows "
    "than the eigenvectors shown (e.g. with --history) into this file (.png, .pdf or .svg).",
)
@markdown_out_option("the table")
def error_subspace_cmd(runs, layer, experiment, runs_dir, n_eigen, history, figure, out):
    """Where P sits among the error's principal directions. For each RUN (finished or in
    flight), from its checkpoint: the leading eigenvalues of LAYER's error covariance (as
    shares of its trace), the overlap of each leading eigenvector with P's rows (1: P spans
    it, 0: P misses it; the overlaps of all sum to the rank), and P's share of the top-r
    variance. A Markdown table."""
    from analysis.alignment import (
        ERROR_SUBSPACE_RULES,
        error_subspace,
        error_subspace_frame,
        error_subspace_markdown,
        experiment_runs_with_learned_feedback,
        update_error_subspace_history,
    )

    check_runs_or_experiment(runs, experiment, runs_dir)
    suffix = os.path.splitext(figure)[1].lstrip(".") if figure else ""
    if figure and suffix not in ("png", "pdf", "svg"):  # before any checkpoint is read
        raise click.BadParameter(f"{figure!r} is not a .png, .pdf or .svg file",
                                 param_hint="--figure")  # fmt: skip
    if experiment:
        runs = experiment_runs_with_learned_feedback(
            experiment, runs_dir, layer, rules=ERROR_SUBSPACE_RULES
        )
    frame = error_subspace_frame(
        [
            (os.path.basename(os.path.normpath(run)), error_subspace(run, layer, n_eigen))
            for run in runs
        ]  # fmt: skip
    )
    if history is not None:
        frame = update_error_subspace_history(history, frame)
    emit(error_subspace_markdown(frame), out)
    if figure:
        from analysis.figures import export_panel, plot_error_subspace_history
        from retina_raf.errors import DataError

        try:
            drawn = plot_error_subspace_history(frame)
        except DataError as exc:  # e.g. only full-rank runs: a note, as `figures` skips
            click.echo(f"note: no figure: {exc}", err=True)
            return
        name, _ = os.path.splitext(os.path.basename(figure))
        export_panel(drawn, name, os.path.dirname(figure) or ".", formats=[suffix])
