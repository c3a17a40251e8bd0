"""The ``pool`` and ``embedding_dim`` options of ``torchvision:`` models (LSHFM's GAP/GMP/GWP
pooling and ``feat_fc`` projection) and ``train.trainable: embedding_projection``.

ResNet-18 pools with a module (``avgpool``), MobileNetV2 with ``F.adaptive_avg_pool2d``; both
run at 64x64 (2x2 last maps), without pretrained weights unless a test caches them.
"""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from ndkd.config import ModelConfig, TrainConfig
from ndkd.engine.checkpoint import rng_state, save_checkpoint
from ndkd.engine.optim import build_optimizer, trained_parameters
from ndkd.experiment.models import build_model, restrict_trainable
from ndkd.models import create_model
from ndkd.models.torchvision_models import GlobalPool2d

ARCHS = ("resnet18", "mobilenet_v2")
CPU = torch.device("cpu")
POOLED = {
    "": lambda x: x.mean((2, 3)),
    "avg": lambda x: x.mean((2, 3)),
    "max": lambda x: x.amax((2, 3)),
    "avgmax": lambda x: (x.mean((2, 3)) + x.amax((2, 3))) / 2,
}


def _images() -> torch.Tensor:
    return torch.randn(2, 3, 64, 64)


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("pool", list(POOLED))
def test_pool_sets_the_pooling_of_the_embedding(arch, pool):
    """The embedding is the chosen pooling of the last feature map; the logits are the
    classifier of that embedding."""
    model = create_model(f"torchvision:{arch}", 10, pool=pool).eval()
    with torch.no_grad():
        out = model(_images())
        torch.testing.assert_close(out.embedding, POOLED[pool](out.stages[-1]))
        torch.testing.assert_close(out.logits, model.get_classifier()(out.embedding))
    assert model.embedding_projection() is None


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("training", [False, True])
def test_embedding_dim_projects_the_pooled_feature(arch, training):
    model = create_model(f"torchvision:{arch}", 10, pool="avgmax", embedding_dim=16)
    model.train(training)
    projection = model.embedding_projection()
    assert isinstance(projection, nn.Linear)
    assert (projection.in_features, projection.out_features) == (model.stage_info[-1].channels, 16)
    assert model.embedding_dim == 16 and model.num_classes == 10
    assert model.get_classifier().in_features == 16
    torch.manual_seed(1)
    out = model(_images())
    pooled = POOLED["avgmax"](out.stages[-1])
    if arch == "resnet18" or not training:  # MobileNetV2's dropout runs before the projection
        torch.testing.assert_close(out.embedding, projection(pooled))
    assert out.embedding.shape == (2, 16)
    torch.testing.assert_close(out.logits, model.get_classifier()(out.embedding))
    out.logits.sum().backward()
    assert projection.weight.grad is not None and model.get_classifier().weight.grad is not None


def test_state_dict_keys():
    """Pooling keeps torchvision's keys (strict loads both ways); the projection puts
    ``projection`` and ``classifier`` under the final layer's name."""
    reference = torchvision.models.resnet18(num_classes=10).state_dict()
    pooled = create_model("torchvision:resnet18", 10, pool="max")
    assert isinstance(pooled.avgpool, GlobalPool2d)
    pooled.load_state_dict(reference)
    torchvision.models.resnet18(num_classes=10).load_state_dict(pooled.state_dict())

    projected = create_model("torchvision:resnet18", 10, embedding_dim=16).state_dict()
    head = {"fc.projection.weight", "fc.projection.bias", "fc.classifier.weight"}
    assert projected.keys() - reference.keys() == head | {"fc.classifier.bias"}
    assert reference.keys() - projected.keys() == {"fc.weight", "fc.bias"}
    assert projected["fc.projection.weight"].shape == (16, 512)
    assert projected["fc.classifier.weight"].shape == (10, 16)

    mobile = create_model("torchvision:mobilenet_v2", 10, embedding_dim=16).state_dict()
    assert mobile["classifier.1.projection.weight"].shape == (16, 1280)
    assert mobile["classifier.1.classifier.weight"].shape == (10, 16)


