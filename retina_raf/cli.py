"""The ``retina-raf`` command line.

Every subcommand imports its heavy dependencies lazily so ``retina-raf --help`` stays fast.
Expected mistakes (:class:`retina_raf.errors.RetinaRafError`, bad options) print one line
on stderr and exit with status 2. Training stopped by SIGTERM (after writing its
checkpoint) prints one line and exits with status 143
(:data:`retina_raf.errors.EXIT_INTERRUPTED`); the same command resumes it.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from retina_raf import __version__
from retina_raf.errors import EXIT_INTERRUPTED, RetinaRafError, RunInterrupted


def _netcdf_path(path: str, option: str = "--out") -> str:
    """A NetCDF output path must end in .nc (what it holds, and what readers look for)."""
    if not path.lower().endswith(".nc"):
        raise click.BadParameter(f"{path!r} must end in .nc (a NetCDF file)", param_hint=option)
    return path


def _writable(ctx: click.Context, param: click.Parameter, value):
    """An output path (file or folder) must be writable, checked when the options are read,
    before any computing: its nearest existing folder accepts a new file."""
    if value is None:
        return value
    import tempfile

    path = Path(value).expanduser().absolute()
    hint = param.opts[0] if param.opts else None
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path and path.is_file():
        existing = path.parent  # the file is replaced: its folder must take the new one
    if not existing.is_dir():
        raise click.BadParameter(f"{value!r}: {existing} is a file, not a folder", param_hint=hint)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise click.BadParameter(
            f"{value!r} cannot be written ({existing}: {exc.strerror or exc})", param_hint=hint
        ) from None
    return value


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retina-raf")
def cli() -> None:
    """Low-dimensional error feedback (RAF) and retinal receptive fields."""


# ----------------------------------------------------------------------------- data
DATA_ROOT_HELP = (
    "Folder where data set names (cifar10-gray, cifar10) resolve [default: $RETINA_RAF_DATA, "
    "else data/ of the repository]."
)


def _export_data_root(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--data-root`` of train and sweep: set RETINA_RAF_DATA while the command runs, so
    that the worker processes and SLURM jobs it starts resolve data set names in the same
    folder; run configs keep the name, never the folder."""
    if value is None:
        return
    import os
    from pathlib import Path

    from retina_raf.data import DATA_ROOT_ENV

    previous = os.environ.get(DATA_ROOT_ENV)
    os.environ[DATA_ROOT_ENV] = str(Path(value).expanduser().resolve())

    def restore() -> None:
        if previous is None:
            os.environ.pop(DATA_ROOT_ENV, None)
        else:
            os.environ[DATA_ROOT_ENV] = previous

    ctx.call_on_close(restore)


def data_root_option(command):
    """The ``--data-root DIR`` option of a command that trains on a data set."""
    return click.option(
        "--data-root",
        default=None,
        type=click.Path(file_okay=False, path_type=str),
        expose_value=False,
        callback=_export_data_root,
        help=DATA_ROOT_HELP,
    )(command)


@cli.group(short_help="Fetch CIFAR-10, inspect data files, build the sample.")
def data() -> None:
    """Fetch CIFAR-10, inspect data files and build the embedded sample."""


@data.command("fetch")
@click.argument("name", type=click.Choice(["cifar10"]))
@click.option(
    "--data-root",
    default=None,
    type=click.Path(file_okay=False, path_type=str),
    help="Folder to write into [default: $RETINA_RAF_DATA, else data/ of the repository].",
)
@click.option(
    "--from",
    "source",
    default=None,
    type=click.Path(path_type=str),
    help="Copy from an existing RGB cifar10_uint8.npz or cifar-10-batches-py folder instead "
    "of downloading (no internet needed).",
)
def data_fetch(name: str, data_root: str | None, source: str | None) -> None:
    """Put CIFAR-10 into the data root: cifar10_uint8.npz (RGB, the data set `cifar10`) and
    cifar10_gray_uint8.npz (mean of R, G and B, the data set `cifar10-gray`).

    Downloads it with torchvision (needs internet) unless --from names a copy; files already
    there are kept, so running it again does nothing."""
    from retina_raf.data import fetch_cifar10

    fetch_cifar10(data_root, source, log=click.echo)


