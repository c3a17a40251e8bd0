"""Folding a frozen model's BatchNorms into its convolutions keeps every output."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from helpers import with_trained_statistics
from ndkd.models import create_model
from ndkd.models.fold import fold_batchnorm


def _outputs(out):
    return [out.logits, out.embedding, *out.stages, *out.preact_stages]


@pytest.mark.parametrize("arch", ["resnet20", "wrn_16_2", "mobilenetv2", "shufflenetv1"])
def test_folded_model_gives_the_same_outputs(arch):
    model = with_trained_statistics(create_model(arch, 10))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected, found = _outputs(model(x)), _outputs(folded(x))
    assert len(expected) == len(found)
    for a, b in zip(expected, found):
        assert a.shape == b.shape
        assert float((a - b).abs().max()) <= 1e-4 * float(a.abs().max()) + 1e-6
    bns = [m for m in folded.modules() if isinstance(m, nn.BatchNorm2d)]
    original = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) < len(original)  # something was folded
    assert not any(p.requires_grad for p in folded.parameters())
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the original is untouched


def test_untraceable_model_is_returned_as_it_is():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

        def forward(self, x):
            return self.bn(self.conv(x)) if x.sum() > 0 else x

    model = DataDependent().eval()
    assert fold_batchnorm(model) is model


def test_training_mode_is_refused():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(create_model("resnet8", 10))
