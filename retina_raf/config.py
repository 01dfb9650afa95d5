"""Configuration: every setting of a run as validated dataclasses, read from and written to YAML.

This module owns configuration. A run is fully described by a :class:`RunConfig`
(``preset``, ``seed`` and the ``model``, ``train`` and ``data`` sections); later parts add
fields here rather than new config systems. Validation happens on load: unknown keys and
out-of-range values raise :class:`~retina_raf.errors.ConfigError` naming the key and the
allowed values.

The paper's conditions (DESIGN.md section 5) are presets: functions of the preset name
that fill model fields (``bp``, ``bp-bottleneck-<k>``, ``raf-r<k>``, ``draf-bottleneck-<k>``).
"""

import dataclasses
import json
import math
import re
import types
import typing
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from retina_raf.errors import ConfigError

# bp: backprop; raf: RAF with Oja (paper eq. 11); raf_pca: RAF with the PCA rule for P;
# kp: Kolen-Pollack; fa: feedback alignment; lowrank_fa: Q trained, P fixed random (DESIGN 4.1).
RULES = ("bp", "raf", "raf_pca", "kp", "fa", "lowrank_fa")


def spec(default, *, low=None, high=None, choices=None, doc: str = "", **kw):
    """A dataclass field with validation metadata (inclusive ``low``/``high`` or ``choices``)."""
    meta = {"low": low, "high": high, "choices": choices, "doc": doc}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


# --------------------------------------------------------------------------- sections
@dataclass
class ModelConfig:
    """The Lindsey retina/VVS network (DESIGN.md 5) and each layer's learning rule."""

    in_channels: int = spec(1, low=1, high=3, doc="input channels (1: grayscale)")
    image_size: int = spec(32, low=8, high=512)
    retina_channels: int = spec(32, low=1, high=4096, doc="channels of retina_1")
    n_bn: int = spec(32, low=1, high=4096, doc="retina output channels (feedforward bottleneck)")
    vvs_channels: int = spec(32, low=1, high=4096)
    vvs_layers: int = spec(3, low=1, high=16, doc="number of VVS conv layers (paper 3, Lindsey 2)")
    kernel_size: int = spec(9, low=1, high=31, doc="odd kernel size of every conv layer")
    fc_units: int = spec(1024, low=1, high=65536)
    dropout: float = spec(0.5, low=0.0, high=0.99)
    num_classes: int = spec(10, low=2, high=1000)
    input_noise: float = spec(
        0.0, low=0.0, high=10.0, doc="std of Gaussian noise on the input (training only)"
    )
    retina_noise: float = spec(
        0.0, low=0.0, high=10.0, doc="std of Gaussian noise on the retina output (training only)"
    )
    retina_activity_l1: float = spec(
        0.0, low=0.0, high=1.0, doc="L1 penalty on retina output activity"
    )
    retina_weight_l1: float = spec(0.0, low=0.0, high=1.0, doc="L1 penalty on retina conv weights")
    rule: str = spec(
        "bp", choices=RULES, doc="learning rule of every layer not named in layer_rule"
    )
    layer_rule: dict = spec({}, doc="layer name -> rule (bp, raf, raf_pca, kp, fa, lowrank_fa)")
    layer_rank: dict = spec({}, doc="layer name -> feedback rank (default: full)")
    track_error_covariance: bool = spec(
        True, doc="feedback layers keep a moving average of their error covariance (diagnostics)"
    )
    direct_target: str | None = spec(None, doc="layer whose output receives direct feedback (dRAF)")
    direct_source: str | None = spec(
        None, doc="source layer of the direct error (default: last VVS layer)"
    )
    direct_rank: int | None = spec(
        None, low=1, high=65536, doc="rank of the direct feedback (default: full)"
    )
    conv_impl: str = spec(
        "auto",
        choices=("auto", "direct", "fft"),
        doc="how conv layers compute: direct, fft (frequency domain, same result), or auto "
        "(per layer and device, retina_raf.fftconv.choose_conv_impl)",
    )
    init: str = spec(
        "kaiming",
        choices=("kaiming", "glorot"),
        doc="weight init: kaiming (torch's default, the paper's appendix B) or glorot "
        "(Keras' default Glorot-uniform with zero biases, Lindsey et al.'s code)",
    )


