"""The one output contract every ndkd model follows (see DESIGN.md, "Model output contract")."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class StageInfo:
    """Static description of one intermediate feature map, for sizing method adapters.

    ``channels`` is the channel count of the map and ``stride`` its total downsampling
    factor relative to the network input (1 for a map at input resolution).
    """

    channels: int
    stride: int


@dataclass
class ModelOutput:
    """What a forward pass of an ndkd model returns.

    - ``logits``: classifier output ``[B, C]``.
    - ``embedding``: penultimate feature, the input of the final linear classifier ``[B, D]``.
    - ``stages``: intermediate feature maps ``[B, C_i, H_i, W_i]`` in network order (after
      their activation), as feature-distillation methods consume them.
    - ``preact_stages``: the same maps before their final activation (OFD needs them); same
      length and shapes as ``stages``.
    - ``heads``: further ``[B, C]`` outputs of models with more than one head, by name
      (``dist_logits``: the distillation head of a DeiT with a distillation token).
    """

    logits: torch.Tensor
    embedding: torch.Tensor
    stages: list[torch.Tensor] = field(default_factory=list)
    preact_stages: list[torch.Tensor] = field(default_factory=list)
    heads: dict[str, torch.Tensor] = field(default_factory=dict)
