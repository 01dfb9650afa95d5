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
image. Which rule and rank every other layer gets is the layer plan's
(:func:`retina_raf.plan.layer_plan`, from ``model.rule``, ``model.layer_rule`` and
``model.layer_rank``); the sizes are ``model.retina``'s.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retina_raf.config import (
    ModelConfig,
    check_run_config,
    resolve_run_config,
    with_section_fields,
)
from retina_raf.dense import ColumnMajorLinear
from retina_raf.errors import ConfigError
from retina_raf.feedback import DirectFeedback, RAFConv2d, RAFLinear, convert_by_plan
from retina_raf.fftconv import FFTConv2d
from retina_raf.plan import direct_plan, direct_rule, layer_out_widths, layer_plan
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


def _plain_blocks(cfg: ModelConfig, widths: dict[str, int]) -> dict[str, nn.Module]:
    """Every layer as a backprop block: FFTConv2d and ColumnMajorLinear (nn.Conv2d, nn.Linear)."""
    r, blocks, c_in = cfg.retina, {}, cfg.in_channels
    for name in list(widths)[:-2]:
        conv = FFTConv2d(c_in, widths[name], r.kernel_size, padding=r.kernel_size // 2,
                         conv_impl=cfg.conv_impl)  # fmt: skip
        blocks[name], c_in = ConvBlock(conv), widths[name]
    flat = c_in * cfg.image_size**2
    blocks["fc_1"] = DenseBlock(ColumnMajorLinear(flat, r.fc_units), True, r.dropout)
    blocks["fc_2"] = DenseBlock(ColumnMajorLinear(r.fc_units, cfg.num_classes), False, 0)
    return blocks


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
        # The structure first, on the meta device (nothing is drawn there): plain layers, the
        # plan's rules and ranks, the dRAF pathway. Then the draws, layer by layer in forward
        # order (W, b, then Q, P), the order a seed has always meant for this network.
        with torch.device("meta"):
            self.layers = nn.ModuleDict(_plain_blocks(cfg, widths))
            convert_by_plan(self.layers, layer_plan(cfg),
                            track_error_covariance=cfg.track_error_covariance)  # fmt: skip
            self.direct = self._make_direct_feedback(cfg, widths)
        self.to_empty(device="cpu")
        self._draw_parameters()
        self.retina_output: torch.Tensor | None = None  # last forward's retina_2 activation
        if cfg.init == "glorot":
            self._glorot_init()

    def _draw_parameters(self) -> None:
        """Kaiming-uniform W and b of every layer, its Q and P after them, in forward order;
        then the dRAF pathway's Q and P."""
        for layer in self.weight_layers().values():
            layer.reset_parameters()
        if self.direct is not None:
            self.direct.reset_feedback_parameters()

    def _glorot_init(self) -> None:
        """Keras' default (Lindsey et al.'s code): Glorot-uniform W, zero biases.

        Only the forward weights change; Q and P keep their Kaiming-uniform init
        (docs/design.md#learning-rules).
        """
        for layer in self.weight_layers().values():
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)

    def _make_direct_feedback(self, cfg: ModelConfig, widths: dict) -> DirectFeedback | None:
        direct = direct_plan(cfg)
        if direct is None:
            return None
        source, (target,) = direct
        self.direct_source, self.direct_target = source, target
        size = cfg.image_size
        spatial = not source.startswith("fc")
        return DirectFeedback.from_rule(
            direct_rule(cfg),
            target_shape=(widths[target], size, size),
            source_shape=(widths[source], size, size) if spatial else (widths[source],),
            rank=cfg.direct_rank,
            kernel_size=cfg.retina.kernel_size,
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
        if noisy and cfg.retina.input_noise > 0:
            x = x + cfg.retina.input_noise * torch.randn_like(x)
        for name, block in self.layers.items():
            is_source = self.direct is not None and name == self.direct_source
            x = block(x, tap=self.direct.tap) if is_source else block(x)
            if name == "retina_2" and noisy and cfg.retina.retina_noise > 0:
                x = x + cfg.retina.retina_noise * torch.randn_like(x)
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
        if cfg.retina.retina_activity_l1 > 0 and self.retina_output is not None:
            total = total + cfg.retina.retina_activity_l1 * self.retina_output.abs().mean()
        if cfg.retina.retina_weight_l1 > 0:
            for name in ("retina_1", "retina_2"):
                total = (
                    total + cfg.retina.retina_weight_l1 * self.layers[name].conv.weight.abs().sum()
                )
        return total

    def weight_layers(self) -> dict[str, nn.Module]:
        """Layer name -> its conv or linear module (plain or feedback), in forward order."""
        return {n: b.conv if hasattr(b, "conv") else b.linear for n, b in self.layers.items()}

    def feedback_layers(self) -> dict[str, nn.Module]:
        """Layer name -> its feedback module (RAF layers and the dRAF pathway)."""
        out = self.weight_layers()
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
        **overrides: :class:`~retina_raf.config.ModelConfig` fields, those of its retina
            section without it: e.g. ``n_bn=4``, ``vvs_layers=2``, ``init="glorot"``.
    """
    model = with_section_fields("retina", overrides)
    cfg = resolve_run_config(preset, others=others, overrides={"model": model}).model
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
