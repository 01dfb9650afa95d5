"""Training runs (DESIGN.md 7): one (preset, seed, config) -> one run folder.

::

    <out>/<run-id>/config.yaml     the complete resolved config
    <out>/<run-id>/checkpoint.pt   model + optimizer + scheduler + RNG states (atomic)
    <out>/<run-id>/history.nc      per-epoch losses, accuracies, feedback diagnostics
    <out>/<run-id>/model.pt        final weights (+ config)
    <out>/<run-id>/DONE            written last: the run is finished

Running the same run again resumes from ``checkpoint.pt``; a finished run is not retrained.
Every file is written atomically, so a run killed at any moment loses at most the epoch in
progress. On the CPU with ``train.deterministic`` a resumed run ends with bitwise the same
weights as an uninterrupted one: the shuffling, augmentation and dropout/noise generators
are checkpointed with the model.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import xarray as xr
from tqdm.auto import tqdm

from retina_raf import __version__
from retina_raf.config import (
    RunConfig,
    dump_yaml,
    from_dict,
    load_run_config,
    resolve_run_config,
    to_dict,
)
from retina_raf.data import Augmenter, DeviceData, load_cifar10
from retina_raf.errors import ConfigError, RunError
from retina_raf.feedback import feedback_diagnostics
from retina_raf.io import atomic_path, write_netcdf, write_text
from retina_raf.models import RetinaNet, model_from_config
from retina_raf.optim import BlockedRMSprop

DEFAULT_OUT = "runs"
DIVERGENCE_CHECK = 20  # batches between checks for a non-finite loss
# settings that may differ when a run is resumed (they do not change what is computed)
RESUMABLE_KEYS = {
    ("train", "epochs"),
    ("train", "progress"),
    ("train", "device"),
    ("train", "num_threads"),
    ("model", "conv_impl"),  # direct and FFT convolution compute the same, to float tolerance
    ("train", "retina_snapshots"),
    ("train", "compile"),
    ("data", "path"),  # the same data may live elsewhere on another machine
}


# --------------------------------------------------------------------------- identity
def run_id(cfg: RunConfig) -> str:
    """The default folder name of a run: ``<preset>-s<seed>``."""
    return f"{cfg.preset}-s{cfg.seed}"


def run_identity(config: dict | RunConfig) -> dict:
    """The labels that place a run among others: preset, rank, n_bn, seed, rule.

    ``rank`` is the rank of the feedback sent into the retina: the RAF rank of ``vvs_1``,
    the direct feedback's rank under dRAF, and for backprop the rank of ``W^T`` of
    ``vvs_1`` (``min(n_bn, vvs_channels)``). ``rule`` is ``bp``, ``raf`` or ``draf`` (the
    family of the preset), or the rule of ``vvs_1`` for custom configurations.
    """
    cfg = config if isinstance(config, RunConfig) else from_dict(RunConfig, config)
    m = cfg.model
    vvs1_rule = m.layer_rule.get("vvs_1", m.rule)
    if m.direct_target is not None:
        rule = "draf"
        source = m.direct_source or f"vvs_{m.vvs_layers}"
        source_width = (
            m.num_classes
            if source == "fc_2"
            else (m.fc_units if source == "fc_1" else m.vvs_channels)
        )
        rank = m.direct_rank or source_width
    elif vvs1_rule == "bp":
        rule, rank = "bp", min(m.n_bn, m.vvs_channels)
    else:
        rule, rank = (
            "raf" if vvs1_rule in ("raf", "raf_pca") else vvs1_rule,
            m.layer_rank.get("vvs_1", m.vvs_channels),
        )
    return {"preset": cfg.preset, "rank": int(rank), "n_bn": int(m.n_bn),
            "seed": int(cfg.seed), "rule": rule}  # fmt: skip


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

    RMSprop is :class:`~retina_raf.optim.BlockedRMSprop`: torch's update and state, computed
    in cache-sized blocks on the CPU.
    """
    t = cfg.train
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "rmsprop":
        return BlockedRMSprop(params, lr=t.lr, alpha=t.rmsprop_alpha, eps=t.rmsprop_eps,
                              weight_decay=t.weight_decay, momentum=t.momentum)  # fmt: skip
    if t.optimizer == "adam":
        return torch.optim.Adam(params, lr=t.lr, weight_decay=t.weight_decay)
    return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay, momentum=t.momentum)


def _load_data(cfg: RunConfig, device: torch.device) -> tuple[DeviceData, DeviceData]:
    d = cfg.data
    ds = load_cifar10(d.path, gray=d.gray)
    x_train, y_train = ds.x_train[: d.train_limit], ds.y_train[: d.train_limit]
    x_test, y_test = ds.x_test[: d.test_limit], ds.y_test[: d.test_limit]
    mean = std = None
    if d.standardize:
        pixels = x_train.astype(np.float64) / 255.0
        mean, std = float(pixels.mean()), float(pixels.std())
    return (DeviceData(x_train, y_train, device, mean, std),
            DeviceData(x_test, y_test, device, mean, std))  # fmt: skip


