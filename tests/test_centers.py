"""class_means on models ndkd never saw, save/load, the public JSON importer, refusals."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ndkd.centers.store as store
from ndkd import ClassMeans, class_means, load_official_json


def toy_teacher(in_dim=12, hidden=6, classes=3):
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.ReLU(), nn.Dropout(0.5), nn.Linear(hidden, classes)
    )


def toy_data(n=40, in_dim=12, classes=3):
    x = torch.randn(n, in_dim)
    y = torch.arange(n) % classes
    return x, y


def reference_means(features, labels, classes):
    """Per-class mean computed class by class, sample by sample."""
    rows = []
    for k in range(classes):
        members = [features[i] for i in range(len(labels)) if int(labels[i]) == k]
        rows.append(torch.stack(members).double().sum(0) / len(members))
    return torch.stack(rows).float()


def test_means_of_an_unknown_sequential_model():
    model = toy_teacher()
    x, y = toy_data()
    got = class_means(model, DataLoader(TensorDataset(x, y), batch_size=7), 3)
    model.eval()
    features = model[1](model[0](x)).detach()  # input of the final Linear, in eval mode
    torch.testing.assert_close(got.means, reference_means(features, y, 3))
    assert got.counts.tolist() == [14, 13, 13]
    assert got.metadata["feature_dim"] == "6" and got.metadata["num_samples"] == "40"


def test_means_of_a_torchvision_resnet_use_the_fc_input():
    model = torchvision.models.resnet18(num_classes=4)
    x = torch.randn(8, 3, 32, 32)
    y = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    got = class_means(model, DataLoader(TensorDataset(x, y), batch_size=3), 4)
    model.eval()
    with torch.no_grad():
        trunk = nn.Sequential(*list(model.children())[:-1])
        features = trunk(x).flatten(1)
    assert got.dim == 512
    torch.testing.assert_close(got.means, reference_means(features, y, 4), rtol=1e-5, atol=1e-5)


def test_restores_training_mode_and_leaves_model_unchanged():
    model = toy_teacher()
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    class_means(model, [toy_data()], 3)
    assert model.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not model[3]._forward_hooks  # the adapter leaves no hook behind


def test_progress_callback_and_metadata():
    calls = []
    got = class_means(
        toy_teacher(),
        DataLoader(TensorDataset(*toy_data()), batch_size=10),
        3,
        metadata={"teacher": "toy", "split": "train"},
        progress=lambda done, total: calls.append((done, total)),
    )
    assert calls == [(1, 4), (2, 4), (3, 4), (4, 4)]
    assert got.metadata["teacher"] == "toy"


def test_refuses_a_class_without_samples():
    x, y = toy_data()
    with pytest.raises(ValueError, match=r"1 of 4 classes have no samples: 3"):
        class_means(toy_teacher(), [(x, y)], 4)


def test_refuses_labels_out_of_range_and_empty_loader():
    x, y = toy_data()
    with pytest.raises(ValueError, match=r"\[0, 1\].*\[0, 2\]"):
        class_means(toy_teacher(), [(x, y)], 2)
    with pytest.raises(ValueError, match="no batches"):
        class_means(toy_teacher(), [], 3)


def test_refuses_non_finite_features():
    model = toy_teacher()
    with torch.no_grad():
        model[0].bias[0] = float("nan")
    with pytest.raises(ValueError, match="non-finite"):
        class_means(model, [toy_data()], 3)


def test_save_load_round_trip(tmp_path):
    means = ClassMeans(
        torch.rand(5, 7) + 0.1,
        torch.tensor([3, 1, 4, 1, 5]),
        {"teacher": "resnet56", "dataset": "cifar100", "transform": "train"},
    )
    path = means.save(tmp_path / "centers.safetensors")
    loaded = ClassMeans.load(path, num_classes=5, dim=7)
    torch.testing.assert_close(loaded.means, means.means)
    assert loaded.counts.tolist() == [3, 1, 4, 1, 5]
    assert loaded.metadata["teacher"] == "resnet56" and loaded.metadata["path"] == str(path)
    assert list(tmp_path.iterdir()) == [path]  # no temp files left


def test_load_refuses_mismatch_and_corruption(tmp_path):
    path = ClassMeans(torch.rand(5, 7) + 0.1).save(tmp_path / "c.safetensors")
    with pytest.raises(ValueError, match="has 5 classes but the model has 100"):
        ClassMeans.load(path, num_classes=100)
    with pytest.raises(ValueError, match="has dim 7 but the model has embedding dim 64"):
        ClassMeans.load(path, dim=64)
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(path.read_bytes()[:40])
    with pytest.raises(ValueError, match="broken.safetensors"):
        ClassMeans.load(broken)
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        ClassMeans.load(tmp_path / "missing.safetensors")


def test_failed_save_keeps_the_previous_file(tmp_path, monkeypatch):
    path = ClassMeans(torch.ones(2, 3)).save(tmp_path / "c.safetensors")
    good = path.read_bytes()

    def crash(tensors, filename, metadata=None):
        with open(filename, "wb") as handle:
            handle.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(store, "save_file", crash)
    with pytest.raises(OSError, match="disk full"):
        ClassMeans(torch.full((2, 3), 2.0)).save(path)
    assert path.read_bytes() == good
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.safetensors"]


def test_validation_refusals():
    with pytest.raises(ValueError, match="all-zero mean"):
        ClassMeans(torch.tensor([[1.0, 0.0], [0.0, 0.0]])).validate()
    with pytest.raises(ValueError, match="non-finite.*classes 1"):
        ClassMeans(torch.tensor([[1.0, 0.0], [float("inf"), 0.0]])).validate()


def write_public_json(path, means):
    """The public format: keys in first-seen (not sorted) order, 4-decimal floats."""
    order = [2, 0, 1] + list(range(3, len(means)))
    payload = {str(k): [round(v, 4) for v in means[k].tolist()] for k in order}
    path.write_text(json.dumps(payload))


def test_official_json_import(tmp_path):
    means = torch.rand(4, 5) * 10
    path = tmp_path / "center_emb_train.json"
    write_public_json(path, means)
    loaded = load_official_json(path)
    torch.testing.assert_close(loaded.means, means, atol=5e-5, rtol=0)
    assert loaded.counts is None and loaded.num_classes == 4 and loaded.dim == 5
    same = ClassMeans.load(path, num_classes=4, dim=5)  # the generic loader dispatches on .json
    torch.testing.assert_close(same.means, loaded.means)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ('{"0": [1.0, 2.0], "2": [1.0, 1.0]}', r"missing \[1\], unexpected \[2\]"),
        ('{"0": [1.0, 2.0], "1": [1.0]}', "same positive number"),
        ('{"0": [1.0, NaN], "1": [1.0, 1.0]}', "non-finite"),
        ('{"a": [1.0]}', "class indices"),
        ("[1, 2]", "non-empty JSON object"),
        ('{"0": [1.0, "x"]}', "lists of numbers"),
        ("{not json", "not valid JSON"),
    ],
)
def test_official_json_refusals(tmp_path, payload, message):
    path = tmp_path / "center_emb_train.json"
    path.write_text(payload)
    with pytest.raises(ValueError, match=message):
        load_official_json(path)
