"""The one publication style of every panel of the project (docs/design.md#reports).

:func:`paper_style` (7-8 pt sans-serif text kept editable in PDF/SVG, thin spines), one
palette with a fixed color per condition (:func:`condition_color`) and per RF class, the
axis labels of every metric (:data:`METRIC_LABELS`), journal widths (:func:`new_figure`:
85 mm single column, 180 mm double) and :func:`export_panel`, which writes a panel as PDF,
SVG and PNG atomically. The panels themselves are in :mod:`analysis.figures.panels` and
:mod:`analysis.figures.montage`.
"""

from __future__ import annotations

import contextlib
import hashlib
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
import seaborn as sns
from cycler import cycler

from retina_raf import __version__
from retina_raf.errors import ConfigError
from retina_raf.io import atomic_path

MM_PER_INCH = 25.4
JOURNAL_WIDTHS_MM = {"single": 85.0, "double": 180.0}
PANEL_FORMATS = ("pdf", "svg", "png")

# ---------------------------------------------------------------------------------- palette
# seaborn's colorblind palette, shared by the whole project; every condition keeps its color
# in every panel and notebook so that readers can match them across figures.
PALETTE = sns.color_palette("colorblind", 10).as_hex()
CONDITION_COLORS = {
    "bp": PALETTE[7],  # gray: the backprop reference
    "bp-bottleneck-4": PALETTE[1],  # orange, vermillion, tan: feedforward bottlenecks
    "bp-bottleneck-2": PALETTE[3],
    "bp-bottleneck-1": PALETTE[5],
    "raf-r32": PALETTE[2],  # green, light blue, blue: feedback ranks (low rank = dark)
    "raf-r4": PALETTE[9],
    "raf-r2": PALETTE[0],
    "raf-pca-r4": "#f768a1",  # pink, dark magenta: P by PCA instead of Oja's rule
    "raf-pca-r2": "#7a0177",
    "raf-aligned-r4": "#d9a21b",  # gold, dark brown: P by PCA and Q = W^T P^T (aligned)
    "raf-aligned-r2": "#6b4500",
    "draf-bottleneck-4": PALETTE[4],  # purple: bottleneck with direct full-rank feedback
}
CLASS_COLORS = {  # away from the red/blue of the RF colormap
    "center-surround": PALETTE[2],
    "oriented": PALETTE[4],
    "unclassified": PALETTE[7],
    "unresponsive": "#bbbbbb",
}
CLASS_ABBREVIATIONS = {
    "center-surround": "CS",
    "oriented": "OR",
    "unclassified": "U",
    "unresponsive": "\u2013",
}
# Other condition names draw from a larger palette by a stable hash of the name, so that a
# new preset also keeps one color across processes and panels.
_EXTRA_COLORS = sns.husl_palette(24, l=0.55, s=0.8).as_hex()

METRIC_LABELS = {
    "osi": "Orientation selectivity (OSI)",
    "symmetry": "Radial symmetry",
    "orientedness": "Orientedness",
    "dog_r2": "DoG fit R\u00b2",
    "gabor_r2": "Gabor fit R\u00b2",
    "polarity": "Polarity (ON = +1)",
    "surround_strength": "Surround strength",
    "rf_size": "RF size (px)",
    "fraction_center_surround": "Fraction center-surround",
    "train_loss": "Train loss",
    "test_loss": "Test loss",
    "train_acc": "Train accuracy",
    "test_acc": "Test accuracy",
}
UNIT_INTERVAL_METRICS = {"osi", "symmetry", "fraction_center_surround", "train_acc", "test_acc"}


def condition_color(preset: str) -> str:
    """The fixed color (hex string) of a condition/preset name, the same in every panel."""
    if preset in CONDITION_COLORS:
        return CONDITION_COLORS[preset]
    digest = hashlib.md5(str(preset).encode()).digest()
    return _EXTRA_COLORS[digest[0] % len(_EXTRA_COLORS)]


def class_color(rf_class: str) -> str:
    """The fixed color of an RF class (``center-surround``, ``oriented``, ...)."""
    return CLASS_COLORS.get(rf_class, "#000000")


# ------------------------------------------------------------------------------------ style
PAPER_RC = {
    # editable text: TrueType (Type 42) in PDF/PS, real <text> elements in SVG
    "pdf.fonttype": 42,
    "ps.fonttype": 42,
    "svg.fonttype": "none",
    "svg.hashsalt": "retina-raf",  # stable element ids -> SVGs diff cleanly between runs
    "font.family": "sans-serif",
    "font.sans-serif": ["Arial", "Helvetica", "Liberation Sans", "DejaVu Sans"],
    "mathtext.default": "regular",  # sub/superscripts in the text font, not Computer Modern
    "mathtext.fontset": "custom",
    "mathtext.rm": "sans",
    "mathtext.it": "sans:italic",
    "mathtext.bf": "sans:bold",
    "mathtext.cal": "sans:italic",  # the default 'cursive' is not installed on most machines
    "font.size": 7,
    "axes.titlesize": 8,
    "axes.labelsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "legend.title_fontsize": 7,
    "figure.titlesize": 8,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.titlepad": 3.0,
    "axes.labelpad": 2.0,
    "axes.prop_cycle": cycler(color=PALETTE),
    "xtick.major.width": 0.6,
    "ytick.major.width": 0.6,
    "xtick.minor.width": 0.4,
    "ytick.minor.width": 0.4,
    "xtick.major.size": 2.5,
    "ytick.major.size": 2.5,
    "xtick.minor.size": 1.5,
    "ytick.minor.size": 1.5,
    "xtick.major.pad": 2.0,
    "ytick.major.pad": 2.0,
    "lines.linewidth": 1.0,
    "lines.markersize": 3.0,
    "patch.linewidth": 0.6,
    "errorbar.capsize": 0.0,
    "legend.frameon": False,
    "legend.handlelength": 1.5,
    "legend.borderaxespad": 0.3,
    "figure.facecolor": "white",
    "savefig.facecolor": "white",
    "figure.dpi": 150,
    "savefig.dpi": 300,
    "image.interpolation": "nearest",
}


