"""The plug-in API: EmbeddingAdapter, EmbeddingProjector, NDLoss, ModelSnapshot."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from ndkd import (
    ClassMeans,
    EmbeddingAdapter,
    EmbeddingProjector,
    ModelOutput,
    ModelSnapshot,
    NDLoss,
    nd_loss,
    with_embedding,
)
from ndkd.models import create_model
from ndkd.models.adapter import final_linear
from ndkd.projector import dim_projector


class TupleNet(nn.Module):
    """Returns (logits, aux); has an auxiliary head registered after the classifier."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(6, 5), nn.Tanh())
        self.head = nn.Linear(5, 3)
        self.aux = nn.Linear(5, 2)

    def forward(self, x):
        h = self.body(x)
        return self.head(h), self.aux(h)


class DictNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 8), nn.Linear(8, 2)

    def forward(self, x):
        return {"logits": self.fc2(torch.relu(self.fc1(x)))}


def test_tensor_output_model():
    model = nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 3))
    x = torch.randn(5, 4)
    out = with_embedding(model)(x)
    assert isinstance(out, ModelOutput)
    torch.testing.assert_close(out.embedding, torch.relu(model[0](x)))
    torch.testing.assert_close(out.logits, model(x))


def test_mapping_output_and_gradient_flows_through_embedding():
    model = DictNet()
    x = torch.randn(3, 4)
    out = with_embedding(model)(x)
    out.embedding.sum().backward()
    assert model.fc1.weight.grad is not None


def test_wrong_auto_choice_is_explained_and_named_layer_fixes_it():
    model = TupleNet()
    with pytest.raises(ValueError, match=r"outputs shape \(2, 2\).*logits of shape \(2, 3\)"):
        with_embedding(model)(torch.randn(2, 6))
    out = with_embedding(model, classifier="head")(torch.randn(2, 6))
    assert out.embedding.shape == (2, 5) and out.logits.shape == (2, 3)
    with pytest.raises(ValueError, match="no submodule named 'fc'"):
        with_embedding(model, classifier="fc")


def test_ndkd_style_output_passes_through():
    class Native(nn.Module):
        def forward(self, x):
            return ModelOutput(logits=x[:, :2], embedding=x)

    x = torch.randn(3, 4)
    out = with_embedding(Native())(x)
    assert out.embedding is x


def test_no_linear_and_no_hook_left_behind():
    with pytest.raises(ValueError, match="no nn.Linear"):
        with_embedding(nn.Identity())(torch.randn(2, 3))
    model = nn.Sequential(nn.Linear(4, 3))
    adapter = EmbeddingAdapter(model)
    adapter(torch.randn(2, 4))
    assert not model[0]._forward_hooks
    assert with_embedding(adapter) is adapter


def test_projector_structure_and_init():
    proj = EmbeddingProjector(64, 128)
    bn, drop, linear = proj
    assert isinstance(bn, nn.BatchNorm1d) and isinstance(drop, nn.Dropout) and drop.p == 0.5
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0) and torch.all(linear.bias == 0)
    assert proj(torch.randn(4, 64)).shape == (4, 128)
    torch.manual_seed(1)
    wide = EmbeddingProjector(512, 2048, init_std=0.01)
    assert wide[2].weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert wide[2].bias.abs().max().item() > 0
    with pytest.raises(ValueError, match=r"\[B, 64\].*\(4, 32\)"):
        proj(torch.randn(4, 32))


def test_ndloss_module_equals_function_and_trains_projector():
    means = torch.rand(4, 8) + 0.1
    module = NDLoss(ClassMeans(means), student_dim=3)
    assert isinstance(module.projector, EmbeddingProjector)
    assert "centers" in module.state_dict()
    s, t, y = torch.randn(6, 3), torch.randn(6, 8), torch.tensor([0, 1, 2, 3, 0, 1])
    module.eval()
    torch.testing.assert_close(module(s, t, y), nd_loss(module.projector(s), t, y, means))
    module.train()
    module(s, t, y).backward()
    assert module.projector[2].weight.grad is not None
    same_dim = NDLoss(means, student_dim=8, reduction="class")
    assert isinstance(same_dim.projector, nn.Identity) and not list(same_dim.parameters())
    with pytest.raises(ValueError, match="reduction"):
        NDLoss(means, reduction="mean")
    with pytest.raises(ValueError, match="all-zero"):
        NDLoss(torch.zeros(2, 3))


def test_snapshot_holds_earlier_weights():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2))
    x = torch.randn(3, 4)
    snapshot = ModelSnapshot(model)
    live_before = with_embedding(model)(x).embedding.detach()
    torch.testing.assert_close(snapshot.embedding(x), live_before)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    torch.testing.assert_close(snapshot.embedding(x), live_before)  # still the earlier one
    snapshot.refresh(model)
    torch.testing.assert_close(snapshot.embedding(x), with_embedding(model)(x).embedding)
    assert not snapshot.embedding(x).requires_grad
    assert not model[2]._forward_hooks


def test_final_linear_one_rule_for_every_model():
    mlp = nn.Sequential(nn.Linear(4, 7), nn.ReLU(), nn.Linear(7, 3))
    assert final_linear(mlp) == ("2", mlp[2])
    zoo = create_model("resnet8", 10)
    assert final_linear(zoo) == ("fc", zoo.fc)  # its get_classifier()
    tuple_net = TupleNet()
    assert final_linear(tuple_net) == ("aux", tuple_net.aux)  # the last one registered
    adapter = with_embedding(tuple_net, classifier="head")
    assert final_linear(adapter) == ("model.head", tuple_net.head)  # the adapter's choice
    with pytest.raises(ValueError, match="Identity has no nn.Linear classifier"):
        final_linear(nn.Identity())

    class HeadlessTimm(nn.Module):  # as timm models built with num_classes=0
        def __init__(self):
            super().__init__()
            self.body, self.head = nn.Linear(4, 4), nn.Identity()

        def get_classifier(self):
            return self.head

    with pytest.raises(ValueError, match="no nn.Linear classifier \\(its classifier is a"):
        final_linear(HeadlessTimm())


def test_adapter_state_dict_is_the_model_s_own():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    keys = list(EmbeddingAdapter(model).state_dict())
    assert keys == [f"model.{key}" for key in model.state_dict()]


def test_snapshot_of_an_adapter_keeps_its_classifier_layer():
    torch.manual_seed(0)
    live = with_embedding(TupleNet(), classifier="head")
    snapshot = ModelSnapshot(live)
    x = torch.randn(3, 6)
    torch.testing.assert_close(snapshot.embedding(x), live(x).embedding.detach())
    assert snapshot.embedding(x).shape == (3, 5)


def test_dim_projector_is_identity_for_equal_dims():
    assert isinstance(dim_projector(8, 8), nn.Identity)
    assert isinstance(dim_projector(8, 16), EmbeddingProjector)
    linear = dim_projector(8, 16, partial(nn.Linear, bias=False))
    assert isinstance(linear, nn.Linear) and linear.bias is None
    assert (linear.in_features, linear.out_features) == (8, 16)
