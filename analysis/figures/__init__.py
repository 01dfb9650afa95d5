"""Figure panels for papers (docs/design.md#reports), in one publication style.

- :mod:`analysis.figures.style`: the style, palette, labels, journal widths and
  :func:`export_panel` (PDF, SVG, PNG, written atomically);
- :mod:`analysis.figures.panels`: metric against feedback rank and bottleneck (seaborn, on
  the tidy per-run table of :mod:`analysis.per_run`), fraction center-surround, learning
  curves, feedback alignment, where Oja's P was (an error-subspace history, ``retina-raf
  error-subspace --figure``), and :func:`export_paper_panels`, the one writer of the paper
  panels (``retina-raf figures``; the report notebooks show them and export the others,
  :func:`export_report_panel`);
- :mod:`analysis.figures.montage`: :func:`plot_rf_montage`, the one RF montage of the
  project (``retina-raf rfs``, ``retina-raf figures``, ``retina-raf feedback-rfs``, the
  ``rf_atlas`` notebook).
- :mod:`analysis.figures.theory`: :func:`plot_figure2`, the paper's Fig. 2 (the linear
  theory of :mod:`retina_raf.linear_theory`; ``retina-raf theory``).

Everything public is importable from ``analysis.figures`` directly.
"""

from analysis.figures.montage import (
    montage_tiles,
    paper_montage_runs,
    plot_rf_montage,
    plot_run_rfs,
    rf_atlas_panels,
    run_support,
    save_readout_montages,
    save_rf_montage,
)
from analysis.figures.panels import (
    PanelSkipped,
    axis_table,
    export_paper_panels,
    export_report_panel,
    paper_panel_names,
    paper_panels,
    per_run_label,
    plot_alignment,
    plot_error_subspace_history,
    plot_fraction_center_surround,
    plot_learning_curves,
    plot_metric_vs_nbn,
    plot_metric_vs_rank,
    plot_subspace_angle,
)
from analysis.figures.style import (
    CLASS_ABBREVIATIONS,
    CLASS_COLORS,
    CONDITION_COLORS,
    JOURNAL_WIDTHS_MM,
    METRIC_LABELS,
    PALETTE,
    PANEL_FORMATS,
    class_color,
    condition_color,
    export_panel,
    new_figure,
    paper_style,
    use_paper_style,
    width_mm,
)
from analysis.figures.theory import FIGURE2_PANELS, plot_figure2
from analysis.per_run import FULL_WIDTH, per_run_metric, responsive_units

__all__ = [
    "CLASS_ABBREVIATIONS",
    "CLASS_COLORS",
    "CONDITION_COLORS",
    "FIGURE2_PANELS",
    "FULL_WIDTH",
    "JOURNAL_WIDTHS_MM",
    "METRIC_LABELS",
    "PALETTE",
    "PANEL_FORMATS",
    "PanelSkipped",
    "axis_table",
    "class_color",
    "condition_color",
    "export_panel",
    "export_paper_panels",
    "export_report_panel",
    "montage_tiles",
    "new_figure",
    "paper_montage_runs",
    "paper_panel_names",
    "paper_panels",
    "paper_style",
    "per_run_label",
    "per_run_metric",
    "plot_alignment",
    "plot_error_subspace_history",
    "plot_figure2",
    "plot_fraction_center_surround",
    "plot_learning_curves",
    "plot_metric_vs_nbn",
    "plot_metric_vs_rank",
    "plot_rf_montage",
    "plot_run_rfs",
    "plot_subspace_angle",
    "responsive_units",
    "rf_atlas_panels",
    "run_support",
    "save_readout_montages",
    "save_rf_montage",
    "use_paper_style",
    "width_mm",
]
