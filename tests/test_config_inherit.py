"""Configs that inherit (``base:``): merge order and semantics, errors, and the recipes of
configs/ resolving exactly as they did before they were rewritten on shared bases.

tests/data/resolved_recipes.json holds ``load_config(recipe).to_dict()`` of every recipe as
the code resolved it before ``base:`` existed. Keys added to the schema since must equal their
defaults; a recipe meant to change its resolved settings updates its entry on purpose.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ndkd.config import ConfigError, RunConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
FIXTURE = Path(__file__).parent / "data" / "resolved_recipes.json"
FAMILIES = ("cifar100", "ablations", "lshfm")
"""The recipe families that existed before bases (the fixture's); later families were
written with bases from the start and have their own settings tests."""


def _recipes() -> dict[str, Path]:
    return {
        str(path.relative_to(CONFIGS)): path
        for family in FAMILIES
        for path in sorted((CONFIGS / family).rglob("*.yaml"))
        if not path.name.startswith("_")
    }


def _with_defaults(stored: dict, defaults: dict) -> dict:
    """``stored`` with the keys it lacks (added to the schema since) at their defaults."""
    filled = dict(stored)
    for key, default in defaults.items():
        if key not in filled:
            filled[key] = default
        elif isinstance(default, dict) and isinstance(filled[key], dict):
            filled[key] = _with_defaults(filled[key], default)
    return filled


def test_the_recipe_files_are_the_ones_of_the_fixture():
    assert set(_recipes()) == set(json.loads(FIXTURE.read_text()))


@pytest.mark.parametrize("name", sorted(_recipes()))
def test_every_recipe_resolves_as_before_it_had_bases(name):
    expected = _with_defaults(json.loads(FIXTURE.read_text())[name], RunConfig().to_dict())
    expected.pop("recipe")
    resolved = load_config(_recipes()[name]).to_dict()
    assert resolved.pop("recipe") == name.removesuffix(".yaml")  # its path below configs/
    assert resolved == expected


def test_bases_are_never_recipes_and_every_base_is_named_by_some_file():
    bases = {p.resolve() for p in CONFIGS.rglob("_*.yaml")}
    assert bases, "configs/ should hold shared bases"
    named = set()
    for path in CONFIGS.rglob("*.yaml"):
        for line in path.read_text().splitlines():
            if line.startswith("base:"):
                value = line.removeprefix("base:").strip().strip("[]")
                named |= {(path.parent / n.strip()).resolve() for n in value.split(",")}
    assert bases <= named


# --- merge semantics ---------------------------------------------------------------------


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


FAMILY = """
data: {name: digits, root: /data}
student: {arch: resnet8}
train: {epochs: 30, lr: 0.1, milestones: [10, 20]}
terms:
  - {name: ce, weight: 1.0}
  - {name: kd, weight: 2.0, temperature: 4}
"""


def test_mappings_merge_deeply_lists_and_scalars_are_replaced(tmp_path):
    write(tmp_path, "_family.yaml", FAMILY)
    recipe = write(
        tmp_path,
        "recipe.yaml",
        "base: _family.yaml\ntrain: {lr: 0.05, milestones: [15]}\nterms: [{name: ce}]\n",
    )
    config = load_config(recipe)
    assert (config.train.epochs, config.train.lr, config.train.milestones) == (30, 0.05, [15])
    assert config.data.root == "/data" and config.student.arch == "resnet8"
    assert [t.name for t in config.terms] == ["ce"]  # the list is replaced, not merged


def test_a_recipe_without_terms_keeps_the_bases_terms(tmp_path):
    write(tmp_path, "_family.yaml", FAMILY)
    config = load_config(write(tmp_path, "recipe.yaml", "base: _family.yaml\nseed: 4\n"))
    assert [(t.name, t.weight) for t in config.terms] == [("ce", 1.0), ("kd", 2.0)]
    assert config.seed == 4


def test_overrides_win_over_the_file_and_its_bases(tmp_path):
    write(tmp_path, "_family.yaml", FAMILY)
    recipe = write(tmp_path, "recipe.yaml", "base: _family.yaml\ntrain: {lr: 0.05}\n")
    config = load_config(recipe, ["train.lr=0.2", "train.epochs=3", "terms.1.weight=5"])
    assert (config.train.lr, config.train.epochs, config.terms[1].weight) == (0.2, 3, 5.0)


def test_a_list_of_bases_merges_in_order_later_wins(tmp_path):
    write(tmp_path, "_one.yaml", "student: {arch: resnet8}\ntrain: {lr: 0.1, epochs: 7}\n")
    write(tmp_path, "_two.yaml", "train: {lr: 0.3}\ndata: {name: digits}\n")
    recipe = write(tmp_path, "recipe.yaml", "base: [_one.yaml, _two.yaml]\n")
    config = load_config(recipe)
    assert (config.train.lr, config.train.epochs, config.data.name) == (0.3, 7, "digits")
    swapped = write(tmp_path, "swapped.yaml", "base: [_two.yaml, _one.yaml]\n")
    assert load_config(swapped).train.lr == 0.1


def test_chains_resolve_paths_relative_to_the_file_naming_them(tmp_path):
    write(tmp_path, "family/_base.yaml", FAMILY)
    write(tmp_path, "family/pairs/_pair.yaml", "base: ../_base.yaml\nstudent: {arch: r20}\n")
    recipe = write(
        tmp_path, "family/method/recipe.yaml", "base: ../pairs/_pair.yaml\ntrain: {lr: 0.02}\n"
    )
    config = load_config(recipe)
    assert (config.student.arch, config.train.lr, config.train.epochs) == ("r20", 0.02, 30)


def test_a_base_reached_twice_is_not_a_cycle(tmp_path):
    write(tmp_path, "_root.yaml", FAMILY)
    write(tmp_path, "_left.yaml", "base: _root.yaml\nseed: 1\ntrain: {epochs: 99}\n")
    write(tmp_path, "_right.yaml", "base: _root.yaml\ntrain: {lr: 0.5}\n")
    config = load_config(write(tmp_path, "recipe.yaml", "base: [_left.yaml, _right.yaml]\n"))
    # _right (with its own _root) is merged after _left: _root's epochs win over _left's.
    assert (config.seed, config.train.lr, config.train.epochs) == (1, 0.5, 30)


def test_cycles_are_refused_naming_the_files(tmp_path):
    write(tmp_path, "a.yaml", "base: b.yaml\n")
    write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle: .*a\.yaml -> .*b\.yaml -> .*a\.yaml"):
        load_config(tmp_path / "a.yaml")
    write(tmp_path, "self.yaml", "base: self.yaml\n")
    with pytest.raises(ConfigError, match=r"cycle: .*self\.yaml -> .*self\.yaml"):
        load_config(tmp_path / "self.yaml")


def test_a_missing_base_names_the_file_that_names_it(tmp_path):
    recipe = write(tmp_path, "recipe.yaml", "base: [_gone.yaml]\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml: base file not found: .*_gone\.yaml"):
        load_config(recipe)


@pytest.mark.parametrize(
    ("base_text", "message"),
    [
        ("train: {lrr: 1}\n", r"_bad\.yaml: unknown config key 'train\.lrr'"),
        ("train: {epochs: ten}\n", r"_bad\.yaml: train\.epochs: expected an integer"),
        ("terms: [{name: kd, weight: -1}]\n", r"_bad\.yaml: terms\.0\.weight: must be non"),
        ("train: {lr: 1}\ntrain: {lr: 2}\n", r"_bad\.yaml: .*duplicate key 'train'"),
    ],
)
def test_an_error_in_a_base_names_the_base(tmp_path, base_text, message):
    write(tmp_path, "_bad.yaml", base_text)
    recipe = write(tmp_path, "recipe.yaml", "base: _bad.yaml\nstudent: {arch: resnet8}\n")
    with pytest.raises(ConfigError, match=message):
        load_config(recipe)


def test_unknown_keys_are_refused_after_the_merge_too(tmp_path):
    write(tmp_path, "_family.yaml", FAMILY)
    recipe = write(tmp_path, "recipe.yaml", "base: _family.yaml\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'train\.lrr'"):
        load_config(recipe, ["train.lrr=1"])


@pytest.mark.parametrize("value", ["3", "['']", "{a: b}", "[_x.yaml, 4]"])
def test_base_must_be_a_path_or_a_list_of_paths(tmp_path, value):
    recipe = write(tmp_path, "recipe.yaml", f"base: {value}\nstudent: {{arch: resnet8}}\n")
    with pytest.raises(ConfigError, match=r"recipe\.yaml: base: expected a path or a list"):
        load_config(recipe)


def test_an_empty_list_of_bases_is_no_base(tmp_path):
    recipe = write(tmp_path, "recipe.yaml", "base: []\nstudent: {arch: resnet8}\n")
    assert load_config(recipe) == load_config(None, ["student.arch=resnet8"])


def test_base_cannot_be_an_override(tmp_path):
    write(tmp_path, "_family.yaml", FAMILY)
    with pytest.raises(ConfigError, match="base can only be named in a config file"):
        load_config(None, ["base=_family.yaml"])
