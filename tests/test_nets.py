"""The Fig. 3 networks (docs/design.md#fig3-networks): the MLP, the VGG-like CNN of Table C1 and
the ViT of appendix C have the paper's shapes and parameter counts, take any rule and rank
per layer (attention projections included), dRAF from the output or the penultimate layer,
and a tiny training lowers the loss with backprop and with low-rank RAF."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from retina_raf.config import resolve_run_config
from retina_raf.errors import ConfigError
from retina_raf.feedback import DirectFeedback, RAFConv2d, RAFLinear
from retina_raf.nets import build_net
from retina_raf.plan import feedback_layer_widths, layer_plan


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def linear(n_in: int, n_out: int) -> int:  # weights and biases of an n_in -> n_out layer
    return n_in * n_out + n_out


def conv3x3(c_in: int, c_out: int) -> int:
    return c_in * c_out * 9 + c_out


# ------------------------------------------------------------------ shapes and counts
def test_mlp_is_four_hidden_layers_of_512_and_the_narrow_variant():
    """Fig. 3a: 3072 -> 512 x 4 -> 10, ReLU; Fig. 3b's narrow net: 64 units per layer."""
    net = build_net("mlp")
    shapes = [tuple(layer.weight.shape) for layer in net.weight_layers().values()]
    assert shapes == [(512, 3072), (512, 512), (512, 512), (512, 512), (10, 512)]
    assert n_params(net) == linear(3072, 512) + 3 * linear(512, 512) + linear(512, 10)
    assert n_params(net) == 2_366_474
    narrow = build_net("mlp-64")
    assert n_params(narrow) == linear(3072, 64) + 3 * linear(64, 64) + linear(64, 10)
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_vgg_follows_table_c1():
    """Table C1: four blocks of two 3x3 convolutions (64, 128, 256, 512 channels) each with
    batch norm after the ReLU, max pooling (blocks 1-3), global average pooling (block 4),
    then 512 -> 256 (dropout 0.4) -> 10."""
    net = build_net("vgg").eval()
    outputs = {}
    for b in range(1, 5):
        block = net.features.get_submodule(f"block_{b}")
        block.register_forward_hook(lambda m, i, o, b=b: outputs.__setitem__(b, tuple(o.shape)))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert outputs == {1: (2, 64, 16, 16), 2: (2, 128, 8, 8), 3: (2, 256, 4, 4), 4: (2, 512, 1, 1)}
    convs = {name: tuple(m.weight.shape) for name, m in net.named_modules()
             if isinstance(m, nn.Conv2d)}  # fmt: skip
    assert convs["features.block_1.conv_1"] == (64, 3, 3, 3)
    assert convs["features.block_4.conv_2"] == (512, 512, 3, 3)
    assert all(m.padding == (1, 1) for m in net.modules() if isinstance(m, nn.Conv2d))
    assert [m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d)] == [
        64, 64, 128, 128, 256, 256, 512, 512]  # fmt: skip
    assert net.dropout.p == 0.4
    expected = (
        conv3x3(3, 64) + conv3x3(64, 64) + conv3x3(64, 128) + conv3x3(128, 128)
        + conv3x3(128, 256) + conv3x3(256, 256) + conv3x3(256, 512) + conv3x3(512, 512)
        + 2 * (64 + 64 + 128 + 128 + 256 + 256 + 512 + 512)  # batch-norm scales and shifts
        + linear(512, 256) + linear(256, 10)
    )  # fmt: skip
    assert n_params(net) == expected == 4_823_114


def test_vit_is_seven_pre_norm_blocks_of_width_384_with_four_heads():
    """Appendix C: 4 x 4 patches (64 tokens + a class token) embedded to 384, learned
    positions, 7 pre-norm blocks (4 heads; separate query, key, value, out projections; MLP
    384 -> 768 -> 384), final norm, linear head on the class token."""
    net = build_net("vit").eval()
    tokens = {}
    net.block_1.register_forward_hook(lambda m, i, o: tokens.__setitem__("shape", tuple(o.shape)))
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert tokens["shape"] == (2, 65, 384)
    assert net.pos_embed.shape == (1, 65, 384) and net.cls_token.shape == (1, 1, 384)
    assert [name for name in net.names] == [f"block_{i}" for i in range(1, 8)]
    assert net.block_7.attn.heads == 4
    per_block = 4 * linear(384, 384) + linear(384, 768) + linear(768, 384) + 2 * 2 * 384
    expected = (
        linear(3 * 4 * 4, 384) + 384 + 65 * 384  # patch embedding, class token, positions
        + 7 * per_block + 2 * 384 + linear(384, 10)  # blocks, final norm, head
    )  # fmt: skip
    assert n_params(net) == expected


def test_vit_patches_are_the_image_tiles():
    net = build_net("vit", depth=1, dim=8, heads=2, mlp_dim=8, image_size=8)
    x = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).view(2, 3, 8, 8)
    patches = net.patches(x)  # (2, 4, 48): row-major tiles, each (c, y, x)
    assert patches.shape == (2, 4, 48)
    assert torch.equal(patches[1, 1], x[1, :, 0:4, 4:8].reshape(-1))
    assert torch.equal(patches[0, 2], x[0, :, 4:8, 0:4].reshape(-1))


