"""Tests of kdlearn.features against independent float64 computations (numpy, explicit loops over
examples, pairs and triplets, written from the papers' formulas), the identities the losses
promise (invariance to scale, rotation and translation), gradients, half precision, degenerate
inputs, bad input, and the forward-hook capture. The module's docstrings are the specification."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from kdlearn import data, models, training
from kdlearn.features import (WithFeatures, attention_map, attention_transfer_loss, capture, cosine_loss,
                              hint_loss, rkd_angle_loss, rkd_distance_loss)

pytestmark = pytest.mark.usefixtures("single_torch_thread")

REDUCTIONS = ["none", "sum", "mean"]
HALF = [torch.float16, torch.bfloat16]


def rand(shape, seed=0, scale=1.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=scale, size=shape)


def tt(a, dtype=torch.float64, grad=False) -> torch.Tensor:
    return torch.tensor(a, dtype=dtype, requires_grad=grad)


def np_reduce(values: np.ndarray, reduction: str):
    return {"none": values, "sum": values.sum(), "mean": values.mean()}[reduction]


def close(actual: torch.Tensor, expected, rtol=1e-10, atol=1e-12):
    torch.testing.assert_close(actual.double(), torch.as_tensor(np.asarray(expected), dtype=torch.float64),
                               rtol=rtol, atol=atol)


def huber(d: float) -> float:
    return 0.5 * d * d if abs(d) < 1.0 else abs(d) - 0.5


def random_rotation(d: int, seed: int) -> np.ndarray:
    q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# --- references, written from the formulas -------------------------------------------------


def ref_attention_map(a: np.ndarray, p: float) -> np.ndarray:
    """Per example: Q[h, w] = sum_c |A[c, h, w]|^p, flattened row by row, divided by its L2 norm."""
    n, c, h, w = a.shape
    out = np.zeros((n, h * w))
    for i in range(n):
        for y in range(h):
            for x in range(w):
                out[i, y * w + x] = sum(abs(a[i, ch, y, x]) ** p for ch in range(c))
        norm = math.sqrt(sum(v * v for v in out[i]))
        out[i] = out[i] / norm if norm > 0 else out[i]
    return out


def ref_attention_loss(s: np.ndarray, t: np.ndarray, p: float) -> np.ndarray:
    qs, qt = ref_attention_map(s, p), ref_attention_map(t, p)
    return np.array([sum((a - b) ** 2 for a, b in zip(qs[i], qt[i])) for i in range(len(s))])


def ref_cosine_loss(s: np.ndarray, t: np.ndarray) -> np.ndarray:
    """1 - cos per position, the leading dimensions flattened then restored."""
    flat_s, flat_t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    out = []
    for u, v in zip(flat_s, flat_t):
        nu, nv = math.sqrt(sum(x * x for x in u)), math.sqrt(sum(x * x for x in v))
        out.append(1.0 - (sum(x * y for x, y in zip(u, v)) / (nu * nv) if nu > 0 and nv > 0 else 0.0))
    return np.array(out).reshape(s.shape[:-1])


def ref_psi(x: np.ndarray) -> list[float]:
    """||x_i - x_j|| / mu over the pairs i < j, mu their mean."""
    d = [math.dist(x[i], x[j]) for i, j in itertools.combinations(range(len(x)), 2)]
    mu = sum(d) / len(d)
    return [v / mu if mu > 0 else 0.0 for v in d]


def ref_cosines(x: np.ndarray) -> list[float]:
    """The cosine of the angle at x_j between x_i and x_k, over the triplets of distinct i, j, k."""
    out = []
    for i, j, k in itertools.permutations(range(len(x)), 3):
        u, v = x[i] - x[j], x[k] - x[j]
        nu, nv = np.linalg.norm(u), np.linalg.norm(v)
        out.append(float(u @ v / (nu * nv)) if nu > 0 and nv > 0 else 0.0)
    return out


def ref_rkd_distance(s: np.ndarray, t: np.ndarray) -> float:
    return float(np.mean([huber(a - b) for a, b in zip(ref_psi(s), ref_psi(t))]))


def ref_rkd_angle(s: np.ndarray, t: np.ndarray) -> float:
    return float(np.mean([huber(a - b) for a, b in zip(ref_cosines(s), ref_cosines(t))]))


# --- hint_loss ------------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hint_loss_without_projection_is_the_elementwise_squared_error(reduction):
    s, t = rand((3, 4, 2, 2), 1), rand((3, 4, 2, 2), 2)
    close(hint_loss(tt(s), tt(t), reduction=reduction), np_reduce((s - t) ** 2, reduction))


def test_hint_loss_mean_is_over_every_element_as_mse_loss():
    s, t = tt(rand((5, 7), 3)), tt(rand((5, 7), 4))
    close(hint_loss(s, t), F.mse_loss(s, t).item())
    close(hint_loss(s, t, reduction="sum"), 35 * F.mse_loss(s, t).item())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_hint_loss_with_a_linear_projection_matches_numpy(reduction):
    torch.manual_seed(0)
    proj = nn.Linear(3, 5).double()
    s, t = rand((4, 3), 5), rand((4, 5), 6)
    w, b = proj.weight.detach().numpy(), proj.bias.detach().numpy()
    projected = np.array([[sum(w[o, i] * row[i] for i in range(3)) + b[o] for o in range(5)] for row in s])
    close(hint_loss(tt(s), tt(t), proj, reduction=reduction), np_reduce((projected - t) ** 2, reduction))


def test_hint_loss_with_a_1x1_convolution_matches_numpy():
    torch.manual_seed(0)
    proj = nn.Conv2d(2, 3, kernel_size=1, bias=False).double()
    s, t = rand((2, 2, 3, 3), 7), rand((2, 3, 3, 3), 8)
    w = proj.weight.detach().numpy()[:, :, 0, 0]
    projected = np.einsum("oc,nchw->nohw", w, s)
    close(hint_loss(tt(s), tt(t), proj), ((projected - t) ** 2).mean())


def test_hint_loss_is_zero_when_the_projection_gives_the_teacher_and_trains_the_projection():
    torch.manual_seed(0)
    proj = nn.Linear(3, 6).double()
    s = tt(rand((4, 3), 9))
    t = proj(s).detach()
    assert hint_loss(s, t, proj).item() == 0.0
    loss = hint_loss(s, t + 1.0, proj)
    loss.backward()
    # d/db mean((Ws + b - t - 1)²) = 2 * (-1) * 4 rows / 24 elements per bias entry
    close(proj.bias.grad, np.full(6, -2.0 * 4 / 24))


# --- attention transfer ----------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2, 3.5, 4])
def test_attention_map_matches_loops(p):
    a = rand((2, 3, 4, 5), 10)
    q = attention_map(tt(a), p)
    assert q.shape == (2, 20)
    close(q, ref_attention_map(a, p))
    close(q.norm(dim=1), np.ones(2))


@pytest.mark.parametrize("c", [0.01, 7.0, -3.0, 1e30, 1e-30])
def test_attention_map_is_invariant_to_scaling_the_features(c):
    a = torch.randn(3, 4, 5, 5, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(attention_map(a * c), attention_map(a), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("p", [1, 2, 4])
def test_attention_transfer_loss_matches_loops_with_different_channel_counts(p, reduction):
    s, t = rand((3, 2, 4, 4), 11), rand((3, 6, 4, 4), 12)
    loss = attention_transfer_loss(tt(s), tt(t), p=p, reduction=reduction)
    close(loss, np_reduce(ref_attention_loss(s, t, p), reduction))


def test_attention_transfer_loss_is_the_squared_distance_between_unit_maps():
    s, t = tt(rand((4, 3, 5, 5), 13)), tt(rand((4, 3, 5, 5), 14))
    qs, qt = attention_map(s), attention_map(t)
    per_example = attention_transfer_loss(s, t, reduction="none")
    close(per_example, (2.0 - 2.0 * (qs * qt).sum(1)).detach().numpy())  # |a - b|² = 2 - 2 a·b for unit a, b
    assert attention_transfer_loss(s, s).item() == 0.0
    assert 0.0 <= per_example.min() and per_example.max() <= 4.0


def test_attention_transfer_loss_is_the_authors_value_times_h_w():
    """Their code: (at(x) - at(y)).pow(2).mean(), a mean over N and the H*W positions."""
    s, t = tt(rand((2, 3, 4, 6), 15)), tt(rand((2, 5, 4, 6), 16))
    at = lambda x: F.normalize(x.pow(2).mean(1).view(x.size(0), -1))  # noqa: E731
    authors = (at(s) - at(t)).pow(2).mean()
    close(attention_transfer_loss(s, t), 24 * authors.item())


def test_attention_transfer_loss_all_zero_feature_map_is_finite_with_finite_gradients():
    for p in (1, 2, 4):
        s = torch.zeros(2, 3, 4, 4, requires_grad=True)
        t = torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(1), requires_grad=True)
        loss = attention_transfer_loss(s, t, p=p)
        close(loss, 1.0, rtol=1e-6)  # the zero map against a unit map
        loss.backward()
        assert torch.isfinite(s.grad).all() and torch.isfinite(t.grad).all()
        assert torch.equal(attention_map(torch.zeros(1, 2, 3, 3)), torch.zeros(1, 9))


# --- cosine_loss -----------------------------------------------------------------------------


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [(5, 8), (2, 3, 8)])
def test_cosine_loss_matches_loops(shape, reduction):
    s, t = rand(shape, 17), rand(shape, 18)
    close(cosine_loss(tt(s), tt(t), reduction=reduction), np_reduce(ref_cosine_loss(s, t), reduction))


def test_cosine_loss_matches_distilberts_cosine_embedding_loss():
    s, t = tt(rand((6, 4), 19)), tt(rand((6, 4), 20))
    close(cosine_loss(s, t), nn.CosineEmbeddingLoss()(s, t, torch.ones(6)).item())


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cosine_loss_masked_positions_add_nothing_and_get_zero_gradient(reduction):
    s, t = rand((2, 5, 4), 21), rand((2, 5, 4), 22)
    mask = np.array([[True, True, False, True, False], [False, True, True, True, True]])
    s_bad = s.copy()
    s_bad[~mask] = math.nan  # padding may hold anything
    S = tt(s_bad, grad=True)
    loss = cosine_loss(S, tt(t), torch.as_tensor(mask), reduction=reduction)
    rows = np.where(mask, ref_cosine_loss(s, t), 0.0)
    expected = {"none": rows, "sum": rows.sum(), "mean": rows.sum() / mask.sum()}[reduction]
    close(loss, expected)
    (g,) = torch.autograd.grad(loss.sum(), S)
    assert torch.isfinite(g).all()
    assert torch.equal(g[torch.as_tensor(~mask)], torch.zeros(int((~mask).sum()), 4, dtype=torch.float64))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cosine_loss_all_positions_masked_gives_zero(reduction):
    S = torch.randn(3, 4, 6, requires_grad=True)
    loss = cosine_loss(S, torch.randn(3, 4, 6), torch.zeros(3, 4, dtype=torch.bool), reduction=reduction)
    assert torch.equal(loss, torch.zeros_like(loss))
    (g,) = torch.autograd.grad(loss.sum(), S)
    assert torch.equal(g, torch.zeros_like(g))


def test_cosine_loss_zero_vectors_count_as_cosine_zero_with_finite_gradients():
    s = torch.zeros(3, 4, requires_grad=True)
    t = torch.zeros(3, 4)
    t[0] = torch.tensor([1.0, 2.0, 0.0, -1.0])
    loss = cosine_loss(s, t, reduction="none")
    assert torch.equal(loss, torch.ones(3))
    loss.sum().backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("c", [0.5, 1e25, 1e-25])
def test_cosine_loss_is_invariant_to_scaling_each_vector(c):
    s, t = torch.randn(4, 5, generator=torch.Generator().manual_seed(2)), torch.randn(4, 5)
    scales = c * torch.tensor([1.0, 3.0, 0.2, 10.0]).unsqueeze(-1)
    torch.testing.assert_close(cosine_loss(s * scales, t), cosine_loss(s, t), rtol=1e-5, atol=1e-6)


# --- RKD ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("n,ds,dt", [(2, 3, 5), (5, 2, 7), (7, 4, 4)])
def test_rkd_distance_loss_matches_loops(n, ds, dt):
    s, t = rand((n, ds), 23), rand((n, dt), 24)
    close(rkd_distance_loss(tt(s), tt(t)), ref_rkd_distance(s, t))


@pytest.mark.parametrize("n,ds,dt", [(3, 3, 5), (5, 2, 7), (6, 4, 4)])
def test_rkd_angle_loss_matches_loops(n, ds, dt):
    s, t = rand((n, ds), 25), rand((n, dt), 26)
    close(rkd_angle_loss(tt(s), tt(t)), ref_rkd_angle(s, t))


def test_rkd_losses_use_both_branches_of_the_huber():
    """Differences above 1 (the linear branch) and below: an outlier among the teacher's points
    for distances, nearly collinear student points (cosines near ±1) for angles."""
    s, t = rand((6, 3), 27), rand((6, 3), 28)
    t[0] *= 40.0
    line = np.outer(np.arange(6.0), [1.0, 2.0, 0.5]) + rand((6, 3), 29, 0.05)
    for student, teacher, relation in ((s, t, ref_psi), (line, t, ref_cosines)):
        differences = np.abs(np.subtract(relation(student), relation(teacher)))
        assert differences.max() > 1.0 and differences.min() < 1.0
    close(rkd_distance_loss(tt(s), tt(t)), ref_rkd_distance(s, t))
    close(rkd_angle_loss(tt(line), tt(t)), ref_rkd_angle(line, t))


def test_rkd_distance_is_the_authors_value_times_n_over_n_minus_1():
    """Their code: pairwise distances over all N² ordered pairs (diagonal included), each side
    divided by the mean of its positive distances, F.smooth_l1_loss averaged over the N² entries."""
    s, t = tt(rand((6, 3), 29)), tt(rand((6, 8), 30))

    def psi(x):
        d = torch.cdist(x, x)
        return d / d[d > 0].mean()

    authors = F.smooth_l1_loss(psi(s), psi(t))
    close(rkd_distance_loss(s, t), authors.item() * 6 / 5)


def test_rkd_angle_is_the_authors_value_times_n_squared_over_n_minus_1_n_minus_2():
    """Their code: F.normalize of every difference (zero ones stay 0), the cosines of all N³
    index triplets, F.smooth_l1_loss averaged over them."""
    s, t = tt(rand((6, 3), 44)), tt(rand((6, 8), 45))

    def angles(x):
        directions = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), p=2, dim=2)
        return torch.bmm(directions, directions.transpose(1, 2)).view(-1)

    authors = F.smooth_l1_loss(angles(s), angles(t))
    close(rkd_angle_loss(s, t), authors.item() * 36 / 20)


@pytest.mark.parametrize("c", [3.0, 1e-3, 1e30, 1e-30])
def test_rkd_losses_are_invariant_to_scale_rotation_and_translation(c):
    s, t = rand((6, 4), 31), rand((6, 5), 32)
    base_d, base_a = ref_rkd_distance(s, t), ref_rkd_angle(s, t)
    moved = c * (s @ random_rotation(4, 33) + rand(4, 34))  # translated by an offset of the points' scale
    for dtype in (torch.float64, torch.float32):
        tol = dict(rtol=1e-9, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-4, atol=1e-6)
        close(rkd_distance_loss(tt(moved, dtype), tt(t, dtype)), base_d, **tol)
        close(rkd_angle_loss(tt(moved, dtype), tt(t, dtype)), base_a, **tol)
        close(rkd_distance_loss(tt(t, dtype), tt(moved, dtype)), ref_rkd_distance(t, s), **tol)


def test_rkd_losses_are_zero_for_a_scaled_rotated_copy():
    s = rand((5, 3), 35)
    t = np.concatenate([2.5 * s @ random_rotation(3, 36), np.zeros((5, 2))], axis=1)  # wider, and moved
    assert abs(rkd_distance_loss(tt(s), tt(t)).item()) < 1e-20
    assert abs(rkd_angle_loss(tt(s), tt(t)).item()) < 1e-20


@pytest.mark.parametrize("loss_fn,ref", [(rkd_distance_loss, ref_rkd_distance), (rkd_angle_loss, ref_rkd_angle)])
def test_rkd_duplicate_points_give_finite_values_and_gradients(loss_fn, ref):
    s = rand((5, 3), 37)
    s[3] = s[1]
    t = rand((5, 4), 38)
    t[4] = t[0]
    S, T = tt(s, grad=True), tt(t, grad=True)
    loss = loss_fn(S, T)
    close(loss, ref(s, t))
    loss.backward()
    assert torch.isfinite(S.grad).all() and torch.isfinite(T.grad).all()
    same = torch.ones(4, 3, requires_grad=True)  # every point the same: no distance, no angle
    loss = loss_fn(same, tt(t[:4]))
    close(loss, ref(np.ones((4, 3)), t[:4]))
    loss.backward()
    assert torch.isfinite(same.grad).all()


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_empty_batches_give_empty_or_zero_losses(reduction):
    """No example: "none" is empty, "sum" and "mean" are 0 (not NaN), as in kdlearn.losses."""
    for loss in (hint_loss(torch.zeros(0, 3), torch.zeros(0, 3), reduction=reduction),
                 attention_transfer_loss(torch.zeros(0, 2, 3, 3), torch.zeros(0, 4, 3, 3), reduction=reduction),
                 cosine_loss(torch.zeros(0, 5, 3), torch.zeros(0, 5, 3), reduction=reduction)):
        assert loss.numel() == 0 if reduction == "none" else loss.item() == 0.0


# --- gradients and precision ------------------------------------------------------------------


def gradcheck_cases():
    torch.manual_seed(0)
    proj = nn.Linear(3, 4).double()
    mask = torch.tensor([[True, False, True], [True, True, False]])
    return [
        ("hint", lambda s, t: hint_loss(s, t), (3, 4), (3, 4)),
        ("hint_projected", lambda s, t: hint_loss(s, t, proj, reduction="sum"), (3, 3), (3, 4)),
        ("hint_none", lambda s, t: hint_loss(s, t, reduction="none"), (2, 2, 2), (2, 2, 2)),
        ("attention_p2", lambda s, t: attention_transfer_loss(s, t), (2, 2, 3, 3), (2, 3, 3, 3)),
        ("attention_p1_none", lambda s, t: attention_transfer_loss(s, t, p=1, reduction="none"),
         (2, 2, 3, 3), (2, 1, 3, 3)),
        ("attention_p4_sum", lambda s, t: attention_transfer_loss(s, t, p=4, reduction="sum"),
         (2, 2, 2, 3), (2, 2, 2, 3)),
        ("cosine", lambda s, t: cosine_loss(s, t), (4, 5), (4, 5)),
        ("cosine_masked_none", lambda s, t: cosine_loss(s, t, mask, reduction="none"), (2, 3, 4), (2, 3, 4)),
        ("rkd_distance", rkd_distance_loss, (5, 3), (5, 4)),
        ("rkd_angle", rkd_angle_loss, (5, 3), (5, 2)),
    ]


@pytest.mark.parametrize("name,fn,s_shape,t_shape", gradcheck_cases(), ids=[c[0] for c in gradcheck_cases()])
def test_gradcheck(name, fn, s_shape, t_shape):
    """Analytic gradients match finite differences, for the student and the teacher."""
    s, t = tt(rand(s_shape, 39), grad=True), tt(rand(t_shape, 40), grad=True)
    assert torch.autograd.gradcheck(fn, (s, t), eps=1e-6, atol=1e-8, rtol=1e-6)


def half_cases():
    """Inputs on which half-precision arithmetic would overflow or lose about 1e-3: squares of
    values near 300 exceed fp16's 65504, and sums of 512 products keep 3 digits in fp16."""
    return [
        ("hint", hint_loss, (4, 64), (4, 64), 300.0),
        ("attention", attention_transfer_loss, (2, 8, 4, 4), (2, 3, 4, 4), 300.0),
        ("cosine", cosine_loss, (3, 512), (3, 512), 1.0),
        ("rkd_distance", rkd_distance_loss, (6, 256), (6, 64), 300.0),
        ("rkd_angle", rkd_angle_loss, (5, 256), (5, 64), 300.0),
    ]


