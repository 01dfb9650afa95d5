"""Figure panels (docs/design.md#reports): one style, editable vector text, journal widths,
and the paper-style panels drawn from a results dataset (section 11 schema)."""

from __future__ import annotations

import struct
import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.collections import PathCollection  # noqa: E402

from analysis import figures  # noqa: E402
from retina_raf.errors import ConfigError, DataError  # noqa: E402

CONDITIONS = [  # preset, rank, n_bn, rule, probability of a center-surround RF
    ("bp", 32, 32, "bp", 0.2),
    ("bp-bottleneck-1", 32, 1, "bp", 1.0),
    ("bp-bottleneck-2", 32, 2, "bp", 0.9),
    ("bp-bottleneck-4", 32, 4, "bp", 0.8),
    ("raf-r2", 2, 32, "raf", 0.85),
    ("raf-r4", 4, 32, "raf", 0.7),
    ("raf-r32", 32, 32, "raf", 0.2),
    ("draf-bottleneck-4", 32, 4, "draf", 0.25),
]
LAYERS = ["vvs_1", "vvs_2", "fc_1"]


def _dog(size, rng):
    y, x = np.mgrid[:size, :size] - (size - 1) / 2 + rng.normal(0, 0.5, 2)[:, None, None]
    r2 = x**2 + y**2
    sigma = rng.uniform(1.0, 1.8)
    sign = rng.choice([-1.0, 1.0])
    return sign * (np.exp(-r2 / (2 * sigma**2)) - 0.45 * np.exp(-r2 / (2 * (2.5 * sigma) ** 2)))


def _gabor(size, rng):
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    theta = rng.uniform(0, np.pi)
    along = x * np.cos(theta) + y * np.sin(theta)
    envelope = np.exp(-(x**2 + y**2) / (2 * 2.5**2))
    return envelope * np.cos(2 * np.pi * along / rng.uniform(4, 7) + rng.uniform(0, np.pi))


def make_results(n_seeds=2, n_channels=6, size=13, n_epochs=6, alignment=True, seed=0):
    """A hand-made results dataset with the analysis.results schema.

    Bottleneck runs have N_bn real retina units; the remaining channels are padding as
    analysis.results writes it (``present`` False, NaN RF, ``rf_class`` ""). The last
    channel of a full-width run is unresponsive (zero RF).
    """
    rng = np.random.default_rng(seed)
    rows = [(c, s) for c in CONDITIONS for s in range(n_seeds)]
    n_runs = len(rows)
    rf = np.full((n_runs, n_channels, size, size), np.nan)
    responsive = np.zeros((n_runs, n_channels), bool)
    rf_class = np.full((n_runs, n_channels), "", dtype=object)  # "" on padding
    present = np.zeros((n_runs, n_channels), bool)
    metrics = {m: np.full((n_runs, n_channels), np.nan) for m in ("osi", "symmetry", "dog_r2")}
    for run, ((_, _, n_bn, _, p_cs), _) in enumerate(rows):
        for channel in range(min(n_bn, n_channels)):
            present[run, channel] = True
            rf_class[run, channel] = "unresponsive"
            if channel == n_channels - 1:  # an unresponsive unit: zero RF, metrics NaN
                rf[run, channel] = 0.0
                continue
            center_surround = rng.random() < p_cs
            shape = _dog(size, rng) if center_surround else _gabor(size, rng)
            rf[run, channel] = shape + rng.normal(0, 0.03, shape.shape)
            responsive[run, channel] = True
            rf_class[run, channel] = "center-surround" if center_surround else "oriented"
            metrics["osi"][run, channel] = (
                rng.uniform(0.0, 0.2) if center_surround else rng.uniform(0.5, 0.9)
            )
            metrics["symmetry"][run, channel] = (
                rng.uniform(0.7, 0.95) if center_surround else rng.uniform(0.1, 0.4)
            )
            metrics["dog_r2"][run, channel] = rng.uniform(0.7, 0.99)
        if n_bn >= 3:  # one unit that answers but fits no template
            rf_class[run, 0] = "unclassified"
    epochs = np.arange(1, n_epochs + 1)
    decay = np.exp(-epochs / 3.0)
    train_loss = np.array([1.2 + 1.0 * decay + rng.normal(0, 0.03, n_epochs) for _ in rows])
    test_acc = np.array([0.55 - 0.3 * decay + rng.normal(0, 0.01, n_epochs) for _ in rows])
    data_vars = {
        "rf": (("run", "channel", "y", "x"), rf),
        "responsive": (("run", "channel"), responsive),
        "present": (("run", "channel"), present),
        "rf_class": (("run", "channel"), rf_class.astype(str)),
        **{name: (("run", "channel"), value) for name, value in metrics.items()},
        "train_loss": (("run", "epoch"), train_loss),
        "test_loss": (("run", "epoch"), train_loss + 0.1),
        "train_acc": (("run", "epoch"), test_acc + 0.05),
        "test_acc": (("run", "epoch"), test_acc),
    }
    if alignment:
        angle = np.full((n_runs, n_epochs, len(LAYERS)), np.nan)
        for run, ((_, _, _, rule, _), _) in enumerate(rows):
            if rule != "bp":  # BP has no feedback matrix: no alignment
                angle[run] = 85 - 45 * (1 - decay)[:, None] + rng.normal(0, 2, (n_epochs, 3))
        data_vars["alignment_deg"] = (("run", "epoch", "layer"), angle)
    return xr.Dataset(
        data_vars,
        coords={
            "run_id": ("run", [f"{c[0]}-s{s}" for c, s in rows]),
            "preset": ("run", [c[0] for c, _ in rows]),
            "rank": ("run", [c[1] for c, _ in rows]),
            "n_bn": ("run", [c[2] for c, _ in rows]),
            "seed": ("run", [s for _, s in rows]),
            "rule": ("run", [c[3] for c, _ in rows]),
            "epoch": epochs,
            "layer": LAYERS,
            "channel": np.arange(n_channels),
        },
        attrs={"rf_method": "gradient", "package_version": "0.1.0"},
    )


