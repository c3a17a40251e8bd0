"""Multi-label VOC2007 and COCO2014 folders: targets, refusals, transforms and loaders."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from ndkd.data.coco import read_coco2014
from ndkd.data.multilabel import SquareTransform
from ndkd.data.sources import evaluation_loader, load_splits, probe_images, training_loader
from ndkd.data.streaming import IMAGENET_MEAN, IMAGENET_STD, eval_loader
from ndkd.data.voc import VOC_CLASSES, read_voc2007

SIZE = 24

# image id -> objects (class, difficult flag; None: no <difficult> tag)
VOC_TRAIN = {
    "000001": [("dog", "0"), ("dog", "0"), ("person", None)],
    "000002": [("cat", "1")],
    "000003": [("cat", "1"), ("cat", "0"), ("car", "1")],
    "000004": [],
    "000005": [("aeroplane", "0"), ("tvmonitor", "0")],
    "000006": [("bird", "0"), ("bird", "1")],
    "000007": [("sheep", "0")],
    "000008": [("sofa", "0"), ("chair", "0"), ("diningtable", "1")],
}
VOC_TEST = {
    "000010": [("sheep", "0")],
    "000011": [],
    "000012": [("bus", "0"), ("horse", "1")],
    "000013": [("pottedplant", "0")],
}


def _expected(objects: dict[str, list[tuple[str, str | None]]]) -> torch.Tensor:
    """The targets of the images with objects, in order, computed object by object."""
    rows = []
    for items in objects.values():
        if not items:
            continue
        row = [0] * len(VOC_CLASSES)
        for name, difficult in items:
            index = VOC_CLASSES.index(name)
            if difficult == "1":
                row[index] = row[index] or -1
            else:
                row[index] = 1
        rows.append(row)
    return torch.tensor(rows, dtype=torch.int8)


def _jpeg(path: Path, seed: int, size: tuple[int, int] = (20, 14)) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def _xml(objects: list[tuple[str, str | None]]) -> str:
    parts = []
    for name, difficult in objects:
        flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
        parts.append(f"<object><name>{name}</name><pose>Left</pose>{flag}</object>")
    return f"<annotation><folder>VOC2007</folder>{''.join(parts)}</annotation>"


def write_voc(root: Path) -> Path:
    """``root/VOCdevkit/VOC2007`` with the images of :data:`VOC_TRAIN` and :data:`VOC_TEST`;
    returns the ``VOC2007`` folder."""
    folder = root / "VOCdevkit" / "VOC2007"
    (folder / "Annotations").mkdir(parents=True)
    (folder / "ImageSets" / "Main").mkdir(parents=True)
    for image_set, objects in (("trainval", VOC_TRAIN), ("test", VOC_TEST)):
        (folder / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(objects) + "\n")
        for image, items in objects.items():
            (folder / "Annotations" / f"{image}.xml").write_text(_xml(items))
            _jpeg(folder / "JPEGImages" / f"{image}.jpg", int(image))
    return folder


# COCO: categories listed out of id order; image 12 has no annotation.
COCO_CATEGORIES = [{"id": 7, "name": "dog"}, {"id": 1, "name": "person"}, {"id": 3, "name": "cat"}]
COCO_CLASSES = ["person", "cat", "dog"]
COCO_ANNOTATIONS = {  # split -> image id -> category ids of its annotations
    "train2014": {10: [1, 1, 7], 11: [3], 12: [], 13: [7, 3, 1], 14: [1], 15: [3, 3]},
    "val2014": {20: [7], 21: [], 22: [1, 3]},
}


def write_coco(root: Path) -> Path:
    (root / "annotations").mkdir(parents=True)
    for name, images in COCO_ANNOTATIONS.items():
        entries, annotations = [], []
        for image, categories in images.items():
            file_name = f"COCO_{name}_{image:012d}.jpg"
            entries.append({"id": image, "file_name": file_name, "width": 20, "height": 14})
            _jpeg(root / name / file_name, image)
            for category in categories:
                annotations.append(
                    {"id": len(annotations), "image_id": image, "category_id": category}
                )
        data = {"images": entries, "annotations": annotations, "categories": COCO_CATEGORIES}
        (root / "annotations" / f"instances_{name}.json").write_text(json.dumps(data))
    return root


def _coco_expected(name: str) -> torch.Tensor:
    ids = [c["id"] for c in sorted(COCO_CATEGORIES, key=lambda c: c["id"])]
    rows = [
        [int(i in categories) for i in ids]
        for categories in COCO_ANNOTATIONS[name].values()
        if categories
    ]
    return torch.tensor(rows, dtype=torch.int8)


# --- VOC2007 ---------------------------------------------------------------------------


def test_voc_targets_classes_and_skipped_images(tmp_path, caplog):
    folder = write_voc(tmp_path)
    with caplog.at_level(logging.INFO, logger="ndkd.data.voc"):
        splits = read_voc2007(tmp_path, SIZE)
    assert splits.classes == VOC_CLASSES and splits.num_classes == 20 and splits.in_channels == 3
    assert torch.equal(splits.train.labels, _expected(VOC_TRAIN))
    assert torch.equal(splits.test.labels, _expected(VOC_TEST))
    assert splits.train.labels.dtype == torch.int8
    kept = [image for image, items in VOC_TRAIN.items() if items]
    assert [splits.train.path(i).name for i in range(len(splits.train))] == [
        f"{image}.jpg" for image in kept
    ]
    assert splits.train.path(0).parent == folder / "JPEGImages"
    assert splits.ap_definition == "interpolated"
    facts = splits.describe("voc2007")
    assert facts["train_samples"] == 7 and facts["test_samples"] == 3
    assert facts["train_images_without_labels"] == 1 and facts["test_images_without_labels"] == 1
    assert facts["classes"] == VOC_CLASSES and facts["ap_definition"] == "interpolated"
    assert (facts["standard_train_samples"], facts["standard_test_samples"]) == (5011, 4952)
    assert facts["standard_size"] is False
    assert "dropped 1 images without objects" in caplog.text and "listed in" in caplog.text


@pytest.mark.parametrize("form", ["above VOCdevkit", "VOCdevkit", "VOC2007"])
def test_voc_root_forms(tmp_path, form):
    folder = write_voc(tmp_path)
    root = {"above VOCdevkit": tmp_path, "VOCdevkit": folder.parent, "VOC2007": folder}[form]
    splits = load_splits("voc2007", root, SIZE)
    assert torch.equal(splits.train.labels, _expected(VOC_TRAIN))
    assert splits.train.path(0).parent == folder / "JPEGImages"


def _break_voc(folder: Path, case: str) -> tuple[type[Exception], str]:
    main = folder / "ImageSets" / "Main"
    if case == "no voc folder":
        shutil.rmtree(folder.parent)
        return FileNotFoundError, "no VOC2007 folder in"
    if case == "missing JPEGImages":
        shutil.rmtree(folder / "JPEGImages")
        return FileNotFoundError, f"{folder} holds no JPEGImages/"
    if case == "missing image set":
        (main / "test.txt").unlink()
        return FileNotFoundError, f"{main / 'test.txt'} is missing"
    if case == "id without xml":
        (main / "trainval.txt").write_text("000001\n000099\n")
        return FileNotFoundError, "000099.xml is missing: .*trainval.txt lists image '000099'"
    if case == "unknown class":
        (folder / "Annotations" / "000003.xml").write_text(_xml([("unicorn", "0")]))
        return ValueError, "000003.xml: unknown class 'unicorn'"
    if case == "malformed xml":
        (folder / "Annotations" / "000012.xml").write_text("<annotation><object>")
        return ValueError, "000012.xml: malformed XML"
    (folder / "Annotations" / "000002.xml").write_text(_xml([("cat", "yes")]))
    return ValueError, "000002.xml: object 'cat' has difficult='yes'"


@pytest.mark.parametrize(
    "case",
    [
        "no voc folder",
        "missing JPEGImages",
        "missing image set",
        "id without xml",
        "unknown class",
        "malformed xml",
        "bad difficult flag",
    ],
)
def test_voc_refusals(tmp_path, case):
    folder = write_voc(tmp_path)
    error, message = _break_voc(folder, case)
    with pytest.raises(error, match=message):
        read_voc2007(tmp_path, SIZE)


# --- COCO2014 --------------------------------------------------------------------------


def test_coco_targets_classes_and_skipped_images(tmp_path, caplog):
    root = write_coco(tmp_path)
    with caplog.at_level(logging.INFO, logger="ndkd.data.coco"):
        splits = load_splits("coco2014", root, SIZE)
    assert splits.classes == COCO_CLASSES
    assert torch.equal(splits.train.labels, _coco_expected("train2014"))
    assert torch.equal(splits.test.labels, _coco_expected("val2014"))
    assert splits.train.path(1) == root / "train2014" / "COCO_train2014_000000000011.jpg"
    assert splits.ap_definition == "plain"
    facts = splits.describe("coco2014")
    assert (facts["train_samples"], facts["test_samples"]) == (5, 2)
    assert facts["train_images_without_labels"] == 1 and facts["test_images_without_labels"] == 1
    assert (facts["standard_train_samples"], facts["standard_test_samples"]) == (82081, 40137)
    assert facts["standard_size"] is False and facts["ap_definition"] == "plain"
    assert "dropped 1 images without annotations" in caplog.text


def _edit_json(root: Path, name: str, change) -> Path:
    path = root / "annotations" / f"instances_{name}.json"
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def _break_coco(root: Path, case: str) -> tuple[type[Exception], str]:
    annotations = root / "annotations"
    if case == "missing json":
        (annotations / "instances_val2014.json").unlink()
        return FileNotFoundError, "instances_val2014.json is missing"
    if case == "missing images":
        shutil.rmtree(root / "train2014")
        return FileNotFoundError, f"{root / 'train2014'} is missing"
    if case == "malformed json":
        (annotations / "instances_train2014.json").write_text('{"images": [')
        return ValueError, "instances_train2014.json: malformed JSON"
    if case == "not instances":
        (annotations / "instances_val2014.json").write_text('{"images": []}')
        return ValueError, "instances_val2014.json: expected an object with lists"
    if case == "entry without field":
        _edit_json(root, "train2014", lambda d: d["images"][0].pop("file_name"))
        return ValueError, "instances_train2014.json: malformed images entry"
    if case == "unknown image":
        _edit_json(root, "val2014", lambda d: d["annotations"][1].update(image_id=99))
        return ValueError, r"val2014.json: annotations\[1\] has image_id 99, not one of the 3 im"
    if case == "different categories":
        _edit_json(root, "val2014", lambda d: d["categories"][0].update(name="wolf"))
        return ValueError, "list different categories"
    _edit_json(root, "train2014", lambda d: d["annotations"][2].update(category_id=5))
    return ValueError, r"train2014.json: annotations\[2\] has category_id 5, not one of the 3 cat"


@pytest.mark.parametrize(
    "case",
    [
        "missing json",
        "missing images",
        "malformed json",
        "not instances",
        "entry without field",
        "unknown image",
        "different categories",
        "unknown category",
    ],
)
def test_coco_refusals(tmp_path, case):
    root = write_coco(tmp_path)
    error, message = _break_coco(root, case)
    with pytest.raises(error, match=message):
        read_coco2014(root, SIZE)


# --- transforms ------------------------------------------------------------------------


def test_training_transform_is_deterministic_per_seed_epoch_index(tmp_path):
    write_voc(tmp_path)
    train = read_voc2007(tmp_path, SIZE).train.with_seed(3)
    first = train[(2, 1)][0]
    assert first.shape == (3, SIZE, SIZE) and first.dtype == torch.float32
    assert torch.equal(first, train[(2, 1)][0])
    assert torch.equal(first, train.with_seed(3)[(2, 1)][0])
    assert not torch.equal(first, train[(2, 2)][0])  # another epoch
    assert not torch.equal(first, train.with_seed(4)[(2, 1)][0])  # another seed
    assert not torch.equal(first, train[(2, 1, 1)][0])  # another repeated-augmentation copy
    train.set_epoch(1)
    assert torch.equal(first, train[2][0])


def test_training_transform_without_jitter_is_the_square_resize_or_its_flip(tmp_path):
    write_voc(tmp_path)
    splits = read_voc2007(tmp_path, SIZE)
    train = splits.train.with_transform(SquareTransform(SIZE, train=True, jitter=0.0))
    plain = splits.train_without_augmentation()
    assert plain.transform == splits.test.transform and len(plain) == len(splits.train)
    flips = set()
    for index in range(len(train)):
        reference = plain[index][0]
        for epoch in range(3):
            image = train[(index, epoch)][0]
            flipped = torch.equal(image, reference.flip(-1))
            assert flipped or torch.equal(image, reference)
            flips.add(flipped)
    assert flips == {True, False}


def test_evaluation_transform_is_a_square_resize_and_normalization(tmp_path):
    write_voc(tmp_path)
    splits = read_voc2007(tmp_path, SIZE)
    pipeline = v2.Compose(
        [
            v2.PILToTensor(),
            v2.Resize((SIZE, SIZE), antialias=True),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    for dataset in (splits.test, splits.train_without_augmentation()):
        for index in range(len(dataset)):
            image, target = dataset[(index, 5)]
            expected = pipeline(Image.open(dataset.path(index)).convert("RGB"))
            assert torch.equal(image, expected)  # bit for bit
            assert torch.equal(target, dataset.labels[index]) and target.dtype == torch.int8


# --- loaders ---------------------------------------------------------------------------


def test_loaders_give_multi_hot_batches(tmp_path):
    write_coco(tmp_path)
    splits = read_coco2014(tmp_path, SIZE)
    batches = list(training_loader(splits.train, 2, seed=0, return_indices=True))
    indices = torch.cat([b[2] for b in batches])
    assert sorted(indices.tolist()) == list(range(len(splits.train)))
    for images, targets, index in batches:
        assert images.shape == (len(index), 3, SIZE, SIZE) and images.dtype == torch.float32
        assert targets.dtype == torch.int8 and targets.shape == (len(index), 3)
        assert torch.equal(targets, splits.train.labels[index])
    workers = training_loader(splits.train, 2, seed=0, num_workers=2, return_indices=True)
    for ours, theirs in zip(batches, workers, strict=True):
        assert all(torch.equal(a, b) for a, b in zip(ours, theirs))  # worker-independent
    targets = torch.cat([t for _, t in evaluation_loader(splits.test, 4)])
    assert torch.equal(targets, splits.test.labels)
    probe = probe_images(splits.train, 2, torch.device("cpu"))
    assert probe.shape == (2, 3, SIZE, SIZE)


@pytest.mark.parametrize("world_size", [2, 3])
def test_evaluation_shards_cover_every_sample_once(tmp_path, world_size):
    write_voc(tmp_path)
    train = read_voc2007(tmp_path, SIZE).train
    seen = []
    for rank in range(world_size):
        shard = []
        for _, targets, index in eval_loader(
            train, 2, rank=rank, world_size=world_size, return_indices=True
        ):
            assert torch.equal(targets, train.labels[index])
            shard += index.tolist()
        assert shard == list(range(len(train)))[rank::world_size]
        seen += shard
    assert sorted(seen) == list(range(len(train)))
