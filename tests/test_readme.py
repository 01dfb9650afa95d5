"""The README's promises to a newcomer and the findings pages' to a reviewer.

The README's Python example and its quickstart run as written, every command of its
"Reproduce the paper" table parses, every relative link of the README, the docs and the
findings pages resolves, and each findings page (reports/<experiment>/README.md) quotes the
tables that `retina-raf findings` computes from its published files, which account for every
run of the experiment."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml

from retina_raf.data import DATA_SETS, resolve_data

ROOT = Path(__file__).resolve().parents[1]
REPORTS = ROOT / "reports"


def page(experiment: str) -> str:
    """The findings page of a published experiment."""
    return (REPORTS / experiment / "README.md").read_text()


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


def test_pilot_findings_are_what_the_published_file_says():
    """The published pilot (reports/pilot/trajectories.nc): its page's table is what
    `retina-raf findings` computes from it, and every run trained on all 50,000 images of
    the full grayscale CIFAR-10 with the epochs the table states."""
    from analysis.results import open_results
    from analysis.trajectory import findings_table

    with open_results(ROOT / "reports" / "pilot" / "trajectories.nc") as ds:
        ds = ds.load()
    table = findings_table(ds)
    assert table in page("pilot")
    for run in range(ds.sizes["run"]):
        config = yaml.safe_load(str(ds["config"].values[run]))
        assert config["data"]["train_limit"] is None  # every training image
        assert resolve_data(config["data"]["path"], must_exist=False).name == GRAY_FILE
        assert config["train"]["retina_snapshots"]
        epochs = ds["test_acc"].isel(run=run).dropna("epoch")["epoch"].values
        assert list(epochs) == list(range(1, int(epochs.max()) + 1))  # every epoch recorded


def assert_accounts_for_every_run(ds, experiment, text: str) -> None:
    """A published file's runs and its ``missing_runs`` are every run of the experiment, and
    its findings page says how many of them are in."""
    from retina_raf.sweep import expand

    planned = sorted(run.run_id for run in expand(experiment))
    present = [str(r) for r in ds["run_id"].values]
    assert sorted(present + ds.attrs["missing_runs"].split()) == planned
    assert f"{len(present)} of the {len(planned)} runs" in " ".join(text.split())


@pytest.mark.parametrize("experiment_name", ["cpu_fig4", "cpu_fig4_long"])
def test_cpu_fig4_findings_are_what_the_published_file_says(experiment_name):
    """The published CPU Fig. 4 (reports/cpu_fig4/results.nc) and its 12-epoch
    continuation (reports/cpu_fig4_long/): each opens with analysis.results and holds
    retina_2 RFs by actmax, by gradient and by STA; its runs and the ones it lists as not
    finished yet are every run of its experiment file (its findings page says how many are
    in); every run trained the experiment's epochs on all 50,000 images of the full grayscale
    CIFAR-10; the file is small; the page's table is what `retina-raf findings` computes."""
    from analysis.results import load_results, open_results
    from analysis.stats import findings_markdown
    from retina_raf.sweep import load_experiment

    path = ROOT / "reports" / experiment_name / "results.nc"
    experiment = load_experiment(ROOT / "experiments" / f"{experiment_name}.yaml")
    assert path.stat().st_size < 10e6
    with open_results(path) as ds:
        assert list(ds["rf_method"].values) == ["actmax", "gradient", "sta"]
    ds = load_results(path, metrics=["symmetry", "osi", "fraction_center_surround"])
    text = page(experiment_name)
    assert findings_markdown(ds) in text
    assert_accounts_for_every_run(ds, experiment, text)
    epochs = experiment.overrides["train"]["epochs"]
    for run in range(ds.sizes["run"]):
        config = yaml.safe_load(str(ds["config"].values[run]))
        assert config["data"]["train_limit"] is None
        assert resolve_data(config["data"]["path"], must_exist=False).name == GRAY_FILE
        history = ds["train_images"].isel(run=run).dropna("epoch")
        assert list(history["epoch"].values) == list(range(1, epochs + 1))
        assert (history == 50000).all()


def test_cpu_fig4_long_trajectories_are_what_the_published_file_says():
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
    assert findings_table(ds) in page("cpu_fig4_long")
    assert list(ds["epoch"].values) == list(range(13))
    assert ds["test_acc"].sel(epoch=12).notnull().all()  # every run reached epoch 12