@pytest.fixture(scope="module")
def results():
    return make_results()


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def _png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", header[16:24])


# ------------------------------------------------------------------------------ export
def test_pdf_embeds_truetype_type42_fonts_not_type3(tmp_path):
    """Design 12: vector PDF with editable text (pdf.fonttype = 42)."""
    fig, ax = figures.new_figure("single")
    ax.plot([0, 1], [0, 1])
    ax.set_xlabel("Retina output channels (N$_{bn}$)")  # mathtext too
    ax.set_ylabel("Alignment angle (\u00b0)")
    paths = figures.export_panel(fig, "fonts", out_dir=tmp_path)
    pdf = paths["pdf"].read_bytes()
    assert pdf.startswith(b"%PDF")
    assert b"/FontFile2" in pdf  # embedded TrueType program
    assert b"/Type3" not in pdf


def test_svg_keeps_text_as_text_elements(tmp_path):
    """Design 12: SVG text stays editable (svg.fonttype = none), not glyph paths."""
    fig, ax = figures.new_figure("single")
    ax.set_title("Radial symmetry")
    svg = figures.export_panel(fig, "text", out_dir=tmp_path, formats=["svg"])["svg"].read_text()
    assert "<text" in svg and "Radial symmetry" in svg


@pytest.mark.parametrize(
    ("width", "dpi", "expected_px"), [("single", 300, 1004), ("double", 150, 1063), (60, 200, 472)]
)
def test_png_has_journal_width_at_dpi(tmp_path, width, dpi, expected_px):
    """Design 12: single column 85 mm, double 180 mm; the PNG is width/25.4*dpi pixels wide."""
    fig, ax = figures.new_figure(width, height_mm=40)
    ax.plot([0, 1], [1, 0])
    png = figures.export_panel(fig, "size", out_dir=tmp_path, dpi=dpi)["png"]
    png_width, png_height = _png_size(png)
    assert abs(png_width - expected_px) <= 1
    assert abs(png_height - 40 / 25.4 * dpi) <= 1


def test_export_writes_three_formats_named_after_panel_and_no_temp_files(tmp_path):
    """Every output is written atomically: only the three final files remain."""
    fig, _ = figures.new_figure("single")
    paths = figures.export_panel(fig, "symmetry_vs_rank", out_dir=tmp_path / "panels")
    assert set(paths) == {"pdf", "svg", "png"}
    assert sorted(p.name for p in (tmp_path / "panels").iterdir()) == [
        "symmetry_vs_rank.pdf",
        "symmetry_vs_rank.png",
        "symmetry_vs_rank.svg",
    ]
    # no creation date inside: re-exporting an unchanged panel gives identical vector files
    again = figures.export_panel(fig, "symmetry_vs_rank", out_dir=tmp_path / "again")
    for fmt in ("pdf", "svg"):
        assert again[fmt].read_bytes() == paths[fmt].read_bytes()


