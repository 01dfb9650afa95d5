"""Grayscale CIFAR-10: loading, the embedded sample, and batched augmentation (docs/design.md#data).

Images are kept as uint8 grayscale arrays ``(N, 32, 32)`` (exactly what the shared
``cifar10_gray_uint8.npz`` holds) and become floats in [0, 1] only per batch, so the whole
training set fits on a GPU as one uint8 tensor and augmentation runs there.

The Fig. 3 networks (docs/design.md#fig3-networks) read the same sources in colour:
``rgb=True`` keeps ``(N, 32, 32, 3)``; :func:`load_cifar100` reads torchvision's CIFAR-100
(fine labels), and :func:`select_classes` keeps a subset of the classes, relabelled 0..d-1
(the offline stand-in for the paper's CIFAR-100 subsets of Fig. 3c).

Sources accepted by :func:`load_cifar10`:

- a data set name, ``cifar10-gray`` or ``cifar10`` (:data:`DATA_SETS`): its file in the data
  root (:func:`data_root`: ``--data-root``, else ``$RETINA_RAF_DATA``, else ``data/``), which
  ``retina-raf data fetch cifar10`` (:func:`fetch_cifar10`) writes;
- an ``.npz`` with ``x_train, y_train, x_test, y_test`` (uint8; RGB ``N x 32 x 32 x 3`` or
  gray ``N x 32 x 32``);
- a torchvision ``cifar-10-batches-py`` folder (or the folder that contains it);
- ``None``: the embedded sample shipped in ``data/``.

:func:`resolve_data` is the one place where a name becomes a file.
"""

from __future__ import annotations

import json
import os
import pickle
import shlex
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from retina_raf.errors import DataError
from retina_raf.io import atomic_path

CLASSES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
IMAGE_SIZE = 32
GRAY_CONVERSIONS = ("mean", "luma")
REPO_ROOT = Path(__file__).resolve().parent.parent
EMBEDDED_SAMPLE = REPO_ROOT / "data" / "cifar10_gray_sample.npz"
_ARRAYS = ("x_train", "y_train", "x_test", "y_test")
# Named data sets: name -> file in the data root. The file names are those of the shared
# copies (cifar10_uint8.npz, cifar10_gray_uint8.npz), so a folder holding them is a data root.
DATA_SETS = {"cifar10": "cifar10_uint8.npz", "cifar10-gray": "cifar10_gray_uint8.npz"}
# What `retina-raf data fetch NAME` writes: the data sets of each fetchable name.
FETCHES = {"cifar10": ("cifar10", "cifar10-gray")}
DATA_ROOT_ENV = "RETINA_RAF_DATA"
DEFAULT_DATA_ROOT = REPO_ROOT / "data"
# ITU-R 601-2 luma, the weights of torchvision's Grayscale / PIL's "L" mode.
_LUMA = np.array([0.299, 0.587, 0.114])


@dataclass(frozen=True)
class GrayCifar10:
    """Grayscale CIFAR-10 (or a subset of it), as uint8 arrays; RGB when loaded with
    ``rgb=True`` (then ``gray`` is ``rgb``), CIFAR-100 from :func:`load_cifar100`.

    Attributes:
        x_train: (N_train, 32, 32) uint8, 0..255; (N_train, 32, 32, 3) in RGB.
        y_train: (N_train,) int64 labels 0..9 (0..99 for CIFAR-100, 0..d-1 for a subset).
        x_test: (N_test, 32, 32) uint8.
        y_test: (N_test,) int64.
        source: where it was read from.
        gray: the grayscale conversion applied to RGB sources (``mean`` or ``luma``);
            ``as stored`` when the source was already gray.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    source: str
    gray: str

    def train_stats(self) -> tuple[float, float]:
        """Mean and (population) std of the training pixels in [0, 1] units."""
        x = self.x_train.astype(np.float64) / 255.0
        return float(x.mean()), float(x.std())

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and (population) std of the training pixels in [0, 1] units: one
        value each for gray images, three for RGB."""
        pixels = self.x_train.reshape(-1, self.channels)
        total, squares = np.zeros(self.channels), np.zeros(self.channels)
        for start in range(0, len(pixels), 1 << 20):  # chunks: no full float copy in memory
            chunk = pixels[start : start + (1 << 20)].astype(np.float64)
            total += chunk.sum(axis=0)
            squares += np.square(chunk).sum(axis=0)
        n = len(pixels)
        mean = total / n
        std = np.sqrt(np.maximum(squares / n - mean**2, 0.0))
        return tuple(float(v) for v in mean / 255.0), tuple(float(v) for v in std / 255.0)

    @property
    def channels(self) -> int:
        """1 for gray images, 3 for RGB."""
        return 3 if self.x_train.ndim == 4 else 1

    @property
    def n_classes(self) -> int:
        """Number of classes: one more than the largest label."""
        return int(max(self.y_train.max(), self.y_test.max())) + 1


