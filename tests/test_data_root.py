"""Named data sets (docs/design.md#data): `data: cifar10-gray` resolves in the data root
(--data-root, else RETINA_RAF_DATA, else data/), `retina-raf data fetch cifar10` writes the
files those names stand for, and neither the root nor the name changes a run's id or its
config."""

from __future__ import annotations

import os
import shutil
import socket
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torchvision
import yaml

from retina_raf.data import (
    DATA_ROOT_ENV,
    DATA_SETS,
    DEFAULT_DATA_ROOT,
    data_root,
    resolve_data,
    to_gray,
)
from retina_raf.errors import DataError
from retina_raf.sweep import expand, load_experiment

REPO = Path(__file__).resolve().parents[1]
# a tiny network, so that training on a tiny data set takes about a second
TINY_SETS = [
    "model.retina.retina_channels=4",
    "model.retina.vvs_channels=4",
    "model.retina.vvs_layers=1",
    "model.retina.kernel_size=5",
    "model.retina.fc_units=16",
    "train.batch_size=16",
    "train.progress=false",
    "train.deterministic=false",
    "train.retina_snapshots=false",
]


@pytest.fixture(autouse=True)
def no_data_root_from_outside(monkeypatch):
    """Each test starts without RETINA_RAF_DATA (CI sets it) and gets it back afterwards."""
    monkeypatch.delenv(DATA_ROOT_ENV, raising=False)


def tiny_rgb(n: int, seed: int) -> tuple[np.ndarray, list[int]]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), [i % 10 for i in range(n)]


class FakeCIFAR10:
    """Stands in for torchvision.datasets.CIFAR10(download=True): 30 training and 10 test
    images, and a file in the download folder as a real download would leave."""

    roots: list[str] = []

    def __init__(self, root: str, train: bool = True, download: bool = False):
        assert download
        FakeCIFAR10.roots.append(root)
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "cifar-10-python.tar.gz").write_bytes(b"archive")
        self.data, self.targets = tiny_rgb(30 if train else 10, seed=0 if train else 1)


class OfflineCIFAR10:
    """torchvision.datasets.CIFAR10 without internet: the URLError urllib raises."""

    def __init__(self, root: str, train: bool = True, download: bool = False):
        Path(root).mkdir(parents=True, exist_ok=True)
        (Path(root) / "cifar-10-python.tar.gz.partial").write_bytes(b"")
        raise urllib.error.URLError(socket.gaierror(-2, "Name or service not known"))


@pytest.fixture
def fake_download(monkeypatch):
    FakeCIFAR10.roots = []
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", FakeCIFAR10)
    return FakeCIFAR10


def write_gray_set(path: Path, n_train: int = 48, n_test: int = 16) -> Path:
    """A tiny gray CIFAR-10 .npz in the layout of cifar10_gray_uint8.npz."""
    rng = np.random.default_rng(0)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, x_train=rng.integers(0, 256, (n_train, 32, 32), dtype=np.uint8),
             y_train=np.arange(n_train, dtype=np.uint8) % 10,
             x_test=rng.integers(0, 256, (n_test, 32, 32), dtype=np.uint8),
             y_test=np.arange(n_test, dtype=np.uint8) % 10)  # fmt: skip
    return path


def write_experiment(folder: Path, data: str) -> Path:
    path = folder / "named.yaml"
    path.write_text(yaml.safe_dump({"name": "named", "presets": ["bp", "raf-r4"], "seeds": 2,
                                    "data": data}))  # fmt: skip
    return path


# ---------------------------------------------------------------------------- data fetch
def test_fetch_writes_rgb_and_gray_files_into_the_data_root(tmp_path, run_cli, fake_download):
    """`data fetch cifar10 --data-root DIR` writes cifar10_uint8.npz (RGB) and
    cifar10_gray_uint8.npz (mean of R, G and B, as the loader converts) there, in the
    layout of the shared copies, and leaves no download folder or temporary file behind."""
    root = tmp_path / "root"
    code, out, err = run_cli("data", "fetch", "cifar10", "--data-root", root)
    assert code == 0, err
    assert sorted(p.name for p in root.iterdir()) == sorted(DATA_SETS.values())
    assert all(Path(r).parent == root for r in fake_download.roots)
    assert "downloading" in out and "wrote" in out
    (x_train, y_train), (x_test, y_test) = tiny_rgb(30, 0), tiny_rgb(10, 1)
    with np.load(root / "cifar10_uint8.npz") as rgb, np.load(root / "cifar10_gray_uint8.npz") as g:
        assert rgb.files == g.files == ["x_train", "y_train", "x_test", "y_test", "classes"]
        np.testing.assert_array_equal(rgb["x_train"], x_train)
        np.testing.assert_array_equal(rgb["y_test"], y_test)
        assert rgb["y_train"].dtype == g["y_train"].dtype == np.uint8
        np.testing.assert_array_equal(g["y_train"], y_train)
        np.testing.assert_array_equal(g["x_train"], to_gray(x_train, "mean"))
        by_hand = np.rint(x_test.astype(np.float64).mean(axis=-1)).astype(np.uint8)
        np.testing.assert_array_equal(g["x_test"], by_hand)
        assert list(g["classes"][:2]) == ["airplane", "automobile"]


