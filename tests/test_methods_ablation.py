"""The ablation terms of Tables 4 and 5 (cosine, infonce, l2, sifn, classifier_l2, the nd
options) and the ablation configs."""

from __future__ import annotations

import copy
import io
from pathlib import Path

import pytest
import torch
from torch import nn

from ndkd import ClassMeans, class_means
from ndkd.config import load_config
from ndkd.losses.direction import cosine_direction_loss, infonce_direction_loss
from ndkd.losses.nd import nd_loss
from ndkd.losses.norm import l2_feature_loss, sifn_loss
from ndkd.methods import BuildContext, StepOutputs, available, build_term, term_parameters
from ndkd.models import ModelOutput, create_model
from ndkd.models.adapter import with_embedding
from ndkd.projector import EmbeddingProjector

ROOT = Path(__file__).resolve().parents[1]
CLASSES = 4


def vectors(batch=8, s_dim=5, t_dim=5):
    """Random student/teacher outputs (embeddings only) and labels covering every class."""
    student = ModelOutput(torch.randn(batch, CLASSES), torch.randn(batch, s_dim))
    teacher = ModelOutput(torch.randn(batch, CLASSES), torch.randn(batch, t_dim))
    return student, teacher, torch.arange(batch) % CLASSES


def tiny_mlp(in_dim=12, hidden=6, classes=CLASSES) -> nn.Module:
    """A model ndkd never saw: its embedding is the input of its last nn.Linear."""
    return nn.Sequential(
        nn.Flatten(), nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, classes)
    )


def test_cosine_infonce_l2_equal_their_pure_losses():
    student, teacher, labels = vectors()
    centers = torch.rand(CLASSES, 5) + 0.1
    context = BuildContext(CLASSES, student, teacher, ClassMeans(centers))
    step = StepOutputs(student, teacher, labels)
    s = student.embedding
    for reduction in ("batch", "class"):
        cosine = build_term("cosine", context, {"reduction": reduction})
        infonce = build_term("infonce", context, {"temperature": 0.5, "reduction": reduction})
        l2 = build_term("l2", context, {"reduction": reduction})
        expected_cos = cosine_direction_loss(s, labels, centers, reduction)
        torch.testing.assert_close(cosine(step), expected_cos)
        expected_nce = infonce_direction_loss(s, labels, centers, 0.5, reduction)
        torch.testing.assert_close(infonce(step), expected_nce)
        expected_l2 = l2_feature_loss(s, teacher.embedding, labels, reduction)
        torch.testing.assert_close(l2(step), expected_l2)
    assert term_parameters("infonce")["temperature"] == 1.0  # the paper's


def test_projected_terms_use_the_embedding_projector_on_the_student():
    student, teacher, labels = vectors(s_dim=3, t_dim=6)
    centers = torch.rand(CLASSES, 6) + 0.1
    context = BuildContext(CLASSES, student, teacher, ClassMeans(centers))
    step = StepOutputs(student, teacher, labels)
    for name in ("cosine", "infonce", "l2"):
        term = build_term(name, context, {}).eval()  # eval: no dropout, BN running stats
        assert isinstance(term.projector, EmbeddingProjector)
        assert (term.projector.in_dim, term.projector.out_dim) == (3, 6)
        projected = term.projector(student.embedding)
        if name == "cosine":
            expected = cosine_direction_loss(projected, labels, centers)
        elif name == "infonce":
            expected = infonce_direction_loss(projected, labels, centers)
        else:
            expected = l2_feature_loss(projected, teacher.embedding)
        torch.testing.assert_close(term(step), expected)
    with pytest.raises(ValueError, match="cosine: needs teacher class means"):
        build_term("cosine", BuildContext(CLASSES, student, teacher), {})
    with pytest.raises(ValueError, match="reduction must be one of"):
        build_term("l2", context, {"reduction": "none"})