@contextlib.contextmanager
def paper_style() -> Iterator[None]:
    """Context manager: matplotlib rcParams of the paper style inside the ``with`` block.

    Artists take most of their style (fonts, line widths) when created, so create the figure
    inside the block; :func:`export_panel` applies it again when saving (font embedding).
    """
    with matplotlib.rc_context(PAPER_RC):
        yield


def use_paper_style() -> None:
    """Apply the paper style globally (e.g. at the top of a notebook)."""
    matplotlib.rcParams.update(PAPER_RC)


def width_mm(width: str | float) -> float:
    """Journal width in mm: ``"single"`` (85), ``"double"`` (180) or a number of mm."""
    if isinstance(width, str):
        if width not in JOURNAL_WIDTHS_MM:
            raise ConfigError(f"figure width {width!r} is not 'single', 'double' or a number of mm")
        return JOURNAL_WIDTHS_MM[width]
    if not np.isfinite(width) or not 10.0 <= float(width) <= 500.0:
        raise ConfigError(f"figure width {width} mm is outside 10-500 mm")
    return float(width)


def new_figure(
    width: str | float = "single",
    height_mm: float | None = None,
    nrows: int = 1,
    ncols: int = 1,
    **subplots_kw,
):
    """A paper-style figure at a journal width with a grid of axes.

    Args:
        width: ``"single"`` (85 mm), ``"double"`` (180 mm) or a width in mm.
        height_mm: figure height in mm; default 55 mm per row of axes.
        nrows, ncols, subplots_kw: passed to ``Figure.subplots`` (``squeeze`` defaults True).

    Returns:
        ``(fig, axes)``; the layout is matplotlib's constrained layout, so the figure keeps
        its exact size when exported (the PNG is ``width_mm / 25.4 * dpi`` pixels wide).
    """
    fig_width = width_mm(width)
    fig_height = float(height_mm) if height_mm is not None else min(55.0 * nrows, 230.0)
    if not np.isfinite(fig_height) or fig_height <= 0:
        raise ConfigError(f"figure height {height_mm} mm must be positive")
    with paper_style():
        fig = plt.figure(
            figsize=(fig_width / MM_PER_INCH, fig_height / MM_PER_INCH), layout="constrained"
        )
        fig.get_layout_engine().set(w_pad=1.5 / MM_PER_INCH, h_pad=1.5 / MM_PER_INCH)
        axes = fig.subplots(nrows, ncols, **subplots_kw)
    return fig, axes


_PANEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def export_panel(
    fig,
    name: str,
    out_dir: str | Path = "reports/figures",
    dpi: int = 300,
    formats: Sequence[str] = PANEL_FORMATS,
) -> dict[str, Path]:
    """Write one panel as ``<out_dir>/<name>.pdf``, ``.svg`` and ``.png``, each atomically.

    PDF and SVG are vector files with editable text (TrueType fonts, ``<text>`` elements);
    the PNG is rendered at ``dpi`` (dots per inch). The figure keeps its size (no tight
    bounding box), so panels line up at their journal width. Returns ``{format: path}``.
    """
    if not isinstance(name, str) or not _PANEL_NAME.match(name):
        raise ConfigError(
            f"panel name {name!r} must be a file name (letters, digits, '_', '-', '.', '+')"
        )
    unknown = [fmt for fmt in formats if fmt not in PANEL_FORMATS]
    if unknown:
        raise ConfigError(f"unknown panel format(s) {unknown}; choose from {PANEL_FORMATS}")
    if int(dpi) < 50:
        raise ConfigError(f"dpi {dpi} is too low for a figure panel (at least 50)")
    # fixed metadata (no creation date) so that re-exporting an unchanged panel gives the
    # same vector file
    metadata = {
        "pdf": {"Creator": f"retina-raf {__version__}", "CreationDate": None},
        "svg": {"Creator": f"retina-raf {__version__}", "Date": None},
        "png": {"Software": f"retina-raf {__version__}"},
    }
    paths = {}
    with paper_style():
        for fmt in formats:
            path = Path(out_dir) / f"{name}.{fmt}"
            with atomic_path(path) as tmp:
                fig.savefig(tmp, format=fmt, dpi=dpi, metadata=metadata[fmt])
            paths[fmt] = path
    return paths
