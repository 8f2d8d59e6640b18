"""kdlearn.schemes against independent computations: explicit loops over the students, the
teachers and the rows, with the formulas written out in torch's plain functions."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlearn import data, models, schemes, training


def logits(*shape, seed=0, scale=2.0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype) * scale


def labels(n, classes=5, seed=1):
    return torch.randint(0, classes, (n,), generator=torch.Generator().manual_seed(seed))


def kl_rows(p_logits, q_logits, T):
    """KL(softmax(p/T) || softmax(q/T)) per row, from its definition."""
    p, q = torch.softmax(p_logits / T, dim=-1), torch.softmax(q_logits / T, dim=-1)
    return (p * (p.log() - q.log())).sum(-1)


# --- mutual learning ----------------------------------------------------------------------------


@pytest.mark.parametrize("K, T", [(2, 1.0), (3, 1.0), (3, 4.0)])
def test_mutual_learning_loss_is_each_students_ce_plus_its_mean_kl_from_the_others(K, T):
    z, y = logits(K, 7, 5), labels(7)
    expected = 0.0
    for k in range(K):
        ce = -torch.log_softmax(z[k], -1)[torch.arange(7), y]
        kl = sum(kl_rows(z[l], z[k], T) for l in range(K) if l != k) / (K - 1)
        expected = expected + (ce + T * T * kl).mean()
    torch.testing.assert_close(schemes.mutual_learning_loss(z, y, T=T), expected)
    per_row = schemes.mutual_learning_loss(z, y, T=T, reduction="none")
    assert per_row.shape == (K, 7)
    torch.testing.assert_close(per_row.sum(), schemes.mutual_learning_loss(z, y, T=T, reduction="sum"))


def test_a_cohort_of_one_is_cross_entropy():
    z, y = logits(1, 9, 5), labels(9)
    torch.testing.assert_close(schemes.mutual_learning_loss(z, y, T=3.0), F.cross_entropy(z[0], y))


def test_each_student_gets_the_gradient_of_its_own_loss_only():
    """The peers' targets are detached: student 0's gradient is that of CE_0 + KL(p_1 || p_0)
    with p_1 a constant, and student 1's terms send nothing to student 0."""
    z, y = logits(2, 6, 5), labels(6)
    stacked = z.clone().requires_grad_(True)
    schemes.mutual_learning_loss(stacked, y).backward()
    for k in range(2):
        own = z[k].clone().requires_grad_(True)
        (F.cross_entropy(own, y) + kl_rows(z[1 - k], own, 1.0).mean()).backward()
        torch.testing.assert_close(stacked.grad[k], own.grad)


def test_mutual_learning_trains_a_cohort_in_one_train_call():
    ds = data.digits()
    split = data.Split(ds.train.x[:200], ds.train.y[:200])
    cohort = schemes.Cohort([models.mlp(64, (16,), seed=s) for s in (0, 1)])
    before = [m[0].weight.clone() for m in cohort.members]
    history = training.train(cohort, split, loss=lambda s, t, y: schemes.mutual_learning_loss(s, y), epochs=5,
                             lr=1e-2, progress=False)
    assert history.loss[-1] < history.loss[0]
    assert all(not torch.equal(b, m[0].weight) for b, m in zip(before, cohort.members))
    assert cohort(split.x).shape == (2, 200, 10)


# --- ensembles -----------------------------------------------------------------------------------


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_ensemble_distribution_is_the_weighted_mean_of_the_teachers(T):
    z = logits(3, 4, 6)
    weights = [1.0, 2.0, 5.0]
    out = schemes.ensemble_logits(list(z), weights, T=T)
    expected = torch.zeros(4, 6, dtype=torch.float64)
    for k in range(3):
        expected += weights[k] / 8.0 * torch.softmax(z[k] / T, dim=-1)
    torch.testing.assert_close(torch.softmax(out / T, dim=-1), expected)
    uniform = sum(torch.softmax(z[k] / T, dim=-1) for k in range(3)) / 3
    torch.testing.assert_close(torch.softmax(schemes.ensemble_logits(z, T=T) / T, dim=-1), uniform)


