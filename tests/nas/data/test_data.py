"""Tests of nas.data: the embedded digits, image folders, CIFAR layouts and the safe unpickler."""

from __future__ import annotations

import logging
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from nas import data as D

SMALL: dict[str, Any] = {"resolution": 16, "copies_train": 1, "copies_val": 1, "copies_test": 1}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("edge-nas-cache")


@pytest.fixture(scope="module")
def digits(cache_dir: Path) -> D.ImageDataset:
    return D.load_embedded_digits(cache_dir=cache_dir)


def _pixels(ds: D.ImageDataset, split: str) -> np.ndarray:
    """Un-normalised images of a split, back in [0, 255]."""
    x = ds.split(split).tensors[0].numpy()
    mean = np.array(ds.mean)[None, :, None, None]
    std = np.array(ds.std)[None, :, None, None]
    return (x * std + mean) * 255.0


# --------------------------------------------------------------------------------------------
# Embedded digits
# --------------------------------------------------------------------------------------------


def test_digits_default_sizes_shapes_and_labels(digits: D.ImageDataset) -> None:
    assert len(digits.test) >= 2000
    assert len(digits.train) >= 8000
    assert len(digits.val) >= 1000
    assert digits.input_shape == (3, 32, 32)
    assert digits.num_classes == 10
    assert digits.class_names == tuple(str(i) for i in range(10))
    for split in D.SPLITS:
        x, y = digits.split(split).tensors
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[1:] == (3, 32, 32)
        assert set(y.tolist()) == set(range(10))  # stratified: every class in every split
    x = digits.train.tensors[0]
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3)
    assert torch.allclose(x.std(dim=(0, 2, 3)), torch.ones(3), atol=1e-3)


def test_digits_sources_never_cross_splits(digits: D.ImageDataset) -> None:
    src = {s: digits.source_ids[s] for s in D.SPLITS}
    sets = {s: set(src[s].tolist()) for s in D.SPLITS}
    assert not sets["train"] & sets["val"]
    assert not sets["train"] & sets["test"]
    assert not sets["val"] & sets["test"]
    assert set().union(*sets.values()) == set(range(1797))
    target = load_digits().target
    for split, copies in zip(D.SPLITS, (8, 5, 5), strict=True):
        assert len(src[split]) == len(digits.split(split))
        assert np.all(np.bincount(src[split], minlength=1797)[sorted(sets[split])] == copies)
        # Each sample is labelled with the class of the source it was drawn from.
        np.testing.assert_array_equal(digits.split(split).tensors[1].numpy(), target[src[split]])


def test_groups_are_the_sources_or_each_sample_alone(digits: D.ImageDataset) -> None:
    # the embedded digits: five augmented copies of each test source share one group
    groups = digits.groups("test")
    np.testing.assert_array_equal(groups, digits.source_ids["test"])
    assert set(np.bincount(groups)[np.unique(groups)].tolist()) == {5}
    # no source ids given (a data set built by hand): every sample a group of its own
    bare = D.ImageDataset(
        name="bare",
        train=digits.train,
        val=digits.val,
        test=digits.test,
        num_classes=10,
        input_shape=digits.input_shape,
        class_names=digits.class_names,
        mean=digits.mean,
        std=digits.std,
    )
    np.testing.assert_array_equal(bare.groups("test"), np.arange(len(digits.test)))
    with pytest.raises(ValueError, match="split must be one of"):
        digits.groups("holdout")


