"""The fused softmax-divergence kernel against its specification, kdlearn.losses.

Every test calls the public functions twice, with backend="torch" (the specification) and
backend="triton" (the kernel: compiled on a GPU, through Triton's interpreter on a CPU), and
compares losses and student gradients.

Tolerances, per dtype. Both sides compute in fp32 (fp64 for fp64 inputs) from the same inputs;
they differ only in summation order (blocks of the vocabulary against torch's reductions) and in
the online logsumexp, a few units in the last place of fp32 times log V. Losses are fp32 on both
sides: rtol 1e-5. Gradients are rounded to the input dtype at the end, on both sides, so they may
differ by one unit in the last place of that dtype: rtol = its machine epsilon; atol covers
entries that are near 0, where the fp32 error is absolute rather than relative, and grows with the
largest entry for the divergences whose gradient is a difference of larger terms (NORMWISE).
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kdlearn
from kdlearn.kernels import _common
from kdlearn.kernels import softmax_divergence as kernel_module
from tests.test_losses_fuzz import k_factor, logit_pairs

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
DTYPES = [torch.float32, torch.bfloat16, torch.float16]
GRAD_TOL = {torch.float64: (1e-12, 1e-14), torch.float32: (1e-5, 1e-6),
            torch.float16: (torch.finfo(torch.float16).eps, 1e-5),
            torch.bfloat16: (torch.finfo(torch.bfloat16).eps, 1e-5)}
# The reverse KL's and the JSD's gradients are differences of larger terms, q (log q - log p) - q L,
# so an entry's error is relative to the largest terms of its row, not to itself.
NORMWISE = {torch.float64: 1e-12, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
SHAPES = [(1, 1), (3, 7), (41, 1271), (8, 32000), (2, 3, 50), (2, 262144)]


def divergence(name: str):
    """(function, its keyword arguments) for each divergence the kernel computes."""
    return {
        "kl_forward": (kdlearn.kl_divergence, dict(direction="forward")),
        "kl_reverse": (kdlearn.kl_divergence, dict(direction="reverse")),
        "jsd_0.5": (kdlearn.generalized_jsd, dict(beta=0.5)),
        "jsd_0.1": (kdlearn.generalized_jsd, dict(beta=0.1)),
        "jsd_0": (kdlearn.generalized_jsd, dict(beta=0.0)),
        "jsd_1": (kdlearn.generalized_jsd, dict(beta=1.0)),
        "kd": (kdlearn.kd_loss, dict(alpha=0.6)),
    }[name]


DIVERGENCES = ["kl_forward", "kl_reverse", "jsd_0.5", "jsd_0.1", "jsd_0", "jsd_1"]
ALL = DIVERGENCES + ["kd"]


def logits(shape, seed, dtype=torch.float32, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def labels_for(shape, seed, every=3):
    """Class labels, with every `every`-th row ignored (-100)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=generator)
    labels.view(-1)[::every] = -100
    return labels.to(DEVICE)


def both(name, student, teacher, upstream=None, **kwargs):
    """(loss, student gradient) from the specification and from the kernel, on the same inputs.
    The gradient is that of (loss * upstream).sum(): upstream stands for what follows the loss."""
    fn, fixed = divergence(name)
    out = []
    for backend in ("torch", "triton"):
        s = student.detach().clone().requires_grad_()
        loss = fn(s, teacher, **fixed, **kwargs, backend=backend)
        weight = torch.ones_like(loss) if upstream is None else upstream
        (grad,) = torch.autograd.grad((loss * weight).sum(), s)
        out.append((loss, grad))
    return out


def assert_agree(spec, kernel, dtype, loss_atol=1e-6):
    (loss, grad), (k_loss, k_grad) = spec, kernel
    assert k_loss.dtype == loss.dtype and k_loss.shape == loss.shape
    assert k_grad.dtype == grad.dtype and k_grad.shape == grad.shape
    torch.testing.assert_close(k_loss, loss, rtol=1e-5 if dtype != torch.float64 else 1e-12,
                               atol=loss_atol if dtype != torch.float64 else 1e-14)
    rtol, atol = GRAD_TOL[dtype]
    largest = float(grad.abs().max()) if grad.numel() else 0.0
    torch.testing.assert_close(k_grad, grad, rtol=rtol, atol=atol + NORMWISE[dtype] * largest)


