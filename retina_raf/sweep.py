"""Experiment grids and the executors that train them (docs/design.md#sweeps).

An experiment file (schema: :class:`ExperimentConfig`, defined and validated here) is a grid of
presets x ranks x grid overrides x seeds, or several such grids under one set of seeds
(``conditions``: e.g. backprop alone next to RAF x layer x rank, the Fig. 3 panels).
:func:`expand` turns it into :class:`Run`s with
stable, readable ids; :func:`run_sweep` trains those that are not finished yet with an
executor, so one file runs unchanged on a laptop, a multi-GPU box and a SLURM cluster:

- ``local``: sequentially in this process on the CPU, or one worker process per visible GPU;
- ``slurm``: one SLURM job per run, submitted as job arrays through submitit.

Everything lives in the sweep's output folder::

    <out>/<run_id>/             a run folder (retina_raf.runs; DONE when finished)
    <out>/.locks/<run_id>.lock  held (fcntl.flock) by the process that trains the run
    <out>/sweep.log             journal: one line per start/resume/done/failed/busy event
    <out>/logs/<run_id>.err     traceback of a run's last failure
    <out>/logs/worker-<i>.log   output of the local worker processes
    <out>/slurm/<job_id>/       submitit's files and the SLURM logs of each job

Run ids, the definition of finished, the lock and the folder layout are those of
:mod:`retina_raf.runs`, so ``retina-raf train`` with a run's config works on the same folder.
Concurrency: only the process holding a run's lock trains it, and the DONE check happens
under the lock, so two sweeps (or two jobs, or a sweep and ``retina-raf train``) never train
one run twice nor write one run folder at once. The OS releases the lock of a process that
dies (kill -9, node failure, a SLURM time limit), and the run then resumes from its
checkpoint. SIGTERM stops a run at a batch boundary with a checkpoint (retina_raf.train), and
a sweep told to stop stops. Combining finished runs into a results dataset is analysis:
``analysis.results.collect_experiment`` (``retina-raf sweep --collect``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import traceback
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import yaml

from retina_raf import runs
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
from retina_raf.errors import EXIT_INTERRUPTED, ConfigError, DataError, RunError, RunInterrupted
from retina_raf.io import write_text
from retina_raf.presets import preset_model_fields, preset_with_rank
from retina_raf.runs import DONE_FILE, identity_settings, run_id  # noqa: F401 (re-exported)

STATES = ("done", "running", "queued", "failed", "interrupted", "pending")


# ------------------------------------------------------------------- experiment files
# An experiment file (docs/cli.md#sweeps) is a grid: presets x ranks x seeds x grid overrides.
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
                overrides = experiment_overrides(part, rank, point)
                try:
                    cfg = resolve_run_config(preset_with_rank(preset, rank), part.seeds[0],
                                             overrides, part.unconstrained_rule)  # fmt: skip
                except ConfigError as exc:
                    raise ConfigError(f"{where}: {exc}") from None
                retina_rule = cfg.model.layer_rule.get("vvs_1", cfg.model.rule)
                if rank is not None and retina_rule != "raf":
                    raise ConfigError(
                        f"{where_prefix}ranks: preset {preset!r} sends {retina_rule} into the "
                        "retina; a feedback rank needs RAF there (use a raf-r<k> preset)"
                    )


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


# ------------------------------------------------------------------ run folder state
def run_dir(out: Path, run: Run) -> Path:
    """The run's folder, ``<out>/<run_id>``."""
    return Path(out) / run.run_id


def error_file(out: Path, run: Run) -> Path:
    """Where the traceback of the run's last failure is kept."""
    return Path(out) / "logs" / f"{run.run_id}.err"


def is_done(out: Path, run: Run) -> bool:
    """Whether the run is finished with at least the epochs its config asks for."""
    return runs.is_finished(run_dir(out, run), run.config().train.epochs)


def run_state(out: Path, run: Run, queued: dict | None = None) -> str:
    """One of :data:`STATES`: ``done`` (finished, :func:`is_done`), ``running`` (a process
    holds its lock), ``queued`` (its SLURM job, in ``queued``, is waiting), ``failed`` (the
    last attempt raised), ``interrupted`` (has a checkpoint to resume from) or ``pending``."""
    folder = run_dir(out, run)
    if is_done(out, run):
        return "done"
    if lock_holder(out, run) is not None:
        return "running"
    if queued and run.run_id in queued:
        return "queued"
    if error_file(out, run).exists():
        return "failed"
    if (folder / runs.CHECKPOINT_FILE).exists():
        return "interrupted"
    return "pending"


