"""Fuzz tests of kdlearn.losses: random shapes (empty ones included), temperatures, masks,
extreme logits (±1e4, -inf vocabulary entries) and dtypes. Each example must give a finite loss
and gradient that agree with the float64 computation of the same function on the same (rounded)
inputs, and left-out rows must get exactly zero gradient.

Tolerances. The losses compute in fp32 (fp16/bf16 inputs are upcast). With u = 2**-24, M the
largest finite |logit| and K = M / min(T, 1) + log V + 1, a log-probability is off by at most
~u K (rounding of z / T and of the shift by the row maximum), a probability by that relative
amount, and a divergence term p (log p - log q), whose log ratio is at most ~2K, by ~u K (1 + K).
The bounds below are that, times a safety factor, times T² where kd_loss applies it; gradients
add 1/T (d/dz = d/d(z/T) / T) and the rounding to the input dtype."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from kdlearn.losses import generalized_jsd, kd_loss, kl_divergence, soft_targets

pytestmark = pytest.mark.usefixtures("single_torch_thread")

U32 = 2.0 ** -24
SAFETY = 16
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
FUZZ = settings(max_examples=150)


@st.composite
def logit_pairs(draw, masks=("none", "labels", "mask", "both")):
    """A dict with student/teacher logits (float64, exactly representable in dtype), dtype, T,
    labels/ignore_index/mask kwargs and the boolean array of counted rows."""
    # leading dims: 0 to 3 of them, of size 0..5 (sampled_from, so that most examples have rows)
    ndim = draw(st.sampled_from([2, 1, 3, 0]))
    lead = tuple(draw(st.sampled_from([3, 1, 2, 4, 5, 0])) for _ in range(ndim))
    V = draw(st.one_of(st.integers(2, 40), st.sampled_from([1, 2, 40])))
    shape = lead + (V,)
    dtype = draw(st.sampled_from(DTYPES))
    T = draw(st.one_of(st.sampled_from([0.05, 1.0, 50.0]), st.floats(0.05, 50.0)))
    p_big = draw(st.sampled_from([0.0, 0.2, 0.7]))      # share of ±1e4 logits
    p_neginf = draw(st.sampled_from([0.0, 0.3, 0.9]))   # share of -inf vocabulary entries
    scale = draw(st.sampled_from([0.1, 3.0, 30.0]))     # spread of the ordinary logits
    mode = draw(st.sampled_from(masks))
    ignore_index = draw(st.sampled_from([-100, -1, 0]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))

    def logits():
        z = rng.normal(scale=scale, size=shape)
        big = rng.random(shape) < p_big
        return np.where(big, rng.choice([-1e4, 1e4], size=shape) + z / scale, z)

    s, t = logits(), logits()
    neginf = rng.random(shape) < p_neginf                # shared by both sides
    # each row's label, avoiding an in-range ignore_index where V allows; its entry stays finite
    choices = [c for c in range(V) if c != ignore_index] or [0]
    labels = rng.choice(choices, size=lead)
    np.put_along_axis(neginf, labels[..., None], False, axis=-1)
    s[neginf] = t[neginf] = -math.inf
    # the rows left out, by labels == ignore_index and/or mask == False
    by_labels = (rng.random(lead) < 0.3) if mode in ("labels", "both") else np.zeros(lead, bool)
    by_mask = (rng.random(lead) < 0.3) if mode in ("mask", "both") else np.zeros(lead, bool)
    labels = np.where(by_labels | (labels == ignore_index), ignore_index, labels)
    left_out = (labels == ignore_index) if mode in ("labels", "both") else np.zeros(lead, bool)
    left_out = left_out | by_mask
    s[left_out & (rng.random(lead) < 0.5)] = -math.inf    # left-out rows may hold anything valid

    kwargs = {}
    if mode in ("labels", "both"):
        kwargs.update(labels=torch.as_tensor(labels, dtype=torch.long), ignore_index=ignore_index)
    if mode in ("mask", "both"):
        kwargs["mask"] = torch.as_tensor(~by_mask)
    # round to dtype once; the float64 reference sees exactly the same values
    s = torch.as_tensor(s).to(dtype).double()
    t = torch.as_tensor(t).to(dtype).double()
    return dict(s=s, t=t, dtype=dtype, T=T, kwargs=kwargs, valid=torch.as_tensor(~left_out),
                labels=torch.as_tensor(labels, dtype=torch.long), ignore_index=ignore_index)


def k_factor(c) -> float:
    finite = torch.cat([c["s"][torch.isfinite(c["s"])], c["t"][torch.isfinite(c["t"])]])
    M = finite.abs().max().item() if finite.numel() else 0.0
    return M / min(c["T"], 1.0) + math.log(c["s"].shape[-1]) + 1.0


def run(fn, c, reduction, wrt_teacher):
    """(loss, grads) in the case's dtype, and the same in float64; grads of loss.sum()."""
    out = []
    for dtype in (c["dtype"], torch.float64):
        s = c["s"].to(dtype).requires_grad_()
        t = c["t"].to(dtype).requires_grad_(wrt_teacher)
        loss = fn(s, t, reduction)
        inputs = (s, t) if wrt_teacher else (s,)
        out.append((loss, torch.autograd.grad(loss.sum(), inputs)))
    return out


