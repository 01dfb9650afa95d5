"""Training runs (docs/design.md#training): run folders, resume, atomic checkpoints, divergence,
CLI."""

from __future__ import annotations

import pytest
import torch
import xarray as xr

import retina_raf.train as train_module
from retina_raf.config import parse_overrides, resolve_run_config
from retina_raf.errors import RunError
from retina_raf.train import load_trained, run_id, run_identity, train


def _weights(run_dir):
    return torch.load(run_dir / "model.pt", weights_only=False)["model"]


def test_run_folder_contents(tmp_path, tiny_config):
    """A run writes config.yaml, checkpoint.pt, history.nc (one row per epoch, with the
    feedback diagnostics), model.pt and DONE; load_trained gives an eval-mode model."""
    run_dir = train(tiny_config(), tmp_path, log=lambda m: None)
    for name in ("config.yaml", "checkpoint.pt", "history.nc", "model.pt", "DONE"):
        assert (run_dir / name).is_file(), name
    with xr.open_dataset(run_dir / "history.nc", engine="h5netcdf") as history:
        assert history.sizes["epoch"] == 2
        for var in ("train_loss", "test_loss", "train_acc", "test_acc", "lr"):
            assert history[var].notnull().all(), var
        assert "alignment_deg" in history and "layer" in history.dims
        assert history.attrs["preset"] == "raf-r2"
    model, config = load_trained(run_dir)
    assert not model.training and config["preset"] == "raf-r2"
    assert model(torch.rand(2, 1, 32, 32)).shape == (2, 10)
    assert run_identity(config) == {"preset": "raf-r2", "rank": 2, "n_bn": 32, "seed": 0,
                                    "rule": "raf"}  # fmt: skip


def test_finished_run_is_not_retrained(tmp_path, tiny_config):
    """Running a finished run again trains nothing and says so."""
    cfg = tiny_config(epochs=1)
    run_dir = train(cfg, tmp_path, log=lambda m: None)
    before = (run_dir / "model.pt").stat().st_mtime_ns
    messages = []
    train(cfg, tmp_path, log=messages.append)
    assert any("already finished" in m for m in messages)
    assert (run_dir / "model.pt").stat().st_mtime_ns == before


class _Stop(Exception):
    pass


def _stop_after_epoch(n):
    def log(message):
        if f"epoch {n}/" in message:
            raise _Stop

    return log


@pytest.mark.parametrize("preset", ["raf-r2", "bp-bottleneck-2", "draf-bottleneck-2"])
def test_resumed_run_ends_with_identical_weights(tmp_path, preset, tiny_config):
    """A run stopped after epoch 1 and resumed ends with exactly the weights of the same run
    done in one go (CPU, deterministic)."""
    cfg = tiny_config(preset, epochs=2)
    whole = train(cfg, tmp_path / "whole", log=lambda m: None)
    with pytest.raises(_Stop):
        train(cfg, tmp_path / "split", log=_stop_after_epoch(1))
    assert not (tmp_path / "split" / whole.name / "model.pt").exists()
    messages = []
    split = train(cfg, tmp_path / "split", log=messages.append)
    assert any("resuming after epoch 1" in m for m in messages)
    a, b = _weights(whole), _weights(split)
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert torch.equal(a[key], b[key]), key
        else:  # a feedback layer's extra state (e.g. its update counter)
            assert a[key] == b[key], key


def test_more_epochs_continue_a_finished_run(tmp_path, tiny_config):
    """Asking a finished run for more epochs continues it from its checkpoint."""
    train(tiny_config(epochs=1), tmp_path, log=lambda m: None)
    messages = []
    run_dir = train(tiny_config(epochs=2), tmp_path, log=messages.append)
    assert any("resuming after epoch 1" in m for m in messages)
    assert train_module.finished_epochs(run_dir) == 2


