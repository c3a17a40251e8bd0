"""The classification task against explicit reference computations, and what each command
builds: eval and analyze need neither the teacher checkpoint nor the class means."""

from __future__ import annotations

import json
from contextlib import nullcontext

import pytest
import torch
from torch import nn

from helpers import write_kdpp_config
from ndkd.cli import main
from ndkd.models.output import ModelOutput
from ndkd.tasks import ClassificationTask, build_task
from ndkd.tasks.classification import fp32_output, topk_correct


class Fixed(nn.Module):
    """A 'model' returning given logits for given images (the images are indices)."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = logits

    def forward(self, images: torch.Tensor) -> ModelOutput:
        rows = images[:, 0, 0, 0].long()
        return ModelOutput(self.logits[rows], self.logits[rows][:, :3])


def test_topk_correct_against_a_loop():
    logits = torch.randn(50, 7)
    labels = torch.randint(0, 7, (50,))
    expected = [0, 0]
    for row, label in zip(logits.tolist(), labels.tolist()):
        order = sorted(range(7), key=lambda c: -row[c])
        expected[0] += label in order[:1]
        expected[1] += label in order[:5]
    assert topk_correct(logits, labels).tolist() == expected
    assert topk_correct(logits[:, :3], labels.clamp(max=2), ks=(1, 5))[1] == 50  # k capped


def test_evaluate_against_a_loop():
    logits = torch.randn(23, 10)
    labels = torch.randint(0, 10, (23,))
    images = torch.arange(23, dtype=torch.float32).view(23, 1, 1, 1)
    loader = [(images[i : i + 5], labels[i : i + 5]) for i in range(0, 23, 5)]
    task = ClassificationTask()
    result = task.evaluate(Fixed(logits), loader, torch.device("cpu"), nullcontext)
    top1 = sum(int(logits[i].argmax() == labels[i]) for i in range(23))
    assert result["test_top1"] == pytest.approx(100.0 * top1 / 23)
    assert result["test_samples"] == 23
    assert task.primary_metric in result
    with pytest.raises(ValueError, match="no samples"):
        task.evaluate(Fixed(logits), [], torch.device("cpu"), nullcontext)


def test_train_meter_sums_like_a_loop():
    task = build_task("classification")
    meter = task.train_meter(torch.device("cpu"), with_teacher=True)
    batches = []
    for _ in range(3):
        s = ModelOutput(torch.randn(8, 5), torch.randn(8, 4))
        t = ModelOutput(torch.randn(8, 5), torch.randn(8, 4))
        labels = torch.randint(0, 5, (8,))
        batch = task.to_device((torch.zeros(8, 1, 2, 2), labels), torch.device("cpu"), None)
        meter.update(s, t, batch)
        batches.append((s, t, labels))
    record = meter.summarize(meter.totals().tolist())
    n = 24
    top1 = sum(int((s.logits.argmax(1) == y).sum()) for s, _, y in batches)
    s_norm = sum(float(s.embedding.norm(dim=1).sum()) for s, _, _ in batches)
    t_norm = sum(float(t.embedding.norm(dim=1).sum()) for _, t, _ in batches)
    assert meter.totals()[0] == n
    assert record["train_top1"] == pytest.approx(100.0 * top1 / n)
    assert record["student_emb_norm"] == pytest.approx(s_norm / n)
    assert record["teacher_emb_norm"] == pytest.approx(t_norm / n)


def test_fp32_output_casts_half_precision_only():
    out = ModelOutput(torch.ones(2, 3, dtype=torch.bfloat16), torch.ones(2, 4, dtype=torch.float64))
    cast = fp32_output(out)
    assert cast.logits.dtype == torch.float32 and cast.embedding.dtype == torch.float64
    assert fp32_output(None) is None


def test_unknown_task():
    with pytest.raises(ValueError, match="unknown task 'segmentation'"):
        build_task("segmentation")


def test_eval_needs_neither_teacher_checkpoint_nor_class_means(tmp_path, digits_teacher, capsys):
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1))
    assert main(["train", "-c", config]) == 0
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    capsys.readouterr()
    gone = ["teacher.checkpoint=/no/such/teacher.pth", "centers.path=/no/such/centers.st"]
    assert main(["eval", "-c", config, *gone]) == 0
    assert f"test top-1 {record['test_top1']:.2f}%" in capsys.readouterr().out
    out = tmp_path / "analysis"
    assert main(["analyze", str(tmp_path / "run"), "-o", str(out), "--features"]) == 0


def test_class_means_are_required_by_the_built_method_not_by_a_term_name(
    tmp_path, digits_teacher, capsys
):
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1))
    missing = "centers.path=/no/such/centers.safetensors"
    weights = "terms.2.centers=classifier_weights"
    assert main(["train", "-c", config, "--dry-run", missing, weights]) == 0
    assert main(["train", "-c", config, "--dry-run", missing]) == 2
    assert "ndkd centers" in capsys.readouterr().err


def test_tensorboard_events_beside_metrics(tmp_path, digits_teacher):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=2))
    assert main(["train", "-c", config, "log.tensorboard=true"]) == 0
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard"))
    events.Reload()
    values = [event.value for event in events.Scalars("loss/nd")]
    assert values == pytest.approx([r["loss/nd"] for r in records])