def test_digits_cache_is_reused(
    digits: D.ImageDataset, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = list(cache_dir.glob("digits-r32-c3-*.npz"))
    assert len(files) == 1

    def fail(*args: object, **kwargs: object) -> None:
        raise AssertionError("the cache should have been used")

    monkeypatch.setattr("nas.data.digits._generate_digits", fail)
    again = D.load_embedded_digits(cache_dir=cache_dir)
    for split in D.SPLITS:
        assert torch.equal(again.split(split).tensors[0], digits.split(split).tensors[0])
        assert torch.equal(again.split(split).tensors[1], digits.split(split).tensors[1])
    with np.load(files[0], allow_pickle=False) as npz:  # the cache holds no pickled objects
        assert all(npz[k].dtype != object for k in npz.files)


def test_digits_deterministic_and_seed_sensitive() -> None:
    a = D.load_embedded_digits(seed=3, use_cache=False, **SMALL)
    b = D.load_embedded_digits(seed=3, use_cache=False, **SMALL)
    c = D.load_embedded_digits(seed=4, use_cache=False, **SMALL)
    for split in D.SPLITS:
        assert torch.equal(a.split(split).tensors[0], b.split(split).tensors[0])
        assert not torch.equal(a.split(split).tensors[0], c.split(split).tensors[0])
        # The augmentation seed leaves the split of source images alone...
        np.testing.assert_array_equal(a.source_ids[split], c.source_ids[split])
    # ...which split_seed changes.
    d = D.load_embedded_digits(seed=3, split_seed=1, use_cache=False, **SMALL)
    assert not np.array_equal(a.source_ids["test"], d.source_ids["test"])


def test_digits_gray_and_resolution(tmp_path: Path) -> None:
    ds = D.load_embedded_digits(channels=1, cache_dir=tmp_path, **SMALL)
    assert ds.input_shape == (1, 16, 16)
    assert ds.train.tensors[0].shape[1:] == (1, 16, 16)
    assert len(ds.test) == len(ds.source_ids["test"])


def test_digits_cache_env_var(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(D.CACHE_ENV_VAR, str(tmp_path / "env-cache"))
    assert D.default_cache_dir() == tmp_path / "env-cache"
    D.load_embedded_digits(**SMALL)
    assert len(list((tmp_path / "env-cache").glob("digits-r16-*.npz"))) == 1


def test_digits_corrupt_cache_is_regenerated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    first = D.load_embedded_digits(cache_dir=tmp_path, **SMALL)
    (cache_file,) = tmp_path.glob("*.npz")
    cache_file.write_bytes(b"not a zip file")
    with caplog.at_level(logging.WARNING, logger="nas.data"):
        again = D.load_embedded_digits(cache_dir=tmp_path, **SMALL)
    assert "unreadable digits cache" in caplog.text
    assert torch.equal(first.test.tensors[0], again.test.tensors[0])


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"resolution": 4}, "resolution must be an int >= 8"),
        ({"channels": 2}, "channels must be 1 (gray) or 3 (colour); got 2"),
        ({"copies_test": 0}, "copies_test must be an int >= 1; got 0"),
        ({"val_fraction": 0.5, "test_fraction": 0.5}, "val_fraction + test_fraction must be < 1"),
        ({"test_fraction": -0.1}, "test_fraction must be in [0, 1)"),
    ],
)
def test_digits_bad_arguments(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError) as info:
        D.load_embedded_digits(use_cache=False, **kwargs)
    assert message in str(info.value)


# --------------------------------------------------------------------------------------------
# Loaders
# --------------------------------------------------------------------------------------------


def test_loaders_shapes_and_seeded_shuffle(tmp_path: Path) -> None:
    ds = D.load_embedded_digits(cache_dir=tmp_path, **SMALL)
    train, val, test = ds.loaders(batch_size=32, seed=0)
    x, y = next(iter(train))
    assert x.shape == (32, 3, 16, 16) and y.shape == (32,)
    assert sum(len(b[1]) for b in val) == len(ds.val)
    assert sum(len(b[1]) for b in test) == len(ds.test)

    def first_labels(seed: int) -> list[int]:
        return next(iter(ds.loaders(batch_size=64, seed=seed)[0]))[1].tolist()

    assert first_labels(1) == first_labels(1)
    assert first_labels(1) != first_labels(2)
    # Evaluation loaders keep the stored order.
    assert torch.equal(next(iter(test))[1], ds.test.tensors[1][:32])
    with pytest.raises(ValueError, match="batch_size must be a positive int; got 0"):
        ds.loaders(batch_size=0)


# --------------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------------

COLOURS = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (20, 40, 230)}


