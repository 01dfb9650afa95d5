"""The layer plan: which learning rule and feedback rank each layer of a network gets.

One answer for every network (docs/design.md#model, docs/design.md#fig3-networks): a model
config names a default ``rule``, per-layer ``layer_rule`` and ``layer_rank`` tables keyed by
layer name or pattern, and (Fig. 3 networks) a ``rank`` or ``rank_fraction`` for the layers
``constrain`` selects; :func:`layer_plan` turns them into ``{layer: (rule, rank)}``, and
:func:`direct_plan` into the dRAF pathways' ``(source, targets)``. The builders
(:class:`retina_raf.models.RetinaNet`, :func:`retina_raf.nets.net_from_config`) make plain
layers, then :func:`retina_raf.feedback.convert_by_plan` applies the plan.

Layer names are module paths (``vvs_1``, ``fc_2``, ``features.block_4.conv_1``,
``block_3.attn.key``); a pattern selects a layer exactly, as a module that contains it
(``features.block_4``) or as a glob (``vvs_*``, ``block_*.attn.*``), see :func:`selects`.
Each network's input layer (``retina_1``, ``fc_1``, ...) reads the image: nothing uses the
error it would send, so it stays plain and takes no rule or rank.

Every function takes ``m``, a :class:`retina_raf.config.ModelConfig` (the config validates
itself with these, so this module does not import it). No torch here: sweeps resolve
hundreds of run configs without loading it.
"""

from __future__ import annotations

from fnmatch import fnmatchcase

from retina_raf.errors import ConfigError

# Rule name -> (train_q, tie_q, p_rule at full rank, p_rule below full rank; None = not
# allowed), the two switches of docs/design.md#learning-rules (retina_raf.feedback.rules).
RULES = {
    "raf": (True, False, "oja", "oja"),  # restricted adaptive feedback (paper eq. 11)
    "raf_pca": (True, False, "pca", "pca"),  # RAF with the normative PCA rule for P
    # RAF at its fixed point: P the error's top-r principal subspace, Q = W^T P^T, so the input
    # receives backprop's error projected onto its top r components, B = W^T P^T P. It asks
    # what the error's dimensionality alone does, without waiting for Q and P to align.
    "raf_aligned": (False, True, "pca", "pca"),
    "kp": (True, False, "identity", None),  # Kolen-Pollack: B = Q, trained
    "fa": (False, False, "identity", "fixed"),  # feedback alignment: B = Q (or Q P), frozen
    "lowrank_fa": (True, False, "fixed", "fixed"),  # "low-rank FA" of Fig. 2b,c: P random
}
# every rule a layer can take: backprop and the feedback rules
RULE_NAMES = ("bp", *RULES)

ARCHS = ("retina", "mlp", "vgg", "vit")
VGG_CHANNELS = (64, 128, 256, 512)  # Table C1: channels of blocks 1..4
VGG_HIDDEN = 256  # Table C1: the classifier's hidden layer
INPUT_LAYERS = {
    "retina": "retina_1",
    "mlp": "fc_1",
    "vgg": "features.block_1.conv_1",
    "vit": "patch_embed",
}


def selects(name: str, pattern: str) -> bool:
    """Whether ``pattern`` names layer ``name``: exactly, as a module that contains it
    (``features.block_4`` selects ``features.block_4.conv_1``, ``vvs_1`` selects
    ``vvs_1.conv``), or as a glob (``vvs_*``)."""
    return name == pattern or name.startswith(pattern + ".") or fnmatchcase(name, pattern)


def layer_out_widths(m) -> dict[str, int]:
    """The retina model's layer name -> output channels/features, in forward order."""
    widths = {"retina_1": m.retina.retina_channels, "retina_2": m.retina.n_bn}
    widths.update({f"vvs_{i}": m.retina.vvs_channels for i in range(1, m.retina.vvs_layers + 1)})
    widths.update({"fc_1": m.retina.fc_units, "fc_2": m.num_classes})
    return widths


