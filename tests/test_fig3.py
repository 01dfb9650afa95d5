"""The paper's Fig. 3 beyond the networks: RGB, CIFAR-100 and class-subset data,
the model.arch switch in run configs (the retina unchanged), experiments of several
conditions, the six experiment files, the accuracy results and their notebook."""

from __future__ import annotations

import io
import pickle
from collections import Counter
from pathlib import Path

import nbformat
import numpy as np
import pytest
import torch
import yaml

from analysis.accuracy import collect_accuracy, gap_to_bp, load_accuracy, write_accuracy
from analysis.report import notebook_parameters, run_report
from retina_raf.config import resolve_run_config
from retina_raf.data import GrayCifar10, load_cifar10, load_cifar100, select_classes
from retina_raf.errors import ConfigError, DataError
from retina_raf.runs import identity_settings, run_identity
from retina_raf.sweep import expand, load_experiment, run_sweep
from retina_raf.train import _load_data, make_optimizer

REPO = Path(__file__).resolve().parents[1]
EXPERIMENTS = REPO / "experiments"
NOTEBOOKS = REPO / "notebooks"
MLP_RGB = {"model": {"arch": "mlp", "in_channels": 3}, "data": {"rgb": True}}


def rgb_npz(path: Path, n_train: int = 60, n_test: int = 30, seed: int = 0) -> Path:
    """A synthetic CIFAR-10-shaped RGB .npz: labels cycle 0..9, pixels random uint8."""
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        "y_train": (np.arange(n_train) % 10).astype(np.uint8),
        "x_test": rng.integers(0, 256, (n_test, 32, 32, 3), dtype=np.uint8),
        "y_test": (np.arange(n_test) % 10).astype(np.uint8),
    }
    np.savez(path, **arrays)
    return path


# ------------------------------------------------------------------------------- data
def test_class_subset_relabels_and_keeps_only_those_classes():
    """select_classes keeps the images of the listed classes, in train and test, in their
    order, and relabels the i-th listed class i."""
    y_train, y_test = np.array([0, 3, 7, 1, 3, 9, 7, 1, 2]), np.array([7, 7, 3, 5, 1])
    ds = GrayCifar10(
        x_train=np.arange(len(y_train))[:, None, None] * np.ones((1, 32, 32), np.uint8),
        y_train=y_train, x_test=np.arange(len(y_test))[:, None, None] * np.ones(
            (1, 32, 32), np.uint8), y_test=y_test, source="synthetic", gray="as stored",
    )  # fmt: skip
    sub = select_classes(ds, [3, 7, 1])
    assert sub.y_train.tolist() == [0, 1, 2, 0, 1, 2]
    assert sub.x_train[:, 0, 0].tolist() == [1, 2, 3, 4, 6, 7]  # which images: in order
    assert sub.y_test.tolist() == [1, 1, 0, 2]
    assert sub.x_test[:, 0, 0].tolist() == [0, 1, 2, 4]
    first = select_classes(load_cifar10(), 4)  # the embedded sample: classes 0..3
    assert set(first.y_train.tolist()) == set(first.y_test.tolist()) == {0, 1, 2, 3}
    assert Counter(first.y_train.tolist()) == {c: 400 for c in range(4)}
    assert Counter(first.y_test.tolist()) == {c: 100 for c in range(4)}
    for bad in (1, [2, 2], [3, 12]):
        with pytest.raises(DataError, match="classes"):
            select_classes(ds, bad)


