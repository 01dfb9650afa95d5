"""Can weight decay align Kolen-Pollack's feedback within a run? The rate, from a checkpoint.

Kolen-Pollack (KP) learns the feedback Q of a RAF layer with the same local gradient that W
gets, projected by P: for a convolution ``Q.grad = einsum('rm,mnyx->rnyx', P, W.grad)``
(docs/design.md#learning-rules-conv2d). Write ``D = Q - P W`` for the part of Q that is not
backprop's projected feedback (``P W`` is that einsum applied to W itself; the feedback
B = Q P equals W^T's projection when D = 0).

- Under SGD with weight decay lambda on W and Q, the learning terms of Q and P W cancel in D
  (for fixed P) and ``D <- (1 - lr lambda) D`` every step: D shrinks by ``lr lambda`` per
  step whatever the data.
- Under RMSprop each parameter's step is divided by its own ``sqrt(v) + eps`` (v the running
  mean of its squared gradient), so the learning terms of Q and of W no longer cancel, and
  the decay of an element of Q is ``lr lambda / (sqrt(v) + eps)`` per step.

With the learning rate decaying by ``gamma`` per epoch, the total log-shrink that decay can
still bring, from epoch e on, is ``S (lr_e lambda / (sqrt(v) + eps)) (1 - gamma^(E - e)) /
(1 - gamma)`` for S steps per epoch and E epochs in all, and at most ``1 / (1 - gamma)``
epochs' worth to any length: a bound that no amount of training raises.

:func:`weight_decay_alignment` reads a run's checkpoint (weights, optimizer state, scheduler)
and returns those numbers for one RAF layer, at the median ``sqrt(v)`` of its Q;
:func:`experiment_runs_with_learned_feedback` finds the runs of an experiment it applies to.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch

from retina_raf.errors import DataError, RunError


def weight_decay_alignment(run_dir: str | Path, layer: str = "vvs_1") -> dict:
    """How fast weight decay shrinks ``D = Q - P W`` of ``layer`` in a run, at its checkpoint.

    Args:
        run_dir: a run folder with a ``checkpoint.pt`` (finished or in flight), trained with
            RMSprop (the paper's recipe).
        layer: a RAF layer of the retina model (a convolution with a learned Q).

    Returns:
        A dict of plain floats: ``epoch`` (epochs done), ``lr`` (the learning rate of the next
        epoch), ``weight_decay`` (lambda), ``median_sqrt_v`` (median over Q's elements of
        ``sqrt(v) + eps``), ``decay_per_step`` (``lr lambda / median_sqrt_v``),
        ``efolding_epochs`` (epochs for D to shrink by e at today's learning rate),
        ``shrink_remaining`` (the fraction of D that decay can still remove over the run's
        planned epochs), ``shrink_bound`` (the same to infinitely many epochs, with the
        learning rate decaying), ``d_relative`` (``|D| / |P W|``, Frobenius norms) and
        ``alignment_deg`` (the angle between B = Q P and W^T).

    Raises:
        RunError: no checkpoint, or an optimizer other than RMSprop.
        DataError: ``layer`` is not a RAF layer with a learned Q.
    """
    from retina_raf import runs
    from retina_raf.feedback.diagnostics import alignment_angle
    from retina_raf.models import model_from_config

    run_dir = Path(run_dir)
    cfg = runs.load_config(run_dir)
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        raise RunError(f"{run_dir} has no checkpoint.pt yet")
    if cfg.train.optimizer != "rmsprop":
        raise RunError(f"{run_dir} trained with {cfg.train.optimizer}, not RMSprop")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = model_from_config(cfg.model)
    model.load_state_dict(state["model"])
    module = dict(model.named_modules()).get(f"layers.{layer}.conv")
    if module is None or not hasattr(module, "q") or not getattr(module, "train_q", False):
        raise DataError(f"{layer} of {run_dir.name} is not a RAF layer with a learned Q")
    # the optimizer's state is indexed by the position in its parameter list (make_optimizer)
    trainable = [p for p in model.parameters() if p.requires_grad]
    index = next(i for i, p in enumerate(trainable) if p is module.q)
    square_avg = state["optimizer"]["state"][index]["square_avg"]
    eps = cfg.train.rmsprop_eps
    median_sqrt_v = float(torch.median(square_avg.double().sqrt() + eps))
    lr = float(state["scheduler"]["_last_lr"][0])
    weight_decay = cfg.train.weight_decay
    decay_per_step = lr * weight_decay / median_sqrt_v
    n_train = cfg.data.train_limit or 50_000
    steps = max(n_train // cfg.train.batch_size, 1)
    epoch = len(state["history"])
    gamma, epochs_left = cfg.train.lr_decay, max(cfg.train.epochs - epoch, 0)
    # sum over the epochs left of the learning rate's decay factor (geometric series)
    left = epochs_left if gamma == 1 else (1 - gamma**epochs_left) / (1 - gamma)
    forever = math.inf if gamma == 1 else 1 / (1 - gamma)
    with torch.no_grad():
        projected = torch.einsum("rm,mnyx->rnyx", module.p.double(), module.weight.double())
        d_relative = float((module.q.double() - projected).norm() / projected.norm())
    return {
        "epoch": float(epoch),
        "lr": lr,
        "weight_decay": weight_decay,
        "median_sqrt_v": median_sqrt_v,
        "decay_per_step": decay_per_step,
        "efolding_epochs": 1 / (decay_per_step * steps) if decay_per_step > 0 else math.inf,
        "shrink_remaining": float(-np.expm1(-decay_per_step * steps * left)),
        "shrink_bound": float(-np.expm1(-decay_per_step * steps * forever)),
        "d_relative": d_relative,
        "alignment_deg": alignment_angle(module),
    }


LEARNED_Q_RULES = ("raf", "raf_pca", "kp")  # rules whose Q Kolen-Pollack learns


def experiment_runs_with_learned_feedback(
    experiment: str | Path, runs_dir: str | Path, layer: str = "vvs_1"
) -> list[Path]:
    """Run folders of an experiment whose ``layer`` learns its Q by Kolen-Pollack (by the
    run's config, before any checkpoint is read) and that have a checkpoint, in the
    experiment's order."""
    from retina_raf.sweep import expand, load_experiment, run_dir

    found = []
    for run in expand(load_experiment(experiment)):
        model = run.config().model
        folder = run_dir(Path(runs_dir), run)
        rule = model.layer_rule.get(layer, model.rule)
        if rule in LEARNED_Q_RULES and (folder / "checkpoint.pt").is_file():
            found.append(folder)
    return found
