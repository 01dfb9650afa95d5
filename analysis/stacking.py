"""One results layer: run folders -> one dataset along ``run``.

Every results file is made here: RF results (:func:`analysis.results.combine_runs`), RFs
through training (:func:`analysis.trajectory.combine_trajectories`) and test accuracies
(:func:`analysis.accuracy.collect_accuracy`). Each supplies a per-run reduction, a
:class:`~retina_raf.runs.Run` -> Dataset without a ``run`` dimension, and
:func:`stack_runs` does the rest::

    coords  run_id, preset, rank, n_bn, seed, rule (on run: the run's folder name and
            Run.identity), or what ``identity`` gives
    vars    the reduction's, each with a leading ``run``; present (run, channel) where it
            has channels; config (run): each run's config as YAML, data set by name
    attrs   provenance (package version, git commit, date) and ``kind``

Runs with fewer channels (feedforward bottlenecks) or epochs (a run in flight) are padded:
numbers NaN, booleans False (``present``, ``responsive``), strings "" (``rf_class``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from tqdm import tqdm  # not tqdm.auto: its notebook widget needs ipywidgets

from analysis.provenance import KINDS, provenance
from retina_raf import runs
from retina_raf.errors import DataError
from retina_raf.runs import Run

# The run coordinates every RF results file has, in this order (analysis.results.RUN_COORDS);
# labels of Run.identity beyond these follow them.
IDENTITY_ORDER = ("run_id", "preset", "rank", "n_bn", "seed", "rule")


def run_coords(run: Run) -> dict:
    """A run's coordinates on ``run``: ``run_id`` (its folder name), then
    :attr:`~retina_raf.runs.Run.identity` in :data:`IDENTITY_ORDER`, then any other label."""
    labels = {"run_id": run.run_id, **run.identity}
    first = {name: labels[name] for name in IDENTITY_ORDER if name in labels}
    return {**first, **{k: v for k, v in labels.items() if k not in first}}


def history_variables(
    history: xr.Dataset | None, dims: Sequence[tuple[str, ...]] | None = None
) -> xr.Dataset | None:
    """The variables of a run's history (:attr:`~retina_raf.runs.Run.history`) for its
    results: without the file's own attributes (provenance, config), with the variables' CF
    ones. ``dims``: keep only variables of these dims, e.g. ``[("epoch",), ("epoch",
    "layer")]``. None without a history or without such variables."""
    if history is None:
        return None
    if dims is not None:
        keep = [v for v in history.data_vars if history[v].dims in tuple(map(tuple, dims))]
        if not keep:
            return None
        history = history[keep]
    return history.drop_attrs(deep=False)


def open_runs(run_dirs: Sequence[Run | str | Path], require_finished: bool = True) -> list[Run]:
    """:func:`retina_raf.runs.open_run` of each folder (a :class:`Run` is kept as it is),
    all before any costly work: a bad folder fails the whole call at once.

    Raises:
        RunError: a missing or damaged folder; with ``require_finished`` an unfinished run.
    """
    opened = []
    for run in run_dirs:
        if not isinstance(run, Run):
            run = runs.open_run(run, require_finished=require_finished)
        elif require_finished and not run.finished:
            runs.check_finished(run.path)  # raises its one-line error
        opened.append(run)
    return opened


def stack_runs(
    run_dirs: Sequence[Run | str | Path],
    reduce: Callable[[Run], xr.Dataset],
    *,
    kind: str,
    identity: Callable[[Run], Mapping] = run_coords,
    config: bool = True,
    attrs: str = "agreed",
    require_finished: bool = True,
    progress: bool = False,
    desc: str = "stacking runs",
) -> xr.Dataset:
    """Apply ``reduce`` to every run and stack the results along ``run``.

    Args:
        run_dirs: run folders or opened runs, in the order of ``run``; all are opened
            (:func:`open_runs`) before the first reduction.
        reduce: one run -> a Dataset without ``run`` (e.g. (channel, y, x) and (epoch,)
            variables); a dim whose length differs between runs is padded (module
            docstring), aligned on its index coordinate (channel, epoch: labels, not places).
        kind: the file's ``kind`` attribute, one of :data:`analysis.provenance.KINDS`.
        identity: one run -> its ``run`` coordinates, in order (default :func:`run_coords`).
        config: add ``config`` (run): each run's config as published YAML.
        attrs: the file's attributes besides provenance and kind: ``"agreed"``, those on
            which every run's reduction agrees; ``"first"``, the first run's.
        require_finished: refuse unfinished runs (a trajectory reads runs in flight).
        progress: a bar over the runs (when stderr is a terminal).
        desc: the bar's label.

    Returns:
        Dataset with dims (run, ...) as described in the module docstring.

    Raises:
        DataError: no runs or an unknown kind; RunError: a bad run folder.
    """
    if kind not in KINDS:
        raise DataError(f"unknown kind of results {kind!r} (one of {', '.join(KINDS)})")
    if attrs not in ("agreed", "first"):
        raise DataError(f"attrs must be 'agreed' or 'first', not {attrs!r}")
    opened = open_runs(run_dirs, require_finished)
    if not opened:
        raise DataError("no run folders to stack")
    bars = None if progress else True  # None: no bar when stderr is not a terminal
    parts = [
        _run_part(run, reduce(run), identity(run), config)
        for run in tqdm(opened, desc=desc, unit="run", disable=bars)
    ]
    # coords="different": a scalar coordinate that differs between runs gets `run`, one that
    # all runs share stays as it is (a run's own coordinates have `run` already, _run_part)
    stacked = xr.concat(parts, dim="run", join="outer", data_vars="all", coords="different",
                        compat="equals", combine_attrs="drop_conflicts")  # fmt: skip
    stacked = _fill_padding(stacked, parts)
    if attrs == "first":
        stacked.attrs = dict(parts[0].attrs)
    stacked.attrs = provenance(**{**stacked.attrs, "kind": kind})
    return stacked


def _run_part(run: Run, ds: xr.Dataset, identity: Mapping, config: bool) -> xr.Dataset:
    """One run's reduction with a leading ``run`` of length 1, its coordinates and config."""
    if "channel" in ds.dims and "present" not in ds:
        ds = ds.assign(present=("channel", np.ones(ds.sizes["channel"], dtype=bool)))
    ds = ds.expand_dims("run")
    # a coordinate of the run's own (actmax's n_active_starts per epoch and channel) gets
    # `run` here, so that concat stacks it as it does the data: xarray's coords="different"
    # cannot compare it when only the first runs have a dimension (`layer`, feedback runs)
    ds = ds.assign_coords({name: ds[name].expand_dims("run") for name in ds.coords
                           if name not in ds.dims and ds[name].ndim > 0})  # fmt: skip
    ds = ds.assign_coords({name: ("run", [value]) for name, value in identity.items()})
    if config:  # the recipe, with no folder of the machine that trained it
        ds["config"] = ("run", [runs.published_config(run.config)])
    for var in ds.variables.values():  # encodings of cached files (int dtypes) do not fit padding
        var.encoding = {}
    return ds


