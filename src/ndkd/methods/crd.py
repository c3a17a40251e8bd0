"""The CRD term (Tian et al., ICLR 2020): NCE against momentum memory banks of embeddings."""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ndkd.checks import check_count, check_fraction, check_positive, promote
from ndkd.losses.crd import crd_nce_loss, crd_normalizer
from ndkd.methods.base import BuildContext, StepOutputs, Term, need_teacher
from ndkd.methods.registry import register


@register("crd")
class CRDTerm(Term):
    """Contrastive representation distillation on the penultimate embeddings.

    Trainable modules: one ``Linear(D, feat_dim)`` head per side (its output L2-normalised),
    sized from the probed dims. Buffers (saved in checkpoints, so a resume is exact): a
    memory bank ``[dataset_size, feat_dim]`` per side, initialised uniform in
    ``+-1/sqrt(feat_dim/3)`` as the authors' code, and the two NCE normalisers ``Z``
    (``-1`` until set from the first batch, then fixed).

    Each step, per sample ``i`` (dataset index ``y_i``), ``negatives`` other dataset indices
    are drawn uniformly without replacement (from the global torch RNG, which checkpoints
    restore); the student embedding is scored against the teacher bank rows
    ``[y_i, negatives]`` and the teacher embedding against the student bank rows, each score
    ``v . m / temperature``, and the term is the sum of the two NCE losses
    (:func:`ndkd.losses.crd.crd_nce_loss`). Then the rows ``y_i`` of each bank move to
    ``momentum * m + (1 - momentum) * v``, renormalised. The reference draws negatives from
    the other classes only ("exact" mode, needing every sample's label); here they are drawn
    from every other sample (about 1% share the class on CIFAR-100).

    Under torchrun every process holds the full banks; the rows written each step are
    all-gathered first (every process must then hold the same batch size, as ndkd's loader
    guarantees), so the banks stay identical across processes.
    """

    requires_teacher = True
    requires_indices = True

    def __init__(
        self,
        context: BuildContext,
        feat_dim: int = 128,
        negatives: int = 16384,
        temperature: float = 0.07,
        momentum: float = 0.5,
    ) -> None:
        super().__init__()
        if context.teacher_probe is None:
            raise ValueError("crd: needs a teacher; set teacher.arch")
        size = context.dataset_size
        if size < 2:
            raise ValueError(f"crd: needs a training set of at least 2 samples, found {size}")
        check_count("crd: feat_dim", feat_dim)
        check_count("crd: negatives", negatives)
        check_positive("crd: temperature", temperature)
        check_fraction("crd: momentum", momentum)
        self.student_head = nn.Linear(context.student_probe.embedding.shape[1], feat_dim)
        self.teacher_head = nn.Linear(context.teacher_probe.embedding.shape[1], feat_dim)
        self.dataset_size = size
        self.negatives = min(negatives, size - 1)
        self.temperature = temperature
        self.momentum = momentum
        bound = 1.0 / math.sqrt(feat_dim / 3.0)
        self.register_buffer("student_bank", (torch.rand(size, feat_dim) * 2 - 1) * bound)
        self.register_buffer("teacher_bank", (torch.rand(size, feat_dim) * 2 - 1) * bound)
        self.register_buffer("normalizers", torch.full((2,), -1.0))

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("crd", outputs)
        if outputs.indices is None:
            raise ValueError(
                "crd: needs the dataset indices of the batch (StepOutputs.indices); the ndkd "
                "engine passes them to terms that set requires_indices"
            )
        batch = outputs.student.embedding.shape[0]
        if outputs.indices.shape != (batch,):
            raise ValueError(
                f"crd: indices must have shape [{batch}], found {tuple(outputs.indices.shape)}"
            )
        indices = outputs.indices.to(self.student_bank.device).long()
        with torch.autocast(indices.device.type, enabled=False):
            v_s = F.normalize(self.student_head(promote(outputs.student.embedding)), dim=1)
            v_t = F.normalize(self.teacher_head(promote(teacher.embedding.detach())), dim=1)
            contrast = self.sample_contrast(indices)
            # Score against copies: the banks are updated in place below, before backward.
            logits_s = self._scores(v_s, self.teacher_bank.clone(), contrast)
            logits_t = self._scores(v_t, self.student_bank.clone(), contrast)
            z = self._normalizers(logits_s, logits_t)
            loss = crd_nce_loss(logits_s, z[0], self.dataset_size) + crd_nce_loss(
                logits_t, z[1], self.dataset_size
            )
            self._update_banks(indices, v_s.detach(), v_t.detach())
        return loss

    def sample_contrast(self, indices: torch.Tensor) -> torch.Tensor:
        """``[B, 1 + K]`` dataset indices: each sample's own, then K distinct others."""
        weights = torch.ones(indices.shape[0], self.dataset_size, device=indices.device)
        weights.scatter_(1, indices.unsqueeze(1), 0.0)
        negatives = torch.multinomial(weights, self.negatives, replacement=False)
        return torch.cat([indices.unsqueeze(1), negatives], dim=1)

    def _scores(self, v: torch.Tensor, bank: torch.Tensor, contrast: torch.Tensor) -> torch.Tensor:
        """``v_i . bank[contrast_ij] / T`` ``[B, 1 + K]`` via one ``[B, N]`` product (no
        ``[B, K, feat_dim]`` gather)."""
        return (v @ bank.t()).gather(1, contrast) / self.temperature

    def _normalizers(self, logits_s: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
        """The stored ``Z`` pair, set from this batch where still unset (no host sync)."""
        estimate = torch.stack(
            [
                crd_normalizer(logits_s, self.dataset_size),
                crd_normalizer(logits_t, self.dataset_size),
            ]
        )
        z = torch.where(self.normalizers > 0, self.normalizers, estimate)
        self.normalizers.copy_(z)
        return z

    @torch.no_grad()
    def _update_banks(self, indices: torch.Tensor, v_s: torch.Tensor, v_t: torch.Tensor) -> None:
        """Momentum update of the batch's rows, renormalised to unit length."""
        indices, v_s, v_t = _from_every_process(indices, v_s, v_t)
        for bank, v in ((self.student_bank, v_s), (self.teacher_bank, v_t)):
            rows = bank.index_select(0, indices) * self.momentum + v * (1.0 - self.momentum)
            bank.index_copy_(0, indices, F.normalize(rows, dim=1))


def _from_every_process(*tensors: torch.Tensor) -> list[torch.Tensor]:
    """Each tensor concatenated over the processes (itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return list(tensors)
    gathered = []
    for x in tensors:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        gathered.append(torch.cat(parts))
    return gathered
