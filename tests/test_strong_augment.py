"""MLKD's strong augmentation (ndkd.data.strong_augment) and the two-view data set
(ndkd.data.views): each operation against an independent computation, the policy's table
and draws, and the views' determinism per (seed, epoch, index) whatever the worker count."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image, ImageEnhance, ImageOps

import ndkd.data.views as views_module
from ndkd.data import ImageTensorDataset, cifar_transform
from ndkd.data.augment import CIFAR100_MEAN, CIFAR100_STD, normalize
from ndkd.data.streaming import TrainLoader
from ndkd.data.strong_augment import (
    CUTOUT_COLOR,
    OPS,
    Policy,
    apply_policy,
    cutout,
    draw_policy,
)
from ndkd.data.views import TwoViewDataset

# Jin-Ying/Multi-Level-Logit-Distillation, mdistiller/dataset/cifar100.py, augment_list():
# (name, low, high), in its order; Invert is defined there but not in the list.
AUTHORS_LIST = [
    ("AutoContrast", 0, 1),
    ("Brightness", 0.05, 0.95),
    ("Color", 0.05, 0.95),
    ("Contrast", 0.05, 0.95),
    ("Equalize", 0, 1),
    ("Identity", 0, 1),
    ("Posterize", 4, 8),
    ("Rotate", -30, 30),
    ("Sharpness", 0.05, 0.95),
    ("ShearX", -0.3, 0.3),
    ("ShearY", -0.3, 0.3),
    ("Solarize", 0, 256),
    ("TranslateX", -0.3, 0.3),
    ("TranslateY", -0.3, 0.3),
]
OP = {op.name: op for op in OPS}


def pixels(seed: int = 0, size: int = 32) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8)


def run(name: str, array: np.ndarray, v: float) -> np.ndarray:
    return np.asarray(OP[name].apply(Image.fromarray(array), v))


def test_the_policy_is_the_authors_list():
    assert [(op.name, op.low, op.high) for op in OPS] == AUTHORS_LIST


def test_identity_brightness_posterize_solarize_against_numpy():
    a = pixels()
    assert np.array_equal(run("Identity", a, 0.3), a)
    for v in (0.05, 0.37, 0.5, 0.94):  # blending with black truncates: floor(v * x)
        assert np.array_equal(run("Brightness", a, v), np.floor(a * v).astype(np.uint8))
    for v, bits in ((4.0, 4), (5.7, 5), (7.99, 7)):
        mask = np.uint8(0xFF ^ ((1 << (8 - bits)) - 1))
        assert np.array_equal(run("Posterize", a, v), a & mask)
    for v in (0.0, 100.5, 128.0, 255.9, 256.0):
        assert np.array_equal(run("Solarize", a, v), np.where(a >= v, 255 - a, a))


def test_translations_move_by_their_fraction_of_the_size_with_black_fill():
    a = pixels(1)
    want = np.zeros_like(a)
    want[:, :24] = a[:, 8:]  # the output pixel x reads input x + 0.25 * 32
    assert np.array_equal(run("TranslateX", a, 0.25), want)
    want = np.zeros_like(a)
    want[8:] = a[:-8]
    assert np.array_equal(run("TranslateY", a, -0.25), want)


@pytest.mark.parametrize(
    ("name", "v", "reference"),
    [
        ("AutoContrast", 0.4, lambda im, v: ImageOps.autocontrast(im)),
        ("Equalize", 0.4, lambda im, v: ImageOps.equalize(im)),
        ("Color", 0.3, lambda im, v: ImageEnhance.Color(im).enhance(v)),
        ("Contrast", 0.3, lambda im, v: ImageEnhance.Contrast(im).enhance(v)),
        ("Sharpness", 0.3, lambda im, v: ImageEnhance.Sharpness(im).enhance(v)),
        ("Rotate", -17.5, lambda im, v: im.rotate(v, resample=Image.Resampling.NEAREST)),
        (
            "ShearX",
            0.21,
            lambda im, v: im.transform(im.size, Image.Transform.AFFINE, (1, v, 0, 0, 1, 0)),
        ),
        (
            "ShearY",
            -0.13,
            lambda im, v: im.transform(im.size, Image.Transform.AFFINE, (1, 0, 0, v, 1, 0)),
        ),
    ],
)
def test_the_pil_operations_are_the_pil_calls_of_the_authors(name, v, reference):
    a = pixels(2)
    got = run(name, a, v)
    assert np.array_equal(got, np.asarray(reference(Image.fromarray(a), v)))
    assert not np.array_equal(got, a)  # the operation did something


def cutout_reference(a: np.ndarray, fraction: float, cx: float, cy: float) -> np.ndarray:
    """The authors' CutoutAbs in NumPy: inclusive corners, the far one truncated."""
    height, width = a.shape[:2]
    side = fraction * width
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    x1, y1 = min(width, x0 + side), min(height, y0 + side)
    out = a.copy()
    out[y0 : int(y1) + 1, x0 : int(x1) + 1] = CUTOUT_COLOR
    return out


@pytest.mark.parametrize(
    ("fraction", "center"),
    [(0.25, (10.0, 20.0)), (0.49, (31.5, 1.2)), (0.1, (2.0, 30.0)), (0.33, (16.7, 16.2))],
)
def test_cutout_against_numpy(fraction, center):
    a = pixels(3)
    got = np.asarray(cutout(Image.fromarray(a), fraction, center))
    assert np.array_equal(got, cutout_reference(a, fraction, *center))
    assert (got == CUTOUT_COLOR).all(axis=2).sum() >= int(fraction * 32) ** 2 // 4


