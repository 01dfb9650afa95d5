"""Can weight decay align Kolen-Pollack's feedback within a run? The rate, from a checkpoint;
and where Oja's P sits among the error's principal directions.

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
:func:`error_subspace` reads the same checkpoint for the other half of RAF's feedback B = Q P:
which of the error covariance's eigenvectors P's rows span. The checkpoint holds only the
latest epoch, so :func:`update_error_subspace_history` keeps each epoch's answer in a CSV
file (one owner of that format, with :func:`error_subspace_markdown` for its table), as
:func:`update_kp_decay_history` keeps each run's latest decay rate (:func:`kp_decay_markdown`)
after its folder is gone.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
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
    from retina_raf.feedback.diagnostics import alignment_angle

    run_dir = Path(run_dir)
    cfg, state, model, module = checkpoint_layer(run_dir, layer)
    if cfg.train.optimizer != "rmsprop":
        raise RunError(f"{run_dir} trained with {cfg.train.optimizer}, not RMSprop")
    if not hasattr(module, "q") or not getattr(module, "train_q", False):
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


def checkpoint_layer(run_dir: Path, layer: str):
    """(config, checkpoint state, model with its weights, the feedback convolution of
    ``layer``) of a run folder's ``checkpoint.pt`` (finished or in flight).

    Raises:
        RunError: no checkpoint; DataError: ``layer`` is not a convolution of the model.
    """
    from retina_raf import runs
    from retina_raf.models import model_from_config

    cfg = runs.load_config(run_dir)
    path = run_dir / "checkpoint.pt"
    if not path.is_file():
        raise RunError(f"{run_dir} has no checkpoint.pt yet")
    state = torch.load(path, map_location="cpu", weights_only=False)
    model = model_from_config(cfg.model)
    model.load_state_dict(state["model"])
    module = dict(model.named_modules()).get(f"layers.{layer}.conv")
    if module is None:
        raise DataError(f"{run_dir.name} has no convolution {layer}")
    return cfg, state, model, module


def error_subspace(run_dir: str | Path, layer: str = "vvs_1", n_eigen: int | None = None) -> dict:
    """Which of the error's principal directions P's rows span, at a run's checkpoint.

    RAF sends the error through P (r, m); Oja's rule drives P's rows to the span of the r
    leading eigenvectors of the error's channel covariance C (m, m), the layer's moving
    average. The share of the top-r variance that P captures (the history's
    ``error_variance_captured``) says how far it is; this says where it is: for each leading
    eigenvector v_i of C, its overlap with P's row space, ``|Pi v_i|^2`` (Pi the orthogonal
    projector onto the rows): 1 for a direction P spans, 0 for one it misses. The overlaps of
    all m eigenvectors sum to r.

    Args:
        run_dir: a run folder with a ``checkpoint.pt`` (finished or in flight).
        layer: a feedback convolution that keeps its error covariance
            (``track_error_covariance``, RAF's default).
        n_eigen: how many leading eigenvectors (default r + 2, at most m).

    Returns:
        ``epoch`` (epochs done), ``rank`` r, ``channels`` m, ``eigenvalue_share`` (the
        leading eigenvalues of C over its trace, largest first), ``overlap`` (each one's
        overlap with P's rows), ``variance_captured`` (the share of the top-r variance P
        captures): plain floats and lists.

    Raises:
        RunError: no checkpoint; DataError: ``layer`` keeps no error covariance.
    """
    from retina_raf.feedback.diagnostics import variance_captured

    run_dir = Path(run_dir)
    _, state, _, module = checkpoint_layer(run_dir, layer)
    if not getattr(module, "track_error_covariance", False) or not hasattr(module, "p"):
        raise DataError(f"{layer} of {run_dir.name} has no P or keeps no error covariance")
    p = module.p.detach().double()
    covariance = module.error_covariance.detach().double()
    rank, channels = p.shape
    n_eigen = min(rank + 2 if n_eigen is None else int(n_eigen), channels)
    eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
    eigenvalues, eigenvectors = eigenvalues.flip(0), eigenvectors.flip(1)
    rows, _ = torch.linalg.qr(p.t())  # (m, r): orthonormal basis of P's row space
    overlap = (rows.t() @ eigenvectors[:, :n_eigen]).square().sum(0)
    return {
        "epoch": float(len(state["history"])),
        "rank": rank,
        "channels": channels,
        "eigenvalue_share": (eigenvalues[:n_eigen] / eigenvalues.sum()).tolist(),
        "overlap": overlap.tolist(),
        "variance_captured": variance_captured(p, covariance),
    }


ERROR_SUBSPACE_COLUMNS = ("run", "epoch", "rank", "eigenvector", "eigenvalue_share", "overlap",
                          "variance_captured")  # fmt: skip


def error_subspace_frame(found: Sequence[tuple[str, dict]]) -> pd.DataFrame:
    """:func:`error_subspace` results as rows, one per (run, epoch, eigenvector).

    Args:
        found: (run id, :func:`error_subspace` result) pairs.

    Returns:
        A DataFrame with :data:`ERROR_SUBSPACE_COLUMNS`; ``eigenvector`` counts from 1
        (the leading one), ``variance_captured`` repeats on each eigenvector's row.
    """
    rows = [
        (run, int(r["epoch"]), int(r["rank"]), i + 1, share, overlap, r["variance_captured"])
        for run, r in found
        for i, (share, overlap) in enumerate(zip(r["eigenvalue_share"], r["overlap"], strict=True))
    ]
    return pd.DataFrame(rows, columns=list(ERROR_SUBSPACE_COLUMNS))


def _read_history(path: str | Path, columns: Sequence[str], what: str) -> pd.DataFrame:
    """The rows of a history CSV with ``columns``.

    Raises:
        DataError: the file lacks one of ``columns``.
    """
    frame = pd.read_csv(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path} is not {what}: no column {missing}")
    return frame[list(columns)]


def _update_history(
    path: str | Path, frame: pd.DataFrame, columns: Sequence[str], key: Sequence[str],
    order: Sequence[str], what: str,
) -> pd.DataFrame:  # fmt: skip
    """Add ``frame``'s rows to the CSV at ``path``, replacing the rows of the file whose
    ``key`` columns match one of them, sorted by ``order``; written atomically."""
    from retina_raf.io import write_text

    path = Path(path)
    if path.is_file():
        old = _read_history(path, columns, what)
        replaced = old.set_index(list(key)).index.isin(frame.set_index(list(key)).index)
        frame = pd.concat([old[~replaced], frame], ignore_index=True)
    frame = frame.sort_values(list(order), kind="stable", ignore_index=True)
    write_text(frame.to_csv(index=False, float_format="%.6g"), path)
    return frame


def read_error_subspace_history(path: str | Path) -> pd.DataFrame:
    """The rows an error-subspace history CSV holds (:func:`update_error_subspace_history`).

    Raises:
        DataError: the file lacks a column of :data:`ERROR_SUBSPACE_COLUMNS`.
    """
    return _read_history(path, ERROR_SUBSPACE_COLUMNS, "an error-subspace history")


def update_error_subspace_history(path: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``frame``'s rows (:func:`error_subspace_frame`) to the CSV at ``path``, replacing
    those of the same run and epoch, sorted by run and epoch; written atomically. Run after
    every epoch, it records where P was at each (the checkpoint keeps only the latest).

    Returns:
        Every row the file now holds.
    """
    return _update_history(path, frame, ERROR_SUBSPACE_COLUMNS, key=("run", "epoch"),
                           order=("run", "epoch", "eigenvector"),
                           what="an error-subspace history")  # fmt: skip


def error_subspace_markdown(frame: pd.DataFrame) -> str:
    """A Markdown table of error-subspace rows (:func:`error_subspace_frame` or a history):
    one line per run and epoch, with the leading eigenvalues (shares of the trace), their
    overlaps with P's rows and P's share of the top-r variance."""
    header = ["run", "epoch", "rank", "leading eigenvalues (share of trace)",
              "overlap with P's rows", "P's share of top-r variance"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for (run, epoch), rows in frame.groupby(["run", "epoch"], sort=False):
        rows = rows.sort_values("eigenvector")
        cells = [str(run), str(int(epoch)), str(int(rows["rank"].iloc[0])),
                 ", ".join(f"{v:.3f}" for v in rows["eigenvalue_share"]),
                 ", ".join(f"{v:.2f}" for v in rows["overlap"]),
                 f"{float(rows['variance_captured'].iloc[0]):.3f}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


LEARNED_Q_RULES = ("raf", "raf_pca", "kp")  # rules whose Q Kolen-Pollack learns

KP_DECAY_COLUMNS = ("run", "epoch", "lr", "median_sqrt_v", "decay_per_step", "efolding_epochs",
                    "shrink_remaining", "shrink_bound", "d_relative", "alignment_deg")  # fmt: skip


def kp_decay_frame(found: Sequence[tuple[str, dict]]) -> pd.DataFrame:
    """:func:`weight_decay_alignment` results as rows, one per run.

    Args:
        found: (run id, :func:`weight_decay_alignment` result) pairs.

    Returns:
        A DataFrame with :data:`KP_DECAY_COLUMNS`.
    """
    rows = [(run, int(r["epoch"]), *(r[c] for c in KP_DECAY_COLUMNS[2:])) for run, r in found]
    return pd.DataFrame(rows, columns=list(KP_DECAY_COLUMNS))


def update_kp_decay_history(path: str | Path, frame: pd.DataFrame) -> pd.DataFrame:
    """Add ``frame``'s rows (:func:`kp_decay_frame`) to the CSV at ``path``, replacing the
    row of the same run (each run at its latest checkpoint), sorted by run; written
    atomically. A run whose folder is gone keeps the row it had.

    Returns:
        Every row the file now holds.
    """
    return _update_history(path, frame, KP_DECAY_COLUMNS, key=("run",), order=("run",),
                           what="a kp-decay history")  # fmt: skip


def kp_decay_markdown(frame: pd.DataFrame) -> str:
    """A Markdown table of :func:`kp_decay_frame` rows (or a history): per run the epoch,
    the next epoch's learning rate, the median sqrt(v) of Q, the decay per step, its
    e-folding time, the shares of D that decay can remove in the run and ever, |D| / |P W|
    and the angle between B and W^T."""
    header = ["run", "epoch", "lr", "median sqrt(v)", "decay per step", "e-folding (epochs)",
              "removable in the run", "removable ever", "norm(Q - PW) / norm(PW)",
              "B vs W^T"]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in frame.itertuples(index=False):
        cells = [str(r.run), str(int(r.epoch)), f"{r.lr:.3g}", f"{r.median_sqrt_v:.3g}",
                 f"{r.decay_per_step:.3g}", f"{r.efolding_epochs:.3g}",
                 f"{r.shrink_remaining:.2%}", f"{r.shrink_bound:.2%}", f"{r.d_relative:.3g}",
                 f"{r.alignment_deg:.1f}\u00b0"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


ERROR_SUBSPACE_RULES = ("raf", "raf_pca", "raf_aligned")  # rules with a P from the error


def experiment_runs_with_learned_feedback(
    experiment: str | Path,
    runs_dir: str | Path,
    layer: str = "vvs_1",
    rules: tuple[str, ...] = LEARNED_Q_RULES,
) -> list[Path]:
    """Run folders of an experiment whose ``layer`` learns by one of ``rules`` (default: Q
    by Kolen-Pollack; :data:`ERROR_SUBSPACE_RULES`: a P from the error), by the run's
    config before any checkpoint is read, and that have a checkpoint, in the experiment's
    order."""
    from retina_raf.sweep import expand, load_experiment, run_dir

    found = []
    for run in expand(load_experiment(experiment)):
        model = run.config().model
        folder = run_dir(Path(runs_dir), run)
        rule = model.layer_rule.get(layer, model.rule)
        if rule in rules and (folder / "checkpoint.pt").is_file():
            found.append(folder)
    return found
