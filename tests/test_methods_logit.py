"""DKD and DIST: the losses against their papers' definitions, the terms, and the recipes."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ndkd import ModelOutput
from ndkd.config import TermConfig, load_config
from ndkd.losses.dist import dist_loss
from ndkd.losses.dkd import dkd_loss
from ndkd.methods import BuildContext, Distiller, StepOutputs, term_parameters

ROOT = Path(__file__).resolve().parents[1]

# --- DKD ------------------------------------------------------------------------------------


def softmax_list(z, temperature):
    top = max(z)
    e = [math.exp((v - top) / temperature) for v in z]
    return [v / sum(e) for v in e]


def kl_list(p, q):
    return sum(a * math.log(a / b) for a, b in zip(p, q) if a > 0)


def reference_dkd(student, teacher, labels, alpha, beta, temperature):
    """Zhao et al.: TCKD on (p_y, 1 - p_y), NCKD on p_j / (1 - p_y), j != y; per sample."""
    total = 0.0
    for zs, zt, y in zip(student.tolist(), teacher.tolist(), labels.tolist()):
        ps, pt = softmax_list(zs, temperature), softmax_list(zt, temperature)
        tckd = kl_list([pt[y], 1 - pt[y]], [ps[y], 1 - ps[y]])
        qs = [v / (1 - ps[y]) for j, v in enumerate(ps) if j != y]
        qt = [v / (1 - pt[y]) for j, v in enumerate(pt) if j != y]
        total += (alpha * tckd + beta * kl_list(qt, qs)) * temperature**2
    return total / len(labels)


def public_dkd(student, teacher, labels, alpha, beta, temperature):
    """The public code's formulation: log of summed softmax masses, -1000 on the target."""
    target = F.one_hot(labels, student.shape[1]).bool()
    ps, pt = F.softmax(student / temperature, 1), F.softmax(teacher / temperature, 1)

    def binary(p):
        return torch.stack([p[target], p.masked_fill(target, 0).sum(1)], 1)

    tckd = F.kl_div(torch.log(binary(ps)), binary(pt), reduction="sum")
    nckd = F.kl_div(
        F.log_softmax(student / temperature - 1000.0 * target, 1),
        F.softmax(teacher / temperature - 1000.0 * target, 1),
        reduction="sum",
    )
    return (alpha * tckd + beta * nckd) * temperature**2 / len(labels)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("classes", [2, 3, 10])
def test_dkd_matches_definition(classes, temperature):
    s = torch.randn(7, classes, dtype=torch.float64) * 3
    t = torch.randn(7, classes, dtype=torch.float64) * 3
    y = torch.randint(0, classes, (7,))
    got = dkd_loss(s, t, y, 1.5, 6.0, temperature).item()
    assert got == pytest.approx(reference_dkd(s, t, y, 1.5, 6.0, temperature), rel=1e-9)


def test_dkd_matches_public_formulation_on_moderate_logits():
    s, t = torch.randn(16, 100) * 2, torch.randn(16, 100) * 2
    y = torch.randint(0, 100, (16,))
    torch.testing.assert_close(dkd_loss(s, t, y, 1.0, 8.0, 4.0), public_dkd(s, t, y, 1.0, 8.0, 4.0))


def test_dkd_two_classes_has_no_nckd_and_is_finite():
    s = torch.randn(6, 2, requires_grad=True)
    t, y = torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 1, 0])
    loss = dkd_loss(s, t, y, 1.0, 8.0, 4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    torch.testing.assert_close(loss, dkd_loss(s, t, y, 1.0, 0.0, 4.0))
    assert dkd_loss(s, t, y, 0.0, 8.0, 4.0).item() == 0.0


def test_dkd_saturated_logits_are_finite_and_exact():
    # Teacher sure of the label, student sure of another class (T = 1):
    # TCKD = 1e4 (student log p_y = -1e4), NCKD = KL(uniform(2) || (1, 0)) = 5e3 - log 2.
    s = torch.tensor([[0.0, 1e4, 0.0]], requires_grad=True)
    t = torch.tensor([[1e4, 0.0, 0.0]])
    loss = dkd_loss(s, t, torch.tensor([0]), 1.0, 1.0, 1.0)
    loss.backward()
    assert loss.item() == pytest.approx(1e4 + 5e3 - math.log(2), rel=1e-6)
    assert torch.isfinite(s.grad).all()
    same = torch.tensor([[3e4, -3e4, 0.0, 5.0]], requires_grad=True)
    loss = dkd_loss(same, same.detach(), torch.tensor([0]), 1.0, 8.0, 4.0)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-6) and torch.isfinite(same.grad).all()


