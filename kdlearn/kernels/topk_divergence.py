"""The KL divergence against a cached top-k teacher (kdlearn.topk_kl), fused over the vocabulary.

What is big and what is small. The student logits are N x V (V up to ~150k); the teacher cache is
N x k (k ~ 20-100). Everything that touches the cache, the (k + 1)-bucket KL of
kdlearn.losses._topk_kl_rows included, is N x k work done in PyTorch; the kernels only stream the
N x V student rows, which is where the time and memory go. The PyTorch specification materialises
log_softmax(student / T) and a copy of it with the cached entries masked (N x V fp32 each) and,
in backward, their gradients; here the student is read and the gradient written, with two numbers
kept per row and a bitmask of the cached tokens (N x V / 8 bytes, 1/16 of bf16 logits).

The student's tail, the mass outside the cache, is summed directly over the uncached tokens, not
taken as 1 - sum_j q_j: below fp32's resolution of 1 (about 1e-7) the difference is rounding, and
a real tail that small would be lost, and with it the gradient that asks the student for it.
With s = student / T, one program per row:

    forward    one pass over the row: the uncached tokens' running max and sum of exp (online,
               rescaled when the max grows), i.e. lse_tail = logsumexp of s over them; flags for
               NaN and +inf. Then, in PyTorch: the k cached logits gathered (student.gather,
               N x k), log q_j and log q_tail from them and lse_tail, and the bucket KL.
    backward   autograd through the same bucket KL (N x k) gives d loss / d s_j for the cached
               tokens and h = d loss / d lse_tail. Since d lse_tail / d s_v = exp(s_v - lse_tail)
               for an uncached v, the kernel writes h * exp(s_v - lse_tail) / T over the row in one
               pass, and a scatter (N x k) overwrites the cached entries with their own gradient.

Why the gradient is recomputed in backward rather than written during the forward pass: it needs
lse_tail, known only after a full pass, so writing it in forward would take a second pass there,
and both ways read the row twice and write the gradient once for forward + backward. Recomputing
wins on the rest: a forward without backward (evaluation) reads the row once and writes nothing;
the upstream gradient (a per-row weight with reduction="none", a loss scaled before backward) is
known only in backward, and is applied in the same pass instead of another N x V read and write;
and no N x V buffer lives from forward to backward.

No load takes its address from loaded data (the interpreter has none): the cached tokens are
gathered and scattered by PyTorch, and the kernel finds them in the bitmask at an address computed
from the column alone.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kdlearn import _validation as check
from kdlearn.kernels._common import (STUDENT_NAN, STUDENT_POSINF, as_rows, bad_value_flags, compute_dtype,
                                     launch_settings, online_logsumexp, quiet_interpreter)
from kdlearn.losses import _logsumexp, _topk_kl_rows

BITS = tl.constexpr(32)  # cached-token flags per int32 word of the bitmask (constexpr: read in a kernel)


@triton.jit
def _tail_logsumexp_kernel(
    student_ptr, student_row_stride, cached_bits_ptr, bits_row_stride, stats_ptr, flags_ptr,
    V, temperature_ptr, COMPUTE: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """Per row: stats = (max, log sum exp(s_v - max)) over the uncached v, s = student / T; and
    flags for NaN and +inf anywhere in the row (left-out rows included: the specification rejects
    them in any row)."""
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride overflows int32 beyond 2**31 elements
    student_row = student_ptr + row * student_row_stride
    bits_row = cached_bits_ptr + row * bits_row_stride
    offsets = tl.arange(0, BLOCK_V)
    T = tl.load(temperature_ptr)
    # Typed up front: a loop may not change a variable's type (fp32 to fp64).
    tail_max = tl.full([], float("-inf"), COMPUTE)
    tail_sum = tl.zeros([], COMPUTE)
    flags = tl.zeros([], tl.int32)
    for start in range(0, V, BLOCK_V):
        cols = start + offsets
        s = tl.load(student_row + cols, mask=cols < V, other=float("-inf")).to(COMPUTE)
        flags |= bad_value_flags(s, STUDENT_NAN, STUDENT_POSINF)
        words = tl.load(bits_row + cols // BITS, mask=cols < V, other=0)
        cached = ((words >> (cols % BITS)) & 1) != 0
        tail_max, tail_sum = online_logsumexp(tl.where(cached, float("-inf"), s / T), tail_max, tail_sum)
    tl.store(flags_ptr + row, flags)
    tl.store(stats_ptr + 2 * row, tail_max)
    tl.store(stats_ptr + 2 * row + 1, tl.log(tail_sum))


@triton.jit
def _tail_gradient_kernel(
    student_ptr, student_row_stride, stats_ptr, scale_ptr, grad_ptr, grad_row_stride,
    V, temperature_ptr, COMPUTE: tl.constexpr, BLOCK_V: tl.constexpr,
):
    """grad_v = scale * exp(s_v - lse_tail) over a row, scale = upstream * h / T.

    For an uncached v, s_v <= lse_tail; a cached v may lie far above it, so the exponent is capped
    at 0 there to keep exp finite: those entries are overwritten afterwards. A row whose scale is 0
    (left out, weighted 0, or without a tail) is not read: its tail gradient is 0."""
    row = tl.program_id(0).to(tl.int64)
    student_row = student_ptr + row * student_row_stride
    grad_row = grad_ptr + row * grad_row_stride
    offsets = tl.arange(0, BLOCK_V)
    scale = tl.load(scale_ptr + row)
    if scale != 0:
        T = tl.load(temperature_ptr)
        tail_max = tl.load(stats_ptr + 2 * row)
        log_tail_sum = tl.load(stats_ptr + 2 * row + 1)
        for start in range(0, V, BLOCK_V):
            cols = start + offsets
            s = tl.load(student_row + cols, mask=cols < V, other=float("-inf")).to(COMPUTE) / T
            share = tl.exp(tl.minimum((s - tail_max) - log_tail_sum, 0.0))
            tl.store(grad_row + cols, (share * scale).to(grad_ptr.dtype.element_ty), mask=cols < V)
    else:
        for start in range(0, V, BLOCK_V):
            cols = start + offsets
            tl.store(grad_row + cols, tl.zeros([BLOCK_V], grad_ptr.dtype.element_ty), mask=cols < V)


def _student_side(s_topk: torch.Tensor, log_tail: torch.Tensor):
    """log q_j and log q_tail from the cached s_j and the tail's logsumexp, both shifted by the
    same constant (any: the result does not depend on it, only its rounding does). A tail of
    log -inf stays -inf whatever s_j, as in the specification, where it is a logsumexp of -inf."""
    log_total = torch.logaddexp(_logsumexp(s_topk), log_tail)
    no_tail = torch.isneginf(log_tail)
    return s_topk - log_total.unsqueeze(1), torch.where(no_tail, -math.inf, log_tail - log_total)


class TopkDivergenceFunction(torch.autograd.Function):
    """Per-row top-k KL of (N, V) student logits against an (N, k) cache, differentiable with
    respect to the student logits and the cached log-probabilities."""

    @staticmethod
    def forward(ctx, student, log_p_topk, indices, counted, T):
        n_rows, V = student.shape
        compute = compute_dtype(student)
        stats = torch.empty(n_rows, 2, dtype=compute, device=student.device)
        flags = torch.empty(n_rows, dtype=torch.int32, device=student.device)
        # T is read from memory, in the compute dtype: a float argument would be rounded to fp32.
        temperature = torch.tensor([T], dtype=compute, device=student.device)
        ctx.T = T
        ctx.launch = dict(V=V, temperature_ptr=temperature, **launch_settings(V, compute))
        # Indices are distinct within a row, so adding their bits is or-ing them.
        cached_bits = torch.zeros(n_rows, triton.cdiv(V, BITS.value), dtype=torch.int32, device=student.device)
        bits = torch.ones_like(indices, dtype=torch.int32) << (indices % BITS.value).int()
        cached_bits.scatter_add_(1, indices // BITS.value, bits)
        if n_rows:
            with quiet_interpreter():
                _tail_logsumexp_kernel[(n_rows,)](student, student.stride(0), cached_bits, cached_bits.stride(0),
                                                  stats, flags, **ctx.launch)
        # Shifted by the row's largest s, so that log q is not the small difference of two large
        # numbers (logits of 1e4 at T = 0.05).
        s_topk = student.gather(1, indices).to(compute) / T
        shift = torch.maximum(s_topk.max(dim=1).values, stats[:, 0])
        counted_rows = counted.bool()
        # Left-out rows: any finite stand-in (their statistics may be -inf or NaN), so that
        # backward's 0 * (their terms) stays 0.
        x_topk = (s_topk - shift.unsqueeze(1)).masked_fill(~counted_rows.unsqueeze(1), 0.0)
        log_tail = ((stats[:, 0] - shift) + stats[:, 1]).masked_fill(~counted_rows, 0.0)
        empty = counted_rows & torch.isneginf(shift)
        flags.masked_fill_(empty, -1)  # a counted row of only -inf, which is no distribution
        per_row = _topk_kl_rows(log_p_topk, *_student_side(x_topk, log_tail)).masked_fill(~counted_rows, 0.0)
        ctx.save_for_backward(student, log_p_topk, indices, counted, stats, x_topk, log_tail)
        ctx.mark_non_differentiable(flags)
        return per_row, flags

    @staticmethod
    def backward(ctx, upstream, _flags):
        student, log_p_topk, indices, counted, stats, x_topk, log_tail = ctx.saved_tensors
        upstream = upstream.masked_fill(~counted.bool(), 0.0)
        teacher_grad = ctx.needs_input_grad[1]
        with torch.enable_grad():
            x = x_topk.detach().requires_grad_()
            tail = log_tail.detach().requires_grad_()
            log_p = log_p_topk.detach().requires_grad_(teacher_grad)
            rows = _topk_kl_rows(log_p, *_student_side(x, tail))
            grads = torch.autograd.grad(rows, (x, tail, log_p) if teacher_grad else (x, tail), upstream)
        # d loss / d lse_tail; 0 where the student has no tail (its uncached tokens all -inf).
        tail_scale = (grads[1] / ctx.T).masked_fill(torch.isneginf(log_tail), 0.0).to(stats.dtype).contiguous()
        grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
        if student.shape[0]:
            with quiet_interpreter():
                _tail_gradient_kernel[(student.shape[0],)](student, student.stride(0), stats, tail_scale,
                                                           grad, grad.stride(0), **ctx.launch)
            grad.scatter_(1, indices, (grads[0] / ctx.T).to(grad.dtype))
        return grad, grads[2] if teacher_grad else None, None, None, None


def topk_divergence(student_logits: torch.Tensor, log_p_topk: torch.Tensor, indices: torch.Tensor,
                    valid: torch.Tensor, *, T: float) -> torch.Tensor:
    """Per-row topk_kl (shape ``student_logits.shape[:-1]``, 0 where ``valid`` is False).

    The arguments are those kdlearn.losses.topk_kl has checked and prepared (the cache with
    left-out rows made harmless, int64 indices), save the values of the student logits, which the
    kernel checks as it reads them. Rows may have any stride; a vocabulary that is not contiguous,
    or leading dimensions that do not flatten into one, are copied first.
    """
    student = as_rows(student_logits)
    k = log_p_topk.shape[-1]
    counted = valid.reshape(-1).to(torch.int8)
    per_row, flags = TopkDivergenceFunction.apply(student, log_p_topk.reshape(-1, k), indices.reshape(-1, k),
                                                  counted, T)
    if flags.any():  # the specification's checks find the row and word the error
        check.check_values("student_logits", student_logits)
        check.check_rows_have_mass("student_logits", student_logits, valid)
        raise RuntimeError("kdlearn's top-k divergence kernel flagged a row that the checks find nothing wrong "
                           "with; please report this as a bug")
    return per_row.view(valid.shape)