# ------------------------------------------------------------------------ rules, ranks
def test_convert_gives_every_layer_its_rule_and_rank_attention_included():
    """rank r reaches every weight matrix but the input one, capped at the layer's width;
    queries, keys, values and the attention output are RAF layers of rank r."""
    net = build_net("vit", rule="raf", rank=10, depth=2)
    layers = net.weight_layers()
    assert type(layers["patch_embed"]) is nn.Linear  # reads the image: no feedback used
    for name, layer in layers.items():
        if name == "patch_embed":
            continue
        assert isinstance(layer, RAFLinear), name
        assert layer.rule == "raf" and layer.feedback_rank == 10, name
    for proj in ("query", "key", "value", "out"):
        assert getattr(net.block_2.attn, proj).feedback_rank == 10
    low = build_net("vit", rule="raf", rank=4, depth=1, num_classes=2)
    assert low.head.feedback_rank == 2  # capped at the error's dimension
    model = {"arch": "vit", "in_channels": 3, "vit": {"depth": 1}, "rank": 4}
    cfg = resolve_run_config("raf", 0, {"model": model, "data": {"rgb": True}})
    assert list(feedback_layer_widths(cfg.model)) == [
        name for name, layer in low.weight_layers().items() if isinstance(layer, RAFLinear)
    ]


def test_per_layer_rules_and_ranks_by_name_and_pattern():
    net = build_net(
        "vit", rule="raf", depth=2,
        layer_rank={"block_1.attn.key": 3, "block_*.mlp.*": 5},
        layer_rule={"head": "bp", "block_2.attn.*": "fa"},
    )  # fmt: skip
    assert net.block_1.attn.key.feedback_rank == 3
    assert net.block_1.attn.query.feedback_rank == 384  # full rank where nothing constrains
    assert net.block_2.mlp.fc_1.feedback_rank == 5 and net.block_1.mlp.fc_2.feedback_rank == 5
    assert type(net.head) is nn.Linear
    assert net.block_2.attn.value.rule == "fa"
    mlp = build_net("mlp", rule="raf", constrain="fc_3", rank=2)
    ranks = {name: layer.feedback_rank for name, layer in mlp.feedback_layers().items()}
    assert ranks == {"fc_2": 512, "fc_3": 2, "fc_4": 512, "fc_5": 10}
    vgg = build_net("vgg", rule="raf", constrain="features.block_4", rank=10)
    convs = {n: m for n, m in vgg.named_modules() if isinstance(m, nn.Conv2d)}
    assert type(convs["features.block_1.conv_1"]) is nn.Conv2d
    assert all(isinstance(m, RAFConv2d) for n, m in convs.items() if n != "features.block_1.conv_1")
    assert convs["features.block_4.conv_1"].feedback_rank == 10
    assert convs["features.block_4.conv_2"].feedback_rank == 10
    assert convs["features.block_3.conv_2"].feedback_rank == 256
    inset = build_net("vgg", rule="raf", constrain="features", rank_fraction=0.125)
    ranks = {n: m.feedback_rank for n, m in inset.named_modules() if isinstance(m, RAFConv2d)}
    assert ranks["features.block_1.conv_2"] == 8 and ranks["features.block_4.conv_1"] == 64
    assert inset.fc_1.feedback_rank == 256  # the classifier is not constrained


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"layer_rank": {"fc_9": 2}}, "selects no layer"),
        ({"layer_rank": {"fc_1": 2}}, "reads the image"),
        ({"layer_rank": {"fc_2": 600}}, "out of range"),
        ({"rule": "bp", "rank": 4}, "no layer to constrain"),
        ({"layer_rule": {"fc_2": "bp"}, "constrain": "fc_2", "rank": 4}, "needs a feedback rule"),
        ({"layer_rule": {"fc_2": "bp"}, "layer_rank": {"fc_2": 4}}, "needs a feedback rule"),
        ({"constrain": "fc_7", "rank": 4}, "selects no layer"),
        ({"rank": 4, "rank_fraction": 0.5}, "give one of them"),
        ({"layer_rule": {"fc_2": "magic"}}, "not allowed"),
        ({"direct_rank": 4}, "needs model.direct_target"),
        ({"direct_target": "all", "direct_source": "fc_1"}, "no hidden layer before"),
        ({"direct_target": "all", "direct_rank": 11}, "out of range"),
    ],
)
def test_bad_rules_and_ranks_are_config_errors(fields, message):
    fields = {"rule": "raf", **fields}
    with pytest.raises(ConfigError, match=message):
        build_net("mlp", **fields)


def test_vit_and_vgg_shapes_are_checked():
    with pytest.raises(ConfigError, match="must divide model.image_size"):
        build_net("vit", patch_size=5)
    with pytest.raises(ConfigError, match="must divide model.vit.dim"):
        build_net("vit", heads=5)
    with pytest.raises(ConfigError, match="dRAF is built for the retina and the mlp"):
        build_net("vgg", rule="raf", direct_target="all")