@data.command("info")
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "--gray",
    type=click.Choice(["mean", "luma"]),
    default="mean",
    show_default=True,
    help="Grayscale conversion for RGB sources.",
)
@click.option("--data-root", default=None, type=click.Path(file_okay=False, path_type=str),
              help=DATA_ROOT_HELP)  # fmt: skip
def data_info(path: str, gray: str, data_root: str | None) -> None:
    """Counts, per-class counts, image shape, mean and std of a data set (a name such as
    cifar10-gray, an npz or a folder)."""
    from retina_raf.data import describe, load_cifar10, resolve_data

    click.echo(describe(load_cifar10(resolve_data(path, data_root), gray=gray)))


@data.command("sample")
@click.option(
    "--source",
    required=True,
    type=click.Path(path_type=str),
    help="Full CIFAR-10: a data set name (cifar10), an .npz or a cifar-10-batches-py folder.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=str),
    callback=_writable,
    help="Output .npz file.",
)
@click.option("--train-per-class", default=400, show_default=True, type=click.IntRange(1, 5000))
@click.option("--test-per-class", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--gray", type=click.Choice(["mean", "luma"]), default="mean", show_default=True)
@click.option("--data-root", default=None, type=click.Path(file_okay=False, path_type=str),
              help=DATA_ROOT_HELP)  # fmt: skip
def data_sample(
    source: str,
    out: str,
    train_per_class: int,
    test_per_class: int,
    gray: str,
    data_root: str | None,
) -> None:
    """Build a deterministic class-balanced grayscale sample of CIFAR-10."""
    from retina_raf.data import describe, load_cifar10, make_sample, resolve_data

    path = make_sample(
        resolve_data(source, data_root),
        out,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        gray=gray,
    )
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    click.echo(describe(load_cifar10(path)))


# ---------------------------------------------------------------------------- train
@cli.command("train", short_help="Train (or resume) one run into its folder.")
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
    callback=_writable,
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
@click.option(
    "--device",
    default=None,
    type=click.Choice(["auto", "cpu", "cuda"]),
    help="Default: cuda when available.",
)
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

    others = _renamed(others, "--others", unconstrained_rule, "--unconstrained-rule") or "raf"
    cfg = config_from_cli(preset, seed, epochs, data, device, amp, others, sets, config_file)
    if config_only:
        click.echo(dump_yaml(cfg), nl=False)
        return
    run_dir = train(cfg, out, name=name, log=lambda msg: click.echo(msg, err=True))
    click.echo(str(run_dir))


# --------------------------------------------------------------------------- report
@cli.command("report", short_help="Execute a notebook into a report.")
@click.argument("notebook", type=click.Path(path_type=str))
@click.option(
    "-p",
    "--parameter",
    "parameters",
    type=(str, str),
    multiple=True,
    metavar="NAME VALUE",
    help="Override a notebook parameter; VALUE is read as YAML (3, 0.5, true, text).",
)
@click.option(
    "--out",
    callback=_writable,
    default="reports",
    show_default=True,
    type=click.Path(path_type=str),
    help="Folder of all reports; this one goes to OUT/NAME/.",
)
@click.option("--name", default=None, help="Report name (default: the notebook's file stem).")
@click.option(
    "--progress/--no-progress",
    default=True,
    show_default=True,
    help="Per-cell progress bar on stderr.",
)
@click.pass_context
def report(
    ctx: click.Context, notebook: str, parameters: tuple, out: str, name: str | None, progress: bool
) -> None:
    """Execute a parameterized NOTEBOOK (papermill) into an executed .ipynb and an HTML page."""
    from analysis.report import parse_parameter_value, run_report
    from retina_raf.errors import RunError

    values = {}
    for key, text in parameters:
        if key in values:
            raise click.BadParameter(f"parameter {key!r} given twice", param_hint="-p")
        values[key] = parse_parameter_value(text)
        # an input file that is not there would fail inside the notebook, after a partial report
        if isinstance(values[key], str) and values[key].lower().endswith(".nc"):
            if not Path(values[key]).is_file():
                raise click.BadParameter(f"{key}: no such file {values[key]!r}", param_hint="-p")
    try:
        html = run_report(notebook, values, out_dir=out, name=name, progress_bar=progress)
    except RunError as exc:  # the notebook itself failed: exit 1, bad input stays exit 2
        click.echo(f"retina-raf: error: {exc}", err=True)
        ctx.exit(1)
    click.echo(f"report: {html}")
    click.echo(f"executed notebook: {html.with_suffix('.ipynb')}")


# -------------------------------------------------------------------------- figures
@cli.command("figures", short_help="Export the paper's panels from results.")
@click.argument("results", type=click.Path(path_type=str))
@click.option(
    "--out",
    callback=_writable,
    default="reports/figures",
    show_default=True,
    type=click.Path(path_type=str),
    help="Folder of the exported panels.",
)
@click.option(
    "--dpi",
    default=300,
    show_default=True,
    type=click.IntRange(50, 2400),
    help="Resolution of the PNG copies.",
)
@click.option(
    "--format",
    "formats",
    multiple=True,
    default=("pdf", "svg", "png"),
    show_default=True,
    type=click.Choice(["pdf", "svg", "png"]),
    help="File format(s) to write; repeat the option for several.",
)
@click.option(
    "--method",
    default=None,
    type=click.Choice(["actmax", "gradient", "sta"]),
    help="RF method, for a results file that holds several [default: its first].",
)
def figures_command(results: str, out: str, dpi: int, formats: tuple, method) -> None:
    """Export the paper's figure panels (PDF, SVG, PNG) from a RESULTS NetCDF file."""
    import warnings

    from analysis.figures import PanelSkipped, export_paper_panels

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PanelSkipped)
        written = export_paper_panels(results, out, dpi=dpi, formats=formats, method=method)
    for warning in caught:
        if issubclass(warning.category, PanelSkipped):
            click.echo(f"note: {warning.message}", err=True)
        else:
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    panels = sorted({path.stem for path in written})
    click.echo(f"wrote {len(panels)} panels ({', '.join(formats)}) to {out}: {', '.join(panels)}")


