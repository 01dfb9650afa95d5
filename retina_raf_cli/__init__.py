"""The ``retina-raf`` command line: a thin face over ``retina_raf`` (training) and
``analysis`` (what training wrote), above both; neither imports it.

One module per family of subcommands (:mod:`retina_raf_cli.data`,
:mod:`~retina_raf_cli.training`, :mod:`~retina_raf_cli.rfs`, :mod:`~retina_raf_cli.reports`,
:mod:`~retina_raf_cli.theory`), the options they share in :mod:`retina_raf_cli.options`.
Every subcommand imports its heavy dependencies lazily so ``retina-raf --help`` stays fast.
Expected mistakes (:class:`retina_raf.errors.RetinaRafError`, bad options) print one line
on stderr and exit with status 2. Training stopped by SIGTERM (after writing its
checkpoint) prints one line and exits with status 143
(:data:`retina_raf.errors.EXIT_INTERRUPTED`); the same command resumes it.
"""

from __future__ import annotations

import sys

# retina_raf first: importing it before torch turns on torch's huge-page allocation
# (retina_raf/__init__.py)
from retina_raf import __version__  # isort: skip

import click

from retina_raf.errors import EXIT_INTERRUPTED, RetinaRafError, RunInterrupted
from retina_raf_cli import data, reports, rfs, theory, training


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retina-raf")
def cli() -> None:
    """Low-dimensional error feedback (RAF) and retinal receptive fields."""


for _command in (
    data.data,
    training.train_cmd,
    reports.report,
    reports.figures_command,
    rfs.rfs_command,
    training.sweep_command,
    theory.theory_command,
    rfs.metrics_command,
    rfs.trajectory_cmd,
    training.kp_decay_cmd,
    training.error_subspace_cmd,
    rfs.feedback_rfs_cmd,
    reports.findings_cmd,
    rfs.results_cmd,
    reports.demo_cmd,
):
    cli.add_command(_command)
del _command


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script: one-line errors and exit status 2 on bad input."""
    try:
        rv = cli.main(args=argv, prog_name="retina-raf", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.exceptions.Abort:
        click.echo("retina-raf: aborted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        click.echo(f"retina-raf: error: {exc.format_message()}", err=True)
        sys.exit(2)
    except RetinaRafError as exc:
        message = " ".join(str(exc).split())  # one line, whatever the message held
        click.echo(f"retina-raf: error: {message}", err=True)
        sys.exit(2)
    except RunInterrupted as exc:
        click.echo(f"retina-raf: {' '.join(str(exc).split())}", err=True)
        sys.exit(128 + int(exc.signum) if exc.signum else EXIT_INTERRUPTED)
    sys.exit(rv if isinstance(rv, int) else 0)
