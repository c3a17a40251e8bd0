"""A run folder is never corrupted or lost: one run per folder, resume checks its config,
runs that die before their first checkpoint can be restarted or resumed, kills at random
moments resume to the uninterrupted metrics, and signals stop at a step."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import time

import pytest
import torch
import yaml

from helpers import ndkd_command, run_ndkd, write_kdpp_config
from ndkd.cli import main
from test_engine_resume import comparable, wait_for_lines

EPOCHS = 4
MID_EPOCH = "train.checkpoint_every_steps=7"  # 45 steps per epoch: mid-epoch checkpoints


def refused(capsys, *argv: str) -> str:
    assert main(list(argv)) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.fixture(scope="module")
def reference(tmp_path_factory, digits_teacher):
    folder = tmp_path_factory.mktemp("reference")
    config = write_kdpp_config(folder, digits_teacher, epochs=EPOCHS, batch_size=32)
    result = run_ndkd("train", "-c", str(config), MID_EPOCH)
    assert result.returncode == 0, result.stderr
    return comparable(folder / "run" / "metrics.jsonl")


@pytest.fixture(scope="module")
def run_seconds(reference, tmp_path_factory, digits_teacher):
    """How long one whole run takes on this machine now (start-up included), so kills land
    at comparable moments on a quiet and on a loaded machine."""
    folder = tmp_path_factory.mktemp("timing")
    config = write_kdpp_config(folder, digits_teacher, epochs=EPOCHS, batch_size=32)
    start = time.monotonic()
    assert run_ndkd("train", "-c", str(config), MID_EPOCH).returncode == 0
    return time.monotonic() - start


def test_two_trains_on_one_folder_exactly_one_runs(tmp_path, digits_teacher):
    config = write_kdpp_config(tmp_path, digits_teacher, epochs=EPOCHS, batch_size=32)
    processes = [
        subprocess.Popen(
            ndkd_command("train", "-c", str(config)),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in processes]
    codes = sorted(code for code, _ in results)
    assert codes == [0, 2], results
    loser = next(err for code, err in results if code == 2)
    assert "in use by pid" in loser or "already holds a run" in loser, loser
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == list(range(1, EPOCHS + 1))


def test_kills_at_random_moments_resume_to_the_uninterrupted_metrics(
    tmp_path, digits_teacher, reference, run_seconds
):
    """Ten SIGKILLs at random moments (start-up, before the first checkpoint, mid-epoch,
    around checkpoint writes); each restart resumes (or starts), from mid-epoch checkpoints
    too, and the end is the same."""
    config = write_kdpp_config(tmp_path, digits_teacher, epochs=EPOCHS, batch_size=32)
    run = tmp_path / "run"
    draw = random.Random(0)
    kills = attempts = 0
    while kills < 10:
        attempts += 1
        assert attempts < 40, "the runs kept finishing before the kill"
        resume = ["--resume"] if (run / "config.yaml").exists() else []
        process = subprocess.Popen(
            ndkd_command("train", "-c", str(config), MID_EPOCH, *resume),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        time.sleep(draw.uniform(0.1, 1.0) * run_seconds)
        if process.poll() is not None:  # finished (or failed) before the kill
            assert process.returncode == 0, process.stderr.read()
            if _epochs(run) == EPOCHS:
                run.joinpath("metrics.jsonl").unlink()  # start over: more kills wanted
                for name in ("last.pt", "best.pt", "config.yaml"):
                    run.joinpath(name).unlink(missing_ok=True)
            continue
        process.send_signal(signal.SIGKILL)
        process.wait()
        kills += 1
    # a write killed half-way leaves a temp file: the next start removes it
    run.mkdir(exist_ok=True)
    (run / ".last.pt.abc123.tmp").write_bytes(b"partial")
    resume = ["--resume"] if (run / "config.yaml").exists() else []
    final = run_ndkd("train", "-c", str(config), MID_EPOCH, *resume)
    assert final.returncode == 0, final.stderr
    assert comparable(run / "metrics.jsonl") == reference
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]
    assert not (run / ".lock").exists()


def _epochs(run) -> int:
    path = run / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize(
    ("signum", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)], ids=["int", "term"]
)
def test_signals_stop_at_a_step_and_say_how_to_continue(
    tmp_path, digits_teacher, reference, signum, code
):
    config = write_kdpp_config(tmp_path, digits_teacher, epochs=EPOCHS, batch_size=32)
    metrics = tmp_path / "run" / "metrics.jsonl"
    process = subprocess.Popen(
        ndkd_command("train", "-c", str(config)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_for_lines(metrics, 1, process)
    time.sleep(0.3)
    process.send_signal(signum)
    assert process.wait(timeout=120) == code
    err = process.stderr.read()
    assert "Traceback" not in err and "--resume" in err, err
    assert f"stopped by {signal.Signals(signum).name}" in err and "last checkpoint" in err
    if "after step" in err:  # stopped inside an epoch: its position was saved first
        assert re.search(r"\(epoch \d, step \d+\)", err), err
    resumed = run_ndkd("train", "-c", str(config), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    assert comparable(metrics) == reference


def test_a_run_that_died_before_its_first_checkpoint_can_restart_or_resume(
    tmp_path, digits_teacher, capsys
):
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1))
    run = tmp_path / "run"
    run.mkdir()
    stored = yaml.safe_load(open(config))
    stored["output_dir"] = str(run)
    (run / "config.yaml").write_text(yaml.safe_dump(stored))
    (run / "metrics.jsonl").write_text("")
    assert main(["train", "-c", config, "--resume"]) == 0
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 1
    for name in ("last.pt", "best.pt", "metrics.jsonl", "dataset.json"):
        (run / name).unlink()
    assert main(["train", "-c", config]) == 0  # a fresh start is allowed too
    # a changed config is refused against config.yaml as against a checkpoint
    for name in ("last.pt", "best.pt", "metrics.jsonl"):
        (run / name).unlink()
    err = refused(capsys, "train", "-c", config, "--resume", "train.lr=0.2")
    assert "train.lr" in err


def test_resume_refuses_a_changed_config_and_allows_more_epochs(tmp_path, digits_teacher, capsys):
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1))
    run = tmp_path / "run"
    assert main(["train", "-c", config]) == 0
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    err = refused(capsys, "train", "-c", config, "--resume", "terms.2.weight=3", "seed=1")
    assert "seed" in err and "terms" in err
    err = refused(capsys, "train", "-c", config, "--resume", "student.arch=resnet20")
    assert "student.arch" in err
    err = refused(capsys, "train", "-c", config, "--resume", "--dry-run", "train.lr=1")
    assert "train.lr" in err
    assert {p.name: p.read_bytes() for p in run.iterdir()} == before
    # speed-only and output-only keys may change
    assert main(["train", "-c", config, "--resume", "train.channels_last=true"]) == 0
    assert main(["train", "-c", config, "--resume", "train.epochs=2"]) == 0
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["epochs"] == 2
    assert "train.epochs 1 -> 2" in (run / "resume.log").read_text()
    assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
    err = refused(capsys, "train", "-c", config, "--resume", "train.epochs=1")
    assert "train.epochs" in err


def test_dry_run_resume_checks_the_checkpoint(tmp_path, digits_teacher, capsys):
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1))
    assert main(["train", "-c", config]) == 0
    capsys.readouterr()
    assert main(["train", "-c", config, "--resume", "--dry-run"]) == 0
    assert "resumes after epoch 1" in capsys.readouterr().out
    (tmp_path / "run" / "last.pt").write_bytes(b"\x00garbage")
    err = refused(capsys, "train", "-c", config, "--resume", "--dry-run")
    assert "last.pt" in err and "weights_only=False" not in err


def test_folder_with_only_best_pt_is_a_run(tmp_path, digits_teacher, capsys):
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.pt").write_bytes(b"precious")
    for extra in ([], ["--resume"]):
        err = refused(capsys, "train", "-c", config, *extra)
        assert "best.pt" in err
    assert (tmp_path / "run" / "best.pt").read_bytes() == b"precious"


def test_output_dir_that_is_a_file_or_read_only(tmp_path, digits_teacher, capsys):
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1))
    (tmp_path / "file").write_text("x")
    err = refused(capsys, "train", "-c", config, f"output_dir={tmp_path / 'file'}")
    assert "is a file" in err
    if os.geteuid() == 0:
        return  # root writes into read-only folders
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    err = refused(capsys, "train", "-c", config, f"output_dir={locked / 'run'}")
    assert str(locked) in err


def test_a_full_disk_says_what_is_intact(tmp_path, digits_teacher, capsys, monkeypatch):
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=2))
    assert main(["train", "-c", config, "train.epochs=1"]) == 0
    good = (tmp_path / "run" / "last.pt").read_bytes()
    import ndkd.engine.trainer as trainer

    def full(path, state):
        raise RuntimeError("[enforce fail at inline_container.cc] unexpected pos 468288")

    monkeypatch.setattr(trainer, "save_checkpoint", full)
    err = refused(capsys, "train", "-c", config, "--resume", "train.epochs=2")
    assert "could not write the run folder" in err and "after epoch 1" in err
    assert (tmp_path / "run" / "last.pt").read_bytes() == good
    assert len((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()) == 1


def test_non_finite_loss_in_the_first_epoch_names_no_missing_checkpoint(
    tmp_path, digits_teacher, capsys
):
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1))
    err = refused(capsys, "train", "-c", config, "train.lr=1e30")
    assert "non-finite" in err and "no checkpoint was written yet" in err
    assert not (tmp_path / "run" / "last.pt").exists()
    assert main(["train", "-c", config]) == 0  # and the folder can start again


def test_unreadable_teacher_checkpoint_is_one_line(tmp_path, digits_teacher, capsys):
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1))
    cases = {"empty": b"", "garbage": os.urandom(64), "truncated": None}
    source = digits_teacher[0].read_bytes()
    cases["truncated"] = source[: len(source) // 2]
    for name, payload in cases.items():
        path = tmp_path / f"{name}.pth"
        path.write_bytes(payload)
        err = refused(capsys, "train", "-c", config, f"teacher.checkpoint={path}")
        assert str(path) in err and "weights_only=False" not in err


def test_output_paths_that_are_folders(tmp_path, digits_teacher, capsys):
    folder = tmp_path / "folder"
    folder.mkdir()
    source = tmp_path / "centers.json"
    source.write_text(json.dumps({"0": [1.0, 2.0], "1": [3.0, 4.0]}))
    err = refused(capsys, "convert-centers", str(source), str(folder))
    assert "folder" in err
    err = refused(capsys, "convert-centers", str(source), str(source))
    assert "overwrite" in err
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1))
    err = refused(capsys, "centers", "-c", config, f"centers.path={folder}")
    assert "folder" in err
    (tmp_path / "demo-file").write_text("x")
    err = refused(capsys, "demo", "--output", str(tmp_path / "demo-file"), "--quick")
    assert "demo-file: is a file" in err
    assert not (tmp_path / "demo-file").is_dir()  # refused before any training
    err = refused(capsys, "analyze", str(tmp_path), "-o", str(tmp_path / "demo-file"))
    assert "demo-file: is a file" in err


def test_nonstandard_cifar_size_is_recorded_in_the_run_folder(tmp_path, capsys):
    from test_data import write_cifar

    write_cifar(tmp_path / "data", "cifar100", per_file=64)
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "device": "cpu",
                "output_dir": str(tmp_path / "run"),
                "data": {"name": "cifar100", "root": str(tmp_path / "data")},
                "student": {"arch": "resnet8"},
                "train": {"epochs": 1, "batch_size": 32},
            }
        )
    )
    assert main(["train", "-c", str(config)]) == 0
    facts = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert facts["train_samples"] == 64 and facts["standard_train_samples"] == 50000
    assert facts["standard_size"] is False


def test_eval_of_another_architecture_names_the_file(tmp_path, digits_teacher, capsys):
    config = str(write_kdpp_config(tmp_path, digits_teacher, epochs=1))
    err = refused(capsys, "eval", "-c", config, f"--checkpoint={digits_teacher[0]}")
    assert str(digits_teacher[0]) in err


def test_zero_embeddings_do_not_blow_up_nd_gradients():
    from ndkd import nd_loss

    student = torch.zeros(4, 8, requires_grad=True)
    teacher = torch.zeros(4, 8)
    centers = torch.randn(3, 8)
    nd_loss(student, teacher, torch.tensor([0, 1, 2, 0]), centers).backward()
    assert torch.isfinite(student.grad).all() and student.grad.abs().max() < 10