# ------------------------------------------------------------------------------ rfs
@cli.command("rfs", short_help="Map the RFs of one layer of a trained run.")
@click.argument("run_dir", type=click.Path(path_type=str))
@click.option("--layer", default="retina_2", show_default=True, help="Layer whose RFs to map.")
@click.option(
    "--method",
    default="actmax",
    show_default=True,
    type=click.Choice(["gradient", "actmax", "sta"]),
    help="Input gradient, activation maximization, or white-noise STA "
    "(docs/design.md#rf-extraction).",
)
@click.option(
    "--out",
    callback=_writable,
    default=None,
    type=click.Path(dir_okay=False, path_type=str),
    help="NetCDF file (default: RUN_DIR/rfs_<layer>_<method>.nc); a PNG montage goes beside it.",
)
@click.option("--channels", default=None, help="Comma-separated channel indices (default: all).")
@click.option("--seed", default=0, show_default=True, type=click.IntRange(0, 2**31 - 1))
@click.option("--device", default="cpu", show_default=True, type=click.Choice(["cpu", "cuda"]))
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
    out = Path(_netcdf_path(out)) if out else Path(run_dir) / f"rfs_{layer}_{method}.nc"
    rfs = extract_rfs(
        run_dir, layer, method, channels=channel_list, seed=seed, device=device, **options
    )
    write_netcdf(rfs, out)
    click.echo(f"wrote {out} ({int(rfs.responsive.sum())}/{rfs.sizes['channel']} responsive)")
    if not no_montage:
        png = save_rf_montage(rfs, out.with_suffix(".png"))
        click.echo(f"wrote {png}")