# --- values and gradients over shapes, dtypes, reductions --------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("name", ALL)
def test_matches_the_specification_across_shapes(name, shape):
    """Forward and reverse KL, JSD at several beta (the endpoints included) and kd_loss."""
    student, teacher = logits(shape, 1), logits(shape, 2)
    labels = labels_for(shape, 3)
    spec, kernel = both(name, student, teacher, T=2.0, labels=labels, reduction="none")
    assert_agree(spec, kernel, torch.float32)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", DIVERGENCES)
def test_half_precision_inputs_accumulate_in_fp32(name, dtype):
    """bf16 and fp16 logits: an fp32 loss equal to the specification's, a gradient in the input dtype."""
    student, teacher = logits((6, 3000), 4, dtype), logits((6, 3000), 5, dtype)
    spec, kernel = both(name, student, teacher, T=1.5, reduction="sum")
    assert kernel[0].dtype == torch.float32
    assert kernel[1].dtype == dtype
    assert_agree(spec, kernel, dtype, loss_atol=1e-5)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
@pytest.mark.parametrize("name", ALL)
def test_each_reduction_with_an_upstream_gradient_other_than_one(name, reduction):
    """The loss scaled downstream (or weighted per row, for "none") scales the gradient alike."""
    student, teacher = logits((5, 4, 33), 6), logits((5, 4, 33), 7)
    upstream = (logits((5, 4), 8) if reduction == "none" else torch.tensor(-2.5, device=DEVICE))
    spec, kernel = both(name, student, teacher, upstream, T=0.7, labels=labels_for((5, 4, 33), 9),
                        reduction=reduction)
    assert_agree(spec, kernel, torch.float32)


@pytest.mark.parametrize("name", DIVERGENCES)
def test_streams_rows_longer_than_a_block(name, monkeypatch):
    """With blocks of 16 columns, a row of 100 takes 7 blocks, the last one partial, one all -inf."""
    monkeypatch.setattr(_common, "MAX_BLOCK_V", 16)
    student, teacher = logits((4, 100), 10), logits((4, 100), 11)
    student[:, 16:32] = -math.inf     # a whole block masked: the running max stays finite
    teacher[:, 16:32] = -math.inf
    student[1, :40] = -math.inf       # the first blocks masked: the running max starts at -inf
    teacher[1, :40] = -math.inf
    spec, kernel = both(name, student, teacher, T=3.0, reduction="none")
    assert_agree(spec, kernel, torch.float32)
    assert torch.isfinite(kernel[0]).all() and torch.isfinite(kernel[1]).all()


@pytest.mark.parametrize("name", ["kl_forward", "kl_reverse", "jsd_0.5"])
def test_gradcheck_in_float64(name):
    """The kernel's own backward against finite differences (float64 inputs compute in float64)."""
    fn, fixed = divergence(name)
    student = logits((3, 9), 12, torch.float64).requires_grad_()
    teacher = logits((3, 9), 13, torch.float64)
    teacher[0, 2] = student.data[0, 2] = -math.inf
    labels = torch.tensor([1, -100, 4], device=DEVICE)
    assert torch.autograd.gradcheck(
        lambda s: fn(s, teacher, **fixed, T=1.3, labels=labels, reduction="none", backend="triton"), (student,))


# --- layouts ------------------------------------------------------------------------------------


def test_rows_with_a_stride_are_read_in_place():
    """A slice of a padded vocabulary (rows with a stride) and every other row of a batch."""
    padded_s, padded_t = logits((10, 64), 14), logits((10, 64), 15)
    student, teacher = padded_s[::2, :50], padded_t[::2, :50]
    assert not student.is_contiguous()
    spec, kernel = both("kl_forward", student, teacher, T=2.0, reduction="none")
    assert_agree(spec, kernel, torch.float32)


