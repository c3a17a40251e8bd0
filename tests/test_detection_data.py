"""Detection data: COCO 2017 targets, refusals and ground truth, the flip, determinism, the
loaders' collate and sharding, and the bundled digit boxes."""

from __future__ import annotations

import contextlib
import copy
import functools
import io
import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.transforms.v2 import functional as F

from ndkd.data.coco_detection import read_coco
from ndkd.data.detection import (
    BACKGROUND,
    DetectionTransform,
    InMemoryDetectionDataset,
    collate_detection,
)
from ndkd.data.digit_boxes import (
    CANVAS,
    CLASSES,
    MAX_DIGITS,
    NOISE,
    SCALES,
    SIZES,
    read_digit_boxes,
)
from ndkd.data.digits import read_digits
from ndkd.data.sources import evaluation_loader, load_splits, probe_detection, training_loader
from ndkd.data.streaming import eval_loader

# Two categories, listed out of id order, with non-contiguous ids: labels car=1, dog=2.
CATEGORIES = [{"id": 18, "name": "dog"}, {"id": 3, "name": "car"}]
LABELS = {3: 1, 18: 2}
# split -> image id -> ((width, height), [(category id, bbox [x, y, w, h], iscrowd), ...])
IMAGES = {
    "train2017": {
        101: (
            (40, 30),
            [(3, [2, 3, 10, 8], 0), (18, [20.5, 5, 15, 20], 0), (3, [0, 0, 30, 20], 1)],
        ),
        102: ((32, 24), [(18, [5, 5, 0, 7], 0), (18, [25, 10, 20, 20], 0), (3, [1, 2, 6, 3], 0)]),
        103: ((20, 20), []),  # no annotation
        104: ((24, 16), [(3, [1, 1, 5, 5], 1), (18, [2, 2, 4, 0], 0)]),  # crowd + no area
    },
    "val2017": {
        201: ((40, 30), [(3, [4, 4, 12, 10], 0), (18, [0, 0, 40, 30], 1)]),
        202: ((32, 24), []),
        203: ((20, 20), [(18, [3, 3, 0, 5], 0), (18, [30, 2, 4, 4], 0)]),  # outside: no area
    },
}


def _jpeg(path: Path, seed: int, size: tuple[int, int]) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def _json(name: str) -> dict:
    images, annotations = [], []
    for image, ((width, height), objects) in IMAGES[name].items():
        file_name = f"{image:012d}.jpg"
        images.append({"id": image, "file_name": file_name, "width": width, "height": height})
        for category, bbox, crowd in objects:
            annotations.append(
                {
                    "id": 1000 + len(annotations),
                    "image_id": image,
                    "category_id": category,
                    "bbox": bbox,
                    "area": 0.5 * bbox[2] * bbox[3] + 1,  # a mask's area, not the box's
                    "iscrowd": crowd,
                    "segmentation": [],
                }
            )
    return {"images": images, "annotations": annotations, "categories": CATEGORIES}


