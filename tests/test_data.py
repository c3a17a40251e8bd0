"""CIFAR pickle reading, batched augmentation, in-memory loader and the digits dataset."""

from __future__ import annotations

import dataclasses
import logging
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits
from torch.utils.data import DataLoader

from ndkd.data import (
    CIFAR100_MEAN,
    CIFAR100_STD,
    BatchTransform,
    CropFlipParams,
    ImageTensorDataset,
    InMemoryLoader,
    build_dataset,
    cifar_transform,
    crop_flip,
    draw_crop_flip,
    normalize,
    read_cifar,
)
from ndkd.data import cifar as cifar_module

FOLDERS = {"cifar10": "cifar-10-batches-py", "cifar100": "cifar-100-python"}


def _pixel(image: int, c: int, h: int, w: int) -> int:
    """A pixel value that identifies its image, channel, row and column."""
    return (image * 7 + c * 85 + h * 5 + w * 3) % 256


def _rows(first: int, count: int) -> np.ndarray:
    """Images ``first..first+count-1`` in the CIFAR row format: 1024 R, 1024 G, 1024 B, each
    plane row-major, written out pixel by pixel (independently of any reshape)."""
    return np.array(
        [
            [_pixel(i, c, h, w) for c in range(3) for h in range(32) for w in range(32)]
            for i in range(first, first + count)
        ],
        dtype=np.uint8,
    )


def _labels(first: int, count: int, classes: int) -> list[int]:
    return [(3 * i + 1) % classes for i in range(first, first + count)]


def _dump(path: Path, batch: dict, protocol: int = 2) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(pickle.dumps(batch, protocol=protocol))


def write_cifar(root: Path, name: str, per_file: int, protocol: int = 2) -> None:
    """Write a small CIFAR folder in the standard layout (``per_file`` images per file)."""
    folder = root / FOLDERS[name]
    if name == "cifar100":
        for split, first in (("train", 0), ("test", 1000)):
            batch = {
                "filenames": [f"img_{i}.png" for i in range(per_file)],
                "batch_label": f"{split} batch",
                "fine_labels": _labels(first, per_file, 100),
                "coarse_labels": [99] * per_file,  # out of range for the fine labels
                "data": _rows(first, per_file),
            }
            _dump(folder / split, batch, protocol)
        return
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for index, file in enumerate(names):
        first = index * per_file
        batch = {
            b"batch_label": b"batch",
            b"labels": _labels(first, per_file, 10),
            b"data": _rows(first, per_file),
        }  # bytes keys, as the Python-2 pickles load with encoding="bytes"
        _dump(folder / file, batch, protocol)


def small_counts(monkeypatch: pytest.MonkeyPatch, name: str, train: int, test: int) -> None:
    spec = cifar_module.SPECS[name]
    small = dataclasses.replace(spec, counts={"train": train, "test": test})
    monkeypatch.setitem(cifar_module.SPECS, name, small)


def _expected_image(index: int) -> torch.Tensor:
    c, h, w = torch.meshgrid(torch.arange(3), torch.arange(32), torch.arange(32), indexing="ij")
    return ((index * 7 + c * 85 + h * 5 + w * 3) % 256).to(torch.uint8)


# --- CIFAR reading --------------------------------------------------------------------------


def test_cifar100_folder_layout_pixels_and_fine_labels(tmp_path, monkeypatch) -> None:
    small_counts(monkeypatch, "cifar100", train=6, test=6)
    write_cifar(tmp_path, "cifar100", per_file=6)
    train = build_dataset("cifar100", tmp_path, "train")
    assert len(train) == 6 and train.num_classes == 100
    assert train.images.shape == (6, 3, 32, 32) and train.images.dtype == torch.uint8
    for index in range(6):
        image, label = train[index]
        assert image.shape == (3, 32, 32)
        assert torch.equal(image, _expected_image(index))
        assert label == (3 * index + 1) % 100
    # Pixel order spot check against the raw row: [c, h, w] comes from c * 1024 + h * 32 + w.
    raw = _rows(0, 1)[0]
    assert train[0][0][2, 5, 17].item() == raw[2 * 1024 + 5 * 32 + 17]
    test = build_dataset("cifar100", tmp_path / "cifar-100-python", "test")  # the folder itself
    assert torch.equal(test.images[0], _expected_image(1000))
    assert test.labels.tolist() == _labels(1000, 6, 100)


