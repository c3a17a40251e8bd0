"""RKD, PKT, CRD and LSHFM: losses against loops written from the papers, their terms'
modules and state, and a few training steps of each term."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ndkd import ModelOutput
from ndkd.config import TermConfig, load_config
from ndkd.losses.crd import crd_nce_loss, crd_normalizer
from ndkd.losses.lshfm import hash_offsets, lsh_codes, lshfm_loss
from ndkd.losses.pkt import pkt_loss
from ndkd.losses.rkd import rkd_loss
from ndkd.methods import BuildContext, Distiller, StepOutputs, build_term, term_parameters
from ndkd.models import create_model

ROOT = Path(__file__).resolve().parents[1]
STEMS = [p.stem for p in sorted((ROOT / "configs" / "cifar100" / "kd++").glob("*.yaml"))]


def huber(x: float) -> float:
    return 0.5 * x * x if abs(x) < 1 else abs(x) - 0.5


def norm(v: list[float]) -> float:
    return math.sqrt(sum(a * a for a in v))


def rkd_reference(s: torch.Tensor, t: torch.Tensor, w_d: float, w_a: float) -> float:
    """Eq. 3-7 of Park et al. with explicit loops over pairs and triplets."""

    def distances(x):
        n = len(x)
        d = [[norm([a - b for a, b in zip(x[i], x[j])]) for j in range(n)] for i in range(n)]
        mu = sum(d[i][j] for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
        return [[d[i][j] / mu for j in range(n)] for i in range(n)]

    def cosines(x):
        n = len(x)
        unit = {}
        for i in range(n):
            for j in range(n):
                v = [b - a for a, b in zip(x[i], x[j])]
                length = norm(v)
                unit[i, j] = [a / length for a in v] if i != j else [0.0] * len(v)
        return {
            (i, j, k): sum(a * b for a, b in zip(unit[i, j], unit[i, k]))
            for i in range(n)
            for j in range(n)
            for k in range(n)
        }

    xs, xt = s.tolist(), t.tolist()
    n = len(xs)
    ds, dt = distances(xs), distances(xt)
    loss_d = sum(huber(ds[i][j] - dt[i][j]) for i in range(n) for j in range(n)) / n**2
    cs, ct = cosines(xs), cosines(xt)
    loss_a = sum(huber(cs[key] - ct[key]) for key in cs) / n**3
    return w_d * loss_d + w_a * loss_a


def pkt_reference(s: torch.Tensor, t: torch.Tensor, eps: float = 1e-7) -> float:
    """Passalis & Tefas, Eq. 7-8 with the cosine kernel, KL(teacher || student) per row."""

    def probabilities(x):
        rows = [[a / (norm(v) + eps) for a in v] for v in x]
        kernel = [[(1 + sum(a * b for a, b in zip(u, w))) / 2 for w in rows] for u in rows]
        return [[k / sum(row) for k in row] for row in kernel]

    ps, pt = probabilities(s.tolist()), probabilities(t.tolist())
    n = len(ps)
    total = sum(
        pt[i][j] * math.log((pt[i][j] + eps) / (ps[i][j] + eps)) for i in range(n) for j in range(n)
    )
    return total / n**2


def test_rkd_matches_loops_over_pairs_and_triplets():
    s, t = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, 4, dtype=torch.float64) * 3
    for w_d, w_a in [(25.0, 50.0), (1.0, 0.0), (0.0, 1.0)]:
        expected = rkd_reference(s, t, w_d, w_a)
        assert rkd_loss(s, t, w_d, w_a).item() == pytest.approx(expected, rel=1e-10)
    # relations are invariant to scale and translation of either side
    assert rkd_loss(2 * t + 1, t).item() == pytest.approx(0.0, abs=1e-12)


def test_pkt_matches_loops_and_is_zero_for_scaled_teacher():
    s, t = torch.randn(6, 3, dtype=torch.float64), torch.rand(6, 5, dtype=torch.float64)
    assert pkt_loss(s, t).item() == pytest.approx(pkt_reference(s, t), rel=1e-10)
    assert pkt_loss(3 * t, t).item() == pytest.approx(0.0, abs=1e-12)


def test_rkd_pkt_lsh_gradients_match_finite_differences():
    s = torch.randn(5, 3, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 4, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: rkd_loss(x, t), (s,))
    assert torch.autograd.gradcheck(lambda x: pkt_loss(x, t), (s,))
    w, b = torch.randn(7, 3, dtype=torch.float64), torch.randn(7, dtype=torch.float64)
    teacher = torch.randn(5, 3, dtype=torch.float64)
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: lshfm_loss(x, teacher, w, b, True, mask), (s,))


def test_relation_losses_stay_float32_under_autocast():
    s, t = torch.randn(16, 32), torch.randn(16, 48)
    w, b = torch.randn(64, 32), torch.randn(64)
    t_same = torch.randn(16, 32)
    cases = [
        lambda: rkd_loss(s, t),
        lambda: pkt_loss(s, t),
        lambda: lshfm_loss(s, t_same, w, b),
    ]
    for case in cases:
        exact = case()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = case()
        assert mixed.dtype == torch.float32
        torch.testing.assert_close(mixed, exact, rtol=1e-5, atol=1e-7)


def test_relation_losses_refuse_mismatched_batches():
    with pytest.raises(ValueError, match="same batch, found 4 and 5 rows"):
        rkd_loss(torch.randn(4, 3), torch.randn(5, 3))
    with pytest.raises(ValueError, match="must be 2-D"):
        pkt_loss(torch.randn(4), torch.randn(4, 3))
    with pytest.raises(ValueError, match="hyperplanes must be weight"):
        lshfm_loss(torch.randn(4, 3), torch.randn(4, 3), torch.randn(6, 2), torch.zeros(6))


# ------------------------------------------------------------------------------------ CRD
def nce_reference(logits: torch.Tensor, z: float, n_data: int, eps: float = 1e-7) -> float:
    """CRD's NCE objective, one sample and one noise draw at a time."""
    k = logits.shape[1] - 1
    noise = k / n_data
    total = 0.0
    for row in logits.tolist():
        p = [math.exp(x) / z for x in row]
        total += math.log(p[0] / (p[0] + noise + eps))
        total += sum(math.log(noise / (q + noise + eps)) for q in p[1:])
    return -total / logits.shape[0]


