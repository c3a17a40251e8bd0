"""CIFAR model zoo: public-checkpoint layout, output contract, loader helper."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ndkd.models import (
    CheckpointMismatchError,
    ModelOutput,
    StageInfo,
    create_model,
    extract_state_dict,
    list_models,
    load_checkpoint,
)
from ndkd.models.base import channel_shuffle

# Facts from the reference definitions (mdistiller / RepDistiller CIFAR models, 100 classes):
# name -> (parameter count, state-dict entries, embedding dim, stages as (channels, stride)).
THIN_STAGES = [(16, 1), (16, 1), (32, 2), (64, 4)]
WIDE_STAGES = [(32, 1), (64, 1), (128, 2), (256, 4)]
ZOO = {
    "resnet8": (83_892, 56, 64, THIN_STAGES),
    "resnet14": (181_108, 92, 64, THIN_STAGES),
    "resnet20": (278_324, 128, 64, THIN_STAGES),
    "resnet32": (472_756, 200, 64, THIN_STAGES),
    "resnet44": (667_188, 272, 64, THIN_STAGES),
    "resnet56": (861_620, 344, 64, THIN_STAGES),
    "resnet110": (1_736_564, 668, 64, THIN_STAGES),
    "resnet8x4": (1_233_540, 62, 256, WIDE_STAGES),
    "resnet32x4": (7_433_860, 206, 256, WIDE_STAGES),
    "resnet50_cifar": (
        23_705_252,
        320,
        2048,
        [(64, 1), (256, 1), (512, 2), (1024, 4), (2048, 8)],
    ),
    "wrn_16_1": (180_916, 82, 64, [(16, 1), (16, 1), (32, 2), (64, 4)]),
    "wrn_16_2": (703_284, 83, 128, [(16, 1), (32, 1), (64, 2), (128, 4)]),
    "wrn_40_1": (569_780, 226, 64, [(16, 1), (16, 1), (32, 2), (64, 4)]),
    "wrn_40_2": (2_255_156, 227, 128, [(16, 1), (32, 1), (64, 2), (128, 4)]),
    "vgg8": (3_965_028, 37, 512, [(64, 1), (128, 2), (256, 4), (512, 8), (512, 8)]),
    "vgg13": (9_462_180, 72, 512, [(64, 1), (128, 2), (256, 4), (512, 8), (512, 8)]),
    "mobilenetv2": (812_836, 320, 1280, [(16, 2), (12, 2), (16, 4), (48, 8), (160, 16)]),
    "shufflenetv1": (949_258, 296, 960, [(24, 1), (240, 2), (480, 4), (960, 8)]),
    "shufflenetv2": (1_355_528, 338, 1024, [(24, 1), (116, 2), (232, 4), (464, 8)]),
}

# A few exact entries of each public layout (name -> shape), and names that must be absent.
SPOT_KEYS = {
    "resnet50_cifar": {
        "conv1.weight": (64, 3, 3, 3),
        "layer1.0.shortcut.0.weight": (256, 64, 1, 1),
        "layer1.0.conv3.weight": (256, 64, 1, 1),
        "layer2.0.conv2.weight": (128, 128, 3, 3),
        "layer4.2.bn3.weight": (2048,),
        "linear.weight": (100, 2048),
    },
    "wrn_40_2": {
        "conv1.weight": (16, 3, 3, 3),
        "block1.layer.0.bn1.weight": (16,),
        "block1.layer.0.convShortcut.weight": (32, 16, 1, 1),
        "block1.layer.5.conv2.weight": (32, 32, 3, 3),
        "block3.layer.0.convShortcut.weight": (128, 64, 1, 1),
        "bn1.running_var": (128,),
        "fc.weight": (100, 128),
    },
    "wrn_16_1": {
        "block1.layer.0.conv1.weight": (16, 16, 3, 3),
        "block2.layer.0.convShortcut.weight": (32, 16, 1, 1),
        "fc.weight": (100, 64),
    },
    "vgg8": {
        "block0.0.weight": (64, 3, 3, 3),
        "block0.0.bias": (64,),
        "block0.1.weight": (64,),
        "block4.0.weight": (512, 512, 3, 3),
        "block4.1.running_mean": (512,),
        "classifier.weight": (100, 512),
    },
    "vgg13": {
        "block0.0.weight": (64, 3, 3, 3),
        "block0.3.weight": (64, 64, 3, 3),
        "block0.4.running_var": (64,),
        "block2.3.bias": (256,),
        "block4.4.weight": (512,),
        "classifier.weight": (100, 512),
    },
    "mobilenetv2": {
        "conv1.0.weight": (16, 3, 3, 3),
        "blocks.0.0.conv.0.weight": (16, 16, 1, 1),
        "blocks.0.0.conv.3.weight": (16, 1, 3, 3),
        "blocks.0.0.conv.6.weight": (8, 16, 1, 1),
        "blocks.1.0.conv.0.weight": (48, 8, 1, 1),
        "blocks.6.0.conv.6.weight": (160, 480, 1, 1),
        "conv2.0.weight": (1280, 160, 1, 1),
        "conv2.1.running_mean": (1280,),
        "classifier.0.weight": (100, 1280),
    },
    "shufflenetv1": {
        "conv1.weight": (24, 3, 1, 1),
        "layer1.0.conv1.weight": (54, 24, 1, 1),
        "layer1.0.conv2.weight": (54, 1, 3, 3),
        "layer1.0.conv3.weight": (216, 18, 1, 1),
        "layer1.1.conv1.weight": (60, 80, 1, 1),
        "layer3.3.conv3.weight": (960, 80, 1, 1),
        "linear.weight": (100, 960),
    },
    "shufflenetv2": {
        "conv1.weight": (24, 3, 1, 1),
        "layer1.0.conv1.weight": (24, 1, 3, 3),
        "layer1.0.conv2.weight": (58, 24, 1, 1),
        "layer1.0.conv4.weight": (58, 1, 3, 3),
        "layer1.1.conv1.weight": (58, 58, 1, 1),
        "layer3.3.conv3.weight": (232, 232, 1, 1),
        "conv2.weight": (1024, 464, 1, 1),
        "linear.weight": (100, 1024),
    },
}
ABSENT_KEYS = {
    "resnet20": "layer1.0.downsample.0.weight",
    "resnet50_cifar": "layer1.1.shortcut.0.weight",
    "wrn_40_2": "block1.layer.1.convShortcut.weight",
    "wrn_16_1": "block1.layer.0.convShortcut.weight",
}


def _bn_keys(prefix: str, channels: int) -> dict[str, tuple[int, ...]]:
    shapes = {"weight": (channels,), "bias": (channels,), "running_mean": (channels,)}
    shapes |= {"running_var": (channels,), "num_batches_tracked": ()}
    return {f"{prefix}.{k}": v for k, v in shapes.items()}


def _cifar_resnet_layout(depth: int, widths: tuple[int, ...], classes: int) -> dict:
    """The public CIFAR ResNet state-dict layout, written out from the naming rules."""
    layout = {"conv1.weight": (widths[0], 3, 3, 3), **_bn_keys("bn1", widths[0])}
    in_ch = widths[0]
    for stage, width in enumerate(widths[1:], start=1):
        for block in range((depth - 2) // 6):
            stride = 2 if stage > 1 and block == 0 else 1
            p = f"layer{stage}.{block}"
            layout[f"{p}.conv1.weight"] = (width, in_ch, 3, 3)
            layout |= _bn_keys(f"{p}.bn1", width)
            layout[f"{p}.conv2.weight"] = (width, width, 3, 3)
            layout |= _bn_keys(f"{p}.bn2", width)
            if stride != 1 or in_ch != width:
                layout[f"{p}.downsample.0.weight"] = (width, in_ch, 1, 1)
                layout |= _bn_keys(f"{p}.downsample.1", width)
            in_ch = width
    layout |= {"fc.weight": (classes, widths[-1]), "fc.bias": (classes,)}
    return layout


def _layout(model: nn.Module) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def test_list_models_is_the_zoo() -> None:
    assert list_models() == list(ZOO)


def test_unknown_model_lists_the_available_names() -> None:
    with pytest.raises(ValueError, match="unknown model 'resnet9'.*resnet56"):
        create_model("resnet9")


@pytest.mark.parametrize("name", list(ZOO))
def test_parameter_count_and_metadata(name: str) -> None:
    params, entries, dim, stages = ZOO[name]
    model = create_model(name, num_classes=100)
    assert sum(p.numel() for p in model.parameters()) == params
    assert len(model.state_dict()) == entries
    assert model.num_classes == 100
    assert model.embedding_dim == dim
    assert model.stage_info == [StageInfo(c, s) for c, s in stages]
    classifier = model.get_classifier()
    assert isinstance(classifier, nn.Linear)
    assert (classifier.in_features, classifier.out_features) == (dim, 100)


@pytest.mark.parametrize(
    ("name", "depth", "widths"),
    [
        ("resnet8x4", 8, (32, 64, 128, 256)),
        ("resnet20", 20, (16, 16, 32, 64)),
        ("resnet56", 56, (16, 16, 32, 64)),
    ],
)
def test_cifar_resnet_layout_is_exactly_the_public_one(name: str, depth: int, widths) -> None:
    assert _layout(create_model(name, 100)) == _cifar_resnet_layout(depth, widths, 100)


@pytest.mark.parametrize("name", list(SPOT_KEYS))
def test_public_layout_spot_checks(name: str) -> None:
    layout = _layout(create_model(name, 100))
    assert {k: layout.get(k) for k in SPOT_KEYS[name]} == SPOT_KEYS[name]


@pytest.mark.parametrize(("name", "key"), list(ABSENT_KEYS.items()))
def test_identity_shortcuts_have_no_parameters(name: str, key: str) -> None:
    assert key not in create_model(name, 100).state_dict()


@pytest.mark.parametrize("name", list(ZOO))
def test_forward_backward_and_output_contract(name: str) -> None:
    model = create_model(name, num_classes=10).train()
    x = torch.randn(2, 3, 32, 32)
    out = model(x)
    assert isinstance(out, ModelOutput)
    assert out.logits.shape == (2, 10)
    assert out.embedding.shape == (2, model.embedding_dim)
    torch.testing.assert_close(out.logits, model.get_classifier()(out.embedding))
    assert len(out.stages) == len(out.preact_stages) == len(model.stage_info)
    for stage, preact, info in zip(out.stages, out.preact_stages, model.stage_info):
        assert stage.shape == (2, info.channels, 32 // info.stride, 32 // info.stride)
        assert preact.shape == stage.shape
    (out.logits.logsumexp(1).sum() + out.embedding.sum()).backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None and torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize(
    ("name", "pools_last_stage"),
    [("resnet8", True), ("resnet50_cifar", True), ("shufflenetv1", True), ("shufflenetv2", False)],
)
def test_post_activation_stages_are_relu_of_preacts(name: str, pools_last_stage: bool) -> None:
    out = create_model(name, 10).eval()(torch.randn(2, 3, 32, 32))
    for stage, preact in zip(out.stages, out.preact_stages):
        torch.testing.assert_close(stage, F.relu(preact))
    if pools_last_stage:  # ShuffleNetV2 has a 1x1 conv between the last stage and the pool
        torch.testing.assert_close(out.embedding, out.stages[-1].mean(dim=(2, 3)))


def test_wrn_stage_preacts_are_the_next_batchnorm_outputs() -> None:
    model = create_model("wrn_16_1", 10).eval()
    out = model(torch.randn(2, 3, 32, 32))
    torch.testing.assert_close(out.preact_stages[0], out.stages[0])
    next_bns = [model.block2["layer"][0].bn1, model.block3["layer"][0].bn1, model.bn1]
    for stage, preact, bn in zip(out.stages[1:], out.preact_stages[1:], next_bns):
        torch.testing.assert_close(preact, bn(stage))
    torch.testing.assert_close(out.embedding, F.relu(out.preact_stages[-1]).mean(dim=(2, 3)))


def _reference_resnet8(state: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """ResNet-8 logits computed with functional ops straight from a public-layout state dict."""

    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(
            t, state[f"{p}.running_mean"], state[f"{p}.running_var"],
            state[f"{p}.weight"], state[f"{p}.bias"], training=False,
        )  # fmt: skip

    h = F.relu(bn(F.conv2d(x, state["conv1.weight"], padding=1), "bn1"))
    for stage, stride in ((1, 1), (2, 2), (3, 2)):
        p = f"layer{stage}.0"
        out = F.relu(
            bn(F.conv2d(h, state[f"{p}.conv1.weight"], stride=stride, padding=1), f"{p}.bn1")
        )
        out = bn(F.conv2d(out, state[f"{p}.conv2.weight"], padding=1), f"{p}.bn2")
        if f"{p}.downsample.0.weight" in state:
            h = bn(
                F.conv2d(h, state[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1"
            )
        h = F.relu(out + h)
    return F.linear(F.avg_pool2d(h, 8).flatten(1), state["fc.weight"], state["fc.bias"])


def test_resnet8_forward_matches_functional_reference() -> None:
    model = create_model("resnet8", 100)
    state = model.state_dict()
    for key, value in state.items():  # non-trivial BN statistics
        if key.endswith(("running_mean", "bias")):
            value.copy_(torch.randn_like(value) * 0.1)
        elif key.endswith(("running_var", "bn1.weight", "bn2.weight")):
            value.uniform_(0.5, 1.5)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x).logits, _reference_resnet8(state, x))


def test_channel_shuffle_interleaves_groups() -> None:
    x = torch.arange(6.0).reshape(1, 6, 1, 1)
    assert channel_shuffle(x, 3).flatten().tolist() == [0, 2, 4, 1, 3, 5]
    assert channel_shuffle(x, 2).flatten().tolist() == [0, 3, 1, 4, 2, 5]


def test_initialisation_follows_the_references() -> None:
    model = create_model("resnet32x4", 100)
    conv = model.layer3[1].conv2  # 256 -> 256, 3x3: fan_out = 2304
    assert conv.weight.std().item() == pytest.approx(math.sqrt(2 / 2304), rel=0.02)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            assert torch.all(module.weight == 1) and torch.all(module.bias == 0)
    classifier = create_model("vgg13", 100).classifier
    assert classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert torch.all(classifier.bias == 0)
    assert torch.all(create_model("wrn_40_2", 100).fc.bias == 0)
    # The reference ShuffleNets keep PyTorch's default: U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    weight = create_model("shufflenetv1", 100).layer3[1].conv1.weight  # 960 -> 240, groups 3
    assert weight.abs().max().item() <= 1 / math.sqrt(320)
    assert weight.std().item() == pytest.approx(1 / math.sqrt(3 * 320), rel=0.02)


def _perturbed(model: nn.Module) -> nn.Module:
    with torch.no_grad():
        for buffer_name, buffer in model.named_buffers():
            if buffer_name.endswith("running_var"):
                buffer.uniform_(0.5, 1.5)
    return model.eval()


@pytest.mark.parametrize("name", list(ZOO))
def test_state_dict_round_trip_in_the_public_format(name: str, tmp_path) -> None:
    source = _perturbed(create_model(name, 100))
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save({"model": source.state_dict(), "epoch": 240, "accuracy": 72.3}, path)
    target = create_model(name, 100)
    target.load_state_dict(torch.load(path, weights_only=True)["model"], strict=True)
    target.eval()
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(target(x).logits, source(x).logits)
    fresh = load_checkpoint(create_model(name, 100), path).eval()
    torch.testing.assert_close(fresh(x).embedding, source(x).embedding)


def test_loader_accepts_bare_and_wrapped_state_dicts() -> None:
    source = _perturbed(create_model("resnet8", 10))
    state = source.state_dict()
    x = torch.randn(2, 3, 32, 32)
    variants = [
        state,
        {"state_dict": state},
        {"model": {f"module.{k}": v for k, v in state.items()}},
        {f"_orig_mod.{k}": v for k, v in state.items()},
    ]
    for checkpoint in variants:
        model = load_checkpoint(create_model("resnet8", 10), checkpoint).eval()
        torch.testing.assert_close(model(x).logits, source(x).logits)
    assert list(extract_state_dict({"model": state})) == list(state)


def test_loader_tolerates_missing_num_batches_tracked() -> None:
    state = {
        k: v for k, v in create_model("resnet8", 10).state_dict().items()
        if not k.endswith("num_batches_tracked")
    }  # fmt: skip
    load_checkpoint(create_model("resnet8", 10), {"model": state})


def test_loader_names_mis_shaped_missing_and_unexpected_keys() -> None:
    state = dict(create_model("resnet8", num_classes=10).state_dict())
    del state["layer2.0.conv1.weight"]
    state["layer9.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(create_model("resnet8", num_classes=100), {"model": state})
    message = str(error.value)
    assert "fc.weight (checkpoint [10, 64], model [100, 64])" in message
    assert "fc.bias (checkpoint [10], model [100])" in message
    assert "1 missing: [layer2.0.conv1.weight]" in message
    assert "1 unexpected: [layer9.weight]" in message
    assert isinstance(error.value, ValueError)


def test_non_strict_loading_skips_key_differences_but_not_shapes() -> None:
    state = dict(create_model("resnet8", 10).state_dict())
    del state["fc.bias"]
    state["extra.weight"] = torch.zeros(1)
    load_checkpoint(create_model("resnet8", 10), state, strict=False)
    with pytest.raises(CheckpointMismatchError, match="mis-shaped"):
        load_checkpoint(create_model("resnet8", 100), state, strict=False)


def test_loader_reports_bad_sources(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_checkpoint(create_model("resnet8"), tmp_path / "nowhere.pth")
    with pytest.raises(ValueError, match=r"no state dict found.*\[epoch, optimizer\]"):
        load_checkpoint(create_model("resnet8"), {"epoch": 3, "optimizer": {"lr": 0.1}})
    torch.save(torch.zeros(3), tmp_path / "tensor.pth")
    with pytest.raises(ValueError, match="holds a Tensor"):
        load_checkpoint(create_model("resnet8"), tmp_path / "tensor.pth")
