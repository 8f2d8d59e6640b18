"""The fused top-k divergence kernel against its specification, kdlearn.topk_kl.

Every test calls topk_kl twice on the same inputs, with backend="torch" (the specification) and
backend="triton" (the kernel: compiled on a GPU, through Triton's interpreter on a CPU), and
compares the losses and the gradients.

Tolerances, per dtype. Both sides compute in fp32 (fp64 for fp64 inputs) from the same inputs,
with the same s = z / T. They differ in summation order (blocks of the vocabulary against torch's
reductions) and in how the log-probabilities are assembled (log q_j = (s_j - max) - log sum on
both sides, but from different sums): each log q is off by a few u = 2**-24 times its size, at
most K = largest |z| / min(T, 1) + log V + 1 (the bound of tests/test_losses_fuzz.py). So losses
agree to a few u K absolutely (plus a few u relatively), and gradients, whose entries are
differences of probabilities times |upstream| / T, to a few u K times that scale: ~1e-6 of it
for ordinary logits, 1e-2 for logits of 1e4 at T = 0.05. Losses are fp32 on both sides. Gradients are
rounded to the input dtype at the end, on both sides, so they may also differ by one unit in the
last place of that dtype (its eps, relative). Over 400 fuzzed examples the largest difference
was a quarter of the loss bound below and half of the gradient bound.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import kdlearn
from kdlearn.kernels import _common
from kdlearn.kernels import topk_divergence as kernel_module
from tests.test_losses_fuzz import k_factor, logit_pairs
from tests.test_topk_kl import topk_cache

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
U = 2.0 ** -24


def logits(shape, seed, dtype=torch.float32, scale=3.0):
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(shape, generator=generator, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def cache(shape, k, seed, T=1.0, dtype=torch.float32):
    """The top-k cache (log-probabilities in dtype, int64 indices) of a random teacher."""
    log_p, indices = topk_cache(logits(shape, seed, torch.float64).cpu().numpy(), T, k, seed)
    return torch.as_tensor(log_p).to(dtype).to(DEVICE), torch.as_tensor(indices).to(DEVICE)


def labels_for(shape, seed, every=3):
    """Token labels, with every `every`-th row ignored (-100)."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, shape[-1], shape[:-1], generator=generator)
    labels.view(-1)[::every] = -100
    return labels.to(DEVICE)


def both(student, log_p, indices, upstream=None, teacher_grad=False, **kwargs):
    """(loss, student gradient[, teacher gradient]) from the specification and from the kernel,
    and the scale of the gradients' terms, max |upstream| / T. The gradients are those of
    (loss * upstream).sum(): upstream stands for what follows the loss."""
    out = []
    for backend in ("torch", "triton"):
        s = student.detach().clone().requires_grad_()
        a = log_p.detach().clone().requires_grad_(teacher_grad)
        loss = kdlearn.topk_kl(s, a, indices, **kwargs, backend=backend)
        weight = torch.ones_like(loss) if upstream is None else upstream
        out.append((loss, *torch.autograd.grad((loss * weight).sum(), (s, a) if teacher_grad else (s,))))
    largest_upstream = float(upstream.abs().max()) if upstream is not None and upstream.numel() else 1.0
    return out[0], out[1], largest_upstream / kwargs.get("T", 1.0)


def assert_agree(spec, kernel, dtype, scale, K=10.0):
    """Within the module docstring's tolerances, for inputs whose K is at most the one given;
    scale: that of the gradients' terms (see both)."""
    loss, *grads = spec
    k_loss, *k_grads = kernel
    assert k_loss.dtype == loss.dtype and k_loss.shape == loss.shape
    u = 2.0 ** -53 if loss.dtype == torch.float64 else U
    torch.testing.assert_close(k_loss, loss, rtol=4 * u, atol=4 * u * K)
    for grad, k_grad in zip(grads, k_grads):
        assert k_grad.dtype == grad.dtype and k_grad.shape == grad.shape
        largest = float(grad.abs().max()) if grad.numel() else 0.0
        eps = torch.finfo(grad.dtype).eps
        torch.testing.assert_close(k_grad, grad, rtol=eps, atol=eps * largest + 4 * u * K * scale)


