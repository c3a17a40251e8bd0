"""The composition: one weight and one warm-up per term, parameter checks, X++ = X + nd."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ndkd import ClassMeans, ModelOutput, kd_loss, nd_loss
from ndkd.config import TermConfig
from ndkd.methods import BuildContext, Distiller, StepOutputs, available, term_parameters


def outputs(batch=6, classes=4, s_dim=5, t_dim=5):
    student = ModelOutput(torch.randn(batch, classes), torch.randn(batch, s_dim))
    teacher = ModelOutput(torch.randn(batch, classes), torch.randn(batch, t_dim))
    return student, teacher, torch.arange(batch) % classes


def context(student, teacher, centers=None):
    return BuildContext(student.logits.shape[1], student, teacher, centers)


def test_kd_plus_plus_is_kd_plus_nd_with_warmup():
    student, teacher, labels = outputs()
    centers = torch.rand(4, 5) + 0.1
    terms = [
        TermConfig("ce", 1.0),
        TermConfig("kd", 2.5, 20, {"temperature": 4.0}),
        TermConfig("nd", 2.0),
    ]
    method = Distiller(terms, context(student, teacher, ClassMeans(centers)))
    step = StepOutputs(student, teacher, labels)
    for epoch, factor in [(0, 0.0), (10, 0.5), (19, 0.95), (20, 1.0), (200, 1.0)]:
        losses = method(step, epoch)
        assert list(losses) == ["ce", "kd", "nd"]
        torch.testing.assert_close(losses["ce"], F.cross_entropy(student.logits, labels))
        expected_kd = 2.5 * factor * kd_loss(student.logits, teacher.logits, 4.0)
        torch.testing.assert_close(losses["kd"], expected_kd)
        expected_nd = 2.0 * nd_loss(student.embedding, teacher.embedding, labels, centers)
        torch.testing.assert_close(losses["nd"], expected_nd)


def test_projector_built_from_probed_dims_and_trainable():
    student, teacher, labels = outputs(s_dim=3, t_dim=8)
    method = Distiller(
        [TermConfig("nd", 1.0)], context(student, teacher, ClassMeans(torch.rand(4, 8) + 0.1))
    )
    params = list(method.parameters())
    assert sum(p.numel() for p in params) == 3 + 3 + 3 * 8 + 8  # BN(3) + Linear(3->8)
    method(StepOutputs(student, teacher, labels), 0)["nd"].backward()
    assert all(p.grad is not None for p in params)
    assert "terms.nd.loss.centers" in method.state_dict()


def test_parameter_and_compatibility_refusals():
    student, teacher, _ = outputs()
    with pytest.raises(ValueError, match="unknown parameter 'temp'.*accepted: temperature"):
        Distiller([TermConfig("kd", 1.0, 0, {"temp": 4})], context(student, teacher))
    with pytest.raises(ValueError, match="unknown loss term 'kdd'"):
        Distiller([TermConfig("kdd", 1.0)], context(student, teacher))
    with pytest.raises(ValueError, match="needs teacher class means"):
        Distiller([TermConfig("nd", 1.0)], context(student, teacher))
    with pytest.raises(ValueError, match="has 3 classes but the teacher has 4"):
        Distiller([TermConfig("nd", 1.0)], context(student, teacher, ClassMeans(torch.rand(3, 5))))
    with pytest.raises(ValueError, match="dim 7 but the teacher has embedding dim 5"):
        Distiller([TermConfig("nd", 1.0)], context(student, teacher, ClassMeans(torch.rand(4, 7))))
    wide = ModelOutput(torch.randn(6, 10), torch.randn(6, 5))
    with pytest.raises(ValueError, match="student has 4 classes but the teacher has 10"):
        Distiller([TermConfig("kd", 1.0)], context(student, wide))


def test_registry_lists_terms_and_their_parameters():
    assert {"ce", "kd", "nd"} <= set(available())
    assert term_parameters("kd") == {"temperature": 4.0, "standardize": False}
    assert Distiller([TermConfig("ce", 1.0)], context(*outputs()[:2])).requires_teacher is False


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("kd", {"temperature": math.nan}, "kd: temperature must be positive"),
        ("dkd", {"temperature": math.inf}, "dkd: temperature must be positive"),
        ("dkd", {"alpha": math.nan}, "dkd: alpha must be non-negative"),
        ("dist", {"gamma": -1.0}, "dist: gamma must be non-negative"),
        ("infonce", {"temperature": math.nan}, "infonce: temperature must be positive"),
        ("rkd", {"angle_weight": math.nan}, "rkd: angle_weight must be non-negative"),
        ("rkd", {"distance_weight": 0.0, "angle_weight": 0.0}, "must not both be 0"),
        ("pkt", {"eps": math.nan}, "pkt: eps must be positive"),
        ("sifn", {"step": math.nan}, "sifn: step must be positive"),
        ("sifn", {"refresh_steps": 0}, "sifn: refresh_steps must be an integer >= 1"),
        ("ce", {"label_smoothing": math.nan}, r"ce: label_smoothing must be in \[0, 1\)"),
        ("nd", {"layers": True}, "nd: layers must be an integer >= 0"),
        ("nd", {"projector_init_std": math.nan}, "projector init_std must be positive"),
        ("nd", {"projector_dropout": 1.0}, r"projector dropout must be in \[0, 1\)"),
    ],
)
def test_term_parameters_refuse_nan_inf_and_out_of_range(name, params, message):
    student, teacher, _ = outputs(t_dim=8)
    means = ClassMeans(torch.rand(4, 8) + 0.1)
    with pytest.raises(ValueError, match=message):
        Distiller([TermConfig(name, 1.0, 0, params)], context(student, teacher, means))


def test_nd_projector_init_std_initialises_the_projector_linear():
    """The public ImageNet code draws the projector Linear's weight and bias from N(0, 0.01^2);
    the CIFAR code keeps PyTorch's default weight and a zero bias."""
    torch.manual_seed(0)
    student, teacher, labels = outputs(s_dim=64, t_dim=256)
    means = ClassMeans(torch.rand(4, 256) + 0.1)
    assert term_parameters("nd")["projector_init_std"] is None
    default = Distiller([TermConfig("nd", 1.0)], context(student, teacher, means))
    linear = default.terms["nd"].loss.projector[2]
    assert torch.all(linear.bias == 0)
    assert linear.weight.std().item() == pytest.approx(1 / math.sqrt(3 * 64), rel=0.1)
    params = {"projector_init_std": 0.01}
    imagenet = Distiller([TermConfig("nd", 1.0, 0, params)], context(student, teacher, means))
    linear = imagenet.terms["nd"].loss.projector[2]
    assert linear.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert linear.bias.std().item() == pytest.approx(0.01, rel=0.3)
    imagenet(StepOutputs(student, teacher, labels), 0)["nd"].backward()
    assert linear.weight.grad is not None


def test_importing_the_methods_does_not_import_dynamo():
    """torch._dynamo costs about a second to import; only a SIFN snapshot term needs it."""
    code = "import sys, ndkd, ndkd.methods; sys.exit('torch._dynamo' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