def test_rgb_run_data_are_channels_first_subset_and_standardized_per_channel(tmp_path):
    """A run with data.rgb and data.classes: (N, 3, 32, 32) batches, labels 0..d-1, the
    model's outputs d, per-channel standardization from the training images."""
    path = rgb_npz(tmp_path / "rgb.npz")
    cfg = resolve_run_config("bp", 0, {**MLP_RGB, "data": {"rgb": True, "path": str(path),
                                                          "classes": 3}})  # fmt: skip
    assert cfg.model.num_classes == 3
    train, test = _load_data(cfg, torch.device("cpu"))
    assert train.images.shape == (18, 3, 32, 32) and len(test) == 9
    assert set(train.labels.tolist()) == set(test.labels.tolist()) == {0, 1, 2}
    x = torch.cat([x for x, _ in train.batches(64)])
    assert torch.allclose(x.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(x.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-4)
    raw = np.load(path)["x_train"]
    first = (raw[1].transpose(2, 0, 1) / 255.0 - np.asarray(train.mean).reshape(3, 1, 1)) / (
        np.asarray(train.std).reshape(3, 1, 1))  # fmt: skip
    assert np.allclose(x[1].numpy(), first, atol=1e-5)  # image 1 is class 1: kept, second
    with pytest.raises(DataError, match="colour images"):
        load_cifar10(None, rgb=True)  # the embedded sample is gray


def test_cifar100_reads_torchvision_folders_and_fails_clearly_without(tmp_path):
    root = tmp_path / "cifar100"
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name, n in (("train", 200), ("test", 100)):
        entry = {"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                 "fine_labels": list(np.arange(n) % 100), "coarse_labels": [0] * n}  # fmt: skip
        (folder / name).write_bytes(pickle.dumps(entry))
    ds = load_cifar100(root)
    assert ds.x_train.shape == (200, 32, 32, 3) and ds.n_classes == 100
    assert set(select_classes(ds, 50).y_test.tolist()) == set(range(50))
    with pytest.raises(DataError, match="CIFAR100"):
        load_cifar100(tmp_path / "nowhere")
    cfg = resolve_run_config("bp", 0, {**MLP_RGB, "data": {
        "rgb": True, "dataset": "cifar100", "path": str(root), "classes": 75}})  # fmt: skip
    assert cfg.model.num_classes == 75
    train, _ = _load_data(cfg, torch.device("cpu"))
    assert set(train.labels.tolist()) <= set(range(75)) and len(train) == 150


# ---------------------------------------------------------------------------- configs
def test_retina_configs_are_unchanged_by_the_arch_switch():
    """Every new field defaults to the retina's behaviour and stays out of run ids."""
    cfg = resolve_run_config("raf-r4", 3)
    assert cfg.model.arch == "retina" and cfg.train.amsgrad is False and cfg.data.rgb is False
    assert identity_settings(cfg) == {}
    assert run_identity(cfg) == {"preset": "raf-r4", "rank": 4, "n_bn": 32, "seed": 3,
                                 "rule": "raf"}  # fmt: skip
    with pytest.raises(ConfigError, match="model.layer_rank"):
        resolve_run_config("raf-r4", 0, {"model": {"rank": 4}})
    with pytest.raises(ConfigError, match="in_channels"):
        resolve_run_config("bp", 0, {"data": {"rgb": True}})


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"model": {"arch": "mlp"}, "data": {"rgb": True}}, "in_channels: 1"),
        (
            {
                **MLP_RGB,
                "data": {"rgb": True, "classes": 4},
                "model": {"arch": "mlp", "in_channels": 3, "num_classes": 7},
            },
            "num_classes: 7",
        ),  # fmt: skip
        ({**MLP_RGB, "data": {"rgb": True, "classes": 12}}, "CIFAR-10 has 10 classes"),
        ({"model": {"arch": "cnn"}}, "not allowed"),
        ({**MLP_RGB, "train": {"retina_snapshots": True}}, "has no retina"),
    ],
)
def test_fig3_configs_are_validated(overrides, message):
    with pytest.raises(ConfigError, match=message):
        resolve_run_config("raf", 0, overrides)


def test_adam_with_amsgrad():
    cfg = resolve_run_config("bp", 0, {**MLP_RGB, "train": {"optimizer": "adam",
                                                            "amsgrad": True}})  # fmt: skip
    optimizer = make_optimizer(torch.nn.Linear(2, 2), cfg)
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["amsgrad"] is True


