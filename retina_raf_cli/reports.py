"""``retina-raf report``, ``figures``, ``findings`` and ``demo``: notebooks, the paper's
panels and the findings tables from results files, and the whole pipeline on the sample."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from retina_raf_cli.options import emit, markdown_out_option, method_option, writable

EXIT_SIGINT = 130  # 128 + SIGINT: what a shell reports for a command Ctrl-C stopped


# --------------------------------------------------------------------------- report
@click.command("report", short_help="Execute a notebook into a report.")
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
    callback=writable,
    default="reports",
    show_default=True,
    type=click.Path(path_type=str),
    help="Folder of all reports; this one goes to OUT/NAME/.",
)
@click.option("--name", default=None, help="Report name (default: the notebook's file stem).")
@click.option(
    "--progress/--no-progress",
    default=None,
    help="Per-cell progress bar on stderr (default: when stderr is a terminal).",
)
@click.pass_context
def report(
    ctx: click.Context,
    notebook: str,
    parameters: tuple,
    out: str,
    name: str | None,
    progress: bool | None,
) -> None:
    """Execute a parameterized NOTEBOOK (papermill) into an executed .ipynb and an HTML page.

    A failed cell leaves the partial report and a FAILED marker (exit status 1); Ctrl-C
    writes nothing (exit status 130)."""
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
    if progress is None:  # a log or a pipe gets no bar (as training's progress)
        progress = sys.stderr.isatty()
    try:
        html = run_report(notebook, values, out_dir=out, name=name, progress_bar=progress)
    except RunError as exc:  # the notebook itself failed: exit 1, bad input stays exit 2
        click.echo(f"retina-raf: error: {exc}", err=True)
        ctx.exit(1)
    except KeyboardInterrupt:  # Ctrl-C: run_report stopped the kernel and removed its files
        click.echo("retina-raf: interrupted: report not written", err=True)
        ctx.exit(EXIT_SIGINT)
    click.echo(f"report: {html}")
    click.echo(f"executed notebook: {html.with_suffix('.ipynb')}")


# -------------------------------------------------------------------------- figures
@click.command("figures", short_help="Export the paper's panels from results.")
@click.argument("results", type=click.Path(path_type=str))
@click.option(
    "--out",
    callback=writable,
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
@method_option("RF method, for a results file that holds several [default: its first].")
@click.option(
    "--epoch",
    type=click.IntRange(0),
    default=None,
    help="Trajectories: the epoch of the RFs (a run that has not reached it: its last) "
    "[default: each run's last].",
)
def figures_command(results: str, out: str, dpi: int, formats: tuple, method, epoch) -> None:
    """Export the paper's figure panels (PDF, SVG, PNG) from a RESULTS NetCDF file, or from
    a trajectories file (`retina-raf trajectory`) at one epoch.

    Their one writer: the compare_ranks, rf_atlas and training reports show these panels
    and export only their own."""
    import warnings

    from analysis.figures import PanelSkipped, export_paper_panels

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PanelSkipped)
        written = export_paper_panels(
            results, out, dpi=dpi, formats=formats, method=method, epoch=epoch
        )
    for warning in caught:
        if issubclass(warning.category, PanelSkipped):
            click.echo(f"note: {warning.message}", err=True)
        else:
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    panels = sorted({path.stem for path in written})
    click.echo(f"wrote {len(panels)} panels ({', '.join(formats)}) to {out}: {', '.join(panels)}")


# ------------------------------------------------------------------------- findings
@click.command("findings", short_help="Print the findings tables of a file.")
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
    "--plateau",
    "plateau",
    metavar="REFERENCE.nc",
    type=click.Path(path_type=str),
    default=None,
    help="Trajectories: add whether each run's RF metrics have flattened, against the seed "
    "spread of its condition in these RF results (e.g. a shorter experiment's).",
)
@click.option(
    "--window",
    default=20,
    show_default=True,
    type=click.IntRange(2),
    help="With --plateau: the last epochs over which a metric's drift is measured.",
)
@method_option("Results: the RF method of a file that holds several [default: its first].")
@markdown_out_option("the tables")
def findings_cmd(results, epochs, plateau, window, method, out):
    """Print the Markdown findings the README quotes: for a results file (`retina-raf
    results`), per condition the mean and s.d. over seeds and the tests between ranks and
    bottlenecks; for a trajectories file (`retina-raf trajectory`), the RFs at one epoch
    of every run (and, with --plateau, whether they have stopped moving); for the test
    accuracies of a Fig. 3 experiment (`sweep --collect`), accuracy at rank r = d against
    backprop's per task and constrained layer."""
    from analysis.results import KIND_TRAJECTORIES, load_results, open_results, results_kind

    with open_results(results) as ds:
        ds = ds.load()
    text = _findings_markdown(ds, epochs, method)
    if plateau is not None:
        if results_kind(ds) != KIND_TRAJECTORIES:
            raise click.UsageError("--plateau applies to a trajectories file")
        from analysis.trajectory import plateau_table

        reference = load_results(plateau, method=method)
        text += (f"\n\nFlat over the last {window} epochs (against the seed spread in "
                 f"{plateau}):\n\n{plateau_table(ds, reference, window)}")  # fmt: skip
    emit(text, out)


def _findings_markdown(ds, epochs: tuple, method: str | None) -> str:
    """The findings tables of a loaded results, trajectories or accuracy dataset."""
    from analysis.results import KIND_ACCURACY, KIND_TRAJECTORIES, results_kind, select_method

    kind = results_kind(ds)
    if kind == KIND_ACCURACY:
        from analysis.accuracy import findings_markdown as accuracy_findings

        if epochs or method is not None:
            raise click.UsageError("--epoch and --method apply to RF results, not accuracies")
        return accuracy_findings(ds)
    if kind == KIND_TRAJECTORIES:
        from analysis.trajectory import findings_table, milestone_tables

        if len(epochs) > 1:
            return milestone_tables(ds, epochs)
        return findings_table(ds, epochs[0] if epochs else None)
    from analysis.stats import findings_markdown

    if epochs:
        raise click.UsageError("--epoch applies to trajectories; this is a results file")
    return findings_markdown(select_method(ds, method))


# ----------------------------------------------------------------------------- demo
@click.command("demo", short_help="The whole pipeline on the embedded sample.")
@click.option(
    "--out",
    callback=writable,
    default="data/demo",
    show_default=True,
    type=click.Path(path_type=str),
    help="Where the demo's runs and results go.",
)
@click.option(
    "--reports",
    callback=writable,
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
    click.echo(f"panels: {paths['panels']}")
    for name, path in paths.items():
        if name not in ("results", "panels"):
            click.echo(f"report {name}: {path}")
