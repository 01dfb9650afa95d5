"""The report notebooks (docs/design.md#reports): rf_atlas, compare_ranks and training are
papermill templates that run on any results dataset of the analysis.results schema, show the
paper panels that `retina-raf figures` writes and export their own, and stop at their first
cell with a clear message on a bad parameter."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path

import nbformat
import pytest

from analysis.report import notebook_parameters, run_report
from analysis.results import load_results, write_results
from retina_raf.errors import ConfigError, DataError, RunError

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


@pytest.fixture(scope="module")
def results_file(tmp_path_factory, make_report_results) -> Path:
    return write_results(make_report_results(), tmp_path_factory.mktemp("results") / "results.nc")


# ------------------------------------------------------------------------ fast checks
@pytest.mark.parametrize("name", ["rf_atlas", "compare_ranks", "training"])
def test_templates_declare_parameters_and_carry_no_outputs(name):
    """Each notebook is a papermill template: a `parameters` cell with the results path and
    the figures folder, python3 kernel, outputs cleared."""
    path = NOTEBOOKS / f"{name}.ipynb"
    declared = notebook_parameters(path)
    assert {"results", "figures_dir"} <= set(declared)
    assert declared["results"]["default"] == '"data/demo/results.nc"'
    assert declared["figures_dir"]["default"] == f'"reports/{name}/figures"'
    notebook = nbformat.read(path, as_version=4)
    assert notebook.metadata["kernelspec"]["name"] == "python3"
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


def test_compare_ranks_states_its_test():
    """The notebook says in words which test it does and what the unit is."""
    text = " ".join(
        cell.source
        for cell in nbformat.read(NOTEBOOKS / "compare_ranks.ipynb", as_version=4).cells
        if cell.cell_type == "markdown"
    )
    for phrase in ("Kruskal-Wallis", "Mann-Whitney", "Holm", "run (seed)", "pseudo-replication"):
        assert phrase in text


def test_load_results_rejects_bad_parameters(results_file, tmp_path):
    """Notebook parameters are checked up front, each mistake one clear line."""
    assert load_results(results_file, metrics=["osi", "fraction_center_surround"]).sizes["run"]
    with pytest.raises(DataError, match="no such results file"):
        load_results(tmp_path / "missing.nc")
    with pytest.raises(DataError, match=r"no metric \['sharpness'\].*symmetry"):
        load_results(results_file, metrics=["symmetry", "sharpness"])
    with pytest.raises(DataError, match="no per-epoch variable"):
        load_results(results_file, history=["symmetry"])
    with pytest.raises(DataError, match="lacks"):
        load_results(results_file, require=["gabor_r2"])
    with pytest.raises(ConfigError, match="metrics must be"):
        load_results(results_file, metrics=3)


# ------------------------------------------------------------------- notebook executions
def _figures(folder: Path) -> set[str]:
    return {path.name for path in folder.iterdir()}


def _code(name: str) -> str:
    """A notebook's code cells as Python (IPython magics left out)."""
    cells = nbformat.read(NOTEBOOKS / f"{name}.ipynb", as_version=4).cells
    return "\n".join(line for cell in cells if cell.cell_type == "code"
                     for line in cell.source.splitlines() if not line.startswith("%"))  # fmt: skip


@pytest.mark.parametrize("name", ["rf_atlas", "compare_ranks", "training"])
def test_reports_export_panels_only_through_the_one_writer_rule(name):
    """These reports draw paper panels: they export through export_report_panel, which
    leaves the paper panels to `retina-raf figures`, never through export_panel itself."""
    called = {node.func.id for node in ast.walk(ast.parse(_code(name)))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}  # fmt: skip
    assert "export_report_panel" in called and "export_panel" not in called


@pytest.mark.slow
def test_rf_atlas_renders_a_montage_per_run(results_file, make_report_results, tmp_path):
    """rf_atlas: one montage per condition and seed, shown; those of the seeds above each
    condition's lowest exported as PDF, SVG and PNG (the lowest's are paper panels)."""
    figures = tmp_path / "figures"
    html = run_report(
        NOTEBOOKS / "rf_atlas.ipynb",
        {"results": str(results_file), "figures_dir": str(figures), "max_rfs": 3},
        tmp_path / "reports",
    )
    assert html.is_file() and html.with_suffix(".ipynb").is_file()
    ds = make_report_results()
    seeds = zip(ds["preset"].values, ds["seed"].values, strict=True)
    expected = {f"rf_montage_{p}_seed{s}.{fmt}" for p, s in seeds if s > 0
                for fmt in ("pdf", "svg", "png")}  # fmt: skip
    assert _figures(figures) == expected
    shown = nbformat.read(html.with_suffix(".ipynb"), as_version=4).cells
    images = [out for cell in shown for out in cell.get("outputs", []) if "image/png" in
              out.get("data", {})]  # fmt: skip
    assert len(images) == ds.sizes["run"]
    assert "center-surround" in html.read_text()  # the class table