def test_export_rejects_bad_panel_name_and_writes_nothing(tmp_path):
    """Bad input gets a clear error and leaves no file behind."""
    fig, _ = figures.new_figure("single")
    with pytest.raises(ConfigError, match="panel name"):
        figures.export_panel(fig, "../escape", out_dir=tmp_path)
    with pytest.raises(ConfigError, match="format"):
        figures.export_panel(fig, "ok", out_dir=tmp_path, formats=["jpg"])
    assert list(tmp_path.iterdir()) == []


def test_new_figure_rejects_unknown_width():
    with pytest.raises(ConfigError, match="single"):
        figures.new_figure("triple")


# ------------------------------------------------------------------------------- style
def test_paper_style_sets_editable_fonts_small_text_and_restores():
    """One consistent style: fonttype 42, 7-8 pt text, thin spines; scoped to the block."""
    before = matplotlib.rcParams["pdf.fonttype"]
    with figures.paper_style():
        rc = matplotlib.rcParams
        assert rc["pdf.fonttype"] == 42 and rc["ps.fonttype"] == 42
        assert rc["svg.fonttype"] == "none"
        for key in (
            "font.size",
            "axes.labelsize",
            "xtick.labelsize",
            "legend.fontsize",
            "axes.titlesize",
        ):
            assert 7 <= rc[key] <= 8
        assert rc["axes.linewidth"] <= 0.8
    assert matplotlib.rcParams["pdf.fonttype"] == before


def test_condition_colors_are_fixed_and_distinct_per_preset():
    """Each condition keeps one color across panels; the paper's presets never share one."""
    known = [c[0] for c in CONDITIONS]
    colors = [figures.condition_color(p) for p in known]
    assert len(set(colors)) == len(known)
    assert figures.condition_color("raf-r2") == figures.condition_color("raf-r2")
    assert figures.condition_color("raf-r8") == figures.condition_color("raf-r8")
    assert figures.condition_color("raf-r8").startswith("#")


# ------------------------------------------------------------------------ aggregation
def test_per_run_metric_ignores_unresponsive_padded_and_nan_units():
    """A seed's value is the mean over its present, responsive units with finite values."""
    ds = make_results(n_seeds=1, n_channels=4)
    ds["osi"][:, 3] = 100.0  # unresponsive unit: a huge value must not count
    ds["osi"][0, 1] = np.nan
    ds["present"][0, 2] = False  # padding (as a bottleneck run has) must not count either
    ds["osi"][0, 2] = 50.0
    per_run = figures.per_run_metric(ds, "osi")
    assert per_run.dims == ("run",)
    assert per_run[0] == pytest.approx(float(ds["osi"][0, 0]))
    assert float(per_run.max()) < 1.0


def test_fraction_center_surround_counts_responsive_units():
    ds = make_results(n_seeds=1, n_channels=4)
    ds["rf_class"][0] = ["center-surround", "center-surround", "oriented", "unresponsive"]
    ds["responsive"][0] = [True, True, True, False]
    assert figures.per_run_metric(ds, "fraction_center_surround")[0] == pytest.approx(2 / 3)


def test_unknown_metric_is_a_clear_error(results):
    with pytest.raises(DataError, match="no metric 'nope'.*osi"):
        figures.per_run_metric(results, "nope")


# ------------------------------------------------------------------------------ panels
def test_rank_plot_uses_runs_without_feedforward_bottleneck(results):
    """Fig. 4c: symmetry vs feedback rank from the n_bn == 32 runs, BP as the reference,
    labelled BP (it has no feedback rank); every seed is a point; n is in the title; the
    y-label says the values are over responsive units."""
    fig = figures.plot_metric_vs_rank(results, "symmetry")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "4", "32", "BP"]
    assert [t.get_text() for t in ax.texts] == ["RAF"]  # rule header over the RAF ranks
    points = [c for c in ax.collections if isinstance(c, PathCollection)]  # the scatter dots
    assert sum(len(c.get_offsets()) for c in points) == 4 * 2  # 4 groups x 2 seeds
    assert ax.get_title() == "n = 2 seeds per condition\nbars: mean \u00b1 s.d."
    assert "of responsive units" in ax.get_ylabel()
    low, high = ax.get_ylim()  # the unit interval, with margins for values at 0 and 1
    assert -0.1 < low < 0.0 and 1.0 < high < 1.1 and ax.spines["left"].get_bounds() == (0.0, 1.0)


