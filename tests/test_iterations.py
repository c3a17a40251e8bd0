"""An iteration budget (``train.iterations``): exactly N optimizer steps, the last pass cut
short, milestones and warm-up counted in steps, and a preempted run resumes to the metrics
of an uninterrupted one."""

from __future__ import annotations

import os
import signal
from types import SimpleNamespace

import pytest
import torch

from ndkd.analysis.runs import read_run
from ndkd.config import ConfigError, from_dict
from ndkd.engine import RunInterrupted
from ndkd.engine.checkpoint import load_checkpoint
from ndkd.engine.schedule import build_scheduler, planned_epochs
from ndkd.experiment import train
from test_engine_resume import comparable


def _settings(**changes):
    base = dict(
        epochs=5,
        iterations=0,
        lr=1.0,
        lr_reference_batch=0,
        batch_size=8,
        min_lr=0.0,
        schedule="multistep",
        milestones=[],
        gamma=0.1,
        lr_warmup_epochs=0.0,
        lr_warmup_iterations=0,
    )
    return SimpleNamespace(**(base | changes))


def test_planned_epochs_cut_the_last_pass_at_the_budget():
    assert planned_epochs(_settings(), 7) == (5, 7)
    assert planned_epochs(_settings(iterations=20), 7) == (3, 6)
    assert planned_epochs(_settings(iterations=21), 7) == (3, 7)
    with pytest.raises(ValueError, match="no batch"):
        planned_epochs(_settings(iterations=3), 0)


def _factors(settings, steps_per_epoch, count):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = build_scheduler(optimizer, settings, steps_per_epoch)
    factors = []
    for _ in range(count):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return factors


def test_milestones_and_warm_up_count_steps_with_an_iteration_budget():
    settings = _settings(iterations=10, milestones=[4, 8], lr_warmup_iterations=2)
    factors = _factors(settings, steps_per_epoch=3, count=10)
    assert factors == pytest.approx([0.5, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.01, 0.01])
    cosine = _factors(_settings(iterations=4, schedule="cosine"), steps_per_epoch=100, count=4)
    assert cosine == pytest.approx([1.0, 0.8535534, 0.5, 0.1464466])


def test_config_refuses_mixed_warm_up_units():
    base = {"student": {"arch": "resnet8"}, "data": {"name": "digits"}}
    with pytest.raises(ConfigError, match="set train.lr_warmup_iterations instead"):
        from_dict(base | {"train": {"iterations": 10, "lr_warmup_epochs": 1}})
    with pytest.raises(ConfigError, match="train.iterations is 0"):
        from_dict(base | {"train": {"lr_warmup_iterations": 5}})


def _config(output, **train):
    return from_dict(
        {
            "seed": 0,
            "device": "cpu",
            "output_dir": str(output),
            "data": {"name": "digits"},
            "student": {"arch": "resnet8"},
            "train": {
                "iterations": 50,
                "batch_size": 64,
                "lr": 0.05,
                "milestones": [30],
                **train,
            },
            "log": {"progress_every": 1},
        }
    )


def test_a_budget_trains_exactly_n_steps_and_resumes_mid_run(tmp_path):
    reference = _config(tmp_path / "a")
    history = train(reference, step_progress=False)
    steps_per_epoch = history[0]["iteration"]
    assert [r["iteration"] for r in history][-1] == 50 and len(history) == -(-50 // steps_per_epoch)
    state = load_checkpoint(tmp_path / "a" / "last.pt")
    assert state["scheduler"]["last_epoch"] == 50
    assert state["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.005)
    run = read_run(tmp_path / "a")
    assert run.complete and run.epochs_planned == run.epochs_completed == len(history)

    stopped = _config(tmp_path / "b")

    def preempt(event):
        if event.epoch == 2 and event.done == 5 and event.record is None:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(RunInterrupted, match=r"\(epoch 2, step 5\)"):
        train(stopped, progress=preempt)
    partial = read_run(tmp_path / "b")
    assert not partial.complete and partial.epochs_planned == len(history)
    train(stopped, resume=True)
    assert comparable(tmp_path / "b" / "metrics.jsonl") == comparable(
        tmp_path / "a" / "metrics.jsonl"
    )
