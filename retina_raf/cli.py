"""The ``retina-raf`` command line.

Every subcommand imports its heavy dependencies lazily so ``retina-raf --help`` stays fast.
Expected mistakes (:class:`retina_raf.errors.RetinaRafError`, bad options) print one line
on stderr and exit with status 2.
"""

from __future__ import annotations

import sys

import click

from retina_raf import __version__
from retina_raf.errors import RetinaRafError


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="retina-raf")
def cli() -> None:
    """Low-dimensional error feedback (RAF) and retinal receptive fields."""


# ----------------------------------------------------------------------------- data
@cli.group()
def data() -> None:
    """Inspect CIFAR-10 files and build the embedded sample."""


@data.command("info")
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "--gray",
    type=click.Choice(["mean", "luma"]),
    default="mean",
    show_default=True,
    help="Grayscale conversion for RGB sources.",
)
def data_info(path: str, gray: str) -> None:
    """Counts, per-class counts, image shape, mean and std of a data set (npz or folder)."""
    from retina_raf.data import describe, load_cifar10

    click.echo(describe(load_cifar10(path, gray=gray)))


@data.command("sample")
@click.option(
    "--source",
    required=True,
    type=click.Path(path_type=str),
    help="Full CIFAR-10: an .npz or a cifar-10-batches-py folder.",
)
@click.option("--out", required=True, type=click.Path(path_type=str), help="Output .npz file.")
@click.option("--train-per-class", default=400, show_default=True, type=click.IntRange(1, 5000))
@click.option("--test-per-class", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--gray", type=click.Choice(["mean", "luma"]), default="mean", show_default=True)
def data_sample(
    source: str, out: str, train_per_class: int, test_per_class: int, gray: str
) -> None:
    """Build a deterministic class-balanced grayscale sample of CIFAR-10."""
    from retina_raf.data import describe, load_cifar10, make_sample

    path = make_sample(
        source, out, train_per_class=train_per_class, test_per_class=test_per_class, gray=gray
    )
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    click.echo(describe(load_cifar10(path)))


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
        click.echo(f"retina-raf: error: {exc}", err=True)
        sys.exit(2)
    sys.exit(rv if isinstance(rv, int) else 0)


if __name__ == "__main__":
    main()
