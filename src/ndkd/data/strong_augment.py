"""The strong augmentation of MLKD's two-view training (Jin, Wang, Lin, CVPR 2023): the
RandAugment variant of the authors' code, then Cutout, on one PIL image.

Read from ``mdistiller/dataset/cifar100.py`` of ``Jin-Ying/Multi-Level-Logit-Distillation``
(``RandAugment(2, 10)``, ``augment_list``, ``Cutout``; the magnitude argument ``10`` is
unused there) and written anew here, driven by a NumPy generator instead of Python's
``random``:

- two operations drawn uniformly **with replacement** from the 14 of :data:`OPS`, applied in
  the order drawn, each with a magnitude drawn uniformly in its range (``low + (high - low)
  * u``);
- then Cutout: a square of side ``s * W`` (``s`` uniform in ``[0, 0.5)``, ``W`` the image
  width) filled with ``(125, 123, 114)``. Its centre is drawn as their code draws it,
  ``np.random.uniform(W)``, which is ``uniform(low=W, high=1)``: in ``(1, W]``, not
  ``[0, W)`` (a slip we keep). Corner ``x0 = int(max(0, cx - side / 2))``, far corner
  ``min(W, x0 + side)``, drawn by ``ImageDraw.rectangle`` (inclusive, fractional far
  corners truncated, clipped to the image).

Geometric operations use PIL's defaults as their code does: nearest-neighbour resampling
and black fill. A one-channel (``L``) image is served as well (the bundled digit sets in
tests): the Cutout fill is then PIL's grey value of that colour (123).

Draw order from the generator (:func:`draw_policy`): the two operation indices, then their
two magnitudes, then the Cutout size and its centre ``(cx, cy)``; always the same number of
draws, so a sample's augmentation depends only on its generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

CUTOUT_COLOR = (125, 123, 114)
"""The Cutout fill of the authors' code (RGB)."""
CUTOUT_MAX = 0.5
"""Cutout's side is ``u * CUTOUT_MAX`` of the image width, ``u`` uniform in ``[0, 1)``."""
NUM_OPS = 2
"""Operations per image (their ``RandAugment(2, ...)``)."""


def auto_contrast(image: Image.Image, _: float) -> Image.Image:
    return ImageOps.autocontrast(image)


def brightness(image: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Brightness(image).enhance(v)


def color(image: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Color(image).enhance(v)


def contrast(image: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Contrast(image).enhance(v)


def equalize(image: Image.Image, _: float) -> Image.Image:
    return ImageOps.equalize(image)


def identity(image: Image.Image, _: float) -> Image.Image:
    return image


def posterize(image: Image.Image, v: float) -> Image.Image:
    """Keep ``max(1, int(v))`` bits per channel (``v`` in ``[4, 8)``: 4 to 7 bits)."""
    return ImageOps.posterize(image, max(1, int(v)))


def rotate(image: Image.Image, v: float) -> Image.Image:
    """Rotate by ``v`` degrees counter-clockwise about the centre (nearest, black fill)."""
    return image.rotate(v)


def sharpness(image: Image.Image, v: float) -> Image.Image:
    return ImageEnhance.Sharpness(image).enhance(v)


def shear_x(image: Image.Image, v: float) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, (1, v, 0, 0, 1, 0))


def shear_y(image: Image.Image, v: float) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, (1, 0, 0, v, 1, 0))


def solarize(image: Image.Image, v: float) -> Image.Image:
    """Invert every channel value at or above the threshold ``v``."""
    return ImageOps.solarize(image, v)


def translate_x(image: Image.Image, v: float) -> Image.Image:
    """Shift by ``v`` of the width (the output pixel ``x`` reads input ``x + v * W``)."""
    shift = v * image.size[0]
    return image.transform(image.size, Image.Transform.AFFINE, (1, 0, shift, 0, 1, 0))


def translate_y(image: Image.Image, v: float) -> Image.Image:
    """Shift by ``v`` of the height (the output pixel ``y`` reads input ``y + v * H``)."""
    shift = v * image.size[1]
    return image.transform(image.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, shift))


