"""What every feedback pathway holds: Q, P, the rule switches and the error covariance.

:class:`FeedbackMixin` is shared by :class:`~retina_raf.feedback.RAFLinear`,
:class:`~retina_raf.feedback.RAFConv2d` and :class:`~retina_raf.feedback.DirectFeedback`.
The backward Functions call :meth:`FeedbackMixin._observe_error` with the error they saw; it
keeps the moving average of the error covariance (``p_rule="pca"`` or
``track_error_covariance=True``) and, for "pca", resets P to its top eigenvectors every
``pca_interval`` backward passes.
"""

from __future__ import annotations

import torch
from torch import nn

from retina_raf.errors import ConfigError
from retina_raf.feedback.rules import (
    check_p_rule,
    check_rank,
    error_covariance,
    kaiming_uniform_,
    rule_name,
    top_eigenvectors,
)


class FeedbackMixin:
    """Q and P of a feedback pathway ``B = Q P`` and the bookkeeping of its learning rule.

    Attributes: ``error_channels`` (m, the size of the error that P projects),
    ``feedback_rank`` (r), ``train_q``, ``tie_q``, ``p_rule``, ``track_error_covariance``;
    parameters
    ``q`` (shape set by the layer) and ``p`` (r, m); buffer ``error_covariance`` (m x m,
    trace-normalized, exponential moving average with ``covariance_momentum``) when tracked.
    """

    def _setup_feedback(
        self,
        *,
        error_channels: int,
        rank: int,
        q_shape: tuple[int, ...],
        q_fan_in: int,
        train_q: bool,
        p_rule: str,
        track_error_covariance: bool,
        tie_q: bool = False,
        pca_interval: int,
        covariance_momentum: float,
        what: str,
        device=None,
        dtype=None,
    ) -> None:
        factory = dict(device=device, dtype=dtype)
        rank = check_rank(rank, error_channels, what)
        self.error_channels = error_channels
        self.feedback_rank = rank
        self.p_rule = check_p_rule(p_rule, rank, error_channels, what)
        self.train_q = bool(train_q)
        self.tie_q = bool(tie_q)
        if self.tie_q and self.train_q:
            raise ConfigError(f"{what}: tie_q sets Q to W^T P^T; it cannot also train Q (train_q)")
        if isinstance(pca_interval, bool) or not isinstance(pca_interval, int) or pca_interval < 1:
            raise ConfigError(f"{what}: pca_interval must be an int >= 1, got {pca_interval!r}")
        if not 0.0 <= covariance_momentum < 1.0:
            raise ConfigError(
                f"{what}: covariance_momentum must be in [0, 1), got {covariance_momentum!r}"
            )
        self.pca_interval = pca_interval
        self.covariance_momentum = float(covariance_momentum)
        self.track_error_covariance = bool(track_error_covariance) or p_rule == "pca"
        self._q_fan_in = q_fan_in
        # requires_grad says what an optimizer may touch; the backward pass fills q.grad only
        # when train_q and p.grad only for Oja, whatever requires_grad_() does to them later.
        self.q = nn.Parameter(torch.empty(q_shape, **factory), requires_grad=self.train_q)
        self.p = nn.Parameter(
            torch.empty(rank, error_channels, **factory), requires_grad=self.p_rule == "oja"
        )
        if self.track_error_covariance:
            self.register_buffer("error_covariance", torch.eye(error_channels, **factory))
        # A tensor, not a Python int: the backward pass increments it in place, which neither
        # syncs a GPU nor splits a torch.compile graph. Not persistent: the state_dict keeps
        # it as extra state (an int), as it always has.
        self.register_buffer(
            "covariance_updates", torch.zeros((), dtype=torch.long, device=device), persistent=False
        )
        self.reset_feedback_parameters()

    def reset_feedback_parameters(self) -> None:
        """Kaiming-uniform Q and P (P = I for "identity", rows orthonormalized under tie_q, Q
        then W^T P^T); error covariance back to I."""
        kaiming_uniform_(self.q, self._q_fan_in)
        with torch.no_grad():
            if self.p_rule == "identity":
                self.p.copy_(torch.eye(self.error_channels))
            else:
                kaiming_uniform_(self.p, self.error_channels)
                if self.tie_q:
                    # Orthonormal rows: B = W^T P^T P projects the error from the first step
                    # (W^T at full rank) until the PCA rule sets P on the first backward.
                    self.p.copy_(torch.linalg.qr(self.p.t())[0].t())
            if self.track_error_covariance:
                self.error_covariance.copy_(torch.eye(self.error_channels))
            self.covariance_updates.zero_()
        if self.tie_q:
            self._tie_q()

    def _tie_q(self) -> None:
        """Q := W^T P^T (in Q's layout, :meth:`transported_weight`), so that B = W^T P^T P.

        Called by the layer's forward pass under grad, before the backward that reads Q: the
        backward then uses the W of this forward pass and the P it projects the error with.
        """
        with torch.no_grad():
            self.q.copy_(self.transported_weight())

    @property
    def rule(self) -> str:
        """Name of the rule (see ``rules.RULES``) or "custom"."""
        return rule_name(
            self.train_q, self.p_rule, self.feedback_rank, self.error_channels, self.tie_q
        )

    @property
    def computes_q_grad(self) -> bool:
        return self.train_q and self.q.requires_grad

    @property
    def computes_p_grad(self) -> bool:
        return self.p_rule == "oja" and self.p.requires_grad

    def _observe_error(self, delta: torch.Tensor) -> None:
        """Update the covariance average with an error batch (N, m) or (b, m, H, W)."""
        if not self.track_error_covariance:
            return
        if torch.compiler.is_compiling() and self.p_rule != "pca":
            # A buffer updated inside a traced backward is a side effect that splits the graph
            # at every feedback layer: compiled training skips this diagnostic average (the
            # PCA rule needs it, so under compile it keeps it and its graph breaks).
            return
        with torch.no_grad():
            batch_covariance = error_covariance(delta).to(self.error_covariance.dtype)
            # The average starts at I (trace-normalized like every batch term): adding a
            # multiple of I leaves the eigenvectors, hence P and the principal angles, unchanged.
            self.error_covariance.lerp_(batch_covariance, 1.0 - self.covariance_momentum)
            # reading the counter syncs; only the PCA rule needs it (every pca_interval steps)
            if self.p_rule == "pca" and int(self.covariance_updates) % self.pca_interval == 0:
                # A diverged run (non-finite error) keeps its P; the training loop reports it.
                if torch.isfinite(self.error_covariance).all():
                    top = top_eigenvectors(self.error_covariance, self.feedback_rank)
                    self.p.copy_(top.to(self.p.dtype))
            self.covariance_updates += 1

    # The update counter decides when "pca" recomputes P: keep it in the state_dict so a
    # resumed run recomputes at the same steps as an uninterrupted one.
    def get_extra_state(self) -> dict:
        return {"covariance_updates": int(self.covariance_updates)}

    def set_extra_state(self, state: dict) -> None:
        self.covariance_updates.fill_(int(state["covariance_updates"]))

    def _feedback_repr(self) -> str:
        return (
            f"rank={self.feedback_rank}, rule={self.rule}, train_q={self.train_q}, "
            f"p_rule={self.p_rule}" + (", tie_q=True" if self.tie_q else "")
        )