def test_dkd_gradcheck_teacher_constant_and_reductions():
    s = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 6, dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 5, 2, 2])
    assert torch.autograd.gradcheck(lambda x: dkd_loss(x, t, y, 2.0, 3.0, 4.0), (s,))
    dkd_loss(s, t, y, 1.0, 8.0, 4.0).backward()
    assert t.grad is None
    per = dkd_loss(s, t, y, 1.0, 8.0, 4.0, reduction="none")
    assert per.shape == (4,)
    torch.testing.assert_close(per.mean(), dkd_loss(s, t, y, 1.0, 8.0, 4.0))
    balanced = dkd_loss(s, t, y, 1.0, 8.0, 4.0, reduction="class")
    torch.testing.assert_close(balanced, (per[0] + per[1] + (per[2] + per[3]) / 2) / 3)
    assert dkd_loss(s.bfloat16(), t.bfloat16(), y, 1.0, 8.0, 4.0).dtype == torch.float32


def test_dkd_refusals():
    s, y = torch.randn(4, 10), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"\(4, 10\).*\(4, 100\)"):
        dkd_loss(s, torch.randn(4, 100), y, 1.0, 8.0, 4.0)
    with pytest.raises(ValueError, match="at least 2 classes, found 1"):
        dkd_loss(torch.randn(4, 1), torch.randn(4, 1), y, 1.0, 8.0, 4.0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        dkd_loss(s, s, y, 1.0, 8.0, 0.0)
    with pytest.raises(ValueError, match="non-negative"):
        dkd_loss(s, s, y, -1.0, 8.0, 4.0)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 9\]"):
        dkd_loss(s, s, torch.tensor([0, 1, 2, 10]), 1.0, 8.0, 4.0)


# --- DIST -----------------------------------------------------------------------------------


def pearson_list(a, b, eps=1e-8):
    ma, mb = sum(a) / len(a), sum(b) / len(b)
    cov = sum((x - ma) * (z - mb) for x, z in zip(a, b))
    norm_a = math.sqrt(sum((x - ma) ** 2 for x in a))
    norm_b = math.sqrt(sum((z - mb) ** 2 for z in b))
    return cov / (norm_a * norm_b + eps)


def reference_dist(student, teacher, beta, gamma, temperature):
    """Huang et al.: 1 - Pearson per sample (over classes) and per class (over the batch)."""
    ps = [softmax_list(z, temperature) for z in student.tolist()]
    pt = [softmax_list(z, temperature) for z in teacher.tolist()]
    inter = sum(1 - pearson_list(a, b) for a, b in zip(ps, pt)) / len(ps)
    columns = range(len(ps[0]))
    intra = sum(
        1 - pearson_list([row[j] for row in ps], [row[j] for row in pt]) for j in columns
    ) / len(columns)
    return temperature**2 * (beta * inter + gamma * intra)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
@pytest.mark.parametrize("shape", [(2, 3), (8, 10), (5, 100)])
def test_dist_matches_definition(shape, temperature):
    s = torch.randn(*shape, dtype=torch.float64) * 2
    t = torch.randn(*shape, dtype=torch.float64) * 2
    got = dist_loss(s, t, 1.5, 0.5, temperature).item()
    assert got == pytest.approx(reference_dist(s, t, 1.5, 0.5, temperature), rel=1e-9)


def test_dist_is_zero_for_identical_predictions_and_teacher_is_constant():
    s = torch.randn(6, 10, dtype=torch.float64, requires_grad=True)
    t = s.detach().clone().requires_grad_()
    assert dist_loss(s, t, 1.0, 1.0, 4.0, eps=0.0).item() == pytest.approx(0.0, abs=1e-12)
    assert 0 < dist_loss(s, t, 1.0, 1.0, 4.0).item() < 1e-3  # the eps of the denominators
    assert torch.autograd.gradcheck(lambda x: dist_loss(x, t, 2.0, 1.0, 4.0), (s * 1.5,))
    dist_loss(s * 1.5, t, 1.0, 1.0, 4.0).backward()
    assert t.grad is None and s.grad is not None


