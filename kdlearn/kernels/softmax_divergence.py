"""Fused temperature-softmax divergences from raw logits: forward KL, reverse KL, generalized JSD.

Why fuse. The plain PyTorch loss (kdlearn.losses) materialises, for N rows of V logits, the
log-probabilities of both sides, the elementwise terms and, in backward, their gradients: several
N x V fp32 tensors, each written to memory and read back. For a language model (N = 8192 tokens,
V = 128256) one such tensor is 4 GiB, and the loss is bound by memory traffic, not arithmetic.
This kernel reads the two logits tensors, writes the gradient, and keeps a few numbers per row.

One program handles one row, in blocks of BLOCK_V columns. With a = student / T, b = teacher / T,
log q = a - logsumexp(a), log p = b - logsumexp(b), each computed as (a - max a) - log sum exp(a - max a)
as torch.log_softmax does (a logsumexp of 2e5, rounded to fp32, would be off by 0.01 in every
log-probability):

    forward pass 1   online logsumexp of a and of b (a running max and a running sum of exp,
                     rescaled when the max grows); flags for NaN, +inf and all -inf rows
    forward pass 2   the divergence, and the one number per row its gradient needs:
                       forward KL   L = sum p (log p - log q)                  gradient  q - p
                       reverse KL   L = sum q (log q - log p)                  gradient  q (log q - log p - L)
                       JSD(beta)    L = beta KL(p || m) + (1 - beta) KL(q || m),
                                    log m = logaddexp(log beta + log p, log(1 - beta) + log q)
                                                                               gradient  (1 - beta) q (log q - log m - KL(q || m))
    backward         one pass: d loss / d student = upstream * gradient / T

The gradient is recomputed in backward from the saved per-row statistics (the max and log-sum
of each side and the row constant) rather than written during the forward pass. The reverse KL and the JSD
need their row constant, which is only known once pass 2 has read the whole row, so writing the
gradient in forward would take a third pass there too: both ways read the logits three times and
write the gradient once, for forward+backward. Recomputing wins on everything else: a forward
without gradient (evaluation) reads the logits twice and writes nothing; the upstream gradient
(reduction="none", a loss scaled before backward) is applied in the same pass for free, where a
gradient stored in forward would need another N x V read and write; and the N x V gradient exists
only during backward. Extra memory: O(N) (five statistics and a flag per row).

Left-out rows (labels == ignore_index, mask == False) get loss 0 and gradient 0 and are read only
to look for NaN and +inf, which the specification rejects anywhere in its inputs. Reading the
per-row flags back costs one host synchronisation per call, instead of separate passes over N x V.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from kdlearn import _validation as check
from kdlearn.kernels._common import (STUDENT_EMPTY, STUDENT_NAN, STUDENT_POSINF, TEACHER_EMPTY, TEACHER_NAN,
                                     TEACHER_POSINF, as_rows, bad_value_flags, compute_dtype, launch_settings,
                                     online_logsumexp, quiet_interpreter)

# Globals a kernel reads must be tl.constexpr; Python reads them as .value.
FORWARD, REVERSE, JSD = tl.constexpr(0), tl.constexpr(1), tl.constexpr(2)
DIVERGENCES = {"forward": FORWARD.value, "reverse": REVERSE.value, "jsd": JSD.value}
# Saved per row for backward: max and log-sum of exp of each side, and the gradient's row constant.
STATS = tl.constexpr(5)


@triton.jit
def _log_mixture(log_p, log_q, log_beta, log_one_minus_beta):
    """log(beta p + (1 - beta) q) in log space; -inf (not NaN) where p and q are both 0."""
    x = log_beta + log_p
    y = log_one_minus_beta + log_q
    top = tl.maximum(x, y)
    shift = tl.where(top == float("-inf"), 0.0, top)
    return shift + tl.log(tl.exp(x - shift) + tl.exp(y - shift))


@triton.jit
def _plogp_ratio(prob, log_prob, log_other):
    """prob (log prob - log other), with 0 log 0 = 0 (no NaN from -inf - -inf where prob is 0)."""
    return tl.where(prob > 0, prob * (log_prob - log_other), 0.0)


@triton.jit
def _load_row_block(row_ptr, cols, V, COMPUTE: tl.constexpr):
    return tl.load(row_ptr + cols, mask=cols < V, other=float("-inf")).to(COMPUTE)


@triton.jit
def _log_probs(row_ptr, cols, V, T, row_max, log_sum, COMPUTE: tl.constexpr):
    return (_load_row_block(row_ptr, cols, V, COMPUTE) / T - row_max) - log_sum


@triton.jit
def _forward_kernel(
    student_ptr, student_row_stride, teacher_ptr, teacher_row_stride, counted_ptr,
    loss_ptr, stats_ptr, flags_ptr,
    V, temperature_ptr, beta, log_beta, log_one_minus_beta,
    DIVERGENCE: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride overflows int32 beyond 2**31 elements
    student_row = student_ptr + row * student_row_stride
    teacher_row = teacher_ptr + row * teacher_row_stride
    offsets = tl.arange(0, BLOCK_V)
    # T is read from memory, in the compute dtype: a float argument would be rounded to fp32.
    T = tl.load(temperature_ptr)

    # Pass 1: the logsumexp of both sides, and anything wrong with the values.
    # Accumulators typed up front: a loop may not change a variable's type (fp32 to fp64).
    max_a, sum_a = tl.full([], float("-inf"), COMPUTE), tl.zeros([], COMPUTE)
    max_b, sum_b = tl.full([], float("-inf"), COMPUTE), tl.zeros([], COMPUTE)
    flags = tl.zeros([], tl.int32)
    for start in range(0, V, BLOCK_V):
        cols = start + offsets
        s = _load_row_block(student_row, cols, V, COMPUTE)
        t = _load_row_block(teacher_row, cols, V, COMPUTE)
        flags |= bad_value_flags(s, STUDENT_NAN, STUDENT_POSINF)
        flags |= bad_value_flags(t, TEACHER_NAN, TEACHER_POSINF)
        max_a, sum_a = online_logsumexp(s / T, max_a, sum_a)
        max_b, sum_b = online_logsumexp(t / T, max_b, sum_b)
    log_sum_a = tl.log(sum_a)
    log_sum_b = tl.log(sum_b)

    counted = tl.load(counted_ptr + row) != 0
    if counted:
        flags |= (max_a == float("-inf")).to(tl.int32) * STUDENT_EMPTY
        flags |= (max_b == float("-inf")).to(tl.int32) * TEACHER_EMPTY
    tl.store(flags_ptr + row, flags)

    # Pass 2: the divergence, with the exact log-probabilities.
    loss = tl.zeros([], COMPUTE)
    kl_q_m = tl.zeros([], COMPUTE)
    if counted & (flags == 0):
        for start in range(0, V, BLOCK_V):
            cols = start + offsets
            log_q = _log_probs(student_row, cols, V, T, max_a, log_sum_a, COMPUTE)
            log_p = _log_probs(teacher_row, cols, V, T, max_b, log_sum_b, COMPUTE)
            q = tl.exp(log_q)
            p = tl.exp(log_p)
            if DIVERGENCE == FORWARD:
                loss += tl.sum(_plogp_ratio(p, log_p, log_q), axis=0)
            elif DIVERGENCE == REVERSE:
                loss += tl.sum(_plogp_ratio(q, log_q, log_p), axis=0)
            else:
                log_m = _log_mixture(log_p, log_q, log_beta, log_one_minus_beta)
                q_term = tl.sum(_plogp_ratio(q, log_q, log_m), axis=0)
                kl_q_m += q_term
                loss += beta * tl.sum(_plogp_ratio(p, log_p, log_m), axis=0) + (1.0 - beta) * q_term
    tl.store(loss_ptr + row, loss)
    # The row constant of the gradient (see the module docstring); forward KL needs none.
    if DIVERGENCE == JSD:
        row_constant = kl_q_m
    else:
        row_constant = loss
    stats_row = stats_ptr + STATS * row
    tl.store(stats_row, max_a)
    tl.store(stats_row + 1, log_sum_a)
    tl.store(stats_row + 2, max_b)
    tl.store(stats_row + 3, log_sum_b)
    tl.store(stats_row + 4, row_constant)


@triton.jit
def _backward_kernel(
    student_ptr, student_row_stride, teacher_ptr, teacher_row_stride, counted_ptr,
    stats_ptr, upstream_ptr, grad_ptr, grad_row_stride,
    V, temperature_ptr, beta, log_beta, log_one_minus_beta,
    DIVERGENCE: tl.constexpr, COMPUTE: tl.constexpr, BLOCK_V: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    student_row = student_ptr + row * student_row_stride
    teacher_row = teacher_ptr + row * teacher_row_stride
    grad_row = grad_ptr + row * grad_row_stride
    offsets = tl.arange(0, BLOCK_V)
    counted = tl.load(counted_ptr + row) != 0

    if counted:
        T = tl.load(temperature_ptr)
        stats_row = stats_ptr + STATS * row
        max_a, log_sum_a = tl.load(stats_row), tl.load(stats_row + 1)
        max_b, log_sum_b = tl.load(stats_row + 2), tl.load(stats_row + 3)
        row_constant = tl.load(stats_row + 4)
        # d/d student = d/d a / T, times what the loss was multiplied by downstream.
        scale = tl.load(upstream_ptr + row).to(COMPUTE) / T
        for start in range(0, V, BLOCK_V):
            cols = start + offsets
            log_q = _log_probs(student_row, cols, V, T, max_a, log_sum_a, COMPUTE)
            log_p = _log_probs(teacher_row, cols, V, T, max_b, log_sum_b, COMPUTE)
            q = tl.exp(log_q)
            if DIVERGENCE == FORWARD:
                grad = q - tl.exp(log_p)
            elif DIVERGENCE == REVERSE:
                grad = _plogp_ratio(q, log_q, log_p) - q * row_constant
            else:
                log_m = _log_mixture(log_p, log_q, log_beta, log_one_minus_beta)
                grad = (1.0 - beta) * (_plogp_ratio(q, log_q, log_m) - q * row_constant)
            tl.store(grad_row + cols, (grad * scale).to(grad_ptr.dtype.element_ty), mask=cols < V)
    else:
        for start in range(0, V, BLOCK_V):
            cols = start + offsets
            tl.store(grad_row + cols, tl.zeros([BLOCK_V], grad_ptr.dtype.element_ty), mask=cols < V)


class SoftmaxDivergenceFunction(torch.autograd.Function):
    """Per-row divergences of (N, V) logits, differentiable with respect to the student logits."""

    @staticmethod
    def forward(ctx, student, teacher, counted, T, divergence, beta):
        n_rows, V = student.shape
        compute = compute_dtype(student, teacher)
        loss = torch.empty(n_rows, dtype=compute, device=student.device)
        stats = torch.empty(n_rows, STATS.value, dtype=compute, device=student.device)
        flags = torch.empty(n_rows, dtype=torch.int32, device=student.device)
        temperature = torch.tensor([T], dtype=compute, device=student.device)
        ctx.launch = dict(V=V, temperature_ptr=temperature, **_beta_args(beta), DIVERGENCE=DIVERGENCES[divergence],
                          **launch_settings(V, compute))
        if n_rows:
            with quiet_interpreter():
                _forward_kernel[(n_rows,)](student, student.stride(0), teacher, teacher.stride(0), counted,
                                           loss, stats, flags, **ctx.launch)
        ctx.save_for_backward(student, teacher, counted, stats)
        ctx.mark_non_differentiable(flags)
        return loss, flags

    @staticmethod
    def backward(ctx, upstream, _flags):
        student, teacher, counted, stats = ctx.saved_tensors
        grad = torch.empty(student.shape, dtype=student.dtype, device=student.device)
        if student.shape[0]:
            with quiet_interpreter():
                _backward_kernel[(student.shape[0],)](student, student.stride(0), teacher, teacher.stride(0),
                                                      counted, stats, upstream.contiguous(), grad, grad.stride(0),
                                                      **ctx.launch)
        return grad, None, None, None, None, None


def softmax_divergence(student_logits: torch.Tensor, teacher_logits: torch.Tensor, valid: torch.Tensor, *,
                       T: float, divergence: str, beta: float = 0.5) -> torch.Tensor:
    """Per-row divergence (shape ``student_logits.shape[:-1]``, 0 where ``valid`` is False).

    The arguments are those kdlearn.losses has already checked, save the values of the logits,
    which the kernel checks as it reads them. divergence is "forward", "reverse" or "jsd" (with
    0 < beta < 1). Rows may have any stride; a vocabulary that is not contiguous, or leading
    dimensions that do not flatten into one, are copied first.
    """
    student, teacher = as_rows(student_logits), as_rows(teacher_logits)
    counted = valid.reshape(-1).to(torch.int8)
    per_row, flags = SoftmaxDivergenceFunction.apply(student, teacher, counted, T, divergence, beta)
    if flags.any():
        _raise_for_bad_values(student_logits, teacher_logits, valid)
    return per_row.view(valid.shape)


def _beta_args(beta: float) -> dict:
    """beta and its logs, for the JSD's mixture; the KLs ignore them (beta is 0 or 1 there)."""
    inside = 0.0 < beta < 1.0
    return dict(beta=beta, log_beta=math.log(beta) if inside else 0.0,
                log_one_minus_beta=math.log1p(-beta) if inside else 0.0)


def _raise_for_bad_values(student_logits, teacher_logits, valid) -> None:
    """The kernel flagged a row: let the specification's own checks find it and word the error."""
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        check.check_values(name, logits)
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        check.check_rows_have_mass(name, logits, valid)
    raise RuntimeError("kdlearn's softmax-divergence kernel flagged a row that the checks find nothing wrong with; "
                       "please report this as a bug")