def test_fused_adam_follows_torchs_default_adam_and_resumes_from_its_state():
    """Adam runs as torch's fused kernel (docs/performance.md#fig3); its
    trajectory is the default loop's (AMSGrad, weight decay) to float64 rounding, and a copy
    loaded from its state dict mid-run continues it exactly."""
    cfg = resolve_run_config("bp", 0, {**MLP_RGB, "train": {
        "optimizer": "adam", "amsgrad": True, "lr": 1e-2, "weight_decay": 4e-4}})  # fmt: skip
    torch.manual_seed(0)
    nets = [torch.nn.Linear(6, 4).double() for _ in range(3)]
    for net in nets[1:]:
        net.load_state_dict(nets[0].state_dict())
    fused = make_optimizer(nets[0], cfg)
    reference = torch.optim.Adam(nets[1].parameters(), lr=1e-2, weight_decay=4e-4, amsgrad=True,
                                 foreach=False)  # fmt: skip
    assert fused.defaults["fused"] is True
    x = torch.randn(20, 8, 6, dtype=torch.float64)

    def step(net, optimizer, batch):
        optimizer.zero_grad()
        (net(batch) ** 2).mean().backward()
        optimizer.step()

    for batch in x[:10]:
        step(nets[0], fused, batch)
        step(nets[1], reference, batch)
    resumed = make_optimizer(nets[2], cfg)
    nets[2].load_state_dict(nets[0].state_dict())
    checkpoint = io.BytesIO()  # through bytes, as a checkpoint: no buffer shared with `fused`
    torch.save(fused.state_dict(), checkpoint)
    checkpoint.seek(0)
    resumed.load_state_dict(torch.load(checkpoint))
    for batch in x[10:]:
        for net, optimizer in zip(nets, (fused, reference, resumed), strict=True):
            step(net, optimizer, batch)
    assert torch.allclose(nets[0].weight, nets[1].weight, rtol=0, atol=1e-12)
    assert torch.equal(nets[0].weight, nets[2].weight) and torch.equal(nets[0].bias, nets[2].bias)


# ------------------------------------------------------------------------ experiments
def test_conditions_are_separate_grids_and_are_validated(tmp_path):
    def write(**fields) -> Path:
        path = tmp_path / "exp.yaml"
        path.write_text(yaml.safe_dump({"name": "exp", **fields}))
        return path

    base = {"seeds": 2, "overrides": MLP_RGB}
    runs = expand(load_experiment(write(**base, conditions=[
        {"presets": ["bp"]},
        {"presets": ["raf"], "grid": {"model.constrain": ["fc_2", "fc_3"], "rank": [1, 4]}},
    ])))  # fmt: skip
    assert len(runs) == 2 * (1 + 4)
    assert [run.seed for run in runs[:5]] == [0] * 5  # seed-major across conditions
    assert runs[1].run_id.startswith("raf-constrainfc_2-rank1-s0-")
    assert runs[0].config().model.rank is None  # bp gets no rank from the raf condition
    for fields, message in [
        ({"conditions": [{"grid": {"rank": [1]}}]}, "names no presets"),
        ({"conditions": [{"presets": ["raf"], "seeds": [1]}]}, "unknown key 'conditions"),
        (
            {"grid": {"rank": [1]}, "conditions": [{"presets": ["raf"], "grid": {"rank": [2]}}]},
            "also an axis",
        ),  # fmt: skip
        (
            {"conditions": [{"presets": ["raf"], "grid": {"model.rank": [99999]}}]},
            "conditions\\[0\\].grid",
        ),  # fmt: skip
        (
            {"conditions": [{"presets": ["raf"], "overrides": {"rank": 2}, "grid": {"rank": [1]}}]},
            "also set in overrides",
        ),  # fmt: skip
    ]:
        with pytest.raises(ConfigError, match=message):
            load_experiment(write(**base, **fields))


