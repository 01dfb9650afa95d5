"""Data (docs/design.md#data): the loader on the real set, the torchvision folder format, the
embedded sample, batched augmentation, and one-line errors for bad input."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from retina_raf.data import (
    EMBEDDED_SAMPLE,
    Augmenter,
    DeviceData,
    load_cifar10,
    make_sample,
    to_gray,
)
from retina_raf.errors import DataError

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(scope="module")
def full_gray(full_data):
    return load_cifar10(full_data("cifar10-gray"))


@pytest.fixture(scope="module")
def full_rgb(full_data):
    return load_cifar10(full_data("cifar10"))


def test_full_set_counts_and_mean(full_gray):
    """50,000/10,000 images, 5,000/1,000 per class, gray training mean 0.4734 +- 0.0005."""
    assert len(full_gray.y_train) == 50_000 and len(full_gray.y_test) == 10_000
    assert (np.bincount(full_gray.y_train) == 5000).all()
    assert (np.bincount(full_gray.y_test) == 1000).all()
    mean, _ = full_gray.train_stats()
    assert abs(mean - 0.4734) < 0.0005


def test_rgb_through_loader_matches_gray_file(full_rgb, full_gray):
    """The loader's 'mean' conversion of the RGB file reproduces the shared gray file."""
    assert full_rgb.gray == "mean"
    np.testing.assert_array_equal(full_rgb.x_train, full_gray.x_train)
    np.testing.assert_array_equal(full_rgb.x_test, full_gray.x_test)
    np.testing.assert_array_equal(full_rgb.y_train, full_gray.y_train)
    assert abs(full_rgb.train_stats()[0] - 0.4734) < 0.0005


def test_luma_differs_from_mean():
    """'luma' weighs green most (ITU-R 601); 'mean' weighs channels equally."""
    green = np.zeros((1, 32, 32, 3), np.uint8)
    green[..., 1] = 255
    assert to_gray(green, "mean")[0, 0, 0] == 85
    assert to_gray(green, "luma")[0, 0, 0] == 150


def _write_torchvision_folder(root, x_train, y_train, x_test, y_test):
    folder = root / "cifar-10-batches-py"
    folder.mkdir()
    chw = lambda x: x.transpose(0, 3, 1, 2).reshape(len(x), -1)  # noqa: E731
    chunks = np.array_split(np.arange(len(x_train)), 5)
    for i, idx in enumerate(chunks, start=1):
        entry = {"data": chw(x_train[idx]), "labels": y_train[idx].tolist()}
        (folder / f"data_batch_{i}").write_bytes(pickle.dumps(entry))
    test = {"data": chw(x_test), "labels": y_test.tolist()}
    (folder / "test_batch").write_bytes(pickle.dumps(test))
    return folder