# ---------------------------------------------------------------------------- sweep
@cli.command("sweep", short_help="Train, inspect or collect an experiment.")
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
    callback=_writable,
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
    "--layer", default="retina_2", show_default=True, help="--collect: RFs of this layer."
)
@click.option(
    "--method",
    "methods",
    default=("actmax",),
    show_default=True,
    multiple=True,
    type=click.Choice(["actmax", "gradient", "sta"]),
    help="--collect: RF method; repeat it to store several in one file.",
)
@click.option(
    "--results",
    "results_path",
    callback=_writable,
    default=None,
    type=click.Path(path_type=str),
    help="--collect: the results file [default: OUT/results_<layer>_<method>.nc].",
)
@click.option(
    "--base",
    default="zeros",
    show_default=True,
    type=click.Choice(["zeros", "gray"]),
    help="--collect: base image of the RF maps (gray: for runs trained on unstandardized "
    "images, at --gray-level, e.g. 0.4734, grayscale CIFAR-10's mean pixel in [0, 1]).",
)
@click.option("--gray-level", default=0.5, show_default=True, type=float, help="--collect.")
@click.option("--device", default=None, type=click.Choice(["cpu", "cuda"]), help="--collect.")
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
    if dry_run:
        click.echo(sweep.dry_run(exp, out))
        return
    if collect:
        from analysis.results import collect_experiment

        if results_path is not None:
            _netcdf_path(results_path, "--results")
        rf_options = {"base": base, "gray_level": gray_level} if base == "gray" else {}
        path = collect_experiment(exp, out, layer, list(methods), device, results_path,
                                  **rf_options)  # fmt: skip
        click.echo(f"wrote {path}")
        return
    rep = sweep.run_sweep(exp, out, executor=executor, workers=workers, wait=not no_wait)
    if rep is None:
        click.echo(f"check progress with: retina-raf sweep {file} --dry-run --out {out}")
        return
    click.echo(rep.summary())
    if rep.failed:
        raise RunError(
            f"{len(rep.failed)} of {len(rep.states)} runs did not finish "
            "(listed above); run the sweep again to resume them"
        )


# --------------------------------------------------------------------------- theory
@cli.command("theory", short_help="Fig. 2: linear theory vs simulations.")
@click.option(
    "--out",
    callback=_writable,
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Folder for fig2b..fig2g (.pdf, .png) and fig2.nc.",
)
@click.option("--steps", default=None, type=int, help="Training steps per run [default: 2400].")
@click.option("--lr", default=None, type=float, help="Learning rate [default: 0.005].")
@click.option("--seed", default=0, show_default=True, type=int, help="First seed.")
@click.option(
    "--seeds",
    "n_seeds",
    default=3,
    show_default=True,
    type=click.IntRange(1),
    help="Seeds per condition (panels f, g use all; b-e the first).",
)
@click.option("--rank", default=8, show_default=True, type=int, help="Low feedback rank r.")
@click.option("--dim", default=None, type=int, help="Rank d of the task [default: 16].")
@click.option("--dpi", default=300, show_default=True, type=click.IntRange(50, 1200))
def theory_command(out, steps, lr, seed, n_seeds, rank, dim, dpi):
    """Paper Fig. 2: linear-network simulations (solid) against the ODE theory (dashed)."""
    from pathlib import Path

    from retina_raf.io import write_netcdf
    from retina_raf.linear_theory import figure2_data, plot_figure2

    params = {"steps": steps, "lr": lr, "d": dim}
    params = {key: value for key, value in params.items() if value is not None}
    seeds = range(seed, seed + n_seeds)
    data = figure2_data(low_rank=rank, seeds=seeds, progress=True, **params)
    for line in plot_figure2(data, out, dpi=dpi):
        click.echo(line)
    click.echo(f"wrote {write_netcdf(data, Path(out) / 'fig2.nc')} and 12 panel files")