def test_nd_with_classifier_weights_uses_the_teacher_weight_rows():
    student, _, labels = vectors(t_dim=6)
    mlp, resnet = tiny_mlp(hidden=6), create_model("resnet8", CLASSES)
    for teacher_model, weight in ((mlp, mlp[3].weight), (resnet, resnet.fc.weight)):
        dim = weight.shape[1]
        teacher = ModelOutput(torch.randn(8, CLASSES), torch.randn(8, dim))
        context = BuildContext(CLASSES, student, teacher, teacher=teacher_model)
        term = build_term("nd", context, {"centers": "classifier_weights"}).eval()
        torch.testing.assert_close(term.loss.centers, weight.detach())
        assert term.requires_centers is False
        s = term.loss.projector(student.embedding)
        expected = nd_loss(s, teacher.embedding, labels, weight.detach())
        torch.testing.assert_close(term(StepOutputs(student, teacher, labels)), expected)
    wrong = ModelOutput(torch.randn(8, CLASSES), torch.randn(8, 7))
    with pytest.raises(ValueError, match="takes 6-d inputs but the teacher's embedding has dim 7"):
        build_term(
            "nd",
            BuildContext(CLASSES, student, wrong, teacher=tiny_mlp()),
            {"centers": "classifier_weights"},
        )
    with pytest.raises(ValueError, match="centers must be"):
        build_term("nd", BuildContext(CLASSES, student, wrong), {"centers": "weights"})


def _dataset(count=24, size=8):
    images = torch.randn(count, 3, size, size)
    return images, torch.arange(count) % CLASSES


def _stage_context(teacher, student, images, labels):
    loader = [(images[i : i + 8], labels[i : i + 8]) for i in range(0, len(images), 8)]
    with torch.no_grad():
        t_probe, s_probe = teacher.eval()(images[:2]), student.eval()(images[:2])
    centers = class_means(teacher, loader, CLASSES)

    def teacher_class_means(select):
        return class_means(teacher, loader, CLASSES, feature=select)

    return BuildContext(
        CLASSES, s_probe, t_probe, centers, len(images), student, teacher, teacher_class_means
    )


def _pool_and_average(model, images, labels, stage):
    """Explicit reference: each map summed over H, W and divided by H*W; per-class means by a
    loop over the samples."""
    with torch.no_grad():
        maps = model.eval()(images).stages[stage]
    sums = torch.zeros(CLASSES, maps.shape[1], dtype=torch.float64)
    counts = [0] * CLASSES
    for feature_map, label in zip(maps, labels.tolist()):
        sums[label] += feature_map.double().sum(dim=(1, 2)) / (maps.shape[2] * maps.shape[3])
        counts[label] += 1
    return (sums / torch.tensor(counts, dtype=torch.float64).unsqueeze(1)).float()


def test_nd_layers_use_pooled_stages_and_their_teacher_class_means():
    teacher, student = create_model("resnet8x4", CLASSES), create_model("resnet8", CLASSES)
    images, labels = _dataset()
    context = _stage_context(teacher, student, images, labels)
    term = build_term("nd", context, {"layers": 2}).eval()
    assert len(term.layers) == 2
    for depth, layer in enumerate(term.layers, start=1):
        expected = _pool_and_average(teacher, images, labels, -1 - depth)
        torch.testing.assert_close(layer.centers, expected, rtol=1e-5, atol=1e-6)
        assert isinstance(layer.projector, EmbeddingProjector)  # 32 -> 128, 16 -> 64 channels
    assert "layers.1.centers" in term.state_dict()
    batch_images, batch_labels = images[:8], labels[:8]
    with torch.no_grad():
        s_out, t_out = student(batch_images), teacher(batch_images)
        value = term(StepOutputs(s_out, t_out, batch_labels))
        s_emb = term.loss.projector(s_out.embedding)
        expected = nd_loss(s_emb, t_out.embedding, batch_labels, term.loss.centers)
        for depth, layer in enumerate(term.layers, start=1):
            s_map, t_map = s_out.stages[-1 - depth], t_out.stages[-1 - depth]
            s_vec = s_map.sum(dim=(2, 3)) / (s_map.shape[2] * s_map.shape[3])
            t_vec = t_map.sum(dim=(2, 3)) / (t_map.shape[2] * t_map.shape[3])
            expected = expected + nd_loss(
                layer.projector(s_vec), t_vec, batch_labels, layer.centers
            )
    torch.testing.assert_close(value, expected)
    with pytest.raises(ValueError, match="layers=4 needs 5 stage outputs"):
        build_term("nd", context, {"layers": 4})
    with pytest.raises(ValueError, match="layers > 0 needs centers: class_means"):
        build_term("nd", context, {"layers": 1, "centers": "classifier_weights"})


