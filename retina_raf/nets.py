"""The networks of the paper's Fig. 3 (appendix C): an MLP, a VGG-like CNN and a ViT.

Each is built from plain ``nn.Linear`` / ``nn.Conv2d`` layers, then :func:`convert` gives
every layer its learning rule and feedback rank, so the same code trains them with backprop,
RAF or any rule of :mod:`retina_raf.feedback` (docs/design.md#fig3-networks)::

    mlp   flatten -> fc_1 .. fc_L (hidden_units each, ReLU) -> fc_{L+1} (logits)
          paper: L = 4 hidden layers of 512 (Fig. 3a-d), and of 64 (the narrow net of 3b)
    vgg   Table C1: features.block_b (b = 1..4, 64 * 2^(b-1) channels), each
          conv_1 -> ReLU -> bn_1 -> conv_2 -> ReLU -> bn_2 (3x3, padding 1), then 2x2 max
          pooling (blocks 1-3) or global average pooling (block 4);
          fc_1 512 -> 256, ReLU, dropout 0.4; fc_2 256 -> classes
    vit   patch_embed (linear, p x p patches -> vit_dim), a learned class token, learned
          positions; block_1 .. block_D pre-norm transformer blocks
              x = x + drop(attn.out(heads(attn.query, attn.key, attn.value)(norm_1(x))))
              x = x + drop(mlp.fc_2(drop(gelu(mlp.fc_1(norm_2(x))))))
          then norm and head on the class token. Paper: D = 7, width 384, 4 heads.

Layer names are module paths (``fc_2``, ``features.block_4.conv_1``,
``block_3.attn.key``); a module's name also selects the layers inside it
(``features.block_4``), and glob patterns work (``block_*.attn.*``).

**Which feedback a rank constrains.** A layer's rule decides what it sends to its *input*:
the feedback matrix of ``fc_2`` carries the 512-dimensional error of the second hidden layer
down to the first (the paper's B_1; ``fc_3``, ``fc_4`` are B_2, B_3 and the readout's,
10-dimensional, B_4). The first layer of each network (``fc_1``,
``features.block_1.conv_1``, ``patch_embed``) sends nothing anyone uses (its input is the
image), so it stays plain and takes no rule or rank. Which rule and rank every other layer
gets is the layer plan's (:func:`retina_raf.plan.layer_plan`), as for the retina model.

**dRAF (Fig. 3d; the MLP).** ``direct_target: all`` (or one hidden layer) sends the error
``delta_s = dL/dz_s`` at the pre-activation of ``direct_source`` (default: the readout, whose
z_s are the logits; the penultimate layer's ``fc_L`` is the paper's other variant) straight
to the activation of every hidden layer before the source, through a rank-``direct_rank``
:class:`~retina_raf.feedback.DirectFeedback` sharing one :class:`ErrorTap`; the gradient
arriving there from above is discarded. The direct pathways learn by ``model.rule`` (RAF
when that is backprop); the layers after the source keep their own feedback.

Every network takes (B, C, S, S) images and returns (B, classes) logits, has ``penalty()``
(zero) and ``feedback_layers()`` as the retina model has, and is built by
:func:`build_net` (by name) or :func:`net_from_config` (a validated ModelConfig).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from retina_raf.config import (
    ModelConfig,
    VGGConfig,
    ViTConfig,
    check_model,
    from_dict,
    with_section_fields,
)
from retina_raf.errors import ConfigError
from retina_raf.feedback import DirectFeedback, ErrorTap, convert_by_plan
from retina_raf.feedback.base import FeedbackMixin
from retina_raf.plan import (
    INPUT_LAYERS,
    VGG_CHANNELS,
    VGG_HIDDEN,
    direct_plan,
    direct_rule,
    layer_plan,
)

# The paper's networks by name: (arch, fields of its section); "mlp-64" is the narrow MLP of 3b.
NETWORKS = {
    "mlp": ("mlp", {}),
    "mlp-64": ("mlp", {"hidden_units": 64}),
    "vgg": ("vgg", {}),
    "vit": ("vit", {}),
}
VGG_DROPOUT = VGGConfig().dropout  # Table C1
VIT_DROPOUT = ViTConfig().dropout  # appendix C: "dropout for regularization" (no rate given)
POSITION_INIT_STD = 0.02  # class token and positions: ViT's truncated-normal init


# --------------------------------------------------------------------------- networks
class FeedbackNet(nn.Module):
    """What the training loop needs of a network besides ``forward``.

    Attributes:
        input_layer: name of the layer that reads the image (always plain: nothing uses the
            gradient it would send).
    """

    input_layer: str = ""

    def penalty(self) -> float:
        """No activity or weight penalties (the retina model's L1 terms); weight decay is
        the optimizer's."""
        return 0.0

    def weight_layers(self) -> dict[str, nn.Module]:
        """Layer name -> nn.Linear / nn.Conv2d (or its feedback version), in forward order."""
        return {
            name: module
            for name, module in self.named_modules()
            if isinstance(module, (nn.Linear, nn.Conv2d))
        }

    def feedback_layers(self) -> dict[str, nn.Module]:
        """Layer name -> feedback module (RAF layers and dRAF pathways)."""
        return {
            name: module
            for name, module in self.named_modules()
            if isinstance(module, FeedbackMixin)
        }


class MLP(FeedbackNet):
    """Fully connected ReLU network: ``hidden_layers`` layers of ``hidden_units``.

    Input (B, C, S, S) or (B, C*S*S); output (B, num_classes) logits. Layers ``fc_1`` ..
    ``fc_{hidden_layers + 1}`` (the last is the readout).
    """

    input_layer = INPUT_LAYERS["mlp"]

    def __init__(self, in_features: int, hidden_units: int, hidden_layers: int, num_classes: int):
        super().__init__()
        widths = [in_features] + [hidden_units] * hidden_layers + [num_classes]
        self.names = [f"fc_{i}" for i in range(1, len(widths))]
        for name, n_in, n_out in zip(self.names, widths[:-1], widths[1:], strict=True):
            self.add_module(name, nn.Linear(n_in, n_out))
        self.direct: nn.ModuleDict | None = None  # target layer -> DirectFeedback (dRAF)
        self.direct_source: str | None = None
        self.error_tap: ErrorTap | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images -> (B, num_classes) logits."""
        h = x.flatten(1)
        last = self.names[-1]
        for name in self.names:
            z = self._modules[name](h)
            if name == self.direct_source:
                z = self.error_tap(z)  # records delta_s = dL/dz_s in backward
            if name == last:
                return z
            h = F.relu(z)
            if self.direct is not None and name in self.direct:
                h = self.direct[name].inject(h)  # backward: B delta_s replaces dL/dh
        raise AssertionError("unreachable: the readout returns")

    def add_direct_feedback(
        self, source: str, targets: list[str], rank: int | None, rule: str, **kwargs
    ) -> None:
        """Direct feedback from ``source``'s pre-activation to the activations of ``targets``
        (hidden layers before it), all through one shared :class:`ErrorTap`."""
        self.error_tap = ErrorTap()
        self.direct_source = source
        source_width = self._modules[source].out_features
        self.direct = nn.ModuleDict(
            {
                name: DirectFeedback.from_rule(
                    rule,
                    (self._modules[name].out_features,),
                    (source_width,),
                    rank=rank,
                    source=self.error_tap,
                    **kwargs,
                )
                for name in targets
            }
        )


class VGGBlock(nn.Module):
    """conv_1 -> ReLU -> bn_1 -> conv_2 -> ReLU -> bn_2 -> pool (Table C1's order: the batch
    norm follows the ReLU)."""

    def __init__(self, c_in: int, c_out: int, pool: nn.Module):
        super().__init__()
        self.conv_1 = nn.Conv2d(c_in, c_out, 3, padding=1)
        self.bn_1 = nn.BatchNorm2d(c_out)
        self.conv_2 = nn.Conv2d(c_out, c_out, 3, padding=1)
        self.bn_2 = nn.BatchNorm2d(c_out)
        self.pool = pool

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn_1(F.relu(self.conv_1(x)))
        return self.pool(self.bn_2(F.relu(self.conv_2(x))))


class VGG(FeedbackNet):
    """The VGG-like CNN of Table C1: four blocks of two 3x3 convolutions with batch norm
    (64, 128, 256, 512 channels), then 512 -> 256 (ReLU, dropout) -> num_classes."""

    input_layer = INPUT_LAYERS["vgg"]

    def __init__(self, in_channels: int, num_classes: int, dropout: float = VGG_DROPOUT):
        super().__init__()
        blocks, c_in = {}, in_channels
        for b, c_out in enumerate(VGG_CHANNELS, start=1):
            last = b == len(VGG_CHANNELS)
            pool = nn.AdaptiveAvgPool2d(1) if last else nn.MaxPool2d(2, 2)
            blocks[f"block_{b}"] = VGGBlock(c_in, c_out, pool)
            c_in = c_out
        self.features = nn.Sequential()
        for name, block in blocks.items():
            self.features.add_module(name, block)
        self.fc_1 = nn.Linear(VGG_CHANNELS[-1], VGG_HIDDEN)
        self.dropout = nn.Dropout(dropout)
        self.fc_2 = nn.Linear(VGG_HIDDEN, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images (S divisible by 8) -> (B, num_classes) logits."""
        h = self.features(x).flatten(1)
        return self.fc_2(self.dropout(F.relu(self.fc_1(h))))


class SelfAttention(nn.Module):
    """Multi-head self-attention with its four projections as separate nn.Linear layers
    (``query``, ``key``, ``value``, ``out``), so that each gets its own feedback."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads, self.dropout = heads, dropout
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, dim) tokens -> (B, T, dim)."""
        b, t, dim = x.shape

        def split(z: torch.Tensor) -> torch.Tensor:  # (B, T, dim) -> (B, heads, T, dim/heads)
            return z.view(b, t, self.heads, dim // self.heads).transpose(1, 2)

        q, k, v = split(self.query(x)), split(self.key(x)), split(self.value(x))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, t, dim))