def _py2_pickle(data: np.ndarray, labels: list[int], label_key: bytes) -> bytes:
    """A batch file byte for byte as Python 2's cPickle (protocol 2) wrote the distributed
    CIFAR files: 8-bit strings, ``numpy.core.multiarray._reconstruct``, a uint8 dtype state."""

    def text(s: bytes) -> bytes:  # SHORT_BINSTRING / BINSTRING
        return b"U" + bytes([len(s)]) + s if len(s) < 256 else b"T" + struct.pack("<i", len(s)) + s

    def num(v: int) -> bytes:  # BININT1 / BININT2
        return b"K" + bytes([v]) if v < 256 else b"M" + struct.pack("<H", v)

    minus_one = b"J" + struct.pack("<i", -1)
    dtype = b"cnumpy\ndtype\n" + text(b"u1") + num(0) + num(1) + b"\x87R"
    dtype += b"(" + num(3) + text(b"|") + b"NNN" + minus_one * 2 + num(0) + b"tb"
    array = b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\n" + num(0) + b"\x85"
    array += text(b"b") + b"\x87R(" + num(1) + num(len(data)) + num(3072) + b"\x86" + dtype
    array += b"\x89" + text(data.tobytes()) + b"tb"
    label_list = b"](" + b"".join(num(v) for v in labels) + b"e"
    return b"\x80\x02}(" + text(b"data") + array + text(label_key) + label_list + b"u."


def test_cifar_reads_python2_pickles_as_distributed(tmp_path, monkeypatch) -> None:
    small_counts(monkeypatch, "cifar100", train=5, test=3)
    folder = tmp_path / "cifar-100-python"
    folder.mkdir()
    for split, first, count in (("train", 0, 5), ("test", 5, 3)):
        payload = _py2_pickle(_rows(first, count), _labels(first, count, 100), b"fine_labels")
        (folder / split).write_bytes(payload)
    test = build_dataset("cifar100", tmp_path, "test")
    assert all(torch.equal(test.images[i], _expected_image(5 + i)) for i in range(3))
    assert test.labels.tolist() == _labels(5, 3, 100)
    assert len(build_dataset("cifar100", tmp_path, "train")) == 5


def test_cifar10_concatenates_the_five_batches_in_order(tmp_path, monkeypatch) -> None:
    small_counts(monkeypatch, "cifar10", train=15, test=3)
    write_cifar(tmp_path, "cifar10", per_file=3)
    images, labels = read_cifar("cifar10", tmp_path, "train")
    assert images.shape == (15, 3, 32, 32)
    assert labels.dtype == torch.int64 and labels.tolist() == _labels(0, 15, 10)
    assert all(torch.equal(images[i], _expected_image(i)) for i in range(15))
    test = build_dataset("cifar10", tmp_path, "test")
    assert torch.equal(test.images[2], _expected_image(17)) and test.num_classes == 10


def test_cifar_reads_the_tar_gz_archive(tmp_path, monkeypatch) -> None:
    small_counts(monkeypatch, "cifar100", train=4, test=4)
    staging = tmp_path / "staging"
    write_cifar(staging, "cifar100", per_file=4, protocol=5)
    root = tmp_path / "data"
    root.mkdir()
    with tarfile.open(root / "cifar-100-python.tar.gz", "w:gz") as tar:
        tar.add(staging / "cifar-100-python", arcname="cifar-100-python")
    images, labels = read_cifar("cifar100", root, "train")
    folder_images, folder_labels = read_cifar("cifar100", staging, "train")
    assert torch.equal(images, folder_images) and torch.equal(labels, folder_labels)


