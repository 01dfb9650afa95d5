"""Receptive fields of a layer's units on the input grid (docs/design.md#rf-extraction).

For each channel of a layer, the RF of its **center unit** (spatial center ``(H//2, W//2)``
of the layer's output map; for flat layers the unit whose index is the channel) as an
``xarray.DataArray`` named ``"rf"`` with dims ``(channel, y, x)`` on the input grid.

The code is split the way feature-visualization libraries split it, one module each
(everything public is importable from ``analysis.rf`` directly):

- *objective* (:mod:`analysis.rf.objectives`): :class:`CenterUnits`, the post-nonlinearity
  response of the center unit of channel ``rows[i]`` to batch element ``i``. One backward
  pass of the summed objective gives every element's input gradient at once, which is how
  all channels are probed in one batched pass (elements never interact in eval mode).
- *parameterization* (:mod:`analysis.rf.parameterizations`): the input is ``base +
  perturbation``; ``base`` is ``zeros`` or a uniform ``gray`` image; ``actmax`` keeps the
  perturbation on an L2 sphere, the contrast budget.
- *methods*, the render loops (:mod:`analysis.rf.methods`):

  ``gradient``  Lindsey et al.'s RF: the input gradient at the base image, divided by its RMS.
  ``actmax``    activation maximization (Erhan et al. 2009): projected gradient ascent of the
                perturbation on the sphere ``||delta||_2 = norm`` from ``n_starts`` seeds; the
                RF is the perturbation of the start that reached the highest response
                (``combine="best"``; starts that found different maxima are not blurred
                together) or the mean over the starts that responded (``"mean"``); the
                ``spread`` coordinate is their standard deviation.
  ``sta``       white-noise spike-triggered average over ``n_samples`` Gaussian images
                ``base + noise_std * z``: ``cov(response, z) / noise_std``, which by Stein's
                lemma equals the input gradient averaged over the noise (so it is on the same
                scale as an unnormalized gradient and still defined where a ReLU is silent at
                the base image).

The entry points, :func:`extract_rfs` and :func:`actmax_starts`, are in
:mod:`analysis.rf.extract`; the checks of the methods against each other
(:func:`method_agreement`, :func:`responsive_by_budget`, :func:`rf_correlation`) in
:mod:`analysis.rf.checks`.

A unit is ``responsive`` when its response varied with the input somewhere the method probed
(a nonzero input gradient, or for ``sta`` a non-constant response). Units that never
respond (zero response and zero gradient everywhere, e.g. a dead ReLU) come back with
``responsive=False`` and an all-zero RF; they are never dropped.

Model access: a model with ``layer_names`` and ``activation(x, layer)`` (the project's
:class:`retina_raf.models.RetinaNet`) is used through them. Any other ``nn.Module`` is probed
with a forward hook on ``dict(model.named_modules())[layer]``; that module's output must be
the post-nonlinearity activation (hook the ReLU, not the conv). The hook stops the forward
pass once the layer has been computed. While probing, the model is in eval mode, its
parameters take no gradients, and feedback layers (RAF, dRAF) backpropagate the exact
gradient (:func:`retina_raf.feedback.exact_gradients`): an RF belongs to the function, not to
the learning rule.

A run folder (``retina_raf.train``) may be passed instead of a model; its identity (preset,
rank, n_bn, seed, rule) becomes scalar coordinates.
"""

from analysis.rf.checks import method_agreement, responsive_by_budget, rf_correlation
from analysis.rf.extract import actmax_starts, extract_rfs
from analysis.rf.methods import (
    METHOD_OPTIONS,
    METHODS,
    PROGRESS_DELAY_S,
    ZERO_START_EPSILON,
    resolve_options,
)
from analysis.rf.objectives import CenterUnits, center_unit_support, layer_activation_fn, probing
from analysis.rf.parameterizations import DEFAULT_RMS_CONTRAST, base_image, contrast_norm

__all__ = [
    "DEFAULT_RMS_CONTRAST",
    "METHODS",
    "METHOD_OPTIONS",
    "PROGRESS_DELAY_S",
    "ZERO_START_EPSILON",
    "CenterUnits",
    "actmax_starts",
    "base_image",
    "center_unit_support",
    "contrast_norm",
    "extract_rfs",
    "layer_activation_fn",
    "method_agreement",
    "probing",
    "resolve_options",
    "responsive_by_budget",
    "rf_correlation",
]
