"""Two-view training (data.strong_view, MLKD's protocol): the batch contract of the
classification task, one model pass per view, terms routed to a view by ``<term>@<view>``,
the refusals, and a one-epoch CLI run on digits."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from helpers import write_digits_config
from ndkd import ModelOutput
from ndkd.analysis.recipes import group_runs
from ndkd.analysis.runs import Run
from ndkd.cli import main
from ndkd.config import ConfigError, TermConfig, from_dict, load_config
from ndkd.data import ImageTensorDataset, cifar_transform
from ndkd.data.streaming import TrainLoader
from ndkd.data.views import TwoViewDataset
from ndkd.losses.kd import kd_loss
from ndkd.losses.mlkd import confidence_masks, mlkd_loss
from ndkd.methods import BuildContext, Distiller, StepOutputs
from ndkd.tasks import ClassificationTask
from ndkd.tasks.classification import AccuracyMeter, ViewOutputs

VIEWS = ("weak", "strong")


class TinyNet(nn.Module):
    """Conv + BatchNorm + linear head with the ndkd output contract."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.fc = nn.Linear(4, classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        embedding = F.relu(self.bn(self.conv(x))).mean(dim=(2, 3))
        return ModelOutput(self.fc(embedding), embedding)


def two_view_batch(batch_size: int = 8):
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    source = ImageTensorDataset(
        images, torch.arange(16) % 10, 10, cifar_transform("cifar100", train=True)
    )
    loader = TrainLoader(TwoViewDataset(source), batch_size, seed=0, pin_memory=False)
    return next(iter(loader))


def test_two_processes_share_the_views_of_disjoint_samples():
    """Each rank's batches hold the two views of its own samples (both views of a sample on
    the same rank, as the sample's draws make them), and the ranks together cover the epoch."""
    images = torch.randint(0, 256, (12, 3, 32, 32), dtype=torch.uint8)
    source = ImageTensorDataset(
        images, torch.arange(12) % 10, 10, cifar_transform("cifar100", train=True)
    )
    dataset = TwoViewDataset(source, seed=3)
    seen = []
    for rank in (0, 1):
        loader = TrainLoader(
            dataset, 3, seed=3, rank=rank, world_size=2, return_indices=True, pin_memory=False
        )
        loader.set_epoch(2)
        for (weak, strong), labels, indices in loader:
            for row, index in enumerate(indices.tolist()):
                (w, st), label = dataset[(index, 2)]
                assert torch.equal(weak[row], w) and torch.equal(strong[row], st)
                assert int(labels[row]) == label
            seen.append(indices.tolist())
    flat = [i for batch in seen for i in batch]
    assert sorted(flat) == list(range(12))  # disjoint shares covering the epoch


def test_the_loader_batch_and_the_task_batch():
    raw = two_view_batch()
    (weak, strong), labels = raw
    task = ClassificationTask(views=VIEWS)
    batch = task.to_device(raw, torch.device("cpu"), torch.channels_last, train=True)
    assert torch.equal(batch.images, weak) and torch.equal(batch.labels, labels)
    assert list(batch.extra_views) == ["strong"]
    assert torch.equal(batch.extra_views["strong"], strong)
    assert batch.extra_views["strong"].is_contiguous(memory_format=torch.channels_last)
    one_view = task.to_device((weak, labels), torch.device("cpu"), None)  # evaluation
    assert one_view.extra_views == {}
    with pytest.raises(ValueError, match="a batch of 2 views, but the task has the views weak"):
        ClassificationTask().to_device(raw, torch.device("cpu"), None)


def test_each_view_is_its_own_pass_with_its_own_batch_statistics():
    raw = two_view_batch()
    task = ClassificationTask(views=VIEWS)
    batch = task.to_device(raw, torch.device("cpu"), None, train=True)
    model = TinyNet().train()
    reference = copy.deepcopy(model)
    out = task.forward(model, batch)
    assert isinstance(out, ViewOutputs) and list(out.views) == ["weak", "strong"]
    weak, strong = reference(batch.images), reference(batch.extra_views["strong"])
    torch.testing.assert_close(out["weak"].logits, weak.logits, rtol=0, atol=0)
    torch.testing.assert_close(out["strong"].logits, strong.logits, rtol=0, atol=0)
    # one pass over both views would normalize with the pooled statistics: not the same
    joint = copy.deepcopy(TinyNet().train())
    joint.load_state_dict(reference.state_dict())
    pooled = joint(torch.cat([batch.images, batch.extra_views["strong"]])).logits[:8]
    assert not torch.allclose(pooled, out["weak"].logits)
    assert torch.equal(model.bn.running_mean, reference.bn.running_mean)  # two updates each


