"""Unreadable inputs give one ValueError line naming the file and the problem: model and run
checkpoints, class-means safetensors files, metrics.jsonl."""

from __future__ import annotations

import json
import logging
import os
import pickle
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ndkd.centers import ClassMeans
from ndkd.centers.store import FORMAT_TAG
from ndkd.engine.checkpoint import load_checkpoint as load_run_checkpoint
from ndkd.engine.checkpoint import save_checkpoint
from ndkd.engine.metrics import MetricsLog, read_metrics, read_metrics_lines
from ndkd.models import CheckpointMismatchError, create_model, load_checkpoint

CORRUPT = "not a PyTorch checkpoint (truncated or corrupt)"


class Opaque:
    """A class a weights-only load refuses to rebuild."""


def _one_line(error: pytest.ExceptionInfo, path: Path) -> str:
    message = str(error.value)
    assert str(path) in message
    assert "\n" not in message
    assert "weights_only" not in message  # never advise unpickling
    return message


def _bad_checkpoints(folder: Path) -> dict[str, tuple[Path, str]]:
    """Files that are not weights-only PyTorch checkpoints, with the problem to report."""
    good = folder / "good.pt"
    torch.save({"model": create_model("resnet8", 10).state_dict()}, good)
    legacy = folder / "legacy.pt"
    torch.save({"w": torch.ones(3)}, legacy, _use_new_zipfile_serialization=False)
    files = {
        "empty": (b"", "empty file"),
        "truncated": (good.read_bytes()[:5000], CORRUPT),
        "legacy_truncated": (legacy.read_bytes()[:300], CORRUPT),
        "random": (os.urandom(4096), CORRUPT),
        "text": (b"hello world\n", CORRUPT),
        "plain_pickle": (pickle.dumps({"a": 1}, protocol=4), CORRUPT),
    }
    result = {}
    for name, (payload, problem) in files.items():
        path = folder / f"{name}.pt"
        path.write_bytes(payload)
        result[name] = (path, problem)
    objects = folder / "objects.pt"
    torch.save({"model": {"w": torch.ones(2)}, "extra": Opaque()}, objects)
    result["objects"] = (
        objects,
        "holds Python objects that ndkd will not unpickle (only tensors and plain data are "
        f"loaded); found {__name__}.Opaque",
    )
    return result


# --- model checkpoints (teacher / student checkpoint: files) ---------------------------------


def test_model_checkpoint_unreadable_files(tmp_path) -> None:
    for name, (path, problem) in _bad_checkpoints(tmp_path).items():
        with pytest.raises(ValueError) as error:
            load_checkpoint(create_model("resnet8", 10), path)
        message = _one_line(error, path)
        assert message == f"checkpoint {path}: {problem}", name
        assert error.value.__cause__ is None  # torch's advice is not chained either
        assert error.value.__context__ is None or error.value.__suppress_context__


def test_model_checkpoint_folder_and_missing_file(tmp_path) -> None:
    with pytest.raises(ValueError, match="is a folder") as error:
        load_checkpoint(create_model("resnet8", 10), tmp_path)
    _one_line(error, tmp_path)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        load_checkpoint(create_model("resnet8", 10), tmp_path / "nowhere.pth")


def test_model_checkpoint_of_another_architecture_names_the_file(tmp_path) -> None:
    path = tmp_path / "resnet20.pth"
    torch.save({"model": create_model("resnet20", 10).state_dict()}, path)
    with pytest.raises(CheckpointMismatchError) as error:
        load_checkpoint(create_model("resnet8", 10), path)
    message = _one_line(error, path)
    assert message.startswith(f"checkpoint {path} does not match CifarResNet")
    assert "unexpected" in message


def test_model_checkpoint_without_a_state_dict_names_the_file(tmp_path) -> None:
    path = tmp_path / "optimizer_only.pth"
    torch.save({"epoch": 3, "optimizer": {"lr": 0.1}}, path)
    with pytest.raises(ValueError, match="no state dict found") as error:
        load_checkpoint(create_model("resnet8", 10), path)
    assert _one_line(error, path).startswith(f"checkpoint {path}: no state dict found")