def test_cutout_of_size_zero_and_of_a_grey_image():
    a = pixels(4)
    assert np.array_equal(np.asarray(cutout(Image.fromarray(a), 0.0, (5.0, 5.0))), a)
    grey = Image.fromarray(a[:, :, 0])
    out = np.asarray(cutout(grey, 0.25, (10.0, 10.0)))
    assert (out[6:15, 6:15] == 123).all()  # PIL's grey of (125, 123, 114)


def test_draws_stay_in_their_ranges_with_replacement():
    rng = np.random.default_rng(0)
    seen, repeats = set(), 0
    for _ in range(2000):
        policy = draw_policy(rng, 32, 32)
        assert len(policy.ops) == 2
        for op, magnitude in policy.ops:
            assert op.low <= magnitude < op.high
            seen.add(op.name)
        repeats += policy.ops[0][0] is policy.ops[1][0]
        assert 0 <= policy.cutout < 0.5
        assert all(1 <= c <= 32 for c in policy.center)  # np.random.uniform(W): (1, W]
    assert seen == set(OP)
    assert 100 < repeats < 200  # drawn with replacement: about 2000 / 14


def test_apply_policy_runs_the_drawn_ops_in_order_then_cutout():
    a = pixels(5)
    policy = Policy(((OP["Solarize"], 100.0), (OP["Brightness"], 0.5)), 0.2, (8.0, 8.0))
    got = np.asarray(apply_policy(Image.fromarray(a), policy))
    want = np.floor(np.where(a >= 100, 255 - a, a) * 0.5).astype(np.uint8)
    assert np.array_equal(got, cutout_reference(want, 0.2, 8.0, 8.0))


# --- the two-view data set --------------------------------------------------------------


def cifar_like(count: int = 24) -> ImageTensorDataset:
    images = torch.from_numpy(np.stack([pixels(i).transpose(2, 0, 1) for i in range(count)]))
    return ImageTensorDataset(
        images, torch.arange(count) % 10, 10, cifar_transform("cifar100", train=True)
    )


def standard_crops(image: torch.Tensor) -> list[torch.Tensor]:
    """Every output of the standard transform (zero pad 4, 32x32 crop, flip, normalize)."""
    padded = torch.nn.functional.pad(image, (4, 4, 4, 4))
    crops = []
    for top in range(9):
        for left in range(9):
            crop = padded[:, top : top + 32, left : left + 32]
            crops += [crop, crop.flip(2)]
    return [normalize(c, CIFAR100_MEAN, CIFAR100_STD) for c in crops]


def test_weak_view_is_the_standard_transform_and_strong_view_its_own_draw(monkeypatch):
    data = TwoViewDataset(cifar_like())
    (weak, strong), label = data[(3, 0)]
    assert label == 3 and weak.dtype == strong.dtype == torch.float32
    assert weak.shape == strong.shape == (3, 32, 32)
    crops = standard_crops(data.source.images[3])
    assert any(torch.equal(weak, c) for c in crops)
    # with the identity policy the strong view is a crop and flip of its own draw
    monkeypatch.setitem(views_module.POLICIES, "mlkd", lambda image, rng: image)

    def crop_of(view: torch.Tensor) -> int:
        return next(i for i, c in enumerate(crops) if torch.equal(view, c))

    pairs = [tuple(crop_of(v) for v in data[(3, epoch)][0]) for epoch in range(8)]
    assert any(weak != strong for weak, strong in pairs)  # drawn apart from the weak view
    assert len({strong for _, strong in pairs}) > 1  # and anew each epoch


def test_views_are_a_function_of_seed_epoch_and_index():
    data = TwoViewDataset(cifar_like(), seed=5)

    def views(key, dataset=data):
        return torch.stack(dataset[key][0])

    assert torch.equal(views((2, 1)), views((2, 1)))
    assert not torch.equal(views((2, 1)), views((2, 2)))
    assert not torch.equal(views((2, 1)), views((2, 1), data.with_seed(6)))
    other = TwoViewDataset(cifar_like(), seed=5)
    assert torch.equal(views((2, 1)), views((2, 1), other))


def test_the_loader_batches_views_whatever_the_worker_count():
    data = TwoViewDataset(cifar_like())

    def epoch(workers: int):
        loader = TrainLoader(data, 8, seed=3, num_workers=workers, pin_memory=False)
        loader.set_epoch(1)
        return list(loader)

    single, parallel = epoch(0), epoch(2)
    assert len(single) == 3
    for (views_a, labels_a), (views_b, labels_b) in zip(single, parallel, strict=True):
        weak, strong = views_a
        assert weak.shape == strong.shape == (8, 3, 32, 32)
        assert torch.equal(labels_a, labels_b)
        assert torch.equal(weak, views_b[0]) and torch.equal(strong, views_b[1])


def test_grey_float_images_get_views_too():
    images = torch.rand(6, 1, 8, 8)
    data = TwoViewDataset(ImageTensorDataset(images, torch.arange(6), 6))
    (weak, strong), _ = data[(1, 0)]
    assert torch.equal(weak, images[1])  # no training transform: the image itself
    assert strong.shape == (1, 8, 8) and 0 <= strong.min() and strong.max() <= 1


def test_two_views_refuse_what_they_cannot_serve():
    with pytest.raises(ValueError, match="unknown strong view 'fixmatch'; available: mlkd"):
        TwoViewDataset(cifar_like(), "fixmatch")
    multi = ImageTensorDataset(torch.rand(4, 3, 8, 8), torch.ones(4, 5), 5)
    with pytest.raises(ValueError, match="single-label"):
        TwoViewDataset(multi)