# --------------------------------------------------------------------- named data sets
def data_set_name(path: str | None) -> str | None:
    """The name of :data:`DATA_SETS` whose file ``path`` is (by its file name, wherever it
    lies), the name itself for a name, else None."""
    if path is None:
        return None
    if path in DATA_SETS:
        return path
    file_name = Path(path).name
    return next((name for name, file in DATA_SETS.items() if file == file_name), None)


def data_root(root: str | os.PathLike | None = None) -> Path:
    """The folder where data set names resolve: ``root`` (a command's ``--data-root``), else
    the environment variable ``RETINA_RAF_DATA``, else ``data/`` of the repository (the
    folder of the embedded sample, where ``retina-raf data fetch`` writes by default)."""
    if root is not None and str(root).strip():
        return Path(root).expanduser()
    from_env = os.environ.get(DATA_ROOT_ENV, "").strip()
    return Path(from_env).expanduser() if from_env else DEFAULT_DATA_ROOT


def is_data_path(source: str | os.PathLike) -> bool:
    """Whether a data source is a path rather than a data set name: a ``Path``, or text that
    contains a ``/``, ends in ``.npz`` or names an existing folder."""
    if not isinstance(source, str):
        return True
    return "/" in source or os.sep in source or source.endswith(".npz") or Path(source).is_dir()


def fetch_command(name: str, root: str | os.PathLike | None = None) -> str:
    """The command that writes the file of data set ``name`` into the data root ``root``."""
    fetched_by = next(key for key, names in FETCHES.items() if name in names)
    root = data_root(root)
    if root.resolve() == DEFAULT_DATA_ROOT.resolve():
        return f"retina-raf data fetch {fetched_by}"
    return f"retina-raf data fetch {fetched_by} --data-root {shlex.quote(str(root))}"


def resolve_data(
    source: str | os.PathLike | None,
    root: str | os.PathLike | None = None,
    must_exist: bool = True,
) -> Path | None:
    """The file or folder that a data source (``data.path`` of a run, ``data:`` of an
    experiment file, ``--data``) stands for.

    - ``None`` stays ``None``: the embedded sample (:func:`load_cifar10` reads it);
    - a path (:func:`is_data_path`) is returned as given; a relative one stays relative to
      the current folder;
    - a data set name of :data:`DATA_SETS` becomes its file in the data root
      (:func:`data_root` of ``root``): ``cifar10-gray`` -> ``<root>/cifar10_gray_uint8.npz``,
      ``cifar10`` -> ``<root>/cifar10_uint8.npz``.

    Run configs keep the source as written (the name, or the path as given), never what it
    resolves to, so a run's ``config.yaml`` means the same data on every machine.

    Raises:
        DataError: an unknown name (the message lists the known ones); with ``must_exist``,
            a named data set whose file is missing (the message gives the command that
            fetches it).
    """
    if source is None:
        return None
    if is_data_path(source):
        return Path(source)
    if source not in DATA_SETS:
        known = ", ".join(sorted(DATA_SETS))
        raise DataError(
            f"unknown data set {source!r} (known: {known}; or a path to an .npz file or a "
            "cifar-10-batches-py folder)"
        )
    path = data_root(root) / DATA_SETS[source]
    if must_exist and not path.exists():
        raise DataError(
            f"data set {source}: {path} not found; fetch it with `{fetch_command(source, root)}`"
        )
    return path


# ---------------------------------------------------------------------------- loading
def to_gray(x_rgb: np.ndarray, method: str = "mean") -> np.ndarray:
    """Convert uint8 RGB images ``(N, H, W, 3)`` to uint8 gray ``(N, H, W)``.

    ``mean`` averages R, G and B (Lindsey et al.'s code); ``luma`` uses ITU-R 601 weights.
    Both round to the nearest integer (ties to even), as the shared gray file does.
    """
    if method not in GRAY_CONVERSIONS:
        raise DataError(f"unknown grayscale conversion {method!r} (allowed: mean, luma)")
    x = x_rgb.astype(np.float64)
    gray = x.mean(axis=-1) if method == "mean" else x @ _LUMA
    return np.rint(gray).astype(np.uint8)


