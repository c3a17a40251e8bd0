"""ndkd's image-folder loaders vs torchvision's ImageFolder + DataLoader (the public recipe).

Writes a temporary image folder: 10 classes of 500x375 JPEGs (quality 90) of random smooth
images (bicubic-upsampled random 21x16 colour fields) plus Gaussian noise (sigma 12), about
the file size and decode cost of an ImageNet photo. Then measures, side by side in each
round (order alternating, one warm-up round not counted, median of the rest), images/s of

- training: ``ndkd.data.streaming.TrainLoader`` vs ``ImageFolder`` + ``DataLoader(shuffle)``
  with RandomResizedCrop(224) + RandomHorizontalFlip + ToTensor + Normalize;
- evaluation: ``eval_loader`` vs ``ImageFolder`` with Resize(256) + CenterCrop(224) + ...,

with the same batch size and workers (persistent workers for both training loaders, none for
evaluation, as ndkd runs them). Also per-image costs in one process: decoding with Pillow vs
``torchvision.io.decode_jpeg``, and the training transform of torchvision v1, v2 and ndkd.

    python benchmarks/bench_imagefolder.py [--workers 2] [--images 1000] [--rounds 5]
        [--listing 200000]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import PIL
import torch
from PIL import Image, features
from torch.utils.data import DataLoader
from torchvision import datasets
from torchvision import transforms as T
from torchvision.transforms import v2

from common import describe_machine
from ndkd.data import streaming
from ndkd.data.imagefolder import IMAGENET_MEAN, IMAGENET_STD, read_image_folders
from ndkd.data.streaming import TrainLoader, eval_loader

CLASSES, WIDTH, HEIGHT = 10, 500, 375


def write_folder(root: Path, images: int, seed: int = 0) -> float:
    """``images`` training JPEGs over 10 classes (val/ holds hard links to them); returns the
    mean file size in KB."""
    rng = np.random.default_rng(seed)
    sizes = []
    for i in range(images):
        name = f"class_{i % CLASSES:02d}"
        for split in ("train", "val"):
            (root / split / name).mkdir(parents=True, exist_ok=True)
        field = rng.uniform(0, 255, (HEIGHT // 25 + 1, WIDTH // 25 + 1, 3)).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(field).resize((WIDTH, HEIGHT), Image.BICUBIC))
        noisy = smooth + rng.normal(0, 12, smooth.shape)
        path = root / "train" / name / f"{i:06d}.jpg"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        os.link(path, root / "val" / name / path.name)
        sizes.append(path.stat().st_size)
    return float(np.mean(sizes)) / 1024


def listing(files: int) -> None:
    """Time read_image_folders and torchvision's ImageFolder listing ``files`` empty .JPEG
    files in 1000 class folders (train/; val/ gets one file per class)."""
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        for c in range(1000):
            for split, count in (("train", files // 1000), ("val", 1)):
                folder = root / split / f"n{c:08d}"
                folder.mkdir(parents=True)
                for i in range(count):
                    (folder / f"n{c:08d}_{i}.JPEG").touch()
        start = time.perf_counter()
        read_image_folders(root)
        ours = time.perf_counter() - start
        start = time.perf_counter()
        datasets.ImageFolder(root / "train", allow_empty=True)
        ref = time.perf_counter() - start
        print(
            f"listing {files // 1000 * 1000} files in 1000 classes: ndkd {ours:.2f} s, "
            f"torchvision ImageFolder {ref:.2f} s (warm page cache)"
        )


def per_image_ms(fn, items: list, repeats: int = 3) -> float:
    """Median over ``repeats`` of the mean time of ``fn(item)`` over ``items``, in ms."""
    fn(items[0])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for item in items:
            fn(item)
        times.append((time.perf_counter() - start) / len(items))
    return statistics.median(times) * 1e3


def epoch_seconds(loader, set_epoch) -> float:
    start = time.perf_counter()
    for _ in loader:
        pass
    elapsed = time.perf_counter() - start
    set_epoch()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument(
        "--listing", type=int, default=0, help="also time listing this many empty files"
    )
    args = parser.parse_args()
    warnings.filterwarnings("ignore", category=DeprecationWarning)  # torchvision.io notice
    from torchvision.io import decode_jpeg, read_file

    normalize = T.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    tv_train = T.Compose(
        [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), normalize]
    )
    tv_eval = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(), normalize])
    tv2_train = v2.Compose(
        [
            v2.RandomResizedCrop(224),
            v2.RandomHorizontalFlip(),
            v2.PILToTensor(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ]
    )
    turbo = features.version("libjpeg_turbo") if features.check("libjpeg_turbo") else None
    print(describe_machine())
    jpeg = "torchvision.io.decode_jpeg" if streaming._DECODE_JPEG else "Pillow"
    print(
        f"ndkd decodes JPEGs with {jpeg}, other formats with Pillow {PIL.__version__} "
        f"({'libjpeg-turbo ' + turbo if turbo else 'libjpeg'}); resizes with torch "
        "(torchvision.transforms.v2.functional, antialiased bilinear)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        kb = write_folder(root, args.images)
        print(
            f"data: {args.images} JPEGs {WIDTH}x{HEIGHT} q90 (random smooth images + noise, "
            f"{kb:.0f} KB mean), {CLASSES} classes; batch {args.batch_size}, "
            f"{args.workers} workers, {args.rounds} rounds (median)"
        )
        splits = read_image_folders(root)
        files = [str(splits.train.path(i)) for i in range(min(100, args.images))]
        torch.set_num_threads(1)  # as in a DataLoader worker
        pil_ms = per_image_ms(lambda p: np.asarray(Image.open(p).convert("RGB")), files)
        tv_ms = per_image_ms(lambda p: decode_jpeg(read_file(p)), files)
        print(f"decode only, 1 process: PIL {pil_ms:.3f} ms/img, decode_jpeg {tv_ms:.3f} ms/img")
        v1_ms = per_image_ms(lambda p: tv_train(Image.open(p).convert("RGB")), files)
        v2_ms = per_image_ms(lambda p: tv2_train(Image.open(p).convert("RGB")), files)
        ours_ms = per_image_ms(lambda i: splits.train[i], list(range(len(files))))
        print(
            f"decode + train transform, 1 process: torchvision v1 {v1_ms:.3f}, "
            f"v2 {v2_ms:.3f}, ndkd {ours_ms:.3f} ms/img"
        )
        torch.set_num_threads(os.cpu_count() or 1)
        if args.listing:
            listing(args.listing)

        workers = args.workers
        ours_train = TrainLoader(
            splits.train, args.batch_size, seed=0, num_workers=workers, pin_memory=False
        )
        ours_eval = eval_loader(splits.val, args.batch_size, num_workers=workers, pin_memory=False)
        ref_train = DataLoader(
            datasets.ImageFolder(root / "train", tv_train),
            args.batch_size,
            shuffle=True,
            num_workers=workers,
            persistent_workers=workers > 0,
        )
        ref_eval = DataLoader(
            datasets.ImageFolder(root / "val", tv_eval), args.batch_size, num_workers=workers
        )
        epoch = [0]

        def next_epoch() -> None:
            epoch[0] += 1
            ours_train.set_epoch(epoch[0])

        pairs = {
            "train": ((ours_train, next_epoch), (ref_train, lambda: None)),
            "eval": ((ours_eval, lambda: None), (ref_eval, lambda: None)),
        }
        times = {(kind, who): [] for kind in pairs for who in ("ndkd", "torchvision")}
        for round_ in range(args.rounds + 1):
            for kind, (ours, ref) in pairs.items():
                order = [("ndkd", ours), ("torchvision", ref)]
                for who, (loader, after) in order if round_ % 2 else order[::-1]:
                    seconds = epoch_seconds(loader, after)
                    if round_ > 0:  # round 0 warms up (worker start, page cache)
                        times[(kind, who)].append(seconds)
        for kind in pairs:
            ours = args.images / statistics.median(times[(kind, "ndkd")])
            ref = args.images / statistics.median(times[(kind, "torchvision")])
            print(
                f"{kind:5s} loader: ndkd {ours:7.0f} img/s, torchvision ImageFolder "
                f"{ref:7.0f} img/s, ratio {ours / ref:.2f}x"
            )


if __name__ == "__main__":
    main()