def _write_folder(root: Path, per_class: int = 8) -> Path:
    for name, colour in COLOURS.items():
        d = root / name
        d.mkdir(parents=True)
        for i in range(per_class):
            size = (20 + 3 * i, 14 + 2 * i)  # varied, non-square sizes
            ext = ".jpg" if i % 4 == 3 else ".png"
            Image.new("RGB", size, colour).save(d / f"img{i}{ext}")
        (d / "notes.txt").write_text("not an image")
    return root


def test_image_folder_round_trip(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "shapes")
    ds = D.load_image_folder(root, resolution=12, val_fraction=0.25, test_fraction=0.25, seed=0)
    assert ds.name == "shapes"
    assert ds.class_names == ("blue", "green", "red")  # sorted folder names
    assert ds.input_shape == (3, 12, 12)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (12, 6, 6)
    for split in D.SPLITS:
        labels = ds.split(split).tensors[1]
        assert torch.bincount(labels, minlength=3).tolist() == [len(labels) // 3] * 3
        # Each image still has its class's colour (within JPEG's error).
        pixels = _pixels(ds, split).mean(axis=(2, 3))
        expected = np.array([COLOURS[ds.class_names[i]] for i in labels.tolist()])
        assert np.abs(pixels - expected).max() < 8
    ids = [set(ds.source_ids[s].tolist()) for s in D.SPLITS]
    assert not (ids[0] & ids[1]) and not (ids[0] & ids[2]) and not (ids[1] & ids[2])
    again = D.load_image_folder(root, resolution=12, val_fraction=0.25, test_fraction=0.25, seed=0)
    assert torch.equal(again.test.tensors[0], ds.test.tensors[0])
    gray = D.load_image_folder(root, resolution=8, channels=1)
    assert gray.input_shape == (1, 8, 8)


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load_image_folder(tmp_path / "nowhere")
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="it must be a directory"):
        D.load_image_folder(a_file)

    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (4, 4)).save(flat / "loose.png")
    with pytest.raises(ValueError, match="no class sub-folders") as info:
        D.load_image_folder(flat)
    assert "<root>/<class name>/<image>" in str(info.value) and "loose.png" in str(info.value)

    root = _write_folder(tmp_path / "partly-empty", per_class=2)
    (root / "empty").mkdir()
    (root / "empty" / "readme.md").write_text("nothing")
    with pytest.raises(ValueError, match="holds no images") as info:
        D.load_image_folder(root)
    assert str(root / "empty") in str(info.value)
    assert (
        ".png" in str(info.value) and ".jpg" in str(info.value) and "readme.md" in str(info.value)
    )

    broken = _write_folder(tmp_path / "broken", per_class=2)
    (broken / "red" / "bad.png").write_bytes(b"this is not a png")
    with pytest.raises(ValueError, match="cannot read image") as info:
        D.load_image_folder(broken)
    assert "bad.png" in str(info.value)


# --------------------------------------------------------------------------------------------
# CIFAR layouts
# --------------------------------------------------------------------------------------------


def _fake_images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, (n, 3 * 32 * 32), dtype=np.uint8)


def _dump(obj: object, path: Path, protocol: int = pickle.DEFAULT_PROTOCOL) -> None:
    path.write_bytes(pickle.dumps(obj, protocol=protocol))


def _write_cifar10(root: Path, per_batch: int = 20, protocol: int = 2) -> dict[str, np.ndarray]:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xs, ys = [], []
    for i in range(1, 6):
        x, y = _fake_images(rng, per_batch), [int(v) for v in np.arange(per_batch) % 10]
        _dump({b"batch_label": b"x", b"data": x, b"labels": y}, root / f"data_batch_{i}", protocol)
        xs.append(x)
        ys += y
    x_test = _fake_images(rng, 30)
    y_test = [int(v) for v in np.arange(30) % 10]
    _dump({b"data": x_test, b"labels": y_test}, root / "test_batch", protocol)
    names = [f"class{i}".encode() for i in range(10)]
    _dump({b"label_names": names, b"num_vis": 3072}, root / "batches.meta", protocol)
    return {"x_train": np.concatenate(xs), "y_train": np.array(ys), "x_test": x_test}