@pytest.mark.slow
def test_compare_ranks_renders_panels_tests_and_table(results_file, tmp_path):
    """compare_ranks: each metric against rank and N_bn, the tests' results, the table; the
    fraction center-surround panels exported, symmetry's and OSI's left to the paper's."""
    figures = tmp_path / "figures"
    html = run_report(
        NOTEBOOKS / "compare_ranks.ipynb",
        {"results": str(results_file), "figures_dir": str(figures), "alpha": 0.1},
        tmp_path / "reports",
    )
    exported = {f"fraction_center_surround_vs_{axis}.{fmt}" for axis in ("rank", "nbn")
                for fmt in ("pdf", "svg", "png")}  # fmt: skip
    assert _figures(figures) == exported
    page = html.read_text()
    assert "Kruskal-Wallis H =" in page  # 2 seeds per group: the test runs
    assert "no pair can reach significance" in page  # and says 2 vs 2 seeds cannot be enough
    assert "bp-bottleneck-2" in page and "n_seeds" in page


@pytest.mark.slow
def test_training_renders_curves_and_alignment(results_file, tmp_path):
    """training: learning curves, feedback alignment and P's subspace angle (low rank only);
    the curves of variables other than the paper's exported under their own name."""
    figures = tmp_path / "figures"
    html = run_report(
        NOTEBOOKS / "training.ipynb",
        {"results": str(results_file), "figures_dir": str(figures), "variables": ["test_acc"]},
        tmp_path / "reports",
    )
    assert _figures(figures) == {f"learning_curves_test_acc.{fmt}" for fmt in ("pdf", "svg", "png")}
    assert "raf-r2-s1: " in html.read_text() and "raf-r32-s1: " not in html.read_text()


@pytest.mark.slow
def test_each_panel_file_has_one_writer(results_file, tmp_path, run_cli):
    """`retina-raf figures` and the compare_ranks, rf_atlas and training reports on one
    results file, as `make publish` runs them: the reports show the paper panels, drawn by
    the same functions, and write none of them, so that no panel is written twice, under
    its own name or another."""
    published = tmp_path / "experiment"
    code, _, err = run_cli("figures", results_file, "--out", published / "figures")
    assert code == 0, err
    for name in ("compare_ranks", "rf_atlas", "training"):
        run_report(NOTEBOOKS / f"{name}.ipynb", {"results": str(results_file)}, published)
    paper = {path.stem for path in (published / "figures").glob("*.svg")}
    own = {path.stem for path in published.glob("*/figures/*.svg")}
    assert "osi_vs_rank" in paper and "fraction_center_surround_vs_rank" in own
    assert not paper & own
    panels = sorted(published.rglob("*.svg"))
    assert len({hashlib.sha256(path.read_bytes()).digest() for path in panels}) == len(panels)


@pytest.mark.slow
@pytest.mark.parametrize(
    ("name", "bad", "problem"),
    [
        ("compare_ranks", {"metrics": ["sharp"]}, "DataError: no metric ['sharp']"),
        ("rf_atlas", {"method": "sharp"}, "DataError: these results hold RFs by actmax, not sharp"),
        ("training", {"variables": ["sharp"]}, "DataError: no per-epoch variable ['sharp']"),
    ],
)
def test_a_bad_parameter_fails_in_the_first_cell_with_a_clear_message(
    results_file, tmp_path, name, bad, problem
):
    """A parameter the dataset cannot serve (a metric, an RF method, a history variable it
    lacks) stops the notebook at the cell after the parameters, not later; the error names
    that cell and the problem, and no panel is exported."""
    figures = tmp_path / "figures"
    with pytest.raises(RunError) as error:
        run_report(
            NOTEBOOKS / f"{name}.ipynb",
            {"results": str(results_file), "figures_dir": str(figures), **bad},
            tmp_path / "reports",
        )
    message = str(error.value)
    assert "cell 3 of" in message and problem in message
    assert "\n" not in message
    assert (tmp_path / "reports" / name / "FAILED").is_file()
    assert not figures.exists()


@pytest.mark.slow
def test_reports_of_a_two_method_file_show_the_method_asked_for(tmp_path, make_report_results):
    """A published results file with actmax and gradient RFs (reports/cpu_fig4/results.nc):
    rf_atlas renders either method's RFs, the first by default."""
    from analysis.results import stack_methods

    gradient = make_report_results(seed=1).assign_attrs(rf_method="gradient")
    both = write_results(stack_methods([make_report_results(), gradient]), tmp_path / "both.nc")
    for method, shown in ((None, "actmax"), ("gradient", "gradient")):
        html = run_report(
            NOTEBOOKS / "rf_atlas.ipynb",
            {
                "results": str(both),
                "method": method,
                "figures_dir": str(tmp_path / "f"),
                "max_rfs": 2,
            },  # fmt: skip
            tmp_path / "reports",
            name=f"atlas_{shown}",
        )
        assert f"layer retina_2 RFs mapped by {shown}" in html.read_text()
        assert "actmax vs gradient" in html.read_text()  # the methods' agreement table
