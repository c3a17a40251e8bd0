"""``ndkd demo``: the digit-pairs data and a quick end-to-end run through the CLI."""

from __future__ import annotations

import json
import statistics

import pytest
import torch

from helpers import run_ndkd
from ndkd.centers import ClassMeans
from ndkd.config import from_dict
from ndkd.data import build_dataset, read_digits
from ndkd.models import create_model, load_checkpoint


@pytest.fixture(scope="module")
def pairs():
    return build_dataset("digit_pairs", split="train"), build_dataset("digit_pairs", split="test")


def test_digit_pairs_shapes_balance_and_determinism(pairs):
    train, test = pairs
    assert train.images.shape == (3000, 1, 8, 16) and test.images.shape == (2000, 1, 8, 16)
    assert train.num_classes == test.num_classes == 100
    assert train.images.dtype == torch.float32
    assert 0.0 <= float(train.images.min()) and float(train.images.max()) <= 1.0
    assert torch.bincount(train.labels, minlength=100).tolist() == [30] * 100
    assert torch.bincount(test.labels, minlength=100).tolist() == [20] * 100
    again = build_dataset("digit_pairs", split="train")
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert not torch.equal(train.images[:100], test.images[:100])


@pytest.mark.parametrize("split", ["train", "test"])
def test_each_half_shows_the_digit_its_label_names(pairs, split):
    """Averaged over many noisy samples, the left (right) half with tens (units) digit d is
    nearest to the mean image of digit d among the ten digit means of that split."""
    dataset = pairs[0] if split == "train" else pairs[1]
    images, labels = read_digits(split)
    digit_means = torch.stack([images[labels == d].mean(0) for d in range(10)])
    for half, digit_of in ((slice(0, 8), lambda y: y // 10), (slice(8, 16), lambda y: y % 10)):
        for d in range(10):
            averaged = dataset.images[digit_of(dataset.labels) == d][..., half].mean(0)
            distances = [float((averaged - m).norm()) for m in digit_means]
            # Noise is added then clipped at 0 and 1, which shifts the mean: compare ranks.
            assert min(range(10), key=distances.__getitem__) == d


def test_digit_pairs_refuses_an_unknown_split():
    with pytest.raises(ValueError, match="digit_pairs"):
        build_dataset("digit_pairs", split="validation")


def test_config_accepts_digit_pairs_without_a_root():
    config = from_dict({"data": {"name": "digit_pairs"}, "student": {"arch": "resnet8"}})
    assert config.data.name == "digit_pairs"


@pytest.fixture(scope="module")
def quick_demo(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "out"
    result = run_ndkd("demo", "--quick", "--output", str(output), "--device", "cpu")
    assert result.returncode == 0, result.stderr
    return output, result


def test_quick_demo_prints_progress_and_the_table(quick_demo):
    _, result = quick_demo
    lines = result.stdout.splitlines()
    assert lines[0].startswith("[1/8] teacher resnet20")
    assert any(line.startswith("[8/8] student resnet8 KD++, seed 1") for line in lines)
    assert sum(line.startswith("epoch 1/1") for line in lines) == 7
    assert any("| student resnet8 KD++ |" in line for line in lines)


def test_quick_demo_results_equal_the_run_folders(quick_demo):
    output, _ = quick_demo
    summary = json.loads((output / "results.json").read_text())
    assert set(summary["methods"]) == {"ce", "kd", "kd++"}
    assert summary["seeds"] == [0, 1]
    test_set = build_dataset("digit_pairs", split="test")
    centers = ClassMeans.load(output / "runs" / "teacher" / "centers.safetensors").means
    for name, numbers in summary["methods"].items():
        finals, norms, cosines = [], [], []
        for seed in (0, 1):
            run = output / "runs" / name / f"seed{seed}"
            records = [
                json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
            ]
            finals.append(records[-1]["test_top1"])
            student = create_model("resnet8", 100, in_channels=1)
            load_checkpoint(student, run / "last.pt")
            with torch.no_grad():
                embedding = student.eval()(test_set.images).embedding
            norms.append(float(embedding.norm(dim=1).mean()))
            own_center = centers[test_set.labels]
            cosine = (embedding * own_center).sum(1) / (
                embedding.norm(dim=1) * own_center.norm(dim=1)
            )
            cosines.append(float(cosine.mean()))
        assert numbers["accuracy"] == pytest.approx(statistics.mean(finals))
        assert numbers["accuracy_std"] == pytest.approx(statistics.stdev(finals))
        assert numbers["feature_norm"] == pytest.approx(statistics.mean(norms), rel=1e-4)
        assert numbers["cosine_to_center"] == pytest.approx(statistics.mean(cosines), rel=1e-4)
    table = (output / "results.md").read_text()
    kdpp = summary["methods"]["kd++"]
    assert f"{kdpp['accuracy']:.2f} ± {kdpp['accuracy_std']:.2f}" in table


def test_quick_demo_writes_plots_and_rerunnable_configs(quick_demo):
    output, _ = quick_demo
    for name in ("feature_norms.png", "embeddings_2d.png"):
        data = (output / name).read_bytes()
        assert data.startswith(b"\x89PNG") and len(data) > 10_000
    config = run_ndkd("train", "-c", str(output / "runs" / "kd++" / "seed0" / "config.yaml"))
    assert config.returncode == 2 and "already holds a run" in config.stderr
    dry = run_ndkd(
        "train",
        "-c",
        str(output / "runs" / "kd++" / "seed0" / "config.yaml"),
        "--dry-run",
        "output_dir=" + str(output / "again"),
    )
    assert dry.returncode == 0, dry.stderr


def test_demo_refuses_to_overwrite_and_bad_seeds(quick_demo):
    output, _ = quick_demo
    again = run_ndkd("demo", "--quick", "--output", str(output))
    assert again.returncode == 2 and "already holds demo runs" in again.stderr
    bad = run_ndkd("demo", "--seeds", "0", "--output", str(output / "x"))
    assert bad.returncode == 2 and "--seeds" in bad.stderr