@dataclass
class TrainConfig:
    """The optimization recipe (paper appendix C) and the hardware settings."""

    epochs: int = spec(120, low=0, high=100000)
    batch_size: int = spec(64, low=1, high=65536)
    optimizer: str = spec("rmsprop", choices=("rmsprop", "adam", "sgd"))
    lr: float = spec(1e-4, low=1e-12, high=10.0)
    weight_decay: float = spec(1e-5, low=0.0, high=1.0)
    lr_decay: float = spec(
        0.985, low=1e-6, high=1.0, doc="exponential learning-rate decay per epoch"
    )
    momentum: float = spec(0.0, low=0.0, high=0.9999)
    rmsprop_alpha: float = spec(
        0.99, low=0.0, high=0.9999, doc="RMSprop's squared-gradient decay (Keras' rho: 0.9)"
    )
    rmsprop_eps: float = spec(1e-8, low=0.0, high=1.0, doc="RMSprop's epsilon (Keras: 1e-7)")
    device: str = spec("auto", choices=("auto", "cpu", "cuda"))
    amp: bool = spec(False, doc="bf16 autocast on CUDA")
    channels_last: bool = spec(True, doc="channels_last memory format on CUDA")
    deterministic: bool = spec(True, doc="deterministic algorithms on the CPU")
    num_threads: int = spec(0, low=0, high=1024, doc="torch CPU threads (0: torch's default)")
    diagnostics: bool = spec(True, doc="record feedback diagnostics every epoch")
    progress: bool = spec(True, doc="tqdm progress bars")
    compile: bool = spec(
        False,
        doc="torch.compile the model for training (GPU; feedback layers stay in one graph; "
        "the error-covariance diagnostics are then not tracked)",
    )
    retina_snapshots: bool = spec(
        False,
        doc="after every epoch save the retina's weights (retina_1, retina_2; a few hundred KB) "
        "to snapshots/epoch_NNN.pt, so that RFs can be followed through training",
    )
    checkpoint_every: int = spec(
        5,
        low=1,
        high=100000,
        doc="epochs between checkpoints; the last epoch and a SIGTERM always write one, and "
        "only the latest is kept",
    )


@dataclass
class DataConfig:
    """Which images, and how they are presented."""

    path: str | None = spec(None, doc="npz or cifar-10-batches-py folder (None: embedded sample)")
    gray: str = spec("mean", choices=("mean", "luma"))
    standardize: bool = spec(True, doc="subtract the training mean, divide by the training std")
    augment: bool = spec(True)
    max_shift: float = spec(
        0.1, low=0.0, high=0.49, doc="random shifts up to this fraction of the image"
    )
    flip: bool = spec(True, doc="random horizontal flips")
    train_limit: int | None = spec(
        None, low=1, high=10**7, doc="use only the first N training images"
    )
    test_limit: int | None = spec(None, low=1, high=10**7, doc="use only the first N test images")


@dataclass
class RunConfig:
    """One training run: a preset, a seed, and every setting."""

    preset: str = spec("bp")
    seed: int = spec(0, low=0, high=2**31 - 1)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