# -------------------------------------------------------------------------- metrics
@cli.command("metrics", short_help="Shape metrics and classes of RFs.")
@click.argument("rfs_file", metavar="RFS.nc", type=click.Path(path_type=str))
@click.option(
    "--out",
    callback=_writable,
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

    _netcdf_path(out)
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
@cli.command("trajectory", short_help="RFs at every retina snapshot of runs.")
@click.argument("runs", nargs=-1, type=click.Path(path_type=str))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=str),
    callback=_writable,
    help="Output .nc file.",
)
@click.option(
    "--experiment",
    default=None,
    type=click.Path(path_type=str),
    help="Instead of RUNS: every run of this experiment file that has begun training "
    "(finished or not) under --runs-dir; the runs not started are listed in the file.",
)
@click.option(
    "--runs-dir",
    default=None,
    type=click.Path(path_type=str),
    help="With --experiment: the sweep's --out folder.",
)
@click.option(
    "--layer", default="retina_2", show_default=True, type=click.Choice(["retina_1", "retina_2"])
)
@click.option(
    "--method",
    default="gradient",
    show_default=True,
    type=click.Choice(["gradient", "actmax", "sta"]),
    help="RF method at every epoch.",
)
@click.option(
    "--base",
    default="zeros",
    show_default=True,
    type=click.Choice(["zeros", "gray"]),
    help="Base image of the RF maps (gray: for runs trained on unstandardized images).",
)
@click.option("--gray-level", default=0.5, show_default=True, type=float)
@click.option(
    "--agreement/--no-agreement",
    default=False,
    help="Also correlate the gradient, actmax and STA RFs at each run's last epoch.",
)
def trajectory_cmd(runs, out, experiment, runs_dir, layer, method, base, gray_level, agreement):
    """RFs through training: map and measure the RFs of LAYER at every retina snapshot
    (runs trained with train.retina_snapshots=true) of each RUN folder, or of every started
    run of an --experiment, into one NetCDF.

    Prints, per run and epoch, the responsive units, mean symmetry and OSI and the fraction
    center-surround.
    """
    from analysis.results import write_results
    from analysis.trajectory import (
        combine_trajectories,
        experiment_trajectories,
        trajectory_summary,
    )

    if bool(runs) == bool(experiment):
        raise click.UsageError("give RUN folders or --experiment FILE --runs-dir DIR, not both")
    if experiment and not runs_dir:
        raise click.UsageError("--experiment needs --runs-dir (the sweep's --out folder)")
    _netcdf_path(out)
    options = dict(agreement=agreement, base=base, gray_level=gray_level)
    if experiment:
        ds = experiment_trajectories(experiment, runs_dir, layer, method, **options)
    else:
        ds = combine_trajectories(list(runs), layer, method, **options)
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


