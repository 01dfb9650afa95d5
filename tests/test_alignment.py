"""Whether weight decay can align Kolen-Pollack's feedback, and where Oja's P sits among the
error's principal directions (analysis.alignment).

Claims: under RMSprop, weight decay shrinks each element of Q by lr * lambda / (sqrt(v) + eps)
per step (the number weight_decay_alignment reports, at the median sqrt(v)); the learning
rate's geometric decay bounds what decay can ever remove; a layer without a learned Q is
refused in one line. error_subspace gives each leading eigenvector of the error covariance
its overlap with P's rows: 1 for a direction P spans, 0 for one it misses.
"""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

from analysis.alignment import weight_decay_alignment
from retina_raf import runs
from retina_raf.errors import DataError
from retina_raf.models import model_from_config
from retina_raf.train import make_optimizer, train


@pytest.fixture(scope="module")
def raf_run(tmp_path_factory, tiny_config):
    cfg = tiny_config("raf-r2", epochs=2, extra=("train.weight_decay=0.001",))
    return train(cfg, tmp_path_factory.mktemp("runs"), log=lambda m: None)


def test_the_reported_rate_is_what_a_decay_only_step_of_the_runs_optimizer_does(raf_run):
    """Restore the run's model and RMSprop state, give every parameter a zero loss gradient
    and step: Q's median relative shrink is the reported lr * lambda / sqrt(v), up to the
    step's own update of v (v -> alpha v, so sqrt(v) by sqrt(alpha))."""
    found = weight_decay_alignment(raf_run, "vvs_1")
    cfg = runs.load_config(raf_run)
    state = torch.load(raf_run / "checkpoint.pt", weights_only=False)
    model = model_from_config(cfg.model)
    model.load_state_dict(state["model"])
    optimizer = make_optimizer(model, cfg)
    optimizer.load_state_dict(state["optimizer"])
    for group in optimizer.param_groups:
        group["lr"] = found["lr"]
    q = model.layers["vvs_1"].conv.q
    before = q.detach().clone()
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    optimizer.step()
    shrink = ((before - q.detach()) / before).median().item()
    expected = found["decay_per_step"] / math.sqrt(cfg.train.rmsprop_alpha)
    assert shrink == pytest.approx(expected, rel=0.05)
    assert found["epoch"] == 2 and found["weight_decay"] == 0.001


def test_the_learning_rates_decay_bounds_what_weight_decay_can_ever_remove(raf_run):
    """shrink_bound = 1 - exp(-rate * steps / (1 - gamma)) >= shrink_remaining, and the
    e-folding time is 1 / (rate * steps)."""
    found = weight_decay_alignment(raf_run)
    cfg = runs.load_config(raf_run)
    steps = cfg.data.train_limit // cfg.train.batch_size
    gamma = cfg.train.lr_decay
    rate = found["decay_per_step"] * steps
    assert found["shrink_bound"] == pytest.approx(-math.expm1(-rate / (1 - gamma)))
    assert found["shrink_bound"] >= found["shrink_remaining"]
    assert found["efolding_epochs"] == pytest.approx(1 / rate)
    assert 0 < found["alignment_deg"] < 180 and found["d_relative"] > 0


def test_a_layer_without_learned_feedback_is_refused(tmp_path, tiny_config):
    run_dir = train(tiny_config("bp", epochs=1), tmp_path, log=lambda m: None)
    with pytest.raises(DataError, match="not a RAF layer"):
        weight_decay_alignment(run_dir, "vvs_1")


def test_the_command_prints_one_row_per_run(raf_run, run_cli):
    code, printed, err = run_cli("kp-decay", raf_run, raf_run)
    assert code == 0, err
    lines = printed.strip().splitlines()
    assert len(lines) == 4 and lines[2].startswith(f"| {raf_run.name} | 2 |")


def test_the_command_writes_its_table_to_a_file(raf_run, run_cli, tmp_path):
    """--out FILE: the table it would print, in FILE, and nothing printed."""
    code, printed, err = run_cli("kp-decay", raf_run)
    assert code == 0, err
    code, written, err = run_cli("kp-decay", raf_run, "--out", tmp_path / "kp_decay.md")
    assert code == 0, err
    assert written == "" and (tmp_path / "kp_decay.md").read_text() == printed


