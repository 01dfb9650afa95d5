"""The Lindsey et al. (2019) retina/VVS network with per-layer learning rules.

The design: docs/design.md#model.

::

    retina_1  conv 1 -> 32, 9x9, same padding, ReLU
    retina_2  conv 32 -> N_bn, 9x9, ReLU            N_bn: the feedforward bottleneck
    vvs_1..D  conv -> 32, 9x9, ReLU                 D = 3 (paper), 2 (Lindsey)
    fc_1      flatten -> 1024, ReLU, dropout 0.5
    fc_2      1024 -> 10 (logits)

Every layer is a block reachable by name (``model.retina_2``, ``model.layers["vvs_1"]``)
whose output is the post-nonlinearity activation; its weights sit in ``.conv`` or
``.linear``: an ``nn.Conv2d``/``nn.Linear`` for backprop (:class:`~retina_raf.fftconv.FFTConv2d`
and :class:`~retina_raf.dense.ColumnMajorLinear`, their maths in faster forms) or a feedback
layer of :mod:`retina_raf.feedback`. The rule of a layer decides what the layer sends to its
*input*: the feedback of ``vvs_1`` is therefore the error that crosses into the retina.
``retina_1`` is always a plain convolution, since nothing consumes the gradient at the
image.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retina_raf.config import (
    ModelConfig,
    check_run_config,
    layer_out_widths,
    resolve_run_config,
)
from retina_raf.dense import ColumnMajorLinear
from retina_raf.errors import ConfigError
from retina_raf.feedback import DirectFeedback, RAFConv2d, RAFLinear
from retina_raf.feedback.rules import rule_options
from retina_raf.fftconv import FFTConv2d
from retina_raf.presets import preset_model_fields  # noqa: F401 (the presets of these models)


class ConvBlock(nn.Module):
    """conv (same padding) -> ReLU; the output is the layer's activation."""

    def __init__(self, conv: nn.Conv2d):
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor, tap=None) -> torch.Tensor:
        """``tap`` (dRAF's error tap) wraps the pre-activation when this is a source layer."""
        z = self.conv(x)
        return F.relu(z if tap is None else tap(z))


class DenseBlock(nn.Module):
    """flatten -> linear -> (ReLU -> dropout); the readout ``fc_2`` has neither."""

    def __init__(self, linear: nn.Linear, relu: bool, dropout: float):
        super().__init__()
        self.linear, self.relu = linear, relu
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, tap=None) -> torch.Tensor:
        z = self.linear(x.flatten(1))
        z = z if tap is None else tap(z)
        return self.dropout(F.relu(z)) if self.relu else z


def _layer_rule(cfg: ModelConfig, name: str) -> tuple[str, int | None]:
    rule = cfg.layer_rule.get(name, cfg.rule)
    rank = cfg.layer_rank.get(name)
    if name == "retina_1":
        rule = "bp"  # its input is the image: no feedback pathway is ever used
    if rank is not None and rule == "bp":
        raise ConfigError(
            f"model.layer_rank.{name}: a feedback rank needs a feedback rule, but {name} "
            "uses backprop (set model.layer_rule)"
        )
    return rule, rank


def _make_conv(cfg: ModelConfig, name: str, c_in: int, c_out: int) -> nn.Conv2d:
    rule, rank = _layer_rule(cfg, name)
    pad = cfg.kernel_size // 2
    if rule == "bp":
        return FFTConv2d(c_in, c_out, cfg.kernel_size, padding=pad, conv_impl=cfg.conv_impl)
    options = rule_options(rule, rank or c_out, c_out, what=name)
    return RAFConv2d(c_in, c_out, cfg.kernel_size, padding=pad, rank=rank, **options,
                     track_error_covariance=cfg.track_error_covariance,
                     conv_impl=cfg.conv_impl)  # fmt: skip


def _make_linear(cfg: ModelConfig, name: str, n_in: int, n_out: int) -> nn.Linear:
    rule, rank = _layer_rule(cfg, name)
    if rule == "bp":
        return ColumnMajorLinear(n_in, n_out)
    options = rule_options(rule, rank or n_out, n_out, what=name)
    return RAFLinear(n_in, n_out, rank=rank, **options,
                     track_error_covariance=cfg.track_error_covariance)  # fmt: skip


