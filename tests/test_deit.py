"""DeiT with a distillation token (timm's deit_*_distilled_*): the two heads, the embedding
as the mean of the class and distillation tokens, DeiT's two-head evaluation, and the
hard-distillation term, each against timm's own computation or an explicit formula."""

from __future__ import annotations

import pytest
import timm
import torch
import torch.nn.functional as F
from timm.models.deit import VisionTransformerDistilled

from ndkd.losses import hard_distillation_loss
from ndkd.methods import BuildContext, StepOutputs, build_term
from ndkd.models import create_model
from ndkd.models.output import ModelOutput

ARCH = "deit_tiny_distilled_patch16_224"


@pytest.fixture(scope="module")
def deit():
    torch.manual_seed(0)
    return create_model(f"timm:{ARCH}", 10, img_size=32)


def test_heads_embedding_and_two_head_evaluation(deit):
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        deit.train()
        trained = deit(x)
        features = deit.forward_features(x)
        torch.testing.assert_close(trained.logits, deit.head(features[:, 0]))
        torch.testing.assert_close(trained.heads["dist_logits"], deit.head_dist(features[:, 1]))
        deit.eval()
        evaluated = deit(x)
        torch.testing.assert_close(evaluated.logits, VisionTransformerDistilled.forward(deit, x))
        torch.testing.assert_close(evaluated.embedding, (features[:, 0] + features[:, 1]) / 2)
    assert deit.embedding_dim == 192 and len(evaluated.stages) == 5


def test_state_dict_is_timms(deit):
    plain = timm.create_model(ARCH, num_classes=10, img_size=32)
    plain.load_state_dict(deit.state_dict(), strict=True)


def test_hard_distillation_against_cross_entropy_to_the_teacher_argmax(deit):
    torch.manual_seed(1)
    probe = deit.eval()(torch.randn(2, 3, 32, 32))
    teacher_probe = ModelOutput(torch.randn(2, 10), torch.randn(2, 8))
    term = build_term("hard_distill", BuildContext(10, probe, teacher_probe), {})
    student = ModelOutput(torch.randn(4, 10), torch.randn(4, 192), heads={})
    student.heads["dist_logits"] = torch.randn(4, 10, requires_grad=True)
    teacher = ModelOutput(torch.randn(4, 10), torch.randn(4, 8))
    loss = term(StepOutputs(student, teacher, torch.tensor([0, 1, 2, 3])))
    expected = F.cross_entropy(student.heads["dist_logits"], teacher.logits.argmax(1))
    torch.testing.assert_close(loss, expected)
    loss.backward()
    assert student.heads["dist_logits"].grad is not None
    torch.testing.assert_close(
        hard_distillation_loss(student.logits.double(), teacher.logits),
        F.cross_entropy(student.logits.double(), teacher.logits.argmax(1)),
    )


def test_hard_distill_needs_a_distillation_head():
    probe = ModelOutput(torch.randn(2, 10), torch.randn(2, 8))
    with pytest.raises(ValueError, match="no distillation head"):
        build_term("hard_distill", BuildContext(10, probe, probe), {})
