"""Run folders (docs/cli.md#run-folders): the one module that knows what a run folder holds.

Training (:mod:`retina_raf.train`), sweeps (:mod:`retina_raf.sweep`) and the analysis
(:mod:`analysis.results`, :mod:`analysis.rf`) all read and write run folders through this
module::

    <out>/<run-id>/config.yaml     the complete resolved config (written when training starts)
    <out>/<run-id>/checkpoint.pt   the latest checkpoint only: model, optimizer, scheduler,
                                   RNG states, history, and where in an epoch it stopped
    <out>/<run-id>/history.nc      per-epoch records with provenance (rewritten every epoch;
                                   its variables: history_dataset)
    <out>/<run-id>/train.log       one timestamped line per event and epoch, every attempt
    <out>/<run-id>/model.pt        final weights + config
    <out>/<run-id>/DONE            written last: "finished <N> epochs"
    <out>/<run-id>/analysis/       analysis caches, keyed on the weights they came from
    <out>/.locks/<run-id>.lock     flock held by the process that trains the run

The contract:

- **Finished means DONE.** Nothing else (not ``model.pt``, not the history) says a run is
  finished. Extending a finished run (more epochs) removes ``DONE`` before anything else
  changes, so until it is written again the run is unfinished for sweeps and analyses alike.
- **One run id** (:func:`run_id`): ``<preset>[-<labels>]-s<seed>[-<hash>]``; the hash covers
  every setting that differs from the preset's defaults, except :data:`RESUMABLE_KEYS`, so
  ``retina-raf train`` and a sweep put the same run in the same folder, and asking a run for
  more epochs continues it.
- **Loads go to the CPU first** (``map_location="cpu"``); the caller moves what it needs to
  its device. RNG states therefore stay CPU ``ByteTensor``\\ s, which is what
  ``torch.set_rng_state`` and ``Generator.set_state`` require on every device.
- **One lock per run** (:func:`run_lock`): an ``flock`` the OS drops when its holder exits or
  dies, so a killed run is resumable and two processes never train one run.
- Bad or damaged folders raise :class:`~retina_raf.errors.RunError` with a one-line message.
- **Earlier layouts are translated in one place**: what a run folder of an earlier version
  holds differently is read as today's layout here (:func:`upgrade_done`; a stored config of
  the flat model layout by :func:`retina_raf.config.stored_run_config`, the configuration's
  owner, through which every stored config is read), so that no reader elsewhere branches
  on a file's age.

torch and xarray are imported inside the functions that need them: a sweep checks the state
of hundreds of runs without loading either.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import os
import re
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING

from retina_raf import __version__
from retina_raf.config import (
    RunConfig,
    check_run_config,
    dump_yaml,
    flat_model_key,
    flatten_dict,
    load_run_config,
    resolve_run_config,
    stored_run_config,
    to_dict,
)
from retina_raf.errors import ConfigError, RetinaRafError, RunError
from retina_raf.io import atomic_path, write_text

if TYPE_CHECKING:  # only for annotations: xarray is imported where a history is read
    import xarray as xr
from retina_raf.plan import (
    VGG_CHANNELS,
    direct_plan,
    feedback_layer_widths,
    layer_out_widths,
    layer_plan,
)

CONFIG_FILE = "config.yaml"
CHECKPOINT_FILE = "checkpoint.pt"
HISTORY_FILE = "history.nc"
LOG_FILE = "train.log"
MODEL_FILE = "model.pt"
DONE_FILE = "DONE"
DONE_TEXT = re.compile(r"finished (\d+) epochs")  # what DONE says (mark_finished)
ANALYSIS_DIR = "analysis"
SNAPSHOT_DIR = "snapshots"  # train.retina_snapshots: the retina's weights after every epoch
SNAPSHOT_LAYERS = ("retina_1", "retina_2")  # all that an RF of retina_2 depends on
LOCKS_DIR = ".locks"  # in the parent of the run folders (a sweep's out, train's --out)

# Settings that may differ when a run is resumed or extended: they do not change what is
# computed up to any epoch (more epochs extend a run; the lr schedule is per epoch), so they
# are not part of the run id either. Sections and keys as in RunConfig; extend freely.
RESUMABLE_KEYS = {
    ("train", "epochs"),
    ("train", "progress"),
    ("train", "device"),
    ("train", "num_threads"),
    ("train", "checkpoint_every"),
    ("train", "retina_snapshots"),
    ("train", "compile"),  # a compiled model computes what the eager one computes
    ("model", "conv_impl"),  # direct and FFT convolution compute the same, to float tolerance
    ("train", "flush_denormal"),  # values below 1.2e-38 as zero: the same, to float tolerance
    ("data", "path"),  # the same data may live elsewhere on another machine
}

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


# --------------------------------------------------------------------------- identity
def run_id(cfg: RunConfig, rank: int | None = None, point: dict | None = None) -> str:
    """The id (folder name) of a run: ``<preset>[-rank<r>][-<grid labels>]-s<seed>[-<hash>]``.

    The hash (8 hex digits of SHA-1) covers :func:`identity_settings`; it does not depend on
    how the settings were spelled or on Python's hash seed. ``rank`` and ``point`` (a sweep's
    axes, full dotted key -> value) only add readable labels: two runs with the same config
    have the same hash. Model settings are hashed and labelled in the flat spelling of the
    model section's earlier layout (``model.n_bn``, ``vit_dim``), which keeps every run in the
    folder it was trained in.
    """
    labels = [cfg.preset]
    if rank is not None:
        labels.append(f"rank{rank}")
    labels += [_label(flat_model_key(key), value) for key, value in (point or {}).items()]
    labels.append(f"s{cfg.seed}")
    diff = {flat_model_key(key): value for key, value in identity_settings(cfg).items()}
    if diff:
        text = json.dumps(diff, sort_keys=True, separators=(",", ":"))
        labels.append(hashlib.sha1(text.encode()).hexdigest()[:8])
    return "-".join(labels)


_RUN_ID = re.compile(r"(?P<head>.+)-s(?P<seed>[0-9]+)(?:-[0-9a-f]{8})?")


def parse_run_id(run_id: str) -> tuple[str, int | None]:
    """(preset, seed) of a run id written by :func:`run_id`; the part before ``-s<seed>`` is
    the preset with any rank and grid labels. An id of another form: (the id, None)."""
    match = _RUN_ID.fullmatch(run_id)
    if match is None:
        return run_id, None
    return match["head"], int(match["seed"])


def identity_settings(cfg: RunConfig) -> dict:
    """Flat ``{dotted key: value}`` of the settings that differ from the preset's defaults,
    leaving out :data:`RESUMABLE_KEYS`."""
    base = flatten_dict(to_dict(resolve_run_config(cfg.preset, cfg.seed)))
    flat = flatten_dict(to_dict(cfg))
    skip = {".".join(key) for key in RESUMABLE_KEYS}
    return {
        key: value
        for key, value in flat.items()
        if key not in skip and (key not in base or base[key] != value)
    }


def _label(key: str, value) -> str:
    text = json.dumps(value, sort_keys=True) if isinstance(value, (dict, list)) else str(value)
    text = "".join(c if c.isalnum() or c in "._+" else "_" for c in text)
    return f"{key.rsplit('.', 1)[-1]}{text}"


def published_config(cfg: RunConfig) -> str:
    """A run's config as YAML for a file that is published: the data path, when it points at
    a file of a named data set (``.../cifar10_gray_uint8.npz``), becomes that name
    (``cifar10-gray``), which resolves under any machine's data root; no folder of the machine
    that trained the run is kept."""
    import copy

    from retina_raf.data import data_set_name

    name = data_set_name(cfg.data.path)
    if name is not None and name != cfg.data.path:
        cfg = copy.deepcopy(cfg)
        cfg.data.path = name
    return dump_yaml(cfg)


def check_run_name(name: str) -> str:
    """A run folder name: one path component of letters, digits, ``_ . + -``.

    Raises:
        ConfigError: anything else (``../x``, ``a/b``, an empty or hidden name), which would
            put the run outside its ``--out`` folder or hide it.
    """
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name in (".", ".."):
        raise ConfigError(
            f"--name: {name!r} is not a run folder name (letters, digits, '_', '.', '+', '-'; "
            "no '/' and not starting with '.')"
        )
    return name


def run_identity(config: dict | RunConfig) -> dict:
    """The labels that place a run among others: preset, rank, n_bn, seed, rule (and, for the
    Fig. 3 networks, arch, constrain, rank_fraction, d, width).

    Retina model: ``rank`` is the rank of the feedback sent into the retina: the RAF rank of
    ``vvs_1``, the direct feedback's rank under dRAF, and for backprop the rank of ``W^T`` of
    ``vvs_1`` (``min(n_bn, vvs_channels)``). ``rule`` is ``bp``, ``draf``, or the rule of
    ``vvs_1`` (``raf``; ``raf_pca`` for ``raf-pca-r<k>``, kept apart from Oja's ``raf``, since
    the two answer the rank question differently).

    Fig. 3 networks (``model.arch`` mlp, vgg, vit; ``n_bn`` 0): ``rule`` is bp (every layer
    backprop), draf (direct feedback) or the constrained layers' rule; ``constrain``:
    ``none``, ``all``, the pattern of ``model.constrain``, the ``layer_rank`` keys, or
    ``direct:<source>``; ``rank``: ``model.rank`` as asked (layers narrower than it are
    capped), else the smallest constrained layer's (rank_fraction, layer_rank), the direct
    pathways' under dRAF, and for unconstrained runs the widest layer's width (full rank);
    ``d``: classes; ``width``: hidden units (mlp), token width (vit), 512 (vgg).
    """
    cfg = config if isinstance(config, RunConfig) else stored_run_config(config)
    m = cfg.model
    plan, direct = layer_plan(m), direct_plan(m)
    if m.arch == "retina":
        vvs1_rule, vvs1_rank = plan["vvs_1"]
        if direct is not None:
            rule, rank = "draf", m.direct_rank or layer_out_widths(m)[direct[0]]
        elif vvs1_rule == "bp":
            rule, rank = "bp", min(m.retina.n_bn, m.retina.vvs_channels)
        else:
            rule, rank = vvs1_rule, vvs1_rank or m.retina.vvs_channels
        return {"preset": cfg.preset, "rank": int(rank), "n_bn": int(m.retina.n_bn),
                "seed": int(cfg.seed), "rule": rule}  # fmt: skip
    widths = feedback_layer_widths(m)
    hidden = [w for name, w in widths.items() if name != list(widths)[-1]]
    full = max(hidden or widths.values())  # the readout's width only if it is all there is
    ranked = {name: rank for name, (_, rank) in plan.items() if rank is not None}
    rules = {rule for rule, _ in plan.values()}
    if direct is not None:
        source = direct[0]
        source_width = (
            m.num_classes if source == f"fc_{m.mlp.hidden_layers + 1}" else m.mlp.hidden_units
        )
        rule, constrain, rank = "draf", f"direct:{source}", m.direct_rank or source_width
    elif rules == {"bp"}:
        rule, constrain, rank = "bp", "none", full
    elif ranked:
        name = min(ranked, key=ranked.get)
        rule, rank = plan[name][0], ranked[name]
        if m.rank is not None and not m.layer_rank:
            rank = m.rank  # as asked: layers narrower than it (the readout) are capped
        constrain = ",".join(m.layer_rank) if m.layer_rank else m.constrain
    else:
        rule = m.rule if m.rule != "bp" else sorted(rules - {"bp"})[0]
        constrain, rank = "none", full
    width = {"mlp": m.mlp.hidden_units, "vit": m.vit.dim, "vgg": VGG_CHANNELS[-1]}[m.arch]
    return {"preset": cfg.preset, "rank": int(rank), "n_bn": 0, "seed": int(cfg.seed),
            "rule": rule, "arch": m.arch, "constrain": constrain,
            "rank_fraction": math.nan if m.rank_fraction is None else float(m.rank_fraction),
            "d": int(m.num_classes), "width": int(width)}  # fmt: skip


# ---------------------------------------------------------------------------- state
def is_finished(run_dir: str | Path, epochs: int | None = None) -> bool:
    """Whether the run is finished: its ``DONE`` file exists (the only definition), and
    when ``epochs`` is given, it finished at least that many epochs (a run id does not
    include the number of epochs: asking for more extends the run)."""
    run_dir = Path(run_dir)
    if not (run_dir / DONE_FILE).is_file():
        return False
    return epochs is None or finished_epochs(run_dir) >= epochs


def finished_epochs(run_dir: str | Path) -> int:
    """Epochs of a finished run (from ``DONE``), or the epochs ``history.nc`` records for an
    unfinished one (0 when there is none)."""
    run_dir = Path(run_dir)
    try:
        done = (run_dir / DONE_FILE).read_text()
    except OSError:  # no DONE (or it went away: the run is being extended)
        return _history_epochs(run_dir)
    return int(DONE_TEXT.match(upgrade_done(done, run_dir)).group(1))


def _history_epochs(run_dir: Path) -> int:
    return _epochs_of(load_history(run_dir))


def _epochs_of(history) -> int:
    return 0 if history is None else int(history.sizes.get("epoch", 0))


def mark_finished(run_dir: str | Path, epochs: int) -> None:
    """Write ``DONE`` (atomically): the last step of a run."""
    write_text(f"finished {epochs} epochs\n", Path(run_dir) / DONE_FILE)


def mark_unfinished(run_dir: str | Path) -> None:
    """Remove ``DONE``: the first step of extending a run, before any other file changes."""
    (Path(run_dir) / DONE_FILE).unlink(missing_ok=True)


def check_finished(run_dir: str | Path) -> RunConfig:
    """Everything an analysis needs from a finished run, checked without loading weights.

    Returns its config. Raises :class:`RunError` for a missing folder, an unfinished run (no
    ``DONE``), a missing ``model.pt``, or an unreadable ``config.yaml`` or ``history.nc``, so
    that many runs can be validated before any costly work starts.
    """
    run_dir = Path(run_dir)
    _check_done(run_dir)
    cfg = load_config(run_dir)
    load_history(run_dir)
    return cfg


def _check_done(run_dir: Path) -> None:
    """The folder exists, has ``model.pt`` and ``DONE``: the checks that read no file."""
    if not run_dir.is_dir():
        raise RunError(f"no such run folder: {run_dir}")
    if not (run_dir / MODEL_FILE).is_file():
        raise RunError(f"{run_dir} has no model.pt (the run is unfinished or not a run folder)")
    if not is_finished(run_dir):
        raise RunError(
            f"{run_dir} is not finished (no DONE): it is being trained or extended, or was "
            "interrupted; `retina-raf train` with its config finishes it"
        )


def find_runs(root: str | Path) -> list[Path]:
    """Finished run folders (with ``DONE``): ``root`` itself, or its subfolders, by name."""
    root = Path(root)
    if not root.exists():
        raise RunError(f"no such folder: {root}")
    if is_finished(root):
        return [root]
    return sorted(p.parent for p in root.glob(f"*/{DONE_FILE}") if p.is_file())


# ------------------------------------------------------------------ earlier layouts
def upgrade_done(text: str, run_dir: str | Path) -> str:
    """The one place where a run folder of an earlier layout is read as today's: a ``DONE``
    written before it said how many epochs the run finished (``text``, as read) becomes
    today's ``finished <N> epochs``, N from ``history.nc`` (0 without one)."""
    if DONE_TEXT.match(text):
        return text
    return f"finished {_history_epochs(Path(run_dir))} epochs\n"