class TokenMLP(nn.Module):
    """fc_1 -> GELU -> dropout -> fc_2, applied to every token."""

    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc_1 = nn.Linear(dim, hidden)
        self.fc_2 = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc_2(self.dropout(F.gelu(self.fc_1(x))))


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: x + attn(norm_1(x)), then x + mlp(norm_2(x))."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float):
        super().__init__()
        self.norm_1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm_2 = nn.LayerNorm(dim)
        self.mlp = TokenMLP(dim, mlp_dim, dropout)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.dropout(self.attn(self.norm_1(x)))
        return x + self.dropout(self.mlp(self.norm_2(x)))


class ViT(FeedbackNet):
    """Vision transformer of appendix C: non-overlapping patches linearly embedded, a learned
    class token and learned positions, ``depth`` pre-norm blocks, a final LayerNorm and a
    linear head on the class token."""

    input_layer = INPUT_LAYERS["vit"]

    def __init__(
        self,
        in_channels: int,
        image_size: int,
        num_classes: int,
        patch_size: int = 4,
        dim: int = 384,
        depth: int = 7,
        heads: int = 4,
        mlp_dim: int = 768,
        dropout: float = VIT_DROPOUT,
    ):
        super().__init__()
        self.patch_size = patch_size
        n_patches = (image_size // patch_size) ** 2
        self.patch_embed = nn.Linear(in_channels * patch_size**2, dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, n_patches + 1, dim))
        nn.init.trunc_normal_(self.cls_token, std=POSITION_INIT_STD)
        nn.init.trunc_normal_(self.pos_embed, std=POSITION_INIT_STD)
        self.embed_dropout = nn.Dropout(dropout)
        self.names = [f"block_{i}" for i in range(1, depth + 1)]
        for name in self.names:
            self.add_module(name, TransformerBlock(dim, heads, mlp_dim, dropout))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) -> (B, (S/p)^2, C p p): row-major patches, each flattened (c, y, x)."""
        b, c, h, w = x.shape
        p = self.patch_size
        x = x.reshape(b, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5)
        return x.reshape(b, (h // p) * (w // p), c * p * p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, S, S) images -> (B, num_classes) logits."""
        tokens = self.patch_embed(self.patches(x))
        cls = self.cls_token.expand(tokens.shape[0], -1, -1)
        h = self.embed_dropout(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        for name in self.names:
            h = self._modules[name](h)
        return self.head(self.norm(h)[:, 0])


# ---------------------------------------------------------------------------- building
def _plain_net(m: ModelConfig) -> FeedbackNet:
    if m.arch == "mlp":
        n_in = m.in_channels * m.image_size**2
        return MLP(n_in, m.mlp.hidden_units, m.mlp.hidden_layers, m.num_classes)
    if m.arch == "vgg":
        return VGG(m.in_channels, m.num_classes, m.vgg.dropout)
    return ViT(m.in_channels, m.image_size, m.num_classes, m.vit.patch_size, m.vit.dim,
               m.vit.depth, m.vit.heads, m.vit.mlp_dim, m.vit.dropout)  # fmt: skip


def net_from_config(m: ModelConfig, seed: int | None = None) -> FeedbackNet:
    """Build a Fig. 3 network from a validated ModelConfig (``model.arch`` mlp, vgg, vit).

    The plain network is drawn first (torch's default init, Kaiming-uniform, or Glorot with
    ``init: glorot``), then :func:`convert` turns each layer into its rule's feedback layer
    (Q and P drawn there), then the dRAF pathways are added: with ``seed`` the whole is
    reproducible.
    """
    check_model(m)
    if seed is not None:
        torch.manual_seed(seed)
    net = _plain_net(m)
    if m.init == "glorot":
        for layer in net.weight_layers().values():
            nn.init.xavier_uniform_(layer.weight)
            nn.init.zeros_(layer.bias)
    convert_by_plan(net, layer_plan(m), track_error_covariance=m.track_error_covariance)
    direct = direct_plan(m)
    if direct is not None:
        source, targets = direct
        net.add_direct_feedback(source, targets, m.direct_rank, direct_rule(m),
                                track_error_covariance=m.track_error_covariance)  # fmt: skip
    return net


def build_net(name: str, rule: str = "bp", *, seed: int | None = None, **fields) -> FeedbackNet:
    """A network of the paper's Fig. 3 by name, with any rule and per-layer ranks.

    Args:
        name: ``mlp`` (4 x 512), ``mlp-64`` (4 x 64), ``vgg`` (Table C1) or ``vit``.
        rule: learning rule of every layer (``bp``, ``raf``, ``raf_pca``, ``kp``, ``fa``,
            ``lowrank_fa``).
        seed: seeds the initialization (None: the current torch RNG).
        **fields: any :class:`~retina_raf.config.ModelConfig` field, e.g. ``rank=10``
            (every layer, capped at its width), ``constrain="fc_3"``,
            ``layer_rank={"block_*.attn.*": 4}``, ``layer_rule={"head": "bp"}``,
            ``direct_target="all"``, ``num_classes=4``, ``image_size=16``, or a field of the
            network's section (``hidden_units=64``, ``depth=2``); ``in_channels`` defaults
            to 3 (RGB) here.

    Example:
        >>> net = build_net("vit", rule="raf", rank=10, depth=2)
        >>> net.block_1.attn.key.feedback_rank
        10
    """
    if name not in NETWORKS:
        raise ConfigError(f"unknown network {name!r} (allowed: {', '.join(NETWORKS)})")
    arch, defaults = NETWORKS[name]
    fields = {"in_channels": 3, **defaults, **fields, "arch": arch, "rule": rule}
    return net_from_config(from_dict(ModelConfig, with_section_fields(arch, fields), "model."),
                           seed=seed)  # fmt: skip


__all__ = [
    "MLP",
    "NETWORKS",
    "VGG",
    "FeedbackNet",
    "SelfAttention",
    "TransformerBlock",
    "ViT",
    "build_net",
    "net_from_config",
]
