"""Names of the learning rules and the small tensor maths they share.

A feedback layer sends ``B delta`` to its input instead of ``W^T delta``, with ``B = Q P``:
P (rank x m) projects the m-dimensional error onto ``rank`` channels, Q maps them back to the
n inputs. Two switches define a rule (docs/design.md#learning-rules):

- ``train_q``: Q follows the Kolen-Pollack update (True) or stays at its random init (False);
- ``p_rule``: ``"oja"`` (Oja's subspace rule on the error), ``"pca"`` (P set to the top
  eigenvectors of a moving average of the error covariance), ``"fixed"`` (random, frozen) or
  ``"identity"`` (P = I, full rank only).

The named rules below are the paper's conditions; ``rule_options`` turns a name into switches.
"""

from __future__ import annotations

import math
import numbers

import torch

from retina_raf.errors import ConfigError
from retina_raf.plan import RULES

P_RULES = ("oja", "pca", "fixed", "identity")

# The named rules (rule -> train_q, tie_q, p_rule at full rank, below full rank) and their
# list live with the layer plan, which configs check without torch.


def check_rank(rank: int | str | None, full: int, what: str) -> int:
    """Return the feedback rank as an int in 1..full; None or "full" mean ``full``."""
    if rank is None or rank == "full":
        return full
    if isinstance(rank, bool) or not isinstance(rank, numbers.Integral):
        raise ConfigError(f"{what}: feedback rank must be an int or 'full', got {rank!r}")
    rank = int(rank)
    if not 1 <= rank <= full:
        raise ConfigError(
            f"{what}: feedback rank must be in 1..{full} (the error's size), got {rank}"
        )
    return rank


def check_p_rule(p_rule: str, rank: int, full: int, what: str) -> str:
    """Validate ``p_rule``; "identity" needs a full-rank feedback (P = I is m x m)."""
    if p_rule not in P_RULES:
        raise ConfigError(f"{what}: p_rule must be one of {', '.join(P_RULES)}; got {p_rule!r}")
    if p_rule == "identity" and rank != full:
        raise ConfigError(
            f"{what}: p_rule='identity' needs the full rank {full}, got rank {rank} "
            "(use p_rule='fixed' or 'oja' for a low-rank feedback)"
        )
    return p_rule


def rule_options(rule: str, rank: int, full: int, what: str = "feedback") -> dict:
    """``dict(train_q=..., tie_q=..., p_rule=...)`` of a named rule at a given rank.

    ``fa`` is B = Q at full rank and B = Q P with both random below it; ``kp`` exists at
    full rank only (its low-rank version, Q trained and P random, is ``lowrank_fa``).
    """
    if rule not in RULES:
        raise ConfigError(f"{what}: unknown rule {rule!r}; expected one of {', '.join(RULES)}")
    train_q, tie_q, p_full, p_low = RULES[rule]
    p_rule = p_full if rank == full else p_low
    if p_rule is None:
        raise ConfigError(
            f"{what}: rule {rule!r} needs the full rank {full}, got rank {rank} "
            "(use 'raf' or 'lowrank_fa' for a low-rank feedback)"
        )
    return dict(train_q=train_q, tie_q=tie_q, p_rule=p_rule)


def rule_name(train_q: bool, p_rule: str, rank: int, full: int, tie_q: bool = False) -> str:
    """Inverse of :func:`rule_options`; "custom" for a combination no name stands for."""
    for name in RULES:
        try:
            if rule_options(name, rank, full) == dict(train_q=train_q, tie_q=tie_q, p_rule=p_rule):
                return name
        except ConfigError:
            continue
    return "custom"


def kaiming_uniform_(tensor: torch.Tensor, fan_in: int) -> torch.Tensor:
    """Fill in place from U(-1/sqrt(fan_in), 1/sqrt(fan_in)).

    This is torch's default Kaiming-uniform init of nn.Linear / nn.Conv2d weights
    (``kaiming_uniform_(w, a=sqrt(5))``) with an explicit fan-in, so that Q and P get the fan-in
    of the *backward* pathway they sit in (paper appendix B: Kaiming uniform for W, Q and P).
    """
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        return tensor.uniform_(-bound, bound)


# ---------------------------------------------------------------- channel maths
# Errors come as rows (N, m) from linear layers and as maps (b, m, H, W) from conv layers;
# "channels" are the m features, everything else is summed over (batch, tokens, pixels).


def _channels_last_rows(t: torch.Tensor) -> torch.Tensor | None:
    """(b, c, H, W) stored channels-last as a (b*H*W, c) view; None for other layouts."""
    if t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last):
        return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
    return None