def _configure_torch(cfg: RunConfig, device: torch.device) -> None:
    t = cfg.train
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
) -> dict:
    """One pass over the training set; returns mean loss and accuracy.

    Raises:
        RunError: when the loss becomes NaN or infinite (divergence).
    """
    model.train()
    amp = cfg.train.amp and device.type == "cuda"
    channels_last = cfg.train.channels_last and device.type == "cuda"
    # the last short batch is dropped: every step has the same shapes (compiled graphs and
    # cudnn.benchmark keep one plan); shuffling drops different images each epoch
    n_batches = max(len(data) // cfg.train.batch_size, 1)
    n_seen = min(n_batches * cfg.train.batch_size, len(data))
    total_loss = torch.zeros((), device=device)
    correct = torch.zeros((), device=device, dtype=torch.long)
    nonfinite = torch.zeros((), device=device, dtype=torch.bool)
    batches = data.batches(cfg.train.batch_size, shuffle, augmenter, drop_last=True)
    bar = tqdm(batches, total=n_batches,
               desc=desc, leave=False, disable=not cfg.train.progress, unit="batch")  # fmt: skip
    for step, (x, y) in enumerate(bar):
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
    return {"train_loss": total_loss.item() / n_seen, "train_acc": correct.item() / n_seen}


@torch.no_grad()
def evaluate(
    model, data: DeviceData, batch_size: int, device: torch.device, amp: bool = False
) -> dict:
    """Mean cross-entropy loss and accuracy on a data split (no augmentation, eval mode)."""
    model.eval()
    total_loss, correct = 0.0, 0
    for x, y in data.batches(max(batch_size, 256)):
        with _autocast(device, amp and device.type == "cuda"):
            logits = model(x).float()
        total_loss += F.cross_entropy(logits, y, reduction="sum").item()
        correct += (logits.argmax(1) == y).sum().item()
    return {"test_loss": total_loss / len(data), "test_acc": correct / len(data)}


# ---------------------------------------------------------------------------- history
def history_dataset(rows: list[dict], cfg: RunConfig) -> xr.Dataset:
    """Per-epoch records -> ``xarray.Dataset`` with dims ``epoch`` (and ``layer``), every
    variable with CF ``long_name`` and UDUNITS ``units``."""
    attrs = {  # CF attributes of what a run records per epoch
        "epoch": ("training epoch (1 = after the first pass over the data)", "1"),
        "layer": ("feedback layer (its error is sent to the layer below)", None),
        "train_loss": ("cross-entropy on the training set, mean over the epoch (nats)", "1"),
        "train_acc": ("fraction correct on the training set over the epoch", "1"),
        "test_loss": ("cross-entropy on the test set after the epoch (nats)", "1"),
        "test_acc": ("fraction correct on the test set after the epoch", "1"),
        "lr": ("learning rate during the epoch", "1"),
        "epoch_time_s": ("wall time of the epoch", "s"),
        "train_images": (
            "images in the training set (the epoch's last short batch is skipped)",
            "1",
        ),  # fmt: skip
        "rank": ("rank of the layer's feedback matrix B = Q P", "1"),
        "alignment_deg": (
            "angle between feedback B and transposed forward weights W^T",
            "degree",
        ),
        "principal_angle_max_rad": (
            "largest principal angle between P's rows and the error's top subspace",
            "radian",
        ),
        "error_effective_rank": ("participation-ratio rank of the error covariance", "1"),
        "p_orthonormality_error": ("Frobenius norm of P P^T - I", "1"),
    }
    epochs = [r["epoch"] for r in rows]
    scalars = [k for k in rows[0] if k not in ("epoch", "diagnostics")] if rows else []
    ds = xr.Dataset(coords={"epoch": ("epoch", np.asarray(epochs, dtype=np.int64))})
    for key in scalars:
        ds[key] = ("epoch", np.asarray([r[key] for r in rows], dtype=np.float64))
    layers = sorted({name for r in rows for name in r.get("diagnostics", {})})
    if layers:
        metrics = sorted({k for r in rows for d in r["diagnostics"].values() for k in d})
        ds = ds.assign_coords(layer=("layer", layers))
        for metric in metrics:
            values = np.full((len(rows), len(layers)), np.nan)
            for i, r in enumerate(rows):
                for j, name in enumerate(layers):
                    value = r.get("diagnostics", {}).get(name, {}).get(metric)
                    if value is not None:
                        values[i, j] = float(value)
            ds[metric] = (("epoch", "layer"), values)
    for name in ds.variables:
        long_name, units = attrs.get(str(name), (str(name).replace("_", " "), None))
        ds[name].attrs.update({"long_name": long_name, **({"units": units} if units else {})})
    ds.attrs.update({"Conventions": "CF-1.10", **{k: str(v) for k, v in run_identity(cfg).items()},
                     "config": dump_yaml(cfg), "retina_raf_version": __version__})  # fmt: skip
    return ds


def _diagnostics(model: RetinaNet) -> dict:
    out = {}
    for name, values in feedback_diagnostics(model).items():
        # "layers.vvs_1.conv" -> "vvs_1": the model's own layer names
        short = name.removeprefix("layers.").removesuffix(".conv").removesuffix(".linear")
        out[short] = {k: float(v) for k, v in values.items() if _is_number(v)}
    return out


def _is_number(value) -> bool:
    if isinstance(value, torch.Tensor):
        return value.numel() == 1
    return isinstance(value, (int, float, np.floating, np.integer))


# ----------------------------------------------------------------------------- a run
def _rng_state(shuffle: torch.Generator, augmenter: Augmenter | None) -> dict:
    state = {"torch": torch.get_rng_state(), "shuffle": shuffle.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if augmenter is not None:
        state["augment"] = augmenter.generator.get_state()
    return state


def _set_rng_state(state: dict, shuffle: torch.Generator, augmenter: Augmenter | None) -> None:
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if augmenter is not None and "augment" in state:
        augmenter.generator.set_state(state["augment"])


def _check_same_run(run_dir: Path, cfg: RunConfig) -> None:
    saved = to_dict(load_run_config(run_dir / "config.yaml"))
    new = to_dict(cfg)
    for section, values in new.items():
        if not isinstance(values, dict):
            if saved.get(section) != values:
                raise RunError(
                    f"{run_dir} holds a different run ({section}: {saved.get(section)!r})"
                )
            continue
        for key, value in values.items():
            if (section, key) not in RESUMABLE_KEYS and saved[section].get(key) != value:
                raise RunError(
                    f"{run_dir} holds a run with {section}.{key}={saved[section].get(key)!r}, "
                    f"not {value!r}: use another --out or delete the folder"
                )


def train(
    cfg: RunConfig | dict, out_dir: str | Path = DEFAULT_OUT, name: str | None = None, log=print
) -> Path:
    """Train (or resume, or skip) one run; return its folder ``out_dir/<name>``.

    Args:
        cfg: a :class:`RunConfig` or its dict form (validated).
        out_dir: parent folder of run folders.
        name: run folder name (default ``<preset>-s<seed>``).
        log: where the one-line messages go (``print``; a sweep passes its logger).

    Raises:
        RunError: divergence (the last good checkpoint is kept), or a folder holding another run.
    """
    if isinstance(cfg, dict):
        cfg = from_dict(RunConfig, cfg)
    run_dir = Path(out_dir) / (name or run_id(cfg))
    resuming = (run_dir / "checkpoint.pt").exists()
    if resuming:
        _check_same_run(run_dir, cfg)
    if (run_dir / "DONE").exists():
        done = finished_epochs(run_dir)
        if done >= cfg.train.epochs:
            log(f"{run_dir}: already finished ({done} epochs); not retrained")
            return run_dir
        (run_dir / "DONE").unlink()  # more epochs asked for: continue from the checkpoint
    run_dir.mkdir(parents=True, exist_ok=True)
    write_text(dump_yaml(cfg), run_dir / "config.yaml")

    device = pick_device(cfg.train.device)
    _configure_torch(cfg, device)
    train_data, test_data = _load_data(cfg, device)
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
    if resuming:
        state = torch.load(run_dir / "checkpoint.pt", map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        _set_rng_state(state["rng"], shuffle, augmenter)
        rows = state["history"]
        log(f"{run_dir}: resuming after epoch {len(rows)} of {cfg.train.epochs}")

    if cfg.train.retina_snapshots and not rows:
        save_retina_snapshot(run_dir, model, 0)  # the initial retina: where the RFs start
    # compiled or not, the parameters are the model's: checkpoints save `model`
    step_model = torch.compile(model) if cfg.train.compile else model
    epochs = range(len(rows) + 1, cfg.train.epochs + 1)
    bar = tqdm(epochs, desc=run_dir.name, unit="epoch", disable=not cfg.train.progress,
               initial=len(rows), total=cfg.train.epochs)  # fmt: skip
    for epoch in bar:
        start = time.perf_counter()
        lr = optimizer.param_groups[0]["lr"]
        stats = train_epoch(step_model, train_data, optimizer, cfg, shuffle, augmenter, device,
                            desc=f"epoch {epoch}")  # fmt: skip
        stats.update(evaluate(model, test_data, cfg.train.batch_size, device, cfg.train.amp))
        scheduler.step()
        row = {"epoch": epoch, **stats, "lr": lr, "epoch_time_s": time.perf_counter() - start,
               "train_images": len(train_data)}  # fmt: skip
        if cfg.train.diagnostics:
            row["diagnostics"] = _diagnostics(model)
        rows.append(row)
        if cfg.train.retina_snapshots:
            save_retina_snapshot(run_dir, model, epoch)
        _save_checkpoint(run_dir, model, optimizer, scheduler, shuffle, augmenter, rows, cfg)
        log(f"{run_dir.name} epoch {epoch}/{cfg.train.epochs}: "
            f"train loss {stats['train_loss']:.4f} "
            f"acc {stats['train_acc']:.3f} | test loss {stats['test_loss']:.4f} "
            f"acc {stats['test_acc']:.3f} | {row['epoch_time_s']:.1f} s")  # fmt: skip

    _save_final(run_dir, model, cfg)
    return run_dir


RETINA_LAYERS = ("retina_1", "retina_2")  # all that an RF of retina_2 depends on
SNAPSHOT_DIR = "snapshots"


def save_retina_snapshot(run_dir: Path, model: RetinaNet, epoch: int) -> Path:
    """Write the retina layers' weights after ``epoch`` to ``snapshots/epoch_NNN.pt``.

    The file holds ``{"epoch": int, "model": partial state_dict}`` (CPU tensors) with the keys
    of ``RetinaNet.state_dict()`` under ``layers.retina_1`` and ``layers.retina_2``: loaded with
    ``strict=False`` into a model of the run's config, it gives that epoch's retina.
    """
    prefixes = tuple(f"layers.{name}." for name in RETINA_LAYERS)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()
             if k.startswith(prefixes)}  # fmt: skip
    path = run_dir / SNAPSHOT_DIR / f"epoch_{epoch:03d}.pt"
    path.parent.mkdir(exist_ok=True)
    with atomic_path(path) as tmp:
        torch.save({"epoch": epoch, "model": state}, tmp)
    return path


def retina_snapshots(run_dir: str | Path) -> dict[int, Path]:
    """Epoch -> snapshot file of a run folder (empty when it kept none); epoch 0 is the init."""
    folder = Path(run_dir) / SNAPSHOT_DIR
    if not folder.is_dir():
        return {}
    return {int(p.stem.split("_")[1]): p for p in sorted(folder.glob("epoch_[0-9][0-9][0-9].pt"))}


def _save_checkpoint(run_dir, model, optimizer, scheduler, shuffle, augmenter, rows, cfg):
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "rng": _rng_state(shuffle, augmenter),
             "history": rows, "config": to_dict(cfg)}  # fmt: skip
    with atomic_path(run_dir / "checkpoint.pt") as tmp:
        torch.save(state, tmp)
    write_netcdf(history_dataset(rows, cfg), run_dir / "history.nc")


def _save_final(run_dir: Path, model: RetinaNet, cfg: RunConfig) -> None:
    state = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
             for k, v in model.state_dict().items()}  # fmt: skip
    with atomic_path(run_dir / "model.pt") as tmp:
        torch.save({"model": state, "config": to_dict(cfg)}, tmp)
    write_text(f"finished {cfg.train.epochs} epochs\n", run_dir / "DONE")