def context(views=VIEWS) -> BuildContext:
    student = ModelOutput(torch.randn(6, 10), torch.randn(6, 3))
    return BuildContext(
        10, student, ModelOutput(torch.randn(6, 10), torch.randn(6, 3)), views=views
    )


def outputs(seed: int) -> StepOutputs:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (6,), generator=generator)
    student = ModelOutput(torch.randn(6, 10, generator=generator), torch.randn(6, 3))
    teacher = ModelOutput(torch.randn(6, 10, generator=generator), torch.randn(6, 3))
    return StepOutputs(student, teacher, labels)


def test_terms_read_the_view_their_name_names():
    terms = [
        TermConfig("ce", 0.1),
        TermConfig("ce@strong", 0.2),
        TermConfig("mlkd", 0.9),
        TermConfig(
            "mlkd@strong",
            0.9,
            params={"temperatures": [4, 3, 5], "mask": "none", "levels": ["instance"]},
        ),
        TermConfig(
            "mlkd@weak",
            0.5,
            params={"temperatures": [2, 6], "mask": "none", "levels": ["instance"]},
        ),
    ]
    method = Distiller(terms, context())
    weak, strong = outputs(1), outputs(2)
    losses = method({"weak": weak, "strong": strong}, 0)
    assert list(losses) == [t.name for t in terms]
    s, t = weak.student.logits, weak.teacher.logits
    s2, t2 = strong.student.logits, strong.teacher.logits
    torch.testing.assert_close(losses["ce"], 0.1 * F.cross_entropy(s, weak.labels))
    torch.testing.assert_close(losses["ce@strong"], 0.2 * F.cross_entropy(s2, strong.labels))
    masked = mlkd_loss(s, t, (4, 3, 5, 2, 6), *confidence_masks(t))
    torch.testing.assert_close(losses["mlkd"], 0.9 * masked)
    kd_strong = sum(kd_loss(s2, t2, temperature) for temperature in (4, 3, 5))
    torch.testing.assert_close(losses["mlkd@strong"], 0.9 * kd_strong)
    kd_weak = sum(kd_loss(s, t, temperature) for temperature in (2, 6))
    torch.testing.assert_close(losses["mlkd@weak"], 0.5 * kd_weak)
    # a plain StepOutputs is the main view
    alone = Distiller([TermConfig("ce", 1.0), TermConfig("ce@weak", 2.0)], context(("weak",)))
    values = alone(weak, 0)
    torch.testing.assert_close(values["ce@weak"], 2 * values["ce"])


def test_the_task_gives_the_method_one_step_per_view():
    raw = two_view_batch(6)
    task = ClassificationTask(views=VIEWS)
    batch = task.to_device(raw, torch.device("cpu"), None, train=True)
    student, teacher = TinyNet().train(), TinyNet().eval()
    student_out = task.forward(student, batch)
    with torch.no_grad():
        teacher_out = task.forward(teacher, batch)
    seen = {}

    def method(rows, epoch):
        seen.update(rows)
        return {}

    task.step_losses(method, student_out, teacher_out, batch, 3)
    assert list(seen) == ["weak", "strong"]
    assert seen["strong"].student is not None
    torch.testing.assert_close(seen["strong"].student.logits, student_out["strong"].logits)
    torch.testing.assert_close(seen["strong"].teacher.logits, teacher_out["strong"].logits)
    assert seen["strong"].images is batch.extra_views["strong"]
    assert seen["weak"].images is batch.images


def test_training_accuracy_is_the_weak_views():
    labels = torch.arange(4)
    right = ModelOutput(F.one_hot(labels, 10).float() * 5, torch.ones(4, 3))
    wrong = ModelOutput(F.one_hot((labels + 1) % 10, 10).float() * 5, torch.ones(4, 3))
    meter = AccuracyMeter(torch.device("cpu"), with_teacher=False)
    batch = ClassificationTask(views=VIEWS).to_device(
        ((torch.zeros(4, 3, 2, 2), torch.zeros(4, 3, 2, 2)), labels), torch.device("cpu"), None
    )
    meter.update(ViewOutputs({"weak": right, "strong": wrong}), None, batch)
    assert meter.summarize(meter.totals().tolist())["train_top1"] == 100.0


