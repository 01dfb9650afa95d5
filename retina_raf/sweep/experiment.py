"""Experiment files (docs/cli.md#sweeps): their schema, loading, checking and expansion.

An experiment file (schema: :class:`ExperimentConfig`, defined and validated here) is a grid of
presets x ranks x grid overrides x seeds, or several such grids under one set of seeds
(``conditions``: e.g. backprop alone next to RAF x layer x rank, the Fig. 3 panels).
:func:`load_experiment` reads and checks it, :func:`update_experiment` applies command-line
changes, and :func:`expand` turns it into :class:`Run`s with stable, readable ids (those of
:func:`retina_raf.runs.run_id`). Nothing here trains or touches a run folder.
"""

from __future__ import annotations

import dataclasses
import json
import re
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from retina_raf.config import (
    RunConfig,
    flatten_dict,
    from_dict,
    load_yaml,
    merge,
    parse_overrides,
    resolve_run_config,
    spec,
    to_dict,
)
from retina_raf.errors import ConfigError
from retina_raf.plan import layer_plan
from retina_raf.presets import preset_model_fields, preset_with_rank
from retina_raf.runs import run_id


# ------------------------------------------------------------------- experiment files
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
    presets: list = spec([], doc="preset names (docs/design.md#model), at least one")
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
    data: str | None = spec(
        None,
        doc="image data set of every run: a name (cifar10-gray, cifar10) in the data root, "
        "or a path (not part of run ids)",
    )
    out: str | None = spec(None, doc="output folder (default: runs/<name>)")
    slurm: SlurmConfig = field(default_factory=SlurmConfig)
    conditions: list = spec(
        [],
        doc="several grids in one experiment: a list of mappings with presets, ranks, grid "
        "and overrides, each a grid of its own under the experiment's seeds, overrides and "
        "grid (e.g. bp alone next to raf x layer x rank)",
    )


CONDITION_KEYS = ("presets", "ranks", "grid", "overrides")


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
    if not isinstance(exp.conditions, list):
        raise ConfigError(f"conditions: expected a list of mappings, got {exp.conditions!r}")
    if exp.presets or not exp.conditions:  # with conditions, each may name its own presets
        _check_axis("presets", exp.presets, str)
    _check_axis("seeds", exp.seeds, int, low=0, high=2**31 - 1)
    _check_axis("ranks", exp.ranks, int, low=1, high=65536, allow_none=True)
    _check_presets("presets", exp.presets, exp.unconstrained_rule)
    exp.overrides = normalize_overrides(exp.overrides, "overrides")
    exp.grid = _normalize_grid(exp.grid, flatten_dict(exp.overrides), {}, "grid")
    exp.conditions = [_normalize_condition(exp, i, cond) for i, cond in enumerate(exp.conditions)]
    for i, part in enumerate(experiment_parts(exp)):
        _check_runs(part, f"conditions[{i}]." if exp.conditions else "")
    slurm = exp.slurm
    if not all(isinstance(line, str) for line in slurm.setup):
        raise ConfigError("slurm.setup: expected a list of shell lines (strings)")


def _check_presets(key: str, presets: list, unconstrained_rule: str) -> None:
    for preset in presets:
        try:
            preset_model_fields(preset, unconstrained_rule)
        except ConfigError as exc:
            raise ConfigError(f"{key}: {exc}") from None


def _normalize_grid(grid: dict, fixed: dict, other_grid: dict, where: str) -> dict:
    """A grid with full dotted keys; a setting set in ``fixed`` or ``other_grid`` is an error."""
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: expected a mapping of settings to lists, got {grid!r}")
    out, names = {}, {}
    for key, values in grid.items():
        _check_axis(f"{where}.{key}", values, object)
        # A scalar placeholder gives the setting's full dotted name (epochs -> train.epochs).
        (dotted,) = flatten_dict(normalize_overrides({key: 0}, f"{where}.{key}"))
        if dotted in fixed:
            raise ConfigError(f"{where}.{key}: also set in overrides; set it in one place")
        if dotted in out:
            raise ConfigError(f"{where}.{key}: the same setting as {where}.{names[dotted]}")
        if dotted in other_grid:
            raise ConfigError(f"{where}.{key}: also an axis of the experiment's grid")
        out[dotted], names[dotted] = values, key
    return out