def test_points_at_zero_stay_visible_with_their_mean(results):
    """RAF runs whose fraction is exactly 0 are drawn above the x-axis line, not on it."""
    zero = results.copy(deep=True)
    raf_r2 = zero["preset"].values == "raf-r2"
    zero["rf_class"][raf_r2] = xr.where(zero["rf_class"][raf_r2] == "center-surround",
                                        "oriented", zero["rf_class"][raf_r2])  # fmt: skip
    fig = figures.plot_metric_vs_rank(zero, "fraction_center_surround")
    ax = fig.axes[0]
    assert ax.get_ylim()[0] < 0.0  # the x-axis line sits below 0
    (means,) = [line for line in ax.lines if line.get_marker() == "_"]  # mean per condition
    assert np.asarray(means.get_ydata(), float)[0] == 0.0  # raf-r2, drawn and visible


def test_one_seed_per_condition_draws_the_runs_without_a_mean_or_bars(results):
    """With n = 1 everywhere a mean tick would repeat the point and an s.d. does not exist:
    only the runs are drawn, and the title says there is no spread."""
    one = results.isel(run=np.flatnonzero(results["seed"].values == 0))
    ax = figures.plot_metric_vs_rank(one, "symmetry").axes[0]
    assert ax.get_title() == "n = 1 seed per condition\neach point one run: no spread to show"
    assert not [line for line in ax.lines if line.get_marker() == "_"]
    points = [c for c in ax.collections if isinstance(c, PathCollection)]
    assert sum(len(c.get_offsets()) for c in points) == 4


def test_unequal_seed_counts_show_n_under_each_tick(results):
    fewer = results.isel(run=[i for i in range(results.sizes["run"]) if i != 8])  # raf-r2 s0
    ticks = [
        t.get_text() for t in figures.plot_metric_vs_rank(fewer, "osi").axes[0].get_xticklabels()
    ]
    assert ticks == ["2\n(1)", "4\n(2)", "32\n(2)", "BP\n(2)"]
    assert figures.plot_metric_vs_rank(fewer, "osi").axes[0].get_title() == (
        "(n) = seeds per condition\nbars: mean \u00b1 s.d."
    )


def test_nbn_plot_uses_bp_runs_and_shows_draf_apart(results):
    """Fig. 4b/d: metric vs feedforward bottleneck for BP runs; dRAF at the right."""
    fig = figures.plot_metric_vs_nbn(results, "osi")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["1", "2", "4", "32", "4"]
    assert [t.get_text() for t in fig.axes[0].texts] == ["BP", "dRAF"]
    fig = figures.plot_metric_vs_nbn(results, "osi", compare_draf=False)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "4", "32"]


def test_panels_read_a_tidy_per_run_table(results):
    """The metric-vs-condition panels plot seaborn's tidy input: one row per run."""
    table, order = figures.axis_table(results, "osi", "rank")
    assert order == ["raf:2", "raf:4", "raf:32", "bp:32"]
    assert len(table) == 8 and {"preset", "seed", "value", "group", "tick"} <= set(table.columns)


def test_fraction_panel_labels_fit_and_skip_nbn_without_bottlenecks(results, tmp_path):
    """The two x-labels of the single-column fraction panel stay inside the figure; without
    bottleneck runs only the rank panel is drawn."""
    fig = figures.plot_fraction_center_surround(results)
    assert len(fig.axes) == 2
    fig.canvas.draw()
    figure_box = fig.bbox
    for ax in fig.axes:
        box = ax.xaxis.label.get_window_extent()
        assert box.x0 >= figure_box.x0 - 1 and box.x1 <= figure_box.x1 + 1
        assert "of responsive units" in fig.axes[0].get_ylabel()
    full_width = results.isel(run=np.flatnonzero(results["n_bn"].values == 32))
    full_width = full_width.isel(run=np.flatnonzero(full_width["rule"].values != "draf"))
    assert len(figures.plot_fraction_center_surround(full_width).axes) == 1


def test_rank_plot_without_matching_runs_is_a_clear_error(results):
    bp_bottleneck = results.isel(run=np.flatnonzero(results["n_bn"].values < 32))
    with pytest.raises(DataError, match="n_bn == 32"):
        figures.plot_metric_vs_rank(bp_bottleneck, "osi")


def _tile_labels(fig):
    return [t.get_text() for t in fig.axes[0].texts]