def test_fig3_mlp_findings_are_what_the_published_file_says():
    """The published CPU-scale Fig. 3 (reports/fig3_mlp/results.nc): an accuracy
    dataset whose runs and the ones it lists as not finished yet are every run of
    experiments/fig3_mlp_cpu.yaml (its page says how many are in); every run trained the
    experiment's epochs, with a test accuracy after each; the README's table is what
    `retina-raf findings` computes from it."""
    import numpy as np

    from analysis.accuracy import findings_markdown, load_accuracy
    from retina_raf.sweep import load_experiment

    path = ROOT / "reports" / "fig3_mlp" / "results.nc"
    experiment = load_experiment(ROOT / "experiments" / "fig3_mlp_cpu.yaml")
    assert path.stat().st_size < 1e6
    ds = load_accuracy(path)
    text = page("fig3_mlp")
    assert findings_markdown(ds) in text
    assert_accounts_for_every_run(ds, experiment, text)
    epochs = experiment.overrides["train"]["epochs"]
    assert (ds["epochs"] == epochs).all() and ds.sizes["epoch"] == epochs
    assert np.isfinite(ds["test_acc_curve"].values).all()


# --------------------------------------------------------------------- README and links
def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("**/*.md")),
            *sorted(REPORTS.glob("**/README.md"))]  # fmt: skip


def test_every_relative_link_resolves():
    """Every relative link ``[text](target)`` of the README, the docs pages and the findings
    pages points at a file or folder of the repository (anchors are not checked here)."""
    broken = []
    for path in markdown_files():
        for target in re.findall(r"\]\(([^)\s]+)\)", path.read_text()):
            if re.match(r"[a-z]+://|mailto:|#", target):
                continue
            if not (path.parent / target.split("#")[0]).exists():
                broken.append(f"{path.relative_to(ROOT)}: {target}")
    assert broken == []


def section(title: str) -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## )", readme, re.S | re.M)
    assert match, title
    return match.group(1)


def test_every_reproduce_command_parses(tmp_path, run_cli):
    """Each command of the "Reproduce the paper" table names an experiment file that expands
    (`--dry-run`), or is the theory command, run here at a tiny size."""
    commands = re.findall(r"`(retina-raf [^`]+)`", section("Reproduce the paper"))
    assert len(commands) >= 9
    for command in dict.fromkeys(commands):
        args = shlex.split(command)[1:]
        if args[0] == "theory":
            args = [a if a != "DIR" else str(tmp_path / "theory") for a in args]
            args += ["--steps", "20", "--seeds", "1"]
        else:
            assert args[0] == "sweep" and (ROOT / args[1]).is_file(), command
            args = [args[0], str(ROOT / args[1]), *args[2:], "--dry-run"]
        code, _, err = run_cli(*args)
        assert code == 0, f"{command}: {err}"


@pytest.mark.slow
def test_the_quickstart_runs_as_written(tmp_path, monkeypatch, run_cli, tiny_sets):
    """The README's command-line quickstart, in a fresh folder, at a tiny size (training on
    a few hundred images of the embedded sample, a short theory run): every command succeeds
    and writes where the next one reads."""
    block = re.search(r"```bash\n(.*?)```", section("Quickstart"), re.S).group(1)
    commands = [line for line in block.splitlines() if line.startswith("retina-raf ")]
    assert [c.split()[1] for c in commands] == ["train", "rfs", "metrics", "theory", "sweep"]
    monkeypatch.chdir(tmp_path)
    (tmp_path / "experiments").symlink_to(ROOT / "experiments")
    tiny = [s for s in tiny_sets if not s.startswith("model.retina.n_bn")]
    for command in commands:
        args = shlex.split(command)[1:]
        if args[0] == "train":
            args += [arg for s in tiny for arg in ("--set", s)] + ["--epochs", "1"]
        elif args[0] == "theory":
            args += ["--steps", "20", "--seeds", "1"]
        code, _, err = run_cli(*args)
        assert code == 0, f"{command}: {err}"
    assert (tmp_path / "runs" / "quickstart" / "metrics.nc").is_file()
    assert (tmp_path / "runs" / "quickstart" / "theory" / "fig2.nc").is_file()


