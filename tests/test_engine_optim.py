"""The engine's optimizer, clipping and weight EMA against plain PyTorch written out by hand,
and the resume equality (kill + resume = uninterrupted, bitwise on CPU) with all of them on."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ndkd.config import TermConfig, TrainConfig
from ndkd.data import InMemoryLoader
from ndkd.data.datasets import ImageTensorDataset
from ndkd.engine import LAST, Trainer, load_checkpoint
from ndkd.engine.ema import ModelEma
from ndkd.engine.optim import build_optimizer, effective_lr
from ndkd.methods import BuildContext, Distiller
from ndkd.models import create_model
from ndkd.tasks import ClassificationTask

CLASSES = 4
MEASURED = {"epoch_time_s", "images_per_s", "peak_memory_mb"}


def make_trainer(run_dir, progress=None, **train) -> Trainer:
    """resnet8 with CE on 32 random 8x8 images, batches of 8 (4 steps per epoch), 2 epochs."""
    run_dir.mkdir(exist_ok=True)
    generator = torch.Generator().manual_seed(1)
    images = torch.randn(32, 3, 8, 8, generator=generator)
    labels = torch.randint(0, CLASSES, (32,), generator=generator)
    dataset = ImageTensorDataset(images, labels, CLASSES)
    torch.manual_seed(0)
    student = create_model("resnet8", CLASSES)
    with torch.no_grad():
        probe = student.eval()(images[:2])
    student.train()
    train = {"epochs": 2, "batch_size": 8, "lr": 0.05, **train}
    return Trainer(
        task=ClassificationTask(),
        student=student,
        teacher=None,
        method=Distiller([TermConfig("ce", 1.0)], BuildContext(CLASSES, probe)),
        train_loader=InMemoryLoader(dataset, 8, shuffle=True, drop_last=True),
        test_loader=InMemoryLoader(dataset, 16),
        settings=TrainConfig(**train),
        run_dir=run_dir,
        device=torch.device("cpu"),
        progress=progress,
        progress_every=1,
    )


def names_of(*modules: nn.Module) -> dict[int, str]:
    return {id(p): f"{i}.{n}" for i, m in enumerate(modules) for n, p in m.named_parameters()}


# ------------------------------------------------------------------------------ optimizer
def test_sgd_defaults_are_a_plain_sgd():
    student, method = create_model("resnet8", CLASSES), nn.Linear(3, 3)
    method.bias.requires_grad_(False)
    settings = TrainConfig()
    built = build_optimizer((student, method), settings)
    params = [p for p in (*student.parameters(), *method.parameters()) if p.requires_grad]
    plain = torch.optim.SGD(
        params,
        lr=settings.lr,
        momentum=settings.momentum,
        nesterov=settings.nesterov,
        weight_decay=settings.weight_decay,
    )
    assert type(built) is torch.optim.SGD and len(built.param_groups) == 1
    group, expected = built.param_groups[0], plain.param_groups[0]
    assert group.keys() == expected.keys()
    assert [id(p) for p in group["params"]] == [id(p) for p in params]
    assert {k: v for k, v in group.items() if k != "params"} == {
        k: v for k, v in expected.items() if k != "params"
    }


def test_weight_decay_groups_of_a_vit_and_a_conv_net():
    pytest.importorskip("timm")
    torch.manual_seed(0)
    vit = create_model("timm:vit_tiny_patch16_224", CLASSES, img_size=32)
    student = nn.ModuleDict({"backbone": vit})  # no_weight_decay() of a nested module
    conv = create_model("resnet8", CLASSES)  # as a method's own trainable modules
    conv.conv1.weight.requires_grad_(False)
    settings = TrainConfig(decay_norms_and_biases=False, weight_decay=0.05)
    optimizer = build_optimizer((student, conv), settings)
    names = names_of(student, conv)
    groups = {
        g["weight_decay"]: {names[id(p)] for p in g["params"]} for g in optimizer.param_groups
    }
    assert sorted(groups) == [0.0, 0.05]
    tokens = {"0.backbone.pos_embed", "0.backbone.cls_token"}
    expected_no_decay = tokens | {
        names[id(p)] for m in (student, conv) for p in m.parameters() if p.ndim <= 1
    }
    trainable = {names[id(p)] for m in (student, conv) for p in m.parameters() if p.requires_grad}
    assert groups[0.0] == expected_no_decay
    assert groups[0.05] == trainable - expected_no_decay
    assert {"0.backbone.blocks.0.attn.qkv.weight", "1.fc.weight"} <= groups[0.05]
    assert {"0.backbone.norm.weight", "0.backbone.blocks.0.attn.qkv.bias"} <= groups[0.0]
    assert {"1.bn1.weight", "1.fc.bias"} <= groups[0.0]
    assert "1.conv1.weight" not in groups[0.0] | groups[0.05]  # frozen


def test_adamw_betas_and_weight_decay_reach_the_optimizer():
    model = nn.Linear(3, 2)
    settings = TrainConfig(optimizer="adamw", betas=[0.8, 0.95], weight_decay=0.05, lr=1e-3)
    optimizer = build_optimizer((model,), settings)
    assert type(optimizer) is torch.optim.AdamW
    (group,) = optimizer.param_groups
    assert group["betas"] == (0.8, 0.95)
    assert group["weight_decay"] == 0.05 and group["lr"] == 1e-3
    split = build_optimizer((model,), TrainConfig(optimizer="adamw", decay_norms_and_biases=False))
    assert [g["betas"] for g in split.param_groups] == [(0.9, 0.999)] * 2


def test_effective_lr_scales_with_the_batch_and_is_logged(caplog):
    assert effective_lr(TrainConfig(lr=0.1, batch_size=1024)) == 0.1
    settings = TrainConfig(lr=5e-4, batch_size=1024, lr_reference_batch=512)
    assert effective_lr(settings) == pytest.approx(1e-3)
    with caplog.at_level(logging.INFO, logger="ndkd.engine.optim"):
        optimizer = build_optimizer((nn.Linear(2, 2),), settings)
    assert optimizer.param_groups[0]["lr"] == pytest.approx(1e-3)
    assert "learning rate 0.001 = lr 0.0005 x batch 1024 / reference batch 512" in caplog.text


# ------------------------------------------------------------------------------- clipping
@pytest.mark.parametrize("amp", ["none", "fp16"])
def test_clipping_bounds_the_unscaled_gradient_norm(tmp_path, amp):
    """The clipped gradients are the manual ones times ``max_norm / (norm + 1e-6)``, also
    under the fp16 scaler (clipped after unscaling: their norm is ``max_norm``)."""
    max_norm = 0.05
    trainer = make_trainer(tmp_path, clip_grad_norm=max_norm, amp=amp)
    reference = copy.deepcopy(trainer.student)
    images, labels = next(iter(trainer.train_loader))
    grads = torch.autograd.grad(
        F.cross_entropy(reference(images).logits, labels), list(reference.parameters())
    )
    norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert norm > 10 * max_norm  # the bound is active
    trainer._optimizer_step(F.cross_entropy(trainer.student(images).logits, labels))
    clipped = [p.grad for p in trainer.student.parameters()]
    for got, grad in zip(clipped, grads, strict=True):
        torch.testing.assert_close(got, grad * (max_norm / (norm + 1e-6)))
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in clipped]))
    assert total == pytest.approx(max_norm, rel=1e-4)


# ------------------------------------------------------------------------------------ EMA
class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Linear(4, 2)
        self.tied = self.head  # one tensor under two keys: updated once

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.bn(self.conv(images)).mean((2, 3)))


def test_model_ema_against_a_hand_written_loop():
    torch.manual_seed(0)
    model = Net()
    decay = 0.9
    ema = ModelEma(model, decay)
    expected = {k: v.clone() for k, v in model.state_dict().items()}
    for _ in range(5):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
        model(torch.randn(2, 3, 5, 5))  # BatchNorm statistics and counter move
        ema.update()
        for key, value in model.state_dict().items():
            if value.is_floating_point():
                expected[key] = decay * expected[key] + (1 - decay) * value
            else:
                expected[key] = value.clone()
    state = ema.state_dict()
    assert state.keys() == expected.keys()
    for key in expected:
        torch.testing.assert_close(state[key], expected[key], rtol=1e-5, atol=1e-6)
    assert state["bn.num_batches_tracked"] == 5
    assert not ema.module.training
    assert not any(p.requires_grad for p in ema.module.parameters())


def test_trainer_ema_follows_every_step_and_is_evaluated(tmp_path):
    decay = 0.8
    snapshots = []
    trainer = make_trainer(
        tmp_path,
        progress=lambda _: snapshots.append(copy.deepcopy(trainer.student.state_dict())),
        ema_decay=decay,
    )
    expected = copy.deepcopy(trainer.student.state_dict())
    history = trainer.fit()
    assert len(snapshots) == 2 * len(trainer.train_loader)  # one report per step
    for state in snapshots:
        for key, value in state.items():
            floating = value.is_floating_point()
            expected[key] = decay * expected[key] + (1 - decay) * value if floating else value
    for key, value in trainer.ema.state_dict().items():
        torch.testing.assert_close(value, expected[key], rtol=1e-5, atol=1e-6)
    last = history[-1]
    ema_metrics = trainer.task.evaluate(
        trainer.ema.module, trainer.test_loader, torch.device("cpu"), trainer.autocast
    )
    assert {f"ema_{k}": v for k, v in ema_metrics.items()}.items() <= last.items()
    assert "test_top1" in last  # the student's own, which picks best.pt
    best = load_checkpoint(tmp_path / "best.pt")
    assert best["best_metric"] == max(r["test_top1"] for r in history)
    assert load_checkpoint(tmp_path / LAST)["ema"].keys() == expected.keys()


def test_no_ema_key_without_ema(tmp_path):
    trainer = make_trainer(tmp_path)
    assert trainer.ema is None and "ema" not in trainer.state(0)
    with pytest.raises(ValueError, match="no EMA weights"):
        make_trainer(tmp_path / "on", ema_decay=0.9).resume(trainer.state(0))


class Stop(Exception):
    pass


def test_resume_with_ema_clipping_adamw_equals_uninterrupted(tmp_path):
    """Stopped mid-epoch 2 (after the checkpoint of step 2), resumed by a fresh trainer from
    that checkpoint: the metrics, student, EMA and optimizer equal an uninterrupted run's."""
    settings = dict(
        ema_decay=0.9,
        clip_grad_norm=0.5,
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.05,
        schedule="cosine",
        min_lr=1e-4,
        lr_warmup_epochs=0.5,
        checkpoint_every_steps=2,
    )
    reference = make_trainer(tmp_path / "reference", progress=lambda _: None, **settings)
    expected = reference.fit()

    def stop(report):
        if (report.epoch, report.done) == (2, 3):
            raise Stop

    with pytest.raises(Stop):
        make_trainer(tmp_path / "run", progress=stop, **settings).fit()
    state = load_checkpoint(tmp_path / "run" / LAST)
    assert (state["epoch"], state["step"]) == (1, 2) and "ema" in state
    resumed = make_trainer(tmp_path / "run", progress=lambda _: None, **settings)
    resumed.resume(state)
    history = resumed.fit()

    def comparable(records):
        return [{k: v for k, v in r.items() if k not in MEASURED} for r in records]

    assert comparable(history) == comparable(expected)
    assert "ema_test_top1" in history[-1]
    pairs = [
        (resumed.student.state_dict(), reference.student.state_dict()),
        (resumed.ema.state_dict(), reference.ema.state_dict()),
        *zip(
            resumed.optimizer.state_dict()["state"].values(),
            reference.optimizer.state_dict()["state"].values(),
        ),
    ]
    for got, want in pairs:
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want)