def test_any_image_count_is_read_with_a_warning(tmp_path, caplog) -> None:
    write_cifar(tmp_path, "cifar100", per_file=2)
    write_cifar(tmp_path, "cifar10", per_file=3)
    with caplog.at_level(logging.WARNING, logger="ndkd.data.cifar"):
        images, labels = read_cifar("cifar100", tmp_path, "train")
    assert images.shape == (2, 3, 32, 32) and labels.tolist() == _labels(0, 2, 100)
    assert "cifar100 train split" in caplog.text
    assert str(tmp_path / "cifar-100-python" / "train") in caplog.text
    assert "2 images, not the standard 50000" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ndkd.data.cifar"):
        test = build_dataset("cifar10", tmp_path, "test")
    assert len(test) == 3 and "cifar10 test split" in caplog.text
    assert "3 images, not the standard 10000" in caplog.text
    assert len(build_dataset("cifar10", tmp_path, "train")) == 15


def test_standard_count_is_not_warned_about(tmp_path, monkeypatch, caplog) -> None:
    small_counts(monkeypatch, "cifar100", train=4, test=4)
    write_cifar(tmp_path, "cifar100", per_file=4)
    with caplog.at_level(logging.WARNING, logger="ndkd.data.cifar"):
        read_cifar("cifar100", tmp_path, "train")
    assert not caplog.records


def test_standard_size() -> None:
    assert cifar_module.standard_size("cifar100", "train") == 50000
    assert cifar_module.standard_size("cifar10", "test") == 10000
    with pytest.raises(ValueError, match="unknown CIFAR variant 'svhn'"):
        cifar_module.standard_size("svhn", "train")
    with pytest.raises(ValueError, match="unknown split 'val'"):
        cifar_module.standard_size("cifar10", "val")


def test_empty_split_is_a_value_error_naming_the_file(tmp_path) -> None:
    path = tmp_path / "cifar-100-python" / "test"
    for data in (np.zeros((0, 3072), dtype=np.uint8), []):
        _dump(path, {"data": data, "fine_labels": []})
        with pytest.raises(ValueError, match="empty test split") as error:
            read_cifar("cifar100", tmp_path, "test")
        assert str(error.value).startswith(str(path))
    path.write_bytes(b"\x80\x02}(X\x04\x00\x00\x00datac__builtin__\nbytes\nJ\x00\xca\x9a;\x85Ru.")
    with pytest.raises(ValueError, match=r"refusing bytes\(\.\.\.\) with arguments"):
        read_cifar("cifar100", tmp_path, "test")  # bytes(10**9) would allocate a gigabyte
    _dump(path, {"data": _rows(0, 2), "fine_labels": ["a", "b"]})
    with pytest.raises(ValueError, match="'fine_labels' as a list of integers") as error:
        read_cifar("cifar100", tmp_path, "test")
    assert str(path) in str(error.value)


def test_missing_files_name_the_path_and_the_layout(tmp_path) -> None:
    with pytest.raises(FileNotFoundError) as error:
        build_dataset("cifar100", tmp_path, "train")
    message = str(error.value)
    assert str(tmp_path / "cifar-100-python" / "train") in message
    assert "cifar-100-python.tar.gz" in message and "python-pickle layout" in message
    (tmp_path / "cifar-10-batches-py").mkdir()
    for i in (1, 2, 3, 4):
        (tmp_path / "cifar-10-batches-py" / f"data_batch_{i}").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match="data_batch_5"):
        read_cifar("cifar10", tmp_path, "train")


def test_truncated_pickle_is_a_value_error_naming_the_file(tmp_path, monkeypatch) -> None:
    small_counts(monkeypatch, "cifar100", train=4, test=4)
    write_cifar(tmp_path, "cifar100", per_file=4)
    path = tmp_path / "cifar-100-python" / "train"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(ValueError, match="truncated or corrupt") as error:
        read_cifar("cifar100", tmp_path, "train")
    assert str(path) in str(error.value)


def test_truncated_archive_is_a_value_error(tmp_path, monkeypatch) -> None:
    small_counts(monkeypatch, "cifar100", train=4, test=4)
    write_cifar(tmp_path / "staging", "cifar100", per_file=4)
    archive = tmp_path / "cifar-100-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(tmp_path / "staging" / "cifar-100-python", arcname="cifar-100-python")
    archive.write_bytes(archive.read_bytes()[:2000])
    with pytest.raises(ValueError, match=f"archive {archive}"):
        read_cifar("cifar100", tmp_path, "train")