def test_rf_montage_is_symmetric_about_zero_and_labelled_by_channel_and_class(results):
    """RFs on a diverging map symmetric about 0 with colorbar ticks -1, 0, +1; each tile
    labelled with its channel and its class; silent units drawn as gray tiles."""
    run = results.isel(run=0)
    fig = figures.plot_rf_montage(run["rf"], classes=run["rf_class"].values, title="bp, seed 0")
    (image,) = fig.axes[0].images
    assert image.get_clim() == (-1, 1)
    colorbar = fig.axes[1]
    assert [t.get_text() for t in colorbar.get_yticklabels()] == ["\u22121", "0", "+1"]
    labels = _tile_labels(fig)
    channels = [str(c) for c in run["channel"].values]
    assert labels[0:2] == ["0", "U"] and labels[-3:-1] == [channels[-1], "\u2013"]
    assert set(labels[3:-3:2]) <= {"CS", "OR"}
    assert labels[-1] == "5 px"  # the scale bar
    gray = [p for p in fig.axes[0].patches if p.get_fill()]
    assert len(gray) == 1  # the zero RF: nothing to scale, a gray tile


def test_class_legend_of_a_narrow_montage_wraps_inside_the_figure(results):
    """Four RFs of four classes: the class legend under the montage does not fit one line of
    the narrow figure, so it wraps (two classes a line) and the figure grows to hold it;
    a double-column row of eight keeps it on one line."""
    rfs = results["rf"].isel(run=0, channel=slice(0, 4))
    four = ["center-surround", "oriented", "unclassified", "unresponsive"]
    narrow = figures.plot_rf_montage(rfs, classes=four)
    legend = narrow._supxlabel.get_text()
    assert legend.count("\n") == 1 and legend.splitlines()[0].startswith("CS center-surround")
    wide_rfs = results["rf"].isel(run=0).isel(channel=[0, 1, 2, 3, 4, 5, 0, 1])
    wide = figures.plot_rf_montage(wide_rfs, classes=four * 2, width="double")
    assert "\n" not in wide._supxlabel.get_text()


def test_montage_crops_tiles_to_the_rf_support():
    """retina_2 (two 9x9 layers) sees 17x17 input pixels: its montage tiles are 17x17, not
    the 32x32 input grid."""
    rng = np.random.default_rng(0)
    rfs = xr.DataArray(
        rng.normal(size=(4, 32, 32)),
        dims=("channel", "y", "x"),
        coords={"channel": np.arange(4)},
        attrs={"support": [8, 25, 8, 25]},
    )
    assert figures.montage_tiles(rfs).shape == (4, 17, 17)
    fig = figures.plot_rf_montage(rfs, ncols=2)
    height, width = fig.axes[0].images[0].get_array().shape
    pad = (width - 2 * 17) // 3
    assert width == 2 * 17 + 3 * pad and height == 2 * 17 + 3 * pad
    assert figures.montage_tiles(rfs, support=[0, 32, 0, 32]).shape == (4, 32, 32)


def test_run_support_of_old_results_comes_from_the_config(tmp_path):
    """Results written before the support attribute: opening them derives the crop box from
    the runs' kernel size and the RF layer (retina_2, 9x9 kernels, 32x32 images: rows 8-24);
    a dense layer, or runs whose boxes differ, give none (the whole grid)."""
    from analysis.results import open_results

    def opened(ds, name):
        ds.to_netcdf(tmp_path / name, engine="h5netcdf")
        with open_results(tmp_path / name) as reopened:
            return reopened.load()

    config = "model:\n  kernel_size: {}\n  image_size: 32\n"
    ds = xr.Dataset({"config": ("run", [config.format(9)] * 2)}, attrs={"rf_layer": "retina_2"})
    assert figures.run_support(opened(ds, "old.nc"), 0) == [8, 25, 8, 25]
    assert figures.run_support(opened(ds, "old.nc"), 1) == [8, 25, 8, 25]
    dense = opened(ds.assign_attrs(rf_layer="fc_1"), "dense.nc")
    assert figures.run_support(dense, 0) is None
    sectioned = "model:\n  image_size: 32\n  retina:\n    kernel_size: 9\n"
    both = ds.assign(config=("run", [config.format(9), sectioned]))  # either layout of a config
    assert figures.run_support(opened(both, "both.nc"), 1) == [8, 25, 8, 25]
    mixed = ds.assign(config=("run", [config.format(9), config.format(5)]))
    assert figures.run_support(opened(mixed, "mixed.nc"), 0) is None
    today = opened(ds.assign_attrs(rf_support=[4, 28, 4, 28]), "today.nc")
    assert figures.run_support(today, 1) == [4, 28, 4, 28]  # as written


