"""`ndkd analyze`: run folders -> tables grouped by recipe, learning curves, feature stats."""

from __future__ import annotations

import csv
import json
import statistics
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from helpers import STUDENT, TEACHER, write_kdpp_config
from ndkd.analysis.recipes import group_runs, recipe_id, seedless_dir
from ndkd.analysis.results import curves, group_metrics, short_labels, summarize
from ndkd.analysis.runs import TASK_METRICS, find_run_dirs, read_run
from ndkd.centers import ClassMeans
from ndkd.cli import main
from ndkd.config import RunConfig, dump_config, from_dict, load_config
from ndkd.data import build_dataset
from ndkd.models import create_model
from ndkd.tasks import TASKS

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "cifar100"
EPOCHS = 4

# test top-1 / top-5 per epoch, per recipe and seed (epoch 3 is the best epoch of some seeds)
KDPP_TOP1 = {
    0: [40.0, 60.0, 71.5, 71.0],
    1: [41.0, 62.0, 70.25, 70.75],
    2: [39.5, 61.0, 70.0, 72.0],
}
KDPP_TOP5 = {0: [70.0, 85.0, 91.0, 91.5], 1: [71.0, 86.0, 90.0, 90.5], 2: [69.0, 84.0, 92.0, 92.25]}
KD_TOP1 = {0: [38.0, 55.0, 68.0, 69.5], 1: [37.0, 56.5, 69.25, 69.0], 2: [36.0, 54.0]}
KD_TOP5 = {0: [68.0, 82.0, 89.0, 89.5], 1: [67.0, 83.0, 89.5, 90.0], 2: [66.0, 81.0]}
# test mAP / CF1 per epoch of a multi-label recipe, per seed (seed 0's best mAP is at epoch 3)
BCE_MAP = {0: [20.0, 35.5, 48.0, 47.0], 1: [22.0, 36.0, 45.5, 49.25], 2: [21.0, 37.0, 46.0, 50.5]}
BCE_CF1 = {0: [10.0, 30.0, 41.0, 42.5], 1: [12.0, 31.0, 40.0, 43.0], 2: [11.0, 29.5, 40.5, 44.75]}


RECIPE_FOLDERS = {"kd": "controlled/kd", "kd++": "kd++"}
"""The recipes the runs of a method folder were made with: KD is KD++ without its nd term."""


def _config(method: str, seed: int, runs: Path, *overrides: str) -> RunConfig:
    return load_config(
        CONFIGS / RECIPE_FOLDERS[method] / "resnet56_resnet20.yaml",
        [
            f"seed={seed}",
            f"train.epochs={EPOCHS}",
            f"output_dir={runs / method / 'resnet56_resnet20' / 'seed{seed}'}",
            *overrides,
        ],
    )


def _multilabel_config(seed: int, runs: Path) -> RunConfig:
    return from_dict(
        {
            "seed": seed,
            "task": "multilabel",
            "data": {"name": "digit_canvas"},
            "student": {"arch": "resnet8"},
            "terms": [{"name": "bce"}],
            "train": {"epochs": EPOCHS},
            "output_dir": str(runs / "bce" / "resnet8" / f"seed{seed}"),
        }
    )


def _write_run(
    config: RunConfig, first: list[float], second: list[float], folder: Path | None = None
) -> Path:
    """A run folder as `ndkd train` leaves it (without checkpoints), in ``output_dir``:
    ``first``/``second`` are the test top-1/top-5, or mAP/CF1 for a multi-label run."""
    folder = Path(config.output_dir) if folder is None else folder
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(dump_config(config))
    lines = []
    for epoch, (a, b) in enumerate(zip(first, second), start=1):
        if config.task == "multilabel":
            metrics = {
                "train_precision": a + 5,
                "train_recall": b + 3,
                "test_map": a,
                "test_map_plain": a,
                "test_map_interpolated": a + 1,
                "test_cp": b + 2,
                "test_cr": b - 2,
                "test_cf1": b,
                "test_of1": b + 1,
                "test_ap/0": a - 3,
            }
        else:
            metrics = {"train_top1": a + 5, "train_top5": b + 3, "test_top1": a, "test_top5": b}
        record = {
            "epoch": epoch,
            "lr": 0.1,
            "loss": 3.0 / epoch + config.seed,
            "loss/ce": 2.0 / epoch,
            "student_emb_norm": 5.0 + epoch,
            "teacher_emb_norm": 9.0,
            "epoch_time_s": 1.5,
            **metrics,
            "test_samples": 10000,
        }
        lines.append(json.dumps(record) + "\n")
    (folder / "metrics.jsonl").write_text("".join(lines))
    return folder