def test_fetch_again_does_nothing_and_says_so(tmp_path, run_cli, fake_download):
    """A second fetch finds both files, downloads nothing and rewrites nothing."""
    root = tmp_path / "root"
    assert run_cli("data", "fetch", "cifar10", "--data-root", root)[0] == 0
    stamps = {p.name: p.stat().st_mtime_ns for p in root.iterdir()}
    fake_download.roots = []
    code, out, _ = run_cli("data", "fetch", "cifar10", "--data-root", root)
    assert code == 0 and "nothing to do" in out
    assert fake_download.roots == []
    assert {p.name: p.stat().st_mtime_ns for p in root.iterdir()} == stamps


def test_fetch_writes_where_retina_raf_data_says(tmp_path, run_cli, fake_download, monkeypatch):
    """Without --data-root, the files go to $RETINA_RAF_DATA."""
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "from_env"))
    assert run_cli("data", "fetch", "cifar10")[0] == 0
    assert (tmp_path / "from_env" / "cifar10_gray_uint8.npz").is_file()


def test_fetch_offline_fails_in_one_line_with_exit_2(tmp_path, run_cli, monkeypatch):
    """Without internet: exit status 2, one line on stderr that says how to do without a
    download, no traceback, and nothing left in the data root."""
    monkeypatch.setattr(torchvision.datasets, "CIFAR10", OfflineCIFAR10)
    root = tmp_path / "root"
    code, _, err = run_cli("data", "fetch", "cifar10", "--data-root", root)
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "could not download CIFAR-10" in err and "--from" in err
    assert not root.exists() or list(root.iterdir()) == []


def test_fetch_from_an_existing_copy(tmp_path, run_cli, fake_download):
    """--from an RGB .npz copies it (no download) and makes the gray copy; a gray source is
    refused in one line."""
    x, y = tiny_rgb(20, 2)
    source = tmp_path / "copy.npz"
    np.savez(source, x_train=x, y_train=np.array(y), x_test=x[:10], y_test=np.array(y[:10]))
    root = tmp_path / "root"
    code, _, err = run_cli("data", "fetch", "cifar10", "--data-root", root, "--from", source)
    assert code == 0, err
    assert fake_download.roots == []
    with np.load(root / "cifar10_gray_uint8.npz") as gray:
        np.testing.assert_array_equal(gray["x_train"], to_gray(x))
    gray_source = write_gray_set(tmp_path / "gray.npz")
    code, _, err = run_cli("data", "fetch", "cifar10", "--data-root", tmp_path / "other",
                           "--from", gray_source)  # fmt: skip
    assert code == 2 and len(err.strip().splitlines()) == 1 and "gray images" in err


# ------------------------------------------------------------------------- resolution
def test_a_name_resolves_under_the_data_root_env_and_default(tmp_path, monkeypatch):
    """`data: cifar10-gray` of an experiment file stays the name in every run's config and
    resolves to <root>/cifar10_gray_uint8.npz: --data-root first, else RETINA_RAF_DATA, else
    data/ of the repository."""
    runs = expand(load_experiment(write_experiment(tmp_path, "cifar10-gray")))
    assert {run.config().data.path for run in runs} == {"cifar10-gray"}
    name = "cifar10-gray"
    assert data_root() == DEFAULT_DATA_ROOT == REPO / "data"
    assert resolve_data(name, must_exist=False) == REPO / "data" / "cifar10_gray_uint8.npz"
    monkeypatch.setenv(DATA_ROOT_ENV, str(tmp_path / "env"))
    assert resolve_data(name, must_exist=False) == tmp_path / "env" / "cifar10_gray_uint8.npz"
    given = resolve_data(name, tmp_path / "given", must_exist=False)
    assert given == tmp_path / "given" / "cifar10_gray_uint8.npz"
    assert resolve_data("cifar10", tmp_path, must_exist=False) == tmp_path / "cifar10_uint8.npz"


@pytest.mark.parametrize("how", ["--data-root", "env"])
def test_sweep_looks_for_a_named_set_in_the_data_root(tmp_path, run_cli, monkeypatch, how):
    """A sweep of a file with `data: cifar10-gray` looks for <root>/cifar10_gray_uint8.npz
    and, when it is missing, says which command fetches it, before training anything."""
    root = tmp_path / "root"
    exp = write_experiment(tmp_path, "cifar10-gray")
    if how == "env":
        monkeypatch.setenv(DATA_ROOT_ENV, str(root))
        args = []
    else:
        args = ["--data-root", root]
    code, _, err = run_cli("sweep", exp, "--out", tmp_path / "out", *args)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert str(root / "cifar10_gray_uint8.npz") in err
    assert f"retina-raf data fetch cifar10 --data-root {root}" in err
    assert not (tmp_path / "out").exists()
    assert os.environ.get(DATA_ROOT_ENV) == (str(root) if how == "env" else None)