def test_pretrained_weights_then_a_new_head(monkeypatch, tmp_path):
    """Cached ImageNet weights load first; the projection head replaces the 1000-way
    classifier even for 1000 classes."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    cached = tmp_path / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), cached)
    model = create_model(
        "torchvision:resnet18", 1000, pretrained=True, pool="max", embedding_dim=32
    ).eval()
    assert torch.equal(model.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert model.fc.classifier.weight.shape == (1000, 32)
    with torch.no_grad():
        out = model(_images())
    torch.testing.assert_close(out.embedding, model.fc.projection(out.stages[-1].amax((2, 3))))


@pytest.mark.parametrize(
    ("arch", "options", "match"),
    [
        ("vgg11", {"pool": "max"}, r"\(avgpool\) pools to \(7, 7\), not 1x1; .*keeps its own"),
        ("shufflenet_v2_x0_5", {"pool": "avgmax"}, "has none; leave pool empty"),
        ("resnet18", {"pool": "gem"}, "unknown pool 'gem'"),
        ("resnet18", {"embedding_dim": -1}, "embedding_dim must be non-negative"),
    ],
)
def test_refusals(arch, options, match):
    with pytest.raises(ValueError, match=match):
        create_model(f"torchvision:{arch}", 10, **options)


@pytest.mark.parametrize(
    ("role", "spec", "message"),
    [
        ("student", ModelConfig(arch="resnet8", pool="max"), "student.pool: an option of"),
        (
            "teacher",
            ModelConfig(arch="timm:resnet18", embedding_dim=8),
            "teacher.embedding_dim: an option of torchvision: models, not of 'timm:resnet18'",
        ),
    ],
)
def test_build_model_refuses_the_options_for_other_sources(role, spec, message):
    with pytest.raises(ValueError, match=message):
        build_model(spec, role, 10, 3, CPU)


@pytest.mark.parametrize("arch", ["torchvision:resnet18", "resnet8"])
def test_restrict_trainable_needs_a_projection(arch):
    model = create_model(arch, 10)
    restrict_trainable(model, "all")
    assert all(p.requires_grad for p in model.parameters())
    with pytest.raises(ValueError, match="no embedding projection.*student.embedding_dim"):
        restrict_trainable(model, "embedding_projection")
    with pytest.raises(ValueError, match="unknown value 'head'"):
        restrict_trainable(model, "head")


@pytest.mark.parametrize(("optimizer", "decay_all"), [("sgd", True), ("adamw", False)])
def test_stage_one_trains_only_the_projection(optimizer, decay_all):
    """Only the projection is optimized and changes; batch-norm statistics still update."""
    model = create_model("torchvision:resnet18", 10, pool="avgmax", embedding_dim=16)
    restrict_trainable(model, "embedding_projection")
    projection = model.embedding_projection()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["fc.projection.weight", "fc.projection.bias"]
    settings = TrainConfig(optimizer=optimizer, decay_norms_and_biases=decay_all)
    opt = build_optimizer((model,), settings)
    assert {id(p) for p in trained_parameters(opt)} == {id(p) for p in projection.parameters()}
    assert any(group["weight_decay"] > 0 for group in opt.param_groups)
    before = {name: value.clone() for name, value in model.state_dict().items()}
    model.train()
    out = model(_images())
    (out.embedding.square().mean() + out.logits.logsumexp(1).mean()).backward()
    opt.step()
    after = model.state_dict()
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    params = {name for name, _ in model.named_parameters()}
    assert changed & params == set(trainable)
    assert {"bn1.running_mean", "layer4.1.bn2.running_var"} <= changed


def test_stage_one_checkpoint_starts_stage_two(tmp_path):
    """A run's ``last.pt`` initialises a student built with the same options (and does not
    fit one built without them)."""
    spec = ModelConfig(arch="torchvision:resnet18", pool="avgmax", embedding_dim=16)
    stage1 = build_model(spec, "student", 10, 3, CPU)
    restrict_trainable(stage1, "embedding_projection")
    opt = build_optimizer((stage1,), TrainConfig())
    stage1.train()
    stage1(_images()).embedding.square().mean().backward()
    opt.step()
    last = save_checkpoint(
        tmp_path / "last.pt",
        {
            "epoch": 1,
            "model": stage1.state_dict(),
            "optimizer": opt.state_dict(),
            "rng": rng_state(),
        },
    )
    stage2 = build_model(
        ModelConfig(arch=spec.arch, checkpoint=str(last), pool="avgmax", embedding_dim=16),
        "student",
        10,
        3,
        CPU,
    )
    assert all(p.requires_grad for p in stage2.parameters())
    for name, value in stage1.state_dict().items():
        assert torch.equal(stage2.state_dict()[name], value), name
    images = _images()
    with torch.no_grad():
        torch.testing.assert_close(stage2.eval()(images).logits, stage1.eval()(images).logits)
    with pytest.raises(ValueError, match="student.checkpoint .* does not fit"):
        build_model(ModelConfig(arch=spec.arch, checkpoint=str(last)), "student", 10, 3, CPU)
