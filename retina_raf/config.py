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
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

import yaml

from retina_raf.errors import ConfigError
from retina_raf.presets import preset_model_fields

# bp: backprop; raf: RAF with Oja (paper eq. 11); raf_pca: RAF with the PCA rule for P;
# raf_aligned: RAF at its fixed point (P by PCA, Q = W^T P^T); kp: Kolen-Pollack;
# fa: feedback alignment; lowrank_fa: Q trained, P fixed random (docs/design.md#learning-rules).
RULES = ("bp", "raf", "raf_pca", "raf_aligned", "kp", "fa", "lowrank_fa")
# retina: the Lindsey retina/VVS CNN (docs/design.md#model); mlp, vgg, vit: the networks of the
# paper's Fig. 3 (docs/design.md#fig3-networks, retina_raf.nets)
ARCHS = ("retina", "mlp", "vgg", "vit")


def spec(default, *, low=None, high=None, choices=None, doc: str = "", **kw):
    """A dataclass field with validation metadata (inclusive ``low``/``high`` or ``choices``)."""
    meta = {"low": low, "high": high, "choices": choices, "doc": doc}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: type(default)(default), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


# --------------------------------------------------------------------------- sections
@dataclass
class ModelConfig:
    """The network: the Lindsey retina/VVS CNN (docs/design.md#model) or, with ``arch``, a network
    of the paper's Fig. 3 (docs/design.md#fig3-networks); and each layer's learning rule."""

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
    layer_rule: dict = spec(
        {}, doc="layer name -> rule (bp, raf, raf_pca, raf_aligned, kp, fa, lowrank_fa)"
    )
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
    # -- the networks of the paper's Fig. 3 (retina_raf.nets); the retina ignores these --
    arch: str = spec(
        "retina",
        choices=ARCHS,
        doc="network: retina (the fields above), or mlp, vgg, vit (Fig. 3, the fields below; "
        "rule, layer_rule, layer_rank, num_classes, in_channels and direct_* apply to them too, "
        "layer_rule/layer_rank keyed by layer name or glob pattern)",
    )
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
    hidden_units: int = spec(512, low=1, high=65536, doc="mlp: units of every hidden layer")
    hidden_layers: int = spec(4, low=1, high=64, doc="mlp: number of hidden layers")
    net_dropout: float | None = spec(
        None,
        low=0.0,
        high=0.99,
        doc="vgg/vit: dropout (None: the paper's, vgg 0.4 (Table C1), vit 0.1); mlp: none",
    )
    vit_patch_size: int = spec(4, low=1, high=32, doc="vit: side of the square patches")
    vit_dim: int = spec(384, low=8, high=8192, doc="vit: token (embedding) width")
    vit_depth: int = spec(7, low=1, high=64, doc="vit: number of transformer blocks")
    vit_heads: int = spec(4, low=1, high=64, doc="vit: attention heads (must divide vit_dim)")
    vit_mlp_dim: int = spec(768, low=1, high=65536, doc="vit: hidden units of each block's MLP")


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
        "Gram matrices stay float32; with conv_impl auto a CPU then convolves directly)",
    )
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
    ``data.classes`` needs no second axis); any other value must equal it. The Fig. 3
    networks (``model.arch`` mlp, vgg, vit) are checked by
    :func:`check_net_config`.
    """
    _match_data(cfg)
    m = cfg.model
    if m.arch != "retina":
        check_net_config(cfg)  # the Fig. 3 networks
        return
    for key in ("rank", "rank_fraction"):
        if getattr(m, key) is not None:
            raise ConfigError(
                f"model.{key}: for the Fig. 3 networks (model.arch: mlp, vgg, vit); the "
                "retina's feedback ranks are model.layer_rank"
            )
    if m.kernel_size % 2 == 0:
        raise ConfigError(f"model.kernel_size: {m.kernel_size} must be odd (same padding)")
    if "bottleneck" in (cfg.preset or "") and m.n_bn > m.retina_channels:
        raise ConfigError(
            f"model.n_bn: a bottleneck of {m.n_bn} channels is wider than the retina's "
            f"{m.retina_channels} (allowed: 1 to {m.retina_channels})"
        )
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


def layer_out_widths(m: ModelConfig) -> dict[str, int]:
    """Layer name -> output channels/features, in forward order."""
    widths = {"retina_1": m.retina_channels, "retina_2": m.n_bn}
    widths.update({f"vvs_{i}": m.vvs_channels for i in range(1, m.vvs_layers + 1)})
    widths.update({"fc_1": m.fc_units, "fc_2": m.num_classes})
    return widths


# ------------------------------------------------------------------- Fig. 3 networks
# The layout of the networks of the paper's Fig. 3 (retina_raf.nets builds them from these)
# that their configs are checked against: layer names are module paths, rules and ranks
# are given per layer (docs/design.md#fig3-networks).
VGG_CHANNELS = (64, 128, 256, 512)  # Table C1: channels of blocks 1..4
VGG_HIDDEN = 256  # Table C1: the classifier's hidden layer
# the layer of each network that reads the image: it sends nothing anyone uses, so it stays
# plain and takes no rule or rank
INPUT_LAYERS = {"mlp": "fc_1", "vgg": "features.block_1.conv_1", "vit": "patch_embed"}


def selects(name: str, pattern: str) -> bool:
    """Whether ``pattern`` names layer ``name``: exactly, as a module that contains it
    (``features.block_4`` selects ``features.block_4.conv_1``), or as a glob (as convert)."""
    return name == pattern or name.startswith(pattern + ".") or fnmatchcase(name, pattern)


def feedback_layer_widths(m: ModelConfig) -> dict[str, int]:
    """Name -> output width (the dimension of the error its feedback carries) of every layer
    that takes a rule, in forward order; the input layer is not among them."""
    if m.arch == "mlp":
        hidden = {f"fc_{i}": m.hidden_units for i in range(2, m.hidden_layers + 1)}
        return {**hidden, f"fc_{m.hidden_layers + 1}": m.num_classes}
    if m.arch == "vgg":
        widths = {}
        for b, channels in enumerate(VGG_CHANNELS, start=1):
            for i in (1, 2):
                widths[f"features.block_{b}.conv_{i}"] = channels
        del widths[INPUT_LAYERS["vgg"]]
        return {**widths, "fc_1": VGG_HIDDEN, "fc_2": m.num_classes}
    if m.arch == "vit":
        widths = {}
        for b in range(1, m.vit_depth + 1):
            for proj in ("query", "key", "value", "out"):
                widths[f"block_{b}.attn.{proj}"] = m.vit_dim
            widths[f"block_{b}.mlp.fc_1"] = m.vit_mlp_dim
            widths[f"block_{b}.mlp.fc_2"] = m.vit_dim
        return {**widths, "head": m.num_classes}
    raise ConfigError(f"model.arch: {m.arch!r} is not a Fig. 3 network (mlp, vgg, vit)")


def _first_match(name: str, table: dict):
    for pattern, value in table.items():
        if selects(name, pattern):
            return pattern, value
    return None, None


def _names_hint(names: list[str]) -> str:
    shown = ", ".join(names[:8])
    return shown + (f", ... ({len(names)} layers)" if len(names) > 8 else "")


def layer_plan(m: ModelConfig) -> dict[str, tuple[str, int | None]]:
    """Layer name -> (rule, feedback rank or None for full) of every layer that takes a rule.

    Raises:
        ConfigError: a pattern that selects no layer, a rank on a backprop layer, a rank
            above a layer's width in ``layer_rank``, the input layer named.
    """
    widths = feedback_layer_widths(m)
    names = list(widths)
    input_layer = INPUT_LAYERS[m.arch]
    for pattern, rule in m.layer_rule.items():
        if rule not in RULES:
            raise ConfigError(
                f"model.layer_rule.{pattern}: {rule!r} is not allowed (allowed: {', '.join(RULES)})"
            )
    for table in ("layer_rule", "layer_rank"):
        for pattern in getattr(m, table):
            if selects(input_layer, pattern) and not any(selects(n, pattern) for n in names):
                raise ConfigError(
                    f"model.{table}.{pattern}: {input_layer} reads the image, so nothing uses "
                    "its feedback; it takes no rule or rank"
                )
            if not any(selects(n, pattern) for n in names):
                raise ConfigError(
                    f"model.{table}: {pattern!r} selects no layer of the {m.arch} "
                    f"(layers: {_names_hint(names)})"
                )
    if m.constrain != "all" and not any(selects(n, m.constrain) for n in names):
        raise ConfigError(
            f"model.constrain: {m.constrain!r} selects no layer of the {m.arch} "
            f"(all, or layers: {_names_hint(names)})"
        )
    if m.rank is not None and m.rank_fraction is not None:
        raise ConfigError("model.rank and model.rank_fraction: give one of them")
    plan, constrained = {}, []
    for name, width in widths.items():
        _, rule = _first_match(name, m.layer_rule)
        rule = rule if rule is not None else m.rule
        pattern, rank = _first_match(name, m.layer_rank)
        if pattern is not None:
            if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= width:
                raise ConfigError(
                    f"model.layer_rank.{pattern}: {rank!r} is out of range for {name} "
                    f"(allowed: 1 to {width}, the layer's output width)"
                )
            if rule == "bp":
                raise ConfigError(
                    f"model.layer_rank.{pattern}: a feedback rank needs a feedback rule, but "
                    f"{name} uses backprop (set model.rule or model.layer_rule)"
                )
        elif m.rank is not None or m.rank_fraction is not None:
            chosen = m.constrain == "all" and rule != "bp" or selects(name, m.constrain)
            if chosen:
                if rule == "bp":
                    raise ConfigError(
                        f"model.rank: a feedback rank needs a feedback rule, but {name} "
                        "uses backprop (set model.rule, or narrow model.constrain)"
                    )
                if m.rank is not None:
                    rank = min(m.rank, width)
                else:
                    rank = max(1, round(width * m.rank_fraction))
                constrained.append(name)
        plan[name] = (rule, rank)
    if (m.rank is not None or m.rank_fraction is not None) and not constrained:
        raise ConfigError(
            "model.rank: no layer to constrain (every layer model.constrain selects uses "
            "backprop; set model.rule: raf)"
        )
    return plan


def direct_plan(m: ModelConfig) -> tuple[str, list[str]] | None:
    """(source, targets) of the dRAF pathways, or None; validates the direct_* fields."""
    used = [key for key in ("direct_target", "direct_source", "direct_rank")
            if getattr(m, key) is not None]  # fmt: skip
    if m.direct_target is None:
        if used:
            raise ConfigError(f"model.{used[0]}: needs model.direct_target (all, or a layer)")
        return None
    if m.arch != "mlp":
        raise ConfigError(f"model.direct_target: dRAF is built for the mlp, not the {m.arch}")
    names = [f"fc_{i}" for i in range(1, m.hidden_layers + 2)]
    source = m.direct_source or names[-1]
    if source not in names:
        raise ConfigError(
            f"model.direct_source: unknown layer {source!r} (allowed: {', '.join(names)})"
        )
    before = names[: names.index(source)]
    if m.direct_target == "all":
        targets = before
    elif m.direct_target in before:
        targets = [m.direct_target]
    else:
        raise ConfigError(
            f"model.direct_target: {m.direct_target!r} must be all or a layer before "
            f"{source} ({', '.join(before) or 'none'})"
        )
    if not targets:
        raise ConfigError(f"model.direct_source: {source} has no hidden layer before it")
    width = m.num_classes if source == names[-1] else m.hidden_units
    if m.direct_rank is not None and m.direct_rank > width:
        raise ConfigError(
            f"model.direct_rank: {m.direct_rank} is out of range (allowed: 1 to {width}, "
            f"the width of {source})"
        )
    return source, targets


def check_model(m: ModelConfig) -> None:
    """Validate the Fig. 3 fields of a ModelConfig (shapes, layer names, ranks, dRAF)."""
    if m.arch == "vit":
        if m.image_size % m.vit_patch_size:
            raise ConfigError(
                f"model.vit_patch_size: {m.vit_patch_size} must divide model.image_size "
                f"({m.image_size})"
            )
        if m.vit_dim % m.vit_heads:
            raise ConfigError(
                f"model.vit_heads: {m.vit_heads} must divide model.vit_dim ({m.vit_dim})"
            )
    if m.arch == "vgg" and m.image_size % 8:
        raise ConfigError(f"model.image_size: {m.image_size} must be a multiple of 8 (vgg)")
    layer_plan(m)
    direct_plan(m)


def check_net_config(cfg: RunConfig) -> None:
    """:func:`check_model` of a run config (called by ``config.check_run_config``)."""
    check_model(cfg.model)
    if cfg.train.retina_snapshots:
        raise ConfigError(f"train.retina_snapshots: the {cfg.model.arch} has no retina")


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
