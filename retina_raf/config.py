"""Configuration: every setting of a run as validated dataclasses, read from and written to YAML.

This module owns configuration. A run is fully described by a :class:`RunConfig`
(``preset``, ``seed`` and the ``model``, ``train`` and ``data`` sections); later parts add
fields here rather than new config systems. Validation happens on load: unknown keys and
out-of-range values raise :class:`~retina_raf.errors.ConfigError` naming the key and the
allowed values.

The paper's conditions are presets (:mod:`retina_raf.presets`, next to the model); the
schema of experiment files lives with the sweeps (:mod:`retina_raf.sweep.experiment`).
"""

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from retina_raf.errors import ConfigError
from retina_raf.plan import ARCHS, RULE_NAMES, direct_plan, layer_plan
from retina_raf.presets import preset_model_fields


def spec(default, *, low=None, high=None, choices=None, doc: str = "", **kw):
    """A dataclass field with validation metadata (inclusive ``low``/``high`` or ``choices``)."""
    meta = {"low": low, "high": high, "choices": choices, "doc": doc}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


# --------------------------------------------------------------------------- sections
@dataclass
class RetinaConfig:
    """``model.retina``: the sizes and regularizers of the Lindsey retina/VVS CNN
    (docs/design.md#model)."""

    retina_channels: int = spec(32, low=1, high=4096, doc="channels of retina_1")
    n_bn: int = spec(32, low=1, high=4096, doc="retina output channels (feedforward bottleneck)")
    vvs_channels: int = spec(32, low=1, high=4096)
    vvs_layers: int = spec(3, low=1, high=16, doc="number of VVS conv layers (paper 3, Lindsey 2)")
    kernel_size: int = spec(9, low=1, high=31, doc="odd kernel size of every conv layer")
    fc_units: int = spec(1024, low=1, high=65536)
    dropout: float = spec(0.5, low=0.0, high=0.99)
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


@dataclass
class MLPConfig:
    """``model.mlp``: the fully connected network of Fig. 3a-d (docs/design.md#fig3-networks)."""

    hidden_units: int = spec(512, low=1, high=65536, doc="units of every hidden layer")
    hidden_layers: int = spec(4, low=1, high=64, doc="number of hidden layers")


@dataclass
class VGGConfig:
    """``model.vgg``: the VGG-like CNN of Table C1 (docs/design.md#fig3-networks)."""

    dropout: float = spec(0.4, low=0.0, high=0.99, doc="dropout of the classifier (Table C1)")


@dataclass
class ViTConfig:
    """``model.vit``: the vision transformer of appendix C (docs/design.md#fig3-networks)."""

    patch_size: int = spec(4, low=1, high=32, doc="side of the square patches")
    dim: int = spec(384, low=8, high=8192, doc="token (embedding) width")
    depth: int = spec(7, low=1, high=64, doc="number of transformer blocks")
    heads: int = spec(4, low=1, high=64, doc="attention heads (must divide dim)")
    mlp_dim: int = spec(768, low=1, high=65536, doc="hidden units of each block's MLP")
    dropout: float = spec(
        0.1, low=0.0, high=0.99, doc="dropout (appendix C: 'dropout for regularization', no rate)"
    )


