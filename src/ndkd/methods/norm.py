"""Feature-norm baselines of the ND paper (Sec. 3.2, Table 4b/c) on the penultimate embedding:
L2 to the teacher's feature (Eq. 3) and stepwise increasing feature norms, SIFN (Eq. 4)."""

from __future__ import annotations

from functools import partial
from typing import Any

import torch

from ndkd.checks import check_count, check_positive
from ndkd.losses.norm import l2_feature_loss, sifn_loss
from ndkd.methods.base import BuildContext, StepOutputs, Term, need_teacher
from ndkd.methods.registry import register
from ndkd.projector import EmbeddingProjector, dim_projector
from ndkd.snapshot import ModelSnapshot

L2_REDUCTIONS = ("batch", "class")
L2_DIMS = ("sum", "mean")


@register("l2")
class L2Term(Term):
    """Eq. 3: ``||f_s - f_t||^2`` (summed over the dims) between the student's and the
    teacher's embeddings of the same image.

    When the dims differ, the student embedding passes through the paper's projector (BN ->
    Dropout -> Linear to the teacher's dim, as the ND term; trained with the student, saved in
    checkpoints). ``reduction``: ``"batch"`` (default) or ``"class"`` (Eq. 3 as written).
    ``dims``: ``"sum"`` over the feature dims (Eq. 3) or their ``"mean"`` (the mean squared
    error of LSHFM's code, whose ``l2`` loss is this term with ``dims: mean``).
    """

    requires_teacher = True

    def __init__(
        self,
        context: BuildContext,
        reduction: str = "batch",
        projector_dropout: float = 0.5,
        dims: str = "sum",
    ) -> None:
        super().__init__()
        if reduction not in L2_REDUCTIONS:
            raise ValueError(f"l2: reduction must be one of {L2_REDUCTIONS}, found {reduction!r}")
        if dims not in L2_DIMS:
            raise ValueError(f"l2: dims must be one of {L2_DIMS}, found {dims!r}")
        if context.teacher_probe is None:
            raise ValueError("l2: compares with the teacher's embedding; set teacher.arch")
        self.projector = dim_projector(
            context.student_probe.embedding.shape[1],
            context.teacher_probe.embedding.shape[1],
            partial(EmbeddingProjector, dropout=projector_dropout),
        )
        self.reduction = reduction
        self.reads_class_labels = reduction == "class"
        self.dims = dims

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        teacher = need_teacher("l2", outputs)
        student = self.projector(outputs.student.embedding)
        labels = outputs.labels if self.reads_class_labels else None
        loss = l2_feature_loss(student, teacher.embedding, labels, self.reduction)
        return loss / student.shape[1] if self.dims == "mean" else loss


class _ResumableSnapshot(ModelSnapshot):
    """A :class:`ModelSnapshot` whose weights and train/eval mode can be saved and restored."""

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self._inner.state_dict(), "training": self._inner.training}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._inner.load_state_dict(state["weights"])
        self._inner.train(state["training"])


@register("sifn")
class SIFNTerm(Term):
    """Eq. 4 (after AFN, Xu et al. 2019): ``(||f_prev(x)|| + step - ||f_cur(x)||)^2``, batch
    mean; pushes the student's embedding norm up by about ``step`` (the paper's ``r``) per
    refresh of the earlier model.

    ``refresh_steps``: ``None`` (default) takes the earlier model as the previous iteration,
    i.e. the current embedding detached, as AFN's reference code does (no extra forward).
    An integer ``k`` keeps a frozen snapshot of the student (:class:`ModelSnapshot`), copied
    from the live student at training steps ``0, k, 2k, ...`` (counted by this term: one per
    training-mode call, i.e. per optimizer step) and run on the step's images.

    Resume: the snapshot's weights, its train/eval mode and the step count are this term's
    extra state (``state_dict``), so a resumed run continues from the very same snapshot and
    the same refresh schedule (the checkpoint holds a second copy of the student's weights).
    """

    def __init__(
        self, context: BuildContext, step: float = 1.0, refresh_steps: int | None = None
    ) -> None:
        super().__init__()
        check_positive("sifn: step", step)
        self.step = step
        self.refresh_steps = refresh_steps
        self.steps_done = 0
        self.snapshot: _ResumableSnapshot | None = None
        if refresh_steps is None:
            return
        check_count("sifn: refresh_steps", refresh_steps)
        if context.student is None:
            raise ValueError("sifn: refresh_steps needs the student model (BuildContext.student)")
        self.snapshot = _ResumableSnapshot(context.student)
        # In a tuple so nn.Module does not register the live student as this term's own.
        self._student = (context.student,)
        # The refresh and the snapshot's forward run eagerly under torch.compile. Wrapped here,
        # not by a decorator, so that importing ndkd does not import torch._dynamo.
        self._eager_previous = torch.compiler.disable(SIFNTerm._previous)

    def forward(self, outputs: StepOutputs) -> torch.Tensor:
        previous = None if self.snapshot is None else self._eager_previous(self, outputs)
        return sifn_loss(outputs.student.embedding, previous, self.step)

    def _previous(self, outputs: StepOutputs) -> torch.Tensor:
        """The snapshot's embedding of the step's images (refreshing it when due)."""
        if outputs.images is None:
            raise ValueError("sifn: refresh_steps needs the step's images (StepOutputs.images)")
        if self.training:
            if self.steps_done % self.refresh_steps == 0:
                self.snapshot.refresh(self._student[0])
            self.steps_done += 1
        return self.snapshot.embedding(outputs.images)

    def get_extra_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {"steps_done": self.steps_done}
        if self.snapshot is not None:
            state["snapshot"] = self.snapshot.state_dict()
        return state

    def set_extra_state(self, state: dict[str, Any]) -> None:
        if (self.snapshot is None) != ("snapshot" not in state):
            raise ValueError("sifn: the checkpoint and this config disagree on refresh_steps")
        self.steps_done = int(state["steps_done"])
        if self.snapshot is not None:
            self.snapshot.load_state_dict(state["snapshot"])