@pytest.mark.parametrize("dtype", HALF)
@pytest.mark.parametrize("name,fn,s_shape,t_shape,scale", half_cases(), ids=[c[0] for c in half_cases()])
def test_half_precision_inputs_are_computed_in_fp32(name, fn, s_shape, t_shape, scale, dtype):
    """fp16/bf16 inputs give an fp32 loss as accurate as fp32 arithmetic on the rounded inputs;
    gradients come back in the input dtype, finite."""
    S = tt(rand(s_shape, 41, scale), dtype, grad=True)
    T = tt(rand(t_shape, 42, scale), dtype)
    loss = fn(S, T)
    assert loss.dtype == torch.float32
    close(loss, fn(S.detach().double(), T.double()).item(), rtol=1e-5, atol=1e-6)
    (g,) = torch.autograd.grad(loss, S)
    assert g.dtype == dtype and torch.isfinite(g).all()


def test_attention_map_of_half_features_is_fp32():
    a = tt(rand((2, 3, 4, 4), 43, 300.0), torch.float16)
    q = attention_map(a)
    assert q.dtype == torch.float32
    close(q, ref_attention_map(a.double().numpy(), 2), rtol=1e-5, atol=1e-7)


# --- fuzzing extremes ---------------------------------------------------------------------------


FUZZ = settings(max_examples=40, deadline=None)
EXTREME_SCALES = [1e-30, 1e-6, 1.0, 1e6, 1e30]


