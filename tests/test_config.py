"""Config loading: YAML, dotted overrides, strict keys and types."""

from __future__ import annotations

import pytest

from ndkd.config import ConfigError, dump_config, from_dict, load_config


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
        ("data.name=imagenet", "data.name: expected one of"),
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