# ----------------------------------------------------------------------------- paper_fig4
def test_paper_fig4_expands_to_the_stated_runs_with_the_default_recipe():
    """experiments/paper_fig4.yaml: 7 conditions x seeds 0-2, seed 0's in the stated order of
    priority; every run has the package's default recipe (the paper's), 120 epochs, bf16
    autocast, retina snapshots every epoch; the rank constrains only vvs_1's feedback (into
    the retina) and every other layer learns by backprop."""
    from retina_raf.config import resolve_run_config
    from retina_raf.sweep import expand, load_experiment

    runs = expand(load_experiment(ROOT / "experiments" / "paper_fig4.yaml"))
    order = ["raf-r2", "raf-r32", "raf-aligned-r2", "bp-bottleneck-1", "bp",
             "draf-bottleneck-4", "raf-r4"]  # fmt: skip
    assert [(r.config().preset, r.config().seed) for r in runs] == [
        (preset, seed) for seed in (0, 1, 2) for preset in order
    ]
    default = resolve_run_config("bp")
    for run in runs:
        cfg = run.config()
        t, m = cfg.train, cfg.model
        assert (t.optimizer, t.lr, t.weight_decay, t.lr_decay, t.batch_size) == (
            default.train.optimizer, default.train.lr, default.train.weight_decay,
            default.train.lr_decay, default.train.batch_size)  # fmt: skip
        assert (t.rmsprop_alpha, t.rmsprop_eps) == (0.99, 1e-8) and t.epochs == 120
        assert t.amp and t.retina_snapshots and t.checkpoint_every == 1
        assert (
            (m.retina.vvs_layers, m.init, m.retina.dropout)
            == (3, "kaiming", 0.5)
            == (default.model.retina.vvs_layers, default.model.init, default.model.retina.dropout)
        )
        assert cfg.data.standardize and cfg.data.augment and cfg.data.path == "cifar10-gray"
        assert m.rule == "bp" and set(m.layer_rule) <= {"vvs_1"}
        if cfg.preset.startswith("raf-"):
            rank = int(cfg.preset.rsplit("-r", 1)[1])
            assert m.layer_rank == {"vvs_1": rank}


def test_paper_fig4_findings_are_what_the_published_file_says():
    """reports/paper_fig4/trajectories.nc, published as the runs train: its page quotes the
    tables `retina-raf findings --epoch ...` computes from it, and the file accounts for every
    run of the experiment (each run in it is finished or training, with its epoch; the others
    are listed as not started)."""
    from analysis.results import open_results
    from analysis.trajectory import findings_table
    from retina_raf.sweep import expand, load_experiment

    with open_results(REPORTS / "paper_fig4" / "trajectories.nc") as ds:
        ds = ds.load()
    text = page("paper_fig4")
    table = findings_table(ds)
    assert table in text
    planned = [r.run_id for r in expand(load_experiment(ROOT / "experiments" / "paper_fig4.yaml"))]
    present = [str(r) for r in ds["run_id"].values]
    assert sorted(present + ds.attrs["missing_runs"].split()) == sorted(planned)
    rows = [line for line in table.splitlines()[2:]]
    assert len(rows) == len(planned)
    statuses = {row.split(" | ")[2] for row in rows}
    assert statuses <= {"finished", "not started"} | {
        s for s in statuses
        if re.fullmatch(r"(training|stopped) \(\d+ of 120\)(, no checkpoint)?", s)
        or re.fullmatch(r"restarted \(first attempt: \d+ of 120\)", s)
    }  # fmt: skip
    published = (REPORTS / "paper_fig4" / "findings.md").read_text()
    assert table in published


def test_paper_fig4_kp_decay_table_is_what_its_history_holds():
    """reports/paper_fig4/kp_decay.md and the page quote the table of kp_decay.csv, one row
    per run that learns Q by Kolen-Pollack, each a run of the experiment."""
    import pandas as pd

    from analysis.alignment import KP_DECAY_COLUMNS, kp_decay_markdown
    from retina_raf.sweep import expand, load_experiment

    folder = REPORTS / "paper_fig4"
    frame = pd.read_csv(folder / "kp_decay.csv")
    assert list(frame.columns) == list(KP_DECAY_COLUMNS) and frame["run"].is_unique
    planned = {r.run_id for r in expand(load_experiment(ROOT / "experiments" / "paper_fig4.yaml"))}
    assert set(frame["run"]) <= planned
    table = kp_decay_markdown(frame)
    assert (folder / "kp_decay.md").read_text().strip() == table
    assert table in page("paper_fig4")


def test_paper_fig4_feedback_readout_is_what_the_published_file_says():
    """reports/paper_fig4/feedback_readout.nc: its page and feedback_readout.md quote the
    table `retina-raf feedback-rfs` computes from it, for runs of the experiment, each with a
    montage beside it."""
    from analysis.feedback_readout import readout_table
    from analysis.results import open_results
    from retina_raf.sweep import expand, load_experiment

    folder = REPORTS / "paper_fig4"
    with open_results(folder / "feedback_readout.nc") as ds:
        ds = ds.load()
    table = readout_table(ds)
    assert table in page("paper_fig4")
    assert (folder / "feedback_readout.md").read_text() == table + "\n"
    planned = {r.run_id for r in expand(load_experiment(ROOT / "experiments" / "paper_fig4.yaml"))}
    assert set(map(str, ds["run_id"].values)) <= planned
    for run_id in ds["run_id"].values:
        assert (folder / "feedback_readout" / f"readout_{run_id}.png").is_file()