def test_dist_zero_variance_rows_and_columns_are_finite():
    # Row 0 of the student is uniform (zero variance over classes); every row of the teacher
    # is the same (zero variance over the batch): both correlations are 0, not NaN.
    s = torch.randn(4, 5, dtype=torch.float64)
    s[0] = 0.7
    s.requires_grad_()
    t = torch.randn(1, 5, dtype=torch.float64).expand(4, 5)
    loss = dist_loss(s, t, 1.0, 1.0, 4.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()
    assert loss.item() == pytest.approx(reference_dist(s, t, 1.0, 1.0, 4.0), rel=1e-9)
    assert loss.item() == pytest.approx(reference_dist(s, t, 1.0, 0.0, 4.0) + 16.0, rel=1e-9)


def test_dist_single_sample_has_no_intra_term():
    s = torch.randn(1, 10, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, 10, dtype=torch.float64)
    loss = dist_loss(s, t, 1.0, 5.0, 4.0)
    loss.backward()
    expected = 16.0 * (
        1 - pearson_list(softmax_list(s[0].tolist(), 4), softmax_list(t[0].tolist(), 4))
    )
    assert loss.item() == pytest.approx(expected, rel=1e-9)
    assert torch.isfinite(s.grad).all()
    assert dist_loss(s[:0], t[:0], 1.0, 1.0, 4.0).item() == 0.0


def test_dist_refusals_and_fp32():
    s = torch.randn(4, 10)
    assert dist_loss(s.bfloat16(), s.bfloat16(), 1.0, 1.0, 4.0).dtype == torch.float32
    with pytest.raises(ValueError, match=r"\(4, 10\).*\(4, 100\)"):
        dist_loss(s, torch.randn(4, 100), 1.0, 1.0, 4.0)
    with pytest.raises(ValueError, match="temperature must be positive"):
        dist_loss(s, s, 1.0, 1.0, -1.0)
    with pytest.raises(ValueError, match="non-negative"):
        dist_loss(s, s, 1.0, -1.0, 4.0)


# --- terms ----------------------------------------------------------------------------------


class TinyNet(nn.Module):
    def __init__(self, dim: int, classes: int) -> None:
        super().__init__()
        self.body, self.head = nn.Linear(dim, 16), nn.Linear(16, classes)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        embedding = torch.relu(self.body(x))
        return ModelOutput(self.head(embedding), embedding)


TERMS = {  # the loss's own parameters; dkd also takes standardize (test_methods_beyond.py)
    "dkd": ({"alpha": 1.0, "beta": 8.0, "temperature": 4.0}, dkd_loss),
    "dist": ({"beta": 1.0, "gamma": 1.0, "temperature": 4.0}, dist_loss),
}


@pytest.mark.parametrize("name", sorted(TERMS))
def test_term_defaults_weight_warmup_and_refusal(name):
    defaults, loss = TERMS[name]
    extra = {"standardize": False} if name == "dkd" else {}
    assert term_parameters(name) == {**defaults, **extra}
    student = ModelOutput(torch.randn(6, 4), torch.randn(6, 3))
    teacher = ModelOutput(torch.randn(6, 4), torch.randn(6, 3))
    labels = torch.arange(6) % 4
    method = Distiller([TermConfig(name, 2.0, 20)], BuildContext(4, student, teacher))
    assert method.requires_teacher
    step = StepOutputs(student, teacher, labels)
    args = (labels,) if name == "dkd" else ()
    expected = loss(student.logits, teacher.logits, *args, *defaults.values())
    torch.testing.assert_close(method(step, 10)[name], 2.0 * 0.5 * expected)
    wide = ModelOutput(torch.randn(6, 10), torch.randn(6, 3))
    with pytest.raises(
        ValueError, match=f"{name}: the student has 4 classes but the teacher has 10"
    ):
        Distiller([TermConfig(name, 1.0)], BuildContext(4, student, wide))
    with pytest.raises(ValueError, match="temperature must be positive"):
        Distiller(
            [TermConfig(name, 1.0, 0, {"temperature": 0.0})], BuildContext(4, student, teacher)
        )
    with pytest.raises(ValueError, match="needs a teacher"):
        Distiller([TermConfig(name, 1.0)], BuildContext(4, student))(
            StepOutputs(student, None, labels), 0
        )


def train_towards_teacher(
    name: str, params: dict | None = None, steps: int = 40
) -> tuple[list[float], torch.Tensor, torch.Tensor]:
    """Train a TinyNet student with the term ``name`` (``params``) alone towards a fixed
    TinyNet teacher (its logits x3) on 32 random samples of 5 classes, SGD ``steps`` times;
    the loss of each step, the teacher's logits and the labels."""
    torch.manual_seed(0)
    images, labels = torch.randn(32, 8), torch.randint(0, 5, (32,))
    teacher_out = TinyNet(8, 5)(images)
    teacher_out = ModelOutput(teacher_out.logits.detach() * 3, teacher_out.embedding.detach())
    student = TinyNet(8, 5)
    term = TermConfig(name, 1.0, 0, params or {})
    method = Distiller([term], BuildContext(5, student(images[:2]), teacher_out))
    optimizer = torch.optim.SGD(student.parameters(), lr=0.05, momentum=0.9)
    history = []
    for _ in range(steps):
        loss = method(StepOutputs(student(images), teacher_out, labels), 0)[name]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        history.append(loss.item())
    return history, teacher_out.logits, labels


@pytest.mark.parametrize("name", sorted(TERMS))
def test_term_trains_a_student_towards_the_teacher(name):
    history, _, _ = train_towards_teacher(name)
    assert all(math.isfinite(v) for v in history)
    assert history[-1] < 0.5 * history[0]


# --- recipes --------------------------------------------------------------------------------

# From the ND paper's public scripts (CIFAR/train_cifar.sh, CIFAR/DIST++/train_dist.sh):
# DKD++: (alpha, beta, nd weight); DIST++: (dist weight, nd weight).
DKD_PP = {
    "resnet56_resnet20": (2.5, 4.0, 3.5),
    "resnet32x4_resnet8x4": (2.0, 8.0, 0.5),
    "wrn_40_2_wrn_40_1": (1.0, 6.0, 1.0),
    "resnet50_cifar_mobilenetv2": (0.5, 8.0, 1.0),
    "resnet32x4_shufflenetv1": (0.5, 8.0, 4.0),
    "resnet32x4_shufflenetv2": (0.5, 6.0, 0.5),
}
DIST_PP = {
    "resnet56_resnet20": (2.0, 1.0),
    "resnet32x4_resnet8x4": (1.5, 4.0),
    "wrn_40_2_wrn_40_1": (2.5, 3.0),
    "resnet50_cifar_mobilenetv2": (7.0, 1.0),
    "resnet32x4_shufflenetv1": (2.5, 3.0),
    "resnet32x4_shufflenetv2": (3.0, 4.0),
}


def expected_terms(method: str, stem: str) -> list[tuple[str, float, float, dict]]:
    if method.split("/")[-1].startswith("dkd"):
        alpha, beta, nd = DKD_PP[stem]
        logit = ("dkd", 1.0, 20, {"alpha": alpha, "beta": beta, "temperature": 4.0})
    else:
        weight, nd = DIST_PP[stem]
        logit = ("dist", weight, 20, {"beta": 1.0, "gamma": 1.0, "temperature": 4.0})
    terms = [("ce", 1.0, 0, {}), logit]
    return terms + [("nd", nd, 0, {})] if method.endswith("++") else terms


@pytest.mark.parametrize("method", ["controlled/dkd", "dkd++", "controlled/dist", "dist++"])
@pytest.mark.parametrize("stem", sorted(DKD_PP))
def test_plus_plus_and_controlled_recipes_carry_the_nd_codes_weights(method, stem):
    path = ROOT / "configs" / "cifar100" / method / f"{stem}.yaml"
    config = load_config(path)
    got = [(t.name, t.weight, t.warmup_epochs, t.params) for t in config.terms]
    assert got == expected_terms(method, stem)
    assert config.output_dir == f"runs/cifar100/{method}/{stem}/seed{config.seed}"
    kdpp = load_config(ROOT / "configs" / "cifar100" / "kd++" / f"{stem}.yaml")
    same_otherwise = dataclasses.replace(
        config, terms=kdpp.terms, output_dir=kdpp.output_dir, recipe=kdpp.recipe
    )
    assert same_otherwise == kdpp
    header = path.read_text().splitlines()[0]
    family = "Controlled " if method.startswith("controlled/") else ""
    assert header.startswith(f"# {family}{method.split('/')[-1].upper()} on CIFAR-100, ")
