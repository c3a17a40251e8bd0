"""The ``ndkd`` command. The library logs; this module decides what a person sees.

torch and the library are imported inside the command handlers, so ``ndkd --help`` and
argument errors answer without loading them.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from ndkd import __version__
from ndkd.cli_sweep import SWEEP_EXECUTORS, sweep_command

if TYPE_CHECKING:
    from ndkd.config import RunConfig


def _parse_metadata(pairs: Sequence[str]) -> dict[str, str]:
    metadata = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--meta expects KEY=VALUE, found {pair!r}")
        metadata[key] = value
    return metadata


def _convert_centers(args: argparse.Namespace) -> int:
    from ndkd.centers import convert_centers

    metadata = _parse_metadata(args.meta)
    means = convert_centers(Path(args.source), Path(args.output), metadata)
    print(f"wrote {args.output}: {means.num_classes} classes x {means.dim} dims")
    return 0


def _inspect_centers(args: argparse.Namespace) -> int:
    import torch

    from ndkd.centers import ClassMeans

    means = ClassMeans.load(args.path)
    norms = torch.linalg.vector_norm(means.means, dim=1)
    print(f"{args.path}")
    print(f"  classes      {means.num_classes}")
    print(f"  dim          {means.dim}")
    print(f"  norm         min {norms.min():.4f}  mean {norms.mean():.4f}  max {norms.max():.4f}")
    if means.counts is not None:
        low, high = int(means.counts.min()), int(means.counts.max())
        print(f"  samples      {int(means.counts.sum())} (per class {low}..{high})")
    for key, value in sorted(means.metadata.items()):
        print(f"  {key:<12} {value}")
    return 0


FAST_OVERRIDES = ("data.resident=true", "train.channels_last=true")
FAST_CUDA_OVERRIDES = ("train.amp=bf16", "train.compile=true")


def _config(args: argparse.Namespace) -> RunConfig:
    import torch

    from ndkd.config import load_config

    overrides = list(args.overrides)
    if getattr(args, "fast", False):
        # Speed only: same data, augmentation, schedule and losses. bf16 and compile pay off
        # on GPUs; on a CPU they cost (bf16 emulation, compile time), so they stay off.
        fast = FAST_OVERRIDES + (FAST_CUDA_OVERRIDES if torch.cuda.is_available() else ())
        overrides = [*fast, *overrides]  # explicit overrides win
    return load_config(args.config, overrides)


def _is_main_process() -> bool:
    from ndkd.engine import read_env

    return read_env().is_main


def _train(args: argparse.Namespace) -> int:
    from ndkd import experiment
    from ndkd.console import ProgressPrinter, evaluation_summary
    from ndkd.engine.stop_signals import RunInterrupted

    config = _config(args)
    if args.dry_run:
        plan = experiment.plan_run(config, args.resume)
        built = experiment.build(config, join_process_group=False)
        params = sum(p.numel() for p in built.student.parameters())
        extra = sum(p.numel() for p in built.method.parameters())
        data = built.data
        print(
            f"config ok: {config.student.arch} student ({params:,} parameters), "
            f"teacher {config.teacher.arch or 'none'}, terms "
            f"{', '.join(f'{t.name}x{t.weight:g}' for t in config.terms)} "
            f"({extra:,} method parameters), {data.train_size} training images, "
            f"{len(data.train_loader)} steps/epoch on {built.device}"
            + (f"; class means {config.centers.path}" if built.method.requires_centers else "")
            + (f"; resumes {_position(plan.checkpoint)}" if plan.checkpoint else "")
        )
        return 0
    printer = ProgressPrinter(enabled=_is_main_process())
    try:
        history = experiment.train(
            config, resume=args.resume, progress=printer, step_progress=printer.bar
        )
    except RunInterrupted as stop:
        printer.close()
        if _is_main_process():
            print(
                f"ndkd train: {stop}; continue with: ndkd train -c {args.config} --resume",
                file=sys.stderr,
            )
        return 128 + stop.signum
    if _is_main_process() and history:
        last = history[-1]
        print(f"done: {config.output_dir}  last epoch {evaluation_summary(last)}")
    return 0


def _output_folder(path: str, option: str) -> Path:
    """``path`` as an output folder, refused up front when it names an existing file."""
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {path}: is a file; expected a folder to write into")
    return folder


def _position(checkpoint: dict) -> str:
    epoch, step = int(checkpoint["epoch"]), int(checkpoint.get("step", 0))
    return f"in epoch {epoch + 1} at step {step}" if step else f"after epoch {epoch}"


def _centers(args: argparse.Namespace) -> int:
    from ndkd import experiment
    from ndkd.centers import ClassMeans
    from ndkd.console import ProgressPrinter

    printer = ProgressPrinter(enabled=_is_main_process())
    path = experiment.compute_centers(_config(args), progress=printer)
    if _is_main_process():
        means = ClassMeans.load(path)
        print(f"wrote {path}: {means.num_classes} classes x {means.dim} dims")
    return 0


def _eval(args: argparse.Namespace) -> int:
    from ndkd import experiment
    from ndkd.console import evaluation_summary

    # `checkpoint=PATH` among the overrides is the same as --checkpoint PATH
    picked = [o for o in args.overrides if o.startswith("checkpoint=")]
    args.overrides = [o for o in args.overrides if not o.startswith("checkpoint=")]
    checkpoint = picked[-1].partition("=")[2] if picked else args.checkpoint
    result = experiment.evaluate(_config(args), checkpoint)
    if _is_main_process():
        print(evaluation_summary(result))
    return 0


def _export(args: argparse.Namespace) -> int:
    from ndkd.export import export_run

    if args.private and not args.push_to_hub:
        raise ValueError("--private applies to --push-to-hub REPO_ID only")
    result = export_run(
        args.run_dir,
        args.format,
        checkpoint=args.checkpoint,
        output=args.output,
        overwrite=args.overwrite,
    )
    print(
        f"wrote {result.folder}: {result.model_file.name} ({result.exporter}), config.yaml, "
        f"README.md; check passed, max abs diff {result.max_abs_diff:.3g} over "
        f"{result.compared} of {result.samples} test images"
    )
    if args.push_to_hub:
        from ndkd.export.hub import push_to_hub

        url = push_to_hub(result.folder, args.push_to_hub, private=args.private)
        print(f"pushed {result.folder} to {url}")
    return 0


_DEMO_TASKS = ("classification", "multilabel", "detection")


def _demo(args: argparse.Namespace) -> int:
    from ndkd import demo
    from ndkd.console import ProgressPrinter

    full, quick, run, write, table = {
        "classification": (
            demo.DemoSettings(),
            demo.QUICK,
            demo.run_demo,
            demo.write_report,
            demo.results_table,
        ),
        "multilabel": (
            demo.MULTILABEL,
            demo.QUICK_MULTILABEL,
            demo.run_multilabel_demo,
            demo.write_multilabel_report,
            demo.multilabel_table,
        ),
        "detection": (
            demo.DETECTION,
            demo.QUICK_DETECTION,
            demo.run_detection_demo,
            demo.write_detection_report,
            demo.detection_table,
        ),
    }[args.task]
    defaults = quick if args.quick else full
    settings = dataclasses.replace(
        defaults,
        output=_output_folder(args.output or str(defaults.output), "--output"),
        device=args.device,
    )
    if args.seeds is not None:
        if args.seeds < 1:
            raise ValueError(f"--seeds must be at least 1, found {args.seeds}")
        settings = dataclasses.replace(settings, seeds=tuple(range(args.seeds)))
    printer = ProgressPrinter()
    result = run(
        settings,
        phase=lambda text: print(text, flush=True),
        progress=printer,
        step_progress=printer.bar,
    )
    paths = write(result)
    print()
    print(table(result))
    print(f"\ndone in {result.wall_time_s:.0f} s; wrote {', '.join(str(p) for p in paths)}")
    return 0


def _analyze(args: argparse.Namespace) -> int:
    from ndkd.analysis.recipes import group_runs
    from ndkd.analysis.report import paper_note, results_table, write_features, write_results
    from ndkd.analysis.results import column_labels, summarize
    from ndkd.analysis.run_features import collect_run_features
    from ndkd.analysis.runs import find_run_dirs, read_run

    _output_folder(args.output, "-o")
    runs = [read_run(path) for path in find_run_dirs(args.runs)]
    groups = group_runs(runs)
    features = None
    if args.features:  # everything that can be refused is checked before writing
        ordered = [run for group in groups for run in group.runs]
        features = collect_run_features(
            ordered, args.device, args.data_root, announce=lambda line: print(line, flush=True)
        )
    written = write_results(groups, args.output)
    if features is not None:
        written += write_features(groups, features, args.output)
    results = [summarize(group) for group in groups]
    print(results_table(results))
    primary, secondary = column_labels(groups)
    print(f"{primary}/{secondary}: last epoch, mean ± std over seeds; best epoch: see results.md")
    note = paper_note(results).strip()
    if note:
        print(note)
    for path in written:
        print(f"wrote {path}")
    return 0


def _add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", required=True, help="YAML run configuration")
    parser.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="dotted overrides, e.g. train.lr=0.05 data.root=/data",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ndkd", description="Knowledge distillation with feature norm and direction (ND)."
    )
    parser.add_argument("--version", action="version", version=f"ndkd {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="show the library's INFO log")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    train = commands.add_parser("train", help="train a student (or a teacher: CE only)")
    _add_config_arguments(train)
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue the run in output_dir from its last checkpoint",
    )
    train.add_argument(
        "--fast",
        action="store_true",
        help="GPU fast path: data resident on the device, channels_last, and on CUDA bf16 "
        "autocast + torch.compile; never changes augmentation, schedule or losses",
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="validate the config and build data, models and method; no training",
    )
    train.set_defaults(handler=_train)

    centers = commands.add_parser("centers", help="compute the teacher class means")
    _add_config_arguments(centers)
    centers.set_defaults(handler=_centers)

    evaluate = commands.add_parser("eval", help="evaluate a checkpoint on the test split")
    _add_config_arguments(evaluate)
    evaluate.add_argument(
        "--checkpoint",
        help="weights to evaluate (also checkpoint=PATH); default: output_dir/last.pt",
    )
    evaluate.set_defaults(handler=_eval)

    export = commands.add_parser(
        "export",
        help="export a run's student (logits only, eval mode) as safetensors, ONNX or "
        "TorchScript, checked against PyTorch on test images, with a model card",
        description="Write the student of RUN_DIR alone (no teacher, method modules or "
        "optimizer) into a folder: the model file, the resolved config.yaml and a model card "
        "README.md. The export is loaded back and its logits compared with the PyTorch "
        "student's on a few batches of the run's test split. Needs ndkd[export] for ONNX.",
    )
    export.add_argument("run_dir", metavar="RUN_DIR", help="a run folder written by ndkd train")
    export.add_argument(
        "--format",
        required=True,
        choices=("safetensors", "onnx", "torchscript"),
        help="safetensors: the state dict in the source's key layout; onnx; torchscript",
    )
    export.add_argument(
        "--checkpoint",
        choices=("last", "best"),
        default="last",
        help="last.pt or best.pt (default: %(default)s)",
    )
    export.add_argument(
        "-o", "--output", help="folder to write (default: RUN_DIR/export-FORMAT-CHECKPOINT)"
    )
    export.add_argument(
        "--overwrite", action="store_true", help="replace an existing output folder"
    )
    export.add_argument(
        "--push-to-hub",
        metavar="REPO_ID",
        help="after the export, upload its folder to the Hugging Face model repo REPO_ID "
        "(created if needed; token from HF_TOKEN or `hf auth login`; needs ndkd[hub])",
    )
    export.add_argument(
        "--private", action="store_true", help="with --push-to-hub: create the repo private"
    )
    export.set_defaults(handler=_export)

    convert = commands.add_parser(
        "convert-centers",
        help="convert a class-means file: a public center_emb_train.json to ndkd's "
        ".safetensors (or back); the output's suffix picks the format",
    )
    convert.add_argument("source", help="a public .json file or an ndkd .safetensors file")
    convert.add_argument(
        "output", help="file to write: .safetensors (with metadata) or .json (public layout)"
    )
    convert.add_argument(
        "--meta",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metadata to record (teacher=..., dataset=...); repeatable",
    )
    convert.set_defaults(handler=_convert_centers)

    inspect = commands.add_parser(
        "inspect-centers", help="validate a class-means file and show its shape and metadata"
    )
    inspect.add_argument("path", help="an ndkd .safetensors file or a public .json file")
    inspect.set_defaults(handler=_inspect_centers)

    analyze = commands.add_parser(
        "analyze",
        help="results tables (mean ± std over seeds) and plots from run folders",
        description="Group run folders by recipe and write results.md, results.csv, "
        "runs.csv and learning_curves.png (and with --features features.md, "
        "features.json and feature_norms.png) into the output folder.",
    )
    analyze.add_argument(
        "runs",
        nargs="+",
        metavar="RUN_DIR",
        help="run folders (config.yaml + metrics.jsonl), or folders holding them at any depth",
    )
    analyze.add_argument(
        "-o", "--output", default="ndkd-analysis", help="folder to write (default: %(default)s)"
    )
    analyze.add_argument(
        "--features",
        action="store_true",
        help="also the test-set feature norm and direction of each run's student (last.pt) "
        "and teacher; rebuilds each run from its config.yaml",
    )
    analyze.add_argument(
        "--device", default="auto", help="device for --features (default: %(default)s)"
    )
    analyze.add_argument(
        "--data-root", help="data.root for --features, when the data moved since training"
    )
    analyze.set_defaults(handler=_analyze)

    sweep = commands.add_parser(
        "sweep",
        help="train every CONFIG x seed, each in its own run folder: a local queue over GPUs "
        "or CPU processes, or SLURM jobs (submitit); finished runs are skipped, stopped ones "
        "resume",
        description="Train every CONFIG with every seed of --seeds, each run in its own "
        "folder (the config's output_dir with {seed} substituted, or moved under --out). "
        "A finished run is skipped, a started one resumes, one held by a live process or "
        "holding another recipe is reported and left alone; running the same command again "
        "continues an interrupted sweep. Each run's output goes to sweep.log in its folder. "
        "Exit status 0 when every run is done, else 1.",
    )
    sweep.add_argument("configs", nargs="+", metavar="CONFIG", help="YAML run configurations")
    sweep.add_argument(
        "--seeds", nargs="+", type=int, required=True, metavar="S", help="seeds, e.g. 0 1 2"
    )
    sweep.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a dotted override for every run (repeatable), e.g. --set train.epochs=2",
    )
    sweep.add_argument(
        "--out",
        metavar="DIR",
        help="put the run folders under DIR, keeping their paths below their common parent "
        "(runs/cifar100/kd/X/seed0 -> DIR/kd/X/seed0)",
    )
    sweep.add_argument(
        "--dry-run",
        action="store_true",
        help="list the runs (config, seed, folder, state: new, resume, done, busy, conflict); "
        "start nothing",
    )
    sweep.add_argument(
        "--executor",
        choices=tuple(SWEEP_EXECUTORS),
        default="local",
        help="local: a queue on this machine (default); slurm: a SLURM job array through "
        "submitit (needs ndkd[sweep]); submitit-local: the same jobs as local processes",
    )
    queue = sweep.add_argument_group("local queue")
    queue.add_argument(
        "--gpus", metavar="LIST", help="GPUs to use, e.g. 0,1 (default: every visible GPU)"
    )
    queue.add_argument(
        "--per-gpu", type=int, metavar="K", help="runs at once on each GPU (default: 1)"
    )
    queue.add_argument(
        "--workers",
        type=int,
        metavar="N",
        help="N CPU processes at once, GPUs hidden (default without GPUs: 1)",
    )
    jobs = sweep.add_argument_group("slurm / submitit-local")
    jobs.add_argument("--partition", help="SLURM partition")
    jobs.add_argument(
        "--time-min", type=int, metavar="M", help="time limit per job (default: 1440 minutes)"
    )
    jobs.add_argument(
        "--gpus-per-task", type=int, metavar="G", help="GPUs per run (default: slurm 1, local 0)"
    )
    jobs.add_argument(
        "--cpus-per-task",
        type=int,
        metavar="C",
        help="CPU cores (and threads) per run (default: slurm's; submitit-local: cores / runs)",
    )
    jobs.add_argument("--mem-gb", type=float, metavar="GB", help="memory per run")
    jobs.add_argument("--array-parallelism", type=int, metavar="N", help="at most N runs at once")
    jobs.add_argument(
        "--wait",
        action="store_true",
        help="wait for the jobs and report each as it ends (default: submit and exit)",
    )
    sweep.set_defaults(handler=sweep_command)

    demo = commands.add_parser(
        "demo",
        help="teacher, class means, CE/KD/KD++ students over seeds on bundled digit pairs "
        "(--task multilabel: BCE / L2 / LSHL2 students on digit canvases; --task detection: "
        "Faster R-CNN students with KD/KD++ on digit boxes); no downloads, minutes on a CPU; "
        "writes a table, results.json and plots",
    )
    demo.add_argument(
        "--task",
        choices=_DEMO_TASKS,
        default="classification",
        help="classification (ND: CE/KD/KD++), multilabel (LSHFM: BCE/L2/LSHL2) or "
        "detection (ND on Faster R-CNN: detector losses/KD/KD++)",
    )
    demo.add_argument(
        "--output",
        help="folder to write (default: ndkd-demo, ndkd-demo-multilabel, ndkd-demo-detection)",
    )
    demo.add_argument("--seeds", type=int, help="number of seeds (default: 3; detection: 2)")
    demo.add_argument("--device", default="auto", help="auto (GPU if any), cpu, cuda, ...")
    demo.add_argument(
        "--quick",
        action="store_true",
        help="one epoch per model and two seeds (detection: two steps per model, one seed): "
        "a smoke test of the pipeline (numbers mean nothing)",
    )
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.handler(args)
    except KeyboardInterrupt:  # outside a training loop, which stops at a step itself
        print(f"ndkd {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        message = _user_error(error)
        if message is None:
            raise
        print(f"ndkd {args.command}: error: {message}", file=sys.stderr)
        return 2


def _user_error(error: Exception) -> str | None:
    """The one line for bad input, an unwritable path or a stopped run (exit 2); ``None``
    for anything else (a bug: the traceback is shown)."""
    if isinstance(error, (ValueError, FileNotFoundError, TypeError)):
        return str(error)
    if isinstance(error, OSError):
        where = f": {error.filename}" if error.filename else ""
        return f"{error.strerror or error}{where}"
    totals = sys.modules.get("ndkd.engine.epoch_totals")  # imported by then if it can be raised
    if totals is not None and isinstance(error, totals.NonFiniteLossError):
        return str(error)
    return None


def run() -> None:
    """Console-script entry point: exit with :func:`main`'s status."""
    sys.exit(main())