@st.composite
def embeddings(draw, min_n):
    """(student, teacher) float64 arrays with extreme scales, offsets and duplicated rows."""
    n = draw(st.integers(min_n, 7))
    ds, dt = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = []
    for d in (ds, dt):
        x = rng.normal(size=(n, d)) * draw(st.sampled_from(EXTREME_SCALES))
        x += draw(st.sampled_from([0.0, 1.0])) * rng.normal(size=d) * np.abs(x).max()  # a translation
        duplicates = draw(st.sampled_from([0, 1, n]))  # none, one, or every point the same
        for i in range(1, duplicates + 1 if duplicates < n else n):
            x[i] = x[0]
        arrays.append(x)
    return arrays


@FUZZ
@given(pair=embeddings(min_n=2), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_fuzz_rkd_distance_is_finite_and_matches_the_reference(pair, dtype):
    check_fuzz(rkd_distance_loss, ref_rkd_distance, pair, dtype)


@FUZZ
@given(pair=embeddings(min_n=3), dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]))
def test_fuzz_rkd_angle_is_finite_and_matches_the_reference(pair, dtype):
    check_fuzz(rkd_angle_loss, ref_rkd_angle, pair, dtype)


def check_fuzz(loss_fn, ref, pair, dtype):
    """Finite value and gradients in any dtype; in fp32, the float64 reference on the same inputs
    (rounding to half precision changes them, merging close points). The extreme scales are for
    fp32: half-precision inputs are brought to magnitude 1, because a scale-free loss's gradient
    grows as 1 / scale and leaves fp16's range (65504) below a scale of about 1e-4."""
    if dtype != torch.float32:
        pair = [x / np.abs(x).max() if np.abs(x).max() > 0 else x for x in pair]
    S, T = tt(pair[0], dtype, grad=True), tt(pair[1], dtype, grad=True)
    loss = loss_fn(S, T)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(S.grad).all() and torch.isfinite(T.grad).all()
    if dtype == torch.float32:
        rounded = [S.detach().double().numpy(), T.detach().double().numpy()]
        close(loss, ref(*rounded), rtol=1e-3, atol=1e-5)