@pytest.fixture
def sweep(tmp_path) -> Path:
    """KD++ seeds 0-2 (seed 2 ran on another machine: other device and data root), KD seeds
    0-1 finished and seed 2 stopped after 2 of 4 epochs."""
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):
        moved = ("device=cuda", "data.root=/elsewhere", "data.num_workers=8") if seed == 2 else ()
        _write_run(_config("kd++", seed, runs, *moved), KDPP_TOP1[seed], KDPP_TOP5[seed])
        _write_run(_config("kd", seed, runs), KD_TOP1[seed], KD_TOP5[seed])
    return runs


@pytest.fixture
def multilabel_sweep(tmp_path) -> Path:
    """A multi-label recipe (BCE on digit_canvas), seeds 0-2, in ``tmp_path / "runs"``."""
    runs = tmp_path / "runs"
    for seed in (0, 1, 2):
        _write_run(_multilabel_config(seed, runs), BCE_MAP[seed], BCE_CF1[seed])
    return runs


def _mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.mean(values), statistics.stdev(values)


def test_grouping_and_mean_std(sweep):
    dirs = find_run_dirs([sweep])
    assert len(dirs) == 6
    groups = group_runs([read_run(d) for d in dirs])
    kd_label = str(sweep / "kd" / "resnet56_resnet20")
    kdpp_label = str(sweep / "kd++" / "resnet56_resnet20")
    assert [(g.label, g.seeds, g.complete, g.epochs_completed) for g in groups] == [
        (kdpp_label, [0, 1, 2], True, 4),  # sorted by label ("+" < "/"), finished rows first
        (kd_label, [0, 1], True, 4),
        (kd_label, [2], False, 2),
    ]
    assert groups[0].recipe_id != groups[1].recipe_id == groups[2].recipe_id

    kdpp, kd, kd_incomplete = (summarize(g) for g in groups)
    mean, std = _mean_std([KDPP_TOP1[s][-1] for s in (0, 1, 2)])
    assert kdpp.last_primary.mean == pytest.approx(mean) and kdpp.last_primary.std == pytest.approx(
        std
    )
    mean, std = _mean_std([KDPP_TOP5[s][-1] for s in (0, 1, 2)])
    assert kdpp.last_secondary.mean == pytest.approx(
        mean
    ) and kdpp.last_secondary.std == pytest.approx(std)
    mean, std = _mean_std([max(KDPP_TOP1[s]) for s in (0, 1, 2)])
    assert kdpp.best_primary.mean == pytest.approx(mean) and kdpp.best_primary.std == pytest.approx(
        std
    )
    assert kdpp.best_epochs == (3, 4, 4)
    mean, std = _mean_std([69.5, 69.0])
    assert (kd.last_primary.mean, kd.last_primary.std) == (pytest.approx(mean), pytest.approx(std))
    assert kd.best_epochs == (4, 3)
    # the stopped run is alone: its own numbers, no std (one seed), never mixed in
    assert (kd_incomplete.last_primary.mean, kd_incomplete.last_primary.std) == (54.0, None)


def test_recipe_identity_and_labels(tmp_path):
    base = _config("kd++", 0, tmp_path)
    same = _config("kd++", 5, tmp_path, "device=cpu", "data.root=/x", "train.compile=true")
    assert recipe_id(base) == recipe_id(same)
    for change in ("train.lr=0.05", "terms.2.weight=1.0", "train.amp=bf16", "student.arch=resnet8"):
        assert recipe_id(_config("kd++", 0, tmp_path, change)) != recipe_id(base), change
    assert seedless_dir("runs/kd/seed3", 3) == "runs/kd"
    assert seedless_dir("runs/kd_seed3", 3) == "runs/kd"
    assert seedless_dir("runs/kd/seed3", 4) == "runs/kd/seed3"
    assert short_labels(["/a/runs/kd++/r56", "/a/runs/kd/r56"]) == {
        "/a/runs/kd++/r56": "kd++/r56",
        "/a/runs/kd/r56": "kd/r56",
    }
    assert short_labels(["/a/runs/kd/r56"]) == {"/a/runs/kd/r56": "kd/r56"}
    # two recipes that were written to the same output_dir (then moved) get their ids appended
    for lr in ("0.1", "0.05"):
        config = _config("kd", 0, tmp_path, f"train.lr={lr}")
        _write_run(config, KD_TOP1[0], KD_TOP5[0], tmp_path / "moved" / lr)
    groups = group_runs([read_run(d) for d in find_run_dirs([tmp_path / "moved"])])
    common = str(tmp_path / "kd" / "resnet56_resnet20")
    assert sorted(g.label for g in groups) == sorted(f"{common} [{g.recipe_id}]" for g in groups)


