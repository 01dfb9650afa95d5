"""How well a feedback pathway works (docs/design.md#diagnostics): cheap, on demand, floats.

- alignment: angle (degrees) between B = Q P and W^T; 0 = backprop's direction, 90 = unrelated.
  Linear: B (n, m) against W^T (n, m). Conv: B as a kernel in W's layout,
  ``einsum('rm,rnyx->mnyx', P, Q)``, against W (m, n, kh, kw). The angle is
  ``arccos(<B, W^T> / (|B| |W|))`` with the Frobenius inner product of the flattened tensors.
- principal angles (radians) between P's row space and the top-r eigenspace of the error
  covariance (the moving average the layer keeps when ``track_error_covariance`` or "pca"),
  and the fraction of the top-r error variance that P's rows capture (robust where the r-th
  and (r+1)-th eigenvalues are nearly equal and the largest angle is not).
- effective rank of the error: participation ratio ``(sum l)^2 / sum l^2`` of the covariance's
  eigenvalues l (1 for a one-dimensional error, m for an isotropic one); "entropy" gives
  ``exp(-sum p log p)`` with p = l / sum l instead.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from retina_raf.errors import ConfigError
from retina_raf.feedback.base import FeedbackMixin
from retina_raf.feedback.direct import DirectFeedback
from retina_raf.feedback.rules import top_eigenvectors


def angle_degrees(a: torch.Tensor, b: torch.Tensor) -> float:
    """Angle (degrees) between two tensors of the same shape, flattened."""
    a, b = a.detach().flatten().double(), b.detach().flatten().double()
    cosine = torch.dot(a, b) / (a.norm() * b.norm()).clamp_min(1e-300)
    return math.degrees(math.acos(float(cosine.clamp(-1.0, 1.0))))


def alignment_angle(layer: nn.Module) -> float:
    """Angle (degrees) between the layer's feedback B = Q P and W^T (see module docstring)."""
    feedback = layer.feedback_matrix()
    weight = layer.weight if feedback.dim() == 4 else layer.weight.t()
    return angle_degrees(feedback, weight)


def principal_angles(p: torch.Tensor, covariance: torch.Tensor) -> torch.Tensor:
    """Principal angles (radians, ascending, shape (r,)) between the row space of P (r, m)
    and the span of the r leading eigenvectors of the symmetric covariance (m, m)."""
    p = p.detach().double()
    rank = p.shape[0]
    rows_basis, _ = torch.linalg.qr(p.t())  # (m, r) orthonormal basis of P's row space
    top = top_eigenvectors(covariance.detach().double(), rank).t()
    cosines = torch.linalg.svdvals(rows_basis.t() @ top).clamp(-1.0, 1.0)
    return torch.arccos(cosines).flip(0)


def variance_captured(p: torch.Tensor, covariance: torch.Tensor) -> float:
    """Fraction of the top-r error variance that P's row space (P: r x m) captures:
    ``trace(U^T C U) / (l_1 + ... + l_r)`` with U an orthonormal basis of P's rows and l the
    eigenvalues of the covariance C (m, m), largest first. 1 when P spans the top-r
    eigenspace; about ``r/m * trace(C) / (l_1 + ... + l_r)`` for a random P.

    Unlike the largest principal angle it does not jump when the r-th and (r+1)-th eigenvalues
    are nearly equal: a P between two such directions loses almost no error variance."""
    p, covariance = p.detach().double(), covariance.detach().double()
    rows_basis, _ = torch.linalg.qr(p.t())  # (m, r)
    top = torch.linalg.eigvalsh(covariance).flip(0)[: p.shape[0]].sum()
    captured = torch.trace(rows_basis.t() @ covariance @ rows_basis)
    return float(captured / top) if top > 0 else float("nan")


def effective_rank(covariance: torch.Tensor, method: str = "participation") -> float:
    """Effective dimensionality of a covariance (m, m): "participation" or "entropy"."""
    eigenvalues = torch.linalg.eigvalsh(covariance.detach().double()).clamp_min(0.0)
    total = eigenvalues.sum()
    if total <= 0:
        return 0.0
    if method == "participation":
        return float(total.square() / eigenvalues.square().sum())
    if method == "entropy":
        probabilities = eigenvalues / total
        probabilities = probabilities[probabilities > 0]
        return float(torch.exp(-(probabilities * probabilities.log()).sum()))
    raise ConfigError(
        f"effective_rank: method must be 'participation' or 'entropy', got {method!r}"
    )


def layer_diagnostics(layer: FeedbackMixin) -> dict[str, float]:
    """``rank``, ``alignment_deg``, ``principal_angle_max_rad``, ``error_variance_captured``
    (:func:`variance_captured`), ``error_effective_rank``, ``p_orthonormality_error``
    (|P P^T - I|_F) of one feedback layer; NaN where undefined
    (no W for direct feedback, no error covariance kept)."""
    nan = float("nan")
    p = layer.p.detach().double()
    identity = torch.eye(p.shape[0], dtype=p.dtype, device=p.device)
    result = {
        "rank": float(layer.feedback_rank),
        "alignment_deg": nan if isinstance(layer, DirectFeedback) else alignment_angle(layer),
        "principal_angle_max_rad": nan,
        "error_variance_captured": nan,
        "error_effective_rank": nan,
        "p_orthonormality_error": float(torch.linalg.matrix_norm(p @ p.t() - identity)),
    }
    if layer.track_error_covariance:
        covariance = layer.error_covariance
        result["principal_angle_max_rad"] = float(principal_angles(layer.p, covariance).max())
        result["error_variance_captured"] = variance_captured(layer.p, covariance)
        result["error_effective_rank"] = effective_rank(covariance)
    return result


def feedback_diagnostics(model: nn.Module) -> dict[str, dict[str, float]]:
    """:func:`layer_diagnostics` of every feedback layer of ``model``, by qualified name."""
    return {
        name: layer_diagnostics(module)
        for name, module in model.named_modules()
        if isinstance(module, FeedbackMixin)
    }


def model_diagnostics(model: nn.Module) -> dict[str, dict[str, float]]:
    """Feedback diagnostics of every feedback layer by the model's own layer name (what the
    history records per epoch; :func:`layer_diagnostics`)."""
    out = {}
    for name, values in feedback_diagnostics(model).items():
        # "layers.vvs_1.conv" -> "vvs_1": the model's own layer names (a Fig. 3 network's
        # are its module paths already: "fc_2", "block_1.attn.key")
        short = name.removeprefix("layers.").removesuffix(".conv").removesuffix(".linear")
        out[short] = {k: float(v) for k, v in values.items() if _is_number(v)}
    return out


def _is_number(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float, np.floating, np.integer))
