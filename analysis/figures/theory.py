"""The paper's Fig. 2 (docs/design.md#linear-theory): panels b-g of the linear theory.

The data are :func:`retina_raf.linear_theory.figure2_data`'s (simulations and the ODE of
every condition); this module only draws them, in the project's style
(:mod:`analysis.figures.style`), one panel per file: ``fig2b`` ... ``fig2g`` as PDF and PNG.
"""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

from analysis.figures.style import export_panel, new_figure, paper_style

PANEL_WIDTH_MM = 85.0  # one journal column
PANEL_HEIGHT_MM = 66.0
PANEL_FORMATS = ("pdf", "png")

# Panel -> (rule, "full" or "low" feedback rank, kind of plot, title)
FIGURE2_PANELS = {
    "fig2b": ("lowrank_fa", "full", "modes", "Low-rank FA (P fixed)"),
    "fig2c": ("lowrank_fa", "low", "modes", "Low-rank FA (P fixed)"),
    "fig2d": ("raf", "full", "modes", "RAF (P trained)"),
    "fig2e": ("raf", "low", "modes", "RAF (P trained)"),
    "fig2f": ("lowrank_fa", "low", "mean", "Low-rank FA (P fixed)"),
    "fig2g": ("raf", "low", "mean", "RAF (P trained)"),
}


def _mode_colors(d: int):
    return matplotlib.colormaps["viridis"](np.linspace(0.0, 0.88, d))


def _draw_panel(ax, data: xr.Dataset, panel: str, fig) -> str:
    """Draw one Fig. 2 panel on ``ax``; return its one-line summary."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import ListedColormap, Normalize
    from matplotlib.lines import Line2D

    rule, which, kind, title = FIGURE2_PANELS[panel]
    rank = data.attrs["m"] if which == "full" else data.attrs["low_rank"]
    label = f"{rule} r={rank}"
    run = data.sel(run=label)
    d = data.sizes["mode"]
    top = min(rank, d)
    time = data["time"].values
    colors = _mode_colors(d)
    sim, theory = run.alignment.sel(source="simulation"), run.alignment.sel(source="theory")
    if kind == "modes":  # one seed, every mode: simulation solid, theory dashed
        seed = data.seed.values[0]
        for j in range(d):
            ax.plot(time, sim.sel(seed=seed)[:, j], color=colors[j], lw=1.0)
            ax.plot(time, theory.sel(seed=seed)[:, j], color=colors[j], lw=1.0, ls=(0, (3, 2)))
        modes = ScalarMappable(Normalize(0.5, d + 0.5), ListedColormap(colors))
        bar = fig.colorbar(modes, ax=ax, pad=0.02, fraction=0.06, aspect=25)
        bar.set_label("singular mode j")
        bar.set_ticks([1, min(top, d), d] if top < d else [1, d])
        if top < d:
            bar.ax.axhline(top + 0.5, color="white", lw=1.2)
        handles = [
            Line2D([], [], color="0.2", lw=1.0, label="simulation"),
            Line2D([], [], color="0.2", lw=1.0, ls=(0, (3, 2)), label="theory"),
        ]
    else:  # top-r modes of every seed thin; their mean over modes and seeds bold
        top_sim, top_theory = sim.isel(mode=slice(0, top)), theory.isel(mode=slice(0, top))
        for seed in data.seed.values:
            for j in range(top):
                ax.plot(time, top_sim.sel(seed=seed)[:, j], color=colors[j], lw=0.6, alpha=0.45)
        bp_label = f"bp r={data.attrs['m']}"
        if bp_label in data.run.values:
            bp_mean = data.alignment.sel(run=bp_label, source="simulation")
            bp_mean = bp_mean.isel(mode=slice(0, top)).mean(("seed", "mode"))
            ax.plot(time, bp_mean, color="0.55", lw=1.6, label="BP")
        ax.plot(
            time, top_sim.mean(("seed", "mode")), color="black", lw=2.2, label="mean (simulation)"
        )
        ax.plot(
            time,
            top_theory.mean(("seed", "mode")),
            color="black",
            lw=1.6,
            ls=(0, (3, 2)),
            label="mean (theory)",
        )
        n_seeds = data.sizes["seed"]
        note = f"thin: modes 1–{top}, {n_seeds} seed{'s' if n_seeds > 1 else ''} (simulation)"
        ax.text(0.98, 0.03, note, transform=ax.transAxes, ha="right", fontsize=6.5, color="0.3")
        handles = None
    ax.axhline(1.0, color="0.8", lw=0.6, zorder=0)
    ax.set_xlim(time[0], time[-1])
    ax.set_ylim(-0.05, 1.3)  # headroom above 1 for the legend
    ax.set_yticks(np.linspace(0, 1, 6))
    # Unicode, not mathtext: one font less to embed in every PDF, and the text stays editable.
    ax.set_xlabel("time t = η × step")
    ax.set_ylabel("alignment  uⱼᵀW₂W₁vⱼ / sⱼ")
    ax.set_title(f"{title}, r = {rank}", fontsize=8)
    ax.text(-0.22, 1.02, panel[-1], transform=ax.transAxes, fontsize=11, fontweight="bold")
    ax.legend(
        handles=handles,
        loc="upper center",
        ncol=3,
        frameon=False,
        fontsize=6.5,
        handlelength=1.8,
        columnspacing=1.0,
        borderaxespad=0.1,
    )
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)

    def final(values):  # mean over the last 10% of the run, per seed and mode
        return values.isel(time=slice(-max(1, len(time) // 10), None)).mean("time")

    end_sim, end_theory = (
        final(sim.isel(mode=slice(0, top))),
        final(theory.isel(mode=slice(0, top))),
    )
    return (
        f"{panel}: {title}, r={rank}, d={d}: final alignment of the top {top} modes "
        f"({data.sizes['seed']} seeds) "
        f"simulation mean {float(end_sim.mean()):.3f} (min {float(end_sim.min()):.3f}), "
        f"theory mean {float(end_theory.mean()):.3f} (min {float(end_theory.min()):.3f})"
    )


def plot_figure2(data: xr.Dataset, out_dir: str | os.PathLike, dpi: int = 300) -> list[str]:
    """Write the Fig. 2 panels b-g of :func:`~retina_raf.linear_theory.figure2_data` output
    as ``fig2<x>.pdf`` and ``.png``.

    b, c: low-rank FA (Q trained, P fixed) at r = m and r = low_rank; d, e: the same for RAF --
    the alignment of every mode over time for the first seed, simulation solid, theory dashed,
    colour = mode. f, g: low-rank FA and RAF at r = low_rank -- the top-r modes of every seed
    (thin) and their mean (bold: simulation solid, theory dashed) against BP's (grey): with P
    fixed the modes align on average but the top r are not all recovered; with P trained
    they are. Each panel is one journal column wide and written by
    :func:`~analysis.figures.style.export_panel` (atomically, text editable in the PDFs).
    Returns one summary line per panel.
    """
    out_dir = Path(out_dir)
    summaries = []
    for panel in FIGURE2_PANELS:
        fig, ax = new_figure(PANEL_WIDTH_MM, height_mm=PANEL_HEIGHT_MM)
        try:
            with paper_style():  # artists take their style when created
                summaries.append(_draw_panel(ax, data, panel, fig))
            export_panel(fig, panel, out_dir=out_dir, dpi=dpi, formats=PANEL_FORMATS)
        finally:
            plt.close(fig)
    return summaries
