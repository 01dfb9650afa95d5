"""Figure panels (DESIGN.md section 12): one style, editable vector text, journal widths,
and the paper-style panels drawn from a results dataset (section 11 schema)."""

from __future__ import annotations

import struct
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
    """Fig. 4c: symmetry vs feedback rank from the n_bn == 32 runs, BP as the reference;
    every seed is a point."""
    fig = figures.plot_metric_vs_rank(results, "symmetry")
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["2", "4", "32", "32"]
    assert [t.get_text() for t in ax.texts] == ["RAF", "BP"]  # rule headers over the groups
    points = [c for c in ax.collections if isinstance(c, PathCollection)]  # the scatter dots
    assert sum(len(c.get_offsets()) for c in points) == 4 * 2  # 4 groups x 2 seeds
    low, high = ax.get_ylim()  # the unit interval, with headroom for values at 1
    assert low == 0.0 and 1.0 < high < 1.1 and ax.spines["left"].get_bounds() == (0.0, 1.0)


def test_nbn_plot_uses_bp_runs_and_shows_draf_apart(results):
    """Fig. 4b/d: metric vs feedforward bottleneck for BP runs; dRAF at the right."""
    fig = figures.plot_metric_vs_nbn(results, "osi")
    labels = [t.get_text() for t in fig.axes[0].get_xticklabels()]
    assert labels == ["1", "2", "4", "32", "4"]
    assert [t.get_text() for t in fig.axes[0].texts] == ["BP", "dRAF"]
    fig = figures.plot_metric_vs_nbn(results, "osi", compare_draf=False)
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == ["1", "2", "4", "32"]


def test_rank_plot_without_matching_runs_is_a_clear_error(results):
    bp_bottleneck = results.isel(run=np.flatnonzero(results["n_bn"].values < 32))
    with pytest.raises(DataError, match="n_bn == 32"):
        figures.plot_metric_vs_rank(bp_bottleneck, "osi")


def test_rf_montage_is_symmetric_about_zero_and_labelled_by_class(results):
    """RFs on a diverging map symmetric about 0, each labelled with its class; padding and
    silent units drawn as empty squares."""
    run = results.isel(run=0)
    fig = figures.plot_rf_montage(run["rf"], classes=run["rf_class"].values, title="bp, seed 0")
    images = [ax.images[0] for ax in fig.axes if ax.images]
    assert len(images) == results.sizes["channel"]
    assert all(im.get_clim() == (-1, 1) for im in images)
    titles = [ax.get_title() for ax in fig.axes if ax.images]
    assert titles[0] == "U" and titles[-1] == "\u2013"
    assert set(titles[1:-1]) <= {"CS", "OR"}
    assert np.ma.getmaskarray(images[-1].get_array()).all()  # zero RF: nothing to scale, gray


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
    alignment_axes = [ax for ax in drawn["alignment"].axes if ax.get_title() in LAYERS]
    assert len(alignment_axes) == len(LAYERS)


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


def test_export_paper_panels_skips_panels_without_data(results, tmp_path):
    """A file with only RAF runs (no BP, no dRAF) and no RFs or alignment still exports what
    it can; the bottleneck panels are skipped with a warning naming them."""
    raf_only = results.drop_vars(["alignment_deg", "rf"]).isel(
        run=np.flatnonzero(results["rule"].values == "raf")
    )
    with pytest.warns(figures.PanelSkipped) as caught:
        written = figures.export_paper_panels(raf_only, tmp_path, dpi=60, formats=["png"])
    assert {p.stem for p in written} == {
        "symmetry_vs_rank",
        "osi_vs_rank",
        "fraction_center_surround",
        "learning_curves",
    }
    skipped = " ".join(str(w.message) for w in caught)
    assert "symmetry_vs_nbn" in skipped and "osi_vs_nbn" in skipped


def test_export_paper_panels_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="none.nc"):
        figures.export_paper_panels(tmp_path / "none.nc", tmp_path / "figures")
    assert not (tmp_path / "figures").exists()


# --------------------------------------------------------------------------------- CLI
def _cli(args, capsys):
    from retina_raf.cli import main

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
    panels = dict(figures._paper_panels(results))
    fig = panels["rf_montage_bp-bottleneck-1"]()
    assert sum(bool(ax.images) for ax in fig.axes) == 1
    assert fig.get_suptitle() == "bp-bottleneck-1, seed 0"