def _normalize_condition(exp: ExperimentConfig, index: int, cond) -> dict:
    """One entry of ``conditions``, validated, with full dotted grid keys."""
    where = f"conditions[{index}]"
    if not isinstance(cond, dict):
        raise ConfigError(f"{where}: expected a mapping (keys: {', '.join(CONDITION_KEYS)})")
    unknown = sorted(set(cond) - set(CONDITION_KEYS))
    if unknown:
        raise ConfigError(
            f"unknown key '{where}.{unknown[0]}' (allowed: {', '.join(CONDITION_KEYS)})"
        )
    out = {}
    if "presets" in cond:
        _check_axis(f"{where}.presets", cond["presets"], str)
        _check_presets(f"{where}.presets", cond["presets"], exp.unconstrained_rule)
        out["presets"] = list(cond["presets"])
    elif not exp.presets:
        raise ConfigError(f"{where}: names no presets, and the experiment has none to inherit")
    if "ranks" in cond:
        _check_axis(f"{where}.ranks", cond["ranks"], int, low=1, high=65536, allow_none=True)
        out["ranks"] = list(cond["ranks"])
    overrides = normalize_overrides(cond.get("overrides") or {}, f"{where}.overrides")
    for key in flatten_dict(overrides):
        if key in exp.grid:
            raise ConfigError(f"{where}.overrides.{key}: also a grid axis; set it in one place")
    if overrides:
        out["overrides"] = overrides
    fixed = flatten_dict(merge(exp.overrides, overrides))
    grid = _normalize_grid(cond.get("grid") or {}, fixed, exp.grid, f"{where}.grid")
    if grid:
        out["grid"] = grid
    return out


def experiment_parts(exp: ExperimentConfig) -> list[ExperimentConfig]:
    """The experiment as grids: itself, or one per entry of ``conditions``.

    A condition's presets and ranks replace the experiment's, its overrides are merged over
    the experiment's (the condition's win) and its grid axes are added to the experiment's.
    """
    if not exp.conditions:
        return [exp]
    return [
        dataclasses.replace(
            exp,
            presets=cond.get("presets", exp.presets),
            ranks=cond.get("ranks", exp.ranks),
            overrides=merge(exp.overrides, cond.get("overrides", {})),
            grid={**exp.grid, **cond.get("grid", {})},
            conditions=[],
        )
        for cond in exp.conditions
    ]


def experiment_grid_keys(exp: ExperimentConfig) -> list[str]:
    """Full dotted keys of every grid axis of the experiment and its conditions, in order."""
    return list(dict.fromkeys(key for part in experiment_parts(exp) for key in part.grid))


def _check_runs(part: ExperimentConfig, where_prefix: str) -> None:
    """Resolve every (preset, rank, grid point) of one grid: a bad setting fails here."""
    for point in grid_points(part.grid):
        where = where_prefix + ("grid" if point else "overrides")
        for preset in part.presets:
            for rank in part.ranks:
                _check_run(part, preset, rank, point, where, where_prefix)


def _check_run(part, preset: str, rank, point: dict, where: str, where_prefix: str) -> None:
    """One run resolves. A ``ranks:`` value sets vvs_1's RAF rank, so the preset must send RAF
    into the retina: that is said first, since a rank on a backprop layer fails to resolve."""
    cfg, error = None, None
    try:
        cfg = resolve_run_config(preset_with_rank(preset, rank), part.seeds[0],
                                 experiment_overrides(part, rank, point),
                                 part.unconstrained_rule)  # fmt: skip
    except ConfigError as exc:
        error = exc
    if rank is not None:
        rule = _retina_rule(cfg) if cfg else _retina_rule_without_rank(part, preset, point)
        if rule not in (None, "raf"):
            raise ConfigError(
                f"{where_prefix}ranks: preset {preset!r} sends {rule} into the retina; a "
                "feedback rank needs RAF there (use a raf-r<k> preset)"
            )
    if error is not None:
        raise ConfigError(f"{where}: {error}") from None


def _retina_rule(cfg) -> str:
    """The rule of vvs_1's feedback: what the retina receives."""
    return layer_plan(cfg.model)["vvs_1"][0]


