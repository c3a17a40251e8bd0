"""The multi-label task: batches, loss rows, training meter, evaluation record, class means."""

from __future__ import annotations

import math
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from ndkd.models.output import ModelOutput
from ndkd.progress import Progress
from ndkd.tasks.multilabel import MultiLabelTask
from ndkd.tasks.ranking import AP_DEFINITIONS, average_precision, threshold_metrics

CLASSES = ["cat", "dog", "person", "traffic light"]
CPU = torch.device("cpu")


class Tiny(nn.Module):
    """A 5-d embedding and one logit per class from 3x4x4 images."""

    def __init__(self, classes: int = len(CLASSES)) -> None:
        super().__init__()
        self.body = nn.Linear(48, 5)
        self.head = nn.Linear(5, classes)

    def forward(self, images: torch.Tensor) -> ModelOutput:
        embedding = torch.relu(self.body(images.flatten(1))) + 0.1
        return ModelOutput(self.head(embedding), embedding)


def _data(n: int = 37, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images and int8 targets (1 / 0 / -1); every class present in the first image."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, 4, 4, generator=generator)
    targets = torch.randint(-1, 2, (n, len(CLASSES)), generator=generator).to(torch.int8)
    targets[0] = 1
    return images, targets


def _batches(images, targets, size: int = 8) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(images[i : i + size], targets[i : i + size]) for i in range(0, len(images), size)]


def _model() -> Tiny:
    torch.manual_seed(0)
    return Tiny()


@pytest.mark.parametrize("definition", AP_DEFINITIONS)
def test_evaluate_reports_every_metric_in_percent(definition):
    images, targets = _data()
    model = _model()
    task = MultiLabelTask(CLASSES, ap_definition=definition)
    record = task.evaluate(model, _batches(images, targets), CPU, nullcontext)

    with torch.no_grad():
        scores = torch.sigmoid(model(images).logits).double()
    present, ignore = targets > 0, targets < 0
    ap = {name: average_precision(scores, present, ignore, name) for name in AP_DEFINITIONS}
    expected = {"test_map": 100 * float(ap[definition].mean())}
    expected.update({f"test_map_{name}": 100 * float(v.mean()) for name, v in ap.items()})
    counts = threshold_metrics(scores, present, ignore, 0.5)
    expected.update({f"test_{key}": 100 * float(v) for key, v in counts.items()})
    expected.update({f"test_ap/{c}": 100 * float(v) for c, v in zip(CLASSES, ap[definition])})
    expected["test_samples"] = len(images)

    assert list(record) == list(expected)
    for key, value in expected.items():
        assert record[key] == pytest.approx(value, rel=1e-6), key
    assert isinstance(record["test_samples"], int)
    assert not model.training


def test_evaluate_leaves_a_class_without_positives_out_of_the_mean():
    images, targets = _data()
    targets[:, 1] = torch.where(targets[:, 1] > 0, -1, targets[:, 1])  # only "difficult" dogs
    record = MultiLabelTask(CLASSES).evaluate(_model(), _batches(images, targets), CPU, nullcontext)
    assert math.isnan(record["test_ap/dog"])
    others = [record[f"test_ap/{c}"] for c in CLASSES if c != "dog"]
    assert record["test_map"] == pytest.approx(sum(others) / len(others))


def test_evaluate_refuses_an_empty_split_and_a_wrong_class_count():
    task = MultiLabelTask(CLASSES)
    with pytest.raises(ValueError, match="no samples"):
        task.evaluate(_model(), [], CPU, nullcontext)
    images, targets = _data()
    with pytest.raises(ValueError, match="predicts 3 classes but the task has 4"):
        task.evaluate(Tiny(classes=3), _batches(images, targets[:, :3]), CPU, nullcontext)


def test_constructor_checks_its_options():
    with pytest.raises(ValueError, match="at least one class"):
        MultiLabelTask([])
    with pytest.raises(ValueError, match="repeated: \\['cat'\\]"):
        MultiLabelTask(["cat", "dog", "cat"])
    with pytest.raises(ValueError, match="unknown ap_definition"):
        MultiLabelTask(CLASSES, ap_definition="voc07")
    with pytest.raises(ValueError, match="threshold"):
        MultiLabelTask(CLASSES, threshold=1.0)


class Recorder(nn.Module):
    """A method that keeps the rows it was given and returns a BCE on them."""

    def forward(self, rows, epoch: int) -> dict[str, torch.Tensor]:
        self.rows, self.epoch = rows, epoch
        return {
            "bce": nn.functional.binary_cross_entropy_with_logits(rows.student.logits, rows.labels)
        }


