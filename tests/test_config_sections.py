"""The model config has a section per network (docs/design.md#model): ``model.retina``,
``model.mlp``, ``model.vgg``, ``model.vit``, beside the settings every network shares. Run
folders and results files written in the earlier flat layout still read, and every run keeps
its id (its folder)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from retina_raf.config import (
    dump_yaml,
    load_run_config,
    parse_overrides,
    resolve_run_config,
    stored_run_config,
    to_dict,
)
from retina_raf.errors import ConfigError
from retina_raf.runs import run_id, run_identity
from retina_raf.sweep.experiment import expand, load_experiment

EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def _flat(cfg) -> dict:
    """A config as the flat layout wrote it: the network's settings at the model's top level,
    the ViT's prefixed ``vit_``, the VGG's and ViT's dropout ``net_dropout``."""
    data = to_dict(cfg)
    model = data["model"]
    for key, value in model.pop("retina").items():
        model[key] = value
    model.update(model.pop("mlp"))
    model.update({f"vit_{k}": v for k, v in model.pop("vit").items() if k != "dropout"})
    model.pop("vgg")
    model["net_dropout"] = None
    return data


@pytest.mark.parametrize(
    ("experiment", "run"),
    [
        ("paper_fig4", "raf-r2-s0-e6d007f4"),  # the long runs' folders
        ("paper_fig4", "bp-bottleneck-1-s0-bac07ec7"),
        ("lindsey_bottleneck", "bp-n_bn1-s0-d2b4b0d8"),  # a grid over model.retina.n_bn
        ("fig3b_mlp_all_layers", "bp-hidden_units512-s0-ba181bb1"),  # over model.mlp
        ("fig3f_vit", "bp-s0-2e6d16c5"),  # model.vit settings in the overrides
        ("smoke", "raf-r2-s0-5931a84f"),
    ],
)
def test_every_run_keeps_the_id_it_was_trained_under(experiment, run):
    """Claim: the sections change no run id: ids are hashed and labelled in the flat
    spelling (these are folders that runs were trained in)."""
    assert run in {r.run_id for r in expand(load_experiment(EXPERIMENTS / f"{experiment}.yaml"))}


@pytest.mark.parametrize(
    ("preset", "model"),
    [
        ("bp-bottleneck-2", {"retina": {"vvs_layers": 2, "dropout": 0.0}, "init": "glorot"}),
        ("raf", {"arch": "vit", "in_channels": 3, "vit": {"dim": 64, "depth": 2, "heads": 2}}),
        ("raf", {"arch": "mlp", "in_channels": 3, "mlp": {"hidden_units": 64}, "rank": 4}),
    ],
)
def test_a_flat_config_a_run_folder_stored_reads_as_the_same_run(tmp_path, preset, model):
    """Claim: a config.yaml in the flat layout reads as the sectioned config it describes, with
    the same identity and run id."""
    data = {"rgb": True} if model.get("in_channels") == 3 else {}
    cfg = resolve_run_config(preset, 3, {"model": model, "data": data})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_flat(cfg)))
    stored = load_run_config(path)
    assert stored == cfg
    assert run_identity(_flat(cfg)) == run_identity(cfg)
    assert run_id(stored_run_config(_flat(cfg))) == run_id(cfg)


def test_a_written_config_holds_its_own_network_and_reads_back_whole(tmp_path):
    """Claim: config.yaml lists the settings of its network's section only; reading it back
    restores the others' defaults, so the config is the same."""
    cfg = resolve_run_config("raf-r4", 0, {"model": {"retina": {"n_bn": 16}}})
    text = dump_yaml(cfg)
    model = yaml.safe_load(text)["model"]
    assert model["retina"]["n_bn"] == 16 and not {"mlp", "vgg", "vit"} & set(model)
    path = tmp_path / "config.yaml"
    path.write_text(text)
    assert load_run_config(path) == cfg


def test_a_flat_key_in_new_input_names_its_section():
    """Claim: an experiment or --set in the flat spelling fails with one line naming the key's
    place, rather than being read two ways."""
    with pytest.raises(ConfigError, match=r"unknown key 'model.n_bn' \(it is model.retina.n_bn\)"):
        resolve_run_config("bp", 0, {"model": {"n_bn": 4}})
    with pytest.raises(ConfigError, match=r"it is model.vit.dim"):
        resolve_run_config("raf", 0, parse_overrides(["model.arch=vit", "model.vit_dim=64"]))


def test_a_bare_key_names_one_setting_in_any_section():
    """Claim: --set n_bn=4 is model.retina.n_bn; a name several sections share is refused."""
    assert parse_overrides(["n_bn=4", "epochs=2", "depth=3"]) == {
        "model": {"retina": {"n_bn": 4}, "vit": {"depth": 3}},
        "train": {"epochs": 2},
    }
    with pytest.raises(ConfigError, match="names several settings"):
        parse_overrides(["dropout=0.1"])
    with pytest.raises(ConfigError, match="unknown key 'n_bm'"):
        parse_overrides(["n_bm=4"])


def test_train_config_reads_an_earlier_runs_flat_config_yaml(tmp_path):
    """Claim: `retina-raf train --config RUN/config.yaml` takes a flat-layout file of an
    earlier run as the run it describes (to resume or extend it)."""
    from retina_raf.train import config_from_cli

    cfg = resolve_run_config("bp-bottleneck-4", 1, {"model": {"retina": {"vvs_layers": 2}}})
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(_flat(cfg)))
    assert config_from_cli(None, None, config_file=str(path)) == cfg