def test_classifier_l2_against_the_explicit_formula():
    teacher, student = tiny_mlp(hidden=6), tiny_mlp(hidden=3)
    s_probe, _, _ = vectors(s_dim=3)
    t_probe, _, _ = vectors(s_dim=6)
    context = BuildContext(CLASSES, s_probe, t_probe, student=student, teacher=teacher)
    term = build_term("classifier_l2", context, {})
    projection = term.projector.weight  # [6, 3], student side
    assert [p.shape for p in term.parameters()] == [projection.shape]  # not the student's
    w_s, w_t = student[-1].weight, teacher[-1].weight
    total = 0.0
    for c in range(CLASSES):
        for j in range(6):
            projected = sum(w_s[c, k] * projection[j, k] for k in range(3))
            total = total + (projected - w_t[c, j]) ** 2
    value = term(StepOutputs(*vectors()))
    torch.testing.assert_close(value, total / (CLASSES * 6))
    value.backward()
    assert student[-1].weight.grad is not None and teacher[-1].weight.grad is None
    same = BuildContext(CLASSES, t_probe, t_probe, student=tiny_mlp(hidden=6), teacher=teacher)
    assert isinstance(build_term("classifier_l2", same, {}).projector, nn.Identity)


def _sifn_run(student, term, batches, optimizer):
    """Train ``student`` with the SIFN term alone; returns the loss of every step."""
    live, losses = with_embedding(student), []
    for images in batches:
        out = live(images)
        loss = term(StepOutputs(out, None, torch.zeros(len(images), dtype=torch.long), images))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.detach())
    return losses


def test_sifn_previous_iteration_is_the_detached_current_feature():
    student, _, labels = vectors()
    term = build_term("sifn", BuildContext(CLASSES, student), {"step": 0.5})
    embedding = student.embedding.clone().requires_grad_(True)
    loss = term(StepOutputs(ModelOutput(student.logits, embedding), None, labels))
    torch.testing.assert_close(loss, sifn_loss(embedding, None, 0.5))
    torch.testing.assert_close(loss, torch.tensor(0.25))
    loss.backward()
    norms = embedding.norm(dim=1, keepdim=True)
    torch.testing.assert_close(embedding.grad, -2 * 0.5 * embedding / norms / len(labels))


def test_sifn_snapshot_refresh_schedule():
    student = tiny_mlp()
    term = build_term(
        "sifn", BuildContext(CLASSES, vectors()[0], student=student), {"refresh_steps": 3}
    )
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    live = with_embedding(student)
    for step in range(7):
        if step % 3 == 0:
            earlier = with_embedding(copy.deepcopy(student))
        images = torch.randn(6, 12)
        out = live(images)
        loss = term(StepOutputs(out, None, torch.zeros(6, dtype=torch.long), images))
        with torch.no_grad():
            previous = earlier(images).embedding
        expected = (
            sum((previous[i].norm() + 1.0 - out.embedding[i].norm()) ** 2 for i in range(6)) / 6
        )
        torch.testing.assert_close(loss, expected)
        assert (abs(loss.item() - 1.0) < 1e-6) == (step % 3 == 0)  # r^2 right after a refresh
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert term.steps_done == 7


def test_sifn_snapshot_survives_a_state_dict_round_trip():
    torch.manual_seed(1)
    batches = [torch.randn(6, 12) for _ in range(8)]
    student = tiny_mlp()
    context = BuildContext(CLASSES, vectors()[0], student=student)
    term = build_term("sifn", context, {"refresh_steps": 3, "step": 0.5})
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    _sifn_run(student, term, batches[:4], optimizer)  # snapshot from step 3, one step old

    buffer = io.BytesIO()
    torch.save(
        {
            "model": student.state_dict(),
            "method": term.state_dict(),
            "optimizer": optimizer.state_dict(),
        },
        buffer,
    )
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    restored = tiny_mlp()  # other initial weights: everything must come from the checkpoint
    restored_term = build_term(
        "sifn",
        BuildContext(CLASSES, vectors()[0], student=restored),
        {"refresh_steps": 3, "step": 0.5},
    )
    restored.load_state_dict(saved["model"])
    restored_term.load_state_dict(saved["method"])
    restored_optimizer = torch.optim.SGD(restored.parameters(), lr=0.5)
    restored_optimizer.load_state_dict(saved["optimizer"])

    original = _sifn_run(student, term, batches[4:], optimizer)
    resumed = _sifn_run(restored, restored_term, batches[4:], restored_optimizer)
    torch.testing.assert_close(torch.stack(resumed), torch.stack(original), rtol=0, atol=0)
    assert restored_term.steps_done == term.steps_done == 8
    with pytest.raises(ValueError, match="disagree on refresh_steps"):
        build_term("sifn", context, {}).load_state_dict(saved["method"])


