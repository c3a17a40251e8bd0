"""Detection runs end to end on CPU through the CLI, on a tiny COCO 2017 folder: a Faster
R-CNN teacher on its own losses, its class means over sampled RoIs, a KD++ student (kd and
nd on the RoI rows), evaluation with pycocotools."""

from __future__ import annotations

import json

import pytest
import yaml

from ndkd import ClassMeans
from ndkd.cli import main
from test_detection_data import write_coco2017


def _config(path, root, output, terms, train=None, **extra):
    path.write_text(
        yaml.safe_dump(
            {
                "task": "detection",
                "seed": 0,
                "device": "cpu",
                "output_dir": str(output),
                "data": {
                    "name": "coco",
                    "root": str(root),
                    "train_sizes": [48, 64],
                    "test_size": 64,
                    "max_size": 96,
                },
                "student": {"arch": "fasterrcnn_resnet18_fpn"},
                "train": {
                    "epochs": 1,
                    "batch_size": 2,
                    "lr": 0.002,
                    "weight_decay": 1.0e-4,
                    "schedule": "cosine",
                    "milestones": [],
                    **(train or {}),
                },
                "terms": terms,
                **extra,
            }
        )
    )
    return str(path)


def _record(folder):
    return json.loads((folder / "metrics.jsonl").read_text().splitlines()[-1])


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("detection")
    root = write_coco2017(tmp / "coco")
    config = _config(tmp / "teacher.yaml", root, tmp / "teacher", [])
    assert main(["train", "-c", config]) == 0
    return tmp, root, config


def test_teacher_trains_on_its_own_losses_and_is_evaluated_with_pycocotools(teacher, capsys):
    tmp, _, config = teacher
    record = _record(tmp / "teacher")
    assert {"loss/det_objectness", "loss/det_rpn_box_reg", "loss/det_classifier"} <= set(record)
    assert {"test_ap", "test_ap50", "test_ap75", "test_images"} <= set(record)
    assert record["test_images"] == 3
    facts = json.loads((tmp / "teacher" / "dataset.json").read_text())
    assert facts["classes"] == ["__background__", "car", "dog"]
    capsys.readouterr()
    assert main(["eval", "-c", config]) == 0
    assert "test AP" in capsys.readouterr().out


def test_kdpp_student_distills_on_roi_rows_with_class_means_over_proposals(teacher):
    tmp, root, _ = teacher
    centers = tmp / "centers.safetensors"
    models = {
        "teacher": {
            "arch": "fasterrcnn_resnet18_fpn",
            "checkpoint": str(tmp / "teacher" / "last.pt"),
        },
        "centers": {"path": str(centers)},
    }
    terms = [{"name": "kd", "weight": 1.0, "temperature": 1.0}, {"name": "nd", "weight": 1.0}]
    config = _config(tmp / "kdpp.yaml", root, tmp / "kdpp", terms, **models)
    assert main(["centers", "-c", config]) == 0
    means = ClassMeans.load(centers)
    assert means.means.shape == (3, 1024) and int(means.counts[0]) > 0  # background row
    assert main(["train", "-c", config]) == 0
    record = _record(tmp / "kdpp")
    assert record["loss/kd"] > 0 and record["loss/nd"] > 0 and "loss/det_classifier" in record


def test_a_term_that_indexes_images_is_refused_in_one_line(teacher, capsys):
    tmp, root, _ = teacher
    models = {
        "teacher": {
            "arch": "fasterrcnn_resnet18_fpn",
            "checkpoint": str(tmp / "teacher" / "last.pt"),
        }
    }
    config = _config(
        tmp / "crd.yaml", root, tmp / "crd", [{"name": "crd", "negatives": 4}], **models
    )
    capsys.readouterr()
    assert main(["train", "-c", config]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "indices" in err, err


def test_preempted_detection_run_resumes_to_the_uninterrupted_metrics(teacher, tmp_path):
    import os
    import signal

    from ndkd.config import load_config
    from ndkd.engine import RunInterrupted
    from ndkd.experiment import train
    from test_engine_resume import comparable

    _, root, _ = teacher
    budget = {
        "iterations": 5,
        "batch_size": 1,
        "schedule": "multistep",
        "milestones": [3],
        "eval_every": 10,  # the last epoch only
    }

    def config(name):
        path = _config(tmp_path / f"{name}.yaml", root, tmp_path / name, [], train=budget)
        return load_config(path, ["log.progress_every=1"])

    train(config("a"), step_progress=False)

    def preempt(event):
        if event.epoch == 2 and event.done == 1 and event.record is None:
            os.kill(os.getpid(), signal.SIGTERM)

    stopped = config("b")
    with pytest.raises(RunInterrupted, match=r"\(epoch 2, step 1\)"):
        train(stopped, progress=preempt)
    train(stopped, resume=True)
    runs = [comparable(tmp_path / name / "metrics.jsonl") for name in ("a", "b")]
    assert [r["iteration"] for r in runs[0]] == [2, 4, 5]  # two training images
    assert json.dumps(runs[0], sort_keys=True) == json.dumps(runs[1], sort_keys=True)