def test_bad_contents_are_value_errors(tmp_path, monkeypatch) -> None:
    small_counts(monkeypatch, "cifar100", train=4, test=4)
    path = tmp_path / "cifar-100-python" / "train"
    data = _rows(0, 4)
    _dump(path, {"data": data, "labels": [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="expected key 'fine_labels'"):
        read_cifar("cifar100", tmp_path, "train")
    _dump(path, {"data": data, "fine_labels": [0, 1, 2, 100]})
    with pytest.raises(ValueError, match=r"labels in \[0, 100\), found \[0, 100\]"):
        read_cifar("cifar100", tmp_path, "train")
    _dump(path, {"data": data[:, :3000], "fine_labels": [0, 1, 2, 3]})
    with pytest.raises(ValueError, match=r"uint8 \[N, 3072\], found uint8 \[4, 3000\]"):
        read_cifar("cifar100", tmp_path, "train")
    _dump(path, {"data": data, "fine_labels": [0, 1, 2]})
    with pytest.raises(ValueError, match="expected 4 labels"):
        read_cifar("cifar100", tmp_path, "train")


def test_pickles_cannot_run_code(tmp_path, monkeypatch) -> None:
    small_counts(monkeypatch, "cifar100", train=1, test=1)
    _dump(tmp_path / "cifar-100-python" / "train", {"data": print, "fine_labels": [0]})
    with pytest.raises(ValueError, match=r"refusing to load (__builtin__|builtins)\.print"):
        read_cifar("cifar100", tmp_path, "train")


def test_unknown_names_and_splits(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown dataset 'svhn'"):
        build_dataset("svhn", tmp_path)
    with pytest.raises(ValueError, match="unknown split 'val'"):
        build_dataset("cifar10", tmp_path, "val")
    with pytest.raises(ValueError, match="needs root"):
        build_dataset("cifar100")


@pytest.mark.slow
def test_full_size_cifar100_folder(tmp_path) -> None:
    folder = tmp_path / "cifar-100-python"
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in (("train", 50000), ("test", 10000)):
        arrays[split] = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
        labels = rng.integers(0, 100, count).tolist()
        _dump(folder / split, {"data": arrays[split], "fine_labels": labels})
    train = build_dataset("cifar100", tmp_path, "train")
    test = build_dataset("cifar100", tmp_path, "test")
    assert train.images.shape == (50000, 3, 32, 32) and len(test) == 10000
    assert torch.equal(train.images[123].flatten(), torch.from_numpy(arrays["train"][123]))


# --- augmentation ---------------------------------------------------------------------------


def _loop_crop_flip(images: torch.Tensor, params: CropFlipParams, padding: int) -> torch.Tensor:
    """Per-sample reference: explicit zero canvas, slice, torch.flip."""
    out = []
    for image, top, left, flip in zip(images, params.top, params.left, params.flip):
        c, h, w = image.shape
        canvas = torch.zeros(c, h + 2 * padding, w + 2 * padding, dtype=image.dtype)
        canvas[:, padding : padding + h, padding : padding + w] = image
        crop = canvas[:, top : top + h, left : left + w]
        out.append(crop.flip(-1) if flip else crop)
    return torch.stack(out)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_vectorized_crop_flip_matches_per_sample_loop(dtype: torch.dtype) -> None:
    images = torch.randint(0, 256, (64, 3, 32, 32)).to(dtype)
    params = draw_crop_flip(64, 4, torch.Generator().manual_seed(1))
    out = crop_flip(images, params, 4)
    assert out.dtype == dtype and out.shape == images.shape
    assert torch.equal(out, _loop_crop_flip(images, params, 4))
    rect = torch.randint(0, 256, (5, 2, 6, 10), dtype=torch.uint8)  # non-square, 2 channels
    params = draw_crop_flip(5, 2, torch.Generator().manual_seed(2))
    assert torch.equal(crop_flip(rect, params, 2), _loop_crop_flip(rect, params, 2))


def test_crop_flip_extremes() -> None:
    images = torch.arange(2 * 1 * 4 * 4).reshape(2, 1, 4, 4) + 1
    params = CropFlipParams(torch.tensor([0, 4]), torch.tensor([4, 0]), torch.tensor([False, True]))
    out = crop_flip(images, params, padding=2)
    # Sample 0: shifted down by 2 (zero rows on top), left by 2 (two columns kept at the left).
    assert out[0, 0, :2].eq(0).all() and out[0, 0, 2:, :2].tolist() == [[3, 4], [7, 8]]
    # Sample 1: shifted up by 2, right by 2, then mirrored.
    expected = torch.zeros(4, 4, dtype=images.dtype)
    expected[:2, 2:] = images[1, 0, 2:, :2]
    assert torch.equal(out[1, 0], expected.flip(-1))


def test_draws_are_seeded_and_cover_the_range() -> None:
    a = draw_crop_flip(4000, 4, torch.Generator().manual_seed(5))
    b = draw_crop_flip(4000, 4, torch.Generator().manual_seed(5))
    c = draw_crop_flip(4000, 4, torch.Generator().manual_seed(6))
    assert torch.equal(a.top, b.top) and torch.equal(a.left, b.left) and torch.equal(a.flip, b.flip)
    assert not torch.equal(a.top, c.top)
    assert a.top.unique().tolist() == list(range(9)) and a.left.unique().tolist() == list(range(9))
    assert 0.45 < a.flip.float().mean().item() < 0.55


def test_normalize_matches_the_formula() -> None:
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    mean, std = (
        torch.tensor(CIFAR100_MEAN)[:, None, None],
        torch.tensor(CIFAR100_STD)[:, None, None],
    )
    expected = (images.float() / 255 - mean) / std
    out = normalize(images, CIFAR100_MEAN, CIFAR100_STD)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(
        normalize(images.float() / 255, CIFAR100_MEAN, CIFAR100_STD), expected
    )


def test_batch_transform_train_and_eval() -> None:
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    train, evaluate = cifar_transform("cifar100", train=True), cifar_transform("cifar100", False)
    assert train.mean == CIFAR100_MEAN and train.std == CIFAR100_STD
    out1 = train(images, torch.Generator().manual_seed(0))
    out2 = train(images, torch.Generator().manual_seed(0))
    assert out1.shape == (8, 3, 32, 32) and out1.dtype == torch.float32
    assert torch.equal(out1, out2)
    assert not torch.equal(out1, train(images, torch.Generator().manual_seed(1)))
    params = draw_crop_flip(8, 4, torch.Generator().manual_seed(0))
    expected = normalize(_loop_crop_flip(images, params, 4), CIFAR100_MEAN, CIFAR100_STD)
    torch.testing.assert_close(out1, expected)
    torch.testing.assert_close(evaluate(images), normalize(images, CIFAR100_MEAN, CIFAR100_STD))
    assert evaluate(images[0]).shape == (3, 32, 32)  # single image


# --- loader -----------------------------------------------------------------------------------


def _dataset(n: int = 50, transform: BatchTransform | None = None) -> ImageTensorDataset:
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8)
    return ImageTensorDataset(images, torch.arange(n), 100, transform)


def test_loader_yields_every_sample_once_per_epoch() -> None:
    loader = InMemoryLoader(_dataset(50), batch_size=16, shuffle=True, seed=3)
    batches = list(loader)
    assert len(loader) == len(batches) == 4
    assert [len(y) for _, y in batches] == [16, 16, 16, 2]
    labels = torch.cat([y for _, y in batches])
    assert sorted(labels.tolist()) == list(range(50)) and labels.tolist() != list(range(50))
    for images, y in batches:  # raw images follow their labels (no transform)
        assert torch.equal(images, loader.images[y])


def test_loader_order_is_seeded_per_epoch() -> None:
    def order(seed: int, epoch: int) -> list[int]:
        loader = InMemoryLoader(_dataset(50), batch_size=8, shuffle=True, seed=seed)
        loader.set_epoch(epoch)
        return torch.cat([y for _, y in loader]).tolist()

    assert order(0, 1) == order(0, 1)
    assert order(0, 1) != order(0, 2) and order(0, 1) != order(1, 1)
    unshuffled = InMemoryLoader(_dataset(50), batch_size=8, drop_last=True)
    assert len(unshuffled) == 6
    assert torch.cat([y for _, y in unshuffled]).tolist() == list(range(48))


def test_loader_augments_batches_deterministically() -> None:
    dataset = _dataset(40, cifar_transform("cifar100", train=True))

    def epoch_batches(epoch: int) -> list[torch.Tensor]:
        loader = InMemoryLoader(dataset, batch_size=16, shuffle=True, seed=0)
        loader.set_epoch(epoch)
        return [x for x, _ in loader]

    first, again, other = epoch_batches(0), epoch_batches(0), epoch_batches(1)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert first[0].dtype == torch.float32 and first[0].shape == (16, 3, 32, 32)
    assert not torch.equal(first[0], other[0])


def test_loader_batches_are_crops_and_flips_of_their_samples() -> None:
    dataset = _dataset(16, cifar_transform("cifar100", train=True))
    images, labels = next(iter(InMemoryLoader(dataset, batch_size=16, shuffle=True)))
    raw = dataset.images[labels]
    matched = torch.zeros(16, dtype=torch.bool)
    for top in range(9):
        for left in range(9):
            for flip in (False, True):
                params = CropFlipParams(*(torch.full((16,), v) for v in (top, left, flip)))
                candidate = normalize(_loop_crop_flip(raw, params, 4), CIFAR100_MEAN, CIFAR100_STD)
                matched |= (candidate - images).abs().flatten(1).amax(1) < 1e-5
    assert matched.all()


def test_loader_shards_cover_the_epoch() -> None:
    dataset = _dataset(50)
    shards = [
        InMemoryLoader(dataset, 7, shuffle=True, seed=1, rank=r, world_size=4).indices()
        for r in range(4)
    ]
    assert [len(s) for s in shards] == [13] * 4
    combined = torch.cat(shards)
    assert set(combined.tolist()) == set(range(50)) and len(combined) == 52
    labels = [
        torch.cat([y for _, y in InMemoryLoader(dataset, 7, rank=r, world_size=4)])
        for r in range(4)
    ]
    assert labels[1].tolist() == list(range(1, 50, 4))
    assert labels[3].tolist() == list(range(3, 50, 4)) + [1]  # wrapped around
    with pytest.raises(ValueError, match="rank"):
        InMemoryLoader(dataset, 7, rank=4, world_size=4)


def test_dataset_works_with_the_plain_dataloader() -> None:
    dataset = _dataset(10, cifar_transform("cifar100", train=True))
    images, labels = next(iter(DataLoader(dataset, batch_size=4, shuffle=False)))
    assert images.shape == (4, 3, 32, 32) and images.dtype == torch.float32
    assert labels.tolist() == [0, 1, 2, 3]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_gpu_resident_loader_matches_cpu() -> None:
    dataset = _dataset(64, cifar_transform("cifar100", train=True))
    cpu = InMemoryLoader(dataset, 32, shuffle=True, seed=4)
    gpu = InMemoryLoader(dataset, 32, shuffle=True, seed=4, device="cuda")
    assert gpu.images.is_cuda
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and yg.is_cuda
        torch.testing.assert_close(xg.cpu(), xc)
        assert torch.equal(yg.cpu(), yc)


# --- digits -----------------------------------------------------------------------------------


def test_digits_split_is_fixed_stratified_and_disjoint() -> None:
    train, test = build_dataset("digits", split="train"), build_dataset("digits", split="test")
    assert (len(train), len(test)) == (1438, 359) and train.num_classes == 10
    image, label = train[0]
    assert image.shape == (1, 8, 8) and image.dtype == torch.float32 and isinstance(label, int)
    assert train.images.min() >= 0 and train.images.max() == 1
    counts = torch.bincount(test.labels, minlength=10).float()
    totals = counts + torch.bincount(train.labels, minlength=10)
    assert torch.all((counts / totals - 0.2).abs() < 0.01)
    again = build_dataset("digits", split="test")
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    everything = torch.from_numpy(load_digits().images / 16.0).float()
    rebuilt = torch.cat([train.images, test.images])[:, 0]
    assert _sorted_rows(rebuilt) == _sorted_rows(everything)  # a partition of the whole set


def _sorted_rows(images: torch.Tensor) -> list[tuple[float, ...]]:
    return sorted(map(tuple, images.flatten(1).tolist()))