def test_step_losses_pass_float_multi_hot_labels_and_fp32_outputs():
    images, targets = _data(n=6)
    indices = torch.arange(10, 16)
    task = MultiLabelTask(CLASSES)
    batch = task.to_device((images, targets, indices), CPU, torch.channels_last, train=True)
    assert batch.images.is_contiguous(memory_format=torch.channels_last)
    model = _model()
    student = task.forward(model, batch)
    half = ModelOutput(student.logits.bfloat16(), student.embedding.bfloat16())
    method = Recorder()
    losses = task.step_losses(method, half, half, batch, epoch=3)
    rows = method.rows
    assert set(losses) == {"bce"} and method.epoch == 3
    assert rows.labels.dtype == torch.float32
    assert torch.equal(rows.labels, (targets != 0).float())  # "difficult" (-1) counts as present
    assert rows.student.logits.dtype == rows.teacher.embedding.dtype == torch.float32
    assert rows.images is batch.images and torch.equal(rows.indices, indices)
    assert rows.mix_weights is None
    assert task.step_losses(method, student, None, batch, 0) and method.rows.teacher is None


def test_train_meter_counts_micro_precision_recall_and_norms():
    images, targets = _data(n=20)
    task = MultiLabelTask(CLASSES, threshold=0.4)
    model = _model()
    meter = task.train_meter(CPU, with_teacher=True)
    predicted, present, s_norm, t_norm = [], [], 0.0, 0.0
    for raw in _batches(images, targets, size=7):
        batch = task.to_device(raw, CPU, None, train=True)
        with torch.no_grad():
            out = task.forward(model, batch)
        teacher = ModelOutput(out.logits, 2 * out.embedding)
        meter.update(out, teacher, batch)
        predicted.append(torch.sigmoid(out.logits) >= 0.4)
        present.append(batch.targets != 0)
        s_norm += float(out.embedding.norm(dim=1).sum())
        t_norm += float(teacher.embedding.norm(dim=1).sum())
    predicted, present = torch.cat(predicted), torch.cat(present)
    totals = meter.totals().tolist()
    assert totals[0] == len(images)
    record = meter.summarize(totals)
    correct = int((predicted & present).sum())
    assert record["train_precision"] == pytest.approx(100 * correct / int(predicted.sum()))
    assert record["train_recall"] == pytest.approx(100 * correct / int(present.sum()))
    assert record["student_emb_norm"] == pytest.approx(s_norm / len(images))
    assert record["teacher_emb_norm"] == pytest.approx(t_norm / len(images))
    # nothing predicted: precision 0, not a division by zero
    alone = task.train_meter(CPU, with_teacher=False).summarize([2.0, 0.0, 0.0, 3.0, 4.0, 0.0])
    assert alone == {"train_precision": 0.0, "train_recall": 0.0, "student_emb_norm": 2.0}


def test_class_means_average_over_the_images_of_each_class():
    images, targets = _data()
    model = _model().train()
    task = MultiLabelTask(CLASSES)
    events: list[Progress] = []
    batches = _batches(images, targets)
    means = task.class_means(
        model, batches, len(CLASSES), CPU, metadata={"dataset": "toy"}, progress=events.append
    )
    with torch.no_grad():
        embedding = model(images).embedding.double()
    for c in range(len(CLASSES)):
        rows = targets[:, c] != 0
        torch.testing.assert_close(means.means[c], embedding[rows].mean(0).float())
        assert int(means.counts[c]) == int(rows.sum())
    assert means.metadata["num_samples"] == str(int((targets != 0).sum()))
    assert means.metadata["dataset"] == "toy"
    assert [(e.phase, e.done, e.total) for e in events] == [
        ("centers", i, len(batches)) for i in range(1, len(batches) + 1)
    ]
    assert model.training  # its mode is restored

    pooled = task.class_means(
        model, batches, len(CLASSES), CPU, feature=lambda out: out.logits.exp()
    )
    with torch.no_grad():
        logits = model(images).logits.exp().double()
    rows = targets[:, 2] != 0
    torch.testing.assert_close(pooled.means[2], logits[rows].mean(0).float())


def test_class_means_refuse_absent_classes_bad_targets_and_no_batches():
    images, targets = _data()
    task = MultiLabelTask(CLASSES)
    targets[:, 3] = 0
    with pytest.raises(ValueError, match="have no samples"):
        task.class_means(_model(), _batches(images, targets), len(CLASSES), CPU)
    with pytest.raises(ValueError, match="must be \\[batch, 5\\]"):
        task.class_means(_model(), _batches(images, targets), 5, CPU)
    with pytest.raises(ValueError, match="no batches"):
        task.class_means(_model(), [], len(CLASSES), CPU)
