"""Swap a model's nn.Linear / nn.Conv2d layers for their feedback versions, in place: by rule
(:func:`convert`) or by a network's layer plan (:func:`convert_by_plan`)."""

from __future__ import annotations

import torch
from torch import nn

from retina_raf.errors import ConfigError
from retina_raf.feedback.conv import RAFConv2d
from retina_raf.feedback.linear import RAFLinear
from retina_raf.feedback.rules import check_rank, rule_options
from retina_raf.plan import RULE_NAMES, selects


def _matches(name: str, patterns) -> bool:
    return any(selects(name, pattern) for pattern in patterns)


def _as_patterns(value, what: str) -> tuple[str, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):
        return (value,)
    patterns = tuple(value)
    if not all(isinstance(p, str) for p in patterns):
        raise ConfigError(f"convert: {what} must be a name, a glob pattern or a list of them")
    return patterns


def _rank_for(name: str, rank, used: set) -> int | str | None:
    """The rank asked for layer ``name``: an int/None/"full" for all, or the value of the first
    dict key that matches (as in :func:`_matches`); unmatched layers get full rank."""
    if not isinstance(rank, dict):
        return rank
    for key, value in rank.items():
        if _matches(name, (key,)):
            used.add(key)
            return value
    return None


def _plain_copy(layer: nn.Module) -> nn.Module:
    """The nn.Linear / nn.Conv2d a feedback layer started from (rule "bp")."""
    factory = dict(device=layer.weight.device, dtype=layer.weight.dtype)
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        return nn.Linear(layer.in_features, layer.out_features, has_bias, **factory)
    return nn.Conv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        bias=has_bias,
        **factory,
    )


def _feedback_copy(layer: nn.Module, name: str, rule: str, rank, layer_kwargs) -> nn.Module:
    factory = dict(device=layer.weight.device, dtype=layer.weight.dtype)
    has_bias = layer.bias is not None
    if isinstance(layer, nn.Linear):
        full, what = layer.out_features, f"convert: layer {name!r} ({layer.out_features} outputs)"
        options = rule_options(rule, check_rank(rank, full, what), full, what)
        return RAFLinear(
            layer.in_features,
            layer.out_features,
            has_bias,
            rank=rank,
            **options,
            **layer_kwargs,
            **factory,
        )
    if layer.groups != 1 or layer.padding_mode != "zeros":
        raise ConfigError(
            f"convert: layer {name!r} has groups={layer.groups}, "
            f"padding_mode={layer.padding_mode!r}; feedback convolutions support groups=1 "
            "with zero padding only (exclude it)"
        )
    full, what = layer.out_channels, f"convert: layer {name!r} ({layer.out_channels} channels)"
    options = rule_options(rule, check_rank(rank, full, what), full, what)
    # an FFTConv2d keeps its convolution implementation; a plain nn.Conv2d gets "auto"
    layer_kwargs = {"conv_impl": getattr(layer, "conv_impl", "auto"), **layer_kwargs}
    return RAFConv2d(
        layer.in_channels,
        layer.out_channels,
        layer.kernel_size,
        layer.stride,
        layer.padding,
        layer.dilation,
        has_bias,
        rank=rank,
        **options,
        **layer_kwargs,
        **factory,
    )