@contextlib.contextmanager
def run_lock(out: Path, run: Run) -> Iterator[bool]:
    """:func:`retina_raf.runs.run_lock` of the run's folder: yields whether this process
    has the lock (``<out>/.locks/<run_id>.lock``)."""
    with runs.run_lock(run_dir(out, run)) as mine:
        yield mine


def lock_holder(out: Path, run: Run) -> str | None:
    """``"host pid=... [job=...]"`` of the process training the run, or None if nobody is."""
    return runs.lock_holder(run_dir(out, run))


def journal(out: Path, event: str, run: Run, detail: str = "") -> None:
    """Append one line to ``<out>/sweep.log`` (one ``write`` with O_APPEND: lines of
    concurrent processes do not interleave)."""
    stamp = datetime.now(timezone.utc).isoformat(timespec="seconds")
    line = f"{stamp} {runs.whoami()} {event} {run.run_id}" + (f" {detail}" if detail else "")
    path = Path(out) / "sweep.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line.replace("\n", " ") + "\n").encode())
    finally:
        os.close(fd)


# ----------------------------------------------------------------------- one run
def train_run(run: Run, out: Path) -> str:
    """Train one run unless it is finished or another process is training it.

    Returns ``"trained"``, ``"done"`` (finished before) or ``"busy"`` (locked elsewhere).
    A failure writes ``<out>/logs/<run_id>.err`` and re-raises; an interrupted run (Ctrl-C,
    a signal, a time limit) keeps its checkpoint and resumes next time.
    """
    from retina_raf.train import train

    out = Path(out)
    with run_lock(out, run) as mine:
        if not mine:
            journal(out, "busy", run, f"held by {lock_holder(out, run)}")
            return "busy"
        if is_done(out, run):
            return "done"
        resume = (run_dir(out, run) / runs.CHECKPOINT_FILE).exists()
        journal(out, "resume" if resume else "start", run)
        try:
            train(run.config(), out, name=run.run_id, locked=True)
        except Exception:
            write_text(traceback.format_exc(), error_file(out, run))
            journal(out, "failed", run, f"see {error_file(out, run)}")
            raise
        except BaseException as exc:  # RunInterrupted (SIGTERM), KeyboardInterrupt, SystemExit
            journal(out, "interrupted", run, type(exc).__name__)
            raise
        error_file(out, run).unlink(missing_ok=True)
        journal(out, "done", run)
        return "trained"


# ------------------------------------------------------------------------- report
@dataclass
class SweepReport:
    """What a sweep left behind: each run's state, and where to look for failures."""

    out: Path
    states: dict[str, str]  # run_id -> state
    logs: dict[str, list[str]] = field(default_factory=dict)  # run_id -> log files
    reasons: dict[str, str] = field(default_factory=dict)  # run_id -> one-line reason

    @property
    def failed(self) -> list[str]:
        busy = ("done", "running", "queued")
        return [rid for rid, state in self.states.items() if state not in busy]

    def summary(self) -> str:
        counts = {s: list(self.states.values()).count(s) for s in STATES}
        parts = [f"{n} {s}" for s, n in counts.items() if n]
        lines = [
            f"{len(self.states)} run{'s' if len(self.states) != 1 else ''} in {self.out}: "
            + ", ".join(parts)
        ]
        for rid in self.failed:
            reason = self.reasons.get(rid, self.states[rid])
            logs = ", ".join(self.logs.get(rid, [])) or "no log"
            lines.append(f"  FAILED {rid}: {reason} (logs: {logs})")
        for rid, state in self.states.items():
            if state == "running":
                lines.append(f"  running in another process: {rid}")
            elif state == "queued":
                lines.append(f"  queued as a SLURM job of an earlier sweep: {rid}")
        return "\n".join(lines)


def report(out: Path, runs: list[Run], extra_logs: dict | None = None) -> SweepReport:
    """The state of every run, with the error file and any job logs of unfinished ones."""
    queued = queued_jobs(out, runs)
    rep = SweepReport(Path(out), {run.run_id: run_state(out, run, queued) for run in runs})
    for run in runs:
        logs = list((extra_logs or {}).get(run.run_id, []))
        err = error_file(out, run)
        if err.exists():
            logs.insert(0, str(err))
            lines = [line for line in err.read_text().splitlines() if line.strip()]
            if lines:
                rep.reasons[run.run_id] = lines[-1].strip()
        rep.logs[run.run_id] = logs
    return rep