def test_crd_nce_loss_matches_per_sample_loop():
    logits = torch.randn(4, 9, dtype=torch.float64) * 5
    z = crd_normalizer(logits, 50).item()
    assert z == pytest.approx(50 * sum(math.exp(x) for x in logits.flatten().tolist()) / 36)
    assert crd_nce_loss(logits, z, 50).item() == pytest.approx(nce_reference(logits, z, 50))
    with pytest.raises(ValueError, match="at least one negative"):
        crd_nce_loss(logits[:, :1], z, 50)


def crd_setup(batch=6, size=20, s_dim=5, t_dim=7, **params):
    student = ModelOutput(torch.randn(batch, 10), torch.randn(batch, s_dim))
    teacher = ModelOutput(torch.randn(batch, 10), torch.randn(batch, t_dim))
    context = BuildContext(10, student, teacher, dataset_size=size)
    term = build_term("crd", context, {"feat_dim": 4, "negatives": 8, **params})
    labels = torch.zeros(batch, dtype=torch.long)
    return term, context, lambda idx: StepOutputs(student, teacher, labels, indices=idx)


def test_crd_term_scores_normalizer_and_memory_update_match_loops():
    term, _, step = crd_setup(momentum=0.3)
    outputs = step(torch.tensor([3, 0, 17, 9, 4, 12]))
    banks = {name: getattr(term, name).clone() for name in ("student_bank", "teacher_bank")}
    torch.manual_seed(7)
    contrast = term.sample_contrast(outputs.indices)
    torch.manual_seed(7)
    loss = term(outputs)

    assert contrast.shape == (6, 9) and contrast[:, 0].tolist() == outputs.indices.tolist()
    for row in contrast.tolist():
        assert len(set(row)) == 9 and all(0 <= j < 20 for j in row)  # distinct, positive once
    with torch.no_grad():
        v_s = F.normalize(term.student_head(outputs.student.embedding), dim=1)
        v_t = F.normalize(term.teacher_head(outputs.teacher.embedding), dim=1)
    logits_s = torch.tensor(
        [
            [float(banks["teacher_bank"][j] @ v_s[i]) / 0.07 for j in row]
            for i, row in enumerate(contrast.tolist())
        ]
    )
    logits_t = torch.tensor(
        [
            [float(banks["student_bank"][j] @ v_t[i]) / 0.07 for j in row]
            for i, row in enumerate(contrast.tolist())
        ]
    )
    z_s = 20 * logits_s.exp().mean().item()
    z_t = 20 * logits_t.exp().mean().item()
    assert term.normalizers.tolist() == pytest.approx([z_s, z_t], rel=1e-5)
    expected = nce_reference(logits_s, z_s, 20) + nce_reference(logits_t, z_t, 20)
    assert loss.item() == pytest.approx(expected, rel=1e-5)

    for name, v in (("student_bank", v_s), ("teacher_bank", v_t)):
        old, new = banks[name], getattr(term, name)
        for row in range(20):
            if row in outputs.indices.tolist():
                i = outputs.indices.tolist().index(row)
                mixed = [0.3 * a + 0.7 * b for a, b in zip(old[row].tolist(), v[i].tolist())]
                expected_row = [a / norm(mixed) for a in mixed]
                assert new[row].tolist() == pytest.approx(expected_row, rel=1e-5)
            else:
                assert torch.equal(new[row], old[row])
    z_before = term.normalizers.clone()
    term(step(torch.tensor([1, 2, 5, 6, 7, 8])))
    assert torch.equal(term.normalizers, z_before)  # Z is set once