def test_one_montage_function_for_cli_notebooks_and_panels(results, monkeypatch, run_cli, tmp_path):
    """One owner: the per-run montages of notebooks, the paper panels and the PNG of
    `retina-raf rfs` are all drawn by analysis.figures.montage.plot_rf_montage, and the
    rf_atlas notebook draws its montages with plot_run_rfs."""
    import ast

    import nbformat

    import analysis.rf
    from analysis.figures import montage

    calls = []
    original = montage.plot_rf_montage
    monkeypatch.setattr(
        montage, "plot_rf_montage", lambda *a, **k: calls.append(1) or original(*a, **k)
    )
    figures.plot_run_rfs(results, 0)
    dict(figures.paper_panels(results))["rf_montage_bp"]()
    assert len(calls) == 2
    # `retina-raf rfs`, its RFs mapped by a stand-in (no trained run needed)
    rfs = xr.DataArray(
        np.random.default_rng(0).normal(size=(3, 13, 13)),
        dims=("channel", "y", "x"),
        coords={"channel": [0, 1, 2], "responsive": ("channel", [True, True, False])},
        attrs={"layer": "retina_2", "method": "gradient"},
        name="rf",
    )
    monkeypatch.setattr(analysis.rf, "extract_rfs", lambda *a, **k: rfs)
    code, _, err = run_cli("rfs", tmp_path / "run", "--method", "gradient",
                           "--out", tmp_path / "rfs.nc")  # fmt: skip
    assert code == 0, err
    assert len(calls) == 3 and (tmp_path / "rfs.png").read_bytes()[:4] == b"\x89PNG"
    # the notebook's code (its syntax tree, IPython magics aside) calls plot_run_rfs
    notebook = Path(__file__).resolve().parents[1] / "notebooks" / "rf_atlas.ipynb"
    cells = nbformat.read(notebook, as_version=4).cells
    lines = [line for cell in cells if cell.cell_type == "code"
             for line in cell.source.splitlines() if not line.lstrip().startswith("%")]  # fmt: skip
    called = {node.func.id for node in ast.walk(ast.parse("\n".join(lines)))
              if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}  # fmt: skip
    assert "plot_run_rfs" in called
    assert {name for name in called if "montage" in name} <= set(vars(montage))


def test_alignment_without_variable_is_a_clear_error(results):
    with pytest.raises(DataError, match="alignment_deg"):
        figures.plot_alignment(results.drop_vars("alignment_deg"))


def test_every_plot_function_produces_panel_files(results, tmp_path):
    """Each paper-style panel renders from a tiny results dataset and exports."""
    drawn = {
        "montage": figures.plot_rf_montage(results["rf"].isel(run=1).dropna("channel", how="all")),
        "rank": figures.plot_metric_vs_rank(results, "symmetry"),
        "nbn": figures.plot_metric_vs_nbn(results, "symmetry"),
        "cs": figures.plot_fraction_center_surround(results),
        "curves": figures.plot_learning_curves(results),
        "alignment": figures.plot_alignment(results),
    }
    for name, fig in drawn.items():
        png = figures.export_panel(fig, name, out_dir=tmp_path, dpi=100, formats=["png"])["png"]
        assert png.stat().st_size > 1000
    titles = [ax.get_title() for ax in drawn["alignment"].axes if ax.get_title()]
    assert titles == ["vvs_1 (into retina)", "vvs_2", "fc_1"]
    assert "feedback B\nvs. forward W" in drawn["alignment"].axes[0].get_ylabel()  # what vs what


@pytest.mark.slow
def test_export_paper_panels_writes_expected_set(results, tmp_path):
    """All paper panels from a results file: montages per condition, metrics vs rank and
    vs N_bn, fraction center-surround, learning curves, alignment."""
    from retina_raf.io import write_netcdf

    path = write_netcdf(results, tmp_path / "results.nc")
    written = figures.export_paper_panels(path, tmp_path / "figures", dpi=80, formats=["png"])
    stems = {p.stem for p in written}
    expected = {f"rf_montage_{c[0]}" for c in CONDITIONS} | {
        "symmetry_vs_rank",
        "symmetry_vs_nbn",
        "osi_vs_rank",
        "osi_vs_nbn",
        "fraction_center_surround",
        "learning_curves",
        "alignment",
    }
    assert stems == expected
    assert len(written) == len(expected)
    assert all(p.exists() for p in written)