def test_a_history_keeps_the_row_of_a_run_whose_folder_is_gone(raf_run, run_cli, tmp_path):
    """--history CSV: each run's latest row replaces its earlier one, and a run that is not
    read now (its folder gone) keeps the row the file holds, in the table too."""
    import shutil

    from analysis.alignment import KP_DECAY_COLUMNS

    history = tmp_path / "kp_decay.csv"
    other = tmp_path / "raf-r2-s1-copy"
    shutil.copytree(raf_run, other)
    code, both, err = run_cli("kp-decay", raf_run, other, "--history", history)
    assert code == 0, err
    code, again, err = run_cli("kp-decay", raf_run, "--history", history)  # other is gone
    assert code == 0, err
    assert again == both  # same rows: raf_run's replaced by itself, other's kept
    frame = pd.read_csv(history)
    assert list(frame.columns) == list(KP_DECAY_COLUMNS)
    assert sorted(frame["run"]) == sorted([raf_run.name, other.name])
    frame.loc[frame["run"] == raf_run.name, "alignment_deg"] = 1.0  # an older row of raf_run
    frame.to_csv(history, index=False)
    code, printed, err = run_cli("kp-decay", raf_run, "--history", history)
    assert code == 0, err
    assert printed == both and "| 1.0\u00b0 |" not in printed  # replaced by the checkpoint's
    history.write_text("run,epoch\nx,1\n")
    code, _, err = run_cli("kp-decay", raf_run, "--history", history)
    assert code != 0 and "is not a kp-decay history" in err


def test_the_command_takes_the_runs_of_an_experiment_that_learn_their_feedback(tmp_path, run_cli):
    """--experiment: the runs whose vvs_1 learns Q (raf-r2), not backprop's, not a run
    without a checkpoint."""
    from retina_raf.sweep import expand, load_experiment

    experiment = tmp_path / "exp.yaml"
    experiment.write_text(
        "name: kp\npresets: [raf-r2, bp, raf-r4]\nunconstrained_rule: bp\nseeds: [0]\n"
        "overrides:\n  model: {retina: {retina_channels: 4, vvs_channels: 4, vvs_layers: 1, "
        "kernel_size: 5, fc_units: 16}}\n  train: {epochs: 1, batch_size: 50, progress: false}\n"
        "  data: {train_limit: 100, test_limit: 50}\n"
    )
    out = tmp_path / "runs"
    raf, bp, _ = expand(load_experiment(experiment))  # raf-r4 is never trained
    for run in (raf, bp):
        train(run.config(), out, name=run.run_id, log=lambda m: None)
    code, printed, err = run_cli("kp-decay", "--experiment", experiment, "--runs-dir", out)
    assert code == 0, err
    rows = printed.strip().splitlines()[2:]
    assert [row.split(" | ")[0] for row in rows] == [f"| {raf.run_id}"]


def _with_p_on(run_dir, out, eigenvector_indices):
    """A copy of a RAF run whose vvs_1 P has as rows the given eigenvectors of its error
    covariance (0: the leading one)."""
    import shutil

    copy = out / f"{run_dir.name}-p{''.join(map(str, eigenvector_indices))}"
    shutil.copytree(run_dir, copy)
    state = torch.load(copy / "checkpoint.pt", weights_only=False)
    covariance = state["model"]["layers.vvs_1.conv.error_covariance"].double()
    eigenvectors = torch.linalg.eigh(covariance).eigenvectors.flip(1)
    p = eigenvectors[:, list(eigenvector_indices)].t()
    state["model"]["layers.vvs_1.conv.p"] = p.to(state["model"]["layers.vvs_1.conv.p"].dtype)
    torch.save(state, copy / "checkpoint.pt")
    return copy, torch.linalg.eigvalsh(covariance).flip(0)


def test_the_error_subspace_says_which_principal_directions_p_spans(raf_run, tmp_path):
    """P on the top-2 eigenvectors: overlaps 1, 1, then 0, and all of the top-2 variance;
    P on the first and third (a saddle of Oja's rule): overlaps 1, 0, 1 and the share
    (l1 + l3) / (l1 + l2); the overlaps of all m eigenvectors sum to the rank."""
    from analysis.alignment import error_subspace

    top, eigenvalues = _with_p_on(raf_run, tmp_path, (0, 1))
    found = error_subspace(top, n_eigen=4)
    assert found["rank"] == 2 and found["overlap"] == pytest.approx([1, 1, 0, 0], abs=1e-5)
    assert found["variance_captured"] == pytest.approx(1, abs=1e-5)
    assert found["eigenvalue_share"] == pytest.approx(
        (eigenvalues[:4] / eigenvalues.sum()).tolist()
    )
    saddle, _ = _with_p_on(raf_run, tmp_path, (0, 2))
    found = error_subspace(saddle, n_eigen=3)
    assert found["overlap"] == pytest.approx([1, 0, 1], abs=1e-5)
    expected = float((eigenvalues[0] + eigenvalues[2]) / (eigenvalues[0] + eigenvalues[1]))
    assert found["variance_captured"] == pytest.approx(expected, rel=1e-4)
    trained = error_subspace(raf_run, n_eigen=10**6)  # every eigenvector
    assert len(trained["overlap"]) == trained["channels"]
    assert sum(trained["overlap"]) == pytest.approx(2)


