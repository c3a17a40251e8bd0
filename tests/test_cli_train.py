"""Clear refusals of `ndkd train`: one message, exit 2, no traceback, nothing overwritten."""

from __future__ import annotations

import math

import pytest
import torch

from helpers import write_kdpp_config
from ndkd.cli import main
from ndkd.config import load_config
from ndkd.engine import NonFiniteLossError
from ndkd.experiment import train


def refused(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1
    return err


def test_refusals(tmp_path, digits_teacher, capsys):
    config = str(write_kdpp_config(tmp_path, digits_teacher))
    err = refused(capsys, "train", "-c", config, "teacher.arch=resnet20")
    assert "does not fit teacher.arch='resnet20'" in err
    wrong_means = tmp_path / "wrong.safetensors"
    from ndkd import ClassMeans

    ClassMeans(torch.rand(10, 32) + 0.1).save(wrong_means)
    err = refused(capsys, "train", "-c", config, f"centers.path={wrong_means}")
    assert "has dim 32 but the teacher has embedding dim 128" in err
    err = refused(capsys, "train", "-c", config, "centers.path=none.safetensors")
    assert "ndkd centers" in err
    err = refused(capsys, "train", "-c", config, "data.name=cifar100", "data.root=/no/such")
    assert "/no/such" in err
    err = refused(capsys, "train", "-c", config, "train.momentun=0.9")
    assert "train.momentun" in err
    assert not (tmp_path / "run").exists()  # nothing written by a refused run


def test_existing_run_is_not_overwritten(tmp_path, digits_teacher, capsys):
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1))
    assert main(["train", "-c", config]) == 0
    run = tmp_path / "run"
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    err = refused(capsys, "train", "-c", config)
    assert "already holds a run" in err and "--resume" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    assert main(["train", "-c", config, "--resume"]) == 0  # nothing left to do: still fine
    err = refused(capsys, "train", "-c", config, f"output_dir={tmp_path / 'new'}", "--resume")
    assert "no checkpoint" in err


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(
    tmp_path, digits_teacher, monkeypatch, capsys
):
    config = load_config(write_kdpp_config(tmp_path, digits_teacher, epochs=3))
    import ndkd.methods.logit as logit

    calls = {"n": 0}
    original = logit.kd_loss

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        value = original(*args, **kwargs)
        return value * math.nan if calls["n"] == 23 + 5 else value  # epoch 2, step 5

    monkeypatch.setattr(logit, "kd_loss", poisoned)
    with pytest.raises(NonFiniteLossError, match=r"'kd' became non-finite at epoch 2, step 5"):
        train(config)
    last = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert last["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["model"].values() if v.is_floating_point())
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_fast_switch_keeps_the_protocol(tmp_path, digits_teacher, capsys):
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1))
    assert main(["train", "-c", config, "--fast", "train.channels_last=false"]) == 0
    resolved = load_config(tmp_path / "run" / "config.yaml")
    assert resolved.data.resident is True
    assert resolved.train.channels_last is False  # an explicit override wins over --fast
    plain = load_config(config)
    assert resolved.terms == plain.terms and resolved.train.epochs == plain.train.epochs
    assert (resolved.train.lr, resolved.train.milestones) == (
        plain.train.lr,
        plain.train.milestones,
    )
    record = (tmp_path / "run" / "metrics.jsonl").read_text()
    assert '"loss/nd"' in record and '"peak_memory_mb"' in record
