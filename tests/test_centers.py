"""class_means on models ndkd never saw, save/load, the public JSON importer, refusals."""

from __future__ import annotations

import json
import logging

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ndkd.centers.store as store
from ndkd import ClassMeans, class_means, load_official_json
from ndkd.centers import convert_centers
from ndkd.progress import Progress


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
        progress=calls.append,
    )
    assert calls == [Progress(phase="centers", done=k, total=4) for k in (1, 2, 3, 4)]
    unsized = []
    class_means(toy_teacher(), iter([toy_data()]), 3, progress=unsized.append)
    assert unsized == [Progress(phase="centers", done=1, total=None)]
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
        ('{"0": [1.0, 2.0], "1": [1.0]}', "key '1' lists 1 numbers but key '0' lists 2"),
        ('{"0": [1.0, NaN], "1": [1.0, 1.0]}', "key '0', value 1 is NaN; expected a finite"),
        ('{"0": [1.0, 1.0], "1": [-Infinity, 1.0]}', "key '1', value 0 is -Infinity"),
        ('{"0": [1.0, 1e999]}', "key '0', value 1 is Infinity; expected a finite"),
        ('{"0": [1.0, true], "1": [1.0, 1.0]}', "key '0', value 1 is true; expected a number"),
        ('{"0": [1.0, 1.0], "1": [false, 1.0]}', "key '1', value 0 is false; expected a number"),
        ('{"0": [1.0, "x"]}', "key '0', value 1 is \"x\"; expected a number"),
        ('{"0": [1.0, null]}', "key '0', value 1 is null; expected a number"),
        ('{"0": [1.0, [2.0]]}', "key '0', value 1 is \\[2.0\\]; expected a number"),
        ('{"0": [1.0], "1": 2.0}', "key '1' must map to a list of numbers, found float"),
        ('{"0": [1.0], "1": []}', "key '1' must map to a list of numbers, found an empty list"),
        ('{"0": [1.0], "0": [2.0]}', "key '0' appears more than once"),
        ('{"0": [1.0], "01": [2.0]}', "key '01' is not a class index"),
        ('{"a": [1.0]}', "key 'a' is not a class index"),
        ('{"-1": [1.0]}', "key '-1' is not a class index"),
        ("[1, 2]", "non-empty JSON object"),
        ("{}", "non-empty JSON object.*found an empty object"),
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
    ],
)
def test_official_json_refusals(tmp_path, payload, message):
    path = tmp_path / "center_emb_train.json"
    path.write_text(payload)
    with pytest.raises(ValueError, match=message) as error:
        load_official_json(path)
    assert str(error.value).startswith(str(path))


def test_official_json_refuses_binary_and_folders(tmp_path):
    path = tmp_path / "center_emb_train.json"
    path.write_bytes(bytes(range(256)))
    with pytest.raises(ValueError, match="not valid JSON") as error:
        load_official_json(path)
    assert str(path) in str(error.value)
    with pytest.raises(ValueError, match="is a folder"):
        load_official_json(tmp_path)


# --- saving by suffix, convert ----------------------------------------------------------------


def test_json_save_round_trip_and_warns_about_what_it_drops(tmp_path, caplog):
    means = ClassMeans(torch.randn(4, 6), torch.tensor([2, 3, 4, 5]), {"teacher": "resnet56"})
    with caplog.at_level(logging.WARNING, logger="ndkd.centers.store"):
        path = means.save(tmp_path / "centers.json")
    assert "per-class sample counts, teacher" in caplog.text and str(path) in caplog.text
    raw = json.loads(path.read_text())
    assert list(raw) == ["0", "1", "2", "3"] and all(len(row) == 6 for row in raw.values())
    loaded = load_official_json(path)
    assert torch.equal(loaded.means, means.means)  # float32 values survive the text exactly
    assert torch.equal(ClassMeans.load(path, num_classes=4, dim=6).means, means.means)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["centers.json"]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ndkd.centers.store"):
        loaded.save(tmp_path / "again.JSON")  # nothing to drop: no warning
    assert not caplog.records
    assert torch.equal(load_official_json(tmp_path / "again.JSON").means, means.means)


def test_save_refuses_unknown_suffixes_and_folders(tmp_path):
    means = ClassMeans(torch.rand(2, 3) + 0.1)
    for name in ("centers.pt", "centers", "centers.safetensors.bak"):
        with pytest.raises(ValueError, match=r"expected \.safetensors or \.json") as error:
            means.save(tmp_path / name)
        assert str(tmp_path / name) in str(error.value)
    folder = tmp_path / "out.safetensors"
    folder.mkdir()
    with pytest.raises(ValueError, match="out.safetensors is a folder; expected a file path"):
        means.save(folder)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.safetensors"]


def test_convert_json_to_safetensors_and_back(tmp_path):
    source = tmp_path / "center_emb_train.json"
    write_public_json(source, torch.rand(3, 4) + 0.1)
    target = tmp_path / "c.safetensors"
    written = convert_centers(source, target, {"teacher": "resnet56"})
    assert written.metadata == {"source": "official-json", "teacher": "resnet56"}
    loaded = ClassMeans.load(target)
    assert loaded.metadata["teacher"] == "resnet56" and loaded.metadata["path"] == str(target)
    torch.testing.assert_close(loaded.means, load_official_json(source).means)
    back = tmp_path / "back.json"
    convert_centers(target, back, {})
    assert torch.equal(load_official_json(back).means, loaded.means)


def test_convert_refuses_to_overwrite_its_input_or_a_folder(tmp_path):
    source = tmp_path / "center_emb_train.json"
    write_public_json(source, torch.rand(3, 4) + 0.1)
    before = source.read_bytes()
    for same in (source, tmp_path / "sub" / ".." / "center_emb_train.json"):
        with pytest.raises(ValueError, match="would overwrite its input") as error:
            convert_centers(source, same, {})
        assert str(source) in str(error.value)
    link = tmp_path / "link.json"
    link.symlink_to(source)
    with pytest.raises(ValueError, match="would overwrite its input"):
        convert_centers(source, link, {})
    with pytest.raises(ValueError, match="is a folder; expected a file path"):
        convert_centers(source, tmp_path, {})
    with pytest.raises(ValueError, match=r"\.safetensors or \.json"):
        convert_centers(source, tmp_path / "c.pt", {})
    with pytest.raises(FileNotFoundError, match="absent.json"):
        convert_centers(tmp_path / "absent.json", tmp_path / "c.safetensors", {})
    assert source.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["center_emb_train.json", "link.json"]