def convert(
    model: nn.Module,
    rule: str = "raf",
    rank: int | str | dict | None = None,
    include=None,
    exclude=None,
    **layer_kwargs,
) -> nn.Module:
    """Replace the nn.Linear / nn.Conv2d layers of ``model`` by feedback layers, in place.

    Weights and biases are copied (the forward output is unchanged); Q and P are drawn fresh
    (feedback layers that are already there are rebuilt from their weights too).
    Convert before building the optimizer: the new layers hold new Parameter objects.

    Args:
        model: any nn.Module; it is modified and returned.
        rule: "raf" (default), "raf_pca", "raf_aligned", "kp", "fa", "lowrank_fa" (see
            ``rules.RULES``), or
            "bp" to turn feedback layers back into plain nn.Linear / nn.Conv2d.
        rank: feedback rank for every converted layer (int, None / "full" = full rank), or a
            dict {qualified name or glob pattern: rank}; layers no key matches get full rank.
            A rank above a layer's outputs raises ConfigError.
        include: qualified module names or glob patterns (e.g. "vvs_*.conv") to convert; a
            module name also selects the layers inside it ("retina_2" -> "retina_2.conv").
            None = every Linear / Conv2d.
        exclude: names or patterns to leave alone (applied after ``include``).
        **layer_kwargs: passed to every new layer (e.g. track_error_covariance=True).

    Raises:
        ConfigError: unknown rule, bad rank, a pattern or rank key that matches no layer, or an
            included convolution with groups > 1 or non-zero padding mode.
    """
    if rule not in RULE_NAMES:
        raise ConfigError(
            f"convert: unknown rule {rule!r}; expected one of {', '.join(RULE_NAMES)}"
        )
    if isinstance(model, (nn.Linear, nn.Conv2d)):
        raise ConfigError("convert: pass a model that contains the layer, not the layer itself")
    include, exclude = _as_patterns(include, "include"), _as_patterns(exclude, "exclude")
    candidates = [
        (name, module)
        for name, module in model.named_modules(remove_duplicate=False)
        if isinstance(module, (nn.Linear, nn.Conv2d)) and name
    ]
    names = [name for name, _ in candidates]
    for what, patterns in (("include", include), ("exclude", exclude)):
        for pattern in patterns or ():
            if not any(_matches(name, (pattern,)) for name in names):
                raise ConfigError(f"convert: {what} pattern {pattern!r} matches no layer")

    # Build every new layer first, so that a bad rank leaves the model untouched.
    selected = [
        (name, layer)
        for name, layer in candidates
        if (include is None or _matches(name, include))
        and not (exclude is not None and _matches(name, exclude))
    ]
    replaced: dict[int, nn.Module] = {}  # a layer used at several places stays shared
    used_rank_keys: set = set()
    for name, layer in selected:
        layer_rank = _rank_for(name, rank, used_rank_keys)
        if id(layer) in replaced:
            continue
        if rule == "bp":
            if isinstance(layer, (RAFLinear, RAFConv2d)):
                replaced[id(layer)] = _plain_copy(layer)
        else:
            replaced[id(layer)] = _feedback_copy(layer, name, rule, layer_rank, layer_kwargs)
    if isinstance(rank, dict):
        unused = [key for key in rank if key not in used_rank_keys]
        if unused:
            raise ConfigError(f"convert: rank keys {unused} match no converted layer")

    for name, layer in candidates:  # every place a selected layer is used, selected or not
        new = replaced.get(id(layer))
        if new is None:
            continue
        with torch.no_grad():
            new.weight.copy_(layer.weight)
            if layer.bias is not None:
                new.bias.copy_(layer.bias)
        new.weight.requires_grad_(layer.weight.requires_grad)
        if layer.bias is not None:
            new.bias.requires_grad_(layer.bias.requires_grad)
        new.train(layer.training)
        if layer.weight.dim() == 4 and not layer.weight.is_contiguous():
            if layer.weight.is_contiguous(memory_format=torch.channels_last):
                new.to(memory_format=torch.channels_last)
        parent_name, _, child_name = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child_name, new)
    return model


def convert_by_plan(
    model: nn.Module, plan: dict[str, tuple[str, int | None]], **layer_kwargs
) -> nn.Module:
    """Give every layer of ``model`` its rule and rank from a layer plan, in place.

    Args:
        model: a network of plain nn.Linear / nn.Conv2d layers.
        plan: layer name -> (rule, rank or None for full), as :func:`retina_raf.plan.layer_plan`
            gives; backprop layers stay as they are.
        **layer_kwargs: passed to every new layer (e.g. track_error_covariance=True).

    The layers of one rule are converted together, rules in the order they first appear in
    the plan: the order of the random draws of Q and P, which a seed reproduces.
    """
    by_rule: dict[str, dict[str, int | None]] = {}
    for name, (rule, rank) in plan.items():
        by_rule.setdefault(rule, {})[name] = rank
    for rule, ranks in by_rule.items():
        if rule != "bp":
            convert(model, rule, rank=ranks, include=list(ranks), **layer_kwargs)
    return model
