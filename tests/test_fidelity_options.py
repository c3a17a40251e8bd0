"""Options for fidelity to the published codes: the teacher's BatchNorm mode in training
(``teacher.bn``), a term's warm-up counting (``warmup_from``), the ShuffleNets' zero
classifier bias, and the class-balanced reduction's divisor (classes present in the batch)."""

from __future__ import annotations

import copy

import pytest
import torch
import yaml
from torch import nn

from helpers import with_trained_statistics, write_kdpp_config
from ndkd.analysis.recipes import recipe_id
from ndkd.cli import main
from ndkd.config import (
    ConfigError,
    TermConfig,
    TrainConfig,
    dump_config,
    from_dict,
    load_config,
    resume_conflicts,
)
from ndkd.data import InMemoryLoader
from ndkd.data.datasets import ImageTensorDataset
from ndkd.engine import Trainer
from ndkd.experiment import run as run_module
from ndkd.experiment.run_folder import RunFolderError, plan_run
from ndkd.losses.reduction import reduce_per_sample
from ndkd.methods import BuildContext, Distiller
from ndkd.methods.base import StepOutputs
from ndkd.models import create_model
from ndkd.tasks import ClassificationTask

CLASSES = 4

# ------------------------------------------------------------------ teacher.bn


class Recording(nn.Module):
    """The loss composition, keeping a copy of each step's images and teacher outputs."""

    def __init__(self, inner: Distiller):
        super().__init__()
        self.inner = inner
        self.seen: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def forward(self, outputs: StepOutputs, epoch: int):
        teacher = outputs.teacher
        self.seen.append(
            (outputs.images.clone(), teacher.logits.clone(), teacher.embedding.clone())
        )
        return self.inner(outputs, epoch)


def _trainer(tmp_path, batch_stats: bool) -> tuple[Trainer, nn.Module, Recording]:
    """resnet8 student, resnet8 teacher with trained-looking BN statistics, CE + KD on 16
    random 8x8 images in batches of 8: one epoch is two steps."""
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(16, 3, 8, 8, generator=generator)
    labels = torch.randint(0, CLASSES, (16,), generator=generator)
    dataset = ImageTensorDataset(images, labels, CLASSES)
    student = create_model("resnet8", CLASSES)
    teacher = with_trained_statistics(create_model("resnet8", CLASSES)).requires_grad_(False)
    with torch.no_grad():
        probe, teacher_probe = student.eval()(images[:2]), teacher(images[:2])
    student.train()
    terms = [TermConfig("ce", 1.0), TermConfig("kd", 1.0, params={"temperature": 4.0})]
    method = Recording(Distiller(terms, BuildContext(CLASSES, probe, teacher_probe)))
    trainer = Trainer(
        task=ClassificationTask(),
        student=student,
        teacher=teacher,
        method=method,
        train_loader=InMemoryLoader(dataset, 8, shuffle=True, drop_last=True),
        test_loader=InMemoryLoader(dataset, 16),
        settings=TrainConfig(epochs=1, batch_size=8, lr=0.05, milestones=[]),
        run_dir=tmp_path,
        device=torch.device("cpu"),
        teacher_batch_stats=batch_stats,
    )
    return trainer, teacher, method


def _norms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


def test_teacher_bn_train_uses_batch_statistics_and_updates_the_running_ones(tmp_path):
    trainer, teacher, method = _trainer(tmp_path, batch_stats=True)
    before = copy.deepcopy(teacher)
    trainer.fit()
    assert len(method.seen) == 2
    for images, logits, embedding in method.seen:
        manual = copy.deepcopy(before).train()  # a train-mode forward of the loaded teacher
        with torch.no_grad():
            expected = manual(images)
        torch.testing.assert_close(logits, expected.logits)
        torch.testing.assert_close(embedding, expected.embedding)
        with torch.no_grad():
            eval_out = copy.deepcopy(before)(images)
        assert not torch.allclose(logits, eval_out.logits)
    # running statistics moved (a side effect, as in the public OFD codes) ...
    for new, old in zip(_norms(teacher), _norms(before)):
        assert not torch.equal(new.running_mean, old.running_mean)
        assert int(new.num_batches_tracked) == 2
    # ... the weights did not, and the teacher is back in eval mode, frozen
    for (name, new), old in zip(teacher.named_parameters(), before.parameters()):
        assert torch.equal(new, old), name
        assert not new.requires_grad
    assert not any(m.training for m in teacher.modules())
    assert trainer.teacher_forward is teacher  # batch statistics cannot be folded