def load_cifar10(
    path: str | Path | None = None,
    gray: str = "mean",
    download: bool = False,
    rgb: bool = False,
) -> GrayCifar10:
    """Load CIFAR-10 as grayscale uint8 arrays (or RGB ones).

    Args:
        path: an ``.npz`` file, a ``cifar-10-batches-py`` folder or its parent, or ``None``
            for the embedded sample. With ``download=True``, a folder where torchvision
            downloads the data set if it is not there yet.
        gray: ``mean`` (default) or ``luma``; applied to RGB sources only.
        download: fetch with ``torchvision.datasets.CIFAR10`` (needs internet).
        rgb: keep the colour channels, ``(N, 32, 32, 3)``; a gray source is a DataError.

    Raises:
        DataError: missing path, unreadable/corrupt file, missing arrays, wrong shapes,
            dtypes or labels.
    """
    if gray not in GRAY_CONVERSIONS:
        raise DataError(f"unknown grayscale conversion {gray!r} (allowed: mean, luma)")
    if path is None:
        if download:
            raise DataError("download=True needs a folder to download into")
        path = EMBEDDED_SAMPLE
    elif not download:
        path = resolve_data(path)
    path = Path(path)
    if download:
        _download(path)
    if not path.exists():
        hint = " (run `make sample` or pass --data)" if path == EMBEDDED_SAMPLE else ""
        raise DataError(f"no such file or folder: {path}{hint}")
    arrays = _read_folder(path) if path.is_dir() else _read_npz(path)
    return _validate(arrays, source=str(path), gray=gray, rgb=rgb)


def load_cifar100(path: str | Path, rgb: bool = True, gray: str = "mean",
                  download: bool = False) -> GrayCifar10:  # fmt: skip
    """Load CIFAR-100 (100 fine labels) from torchvision's ``cifar-100-python`` folder.

    Args:
        path: the ``cifar-100-python`` folder or the folder that holds it (where
            ``torchvision.datasets.CIFAR100(root=path, download=True)`` puts it).
        rgb: keep the colour channels (default); else gray by ``gray``.
        download: fetch it there with torchvision first (needs internet).

    Raises:
        DataError: no such folder, missing or corrupt ``train`` / ``test`` files.
    """
    path = Path(path)
    if download:
        import torchvision

        try:
            for train in (True, False):
                torchvision.datasets.CIFAR100(root=str(path), train=train, download=True)
        except Exception as exc:  # network errors come in many types
            raise DataError(f"could not download CIFAR-100 into {path}: {exc}") from exc
    if (path / "cifar-100-python").is_dir():
        path = path / "cifar-100-python"
    missing = [name for name in ("train", "test") if not (path / name).is_file()]
    if missing:
        raise DataError(
            f"{path} is not a cifar-100-python folder ({missing[0]} is missing); fetch it with "
            f"torchvision.datasets.CIFAR100(root=..., download=True) where there is internet"
        )
    (x_train, y_train), (x_test, y_test) = (_read_batch(path / n) for n in ("train", "test"))
    arrays = {"x_train": x_train, "y_train": y_train, "x_test": x_test, "y_test": y_test}
    return _validate(arrays, source=str(path), gray=gray, rgb=rgb, n_classes=100)


def select_classes(ds: GrayCifar10, classes) -> GrayCifar10:
    """Keep only the images of ``classes`` in train and test, relabelled 0..d-1.

    Args:
        ds: a loaded data set.
        classes: an int d (the classes 0..d-1) or a sequence of distinct labels; the i-th
            listed class becomes label i. The order of the images is kept.
    """
    listed = list(range(classes)) if isinstance(classes, (int, np.integer)) else list(classes)
    if len(listed) < 2 or len(set(listed)) != len(listed):
        raise DataError(f"classes: need at least two distinct classes, got {classes!r}")
    bad = [c for c in listed if not 0 <= int(c) < ds.n_classes]
    if bad:
        raise DataError(f"classes: {bad[0]} is not a class of {ds.source} (0..{ds.n_classes - 1})")
    relabel = np.full(ds.n_classes, -1, dtype=np.int64)
    relabel[np.asarray(listed, dtype=np.int64)] = np.arange(len(listed))
    kept = {}
    for split in ("train", "test"):
        y = relabel[getattr(ds, f"y_{split}")]
        keep = np.flatnonzero(y >= 0)
        kept[f"x_{split}"] = getattr(ds, f"x_{split}")[keep]
        kept[f"y_{split}"] = y[keep]
    return GrayCifar10(**kept, source=f"{ds.source} (classes {listed})", gray=ds.gray)