def test_leading_dimensions_that_do_not_flatten_are_copied():
    """(T, B, V) transposed to (B, T, V): no single row stride, so the kernel gets a copy."""
    student, teacher = logits((4, 3, 20), 16).transpose(0, 1), logits((4, 3, 20), 17).transpose(0, 1)
    spec, kernel = both("jsd_0.5", student, teacher, T=1.0, reduction="none")
    assert_agree(spec, kernel, torch.float32)


def test_no_row_at_all():
    student, teacher = logits((0, 7), 18), logits((0, 7), 19)
    for reduction in ("none", "sum", "mean"):
        spec, kernel = both("kl_forward", student, teacher, T=1.0, reduction=reduction)
        assert_agree(spec, kernel, torch.float32)


# --- masking and numerics -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_left_out_rows_give_zero_even_when_all_neg_inf(name):
    """Left-out rows (labels, or mask) add 0 and get a zero gradient, whatever their logits."""
    student, teacher = logits((6, 40), 20), logits((6, 40), 21)
    labels = torch.tensor([3, -100, 5, -100, 7, 8], device=DEVICE)
    student[1] = -math.inf
    teacher[3] = -math.inf
    kwargs = dict(labels=labels) if name == "kd" else dict(labels=labels, mask=torch.tensor(
        [True, True, True, True, False, True], device=DEVICE))
    spec, kernel = both(name, student, teacher, T=2.0, reduction="none", **kwargs)
    assert_agree(spec, kernel, torch.float32)
    left_out = (labels == -100) | (~kwargs["mask"] if "mask" in kwargs else False)
    assert torch.equal(kernel[0][left_out], torch.zeros_like(kernel[0][left_out]))
    assert torch.equal(kernel[1][left_out], torch.zeros_like(kernel[1][left_out]))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_every_row_left_out(reduction):
    student, teacher = logits((3, 11), 22), logits((3, 11), 23)
    mask = torch.zeros(3, dtype=torch.bool, device=DEVICE)
    spec, kernel = both("jsd_0.5", student, teacher, T=1.0, mask=mask, reduction=reduction)
    assert_agree(spec, kernel, torch.float32)
    assert not kernel[0].any() and not kernel[1].any()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("name", DIVERGENCES)
def test_extreme_logits_masked_vocabulary_and_small_T(name, dtype):
    """Logits of ±1e4, -inf vocabulary entries, T = 0.05: teacher probabilities underflow to 0."""
    student, teacher = logits((4, 300), 24, dtype), logits((4, 300), 25, dtype)
    student[:, ::7] = 1e4
    teacher[:, ::5] = -1e4
    teacher[:, 3::11] = student[:, 3::11] = -math.inf
    spec, kernel = both(name, student, teacher, T=0.05, reduction="none")
    assert torch.isfinite(kernel[0]).all()
    # A true gradient beyond fp16's range (~1e5 here: log-ratios of 2e5, divided by T) can only
    # come back as inf, from the specification too; every other entry is finite.
    assert torch.equal(torch.isfinite(kernel[1]), torch.isfinite(spec[1]))
    assert torch.isfinite(spec[1]).all() or dtype == torch.float16
    # the divergences are ~1e5 here: a relative tolerance on the loss, as on the gradient
    assert_agree(spec, kernel, dtype, loss_atol=1e-5 * float(spec[0].detach().abs().max()))


FUZZ = settings(max_examples=60)


