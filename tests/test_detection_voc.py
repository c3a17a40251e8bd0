"""VOC 2007 + 2012 detection (``voc0712``): targets, the box convention, difficult objects,
image ids, refusals, the ground truth in pycocotools and the VOC 2007 metric, the loaders."""

from __future__ import annotations

import contextlib
import io
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

from ndkd.data.detection import BACKGROUND
from ndkd.data.sources import evaluation_loader, load_splits, training_loader
from ndkd.data.voc import VOC_CLASSES
from ndkd.data.voc_detection import IMAGE_ID_RULE, read_voc0712, voc_image_id
from ndkd.tasks.voc_detection_map import voc07_average_precisions

# (year, image set) -> name -> ((width, height), [(class, difficult, (xmin, ymin, xmax, ymax))])
# difficult None: no <difficult> tag.
IMAGES = {
    ("2007", "trainval"): {
        "000001": (
            (40, 30),
            [
                ("dog", "0", (1, 1, 10, 8)),
                ("person", None, (5, 5, 40, 30)),  # the whole image below-right of (4, 4)
                ("cat", "1", (2, 3, 6, 9)),
                ("car", "0", (45, 2, 50, 6)),  # right of the image: no area once clipped
            ],
        ),
        "000002": ((32, 24), [("cat", "1", (3, 3, 9, 9))]),  # only difficult: not trained
        "000003": ((20, 16), [("bird", "0", (15, 10, 25, 20))]),  # clipped to the image
    },
    ("2012", "trainval"): {
        "2008_000002": ((36, 28), [("train", "0", (2, 2, 20, 20)), ("bottle", "0", (5, 5, 5, 5))]),
        "2011_000123": ((30, 20), [("sheep", "1", (1, 1, 10, 10)), ("sofa", "0", (3, 3, 9, 9))]),
        "2007_000001": ((20, 20), [("aeroplane", None, (2.5, 2, 8, 8.5))]),  # id != 000001's
    },
    ("2007", "test"): {
        "000004": ((40, 30), [("horse", "0", (3, 4, 12, 10)), ("horse", "1", (20, 5, 30, 15))]),
        "000005": ((24, 16), []),  # no object: evaluated all the same
        "000006": ((24, 16), [("tvmonitor", "0", (1, 1, 24, 16)), ("dog", "0", (2, 2, 8, 8))]),
    },
}
IDS = {
    "000001": 1,
    "000002": 2,
    "000003": 3,
    "2008_000002": 8_000_002,
    "2011_000123": 11_000_123,
    "2007_000001": 7_000_001,
    "000004": 4,
    "000005": 5,
    "000006": 6,
}


def _jpeg(path: Path, seed: int, size: tuple[int, int]) -> None:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, quality=90)


def _xml(size: tuple[int, int], objects: list) -> str:
    parts = []
    for name, difficult, box in objects:
        flag = "" if difficult is None else f"<difficult>{difficult}</difficult>"
        corners = "".join(
            f"<{key}>{value}</{key}>" for key, value in zip(("xmin", "ymin", "xmax", "ymax"), box)
        )
        parts.append(f"<object><name>{name}</name>{flag}<bndbox>{corners}</bndbox></object>")
    width, height = size
    dimensions = f"<size><width>{width}</width><height>{height}</height><depth>3</depth></size>"
    return f"<annotation>{dimensions}{''.join(parts)}</annotation>"


def write_voc0712(root: Path) -> Path:
    """``root/VOCdevkit/VOC{2007,2012}`` with :data:`IMAGES`; returns ``VOCdevkit``."""
    devkit = root / "VOCdevkit"
    for (year, image_set), images in IMAGES.items():
        folder = devkit / f"VOC{year}"
        (folder / "Annotations").mkdir(parents=True, exist_ok=True)
        (folder / "ImageSets" / "Main").mkdir(parents=True, exist_ok=True)
        (folder / "ImageSets" / "Main" / f"{image_set}.txt").write_text("\n".join(images) + "\n")
        for name, (size, objects) in images.items():
            (folder / "Annotations" / f"{name}.xml").write_text(_xml(size, objects))
            _jpeg(folder / "JPEGImages" / f"{name}.jpg", IDS[name], size)
    return devkit


def _box(size: tuple[int, int], box: tuple) -> list[float]:
    """1-based inclusive pixel indices -> continuous corners, clipped to the image."""
    (width, height), (xmin, ymin, xmax, ymax) = size, box
    return [
        min(max(xmin - 1, 0), width),
        min(max(ymin - 1, 0), height),
        min(xmax, width),
        min(ymax, height),
    ]