@FUZZ
@given(scale=st.sampled_from(EXTREME_SCALES + [0.0]), p=st.sampled_from([1, 2, 4]),
       seed=st.integers(0, 2**32 - 1), zero_teacher=st.booleans())
def test_fuzz_attention_transfer_is_finite_and_matches_the_reference(scale, p, seed, zero_teacher):
    rng = np.random.default_rng(seed)
    s = np.maximum(rng.normal(size=(2, 3, 3, 3)), 0.0) * scale  # ReLU outputs: many exact zeros
    t = np.zeros((2, 2, 3, 3)) if zero_teacher else rng.normal(size=(2, 2, 3, 3))
    S, T = tt(s, torch.float32, grad=True), tt(t, torch.float32, grad=True)
    loss = attention_transfer_loss(S, T, p=p)
    loss.backward()
    assert torch.isfinite(S.grad).all() and torch.isfinite(T.grad).all()
    close(loss, ref_attention_loss(S.detach().double().numpy(), t, p).mean(), rtol=1e-4, atol=1e-6)


@FUZZ
@given(scale=st.sampled_from(EXTREME_SCALES + [0.0]), seed=st.integers(0, 2**32 - 1),
       masked=st.floats(0.0, 1.0))
def test_fuzz_cosine_is_finite_and_matches_the_reference(scale, seed, masked):
    rng = np.random.default_rng(seed)
    s, t = rng.normal(size=(3, 4, 6)) * scale, rng.normal(size=(3, 4, 6))
    mask = rng.random((3, 4)) >= masked
    S = tt(s, torch.float32, grad=True)
    loss = cosine_loss(S, tt(t, torch.float32), torch.as_tensor(mask))
    loss.backward()
    assert torch.isfinite(S.grad).all()
    rows = ref_cosine_loss(S.detach().double().numpy(), t.astype(np.float32).astype(np.float64))
    close(loss, rows[mask].mean() if mask.any() else 0.0, rtol=1e-5, atol=1e-6)