@FUZZ
@given(c=logit_pairs(), name=st.sampled_from(DIVERGENCES), reduction=st.sampled_from(["none", "sum", "mean"]))
def test_fuzz_against_the_specification(c, name, reduction):
    """Random shapes, dtypes, T, masks, ±1e4 and -inf logits: the kernel agrees with the spec.

    The tolerance is the fuzz file's rounding bound (K = largest |logit| / min(T, 1) + log V + 1)
    for two fp32 computations in different orders."""
    student, teacher = c["s"].to(c["dtype"]).to(DEVICE), c["t"].to(c["dtype"]).to(DEVICE)
    kwargs = {k: (v.to(DEVICE) if isinstance(v, torch.Tensor) else v) for k, v in c["kwargs"].items()}
    upstream = logits(student.shape[:-1], 26) if reduction == "none" else None
    spec, kernel = both(name, student, teacher, upstream, T=c["T"], reduction=reduction, **kwargs)
    K = k_factor(c)
    bound = 16 * 2.0 ** -24 * K * (1 + K) * max(1, int(c["valid"].sum()))
    assert torch.isfinite(kernel[0]).all() and torch.isfinite(kernel[1]).all()
    torch.testing.assert_close(kernel[0], spec[0], rtol=1e-5, atol=bound)
    rtol, atol = GRAD_TOL[c["dtype"]]
    scale = float(upstream.abs().max()) if upstream is not None and upstream.numel() else 1.0
    torch.testing.assert_close(kernel[1], spec[1], rtol=rtol, atol=atol + bound * scale / c["T"])


# --- bad values are found by the kernel, and worded like the specification ----------------------


@pytest.mark.parametrize("where, value, message", [
    ("student", math.nan, "student_logits contains NaN"),
    ("teacher", math.nan, "teacher_logits contains NaN"),
    ("student", math.inf, r"student_logits contains \+inf"),
    ("teacher", math.inf, r"teacher_logits contains \+inf"),
])
def test_nan_and_plus_inf_raise_the_specifications_error(where, value, message):
    """Found while the kernel reads the row, in a left-out row too, as the specification does."""
    student, teacher = logits((3, 30), 27), logits((3, 30), 28)
    (student if where == "student" else teacher)[1, 17] = value
    labels = torch.tensor([0, -100, 2], device=DEVICE)
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match=message):
            kdlearn.kl_divergence(student, teacher, labels=labels, backend=backend)


@pytest.mark.parametrize("side", ["student", "teacher"])
def test_a_counted_row_of_only_neg_inf_raises(side):
    student, teacher = logits((3, 30), 29), logits((3, 30), 30)
    (student if side == "student" else teacher)[2] = -math.inf
    with pytest.raises(ValueError, match=rf"{side}_logits has a row whose every logit is -inf \(at position \(2,\)\)"):
        kdlearn.kl_divergence(student, teacher, backend="triton")


# --- dispatch -------------------------------------------------------------------------------------


def test_backend_must_be_known():
    with pytest.raises(ValueError, match=r"backend must be one of None, 'torch', 'triton'; got 'cuda'"):
        kdlearn.kl_divergence(logits((2, 3), 0), logits((2, 3), 1), backend="cuda")


def test_triton_backend_refuses_a_teacher_that_needs_a_gradient():
    teacher = logits((2, 3), 1).requires_grad_()
    with pytest.raises(ValueError, match=r"no gradient for teacher_logits.*teacher_logits.detach\(\)"):
        kdlearn.kl_divergence(logits((2, 3), 0), teacher, backend="triton")
    with torch.no_grad():  # no gradient is asked for: the kernel is fine
        kdlearn.kl_divergence(logits((2, 3), 0), teacher, backend="triton")


@pytest.mark.skipif(DEVICE == "cuda", reason="on a GPU the default backend is the kernel")
def test_cpu_tensors_use_pytorch_unless_told(monkeypatch):
    """The interpreter is for tests and lessons: backend=None never sends CPU tensors through it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the kernel ran")

    monkeypatch.setattr(kernel_module, "softmax_divergence", refuse)
    kdlearn.kl_divergence(logits((2, 3), 0), logits((2, 3), 1))
    with pytest.raises(AssertionError, match="the kernel ran"):
        kdlearn.kl_divergence(logits((2, 3), 0), logits((2, 3), 1), backend="triton")


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
def test_cuda_tensors_use_the_kernel_by_default(monkeypatch):
    calls = []
    original = kernel_module.softmax_divergence
    monkeypatch.setattr(kernel_module, "softmax_divergence", lambda *a, **k: calls.append(1) or original(*a, **k))
    kdlearn.kl_divergence(logits((2, 3), 0), logits((2, 3), 1))
    assert calls