@dataclass
class ModelConfig:
    """The network and each layer's learning rule: ``arch`` picks the network, whose own
    settings are its section (``retina``, ``mlp``, ``vgg``, ``vit``); the rest (input, classes,
    rules, ranks, dRAF, init) applies to every network."""

    arch: str = spec(
        "retina",
        choices=ARCHS,
        doc="network: retina (the Lindsey retina/VVS CNN), or mlp, vgg, vit (Fig. 3)",
    )
    in_channels: int = spec(1, low=1, high=3, doc="input channels (1: grayscale)")
    image_size: int = spec(32, low=8, high=512)
    num_classes: int = spec(10, low=2, high=1000)
    rule: str = spec(
        "bp", choices=RULE_NAMES, doc="learning rule of every layer not named in layer_rule"
    )
    layer_rule: dict = spec(
        {}, doc="layer name or glob pattern -> rule (bp, raf, raf_pca, raf_aligned, kp, fa, "
        "lowrank_fa)"
    )  # fmt: skip
    layer_rank: dict = spec({}, doc="layer name or glob pattern -> feedback rank (default: full)")
    constrain: str = spec(
        "all",
        doc="mlp/vgg/vit: the feedback layers that rank or rank_fraction constrain: all, a "
        "layer name (fc_2; a block name selects its layers: features.block_4) or a glob",
    )
    rank: int | None = spec(
        None,
        low=1,
        high=65536,
        doc="mlp/vgg/vit: feedback rank of the constrained layers, capped at each layer's "
        "output width (None: full rank)",
    )
    rank_fraction: float | None = spec(
        None,
        low=1e-6,
        high=1.0,
        doc="mlp/vgg/vit: feedback rank of each constrained layer as this fraction of its "
        "output width, at least 1 (Fig. 3e inset: 0.5, 0.25, 0.125)",
    )
    track_error_covariance: bool = spec(
        True, doc="feedback layers keep a moving average of their error covariance (diagnostics)"
    )
    direct_target: str | None = spec(
        None, doc="layer whose output receives direct feedback (dRAF); mlp: also all"
    )
    direct_source: str | None = spec(
        None, doc="source layer of the direct error (default: the retina's last VVS layer, the "
        "mlp's readout)"
    )  # fmt: skip
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
    retina: RetinaConfig = field(default_factory=RetinaConfig)
    mlp: MLPConfig = field(default_factory=MLPConfig)
    vgg: VGGConfig = field(default_factory=VGGConfig)
    vit: ViTConfig = field(default_factory=ViTConfig)


@dataclass
class TrainConfig:
    """The optimization recipe (paper appendix C) and the hardware settings."""

    epochs: int = spec(120, low=1, high=100000)
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
    amp: bool = spec(
        False,
        doc="bf16 autocast (CUDA, or a CPU: weights, optimizer state and the feedback layers' "
        "Gram matrices stay float32; with conv_impl auto a CPU then convolves directly, "
        "faster only on a CPU with AMX: docs/performance.md)",
    )
    channels_last: bool = spec(True, doc="channels_last memory format on CUDA")
    deterministic: bool = spec(True, doc="deterministic algorithms on the CPU")
    flush_denormal: bool = spec(
        True,
        doc="on a CPU, flush denormal floats (below 1.2e-38) to zero: as a run trains, tiny "
        "values appear whose arithmetic is several times slower (docs/performance.md)",
    )
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
    amsgrad: bool = spec(False, doc="adam: the AMSGrad variant (the paper's Fig. 3 recipes)")


@dataclass
class DataConfig:
    """Which images, and how they are presented."""

    path: str | None = spec(
        None,
        doc="data set name (cifar10-gray, cifar10: a file of the data root), npz or "
        "cifar-10-batches-py folder (None: embedded sample)",
    )
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
    rgb: bool = spec(
        False, doc="keep the three colour channels (Fig. 3 networks; model.in_channels: 3)"
    )
    dataset: str = spec(
        "cifar10",
        choices=("cifar10", "cifar100"),
        doc="cifar100: path is a folder with torchvision's cifar-100-python (fine labels)",
    )
    classes: int | None = spec(
        None,
        low=2,
        high=100,
        doc="keep only classes 0..d-1, in train and test (the offline Fig. 3c); "
        "model.num_classes follows",
    )


@dataclass
class RunConfig:
    """One training run: a preset, a seed, and every setting."""

    preset: str = spec("bp")
    seed: int = spec(0, low=0, high=2**31 - 1)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    data: DataConfig = field(default_factory=DataConfig)


SECTIONS = {"retina": RetinaConfig, "mlp": MLPConfig, "vgg": VGGConfig, "vit": ViTConfig}


def with_section_fields(arch: str, fields: dict) -> dict:
    """Keyword fields of :class:`ModelConfig` -> a model mapping, where the fields of the
    section of ``arch`` may come without it (``n_bn=4`` for the retina, ``depth=2`` for the
    vit: ``{"retina": {"n_bn": 4}}``)."""
    own = {f.name for f in dataclasses.fields(SECTIONS[arch])}
    out = {key: value for key, value in fields.items() if key not in own}
    section = {key: value for key, value in fields.items() if key in own}
    if section:
        out[arch] = merge(out.get(arch, {}), section)
    return out