def test_killed_while_writing_checkpoint_keeps_previous(tmp_path, monkeypatch, tiny_config):
    """A process killed while writing a checkpoint leaves the previous checkpoint loadable
    and no half-written file under a real name."""
    cfg = tiny_config(epochs=3)
    real_save = torch.save
    calls = {"n": 0}

    def dying_save(obj, path, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:  # the second checkpoint: write half of it, then die
            with open(path, "wb") as handle:
                handle.write(b"\x80\x02partial")
            raise KeyboardInterrupt
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(train_module.torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path, log=lambda m: None)
    run_dir = tmp_path / run_id(cfg)
    state = torch.load(run_dir / "checkpoint.pt", weights_only=False)
    assert len(state["history"]) == 1
    assert not list(run_dir.glob("*.tmp")) and not list(run_dir.glob(".*.tmp"))
    monkeypatch.setattr(train_module.torch, "save", real_save)
    train(cfg, tmp_path, log=lambda m: None)
    assert train_module.finished_epochs(run_dir) == 3


def test_divergence_stops_with_clear_message_and_keeps_checkpoint(
    tmp_path, monkeypatch, tiny_config
):
    """A non-finite loss stops the run with a clear message; the last good checkpoint stays."""
    cfg = tiny_config(epochs=3)
    real = train_module.F.cross_entropy
    state = {"calls": 0}

    def poisoned(logits, target, *args, **kwargs):
        state["calls"] += 1
        loss = real(logits, target, *args, **kwargs)
        return loss * float("nan") if state["calls"] > 5 else loss

    monkeypatch.setattr(train_module.F, "cross_entropy", poisoned)
    with pytest.raises(RunError, match="diverged"):
        train(cfg, tmp_path, log=lambda m: None)
    run_dir = tmp_path / run_id(cfg)
    assert len(torch.load(run_dir / "checkpoint.pt", weights_only=False)["history"]) == 1
    assert not (run_dir / "DONE").exists()


def test_cli_trains_and_reports(tmp_path, run_cli, tiny_sets):
    """`retina-raf train` writes the run folder and prints its path."""
    sets = [a for s in tiny_sets if "n_bn" not in s for a in ("--set", s)]
    args = ["train", "--preset", "bp-bottleneck-2", "--epochs", "1", "--out", tmp_path,
            "--device", "cpu", *sets]  # fmt: skip
    code, out, err = run_cli(*args)
    assert code == 0, err
    assert out.strip().split("/")[-1].startswith("bp-bottleneck-2-s0-")  # + settings hash
    assert "epoch 1/1" in err
    code, out, err = run_cli(*args)
    assert code == 0 and "already finished" in err


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "nonsense"], "unknown preset"),
        (["--preset", "raf-r64"], "out of range"),
        (["--preset", "bp-bottleneck-0"], ">= 1"),
        (["--preset", "bp", "--set", "train.nonsense=3"], "unknown key"),
        (["--preset", "bp", "--set", "lr=-1"], "out of range"),
        (["--preset", "bp", "--set", "epochs"], "key=value"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(tmp_path, run_cli, args, message):
    """Invalid presets, ranks larger than the layer, widths < 1, unknown --set keys."""
    code, _, err = run_cli("train", *args, "--out", tmp_path)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and message in err
    assert not any(tmp_path.iterdir())


def test_cli_config_file_is_validated_and_overridden(tmp_path, run_cli):
    """`--config FILE` supplies run settings (validated on load); CLI options win over it."""
    good = tmp_path / "good.yaml"
    good.write_text("preset: raf-r4\nseed: 3\ntrain:\n  epochs: 7\n  batch_size: 16\n")
    code, out, err = run_cli("train", "--config", good, "--epochs", "2", "--config-only")
    assert code == 0, err
    assert "preset: raf-r4" in out and "seed: 3" in out
    assert "epochs: 2" in out and "batch_size: 16" in out
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: bp\ntrain:\n  epochz: 3\n")
    code, _, err = run_cli("train", "--config", bad, "--out", tmp_path / "runs")
    assert code == 2 and "unknown key 'train.epochz'" in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "runs").exists()