def _panel(name: str) -> tuple[list, Counter]:
    """The runs of an experiment file and a count of their (rule, constrain, rank, d)."""
    runs = expand(load_experiment(EXPERIMENTS / f"{name}.yaml"))
    ids = [run_identity(run.config()) for run in runs]
    return runs, Counter((i["rule"], i["constrain"], i["rank"], i["d"]) for i in ids)


def _recipe(run, lr, wd, decay, epochs, arch):
    t, m, d = run.config().train, run.config().model, run.config().data
    return (t.optimizer, t.amsgrad, t.lr, t.weight_decay, t.lr_decay, t.epochs, t.batch_size,
            m.arch, d.rgb, m.in_channels) == ("adam", True, lr, wd, decay, epochs, 32, arch,
                                              True, 3)  # fmt: skip


def test_fig3a_one_layer_at_a_time():
    runs, counts = _panel("fig3a_mlp_layer_rank")
    expected = {("bp", "none", 512, 10): 10, ("raf", "none", 512, 10): 10}
    expected.update({("raf", f"fc_{k}", r, 10): 10 for k in (2, 3, 4) for r in (1, 2, 4, 10, 32)})
    assert counts == expected and len(runs) == 170
    assert {run.seed for run in runs} == set(range(10))
    assert all(_recipe(run, 6e-4, 4e-4, 0.975, 160, "mlp") for run in runs)
    cfg = runs[0].config().model
    assert (cfg.mlp.hidden_units, cfg.mlp.hidden_layers) == (512, 4)
    assert all(run.config().model.layer_rule == {"fc_5": "bp"} for run in runs)
    paper = load_experiment(EXPERIMENTS / "fig3a_mlp_layer_rank.yaml")
    from retina_raf.sweep import update_experiment

    paper = update_experiment(paper, sets=["model.layer_rule.fc_5=raf"])
    assert expand(paper)[1].config().model.layer_rule == {"fc_5": "raf"}


def test_fig3b_all_layers_against_the_narrow_network():
    runs, _ = _panel("fig3b_mlp_all_layers")
    rows = Counter((i["rule"], i["constrain"], i["rank"], i["width"])
                   for i in (run_identity(run.config()) for run in runs))  # fmt: skip
    expected = {("bp", "none", 512, 512): 10, ("bp", "none", 64, 64): 10,
                ("raf", "none", 512, 512): 10}  # fmt: skip
    expected.update({("raf", "all", r, 512): 10 for r in (64, 32, 16, 10)})
    assert rows == expected
    assert all(_recipe(run, 6e-4, 4e-4, 0.975, 160, "mlp") for run in runs)
    ranks = [run.config() for run in runs if run.config().model.rank == 64][0]
    from retina_raf.plan import layer_plan

    plan = layer_plan(ranks.model)
    assert plan == {"fc_2": ("raf", 64), "fc_3": ("raf", 64), "fc_4": ("raf", 64),
                    "fc_5": ("bp", None)}  # the readout sends its exact error  # fmt: skip


def test_fig3c_ranks_below_and_above_each_task_dimension():
    runs, counts = _panel("fig3c_task_dim")
    expected = {}
    for d in (2, 4, 6, 8, 10):
        expected[("bp", "none", 512, d)] = 5
        expected.update({("raf", "all", r, d): 5 for r in (1, 2, 4, 6, 8, 10, 16, 32)})
    assert counts == expected
    assert all(run.config().data.classes == run.config().model.num_classes for run in runs)
    assert all(_recipe(run, 6e-4, 4e-4, 0.975, 160, "mlp") for run in runs)
    runs100, counts100 = _panel("fig3c_task_dim_cifar100")
    assert {key[3] for key in counts100} == {50, 75, 100}
    assert all(run.config().data.dataset == "cifar100" for run in runs100)