def test_teacher_bn_eval_changes_nothing(tmp_path):
    trainer, teacher, method = _trainer(tmp_path, batch_stats=False)
    before = copy.deepcopy(teacher)
    trainer.fit()
    for images, logits, _ in method.seen:
        with torch.no_grad():
            expected = before(images)
        torch.testing.assert_close(logits, expected.logits, rtol=1e-4, atol=1e-4)  # folded BN
    assert all(
        torch.equal(a, b)
        for a, b in zip(teacher.state_dict().values(), before.state_dict().values())
    )
    assert not any(m.training for m in teacher.modules())


def test_teacher_bn_config_key_round_trip_and_refusals():
    base = {"student": {"arch": "resnet8"}, "teacher": {"arch": "resnet20"}}
    assert from_dict(base).teacher.bn == "eval"
    config = from_dict({**base, "teacher": {"arch": "resnet20", "bn": "train"}})
    assert config.teacher.bn == "train"
    stored = yaml.safe_load(dump_config(config))
    assert stored["teacher"]["bn"] == "train"
    assert from_dict(stored).to_dict() == config.to_dict()
    with pytest.raises(ConfigError, match=r"student\.bn: a key of the teacher only"):
        from_dict({"student": {"arch": "resnet8", "bn": "train"}})
    with pytest.raises(ConfigError, match=r"teacher\.bn: expected one of \['eval', 'train'\]"):
        from_dict({**base, "teacher": {"arch": "resnet20", "bn": "batch"}})
    # it tells recipes apart and cannot change within a run
    assert recipe_id(config) != recipe_id(from_dict(base))
    plain = from_dict(base).to_dict()
    assert resume_conflicts(plain, config.to_dict()) == ["teacher.bn"]
    # a config.yaml written before the key existed resolves to the default
    older = copy.deepcopy(plain)
    del older["teacher"]["bn"]
    assert resume_conflicts(from_dict(older).to_dict(), plain) == []


def test_a_run_with_teacher_bn_train_records_it_and_refuses_to_resume_without(
    tmp_path, digits_teacher, monkeypatch
):
    seen = {}

    class Spy(Trainer):
        def __init__(self, **kwargs):
            seen["teacher_batch_stats"] = kwargs.get("teacher_batch_stats")
            super().__init__(**kwargs)

    monkeypatch.setattr(run_module, "Trainer", Spy)
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1, batch_size=256))
    assert main(["train", "-c", config, "teacher.bn=train"]) == 0
    assert seen["teacher_batch_stats"] is True
    stored = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert stored["teacher"]["bn"] == "train"
    with pytest.raises(RunFolderError, match=r"teacher\.bn"):
        plan_run(load_config(config, ["teacher.bn=eval", "train.epochs=2"]), resume=True)
    plan_run(load_config(config, ["teacher.bn=train", "train.epochs=2"]), resume=True)


# ------------------------------------------------------------------ warmup_from


def _distiller(warmup_from: int) -> Distiller:
    probe = create_model("resnet8", CLASSES).eval()(torch.randn(2, 3, 8, 8))
    terms = [TermConfig("ce", 2.0, 20.0, warmup_from=warmup_from)]
    return Distiller(terms, BuildContext(CLASSES, probe))


def test_warmup_from_counts_epochs_from_zero_or_one():
    zero, one = _distiller(0), _distiller(1)
    for epoch in range(22):  # the engine's epochs, counted from 0
        nd_public = 2.0 * min(1.0, epoch / 20)  # the first epoch has no term
        mdistiller_epoch = epoch + 1  # mdistiller's loop: for epoch in 1..EPOCHS
        mdistiller = 2.0 * min(mdistiller_epoch / 20, 1.0)
        assert zero.weight_at("ce", epoch) == pytest.approx(nd_public)
        assert one.weight_at("ce", epoch) == pytest.approx(mdistiller)
    assert zero.weight_at("ce", 0) == 0 and one.weight_at("ce", 0) == pytest.approx(0.1)
    assert zero.weight_at("ce", 19) == pytest.approx(1.9) and one.weight_at("ce", 19) == 2.0