# ------------------------------------------------------------------------- validation
def _check_value(key: str, value: Any, tp: Any, meta: dict) -> Any:
    optional = False
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional, tp = True, args[0]
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{key}: null is not allowed")
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true or false, got {value!r}")
    elif tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
    elif tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):  # NaN passes every range check below
            raise ConfigError(f"{key}: {value!r} is not a finite number")
    elif tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
    elif tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        value = dict(value)
    elif tp is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        value = list(value)
    choices, low, high = meta.get("choices"), meta.get("low"), meta.get("high")
    if choices is not None and value not in choices:
        raise ConfigError(
            f"{key}: {value!r} is not allowed (allowed: {', '.join(map(str, choices))})"
        )
    if low is not None and value < low or high is not None and value > high:
        raise ConfigError(f"{key}: {value!r} is out of range (allowed: {low} to {high})")
    return value


def from_dict(cls, data: dict | None, prefix: str = ""):
    """Build and validate dataclass ``cls`` from a (possibly nested) dict."""
    data = {} if data is None else data
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key '{prefix}{unknown[0]}' (allowed: {', '.join(fields)})")
    kwargs = {}
    for name, value in data.items():
        tp, key = hints[name], prefix + name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = from_dict(tp, value, key + ".")
        else:
            kwargs[name] = _check_value(key, value, tp, fields[name].metadata)
    obj = cls(**kwargs)
    return obj


def to_dict(cfg) -> dict:
    """A plain nested dict of a config dataclass (YAML-safe)."""
    return dataclasses.asdict(cfg)


def load_yaml(path: str | Path) -> dict:
    """Read a YAML mapping; ConfigError for a missing, unreadable or non-mapping file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"no such config file: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a YAML mapping at the top level")
    return data


def dump_yaml(cfg) -> str:
    """The config as YAML text."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return yaml.safe_dump(data, sort_keys=False)


def load_run_config(path: str | Path) -> "RunConfig":
    """Read and validate a ``config.yaml`` of a run."""
    cfg = from_dict(RunConfig, load_yaml(path))
    check_run_config(cfg)
    return cfg