@pytest.mark.parametrize(
    ("name", "views", "message"),
    [
        (
            "ce@strong",
            ("weak",),
            "loss term 'ce@strong' reads view 'strong', but this run has the view weak "
            r"\(a second view comes from data.strong_view\)",
        ),
        (
            "ce@night",
            VIEWS,
            "loss term 'ce@night' reads view 'night', but this run has the views weak, strong",
        ),
        ("kd2@strong", VIEWS, "unknown loss term 'kd2' in 'kd2@strong'; available: "),
        ("ce@", VIEWS, r"loss term 'ce@': a view is named as <term>@<view>, e.g. ce@strong"),
        ("@strong", VIEWS, "loss term '@strong': a view is named as"),
    ],
)
def test_a_term_naming_a_view_the_run_lacks_is_refused(name, views, message):
    with pytest.raises(ValueError, match=message):
        Distiller([TermConfig(name, 1.0)], context(views))


def test_a_view_suffixed_term_names_itself_in_its_parameter_errors():
    with pytest.raises(ValueError, match="mlkd@strong: loss term 'mlkd': unknown parameter 'tau'"):
        Distiller([TermConfig("mlkd@strong", 1.0, params={"tau": 1.0})], context())


BASE = {"student": {"arch": "resnet8"}, "terms": [{"name": "ce"}, {"name": "ce@strong"}]}


@pytest.mark.parametrize(
    ("data", "extra", "message"),
    [
        (
            {"name": "cifar100", "strong_view": "fixmatch"},
            {},
            r"data.strong_view: expected one of \['mlkd'\] or empty \(off\), found 'fixmatch'",
        ),
        (
            {"name": "voc2007", "strong_view": "mlkd"},
            {"task": "multilabel"},
            "data.strong_view: a second view of classification images; task multilabel",
        ),
        (
            {"name": "digit_boxes", "strong_view": "mlkd"},
            {"task": "detection"},
            "data.strong_view: a second view of classification images; task detection",
        ),
        (
            {"name": "digits", "strong_view": "mlkd", "mixup": 0.2},
            {},
            "data.strong_view: not with data.mixup/data.cutmix",
        ),
    ],
)
def test_the_config_refuses_what_two_views_cannot_serve(data, extra, message):
    with pytest.raises(ConfigError, match=message):
        from_dict({**BASE, **extra, "data": data})


def test_the_default_leaves_the_data_section_one_view():
    config = from_dict(BASE | {"terms": [{"name": "ce"}]})
    assert config.data.strong_view == ""
    assert config.to_dict()["data"]["strong_view"] == ""