class RetinaNet(nn.Module):
    """The retina/VVS CNN (docs/design.md#model), configured by a :class:`ModelConfig`.

    Input: (B, in_channels, S, S) images (S = ``image_size``); output: (B, num_classes)
    logits. ``activation(x, layer)`` gives any named layer's post-nonlinearity activation.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        widths = layer_out_widths(cfg)
        self.layer_names: list[str] = list(widths)
        blocks: dict[str, nn.Module] = {}
        c_in = cfg.in_channels
        for name in self.layer_names[:-2]:
            blocks[name] = ConvBlock(_make_conv(cfg, name, c_in, widths[name]))
            c_in = widths[name]
        flat = c_in * cfg.image_size**2
        blocks["fc_1"] = DenseBlock(
            _make_linear(cfg, "fc_1", flat, cfg.fc_units), True, cfg.dropout
        )
        blocks["fc_2"] = DenseBlock(
            _make_linear(cfg, "fc_2", cfg.fc_units, cfg.num_classes), False, 0
        )
        self.layers = nn.ModuleDict(blocks)
        self.direct = self._make_direct_feedback(cfg, widths)
        self.retina_output: torch.Tensor | None = None  # last forward's retina_2 activation
        if cfg.init == "glorot":
            self._glorot_init()

    def _glorot_init(self) -> None:
        """Keras' default (Lindsey et al.'s code): Glorot-uniform W, zero biases.

        Only the forward weights change; Q and P keep their Kaiming-uniform init
        (docs/design.md#learning-rules).
        """
        for block in self.layers.values():
            layer = block.conv if hasattr(block, "conv") else block.linear
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def _make_direct_feedback(self, cfg: ModelConfig, widths: dict) -> DirectFeedback | None:
        if cfg.direct_target is None:
            return None
        source = cfg.direct_source or f"vvs_{cfg.vvs_layers}"
        self.direct_source, self.direct_target = source, cfg.direct_target
        size = cfg.image_size
        target_shape = (widths[cfg.direct_target], size, size)
        if source.startswith("fc"):
            source_shape = (widths[source],)
        else:
            source_shape = (widths[source], size, size)
        return DirectFeedback(
            target_shape=target_shape,
            source_shape=source_shape,
            rank=cfg.direct_rank,
            kernel_size=cfg.kernel_size,
            conv_impl=cfg.conv_impl,
            track_error_covariance=cfg.track_error_covariance,
        )

    def __getattr__(self, name: str):
        layers = self.__dict__.get("_modules", {}).get("layers")
        if layers is not None and name in layers._modules:
            return layers._modules[name]
        return super().__getattr__(name)

    def _run(self, x: torch.Tensor, stop: str | None = None) -> torch.Tensor:
        cfg, noisy = self.cfg, self.training
        if noisy and cfg.input_noise > 0:
            x = x + cfg.input_noise * torch.randn_like(x)
        for name, block in self.layers.items():
            is_source = self.direct is not None and name == self.direct_source
            x = block(x, tap=self.direct.tap) if is_source else block(x)
            if name == "retina_2" and noisy and cfg.retina_noise > 0:
                x = x + cfg.retina_noise * torch.randn_like(x)
            if self.direct is not None and name == self.direct_target:
                x = self.direct.inject(x)
            if name == "retina_2":
                self.retina_output = x
            if name == stop:
                return x
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images -> (B, num_classes) logits."""
        return self._run(x)

    def activation(self, x: torch.Tensor, layer: str) -> torch.Tensor:
        """The post-nonlinearity activation of ``layer`` for a batch ``x`` (B, C, S, S)."""
        if layer not in self.layer_names:
            raise ConfigError(f"unknown layer {layer!r} (allowed: {', '.join(self.layer_names)})")
        return self._run(x, stop=layer)

    def penalty(self) -> torch.Tensor:
        """Optional L1 penalties: retina output activity (last forward) and retina weights."""
        cfg = self.cfg
        total = torch.zeros((), device=self.layers["fc_2"].linear.weight.device)
        if cfg.retina_activity_l1 > 0 and self.retina_output is not None:
            total = total + cfg.retina_activity_l1 * self.retina_output.abs().mean()
        if cfg.retina_weight_l1 > 0:
            for name in ("retina_1", "retina_2"):
                total = total + cfg.retina_weight_l1 * self.layers[name].conv.weight.abs().sum()
        return total

    def feedback_layers(self) -> dict[str, nn.Module]:
        """Layer name -> its feedback module (RAF layers and the dRAF pathway)."""
        out = {n: b.conv if hasattr(b, "conv") else b.linear for n, b in self.layers.items()}
        out = {n: m for n, m in out.items() if isinstance(m, (RAFConv2d, RAFLinear))}
        if self.direct is not None:
            out[f"direct:{self.direct_source}->{self.direct_target}"] = self.direct
        return out


def build_model(
    preset: str = "bp", *, others: str = "raf", seed: int | None = None, **overrides
) -> RetinaNet:
    """The model of a preset (``bp``, ``bp-bottleneck-<k>``, ``raf-r<k>``, ``draf-bottleneck-<k>``).

    Args:
        preset: a condition of the paper (docs/design.md#model).
        others: rule of the layers the condition does not constrain: ``raf`` or ``bp``.
        seed: seeds the weight initialization (``None``: the current torch RNG).
        **overrides: :class:`~retina_raf.config.ModelConfig` fields, e.g. ``n_bn=4``.
    """
    cfg = resolve_run_config(preset, others=others, overrides={"model": overrides}).model
    return model_from_config(cfg, seed=seed)


def model_from_config(cfg: ModelConfig, seed: int | None = None) -> nn.Module:
    """Build a :class:`RetinaNet` from a validated model config (or, for ``model.arch`` mlp,
    vgg, vit, the Fig. 3 network of :mod:`retina_raf.nets`)."""
    if cfg.arch != "retina":
        from retina_raf.nets import net_from_config

        return net_from_config(cfg, seed=seed)
    if seed is not None:
        torch.manual_seed(seed)
    return RetinaNet(cfg)


__all__ = [
    "RetinaNet",
    "build_model",
    "model_from_config",
    "preset_model_fields",
    "check_run_config",
]