# ------------------------------------------------------------------------------- dRAF
@pytest.mark.parametrize(("source", "targets"), [("fc_5", 4), ("fc_4", 3)])
def test_draf_sends_the_source_error_to_every_earlier_layer(source, targets):
    """Fig. 3d: every hidden layer before the source receives B_l delta_s in place of the
    error from above: its weight gradient is (B_l delta_s masked by ReLU') h^T, whatever the
    feedback of the layer above it."""
    torch.manual_seed(0)
    net = build_net("mlp", rule="raf", hidden_units=16, direct_target="all",
                    direct_source=source, direct_rank=3, seed=0)  # fmt: skip
    assert list(net.direct) == [f"fc_{i}" for i in range(1, targets + 1)]
    assert all(isinstance(m, DirectFeedback) and m.feedback_rank == 3 for m in net.direct.values())
    x, y = torch.randn(8, 3, 32, 32), torch.randint(0, 10, (8,))
    F.cross_entropy(net(x), y).backward()
    # by hand: the error at the source's pre-activation, through the layers after it
    with torch.no_grad():
        h, zs = x.flatten(1), []
        for name in net.names:
            zs.append(net._modules[name](h))
            h = F.relu(zs[-1])
    s = net.names.index(source)
    z_s = zs[s].clone().requires_grad_(True)
    out = z_s
    for name in net.names[s + 1 :]:
        out = net._modules[name](F.relu(out))
    (delta_s,) = torch.autograd.grad(F.cross_entropy(out, y), z_s)
    fb = net.direct["fc_1"]
    g = delta_s @ fb.p.t() @ fb.q.t()  # (8, 16): B_1 delta_s
    expected = (g * (zs[0] > 0)).t() @ x.flatten(1)
    assert torch.allclose(net.fc_1.weight.grad, expected, atol=1e-6, rtol=1e-4)
    assert all(m.q.grad is not None and m.p.grad is not None for m in net.direct.values())


def test_draf_config_of_the_penultimate_source_keeps_the_readout_full_rank():
    cfg = resolve_run_config("raf", 0, {
        "model": {"arch": "mlp", "in_channels": 3, "direct_target": "all",
                  "direct_source": "fc_4", "direct_rank": 10},
        "data": {"rgb": True}})  # fmt: skip
    plan = layer_plan(cfg.model)
    assert plan["fc_5"] == ("raf", None)
    from retina_raf.runs import run_identity

    identity = run_identity(cfg)
    assert identity["rule"] == "draf" and identity["rank"] == 10
    assert identity["constrain"] == "direct:fc_4"


# ---------------------------------------------------------------------- tiny training
TINY = {
    "mlp": {"hidden_units": 32, "image_size": 8},
    "vgg": {"image_size": 8},
    "vit": {
        "dim": 32,
        "depth": 2,
        "heads": 2,
        "mlp_dim": 64,
        "image_size": 16,
        "dropout": 0.0,
    },  # fmt: skip
}


@pytest.mark.parametrize("name", ["mlp", "vgg", "vit"])
@pytest.mark.parametrize(("rule", "rank"), [("bp", None), ("raf", 2)])
def test_tiny_training_lowers_the_loss(name, rule, rank):
    """A few Adam steps on one small batch lower the loss with backprop and with RAF whose
    every feedback matrix has rank 2."""
    torch.manual_seed(0)
    size = TINY[name]["image_size"]
    x, y = torch.randn(16, 3, size, size), torch.randint(0, 4, (16,))
    fields = {**TINY[name], "num_classes": 4}
    if rank is not None:
        fields["rank"] = rank
    net = build_net(name, rule=rule, seed=0, **fields)
    opt = torch.optim.Adam(net.parameters(), lr=3e-3, amsgrad=True)
    losses = []
    for _ in range(30):
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert max(losses[-3:]) < 0.75 * losses[0], losses
    if rule == "raf":
        ranks = {m.feedback_rank for m in net.feedback_layers().values()}
        assert ranks == {2}


def test_the_guides_fig3_example_builds_what_it_says():
    """docs/rules.md's Fig. 3 example: the MLP's fc_3 at rank 4, the ViT's attention keys at
    rank 10, dRAF into every hidden layer of the MLP."""
    import re
    from pathlib import Path

    guide = (Path(__file__).resolve().parents[1] / "docs" / "rules.md").read_text()
    blocks = [b for b in re.findall(r"```python\n(.*?)```", guide, re.S) if "build_net(" in b]
    assert len(blocks) == 1
    namespace: dict = {}
    exec(compile(blocks[0], "docs/rules.md", "exec"), namespace)  # noqa: S102
    assert namespace["mlp"].fc_3.feedback_rank == 4
    assert namespace["vit"].block_1.attn.key.feedback_rank == 10
    assert list(namespace["draf"].direct) == ["fc_1", "fc_2", "fc_3"]