def test_sifn_snapshot_refreshes_under_torch_compile():
    """The refresh and the snapshot's forward run eagerly inside a compiled step: the losses
    and the refresh count equal an uncompiled twin's."""
    torch.manual_seed(2)
    batches = [torch.randn(6, 12) for _ in range(5)]
    runs = []
    for compiled in (False, True):
        torch.manual_seed(3)
        student = tiny_mlp()
        term = build_term(
            "sifn", BuildContext(CLASSES, vectors()[0], student=student), {"refresh_steps": 2}
        )
        step = torch.compile(term, backend="eager") if compiled else term
        optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
        runs.append((_sifn_run(student, step, batches, optimizer), term.steps_done))
    (eager, eager_steps), (compiled, compiled_steps) = runs
    torch.testing.assert_close(torch.stack(compiled), torch.stack(eager))
    assert eager_steps == compiled_steps == 5


def _train(term, student, teacher, lr, steps=12):
    """A few SGD steps on one fixed batch of tiny images; returns the first and last loss."""
    images, labels = _dataset(count=16)
    params = [*student.parameters(), *term.parameters()]
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9)
    with torch.no_grad():
        t_out = teacher.eval()(images)
    student.train()
    term.train()
    losses = []
    for _ in range(steps):
        loss = term(StepOutputs(student(images), t_out, labels, images))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses[0], losses[-1]


@pytest.mark.parametrize(
    "name, params, lr",
    [
        ("cosine", {}, 0.5),
        ("infonce", {}, 1.0),  # bounded cosines over 4 classes: small gradients
        ("l2", {}, 0.002),  # a squared distance summed over 256 dims: large gradients
        ("sifn", {"refresh_steps": 1000}, 0.05),
        ("classifier_l2", {}, 50.0),  # a mean over C x D tiny weight differences
        ("nd", {"centers": "classifier_weights"}, 0.05),
        ("nd", {"layers": 2}, 0.2),
    ],
)
def test_each_term_trains_with_its_loss_decreasing(name, params, lr):
    teacher, student = create_model("resnet8x4", CLASSES), create_model("resnet8", CLASSES)
    images, labels = _dataset()
    context = _stage_context(teacher, student, images, labels)
    term = build_term(name, context, params)
    first, last = _train(term, student, teacher, lr=lr)
    assert last < 0.97 * first, (name, params, first, last)


def _ablation_configs(table):
    return sorted((ROOT / "configs" / "ablations" / table).rglob("*.yaml"))


def test_every_ablation_config_parses_names_existing_terms_and_keeps_the_kdpp_settings():
    table4, table5 = _ablation_configs("table4"), _ablation_configs("table5")
    assert len(table4) == 12 * 2 and len(table5) == 6 * 6
    for path in table4 + table5:
        config = load_config(path)
        source = load_config(ROOT / "configs" / "cifar100" / "kd++" / path.name)
        assert config.output_dir == source.output_dir.replace(
            "cifar100/kd++", f"ablations/{path.parent.parent.name}/{path.parent.name}"
        )
        assert (config.train, config.teacher, config.student, config.centers, config.data) == (
            source.train,
            source.teacher,
            source.student,
            source.centers,
            source.data,
        )
        weights = {t.name: t.weight for t in source.terms}
        for term in config.terms:
            assert term.name in available(), path
            assert set(term.params) <= set(term_parameters(term.name)), path
            expected = weights.get(term.name, weights["nd"])  # a regulariser replaces nd
            assert term.weight == expected, (path, term.name)