def write_coco2017(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    for name, images in IMAGES.items():
        for image, (size, _) in images.items():
            _jpeg(root / name / f"{image:012d}.jpg", image, size)
        (root / "annotations" / f"instances_{name}.json").write_text(json.dumps(_json(name)))
    return root


def _expected(name: str, image: int) -> tuple[list[list[float]], list[int]]:
    """The target of ``image``, annotation by annotation: no crowds, xyxy clipped to the
    image, no box without area."""
    (width, height), objects = IMAGES[name][image]
    boxes, labels = [], []
    for category, (x, y, w, h), crowd in objects:
        x1, x2 = min(max(x, 0), width), min(max(x + w, 0), width)
        y1, y2 = min(max(y, 0), height), min(max(y + h, 0), height)
        if not crowd and x2 > x1 and y2 > y1:
            boxes.append([x1, y1, x2, y2])
            labels.append(LABELS[category])
    return boxes, labels


def _pixels(path: Path) -> torch.Tensor:
    return F.to_dtype(F.pil_to_tensor(Image.open(path).convert("RGB")), torch.float32, scale=True)


@pytest.fixture
def coco(tmp_path):
    return write_coco2017(tmp_path)


# --- COCO 2017 -------------------------------------------------------------------------


def test_coco_targets_labels_and_what_is_left_out(coco, caplog):
    with caplog.at_level(logging.INFO, logger="ndkd.data.coco_detection"):
        splits = load_splits("coco", coco)
    assert splits.classes == [BACKGROUND, "car", "dog"] and splits.num_classes == 3
    assert splits.category_ids[1:] == [3, 18] and splits.in_channels == 3
    kept = {"train2017": [101, 102], "val2017": [201, 202, 203]}  # train: images with a box
    for name, dataset in (
        ("train2017", splits.train_without_augmentation()),
        ("val2017", splits.test),
    ):
        assert len(dataset) == len(kept[name])
        for index, image in enumerate(kept[name]):
            pixels, target = dataset[(index, 3)]
            assert dataset.path(index) == coco / name / f"{image:012d}.jpg"
            assert torch.equal(pixels, _pixels(dataset.path(index)))  # [0, 1], not resized
            boxes, labels = _expected(name, image)
            assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (
                len(boxes),
                4,
            )
            assert target["boxes"].tolist() == boxes
            assert target["labels"].dtype == torch.int64 and target["labels"].tolist() == labels
            assert target["image_id"].dtype == torch.int64 and target["image_id"].dim() == 0
            assert int(target["image_id"]) == image
    facts = splits.describe("coco")
    assert (facts["train_samples"], facts["test_samples"]) == (2, 3)
    assert (facts["train_boxes"], facts["test_boxes"]) == (4, 1)
    assert facts["train_images_without_boxes"] == 2
    assert (facts["train_boxes_left_out"], facts["test_boxes_left_out"]) == (4, 3)
    assert (facts["standard_train_samples"], facts["standard_test_samples"]) == (117266, 5000)
    assert facts["standard_size"] is False and facts["num_classes"] == 3
    assert "dropped 2 training images without boxes" in caplog.text
    assert "left 4 crowd or empty boxes out" in caplog.text


def test_ground_truth_is_the_json_and_loads_into_pycocotools(coco):
    splits = read_coco(coco)
    truth = splits.ground_truth()
    original = _json("val2017")
    assert truth["images"] == [
        {key: entry[key] for key in ("id", "width", "height")} for entry in original["images"]
    ]
    keys = ("id", "image_id", "category_id", "bbox", "area", "iscrowd")
    assert truth["annotations"] == [
        {key: entry[key] for key in keys} for entry in original["annotations"]
    ]  # crowds and boxes without area included
    assert sorted(truth["categories"], key=lambda c: c["id"]) == [
        {"id": 3, "name": "car"},
        {"id": 18, "name": "dog"},
    ]
    api = COCO()
    with contextlib.redirect_stdout(io.StringIO()):
        api.dataset = truth
        api.createIndex()
        detections = api.loadRes(
            [{"image_id": 201, "category_id": 3, "bbox": [4, 4, 12, 10], "score": 0.9}]
        )
    assert sorted(api.getImgIds()) == [201, 202, 203] and len(api.getAnnIds()) == 4
    assert api.getAnnIds(imgIds=[201], iscrowd=True) == [1001]
    assert len(detections.getAnnIds()) == 1
    truth["annotations"].clear()
    assert len(splits.ground_truth()["annotations"]) == 4  # a fresh dict per call


def _edit(root: Path, name: str, change) -> None:
    path = root / "annotations" / f"instances_{name}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def _annotation(data: dict, index: int, **changes) -> None:
    data["annotations"][index].update(changes)


REFUSALS = {
    "missing json": (
        lambda root: (root / "annotations" / "instances_val2017.json").unlink(),
        FileNotFoundError,
        "instances_val2017.json is missing: expected the COCO 2017 instance annotations",
    ),
    "missing images": (
        lambda root: shutil.rmtree(root / "val2017"),
        FileNotFoundError,
        "val2017 is missing: expected the COCO val2017 images",
    ),
    "malformed json": (
        lambda root: (root / "annotations" / "instances_train2017.json").write_text("[{"),
        ValueError,
        "instances_train2017.json: malformed JSON",
    ),
    "unknown category": (
        lambda root: _edit(root, "train2017", lambda d: _annotation(d, 2, category_id=4)),
        ValueError,
        r"train2017.json: annotations\[2\] has category_id 4, not one of the 2 categories",
    ),
    "unknown image": (
        lambda root: _edit(root, "val2017", lambda d: _annotation(d, 1, image_id=7)),
        ValueError,
        r"val2017.json: annotations\[1\] has image_id 7, not one of the 3 images",
    ),
    "negative size": (
        lambda root: _edit(root, "train2017", lambda d: _annotation(d, 4, bbox=[1, 1, 3, -2])),
        ValueError,
        r"train2017.json: annotations\[4\] has a bbox of negative size",
    ),
    "bbox of 3 numbers": (
        lambda root: _edit(root, "val2017", lambda d: _annotation(d, 0, bbox=[1, 2, 3])),
        ValueError,
        "val2017.json: malformed annotations: every bbox must be 4 numbers",
    ),
    "infinite bbox": (
        lambda root: _edit(root, "val2017", lambda d: _annotation(d, 2, bbox=[1, 2, 3, 1e999])),
        ValueError,
        r"val2017.json: annotations\[2\] has a bbox or area that is not finite",
    ),
    "missing field": (
        lambda root: _edit(root, "train2017", lambda d: d["annotations"][0].pop("iscrowd")),
        ValueError,
        "train2017.json: malformed annotations entry: expected fields id, image_id",
    ),
    "repeated annotation id": (
        lambda root: _edit(root, "val2017", lambda d: _annotation(d, 3, id=1000)),
        ValueError,
        "val2017.json: id 1000 listed twice in the 4 annotations",
    ),
    "bad crowd flag": (
        lambda root: _edit(root, "train2017", lambda d: _annotation(d, 0, iscrowd=2)),
        ValueError,
        r"train2017.json: annotations\[0\] has iscrowd other than 0 or 1",
    ),
    "bad image size": (
        lambda root: _edit(root, "val2017", lambda d: d["images"][1].update(height=0)),
        ValueError,
        r"val2017.json: images\[1\] has a width or height below 1",
    ),
    "different categories": (
        lambda root: _edit(root, "val2017", lambda d: d["categories"][0].update(name="wolf")),
        ValueError,
        "instances_train2017.json and instances_val2017.json list different categories",
    ),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_coco_refusals(coco, case):
    damage, error, message = REFUSALS[case]
    damage(coco)
    with pytest.raises(error, match=message):
        read_coco(coco)


# --- flip and determinism --------------------------------------------------------------


def _flipped(boxes: list[list[float]], width: int) -> list[list[float]]:
    return [[width - x2, y1, width - x1, y2] for x1, y1, x2, y2 in boxes]


def test_training_flips_image_and_boxes_together(coco):
    splits = read_coco(coco)
    train, plain = splits.train.with_seed(5), splits.train_without_augmentation()
    assert plain.transform == splits.test.transform and not plain.transform.train
    outcomes = set()
    for index in range(len(train)):
        reference, target = plain[index]
        for epoch in range(6):
            image, augmented = train[(index, epoch)]
            flipped = torch.equal(image, reference.flip(-1))
            assert flipped or torch.equal(image, reference)
            width = reference.shape[-1]
            boxes = target["boxes"].tolist()
            assert augmented["boxes"].tolist() == (_flipped(boxes, width) if flipped else boxes)
            assert torch.equal(augmented["labels"], target["labels"])
            assert torch.equal(augmented["image_id"], target["image_id"])
            outcomes.add(flipped)
    assert outcomes == {True, False}


def _assert_tight(ink: torch.Tensor, boxes: torch.Tensor) -> None:
    """The boxes (x1, y1, x2, y2) are disjoint, cover every ink pixel of ``ink`` [H, W]
    (bool), and each touches ink on all four of its border lines."""
    covered = torch.zeros_like(ink, dtype=torch.int64)
    for x1, y1, x2, y2 in boxes.long().tolist():
        crop = ink[y1:y2, x1:x2]
        assert crop[0].any() and crop[-1].any() and crop[:, 0].any() and crop[:, -1].any()
        covered[y1:y2, x1:x2] += 1
    assert covered.max() <= 1 and not (ink & (covered == 0)).any()


def test_flipped_boxes_enclose_the_flipped_digits():
    clean = read_digit_boxes("test", noise=0.0)
    train = InMemoryDetectionDataset(clean.images, clean.table, DetectionTransform(train=True))
    flips = set()
    for index in range(40):
        for epoch in range(2):
            image, target = train[(index, epoch)]
            _assert_tight(image.gt(0).any(0), target["boxes"])
            mirrored = F.to_dtype(train.images[index].flip(-1), torch.float32, scale=True)
            flips.add(torch.equal(image, mirrored))
    assert flips == {True, False}


def test_augmentation_is_deterministic_per_seed_epoch_index(coco):
    splits = read_coco(coco)
    train, plain = splits.train, splits.train_without_augmentation()

    def pattern(dataset, epoch):
        """Which images of ``epoch`` are flipped."""
        return tuple(
            not torch.equal(dataset[(i, epoch)][0], plain[i][0]) for i in range(len(dataset))
        )

    first = train.with_seed(3)[(1, 2)]
    again = train.with_seed(3)[(1, 2)]
    assert torch.equal(first[0], again[0]) and torch.equal(first[1]["boxes"], again[1]["boxes"])
    seeded = train.with_seed(3)
    seeded.set_epoch(2)
    assert torch.equal(seeded[1][0], first[0])  # a bare index uses set_epoch's epoch
    flips = {pattern(train.with_seed(3), epoch) for epoch in range(12)}
    assert len(flips) > 1  # the epoch changes the draw
    seeds = {pattern(train.with_seed(seed), 0) for seed in range(12)}
    assert len(seeds) > 1  # so does the seed


# --- loaders ---------------------------------------------------------------------------


def test_collate_keeps_samples_apart():
    images = [torch.zeros(3, 4, 5), torch.ones(3, 6, 2)]
    targets = [{"labels": torch.tensor([1])}, {"labels": torch.tensor([2, 1])}]
    batch = collate_detection([(images[0], targets[0], 7), (images[1], targets[1], 3)])
    assert batch[0] == tuple(images) and batch[1] == tuple(targets)
    assert batch[2].dtype == torch.int64 and batch[2].tolist() == [7, 3]
    assert len(collate_detection([(images[0], targets[0])])) == 2


def _same(sample: tuple, reference: tuple) -> bool:
    (image, target), (other, expected) = sample, reference
    return torch.equal(image, other) and all(
        torch.equal(target[key], expected[key]) for key in ("boxes", "labels", "image_id")
    )


def test_training_loader_batches_tuples_of_samples(coco):
    splits = read_coco(coco)
    train = splits.train.with_seed(4)
    batches = list(training_loader(splits.train, 2, seed=4, return_indices=True))
    assert len(batches) == 1
    images, targets, indices = batches[0]
    assert isinstance(images, tuple) and isinstance(targets, tuple)
    assert sorted(indices.tolist()) == [0, 1]
    assert images[0].shape != images[1].shape  # each image at its own size
    for image, target, index in zip(images, targets, indices.tolist()):
        assert _same((image, target), train[(index, 0)])
    workers = list(training_loader(splits.train, 2, seed=4, num_workers=2, return_indices=True))
    assert torch.equal(workers[0][2], indices)
    assert all(_same(a, b) for a, b in zip(zip(*workers[0][:2]), zip(images, targets)))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_evaluation_loader_shards_each_image_once(coco, world_size):
    test = read_coco(coco).test
    seen = []
    for rank in range(world_size):
        shard = []
        loader = eval_loader(test, 2, rank=rank, world_size=world_size, return_indices=True)
        for images, targets, indices in loader:
            assert isinstance(images, tuple) and len(images) == len(targets) == len(indices)
            for image, target, index in zip(images, targets, indices.tolist()):
                assert _same((image, target), test[index])
            shard += indices.tolist()
        assert shard == list(range(len(test)))[rank::world_size]
        seen += shard
    assert sorted(seen) == list(range(len(test)))
    ids = [int(t["image_id"]) for _, targets in evaluation_loader(test, 2) for t in targets]
    assert ids == [201, 202, 203]


def test_probe_detection_is_the_first_training_samples(coco):
    train = read_coco(coco).train
    images, targets = probe_detection(train, 2, torch.device("cpu"))
    assert len(images) == len(targets) == 2
    for index in range(2):
        assert _same((images[index], targets[index]), train[(index, 0)])


# --- digit boxes -----------------------------------------------------------------------


@functools.cache
def _digits(split: str) -> tuple[torch.Tensor, torch.Tensor]:
    return read_digits(split)


@pytest.mark.parametrize("split", ["train", "test"])
def test_digit_boxes_enclose_exactly_each_digit(split):
    clean = read_digit_boxes(split, noise=0.0)
    table = clean.table
    assert clean.images.shape == (SIZES[split], 3, CANVAS, CANVAS)
    assert clean.images.dtype == torch.uint8 and table.image_ids.tolist() == list(
        range(1, SIZES[split] + 1)
    )
    counts = table.counts()
    assert set(counts.tolist()) == set(range(1, MAX_DIGITS + 1))
    digits, labels = _digits(split)
    assert (table.labels == labels[clean.sources].numpy() + 1).all()  # label = digit + 1
    assert clean.scales.min() >= SCALES[0] and clean.scales.max() <= SCALES[1]
    for index in range(min(len(table), 250)):
        start, end = table.offsets[index], table.offsets[index + 1]
        ink = clean.images[index].gt(0).any(0)
        boxes = torch.from_numpy(table.boxes[start:end])
        _assert_tight(ink, boxes)
        for (x1, y1, x2, y2), source, scale in zip(
            boxes.long().tolist(), clean.sources[start:end], clean.scales[start:end]
        ):
            scaled = (
                torch.nn.functional.interpolate(digits[source][None], size=(int(scale),) * 2)[0, 0]
                > 0
            )
            rows, cols = scaled.any(1).nonzero()[:, 0], scaled.any(0).nonzero()[:, 0]
            trimmed = scaled[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1]
            assert torch.equal(ink[y1:y2, x1:x2], trimmed)  # the digit image, upscaled


def test_digit_boxes_come_from_disjoint_digit_images():
    train, test = (read_digit_boxes(split, noise=0.0) for split in ("train", "test"))
    used = {
        split: {_digits(split)[0][source].numpy().tobytes() for source in boxes.sources.tolist()}
        for split, boxes in (("train", train), ("test", test))
    }
    assert not used["train"] & used["test"]


def test_digit_boxes_noise_and_determinism():
    noisy, again = read_digit_boxes("test"), read_digit_boxes("test")
    assert torch.equal(noisy.images, again.images)
    clean = read_digit_boxes("test", noise=0.0)
    for field in ("boxes", "labels", "offsets", "image_ids"):
        assert np.array_equal(getattr(noisy.table, field), getattr(clean.table, field))
        assert np.array_equal(getattr(noisy.table, field), getattr(again.table, field))
    difference = (noisy.images.float() - clean.images.float()).abs().mean() / 255
    assert 0.3 * NOISE < difference < NOISE


def test_digit_box_splits_and_their_ground_truth():
    splits = load_splits("digit_boxes", None)
    assert splits.classes == [BACKGROUND, *CLASSES] and splits.num_classes == 11
    assert splits.category_ids == list(range(11)) and splits.in_channels == 3
    assert splits.train.transform.train and not splits.train_without_augmentation().transform.train
    facts = splits.describe("digit_boxes")
    assert (facts["train_samples"], facts["test_samples"]) == (SIZES["train"], SIZES["test"])
    assert "standard_size" not in facts
    images, targets, indices = next(
        iter(training_loader(splits.train, 4, seed=1, return_indices=True))
    )
    assert len(images) == len(targets) == 4 and images[0].shape == (3, CANVAS, CANVAS)
    for image, target, index in zip(images, targets, indices.tolist()):
        assert _same((image, target), splits.train.with_seed(1)[(index, 0)])
    truth = splits.ground_truth()
    assert [image["id"] for image in truth["images"]] == list(range(1, SIZES["test"] + 1))
    perfect = []
    for index in range(len(splits.test)):
        target = splits.test[index][1]
        for (x1, y1, x2, y2), label in zip(target["boxes"].tolist(), target["labels"].tolist()):
            category = splits.category_ids[label]
            bbox = [x1, y1, x2 - x1, y2 - y1]
            perfect.append(
                {
                    "image_id": int(target["image_id"]),
                    "category_id": category,
                    "bbox": bbox,
                    "score": 1.0,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        api = COCO()
        api.dataset = copy.deepcopy(truth)
        api.createIndex()
        evaluation = COCOeval(api, api.loadRes(perfect), "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert evaluation.stats[0] == pytest.approx(1.0)  # AP@[.5:.95] of the ground truth itself
