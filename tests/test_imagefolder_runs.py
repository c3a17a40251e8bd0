"""Image folders end to end on CPU: train, class means, eval, and a run stopped inside an
epoch (SIGTERM, as a scheduler's preemption) that resumes to the uninterrupted metrics."""

from __future__ import annotations

import json
import os
import signal

import pytest
import yaml

from ndkd import ClassMeans
from ndkd.cli import main
from ndkd.config import load_config
from ndkd.engine import RunInterrupted
from ndkd.experiment import train
from test_engine_resume import comparable
from test_imagefolder import write_image_folder


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("images"), classes=6, per_class=8, size=40)


def write_config(path, folder, output, **train):
    path.write_text(
        yaml.safe_dump(
            {
                "seed": 0,
                "device": "cpu",
                "output_dir": str(output),
                "data": {
                    "name": "imagefolder",
                    "root": str(folder),
                    "image_size": 32,
                    "eval_resize": 36,
                    "num_workers": train.pop("num_workers", 0),
                },
                "student": {"arch": "resnet8"},
                "train": {"epochs": 2, "batch_size": 8, "lr": 0.05, "milestones": [1], **train},
                "terms": [{"name": "ce"}],
            }
        )
    )
    return str(path)


def test_train_centers_eval(tmp_path, folder, capsys):
    config = write_config(tmp_path / "c.yaml", folder, tmp_path / "run")
    assert main(["train", "-c", config]) == 0
    facts = json.loads((tmp_path / "run" / "dataset.json").read_text())
    assert facts["classes"] == [f"class_{c:02d}" for c in range(6)]
    assert (facts["train_samples"], facts["test_samples"]) == (48, 48)
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["test_samples"] == 48
    capsys.readouterr()
    assert main(["eval", "-c", config]) == 0
    assert f"test top-1 {record['test_top1']:.2f}%" in capsys.readouterr().out
    centers = tmp_path / "centers.safetensors"
    teacher = ["teacher.arch=resnet8", f"teacher.checkpoint={tmp_path / 'run' / 'last.pt'}"]
    for transform in ("train", "test"):
        overrides = [*teacher, f"centers.path={centers}", f"centers.transform={transform}"]
        assert main(["centers", "-c", config, *overrides]) == 0
        means = ClassMeans.load(centers)
        assert means.means.shape == (6, 64) and int(means.counts.sum()) == 48
        centers.unlink()


def test_sigterm_mid_epoch_resumes_to_the_uninterrupted_metrics(tmp_path, folder):
    reference = write_config(tmp_path / "a.yaml", folder, tmp_path / "a", num_workers=2)
    train(load_config(reference), step_progress=False)
    stopped = write_config(tmp_path / "b.yaml", folder, tmp_path / "b", num_workers=2)
    config = load_config(stopped, ["log.progress_every=1"])

    def preempt(event):
        if event.epoch == 2 and event.done == 3 and event.record is None:
            os.kill(os.getpid(), signal.SIGTERM)

    with pytest.raises(RunInterrupted, match=r"after step 3/6.*\(epoch 2, step 3\)"):
        train(config, progress=preempt)
    state_lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(state_lines) == 1
    train(config, resume=True)
    assert comparable(tmp_path / "b" / "metrics.jsonl") == comparable(
        tmp_path / "a" / "metrics.jsonl"
    )


def test_torchvision_kdpp_on_an_image_folder(tmp_path, folder, capsys):
    import torch

    from ndkd.models import create_model

    teacher = tmp_path / "resnet34.pth"
    torch.save(create_model("torchvision:resnet34", 6).state_dict(), teacher)
    config = write_config(tmp_path / "c.yaml", folder, tmp_path / "run", epochs=1)
    centers = tmp_path / "centers.safetensors"
    common = [
        "teacher.arch=torchvision:resnet34",
        f"teacher.checkpoint={teacher}",
        "student.arch=torchvision:resnet18",
        f"centers.path={centers}",
    ]
    assert main(["centers", "-c", config, *common]) == 0
    assert ClassMeans.load(centers).means.shape == (6, 512)
    terms = [
        "terms=[{name: ce}, {name: kd, weight: 2.5, temperature: 1, warmup_epochs: 5},"
        " {name: nd, weight: 1.0, projector_init_std: 0.01}]"
    ]
    assert main(["train", "-c", config, *common, *terms]) == 0
    record = json.loads((tmp_path / "run" / "metrics.jsonl").read_text())
    assert record["loss/nd"] > 0 and record["test_samples"] == 48
    capsys.readouterr()
    offline = ["student.pretrained=true", f"output_dir={tmp_path / 'other'}"]
    assert main(["train", "-c", config, *common, *terms, *offline]) == 2
    err = capsys.readouterr().err
    assert "pretrained weights could not be downloaded" in err and err.count("\n") == 1