def test_cpu_scale_mlp_file_holds_fig3a_and_the_offline_fig3c_with_the_papers_recipe():
    """fig3_mlp_cpu.yaml: 3a's one-layer-at-a-time grid at d = 10, 3c's all-layer ranks below
    and above each d, BP per d, 3 seeds; the appendix's recipe except 10 epochs."""
    runs, counts = _panel("fig3_mlp_cpu")
    expected = {("bp", "none", 512, d): 3 for d in (2, 4, 6, 8, 10)}
    expected[("raf", "none", 512, 10)] = 3
    expected.update({("raf", f"fc_{k}", r, 10): 3 for k in (2, 3, 4) for r in (1, 2, 4, 10, 32)})
    for d in (2, 4, 6, 8, 10):
        expected.update({("raf", "all", r, d): 3 for r in (1, 2, 4, 8, 16)})
    assert counts == expected and len(runs) == 138
    assert all(_recipe(run, 6e-4, 4e-4, 0.975, 10, "mlp") for run in runs)
    # d = 10 is all of CIFAR-10 (no class subset)
    assert all((run.config().data.classes or 10) == run.config().model.num_classes for run in runs)


def test_fig3d_draf_from_the_output_and_the_penultimate_layer():
    runs, counts = _panel("fig3d_draf")
    expected = {("bp", "none", 512, 10): 5}
    expected.update({("draf", "direct:fc_5", r, 10): 5 for r in (1, 2, 4, 10)})
    expected.update({("draf", "direct:fc_4", r, 10): 5 for r in (1, 2, 4, 10, 32, 128)})
    assert counts == expected
    assert all(_recipe(run, 6e-4, 4e-4, 0.975, 160, "mlp") for run in runs)
    assert all(run.config().model.direct_target == "all" for run in runs[1:11])