def test_cifar10_python_layout(tmp_path: Path) -> None:
    arrays = _write_cifar10(tmp_path / "cifar-10-batches-py")
    for path in (tmp_path / "cifar-10-batches-py", tmp_path):  # the folder or its parent
        ds = D.load_cifar(path, val_fraction=0.2, seed=0)
        assert ds.name == "cifar10" and ds.num_classes == 10
        assert ds.class_names[3] == "class3"
        assert (len(ds.train), len(ds.val), len(ds.test)) == (80, 20, 30)
        assert ds.input_shape == (3, 32, 32)
    # Pixels come back channel-major, as CIFAR stores them, and in the stored order for test.
    np.testing.assert_allclose(
        _pixels(ds, "test"), arrays["x_test"].reshape(-1, 3, 32, 32), atol=1e-2
    )
    train_ids = ds.source_ids["train"]
    np.testing.assert_allclose(
        _pixels(ds, "train"), arrays["x_train"][train_ids].reshape(-1, 3, 32, 32), atol=1e-2
    )
    np.testing.assert_array_equal(ds.train.tensors[1].numpy(), arrays["y_train"][train_ids])
    assert len(np.unique(ds.groups("test"))) == len(ds.test)  # no copies: one image a group
    small = D.load_cifar(tmp_path, resolution=16)
    assert small.input_shape == (3, 16, 16)


def test_cifar10_default_protocol_and_old_numpy_names(tmp_path: Path) -> None:
    # Protocol 5 rebuilds arrays with _frombuffer; files written by numpy < 2 name numpy.core.
    _write_cifar10(tmp_path / "p5", protocol=5)
    assert len(D.load_cifar(tmp_path / "p5").test) == 30
    root = tmp_path / "old"
    _write_cifar10(root, protocol=2)
    for file in root.iterdir():
        file.write_bytes(file.read_bytes().replace(b"numpy._core", b"numpy.core"))
    assert b"numpy.core.multiarray" in (root / "test_batch").read_bytes()
    assert len(D.load_cifar(root).test) == 30