# -------------------------------------------------------------------------- loading
def load_config(run_dir: str | Path) -> RunConfig:
    """The validated ``config.yaml`` of a run folder."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunError(f"{Path(run_dir)} has no {CONFIG_FILE} (not a run folder)")
    try:
        return load_run_config(path)
    except ConfigError as exc:
        raise RunError(f"{path} is not a valid run config: {exc}") from None


def check_same_run(run_dir: str | Path, cfg: RunConfig) -> None:
    """Refuse a folder whose ``config.yaml`` describes another run (settings outside
    :data:`RESUMABLE_KEYS` differ); a folder without one is fine."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_FILE).is_file():
        return
    saved, new = to_dict(load_config(run_dir)), to_dict(cfg)
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
                    f"not {value!r}: use another --out or --name, or delete the folder"
                )


# -------------------------------------------------------------------------- history
def history_dataset(rows: list[dict], cfg: RunConfig, provenance: dict | None = None):
    """Per-epoch records -> ``xarray.Dataset`` with dims ``epoch`` (and ``layer``).

    Attributes: the run's identity, its config, and ``provenance``
    (:func:`retina_raf.runs.training_provenance`: versions, git commit, device, amp, TF32);
    every variable has a CF ``long_name`` and a UDUNITS ``units``. Training writes it to
    ``history.nc`` after every epoch; :func:`load_history` reads it.
    """
    import numpy as np
    import xarray as xr

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
        "error_variance_captured": (
            "fraction of the error's top-r variance captured by P's rows (1 = top subspace)",
            "1",
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
                     "config": dump_yaml(cfg), "retina_raf_version": __version__,
                     **(provenance or {})})  # fmt: skip
    return ds


