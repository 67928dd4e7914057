"""Streamed image folders: the in-memory loader's split, augmentation that depends on
(seed, epoch, index) only, the same batches with any number of workers, bad images skipped with
a count or named, and the automatic choice by size."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from nas import data as D
from nas.core.files import FileProblem
from nas.data.transforms import (
    _resized_crop_box,
    augment_rng,
    pad_crop,
    resolve_augment,
    train_transform,
)


def write_folder(root: Path, per_class: int = 12, classes: str = "abc", size: int = 40) -> Path:
    """Random RGB images in root/<class>/, of varied non-square sizes."""
    rng = np.random.default_rng(0)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(per_class):
            shape = (size - i % 5, size + 3 - i % 3, 3)
            ext = ".jpg" if i % 4 == 3 else ".png"
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(
                root / c / f"{i}{ext}"
            )
    return root


def _batches(ds: D.StreamedDataset, workers: int, epoch: int = 0) -> list[torch.Tensor]:
    train, _, _ = ds.loaders(8, seed=3, num_workers=workers, epoch=epoch)
    return [torch.cat([x.flatten(1), y[:, None].float()], 1) for x, y in train]


def test_same_split_and_pixels_as_in_memory(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f")
    mem = D.load_image_folder(root, resolution=16, seed=1)
    st = D.load_streamed_folder(root, resolution=16, seed=1, augment="none")
    assert isinstance(st, D.StreamedDataset) and not st.skipped
    assert st.class_names == mem.class_names and st.input_shape == mem.input_shape
    for split in D.SPLITS:
        assert len(st.split(split)) == len(mem.split(split))
        assert st.split(split).labels.tolist() == mem.split(split).tensors[1].tolist()
    mean = torch.tensor(mem.mean).view(3, 1, 1)
    std = torch.tensor(mem.std).view(3, 1, 1)
    for i in range(len(st.test)):
        in_memory = (mem.test.tensors[0][i] * std + mean) * 255  # back to pixel values
        assert torch.allclose(in_memory, torch.from_numpy(st.test.pixels(i)).float(), atol=1e-2)
    # the streamed normalisation is estimated from the train split's images: close to exact
    assert np.allclose(st.mean, mem.mean, atol=0.02) and np.allclose(st.std, mem.std, atol=0.02)
    x, y = st.test[0]  # type: ignore[misc]
    assert x.shape == (3, 16, 16) and x.dtype == torch.float32 and isinstance(y, int)


def test_batches_do_not_depend_on_workers_but_on_epoch(tmp_path: Path) -> None:
    ds = D.load_streamed_folder(write_folder(tmp_path / "f"), resolution=16, augment="auto")
    assert ds.train.augment == "pad-crop-flip" and ds.val.augment == "none"
    zero, two = _batches(ds, 0), _batches(ds, 2)
    assert len(zero) == len(two) > 1
    assert all(torch.equal(a, b) for a, b in zip(zero, two, strict=True))
    again = _batches(ds, 1)
    assert all(torch.equal(a, b) for a, b in zip(zero, again, strict=True))
    other = _batches(ds, 0, epoch=1)
    assert not torch.equal(torch.cat(zero), torch.cat(other))  # new order and new crops


def test_augmentation_is_a_function_of_seed_epoch_index(tmp_path: Path) -> None:
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    for augment in ("pad-crop-flip", "resized-crop-flip"):
        a = train_transform(im, 24, 3, augment, augment_rng(0, 1, 7))
        b = train_transform(im, 24, 3, augment, augment_rng(0, 1, 7))
        c = train_transform(im, 24, 3, augment, augment_rng(0, 2, 7))
        assert a.shape == (3, 24, 24) and a.dtype == np.uint8
        assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert resolve_augment("auto", 32) == "pad-crop-flip"
    assert resolve_augment("auto", 64) == "resized-crop-flip"
    with pytest.raises(ValueError, match="augment must be"):
        resolve_augment("mixup", 32)


def test_crop_boxes_stay_inside_the_image() -> None:
    rng = np.random.default_rng(0)
    for w, h in ((50, 70), (300, 20), (20, 300), (8, 8)):
        for _ in range(50):
            left, top, cw, ch = _resized_crop_box(w, h, rng)
            assert min(left, top) >= 0 and min(cw, ch) > 0
            assert left + cw <= w and top + ch <= h
    arr = np.arange(3 * 8 * 8, dtype=np.uint8).reshape(3, 8, 8)
    crops = {pad_crop(arr, rng).tobytes() for _ in range(40)}
    assert len(crops) > 5 and all(len(c) == arr.nbytes for c in crops)


def test_unreadable_images_are_skipped_with_a_count_or_named(tmp_path: Path) -> None:
    root = write_folder(tmp_path / "f")
    (root / "a" / "zz-bad.png").write_bytes(b"not an image")
    (root / "b" / "zz-empty.jpg").write_bytes(b"")
    ds = D.load_streamed_folder(root, resolution=16)
    assert sorted(Path(p).name for p in ds.skipped) == ["zz-bad.png", "zz-empty.jpg"]
    assert len(ds.train) + len(ds.val) + len(ds.test) == 36
    with pytest.raises(FileProblem) as err:
        D.load_streamed_folder(root, resolution=16, on_bad="error")
    assert err.value.path.name == "zz-bad.png" and "cannot read image" in err.value.problem


def test_an_image_that_fails_to_decode_in_a_worker(tmp_path: Path) -> None:
    """A file whose header reads but whose pixels do not: left out of its batch and counted,
    or a FileProblem naming it in the main process."""
    root = write_folder(tmp_path / "f", per_class=8)
    cut = root / "a" / "0.png"
    Image.fromarray(np.zeros((60, 60, 3), dtype=np.uint8) + 9).save(cut)
    cut.write_bytes(cut.read_bytes()[:-40])  # the header stays, the pixel data is cut
    skip = D.load_streamed_folder(root, resolution=16, val_fraction=0.0, test_fraction=0.0)
    assert not skip.skipped  # its header passed the scan
    train, _, _ = skip.loaders(6, num_workers=1)
    assert sum(len(y) for _, y in train) == 23 and train.skipped == [str(cut)]
    stop = D.load_streamed_folder(
        root, resolution=16, val_fraction=0.0, test_fraction=0.0, on_bad="error"
    )
    train, _, _ = stop.loaders(6, num_workers=1)
    with pytest.raises(FileProblem) as err:
        list(train)
    assert err.value.path == cut


def test_load_dataset_streams_big_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = write_folder(tmp_path / "f", per_class=4)
    assert isinstance(D.load_dataset(root, resolution=16, on_bad="error"), D.ImageDataset)
    assert isinstance(D.load_dataset(root, stream=True, resolution=16), D.StreamedDataset)
    monkeypatch.setattr(D, "STREAM_ABOVE_BYTES", 12 * 3 * 16 * 16 * 4 - 1)
    assert isinstance(D.load_dataset(root, resolution=16), D.StreamedDataset)
    assert isinstance(D.load_dataset(root, resolution=8), D.ImageDataset)


def test_distributed_sampler_under_a_process_group(tmp_path: Path) -> None:
    ds = D.load_streamed_folder(write_folder(tmp_path / "f"), resolution=16)
    store = torch.distributed.FileStore(str(tmp_path / "store"), 1)
    torch.distributed.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        train, _, _ = ds.loaders(8, seed=3, num_workers=0, epoch=2)
        sampler = train.loader.sampler
        assert isinstance(sampler, torch.utils.data.DistributedSampler)
        assert sampler.epoch == 2 and len(list(train)) == 3  # 21 train images
    finally:
        torch.distributed.destroy_process_group()


def test_a_folder_already_split(tmp_path: Path) -> None:
    """CIFAR and ImageNet as images: root/train/<class> beside root/test/<class> (and val/)."""
    root = tmp_path / "cifar"
    write_folder(root / "train", per_class=10)
    write_folder(root / "test", per_class=3, classes="ab")  # a class may be missing
    assert D.presplit_layout(root) == {"train": root / "train", "test": root / "test"}
    assert D.presplit_layout(root / "train") is None
    ds = D.load_dataset(root, resolution=16, val_fraction=0.2)
    assert isinstance(ds, D.StreamedDataset) and ds.class_names == ("a", "b", "c")
    assert (len(ds.train), len(ds.val), len(ds.test)) == (24, 6, 6)
    assert sorted(set(ds.test.labels.tolist())) == [0, 1]
    assert all("/test/" in f for f in ds.test.files)
    assert all("/train/" in f for f in ds.train.files + ds.val.files)
    write_folder(root / "val", per_class=2, classes="c")
    ds = D.load_dataset(root, resolution=16)
    assert isinstance(ds, D.StreamedDataset)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (30, 2, 6)
    assert ds.val.labels.tolist() == [2, 2]
    with pytest.raises(ValueError, match="only the streamed loader reads"):
        D.load_dataset(root, stream=False)
    write_folder(root / "test", per_class=1, classes="z")
    with pytest.raises(FileProblem, match=r"classes \['z'\] that train lacks"):
        D.load_streamed_folder(root)