def test_crd_state_round_trip_reproduces_the_next_loss():
    term, context, step = crd_setup()
    for idx in ([0, 1, 2, 3, 4, 5], [6, 7, 8, 9, 10, 11]):
        term(step(torch.tensor(idx))).backward()
    state = {k: v.clone() for k, v in term.state_dict().items()}
    assert {"student_bank", "teacher_bank", "normalizers"} <= set(state)
    rng = torch.get_rng_state()
    next_step = step(torch.tensor([12, 13, 14, 15, 16, 17]))
    expected = term(next_step)

    torch.manual_seed(123)  # a fresh term starts from other random banks and heads
    fresh = build_term("crd", context, {"feat_dim": 4, "negatives": 8})
    assert not torch.equal(fresh.student_bank, state["student_bank"])
    fresh.load_state_dict(state)
    torch.set_rng_state(rng)
    assert torch.equal(fresh(next_step), expected)


def test_crd_parameters_and_refusals():
    assert term_parameters("crd") == {
        "feat_dim": 128,
        "negatives": 16384,
        "temperature": 0.07,
        "momentum": 0.5,
    }
    term, context, step = crd_setup(size=5, negatives=16384)
    assert term.negatives == 4  # capped at dataset_size - 1
    assert term.requires_indices and term.student_bank.shape == (5, 4)
    with pytest.raises(ValueError, match="needs the dataset indices"):
        term(step(None))
    with pytest.raises(ValueError, match="at least 2 samples"):
        build_term("crd", BuildContext(10, context.student_probe, context.teacher_probe), {})


# ---------------------------------------------------------------------------------- LSHFM
def test_lsh_codes_and_lshfm_loss_match_hand_computation():
    torch.manual_seed(3)
    s, t = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    w, b = torch.randn(5, 3, dtype=torch.float64), torch.randn(5, dtype=torch.float64)
    bits = [
        [1.0 if sum(w[n, d] * t[i, d] for d in range(3)) + b[n] > 0 else 0.0 for n in range(5)]
        for i in range(4)
    ]
    assert lsh_codes(t, w, b).tolist() == bits
    per_sample = []
    for i in range(4):
        bce = 0.0
        for n in range(5):
            z = float(sum(w[n, d] * s[i, d] for d in range(3)) + b[n])
            p = 1 / (1 + math.exp(-z))
            bce -= bits[i][n] * math.log(p) + (1 - bits[i][n]) * math.log(1 - p)
        mse = sum(float(s[i, d] - t[i, d]) ** 2 for d in range(3)) / 3
        per_sample.append((mse, bce / 5))
    plain = sum(m + h for m, h in per_sample) / 4
    assert lshfm_loss(s, t, w, b).item() == pytest.approx(plain, rel=1e-10)
    lsh_only = sum(h for _, h in per_sample) / 4
    assert lshfm_loss(s, t, w, b, with_l2=False).item() == pytest.approx(lsh_only, rel=1e-10)
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0])
    masked = (sum(per_sample[0]) + sum(per_sample[3])) / 2
    assert lshfm_loss(s, t, w, b, sample_weights=mask).item() == pytest.approx(masked)
    assert lshfm_loss(s, t, w, b, sample_weights=torch.zeros(4)).item() == 0.0