# ------------------------------------------------------------- the flat model layout
# Run folders, checkpoints and results files written before the model config had a section per
# network keep its settings flat (model.n_bn, model.hidden_units, model.vit_dim,
# model.net_dropout): flat key -> (section, key). `stored_run_config` reads them; run ids
# keep hashing this spelling (retina_raf.runs.run_id), so that a run keeps its folder.
FLAT_MODEL_KEYS = {
    **{f.name: ("retina", f.name) for f in dataclasses.fields(RetinaConfig)},
    "hidden_units": ("mlp", "hidden_units"),
    "hidden_layers": ("mlp", "hidden_layers"),
    **{f"vit_{name}": ("vit", name) for name in ("patch_size", "dim", "depth", "heads", "mlp_dim")},
    "net_dropout": (None, "dropout"),  # the section of the run's arch (vgg or vit)
}


def sectioned_model(model: dict) -> dict:
    """A stored ``model`` mapping in the flat layout -> the layout of :class:`ModelConfig`
    (a mapping already in it comes back as it is)."""
    out = {k: dict(v) if k in SECTIONS and isinstance(v, dict) else v
           for k, v in model.items() if k not in FLAT_MODEL_KEYS}  # fmt: skip
    for key, (section, name) in FLAT_MODEL_KEYS.items():
        if key not in model:
            continue
        if section is None:  # null: the network's default
            if model[key] is None or model.get("arch", "retina") not in ("vgg", "vit"):
                continue
            section = model["arch"]
        out.setdefault(section, {})[name] = model[key]
    return out


def stored_run_config(data: dict) -> "RunConfig":
    """The :class:`RunConfig` of a mapping that a run folder, a checkpoint or a results file
    stored, in either layout (validated field by field, not cross-checked)."""
    if isinstance(data, dict) and isinstance(data.get("model"), dict):
        data = {**data, "model": sectioned_model(data["model"])}
    return from_dict(RunConfig, data)


_FLAT_SPELLING = {
    f"model.{section or arch}.{name}": f"model.{flat}"
    for flat, (section, name) in FLAT_MODEL_KEYS.items()
    for arch in (("vgg", "vit") if section is None else (section,))
}


def flat_model_key(key: str) -> str:
    """``model.retina.n_bn`` -> ``model.n_bn``: a dotted key in the flat layout's spelling."""
    return _FLAT_SPELLING.get(key, key)


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
        key = unknown[0]
        if cls is ModelConfig and key in FLAT_MODEL_KEYS:
            section, name = FLAT_MODEL_KEYS[key]
            moved = f"{prefix}{section or data.get('arch', 'vgg')}.{name}"
            raise ConfigError(f"unknown key '{prefix}{key}' (it is {moved})")
        raise ConfigError(f"unknown key '{prefix}{key}' (allowed: {', '.join(fields)})")
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
    """The config as YAML text. A model section keeps only its own network's settings: the
    other networks' sections hold their defaults, which reading it back restores."""
    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    model = data if isinstance(cfg, ModelConfig) else data.get("model")
    if isinstance(model, dict) and "arch" in model:
        for arch in SECTIONS:
            if arch != model["arch"]:
                model.pop(arch, None)
    return yaml.safe_dump(data, sort_keys=False)


def load_run_config(path: str | Path) -> "RunConfig":
    """Read and validate a ``config.yaml`` of a run (either layout, :func:`stored_run_config`)."""
    cfg = stored_run_config(load_yaml(path))
    check_run_config(cfg)
    return cfg


# --------------------------------------------------------------------------- overrides
def _field_paths(cls, prefix: str = "") -> list[str]:
    """Dotted paths of every setting of a config dataclass, sections included."""
    hints, paths = typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            paths += _field_paths(hints[f.name], f"{prefix}{f.name}.")
        else:
            paths.append(prefix + f.name)
    return paths


def parse_overrides(items: list[str] | tuple[str, ...]) -> dict:
    """``["train.epochs=3", "n_bn=4"]`` -> nested dict. Values are parsed as YAML scalars.

    A key without its sections (``epochs``, ``n_bn``) must name exactly one setting of
    :class:`RunConfig` (``train.epochs``, ``model.retina.n_bn``).
    """
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
        if len(parts) == 1 and key not in {f.name for f in dataclasses.fields(RunConfig)}:
            paths = _field_paths(RunConfig)
            owners = [path for path in paths if path.rsplit(".", 1)[-1] == key]
            if not owners:
                allowed = ", ".join(p for p in paths if "." in p)
                raise ConfigError(f"unknown key '{key}' (allowed: {allowed})")
            if len(owners) > 1:
                raise ConfigError(f"--set {key}: names several settings ({', '.join(owners)})")
            parts = owners[0].split(".")
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


