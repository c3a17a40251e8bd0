"""The optimizer of a run: SGD or AdamW over the trained modules at the effective learning
rate, with optional weight-decay exclusions."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
from torch import nn

from ndkd.engine.settings import LoopSettings

log = logging.getLogger(__name__)


def effective_lr(settings: LoopSettings) -> float:
    """The learning rate the run uses: ``lr`` itself when ``lr_reference_batch`` is 0, else
    ``lr * batch_size / lr_reference_batch`` (the linear scaling rule; ``batch_size`` is the
    total batch over all processes)."""
    if not settings.lr_reference_batch:
        return settings.lr
    return settings.lr * settings.batch_size / settings.lr_reference_batch


def build_optimizer(modules: Sequence[nn.Module], settings: LoopSettings) -> torch.optim.Optimizer:
    """``settings.optimizer`` (``sgd``: momentum, Nesterov; ``adamw``: ``betas``) over the
    trainable parameters of ``modules``, in their order, at :func:`effective_lr`.

    Every parameter decays by ``weight_decay`` in one group (``decay_norms_and_biases``
    true), or two groups split by :func:`weight_decay_groups` (false).
    """
    lr = effective_lr(settings)
    if settings.lr_reference_batch:
        log.info(
            "learning rate %g = lr %g x batch %d / reference batch %d",
            lr,
            settings.lr,
            settings.batch_size,
            settings.lr_reference_batch,
        )
    groups: list[torch.Tensor] | list[dict]
    if settings.decay_norms_and_biases:
        groups = [p for module in modules for p in module.parameters() if p.requires_grad]
    else:
        groups = weight_decay_groups(modules, settings.weight_decay)
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            groups,
            lr=lr,
            momentum=settings.momentum,
            nesterov=settings.nesterov,
            weight_decay=settings.weight_decay,
        )
    if settings.optimizer == "adamw":
        beta1, beta2 = settings.betas
        return torch.optim.AdamW(
            groups, lr=lr, betas=(beta1, beta2), weight_decay=settings.weight_decay
        )
    raise ValueError(f"unknown optimizer {settings.optimizer!r}; expected sgd or adamw")


def weight_decay_groups(modules: Sequence[nn.Module], weight_decay: float) -> list[dict]:
    """Parameter groups without weight decay on every parameter of at most one dimension
    (normalization weights, biases) and on those a submodule names in ``no_weight_decay()``
    (timm's convention: position embeddings, class and distillation tokens; fnmatch patterns
    allowed), and with ``weight_decay`` on the rest (timm's ``param_groups_weight_decay``).
    A parameter shared by several modules appears once."""
    try:
        from timm.optim import param_groups_weight_decay
    except ImportError as error:
        raise ImportError(
            "train.decay_norms_and_biases=false uses timm's parameter groups; install the "
            "timm extra (pip install 'ndkd[timm]')"
        ) from error
    root = nn.ModuleDict({str(i): module for i, module in enumerate(modules)})
    return param_groups_weight_decay(
        root, weight_decay, no_weight_decay_list=sorted(_no_weight_decay_names(root))
    )


def _no_weight_decay_names(root: nn.Module) -> set[str]:
    """The names (patterns) every submodule's ``no_weight_decay()`` returns, prefixed with the
    submodule's path in ``root``."""
    names: set[str] = set()
    for path, module in root.named_modules():
        listed = getattr(module, "no_weight_decay", None)
        if callable(listed):
            names.update(f"{path}.{name}" if path else name for name in listed())
    return names


def trained_parameters(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Every parameter ``optimizer`` steps, group after group."""
    return [p for group in optimizer.param_groups for p in group["params"]]
