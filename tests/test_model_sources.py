"""Model sources: ``torchvision:NAME``, ``timm:NAME`` and the zoo's ``mobilenet_v1``.

The output contract on wrapped library models, their own state-dict keys both ways,
pretrained-weights failures, refusals, BatchNorm folding, and the feature methods sized from
probes on the ImageNet pairs (at 64x64 to keep CPU time low).
"""

from __future__ import annotations

import time

import huggingface_hub.constants
import pytest
import timm
import torch
import torchvision
from torch import nn

from helpers import with_trained_statistics
from ndkd.config import TermConfig
from ndkd.methods import BuildContext, Distiller, StepOutputs
from ndkd.methods.ofd import bn_before_relu
from ndkd.models import StageInfo, create_model, list_models, load_checkpoint
from ndkd.models import pretrained as weights_source
from ndkd.models.adapter import final_linear
from ndkd.models.fold import fold_batchnorm

RESNET18_STAGES = [(64, 2), (64, 4), (128, 8), (256, 16), (512, 32)]
VIT = "vit_tiny_patch16_224"
VIT_OPTIONS = {"img_size": 32}  # 2x2 token maps, a cheap ViT for tests


def _outputs(out):
    return [out.logits, out.embedding, *out.stages, *out.preact_stages]


@pytest.fixture(scope="module")
def resnet18():
    torch.manual_seed(0)
    return create_model("torchvision:resnet18", 1000)


# --- torchvision ---------------------------------------------------------------------------


def test_torchvision_resnet_follows_the_output_contract(resnet18):
    model = resnet18.eval()
    reference = torchvision.models.resnet18()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        expected = reference.eval()(x)
        trunk = nn.Sequential(*list(reference.children())[:-1])(x).flatten(1)
    assert isinstance(model, torchvision.models.ResNet)
    torch.testing.assert_close(out.logits, expected, rtol=0, atol=0)
    torch.testing.assert_close(out.embedding, trunk)
    assert model.embedding_dim == 512 and model.num_classes == 1000
    assert model.get_classifier() is model.fc and final_linear(model) == ("fc", model.fc)
    assert model.stage_info == [StageInfo(c, s) for c, s in RESNET18_STAGES]
    for stage, preact, (channels, stride) in zip(out.stages, out.preact_stages, RESNET18_STAGES):
        assert stage.shape == (2, channels, 64 // stride, 64 // stride)
        assert preact.shape == stage.shape and preact.min() < 0  # before the ReLU
        torch.testing.assert_close(torch.relu(preact), stage)


def test_torchvision_stages_are_the_resnet_layers(resnet18):
    """The stages are ``relu`` (stem) and ``layer1`` .. ``layer4``: the outputs of those
    modules of torchvision's own model, read with hooks."""
    reference = torchvision.models.resnet18().eval()
    reference.load_state_dict(resnet18.state_dict())
    names = ["relu", "layer1", "layer2", "layer3", "layer4"]
    seen = {}
    for name in names:
        reference.get_submodule(name).register_forward_hook(
            lambda _, __, out, name=name: seen.setdefault(name, out.clone())
        )
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        out = resnet18.eval()(x)
        reference(x)
    for name, stage in zip(names, out.stages):
        torch.testing.assert_close(stage, seen[name])


def test_torchvision_training_mode_and_gradients():
    model = create_model("torchvision:mobilenet_v2", 10)
    assert model.stage_info == [
        StageInfo(c, s) for c, s in [(16, 2), (24, 4), (32, 8), (96, 16), (1280, 32)]
    ]
    out = model.train()(torch.randn(2, 3, 64, 64))
    assert out.logits.shape == (2, 10) and out.embedding.shape == (2, 1280)
    (out.logits.sum() + sum(s.mean() for s in out.stages)).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert model.classifier_name == "classifier.1"
    assert model.classifier[1].weight.grad.abs().sum() > 0


@pytest.mark.parametrize("wrap", ["bare", "model", "module", "model+module"])
def test_torchvision_state_dicts_load_strictly_both_ways(resnet18, wrap, tmp_path):
    source = torchvision.models.resnet18()
    state = source.state_dict()
    if "module" in wrap:
        state = {f"module.{k}": v for k, v in state.items()}
    if "model" in wrap:
        state = {"model": state, "epoch": 90}
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    model = load_checkpoint(resnet18, path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in source.state_dict().items())
    back = torchvision.models.resnet18()
    back.load_state_dict(model.state_dict(), strict=True)  # an exported student loads back
    assert list(model.state_dict()) == list(source.state_dict())


def test_torchvision_in_channels_and_options():
    model = create_model("torchvision:resnet18", 10, in_channels=1)
    assert model.conv1.weight.shape == (64, 1, 7, 7)
    assert model(torch.randn(1, 1, 64, 64)).logits.shape == (1, 10)
    model = create_model("torchvision:mobilenet_v2", 10, width_mult=0.5)
    assert model.stage_info[1] == StageInfo(16, 4)


def test_folding_a_torchvision_resnet_keeps_its_outputs(resnet18):
    model = with_trained_statistics(resnet18)
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, found = _outputs(model(x)), _outputs(folded(x))
    assert len(expected) == len(found) == 12
    for a, b in zip(expected, found):
        assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max()) + 1e-6