def lshfm_context(s_dim=6, t_dim=8, batch=10):
    teacher_model = create_model("resnet8", 10)
    student = ModelOutput(torch.randn(batch, 10), torch.randn(batch, s_dim))
    teacher = ModelOutput(torch.randn(batch, 10), torch.rand(batch, t_dim))
    features = torch.rand(23, t_dim)
    return BuildContext(
        10,
        student,
        teacher,
        teacher=teacher_model,
        teacher_features=lambda select: features,
    ), features


def test_lshfm_term_hyperplanes_bias_projector_and_teacher_mask():
    context, features = lshfm_context()
    term = build_term("lshfm", context, {"bias": "mean"})
    classifier_std = float(context.teacher.get_classifier().weight.detach().std())
    assert term.hash_weight.shape == (32 * 8, 8)  # N = 32 D by default
    assert float(term.hash_weight.std()) == pytest.approx(classifier_std, rel=0.1)
    torch.testing.assert_close(term.hash_bias, -(term.hash_weight @ features.mean(0)))
    assert isinstance(term.projector, torch.nn.Linear) and term.projector.in_features == 6
    assert {"hash_weight", "hash_bias", "projector.weight"} <= set(term.state_dict())

    labels = context.teacher_probe.logits.argmax(1)
    labels[:4] = (labels[:4] + 1) % 10  # the teacher misclassifies the first four samples
    outputs = StepOutputs(context.student_probe, context.teacher_probe, labels)
    correct = torch.tensor([0.0] * 4 + [1.0] * 6)
    expected = lshfm_loss(
        term.projector(context.student_probe.embedding),
        context.teacher_probe.embedding,
        term.hash_weight,
        term.hash_bias,
        sample_weights=correct,
    )
    torch.testing.assert_close(term(outputs), expected)
    zero = build_term("lshfm", context, {"hash_functions": 16, "hash_std": 0.5})
    assert zero.hash_weight.shape == (16, 8) and torch.equal(zero.hash_bias, torch.zeros(16))
    with pytest.raises(ValueError, match="bias must be one of"):
        build_term("lshfm", context, {"bias": "mode"})


def test_median_hash_bias_against_a_per_sample_reference():
    torch.manual_seed(0)
    for count in (7, 8):  # odd and even sample counts: torch's (lower) median
        features, weight = torch.randn(count, 5), torch.randn(13, 5)
        reference = []
        for n in range(13):
            values = sorted(float(weight[n] @ features[i]) for i in range(count))
            reference.append(-values[(count - 1) // 2])
        got = hash_offsets(features, weight, "median", chunk_elements=count * 3)  # 5 chunks
        torch.testing.assert_close(got, torch.tensor(reference), rtol=1e-6, atol=1e-6)
        codes = lsh_codes(features, weight, got)  # each bit splits the samples evenly
        above = count - 1 - (count - 1) // 2  # the median sample itself sits at 0 +- rounding
        assert set(codes.sum(0).tolist()) <= {above, above + 1}
    mean = hash_offsets(features, weight, "mean")
    torch.testing.assert_close(mean, -(weight.double() @ features.double().mean(0)).float())


def test_lsh_and_lshl2_terms_default_to_the_multi_label_settings():
    context, features = lshfm_context(s_dim=8, t_dim=8)
    context.multi_label = True
    lsh = build_term("lsh", context, {"hash_functions": 32})
    lshl2 = build_term("lshl2", context, {"hash_functions": 32})
    assert not lsh.with_l2 and lshl2.with_l2
    assert not lsh.teacher_correct_only and not lshl2.teacher_correct_only
    median = -(features.double() @ lsh.hash_weight.double().T).median(0).values
    torch.testing.assert_close(lsh.hash_bias, median.float())
    targets = torch.randint(0, 2, (10, 10)).float()  # multi-hot labels are never read
    outputs = StepOutputs(context.student_probe, context.teacher_probe, targets)
    expected = lshfm_loss(
        context.student_probe.embedding,
        context.teacher_probe.embedding,
        lshl2.hash_weight,
        lshl2.hash_bias,
    )
    torch.testing.assert_close(lshl2(outputs), expected)
    with pytest.raises(ValueError, match="'lshfm' reads one class label per image"):
        Distiller([TermConfig("lshfm", 1.0)], context)
    no_pass = BuildContext(
        10, context.student_probe, context.teacher_probe, teacher=context.teacher
    )
    with pytest.raises(ValueError, match="lsh: bias 'median' needs a teacher pass"):
        build_term("lsh", no_pass, {})


# ------------------------------------------------------------------------------ training
@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("rkd", {}),
        ("pkt", {}),
        ("crd", {"feat_dim": 8, "negatives": 16}),
        ("lshfm", {"hash_functions": 64, "hash_std": 0.3, "teacher_correct_only": False}),
    ],
)
def test_each_term_trains_on_tiny_data(name, params):
    torch.manual_seed(0)
    images, labels = torch.randn(32, 12), torch.arange(32) % 4
    teacher_emb = torch.relu(torch.randn(12, 10)).t() @ images.t()  # [10, 32]
    teacher_out = ModelOutput(torch.randn(32, 4), teacher_emb.t().contiguous())
    student = torch.nn.Linear(12, 6)
    probe = ModelOutput(torch.zeros(32, 4), student(images))
    term = build_term(name, BuildContext(4, probe, teacher_out, dataset_size=32), params)
    optimizer = torch.optim.Adam([*student.parameters(), *term.parameters()], lr=0.01)
    indices = torch.arange(32)
    losses = []
    for _ in range(60):
        outputs = StepOutputs(
            ModelOutput(torch.zeros(32, 4), student(images)), teacher_out, labels, indices=indices
        )
        loss = term(outputs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0], losses[::10]


