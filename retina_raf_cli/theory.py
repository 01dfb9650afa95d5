"""``retina-raf theory``: the paper's Fig. 2, linear-network simulations against the theory."""

from __future__ import annotations

import click

from retina_raf_cli.options import writable


@click.command("theory", short_help="Fig. 2: linear theory vs simulations.")
@click.option(
    "--out",
    callback=writable,
    required=True,
    type=click.Path(file_okay=False, path_type=str),
    help="Folder for fig2b..fig2g (.pdf, .png) and fig2.nc.",
)
@click.option("--steps", default=None, type=int, help="Training steps per run [default: 2400].")
@click.option("--lr", default=None, type=float, help="Learning rate [default: 0.005].")
@click.option("--seed", default=0, show_default=True, type=int, help="First seed.")
@click.option(
    "--seeds",
    "n_seeds",
    default=3,
    show_default=True,
    type=click.IntRange(1),
    help="Seeds per condition (panels f, g use all; b-e the first).",
)
@click.option("--rank", default=8, show_default=True, type=int, help="Low feedback rank r.")
@click.option("--dim", default=None, type=int, help="Rank d of the task [default: 16].")
@click.option("--dpi", default=300, show_default=True, type=click.IntRange(50, 1200))
def theory_command(out, steps, lr, seed, n_seeds, rank, dim, dpi):
    """Paper Fig. 2: linear-network simulations (solid) against the ODE theory (dashed)."""
    from pathlib import Path

    from analysis.figures.theory import plot_figure2
    from retina_raf.io import write_netcdf
    from retina_raf.linear_theory import figure2_data

    params = {"steps": steps, "lr": lr, "d": dim}
    params = {key: value for key, value in params.items() if value is not None}
    seeds = range(seed, seed + n_seeds)
    data = figure2_data(low_rank=rank, seeds=seeds, progress=True, **params)
    for line in plot_figure2(data, out, dpi=dpi):
        click.echo(line)
    click.echo(f"wrote {write_netcdf(data, Path(out) / 'fig2.nc')} and 12 panel files")
