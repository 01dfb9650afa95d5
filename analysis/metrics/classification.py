"""Classification of RFs into center-surround, oriented, unclassified and unresponsive
(docs/design.md#rf-metrics), from the metrics of :mod:`analysis.metrics`.

The rule (:data:`CLASS_RULE`) and its thresholds (:data:`DEFAULT_THRESHOLDS`, calibrated on
labelled synthetic RFs by ``analysis.synthetic.calibrate_thresholds``) are documented in the
docstring of :mod:`analysis.metrics`. In memory ``rf_class`` holds the class names as
strings; in NetCDF files it is stored the CF way, as small integer codes with
``flag_values`` and ``flag_meanings`` (:func:`encode_rf_class`, :func:`decode_rf_class`), so
that CF-aware readers (ncdump, Panoply, cf-xarray) show the names.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

CLASSES = ("center-surround", "oriented", "unclassified", "unresponsive")
DEFAULT_THRESHOLDS = {
    "fit_r2_min": 0.4,
    "symmetry_min": 0.35,
    "osi_max": 0.4,
    "orientedness_min": 0.35,
}
CLASS_INPUTS = ("dog_r2", "gabor_r2", "dog_bic", "gabor_bic", "symmetry", "osi", "orientedness")
CLASS_RULE = (
    "unresponsive if flagged, constant or non-finite; else center-surround if "
    "dog_r2 >= fit_r2_min and symmetry >= symmetry_min and osi <= osi_max; else oriented if "
    "gabor_r2 >= fit_r2_min and orientedness >= orientedness_min and gabor_bic < dog_bic; "
    "else unclassified"
)
# The code of "no unit here" (the padding channels of a bottleneck run, "" in memory).
MISSING_CLASS_CODE = -1


def classify(metrics: xr.Dataset, thresholds: dict[str, float] | None = None) -> xr.DataArray:
    """``rf_class`` (strings of :data:`CLASSES`) from a metrics Dataset by the documented rule.

    Lazy on dask-backed metrics (``xr.apply_ufunc``); a boolean ``responsive`` coordinate,
    when present, marks units that never responded.
    """
    t = DEFAULT_THRESHOLDS if thresholds is None else thresholds
    missing = set(DEFAULT_THRESHOLDS) - set(t)
    if missing:
        raise ValueError(f"thresholds lack {sorted(missing)}")
    reference = metrics["symmetry"]
    if "responsive" in metrics.coords:
        responsive = metrics["responsive"].astype(bool).broadcast_like(reference)
    else:
        responsive = xr.ones_like(reference, dtype=bool)
    responsive = responsive.reset_coords(drop=True)

    def labels(responsive, *features):
        codes = classify_codes(dict(zip(CLASS_INPUTS, features, strict=True)), responsive, t)
        return np.array(CLASSES, dtype="<U15")[codes]

    rf_class = xr.apply_ufunc(
        labels,
        responsive,
        *(metrics[name] for name in CLASS_INPUTS),
        dask="parallelized",
        output_dtypes=["<U15"],
    )
    return rf_class.assign_attrs(long_name="RF class", rule=CLASS_RULE).rename("rf_class")


def classify_codes(
    features: dict[str, np.ndarray], responsive: np.ndarray, thresholds: dict[str, float]
) -> np.ndarray:
    """Class indices into :data:`CLASSES` from feature arrays (numpy core of :func:`classify`)."""
    f = features
    with np.errstate(invalid="ignore"):
        center_surround = (
            (f["dog_r2"] >= thresholds["fit_r2_min"])
            & (f["symmetry"] >= thresholds["symmetry_min"])
            & (f["osi"] <= thresholds["osi_max"])
        )
        oriented = (
            (f["gabor_r2"] >= thresholds["fit_r2_min"])
            & (f["orientedness"] >= thresholds["orientedness_min"])
            & (f["gabor_bic"] < f["dog_bic"])
        )
    codes = np.full(np.shape(f["symmetry"]), 2, dtype=np.int64)
    codes[oriented] = 1
    codes[center_surround] = 0
    unresponsive = ~np.asarray(responsive, dtype=bool) | ~np.isfinite(f["symmetry"])
    codes[unresponsive] = 3
    return codes


def threshold_attrs(thresholds: dict[str, float]) -> dict:
    """Dataset attributes that document the classification rule and its thresholds."""
    attrs = {f"rf_class_{name}": float(value) for name, value in thresholds.items()}
    attrs["rf_class_rule"] = CLASS_RULE
    attrs["rf_class_thresholds_source"] = (
        "analysis.synthetic.calibrate_thresholds(seed=0) on labelled synthetic RFs"
    )
    attrs["orientation_convention"] = (
        "degrees in [0, 180) of the RF's bars/edges, counter-clockwise from horizontal "
        "as displayed with row 0 on top"
    )
    return attrs


# ------------------------------------------------------------------------- CF encoding
def encode_rf_class(ds: xr.Dataset) -> xr.Dataset:
    """``rf_class`` as CF flags for a NetCDF file: int8 codes (index into :data:`CLASSES`,
    -1 = no unit, the ``_FillValue``) with ``flag_values`` and ``flag_meanings``.

    A dataset without a string ``rf_class`` is returned unchanged. Raises ValueError for a
    class name outside :data:`CLASSES`.
    """
    if "rf_class" not in ds or ds["rf_class"].dtype.kind not in "USO":
        return ds
    names = ds["rf_class"]
    lookup = {name: code for code, name in enumerate(CLASSES)}
    lookup[""] = MISSING_CLASS_CODE

    def to_codes(values):
        flat = np.asarray(values, dtype=str).ravel()
        unknown = sorted(set(flat) - set(lookup))
        if unknown:
            raise ValueError(f"rf_class has unknown class name(s) {unknown}")
        return np.array([lookup[v] for v in flat], dtype=np.int8).reshape(np.shape(values))

    codes = xr.apply_ufunc(to_codes, names, dask="parallelized", output_dtypes=[np.int8])
    attrs = {k: v for k, v in names.attrs.items() if k not in ("flag_values", "flag_meanings")}
    codes.attrs = {
        **attrs,
        "long_name": attrs.get("long_name", "RF class"),
        "flag_values": np.arange(len(CLASSES), dtype=np.int8),
        "flag_meanings": " ".join(CLASSES),
    }
    codes.encoding = {"_FillValue": np.int8(MISSING_CLASS_CODE)}
    return ds.assign(rf_class=codes)


def decode_rf_class(ds: xr.Dataset) -> xr.Dataset:
    """The inverse of :func:`encode_rf_class`: CF flag codes -> class names ("" = no unit).

    Files written before ``rf_class`` was encoded (strings) pass through unchanged.
    """
    if "rf_class" not in ds or "flag_meanings" not in ds["rf_class"].attrs:
        return ds
    codes = ds["rf_class"]
    meanings = np.array(codes.attrs["flag_meanings"].split() + [""], dtype="<U15")
    values = np.asarray(codes.attrs["flag_values"]).astype(int).tolist()

    def to_names(raw):
        raw = np.asarray(raw, dtype=float)  # a masked _FillValue reads back as NaN
        index = np.full(raw.shape, len(meanings) - 1)
        for position, value in enumerate(values):
            index[raw == value] = position
        return meanings[index]

    names = xr.apply_ufunc(to_names, codes, dask="parallelized", output_dtypes=["<U15"])
    names.attrs = {
        k: v for k, v in codes.attrs.items() if k not in ("flag_values", "flag_meanings")
    }
    return ds.assign(rf_class=names)


def summarize(metrics: xr.Dataset, default_condition: str = "all") -> list[str]:
    """One line per condition: fraction center-surround/oriented, mean symmetry and OSI.

    A condition is the ``preset`` (a coordinate along ``run`` or a scalar coordinate, else
    an attribute) when there is one, else the whole dataset (``default_condition``).
    Fractions and means are over the responsive RFs.
    """
    preset = metrics.coords.get("preset")
    if preset is not None and preset.ndim == 1:
        groups = [(str(name), group) for name, group in metrics.groupby("preset")]
    else:
        name = preset.item() if preset is not None else metrics.attrs.get("preset")
        groups = [(str(name) if name is not None else default_condition, metrics)]
    lines = []
    for name, group in groups:
        classes = group["rf_class"].values.ravel()
        responsive = classes != "unresponsive"
        n_responsive = int(responsive.sum())
        if n_responsive == 0:
            lines.append(f"{name}: 0/{classes.size} responsive RFs")
            continue
        fraction = {c: np.mean(classes[responsive] == c) for c in CLASSES[:2]}
        symmetry = np.nanmean(group["symmetry"].values.ravel()[responsive])
        osi = np.nanmean(group["osi"].values.ravel()[responsive])
        lines.append(
            f"{name}: {n_responsive}/{classes.size} responsive RFs, "
            f"center-surround {fraction['center-surround']:.2f}, "
            f"oriented {fraction['oriented']:.2f}, mean symmetry {symmetry:.3f}, "
            f"mean OSI {osi:.3f}"
        )
    return lines