def _retina_rule_without_rank(part: ExperimentConfig, preset: str, point: dict) -> str | None:
    """The preset's rule into the retina under the grid's settings (None: they do not resolve
    either, and the run's own error says why)."""
    try:
        cfg = resolve_run_config(preset, part.seeds[0], experiment_overrides(part, None, point),
                                 part.unconstrained_rule)  # fmt: skip
    except ConfigError:
        return None
    return _retina_rule(cfg)


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
    seeds: str | None = None,
) -> ExperimentConfig:
    """Command-line changes to an experiment, validated like the file.

    Args:
        data: the image data set of every run (``--data``; not part of run ids).
        sets: ``KEY=VALUE`` overrides of every run (``--set``; they change run ids).
        slurm_options: ``KEY=VALUE``: a :class:`SlurmConfig` field (``partition=gpu``,
            ``time_min=600``) or else any sbatch option (``mail-type=END``).
        seeds: ``--seeds``: ``N`` (seeds 0..N-1) or ``0,3,4``, in place of the file's
            seeds (a run's id does not depend on which other seeds are run).
    """
    exp = dataclasses.replace(exp)
    if data is not None:
        exp.data = data
    if seeds is not None:
        try:
            values = [int(v) for v in str(seeds).split(",") if v.strip()]
        except ValueError:
            raise ConfigError(f"--seeds expects N or a list like 0,3,4; got {seeds!r}") from None
        if len(values) == 1 and "," not in str(seeds):
            if values[0] < 1:
                raise ConfigError(
                    f"--seeds {values[0]}: a count N (seeds 0..N-1) must be >= 1;"
                    " for seed 0 alone give --seeds 0,"
                )
            values = list(range(values[0]))
        exp.seeds = values
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


def experiment_yaml(exp: ExperimentConfig) -> str:
    """The experiment as YAML (every field, normalized): what ``experiment.yaml`` holds."""
    return yaml.safe_dump(asdict(exp), sort_keys=False)


# ------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class Run:
    """One training run of an experiment.

    Attributes:
        run_id: folder name, ``<preset>[-rank<r>][-<grid labels>]-s<seed>[-<hash>]``; the
            hash covers every setting that differs from the preset's defaults.
        preset, seed, rank: the run's place on the axes (rank None: the preset's own).
        point: the run's grid values, full dotted key -> value.
        overrides: nested overrides for :func:`retina_raf.config.resolve_run_config`.
        others: the unconstrained rule (of the layers the preset leaves unconstrained).
    """

    run_id: str
    preset: str
    seed: int
    rank: int | None
    point: dict = field(default_factory=dict)
    overrides: dict = field(default_factory=dict)
    others: str = "raf"

    def config(self) -> RunConfig:
        """The run's complete, validated config."""
        return resolve_run_config(self.preset, self.seed, self.overrides, self.others)


def expand(exp: ExperimentConfig) -> list[Run]:
    """All runs of an experiment, seed-major (every condition's seed 0 comes first, so a
    sweep cut short still covers every condition). Raises ConfigError for two grid points
    that are the same configuration. An experiment with ``conditions`` is the union of
    their grids (:func:`experiment_parts`)."""
    runs: list[Run] = []
    seen: dict[str, Run] = {}
    parts = experiment_parts(exp)
    for seed, part in ((seed, part) for seed in exp.seeds for part in parts):
        for preset in part.presets:
            for rank in part.ranks:
                for point in grid_points(part.grid):
                    overrides = experiment_overrides(part, rank, point)
                    # ranks: over raf-r<k> makes raf-r<rank> runs, without a rank label
                    name = preset_with_rank(preset, rank)
                    relabeled = name.startswith("raf-r") and rank is not None
                    cfg = resolve_run_config(name, seed, overrides, exp.unconstrained_rule)
                    run = Run(
                        run_id=run_id(cfg, None if relabeled else rank, point),
                        preset=name,
                        seed=seed,
                        rank=rank,
                        point=dict(point),
                        overrides=overrides,
                        others=exp.unconstrained_rule,
                    )
                    if run.run_id in seen:
                        first = seen[run.run_id]
                        raise ConfigError(
                            f"two entries of the experiment give the same run {run.run_id!r} "
                            f"(preset {first.preset}, rank {first.rank}, grid {first.point} and "
                            f"preset {preset}, rank {rank}, grid {run.point})"
                        )
                    seen[run.run_id] = run
                    runs.append(run)
    return runs


def select_runs(runs: list[Run], conditions: Sequence[str] = ()) -> list[Run]:
    """The runs of the given conditions (their ``preset``, as ``sweep --dry-run`` names them,
    e.g. ``raf-r4`` for rank 4 over ``raf-r2``), in the experiment's order; all of them when
    ``conditions`` is empty. Raises ConfigError for a condition the experiment has no run of,
    naming those it has."""
    if not conditions:
        return list(runs)
    known = list(dict.fromkeys(run.preset for run in runs))
    unknown = [name for name in conditions if name not in known]
    if unknown:
        raise ConfigError(
            f"--only: no run of the experiment is {', '.join(map(repr, unknown))}"
            f" (its conditions: {', '.join(known)})"
        )
    return [run for run in runs if run.preset in conditions]
