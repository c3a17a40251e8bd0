"""One clear ConfigError per bad input, naming the key (or the file, or the override)."""

from __future__ import annotations

import random

import pytest

from ndkd.cli import main
from ndkd.config import ConfigError, load_config

GOOD = """
output_dir: runs/x
data: {name: digits}
student: {arch: resnet8}
teacher: {arch: resnet20}
train: {epochs: 2, lr: 0.05, milestones: [1]}
terms:
  - {name: ce, weight: 1.0}
  - {name: kd, weight: 0.9, temperature: 4}
"""


@pytest.fixture
def recipe(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(GOOD)
    return path


def test_the_good_recipe_loads(recipe):
    assert load_config(recipe).terms[1].params == {"temperature": 4}


@pytest.mark.parametrize("override", ["train.milestones=[1,", "terms={name: ce", "seed=: x: y"])
def test_a_bad_yaml_override_is_a_config_error_naming_the_override(recipe, override):
    with pytest.raises(ConfigError, match=rf"override '{__import__('re').escape(override)}'"):
        load_config(recipe, [override])


def test_a_bad_override_is_one_line_and_exit_2_from_the_cli(recipe, capsys):
    assert main(["train", "-c", str(recipe), "--dry-run", "train.milestones=[1,"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "train.milestones=[1," in err and "not valid YAML" in err


def test_an_undecodable_file_is_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "weights.yaml"
    path.write_bytes(random.Random(0).randbytes(4096))
    with pytest.raises(ConfigError, match=r"weights\.yaml: not a text file"):
        load_config(path)


def test_control_characters_are_a_config_error_naming_the_file(tmp_path):
    path = tmp_path / "nul.yaml"
    path.write_bytes(b"seed: 1\n\x00\x01\x02")
    with pytest.raises(ConfigError, match=r"nul\.yaml: not valid YAML"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("student: {arch: r}\ntrain: {lr: 1}\ntrain: {epochs: 2}\n", "train"),
        ("student: {arch: r}\ntrain:\n  lr: 0.1\n  lr: 0.2\n", "train.lr"),
        ("student: {arch: r}\nterms:\n  - {name: ce, weight: 1, weight: 2}\n", "terms.0.weight"),
    ],
)
def test_duplicate_keys_are_refused_naming_the_file_and_key(tmp_path, text, key):
    path = tmp_path / "dup.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"dup\.yaml: .*duplicate key '{key}' at line \d"):
        load_config(path)


def test_duplicate_keys_in_an_override_value_are_refused(recipe):
    with pytest.raises(ConfigError, match="duplicate key 'lr'"):
        load_config(recipe, ["train={lr: 1, lr: 2}"])


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("train.lr=nan", "train.lr: must be a finite number, found nan"),
        ("train.lr=.nan", "train.lr: must be a finite number"),
        ("train.weight_decay=inf", "train.weight_decay: must be a finite number, found inf"),
        ("train.gamma=-.inf", "train.gamma: must be a finite number"),
        ("train.lr_warmup_epochs=1e999", "train.lr_warmup_epochs: must be a finite number"),
        ("terms.1.weight=nan", "terms.1.weight: must be a finite number"),
        ("terms.1.warmup_epochs=.inf", "terms.1.warmup_epochs: must be a finite number"),
        ("terms.1.weight=-1", "terms.1.weight: must be non-negative, found -1.0"),
        ("terms.1.temperature=abc", "terms.1.temperature: expected a number, found 'abc'"),
        ("terms.1.temperature=.nan", "terms.1.temperature: must be a finite number"),
        ("terms.1.temperature=nan", "terms.1.temperature: must be a finite number"),
        ("terms.1.temperature=0", "terms.1.temperature: must be positive, found 0"),
        ("terms.1.temperature=true", "terms.1.temperature: expected a number"),
        ("terms.1.tau=-1", "terms.1.tau: must be positive"),
        ("terms.1.alpha=-0.5", "terms.1.alpha: must be non-negative"),
        ("terms.1.beta=[1]", "terms.1.beta: expected a number"),
        ("terms.1.step=.inf", "terms.1.step: must be a finite number"),
        ("terms.1.step=-Infinity", "terms.1.step: must be a finite number"),
        ("terms.1.sizes=[1, .nan]", r"terms.1.sizes.1: must be a finite number"),
        ("train.momentum=0", "train.nesterov: .*train.momentum > 0"),
        ("output_dir=", "output_dir: must name a folder"),
        ("output_dir=   ", "output_dir: must name a folder"),
        ("output_dir=' '", "output_dir: must name a folder"),
        ("seed=4294967296", r"seed: must be in \[0, 4294967295\], found 4294967296"),
        ("seed=-1", r"seed: must be in \[0, 4294967295\]"),
        ("device=gpu", "device: expected auto, cpu, mps, cuda or cuda:N .*found 'gpu'"),
        ("device=cuda:-1", "device: expected auto"),
        ("device=cuda:x", "device: expected auto"),
        ("device=CPU", "device: expected auto"),
        ("data.name=cifar1000", r"data.name: expected one of \['cifar10', 'cifar100'"),
        ("log.progress_every=-1", "log.progress_every: must be non-negative"),
        ("log.tensorboard=yes please", "log.tensorboard: expected true or false"),
        (
            "task=segmentation",
            r"task: expected one of \['classification', 'multilabel', 'detection'\]",
        ),
    ],
)
def test_bad_values_are_refused_naming_the_key(recipe, override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(recipe, [override])


@pytest.mark.parametrize(
    ("overrides", "check"),
    [
        (["train.momentum=0", "train.nesterov=false"], lambda c: c.train.momentum == 0),
        (["seed=4294967295"], lambda c: c.seed == 2**32 - 1),
        (["device=cuda:1"], lambda c: c.device == "cuda:1"),
        (["device=mps"], lambda c: c.device == "mps"),
        (["terms.1.temperature=5e-4"], lambda c: c.terms[1].params["temperature"] == 5e-4),
        (["terms.1.alpha=0"], lambda c: c.terms[1].params["alpha"] == 0),
        (["terms.1.weight=0"], lambda c: c.terms[1].weight == 0.0),
        (["terms.1.bias=mean"], lambda c: c.terms[1].params["bias"] == "mean"),
        (["log.progress_every=0"], lambda c: c.log.progress_every == 0),
    ],
)
def test_edge_values_that_are_fine(recipe, overrides, check):
    assert check(load_config(recipe, overrides))


def test_momentum_zero_with_nesterov_names_both_keys(recipe):
    with pytest.raises(ConfigError) as caught:
        load_config(recipe, ["train.momentum=0"])
    assert "train.nesterov" in str(caught.value) and "train.momentum" in str(caught.value)


def test_a_nan_in_a_file_names_the_file_and_key(tmp_path):
    path = tmp_path / "nan.yaml"
    path.write_text("student: {arch: r}\nterms:\n  - {name: kd, temperature: .nan}\n")
    with pytest.raises(ConfigError, match=r"nan\.yaml: terms\.0\.temperature: must be a finite"):
        load_config(path)


def test_yaml_merge_keys_and_aliases_are_not_duplicates(tmp_path):
    path = tmp_path / "anchors.yaml"
    path.write_text(
        "student: &s {arch: resnet8}\nteacher: {<<: *s, arch: resnet20}\n"
        "train: {milestones: &m [1, 2], epochs: 3}\n"
    )
    config = load_config(path)
    assert (config.student.arch, config.teacher.arch) == ("resnet8", "resnet20")
