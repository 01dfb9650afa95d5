"""Training runs (docs/design.md#training): one (preset, seed, config) -> one run folder.

The folder's layout, its id, what "finished" means, the lock and every load and save
belong to :mod:`retina_raf.runs`; this module trains. Running the same run again resumes it
from ``checkpoint.pt``; a finished run is not retrained, and asking it for more epochs
extends it. Every file is written atomically, so a run killed at any moment (kill -9)
resumes from its latest checkpoint, written every ``train.checkpoint_every`` epochs and
after the last one.

SIGTERM and SIGINT stop a run at the next batch boundary with a checkpoint of the partial
epoch, and the run resumes inside it; on the CPU with ``train.deterministic`` a resumed run
ends bitwise equal to an uninterrupted one. The machinery (checkpoint and restore, RNG
states, partial epochs, signals) is :mod:`retina_raf.resume`.

Read top to bottom: set-up (device, optimizer, data), one epoch (:func:`train_epoch`,
:func:`evaluate`), then a run (:func:`train`, its loop in ``_train_locked``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from retina_raf import runs
from retina_raf.config import (
    RunConfig,
    check_run_config,
    dump_yaml,
    from_dict,
    resolve_run_config,
)
from retina_raf.data import Augmenter, DeviceData, load_cifar10, load_cifar100, select_classes
from retina_raf.errors import ConfigError, RunError
from retina_raf.feedback.diagnostics import model_diagnostics
from retina_raf.io import write_netcdf, write_text
from retina_raf.models import model_from_config
from retina_raf.optim import FusedRMSprop
from retina_raf.resume import (
    EpochBatches,
    PartialEpoch,
    StopOnSignal,
    restore_checkpoint,
    save_checkpoint,
    set_rng_state,
)

# The run folder's owner provides these; they stay importable from here.
from retina_raf.runs import (  # noqa: F401
    RESUMABLE_KEYS,
    finished_epochs,
    history_dataset,
    run_id,
    run_identity,
)
from retina_raf.runs import load_model as load_trained  # noqa: F401

DEFAULT_OUT = "runs"
DIVERGENCE_CHECK = 20  # batches between checks for a non-finite loss


# ------------------------------------------------------------------------------ set-up
def pick_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("train.device: cuda was asked for, but no CUDA device is available")
    return torch.device(name)


def make_optimizer(model: torch.nn.Module, cfg: RunConfig) -> torch.optim.Optimizer:
    """The paper's RMSprop (or Adam / SGD) over every trainable parameter, Q and P included.

    RMSprop is :class:`~retina_raf.optim.FusedRMSprop`: torch's update and state, computed
    in one pass per tensor by torch's fused Adam kernel at beta1 = 0. Adam is torch's fused
    implementation (one kernel per step over all parameters, on the CPU as on a GPU): the
    same update and state as its default loop, which makes five passes over every tensor
    (docs/performance.md#fig3).
    """
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "rmsprop":
        return FusedRMSprop(params, lr=t.lr, alpha=t.rmsprop_alpha, eps=t.rmsprop_eps,
                            weight_decay=t.weight_decay, momentum=t.momentum)  # fmt: skip
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay, amsgrad=t.amsgrad,
                                fused=True)  # fmt: skip
    return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum)


def _load_data(cfg: RunConfig, device: torch.device) -> tuple[DeviceData, DeviceData]:
    """The training and test splits on ``device``: CIFAR-10 (gray or RGB) or CIFAR-100, a
    class subset first (the limits count its images), standardized with the training
    split's statistics (per channel in RGB)."""
    d = cfg.data
    if d.dataset == "cifar100":
        if d.path is None:
            raise ConfigError("data.path: CIFAR-100 needs the folder of its cifar-100-python")
        ds = load_cifar100(d.path, rgb=d.rgb, gray=d.gray)
    else:
        ds = load_cifar10(d.path, gray=d.gray, rgb=d.rgb)
    if d.classes is not None:
        ds = select_classes(ds, d.classes)
    x_train, y_train = ds.x_train[: d.train_limit], ds.y_train[: d.train_limit]
    x_test, y_test = ds.x_test[: d.test_limit], ds.y_test[: d.test_limit]
    mean = std = None
    if d.standardize and d.rgb:  # per channel
        mean, std = dataclasses.replace(ds, x_train=x_train, y_train=y_train).channel_stats()
    elif d.standardize:
        pixels = x_train.astype(np.float64) / 255.0
        mean, std = float(pixels.mean()), float(pixels.std())
    return (DeviceData(x_train, y_train, device, mean, std),
            DeviceData(x_test, y_test, device, mean, std))  # fmt: skip


def _configure_torch(cfg: RunConfig, device: torch.device) -> None:
    t = cfg.train
    if device.type == "cpu":
        # before any thread pool starts: new threads inherit the floating-point mode
        torch.set_flush_denormal(t.flush_denormal)
    if t.num_threads:
        torch.set_num_threads(t.num_threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    elif t.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


# ------------------------------------------------------------------------ one epoch
def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def train_epoch(
    model,
    data: DeviceData,
    optimizer,
    cfg: RunConfig,
    shuffle: torch.Generator,
    augmenter: Augmenter | None,
    device: torch.device,
    desc: str = "",
    resume: PartialEpoch | None = None,
    stop=None,
) -> dict | PartialEpoch:
    """One pass over the training set; returns mean loss and accuracy.

    Args:
        resume: this epoch's :class:`PartialEpoch` from a checkpoint: its batches are
            skipped (same permutation) and its sums continued.
        stop: called at every batch boundary; when it returns True the epoch ends there and
            its :class:`PartialEpoch` is returned instead of the means.

    Raises:
        RunError: when the loss becomes NaN or infinite (divergence).
    """
    model.train()
    amp = cfg.train.amp
    channels_last = cfg.train.channels_last and device.type == "cuda"
    # the last short batch is dropped: every step has the same shapes (compiled graphs and
    # cudnn.benchmark keep one plan); shuffling drops different images each epoch
    n_batches = max(len(data) // cfg.train.batch_size, 1)
    n_seen = min(n_batches * cfg.train.batch_size, len(data))
    done = resume or PartialEpoch()
    total_loss = torch.tensor(done.loss_sum, device=device)  # float32, as the sums it continues
    correct = torch.tensor(done.correct, device=device, dtype=torch.long)
    nonfinite = torch.zeros((), device=device, dtype=torch.bool)
    batches = EpochBatches(
        data.batches(cfg.train.batch_size, shuffle, augmenter, drop_last=True),
        done,
        lambda rng: set_rng_state(rng, shuffle, augmenter),
        stop,
    )
    bar = tqdm(batches, total=n_batches, initial=done.batches, desc=desc, leave=False,
               disable=not _show_bars(cfg), unit="batch")  # fmt: skip
    for step, (x, y) in enumerate(bar, start=done.batches):
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(device, amp):
            logits = model(x)
            loss = F.cross_entropy(logits.float(), y)
            objective = loss + model.penalty()
        nonfinite |= ~torch.isfinite(objective.detach())
        # reading the flag syncs a GPU, so look every DIVERGENCE_CHECK steps; weights that went
        # non-finite in between are never checkpointed (the last epoch's checkpoint stays)
        if (step + 1) % DIVERGENCE_CHECK == 0 or step + 1 == n_batches:
            if nonfinite.item():
                raise RunError(f"training diverged: non-finite loss by batch {step + 1}")
        optimizer.zero_grad(set_to_none=True)
        objective.backward()
        optimizer.step()
        total_loss += loss.detach() * len(y)
        correct += (logits.argmax(1) == y).sum()
    if batches.stopped_at is not None:
        if nonfinite.item():  # never checkpoint weights that may have gone non-finite
            raise RunError(f"training diverged: non-finite loss by batch {batches.stopped_at}")
        return PartialEpoch(batches.stopped_at, total_loss.item(), int(correct.item()))
    return {"train_loss": total_loss.item() / n_seen, "train_acc": correct.item() / n_seen}


def _show_bars(cfg: RunConfig) -> bool:
    """Progress bars only on a terminal: in a log file (SLURM, ``make demo``) their control
    codes are noise, and the per-epoch log line says the same."""
    return cfg.train.progress and sys.stderr.isatty()


@torch.no_grad()
def evaluate(
    model, data: DeviceData, batch_size: int, device: torch.device, amp: bool = False
) -> dict:
    """Mean cross-entropy loss and accuracy on a data split (no augmentation, eval mode)."""
    model.eval()
    total_loss, correct = 0.0, 0
    for x, y in data.batches(max(batch_size, 256)):
        with _autocast(device, amp):
            logits = model(x).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return {"test_loss": total_loss / len(data), "test_acc": correct / len(data)}


# ----------------------------------------------------------------------------- a run
def train(
    cfg: RunConfig | dict,
    out_dir: str | Path = DEFAULT_OUT,
    name: str | None = None,
    log=print,
    locked: bool = False,
) -> Path:
    """Train (or resume, extend or skip) one run; return its folder ``out_dir/<name>``.

    Everything that can be checked (settings, name, a folder holding another run, the
    device, the data) is checked before anything is created; then the run's lock is taken,
    so a run that another process is training is refused.

    Args:
        cfg: a :class:`RunConfig` or its dict form (validated).
        out_dir: parent folder of run folders.
        name: run folder name (default :func:`retina_raf.runs.run_id`).
        log: where the one-line messages go (``print``; the CLI sends them to stderr); each
            also goes, timestamped, to the run's ``train.log``.
        locked: the caller already holds the run's lock (a sweep).

    Raises:
        ConfigError, DataError: bad settings, name, device or data (nothing was created).
        RunError: divergence (the last good checkpoint is kept), a folder holding another
            run, a damaged checkpoint, a checkpoint past the epochs asked for, or a run that
            another process is training.
        RunInterrupted: SIGTERM (or submitit's time-limit signal) stopped the run at a batch
            boundary, after its checkpoint was written.
    """
    if isinstance(cfg, dict):
        cfg = from_dict(RunConfig, cfg)
    check_run_config(cfg)
    run_dir = Path(out_dir) / runs.check_run_name(name or run_id(cfg))
    runs.check_same_run(run_dir, cfg)
    if _already_finished(run_dir, cfg, log):
        return run_dir
    device = pick_device(cfg.train.device)
    _configure_torch(cfg, device)
    train_data, test_data = _load_data(cfg, device)
    with contextlib.nullcontext(True) if locked else runs.run_lock(run_dir) as mine:
        if not mine:
            raise RunError(
                f"{run_dir} is being trained by another process ({runs.lock_holder(run_dir)})"
            )
        if _already_finished(run_dir, cfg, log):  # by another process, while data loaded
            return run_dir
        return _train_locked(cfg, run_dir, device, train_data, test_data, log)


def _already_finished(run_dir: Path, cfg: RunConfig, log) -> bool:
    if not runs.is_finished(run_dir):
        return False
    done = runs.finished_epochs(run_dir)
    if done < cfg.train.epochs:
        return False  # more epochs asked for: the run is extended from its checkpoint
    log(f"{run_dir}: already finished ({done} epoch{'s' if done != 1 else ''}); not retrained")
    return True


def _train_locked(cfg, run_dir: Path, device, train_data, test_data, echo) -> Path:
    """:func:`train` once the run's lock is held and its inputs are checked."""
    state = runs.load_checkpoint(run_dir)  # a damaged one fails here, before any change
    epochs = cfg.train.epochs
    if state is not None:
        reached = len(state["history"]) + (1 if state.get("partial") else 0)
        if reached > epochs:
            raise RunError(
                f"{run_dir} has trained {reached} epochs already, more than the {epochs} asked "
                f"for: ask for at least {reached}, or use another --out or --name"
            )
    runs.remove_stale_temp_files(run_dir)
    runs.mark_unfinished(run_dir)  # extending: unfinished until DONE is written again
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(dump_yaml(cfg), run_dir / runs.CONFIG_FILE)
    log = runs.RunLog(run_dir, echo)
    provenance = runs.training_provenance(device, cfg.train.amp, cfg.train.flush_denormal)

    model = model_from_config(cfg.model, seed=cfg.seed).to(device)
    if device.type == "cuda" and cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer(model, cfg)
    scheduler = torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=cfg.train.lr_decay)
    shuffle = torch.Generator(device=device)
    shuffle.manual_seed(cfg.seed)
    augmenter = None
    if cfg.data.augment:
        augmenter = Augmenter(seed=cfg.seed + 1, device=device, max_shift=cfg.data.max_shift,
                              flip_prob=0.5 if cfg.data.flip else 0.0)  # fmt: skip
    torch.manual_seed(cfg.seed + 2)
    rows: list[dict] = []
    partial = None
    if state is None:
        log(f"{run_dir}: training {epochs} epoch{'s' if epochs != 1 else ''} on {device}")
    else:
        rows, partial = restore_checkpoint(state, model, optimizer, scheduler, shuffle, augmenter)
        if partial is not None:
            log(f"{run_dir}: resuming epoch {len(rows) + 1} of {epochs} "
                f"after batch {partial.batches}")  # fmt: skip
        else:
            log(f"{run_dir}: resuming after epoch {len(rows)} of {epochs}")

    def checkpoint(partial_epoch: dict | None = None) -> None:
        save_checkpoint(run_dir, model, optimizer, scheduler, shuffle, augmenter, rows, cfg,
                        partial_epoch)  # fmt: skip

    if cfg.train.retina_snapshots and not rows and partial is None:
        runs.save_retina_snapshot(run_dir, model.state_dict(), 0)  # where the RFs start
    # compiled or not, the parameters are the model's: checkpoints save `model`
    step_model = torch.compile(model) if cfg.train.compile else model

    bar = tqdm(range(len(rows) + 1, epochs + 1), desc=run_dir.name, unit="epoch",
               disable=not _show_bars(cfg), initial=len(rows), total=epochs)  # fmt: skip
    try:
        with StopOnSignal() as stop:
            for epoch in bar:
                start = time.perf_counter()
                lr = optimizer.param_groups[0]["lr"]
                shuffle_start = shuffle.get_state()
                stats = train_epoch(step_model, train_data, optimizer, cfg, shuffle, augmenter,
                                    device, desc=f"epoch {epoch}", resume=partial,
                                    stop=stop.requested)  # fmt: skip
                partial = None
                if isinstance(stats, PartialEpoch):
                    checkpoint(stats.record(shuffle_start))
                    stop.finish(log, f"{run_dir}: stopped by {stop.name} in epoch {epoch} "
                                     f"after batch {stats.batches}")  # fmt: skip
                stats.update(evaluate(model, test_data, cfg.train.batch_size, device,
                                      cfg.train.amp))  # fmt: skip
                scheduler.step()
                row = {"epoch": epoch, **stats, "lr": lr,
                       "epoch_time_s": time.perf_counter() - start,
                       "train_images": len(train_data)}  # fmt: skip
                if cfg.train.diagnostics:
                    row["diagnostics"] = model_diagnostics(model)
                rows.append(row)
                if cfg.train.retina_snapshots:
                    runs.save_retina_snapshot(run_dir, model.state_dict(), epoch)
                write_netcdf(history_dataset(rows, cfg, provenance), run_dir / runs.HISTORY_FILE)
                if epoch % cfg.train.checkpoint_every == 0 or epoch == epochs or stop.requested():
                    checkpoint()
                log(f"{run_dir.name} epoch {epoch}/{epochs}: "
                    f"train loss {stats['train_loss']:.4f} "
                    f"acc {stats['train_acc']:.3f} | test loss {stats['test_loss']:.4f} "
                    f"acc {stats['test_acc']:.3f} | {row['epoch_time_s']:.1f} s")  # fmt: skip
                if stop.requested() and epoch < epochs:
                    stop.finish(log, f"{run_dir}: stopped by {stop.name} after epoch {epoch}")
    except RunError as exc:
        log.write(f"error: {exc}")  # the exception itself reaches the caller's output
        raise
    runs.save_model(run_dir, model.state_dict(), cfg)
    runs.mark_finished(run_dir, len(rows))
    log(f"{run_dir}: finished {len(rows)} epoch{'s' if len(rows) != 1 else ''}")
    return run_dir


# ------------------------------------------------------------- retina-raf train's options
def config_from_cli(
    preset: str | None,
    seed: int | None,
    epochs: int | None = None,
    data: str | None = None,
    device: str | None = None,
    amp: bool = False,
    others: str = "raf",
    sets: tuple[str, ...] = (),
    config_file: str | None = None,
) -> RunConfig:
    """The run config that ``retina-raf train`` options describe.

    Precedence, lowest first: the preset, the YAML ``config_file`` (any :class:`RunConfig`
    fields, e.g. a ``config.yaml`` of an earlier run), ``--set`` overrides, then the named
    options (``--epochs``, ``--data``, ``--device``, ``--amp``). The file's layer tables
    (``model.layer_rule``, ``model.layer_rank``) replace the preset's rather than merge with
    them, so that a run's own ``config.yaml`` describes that run again whatever
    ``--unconstrained-rule`` made it.
    """
    from retina_raf.config import load_yaml, merge, parse_overrides, sectioned_model

    base = load_yaml(config_file) if config_file else {}
    if isinstance(base.get("model"), dict):  # a run's config.yaml may be of the flat layout
        base["model"] = sectioned_model(base["model"])
    file_model = base.get("model") if isinstance(base.get("model"), dict) else {}
    tables = {t: file_model.pop(t) for t in ("layer_rule", "layer_rank") if t in file_model}
    preset = preset or base.pop("preset", None)
    if preset is None:
        raise ConfigError("--preset is required (or a 'preset' key in --config)")
    base.pop("preset", None)
    seed = seed if seed is not None else base.pop("seed", 0)
    base.pop("seed", None)
    direct: dict = {"train": {}, "data": {}}
    if epochs is not None:
        direct["train"]["epochs"] = epochs
    if device is not None:
        direct["train"]["device"] = device
    if amp:
        direct["train"]["amp"] = True
    if data is not None:
        direct["data"]["path"] = data
    overrides = merge(merge(base, parse_overrides(list(sets))), direct)
    return resolve_run_config(preset, seed, overrides, others=others, tables=tables)
