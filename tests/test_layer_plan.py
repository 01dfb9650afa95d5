"""One layer plan for every network (docs/design.md#model): the retina is built like the Fig. 3
networks, plain layers first, then each layer's rule and rank from the plan applied by
``convert`` and the dRAF wiring.

The reference below is the retina as each layer used to construct itself from its rule: it
pins the random draws, so that a preset and a seed give the same network, and the same
training step, as every published run was trained with.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retina_raf.config import merge, resolve_run_config, with_section_fields
from retina_raf.dense import ColumnMajorLinear
from retina_raf.errors import ConfigError
from retina_raf.feedback import DirectFeedback, RAFConv2d, RAFLinear
from retina_raf.feedback.rules import rule_options
from retina_raf.fftconv import FFTConv2d
from retina_raf.models import ConvBlock, DenseBlock, RetinaNet, model_from_config
from retina_raf.plan import layer_out_widths, layer_plan

SMALL = {"image_size": 16, "retina": {"fc_units": 64}}  # same layers, a quicker training step
PRESETS = [
    ("bp", "raf", {}),
    ("bp-bottleneck-1", "raf", {}),
    ("raf-r2", "raf", {}),
    ("raf-r2", "bp", {}),
    ("raf-r32", "bp", {}),
    ("raf-pca-r4", "raf", {}),
    ("raf-aligned-r2", "bp", {}),
    ("draf-bottleneck-4", "raf", {}),
    ("draf-bottleneck-4", "bp", {"direct_rank": 3, "direct_source": "fc_1"}),
    ("raf", "raf", {"init": "glorot", "track_error_covariance": False}),
    ("raf-r4", "raf", {"layer_rule": {"vvs_2": "kp", "fc_2": "bp"}, "conv_impl": "direct"}),
]


class ReferenceRetinaNet(RetinaNet):
    """The retina as it was built before the plan: every layer drawn by its own rule's class,
    in forward order (W, b, then Q, P), then the dRAF pathway, then Glorot's redraw."""

    def __init__(self, cfg):
        nn.Module.__init__(self)
        self.cfg = cfg
        widths = layer_out_widths(cfg)
        self.layer_names = list(widths)
        blocks, c_in = {}, cfg.in_channels
        for name in self.layer_names[:-2]:
            blocks[name] = ConvBlock(self._conv(name, c_in, widths[name]))
            c_in = widths[name]
        flat = c_in * cfg.image_size**2
        units, dropout = cfg.retina.fc_units, cfg.retina.dropout
        blocks["fc_1"] = DenseBlock(self._linear("fc_1", flat, units), True, dropout)
        blocks["fc_2"] = DenseBlock(self._linear("fc_2", units, cfg.num_classes), False, 0)
        self.layers = nn.ModuleDict(blocks)
        self.direct = None
        if cfg.direct_target is not None:
            self.direct_source = cfg.direct_source or f"vvs_{cfg.retina.vvs_layers}"
            self.direct_target = cfg.direct_target
            size = cfg.image_size
            spatial = not self.direct_source.startswith("fc")
            source_shape = (widths[self.direct_source],) + ((size, size) if spatial else ())
            self.direct = DirectFeedback(
                target_shape=(widths[cfg.direct_target], size, size),
                source_shape=source_shape,
                rank=cfg.direct_rank,
                kernel_size=cfg.retina.kernel_size,
                conv_impl=cfg.conv_impl,
                track_error_covariance=cfg.track_error_covariance,
            )
        self.retina_output = None
        if cfg.init == "glorot":
            for block in self.layers.values():
                layer = block.conv if hasattr(block, "conv") else block.linear
                nn.init.xavier_uniform_(layer.weight)
                nn.init.zeros_(layer.bias)

    def _rule(self, name):
        cfg = self.cfg
        rule = "bp" if name == "retina_1" else cfg.layer_rule.get(name, cfg.rule)
        return rule, cfg.layer_rank.get(name)

    def _conv(self, name, c_in, c_out):
        cfg, (rule, rank) = self.cfg, self._rule(name)
        kernel = cfg.retina.kernel_size
        if rule == "bp":
            return FFTConv2d(c_in, c_out, kernel, padding=kernel // 2, conv_impl=cfg.conv_impl)
        return RAFConv2d(c_in, c_out, kernel, padding=kernel // 2, rank=rank,
                         **rule_options(rule, rank or c_out, c_out, what=name),
                         track_error_covariance=cfg.track_error_covariance,
                         conv_impl=cfg.conv_impl)  # fmt: skip

    def _linear(self, name, n_in, n_out):
        cfg, (rule, rank) = self.cfg, self._rule(name)
        if rule == "bp":
            return ColumnMajorLinear(n_in, n_out)
        return RAFLinear(n_in, n_out, rank=rank, **rule_options(rule, rank or n_out, n_out, name),
                         track_error_covariance=cfg.track_error_covariance)  # fmt: skip


def _config(preset, others, fields):
    overrides = {"model": merge(SMALL, with_section_fields("retina", fields))}
    return resolve_run_config(preset, others=others, overrides=overrides)


def _train_step(model: nn.Module, seed: int) -> None:
    """One step of the paper's recipe (RMSprop, weight decay) on a fixed random batch."""
    torch.manual_seed(seed)
    x, y = torch.randn(4, 1, 16, 16), torch.randint(0, 10, (4,))
    optimizer = torch.optim.RMSprop(model.parameters(), lr=1e-4, weight_decay=1e-5)
    loss = F.cross_entropy(model(x), y) + model.penalty()
    loss.backward()
    optimizer.step()


def _layer_kinds(model: RetinaNet) -> dict:
    """Layer name -> (class, feedback rank, rule switches) of every weight layer."""
    kinds = {}
    for name, module in model.named_modules():
        if isinstance(module, (nn.Conv2d, nn.Linear, DirectFeedback)):
            switches = tuple(getattr(module, key, None) for key in ("train_q", "tie_q", "p_rule"))
            kinds[name] = (type(module), getattr(module, "feedback_rank", None), switches)
    return kinds


def _assert_same_state(model: nn.Module, reference: nn.Module, when: str) -> None:
    state = model.state_dict()
    for key, value in reference.state_dict().items():
        if isinstance(value, torch.Tensor):
            assert torch.equal(state[key], value), f"{when}: {key}"
            assert state[key].stride() == value.stride(), f"{when}: layout of {key}"
        else:  # a feedback layer's extra state (its covariance update count)
            assert state[key] == value, f"{when}: {key}"


@pytest.mark.parametrize(("preset", "others", "fields"), PRESETS)
def test_a_preset_builds_the_network_each_layer_used_to_draw_for_itself(preset, others, fields):
    """Claim: a preset and a seed give the same layers (class, rule, rank), the same parameters
    and buffers bit for bit, and the same training step as the per-layer construction."""
    cfg = _config(preset, others, fields).model
    torch.manual_seed(7)
    reference = ReferenceRetinaNet(cfg)
    model = model_from_config(cfg, seed=7)
    assert _layer_kinds(model) == _layer_kinds(reference)
    assert list(model.state_dict()) == list(reference.state_dict())
    _assert_same_state(model, reference, "at init")
    _train_step(reference, seed=1)
    _train_step(model, seed=1)
    _assert_same_state(model, reference, "after a step")


def test_the_plan_says_which_rule_and_rank_each_retina_layer_gets():
    """Claim: the plan of raf-r2 (others bp) is RAF at rank 2 on vvs_1 and backprop elsewhere;
    retina_1 reads the image and is not in the plan."""
    plan = layer_plan(_config("raf-r2", "bp", {}).model)
    assert plan == {"retina_2": ("bp", None), "vvs_1": ("raf", 2), "vvs_2": ("bp", None),
                    "vvs_3": ("bp", None), "fc_1": ("bp", None), "fc_2": ("bp", None)}  # fmt: skip


def test_retina_layer_patterns_select_as_in_the_fig3_networks():
    """Claim: a glob selects retina layers as it selects the Fig. 3 networks' layers."""
    cfg = _config("bp", "raf", {"layer_rule": {"vvs_*": "fa"}}).model
    plan = layer_plan(cfg)
    assert {name for name, (rule, _) in plan.items() if rule == "fa"} == {"vvs_1", "vvs_2", "vvs_3"}


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"layer_rule": {"retina_1": "raf"}}, "reads the image"),
        ({"layer_rank": {"vvs_9": 2}}, "selects no layer"),
        ({"layer_rank": {"vvs_1": 2}}, "needs a feedback rule"),
        ({"layer_rule": {"vvs_1": "raf"}, "layer_rank": {"vvs_1": 33}}, "out of range"),
    ],
)
def test_a_bad_retina_plan_is_one_clear_error(fields, message):
    with pytest.raises(ConfigError, match=message):
        _config("bp", "raf", fields)
