"""What several commands share: option decorators, option callbacks and output-path checks.

Each decorator takes the help text its commands print (they differ from command to command),
so sharing one does not change any ``--help``.
"""

from __future__ import annotations

from pathlib import Path

import click

RF_METHODS = ("actmax", "gradient", "sta")
# the order in which `rfs` and `trajectory` list the methods in their --help
RF_METHODS_GRADIENT_FIRST = ("gradient", "actmax", "sta")

DATA_ROOT_HELP = (
    "Folder where data set names (cifar10-gray, cifar10) resolve [default: $RETINA_RAF_DATA, "
    "else data/ of the repository]."
)


# ---------------------------------------------------------------------------- outputs
def netcdf_path(path: str, option: str = "--out") -> str:
    """A NetCDF output path must end in .nc (what it holds, and what readers look for)."""
    if not path.lower().endswith(".nc"):
        raise click.BadParameter(f"{path!r} must end in .nc (a NetCDF file)", param_hint=option)
    return path


def writable(ctx: click.Context, param: click.Parameter, value):
    """An output path (file or folder) must be writable, checked when the options are read,
    before any computing: its nearest existing folder accepts a new file."""
    if value is None:
        return value
    import tempfile

    path = Path(value).expanduser().absolute()
    hint = param.opts[0] if param.opts else None
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if existing == path and path.is_file():
        existing = path.parent  # the file is replaced: its folder must take the new one
    if not existing.is_dir():
        raise click.BadParameter(f"{value!r}: {existing} is a file, not a folder", param_hint=hint)
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise click.BadParameter(
            f"{value!r} cannot be written ({existing}: {exc.strerror or exc})", param_hint=hint
        ) from None
    return value


def experiment_options(experiment_help: str):
    """``--experiment FILE --runs-dir DIR``, the other way than RUN folders to name the runs a
    command reads; ``experiment_help`` says which runs of the experiment it takes. The
    command checks the pair with :func:`check_runs_or_experiment`."""

    def decorate(command):
        command = click.option(
            "--runs-dir",
            default=None,
            type=click.Path(path_type=str),
            help="With --experiment: the sweep's --out folder.",
        )(command)
        return click.option(
            "--experiment", default=None, type=click.Path(path_type=str), help=experiment_help
        )(command)

    return decorate


def check_runs_or_experiment(runs: tuple, experiment: str | None, runs_dir: str | None) -> None:
    """RUN folders or ``--experiment`` with ``--runs-dir``: one of the two, whole."""
    if bool(runs) == bool(experiment):
        raise click.UsageError("give RUN folders or --experiment FILE --runs-dir DIR, not both")
    if experiment and not runs_dir:
        raise click.UsageError("--experiment needs --runs-dir (the sweep's --out folder)")


def keep_earlier_option(file_option: str):
    """``--keep-earlier``: the runs of the existing output file (``file_option``) that the
    run folders no longer provide keep their record (a long experiment published as it
    trains outlives the machine that trained it)."""
    return click.option(
        "--keep-earlier",
        is_flag=True,
        default=False,
        help=f"Keep the runs of the existing {file_option} file that are not read now (e.g. "
        "their folders are gone with the machine that trained them) as they are there, "
        "marked in_runs_dir=False.",
    )


def open_earlier(path: str, keep_earlier: bool):
    """The results file at ``path`` to keep runs from (:func:`keep_earlier_option`), or None
    where ``--keep-earlier`` is off or the file does not exist yet (nothing to keep)."""
    if not keep_earlier or not Path(path).is_file():
        return None
    from analysis.results import open_results

    return open_results(path)


def report_kept(ds, what: str) -> None:
    """One line on stderr per run kept from the earlier file (``in_runs_dir`` False)."""
    if "in_runs_dir" not in ds.coords:
        return
    for run_id, here in zip(ds["run_id"].values, ds["in_runs_dir"].values, strict=True):
        if not bool(here):
            click.echo(f"note: {run_id}: kept from {what} (its run folder is gone, or was "
                       "started again and is behind it)", err=True)  # fmt: skip