def test_a_report_leaves_the_paper_panels_to_the_figures_command(results, tmp_path):
    """One writer per panel file: paper_panel_names are the panels export_paper_panels
    (`retina-raf figures`) draws, the montages those of each condition's lowest seed, and
    export_report_panel, through which the notebooks export, writes none of them."""
    names = figures.paper_panel_names(results)
    assert names == {name for name, _ in figures.paper_panels(results)}
    assert {"osi_vs_rank", "learning_curves", "alignment"} <= names
    montages = figures.paper_montage_runs(results)
    assert sorted(montages.values()) == sorted(f"rf_montage_{c[0]}" for c in CONDITIONS)
    assert all(results["seed"].values[run] == 0 for run in montages)
    assert set(montages.values()) <= names
    fig, _ = figures.new_figure("single")
    try:
        assert figures.export_report_panel(fig, "osi_vs_rank", tmp_path, names) == {}
        written = figures.export_report_panel(
            fig, "fraction_center_surround_vs_rank", tmp_path, names, formats=["svg"]
        )
    finally:
        plt.close(fig)
    assert list(written.values()) == [tmp_path / "fraction_center_surround_vs_rank.svg"]
    assert [path.name for path in tmp_path.iterdir()] == ["fraction_center_surround_vs_rank.svg"]


def test_export_paper_panels_without_bottleneck_runs_writes_no_nbn_panel(results, tmp_path):
    """A file without bottleneck runs (here: only RAF runs, no RFs, no alignment) exports
    what it can and no *_vs_nbn panel at all, as the compare_ranks notebook does."""
    raf_only = results.drop_vars(["alignment_deg", "rf"]).isel(
        run=np.flatnonzero(results["rule"].values == "raf")
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error", figures.PanelSkipped)  # nothing attempted and skipped
        written = figures.export_paper_panels(raf_only, tmp_path, dpi=60, formats=["png"])
    assert {p.stem for p in written} == {
        "symmetry_vs_rank",
        "osi_vs_rank",
        "fraction_center_surround",
        "learning_curves",
    }
    with_bp = results.isel(run=np.flatnonzero(results["n_bn"].values == 32))
    names = [name for name, _ in figures.paper_panels(with_bp)]
    assert not [name for name in names if name.endswith("_vs_nbn")]


def test_panels_and_summary_table_list_conditions_in_one_order(results):
    """The summary table's rows follow the panels' order: feedback ranks ascending, then
    the bottlenecks by N_bn (bp is their full-width end), then dRAF."""
    from analysis import stats

    order = list(stats.summary_table(results, ["osi"])["condition"])
    assert order == ["raf-r2", "raf-r4", "raf-r32", "bp-bottleneck-1", "bp-bottleneck-2",
                     "bp-bottleneck-4", "bp", "draf-bottleneck-4"]  # fmt: skip
    montages = [name for name, _ in figures.paper_panels(results) if name.startswith("rf_")]
    assert montages == [f"rf_montage_{preset}" for preset in order]


def test_export_paper_panels_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="none.nc"):
        figures.export_paper_panels(tmp_path / "none.nc", tmp_path / "figures")
    assert not (tmp_path / "figures").exists()


# --------------------------------------------------------------------------------- CLI
def _cli(args, capsys):
    from retina_raf_cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(args)
    captured = capsys.readouterr()
    return exit_info.value.code, captured.out, captured.err


@pytest.mark.slow
def test_cli_figures_exports_panels(results, tmp_path, capsys):
    from retina_raf.io import write_netcdf

    path = write_netcdf(results.isel(run=slice(0, 4)), tmp_path / "results.nc")
    code, out, err = _cli(
        [
            "figures",
            str(path),
            "--out",
            str(tmp_path / "fig"),
            "--dpi",
            "80",
            "--format",
            "png",
            "--format",
            "svg",
        ],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "fig" / "learning_curves.svg").exists()
    assert not (tmp_path / "fig" / "learning_curves.pdf").exists()
    assert str(tmp_path / "fig") in out


def test_cli_figures_missing_file_exits_2_with_one_line(tmp_path, capsys):
    code, out, err = _cli(
        ["figures", str(tmp_path / "missing.nc"), "--out", str(tmp_path / "fig")], capsys
    )
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "missing.nc" in err
    assert not (tmp_path / "fig").exists()