# --- capture --------------------------------------------------------------------------------------


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 5))
        self.head = nn.Linear(5, 2)

    def forward(self, x):
        return self.head(self.body(x))


def all_hooks(model):
    return [h for m in model.modules() for h in m._forward_hooks.values()]


def test_capture_returns_the_named_outputs_and_removes_its_hooks():
    torch.manual_seed(0)
    net, x = Net(), torch.randn(6, 3)
    with capture(net, ["body.0", "body", "head", ""]) as outputs:
        assert outputs == {}
        y = net(x)
        assert len(all_hooks(net)) == 4
    first = net.body[0](x)
    torch.testing.assert_close(outputs["body.0"], first)
    torch.testing.assert_close(outputs["body"], net.body[2](torch.relu(first)))
    torch.testing.assert_close(outputs["head"], y)
    assert outputs[""] is y
    assert all_hooks(net) == []


def test_capture_keeps_the_latest_output_and_its_graph():
    torch.manual_seed(0)
    net = Net()
    with capture(net, ["body.2"]) as outputs:
        net(torch.randn(2, 3))
        x = torch.randn(4, 3)
        net(x)
        outputs["body.2"].sum().backward()
    assert outputs["body.2"].shape == (4, 5)
    torch.testing.assert_close(net.body[2].bias.grad, torch.full((5,), 4.0))