def _fill_padding(stacked: xr.Dataset, parts: Sequence[xr.Dataset]) -> xr.Dataset:
    """Padding of booleans False and of strings "" (concat fills both with NaN), by the dtype
    each variable had in the runs."""
    for name in list(stacked.data_vars):
        dtype = next(part[name].dtype for part in parts if name in part)
        if dtype.kind == "b":
            stacked[name] = stacked[name].fillna(False).astype(bool)
        elif dtype.kind in "USO":  # text (rf_class), fixed-width or as Python objects
            stacked[name] = stacked[name].where(stacked[name].notnull(), "").astype(str)
    return stacked


def with_earlier_runs(
    current: xr.Dataset | None,
    earlier: xr.Dataset,
    keep: Sequence[str] | None = None,
    order: Sequence[str] | None = None,
    prefer_earlier: Sequence[str] = (),
) -> xr.Dataset:
    """``current`` (a stacked dataset, or None) with the runs of ``earlier`` (a file of the
    same kind, published before) that it lacks: the record of a run whose folder is gone
    (e.g. with the machine that trained it) stays as it was published.

    Args:
        current: the dataset built from the run folders now; None when none could be read.
        earlier: the dataset read from the earlier file (:func:`analysis.results.open_results`).
        keep: run ids that may be kept (e.g. the runs an experiment plans); default any.
        order: run ids in the order of ``run`` in the result (e.g. the experiment's); runs
            not in it follow in their own order.
        prefer_earlier: run ids whose record in ``earlier`` replaces the one in ``current``
            (e.g. a run started again from scratch that has not caught up with its record).

    Returns:
        The stacked runs with a coordinate ``in_runs_dir`` (run): False for a run kept from
        ``earlier`` (no folder to resume it from; its ``being_trained`` False too), True
        otherwise; ``current``'s attributes, or ``earlier``'s where ``current`` is None.

    Raises:
        DataError: neither ``current`` nor any run to keep.
    """
    earlier_ids = [str(i) for i in earlier["run_id"].values]
    if current is not None:
        replaced = set(prefer_earlier) & set(earlier_ids)
        stays = [i for i, run_id in enumerate(current["run_id"].values.astype(str))
                 if run_id not in replaced]  # fmt: skip
        current = current.isel(run=stays) if stays else None
    have = set() if current is None else {str(i) for i in current["run_id"].values}
    allowed = None if keep is None else {str(i) for i in keep}
    kept = [i for i, run_id in enumerate(earlier_ids)
            if run_id not in have and (allowed is None or run_id in allowed)]  # fmt: skip
    parts = []
    if current is not None:
        flags = current["in_runs_dir"].values if "in_runs_dir" in current.coords else True
        parts.append(current.assign_coords(in_runs_dir=("run", np.broadcast_to(
            flags, current.sizes["run"]).astype(bool))))  # fmt: skip
    if kept:
        old = earlier.isel(run=kept).load()
        no = ("run", np.zeros(len(kept), dtype=bool))
        old = old.assign_coords(in_runs_dir=no)
        if "being_trained" in old.coords:  # it was, when the earlier file was written
            old = old.assign_coords(being_trained=no)
        parts.append(old)
    if not parts:
        raise DataError("no runs: none read from the run folders and none to keep")
    if len(parts) == 1:
        stacked = parts[0]
    else:
        parts = [part.drop_indexes([n for n in part.xindexes if part[n].dims == ("run",)])
                 for part in parts]  # fmt: skip
        for part in parts:
            for var in part.variables.values():
                var.encoding = {}
        stacked = xr.concat(parts, dim="run", join="outer", data_vars="all",
                            coords="different", compat="equals",
                            combine_attrs="override")  # fmt: skip
        stacked = _fill_padding(stacked, parts)
    if order is not None:
        rank = {run_id: i for i, run_id in enumerate(order)}
        ids = [str(i) for i in stacked["run_id"].values]
        places = sorted(range(len(ids)), key=lambda i: (rank.get(ids[i], len(rank)), i))
        stacked = stacked.isel(run=places)
    return stacked