def _download(root: Path) -> None:
    import torchvision

    try:
        for train in (True, False):
            torchvision.datasets.CIFAR10(root=str(root), train=train, download=True)
    except Exception as exc:  # network errors come in many types
        raise DataError(f"could not download CIFAR-10 into {root}: {exc}") from exc


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    # np.load takes anything that is neither a zip nor a .npy for a pickle, and then refuses
    # "pickled data": say what the file is not instead
    try:
        with open(path, "rb") as handle:
            magic = handle.read(6)
    except OSError as exc:
        raise DataError(f"cannot read {path}: {exc.strerror or exc}") from None
    if magic.startswith(b"\x93NUMPY"):
        raise DataError(f"{path} is a single .npy array, not an .npz with {', '.join(_ARRAYS)}")
    if not magic.startswith(b"PK"):
        raise DataError(f"{path} is not an .npz file (not a zip archive of numpy arrays)")
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [name for name in _ARRAYS if name not in npz.files]
            if missing:
                raise DataError(
                    f"{path} has no array {missing[0]!r} (an .npz needs {', '.join(_ARRAYS)})"
                )
            return {name: npz[name] for name in _ARRAYS}
    except DataError:
        raise
    except (zipfile.BadZipFile, EOFError, OSError, ValueError, KeyError) as exc:
        raise DataError(f"cannot read {path}: truncated or corrupt .npz ({exc})") from exc


def _read_folder(path: Path) -> dict[str, np.ndarray]:
    if (path / "cifar-10-batches-py").is_dir():
        path = path / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)]
    missing = [n for n in [*names, "test_batch"] if not (path / n).is_file()]
    if missing:
        raise DataError(f"{path} is not a cifar-10-batches-py folder: {missing[0]} is missing")
    train = [_read_batch(path / n) for n in names]
    x_test, y_test = _read_batch(path / "test_batch")
    return {
        "x_train": np.concatenate([x for x, _ in train]),
        "y_train": np.concatenate([y for _, y in train]),
        "x_test": x_test,
        "y_test": y_test,
    }