@cli.command("kp-decay", short_help="Can weight decay align KP's feedback?")
@click.argument("runs", nargs=-1, type=click.Path(path_type=str))
@click.option("--layer", default="vvs_1", show_default=True, help="The RAF layer whose Q to read.")
@click.option(
    "--experiment",
    default=None,
    type=click.Path(path_type=str),
    help="Instead of RUNS: the runs of this experiment file under --runs-dir whose LAYER "
    "learns Q by Kolen-Pollack and that have a checkpoint.",
)
@click.option(
    "--runs-dir",
    default=None,
    type=click.Path(path_type=str),
    help="With --experiment: the sweep's --out folder.",
)
def kp_decay_cmd(runs, layer, experiment, runs_dir):
    """Can weight decay align Kolen-Pollack's feedback? For each RUN (finished or in flight,
    RMSprop), from its checkpoint: the decay of Q - P W per step (lr * lambda / sqrt(v) at
    the median sqrt(v) of Q), its e-folding time in epochs, the share of Q - P W that decay
    can still remove in the run's epochs and in any number of epochs, and the angle between
    B = QP and W^T now. A Markdown table."""
    from analysis.alignment import experiment_runs_with_learned_feedback, weight_decay_alignment

    if bool(runs) == bool(experiment):
        raise click.UsageError("give RUN folders or --experiment FILE --runs-dir DIR, not both")
    if experiment:
        if not runs_dir:
            raise click.UsageError("--experiment needs --runs-dir (the sweep's --out folder)")
        runs = experiment_runs_with_learned_feedback(experiment, runs_dir, layer)
    header = ["run", "epoch", "lr", "median sqrt(v)", "decay per step", "e-folding (epochs)",
              "removable in the run", "removable ever", "norm(Q - PW) / norm(PW)",
              "B vs W^T"]  # fmt: skip
    click.echo("| " + " | ".join(header) + " |")
    click.echo("|" + "---|" * len(header))
    for run in runs:
        r = weight_decay_alignment(run, layer)
        cells = [os.path.basename(os.path.normpath(run)), str(int(r["epoch"])), f"{r['lr']:.3g}",
                 f"{r['median_sqrt_v']:.3g}", f"{r['decay_per_step']:.3g}",
                 f"{r['efolding_epochs']:.3g}", f"{r['shrink_remaining']:.2%}",
                 f"{r['shrink_bound']:.2%}", f"{r['d_relative']:.3g}",
                 f"{r['alignment_deg']:.1f}\u00b0"]  # fmt: skip
        click.echo("| " + " | ".join(cells) + " |")


@cli.command("findings", short_help="Print the findings tables of a file.")
@click.argument("results", metavar="RESULTS.nc", type=click.Path(path_type=str))
@click.option(
    "--epoch",
    "epochs",
    multiple=True,
    type=click.IntRange(0),
    help="Trajectories: the epoch of the table (default each run's last); repeated, a table "
    "per epoch that some run has reached, each under a heading.",
)
@click.option(
    "--method",
    default=None,
    type=click.Choice(["actmax", "gradient", "sta"]),
    help="Results: the RF method of a file that holds several [default: its first].",
)
def findings_cmd(results, epochs, method):
    """Print the Markdown findings the README quotes: for a results file (`retina-raf
    results`), per condition the mean and s.d. over seeds and the tests between ranks and
    bottlenecks; for a trajectories file (`retina-raf trajectory`), the RFs at one epoch
    of every run; for the test accuracies of a Fig. 3 experiment (`sweep --collect`),
    accuracy at rank r = d against backprop's per task and constrained layer."""
    from analysis.results import (
        KIND_ACCURACY,
        KIND_TRAJECTORIES,
        open_results,
        results_kind,
        select_method,
    )

    with open_results(results) as ds:
        ds = ds.load()
    kind = results_kind(ds)
    if kind == KIND_ACCURACY:
        from analysis.accuracy import findings_markdown as accuracy_findings

        if epochs or method is not None:
            raise click.UsageError("--epoch and --method apply to RF results, not accuracies")
        click.echo(accuracy_findings(ds))
        return
    if kind == KIND_TRAJECTORIES:
        from analysis.trajectory import findings_table, milestone_tables

        if len(epochs) > 1:
            click.echo(milestone_tables(ds, epochs))
        else:
            click.echo(findings_table(ds, epochs[0] if epochs else None))
        return
    from analysis.stats import findings_markdown

    if epochs:
        raise click.UsageError("--epoch applies to trajectories; this is a results file")
    click.echo(findings_markdown(select_method(ds, method)))


