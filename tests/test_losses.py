"""Tests of kdlearn.losses against independent numpy/scipy computations and the documented
conventions (masking, reductions, numerics, argument checks). The docstrings of
kdlearn/losses.py and kdlearn/_validation.py are the specification."""

from __future__ import annotations

import math
from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.special import log_softmax, rel_entr, softmax

from kdlearn.losses import generalized_jsd, kd_loss, kl_divergence, soft_targets

pytestmark = pytest.mark.usefixtures("single_torch_thread")

INF = math.inf
SHAPES = [(5, 7), (2, 3, 6)]  # (B, V) classifier and (B, T, V) language model
REDUCTIONS = ["none", "sum", "mean"]
BETAS = [0.0, 0.1, 0.3, 0.5, 0.9, 1.0]


# --- numpy / scipy references, written from the formulas in the docstrings --------------------


def np_soft(z: np.ndarray, T: float) -> np.ndarray:
    return softmax(z / T, axis=-1)


def np_kl(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """sum_v a_v log(a_v / b_v) per row; rel_entr gives 0 log 0 = 0 and a log(a/0) = inf."""
    return rel_entr(a, b).sum(axis=-1)


def np_jsd(p: np.ndarray, q: np.ndarray, beta: float) -> np.ndarray:
    if beta == 0.0:
        return np_kl(p, q)
    if beta == 1.0:
        return np_kl(q, p)
    m = beta * p + (1 - beta) * q
    return beta * np_kl(p, m) + (1 - beta) * np_kl(q, m)


def np_ce(z: np.ndarray, labels: np.ndarray) -> np.ndarray:
    safe = np.where(labels >= 0, labels, 0)
    return -np.take_along_axis(log_softmax(z, axis=-1), safe[..., None], axis=-1)[..., 0]


def np_kd(s, t, labels, T, alpha, t_squared):
    soft = np_kl(np_soft(t, T), np_soft(s, T)) * (T * T if t_squared else 1.0)
    return alpha * soft + (1 - alpha) * np_ce(s, labels)


def np_reduce(rows: np.ndarray, valid: np.ndarray, reduction: str):
    rows = np.where(valid, rows, 0.0)
    if reduction == "none":
        return rows
    if reduction == "sum":
        return rows.sum()
    return rows.sum() / max(int(valid.sum()), 1)


# --- inputs ---------------------------------------------------------------------------------


def rand(shape, seed=0, scale=2.0) -> np.ndarray:
    return np.random.default_rng(seed).normal(scale=scale, size=shape)


def make_case(shape, seed=0):
    """float64 student/teacher logits, labels with every third row ignored (-100), and the
    boolean array of the rows that count."""
    rng = np.random.default_rng(seed)
    s, t = rng.normal(scale=2.0, size=shape), rng.normal(scale=2.0, size=shape)
    labels = rng.integers(0, shape[-1], size=shape[:-1])
    valid = np.ones(shape[:-1], dtype=bool)
    valid.flat[::3] = False
    labels = np.where(valid, labels, -100)
    return s, t, labels, valid


def tt(x, dtype=torch.float64, grad=False) -> torch.Tensor:
    out = torch.as_tensor(np.asarray(x)).to(dtype)
    return out.requires_grad_() if grad else out


def assert_matches(got: torch.Tensor, expected, rtol=1e-10, atol=1e-12):
    expected = np.asarray(expected, dtype=np.float64)
    assert tuple(got.shape) == expected.shape
    np.testing.assert_allclose(got.detach().double().numpy(), expected, rtol=rtol, atol=atol)


def grads(loss: torch.Tensor, *inputs: torch.Tensor):
    return torch.autograd.grad(loss.sum(), inputs, allow_unused=False)


def _kd(s, t, *, T=1.0, labels=None, ignore_index=-100, mask=None, reduction="mean",
        alpha=0.7, t_squared=True):
    """kd_loss under the signature of the other losses (it has no mask argument)."""
    assert mask is None, "kd_loss has no mask argument"
    return kd_loss(s, t, labels, T=T, alpha=alpha, t_squared=t_squared,
                   ignore_index=ignore_index, reduction=reduction)


# The loss functions of the (student, teacher) kind, under one calling convention.
LOSSES = {
    "kl_forward": partial(kl_divergence, direction="forward"),
    "kl_reverse": partial(kl_divergence, direction="reverse"),
    **{f"jsd_{b}": partial(generalized_jsd, beta=b) for b in BETAS},
    "kd": _kd,
    "kd_no_t2": partial(_kd, t_squared=False),
}
FOUR = ["kl_forward", "kl_reverse", "jsd_0.3", "kd"]  # one of each function, for the costlier tests


# === 1. values against the numpy/scipy references ===========================================


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", [0.3, 1.0, 4.0, 25.0])
def test_soft_targets_matches_scipy(shape, T):
    """soft_targets is softmax(z / T) over the last dimension."""
    z = rand(shape)
    assert_matches(soft_targets(tt(z), T), np_soft(z, T), atol=0)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("direction", ["forward", "reverse"])
def test_kl_divergence_matches_reference(direction, T, shape, reduction):
    """forward = KL(p_T || q_T), reverse = KL(q_T || p_T), rows reduced as documented."""
    s, t, labels, valid = make_case(shape)
    p, q = np_soft(t, T), np_soft(s, T)
    rows = np_kl(p, q) if direction == "forward" else np_kl(q, p)
    got = kl_divergence(tt(s), tt(t), T=T, direction=direction, labels=tt(labels, torch.long),
                        reduction=reduction)
    assert_matches(got, np_reduce(rows, valid, reduction))
    if reduction == "none":  # left-out rows are exactly 0
        assert torch.equal(got[tt(~valid, torch.bool)], torch.zeros(int((~valid).sum()), dtype=got.dtype))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", [1.0, 2.5])
@pytest.mark.parametrize("beta", BETAS)
def test_generalized_jsd_matches_reference(beta, T, shape, reduction):
    """JSD(beta) = beta KL(p||m) + (1-beta) KL(q||m), m = beta p + (1-beta) q; ends are the KLs."""
    s, t, labels, valid = make_case(shape, seed=1)
    rows = np_jsd(np_soft(t, T), np_soft(s, T), beta)
    got = generalized_jsd(tt(s), tt(t), beta=beta, T=T, labels=tt(labels, torch.long), reduction=reduction)
    assert_matches(got, np_reduce(rows, valid, reduction))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("T", [1.0, 4.0])
@pytest.mark.parametrize("alpha", [0.0, 0.4, 1.0])
@pytest.mark.parametrize("t_squared", [True, False])
def test_kd_loss_matches_reference(t_squared, alpha, T, shape, reduction):
    """kd_loss = alpha T² KL(p_T || q_T) + (1 - alpha) CE(q_1, labels), T² switchable."""
    s, t, labels, valid = make_case(shape, seed=2)
    rows = np_kd(s, t, labels, T, alpha, t_squared)
    got = kd_loss(tt(s), tt(t), tt(labels, torch.long), T=T, alpha=alpha, t_squared=t_squared,
                  reduction=reduction)
    assert_matches(got, np_reduce(rows, valid, reduction))


@pytest.mark.parametrize("T", [1.0, 3.0])
def test_mean_equals_torch_batchmean_for_2d_logits(T):
    """For (B, V) logits with no row left out, "mean" is torch's kl_div(reduction="batchmean")."""
    s, t = tt(rand((6, 9), 3)), tt(rand((6, 9), 4))
    ref = F.kl_div(F.log_softmax(s / T, -1), F.log_softmax(t / T, -1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(kl_divergence(s, t, T=T), ref, rtol=1e-12, atol=0)


def test_mean_is_per_token_for_3d_logits():
    """For (B, T, V) logits "mean" divides by B*T tokens: batchmean (divides by B) is T times it."""
    B, n_tokens, V = 2, 5, 7
    s, t = tt(rand((B, n_tokens, V), 5)), tt(rand((B, n_tokens, V), 6))
    ours = kl_divergence(s, t)
    batchmean = F.kl_div(F.log_softmax(s, -1), F.log_softmax(t, -1), log_target=True, reduction="batchmean")
    torch.testing.assert_close(batchmean, n_tokens * ours, rtol=1e-12, atol=0)
    assert not torch.allclose(batchmean, ours)


def test_kd_loss_alpha_0_is_torch_cross_entropy():
    """alpha = 0 leaves the hard-label term: torch's cross_entropy with the same ignore_index."""
    s, t, labels, _ = make_case((7, 5), seed=7)
    got = kd_loss(tt(s), tt(t), tt(labels, torch.long), T=3.0, alpha=0.0)
    ref = F.cross_entropy(tt(s), tt(labels, torch.long), ignore_index=-100)
    torch.testing.assert_close(got, ref, rtol=1e-12, atol=0)


# === 2. masking ==============================================================================

# ignore_index: the default, another negative, an in-range class, and one past the vocabulary
MASKINGS = ["ignore_-100", "ignore_-1", "ignore_0", "ignore_999", "mask", "labels_and_mask"]


def masking_kwargs(mode: str, left_out: np.ndarray, V: int, seed=0):
    """kwargs that leave out the rows where left_out is True (labels of counted rows are in [1, V))."""
    labels = np.random.default_rng(seed).integers(1, V, size=left_out.shape)
    if mode.startswith("ignore_"):
        ignore = int(mode.removeprefix("ignore_"))
        return dict(labels=tt(np.where(left_out, ignore, labels), torch.long), ignore_index=ignore)
    if mode == "mask":
        return dict(mask=tt(~left_out, torch.bool))
    # half of the left-out rows through labels, the other half through mask
    flat = np.flatnonzero(left_out)
    by_label = np.zeros_like(left_out)
    by_label.flat[flat[::2]] = True
    by_mask = left_out & ~by_label
    return dict(labels=tt(np.where(by_label, -100, labels), torch.long), mask=tt(~by_mask, torch.bool))


def select_rows(kwargs: dict, keep: torch.Tensor) -> dict:
    return {k: (v[keep] if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}


def without_kd_mask(names, modes):
    """(name, mode) pairs, leaving out the mask modes for kd_loss, which has no mask argument."""
    return [(n, m) for n in names for m in modes if not (n == "kd" and "mask" in m)]


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,mode", without_kd_mask(FOUR, MASKINGS))
def test_left_out_rows_add_nothing_and_get_zero_gradient(name, mode, reduction):
    """Left-out rows (labels == ignore_index, mask == False, or both) change neither the loss nor
    the gradient, even when their logits are all -inf or huge."""
    shape = (3, 4, 6)
    left_out = np.zeros(shape[:-1], dtype=bool)
    left_out[0, 1] = left_out[1, 0] = left_out[1, 3] = left_out[2, 2] = True
    s, t = rand(shape, 10), rand(shape, 11)
    s[left_out] = -INF                                            # no distribution at all
    t[left_out] = np.array([3e38, -3e38, -INF, 0.0, 1e30, -INF])  # garbage
    kwargs = masking_kwargs(mode, left_out, shape[-1])
    S, Tch = tt(s, grad=True), tt(t, grad=True)

    loss = LOSSES[name](S, Tch, T=2.0, reduction=reduction, **kwargs)
    gs, gt = grads(loss, S, Tch)

    keep = tt(~left_out, torch.bool)
    kept = LOSSES[name](tt(s)[keep], tt(t)[keep], T=2.0, reduction=reduction, **select_rows(kwargs, keep))
    if reduction == "none":
        assert torch.equal(loss[~keep], torch.zeros(int((~keep).sum()), dtype=loss.dtype))
        torch.testing.assert_close(loss[keep], kept, rtol=1e-12, atol=1e-14)
    else:
        torch.testing.assert_close(loss, kept, rtol=1e-12, atol=1e-14)
    for g in (gs, gt):
        assert torch.isfinite(g).all()
        assert torch.equal(g[~keep], torch.zeros_like(g[~keep]))
    assert gs[keep].abs().sum() > 0


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,mode", without_kd_mask(FOUR, ["ignore_-100", "mask"]))
def test_all_rows_left_out_gives_zero_loss_and_zero_gradient(name, mode, reduction):
    """With no row counted the loss is 0 (not 0/0) and every gradient is 0."""
    shape = (2, 3, 5)
    S, Tch = torch.full(shape, -INF, dtype=torch.float64, requires_grad=True), tt(rand(shape), grad=True)
    kwargs = masking_kwargs(mode, np.ones(shape[:-1], dtype=bool), shape[-1])
    loss = LOSSES[name](S, Tch, T=1.5, reduction=reduction, **kwargs)
    expected_shape = shape[:-1] if reduction == "none" else ()
    assert torch.equal(loss, torch.zeros(expected_shape, dtype=torch.float64))
    for g in grads(loss, S, Tch):
        assert torch.equal(g, torch.zeros_like(g))


# === 3. identities ===========================================================================


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("name", list(LOSSES)[:-2])  # the divergences, not kd_loss
def test_divergence_of_a_distribution_with_itself_is_zero(name, shape):
    """KL(p || p) = 0 and JSD(p, p) = 0 for every beta and T."""
    z = tt(rand(shape, 12))
    for T in (0.5, 1.0, 4.0):
        torch.testing.assert_close(LOSSES[name](z, z.clone(), T=T, reduction="none"),
                                   torch.zeros(shape[:-1], dtype=torch.float64), rtol=0, atol=1e-13)


@pytest.mark.parametrize("name", LOSSES)
def test_divergences_are_non_negative(name):
    """Every divergence (and kd_loss) is >= 0 on every row, also for very different p and q."""
    for seed, scale in [(0, 0.1), (1, 2.0), (2, 20.0)]:
        s, t = tt(rand((40, 11), seed, scale)), tt(rand((40, 11), seed + 100, scale))
        kw = {"labels": torch.zeros(40, dtype=torch.long)} if name.startswith("kd") else {}
        rows = LOSSES[name](s, t, T=1.7, reduction="none", **kw)
        assert (rows >= -1e-13).all()
        assert (rows > 0).any()


@pytest.mark.parametrize("beta", [0.1, 0.3, 0.5, 0.9])
def test_jsd_is_bounded_by_the_entropy_of_beta(beta):
    """JSD(beta) <= H(beta) = -beta log beta - (1-beta) log(1-beta) <= log 2, and approaches it
    for nearly disjoint p and q."""
    h = -beta * math.log(beta) - (1 - beta) * math.log1p(-beta)
    rows = generalized_jsd(tt(rand((50, 9), 3, 5.0)), tt(rand((50, 9), 4, 5.0)), beta=beta, reduction="none")
    assert (rows <= h + 1e-12).all()
    disjoint_s = torch.tensor([[50.0, -50.0, -INF]], dtype=torch.float64)
    disjoint_t = torch.tensor([[-INF, -50.0, 50.0]], dtype=torch.float64)
    torch.testing.assert_close(generalized_jsd(disjoint_s, disjoint_t, beta=beta),
                               torch.tensor(h, dtype=torch.float64), rtol=1e-10, atol=0)


@pytest.mark.parametrize("T", [0.7, 2.0])
def test_jsd_half_is_symmetric(T):
    """JSD(0.5) does not depend on which side is the student."""
    s, t = tt(rand((3, 4, 8), 5)), tt(rand((3, 4, 8), 6))
    torch.testing.assert_close(generalized_jsd(s, t, beta=0.5, T=T, reduction="none"),
                               generalized_jsd(t, s, beta=0.5, T=T, reduction="none"), rtol=1e-12, atol=1e-15)


def test_jsd_is_not_symmetric_for_other_beta():
    """... whereas JSD(0.1) is not (so the symmetry test above can tell them apart)."""
    s, t = tt(rand((3, 8), 5)), tt(rand((3, 8), 6))
    assert not torch.allclose(generalized_jsd(s, t, beta=0.1), generalized_jsd(t, s, beta=0.1))


@pytest.mark.parametrize("beta,direction", [(0.0, "forward"), (1.0, "reverse")])
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_jsd_endpoints_are_exactly_the_kls(beta, direction, reduction):
    """JSD(0) is forward KL and JSD(1) reverse KL: the same numbers and gradients, bit for bit."""
    s, t, labels, _ = make_case((4, 3, 9), seed=8)
    S1, T1, S2, T2 = tt(s, grad=True), tt(t, grad=True), tt(s, grad=True), tt(t, grad=True)
    lab = tt(labels, torch.long)
    jsd = generalized_jsd(S1, T1, beta=beta, T=1.3, labels=lab, reduction=reduction)
    kl = kl_divergence(S2, T2, T=1.3, direction=direction, labels=lab, reduction=reduction)
    assert torch.equal(jsd, kl)
    for a, b in zip(grads(jsd, S1, T1), grads(kl, S2, T2)):
        assert torch.equal(a, b)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_loss_with_alpha_1_is_forward_kl(T, reduction):
    """kd_loss(alpha=1) is forward KL: as is without T², times T² with it."""
    s, t, labels, _ = make_case((6, 10), seed=9)
    S, Tch, lab = tt(s), tt(t), tt(labels, torch.long)
    kl = kl_divergence(S, Tch, T=T, labels=lab, reduction=reduction)
    assert torch.equal(kd_loss(S, Tch, lab, T=T, alpha=1.0, t_squared=False, reduction=reduction), kl)
    torch.testing.assert_close(kd_loss(S, Tch, lab, T=T, alpha=1.0, reduction=reduction), T * T * kl,
                               rtol=1e-14, atol=0)
    # labels are optional when alpha = 1; without them every row counts
    torch.testing.assert_close(kd_loss(S, Tch, T=T, alpha=1.0, t_squared=False, reduction=reduction),
                               kl_divergence(S, Tch, T=T, reduction=reduction), rtol=0, atol=0)


@pytest.mark.parametrize("T", [0.1, 1.0, 10.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_soft_targets_rows_sum_to_one(T, dtype):
    """Each row of soft_targets is a probability distribution."""
    p = soft_targets(tt(rand((4, 3, 50), 13, 5.0), dtype), T)
    assert p.dtype == dtype and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(4, 3, dtype=dtype), rtol=0,
                               atol=50 * torch.finfo(dtype).eps)


def test_soft_targets_large_T_approaches_uniform():
    """T -> infinity flattens the distribution towards uniform: with a = max|z| / T every
    p_v lies in [exp(-2a), exp(2a)] / V, so |p - 1/V| <= (exp(2a) - 1) / V ~ 2a / V."""
    z = tt(rand((5, 8), 14))
    for T in (1e2, 1e4, 1e6):
        err = (soft_targets(z, T) - 1 / 8).abs().max().item()
        assert err <= math.expm1(2 * z.abs().max().item() / T) / 8
    assert (soft_targets(z, 1.0) - 1 / 8).abs().max() > 0.1


def test_soft_targets_small_T_approaches_one_hot():
    """T -> 0 approaches the one-hot argmax (logits here differ by at least 0.5)."""
    rng = np.random.default_rng(15)
    z = np.stack([rng.permutation(10) * 0.5 for _ in range(6)])
    one_hot = F.one_hot(torch.as_tensor(z.argmax(-1)), 10).double()
    torch.testing.assert_close(soft_targets(tt(z), 1e-3), one_hot, rtol=0, atol=1e-100)
    assert (soft_targets(tt(z), 1.0) - one_hot).abs().max() > 0.1


def test_soft_targets_is_invariant_to_scaling_logits_and_T_together():
    """softmax(z / T) depends only on z / T."""
    z = tt(rand((4, 6), 16))
    torch.testing.assert_close(soft_targets(z, 2.0), soft_targets(3 * z, 6.0), rtol=1e-12, atol=0)


# === 4. the T² factor of kd_loss ============================================================

T_GRID = [1.0, 2.0, 5.0, 10.0, 20.0]


def kd_grad_norm(s, t, T, t_squared):
    S = s.clone().requires_grad_()
    (g,) = grads(kd_loss(S, t, T=T, alpha=1.0, t_squared=t_squared), S)
    return g.norm().item()


def zero_mean_logits(seed):
    z = tt(rand((8, 10), seed, scale=1.0))
    return z - z.mean(-1, keepdim=True)


def test_t_squared_keeps_soft_gradient_scale_independent_of_T():
    """With T², the soft term's gradient stays the same order of magnitude for T in 1..20
    (for large T it tends to the logit-matching gradient (z_s - z_t) / (V B))."""
    s, t = zero_mean_logits(20), zero_mean_logits(21)
    norms = [kd_grad_norm(s, t, T, t_squared=True) for T in T_GRID]
    assert max(norms) / min(norms) < 10
    limit = ((s - t) / (10 * 8)).norm().item()  # the large-T limit
    assert norms[-1] == pytest.approx(limit, rel=0.01)


def test_without_t_squared_soft_gradient_shrinks_as_one_over_T_squared():
    """Without T², the gradient (q_T - p_T) / T ~ (z_s - z_t) / (T² V) shrinks by ~100 from T=2 to T=20.
    The ratio is 100 * h(2) / h(20) with h(T) = T |q_T - p_T|, which tends to a constant with a
    relative correction of order (logit spread / T)²; for unit-scale logits at T = 2 that is a few
    per cent (3 % here), so a 15 % tolerance is safe and still excludes 1/T (10) and 1/T³ (1000)."""
    s, t = zero_mean_logits(20), zero_mean_logits(21)
    ratio = kd_grad_norm(s, t, 2.0, t_squared=False) / kd_grad_norm(s, t, 20.0, t_squared=False)
    assert ratio == pytest.approx(100, rel=0.15)
    norms = [kd_grad_norm(s, t, T, t_squared=False) for T in T_GRID]
    assert all(a > b for a, b in zip(norms, norms[1:]))


# === 5. gradients ===========================================================================


def gradcheck_inputs(shape=(3, 2, 5)):
    """float64 logits with vocabulary entry 2 at -inf on both sides, and row (1, 0, ...) left out
    (labels = -100) with every logit -inf."""
    s, t = rand(shape, 30), rand(shape, 31)
    s[..., 2] = t[..., 2] = -INF
    row = (1,) + (0,) * (len(shape) - 2)
    s[row] = t[row] = -INF
    labels = np.random.default_rng(32).choice([0, 1, 3, 4], size=shape[:-1])
    labels[row] = -100
    return tt(s, grad=True), tt(t, grad=True), tt(labels, torch.long)


GRADCHECK_CONFIGS = (
    [(f"kl_{d}_T{T}", partial(kl_divergence, direction=d, T=T), True)
     for d in ("forward", "reverse") for T in (1.0, 2.5)]
    + [(f"jsd_{b}", partial(generalized_jsd, beta=b, T=1.5), True) for b in BETAS]
    + [(f"kd_a{a}_{ts}", lambda s, t, a=a, ts=ts, **kw: kd_loss(s, t, kw.pop("labels"), T=2.0, alpha=a,
                                                              t_squared=ts, **kw), False)
       for a in (0.0, 0.5, 1.0) for ts in (True, False)]
)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("name,fn,wrt_teacher", GRADCHECK_CONFIGS, ids=[c[0] for c in GRADCHECK_CONFIGS])
def test_gradcheck(name, fn, wrt_teacher, reduction):
    """Analytic gradients match finite differences, with a left-out all -inf row and a -inf
    vocabulary entry (whose perturbation stays -inf) present."""
    s, t, labels = gradcheck_inputs()
    if wrt_teacher:
        f = lambda s_, t_: fn(s_, t_, labels=labels, reduction=reduction)  # noqa: E731
        inputs = (s, t)
    else:
        f = lambda s_: fn(s_, t.detach(), labels=labels, reduction=reduction)  # noqa: E731
        inputs = (s,)
    assert torch.isfinite(f(*inputs)).all()
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.parametrize("fn", [partial(kl_divergence, direction="reverse")]
                         + [partial(generalized_jsd, beta=b) for b in (0.1, 0.5, 0.9, 1.0)],
                         ids=["kl_reverse", "jsd_0.1", "jsd_0.5", "jsd_0.9", "jsd_1.0"])
def test_gradcheck_student_neg_inf_where_teacher_has_mass(fn):
    """Where only the student masks an entry, reverse KL and JSD(beta > 0) stay finite and
    differentiable (forward KL is +inf there; see the numerics tests)."""
    s, t, labels = gradcheck_inputs()
    with torch.no_grad():
        s[..., 4] = -INF
    assert torch.isfinite(fn(s, t, T=1.5, labels=labels)).all()
    assert torch.autograd.gradcheck(lambda s_, t_: fn(s_, t_, T=1.5, labels=labels, reduction="none"),
                                    (s, t), eps=1e-6, atol=1e-8, rtol=1e-6)


def test_gradcheck_soft_targets():
    """soft_targets is differentiable, also with a -inf entry."""
    s = tt(rand((4, 5), 33), grad=True)
    with torch.no_grad():
        s[:, 2] = -INF
    assert torch.autograd.gradcheck(lambda z: soft_targets(z, 1.7), (s,), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("reduction", ["sum", "mean"])
@pytest.mark.parametrize("T", [0.5, 1.0, 3.0])
def test_kl_gradients_match_closed_form(T, reduction):
    """d KL(p||q) / dz_s = (q - p) / T and d KL(q||p) / dz_s = q (log q - log p - KL(q||p)) / T
    per counted row, divided by the number of counted rows for "mean"; 0 on -inf entries."""
    s, t, labels = gradcheck_inputs((4, 3, 6))
    valid = (labels != -100).numpy()
    n = valid.sum() if reduction == "mean" else 1
    sn, tn = s.detach().numpy(), t.detach().numpy()
    with np.errstate(invalid="ignore"):  # the left-out all -inf row; zeroed below
        p, q = np_soft(tn, T), np_soft(sn, T)
        log_p, log_q = log_softmax(tn / T, axis=-1), log_softmax(sn / T, axis=-1)
        diff = np.where(q > 0, log_q - log_p, 0.0)
        expected = {
            "forward": (q - p) / T,
            "reverse": q * (diff - (q * diff).sum(-1, keepdims=True)) / T,
        }
    for direction, g_ref in expected.items():
        (g,) = grads(kl_divergence(s, t, T=T, direction=direction, labels=labels, reduction=reduction), s)
        g_ref = np.where(valid[..., None], g_ref, 0.0) / n
        np.testing.assert_allclose(g.numpy(), g_ref, rtol=1e-10, atol=1e-14)
        assert (g[..., 2] == 0).all()


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("t_squared", [True, False])
def test_kd_loss_gradient_matches_closed_form(alpha, t_squared):
    """d kd_loss / dz_s = alpha (T² or 1) (q_T - p_T) / T + (1 - alpha) (q_1 - onehot(label)),
    per counted row, over the number of counted rows."""
    s, t, labels = gradcheck_inputs((5, 7))
    T = 3.0
    (g,) = grads(kd_loss(s, t, labels, T=T, alpha=alpha, t_squared=t_squared), s)
    sn, tn, lab = s.detach().numpy(), t.detach().numpy(), labels.numpy()
    valid = lab != -100
    with np.errstate(invalid="ignore"):
        soft = (np_soft(sn, T) - np_soft(tn, T)) / T * (T * T if t_squared else 1.0)
        hard = np_soft(sn, 1.0) - np.eye(7)[np.where(valid, lab, 0)]
    g_ref = np.where(valid[:, None], alpha * soft + (1 - alpha) * hard, 0.0) / valid.sum()
    np.testing.assert_allclose(g.numpy(), g_ref, rtol=1e-10, atol=1e-14)


# === 6. numerics ============================================================================


def loss_kwargs(name, shape, seed=40):
    """labels for the kd losses (all counted, never on vocabulary entry 2), nothing for the others."""
    if not name.startswith("kd"):
        return {}
    return {"labels": tt(np.random.default_rng(seed).choice([0, 1, 3], size=shape[:-1]), torch.long)}


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", FOUR + ["jsd_0.0", "jsd_1.0"])
def test_half_precision_inputs_are_computed_in_fp32(name, dtype):
    """fp16/bf16 logits give an fp32 loss as accurate as fp32 arithmetic on the rounded inputs
    (half-precision arithmetic would be ~1e-3 off); gradients come back in the input dtype."""
    shape = (4, 3, 16)
    S, Tch = tt(rand(shape, 41, 3.0), dtype, grad=True), tt(rand(shape, 42, 3.0), dtype)
    kw = loss_kwargs(name, shape)
    for reduction in REDUCTIONS:
        loss = LOSSES[name](S, Tch, T=2.0, reduction=reduction, **kw)
        assert loss.dtype == torch.float32
        ref = LOSSES[name](S.detach().double(), Tch.double(), T=2.0, reduction=reduction, **kw)
        torch.testing.assert_close(loss.double(), ref, rtol=2e-6, atol=2e-6)
    (g,) = grads(loss, S)
    assert g.dtype == dtype and torch.isfinite(g).all()
    p = soft_targets(Tch, 2.0)
    assert p.dtype == torch.float32
    torch.testing.assert_close(p.double(), soft_targets(Tch.double(), 2.0), rtol=2e-6, atol=1e-7)


def neg_inf_vocab_case(shape, seed):
    """Logits with about 40 % of the vocabulary entries, at random, -inf on both sides (never
    entry 0, which stays finite), and the boolean array of those entries."""
    rng = np.random.default_rng(seed)
    s, t = rng.normal(scale=3.0, size=shape), rng.normal(scale=3.0, size=shape)
    masked = rng.random(shape) < 0.4
    masked[..., 0] = False
    s[masked] = t[masked] = -INF
    return s, t, masked


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0])
@pytest.mark.parametrize("name", LOSSES)
def test_neg_inf_vocabulary_entries_give_finite_loss_and_gradient(name, T):
    """-inf on both sides masks a vocabulary entry: finite loss, finite gradients, 0 gradient there."""
    shape = (6, 5, 9)
    s, t, masked = neg_inf_vocab_case(shape, 43)
    kw = {"labels": torch.zeros(shape[:-1], dtype=torch.long)} if name.startswith("kd") else {}
    S, Tch = tt(s, grad=True), tt(t, grad=True)
    loss = LOSSES[name](S, Tch, T=T, reduction="none", **kw)
    assert torch.isfinite(loss).all()
    for g in grads(loss, S, Tch):
        assert torch.isfinite(g).all()
        assert (g[torch.as_tensor(masked)] == 0).all()


@pytest.mark.parametrize("name", LOSSES)
def test_neg_inf_vocabulary_entries_are_the_same_as_dropping_them(name):
    """A vocabulary entry at -inf on both sides is as if the vocabulary did not have it."""
    s, t = rand((4, 3, 10), 44), rand((4, 3, 10), 45)
    s[..., 7:] = t[..., 7:] = -INF
    kw = loss_kwargs(name, s.shape)
    full = LOSSES[name](tt(s), tt(t), T=1.5, reduction="none", **kw)
    dropped = LOSSES[name](tt(s[..., :7]), tt(t[..., :7]), T=1.5, reduction="none", **kw)
    torch.testing.assert_close(full, dropped, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("name", FOUR + ["jsd_0.0", "jsd_1.0", "kd_no_t2"])
def test_logits_of_plus_minus_1e4_are_finite(name, dtype):
    """Logits of ±1e4 (student and teacher drawn independently, so often at opposite ends) give a
    finite loss and gradient, in every floating dtype; so does soft_targets."""
    shape = (3, 4, 8)
    rng = np.random.default_rng(46)
    s = rng.choice([-1e4, 1e4], size=shape) + rng.normal(size=shape)
    t = rng.choice([-1e4, 1e4], size=shape) + rng.normal(size=shape)
    kw = loss_kwargs(name, shape)
    S, Tch = tt(s, dtype, grad=True), tt(t, dtype, grad=True)
    for T in (0.5, 1.0, 4.0):
        loss = LOSSES[name](S, Tch, T=T, reduction="none", **kw)
        assert torch.isfinite(loss).all()
        assert all(torch.isfinite(g).all() for g in grads(loss, S, Tch))
        assert torch.isfinite(soft_targets(S, T)).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", FOUR + ["jsd_0.0", "jsd_1.0", "kd_no_t2"])
def test_underflowing_probabilities_give_finite_loss_and_gradient(name, dtype):
    """At T = 0.05, logits spread over ~100 make most probabilities exactly 0 while their logits
    are finite: loss and gradient stay finite (0 log 0 = 0), and fp32 agrees with fp64."""
    shape = (5, 12)
    rng = np.random.default_rng(47)
    s, t = rng.uniform(-50, 50, size=shape), rng.uniform(-50, 50, size=shape)
    S, Tch = tt(s, dtype, grad=True), tt(t, dtype, grad=True)
    assert (soft_targets(Tch, 0.05) == 0).sum() > shape[0]  # the premise: underflow to exactly 0
    assert (soft_targets(S, 0.05) == 0).sum() > shape[0]
    kw = loss_kwargs(name, shape)
    loss = LOSSES[name](S, Tch, T=0.05, reduction="none", **kw)
    assert torch.isfinite(loss).all()
    assert all(torch.isfinite(g).all() for g in grads(loss, S, Tch))
    ref = LOSSES[name](S.detach().double(), Tch.detach().double(), T=0.05, reduction="none", **kw)
    # fp32 rounds z / T ~ 1e3 to ~1e-4 absolute; the loss carries that error (times T² for kd).
    torch.testing.assert_close(loss.double(), ref, rtol=1e-5, atol=1e-3)


def test_student_neg_inf_where_teacher_has_mass_gives_infinite_forward_kl():
    """The documented mathematics: forward KL(p || q) = +inf when q_v = 0 < p_v; reverse KL and
    JSD inside (0, 1) stay finite; and vice versa for a teacher -inf where the student has mass."""
    s, t = rand((3, 6), 48), rand((3, 6), 49)
    s[1, 4] = -INF
    S, Tch = tt(s), tt(t)
    fwd = kl_divergence(S, Tch, reduction="none")
    assert fwd[1] == INF and torch.isfinite(fwd[[0, 2]]).all()
    assert kl_divergence(S, Tch) == INF
    assert torch.isfinite(kl_divergence(S, Tch, direction="reverse", reduction="none")).all()
    assert generalized_jsd(S, Tch, beta=0.0) == INF
    assert kd_loss(S, Tch, T=2.0, alpha=1.0) == INF
    for beta in (0.1, 0.5, 0.9, 1.0):
        assert torch.isfinite(generalized_jsd(S, Tch, beta=beta, reduction="none")).all()
    # and the other way round
    assert kl_divergence(Tch, S, direction="reverse") == INF
    assert generalized_jsd(Tch, S, beta=1.0) == INF
    assert torch.isfinite(kl_divergence(Tch, S, direction="forward")).all()


@pytest.mark.parametrize("name", LOSSES)
def test_underflowed_probability_facing_neg_inf_counts_as_zero(name):
    """0 log 0 counts as 0 also when a probability underflows: a teacher entry whose probability
    is exactly 0 at T = 0.05 faces a student -inf (and vice versa) without making the loss or
    the gradient infinite."""
    s = torch.tensor([[0.0, -INF, 1.0], [0.0, -100.0, 1.0]], dtype=torch.float64, requires_grad=True)
    t = torch.tensor([[0.0, -100.0, 1.0], [0.0, -INF, 1.0]], dtype=torch.float64, requires_grad=True)
    assert soft_targets(t, 0.05)[0, 1] == 0 and soft_targets(s, 0.05)[1, 1] == 0  # the premise
    kw = {"labels": torch.tensor([0, 2])} if name.startswith("kd") else {}
    loss = LOSSES[name](s, t, T=0.05, reduction="none", **kw)
    assert torch.isfinite(loss).all()
    assert all(torch.isfinite(g).all() for g in grads(loss, s, t))


# === 7. bad input ===========================================================================


def pair_call(fn_name, s, t, **kw):
    if fn_name == "kl":
        return kl_divergence(s, t, **kw)
    if fn_name == "jsd":
        return generalized_jsd(s, t, **kw)
    kw.setdefault("T", 1.0)
    kw.setdefault("alpha", 1.0)
    return kd_loss(s, t, **kw)


def _logits(*shape, fill=None, dtype=torch.float32, seed=0):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).to(dtype)
    return x if fill is None else x.index_fill_(-1, torch.tensor([1]), fill)


def _all_neg_inf_row(x):
    x = x.clone()
    x[1] = -INF
    return x


S0, T0 = _logits(2, 3, 5), _logits(2, 3, 5, seed=1)
LAB0 = torch.zeros(2, 3, dtype=torch.long)

# (id, functions it applies to, student, teacher, extra kwargs, pattern the message must match)
BAD_PAIR_CASES = [
    ("leading_shape", "kl jsd kd", S0, _logits(2, 4, 5), {},
     r"same leading shape.*student_logits \(2, 3, 5\).*teacher_logits \(2, 4, 5\)"),
    ("leading_ndim", "kl jsd kd", S0, _logits(6, 5), {},
     r"student_logits.*\(2, 3, 5\).*teacher_logits.*\(6, 5\)"),
    ("vocab", "kl jsd kd", S0, _logits(2, 3, 6), {},
     r"student_logits and teacher_logits.*vocabulary size.*5 and 6"),
    ("T_zero", "kl jsd kd", S0, T0, {"T": 0.0}, r"T \(temperature\)"),
    ("T_negative", "kl jsd kd", S0, T0, {"T": -1.0}, r"T \(temperature\)"),
    ("T_nan", "kl jsd kd", S0, T0, {"T": math.nan}, r"T \(temperature\)"),
    ("T_inf", "kl jsd kd", S0, T0, {"T": INF}, r"T \(temperature\)"),
    ("T_bool", "kl jsd kd", S0, T0, {"T": True}, r"T \(temperature\).*True"),
    ("T_str", "kl jsd kd", S0, T0, {"T": "2"}, r"T \(temperature\)"),
    ("int_student", "kl jsd kd", S0.long(), T0, {}, r"student_logits must be a floating-point"),
    ("int_teacher", "kl jsd kd", S0, T0.long(), {}, r"teacher_logits must be a floating-point"),
    ("list_student", "kl jsd kd", S0.tolist(), T0, {}, r"student_logits must be a torch.Tensor"),
    ("scalar_student", "kl jsd kd", torch.tensor(1.0), T0, {},
     r"student_logits must have shape \(\.\.\., V\)"),
    ("empty_vocab", "kl jsd kd", torch.zeros(2, 0), torch.zeros(2, 0), {}, r"student_logits.*V >= 1"),
    ("nan_student", "kl jsd kd", _logits(2, 3, 5, fill=math.nan), T0, {}, r"student_logits contains NaN"),
    ("nan_teacher", "kl jsd kd", S0, _logits(2, 3, 5, fill=math.nan), {}, r"teacher_logits contains NaN"),
    ("posinf_student", "kl jsd kd", _logits(2, 3, 5, fill=INF), T0, {}, r"student_logits contains \+inf"),
    ("posinf_teacher", "kl jsd kd", S0, _logits(2, 3, 5, fill=INF), {}, r"teacher_logits contains \+inf"),
    ("empty_row_student", "kl jsd kd", _all_neg_inf_row(S0), T0, {},
     r"student_logits has a row whose every logit is -inf"),
    ("empty_row_teacher", "kl jsd kd", S0, _all_neg_inf_row(T0), {},
     r"teacher_logits has a row whose every logit is -inf"),
    ("labels_shape", "kl jsd kd", S0, T0, {"labels": torch.zeros(2, dtype=torch.long)},
     r"labels must have the logits' leading shape \(2, 3\), got \(2,\)"),
    ("labels_float", "kl jsd kd", S0, T0, {"labels": LAB0.float()}, r"labels must be an integer tensor"),
    ("labels_bool", "kl jsd kd", S0, T0, {"labels": LAB0.bool()}, r"labels must be an integer tensor"),
    ("labels_list", "kl jsd kd", S0, T0, {"labels": LAB0.tolist()}, r"labels must be an integer tensor"),
    ("labels_too_big", "kl jsd kd", S0, T0, {"labels": LAB0 + 5},
     r"labels must be class indices in \[0, 5\).*found 5"),
    ("labels_negative", "kl jsd kd", S0, T0, {"labels": LAB0 - 1}, r"labels must be class indices.*found -1"),
    ("labels_not_the_ignore_index", "kl jsd kd", S0, T0, {"labels": LAB0 - 100, "ignore_index": -1},
     r"labels must be class indices.*ignore_index=-1, found -100"),
    ("mask_int", "kl jsd", S0, T0, {"mask": torch.ones(2, 3, dtype=torch.long)},
     r"mask must be a boolean tensor"),
    ("mask_float", "kl jsd", S0, T0, {"mask": torch.ones(2, 3)}, r"mask must be a boolean tensor"),
    ("mask_shape", "kl jsd", S0, T0, {"mask": torch.ones(3, 2, dtype=torch.bool)},
     r"mask must have the logits' leading shape \(2, 3\), got \(3, 2\)"),
    ("reduction", "kl jsd kd", S0, T0, {"reduction": "batchmean"}, r"reduction must be one of.*'batchmean'"),
    ("direction", "kl", S0, T0, {"direction": "backward"}, r"direction must be one of.*'backward'"),
    ("beta_negative", "jsd", S0, T0, {"beta": -0.1}, r"beta must be a number in \[0, 1\]"),
    ("beta_above_1", "jsd", S0, T0, {"beta": 1.5}, r"beta must be a number in \[0, 1\]"),
    ("beta_nan", "jsd", S0, T0, {"beta": math.nan}, r"beta must be a number in \[0, 1\]"),
    ("beta_bool", "jsd", S0, T0, {"beta": True}, r"beta must be a number in \[0, 1\]"),
    ("alpha_negative", "kd", S0, T0, {"alpha": -0.1}, r"alpha must be a number in \[0, 1\]"),
    ("alpha_above_1", "kd", S0, T0, {"alpha": 1.01}, r"alpha must be a number in \[0, 1\]"),
    ("alpha_nan", "kd", S0, T0, {"alpha": math.nan}, r"alpha must be a number in \[0, 1\]"),
    ("alpha_bool", "kd", S0, T0, {"alpha": False}, r"alpha must be a number in \[0, 1\]"),
    ("kd_needs_labels", "kd", S0, T0, {"alpha": 0.5}, r"labels is required when alpha < 1"),
    ("ignore_index_float", "kl jsd kd", S0, T0, {"labels": LAB0, "ignore_index": -100.0},
     r"ignore_index must be an integer, got -100.0"),
    ("ignore_index_none", "kl jsd kd", S0, T0, {"ignore_index": None}, r"ignore_index must be an integer"),
]


@pytest.mark.parametrize(
    "fn_name,student,teacher,kwargs,pattern",
    [pytest.param(f, s, t, kw, pat, id=f"{f}-{case_id}")
     for case_id, fns, s, t, kw, pat in BAD_PAIR_CASES for f in fns.split()],
)
def test_bad_input_raises_value_error_naming_the_argument(fn_name, student, teacher, kwargs, pattern):
    """Every bad argument is a ValueError whose message names it (and says what was wrong)."""
    with pytest.raises(ValueError, match=pattern):
        pair_call(fn_name, student, teacher, **dict(kwargs))


def test_left_out_rows_may_be_all_neg_inf_or_hold_any_label():
    """The counterpart of the checks above: a row that is all -inf, or has an out-of-range label
    that is the ignore_index, is fine when it is left out."""
    s = _all_neg_inf_row(S0)
    labels = LAB0.clone()
    labels[1] = -100
    for fn in ("kl", "jsd", "kd"):
        assert torch.isfinite(pair_call(fn, s, _all_neg_inf_row(T0), labels=labels))
    mask = torch.ones(2, 3, dtype=torch.bool)
    mask[1] = False
    assert torch.isfinite(kl_divergence(s, T0, mask=mask))


@pytest.mark.parametrize(
    "logits,T,pattern",
    [
        (S0.long(), 1.0, r"logits must be a floating-point"),
        (S0.tolist(), 1.0, r"logits must be a torch.Tensor"),
        (_logits(2, 3, 5, fill=math.nan), 1.0, r"logits contains NaN"),
        (_logits(2, 3, 5, fill=INF), 1.0, r"logits contains \+inf"),
        (_all_neg_inf_row(S0), 1.0, r"logits has a row whose every logit is -inf"),
        (S0, 0.0, r"T \(temperature\)"),
        (S0, -2.0, r"T \(temperature\)"),
        (S0, math.nan, r"T \(temperature\)"),
        (S0, INF, r"T \(temperature\)"),
        (S0, True, r"T \(temperature\)"),
    ],
    ids=["int", "list", "nan", "posinf", "empty_row", "T0", "Tneg", "Tnan", "Tinf", "Tbool"],
)
def test_soft_targets_bad_input(logits, T, pattern):
    """soft_targets checks its arguments like the losses do."""
    with pytest.raises(ValueError, match=pattern):
        soft_targets(logits, T)


# === 8. labels of every integer dtype ========================================================


@pytest.mark.parametrize("dtype", [torch.int32, torch.int16, torch.int8, torch.uint8], ids=str)
def test_kd_loss_accepts_labels_of_any_integer_dtype(dtype):
    """labels are "an integer tensor of class indices": a narrower dtype gives the int64 loss."""
    s, t = _logits(4, 5, dtype=torch.float64), _logits(4, 5, dtype=torch.float64, seed=1)
    labels = torch.tensor([0, 1, 2, 3])
    expected = kd_loss(s, t, labels, T=2.0, alpha=0.5)
    assert torch.equal(kd_loss(s, t, labels.to(dtype), T=2.0, alpha=0.5), expected)


def test_uint8_label_156_is_not_mistaken_for_ignore_index():
    """-100 wraps to 156 in uint8; a uint8 label 156 (a real class when V > 156) still counts."""
    s, t = _logits(3, 200, dtype=torch.float64), _logits(3, 200, dtype=torch.float64, seed=1)
    labels = torch.tensor([5, 156, 7])
    expected = kl_divergence(s, t, labels=labels, reduction="none")
    got = kl_divergence(s, t, labels=labels.to(torch.uint8), reduction="none")
    assert got[1] > 0
    assert torch.equal(got, expected)