def test_missing_file_in_the_default_root_names_the_plain_fetch_command():
    """In data/ of the repository the command to run is plain `retina-raf data fetch cifar10`."""
    if (DEFAULT_DATA_ROOT / DATA_SETS["cifar10"]).exists():
        pytest.skip("CIFAR-10 was fetched into data/ of this checkout")
    with pytest.raises(DataError, match=r"fetch it with `retina-raf data fetch cifar10`$"):
        resolve_data("cifar10")


def test_unknown_name_fails_in_one_line_listing_the_known_names(tmp_path, run_cli):
    """`data info`, a sweep and `train` given an unknown name: exit 2, one line."""
    out = tmp_path / "out"
    for args in (
        ["data", "info", "cifar-10"],
        ["sweep", write_experiment(tmp_path, "cifar-10"), "--out", out],
        ["train", "--preset", "bp", "--data", "cifar-10", "--out", out],
    ):
        code, _, err = run_cli(*args)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert "unknown data set 'cifar-10'" in err and "cifar10, cifar10-gray" in err
    assert not out.exists()


def test_paths_are_still_paths(tmp_path, monkeypatch):
    """Anything with a '/', ending in .npz, or naming an existing folder is a path, returned
    as given (relative to the current folder)."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cifar10").mkdir()
    for source in ("../shared/x.npz", "x.npz", "cifar10", "/abs/cifar-10-batches-py"):
        assert resolve_data(source) == Path(source)
    assert resolve_data(None) is None


# --------------------------------------------------------------------- run ids, configs
def test_run_id_and_config_do_not_depend_on_the_data_root(tmp_path, run_cli, monkeypatch):
    """The same run trained with the name under one root is finished under another root and
    through the file's own path (one run folder); its config.yaml keeps the name, and the
    command leaves RETINA_RAF_DATA as it found it."""
    first, second = tmp_path / "a", tmp_path / "b"
    write_gray_set(first / "cifar10_gray_uint8.npz")
    shutil.copytree(first, second)
    out = tmp_path / "runs"
    train = ["train", "--preset", "bp", "--epochs", "1", "--device", "cpu", "--out", out]
    train += [f"--set={item}" for item in TINY_SETS]
    code, stdout, err = run_cli(*train, "--data", "cifar10-gray", "--data-root", first)
    assert code == 0, err
    run_folder = Path(stdout.strip().splitlines()[-1])
    assert os.environ.get(DATA_ROOT_ENV) is None
    config = yaml.safe_load((run_folder / "config.yaml").read_text())
    assert config["data"]["path"] == "cifar10-gray"
    assert str(tmp_path) not in (run_folder / "config.yaml").read_text()
    monkeypatch.setenv(DATA_ROOT_ENV, str(second))
    for data in ("cifar10-gray", str(second / "cifar10_gray_uint8.npz")):
        code, stdout, err = run_cli(*train, "--data", data)
        assert code == 0, err
        assert Path(stdout.strip().splitlines()[-1]) == run_folder
    assert [p.name for p in out.iterdir() if not p.name.startswith(".")] == [run_folder.name]
    assert yaml.safe_load((run_folder / "config.yaml").read_text()) == config

    exp = write_experiment(tmp_path, "cifar10-gray")
    listings = []
    for args in (["--data-root", first], ["--data-root", second], ["--data", "x.npz"]):
        code, stdout, err = run_cli("sweep", exp, "--dry-run", "--out", out, *args)
        assert code == 0, err
        listings.append([line.split()[0] for line in stdout.splitlines()[:-1]])
    assert listings[0] == listings[1] == listings[2]
    assert sorted(listings[0]) == ["bp-s0", "bp-s1", "raf-r4-s0", "raf-r4-s1"]


def test_a_published_config_names_its_data_set_not_a_machines_folder():
    """What a results or trajectories file stores of a run's config: a path to one of the
    files `data fetch` writes becomes its data set name; any other path stays as given."""
    from retina_raf import runs
    from retina_raf.config import resolve_run_config

    cfg = resolve_run_config("bp")
    cfg.data.path = "/some/machine/shared/cifar10_gray_uint8.npz"
    text = runs.published_config(cfg)
    assert "path: cifar10-gray" in text and "/some/machine" not in text
    assert cfg.data.path.startswith("/some/machine")  # the run's own config is untouched
    cfg.data.path = "/elsewhere/my_images.npz"
    assert "path: /elsewhere/my_images.npz" in runs.published_config(cfg)