def test_ofd_finds_the_public_codes_bns_on_torchvision_resnets(resnet18):
    """The BN before each stage's last ReLU, as mdistiller's ImageNet ``get_bn_before_relu``."""
    names = {module: key for key, module in resnet18.named_modules()}
    bns = bn_before_relu(resnet18, torch.randn(2, 3, 64, 64), range(5))
    expected = ["bn1", "layer1.1.bn2", "layer2.1.bn2", "layer3.1.bn2", "layer4.1.bn2"]
    assert [names[bn] for bn in bns] == expected


# --- timm ----------------------------------------------------------------------------------


def test_timm_vit_follows_the_output_contract():
    model = create_model(f"timm:{VIT}", 10, **VIT_OPTIONS).eval()
    reference = timm.create_model(VIT, num_classes=10, **VIT_OPTIONS).eval()
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = model(x)
        expected = reference(x)
        embedding = reference.forward_head(reference.forward_features(x), pre_logits=True)
        block = reference.blocks[5](
            reference.blocks[:5](reference._pos_embed(reference.patch_embed(x)))
        )
    torch.testing.assert_close(out.logits, expected)
    torch.testing.assert_close(out.embedding, embedding)
    assert model.embedding_dim == 192 and model.get_classifier() is model.head
    assert model.stage_info == [StageInfo(192, 16)] * 5
    assert [tuple(s.shape) for s in out.stages] == [(2, 192, 2, 2)] * 5
    # the third map is block 6's output (index 5), tokens reshaped to the 2x2 patch grid
    torch.testing.assert_close(out.stages[2], block[:, 1:].transpose(1, 2).reshape(2, 192, 2, 2))
    assert out.preact_stages == out.stages  # timm exposes no pre-activations


def test_timm_cnn_stages_follow_feature_info():
    model = create_model("timm:resnet18", 10)
    assert model.stage_info == [StageInfo(c, s) for c, s in RESNET18_STAGES]
    out = model(torch.randn(2, 3, 64, 64))
    assert [s.shape[1:] for s in out.stages] == [(c, 64 // s, 64 // s) for c, s in RESNET18_STAGES]
    out.logits.sum().backward()


def test_timm_state_dicts_load_strictly_both_ways(tmp_path):
    source = timm.create_model(VIT, num_classes=10, **VIT_OPTIONS)
    path = tmp_path / "vit.pth"
    torch.save({"model": source.state_dict()}, path)
    model = load_checkpoint(create_model(f"timm:{VIT}", 10, **VIT_OPTIONS), path)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in source.state_dict().items())
    back = timm.create_model(VIT, num_classes=10, **VIT_OPTIONS)
    back.load_state_dict(model.state_dict(), strict=True)


def test_timm_in_channels():
    model = create_model(f"timm:{VIT}", 10, in_channels=1, **VIT_OPTIONS)
    assert model.patch_embed.proj.in_channels == 1
    assert model(torch.randn(1, 1, 32, 32)).logits.shape == (1, 10)


# --- refusals and pretrained weights -------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("torchvision:resnet9", r"torchvision\.models\.list_models"),
        ("timm:no_such_net", r"timm\.list_models"),
        ("keras:resnet18", "unknown model source 'keras'"),
        ("mobilenet_v9", "unknown model 'mobilenet_v9'.*mobilenet_v1.*torchvision:NAME"),
        ("torchvision:squeezenet1_0", "not an nn.Linear"),
    ],
)
def test_refusals(name, message):
    with pytest.raises(ValueError, match=message):
        create_model(name, 10)