@dataclass(frozen=True)
class Op:
    """One operation of the policy: its name, magnitude range ``[low, high)``, function."""

    name: str
    low: float
    high: float
    apply: Callable[[Image.Image, float], Image.Image]


OPS: tuple[Op, ...] = (
    Op("AutoContrast", 0, 1, auto_contrast),
    Op("Brightness", 0.05, 0.95, brightness),
    Op("Color", 0.05, 0.95, color),
    Op("Contrast", 0.05, 0.95, contrast),
    Op("Equalize", 0, 1, equalize),
    Op("Identity", 0, 1, identity),
    Op("Posterize", 4, 8, posterize),
    Op("Rotate", -30, 30, rotate),
    Op("Sharpness", 0.05, 0.95, sharpness),
    Op("ShearX", -0.3, 0.3, shear_x),
    Op("ShearY", -0.3, 0.3, shear_y),
    Op("Solarize", 0, 256, solarize),
    Op("TranslateX", -0.3, 0.3, translate_x),
    Op("TranslateY", -0.3, 0.3, translate_y),
)
"""The 14 operations and ranges of the authors' ``augment_list`` (in its order)."""


@dataclass(frozen=True)
class Policy:
    """One image's draw: ``ops`` (operation, magnitude) in order, the Cutout side as a
    fraction of the width, and the Cutout centre ``(cx, cy)`` in pixels."""

    ops: tuple[tuple[Op, float], ...]
    cutout: float
    center: tuple[float, float]


def draw_policy(rng: np.random.Generator, width: int, height: int) -> Policy:
    """Draw one image's operations, magnitudes and Cutout from ``rng`` (see the module
    docstring for the order)."""
    chosen = rng.integers(0, len(OPS), size=NUM_OPS)
    units = rng.random(NUM_OPS)
    ops = tuple(
        (OPS[i], OPS[i].low + (OPS[i].high - OPS[i].low) * float(u))
        for i, u in zip(chosen, units, strict=True)
    )
    size = float(rng.random()) * CUTOUT_MAX
    cx = width + (1 - width) * float(rng.random())  # their np.random.uniform(W)
    cy = height + (1 - height) * float(rng.random())
    return Policy(ops, size, (cx, cy))


def cutout(image: Image.Image, fraction: float, center: tuple[float, float]) -> Image.Image:
    """A copy of ``image`` with a square of side ``fraction * W`` at ``center`` filled with
    :data:`CUTOUT_COLOR` (unchanged when ``fraction <= 0``), as the authors' ``CutoutAbs``."""
    if fraction <= 0:
        return image
    side = fraction * image.size[0]
    width, height = image.size
    x0 = int(max(0, center[0] - side / 2.0))
    y0 = int(max(0, center[1] - side / 2.0))
    x1 = min(width, x0 + side)
    y1 = min(height, y0 + side)
    out = image.copy()
    ImageDraw.Draw(out).rectangle((x0, y0, x1, y1), fill=cutout_fill(image.mode))
    return out


def cutout_fill(mode: str) -> int | tuple[int, ...]:
    """:data:`CUTOUT_COLOR` in image mode ``mode`` (``RGB``: itself; ``L``: its grey)."""
    if mode == "RGB":
        return CUTOUT_COLOR
    return Image.new("RGB", (1, 1), CUTOUT_COLOR).convert(mode).getpixel((0, 0))


def apply_policy(image: Image.Image, policy: Policy) -> Image.Image:
    """``image`` through the drawn operations in order, then Cutout."""
    for op, magnitude in policy.ops:
        image = op.apply(image, magnitude)
    return cutout(image, policy.cutout, policy.center)


def mlkd_rand_augment(image: Image.Image, rng: np.random.Generator) -> Image.Image:
    """The authors' strong augmentation after crop and flip: two random operations, then
    Cutout, drawn from ``rng``."""
    return apply_policy(image, draw_policy(rng, *image.size))


POLICIES: dict[str, Callable[[Image.Image, np.random.Generator], Image.Image]] = {
    "mlkd": mlkd_rand_augment,
}
"""Strong policies by their ``data.strong_view`` name."""