# ------------------------------------------------------------------ local executor
def visible_gpus() -> list[str]:
    """Ids of the GPUs this process may use (respecting CUDA_VISIBLE_DEVICES)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return []
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = [x.strip() for x in listed.split(",") if x.strip()] if listed else []
    return ids[:count] if len(ids) >= count else [str(i) for i in range(count)]


def run_local(runs: list[Run], out: Path, workers: int | None = None) -> SweepReport:
    """Train ``runs``: one after the other in this process on the CPU or a single GPU, or
    with one worker process per visible GPU (``workers`` overrides the number of processes;
    several workers share the GPUs round-robin).

    Workers take runs in order, skipping any run another process holds, so they share the
    work without a queue. A failed run is recorded and the sweep goes on.
    """
    out = Path(out)
    gpus = [] if all(run.config().train.device == "cpu" for run in runs) else visible_gpus()
    n_workers = workers or max(1, len(gpus))
    if n_workers == 1:
        for i, run in enumerate(runs, 1):
            print(f"[{i}/{len(runs)}] {run.run_id}", flush=True)
            try:
                train_run(run, out)
            except Exception as exc:
                print(f"[{i}/{len(runs)}] {run.run_id} FAILED: {exc}", flush=True)
        return report(out, runs)

    log_dir = out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    payload = json.dumps([asdict(run) for run in runs])
    procs = []
    for i in range(n_workers):
        env = dict(os.environ)
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = gpus[i % len(gpus)]
        log = open(log_dir / f"worker-{i}.log", "a")  # closed below
        proc = subprocess.Popen(
            [sys.executable, "-m", "retina_raf.sweep", str(out)],
            stdin=subprocess.PIPE,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            text=True,
        )
        proc.stdin.write(payload)
        proc.stdin.close()
        procs.append((proc, log))
    where = f"GPUs {', '.join(gpus)}" if gpus else "the CPU"
    print(f"{n_workers} workers on {where}; logs in {log_dir}", flush=True)
    try:
        _progress(out, runs, lambda: all(p.poll() is not None for p, _ in procs))
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.terminate()
            proc.wait()
            log.close()
    logs = {
        run.run_id: [str(log_dir / f"worker-{i}.log") for i in range(n_workers)] for run in runs
    }
    return report(out, runs, logs)


def _worker_main(out: str) -> None:
    """A local worker: train the runs (JSON on stdin) that nobody else has taken."""
    todo = [Run(**item) for item in json.loads(sys.stdin.read())]
    for run in todo:
        try:
            train_run(run, Path(out))
        except RunInterrupted as exc:  # the sweep is being stopped: so is this worker
            print(f"worker stopped: {exc}", flush=True)
            sys.exit(EXIT_INTERRUPTED)
        except Exception:
            traceback.print_exc()


def _progress(out: Path, runs: list[Run], finished, poll_s: float = 2.0) -> None:
    """A progress bar of finished runs until ``finished()`` says the executor is done."""
    from tqdm import tqdm

    def n_done() -> int:
        return sum(is_done(out, run) for run in runs)

    # disable=None: no bar when the output is not a terminal (logs, CI)
    with tqdm(total=len(runs), desc="runs", unit="run", initial=n_done(), disable=None) as bar:
        while True:
            over = finished()
            bar.n = n_done()
            bar.refresh()
            if over:
                return
            time.sleep(poll_s)


# ------------------------------------------------------------------ slurm executor
class RunJob:
    """The callable one SLURM job runs (pickled by submitit). It has a ``checkpoint``
    method, so submitit requeues the job when it nears its time limit (SIGUSR2); training
    first stops at the next batch boundary and writes its checkpoint (retina_raf.train), and
    the requeued job resumes from it."""

    def __init__(self, run: Run, out: str):
        self.run = run
        self.out = out

    def __call__(self) -> str:
        return train_run(self.run, Path(self.out))

    def checkpoint(self, *args, **kwargs):
        import submitit

        return submitit.helpers.DelayedSubmission(self, *args, **kwargs)


def submitit_parameters(name: str, slurm: SlurmConfig) -> dict:
    """``AutoExecutor.update_parameters`` arguments for one run per job."""
    params = {
        "name": f"retina-raf-{name}",
        "timeout_min": slurm.time_min,
        "nodes": 1,
        "tasks_per_node": 1,
        "cpus_per_task": slurm.cpus_per_task,
        "slurm_array_parallelism": slurm.array_parallelism,
    }
    if slurm.gpus_per_job:  # no --gpus-per-node=0: clusters without GPUs may reject it
        params["gpus_per_node"] = slurm.gpus_per_job
    if slurm.mem_gb is not None:
        params["mem_gb"] = slurm.mem_gb
    for key in ("partition", "account", "qos", "constraint"):
        if getattr(slurm, key) is not None:
            params[f"slurm_{key}"] = getattr(slurm, key)
    if slurm.setup:
        params["slurm_setup"] = list(slurm.setup)
    if slurm.additional:
        params["slurm_additional_parameters"] = {
            k.replace("-", "_"): v for k, v in slurm.additional.items()
        }
    return params


def run_slurm(
    runs: list[Run],
    out: Path,
    name: str,
    slurm: SlurmConfig,
    cluster: str = "slurm",
    wait: bool = True,
    poll_s: float = 5.0,
) -> SweepReport | None:
    """Submit one job per run as job arrays through submitit; with ``wait``, wait for the
    jobs to end and report which runs failed and where their logs are.

    ``cluster="local"`` runs the same jobs with submitit's local executor (no SLURM).
    Job states come from the run folders and ``squeue``, not ``sacct``: many small clusters
    run without the accounting database that ``sacct`` needs.
    """
    try:
        import submitit
    except ImportError:
        raise ConfigError(
            "the slurm executor needs submitit: pip install 'retina-raf[slurm]'"
        ) from None
    if cluster == "slurm" and shutil.which("sbatch") is None:
        raise RunError("sbatch not found: the slurm executor needs a SLURM cluster")
    out = Path(out)
    logging.getLogger("submitit").addFilter(lambda rec: "sacct" not in rec.getMessage())
    executor = submitit.AutoExecutor(folder=out / "slurm" / "%j", cluster=cluster)
    executor.update_parameters(**submitit_parameters(name, slurm))
    with executor.batch():
        jobs = [executor.submit(RunJob(run, str(out))) for run in runs]
    ids = sorted({job.job_id.split("_")[0] for job in jobs})
    if cluster == "slurm":
        for run, job in zip(runs, jobs, strict=True):
            write_text(f"{job.job_id}\n", _queued_path(out, run))
    print(f"submitted {len(jobs)} jobs ({', '.join(ids)}); files in {out / 'slurm'}", flush=True)
    if not wait:
        return None
    slurm_jobs = cluster == "slurm"
    _progress(out, runs, lambda: _jobs_over(jobs, slurm_jobs), poll_s=poll_s)
    for run in runs:  # their jobs are over (a job that is completing would look queued)
        _queued_path(out, run).unlink(missing_ok=True)
    logs, reasons = {}, {}
    for run, job in zip(runs, jobs, strict=True):
        logs[run.run_id] = [str(job.paths.stderr), str(job.paths.stdout)]
        reasons[run.run_id] = _job_reason(job)
    rep = report(out, runs, logs)
    for rid, reason in reasons.items():
        rep.reasons.setdefault(rid, reason)
    return rep


def _jobs_over(jobs, slurm_jobs: bool) -> bool:
    active = _active_slurm_jobs({j.job_id.split("_")[0] for j in jobs}) if slurm_jobs else None
    for job in jobs:
        if job.paths.result_pickle.exists():
            continue
        if slurm_jobs:
            if active is None or job.job_id in active:
                return False
        elif not job.done():
            return False
    return True


def _queued_path(out: Path, run: Run) -> Path:
    return Path(out) / ".queued" / run.run_id


def queued_jobs(out: Path, runs: list[Run]) -> dict[str, str]:
    """run_id -> SLURM job id, for runs whose job (submitted by an earlier sweep) SLURM
    still lists as pending or running: such runs are not submitted again."""
    submitted = {}
    for run in runs:
        path = _queued_path(out, run)
        if path.exists():
            submitted[run.run_id] = path.read_text().strip()
    if not submitted or shutil.which("squeue") is None:
        return {}
    active = _active_slurm_jobs({job.split("_")[0] for job in submitted.values()}) or set()
    return {rid: job for rid, job in submitted.items() if job in active}


def _active_slurm_jobs(base_ids: set[str]) -> set[str] | None:
    """Ids (``123`` or ``123_4``) of our jobs that SLURM still lists as pending or running;
    None when ``squeue`` cannot tell (controller busy or down)."""
    # COMPLETING too: a job being requeued (time limit) passes through it
    states = "PENDING,RUNNING,CONFIGURING,COMPLETING,REQUEUED,REQUEUE_HOLD,RESIZING,SUSPENDED"
    cmd = ["squeue", "-h", "-r", "-o", "%i", "-t", states, "-j", ",".join(sorted(base_ids))]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    if proc.returncode != 0:
        return set() if "Invalid job id" in proc.stderr else None
    return {line.strip() for line in proc.stdout.splitlines() if line.strip()}


def _job_reason(job) -> str:
    """One line on how a job ended, from its result file."""
    from submitit.core.utils import pickle_load

    if not job.paths.result_pickle.exists():
        return f"job {job.job_id} ended without a result (killed, out of memory or time?)"
    outcome, value = pickle_load(job.paths.result_pickle)
    if outcome == "success":
        return f"job {job.job_id}: {value}"
    lines = [line for line in str(value).splitlines() if line.strip()]
    return f"job {job.job_id}: {lines[-1].strip() if lines else 'error'}"


# -------------------------------------------------------------------------- sweep
def run_sweep(
    exp: ExperimentConfig,
    out: Path,
    executor: str = "local",
    workers: int | None = None,
    wait: bool = True,
    slurm_cluster: str = "slurm",
) -> SweepReport | None:
    """Train every run of ``exp`` that is not finished: skip ``done`` and ``running`` runs,
    resume ``interrupted`` and ``failed`` ones from their checkpoints, start the rest."""
    out = Path(out)
    runs = expand(exp)
    queued = queued_jobs(out, runs)
    todo = [run for run in runs if run_state(out, run, queued) not in ("done", "running", "queued")]
    _check_data(todo)
    out.mkdir(parents=True, exist_ok=True)
    write_text(experiment_yaml(exp), out / "experiment.yaml")
    print(
        f"{exp.name}: {len(runs)} run{'s' if len(runs) != 1 else ''}, "
        f"{len(runs) - len(todo)} finished, running or queued, "
        f"{len(todo)} to train ({executor})",
        flush=True,
    )
    if todo:
        if executor == "local":
            run_local(todo, out, workers)
        elif executor == "slurm":
            rep = run_slurm(todo, out, exp.name, exp.slurm, cluster=slurm_cluster, wait=wait)
            if rep is None:
                return None
            return _merge_reports(report(out, runs), rep)
        else:
            raise ConfigError(f"unknown executor {executor!r} (allowed: local, slurm)")
    return report(out, runs)


def _check_data(runs: list[Run]) -> None:
    """Fail before training or submitting anything when a run's data set is missing: an
    unknown or unfetched data set name (the error names the fetch command), or a path that
    is not there."""
    from retina_raf.data import resolve_data

    for source in {run.config().data.path for run in runs} - {None}:
        path = resolve_data(source)
        if not path.exists():
            raise DataError(f"data set not found: {path} (set `data:` in the file or --data)")


def _merge_reports(full: SweepReport, part: SweepReport) -> SweepReport:
    for rid in part.states:
        full.logs[rid] = list(dict.fromkeys(full.logs.get(rid, []) + part.logs.get(rid, [])))
        if rid in part.reasons:
            full.reasons.setdefault(rid, part.reasons[rid])
    return full


def experiment_yaml(exp: ExperimentConfig) -> str:
    """The experiment as YAML (every field, normalized): what ``experiment.yaml`` holds."""
    import yaml

    return yaml.safe_dump(asdict(exp), sort_keys=False)


def dry_run(exp: ExperimentConfig, out: Path) -> str:
    """A table of every run with its state and folder, then the counts per state."""
    runs = expand(exp)
    queued = queued_jobs(out, runs)
    width = max(len(run.run_id) for run in runs)
    lines = []
    for run in runs:
        state = run_state(out, run, queued)
        extra = f"  ({lock_holder(out, run)})" if state == "running" else ""
        extra = f"  (job {queued[run.run_id]})" if state == "queued" else extra
        lines.append(f"{run.run_id:<{width}}  {state:<11}  {run_dir(out, run)}{extra}")
    counts = [f"{sum(line.split()[1] == s for line in lines)} {s}" for s in STATES]
    lines.append(
        f"{len(runs)} run{'s' if len(runs) != 1 else ''}: "
        + ", ".join(c for c in counts if not c.startswith("0 "))
    )
    return "\n".join(lines)


if __name__ == "__main__":  # a local worker process (see run_local)
    _worker_main(sys.argv[1])
