"""``ndkd export``: each format loads back and gives the PyTorch student's logits; the model
card's numbers are metrics.jsonl's; bad input is one line and exit 2."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest
import torch

import ndkd
from helpers import train_digits_ce_run
from ndkd.cli import main
from ndkd.config import load_config
from ndkd.data import build_dataset
from ndkd.experiment import trained_student
from ndkd.export import export_run
from ndkd.export.student import ATOL, RTOL, fresh_student, save_safetensors
from ndkd.models import create_model

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A one-epoch resnet8 CE run on digits."""
    return train_digits_ce_run(tmp_path_factory.mktemp("export"))


@pytest.fixture(scope="module")
def images() -> torch.Tensor:
    data = build_dataset("digits", None, "test")
    return data.images[:40].float()


@pytest.fixture(scope="module")
def reference(run_dir, images) -> torch.Tensor:
    config = load_config(run_dir / "config.yaml")
    student, *_ = trained_student(config, run_dir / "last.pt", join_process_group=False)
    with torch.no_grad():
        return student.eval()(images).logits


def _close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    torch.testing.assert_close(actual.float(), expected.float(), rtol=RTOL, atol=ATOL)


def test_safetensors_loads_into_a_fresh_model_from_the_config(run_dir, tmp_path, images, reference):
    from safetensors.torch import load_file

    result = export_run(run_dir, "safetensors", output=tmp_path / "out")
    assert result.passed and result.max_abs_diff <= ATOL
    assert sorted(p.name for p in result.folder.iterdir()) == [
        "README.md",
        "config.yaml",
        "model.safetensors",
    ]
    assert (result.folder / "config.yaml").read_text() == (run_dir / "config.yaml").read_text()
    config = load_config(result.folder / "config.yaml")
    model = fresh_student(config, 10, 1)
    model.load_state_dict(load_file(result.model_file), strict=True)
    with torch.no_grad():
        _close(model.eval()(images).logits, reference)


@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_torchscript_loads_with_jit_load(run_dir, tmp_path, images, reference):
    result = export_run(run_dir, "torchscript", output=tmp_path / "out")
    model = torch.jit.load(str(result.model_file))
    with torch.no_grad():
        _close(model(images), reference)
        _close(model(images[:7]), reference[:7])


def test_onnx_runs_in_onnxruntime_with_any_batch(run_dir, tmp_path, images, reference):
    import onnxruntime

    result = export_run(run_dir, "onnx", output=tmp_path / "out")
    assert result.passed and result.max_abs_diff <= ATOL
    session = onnxruntime.InferenceSession(str(result.model_file))
    for batch in (images, images[:1], images[:5]):
        (logits,) = session.run(None, {"images": batch.numpy()})
        _close(torch.from_numpy(logits), reference[: batch.shape[0]])


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_onnx_falls_back_to_the_torchscript_exporter(run_dir, tmp_path, monkeypatch, caplog):
    real = torch.onnx.export

    def no_dynamo(*args, dynamo=True, **kwargs):
        if dynamo:
            raise RuntimeError("dynamo unavailable")
        return real(*args, dynamo=False, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", no_dynamo)
    with caplog.at_level(logging.WARNING):
        result = export_run(run_dir, "onnx", output=tmp_path / "out")
    assert result.exporter == "torch.onnx.export(dynamo=False)" and result.passed
    assert "TorchScript-based exporter" in caplog.text


def test_model_card_numbers_are_metrics_jsonl(run_dir, tmp_path):
    result = export_run(run_dir, "torchscript", checkpoint="best", output=tmp_path / "out")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]["test_top1"]
    best = max(records, key=lambda r: r["test_top1"])
    card = (result.folder / "README.md").read_text()
    assert "# digits/ce/resnet8: resnet8 student" in card
    assert f"| test top-1, last epoch (1) | {last:.2f} |" in card
    assert f"| test top-1, best epoch | {best['test_top1']:.2f} (epoch {best['epoch']}) |" in card
    assert "| seed | 3 |" in card and "| epochs | 1 of 1 (complete) |" in card
    assert f"| ndkd / torch | {ndkd.__version__} / {torch.__version__} |" in card
    assert "best.pt" in card and "torch.jit.load" in card and "check | passed" in card


def test_cli_export_then_refuses_an_existing_output(run_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["export", str(run_dir), "--format", "safetensors", "-o", str(out)]
    assert main(args) == 0
    assert "check passed" in capsys.readouterr().out
    (out / "marker").write_text("old")
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "exists; pass --overwrite" in err[0]
    assert (out / "marker").exists()
    assert main([*args, "--overwrite"]) == 0
    assert not (out / "marker").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temporary left behind


@pytest.mark.parametrize(
    "remove, message",
    [("config.yaml", "no config.yaml"), ("best.pt", "no best.pt")],
)
def test_cli_refuses_a_folder_without_config_or_checkpoint(
    run_dir, tmp_path, capsys, remove, message
):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("export-*"))
    (copy / remove).unlink()
    assert main(["export", str(copy), "--format", "onnx", "--checkpoint", "best"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
    assert not any(p.name.startswith("export") for p in copy.iterdir())


def test_an_unfinished_run_exports_with_a_warning(run_dir, tmp_path, caplog):
    copy = tmp_path / "run"
    shutil.copytree(run_dir, copy)
    config = copy / "config.yaml"
    config.write_text(config.read_text().replace("epochs: 1", "epochs: 4"))
    with caplog.at_level(logging.WARNING):
        result = export_run(copy, "safetensors")
    assert "unfinished: exporting after epoch 1 of 4" in caplog.text
    assert "| epochs | 1 of 4 (UNFINISHED) |" in (result.folder / "README.md").read_text()


def test_safetensors_keys_are_torchvisions_own(tmp_path):
    import torchvision

    student = create_model("torchvision:resnet18", 10).eval()
    path = tmp_path / "model.safetensors"
    save_safetensors(student, path)
    from safetensors.torch import load_file

    model = torchvision.models.resnet18(num_classes=10).eval()
    model.load_state_dict(load_file(path), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(model(x), student(x).logits)


def test_safetensors_keys_are_timms_own(tmp_path):
    timm = pytest.importorskip("timm")
    student = create_model("timm:test_resnet", 10).eval()
    path = tmp_path / "model.safetensors"
    save_safetensors(student, path)
    from safetensors.torch import load_file

    model = timm.create_model("test_resnet", num_classes=10).eval()
    model.load_state_dict(load_file(path), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        _close(model(x), student(x).logits)