def test_zoo_refuses_pretrained_and_options():
    with pytest.raises(ValueError, match="zoo has no pretrained weights; give a checkpoint"):
        create_model("resnet20", pretrained=True)
    with pytest.raises(ValueError, match="take no options"):
        create_model("resnet20", img_size=32)
    with pytest.raises(ValueError, match="unexpected keyword"):
        create_model("torchvision:resnet18", no_such_option=1)


@pytest.fixture
def offline(monkeypatch, tmp_path):
    """Empty weight caches and no route to any host."""

    def refuse(address, timeout=None):
        raise OSError(101, "Network is unreachable")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(weights_source.urllib.request, "getproxies", dict)
    monkeypatch.setattr(weights_source.socket, "create_connection", refuse)


@pytest.mark.parametrize(
    ("name", "host"),
    [("torchvision:resnet18", "download.pytorch.org"), (f"timm:{VIT}", "huggingface.co")],
)
def test_pretrained_without_internet_is_one_quick_error(offline, name, host):
    start = time.monotonic()
    with pytest.raises(ValueError) as caught:
        create_model(name, 1000, pretrained=True)
    message = str(caught.value)
    assert time.monotonic() - start < 10
    assert "\n" not in message
    assert message.startswith(f"{name}: pretrained weights could not be downloaded ({host}")
    assert message.endswith("download them where there is internet or give a checkpoint file")


def test_cached_torchvision_weights_load_without_network(offline, tmp_path):
    """Weights in torch hub's cache load with no route to the internet; another class count
    gets a new classifier on the pretrained trunk."""
    weights = torchvision.models.get_model_weights("resnet18").DEFAULT
    cached = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[1]
    cached.parent.mkdir(parents=True)
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), cached)
    model = create_model("torchvision:resnet18", 10, pretrained=True)
    assert torch.equal(model.conv1.weight, source.conv1.weight)
    assert model.fc.weight.shape == (10, 512) and model.num_classes == 10
    assert model(torch.randn(1, 3, 64, 64)).logits.shape == (1, 10)


def test_failed_download_is_one_line():
    def load():
        raise OSError("connection reset\nby peer")

    with pytest.raises(ValueError, match=r"^x: .*\(connection reset by peer\); download"):
        weights_source.fetch("x", load)


def test_list_models_by_source():
    assert list_models("imagenet") == ["mobilenet_v1"]
    assert "mobilenet_v1" not in list_models()  # the default stays the CIFAR zoo
    assert "torchvision:resnet18" in list_models("torchvision")
    assert "torchvision:fasterrcnn_resnet50_fpn" not in list_models("torchvision")
    assert "timm:vit_small_patch16_224" in list_models("timm")
    with pytest.raises(ValueError, match="unknown model source"):
        list_models("keras")


# --- MobileNet-V1 --------------------------------------------------------------------------

# The public definition (ND repo ImageNet/Models/mobilenet.py, mdistiller
# mdistiller/models/imagenet/mobilenetv1.py): conv_bn(3, 32, 2), then conv_dw(inp, oup, s).
MV1_BLOCKS = [
    (32, 64, 1),
    (64, 128, 2),
    (128, 128, 1),
    (128, 256, 2),
    (256, 256, 1),
    (256, 512, 2),
    *[(512, 512, 1)] * 5,
    (512, 1024, 2),
    (1024, 1024, 1),
]


def _bn(prefix, channels):
    return {
        f"{prefix}.weight": (channels,),
        f"{prefix}.bias": (channels,),
        f"{prefix}.running_mean": (channels,),
        f"{prefix}.running_var": (channels,),
        f"{prefix}.num_batches_tracked": (),
    }


def _public_mobilenet_v1_layout(classes):
    layout = {"model.0.0.weight": (32, 3, 3, 3), **_bn("model.0.1", 32)}
    for index, (inp, oup, _) in enumerate(MV1_BLOCKS, start=1):
        layout[f"model.{index}.0.weight"] = (inp, 1, 3, 3)
        layout |= _bn(f"model.{index}.1", inp)
        layout[f"model.{index}.3.weight"] = (oup, inp, 1, 1)
        layout |= _bn(f"model.{index}.4", oup)
    return layout | {"fc.weight": (classes, 1024), "fc.bias": (classes,)}


