"""Image folders: listing, bad inputs, transforms, deterministic and resumable loaders."""

from __future__ import annotations

import functools
import itertools
import random
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DistributedSampler
from torchvision import transforms as T
from torchvision.transforms import v2

from ndkd.data import streaming
from ndkd.data.imagefolder import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    random_resized_crop_box,
    read_image_folders,
)
from ndkd.data.sampling import EpochShardSampler
from ndkd.data.streaming import TrainLoader, eval_loader

SIZE, EVAL_RESIZE = 32, 36  # small stand-ins for 224 / 256


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    return digits.images, digits.target


def write_image_folder(
    root: Path,
    classes: int = 10,
    per_class: int = 3,
    size: int = 40,
    val_per_class: int | None = None,
    names: list[str] | None = None,
) -> Path:
    """Write ``root/{train,val}/<class>/<i>.jpg``: scikit-learn digits of class ``c % 10``
    upscaled to ``size`` x ``size`` RGB (a tint per class, mild noise), as JPEG.

    ``names``: class folder names (default ``class_00``...); ``val_per_class`` defaults to
    ``per_class``. Returns ``root``.
    """
    images, targets = _digits()
    names = names or [f"class_{c:02d}" for c in range(classes)]
    rng = np.random.default_rng(0)
    counts = {"train": per_class, "val": per_class if val_per_class is None else val_per_class}
    for c, name in enumerate(names):
        pool = images[targets == c % 10]
        tint = np.array([1.0, 0.5 + 0.05 * c, 1.0 - 0.04 * c])
        taken = 0
        for split, count in counts.items():
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                gray = Image.fromarray((pool[taken % len(pool)] * 255 / 16).astype(np.uint8))
                taken += 1
                big = np.asarray(gray.resize((size, size), Image.BILINEAR), dtype=np.float64)
                rgb = big[..., None] * tint + rng.normal(0, 6, (size, size, 3))
                Image.fromarray(rgb.clip(0, 255).astype(np.uint8)).save(folder / f"{i:03d}.jpg")
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """10 classes, 3 training and 1 validation image each, plus a hidden file, a non-image
    file and an upper-case extension."""
    root = write_image_folder(tmp_path_factory.mktemp("imagefolder"), per_class=3, val_per_class=1)
    train = root / "train"
    (train / "class_00" / ".hidden.jpg").write_bytes(b"not read")
    (train / "class_00" / "notes.txt").write_text("not an image")
    (train / ".cache").mkdir()
    (train / "class_01" / "002.jpg").rename(train / "class_01" / "002.JPEG")
    return root


def _splits(root: Path):
    return read_image_folders(root, image_size=SIZE, eval_resize=EVAL_RESIZE)


def _epoch(loader) -> list[tuple[torch.Tensor, ...]]:
    return [tuple(t.clone() for t in batch) for batch in loader]


def _same(a: list[tuple[torch.Tensor, ...]], b: list[tuple[torch.Tensor, ...]]) -> bool:
    return len(a) == len(b) and all(
        all(torch.equal(x, y) for x, y in zip(p, q)) for p, q in zip(a, b)
    )


# --- reading ---------------------------------------------------------------------------


def test_reads_class_order_labels_and_files(folder):
    splits = _splits(folder)
    assert splits.classes == [f"class_{c:02d}" for c in range(10)]
    assert splits.num_classes == 10 and splits.test is splits.val
    assert (len(splits.train), len(splits.val)) == (30, 10)
    labels = splits.train.labels
    assert labels.dtype == torch.int64 and labels.tolist() == sorted(labels.tolist())
    for i in range(len(splits.train)):
        path = splits.train.path(i)
        assert path.parent.name == splits.classes[int(labels[i])]
        assert path.suffix.lower() in {".jpg", ".jpeg"} and not path.name.startswith(".")
    assert splits.train.path(5).name == "002.JPEG"  # upper case accepted, sorted per class
    assert splits.describe() == {
        "name": "imagefolder",
        "num_classes": 10,
        "train_samples": 30,
        "test_samples": 10,
        "classes": splits.classes,
    }


