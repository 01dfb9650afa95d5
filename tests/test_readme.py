"""The README's promises to a newcomer (issue 13): its Python example runs as written, and
reports/ exists in a fresh clone with a README saying what is committed there."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from retina_raf.data import DATA_SETS, resolve_data

ROOT = Path(__file__).resolve().parents[1]
# runs name the full gray set (cifar10-gray) or give a path to its file
GRAY_FILE = DATA_SETS["cifar10-gray"]


def test_readme_convert_example_runs_as_written():
    """The learning-rules example: a small CNN converted to RAF and one backward pass."""
    readme = (ROOT / "README.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "convert(" in b]
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)  # noqa: S102
    model = namespace["model"]
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_reports_folder_is_tracked_with_its_readme():
    """A fresh clone has reports/ (its README is tracked); the demo's output is ignored."""
    tracked = subprocess.run(["git", "ls-files", "reports"], cwd=ROOT, capture_output=True,
                             text=True).stdout.split()  # fmt: skip
    if not tracked:  # not a git checkout (e.g. an sdist): the file itself must be there
        assert (ROOT / "reports" / "README.md").is_file()
    else:
        assert "reports/README.md" in tracked
    ignored = subprocess.run(["git", "check-ignore", "reports/demo/x.html", "reports/fig4/x.nc"],
                             cwd=ROOT, capture_output=True, text=True).stdout.split()  # fmt: skip
    if tracked:
        assert ignored == ["reports/demo/x.html"]


def test_readme_pilot_findings_are_what_the_published_file_says():
    """The published pilot (reports/pilot/trajectories.nc): the README's table is what
    `retina-raf findings` computes from it, and every run trained on all 50,000 images of
    the full grayscale CIFAR-10 with the epochs the table states."""
    from analysis.results import open_results
    from analysis.trajectory import findings_table

    with open_results(ROOT / "reports" / "pilot" / "trajectories.nc") as ds:
        ds = ds.load()
    table = findings_table(ds)
    assert table in (ROOT / "README.md").read_text()
    for run in range(ds.sizes["run"]):
        config = yaml.safe_load(str(ds["config"].values[run]))
        assert config["data"]["train_limit"] is None  # every training image
        assert resolve_data(config["data"]["path"], must_exist=False).name == GRAY_FILE
        assert config["train"]["retina_snapshots"]
        epochs = ds["test_acc"].isel(run=run).dropna("epoch")["epoch"].values
        assert list(epochs) == list(range(1, int(epochs.max()) + 1))  # every epoch recorded


def assert_accounts_for_every_run(ds, experiment, readme: str) -> None:
    """A published file's runs and its ``missing_runs`` are every run of the experiment, and
    the README says how many of them are in."""
    from retina_raf.sweep import expand

    planned = sorted(run.run_id for run in expand(experiment))
    present = [str(r) for r in ds["run_id"].values]
    assert sorted(present + ds.attrs["missing_runs"].split()) == planned
    assert f"{len(present)} of the {len(planned)} runs" in readme


@pytest.mark.parametrize("experiment_name", ["cpu_fig4", "cpu_fig4_long"])
def test_readme_cpu_fig4_findings_are_what_the_published_file_says(experiment_name):
    """The published CPU Fig. 4 (reports/cpu_fig4/results.nc, issue 15) and its 12-epoch
    continuation (reports/cpu_fig4_long/): each opens with analysis.results and holds
    retina_2 RFs by actmax, by gradient and by STA; its runs and the ones it lists as not
    finished yet are every run of its experiment file (the README says how many are in); every
    run trained the experiment's epochs on all 50,000 images of the full grayscale CIFAR-10;
    the file is small; the README's table is what `retina-raf findings` computes from it."""
    from analysis.results import load_results, open_results
    from analysis.stats import findings_markdown
    from retina_raf.sweep import load_experiment

    path = ROOT / "reports" / experiment_name / "results.nc"
    experiment = load_experiment(ROOT / "experiments" / f"{experiment_name}.yaml")
    assert path.stat().st_size < 10e6
    with open_results(path) as ds:
        assert list(ds["method"].values) == ["actmax", "gradient", "sta"]
    ds = load_results(path, metrics=["symmetry", "osi", "fraction_center_surround"])
    readme = (ROOT / "README.md").read_text()
    assert findings_markdown(ds) in readme
    assert_accounts_for_every_run(ds, experiment, readme)
    epochs = experiment.overrides["train"]["epochs"]
    for run in range(ds.sizes["run"]):
        config = yaml.safe_load(str(ds["config"].values[run]))
        assert config["data"]["train_limit"] is None
        assert resolve_data(config["data"]["path"], must_exist=False).name == GRAY_FILE
        history = ds["train_images"].isel(run=run).dropna("epoch")
        assert list(history["epoch"].values) == list(range(1, epochs + 1))
        assert (history == 50000).all()


def test_readme_cpu_fig4_long_trajectories_are_what_the_published_file_says():
    """reports/cpu_fig4_long/trajectories.nc (make publish TRAJECTORY=1): the RFs at every
    epoch 0-12 of the same runs as its results.nc, and the README's per-run table at the
    last epoch is what `retina-raf findings` computes from it."""
    from analysis.results import open_results
    from analysis.trajectory import findings_table

    published = ROOT / "reports" / "cpu_fig4_long"
    with open_results(published / "trajectories.nc") as ds:
        ds = ds.load()
    with open_results(published / "results.nc") as results:
        assert sorted(map(str, ds["run_id"].values)) == sorted(map(str, results["run_id"].values))
    assert findings_table(ds) in (ROOT / "README.md").read_text()
    assert list(ds["epoch"].values) == list(range(13))
    assert ds["test_acc"].sel(epoch=12).notnull().all()  # every run reached epoch 12


def test_readme_fig3_mlp_findings_are_what_the_published_file_says():
    """The published CPU-scale Fig. 3 (reports/fig3_mlp/results.nc, issue 12): an accuracy
    dataset whose runs and the ones it lists as not finished yet are every run of
    experiments/fig3_mlp_cpu.yaml (the README says how many are in); every run trained the
    experiment's epochs, with a test accuracy after each; the README's table is what
    `retina-raf findings` computes from it."""
    import numpy as np

    from analysis.accuracy import findings_markdown, load_accuracy
    from retina_raf.sweep import load_experiment

    path = ROOT / "reports" / "fig3_mlp" / "results.nc"
    experiment = load_experiment(ROOT / "experiments" / "fig3_mlp_cpu.yaml")
    assert path.stat().st_size < 1e6
    ds = load_accuracy(path)
    readme = (ROOT / "README.md").read_text()
    assert findings_markdown(ds) in readme
    assert_accounts_for_every_run(ds, experiment, readme)
    epochs = experiment.overrides["train"]["epochs"]
    assert (ds["epochs"] == epochs).all() and ds.sizes["epoch"] == epochs
    assert np.isfinite(ds["test_acc_curve"].values).all()