def _expected(size: tuple[int, int], objects: list, difficult: bool) -> list[tuple]:
    """``(box, label, difficult)`` of the objects with area (``difficult``: those too)."""
    rows = []
    for name, flag, box in objects:
        x1, y1, x2, y2 = corners = _box(size, box)
        if x2 > x1 and y2 > y1 and (difficult or flag != "1"):
            rows.append((corners, VOC_CLASSES.index(name) + 1, int(flag == "1")))
    return rows


@pytest.fixture(scope="module")
def devkit(tmp_path_factory) -> Path:
    return write_voc0712(tmp_path_factory.mktemp("voc0712"))


@pytest.fixture(scope="module")
def splits(devkit):
    return load_splits("voc0712", devkit.parent)


# --- targets ---------------------------------------------------------------------------


def test_targets_follow_the_annotations(devkit, splits):
    assert splits.classes == [BACKGROUND, *VOC_CLASSES] and splits.num_classes == 21
    assert splits.category_ids == list(range(21)) and splits.metric == "voc07"
    kept = {  # training: images with a non-difficult box
        "train": [
            (y, s, n) for (y, s), images in IMAGES.items() if s == "trainval" for n in images
        ],
        "test": [("2007", "test", name) for name in IMAGES[("2007", "test")]],
    }
    kept["train"].remove(("2007", "trainval", "000002"))
    datasets = {"train": splits.train_without_augmentation(), "test": splits.test}
    for split, dataset in datasets.items():
        assert len(dataset) == len(kept[split])
        for index, (year, image_set, name) in enumerate(kept[split]):
            size, objects = IMAGES[(year, image_set)][name]
            image, target = dataset[(index, 2)]
            path = devkit / f"VOC{year}" / "JPEGImages" / f"{name}.jpg"
            assert dataset.path(index) == path
            reference = F.pil_to_tensor(Image.open(path).convert("RGB"))
            assert torch.equal(image, F.to_dtype(reference, torch.float32, scale=True))
            rows = _expected(size, objects, difficult=False)
            assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (
                len(rows),
                4,
            )
            assert target["boxes"].tolist() == [box for box, _, _ in rows]
            assert target["labels"].dtype == torch.int64
            assert target["labels"].tolist() == [label for _, label, _ in rows]
            assert target["image_id"].dtype == torch.int64 and target["image_id"].dim() == 0
            assert int(target["image_id"]) == IDS[name]


def test_box_convention_is_one_based_inclusive_pixels(splits):
    test = splits.test
    full, small = test[2][1]["boxes"].tolist()  # 000006: (1, 1, 24, 16) in a 24 x 16 image
    assert full == [0, 0, 24, 16] and small == [1, 1, 8, 8]
    train = splits.train_without_augmentation()
    bottle = train[2][1]["boxes"][1].tolist()  # 2008_000002: a one-pixel box (5, 5, 5, 5)
    assert bottle == [4, 4, 5, 5]
    assert train[1][1]["boxes"].tolist() == [[14, 9, 20, 16]]  # 000003: clipped
    assert train[4][1]["boxes"].tolist() == [[1.5, 1, 8, 8.5]]  # decimals kept


def test_describe_counts_what_was_left_out(splits, devkit, caplog):
    facts = splits.describe("voc0712")
    assert (facts["train_samples"], facts["test_samples"]) == (5, 3)
    assert (facts["train_boxes"], facts["test_boxes"]) == (7, 3)
    assert facts["train_images_without_boxes"] == 1
    assert (facts["train_boxes_left_out"], facts["test_boxes_left_out"]) == (4, 1)
    assert (facts["standard_train_samples"], facts["standard_test_samples"]) == (16551, 4952)
    assert facts["standard_size"] is False and facts["metric"] == "voc07"
    assert facts["train_samples_per_image_set"] == {"VOC2007/trainval": 2, "VOC2012/trainval": 3}
    assert facts["image_ids"] == IMAGE_ID_RULE
    with caplog.at_level(logging.INFO, logger="ndkd.data.voc_detection"):
        read_voc0712(devkit)
    assert "left 3 difficult and 1 empty boxes out of the train targets" in caplog.text
    assert "dropped 1 training images without boxes" in caplog.text
    assert "5 training (2 + 3) and 3 test images" in caplog.text


def test_image_ids_are_unique_across_years():
    assert {name: voc_image_id(name) for name in IDS} == IDS
    assert voc_image_id("2015_999999") == 15_999_999 < 2**24
    for name in ("2000_000001", "2016_000001", "00001", "0000001", "2008-000002", "a00001"):
        assert voc_image_id(name) is None