def test_fig3e_vgg_last_block_and_fractions():
    runs, counts = _panel("fig3e_vgg")
    expected = {("bp", "none", 512, 10): 5, ("raf", "none", 512, 10): 5}
    expected.update({("raf", "features.block_4", r, 10): 5 for r in (1, 2, 4, 10, 32, 128)})
    expected.update({("raf", "features", 64 * f // 8, 10): 5 for f in (4, 2, 1)})
    assert counts == expected
    assert all(_recipe(run, 5e-4, 5e-5, 0.98, 250, "vgg") for run in runs)


def test_fig3f_vit_every_matrix_at_rank_r():
    runs, counts = _panel("fig3f_vit")
    expected = {("bp", "none", 768, 10): 5, ("raf", "none", 768, 10): 5}
    expected.update({("raf", "all", r, 10): 5 for r in (1, 4, 10, 32, 128)})
    assert counts == expected
    assert all(_recipe(run, 3e-4, 1e-4, 0.98, 150, "vit") for run in runs)
    m = runs[0].config().model
    assert (m.vit.depth, m.vit.dim, m.vit.heads, m.vit.patch_size) == (7, 384, 4, 4)


def test_dry_run_of_a_fig3_file(run_cli, tmp_path):
    code, out, err = run_cli("sweep", EXPERIMENTS / "fig3d_draf.yaml", "--dry-run",
                             "--out", tmp_path)  # fmt: skip
    assert code == 0, err
    assert out.strip().splitlines()[-1] == "55 runs: 55 pending"
    assert "raf-direct_sourcefc_5-direct_rank1-s0-" in out
    code, out, err = run_cli("sweep", EXPERIMENTS / "fig3a_mlp_layer_rank.yaml", "--dry-run",
                             "--seeds", "3", "--out", tmp_path)  # fmt: skip
    assert code == 0 and out.strip().splitlines()[-1] == "51 runs: 51 pending"
    assert "-s2-" in out and "-s3-" not in out
    code, out, err = run_cli("sweep", EXPERIMENTS / "fig3a_mlp_layer_rank.yaml", "--dry-run",
                             "--seeds", "1,1", "--out", tmp_path)  # fmt: skip
    assert code == 2 and "listed twice" in err
    code, out, err = run_cli("sweep", EXPERIMENTS / "fig3a_mlp_layer_rank.yaml", "--dry-run",
                             "--seeds", "0", "--out", tmp_path)  # fmt: skip
    assert code == 2 and "--seeds 0," in err and len(err.strip().splitlines()) == 1
    code, out, err = run_cli("sweep", EXPERIMENTS / "fig3a_mlp_layer_rank.yaml", "--dry-run",
                             "--seeds", "0,", "--out", tmp_path)  # fmt: skip
    assert code == 0 and "-s0-" in out and "-s1-" not in out


# ------------------------------------------------------------------- results, notebook
def synthetic_accuracy(tmp_path: Path):
    """An accuracy dataset shaped like --collect's: BP and RAF at four ranks in two layers
    and in all layers, two tasks (d = 2, 4), two seeds."""
    import xarray as xr

    rows = []
    for d in (2, 4):
        for seed in (0, 1):
            rows.append(("bp", "none", 512, d, seed, 0.8))
            for layer in ("fc_2", "fc_3", "all"):
                for rank in (1, 2, 4, 8):
                    rows.append(("raf", layer, rank, d, seed, 0.8 - 0.1 * (rank < d)))
    acc = np.asarray([r[5] for r in rows]) + np.random.default_rng(0).normal(0, 0.01, len(rows))
    coords = {
        "run_id": ("run", [f"run{i}" for i in range(len(rows))]),
        "preset": ("run", [r[0] for r in rows]), "arch": ("run", ["mlp"] * len(rows)),
        "rule": ("run", [r[0] for r in rows]), "constrain": ("run", [r[1] for r in rows]),
        "rank": ("run", [r[2] for r in rows]), "rank_fraction": ("run", [np.nan] * len(rows)),
        "d": ("run", [r[3] for r in rows]), "width": ("run", [512] * len(rows)),
        "seed": ("run", [r[4] for r in rows]),
    }  # fmt: skip
    ds = xr.Dataset({"test_acc": ("run", acc), "best_test_acc": ("run", acc + 0.01)}, coords)
    return write_accuracy(ds, tmp_path / "results_accuracy.nc")


def test_gap_to_bp_compares_the_smallest_rank_at_least_d(tmp_path, run_cli):
    path = synthetic_accuracy(tmp_path)
    ds = load_accuracy(path)
    gaps = gap_to_bp(ds)
    assert len(gaps) == 6 and set(gaps["rank"]) == {2, 4}
    assert (gaps["difference"].abs() < 0.05).all() and (gaps["n_seeds"] == 2).all()
    with pytest.raises(DataError, match="no such results file"):
        load_accuracy(tmp_path / "missing.nc")
    code, out, err = run_cli("findings", path)
    assert code == 0, err
    assert out.count("\n| 2 | raf |") == 3 and out.count("\n| 4 | raf |") == 3


def accuracy_dataset(rows):
    """An accuracy dataset of (rule, constrain, rank, d, seed, test_acc[, width]) rows."""
    import xarray as xr

    coords = {name: ("run", [row[i] for row in rows])
              for i, name in enumerate(("rule", "constrain", "rank", "d", "seed"))}  # fmt: skip
    coords["width"] = ("run", [row[6] if len(row) > 6 else 512 for row in rows])
    return xr.Dataset({"test_acc": ("run", [row[5] for row in rows])}, coords)


def test_findings_say_whether_accuracy_reaches_bp_at_rank_d():
    """Per layer: accuracy at the smallest rank >= d against BP's (mean ± s.d., difference in
    percentage points, Welch's p) and the smallest rank from which on RAF stays within 1 pp of
    BP; a dip at a larger rank moves that rank up, and a layer that never reaches BP says so."""
    from analysis.accuracy import findings_markdown

    means = {"fc_2": {1: 0.60, 2: 0.70, 4: 0.805, 8: 0.80},
             "fc_3": {1: 0.81, 2: 0.70, 4: 0.81, 8: 0.81},
             "fc_4": {1: 0.60, 2: 0.60, 4: 0.60, 8: 0.60}}  # fmt: skip
    rows = [("bp", "none", 512, 4, 0, 0.80), ("bp", "none", 512, 4, 1, 0.82)]
    for layer, by_rank in means.items():
        for rank, mean in by_rank.items():
            rows += [("raf", layer, rank, 4, seed, mean + (0.01 * seed - 0.005)) for seed in (0, 1)]
    text = findings_markdown(accuracy_dataset(rows))
    lines = text.splitlines()
    assert lines[0].startswith("| d | rule | feedback at rank r | r |") and "1 pp" in lines[0]
    fc_2, fc_3, fc_4 = lines[2:]
    assert fc_2.startswith("| 4 | raf | fc_2 | 4 | 80.5 ± 0.7 (n = 2) | 81.0 ± 1.4 (n = 2) "
                           "| -0.5 |")  # fmt: skip
    assert fc_2.endswith("| 4 |") and fc_3.endswith("| 4 |") and fc_4.endswith("| none run |")
    assert fc_4.split(" | ")[6] == "-21.0"
    narrow_bp = [("bp", "none", 64, 4, seed, 0.5, 64) for seed in (0, 1)]  # Fig. 3b's BP-64
    assert findings_markdown(accuracy_dataset(rows + narrow_bp)) == text
    with pytest.raises(DataError, match="nothing to report"):
        findings_markdown(accuracy_dataset(rows[:2]))


def test_accuracy_panel_draws_full_rank_raf_as_a_reference_and_keeps_d_labelled():
    """Full-rank RAF is a reference line like BP (its rank, the layer width, would stretch the
    rank axis); every rank run gets a tick, and of two touching labels (8 and 10) d's stays."""
    import matplotlib

    matplotlib.use("Agg")
    from analysis.accuracy import plot_accuracy_vs_rank

    rows = [(rule, constrain, rank, 10, seed, 0.5)
            for seed in (0, 1)
            for rule, constrain, rank in [("bp", "none", 512), ("raf", "none", 512),
                                          *[("raf", "fc_2", r) for r in (1, 2, 4, 8, 10, 16, 32)]]
            ]  # fmt: skip
    fig = plot_accuracy_vs_rank(accuracy_dataset(rows))
    ax = fig.axes[0]
    fig.canvas.draw()
    assert list(ax.get_xticks()) == [1, 2, 4, 8, 10, 16, 32]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["1", "2", "4", "", "10", "16", "32"]
    legend = [t.get_text() for t in ax.get_legend().get_texts()]
    assert legend == ["RAF, fc_2 at rank $r$", "BP (n=2)", "RAF, full rank (n=2)", "$r = d$"]


def test_gap_panel_plots_raf_minus_bp_per_task_and_rings_the_smallest_rank_at_least_d():
    """Fig. 3c in one panel: per d, RAF (every layer at rank r) minus BP's mean in percentage
    points against r, the smallest rank >= d ringed; no BP for any task is a clear error."""
    import matplotlib

    matplotlib.use("Agg")
    from analysis.accuracy import plot_gap_vs_rank

    accuracy = {2: {1: 0.70, 2: 0.80, 4: 0.80}, 6: {1: 0.40, 2: 0.45, 4: 0.50, 8: 0.59}}
    bp = {2: 0.80, 6: 0.60}
    rows = [("bp", "none", 512, d, seed, bp[d]) for d in bp for seed in (0, 1)]
    rows += [("raf", "all", r, d, seed, acc) for d, by_rank in accuracy.items()
             for r, acc in by_rank.items() for seed in (0, 1)]  # fmt: skip
    rows += [("raf", "fc_2", 1, 2, 0, 0.1)]  # another layer's runs are not drawn
    fig = plot_gap_vs_rank(accuracy_dataset(rows))
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    for d, by_rank in accuracy.items():
        x, y = lines[f"d = {d}"].get_data()
        assert list(x) == list(by_rank)
        np.testing.assert_allclose(y, [100 * (a - bp[d]) for a in by_rank.values()])
    rings = [line for line in fig.axes[0].get_lines() if line.get_marker() == "o"
             and line.get_markerfacecolor() == "none"]  # fmt: skip
    assert sorted(float(ring.get_xdata()[0]) for ring in rings) == [2.0, 8.0]
    with pytest.raises(DataError, match="no task has both BP runs and RAF runs"):
        plot_gap_vs_rank(accuracy_dataset([row for row in rows if row[0] != "bp"]))


def test_accuracy_template_declares_parameters():
    declared = notebook_parameters(NOTEBOOKS / "accuracy_vs_rank.ipynb")
    assert {"results", "figures_dir", "metric", "facet"} <= set(declared)
    notebook = nbformat.read(NOTEBOOKS / "accuracy_vs_rank.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(not cell.outputs and cell.execution_count is None for cell in code)


@pytest.mark.slow
def test_accuracy_notebook_renders_a_panel_per_task(tmp_path):
    figures = tmp_path / "figures"
    html = run_report(NOTEBOOKS / "accuracy_vs_rank.ipynb",
                      {"results": str(synthetic_accuracy(tmp_path)), "figures_dir": str(figures)},
                      tmp_path / "reports")  # fmt: skip
    assert {p.name for p in figures.iterdir()} >= {"accuracy_vs_rank_d2.pdf",
                                                   "accuracy_vs_rank_d4.png",
                                                   "gap_to_bp_vs_rank.png"}  # fmt: skip
    text = html.read_text()
    assert "difference" in text and "rank from which every higher rank is within 1 pp" in text


@pytest.mark.slow
def test_sweep_collects_test_accuracy_by_rule_layer_rank_d_and_seed(tmp_path, run_cli):
    """A tiny Fig. 3 sweep end to end: train, --collect, the notebook on its results."""
    data = rgb_npz(tmp_path / "rgb.npz", n_train=64, n_test=32)
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny", "seeds": 2, "data": str(data),
        "overrides": {"model": {"arch": "mlp", "in_channels": 3,
                                "mlp": {"hidden_units": 8, "hidden_layers": 2}},
                      "train": {"optimizer": "adam", "amsgrad": True, "epochs": 1,
                                "batch_size": 16, "progress": False, "deterministic": False},
                      "data": {"rgb": True, "augment": False}},
        "grid": {"data.classes": [2, 4]},
        "conditions": [{"presets": ["bp"]},
                       {"presets": ["raf"], "grid": {"constrain": ["fc_2"], "rank": [1, 2]}}],
    }))  # fmt: skip
    rep = run_sweep(load_experiment(path), tmp_path / "runs")
    assert not rep.failed and len(rep.states) == 2 * 2 * 3
    code, out, err = run_cli("sweep", path, "--collect", "--out", tmp_path / "runs")
    assert code == 0, err
    ds = load_accuracy(tmp_path / "runs" / "results_accuracy.nc")
    assert ds.sizes["run"] == 12
    table = collect_accuracy([tmp_path / "runs" / rid for rid in ds["run_id"].values[:2]])
    assert table.sizes["run"] == 2
    keys = Counter(zip(ds["rule"].values, ds["constrain"].values, ds["rank"].values.tolist(),
                       ds["d"].values.tolist(), strict=True))  # fmt: skip
    assert keys == {(rule, layer, rank, d): 2 for d in (2, 4)
                    for rule, layer, rank in [("bp", "none", 8), ("raf", "fc_2", 1),
                                              ("raf", "fc_2", 2)]}  # fmt: skip
    assert ((ds.test_acc >= 0) & (ds.test_acc <= 1)).all()
    html = run_report(NOTEBOOKS / "accuracy_vs_rank.ipynb",
                      {"results": str(tmp_path / "runs" / "results_accuracy.nc"),
                       "figures_dir": str(tmp_path / "figures")}, tmp_path / "reports")  # fmt: skip
    assert html.is_file()