def feedback_layer_widths(m) -> dict[str, int]:
    """Name -> output width (the dimension of the error its feedback carries) of every layer
    that takes a rule, in forward order; the input layer is not among them."""
    if m.arch == "retina":
        widths = layer_out_widths(m)
        del widths[INPUT_LAYERS["retina"]]
        return widths
    if m.arch == "mlp":
        hidden = {f"fc_{i}": m.mlp.hidden_units for i in range(2, m.mlp.hidden_layers + 1)}
        return {**hidden, f"fc_{m.mlp.hidden_layers + 1}": m.num_classes}
    if m.arch == "vgg":
        widths = {}
        for b, channels in enumerate(VGG_CHANNELS, start=1):
            for i in (1, 2):
                widths[f"features.block_{b}.conv_{i}"] = channels
        del widths[INPUT_LAYERS["vgg"]]
        return {**widths, "fc_1": VGG_HIDDEN, "fc_2": m.num_classes}
    if m.arch == "vit":
        widths = {}
        for b in range(1, m.vit.depth + 1):
            for proj in ("query", "key", "value", "out"):
                widths[f"block_{b}.attn.{proj}"] = m.vit.dim
            widths[f"block_{b}.mlp.fc_1"] = m.vit.mlp_dim
            widths[f"block_{b}.mlp.fc_2"] = m.vit.dim
        return {**widths, "head": m.num_classes}
    raise ConfigError(f"model.arch: {m.arch!r} is not allowed (allowed: {', '.join(ARCHS)})")


def _first_match(name: str, table: dict):
    for pattern, value in table.items():
        if selects(name, pattern):
            return pattern, value
    return None, None


def _names_hint(names: list[str]) -> str:
    shown = ", ".join(names[:8])
    return shown + (f", ... ({len(names)} layers)" if len(names) > 8 else "")


def _check_tables(m, names: list[str]) -> None:
    """Every rule is known and every pattern selects a layer that takes a rule."""
    input_layer = INPUT_LAYERS[m.arch]
    for pattern, rule in m.layer_rule.items():
        if rule not in RULE_NAMES:
            raise ConfigError(
                f"model.layer_rule.{pattern}: {rule!r} is not allowed "
                f"(allowed: {', '.join(RULE_NAMES)})"
            )
    for table in ("layer_rule", "layer_rank"):
        for pattern in getattr(m, table):
            if any(selects(n, pattern) for n in names):
                continue
            if selects(input_layer, pattern):
                raise ConfigError(
                    f"model.{table}.{pattern}: {input_layer} reads the image, so nothing uses "
                    "its feedback; it takes no rule or rank"
                )
            raise ConfigError(
                f"model.{table}: {pattern!r} selects no layer of the {m.arch} "
                f"(layers: {_names_hint(names)})"
            )
    if m.constrain != "all" and not any(selects(n, m.constrain) for n in names):
        raise ConfigError(
            f"model.constrain: {m.constrain!r} selects no layer of the {m.arch} "
            f"(all, or layers: {_names_hint(names)})"
        )
    if m.rank is not None and m.rank_fraction is not None:
        raise ConfigError("model.rank and model.rank_fraction: give one of them")


