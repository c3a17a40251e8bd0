"""The centers commands of the CLI, in process."""

from __future__ import annotations

import json

import torch

from ndkd import ClassMeans
from ndkd.cli import main


def test_convert_then_inspect(tmp_path, capsys):
    source = tmp_path / "center_emb_train.json"
    source.write_text(json.dumps({"1": [0.5, 1.5, 2.0], "0": [3.0, 0.25, 1.0]}))
    target = tmp_path / "resnet56.safetensors"
    assert main(["convert-centers", str(source), str(target), "--meta", "teacher=resnet56"]) == 0
    loaded = ClassMeans.load(target)
    torch.testing.assert_close(loaded.means, torch.tensor([[3.0, 0.25, 1.0], [0.5, 1.5, 2.0]]))
    assert loaded.metadata["teacher"] == "resnet56"
    assert main(["inspect-centers", str(target)]) == 0
    out = capsys.readouterr().out
    assert "classes      2" in out and "dim          3" in out and "resnet56" in out


def test_errors_are_one_line_and_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"0": [1.0], "1": [1.0, 2.0]}')
    assert main(["convert-centers", str(bad), str(tmp_path / "x.safetensors")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ndkd convert-centers: error:") and "same positive number" in err
    assert not (tmp_path / "x.safetensors").exists()
    assert main(["convert-centers", str(bad), "x", "--meta", "novalue"]) == 2