# -------------------------------------------------------------------------- results
@cli.command("results", short_help="Combine run folders into one results file.")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=str),
    callback=_writable,
    help="Output .nc file.",
)
@click.option("--layer", default="retina_2", show_default=True, help="Layer whose RFs to map.")
@click.option(
    "--method",
    "methods",
    default=("actmax",),
    show_default=True,
    multiple=True,
    type=click.Choice(["actmax", "gradient", "sta"]),
    help="RF method; repeat it to store several in one file (a `method` dimension, and "
    "their per-unit correlations).",
)
@click.option(
    "--rf-seed",
    default=None,
    type=click.IntRange(0),
    help="Seed of the RF mapping's random starts (not a training seed).  [default: 0]",
)
@click.option("--seed", default=None, type=click.IntRange(0), hidden=True,
              help="Deprecated name of --rf-seed.")  # fmt: skip
@click.option(
    "--base",
    default="zeros",
    show_default=True,
    type=click.Choice(["zeros", "gray"]),
    help="Base image of the RF maps (gray: for runs trained on unstandardized images, at "
    "--gray-level, e.g. 0.4734, grayscale CIFAR-10's mean pixel in [0, 1]).",
)
@click.option("--gray-level", default=0.5, show_default=True, type=float)
@click.option("--device", default=None, type=click.Choice(["cpu", "cuda"]))
def results_cmd(runs, out, layer, methods, rf_seed, seed, base, gray_level, device):
    """Combine run folders (or folders of runs) into one results dataset (NetCDF).

    Maps the RFs of LAYER in every finished run (with DONE), measures them, reads each
    history and stacks everything along a `run` dimension with coordinates preset, rank,
    n_bn, seed, rule (each an index: ds.sel(preset="raf-r4")). Every run is checked before
    any RF is mapped; cached analyses are reused only for the same weights.
    """
    from analysis.results import combine_methods, find_runs, write_results

    _netcdf_path(out)
    seed = _renamed(seed, "--seed", rf_seed, "--rf-seed") or 0
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


# ----------------------------------------------------------------------------- demo
@cli.command("demo", short_help="The whole pipeline on the embedded sample.")
@click.option(
    "--out",
    callback=_writable,
    default="data/demo",
    show_default=True,
    type=click.Path(path_type=str),
    help="Where the demo's runs and results go.",
)
@click.option(
    "--reports",
    callback=_writable,
    default="reports/demo",
    show_default=True,
    type=click.Path(path_type=str),
    help="Where the rendered notebooks go (git-ignored: reports/README.md).",
)
def demo_cmd(out, reports):
    """Train bp, raf-r2 and raf-r32 briefly on the embedded sample, map and measure the
    retina RFs, and render the compare_ranks and rf_atlas reports (1.5-3 min on 2 cores).

    Far too little data and training for scientific conclusions: it shows the pipeline. Next
    to them it renders the published findings committed under reports/ (the pilot's RFs
    through training, and the CPU-scale Fig. 4's rank comparison and RF atlas, all trained
    on the full data set), so the first look shows real receptive fields.
    """
    from analysis.pipeline import run_demo

    paths = run_demo(out, reports, log=lambda msg: click.echo(msg, err=True))
    click.echo(f"results: {paths['results']}")
    for name, path in paths.items():
        if name != "results":
            click.echo(f"report {name}: {path}")


def _renamed(old_value, old_name: str, new_value, new_name: str):
    """The value of an option that was renamed: the new name's, or the old one's with a
    note on stderr; both at once is a usage error."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise click.UsageError(f"{old_name} is the old name of {new_name}; give only {new_name}")
    click.echo(f"note: {old_name} is deprecated, use {new_name}", err=True)
    return old_value


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: one-line errors and exit status 2 on bad input."""
    try:
        rv = cli.main(args=argv, prog_name="retina-raf", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("retina-raf: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"retina-raf: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except RetinaRafError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        click.echo(f"retina-raf: error: {message}", err=True)
        sys.exit(2)
    except RunInterrupted as exc:
        click.echo(f"retina-raf: {' '.join(str(exc).split())}", err=True)
        sys.exit(128 + int(exc.signum) if exc.signum else EXIT_INTERRUPTED)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