def test_ensemble_of_identical_teachers_is_that_teacher():
    teacher = models.mlp(64, (16,), seed=3)
    x = data.digits().test.x[:20]
    ensemble = schemes.Ensemble([teacher, teacher, teacher], T=2.0)
    torch.testing.assert_close(torch.log_softmax(ensemble(x) / 2.0, -1), torch.log_softmax(teacher(x) / 2.0, -1))
    assert not torch.allclose(torch.softmax(schemes.ensemble_logits(logits(2, 3, 4)), -1),
                              torch.softmax(logits(2, 3, 4).mean(0), -1)), "probabilities, not logits, are averaged"


def test_a_zero_weight_leaves_a_teacher_out():
    z = logits(2, 5, 4)
    torch.testing.assert_close(torch.softmax(schemes.ensemble_logits(z, [0.0, 3.0]), -1), torch.softmax(z[1], -1))


def test_an_ensemble_is_one_teacher_for_kd():
    ds = data.digits()
    split = data.Split(ds.train.x[:128], ds.train.y[:128])
    teachers = [models.mlp(64, (16,), seed=s) for s in (0, 1)]
    student = models.mlp(64, (8,), seed=2)
    history = training.train(student, split, teacher=schemes.Ensemble(teachers, T=4.0), loss="kd", T=4.0,
                             epochs=3, progress=False)
    assert len(history.loss) == 3


# --- chains: born-again and teacher assistants ---------------------------------------------------


def test_a_chain_distils_each_net_from_the_one_before():
    """The same as successive kd train() calls, written out."""
    ds = data.digits()
    split = data.Split(ds.train.x[:128], ds.train.y[:128])
    teacher = models.mlp(64, (32,), seed=0)
    training.train(teacher, split, epochs=3, progress=False)
    arguments = dict(T=3.0, alpha=0.7, epochs=2, lr=1e-2, seed=5, progress=False)
    chained = [models.mlp(64, (16,), seed=1), models.mlp(64, (8,), seed=2)]
    schemes.distillation_chain(teacher, chained, split, **arguments)
    by_hand = [models.mlp(64, (16,), seed=1), models.mlp(64, (8,), seed=2)]
    training.train(by_hand[0], split, teacher=teacher, loss="kd", **arguments)
    training.train(by_hand[1], split, teacher=by_hand[0], loss="kd", **arguments)
    for a, b in zip(chained, by_hand):
        for p, q in zip(a.parameters(), b.parameters()):
            torch.testing.assert_close(p, q)


# --- be your own teacher -------------------------------------------------------------------------


def test_self_distillation_loss_is_ce_plus_each_heads_kd_from_the_deepest():
    z, y = logits(6, 5, seed=2), labels(6)
    heads = {"a": logits(6, 5, seed=3), "b": logits(6, 5, seed=4)}
    T, alpha = 3.0, 0.6
    expected = F.cross_entropy(z, y)
    for head in heads.values():
        expected = expected + (alpha * T * T * kl_rows(z, head, T).mean() + (1 - alpha) * F.cross_entropy(head, y))
    torch.testing.assert_close(schemes.self_distillation_loss((z, heads), y, T=T, alpha=alpha), expected)


def test_self_distillation_sends_no_gradient_from_the_heads_into_the_deepest_logits():
    z, y = logits(6, 5, seed=2), labels(6)
    deepest = z.clone().requires_grad_(True)
    schemes.self_distillation_loss((deepest, {"a": logits(6, 5, seed=3)}), y, T=2.0, alpha=1.0).backward()
    own = z.clone().requires_grad_(True)
    F.cross_entropy(own, y).backward()
    torch.testing.assert_close(deepest.grad, own.grad)