def test_mobilenet_v1_has_the_public_layout_and_size():
    model = create_model("mobilenet_v1", 1000)
    layout = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert layout == _public_mobilenet_v1_layout(1000)
    keys = list(layout)
    assert keys[:3] == ["model.0.0.weight", "model.0.1.weight", "model.0.1.bias"]
    assert keys[-3:] == ["model.13.4.num_batches_tracked", "fc.weight", "fc.bias"]
    assert sum(p.numel() for p in model.parameters()) == 4_231_976
    assert model.embedding_dim == 1024 and model.get_classifier() is model.fc


def test_mobilenet_v1_output_contract():
    model = create_model("mobilenet_v1", 10).eval()
    expected = [(64, 2), (128, 4), (256, 8), (512, 16), (1024, 32)]
    assert model.stage_info == [StageInfo(c, s) for c, s in expected]
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        out = model(x)
        pooled = model.model(x).mean(dim=(2, 3))
    torch.testing.assert_close(out.embedding, pooled)
    torch.testing.assert_close(out.logits, model.fc(pooled))
    for stage, preact, (c, s) in zip(out.stages, out.preact_stages, expected):
        assert stage.shape == (2, c, 64 // s, 64 // s)
        torch.testing.assert_close(torch.relu(preact), stage)
    names = {module: key for key, module in model.named_modules()}
    bns = bn_before_relu(model, x, range(1, 5))  # mdistiller's get_bn_before_relu
    assert [names[bn] for bn in bns] == ["model.3.4", "model.5.4", "model.11.4", "model.13.4"]


def test_folding_mobilenet_v1_keeps_its_outputs():
    model = with_trained_statistics(create_model("mobilenet_v1", 10))
    folded = fold_batchnorm(model)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected, found = _outputs(model(x)), _outputs(folded(x))
    for a, b in zip(expected, found):
        assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max()) + 1e-6


# --- feature methods on the ImageNet pairs -------------------------------------------------

TERMS = ("reviewkd", "fitnet", "ofd")


@pytest.mark.parametrize(
    ("teacher_name", "student_name", "student_levels", "teacher_levels"),
    [
        (
            "torchvision:resnet34",
            "torchvision:resnet18",
            [64, 128, 256, 512, 512],
            [64, 128, 256, 512, 512],
        ),
        (
            "torchvision:resnet50",
            "mobilenet_v1",
            [128, 256, 512, 1024, 1024],
            [256, 512, 1024, 2048, 2048],
        ),
    ],
)
def test_feature_methods_build_and_train_on_imagenet_pairs(
    teacher_name, student_name, student_levels, teacher_levels
):
    teacher = create_model(teacher_name, 10).eval()
    student = create_model(student_name, 10)
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([1, 2])
    with torch.no_grad():
        student_probe, teacher_probe = student.eval()(images), teacher(images)
    context = BuildContext(
        10, student_probe, teacher_probe, student=student, teacher=teacher, probe_images=images
    )
    method = Distiller([TermConfig(name, 1.0) for name in TERMS], context)
    review = method.terms["reviewkd"]
    # ABF widths as the public ImageNet ReviewKD code sizes them (stages after the stem,
    # then the embedding), fusion width min(512, student embedding dim).
    assert [abf.conv1[0].in_channels for abf in review.abfs] == student_levels
    assert [abf.conv2[0].out_channels for abf in review.abfs] == teacher_levels
    assert {abf.conv1[0].out_channels for abf in review.abfs} == {512}
    assert [c.shape[0] for c in method.terms["ofd"].margins()] == teacher_levels[:4]
    student.train(), method.train()
    with torch.no_grad():
        teacher_out = teacher(images)
    losses = method(StepOutputs(student(images), teacher_out, labels), 0)
    total = sum(losses[name] for name in TERMS)
    assert torch.isfinite(total)
    total.backward()
    assert all(p.grad is not None for p in method.parameters())
    assert student.get_classifier().weight.grad is None  # feature terms skip the classifier
    assert next(student.parameters()).grad.abs().sum() > 0