# --- values and gradients over shapes, dtypes, reductions ----------------------------------------


@pytest.mark.parametrize("shape, k", [((1, 1), 1), ((3, 7), 3), ((41, 1271), 20), ((8, 32000), 8),
                                      ((2, 3, 50), 5)], ids=str)
def test_matches_the_specification_across_shapes(shape, k):
    student, (log_p, indices) = logits(shape, 1), cache(shape, k, 2, T=2.0)
    spec, kernel, scale = both(student, log_p, indices, T=2.0, labels=labels_for(shape, 3), reduction="none")
    assert_agree(spec, kernel, torch.float32, scale)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_half_precision_inputs_accumulate_in_fp32(dtype):
    """bf16 and fp16 logits and cache: an fp32 loss equal to the specification's, gradients in the
    input dtypes."""
    student, (log_p, indices) = logits((6, 3000), 4, dtype), cache((6, 3000), 16, 5, T=1.5, dtype=dtype)
    spec, kernel, scale = both(student, log_p, indices, teacher_grad=True, T=1.5, reduction="sum")
    assert kernel[0].dtype == torch.float32
    assert kernel[1].dtype == dtype and kernel[2].dtype == dtype
    assert_agree(spec, kernel, dtype, scale)


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_each_reduction_with_an_upstream_gradient_other_than_one(reduction):
    """The loss scaled downstream (or weighted per row, for "none") scales the gradients alike."""
    shape = (5, 4, 33)
    student, (log_p, indices) = logits(shape, 6), cache(shape, 6, 7, T=0.7)
    upstream = logits((5, 4), 8) if reduction == "none" else torch.tensor(-2.5, device=DEVICE)
    spec, kernel, scale = both(student, log_p, indices, upstream, teacher_grad=True, T=0.7,
                        labels=labels_for(shape, 9), reduction=reduction)
    assert_agree(spec, kernel, torch.float32, scale)


def test_streams_rows_longer_than_a_block(monkeypatch):
    """Blocks of 16 columns: a row of 100 takes 7 blocks, the last one partial, one all -inf, one
    whose row starts -inf; cached tokens in every word of the bitmask, on its sign bit (31, 63)."""
    monkeypatch.setattr(_common, "MAX_BLOCK_V", 16)
    student = logits((4, 100), 10)
    student[:, 64:80] = -math.inf
    student[1, :30] = -math.inf
    indices = torch.tensor([[31, 63, 95, 40, 99]] * 2 + [[40, 41, 63, 96, 5]] * 2, device=DEVICE)
    log_p = torch.log(torch.tensor([[0.4, 0.2, 0.1, 0.05, 0.05]] * 4, device=DEVICE))
    spec, kernel, scale = both(student, log_p, indices, T=3.0, reduction="none")
    assert_agree(spec, kernel, torch.float32, scale)
    assert torch.isfinite(kernel[0]).all() and torch.isfinite(kernel[1]).all()


def test_gradcheck_in_float64():
    """The kernel's own backward against finite differences (float64 inputs compute in float64),
    for the student and the cache, with masked entries and a left-out row."""
    student = logits((3, 9), 12, torch.float64).requires_grad_()
    log_p, indices = cache((3, 9), 3, 13, T=1.3, dtype=torch.float64)
    log_p[0, 1] = -math.inf
    with torch.no_grad():
        student[2, [i for i in range(9) if i not in indices[2]][:3]] = -math.inf
    log_p.requires_grad_()
    labels = torch.tensor([1, -100, 4], device=DEVICE)

    def fn(s, a):
        return kdlearn.topk_kl(s, a, indices, T=1.3, labels=labels, reduction="none", backend="triton")

    assert torch.autograd.gradcheck(fn, (student, log_p))


# --- layouts ----------------------------------------------------------------------------------------