def test_cli_writes_tables_and_plots(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["analyze", str(sweep / "kd"), str(sweep / "kd++"), "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    assert "top-1 (%) last epoch" in stdout and f"wrote {out / 'results.md'}" in stdout

    markdown = (out / "results.md").read_text()
    main_table, rest = markdown.split("## Best epoch")
    best_table, runs_table = rest.split("## Runs")
    mean, std = _mean_std([KDPP_TOP1[s][-1] for s in (0, 1, 2)])
    assert f"{mean:.2f} ± {std:.2f}" in main_table
    mean, std = _mean_std([max(KDPP_TOP1[s]) for s in (0, 1, 2)])
    assert f"{mean:.2f} ± {std:.2f}" in best_table and "3, 4, 4" in best_table
    assert f"{mean:.2f} ± {std:.2f}" not in main_table  # the best epoch stays apart
    assert "3 (0, 1, 2)" in main_table and "ce×1 + kd×1 + nd×2" in main_table
    assert "2 of 4, INCOMPLETE" in main_table and "**Incomplete runs**" in markdown
    assert " 54.00 |" in main_table  # the stopped run's last epoch, alone
    assert runs_table.count(str(sweep)) == 2 * 6  # folder and recipe of every run

    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["seeds"], r["complete"], r["epochs_completed"]) for r in rows] == [
        ("3", "True", "4"),
        ("2", "True", "4"),
        ("1", "False", "2"),
    ]
    kdpp = rows[0]
    mean, std = _mean_std([KDPP_TOP5[s][-1] for s in (0, 1, 2)])
    assert float(kdpp["last_top5_mean"]) == pytest.approx(mean)
    assert float(kdpp["last_top5_std"]) == pytest.approx(std)
    assert kdpp["best_epochs"] == "3;4;4" and kdpp["seed_list"] == "0;1;2"
    assert rows[2]["last_top1_std"] == "" and float(rows[2]["last_top1_mean"]) == 54.0
    with open(out / "runs.csv") as handle:
        per_run = list(csv.DictReader(handle))
    assert sorted(float(r["last_top1"]) for r in per_run) == sorted(
        t[-1] for t in [*KDPP_TOP1.values(), *KD_TOP1.values()]
    )

    curves = out / "learning_curves.png"
    assert curves.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and curves.stat().st_size > 10_000


def test_the_paper_column_beside_the_recipes_that_have_a_published_number(sweep, tmp_path, capsys):
    out = tmp_path / "report"
    assert main(["analyze", str(sweep), "-o", str(out)]) == 0
    stdout = capsys.readouterr().out
    header, _, *rows = [line for line in stdout.splitlines() if line.startswith("|")]
    cells = [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]
    assert header.rstrip(" |").endswith("top-1 (%) paper")
    # KD++ has Table 1's 72.53; the controlled KD recipe (KD++ without nd) has no number
    assert [(row[3], row[-1]) for row in cells] == [
        ("ce×1 + kd×1 + nd×2", "72.53"),
        ("ce×1 + kd×1", "—"),
        ("ce×1 + kd×1", "—"),
    ]
    assert "Table 1: CIFAR-100 test top-1 (%)" in stdout
    markdown = (out / "results.md").read_text()
    assert "The paper column" in markdown and "Table 1" in markdown.split("## Best epoch")[0]
    with open(out / "results.csv") as handle:
        found = list(csv.DictReader(handle))
    assert [r["paper_top1"] for r in found] == ["72.53", "", ""]
    assert "Table 1" in found[0]["paper_source"] and found[1]["paper_source"] == ""


def test_no_paper_column_without_a_published_number(multilabel_sweep, tmp_path, capsys):
    assert main(["analyze", str(multilabel_sweep), "-o", str(tmp_path / "report")]) == 0
    stdout = capsys.readouterr().out
    assert "(%) paper" not in stdout and "The paper column" not in stdout
    assert "paper" not in (tmp_path / "report" / "results.csv").read_text().splitlines()[0]