def test_cifar100_python_layout(tmp_path: Path) -> None:
    root = tmp_path / "cifar-100-python"
    root.mkdir()
    rng = np.random.default_rng(1)
    fine = [int(v) for v in np.arange(200) % 100]
    _dump(
        {
            b"data": _fake_images(rng, 200),
            b"fine_labels": fine,
            b"coarse_labels": [v // 5 for v in fine],
        },
        root / "train",
    )
    fine_test = [int(v) for v in np.arange(50) % 100]
    _dump(
        {
            b"data": _fake_images(rng, 50),
            b"fine_labels": fine_test,
            b"coarse_labels": [v // 5 for v in fine_test],
        },
        root / "test",
    )
    _dump(
        {
            b"fine_label_names": [f"f{i}".encode() for i in range(100)],
            b"coarse_label_names": [f"c{i}".encode() for i in range(20)],
        },
        root / "meta",
    )
    ds = D.load_dataset(tmp_path)  # dispatch finds the official sub-folder
    assert ds.name == "cifar100" and ds.num_classes == 100 and ds.class_names[7] == "f7"
    assert len(ds.test) == 50 and len(ds.train) + len(ds.val) == 200
    coarse = D.load_cifar(root, label="coarse")
    assert coarse.num_classes == 20 and int(coarse.test.tensors[1].max()) == 9


def test_cifar_binary_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    c10 = tmp_path / "cifar-10-batches-bin"
    c10.mkdir()
    for name, n in [*((f"data_batch_{i}.bin", 10) for i in range(1, 6)), ("test_batch.bin", 7)]:
        labels = (np.arange(n) % 10).astype(np.uint8)[:, None]
        np.concatenate([labels, _fake_images(rng, n)], axis=1).tofile(c10 / name)
    (c10 / "batches.meta.txt").write_text("\n".join(f"name{i}" for i in range(10)) + "\n\n")
    ds = D.load_cifar(c10, val_fraction=0.0)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (50, 0, 7)
    assert ds.class_names[9] == "name9"
    assert ds.test.tensors[1].tolist() == list(range(7))

    c100 = tmp_path / "cifar-100-binary"
    c100.mkdir()
    for name, n in (("train.bin", 40), ("test.bin", 10)):
        fine = (np.arange(n) % 100).astype(np.uint8)
        labels = np.stack([fine // 5, fine], axis=1)
        np.concatenate([labels, _fake_images(rng, n)], axis=1).tofile(c100 / name)
    (c100 / "fine_label_names.txt").write_text("\n".join(f"f{i}" for i in range(100)))
    (c100 / "coarse_label_names.txt").write_text("\n".join(f"c{i}" for i in range(20)))
    fine_ds = D.load_cifar(c100)
    assert fine_ds.num_classes == 100 and fine_ds.test.tensors[1].tolist() == list(range(10))
    coarse_ds = D.load_cifar(c100, label="coarse")
    assert coarse_ds.test.tensors[1].tolist() == [v // 5 for v in range(10)]

    (c10 / "test_batch.bin").write_bytes(b"\x00" * 100)
    with pytest.raises(ValueError, match="whole records of 3073 bytes"):
        D.load_cifar(c10)


def test_cifar_missing_files_are_listed(tmp_path: Path) -> None:
    root = tmp_path / "partial"
    _write_cifar10(root)
    (root / "data_batch_3").unlink()
    (root / "test_batch").unlink()
    with pytest.raises(FileNotFoundError) as info:
        D.load_cifar(root)
    message = str(info.value)
    assert "cifar10-python" in message and "['data_batch_3', 'test_batch']" in message
    assert "batches.meta" in message  # the whole expected layout is shown

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="holds no CIFAR copy") as info:
        D.load_cifar(empty)
    assert "data_batch_1" in str(info.value) and "train.bin" in str(info.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        D.load_cifar(tmp_path / "nowhere")


def test_cifar_malformed_contents(tmp_path: Path) -> None:
    root = tmp_path / "c10"
    _write_cifar10(root)
    _dump({b"data": np.zeros((3, 10), dtype=np.uint8), b"labels": [0, 1, 2]}, root / "test_batch")
    with pytest.raises(ValueError, match=r"must be uint8 of shape \(N, 3072\)"):
        D.load_cifar(root)
    _dump([1, 2, 3], root / "test_batch")
    with pytest.raises(ValueError, match="must hold a dict with keys b'data' and b'labels'"):
        D.load_cifar(root)
    (root / "test_batch").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="is not a readable CIFAR pickle"):
        D.load_cifar(root)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "evil"
    _write_cifar10(root)
    marker = tmp_path / "pwned"
    _dump({b"data": _RunsCode(marker), b"labels": [0]}, root / "test_batch")
    with pytest.raises(D.UnsafePickleError, match="refusing to load") as info:
        D.load_cifar(root)
    assert "system" in str(info.value) and "test_batch" in str(info.value)
    assert not marker.exists()

    evil = tmp_path / "eval.pkl"
    _dump(eval, evil)  # a bare reference to builtins.eval
    with pytest.raises(D.UnsafePickleError, match=r"builtins\.eval"):
        D.restricted_pickle_load(evil)
    assert issubclass(D.UnsafePickleError, pickle.UnpicklingError)


# --------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------


def test_load_dataset_dispatch(tmp_path: Path) -> None:
    ds = D.load_dataset("digits", cache_dir=tmp_path / "cache", **SMALL)
    assert ds.name == "digits" and ds.input_shape == (3, 16, 16)
    folder = D.load_dataset(_write_folder(tmp_path / "folder", per_class=4), resolution=8)
    assert folder.class_names == ("blue", "green", "red")
    _write_cifar10(tmp_path / "cifar" / "cifar-10-batches-py")
    assert D.load_dataset(str(tmp_path / "cifar")).name == "cifar10"

    with pytest.raises(FileNotFoundError) as info:
        D.load_dataset("digit")
    assert "did you mean 'digits'" in str(info.value) and "existing path" in str(info.value)
    with pytest.raises(FileNotFoundError, match="neither a known name"):
        D.load_dataset(tmp_path / "missing")