def _read_batch(file: Path) -> tuple[np.ndarray, np.ndarray]:
    """One pickled torchvision/CIFAR batch -> (N, 32, 32, 3) uint8 and (N,) labels."""
    try:
        with open(file, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
        data = np.asarray(entry["data"], dtype=np.uint8)
        labels = np.asarray(entry.get("labels", entry.get("fine_labels")))
        images = data.reshape(-1, 3, IMAGE_SIZE, IMAGE_SIZE).transpose(0, 2, 3, 1)
    except Exception as exc:  # any unpickling or reshape failure means a bad file
        raise DataError(f"cannot read {file}: truncated or corrupt batch ({exc})") from exc
    return np.ascontiguousarray(images), labels


def _validate(
    arrays: dict[str, np.ndarray], source: str, gray: str, rgb: bool = False, n_classes: int = 10
) -> GrayCifar10:
    out: dict[str, np.ndarray] = {}
    was_rgb = False
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8:
            raise DataError(f"{source}: x_{split} has dtype {x.dtype}, expected uint8")
        if rgb and x.shape[1:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
            raise DataError(
                f"{source}: x_{split} has shape {x.shape}, expected N x 32 x 32 x 3 (colour "
                "images were asked for: data.rgb)"
            )
        if x.ndim == 4 and x.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE, 3):
            x = x if rgb else to_gray(x, gray)
            was_rgb = True
        elif not (x.ndim == 3 and x.shape[1:] == (IMAGE_SIZE, IMAGE_SIZE)):
            raise DataError(
                f"{source}: x_{split} has shape {x.shape}, expected N x 32 x 32 x 3 or N x 32 x 32"
            )
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{source}: y_{split} has shape {y.shape}, expected ({len(x)},)")
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{source}: y_{split} has dtype {y.dtype}, expected integers")
        if len(y) and (y.min() < 0 or y.max() > n_classes - 1):
            raise DataError(
                f"{source}: y_{split} has labels in {y.min()}..{y.max()}, "
                f"expected 0..{n_classes - 1}"
            )
        if len(x) == 0:
            raise DataError(f"{source}: x_{split} is empty")
        out[f"x_{split}"] = np.ascontiguousarray(x)
        out[f"y_{split}"] = y.astype(np.int64)
    kept = "rgb" if rgb else gray
    return GrayCifar10(**out, source=source, gray=kept if was_rgb else "as stored")


def describe(ds: GrayCifar10) -> str:
    """A short human-readable summary: counts, per-class counts, shape, mean and std."""
    mean, std = ds.train_stats()
    lines = [f"source: {ds.source} (gray: {ds.gray})"]
    for split, y in (("train", ds.y_train), ("test", ds.y_test)):
        counts = np.bincount(y, minlength=10)
        lines.append(f"{split}: {len(y)} images, per class: " + " ".join(map(str, counts)))
    kind = "RGB" if ds.channels == 3 else "gray"
    lines.append(f"image shape: {ds.x_train.shape[1]} x {ds.x_train.shape[2]} ({kind}, uint8)")
    lines.append(f"train mean {mean:.4f}, std {std:.4f} (pixels in [0, 1])")
    return "\n".join(lines)


# --------------------------------------------------------------------- the embedded sample
def make_sample(
    source: str | Path,
    out: str | Path,
    train_per_class: int = 400,
    test_per_class: int = 100,
    gray: str = "mean",
) -> Path:
    """Write a class-balanced grayscale subset of CIFAR-10 as a compressed ``.npz``.

    Deterministic: the first ``train_per_class`` (``test_per_class``) images of each class
    in the original order, kept in that order. Written atomically.
    """
    full = load_cifar10(source, gray=gray)
    picked = {}
    for split, per_class in (("train", train_per_class), ("test", test_per_class)):
        x, y = getattr(full, f"x_{split}"), getattr(full, f"y_{split}")
        counts = np.bincount(y, minlength=10)
        if counts.min() < per_class:
            raise DataError(
                f"{source}: a class has only {counts.min()} {split} images, fewer than {per_class}"
            )
        index = np.sort(np.concatenate([np.flatnonzero(y == c)[:per_class] for c in range(10)]))
        picked[f"x_{split}"], picked[f"y_{split}"] = x[index], y[index].astype(np.uint8)
    meta = {
        "source": Path(full.source).name,  # the file a data set name stands for
        "gray": full.gray,
        "train_per_class": train_per_class,
        "test_per_class": test_per_class,
        "selection": "first N per class, original order",
    }
    out = Path(out)
    if out.suffix != ".npz":
        raise DataError(f"--out must end in .npz, got {out}")
    with atomic_path(out) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                **picked,
                classes=np.array(CLASSES),
                meta=np.array(json.dumps(meta, sort_keys=True)),
            )
    return out