# --------------------------------------------------------------------------- overrides
def parse_overrides(items: list[str] | tuple[str, ...]) -> dict:
    """``["train.epochs=3", "n_bn=4"]`` -> nested dict. Values are parsed as YAML scalars.

    A key without a section (``epochs``) is looked up in the sections of :class:`RunConfig`
    and must name exactly one field.
    """
    sections = {f.name: f.type for f in dataclasses.fields(RunConfig)}
    hints = typing.get_type_hints(RunConfig)
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--set expects key=value, got {item!r}")
        key, raw = item.split("=", 1)
        key = key.strip()
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {key}: cannot parse value {raw!r}") from exc
        parts = key.split(".")
        if len(parts) == 1 and key not in sections:
            owners = [
                s
                for s in sections
                if dataclasses.is_dataclass(hints[s])
                and key in {f.name for f in dataclasses.fields(hints[s])}
            ]
            if len(owners) != 1:
                allowed = sorted(
                    {
                        f"{s}.{f.name}"
                        for s in sections
                        if dataclasses.is_dataclass(hints[s])
                        for f in dataclasses.fields(hints[s])
                    }
                )
                raise ConfigError(f"unknown key '{key}' (allowed: {', '.join(allowed)})")
            parts = [owners[0], key]
        node = out
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = value
    return out


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; ``update`` wins. Mapping-valued fields (layer_rule) merge too."""
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


# ----------------------------------------------------------------------------- presets
PRESET_PATTERNS = {
    "bp": "backprop everywhere, no bottleneck",
    "bp-bottleneck-<k>": "backprop, k retina output channels (paper: 1, 2, 4)",
    "raf-r<k>": "RAF everywhere; the feedback into the retina (vvs_1's) has rank k "
    "(paper: 2, 4, 32)",
    "draf-bottleneck-<k>": "k retina output channels; the retina output receives a direct "
    "full-rank error from the last VVS layer (dRAF); the rest RAF",
}


# The readout (fc_2) sends its exact error W^T e to fc_1 under the RAF presets. With RAF there
# too, the paper's recipe (RMSprop, lr 1e-4, whose first steps are ~10 lr per weight) drives
# fc_1's 32,768-input units faster than fc_2 can align with its random feedback, and the loss
# explodes within ~50 steps (measured: 1e3-1e5 after 60 steps; stable with the readout exact).
# The readout's error is 10-dimensional, full rank at any rank the presets use, so the retina's
# error dimensionality is unchanged. `--set model.layer_rule.fc_2=raf` restores RAF there.
READOUT_RULE = "bp"


def preset_model_fields(preset: str, others: str = "raf") -> dict:
    """The model fields a preset sets (DESIGN.md 5).

    Args:
        preset: ``bp``, ``bp-bottleneck-<k>``, ``raf-r<k>`` or ``draf-bottleneck-<k>``.
        others: the unconstrained rule: learning rule of the layers the condition does not
            constrain, ``raf`` (default, at full rank) or ``bp``; ignored by the backprop
            presets (``--unconstrained-rule`` on the command line).
    """
    if others not in ("raf", "bp"):
        raise ConfigError(f"unconstrained rule {others!r} is not allowed (allowed: raf, bp)")
    if preset == "bp":
        return {"rule": "bp", "n_bn": 32}
    if m := re.fullmatch(r"bp-bottleneck-(\d+)", preset):
        return {"rule": "bp", "n_bn": _width(m.group(1), preset)}
    readout = {"fc_2": READOUT_RULE} if others == "raf" else {}
    if m := re.fullmatch(r"raf-r(\d+)", preset):
        return {
            "rule": others,
            "n_bn": 32,
            "layer_rule": {"vvs_1": "raf", **readout},
            "layer_rank": {"vvs_1": _width(m.group(1), preset)},
        }
    if m := re.fullmatch(r"draf-bottleneck-(\d+)", preset):
        return {
            "rule": others,
            "n_bn": _width(m.group(1), preset),
            "direct_target": "retina_2",
            "layer_rule": readout,
        }
    raise ConfigError(f"unknown preset {preset!r} (allowed: {', '.join(PRESET_PATTERNS)})")


def _width(text: str, preset: str) -> int:
    value = int(text)
    if value < 1:
        raise ConfigError(f"preset {preset!r}: the width/rank must be >= 1")
    return value


def resolve_run_config(
    preset: str, seed: int = 0, overrides: dict | None = None, others: str = "raf"
) -> RunConfig:
    """Preset + seed + overrides (nested dict) -> a validated :class:`RunConfig`."""
    base = {"preset": preset, "seed": seed, "model": preset_model_fields(preset, others)}
    cfg = from_dict(RunConfig, merge(base, overrides or {}))
    check_run_config(cfg)
    return cfg


def check_run_config(cfg: RunConfig) -> None:
    """Cross-field checks: layer names, ranks within layer widths, odd kernels."""
    m = cfg.model
    if m.kernel_size % 2 == 0:
        raise ConfigError(f"model.kernel_size: {m.kernel_size} must be odd (same padding)")
    widths = layer_out_widths(m)
    for table in ("layer_rule", "layer_rank"):
        for name, value in getattr(m, table).items():
            if name not in widths:
                raise ConfigError(
                    f"model.{table}: unknown layer {name!r} (allowed: {', '.join(widths)})"
                )
            if table == "layer_rule" and value not in RULES:
                raise ConfigError(
                    f"model.layer_rule.{name}: {value!r} is not allowed "
                    f"(allowed: {', '.join(RULES)})"
                )
            if table == "layer_rank":
                if (
                    isinstance(value, bool)
                    or not isinstance(value, int)
                    or not 1 <= value <= widths[name]
                ):
                    raise ConfigError(
                        f"model.layer_rank.{name}: {value!r} is out of range "
                        f"(allowed: 1 to {widths[name]}, the layer's output width)"
                    )
    for key in ("direct_target", "direct_source"):
        name = getattr(m, key)
        if name is not None and name not in widths:
            raise ConfigError(f"model.{key}: unknown layer {name!r} (allowed: {', '.join(widths)})")
    if m.direct_target is not None:
        names = list(widths)
        source = m.direct_source or f"vvs_{m.vvs_layers}"
        if names.index(source) <= names.index(m.direct_target):
            raise ConfigError(
                f"model.direct_source: {source!r} must come after direct_target {m.direct_target!r}"
            )
        if m.direct_rank is not None and m.direct_rank > widths[source]:
            raise ConfigError(
                f"model.direct_rank: {m.direct_rank} is out of range "
                f"(allowed: 1 to {widths[source]})"
            )


def layer_out_widths(m: ModelConfig) -> dict[str, int]:
    """Layer name -> output channels/features, in forward order."""
    widths = {"retina_1": m.retina_channels, "retina_2": m.n_bn}
    widths.update({f"vvs_{i}": m.vvs_channels for i in range(1, m.vvs_layers + 1)})
    widths.update({"fc_1": m.fc_units, "fc_2": m.num_classes})
    return widths


# -------------------------------------------------------------------------- experiments
# An experiment file (DESIGN.md 10) is a grid: presets x ranks x seeds x grid overrides.
# ``retina_raf.sweep`` expands it into runs; this section only reads and validates it.
@dataclass
class SlurmConfig:
    """What ``retina-raf sweep --executor slurm`` asks SLURM for: one job per run, as arrays."""

    partition: str | None = spec(None, doc="partition (default: the cluster's default)")
    time_min: int = spec(
        24 * 60,
        low=1,
        high=365 * 24 * 60,
        doc="time limit of one job in minutes; a job that reaches it is requeued and its "
        "run resumes from its checkpoint",
    )
    gpus_per_job: int = spec(1, low=0, high=64)
    cpus_per_task: int = spec(4, low=1, high=1024)
    mem_gb: float | None = spec(None, low=0.1, high=1e5, doc="memory per job (default: SLURM's)")
    array_parallelism: int = spec(64, low=1, high=100000, doc="jobs of one array running at once")
    account: str | None = spec(None)
    qos: str | None = spec(None)
    constraint: str | None = spec(None, doc="node features, e.g. a100")
    setup: list = spec([], doc="shell lines run in each job before Python (module load ...)")
    additional: dict = spec({}, doc="any other sbatch option: name -> value (mail-type: END)")


@dataclass
class ExperimentConfig:
    """An experiment file: which runs to train, and where and how to run them."""

    name: str = spec("", doc="experiment name (default: the file's stem)")
    description: str = spec("")
    presets: list = spec([], doc="preset names (DESIGN.md 5), at least one")
    unconstrained_rule: str = spec(
        "raf",
        choices=("raf", "bp"),
        doc="rule of the layers the preset leaves unconstrained (old name: others)",
    )
    ranks: list = spec(
        [None], doc="feedback ranks into the retina (model.layer_rank.vvs_1); null: the preset's"
    )
    seeds: list = spec([0], doc="seeds; an integer n in the file means 0..n-1")
    overrides: dict = spec({}, doc="settings of every run: train.epochs: 3, or nested mappings")
    grid: dict = spec({}, doc="setting -> list of values; every combination is a run")
    data: str | None = spec(None, doc="image data set of every run (not part of run ids)")
    out: str | None = spec(None, doc="output folder (default: runs/<name>)")
    slurm: SlurmConfig = field(default_factory=SlurmConfig)


def normalize_overrides(mapping: dict, where: str) -> dict:
    """Overrides as written (``epochs: 3``, ``train.epochs: 3`` or nested) -> nested dict.

    Short and dotted keys are resolved exactly as ``--set`` resolves them; ``preset`` and
    ``seed`` are axes of the grid, not overrides. Errors name ``where`` and the key.
    """
    out: dict = {}
    for key, value in flatten_dict(mapping).items():
        if key.split(".")[0] in ("preset", "seed"):
            raise ConfigError(f"{where}: '{key}' is an axis of the grid (use presets/seeds)")
        try:  # resolve the key as --set does (a placeholder value), then put the real value
            (full_key,) = flatten_dict(parse_overrides([f"{key}=0"]))
        except ConfigError as exc:
            raise ConfigError(f"{where}: {exc}") from None
        node = out
        *parents, leaf = full_key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def flatten_dict(mapping: dict, prefix: str = "") -> dict:
    """``{"train": {"epochs": 3}}`` -> ``{"train.epochs": 3}`` (empty mappings kept as values)."""
    out = {}
    for key, value in mapping.items():
        key = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            out.update(flatten_dict(value, key + "."))
        else:
            out[key] = value
    return out


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read and validate an experiment file.

    Every key is checked, and every combination of preset, rank and grid values is
    resolved into a :class:`RunConfig`, so a bad override fails here, naming the file and
    the key, before anything is trained or submitted.
    """
    path = Path(path)
    raw = load_yaml(path)
    try:
        if "others" in raw:  # the old name of unconstrained_rule, still read
            if "unconstrained_rule" in raw:
                raise ConfigError("others: the old name of unconstrained_rule; give only one")
            warnings.warn(f"{path}: 'others' is deprecated, write 'unconstrained_rule'",
                          FutureWarning, stacklevel=2)  # fmt: skip
            raw["unconstrained_rule"] = raw.pop("others")
        if isinstance(raw.get("seeds"), int) and not isinstance(raw["seeds"], bool):
            if raw["seeds"] < 1:
                raise ConfigError(f"seeds: {raw['seeds']} must be >= 1")
            raw["seeds"] = list(range(raw["seeds"]))
        exp = from_dict(ExperimentConfig, raw)
        exp.name = exp.name or path.stem
        check_experiment(exp)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return exp