def test_capture_removes_its_hooks_when_the_block_raises():
    net = Net()
    with pytest.raises(RuntimeError, match="in the block"):
        with capture(net, ["body.1", "head"]):
            net(torch.randn(1, 3))
            raise RuntimeError("in the block")
    assert net.body[1]._forward_hooks == {} and net.head._forward_hooks == {}
    assert all_hooks(net) == []


def test_capture_unknown_name_is_named_with_valid_names_and_adds_no_hook():
    net = Net()
    with pytest.raises(ValueError, match=r"names: Net has no submodule named 'body.3'.*'body.2'.*'head'"):
        with capture(net, ["head", "body.3"]):
            pass
    assert all_hooks(net) == []


@pytest.mark.parametrize("model,names,pattern", [
    (Net(), "head", r"names must be a list of module names.*\[name\]"),
    (Net(), ["head", 3], r"names must be a list of module names \(strings\)"),
    (Net(), None, r"names must be a list of module names"),
    (lambda x: x, ["head"], r"model must be a torch.nn.Module, got function"),
])
def test_capture_bad_arguments(model, names, pattern):
    with pytest.raises(ValueError, match=pattern):
        with capture(model, names):
            pass


def test_capture_feeds_hint_loss_in_a_training_step():
    """The use the module is for: a hint on an intermediate layer trains the layers below it."""
    torch.manual_seed(0)
    student, teacher, proj = Net(), Net(), nn.Linear(5, 5)
    x = torch.randn(8, 3)
    with capture(teacher, ["body"]) as t_out, torch.no_grad():
        teacher(x)
    with capture(student, ["body"]) as s_out:
        student(x)
        loss = hint_loss(s_out["body"], t_out["body"], proj)
    loss.backward()
    assert student.body[0].weight.grad.abs().sum() > 0 and proj.weight.grad.abs().sum() > 0
    assert student.head.weight.grad is None