def test_the_error_subspace_command_takes_runs_and_refuses_backprop(raf_run, run_cli, tmp_path,
                                                                     tiny_config):  # fmt: skip
    code, printed, err = run_cli("error-subspace", raf_run, "--eigenvectors", "3")
    assert code == 0, err
    rows = printed.strip().splitlines()
    assert len(rows) == 3 and rows[2].startswith(f"| {raf_run.name} | 2 | 2 |")
    assert len(rows[2].split(" | ")[4].split(", ")) == 3  # three overlaps
    bp_run = train(tiny_config("bp", epochs=1), tmp_path, log=lambda m: None)
    code, _, err = run_cli("error-subspace", bp_run)
    assert code == 2 and "no P" in err and len(err.strip().splitlines()) == 1


def test_the_error_subspace_history_keeps_one_row_set_per_run_and_epoch(raf_run, run_cli,
                                                                         tmp_path):  # fmt: skip
    """error-subspace --history: each call adds the runs' current epoch to the CSV, replacing
    a row set of the same run and epoch and keeping the others (earlier epochs, other runs),
    and shows every epoch the file holds; a CSV of something else is refused in one line."""
    import pandas as pd

    from analysis.alignment import read_error_subspace_history

    history = tmp_path / "history.csv"
    earlier = pd.DataFrame({"run": [raf_run.name] * 2, "epoch": [0, 0], "rank": [2, 2],
                            "eigenvector": [1, 2], "eigenvalue_share": [0.5, 0.2],
                            "overlap": [0.3, 0.1], "variance_captured": [0.4, 0.4]})  # fmt: skip
    earlier.to_csv(history, index=False)
    for _ in range(2):  # the same epoch twice: its rows are replaced, not repeated
        code, printed, err = run_cli("error-subspace", raf_run, "--eigenvectors", "3",
                                     "--history", history)  # fmt: skip
        assert code == 0, err
    saddle, _ = _with_p_on(raf_run, tmp_path, (0, 2))
    code, printed, err = run_cli("error-subspace", saddle, "--eigenvectors", "3",
                                 "--history", history, "--figure", tmp_path / "p.png")  # fmt: skip
    assert code == 0, err
    assert (tmp_path / "p.png").stat().st_size > 0  # rank 2 below 3 eigenvectors: drawn
    kept = read_error_subspace_history(history)
    assert kept.groupby(["run", "epoch"]).size().to_dict() == {
        (raf_run.name, 0): 2, (raf_run.name, 2): 3, (saddle.name, 2): 3}  # fmt: skip
    rows = printed.strip().splitlines()[2:]
    assert [row.split(" | ")[:2] for row in rows] == [[f"| {raf_run.name}", "0"],
        [f"| {raf_run.name}", "2"], [f"| {saddle.name}", "2"]]  # fmt: skip
    assert rows[0].endswith("| 0.500, 0.200 | 0.30, 0.10 | 0.400 |")
    assert rows[2].split(" | ")[4] == "1.00, 0.00, 1.00"  # P on the first and third

    code, _, err = run_cli("error-subspace", raf_run, "--eigenvectors", "2",
                           "--figure", tmp_path / "none.png")  # fmt: skip
    assert code == 0 and "note: no figure" in err and not (tmp_path / "none.png").exists()
    code, _, err = run_cli("error-subspace", raf_run, "--figure", tmp_path / "p.txt")
    assert code == 2 and ".png, .pdf or .svg" in err

    other = tmp_path / "other.csv"
    other.write_text("a,b\n1,2\n")
    code, _, err = run_cli("error-subspace", raf_run, "--history", other)
    assert code == 2 and "not an error-subspace history" in err and len(err.splitlines()) == 1
    assert other.read_text() == "a,b\n1,2\n"