# --- ground truth and its evaluation -------------------------------------------------


def _truth_rows() -> list[tuple]:
    """``(image id, box, label, difficult)`` of every test object with area."""
    return [
        (IDS[name], *row)
        for name, (size, objects) in IMAGES[("2007", "test")].items()
        for row in _expected(size, objects, difficult=True)
    ]


def test_ground_truth_keeps_difficult_boxes_flagged(splits):
    truth = splits.ground_truth()
    sizes = {IDS[name]: size for name, (size, _) in IMAGES[("2007", "test")].items()}
    assert truth["images"] == [{"id": i, "width": w, "height": h} for i, (w, h) in sizes.items()]
    assert truth["categories"] == [{"id": i + 1, "name": n} for i, n in enumerate(VOC_CLASSES)]
    expected = [
        {
            "id": number,
            "image_id": image,
            "category_id": label,
            "bbox": [x1, y1, x2 - x1, y2 - y1],
            "area": (x2 - x1) * (y2 - y1),
            "iscrowd": 0,
            "difficult": difficult,
        }
        for number, (image, (x1, y1, x2, y2), label, difficult) in enumerate(_truth_rows(), 1)
    ]
    assert truth["annotations"] == expected
    assert [a["difficult"] for a in truth["annotations"]] == [0, 1, 0, 0]


def _detections(rows: list[tuple]) -> torch.Tensor:
    """A detection on each box, those on difficult boxes scored highest."""
    return torch.tensor(
        [
            [image, x1, y1, x2 - x1, y2 - y1, 0.9 + 0.05 * hard, label]
            for image, (x1, y1, x2, y2), label, hard in rows
        ],
        dtype=torch.float64,
    )


def test_voc07_metric_ignores_difficult_boxes(splits):
    truth = splits.ground_truth()
    easy = [row for row in _truth_rows() if not row[3]]
    aps = voc07_average_precisions(_detections(easy), truth)
    assert {k: v for k, v in aps.items() if v == v} == {12: 1.0, 13: 1.0, 20: 1.0}  # dog, ...
    with_hard = voc07_average_precisions(_detections(_truth_rows()), truth)
    assert with_hard[13] == 1.0  # the top detection, on the difficult horse, counts neither way
    truth["annotations"][1]["difficult"] = 0
    assert voc07_average_precisions(_detections(_truth_rows()), truth)[13] == 1.0
    easy_only = voc07_average_precisions(_detections(easy), truth)
    assert easy_only[13] == pytest.approx(6 / 11)  # unflagged, the difficult horse is missed