def resolve_run_config(
    preset: str,
    seed: int = 0,
    overrides: dict | None = None,
    others: str = "raf",
    tables: dict | None = None,
) -> RunConfig:
    """Preset + seed + overrides (nested dict) -> a validated :class:`RunConfig`.

    ``tables``: model tables (``layer_rule``, ``layer_rank``) that replace the preset's
    before the overrides merge into them, e.g. those of an earlier run's ``config.yaml``,
    which lists every entry of its run."""
    model = {**preset_model_fields(preset, others), **(tables or {})}
    base = {"preset": preset, "seed": seed, "model": model}
    cfg = from_dict(RunConfig, merge(base, overrides or {}))
    check_run_config(cfg)
    return cfg


def check_run_config(cfg: RunConfig) -> None:
    """Cross-field checks: layer names, ranks within layer widths, odd kernels.

    With a class subset (``data.classes``) or CIFAR-100, ``model.num_classes`` left at its
    default of 10 is set to the number of classes the data have (so that a grid over
    ``data.classes`` needs no second axis); any other value must equal it. Every network's
    shapes and layer plan are checked by :func:`check_model`.
    """
    _match_data(cfg)
    m = cfg.model
    if m.arch != "retina":
        if cfg.train.retina_snapshots:
            raise ConfigError(f"train.retina_snapshots: the {m.arch} has no retina")
        check_model(m)
        return
    for key in ("rank", "rank_fraction"):
        if getattr(m, key) is not None:
            raise ConfigError(
                f"model.{key}: for the Fig. 3 networks (model.arch: mlp, vgg, vit); the "
                "retina's feedback ranks are model.layer_rank"
            )
    r = m.retina
    if r.kernel_size % 2 == 0:
        raise ConfigError(f"model.retina.kernel_size: {r.kernel_size} must be odd (same padding)")
    if "bottleneck" in (cfg.preset or "") and r.n_bn > r.retina_channels:
        raise ConfigError(
            f"model.retina.n_bn: a bottleneck of {r.n_bn} channels is wider than the retina's "
            f"{r.retina_channels} (allowed: 1 to {r.retina_channels})"
        )
    check_model(m)


def _match_data(cfg: RunConfig) -> None:
    """model.num_classes and model.in_channels against the data (see check_run_config)."""
    d, m = cfg.data, cfg.model
    n_classes = d.classes or (100 if d.dataset == "cifar100" else 10)
    if d.classes is not None and d.dataset == "cifar10" and d.classes > 10:
        raise ConfigError(f"data.classes: {d.classes} is out of range (CIFAR-10 has 10 classes)")
    subset = d.classes is not None or d.dataset != "cifar10"
    if subset and m.num_classes != n_classes:
        if m.num_classes != 10:
            raise ConfigError(
                f"model.num_classes: {m.num_classes}, but the data have {n_classes} classes "
                "(data.classes, data.dataset); leave it out"
            )
        m.num_classes = n_classes
    if (d.rgb or m.arch != "retina") and m.in_channels != (3 if d.rgb else 1):
        raise ConfigError(
            f"model.in_channels: {m.in_channels}, but the images have {3 if d.rgb else 1} "
            f"channel(s) (data.rgb: {str(d.rgb).lower()})"
        )


def check_model(m: ModelConfig) -> None:
    """Validate a ModelConfig's shapes (the Fig. 3 networks') and its layer plan: layer names,
    rules, ranks, dRAF (:mod:`retina_raf.plan`)."""
    if m.arch == "vit":
        if m.image_size % m.vit.patch_size:
            raise ConfigError(
                f"model.vit.patch_size: {m.vit.patch_size} must divide model.image_size "
                f"({m.image_size})"
            )
        if m.vit.dim % m.vit.heads:
            raise ConfigError(
                f"model.vit.heads: {m.vit.heads} must divide model.vit.dim ({m.vit.dim})"
            )
    if m.arch == "vgg" and m.image_size % 8:
        raise ConfigError(f"model.image_size: {m.image_size} must be a multiple of 8 (vgg)")
    layer_plan(m)
    direct_plan(m)


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