def test_warmup_from_config_round_trip():
    kd = {"name": "kd", "weight": 1.0, "temperature": 4.0, "warmup_epochs": 20}
    raw = {"student": {"arch": "resnet8"}, "terms": [{"name": "ce"}, {**kd, "warmup_from": 1}]}
    config = from_dict(raw)
    assert config.terms[1].warmup_from == 1 and config.terms[1].params == {"temperature": 4.0}
    written = config.to_dict()["terms"][1]
    assert written == {**kd, "warmup_epochs": 20.0, "warmup_from": 1}
    assert from_dict(yaml.safe_load(dump_config(config))).to_dict() == config.to_dict()
    # the default is not written: configs that predate the key resolve as before
    default = from_dict({**raw, "terms": [{"name": "ce"}, {**kd, "warmup_from": 0}]})
    assert default.terms[1].warmup_from == 0
    assert "warmup_from" not in default.to_dict()["terms"][1]
    assert default.to_dict() == from_dict({**raw, "terms": [{"name": "ce"}, kd]}).to_dict()
    # an override reaches it too
    overridden = load_config(
        None, ["student.arch=resnet8", f"terms=[{kd}]", "terms.0.warmup_from=1"]
    )
    assert overridden.terms[0].warmup_from == 1


@pytest.mark.parametrize(
    "term, message",
    [
        ({"warmup_epochs": 20, "warmup_from": 2}, "terms.0.warmup_from: expected 0"),
        ({"warmup_epochs": 20, "warmup_from": True}, "terms.0.warmup_from: expected 0"),
        ({"warmup_epochs": 20, "warmup_from": "1"}, "terms.0.warmup_from: expected 0"),
        ({"warmup_epochs": 20, "warmup_from": 0.5}, "terms.0.warmup_from: expected 0"),
        ({"warmup_from": 1}, "terms.0.warmup_from: counts the epochs of a warm-up"),
        ({"warmup_epochs": 0, "warmup_from": 0}, "terms.0.warmup_from: counts the epochs"),
    ],
)
def test_warmup_from_refuses_bad_values(term, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({"student": {"arch": "resnet8"}, "terms": [{"name": "ce", **term}]})


def test_a_term_spec_without_warmup_from_counts_from_zero():
    class OldSpec:
        name, weight, warmup_epochs, params = "ce", 1.0, 4.0, {}

    probe = create_model("resnet8", CLASSES).eval()(torch.randn(2, 3, 8, 8))
    distiller = Distiller([OldSpec()], BuildContext(CLASSES, probe))
    assert [distiller.weight_at("ce", e) for e in range(5)] == [0.0, 0.25, 0.5, 0.75, 1.0]


# ------------------------------------------------------------------ ShuffleNet classifier


@pytest.mark.parametrize("arch", ["shufflenetv1", "shufflenetv2"])
def test_shufflenet_classifier_bias_starts_at_zero_and_its_weight_does_not(arch):
    model = create_model(arch, 100)
    assert torch.count_nonzero(model.linear.bias) == 0
    assert torch.count_nonzero(model.linear.weight) == model.linear.weight.numel()
    assert model.linear.weight.std() > 0


# ------------------------------------------------------------------ class-balanced reduction


def _eq7_slow(per_sample: torch.Tensor, labels: torch.Tensor, classes: int) -> float:
    """Eq. 7 written out: 1/C sum_k 1/|I_k| sum_{i in I_k} l_i over all C classes."""
    total = 0.0
    for k in range(classes):
        members = [float(per_sample[i]) for i in range(len(labels)) if int(labels[i]) == k]
        total += sum(members) / len(members)
    return total / classes


def test_class_reduction_is_eq7_when_every_class_is_present():
    generator = torch.Generator().manual_seed(3)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 0, 2, 4, 4, 4, 1])  # unbalanced, all 5 present
    per_sample = torch.rand(len(labels), generator=generator)
    got = reduce_per_sample(per_sample, labels, 5, "class")
    assert float(got) == pytest.approx(_eq7_slow(per_sample, labels, 5))
    assert float(got) != pytest.approx(float(per_sample.mean()))  # not the batch mean


def test_class_reduction_averages_over_the_classes_present():
    generator = torch.Generator().manual_seed(4)
    labels = torch.tensor([1, 1, 3, 6, 6, 6])  # classes 0, 2, 4, 5, 7..9 absent
    per_sample = torch.rand(len(labels), generator=generator)
    present = [1, 3, 6]
    expected = sum(float(per_sample[labels == k].mean()) for k in present) / len(present)
    got = reduce_per_sample(per_sample, labels, 10, "class")
    assert float(got) == pytest.approx(expected)
    assert float(reduce_per_sample(per_sample, labels, None, "class")) == pytest.approx(expected)
    # not 1/C over all ten classes, which would shrink it by C'/C = 3/10
    over_all = sum(float(per_sample[labels == k].mean()) for k in present) / 10
    assert float(got) == pytest.approx(over_all * 10 / 3) and over_all < float(got)