def layer_plan(m) -> dict[str, tuple[str, int | None]]:
    """Layer name -> (rule, feedback rank or None for full) of every layer that takes a rule,
    in forward order.

    Per layer, the rule is the first ``layer_rule`` entry that selects it, else ``rule``; the
    rank is the first ``layer_rank`` entry that selects it, else ``rank`` (or
    ``rank_fraction`` of the layer's output width, at least 1) when ``constrain`` selects it,
    capped at the output width (the error's dimension), else full. ``constrain: all`` skips
    layers whose rule is backprop.

    Raises:
        ConfigError: an unknown rule, a pattern that selects no layer, a rank on a backprop
            layer, a rank above a layer's width in ``layer_rank``, the input layer named.
    """
    widths = feedback_layer_widths(m)
    _check_tables(m, list(widths))
    plan, constrained = {}, []
    for name, width in widths.items():
        _, rule = _first_match(name, m.layer_rule)
        rule = rule if rule is not None else m.rule
        pattern, rank = _first_match(name, m.layer_rank)
        if pattern is not None:
            if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= width:
                raise ConfigError(
                    f"model.layer_rank.{pattern}: {rank!r} is out of range for {name} "
                    f"(allowed: 1 to {width}, the layer's output width)"
                )
            if rule == "bp":
                raise ConfigError(
                    f"model.layer_rank.{pattern}: a feedback rank needs a feedback rule, but "
                    f"{name} uses backprop (set model.rule or model.layer_rule)"
                )
        elif m.rank is not None or m.rank_fraction is not None:
            chosen = m.constrain == "all" and rule != "bp" or selects(name, m.constrain)
            if chosen:
                if rule == "bp":
                    raise ConfigError(
                        f"model.rank: a feedback rank needs a feedback rule, but {name} "
                        "uses backprop (set model.rule, or narrow model.constrain)"
                    )
                if m.rank is not None:
                    rank = min(m.rank, width)
                else:
                    rank = max(1, round(width * m.rank_fraction))
                constrained.append(name)
        plan[name] = (rule, rank)
    if (m.rank is not None or m.rank_fraction is not None) and not constrained:
        raise ConfigError(
            "model.rank: no layer to constrain (every layer model.constrain selects uses "
            "backprop; set model.rule: raf)"
        )
    return plan


def direct_rule(m) -> str:
    """The rule the dRAF pathways learn by: ``model.rule``, RAF where that is backprop."""
    return m.rule if m.rule != "bp" else "raf"


def direct_plan(m) -> tuple[str, list[str]] | None:
    """(source, targets) of the dRAF pathways, or None; validates the direct_* fields.

    The error at the pre-activation of ``direct_source`` goes straight to the activation of
    each target. Retina: one target (``retina_2`` in ``draf-bottleneck-<k>``), source by
    default the last VVS layer. MLP: ``all`` hidden layers before the source or one of them,
    source by default the readout.
    """
    used = [key for key in ("direct_target", "direct_source", "direct_rank")
            if getattr(m, key) is not None]  # fmt: skip
    if m.direct_target is None:
        if used:
            raise ConfigError(f"model.{used[0]}: needs model.direct_target (a layer)")
        return None
    if m.arch == "retina":
        widths = layer_out_widths(m)
        source = m.direct_source or f"vvs_{m.retina.vvs_layers}"
    elif m.arch == "mlp":
        widths = {f"fc_{i}": m.mlp.hidden_units for i in range(1, m.mlp.hidden_layers + 1)}
        widths[f"fc_{m.mlp.hidden_layers + 1}"] = m.num_classes
        source = m.direct_source or list(widths)[-1]
    else:
        raise ConfigError(
            f"model.direct_target: dRAF is built for the retina and the mlp, not the {m.arch}"
        )
    names = list(widths)
    if source not in names:
        raise ConfigError(
            f"model.direct_source: unknown layer {source!r} (allowed: {', '.join(names)})"
        )
    before = names[: names.index(source)]
    if m.direct_target == "all" and m.arch == "mlp":
        targets = before
    elif m.direct_target in before:
        targets = [m.direct_target]
    else:
        allowed = ("all or " if m.arch == "mlp" else "") + "a layer before"
        raise ConfigError(
            f"model.direct_target: {m.direct_target!r} must be {allowed} the source "
            f"{source} ({', '.join(before) or 'none'})"
        )
    if not targets:
        raise ConfigError(f"model.direct_source: {source} has no hidden layer before it")
    if m.direct_rank is not None and m.direct_rank > widths[source]:
        raise ConfigError(
            f"model.direct_rank: {m.direct_rank} is out of range (allowed: 1 to "
            f"{widths[source]}, the width of {source})"
        )
    return source, targets