def check(c, fn, reduction, wrt_teacher, t2=1.0):
    """The common assertions: dtype, finiteness, agreement with float64, zero gradient off-rows."""
    (loss, g), (loss64, g64) = run(fn, c, reduction, wrt_teacher)
    assert loss.dtype == torch.float32
    assert loss.shape == loss64.shape
    assert torch.isfinite(loss).all() and torch.isfinite(loss64).all()
    if reduction == "none":
        assert torch.equal(loss[~c["valid"]], torch.zeros_like(loss[~c["valid"]]))
    K = k_factor(c)
    n = int(c["valid"].sum()) if reduction != "mean" else 1
    atol = SAFETY * U32 * K * (1 + K) * t2 * max(n, 1)
    torch.testing.assert_close(loss.double(), loss64, rtol=1e-5, atol=atol)
    n_counted = max(int(c["valid"].sum()), 1)
    eps = torch.finfo(c["dtype"]).eps
    g_atol = SAFETY * U32 * K * (1 + K) * t2 / c["T"] / (n_counted if reduction == "mean" else 1)
    g_atol += torch.finfo(c["dtype"]).smallest_normal * eps  # the spacing of subnormals
    for gi, gi64 in zip(g, g64):
        assert gi.dtype == c["dtype"]
        assert torch.equal(gi[~c["valid"]], torch.zeros_like(gi[~c["valid"]]))
        # autograd returns the gradient in the input dtype; a true gradient beyond fp16's range
        # (a teacher's, ~K / T, at T = 0.05 and logits of 1e4) can only come back as ±inf
        biggest = torch.finfo(c["dtype"]).max
        too_big = gi64.abs() - g_atol > biggest * (1 + eps)
        assert torch.equal(gi[too_big].double(), gi64[too_big].sign() * math.inf)
        representable = gi64.abs() + g_atol < biggest * (1 - eps)
        gi, gi64 = gi[representable], gi64[representable]
        assert torch.isfinite(gi).all()
        torch.testing.assert_close(gi.double(), gi64, rtol=2 * eps, atol=g_atol)


@FUZZ
@given(c=logit_pairs(), direction=st.sampled_from(["forward", "reverse"]),
       reduction=st.sampled_from(["none", "sum", "mean"]))
def test_fuzz_kl_divergence(c, direction, reduction):
    """kl_divergence: finite, and fp32-accurate, for any shape, T, mask and extreme logits."""
    check(c, lambda s, t, r: kl_divergence(s, t, T=c["T"], direction=direction, reduction=r, **c["kwargs"]),
          reduction, wrt_teacher=True)


@FUZZ
@given(c=logit_pairs(), beta=st.one_of(st.sampled_from([0.0, 0.5, 1.0]), st.floats(0.0, 1.0)),
       reduction=st.sampled_from(["none", "sum", "mean"]))
def test_fuzz_generalized_jsd(c, beta, reduction):
    """generalized_jsd: finite, and fp32-accurate, for every beta in [0, 1]."""
    check(c, lambda s, t, r: generalized_jsd(s, t, beta=beta, T=c["T"], reduction=r, **c["kwargs"]),
          reduction, wrt_teacher=True)


@FUZZ
@given(c=logit_pairs(masks=("labels",)), alpha=st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0)),
       t_squared=st.booleans(), reduction=st.sampled_from(["none", "sum", "mean"]))
def test_fuzz_kd_loss(c, alpha, t_squared, reduction):
    """kd_loss: finite, and fp32-accurate, with labels (some ignored) and both T² settings."""
    labels, ignore_index = c["labels"], c["ignore_index"]
    check(c, lambda s, t, r: kd_loss(s, t, labels, T=c["T"], alpha=alpha, t_squared=t_squared,
                                     ignore_index=ignore_index, reduction=r),
          reduction, wrt_teacher=False, t2=c["T"] ** 2 if t_squared else 1.0)


@FUZZ
@given(c=logit_pairs(masks=("none",)))
def test_fuzz_soft_targets(c):
    """soft_targets: rows are distributions, fp32-accurate, finite gradient, for any input."""
    z = c["s"].to(c["dtype"]).requires_grad_()
    p, p64 = soft_targets(z, c["T"]), soft_targets(c["s"], c["T"])
    assert p.dtype == torch.float32 and torch.isfinite(p).all()
    torch.testing.assert_close(p.double(), p64, rtol=0, atol=SAFETY * U32 * k_factor(c))
    torch.testing.assert_close(p.sum(-1).double(), torch.ones(p.shape[:-1], dtype=torch.float64),
                               rtol=0, atol=SAFETY * U32 * z.shape[-1])
    if p.numel():
        weights = torch.linspace(-1, 1, z.shape[-1])  # a non-constant upstream gradient
        (g,) = torch.autograd.grad((p * weights).sum(), z)
        assert torch.isfinite(g).all()