def project_channels(p: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """``P delta`` per row / pixel: (r, m) x (N, m) -> (N, r), or (b, m, H, W) -> (b, r, H, W)
    in delta's memory format."""
    if delta.dim() == 2:
        return delta.mm(p.t())
    b, m, h, w = delta.shape
    if delta.is_contiguous():  # a batched matmul on the (b, m, H*W) view needs no copy
        return torch.bmm(p.expand(b, *p.shape), delta.view(b, m, h * w)).view(b, -1, h, w)
    rows = _channels_last_rows(delta)
    if rows is not None:
        return rows.mm(p.t()).view(b, h, w, -1).permute(0, 3, 1, 2)
    return torch.einsum("rm,bmyx->bryx", p, delta)


def channel_gram(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``sum over rows / pixels of a_i b_j``: (N, i), (N, j) -> (i, j); (B, i, H, W) likewise."""
    if a.dim() == 2:
        return a.t().mm(b)
    if a.is_contiguous() and b.is_contiguous():  # batched matmul, then a small sum over images
        n_img = a.shape[0]
        a3, b3 = a.view(n_img, a.shape[1], -1), b.view(n_img, b.shape[1], -1)
        return torch.bmm(a3, b3.transpose(1, 2)).sum(0)
    a_rows, b_rows = _channels_last_rows(a), _channels_last_rows(b)
    if a_rows is not None and b_rows is not None:
        return a_rows.t().mm(b_rows)
    return torch.einsum("bihw,bjhw->ij", a, b)


def _accurate(t: torch.Tensor) -> torch.Tensor:
    """float32 for half-precision tensors; float32/float64 ones as they are."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def squared_norm(delta: torch.Tensor) -> torch.Tensor:
    """||delta||^2 (a 0-d tensor, at least float32, never 0 so that it can divide)."""
    norm = _accurate(torch.linalg.vector_norm(delta))
    return norm.square_().clamp_min_(torch.finfo(norm.dtype).tiny)


def oja_gradient(
    p: torch.Tensor, p_delta: torch.Tensor | None, delta: torch.Tensor
) -> torch.Tensor:
    """Oja's subspace rule in descent form: ``-(P C (I - P^T P))``, shape of P (r, m).

    C is the error covariance over rows / pixels, trace-normalized: ``C = m delta^T delta /
    ||delta||^2`` has mean eigenvalue 1 whatever the loss reduction, batch or image size
    (any positive rescaling keeps Oja's fixed points: docs/design.md#learning-rules). ``P C``
    is formed as ``(P delta)^T delta`` (N r m operations), so the m x m matrix C is never
    built, unless ``p_delta`` (``P delta``, the caller's if it has it) is None and the rank is
    over m / 2: then ``P (delta^T delta)`` (N m^2 + r m^2) is cheaper than projecting first
    (2 N r m).
    A descent step ``P -= lr * grad`` is paper eq. (8) with ``y`` replaced by the error; the
    optimizer's weight decay supplies its ``-lambda P``.
    """
    channels, p_dtype = delta.shape[1], p.dtype
    rank, rows = p.shape[0], delta.numel() // channels
    if p_delta is None and (rows < 2 * rank or 2 * rank <= channels):
        p_delta = project_channels(p.detach().to(delta.dtype), delta)
    if rows < 2 * rank:
        # Few error rows against a wide P (fc_1 at full rank: 64 rows, r = m = 1024): with
        # PD = P delta rows, (P C P^T) P - P C = PD^T (PD P - delta) costs 2 N r m, not r^2 m.
        p_rows = _accurate(p_delta.reshape(rows, rank) if p_delta.dim() == 2 else
                           p_delta.permute(0, 2, 3, 1).reshape(rows, rank))  # fmt: skip
        d_rows = _accurate(delta.reshape(rows, channels) if delta.dim() == 2 else
                           delta.permute(0, 2, 3, 1).reshape(rows, channels))  # fmt: skip
        p = p.detach().to(p_rows.dtype)
        gradient = p_rows.t().mm(torch.addmm(d_rows, p_rows, p, beta=-1))
        return gradient.mul_(channels).div_(squared_norm(delta)).to(p_dtype)
    if p_delta is None:
        accurate = _accurate(delta)
        gram = channel_gram(accurate, accurate)  # unnormalized C, (m, m); fp32 under bf16
        p = p.detach().to(gram.dtype)
        pc = p.mm(gram)
    else:
        pc = channel_gram(
            _accurate(p_delta), _accurate(delta)
        )  # unnormalized P C, (r, m); fp32 under bf16
        p = p.detach().to(pc.dtype)
    gradient = torch.addmm(pc, pc.mm(p.t()), p, beta=-1)  # (P C P^T) P - P C
    # multiply, then divide: a zero error (a silent layer) must give 0, not 0 * (m / tiny) = NaN
    return gradient.mul_(channels).div_(squared_norm(delta)).to(p_dtype)


def error_covariance(delta: torch.Tensor) -> torch.Tensor:
    """Trace-normalized covariance (m, m) of an error batch (N, m) or (b, m, H, W)."""
    accurate = _accurate(delta)  # bf16 errors: the Gram matrix is accumulated in float32
    gram = channel_gram(accurate, accurate)
    return gram.mul_(delta.shape[1]).div_(squared_norm(delta))  # 0 for a zero error, not NaN


def top_eigenvectors(covariance: torch.Tensor, rank: int) -> torch.Tensor:
    """Rows = the ``rank`` leading eigenvectors of a symmetric (m, m) matrix, largest first."""
    _, vectors = torch.linalg.eigh(covariance)
    return vectors[:, -rank:].flip(-1).t()