def load_history(run_dir: str | Path):
    """The run's ``history.nc`` loaded into memory (``xarray.Dataset``), or None if absent."""
    import xarray as xr

    path = Path(run_dir) / HISTORY_FILE
    if not path.exists():
        return None
    try:
        with xr.open_dataset(path, engine="h5netcdf") as history:
            history = history.load()
    except Exception as exc:  # h5py/h5netcdf raise many types for a damaged file
        raise RunError(f"cannot read {path}: {type(exc).__name__}: {exc}") from None
    if "epoch" not in history.dims:
        raise RunError(f"{path} is not a training history (no 'epoch' dimension)")
    return history


def load_checkpoint(run_dir: str | Path) -> dict | None:
    """The run's ``checkpoint.pt`` on the CPU (whatever device wrote it), or None if absent.

    Raises:
        RunError: a truncated, corrupt or foreign file; the message says how to start over.
    """
    import torch

    path = Path(run_dir) / CHECKPOINT_FILE
    if not path.exists():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a damaged file
        raise RunError(
            f"{path} is damaged ({type(exc).__name__}: {exc}); delete it to train this run "
            "from the start"
        ) from None
    keys = ("model", "optimizer", "scheduler", "rng", "history")
    if not isinstance(state, dict) or any(key not in state for key in keys):
        raise RunError(f"{path} is not a retina-raf checkpoint; delete it to start over")
    return state