def check_experiment(exp: ExperimentConfig) -> None:
    """Validate the axes and resolve every (preset, rank, grid point); normalizes in place."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.+-]*", exp.name):
        raise ConfigError(f"name: {exp.name!r} must be letters, digits, '_', '.', '+', '-'")
    _check_axis("presets", exp.presets, str)
    _check_axis("seeds", exp.seeds, int, low=0, high=2**31 - 1)
    _check_axis("ranks", exp.ranks, int, low=1, high=65536, allow_none=True)
    for preset in exp.presets:
        try:
            preset_model_fields(preset, exp.unconstrained_rule)
        except ConfigError as exc:
            raise ConfigError(f"presets: {exc}") from None
    exp.overrides = normalize_overrides(exp.overrides, "overrides")
    fixed = flatten_dict(exp.overrides)
    grid = {}
    for key, values in exp.grid.items():
        _check_axis(f"grid.{key}", values, object)
        # A scalar placeholder gives the setting's full dotted name (epochs -> train.epochs).
        (dotted,) = flatten_dict(normalize_overrides({key: 0}, f"grid.{key}"))
        if dotted in fixed:
            raise ConfigError(f"grid.{key}: also set in overrides; set it in one place")
        if dotted in grid:
            raise ConfigError(f"grid.{key}: the same setting as grid.{grid[dotted][0]}")
        grid[dotted] = (key, values)
    exp.grid = {dotted: values for dotted, (_, values) in grid.items()}
    for point in grid_points(exp.grid):
        where = "grid" if point else "overrides"
        for preset in exp.presets:
            for rank in exp.ranks:
                overrides = experiment_overrides(exp, rank, point)
                try:
                    cfg = resolve_run_config(preset_with_rank(preset, rank), exp.seeds[0],
                                             overrides, exp.unconstrained_rule)  # fmt: skip
                except ConfigError as exc:
                    raise ConfigError(f"{where}: {exc}") from None
                retina_rule = cfg.model.layer_rule.get("vvs_1", cfg.model.rule)
                if rank is not None and retina_rule != "raf":
                    raise ConfigError(
                        f"ranks: preset {preset!r} sends {retina_rule} into the retina; a "
                        "feedback rank needs RAF there (use a raf-r<k> preset)"
                    )
    slurm = exp.slurm
    if not all(isinstance(line, str) for line in slurm.setup):
        raise ConfigError("slurm.setup: expected a list of shell lines (strings)")


def _check_axis(key, values, tp, low=None, high=None, allow_none=False) -> None:
    if not isinstance(values, list):
        raise ConfigError(f"{key}: expected a list of values, got {values!r}")
    if not values:
        raise ConfigError(f"{key}: needs at least one value")
    for value in values:
        if value is None and allow_none:
            continue
        bad_type = tp is not object and (
            not isinstance(value, tp) or isinstance(value, bool) and tp is int
        )
        if bad_type or tp is object and isinstance(value, (dict, list)) and not value:
            raise ConfigError(f"{key}: {value!r} is not a valid value")
        if low is not None and value < low or high is not None and value > high:
            raise ConfigError(f"{key}: {value!r} is out of range (allowed: {low} to {high})")
    seen = [json.dumps(v, sort_keys=True) for v in values]
    if len(set(seen)) != len(seen):
        raise ConfigError(f"{key}: a value is listed twice")


def grid_points(grid: dict) -> list[dict]:
    """Every combination of the grid's values, in file order: ``[{key: value, ...}, ...]``."""
    points = [{}]
    for key, values in grid.items():
        points = [{**point, key: value} for point in points for value in values]
    return points