# ------------------------------------------------------------------------------- recipes
@pytest.mark.parametrize("stem", STEMS)
def test_cifar_recipes_share_the_kdpp_pair_with_reference_weights(stem):
    """Models, data and class means as KD++; the schedule (the CRD benchmark's) is checked
    in tests/test_published_recipes.py."""
    base = load_config(ROOT / "configs" / "cifar100" / "kd++" / f"{stem}.yaml")
    expected = {
        "rkd": (1.0, {"distance_weight": 25.0, "angle_weight": 50.0}),
        "pkt": (30000.0, {}),
        "crd": (0.8, {"feat_dim": 128, "negatives": 16384, "temperature": 0.07, "momentum": 0.5}),
    }
    for method, (weight, params) in expected.items():
        config = load_config(ROOT / "configs" / "cifar100" / method / f"{stem}.yaml")
        assert [(t.name, t.weight, t.warmup_epochs) for t in config.terms] == [
            ("ce", 1.0, 0),
            (method, weight, 0),
        ]
        assert config.terms[1].params == params
        assert config.output_dir == f"runs/cifar100/{method}/{stem}/seed0"
        for part in ("seed", "device", "data", "teacher", "student", "centers"):
            assert getattr(config, part) == getattr(base, part), part


def _crd_two_process_worker(rank: int, init_file: str, results: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    torch.manual_seed(0)  # the same build on both processes, as ndkd's builder seeds it
    term, _, step = crd_setup()
    initial = term.student_bank.clone()
    torch.manual_seed(1 + rank)  # each process draws its own negatives and its own batch
    term.student_head.weight.data.normal_()
    term(step(torch.arange(6) + 6 * rank))
    torch.save({"initial": initial, "bank": term.student_bank}, f"{results}.{rank}")
    dist.destroy_process_group()


def test_crd_banks_stay_identical_across_processes(tmp_path):
    torch.multiprocessing.start_processes(
        _crd_two_process_worker,
        args=(str(tmp_path / "init"), str(tmp_path / "bank")),
        nprocs=2,
        start_method="fork",  # no re-import: a second or two instead of ten
    )
    first, second = (torch.load(tmp_path / f"bank.{rank}") for rank in (0, 1))
    assert torch.equal(first["initial"], second["initial"])
    assert torch.equal(first["bank"], second["bank"])  # both batches written on both sides
    changed = (first["bank"] != first["initial"]).any(dim=1)
    assert changed[:12].all() and not changed[12:].any()