def test_ground_truth_loads_into_pycocotools(splits):
    api = COCO()
    with contextlib.redirect_stdout(io.StringIO()):
        api.dataset = splits.ground_truth()
        api.createIndex()
        results = api.loadRes(_detections(_truth_rows()).numpy())
        evaluation = COCOeval(api, results, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert sorted(api.getImgIds()) == [4, 5, 6] and len(api.getAnnIds()) == 4
    assert evaluation.stats[0] == pytest.approx(1.0)


# --- root forms and refusals -----------------------------------------------------------


@pytest.mark.parametrize("form", ["above VOCdevkit", "VOCdevkit"])
def test_root_forms(devkit, splits, form):
    root = devkit.parent if form == "above VOCdevkit" else devkit
    again = read_voc0712(root)
    assert [again.train.path(i) for i in range(len(again.train))] == [
        splits.train.path(i) for i in range(len(splits.train))
    ]
    assert again.ground_truth() == splits.ground_truth()


def _rewrite(devkit: Path, year: str, name: str, size: tuple[int, int], objects: list) -> Path:
    xml = devkit / f"VOC{year}" / "Annotations" / f"{name}.xml"
    xml.write_text(_xml(size, objects))
    return xml


def _break(devkit: Path, case: str) -> tuple[type[Exception], str]:
    main07, main12 = (devkit / f"VOC{year}" / "ImageSets" / "Main" for year in ("2007", "2012"))
    if case == "no VOC2012 folder":
        shutil.rmtree(devkit / "VOC2012")
        return FileNotFoundError, "no VOC2012 folder in"
    if case == "missing Annotations":
        shutil.rmtree(devkit / "VOC2012" / "Annotations")
        return FileNotFoundError, "VOC2012 holds no Annotations/"
    if case == "missing image set":
        (main07 / "test.txt").unlink()
        return FileNotFoundError, f"{main07 / 'test.txt'} is missing"
    if case == "id without xml":
        (main12 / "trainval.txt").write_text("2008_000002\n2009_000099\n")
        return FileNotFoundError, "2009_000099.xml is missing: .*trainval.txt lists image"
    if case == "malformed xml":
        (devkit / "VOC2007" / "Annotations" / "000004.xml").write_text("<annotation><object>")
        return ValueError, "000004.xml: malformed XML"
    if case == "unknown class":
        _rewrite(devkit, "2012", "2011_000123", (30, 20), [("unicorn", "0", (1, 1, 2, 2))])
        return ValueError, "2011_000123.xml: unknown class 'unicorn'"
    if case == "bad difficult flag":
        _rewrite(devkit, "2007", "000003", (20, 16), [("bird", "2", (1, 1, 2, 2))])
        return ValueError, "000003.xml: object 'bird' has difficult='2'"
    if case == "box not a number":
        _rewrite(devkit, "2007", "000006", (24, 16), [("dog", "0", (1, "x", 2, 2))])
        return ValueError, r"000006.xml: object 0 \(dog\) has a malformed <bndbox>"
    if case == "box missing a corner":
        _rewrite(devkit, "2012", "2008_000002", (9, 9), [("cat", "0", (1, 1, 2))])
        return ValueError, r"2008_000002.xml: object 0 \(cat\) has a malformed <bndbox>"
    if case == "box inside out":
        objects = [("dog", "0", (1, 1, 5, 5)), ("cat", "1", (6, 1, 5, 5))]
        _rewrite(devkit, "2007", "000001", (9, 9), objects)
        return ValueError, r"000001.xml: object 1 \(cat\) has xmax < xmin or ymax < ymin"
    if case == "no size":
        xml = devkit / "VOC2007" / "Annotations" / "000005.xml"
        xml.write_text("<annotation></annotation>")
        return ValueError, "000005.xml: malformed <size>"
    if case == "zero size":
        _rewrite(devkit, "2007", "000005", (0, 16), [])
        return ValueError, "000005.xml: malformed <size>"
    if case == "name not VOC":
        (main12 / "trainval.txt").write_text("2008_000002\nholiday\n")
        return ValueError, "VOC2012/ImageSets/Main/trainval.txt: image 'holiday' is not named"
    if case == "listed twice":
        (main07 / "trainval.txt").write_text("000001\n000003\n000001\n")
        return ValueError, "VOC2007/ImageSets/Main/trainval.txt: image '000001' is listed twice"
    shutil.copy(
        devkit / "VOC2007" / "Annotations" / "000003.xml", devkit / "VOC2012" / "Annotations"
    )
    (main12 / "trainval.txt").write_text("2008_000002\n000003\n")
    return ValueError, f"trainval.txt: image '000003' is listed also in {main07 / 'trainval.txt'}"


@pytest.mark.parametrize(
    "case",
    [
        "no VOC2012 folder",
        "missing Annotations",
        "missing image set",
        "id without xml",
        "malformed xml",
        "unknown class",
        "bad difficult flag",
        "box not a number",
        "box missing a corner",
        "box inside out",
        "no size",
        "zero size",
        "name not VOC",
        "listed twice",
        "listed in both years",
    ],
)
def test_refusals(tmp_path, case):
    devkit = write_voc0712(tmp_path)
    error, message = _break(devkit, case)
    with pytest.raises(error, match=message):
        read_voc0712(tmp_path)


def test_root_must_be_a_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        read_voc0712(tmp_path / "nowhere")


# --- loaders ---------------------------------------------------------------------------


def _same(sample: tuple, reference: tuple) -> bool:
    (image, target), (other, expected) = sample, reference
    return torch.equal(image, other) and all(
        torch.equal(target[key], expected[key]) for key in ("boxes", "labels", "image_id")
    )


def test_loaders_batch_tuples_of_samples(splits):
    train = splits.train.with_seed(4)
    batches = list(training_loader(splits.train, 3, seed=4, return_indices=True))
    assert [len(batch[0]) for batch in batches] == [3, 2]
    seen = []
    for images, targets, indices in batches:
        assert isinstance(images, tuple) and isinstance(targets, tuple)
        for image, target, index in zip(images, targets, indices.tolist()):
            assert _same((image, target), train[(index, 0)])
        seen += indices.tolist()
    assert sorted(seen) == list(range(len(splits.train)))
    flips = {
        not torch.equal(train[(i, e)][0], splits.train_without_augmentation()[i][0])
        for i in range(len(train))
        for e in range(3)
    }
    assert flips == {True, False}
    shards = [list(evaluation_loader(splits.test, 2, rank=rank, world_size=2)) for rank in range(2)]
    ids = [int(t["image_id"]) for shard in shards for _, targets in shard for t in targets]
    assert sorted(ids) == [4, 5, 6]
