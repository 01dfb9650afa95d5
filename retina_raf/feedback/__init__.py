"""Learning rules as PyTorch building blocks (docs/design.md#learning-rules).

Feedback layers are drop-in nn.Linear / nn.Conv2d replacements whose forward pass is unchanged
and whose backward pass sends ``B delta`` with ``B = Q P`` (rank r) to the layer's input,
while W and the bias get their exact gradients; Q and P are ordinary parameters whose ``.grad``
the backward pass fills, so any torch optimizer trains them.

    RAFLinear, RAFConv2d      the layers (``rank``, ``train_q``, ``p_rule``)
    DirectFeedback, ErrorTap  direct feedback from a later source (dRAF)
    convert                   swap the layers of an existing model
    convert_by_plan           ... each to the rule and rank a layer plan gives it
    feedback_diagnostics      alignment, principal angles, effective error rank per layer
    model_diagnostics         the same by the model's own layer names (what a history records)
    exact_gradients           backprop's exact gradients through the feedback layers (a with block)

Named rules (``RULES``; ``from_rule`` / ``convert(rule=...)``):

    raf         Q Kolen-Pollack, P by Oja's rule               (paper eq. 11; the default)
    raf_pca     Q Kolen-Pollack, P = top eigenvectors of the error covariance
    raf_aligned Q = W^T P^T (KP's fixed point), P as raf_pca: B = W^T P^T P
    kp          Q Kolen-Pollack, P = I                          (full rank only)
    fa          Q random fixed, P = I (full rank) or random fixed (below)
    lowrank_fa  Q Kolen-Pollack, P random fixed                 (paper Fig. 2b,c)
    bp          (``convert`` only) plain nn.Linear / nn.Conv2d
"""

from retina_raf.feedback.base import FeedbackMixin
from retina_raf.feedback.conv import RAFConv2d
from retina_raf.feedback.convert import convert, convert_by_plan
from retina_raf.feedback.diagnostics import (
    alignment_angle,
    angle_degrees,
    effective_rank,
    feedback_diagnostics,
    layer_diagnostics,
    model_diagnostics,
    principal_angles,
)
from retina_raf.feedback.direct import DirectFeedback, ErrorTap, FeedbackWiringError
from retina_raf.feedback.exact import exact_gradients
from retina_raf.feedback.linear import RAFLinear
from retina_raf.feedback.rules import P_RULES, RULES, oja_gradient, rule_options
from retina_raf.plan import RULE_NAMES

__all__ = [
    "P_RULES",
    "RULES",
    "RULE_NAMES",
    "DirectFeedback",
    "ErrorTap",
    "FeedbackMixin",
    "FeedbackWiringError",
    "RAFConv2d",
    "RAFLinear",
    "alignment_angle",
    "angle_degrees",
    "convert",
    "convert_by_plan",
    "effective_rank",
    "exact_gradients",
    "feedback_diagnostics",
    "layer_diagnostics",
    "model_diagnostics",
    "oja_gradient",
    "principal_angles",
    "rule_options",
]
