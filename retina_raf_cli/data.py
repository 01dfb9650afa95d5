"""``retina-raf data``: fetch CIFAR-10, inspect data files, build the embedded sample."""

from __future__ import annotations

import click

from retina_raf_cli.options import data_root_argument_option, writable


@click.group(short_help="Fetch CIFAR-10, inspect data files, build the sample.")
def data() -> None:
    """Fetch CIFAR-10, inspect data files and build the embedded sample."""


@data.command("fetch")
@click.argument("name", type=click.Choice(["cifar10"]))
@data_root_argument_option(
    "Folder to write into [default: $RETINA_RAF_DATA, else data/ of the repository]."
)
@click.option(
    "--from",
    "source",
    default=None,
    type=click.Path(path_type=str),
    help="Copy from an existing RGB cifar10_uint8.npz or cifar-10-batches-py folder instead "
    "of downloading (no internet needed).",
)
def data_fetch(name: str, data_root: str | None, source: str | None) -> None:
    """Put CIFAR-10 into the data root: cifar10_uint8.npz (RGB, the data set `cifar10`) and
    cifar10_gray_uint8.npz (mean of R, G and B, the data set `cifar10-gray`).

    Downloads it with torchvision (needs internet) unless --from names a copy; files already
    there are kept, so running it again does nothing."""
    from retina_raf.data import fetch_cifar10

    fetch_cifar10(data_root, source, log=click.echo)


@data.command("info")
@click.argument("path", type=click.Path(path_type=str))
@click.option(
    "--gray",
    type=click.Choice(["mean", "luma"]),
    default="mean",
    show_default=True,
    help="Grayscale conversion for RGB sources.",
)
@data_root_argument_option()
def data_info(path: str, gray: str, data_root: str | None) -> None:
    """Counts, per-class counts, image shape, mean and std of a data set (a name such as
    cifar10-gray, an npz or a folder)."""
    from retina_raf.data import describe, load_cifar10, resolve_data

    click.echo(describe(load_cifar10(resolve_data(path, data_root), gray=gray)))


@data.command("sample")
@click.option(
    "--source",
    required=True,
    type=click.Path(path_type=str),
    help="Full CIFAR-10: a data set name (cifar10), an .npz or a cifar-10-batches-py folder.",
)
@click.option(
    "--out",
    required=True,
    type=click.Path(path_type=str),
    callback=writable,
    help="Output .npz file.",
)
@click.option("--train-per-class", default=400, show_default=True, type=click.IntRange(1, 5000))
@click.option("--test-per-class", default=100, show_default=True, type=click.IntRange(1, 1000))
@click.option("--gray", type=click.Choice(["mean", "luma"]), default="mean", show_default=True)
@data_root_argument_option()
def data_sample(
    source: str,
    out: str,
    train_per_class: int,
    test_per_class: int,
    gray: str,
    data_root: str | None,
) -> None:
    """Build a deterministic class-balanced grayscale sample of CIFAR-10."""
    from retina_raf.data import describe, load_cifar10, make_sample, resolve_data

    path = make_sample(
        resolve_data(source, data_root),
        out,
        train_per_class=train_per_class,
        test_per_class=test_per_class,
        gray=gray,
    )
    click.echo(f"wrote {path} ({path.stat().st_size / 1e6:.2f} MB)")
    click.echo(describe(load_cifar10(path)))