def test_montage_panel_of_bottleneck_run_shows_only_its_real_channels(results):
    """A bottleneck run (N_bn = 1) has one retina output unit; NaN padding is not drawn."""
    panels = dict(figures.paper_panels(results))
    fig = panels["rf_montage_bp-bottleneck-1"]()
    assert _tile_labels(fig)[:2] == ["0", "CS"] or _tile_labels(fig)[:2] == ["0", "OR"]
    assert len(_tile_labels(fig)) == 3  # one tile (channel, class) and the scale bar
    assert fig.get_suptitle() == "bp-bottleneck-1, seed 0"


def test_subspace_angle_panel_shows_only_low_rank_raf_runs(results, tmp_path):
    """P's principal angle to the error's top subspace (vvs_1) over epochs: one curve per
    low-rank RAF condition (raf-r2, raf-r4); full-rank RAF, dRAF and BP have no meaningful
    angle and are left out; a file without it is a clear error; export_paper_panels adds it."""
    angle = np.linspace(80, 10, results.sizes["epoch"])
    radians = np.deg2rad(np.broadcast_to(angle[None, :, None], (results.sizes["run"],
                         results.sizes["epoch"], len(LAYERS))))  # fmt: skip
    with_angle = results.assign(principal_angle_max_rad=(("run", "epoch", "layer"), radians))
    fig = figures.plot_subspace_angle(with_angle)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert labels == ["raf-r2 (n=2)", "raf-r4 (n=2)"]
    np.testing.assert_allclose(fig.axes[0].lines[0].get_ydata(), angle)
    assert "P vs top-r error subspace" in fig.axes[0].get_ylabel()
    assert fig.axes[0].get_title() == "vvs_1 (into retina)"  # the layer, as the alignment panel
    assert "subspace_angle" in dict(figures.paper_panels(with_angle))
    with pytest.raises(DataError, match="principal_angle_max_rad"):
        figures.plot_subspace_angle(results)


def test_a_fractions_bar_stops_at_1_and_the_panel_says_what_its_bars_are(results):
    """Fractions of units cannot pass 0 or 1: a condition whose seeds are 0, 1 and 1 has mean
    0.67 and s.d. 0.58; its bar is cut at 1, and the title says mean +- s.d., cut at [0, 1]."""
    import matplotlib

    fig = figures.plot_fraction_center_surround(results)
    for ax in fig.axes:
        bars = [line for line in ax.lines
                if isinstance(line, matplotlib.lines.Line2D) and line.get_marker() in
                (None, "None", "", " ") and len(line.get_ydata()) == 2]  # fmt: skip
        for line in bars:
            low, high = sorted(np.asarray(line.get_ydata(), float))
            assert 0.0 <= low and high <= 1.0
    assert "cut at [0, 1]" in fig.axes[0].get_title()
    interval = figures.panels._sd_within(0.0, 1.0)
    low, high = interval([0.0, 1.0, 1.0])
    assert low == pytest.approx(2 / 3 - np.std([0, 1, 1], ddof=1)) and high == 1.0


def test_the_error_subspace_history_panel_draws_where_p_was_per_epoch():
    """One column per run whose P has fewer rows than the eigenvectors recorded: each
    eigenvector's overlap with P's rows (top) and eigenvalue share (bottom) against the
    epoch; a full-rank run (every overlap 1 by construction) is left out."""
    import pandas as pd

    rows = [("low", epoch, 2, i, 0.3 / i, overlap, 0.9)
            for epoch, overlaps in ((1, (1.0, 0.0, 1.0)), (2, (1.0, 0.6, 0.4)))
            for i, overlap in enumerate(overlaps, start=1)]  # fmt: skip
    rows += [("full", 1, 3, i, 0.3, 1.0, 1.0) for i in (1, 2, 3)]
    from analysis.alignment import ERROR_SUBSPACE_COLUMNS

    history = pd.DataFrame(rows, columns=list(ERROR_SUBSPACE_COLUMNS))
    fig = figures.plot_error_subspace_history(history)
    top, bottom = fig.axes[:2]
    assert top.get_title().startswith("low") and len(fig.axes) == 2  # "full" not drawn
    second = top.lines[1]  # eigenvector 2: P left the (1, 3) saddle toward it
    assert second.get_xdata().tolist() == [1, 2] and second.get_ydata().tolist() == [0.0, 0.6]
    assert bottom.lines[2].get_ydata().tolist() == pytest.approx([0.1, 0.1])
    with pytest.raises(DataError, match="fewer P rows"):
        figures.plot_error_subspace_history(history[history["run"] == "full"])