def preset_with_rank(preset: str, rank: int | None) -> str:
    """The preset of a run of an experiment: a ``ranks:`` value overriding the rank of a
    ``raf-r<k>`` preset relabels it ``raf-r<rank>``, whose run it is."""
    if rank is not None and re.fullmatch(r"raf-r\d+", preset):
        return f"raf-r{rank}"
    return preset


def experiment_overrides(exp: ExperimentConfig, rank: int | None, point: dict) -> dict:
    """The nested overrides of one run: fixed overrides, its grid point, its rank, the data."""
    overrides = exp.overrides
    for key, value in point.items():
        overrides = merge(overrides, normalize_overrides({key: value}, f"grid.{key}"))
    if rank is not None:
        overrides = merge(overrides, {"model": {"layer_rank": {"vvs_1": rank}}})
    if exp.data is not None:
        overrides = merge(overrides, {"data": {"path": exp.data}})
    return overrides


def update_experiment(
    exp: ExperimentConfig,
    data: str | None = None,
    sets: list[str] | tuple[str, ...] = (),
    slurm_options: list[str] | tuple[str, ...] = (),
) -> ExperimentConfig:
    """Command-line changes to an experiment, validated like the file.

    Args:
        data: the image data set of every run (``--data``; not part of run ids).
        sets: ``KEY=VALUE`` overrides of every run (``--set``; they change run ids).
        slurm_options: ``KEY=VALUE``: a :class:`SlurmConfig` field (``partition=gpu``,
            ``time_min=600``) or else any sbatch option (``mail-type=END``).
    """
    exp = dataclasses.replace(exp)
    if data is not None:
        exp.data = data
    if sets:
        exp.overrides = merge(exp.overrides, parse_overrides(list(sets)))
    if slurm_options:
        slurm = to_dict(exp.slurm)
        names = {f.name for f in dataclasses.fields(SlurmConfig)}
        for item in slurm_options:
            key, sep, raw = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"--slurm expects key=value, got {item!r}")
            key, value = key.strip().replace("-", "_"), yaml.safe_load(raw) if raw else None
            if key in names:
                slurm[key] = value
            else:
                slurm["additional"] = {**slurm["additional"], key.replace("_", "-"): value}
        exp.slurm = from_dict(SlurmConfig, slurm, "slurm.")
    check_experiment(exp)
    return exp