# --- bad input ---------------------------------------------------------------------------------


X = torch.randn(2, 3)
MAP = torch.randn(2, 3, 4, 4)


def _with(x, index, value):
    x = x.clone()
    x[index] = value
    return x


BAD_CASES = [
    ("hint_list", hint_loss, (X.tolist(), X), {}, r"student_features must be a torch.Tensor, got list"),
    ("hint_int", hint_loss, (X, X.long()), {}, r"teacher_features must be a floating-point tensor"),
    ("hint_widths", hint_loss, (X, torch.randn(2, 5)), {},
     r"student_features has shape \(2, 3\) but teacher_features has shape \(2, 5\).*a projection that maps "
     r"the student's width to the teacher's"),
    ("hint_projection_shape", hint_loss, (X, torch.randn(2, 5)), {"projection": nn.Linear(3, 4)},
     r"projection\(student_features\) has shape \(2, 4\) but teacher_features has shape \(2, 5\)"),
    ("hint_projection_not_callable", hint_loss, (X, X), {"projection": 3}, r"projection must be a callable"),
    ("hint_projection_returns", hint_loss, (X, X), {"projection": lambda x: x.tolist()},
     r"projection must return a tensor, got list"),
    ("hint_nan", hint_loss, (_with(X, (0, 0), math.nan), X), {}, r"student_features contains NaN or inf"),
    ("hint_inf", hint_loss, (X, _with(X, (1, 2), math.inf)), {}, r"teacher_features contains NaN or inf"),
    ("hint_reduction", hint_loss, (X, X), {"reduction": "batchmean"}, r"reduction must be one of.*'batchmean'"),
    ("attention_3d", attention_transfer_loss, (MAP[0], MAP[0]), {},
     r"student_features must be a feature map of shape \(N, C, H, W\).*got \(3, 4, 4\)"),
    ("attention_spatial", attention_transfer_loss, (MAP, torch.randn(2, 3, 8, 8)), {},
     r"same batch size N and spatial size.*adaptive_avg_pool2d\(features, \(4, 4\)\)"),
    ("attention_batch", attention_transfer_loss, (MAP, torch.randn(3, 3, 4, 4)), {}, r"same batch size N"),
    ("attention_p_below_1", attention_transfer_loss, (MAP, MAP), {"p": 0.5}, r"p must be a finite number >= 1"),
    ("attention_p_nan", attention_transfer_loss, (MAP, MAP), {"p": math.nan}, r"p must be a finite number"),
    ("attention_p_str", attention_transfer_loss, (MAP, MAP), {"p": "2"}, r"p must be a finite number"),
    ("attention_nan", attention_transfer_loss, (MAP, _with(MAP, (1, 0, 0, 0), math.nan)), {},
     r"teacher_features contains NaN or inf"),
    ("attention_reduction", attention_transfer_loss, (MAP, MAP), {"reduction": "avg"}, r"reduction must be one of"),
    ("attention_no_channels", attention_transfer_loss, (torch.zeros(2, 0, 4, 4), MAP), {},
     r"student_features must be a feature map of shape \(N, C, H, W\) with C, H, W >= 1, got \(2, 0, 4, 4\)"),
    ("map_int", attention_map, (MAP.long(),), {}, r"features must be a floating-point tensor"),
    ("map_p", attention_map, (MAP,), {"p": True}, r"p must be a finite number >= 1, got True"),
    ("cosine_shape", cosine_loss, (X, torch.randn(2, 4)), {},
     r"student_hidden \(2, 3\) and teacher_hidden \(2, 4\) must have the same shape.*project"),
    ("cosine_scalar", cosine_loss, (torch.tensor(1.0), torch.tensor(1.0)), {}, r"must have shape \(\.\.\., D\)"),
    ("cosine_no_width", cosine_loss, (torch.zeros(2, 0), torch.zeros(2, 0)), {},
     r"student_hidden must have shape \(\.\.\., D\) with D >= 1, got \(2, 0\)"),
    ("cosine_mask_int", cosine_loss, (X, X, torch.ones(2, dtype=torch.long)), {}, r"mask must be a boolean tensor"),
    ("cosine_mask_shape", cosine_loss, (X, X, torch.ones(3, dtype=torch.bool)), {},
     r"mask must have the hidden states' leading shape \(2,\), got \(3,\)"),
    ("cosine_mask_list", cosine_loss, (X, X, [True, False]), {}, r"mask must be a boolean tensor.*list"),
    ("cosine_nan", cosine_loss, (_with(X, (0, 1), math.nan), X), {}, r"student_hidden contains NaN or inf"),
    ("cosine_reduction", cosine_loss, (X, X), {"reduction": "max"}, r"reduction must be one of"),
    ("distance_one_point", rkd_distance_loss, (X[:1], X[:1]), {}, r"at least 2 examples \(N >= 2\).*got N = 1"),
    ("angle_two_points", rkd_angle_loss, (X, X), {}, r"at least 3 examples \(N >= 3\).*got N = 2"),
    ("distance_n", rkd_distance_loss, (torch.randn(4, 2), torch.randn(5, 2)), {},
     r"same N examples, got N = 4 and 5"),
    ("angle_3d", rkd_angle_loss, (MAP, MAP), {}, r"student must be embeddings of shape \(N, D\).*flatten"),
    ("distance_no_width", rkd_distance_loss, (torch.zeros(3, 0), X), {},
     r"student must be embeddings of shape \(N, D\) with D >= 1, got \(3, 0\)"),
    ("hint_device", hint_loss, (X, X.to("meta")), {}, r"student_features and teacher_features must be on the same "
                                                       r"device, got cpu and meta"),
    ("attention_device", attention_transfer_loss, (MAP.to("meta"), MAP), {}, r"same device, got meta and cpu"),
    ("cosine_device", cosine_loss, (X, X.to("meta")), {}, r"student_hidden and teacher_hidden must be on the same"),
    ("cosine_mask_device", cosine_loss, (X, X, torch.ones(2, dtype=torch.bool, device="meta")), {},
     r"mask must be on the hidden states' device cpu, got meta"),
    ("distance_device", rkd_distance_loss, (X, X.to("meta")), {}, r"student and teacher must be on the same device"),
    ("distance_int", rkd_distance_loss, (X, X.int()), {}, r"teacher must be a floating-point tensor"),
    ("angle_inf", rkd_angle_loss, (torch.randn(3, 2), _with(torch.randn(3, 2), (0, 0), -math.inf)), {},
     r"teacher contains NaN or inf"),
]