def _refused(capsys, *argv: str) -> str:
    assert main(["analyze", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ndkd analyze: error:") and err.count("\n") == 1
    return err


def test_bad_run_folders_are_refused(sweep, tmp_path, capsys):
    out = tmp_path / "out"
    run = sweep / "kd" / "resnet56_resnet20" / "seed0"
    metrics = run / "metrics.jsonl"
    good = metrics.read_text()
    err = _refused(capsys, str(run), "-o", str(out), "--features")
    assert f"{run / 'last.pt'}: missing; --features needs the run's last checkpoint" in err

    metrics.write_text(good.replace("\n", "\n{not json\n", 1))
    err = _refused(capsys, str(run), "-o", str(out))
    assert f"{metrics}, line 2: not valid JSON" in err and "one JSON object per epoch" in err
    metrics.write_text('{"test_top1": 50.0}\n')
    assert "line 1: expected a JSON object with a positive integer 'epoch'" in _refused(
        capsys, str(run), "-o", str(out)
    )
    metrics.write_text("")
    assert f"{metrics}: no epoch recorded" in _refused(capsys, str(run), "-o", str(out))
    metrics.unlink()
    err = _refused(capsys, str(run), "-o", str(out))
    assert f"{metrics}: missing; expected one JSON object per completed epoch" in err

    metrics.write_text(good)
    (run / "config.yaml").unlink()
    err = _refused(capsys, str(sweep), "-o", str(out))  # found while searching below
    assert f"{run / 'config.yaml'}: missing; expected the run's resolved config" in err
    (run / "config.yaml").write_text("seed: 0\nstudent: {arch: resnet20}\ntrain: {epochz: 3}\n")
    assert "unknown config key 'train.epochz'" in _refused(capsys, str(run), "-o", str(out))

    empty = tmp_path / "empty"
    empty.mkdir()
    assert f"{empty}: no run folder here or below" in _refused(capsys, str(empty))
    assert "not a folder" in _refused(capsys, str(tmp_path / "nowhere"))
    assert not out.exists()  # nothing written by a refused analysis


def test_features_of_a_trained_run(tmp_path, digits_teacher, capsys):
    config = write_kdpp_config(tmp_path, digits_teacher, epochs=1, batch_size=128)
    assert main(["train", "-c", str(config)]) == 0
    run, out = tmp_path / "run", tmp_path / "analysis"
    assert main(["analyze", str(run), "-o", str(out), "--features", "--device", "cpu"]) == 0
    assert f"features of {run}" in capsys.readouterr().out

    data = json.loads((out / "features.json").read_text())
    test = build_dataset("digits", None, "test")
    means = ClassMeans.load(digits_teacher[1]).means
    with torch.no_grad():
        student = create_model(STUDENT, 10, in_channels=1)
        state = torch.load(run / "last.pt", map_location="cpu", weights_only=True)["model"]
        student.load_state_dict(state)
        s_emb = student.eval()(test.images).embedding
        teacher = create_model(TEACHER, 10, in_channels=1)
        teacher.load_state_dict(torch.load(digits_teacher[0], weights_only=True)["model"])
        t_emb = teacher.eval()(test.images).embedding
    t_cos = F.cosine_similarity(t_emb, means[test.labels], dim=1)

    (recipe,) = data["recipes"]
    (stats,) = recipe["runs"]
    assert stats["samples"] == len(test.labels)
    assert stats["norm_mean"] == pytest.approx(float(s_emb.norm(dim=1).mean()), rel=1e-5)
    assert stats["norm_std"] == pytest.approx(float(s_emb.norm(dim=1).std()), rel=1e-4)
    assert s_emb.shape[1] != means.shape[1] and stats["cosine_mean"] is None  # no direct cosine
    assert recipe["norm_mean_over_seeds"] == {"mean": stats["norm_mean"], "std": None}
    (teacher_stats,) = data["teachers"]
    assert teacher_stats["label"] == recipe["teacher"] == f"teacher {TEACHER}"
    assert teacher_stats["norm_mean"] == pytest.approx(float(t_emb.norm(dim=1).mean()), rel=1e-5)
    assert teacher_stats["cosine_mean"] == pytest.approx(float(t_cos.mean()), rel=1e-5)

    markdown = (out / "features.md").read_text()
    assert (
        f"{stats['norm_mean']:.2f}" in markdown
        and f"{teacher_stats['cosine_mean']:.3f}" in markdown
    )
    for name in ("feature_norms.png", "learning_curves.png", "results.md", "results.csv"):
        assert (out / name).stat().st_size > 0, name
    assert (out / "feature_norms.png").read_bytes()[:4] == b"\x89PNG"


def test_every_task_has_metrics_led_by_its_primary_metric():
    assert set(TASK_METRICS) == set(TASKS)
    for name, (primary, _) in TASK_METRICS.items():
        assert primary.key == TASKS[name].primary_metric, name


def test_multilabel_runs_are_summarized_by_map(multilabel_sweep, tmp_path):
    (group,) = group_runs([read_run(d) for d in find_run_dirs([multilabel_sweep])])
    result = summarize(group)
    for value, expected in (
        (result.last_primary, [BCE_MAP[s][-1] for s in (0, 1, 2)]),
        (result.last_secondary, [BCE_CF1[s][-1] for s in (0, 1, 2)]),
        (result.best_primary, [max(BCE_MAP[s]) for s in (0, 1, 2)]),
    ):
        mean, std = _mean_std(expected)
        assert (value.mean, value.std) == (pytest.approx(mean), pytest.approx(std))
    assert result.best_epochs == (3, 4, 4)

    out = tmp_path / "report"
    assert main(["analyze", str(multilabel_sweep), "-o", str(out)]) == 0
    markdown = (out / "results.md").read_text()
    assert "Test mAP and CF1 at the **last epoch**" in markdown
    assert "| mAP (%) last epoch | CF1 (%) last epoch |" in markdown
    assert "| mAP (%) at best epoch |" in markdown and "| mAP (%) best epoch |" in markdown
    assert "top-1" not in markdown and "| bce×1 |" in markdown
    with open(out / "results.csv") as handle:
        (row,) = csv.DictReader(handle)
    assert list(row)[10:] == [
        "last_map_mean",
        "last_map_std",
        "last_cf1_mean",
        "last_cf1_std",
        "best_epoch_map_mean",
        "best_epoch_map_std",
        "best_epochs",
    ]
    assert float(row["last_cf1_mean"]) == pytest.approx(result.last_secondary.mean)
    assert float(row["best_epoch_map_std"]) == pytest.approx(result.best_primary.std)
    assert row["best_epochs"] == "3;4;4"
    with open(out / "runs.csv") as handle:
        per_run = list(csv.DictReader(handle))
    assert [(float(r["best_epoch_map"]), r["best_epoch"]) for r in per_run] == [
        (48.0, "3"),
        (49.25, "4"),
        (50.5, "4"),
    ]


def test_mixed_tasks_join_the_column_names(sweep, multilabel_sweep, tmp_path):
    out = tmp_path / "report"
    assert main(["analyze", str(sweep), "-o", str(out)]) == 0
    markdown = (out / "results.md").read_text()
    assert (
        "Test top-1 and top-5 (`task: classification`) or mAP and CF1 (`task: multilabel`) "
        "at the **last epoch**"
    ) in markdown
    assert "| top-1 / mAP (%) last epoch | top-5 / CF1 (%) last epoch |" in markdown
    assert "| top-1 / mAP (%) at best epoch |" in markdown
    mean, std = _mean_std([BCE_MAP[s][-1] for s in (0, 1, 2)])
    assert f"{mean:.2f} ± {std:.2f}" in markdown.split("## Best epoch")[0]
    with open(out / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["terms"] for r in rows] == ["bce×1", "ce×1 + kd×1 + nd×2", *["ce×1 + kd×1"] * 2]
    assert float(rows[0]["last_top1_or_map_mean"]) == pytest.approx(mean)
    assert float(rows[1]["last_top5_or_cf1_mean"]) == pytest.approx(
        statistics.mean(KDPP_TOP5[s][-1] for s in (0, 1, 2))
    )
    assert "best_epoch_top1_or_map_std" in rows[0]
    with open(out / "runs.csv") as handle:
        assert "last_top1_or_map" in next(csv.reader(handle))

    # the first learning-curve panel: each group's primary metric
    groups = group_runs([read_run(d) for d in find_run_dirs([sweep])])
    found = curves(groups, lambda group: group_metrics(group)[0].key)
    bce = found[str(sweep / "bce" / "resnet8")]
    assert bce.mean.tolist() == pytest.approx([statistics.mean(v) for v in zip(*BCE_MAP.values())])
