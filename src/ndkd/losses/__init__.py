"""Pure loss functions: tensors in, tensors out; no parameters, no state, no weights.

Each function names the paper equation it implements and its reduction. Loss math runs in
float32 (float64 inputs stay float64); bf16/fp16 inputs are promoted.
"""

from ndkd.losses.crd import crd_nce_loss, crd_normalizer
from ndkd.losses.direction import cosine_direction_loss, infonce_direction_loss
from ndkd.losses.dist import dist_loss
from ndkd.losses.dkd import dkd_loss
from ndkd.losses.fitnet import hint_loss
from ndkd.losses.kd import hard_distillation_loss, kd_loss
from ndkd.losses.lshfm import lsh_codes, lshfm_loss
from ndkd.losses.nd import nd_loss
from ndkd.losses.norm import l2_feature_loss, sifn_loss
from ndkd.losses.ofd import ofd_loss, ofd_margin
from ndkd.losses.pkt import pkt_loss
from ndkd.losses.reduction import REDUCTIONS, Reduction, reduce_per_sample
from ndkd.losses.reviewkd import hcl_loss
from ndkd.losses.rkd import rkd_loss

__all__ = [
    "REDUCTIONS",
    "Reduction",
    "cosine_direction_loss",
    "crd_nce_loss",
    "crd_normalizer",
    "dist_loss",
    "dkd_loss",
    "hcl_loss",
    "hint_loss",
    "infonce_direction_loss",
    "hard_distillation_loss",
    "kd_loss",
    "l2_feature_loss",
    "lsh_codes",
    "lshfm_loss",
    "nd_loss",
    "ofd_loss",
    "ofd_margin",
    "pkt_loss",
    "reduce_per_sample",
    "rkd_loss",
    "sifn_loss",
]