# --- run checkpoints (last.pt) ----------------------------------------------------------------


def test_run_checkpoint_unreadable_files(tmp_path) -> None:
    for name, (path, problem) in _bad_checkpoints(tmp_path).items():
        with pytest.raises(ValueError) as error:
            load_run_checkpoint(path)
        assert _one_line(error, path) == f"run checkpoint {path}: {problem}", name
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match="holds a Tensor, not the dict") as error:
        load_run_checkpoint(tensor)
    _one_line(error, tensor)
    with pytest.raises(FileNotFoundError, match="last.pt"):
        load_run_checkpoint(tmp_path / "run" / "last.pt")


def test_run_checkpoint_round_trip_still_works(tmp_path) -> None:
    path = save_checkpoint(tmp_path / "last.pt", {"epoch": 2, "w": torch.arange(3)})
    state = load_run_checkpoint(path)
    assert state["epoch"] == 2 and torch.equal(state["w"], torch.arange(3))


# --- class-means safetensors files ------------------------------------------------------------


def _safetensors(path: Path, metadata: dict[str, str] | None, **tensors: torch.Tensor) -> Path:
    tensors = tensors or {"means": torch.rand(3, 4) + 0.1}
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize(
    ("metadata", "tensors", "problem"),
    [
        (None, {}, "not an ndkd class-means file"),
        ({"metadata": "{}"}, {}, "not an ndkd class-means file"),
        ({"format": FORMAT_TAG}, {"other": torch.ones(2, 2)}, "not an ndkd class-means file"),
        ({"format": FORMAT_TAG, "metadata": "{oops"}, {}, "metadata is not valid JSON"),
        ({"format": FORMAT_TAG, "metadata": "[1, 2]"}, {}, "metadata must be a JSON object"),
        ({"format": FORMAT_TAG, "metadata": '{"a": 1}'}, {}, r"metadata values must be strings"),
        (
            {"format": FORMAT_TAG, "metadata": '{"num_classes": "ten"}'},
            {},
            "metadata 'num_classes' must be an integer, found 'ten'",
        ),
        (
            {"format": FORMAT_TAG, "metadata": '{"num_classes": "100"}'},
            {},
            "metadata 'num_classes' is 100 but the stored tensors have 3",
        ),
        (
            {"format": FORMAT_TAG, "metadata": '{"feature_dim": "5"}'},
            {},
            "metadata 'feature_dim' is 5 but the stored tensors have 4",
        ),
        (
            {"format": FORMAT_TAG, "metadata": '{"num_samples": "7"}'},
            {"means": torch.rand(2, 4) + 0.1, "counts": torch.tensor([2, 3])},
            "metadata 'num_samples' is 7 but the stored tensors have 5",
        ),
        (
            {"format": FORMAT_TAG},
            {"means": torch.rand(2, 4) + 0.1, "counts": torch.tensor([2.0, 3.0])},
            "'counts' must be integers",
        ),
        ({"format": FORMAT_TAG}, {"means": torch.rand(4)}, r"expected a \[classes, dim\] matrix"),
    ],
)
def test_class_means_file_with_bad_contents(tmp_path, metadata, tensors, problem) -> None:
    path = _safetensors(tmp_path / "c.safetensors", metadata, **tensors)
    with pytest.raises(ValueError, match=problem) as error:
        ClassMeans.load(path)
    assert str(error.value).startswith(str(path))


def test_class_means_file_with_consistent_sizes_loads(tmp_path) -> None:
    facts = {"num_classes": "2", "feature_dim": "4", "num_samples": "5", "teacher": "t"}
    metadata = {"format": FORMAT_TAG, "metadata": json.dumps(facts)}
    path = _safetensors(
        tmp_path / "c.safetensors", metadata, means=torch.ones(2, 4), counts=torch.tensor([2, 3])
    )
    assert ClassMeans.load(path).metadata == {**facts, "path": str(path)}


