"""Config loading: YAML, dotted overrides, strict keys and types."""

from __future__ import annotations

import pytest

from ndkd.config import (
    OUTPUT_ONLY_KEYS,
    SPEED_ONLY_KEYS,
    ConfigError,
    RunConfig,
    config_differences,
    dump_config,
    from_dict,
    load_config,
    resume_conflicts,
)
from ndkd.data.catalog import dataset_names, task_of


def write(tmp_path, text):
    path = tmp_path / "run.yaml"
    path.write_text(text)
    return path


BASE = """
seed: 3
output_dir: runs/x/seed{seed}
data: {name: digits}
student: {arch: resnet8}
teacher: {arch: resnet20, checkpoint: t.pth}
train: {epochs: 2, lr: 0.05, weight_decay: 5e-4, milestones: [1]}
terms:
  - {name: ce, weight: 1.0}
  - {name: kd, weight: 0.9, temperature: 4, warmup_epochs: 20}
"""


def test_yaml_overrides_and_round_trip(tmp_path):
    config = load_config(
        write(tmp_path, BASE), ["train.lr=0.2", "terms.1.weight=2.5", "data.root=/data", "seed=7"]
    )
    assert config.train.lr == 0.2 and config.train.weight_decay == 5e-4
    assert config.terms[1].weight == 2.5 and config.terms[1].params == {"temperature": 4}
    assert config.terms[1].warmup_epochs == 20
    assert config.output_dir == "runs/x/seed7"
    again = from_dict(__import__("yaml").safe_load(dump_config(config)))
    assert again == config


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lrr=1", "unknown config key 'train.lrr'"),
        ("bogus=1", "unknown config key 'bogus'"),
        ("train.epochs=ten", "train.epochs: expected an integer"),
        ("train.nesterov=3", "train.nesterov: expected true or false"),
        ("train.amp=fp8", r"train.amp: expected one of \['none', 'bf16', 'fp16'\]"),
        ("train.epochs=0", "train.epochs: must be positive"),
        ("train.milestones=[5,2]", "must be increasing"),
        ("terms.5.weight=1", "terms.5: expected a list index below 2"),
        ("terms.1.warmup_epochs=-1", "warmup_epochs: must be non-negative"),
        ("trainlr", "must look like key=value"),
        ("data.name=no_such_set", "data.name: expected one of"),
    ],
)
def test_refusals_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(write(tmp_path, BASE), [override])


def test_missing_student_duplicate_terms_and_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="student.arch: required"):
        load_config(None, [])
    with pytest.raises(ConfigError, match=r"repeated"):
        load_config(write(tmp_path, BASE), ["terms.1.name=ce"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "a: [1"))
    with pytest.raises(ConfigError, match="a loss term is a mapping with a 'name'"):
        load_config(write(tmp_path, "student: {arch: r}\nterms: [ce]"))


def test_new_sections_default_to_the_behaviour_before_them(tmp_path):
    config = load_config(write(tmp_path, BASE))
    assert config.task == "classification"
    assert (config.log.tensorboard, config.log.progress_every) == (False, 20)
    plain = config.to_dict()
    assert plain["task"] == "classification"
    assert plain["log"] == {"tensorboard": False, "progress_every": 20}
    changed = load_config(write(tmp_path, BASE), ["log.tensorboard=true", "log.progress_every=0"])
    assert from_dict(__import__("yaml").safe_load(dump_config(changed))) == changed


def test_every_catalog_dataset_is_a_valid_data_name(tmp_path):
    for name in dataset_names():
        overrides = [f"data.name={name}", f"task={task_of(name)}"]
        assert load_config(write(tmp_path, BASE), overrides).data.name == name


def test_task_must_fit_the_data(tmp_path):
    with pytest.raises(ConfigError, match="voc2007 has multilabel labels, found task: classif"):
        load_config(write(tmp_path, BASE), ["data.name=voc2007"])
    with pytest.raises(ConfigError, match="digits has classification labels"):
        load_config(write(tmp_path, BASE), ["task=multilabel"])
    with pytest.raises(ConfigError, match="not for multilabel"):
        load_config(
            write(tmp_path, BASE), ["data.name=voc2007", "task=multilabel", "data.mixup=0.8"]
        )