def test_rows_with_a_stride_are_read_in_place():
    """A slice of a padded vocabulary (rows with a stride) and every other row of a batch."""
    padded = logits((10, 64), 14)
    student = padded[::2, :50]
    assert not student.is_contiguous()
    log_p, indices = cache((5, 50), 7, 15)
    spec, kernel, scale = both(student, log_p, indices, T=2.0, reduction="none")
    assert_agree(spec, kernel, torch.float32, scale)


def test_leading_dimensions_that_do_not_flatten_are_copied():
    """(T, B, V) transposed to (B, T, V): no single row stride, so the kernel gets a copy."""
    student = logits((4, 3, 20), 16).transpose(0, 1)
    log_p, indices = cache((3, 4, 20), 4, 17)
    spec, kernel, scale = both(student, log_p, indices, reduction="none")
    assert_agree(spec, kernel, torch.float32, scale)


def test_no_row_at_all():
    log_p, indices = cache((0, 7), 2, 18)
    for reduction in ("none", "sum", "mean"):
        spec, kernel, scale = both(logits((0, 7), 19), log_p, indices, reduction=reduction)
        assert_agree(spec, kernel, torch.float32, scale)


# --- masking and numerics -------------------------------------------------------------------------


def test_left_out_rows_give_zero_whatever_they_hold():
    """Left-out rows add 0 and get a zero gradient: a student row of only -inf, a cache of padding."""
    student = logits((6, 40), 20)
    log_p, indices = cache((6, 40), 5, 21)
    labels = torch.tensor([3, -100, 5, -100, 7, 8], device=DEVICE)
    student[1] = -math.inf
    indices[3] = 0
    log_p[3] = 0.0
    spec, kernel, scale = both(student, log_p, indices, teacher_grad=True, T=2.0, labels=labels, reduction="none")
    assert_agree(spec, kernel, torch.float32, scale)
    for value in kernel:
        assert torch.equal(value[labels == -100], torch.zeros_like(value[labels == -100]))


@pytest.mark.parametrize("reduction", ["none", "sum", "mean"])
def test_every_row_left_out(reduction):
    log_p, indices = cache((3, 11), 4, 22)
    labels = torch.full((3,), -100, device=DEVICE)
    spec, kernel, scale = both(logits((3, 11), 23), log_p, indices, labels=labels, reduction=reduction)
    assert_agree(spec, kernel, torch.float32, scale)
    assert not kernel[0].any() and not kernel[1].any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("T", [0.05, 1.0])
def test_extreme_logits_masked_vocabulary_and_tiny_tails(T, dtype):
    """Logits of ±1e4 and -inf: student tails of exp(-1e4 / T), far below fp32's resolution of 1,
    teacher tails that underflow; finite, and equal to the specification up to u K."""
    student = logits((4, 300), 24, dtype)
    student[:, ::7] = 1e4
    student[:, 1::7] = -1e4
    student[:, 3::11] = -math.inf
    teacher = logits((4, 300), 25, torch.float64)
    teacher[:, ::5] = 1e4
    teacher[:, 3::11] = -math.inf
    log_p, indices = topk_cache(teacher.cpu().numpy(), T, 20)
    log_p, indices = torch.as_tensor(log_p).to(dtype).to(DEVICE), torch.as_tensor(indices).to(DEVICE)
    spec, kernel, scale = both(student, log_p, indices, T=T, reduction="none")
    assert torch.isfinite(kernel[0]).all() and torch.isfinite(kernel[1]).all()
    assert_agree(spec, kernel, dtype, scale, K=1e4 / min(T, 1.0) + math.log(300) + 1)


@pytest.mark.parametrize("k", [4, 12])
def test_whole_vocabulary_or_student_without_a_tail(k):
    """k = V, and a student that masks every uncached token: no student tail on either path."""
    student = logits((5, 12), 26)
    log_p, indices = cache((5, 12), k, 27)
    if k < 12:
        uncached = torch.ones_like(student, dtype=torch.bool).scatter(1, indices, False)
        student[uncached] = -math.inf
    spec, kernel, scale = both(student, log_p, indices, reduction="none")
    assert_agree(spec, kernel, torch.float32, scale)
    # k = V: the teacher's tail is rounding, and counts as 0; k < V: it is real, and the student has none
    assert torch.isfinite(kernel[0]).all() if k == 12 else torch.isinf(kernel[0]).all()
    assert torch.isfinite(kernel[1]).all()


