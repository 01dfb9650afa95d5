"""The paper's conditions (docs/design.md#model) as presets of the retina model.

A preset is a function of its name that fills model fields of
:class:`~retina_raf.config.ModelConfig`: ``bp``, ``bp-bottleneck-<k>``, ``raf-r<k>``,
``raf-pca-r<k>``, ``raf-aligned-r<k>`` and ``draf-bottleneck-<k>``; and ``raf`` (every layer
RAF at full rank), which with ``bp`` is what the Fig. 3 networks (``model.arch``,
:mod:`retina_raf.nets`) start from. :func:`retina_raf.config.resolve_run_config` applies one
before the overrides; :class:`retina_raf.models.RetinaNet` (or :mod:`retina_raf.nets`) builds
what it describes.
No torch here: sweeps resolve hundreds of retina run configs without loading it (checking
a Fig. 3 network's config imports :mod:`retina_raf.nets`, and torch with it).
"""

from __future__ import annotations

import re

from retina_raf.errors import ConfigError

PRESET_PATTERNS = {
    "bp": "backprop everywhere, no bottleneck",
    "bp-bottleneck-<k>": "backprop, k retina output channels (paper: 1, 2, 4)",
    "raf-r<k>": "RAF everywhere; the feedback into the retina (vvs_1's) has rank k "
    "(paper: 2, 4, 32)",
    "raf-pca-r<k>": "as raf-r<k>, but vvs_1's P is set to the top-k eigenvectors of its error "
    "covariance (the normative rule raf_pca) instead of following Oja's rule",
    "raf-aligned-r<k>": "as raf-pca-r<k>, with vvs_1's Q at its Kolen-Pollack fixed point "
    "W^T P^T (rule raf_aligned): the retina receives backprop's error projected onto its top k "
    "principal components",
    "draf-bottleneck-<k>": "k retina output channels; the retina output receives a direct "
    "full-rank error from the last VVS layer (dRAF); the rest RAF",
    "raf": "RAF at full rank in every layer, the readout included (any model.arch; with "
    "model.rank or model.layer_rank for the Fig. 3 networks)",
}


# The readout (fc_2) sends its exact error W^T e to fc_1 under the RAF presets. With RAF there
# too, the paper's recipe (RMSprop, lr 1e-4, whose first steps are ~10 lr per weight) drives
# fc_1's 32,768-input units faster than fc_2 can align with its random feedback, and the loss
# explodes within ~50 steps (measured: 1e3-1e5 after 60 steps; stable with the readout exact).
# The readout's error is 10-dimensional, full rank at any rank the presets use, so the retina's
# error dimensionality is unchanged. `--set model.layer_rule.fc_2=raf` restores RAF there.
READOUT_RULE = "bp"


def preset_model_fields(preset: str, others: str = "raf") -> dict:
    """The model fields a preset sets (docs/design.md#model).

    Args:
        preset: ``bp``, ``bp-bottleneck-<k>``, ``raf-r<k>``, ``draf-bottleneck-<k>`` or
            ``raf`` (every layer RAF at full rank; the Fig. 3 networks' preset with ``bp``).
        others: the unconstrained rule: learning rule of the layers the condition does not
            constrain, ``raf`` (default, at full rank) or ``bp``; ignored by the backprop
            presets (``--unconstrained-rule`` on the command line).
    """
    if others not in ("raf", "bp"):
        raise ConfigError(f"unconstrained rule {others!r} is not allowed (allowed: raf, bp)")
    if preset == "bp":
        return {"rule": "bp", "retina": {"n_bn": 32}}
    if preset == "raf":
        return {"rule": "raf"}
    if m := re.fullmatch(r"bp-bottleneck-(\d+)", preset):
        return {"rule": "bp", "retina": {"n_bn": _width(m.group(1), preset)}}
    readout = {"fc_2": READOUT_RULE} if others == "raf" else {}
    if m := re.fullmatch(r"raf-(pca-|aligned-)?r(\d+)", preset):
        vvs1_rule = {None: "raf", "pca-": "raf_pca", "aligned-": "raf_aligned"}[m.group(1)]
        return {
            "rule": others,
            "retina": {"n_bn": 32},
            "layer_rule": {"vvs_1": vvs1_rule, **readout},
            "layer_rank": {"vvs_1": _width(m.group(2), preset)},
        }
    if m := re.fullmatch(r"draf-bottleneck-(\d+)", preset):
        return {
            "rule": others,
            "retina": {"n_bn": _width(m.group(1), preset)},
            "direct_target": "retina_2",
            "layer_rule": readout,
        }
    raise ConfigError(f"unknown preset {preset!r} (allowed: {', '.join(PRESET_PATTERNS)})")


def _width(text: str, preset: str) -> int:
    value = int(text)
    if value < 1:
        raise ConfigError(f"preset {preset!r}: the width/rank must be >= 1")
    return value


def preset_with_rank(preset: str, rank: int | None) -> str:
    """The preset of a run of an experiment: a ``ranks:`` value overriding the rank of a
    ``raf-r<k>`` (``raf-pca-r<k>``, ``raf-aligned-r<k>``) preset relabels it ``raf-r<rank>``
    (``raf-pca-r<rank>``, ...), whose run it is."""
    if rank is not None and (m := re.fullmatch(r"(raf-(?:pca-|aligned-)?r)\d+", preset)):
        return f"{m.group(1)}{rank}"
    return preset