def test_class_order_is_sorted_folder_names(tmp_path):
    names = ["zebra", "Apple", "mango", "10", "9"]
    splits = _splits(write_image_folder(tmp_path, per_class=1, names=names))
    assert splits.classes == sorted(names)
    for i in range(len(splits.val)):
        assert splits.val.path(i).parent.name == splits.classes[int(splits.val.labels[i])]


def test_imagenet_like_folder_reports_standard_sizes(tmp_path):
    splits = _splits(write_image_folder(tmp_path, per_class=1, names=["n01440764"]))
    splits.classes = [f"n{c:08d}" for c in range(1000)]  # only describe() looks at these
    facts = splits.describe()
    assert facts["standard_size"] is False and facts["standard_train_samples"] == 1_281_167


@pytest.mark.parametrize("missing", ["train", "val"])
def test_missing_split(tmp_path, missing):
    root = write_image_folder(tmp_path, classes=2, per_class=1)
    for path in sorted((root / missing).rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    (root / missing).rmdir()
    with pytest.raises(FileNotFoundError, match=str(root / missing)):
        _splits(root)


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _splits(tmp_path / "nowhere")


def test_class_in_one_split_only(tmp_path):
    root = write_image_folder(tmp_path, classes=3, per_class=1)
    (root / "train" / "class_02").rename(root / "train" / "extra")
    with pytest.raises(ValueError, match="only in .*train: extra.*only in .*val: class_02"):
        _splits(root)


def test_empty_class_folder(tmp_path):
    root = write_image_folder(tmp_path, classes=3, per_class=1)
    (root / "val" / "class_01" / "000.jpg").rename(root / "val" / "class_01" / "000.txt")
    with pytest.raises(ValueError, match="without images.*" + str(root / "val" / "class_01")):
        _splits(root)


def test_no_classes(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    with pytest.raises(ValueError, match="no class folders"):
        _splits(tmp_path)


def test_flat_val_folder(tmp_path):
    root = write_image_folder(tmp_path, classes=2, per_class=1)
    for path in (root / "val").glob("*/*.jpg"):
        path.rename(root / "val" / f"img_{path.parent.name}_{path.name}")
    for path in (root / "val").glob("class_*"):
        path.rmdir()
    with pytest.raises(ValueError, match=f"{root / 'val'} holds no class folders"):
        _splits(root)


def test_corrupt_image_is_refused_with_its_name(tmp_path):
    root = write_image_folder(tmp_path, classes=2, per_class=2)
    broken = root / "train" / "class_01" / "001.jpg"
    broken.write_bytes(broken.read_bytes()[:100])  # truncated JPEG
    splits = _splits(root)
    with pytest.raises(ValueError, match=f"cannot read image {broken}"):
        _epoch(TrainLoader(splits.train, 2, seed=0))
    (root / "val" / "class_00" / "000.jpg").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read image .*class_00.000.jpg"):
        splits.val[0]


def test_other_formats_and_modes_decode_as_pillow_does(tmp_path):
    root = write_image_folder(tmp_path, classes=1, per_class=1)
    folder = root / "train" / "class_00"
    source = Image.open(folder / "000.jpg")
    source.convert("L").save(folder / "gray.jpg")
    source.convert("CMYK").save(folder / "cmyk.jpg")
    source.save(folder / "progressive.jpeg", progressive=True, quality=75)
    source.convert("RGBA").save(folder / "alpha.png")
    source.convert("P").save(folder / "palette.png")
    source.save(folder / "disguised.JPEG", format="PNG")  # as in ImageNet's training set
    source.save(folder / "bitmap.bmp")
    source.save(folder / "tiff.TIF")
    splits = _splits(root)
    train = splits.train_without_augmentation()
    assert len(train) == 9
    for i in range(len(train)):
        path = train.path(i)
        pixels = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
        assert torch.equal(streaming.decode_image(path), pixels), path.name
        image, label = train[i]
        assert image.shape == (3, SIZE, SIZE) and label == 0


# --- transforms ------------------------------------------------------------------------


def _unnormalize(images: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return images * std + mean


def test_eval_transform_equals_torchvision(folder):
    splits = read_image_folders(folder, image_size=SIZE, eval_resize=EVAL_RESIZE)
    normalize = [v2.ToDtype(torch.float32, scale=True), v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    tensor_pipeline = v2.Compose(
        [v2.PILToTensor(), v2.Resize(EVAL_RESIZE), v2.CenterCrop(SIZE), *normalize]
    )
    pil_pipeline = T.Compose(
        [
            T.Resize(EVAL_RESIZE),
            T.CenterCrop(SIZE),
            T.ToTensor(),
            T.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    for i in range(len(splits.val)):
        image = Image.open(splits.val.path(i)).convert("RGB")
        ours, label = splits.val[i]
        assert label == int(splits.val.labels[i])
        assert torch.equal(ours, tensor_pipeline(image))  # bit for bit
        pil = pil_pipeline(image)  # the classic PIL pipeline: within resampling rounding
        difference = (_unnormalize(ours) - _unnormalize(pil)).abs()
        assert difference.mean() < 1 / 255 and difference.max() <= 3 / 255 + 1e-6


def test_train_transform_is_torchvision_crop_and_flip(folder):
    """A drawn crop box + flip applied by torchvision gives our tensor exactly."""
    train = _splits(folder).train.with_seed(3)
    for index in range(4):
        ours, _ = train[(index, 2)]
        rng = np.random.default_rng([3, 2, index])
        draws = rng.random(41).tolist()
        pixels = v2.PILToTensor()(Image.open(train.path(index)).convert("RGB"))
        top, left, h, w = random_resized_crop_box(*pixels.shape[1:], draws)
        crop = v2.functional.resized_crop(pixels, top, left, h, w, [SIZE, SIZE])
        if draws[40] < 0.5:
            crop = v2.functional.horizontal_flip(crop)
        expected = v2.Normalize(IMAGENET_MEAN, IMAGENET_STD)(
            v2.ToDtype(torch.float32, scale=True)(crop)
        )
        assert torch.equal(ours, expected)


def test_crop_boxes_follow_random_resized_crop():
    """Same distribution as torchvision's RandomResizedCrop.get_params (other random draws)."""
    rng = np.random.default_rng(0)
    torch.manual_seed(0)
    ours, reference = [], []
    for _ in range(3000):
        top, left, h, w = random_resized_crop_box(375, 500, rng.random(40).tolist())
        assert 0 <= top <= 375 - h and 0 <= left <= 500 - w and h > 0 and w > 0
        ours.append((h * w / (375 * 500), w / h, (top + h / 2) / 375, (left + w / 2) / 500))
        top, left, h, w = T.RandomResizedCrop.get_params(
            torch.empty(3, 375, 500), (0.08, 1.0), (3 / 4, 4 / 3)
        )
        reference.append((h * w / (375 * 500), w / h, (top + h / 2) / 375, (left + w / 2) / 500))
    ours, reference = np.array(ours), np.array(reference)
    assert ours[:, 0].min() > 0.07 and ours[:, 0].max() <= 1.0
    assert ours[:, 1].min() > 0.74 and ours[:, 1].max() < 1.35
    np.testing.assert_allclose(ours.mean(0), reference.mean(0), atol=0.02)
    np.testing.assert_allclose(ours.std(0), reference.std(0), atol=0.02)
    # A degenerate strip falls back to the largest central crop within the ratio range.
    assert random_resized_crop_box(10, 1000, [0.99] * 40) == (0, 493, 10, 13)


# --- loaders ---------------------------------------------------------------------------


def test_train_batches(folder):
    splits = _splits(folder)
    loader = TrainLoader(splits.train, 8, seed=0, pin_memory=False)
    assert len(loader) == 4  # 30 samples: 3 full batches and one of 6
    batches = _epoch(loader)
    assert [len(b[0]) for b in batches] == [8, 8, 8, 6]
    images, labels = batches[0]
    assert images.shape == (8, 3, SIZE, SIZE) and images.dtype == torch.float32
    assert labels.dtype == torch.int64
    pixels = _unnormalize(torch.cat([b[0] for b in batches]))
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5
    assert sorted(torch.cat([b[1] for b in batches]).tolist()) == splits.train.labels.tolist()
    loader = TrainLoader(splits.train, 8, seed=0, drop_last=True, return_indices=True)
    batches = _epoch(loader)
    assert len(loader) == len(batches) == 3 and len(batches[0]) == 3
    for _, labels, indices in batches:
        assert torch.equal(labels, splits.train.labels[indices])


def test_same_seed_and_epoch_give_identical_batches_with_any_worker_count(folder):
    splits = _splits(folder)
    runs = {}
    for workers in (0, 2):
        loader = TrainLoader(splits.train, 7, seed=5, num_workers=workers, return_indices=True)
        epochs = []
        for epoch in (0, 1, 3):
            loader.set_epoch(epoch)
            epochs.append(_epoch(loader))
        runs[workers] = epochs
    assert all(_same(a, b) for a, b in zip(runs[0], runs[2]))
    first, second, _ = runs[0]
    assert not torch.equal(first[0][2], second[0][2])  # a new order each epoch
    # Each sample's crop depends on (seed, epoch, index) only, not on its batch position.
    dataset = splits.train.with_seed(5)
    for epoch, batches in zip((0, 1, 3), runs[0]):
        for images, _, indices in batches[:2]:
            for image, index in zip(images, indices.tolist()):
                assert torch.equal(image, dataset[(index, epoch)][0])
    assert not torch.equal(dataset[(0, 0)][0], dataset[(0, 1)][0])  # new crops each epoch
    assert not torch.equal(dataset[(0, 0)][0], splits.train.with_seed(6)[(0, 0)][0])


def test_start_at_resumes_mid_epoch_without_loading_skipped_batches(folder, monkeypatch):
    splits = _splits(folder)
    loader = TrainLoader(splits.train, 4, seed=1, return_indices=True)
    loader.set_epoch(2)
    full = _epoch(loader)
    decoded = []
    original = streaming.decode_image
    monkeypatch.setattr(
        streaming, "decode_image", lambda path: decoded.append(path) or original(path)
    )
    resumed = TrainLoader(splits.train, 4, seed=1, return_indices=True)
    resumed.set_epoch(2)
    resumed.start_at(5)
    assert _same(_epoch(resumed), full[5:])
    assert len(decoded) == sum(len(b[0]) for b in full[5:])
    assert _same(_epoch(resumed), full)  # the skip applies to one iteration only
    with pytest.raises(ValueError, match="step"):
        resumed.start_at(len(resumed) + 1)


def test_start_at_with_workers(folder):
    splits = _splits(folder)
    loader = TrainLoader(splits.train, 4, seed=1, num_workers=2)
    loader.set_epoch(1)
    full = _epoch(loader)
    loader.start_at(3)
    assert _same(_epoch(loader), full[3:])


def test_shards_match_distributed_sampler(folder):
    train = _splits(folder).train
    dataset = list(range(len(train) - 1))  # 29: odd, so the shards are padded
    seen = Counter()
    for rank in range(2):
        reference = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=4)
        ours = EpochShardSampler(len(dataset), seed=4, rank=rank, world_size=2)
        for epoch in (0, 1):
            reference.set_epoch(epoch)
            ours.set_epoch(epoch)
            keys = list(ours)
            assert [i for i, _ in keys] == list(reference)
            assert {e for _, e in keys} == {epoch}
            seen.update(i for i, _ in keys) if epoch == 0 else None
    assert sum(seen.values()) == 30 and set(seen) == set(dataset)


def test_eval_loader_covers_each_sample_once_over_ranks(tmp_path):
    splits = _splits(write_image_folder(tmp_path, classes=3, per_class=1, val_per_class=5))
    assert len(splits.val) == 15
    whole = _epoch(eval_loader(splits.val, 4, return_indices=True))
    assert torch.cat([b[2] for b in whole]).tolist() == list(range(15))
    indices = []
    for rank in range(2):
        loader = eval_loader(splits.val, 4, rank=rank, world_size=2, return_indices=True)
        for images, labels, batch_indices in loader:
            assert torch.equal(labels, splits.val.labels[batch_indices])
            for image, index in zip(images, batch_indices.tolist()):
                assert torch.equal(image, whole[index // 4][0][index % 4])
            indices += batch_indices.tolist()
    assert sorted(indices) == list(range(15))
    images, labels = next(iter(eval_loader(splits.val, 16, rank=1, world_size=2)))
    assert (
        images.shape == (7, 3, SIZE, SIZE) and labels.tolist() == splits.val.labels[1::2].tolist()
    )


def test_train_without_augmentation(folder):
    splits = _splits(folder)
    plain = splits.train_without_augmentation()
    assert len(plain) == len(splits.train) and plain.transform == splits.val.transform
    assert torch.equal(plain[(3, 0)][0], plain[(3, 7)][0])  # no augmentation
    labels = torch.cat([b[1] for b in eval_loader(plain, 8, num_workers=2)])
    assert torch.equal(labels, splits.train.labels)
    batches = _epoch(TrainLoader(plain, 8, seed=0))
    assert sum(len(b[0]) for b in batches) == len(plain)


def test_bad_loader_arguments(folder):
    train = _splits(folder).train
    with pytest.raises(ValueError, match="rank"):
        TrainLoader(train, 4, seed=0, rank=2, world_size=2)
    with pytest.raises(ValueError, match="batch_size"):
        eval_loader(train, 0)
    with pytest.raises(ValueError, match="seed"):
        TrainLoader(train, 4, seed=-1)
    with pytest.raises(IndexError):
        train[len(train)]


# --- timm augmentations and repeated augmentation --------------------------------------

POLICY = "rand-m9-mstd0.5-inc1"  # DeiT's


def _augmented(root: Path, rand_augment: str = POLICY, random_erasing: float = 0.5):
    return read_image_folders(
        root,
        image_size=SIZE,
        eval_resize=EVAL_RESIZE,
        rand_augment=rand_augment,
        random_erasing=random_erasing,
    )


def test_options_off_are_the_plain_transform(folder):
    plain, off = _splits(folder), _augmented(folder, "", 0.0)
    assert off.train.transform == plain.train.transform and off.val.transform == plain.val.transform
    for key in [(0, 0), (7, 3), (29, 1)]:
        assert torch.equal(off.train[key][0], plain.train[key][0])
        assert torch.equal(plain.train[(*key, 0)][0], plain.train[key][0])  # copy 0
    on = _augmented(folder)
    assert on.val.transform == plain.val.transform  # evaluation is never augmented
    assert on.train_without_augmentation().transform == plain.val.transform


def test_timm_augmentations_are_deterministic_with_workers_and_resume(folder):
    train = _augmented(folder).train
    state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    runs = {}
    for workers in (0, 2):
        loader = TrainLoader(train, 7, seed=5, num_workers=workers, return_indices=True)
        loader.set_epoch(2)
        runs[workers] = _epoch(loader)
    assert _same(runs[0], runs[2])
    assert random.getstate() == state[0] and torch.equal(torch.get_rng_state(), state[2])
    assert all(np.array_equal(a, b) for a, b in zip(np.random.get_state(), state[1]))
    dataset = train.with_seed(5)
    for images, _, indices in runs[0][:2]:
        for image, index in zip(images, indices.tolist()):
            random.random(), np.random.rand(), torch.rand(1)  # the global state is not read
            assert torch.equal(image, dataset[(index, 2)][0])
    loader = TrainLoader(train, 7, seed=5, num_workers=0, return_indices=True)
    loader.set_epoch(2)
    loader.start_at(2)
    assert _same(_epoch(loader), runs[0][2:])


def test_rand_augment_changes_images_with_timms_hparams(folder):
    from timm.data import create_transform
    from timm.data.auto_augment import RandAugment

    plain = _splits(folder).train
    augmented = _augmented(folder, random_erasing=0.0).train
    changed = [not torch.equal(plain[(i, 0)][0], augmented[(i, 0)][0]) for i in range(0, 30, 3)]
    assert sum(changed) >= 6  # p=0.5 per op, 2 ops: about 3/4 of the images change
    reference = create_transform(
        SIZE, is_training=True, auto_augment=POLICY, interpolation="bilinear"
    )
    (timm_ra,) = [t for t in reference.transforms if isinstance(t, RandAugment)]
    ours = augmented.transform._augment
    assert ours.num_layers == timm_ra.num_layers
    for mine, theirs in zip(ours.ops, timm_ra.ops, strict=True):
        assert (mine.name, mine.prob, mine.magnitude) == (
            theirs.name,
            theirs.prob,
            theirs.magnitude,
        )
        assert mine.hparams == theirs.hparams and mine.kwargs == theirs.kwargs


@pytest.mark.parametrize(
    "policy", ["rand-m9-foo", "augmix-m5", "original", "rand-m9.5", "rand-m", "rnd-m9"]
)
def test_bad_rand_augment_policy_is_refused(folder, policy):
    with pytest.raises(ValueError, match="data.rand_augment"):
        _augmented(folder, policy)


def test_missing_timm_is_a_clear_error(folder, monkeypatch):
    monkeypatch.setitem(sys.modules, "timm.data.auto_augment", None)
    with pytest.raises(ValueError, match="ndkd\\[timm\\]"):
        _augmented(folder)
    with pytest.raises(ValueError, match="data.random_erasing"):
        _augmented(folder, "", 1.5)
    _augmented(folder, "", 0.0)  # off: timm is not needed


def test_random_erasing_erases_a_patch_of_pixel_noise(folder):
    plain = _splits(folder).train
    erased = _augmented(folder, "", 1.0).train
    for index in range(0, 30, 5):
        before, after = plain[(index, 1)][0], erased[(index, 1)][0]
        changed = (before != after).any(0)
        rows, cols = changed.any(1).nonzero().flatten(), changed.any(0).nonzero().flatten()
        top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
        box = (bottom - top) * (right - left)
        assert changed[top:bottom, left:right].all()  # one rectangle
        assert 0.02 * SIZE**2 - 1 <= box <= SIZE**2 / 3 + 2 * SIZE
        patch = after[:, top:bottom, left:right]
        assert torch.equal(after[:, ~changed], before[:, ~changed])
        assert patch.std() > 0.5 and (patch != patch[:, :1, :1]).any()  # per-pixel noise


def test_repeated_augmentation_order_is_timms(folder):
    from timm.data.distributed_sampler import RepeatAugSampler

    for size in (30, 29):
        data = list(range(size))
        for epoch in (0, 1):
            keys = []
            for rank in range(2):
                reference = RepeatAugSampler(
                    data, num_replicas=2, rank=rank, num_repeats=3, selected_round=0
                )
                reference.set_epoch(epoch)
                ours = EpochShardSampler(size, seed=0, rank=rank, world_size=2, repeats=3)
                ours.set_epoch(epoch)
                rank_keys = list(ours)
                assert [i for i, _, _ in rank_keys] == list(reference)
                assert len(rank_keys) == len(ours) == 15  # ceil(size / 2), as without repeats
                keys += [(rank, *key) for key in rank_keys]
            assert {e for _, _, e, _ in keys} == {epoch}
            counts = Counter(i for _, i, _, _ in keys)
            assert set(counts.values()) == {3} and len(counts) == 10  # 30 samples / 3
            for index in counts:
                copies = [(rank, c) for rank, i, _, c in keys if i == index]
                assert sorted(c for _, c in copies) == [0, 1, 2]
                assert len({rank for rank, _ in copies}) == 2  # on both ranks


def test_repeated_augmentation_loader(folder):
    train = _augmented(folder).train
    runs = {}
    for workers in (0, 2):
        epochs = []
        for rank in range(2):
            loader = TrainLoader(
                train,
                4,
                seed=3,
                rank=rank,
                world_size=2,
                num_workers=workers,
                return_indices=True,
                repeated_augmentations=3,
            )
            assert len(loader) == 4  # 15 samples per rank, as without repetition
            loader.set_epoch(1)
            epochs.append(_epoch(loader))
        runs[workers] = epochs
    assert all(_same(a, b) for a, b in zip(runs[0], runs[2]))
    images = {}
    for batches in runs[0]:
        for batch_images, _, indices in batches:
            for image, index in zip(batch_images, indices.tolist()):
                images.setdefault(index, []).append(image)
    assert len(images) == 10 and all(len(copies) == 3 for copies in images.values())
    for copies in images.values():
        assert not any(torch.equal(a, b) for a, b in itertools.combinations(copies, 2))
    resumed = TrainLoader(
        train, 4, seed=3, rank=1, world_size=2, return_indices=True, repeated_augmentations=3
    )
    resumed.set_epoch(1)
    resumed.start_at(2)
    assert _same(_epoch(resumed), runs[0][1][2:])
    with pytest.raises(ValueError, match="repeated_augmentations"):
        TrainLoader(train, 4, seed=0, repeated_augmentations=-1)