@pytest.mark.parametrize("payload", [b"", os.urandom(600), b'{"a": 1}', b"\x08" + b"\0" * 7])
def test_class_means_file_that_is_not_safetensors(tmp_path, payload) -> None:
    path = tmp_path / "c.safetensors"
    path.write_bytes(payload)
    with pytest.raises(ValueError, match="not a readable safetensors class-means file") as error:
        ClassMeans.load(path)
    assert str(error.value).startswith(str(path))


def test_class_means_load_of_a_folder(tmp_path) -> None:
    folder = tmp_path / "c.safetensors"
    folder.mkdir()
    with pytest.raises(ValueError, match="c.safetensors is a folder"):
        ClassMeans.load(folder)


def test_save_keeps_non_string_metadata_readable(tmp_path) -> None:
    path = ClassMeans(torch.ones(2, 3), None, {"epoch": 3}).save(tmp_path / "c.safetensors")  # type: ignore[dict-item]
    assert ClassMeans.load(path).metadata["epoch"] == "3"


# --- metrics.jsonl ----------------------------------------------------------------------------


def _metrics(folder: Path, epochs: int = 3) -> Path:
    log = MetricsLog(folder / "metrics.jsonl")
    for epoch in range(1, epochs + 1):
        log.append({"epoch": epoch, "test_top1": 10.0 * epoch})
    return log.path


def test_metrics_round_trip(tmp_path) -> None:
    path = _metrics(tmp_path)
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2, 3]
    assert [n for n, _ in read_metrics_lines(path)] == [1, 2, 3]


def test_metrics_binary_file_names_the_file_and_line(tmp_path) -> None:
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)))
    with pytest.raises(ValueError, match=r"line 1: not valid JSON|line \d+: not UTF-8") as error:
        read_metrics(path)
    assert str(error.value).startswith(f"{path}, line ")
    path.write_bytes(b'{"epoch": 1}\n\xff\xfe\xfd\n{"epoch": 2}\n')
    with pytest.raises(ValueError, match=r", line 2: not UTF-8 text") as error:
        read_metrics(path)
    assert str(path) in str(error.value)
    path.write_bytes(os.urandom(2000).replace(b"\n", b"") + b"\xff")  # no newline at all
    with pytest.raises(ValueError, match=", line 1: "):
        read_metrics(path)


def test_metrics_garbage_before_the_last_line_is_an_error(tmp_path) -> None:
    path = _metrics(tmp_path)
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + '{"epoch": 2, "test_t\n' + lines[2])
    with pytest.raises(ValueError, match=r", line 2: not valid JSON") as error:
        read_metrics(path)
    assert str(error.value).startswith(str(path))
    path.write_text(lines[0] + "[1, 2]\n")
    with pytest.raises(ValueError, match=", line 2: expected a JSON object, found list"):
        read_metrics(path)
    path.write_text(lines[0] + '{"epoch": 2, "test_t\n')  # cut, but the newline made it
    with pytest.raises(ValueError, match=", line 2: not valid JSON"):
        read_metrics(path)


def test_metrics_truncated_last_line_is_ignored_with_a_warning(tmp_path, caplog) -> None:
    path = _metrics(tmp_path)
    whole = path.read_bytes()
    last_start = whole.rstrip(b"\n").rfind(b"\n") + 1
    cut_in_a_character = whole[:last_start] + '{"epoch": 3, "note": "hé'.encode()[:-1]
    for cut in (whole[: last_start + 1], whole[: last_start + 20], cut_in_a_character):
        path.write_bytes(cut)  # a kill in the middle of appending epoch 3
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ndkd.engine.metrics"):
            records = read_metrics(path)
        assert [r["epoch"] for r in records] == [1, 2]
        assert f"{path}, line 3: ignoring an incomplete last record" in caplog.text
    path.write_bytes(whole[: last_start - 1])  # cut exactly at the newline: nothing lost
    assert [r["epoch"] for r in read_metrics(path)] == [1, 2]


def test_metrics_folder_and_missing(tmp_path) -> None:
    with pytest.raises(ValueError, match="is a folder"):
        read_metrics(tmp_path)
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        read_metrics(tmp_path / "metrics.jsonl")