def test_auxiliary_heads_on_cnn_blocks_train_with_the_network():
    ds = data.digits()
    split = data.Split(ds.train.x[:128], ds.train.y[:128])
    torch.manual_seed(0)
    net = schemes.with_auxiliary_heads(models.cnn(channels=(4, 8), embedding=16, seed=0), ["block1", "block2"],
                                       split.x[:2])
    out_logits, heads = net(split.x[:3])
    assert out_logits.shape == (3, 10) and {name: h.shape for name, h in heads.items()} == {
        "block1": (3, 10), "block2": (3, 10)}
    head_before = [p.clone() for p in net.adapters.parameters()]
    training.train(net, split, loss=lambda s, t, y: schemes.self_distillation_loss(s, y, T=2.0, alpha=0.5),
                   epochs=2, lr=1e-2, progress=False)
    assert all(not torch.equal(b, p) for b, p in zip(head_before, net.adapters.parameters()))
    assert net.model(split.x[:3]).shape == (3, 10)


# --- bad input -----------------------------------------------------------------------------------


@pytest.mark.parametrize("call, message", [
    (lambda: schemes.mutual_learning_loss(logits(5, 5), labels(5)), "stacked_logits must have shape"),
    (lambda: schemes.mutual_learning_loss(logits(2, 5, 5), labels(4)), "labels has 4 entries"),
    (lambda: schemes.mutual_learning_loss(logits(2, 5, 5), labels(5).float()), "labels must be"),
    (lambda: schemes.mutual_learning_loss(logits(2, 5, 5), labels(5, classes=9)), "labels must be class indices"),
    (lambda: schemes.mutual_learning_loss(logits(2, 5, 5), labels(5), T=0.0), "T \\(temperature\\)"),
    (lambda: schemes.mutual_learning_loss(logits(2, 5, 5), labels(5), reduction="avg"), "reduction"),
    (lambda: schemes.mutual_learning_loss(labels(5), labels(5)), "stacked_logits must be a floating"),
    (lambda: schemes.ensemble_logits(logits(2, 3, 4), [1.0]), "weights must be 2"),
    (lambda: schemes.ensemble_logits(logits(2, 3, 4), [1.0, -1.0]), "weights must be 2"),
    (lambda: schemes.ensemble_logits(logits(2, 3, 4), [0.0, 0.0]), "weights must be 2"),
    (lambda: schemes.ensemble_logits(logits(4), None), "logits must hold K"),
    (lambda: schemes.Ensemble([]), "teachers must be"),
    (lambda: schemes.Ensemble(nn.Linear(2, 2)), "teachers must be"),
    (lambda: schemes.Cohort([]), "members must be"),
    (lambda: schemes.Cohort(nn.Linear(2, 2)), "members must be"),
    (lambda: schemes.distillation_chain(nn.Linear(2, 2), [], None), "students must be"),
    (lambda: schemes.distillation_chain(nn.Linear(2, 2), [nn.Linear(2, 2)], None, loss="ce"), "loss is set"),
    (lambda: schemes.with_auxiliary_heads(models.mlp(64, (8,)), "1", torch.zeros(1, 64)), "names must be"),
    (lambda: schemes.with_auxiliary_heads(models.mlp(64, (8,)), ["9"], torch.zeros(1, 64)), "no submodule"),
    (lambda: schemes.self_distillation_loss(logits(3, 4), labels(3, 4), T=1.0, alpha=0.5), "output must be"),
    (lambda: schemes.self_distillation_loss((logits(3, 4), {}), labels(3, 4), T=1.0, alpha=0.5), "no auxiliary"),
    (lambda: schemes.self_distillation_loss((logits(3, 4), {"a": logits(3, 5)}), labels(3, 4), T=1.0, alpha=0.5),
     "output\\[1\\]\\['a'\\]"),
    (lambda: schemes.self_distillation_loss((logits(3, 4), {"a": logits(3, 4)}), labels(3, 4), T=1.0, alpha=2.0),
     "alpha"),
])
def test_bad_input_is_a_value_error_naming_the_argument(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_half_precision_is_computed_in_fp32():
    z, y = logits(2, 4, 5, dtype=torch.float32), labels(4)
    half = schemes.mutual_learning_loss(z.to(torch.bfloat16), y)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, schemes.mutual_learning_loss(z.to(torch.bfloat16).float(), y))