def test_a_strong_view_term_without_the_view_is_refused_by_the_cli(tmp_path, capsys):
    path = write_digits_config(tmp_path, ["{name: ce}", "{name: ce@strong}"])
    assert main(["train", "-c", str(path), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "ndkd train: error: loss term 'ce@strong' reads view 'strong', but this run has the "
        "view weak (a second view comes from data.strong_view)"
    ]


def test_one_epoch_cli_train_on_digits_with_two_views(tmp_path, digits_teacher, capsys):
    checkpoint, _ = digits_teacher
    terms = [
        "{name: ce, weight: 0.1}",
        "{name: ce@strong, weight: 0.1}",
        "{name: mlkd, weight: 0.9}",
        "{name: mlkd@strong, weight: 0.9, temperatures: [4, 3, 5], mask: none, levels: [instance]}",
    ]
    path = write_digits_config(tmp_path, terms, teacher=checkpoint, batch_size=128)
    text = path.read_text().replace(
        "data: {name: digits}", "data: {name: digits, strong_view: mlkd}"
    )
    path.write_text(text)
    assert main(["train", "-c", str(path)]) == 0
    run = tmp_path / "run"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(records) == 1
    for name in ("ce", "ce@strong", "mlkd", "mlkd@strong"):
        assert records[0][f"loss/{name}"] > 0
    assert records[0]["test_samples"] == 359
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert stored["data"]["strong_view"] == "mlkd"
    assert load_config(run / "config.yaml").data.strong_view == "mlkd"


def test_analyze_keeps_two_view_runs_apart_from_one_view_runs():
    """Runs group by their whole resolved config: ``data.strong_view`` alone (here with
    the same output folder) makes another row; the recipes' own folders label them."""
    root = Path(__file__).resolve().parents[1] / "configs" / "cifar100"
    two_view = load_config(root / "mlkd_two_view" / "resnet56_resnet20.yaml")
    raw = two_view.to_dict()
    raw["data"]["strong_view"] = ""
    one_view = from_dict(raw)
    history = [{"epoch": 240, "test_top1": 70.0}]
    runs = [Run(Path(f"r{i}"), config, history) for i, config in enumerate((two_view, one_view))]
    groups = group_runs(runs)
    assert len(groups) == 2 and groups[0].recipe_id != groups[1].recipe_id
    assert {g.config.data.strong_view for g in groups} == {"", "mlkd"}
    assert all(g.label.startswith("runs/cifar100/mlkd_two_view/resnet56_resnet20") for g in groups)


def test_two_views_under_torchrun_with_two_processes(tmp_path, digits_teacher):
    """DDP over the student's two passes per step, each process its share of the views."""
    checkpoint, _ = digits_teacher
    terms = ["{name: ce, weight: 0.5}", "{name: ce@strong, weight: 0.5}", "{name: mlkd@strong}"]
    path = write_digits_config(tmp_path, terms, teacher=checkpoint, batch_size=128)
    text = path.read_text().replace("{name: digits}", "{name: digits, strong_view: mlkd}")
    path.write_text(text)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    command += ["--nproc_per_node=2", "-m", "ndkd", "train", "-c", str(path)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (line,) = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    record = json.loads(line)
    assert record["test_samples"] == 359
    assert all(record[f"loss/{name}"] > 0 for name in ("ce", "ce@strong", "mlkd@strong"))


def test_image_folder_views_are_the_folder_transform_then_the_policy(tmp_path):
    """An image folder's weak view is its own training sample; the strong view is its
    RandomResizedCrop and flip drawn again from the same generator, the policy, and the
    same normalization."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    from ndkd.data.imagefolder import read_image_folders
    from ndkd.data.strong_augment import mlkd_rand_augment
    from ndkd.data.views import image_folder_views
    from test_imagefolder import write_image_folder

    splits = read_image_folders(write_image_folder(tmp_path, 3, 2, 40), 24, 28)
    views = image_folder_views(splits.train.with_seed(5))
    (weak, strong), label = views[(4, 1)]
    plain, plain_label = splits.train.with_seed(5)[(4, 1)]
    assert label == plain_label and torch.equal(weak, plain)
    image = TF.pil_to_tensor(Image.open(splits.train.path(4)).convert("RGB"))
    rng = np.random.default_rng([5, 1, 4])
    transform = splits.train.transform
    transform(image, rng)  # the weak view's draws come first
    cropped = TF.to_pil_image(transform.crop_and_flip(image, rng))
    expected = transform.normalize(TF.pil_to_tensor(mlkd_rand_augment(cropped, rng)))
    assert strong.shape == weak.shape == (3, 24, 24)
    assert torch.equal(strong, expected) and not torch.equal(strong, weak)
    again = views[(4, 1)][0]
    assert torch.equal(again[0], weak) and torch.equal(again[1], strong)
    assert not torch.equal(views[(4, 2)][0][1], strong)  # another epoch, another draw
    with pytest.raises(ValueError, match="training split"):
        image_folder_views(splits.test)


def test_one_epoch_cli_train_on_an_image_folder_with_two_views(tmp_path):
    from test_imagefolder import write_image_folder

    root = write_image_folder(tmp_path / "images", classes=4, per_class=4, size=40)
    config = {
        "seed": 0,
        "device": "cpu",
        "output_dir": str(tmp_path / "run"),
        "data": {
            "name": "imagefolder",
            "root": str(root),
            "image_size": 32,
            "eval_resize": 36,
            "num_workers": 0,
            "strong_view": "mlkd",
        },
        "student": {"arch": "resnet8"},
        "train": {"epochs": 1, "batch_size": 8, "lr": 0.05, "milestones": []},
        "terms": [{"name": "ce"}, {"name": "ce@strong", "weight": 0.5}],
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    assert main(["train", "-c", str(path)]) == 0
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["loss/ce"] > 0 and record["loss/ce@strong"] > 0
    assert record["test_samples"] == 16


def test_the_config_accepts_exactly_the_policies_the_data_layer_has():
    """``config.STRONG_VIEWS`` repeats the policy names, since the config module must not
    import the data layer (``ndkd --help`` loads no torch): the two lists stay equal."""
    from ndkd.config import STRONG_VIEWS
    from ndkd.data.strong_augment import POLICIES

    assert set(STRONG_VIEWS) == set(POLICIES)