def test_torchvision_folder_loads_like_npz(tmp_path):
    """A cifar-10-batches-py folder gives the same arrays as an npz of the same images."""
    rng = np.random.default_rng(0)
    x_train = rng.integers(0, 256, (50, 32, 32, 3), dtype=np.uint8)
    x_test = rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8)
    y_train, y_test = np.arange(50) % 10, np.arange(20) % 10
    folder = _write_torchvision_folder(tmp_path, x_train, y_train, x_test, y_test)
    npz = tmp_path / "same.npz"
    np.savez(npz, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    for path in (folder, tmp_path):  # the folder itself, or its parent (torchvision root)
        a, b = load_cifar10(path), load_cifar10(npz)
        for name in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_embedded_sample_is_balanced_and_small():
    """The committed sample is class-balanced and at most 6 MB on disk."""
    assert EMBEDDED_SAMPLE.stat().st_size <= 6 * 1024 * 1024
    ds = load_cifar10()
    assert len(set(np.bincount(ds.y_train))) == 1 and len(set(np.bincount(ds.y_test))) == 1
    assert len(ds.y_train) >= 1000


@pytest.mark.slow
def test_embedded_sample_rebuilds_identically(tmp_path, run_cli, full_data):
    """`retina-raf data sample` on the full set rebuilds the committed sample byte-for-byte
    in its arrays (deterministic selection)."""
    source = full_data("cifar10")
    out = tmp_path / "sample.npz"
    code, _, err = run_cli("data", "sample", "--source", source, "--out", out,
                           "--train-per-class", 400, "--test-per-class", 100)  # fmt: skip
    assert code == 0, err
    with np.load(out) as new, np.load(EMBEDDED_SAMPLE) as old:
        assert sorted(new.files) == sorted(old.files)
        for name in new.files:
            np.testing.assert_array_equal(new[name], old[name])


def test_make_sample_is_deterministic(tmp_path):
    """Two builds of the same sample hold identical arrays."""
    a = make_sample(EMBEDDED_SAMPLE, tmp_path / "a.npz", train_per_class=5, test_per_class=2)
    b = make_sample(EMBEDDED_SAMPLE, tmp_path / "b.npz", train_per_class=5, test_per_class=2)
    with np.load(a) as na, np.load(b) as nb:
        for name in ("x_train", "y_train", "x_test", "y_test"):
            np.testing.assert_array_equal(na[name], nb[name])
        assert (np.bincount(na["y_train"]) == 5).all()


# ------------------------------------------------------------------------- augmentation
def _reference_shift(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """Per-image reference: out[i, j] = image[clamp(i - dy), clamp(j - dx)] (edge fill)."""
    h, w = image.shape[-2:]
    rows = (torch.arange(h) - dy).clamp(0, h - 1)
    cols = (torch.arange(w) - dx).clamp(0, w - 1)
    return image[..., rows, :][..., cols]


def _shift_of(original: torch.Tensor, augmented: torch.Tensor, bound: int):
    """The (dy, dx, flipped) that maps original to augmented, or None."""
    for flipped in (False, True):
        src = original.flip(-1) if flipped else original
        for dy in range(-bound, bound + 1):
            for dx in range(-bound, bound + 1):
                expected = _reference_shift(src, dy, dx)
                if torch.equal(expected, augmented):
                    return dy, dx, flipped
    return None


@pytest.mark.parametrize("device", DEVICES)
def test_augmentation_bounds_flips_and_seed(device):
    """Shifts never exceed 10% of the image (3 px), flips are mirror images, the same seed
    gives the same batch, and every batch element is some shift (+flip) of its original."""
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(64, 1, 32, 32, generator=gen).to(device)
    aug = Augmenter(seed=3, device=device)
    out = aug(x)
    assert out.shape == x.shape and out.device == x.device
    seen = [_shift_of(x[i].cpu(), out[i].cpu(), bound=3) for i in range(len(x))]
    assert all(s is not None for s in seen)
    assert any(s[2] for s in seen) and not all(s[2] for s in seen)
    assert len({(s[0], s[1]) for s in seen}) > 5
    again = Augmenter(seed=3, device=device)(x)
    assert torch.equal(out, again)
    assert not torch.equal(out, Augmenter(seed=4, device=device)(x))


def test_flip_only_is_exact_mirror():
    """With shifts off, an augmented image is either the original or its left-right mirror."""
    x = torch.rand(32, 1, 32, 32)
    out = Augmenter(seed=0, max_shift=0.0)(x)
    for i in range(len(x)):
        assert torch.equal(out[i], x[i]) or torch.equal(out[i], x[i].flip(-1))


def test_eval_mode_is_identity():
    """The evaluation mode leaves the batch unchanged."""
    x = torch.rand(8, 1, 32, 32)
    assert torch.equal(Augmenter(seed=0, train=False)(x), x)
    assert torch.equal(Augmenter(seed=0).eval()(x), x)


def test_device_data_batches_cover_the_split():
    """Batches of DeviceData cover every image once per epoch, as floats in [0, 1]."""
    ds = load_cifar10()
    data = DeviceData(ds.x_test[:100], ds.y_test[:100])
    gen = torch.Generator().manual_seed(0)
    seen = torch.cat([y for _, y in data.batches(32, generator=gen)])
    assert sorted(seen.tolist()) == sorted(ds.y_test[:100].tolist())
    x, _ = next(data.batches(16))
    assert x.dtype == torch.float32 and 0.0 <= x.min() and x.max() <= 1.0


# --------------------------------------------------------------------------- bad input
def _bad_npz(tmp_path, name, **arrays):
    path = tmp_path / name
    np.savez(path, **arrays)
    return path


def _good_arrays():
    return dict(x_train=np.zeros((10, 32, 32), np.uint8), y_train=np.arange(10) % 10,
                x_test=np.zeros((4, 32, 32), np.uint8), y_test=np.arange(4))  # fmt: skip


def _bad_inputs(tmp_path):
    good = _good_arrays()
    truncated = _bad_npz(tmp_path, "truncated.npz", **good)
    truncated.write_bytes(truncated.read_bytes()[:200])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a zip file")
    replaced = {
        "wrong shape": ("x_train", np.zeros((10, 28, 28), np.uint8)),
        "wrong dtype": ("x_train", np.zeros((10, 32, 32), np.float32)),
        "labels out of range": ("y_train", np.arange(10) + 5),
    }
    cases = {
        name: _bad_npz(tmp_path, f"{i}.npz", **{**good, key: value})
        for i, (name, (key, value)) in enumerate(replaced.items())
    }
    without_y_test = {k: v for k, v in good.items() if k != "y_test"}
    cases["missing array"] = _bad_npz(tmp_path, "missing.npz", **without_y_test)
    cases.update({"missing path": tmp_path / "nope.npz", "truncated": truncated,
                  "corrupt": garbage, "not a cifar folder": tmp_path})  # fmt: skip
    return cases


def test_bad_inputs_raise_data_error(tmp_path):
    """Every expected mistake raises DataError with a message naming the problem."""
    for case, path in _bad_inputs(tmp_path).items():
        with pytest.raises(DataError):
            load_cifar10(path)
        assert case


def test_bad_inputs_through_cli(tmp_path, run_cli):
    """Through the CLI: exit status 2, one line on stderr, no traceback, no file written."""
    for case, path in _bad_inputs(tmp_path).items():
        before = set(tmp_path.rglob("*"))
        code, _, err = run_cli("data", "info", path)
        assert code == 2, case
        assert len(err.strip().splitlines()) == 1, (case, err)
        assert "Traceback" not in err
        out = tmp_path / f"out_{case.replace(' ', '_')}.npz"
        code, _, err = run_cli("data", "sample", "--source", path, "--out", out)
        assert code == 2 and len(err.strip().splitlines()) == 1, (case, err)
        assert set(tmp_path.rglob("*")) == before, case


def test_text_file_named_npz_is_called_what_it_is(tmp_path, run_cli):
    """A text file (or a single .npy) named .npz: one line saying it is not an .npz, not
    numpy's complaint about pickled data."""
    text = tmp_path / "cifar.npz"
    text.write_text("x_train,y_train\n1,2\n")
    single = tmp_path / "one.npz"
    with open(single, "wb") as handle:
        np.save(handle, np.zeros(3))
    for path, message in [(text, "is not an .npz file"), (single, "single .npy array")]:
        code, _, err = run_cli("data", "info", path)
        assert code == 2 and len(err.strip().splitlines()) == 1, err
        assert message in err and "pickle" not in err


def test_data_info_cli(run_cli):
    """`retina-raf data info` prints counts, per-class counts, shape, mean and std."""
    code, out, _ = run_cli("data", "info", EMBEDDED_SAMPLE)
    assert code == 0
    assert "train: 4000 images" in out and "per class: 400" in out and "mean" in out