def finished_epochs(run_dir: str | Path) -> int:
    """Number of epochs recorded in a run folder's ``history.nc`` (0 when there is none)."""
    path = Path(run_dir) / "history.nc"
    if not path.exists():
        return 0
    try:
        with xr.open_dataset(path, engine="h5netcdf") as history:
            return int(history.sizes.get("epoch", 0))
    except Exception as exc:
        raise RunError(f"cannot read {path}: {exc}") from exc


def load_trained(run_dir: str | Path, device="cpu") -> tuple[RetinaNet, dict]:
    """The final model of a run folder (eval mode) and its config dict.

    Raises:
        RunError: the folder does not exist or holds no ``model.pt`` (unfinished run).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"no such run folder: {run_dir}")
    path = run_dir / "model.pt"
    if not path.is_file():
        raise RunError(f"{run_dir} has no model.pt (the run is unfinished or not a run folder)")
    try:
        state = torch.load(path, map_location=device, weights_only=False)
        cfg = from_dict(RunConfig, state["config"])
        model = model_from_config(cfg.model).to(device)
        model.load_state_dict(state["model"])
    except RunError:
        raise
    except Exception as exc:
        raise RunError(f"cannot load {path}: {exc}") from exc
    return model.eval(), to_dict(cfg)


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
    options (``--epochs``, ``--data``, ``--device``, ``--amp``).
    """
    from retina_raf.config import load_yaml, merge, parse_overrides

    base = load_yaml(config_file) if config_file else {}
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
    return resolve_run_config(preset, seed, overrides, others=others)