@pytest.mark.parametrize("name,fn,args,kwargs,pattern", BAD_CASES, ids=[c[0] for c in BAD_CASES])
def test_bad_input_raises_value_error_naming_the_argument(name, fn, args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        fn(*args, **kwargs)


# --- WithFeatures ------------------------------------------------------------------------------


def test_with_features_returns_the_logits_and_the_adapted_outputs_and_leaves_no_hook():
    net = models.cnn(channels=(3, 5), embedding=7, seed=0)
    projection = nn.Conv2d(5, 9, 1)
    wrapped = WithFeatures(net, ["block1", "block2"], adapters={"block2": projection})
    x = torch.rand(4, 64)
    logits, features = wrapped(x)
    assert torch.equal(logits, net(x))
    assert torch.equal(features["block1"], net[:2](x))
    assert torch.allclose(features["block2"], projection(net[:3](x)))
    assert all(not m._forward_hooks for m in net.modules())
    assert {id(p) for p in projection.parameters()} <= {id(p) for p in wrapped.parameters()}


def test_with_features_adapters_train_with_the_model():
    digits = data.digits()
    split = data.Split(digits.train.x[:128], digits.train.y[:128])
    teacher = WithFeatures(models.cnn(channels=(6, 8), embedding=8, seed=1), ["block2"])
    student = WithFeatures(models.cnn(channels=(2, 4), embedding=8, seed=0), ["block2"],
                           adapters={"block2": nn.Conv2d(4, 8, 1)})
    before = student.adapters[0].weight.detach().clone()

    def loss(s, t, labels):
        return F.cross_entropy(s[0], labels) + hint_loss(s[1]["block2"], t[1]["block2"])

    training.train(student, split, teacher=teacher, loss=loss, epochs=2, progress=False)
    assert not torch.equal(before, student.adapters[0].weight)


def test_with_features_refuses_unknown_names_and_adapters():
    with pytest.raises(ValueError, match="no submodule named 'block3'"):
        WithFeatures(models.cnn(), ["block3"])
    with pytest.raises(ValueError, match="adapters has entries for \\['embed'\\]"):
        WithFeatures(models.cnn(), ["block2"], adapters={"embed": nn.Identity()})
    with pytest.raises(ValueError, match="for one module pass \\[name\\]"):
        WithFeatures(models.cnn(), "block2")
