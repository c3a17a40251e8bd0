"""A frozen model's inference copy with each BatchNorm folded into the convolution before it.

In eval mode a BatchNorm is a fixed per-channel affine map, so ``bn(conv(x))`` equals one
convolution with rescaled weights and a bias: the same outputs (up to float rounding) for
one pass over the activations less. The frozen teacher runs this copy every training step.
"""

from __future__ import annotations

import logging

from torch import nn
from torch.fx.experimental.optimization import fuse

log = logging.getLogger(__name__)


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (which must be in eval mode) with every Conv -> BatchNorm pair
    folded into one convolution, parameters frozen; ``model`` itself is left untouched.

    Needs a model that ``torch.fx`` can trace symbolically (every ndkd zoo model can); for
    one that it cannot, ``model`` is returned as it is, and a log line says so. BatchNorms
    not directly after a convolution (e.g. pre-activation blocks) are kept.

    Raises:
        ValueError: ``model`` is in training mode (its BatchNorms are not fixed maps then).
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (model.eval())")
    try:
        folded = fuse(model, inplace=False)
    except Exception as error:  # symbolic tracing refuses data-dependent control flow
        log.info("%s: BatchNorm not folded (%s)", type(model).__name__, error)
        return model
    return folded.eval().requires_grad_(False)