# --------------------------------------------------------------------- fetching CIFAR-10
def fetch_cifar10(
    root: str | os.PathLike | None = None,
    source: str | os.PathLike | None = None,
    log=print,
) -> list[Path]:
    """Write full CIFAR-10 into the data root as the files the names ``cifar10`` and
    ``cifar10-gray`` resolve to: ``cifar10_uint8.npz`` (RGB) and ``cifar10_gray_uint8.npz``.

    Both hold ``x_train, y_train, x_test, y_test, classes`` in the original order with uint8
    labels, as the shared copies do; the gray images are :func:`to_gray`'s ``mean`` of R, G
    and B, the conversion :func:`load_cifar10` applies, so a run reads the same pixels from
    either file. Each file is written atomically (a temporary file, then a rename).

    Args:
        root: the data root (:func:`data_root`).
        source: where to read RGB CIFAR-10 from instead of downloading it: a
            ``cifar10_uint8.npz`` or a torchvision ``cifar-10-batches-py`` folder (or its
            parent). Without it the RGB file already in the root is used, else torchvision
            downloads CIFAR-10 (needs internet) into a temporary folder of the root.
        log: called with each progress message.

    Returns:
        The files written; none when both were there already.

    Raises:
        DataError: no internet (nor ``source``), or a source that is not RGB CIFAR-10.
    """
    root = data_root(root)
    targets = {name: root / DATA_SETS[name] for name in FETCHES["cifar10"]}
    missing = {name: path for name, path in targets.items() if not path.exists()}
    if not missing:
        names = " and ".join(path.name for path in targets.values())
        log(f"cifar10: {names} already in {root}; nothing to do")
        return []
    if source is not None:
        log(f"reading CIFAR-10 from {source}")
        arrays = _read_rgb_cifar10(Path(source))
    elif "cifar10" not in missing:
        log(f"making the gray copy of {targets['cifar10']}")
        arrays = _read_rgb_cifar10(targets["cifar10"])
    else:
        arrays = _download_rgb_cifar10(root, log)
    written = []
    for name, path in missing.items():
        images = arrays if name == "cifar10" else _gray_arrays(arrays)
        log(f"writing {path} ({len(images['x_train'])} + {len(images['x_test'])} images)")
        written.append(_write_cifar10_npz(images, path))
        log(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return written


def _read_rgb_cifar10(path: Path) -> dict[str, np.ndarray]:
    """RGB CIFAR-10 from an ``.npz`` or a ``cifar-10-batches-py`` folder, validated."""
    if not path.exists():
        raise DataError(f"no such file or folder: {path}")
    arrays = _read_folder(path) if path.is_dir() else _read_npz(path)
    if arrays["x_train"].ndim != 4:
        raise DataError(
            f"{path} holds gray images; CIFAR-10 is made from the RGB ones (a "
            "cifar10_uint8.npz or a cifar-10-batches-py folder)"
        )
    return _rgb_arrays(arrays, str(path))


def _rgb_arrays(arrays: dict, source: str) -> dict[str, np.ndarray]:
    ds = _validate(arrays, source=source, gray="mean", rgb=True)
    return {name: getattr(ds, name) for name in _ARRAYS}


def _download_rgb_cifar10(root: Path, log) -> dict[str, np.ndarray]:
    """Download CIFAR-10 with torchvision into a temporary folder of ``root``, read it, and
    remove the folder (the .npz files are what the project reads)."""
    import torchvision

    folder = root / ".cifar10-download"
    log(f"downloading CIFAR-10 (about 170 MB) with torchvision into {folder}")
    try:
        train, test = (
            torchvision.datasets.CIFAR10(root=str(folder), train=split, download=True)
            for split in (True, False)
        )
        arrays = {"x_train": np.asarray(train.data), "y_train": np.asarray(train.targets),
                  "x_test": np.asarray(test.data), "y_test": np.asarray(test.targets)}  # fmt: skip
    except Exception as exc:  # network errors come in many types
        reason = " ".join(str(getattr(exc, "reason", exc) or type(exc).__name__).split())
        raise DataError(
            f"could not download CIFAR-10 ({reason}); without internet, read an existing copy "
            "with `retina-raf data fetch cifar10 --from PATH` (a cifar10_uint8.npz or a "
            "cifar-10-batches-py folder)"
        ) from exc
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return _rgb_arrays(arrays, "torchvision's CIFAR-10")


def _gray_arrays(rgb: dict[str, np.ndarray], chunk: int = 5000) -> dict[str, np.ndarray]:
    """The gray copy, converted in chunks: a float copy of all 60,000 RGB images at once
    would take 1.5 GB."""
    gray = dict(rgb)
    for split in ("x_train", "x_test"):
        x = rgb[split]
        gray[split] = np.concatenate([to_gray(x[i : i + chunk]) for i in range(0, len(x), chunk)])
    return gray


def _write_cifar10_npz(arrays: dict[str, np.ndarray], path: Path) -> Path:
    """The layout of the shared copies: uint8 images and labels, then the class names."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(
                handle,
                x_train=arrays["x_train"],
                y_train=arrays["y_train"].astype(np.uint8),
                x_test=arrays["x_test"],
                y_test=arrays["y_test"].astype(np.uint8),
                classes=np.array(CLASSES),
            )
    return path


# ----------------------------------------------------------------------- tensors on device
class DeviceData:
    """One split of the data set as a single uint8 tensor on a device, served in batches.

    Args:
        images: (N, 32, 32) uint8 array, or (N, 32, 32, 3) RGB (stored as (N, 3, 32, 32)).
        labels: (N,) int array.
        device: where the tensors live (augmentation runs there too).
        mean, std: standardization in [0, 1] units (``None``: leave pixels in [0, 1]); a
            number, or one per channel.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        device="cpu",
        mean: float | tuple[float, ...] | None = None,
        std: float | tuple[float, ...] | None = None,
    ):
        images = torch.from_numpy(np.ascontiguousarray(images)).to(device)
        if images.dim() == 4:  # (N, H, W, C) -> (N, C, H, W), contiguous: batches are rows
            self.images = images.permute(0, 3, 1, 2).contiguous()
        else:
            self.images = images.unsqueeze(1)
        self.labels = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(device)
        if isinstance(mean, (tuple, list)):  # per channel, broadcast over (B, C, H, W)
            mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
            std = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.mean, self.std = mean, std

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device

    def to_float(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 in [0, 1], standardized if mean/std were given."""
        x = images_uint8.float().div_(255.0)
        if self.mean is not None:
            x = (x - self.mean) / self.std
        return x

    def batches(
        self,
        batch_size: int,
        generator: torch.Generator | None = None,
        augmenter: Augmenter | None = None,
        drop_last: bool = False,
    ):
        """Yield ``(x, y)`` float batches; shuffled when ``generator`` is given.

        ``drop_last``: skip the last, short batch (training: every step then has the same
        shapes, which compiled and cuDNN-benchmarked code wants; a shuffled epoch skips a
        different remainder each time).
        """
        n = len(self)
        if drop_last and n >= batch_size:
            n -= n % batch_size
        order = (
            torch.randperm(n, generator=generator, device=generator.device)
            if generator is not None
            else torch.arange(n, device=self.device)
        )
        order = order.to(self.device)[:n]
        for start in range(0, n, batch_size):
            index = order[start : start + batch_size]
            x = self.to_float(self.images[index])
            if augmenter is not None:
                x = augmenter(x)
            yield x, self.labels[index]


# ------------------------------------------------------------------------- augmentation
class Augmenter:
    """Batched random shifts and horizontal flips, as tensor ops on the batch's device.

    Lindsey et al. used Keras' ``width/height_shift_range=0.1`` and horizontal flips. Here
    each image is shifted by an integer number of pixels drawn uniformly from
    ``[-s, s]`` with ``s = floor(max_shift * size)`` (3 pixels on 32 x 32) independently in
    y and x; pixels shifted in copy the nearest edge pixel (Keras' default ``nearest``
    fill). Each image is mirrored left-right with probability ``flip_prob``.

    Args:
        seed: seeds the augmenter's own generator, so a run is reproducible.
        device: device of the generator; must match the batches it augments.
        max_shift: fraction of the image size.
        flip_prob: probability of a horizontal flip (0 disables flips).
        train: ``False`` makes the augmenter the identity (evaluation mode).
    """

    def __init__(
        self,
        seed: int = 0,
        device="cpu",
        max_shift: float = 0.1,
        flip_prob: float = 0.5,
        train: bool = True,
    ):
        if not 0.0 <= max_shift < 0.5:
            raise ValueError(f"max_shift must be in [0, 0.5), got {max_shift}")
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(seed)
        self.max_shift, self.flip_prob, self.train = max_shift, flip_prob, train

    def eval(self) -> Augmenter:
        self.train = False
        return self

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """Augment a batch ``(B, C, H, W)``; returns a new tensor of the same shape."""
        if not self.train:
            return x
        b, _, h, w = x.shape
        s = int(self.max_shift * min(h, w))
        dev = self.generator.device
        shift = torch.randint(-s, s + 1, (2, b), generator=self.generator, device=dev)
        flip = torch.rand(b, generator=self.generator, device=dev) < self.flip_prob
        shift, flip = shift.to(x.device), flip.to(x.device)
        if s > 0:
            # output pixel (i, j) reads input pixel (i - dy, j - dx), clamped to the image
            rows = (torch.arange(h, device=x.device)[None, :] - shift[0][:, None]).clamp_(0, h - 1)
            cols = (torch.arange(w, device=x.device)[None, :] - shift[1][:, None]).clamp_(0, w - 1)
            x = x.gather(2, rows[:, None, :, None].expand(-1, x.shape[1], -1, w))
            x = x.gather(3, cols[:, None, None, :].expand(-1, x.shape[1], h, -1))
        return torch.where(flip[:, None, None, None], x.flip(-1), x)