FUZZ = settings(max_examples=40)


@FUZZ
@given(c=logit_pairs(masks=("labels",)), k_share=st.floats(0.0, 1.0),
       reduction=st.sampled_from(["none", "sum", "mean"]))
def test_fuzz_against_the_specification(c, k_share, reduction):
    """Random shapes, k, dtypes, T, left-out rows, ±1e4 and -inf logits, per-row weights."""
    V = c["s"].shape[-1]
    log_p, indices = topk_cache(c["t"].numpy(), c["T"], 1 + round(k_share * (V - 1)))
    student = c["s"].to(c["dtype"]).to(DEVICE)
    log_p, indices = torch.as_tensor(log_p).to(c["dtype"]).to(DEVICE), torch.as_tensor(indices).to(DEVICE)
    upstream = logits(student.shape[:-1], 28) if reduction == "none" else None
    spec, kernel, scale = both(student, log_p, indices, upstream, T=c["T"], labels=c["labels"].to(DEVICE),
                        ignore_index=c["ignore_index"], reduction=reduction)
    assert torch.isfinite(kernel[0]).all() and torch.isfinite(kernel[1]).all()
    assert (kernel[0] >= 0).all()
    assert_agree(spec, kernel, c["dtype"], scale, K=k_factor(c))


# --- bad values are found by the kernel, and worded like the specification ------------------------


@pytest.mark.parametrize("value, message", [(math.nan, "student_logits contains NaN"),
                                            (math.inf, r"student_logits contains \+inf")])
def test_nan_and_plus_inf_raise_the_specifications_error(value, message):
    """Found while the kernel reads the row, in a left-out row too, as the specification does."""
    student = logits((3, 30), 29)
    student[1, 17] = value
    log_p, indices = cache((3, 30), 4, 30)
    for backend in ("torch", "triton"):
        with pytest.raises(ValueError, match=message):
            kdlearn.topk_kl(student, log_p, indices, labels=torch.tensor([0, -100, 2], device=DEVICE),
                            backend=backend)


def test_a_counted_row_of_only_neg_inf_raises():
    student = logits((3, 30), 31)
    student[2] = -math.inf
    log_p, indices = cache((3, 30), 4, 32)
    with pytest.raises(ValueError, match=r"student_logits has a row whose every logit is -inf \(at position \(2,\)\)"):
        kdlearn.topk_kl(student, log_p, indices, backend="triton")


# --- dispatch ---------------------------------------------------------------------------------------


@pytest.mark.skipif(DEVICE == "cuda", reason="on a GPU the default backend is the kernel")
def test_cpu_tensors_use_pytorch_unless_told(monkeypatch):
    """The interpreter is for tests and lessons: backend=None never sends CPU tensors through it."""
    def refuse(*args, **kwargs):
        raise AssertionError("the kernel ran")

    monkeypatch.setattr(kernel_module, "topk_divergence", refuse)
    log_p, indices = cache((2, 5), 2, 33)
    kdlearn.topk_kl(logits((2, 5), 34), log_p, indices)
    with pytest.raises(AssertionError, match="the kernel ran"):
        kdlearn.topk_kl(logits((2, 5), 34), log_p, indices, backend="triton")


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a GPU")
def test_cuda_tensors_use_the_kernel_by_default(monkeypatch):
    calls = []
    original = kernel_module.topk_divergence
    monkeypatch.setattr(kernel_module, "topk_divergence", lambda *a, **k: calls.append(1) or original(*a, **k))
    log_p, indices = cache((2, 5), 2, 35)
    kdlearn.topk_kl(logits((2, 5), 36), log_p, indices)
    assert calls
