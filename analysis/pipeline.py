"""The whole pipeline on a few runs: train -> RFs -> metrics -> results -> reports.

``run_demo`` is what ``make demo`` / ``retina-raf demo`` runs on the embedded sample: it
trains ``bp``, ``raf-r2`` and ``raf-r32`` with a reduced network for a few epochs, maps
the retina output's RFs by activation maximization, measures them, writes one results
dataset, exports the paper panels (as ``retina-raf figures`` does) and renders the
``compare_ranks`` and ``rf_atlas`` notebooks, which show those panels. On 2 CPU cores it
takes 1.5-3 minutes with the published reports. Its data and epochs are far too small for
scientific conclusions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from retina_raf.config import parse_overrides, resolve_run_config

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
DEMO_PRESETS = ("bp", "raf-r2", "raf-r32")
# The paper's network with one VVS layer and a 128-unit readout (the retina is untouched:
# 32 channels, 9x9 kernels), trained on 2,000 of the sample's images for 4 epochs.
DEMO_SETTINGS = (
    "model.retina.vvs_layers=1",
    "model.retina.fc_units=128",
    "train.epochs=4",
    "train.lr=0.0001",
    "train.batch_size=32",
    "data.train_limit=2000",
    "data.test_limit=500",
)
# Fewer random starts and ascent steps than the defaults: the demo's RFs are rough anyway.
DEMO_RF_OPTIONS = {"n_starts": 2, "n_steps": 40}
DEMO_REPORTS = ("compare_ranks", "rf_atlas")
# Published findings (reports/<experiment>/, committed) that the demo renders next to its own
# runs, so that a new user sees RFs of networks trained on the full data set:
# (report name, notebook, parameter name, results file relative to the project).
PROJECT = Path(__file__).resolve().parent.parent
PUBLISHED = (
    ("pilot", "rf_trajectory", "trajectories", "reports/pilot/trajectories.nc"),
    ("cpu_fig4_compare_ranks", "compare_ranks", "results", "reports/cpu_fig4/results.nc"),
    ("cpu_fig4_rf_atlas", "rf_atlas", "results", "reports/cpu_fig4/results.nc"),
)


def run_demo(
    out: str | Path = "data/demo",
    reports: str | Path = "reports/demo",
    presets: Sequence[str] = DEMO_PRESETS,
    settings: Sequence[str] = DEMO_SETTINGS,
    rf_options: dict | None = None,
    seeds: Sequence[int] = (0,),
    notebooks: Sequence[str] = DEMO_REPORTS,
    log=print,
    published: Sequence[tuple[str, str, str, str]] = PUBLISHED,
) -> dict[str, Path]:
    """Train, analyze and report; return the paths of the results file, the paper panels'
    folder (``panels``: ``<reports>/figures``) and each report.

    Runs already finished under ``out/runs`` are reused, so a second call only redoes the
    analysis and reports. ``published``: findings of experiments trained on the full data set
    and committed under ``reports/`` (:func:`render_published`), rendered next to the demo's.
    """
    from analysis.report import run_report
    from analysis.results import combine_runs, write_results
    from retina_raf.train import train

    out = Path(out)
    overrides = parse_overrides(list(settings))
    run_dirs = []
    for preset in presets:
        for seed in seeds:
            cfg = resolve_run_config(preset, seed, overrides)
            run_dirs.append(train(cfg, out / "runs", log=log))
    runs_text = f"{len(run_dirs)} run{'s' if len(run_dirs) != 1 else ''}"
    log(f"mapping the retina RFs of {runs_text} and measuring them")
    options = DEMO_RF_OPTIONS if rf_options is None else rf_options
    results = combine_runs(run_dirs, "retina_2", "actmax", **options)
    paths = {"results": write_results(results, out / "results.nc")}
    paths["panels"] = export_demo_panels(paths["results"], Path(reports) / "figures", log)
    for name in notebooks:
        log(f"rendering {name}")
        # its own panels go to <reports>/<name>/figures; paths show relative to the project
        paths[name] = run_report(NOTEBOOKS / f"{name}.ipynb", {"results": str(paths["results"])},
                                 reports)  # fmt: skip
    paths.update(render_published(reports, published, log))
    return paths


def export_demo_panels(results: Path, out_dir: Path, log=print) -> Path:
    """Export the paper panels of ``results`` into ``out_dir`` as ``make publish`` does
    (``retina-raf figures``, their one writer; the reports show them); a panel the demo's few
    runs cannot provide is skipped with a note. Returns ``out_dir``."""
    import warnings

    from analysis.figures import PanelSkipped, export_paper_panels

    log("exporting the paper panels")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", PanelSkipped)
        export_paper_panels(results, out_dir)
    for warning in caught:
        if issubclass(warning.category, PanelSkipped):
            log(f"note: {warning.message}")
        else:
            warnings.showwarning(
                warning.message, warning.category, warning.filename, warning.lineno
            )
    return out_dir


def render_published(
    reports: str | Path, published: Sequence[tuple[str, str, str, str]] = PUBLISHED, log=print
) -> dict[str, Path]:
    """Render the notebooks of published findings (when their files are in the project) into
    ``<reports>/<name>/``; returns ``{name: html}``. Missing files are skipped with a note."""
    from analysis.report import run_report

    paths = {}
    for name, notebook, parameter, relative in published:
        source = PROJECT / relative if not Path(relative).is_absolute() else Path(relative)
        if not source.is_file():
            log(f"published findings {relative} not found: skipped")
            continue
        log(f"rendering the published {name} findings ({relative})")
        paths[name] = run_report(NOTEBOOKS / f"{notebook}.ipynb", {parameter: str(source)},
                                 reports, name=name)  # fmt: skip
    return paths