def save_checkpoint(run_dir: str | Path, state: dict) -> None:
    """Write ``checkpoint.pt`` atomically, replacing the previous one (only the latest stays)."""
    import torch

    with atomic_path(Path(run_dir) / CHECKPOINT_FILE) as tmp:
        torch.save(state, tmp)


def load_model(run_dir: str | Path, device="cpu"):
    """The final model of a finished run (eval mode, on ``device``) and its config dict.

    The weights are read to the CPU, then the model is moved.

    Raises:
        RunError: no such folder, no ``model.pt``, an unfinished run, or a damaged file.
    """
    import torch

    from retina_raf.models import model_from_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise RunError(f"no such run folder: {run_dir}")
    path = run_dir / MODEL_FILE
    if not path.is_file():
        raise RunError(f"{run_dir} has no model.pt (the run is unfinished or not a run folder)")
    if not is_finished(run_dir):
        raise RunError(
            f"{run_dir} is not finished (no DONE): its model.pt is from before an extension "
            "that is running or was interrupted"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
        cfg = stored_run_config(state["config"])
        check_run_config(cfg)
        model = model_from_config(cfg.model)
        model.load_state_dict(state["model"])
    except RetinaRafError as exc:
        raise RunError(f"cannot load {path}: {exc}") from None
    except Exception as exc:
        raise RunError(f"cannot load {path}: {type(exc).__name__}: {exc}") from None
    return model.to(device).eval(), to_dict(cfg)


def save_model(run_dir: str | Path, state_dict: dict, cfg: RunConfig) -> None:
    """Write ``model.pt`` (weights moved to the CPU, and the config) atomically."""
    import torch

    weights = {k: v.detach().cpu() if isinstance(v, torch.Tensor) else v
               for k, v in state_dict.items()}  # fmt: skip
    with atomic_path(Path(run_dir) / MODEL_FILE) as tmp:
        torch.save({"model": weights, "config": to_dict(cfg)}, tmp)


def save_retina_snapshot(run_dir: str | Path, state_dict: dict, epoch: int) -> Path:
    """Write the retina layers' weights after ``epoch`` to ``snapshots/epoch_NNN.pt``.

    ``state_dict``: the model's full state_dict; only the keys under ``layers.retina_1`` and
    ``layers.retina_2`` are kept, tensors only (CPU copies, a few hundred KB). The file holds
    ``{"epoch": int, "model": partial state_dict}``: loaded with ``strict=False`` into a model
    of the run's config it gives that epoch's retina. Epoch 0 is the initialization.
    """
    import torch

    prefixes = tuple(f"layers.{name}." for name in SNAPSHOT_LAYERS)
    # tensors only: a feedback layer's `_extra_state` (a dict of counters) does not shape an RF
    state = {k: v.detach().cpu().clone() for k, v in state_dict.items()
             if k.startswith(prefixes) and isinstance(v, torch.Tensor)}  # fmt: skip
    path = Path(run_dir) / SNAPSHOT_DIR / f"epoch_{epoch:03d}.pt"
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


def load_retina_snapshot(run_dir: str | Path, epoch: int) -> dict:
    """The partial state_dict of a snapshot (CPU), or RunError when it is missing or damaged."""
    import torch

    path = retina_snapshots(run_dir).get(epoch)
    if path is None:
        raise RunError(f"{run_dir}: no retina snapshot for epoch {epoch}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)["model"]
    except Exception as exc:
        raise RunError(f"cannot read {path}: {type(exc).__name__}") from None


def weights_digest(run_dir: str | Path) -> str:
    """SHA-256 (hex) of the run's ``model.pt``: what analysis caches are keyed on."""
    path = Path(run_dir) / MODEL_FILE
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as exc:
        raise RunError(f"cannot read {path}: {exc.strerror or exc}") from None
    return digest.hexdigest()


def remove_stale_temp_files(run_dir: str | Path) -> list[Path]:
    """Delete the temporary files of writes that were killed (``.checkpoint.*.pt.tmp`` ...,
    up to a checkpoint's size each). Call it holding the run's lock: then no write is under
    way. Returns what was removed."""
    run_dir = Path(run_dir)
    stale = sorted(run_dir.glob(".*.tmp")) if run_dir.is_dir() else []
    for path in stale:
        path.unlink(missing_ok=True)
    return stale


# ------------------------------------------------------------------------ one object
@dataclass(frozen=True, eq=False)  # eq=False: a history Dataset has no truth value to compare
class Run:
    """A run folder read once (:func:`open_run`): what analyses need of it, in one object.

    Attributes:
        path: the run folder; its name is the run id.
        config: the validated ``config.yaml`` (:class:`~retina_raf.config.RunConfig`).
        identity: :func:`run_identity` of the config, ``{label: value}`` (preset, rank, n_bn,
            seed, rule; and arch, constrain, rank_fraction, d, width for the Fig. 3 networks).
        history: ``history.nc`` in memory (``xarray.Dataset``, dims ``epoch`` and, with
            feedback diagnostics, ``layer``; file attributes as written), or None before the
            first epoch ends.
        finished: whether ``DONE`` exists (the only definition of finished).
        epochs: epochs finished: what ``DONE`` says for a finished run, else the epochs the
            history records (0 without one).
    """

    path: Path
    config: RunConfig
    identity: dict
    history: xr.Dataset | None
    finished: bool
    epochs: int

    @property
    def run_id(self) -> str:
        """The folder name (:func:`run_id` for runs made by ``train`` and sweeps)."""
        return self.path.name

    @cached_property
    def weights_digest(self) -> str:
        """SHA-256 (hex) of ``model.pt`` (:func:`weights_digest`), read on first use only:
        listing runs does not read their weights."""
        return weights_digest(self.path)

    def model(self, device="cpu"):
        """The final model, in eval mode on ``device`` (:func:`load_model`).

        Raises:
            RunError: an unfinished run, no ``model.pt``, or a damaged one.
        """
        return load_model(self.path, device)[0]


def open_run(run_dir: str | Path, require_finished: bool = False) -> Run:
    """Read a run folder's config, history and state into a :class:`Run`.

    Args:
        run_dir: the run folder.
        require_finished: refuse an unfinished run (what an analysis of final weights needs);
            without it a run in flight is read as it stands (its epochs so far).

    Raises:
        RunError: no such folder, no valid ``config.yaml``, an unreadable ``history.nc``;
            with ``require_finished`` also no ``DONE`` or no ``model.pt``
            (:func:`check_finished`'s errors, checked before anything else is read).
    """
    run_dir = Path(run_dir)
    if require_finished:
        _check_done(run_dir)
    elif not run_dir.is_dir():
        raise RunError(f"no such run folder: {run_dir}")
    config = load_config(run_dir)
    history = load_history(run_dir)
    finished = is_finished(run_dir)
    # an unfinished run's epochs from the history just read: one snapshot of a run in flight
    epochs = finished_epochs(run_dir) if finished else _epochs_of(history)
    return Run(run_dir, config, run_identity(config), history, finished, epochs)


# -------------------------------------------------------------------------------- lock
def lock_path(run_dir: str | Path) -> Path:
    """``<parent>/.locks/<name>.lock``: outside the run folder, so that locking creates
    nothing in it and a sweep sees every run's lock in one place."""
    run_dir = Path(run_dir)
    return run_dir.parent / LOCKS_DIR / f"{run_dir.name}.lock"


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[bool]:
    """Try to take the run's lock without waiting; yields whether this process has it.

    The lock is an ``flock`` on :func:`lock_path`: the OS drops it when the process exits or
    dies (kill -9, a node failure, a SLURM time limit). flock belongs to an open file, so a
    second ``run_lock`` of the same run in one process does not get it either. The file is
    never deleted (that races with a process that has just opened it); it holds
    ``host pid=... [job=...] [gpu=...]`` of the current holder. flock works on local disks
    and on NFS (Linux emulates it with NFS byte-range locks).
    """
    path = lock_path(run_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{whoami()}\n".encode())
        yield True
    finally:
        os.close(fd)  # releases the flock


def lock_holder(run_dir: str | Path) -> str | None:
    """``"host pid=... [job=...]"`` of the process training the run, or None if nobody is."""
    path = lock_path(run_dir)
    if not path.exists():
        return None
    fd = os.open(path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return path.read_text().strip() or "another process"
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def whoami() -> str:
    """``host pid=... [job=<SLURM job>] [gpu=<CUDA_VISIBLE_DEVICES>]`` of this process."""
    job = os.environ.get("SLURM_ARRAY_JOB_ID")
    job = f"{job}_{os.environ['SLURM_ARRAY_TASK_ID']}" if job else os.environ.get("SLURM_JOB_ID")
    gpu = os.environ.get("CUDA_VISIBLE_DEVICES")
    return (
        f"{socket.gethostname()} pid={os.getpid()}"
        + (f" job={job}" if job else "")
        + (f" gpu={gpu}" if gpu else "")
    )


# -------------------------------------------------------------------- log, provenance
class RunLog:
    """A message sink that also appends each message, timestamped, to ``<run>/train.log``.

    One ``write`` per line with ``O_APPEND``, so the lines of successive attempts (and of a
    sweep's journal) never interleave mid-line.
    """

    def __init__(self, run_dir: str | Path, echo=print):
        self.path = Path(run_dir) / LOG_FILE
        self.echo = echo

    def __call__(self, message: str) -> None:
        self.echo(message)
        self.write(message)

    def write(self, message: str) -> None:
        """Append ``message`` to ``train.log`` only (what an exception will say anyway)."""
        stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
        line = f"{stamp} {' '.join(str(message).split())}\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)


def git_commit() -> str:
    """The git commit of the package's checkout (``unknown`` outside one); ``+dirty`` when
    tracked files differ from it."""
    where = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=where, capture_output=True,
                              text=True, timeout=10)  # fmt: skip
        if head.returncode != 0 or not head.stdout.strip():
            return "unknown"
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                cwd=where, capture_output=True, text=True, timeout=10)  # fmt: skip
        return head.stdout.strip() + ("+dirty" if status.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def training_provenance(device, amp: bool, flush_denormal: bool = False) -> dict:
    """Attributes of ``history.nc``: what trained the run, for the record.

    ``device`` is the ``torch.device`` trained on; ``amp`` whether bf16 autocast was on;
    ``tf32`` whether TF32 matmuls/convolutions were allowed (CUDA only); ``flush_denormal``
    whether a CPU flushed denormal floats to zero. NetCDF attributes hold no booleans, so
    flags are 0/1.
    """
    import torch

    name = str(device)
    cuda = torch.device(device).type == "cuda"
    if cuda:
        name += f" ({torch.cuda.get_device_name(torch.device(device))})"
    tf32 = cuda and torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
    return {
        "retina_raf_version": __version__,
        "git_commit": git_commit(),
        "torch_version": str(torch.__version__),
        "cuda_version": str(torch.version.cuda) if cuda else "none",
        "device": name,
        "amp": int(bool(amp)),
        "tf32": int(bool(tf32)),
        "flush_denormal": int(bool(flush_denormal) and not cuda),
        "deterministic": int(torch.are_deterministic_algorithms_enabled()),
        "hostname": socket.gethostname(),
    }