@pytest.mark.parametrize("preset", ["draf-bottleneck-4", "raf-r2", "raf-aligned-r4", "bp"])
@pytest.mark.parametrize("unconstrained_rule", ["raf", "bp"])
def test_a_runs_config_file_describes_that_run_again(tmp_path, preset, unconstrained_rule):
    """`retina-raf train --config RUN/config.yaml` resumes that run: the file resolves to the
    config it was written from, also when --unconstrained-rule bp left out a layer the preset
    names (draf's readout: a merged table would bring `fc_2: bp` back and refuse the folder)."""
    from retina_raf.config import dump_yaml, to_dict
    from retina_raf.train import config_from_cli

    cfg = resolve_run_config(preset, 1, parse_overrides(["train.epochs=4"]),
                             others=unconstrained_rule)  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(dump_yaml(to_dict(cfg)))
    assert to_dict(config_from_cli(None, None, config_file=str(path))) == to_dict(cfg)
    again = config_from_cli(None, None, sets=("model.layer_rule.vvs_2=raf",), config_file=str(path))
    assert again.model.layer_rule == {**cfg.model.layer_rule, "vvs_2": "raf"}  # --set still adds


def test_scientific_notation_is_a_number():
    """`--set train.lr=1e-4` (YAML 1.1 reads it as a string) is accepted as 0.0001."""
    cfg = resolve_run_config("bp", 0, parse_overrides(["train.lr=1e-4", "weight_decay=2E-5"]))
    assert cfg.train.lr == 1e-4 and cfg.train.weight_decay == 2e-5


def test_cli_unconstrained_rule_and_its_old_name(run_cli):
    """--unconstrained-rule names what it sets (the rule of the layers the preset leaves
    unconstrained); --others still works, with a note; giving both is a usage error."""
    code, new, err = run_cli("train", "--preset", "raf-r4", "--unconstrained-rule", "bp",
                             "--config-only")  # fmt: skip
    assert code == 0, err
    assert "rule: bp" in new and "note" not in err
    code, old, err = run_cli("train", "--preset", "raf-r4", "--others", "bp", "--config-only")
    assert code == 0 and old == new and "--others is deprecated" in err
    code, _, err = run_cli("train", "--preset", "raf-r4", "--others", "bp",
                           "--unconstrained-rule", "raf", "--config-only")  # fmt: skip
    assert code == 2 and "only --unconstrained-rule" in err


def test_cli_results_seed_is_named_rf_seed(run_cli):
    """`results --rf-seed` is the RF mapping's seed, not to be confused with train --seed."""
    code, out, _ = run_cli("results", "--help")
    assert code == 0 and "--rf-seed" in out and "--seed " not in out
    code, _, err = run_cli("results", "nowhere", "--out", "x.nc", "--seed", "1", "--rf-seed", "2")
    assert code == 2 and "only --rf-seed" in err


@pytest.mark.parametrize("flush", [True, False])
def test_training_on_a_cpu_flushes_denormals_and_says_so(tmp_path, tiny_config, flush):
    """Claim: a CPU run computes with denormal floats (below 1.2e-38) flushed to zero unless
    train.flush_denormal is false (a denormal times one is then zero), and its history
    records which; the setting is not part of the run's id."""
    denormal = torch.tensor([1e-39], dtype=torch.float32)
    cfg = tiny_config(epochs=1, extra=[f"train.flush_denormal={str(flush).lower()}"])
    try:
        run_dir = train(cfg, tmp_path, log=lambda m: None)
        assert ((denormal * 1.0).item() == 0.0) == flush
    finally:
        torch.set_flush_denormal(False)
    with xr.open_dataset(run_dir / "history.nc", engine="h5netcdf") as history:
        assert history.attrs["flush_denormal"] == int(flush)
    assert run_dir.name == run_id(tiny_config(epochs=1))