def history_option(help: str):
    """``--history FILE.csv``: the rows a command computes kept with those of earlier calls
    (what replaces what is the command's ``help``)."""
    return click.option(
        "--history",
        default=None,
        callback=writable,
        type=click.Path(dir_okay=False, path_type=str),
        help=help,
    )


def markdown_out_option(what: str):
    """``--out FILE`` of a command that prints Markdown: write it to FILE instead, so that a
    Makefile calls the command rather than redirecting its output."""
    return click.option(
        "--out",
        default=None,
        callback=writable,
        type=click.Path(dir_okay=False, path_type=str),
        help=f"Write {what} to this file (atomically) instead of printing it.",
    )


def emit(text: str, out: str | None) -> None:
    """Print ``text``, or write it to ``out`` as printing would (with a final newline),
    atomically: an interrupted command leaves the previous file, never half a table."""
    if out is None:
        click.echo(text)
        return
    from retina_raf.io import write_text

    write_text(text + "\n", out)


def renamed(old_value, old_name: str, new_value, new_name: str):
    """The value of an option that was renamed: the new name's, or the old one's with a
    note on stderr; both at once is a usage error."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise click.UsageError(f"{old_name} is the old name of {new_name}; give only {new_name}")
    click.echo(f"note: {old_name} is deprecated, use {new_name}", err=True)
    return old_value


# ---------------------------------------------------------------------------- --data-root
def _export_data_root(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--data-root`` of train and sweep: set RETINA_RAF_DATA while the command runs, so
    that the worker processes and SLURM jobs it starts resolve data set names in the same
    folder; run configs keep the name, never the folder."""
    if value is None:
        return
    import os
    from pathlib import Path

    from retina_raf.data import DATA_ROOT_ENV

    previous = os.environ.get(DATA_ROOT_ENV)
    os.environ[DATA_ROOT_ENV] = str(Path(value).expanduser().resolve())

    def restore() -> None:
        if previous is None:
            os.environ.pop(DATA_ROOT_ENV, None)
        else:
            os.environ[DATA_ROOT_ENV] = previous

    ctx.call_on_close(restore)


def data_root_option(command):
    """The ``--data-root DIR`` option of a command that trains on a data set."""
    return click.option(
        "--data-root",
        default=None,
        type=click.Path(file_okay=False, path_type=str),
        expose_value=False,
        callback=_export_data_root,
        help=DATA_ROOT_HELP,
    )(command)


def data_root_argument_option(help: str = DATA_ROOT_HELP):
    """The ``--data-root DIR`` option of a data command, passed to it as ``data_root``."""
    return click.option(
        "--data-root", default=None, type=click.Path(file_okay=False, path_type=str), help=help
    )


# ---------------------------------------------------------------------------- RF mapping
def method_option(help: str, *, default=None, multiple: bool = False, choices: tuple = RF_METHODS):
    """``--method`` (an RF method), passed as ``method``, or with ``multiple`` as ``methods``
    (the option repeated for several)."""
    names = ("--method", "methods") if multiple else ("--method",)
    shown = {"show_default": True} if default is not None else {}
    return click.option(*names, default=default, multiple=multiple,
                        type=click.Choice(list(choices)), help=help, **shown)  # fmt: skip


def base_options(base_help: str, gray_level_help: str | None = None):
    """``--base zeros|gray`` and ``--gray-level`` (default 0.5) of the RF maps of runs."""

    def decorate(command):
        command = click.option("--gray-level", default=0.5, show_default=True, type=float,
                               help=gray_level_help)(command)  # fmt: skip
        return click.option(
            "--base",
            default="zeros",
            show_default=True,
            type=click.Choice(["zeros", "gray"]),
            help=base_help,
        )(command)

    return decorate


def device_option(help: str | None = None, *, default=None, choices: tuple = ("cpu", "cuda")):
    """``--device``: where a command computes."""
    shown = {"show_default": True} if default is not None else {}
    return click.option("--device", default=default, type=click.Choice(list(choices)),
                        help=help, **shown)  # fmt: skip