def test_stage_one_needs_a_projection(tmp_path):
    with pytest.raises(ConfigError, match="student.embedding_dim, which is 0"):
        load_config(write(tmp_path, BASE), ["train.trainable=embedding_projection"])
    with pytest.raises(ConfigError, match="teacher.embedding_dim: must be non-negative"):
        load_config(write(tmp_path, BASE), ["teacher.embedding_dim=-1"])


def test_the_safe_key_lists_name_real_keys():
    leaves = set(config_differences({}, RunConfig().to_dict()))
    assert set(SPEED_ONLY_KEYS) <= leaves and set(OUTPUT_ONLY_KEYS) <= leaves
    assert not set(SPEED_ONLY_KEYS) & set(OUTPUT_ONLY_KEYS)


def _resolved(tmp_path, *overrides):
    return load_config(write(tmp_path, BASE), list(overrides)).to_dict()


def test_config_differences_by_leaf_lists_whole(tmp_path):
    old = _resolved(tmp_path)
    assert config_differences(old, old) == []
    new = _resolved(tmp_path, "train.lr=0.3", "terms.1.weight=2", "train.milestones=[1, 2]")
    assert config_differences(old, new) == ["terms", "train.lr", "train.milestones"]
    assert config_differences(new, old) == ["terms", "train.lr", "train.milestones"]
    assert config_differences({"a": {"b": 1}}, {"a": {"b": 1, "c": None}}) == ["a.c"]
    assert config_differences({"a": {"b": 1}}, {"a": 2}) == ["a", "a.b"]


def test_resume_conflicts_ignore_safe_keys_and_longer_training(tmp_path):
    old = _resolved(tmp_path)
    safe = _resolved(
        tmp_path,
        "device=cpu",
        "data.root=/elsewhere",
        "data.num_workers=4",
        "data.resident=true",
        "train.channels_last=true",
        "train.compile=true",
        "log.progress_every=5",
        "output_dir=runs/moved",
        "log.tensorboard=true",
        "train.epochs=5",
    )
    assert len(config_differences(old, safe)) == 10
    assert resume_conflicts(old, safe) == []
    assert resume_conflicts(old, _resolved(tmp_path, "train.epochs=1")) == ["train.epochs"]
    unsafe = _resolved(tmp_path, "seed=1", "train.amp=bf16", "terms.1.weight=2")
    assert "output_dir" in config_differences(old, unsafe)  # {seed} in it; output only
    assert resume_conflicts(old, unsafe) == ["seed", "terms", "train.amp"]


def test_seed_placeholder_in_checkpoint_paths(tmp_path):
    config = load_config(
        write(tmp_path, BASE),
        ["seed=7", "student.checkpoint=runs/stage1/seed{seed}/last.pt"],
    )
    assert config.student.checkpoint == "runs/stage1/seed7/last.pt"
    assert config.teacher.checkpoint == "t.pth" and config.output_dir == "runs/x/seed7"


def test_builder_options_reach_the_builder_or_are_refused(tmp_path):
    import torch

    from ndkd.experiment.models import build_model

    cpu = torch.device("cpu")
    config = load_config(write(tmp_path, BASE), ["student.options={dropout: 0.3}"])
    with pytest.raises(ValueError, match="resnet8: zoo models take no options"):
        build_model(config.student, "student", 10, 1, cpu)
    clash = load_config(write(tmp_path, BASE), ["student.options={pool: max}"])
    with pytest.raises(ValueError, match="student.options.pool: set by its own config key"):
        build_model(clash.student, "student", 10, 1, cpu)
    mobile = load_config(
        write(tmp_path, BASE),
        ["student.arch=torchvision:mobilenet_v2", "student.options={dropout: 0.3}"],
    )
    model = build_model(mobile.student, "student", 10, 1, cpu)
    assert model.classifier[0].p == 0.3
