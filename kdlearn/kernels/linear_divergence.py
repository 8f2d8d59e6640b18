"""Fused LM head + soft-target divergence: the loss of ``student_hidden @ student_weight.T``
against a teacher, computed a chunk of rows at a time so that the (N, V) logits never exist.

For a language model the logits are the largest tensor of a distillation step: 8192 tokens over
a 128,256-word vocabulary take 4 GiB in fp32, and the loss, its gradient and the teacher's
logits take as much again each. Here each chunk of rows goes through

    logits = h_chunk @ W.T                      (chunk, V), then dropped
    loss, g = the divergence of the chunk and its gradient with respect to those logits
    grad_hidden[chunk] = g @ W,  grad_W += g.T @ h_chunk

so memory holds one chunk's logits and gradient plus the weight gradient, whatever N is. The
divergence itself is kdlearn.kl_divergence / generalized_jsd with ``backend=``: the Triton
kernel on CUDA, the PyTorch specification on CPU, the same code either way.

Matrix products: for reduction "mean" and "sum" the gradients are computed during the forward
pass (the loss's grad_output, a scalar, only scales them in backward), so a step costs the same
three products as the unfused path. For "none" the per-row grad_output only arrives in
backward, and the weight gradient sum_r grad_output_r g_r^T h_r cannot be formed before it, so
backward recomputes the chunks: five products instead of three, for the memory of one chunk.
"""

from __future__ import annotations

from functools import partial

import torch
from torch.autograd.function import once_differentiable

from kdlearn import _validation as check
from kdlearn import kernels, losses

# A chunk's fp32 logits may take this many bytes; the rows per chunk are the largest power of
# two that fits (powers of two tile well in the matrix products). On CPU the PyTorch reference
# keeps about ten chunk-sized fp32 temporaries alive through its backward, and small chunks
# stay in cache: at N=4096, H=512, V=32000, 128-row chunks took less time and two thirds of the
# peak memory of 512-row ones (python -m kdlearn.bench --cases linear --chunk-size ...). On a GPU each chunk also reads and writes the whole (V, H) weight-gradient
# accumulator, so fewer, larger chunks pay, and the Triton kernel keeps few temporaries.
CHUNK_LOGITS_BYTES = {"cuda": 512 * 2**20}
DEFAULT_CHUNK_LOGITS_BYTES = 16 * 2**20


def default_chunk_size(vocab: int, device: torch.device) -> int:
    """Rows per chunk when chunk_size is None: the largest power of two whose fp32 logits fit in
    512 MiB on CUDA, 16 MiB elsewhere (at least 1 row). V = 32,000: 4096 rows on CUDA, 128 on
    CPU; V = 128,256: 1024 on CUDA, 32 on CPU."""
    budget = CHUNK_LOGITS_BYTES.get(torch.device(device).type, DEFAULT_CHUNK_LOGITS_BYTES)
    rows = max(1, budget // (4 * vocab))
    return 1 << (rows.bit_length() - 1)


def fused_linear_kl(
    student_hidden: torch.Tensor,
    student_weight: torch.Tensor,
    teacher_logits: torch.Tensor | None = None,
    *,
    teacher_hidden: torch.Tensor | None = None,
    teacher_weight: torch.Tensor | None = None,
    T: float = 1.0,
    direction: str = "forward",
    beta: float | None = None,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    mask: torch.Tensor | None = None,
    chunk_size: int | None = None,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """kl_divergence(student_hidden @ student_weight.T, teacher_logits, ...) without the logits.

        loss = kl_divergence(student_hidden @ student_weight.T, teacher_logits,
                             T=T, direction=direction, labels=labels, mask=mask, reduction=reduction)

    or generalized_jsd(..., beta=beta) when beta is given (direction then stays "forward";
    JSD(beta=0) and JSD(beta=1) are the forward and reverse KL). Every convention is that of
    kdlearn.losses: rows left out by labels == ignore_index or mask == False add 0 and get a
    zero gradient, "mean" divides by the rows that count in the whole input, no T² factor.

    student_hidden (..., H) and student_weight (V, H) (the layout of nn.Linear.weight, an LM
    head) share a dtype. The teacher is either teacher_logits (..., V), or teacher_hidden
    (..., H_teacher) with teacher_weight (V, H_teacher), whose logits are then made a chunk at a
    time too. The teacher is data: it gets no gradient, and a teacher tensor that requires one
    (with grad mode on) is refused with a ValueError, rather than silently left without.

    Gradients flow to student_hidden and student_weight (to the weight accumulated in fp32 when
    it is bf16/fp16, returned in its dtype). Rows are processed chunk_size at a time (default:
    default_chunk_size, a chunk of fp32 logits within 16 MiB on CPU, 512 MiB on CUDA); the
    result does not depend on it beyond rounding. backend is passed to the divergence of each
    chunk (None: the Triton kernel on CUDA, PyTorch on CPU; see kdlearn.losses).
    """
    _check_linear("student_hidden", student_hidden, "student_weight", student_weight)
    rows, vocab = tuple(student_hidden.shape[:-1]), student_weight.shape[0]
    _check_teacher(teacher_logits, teacher_hidden, teacher_weight, rows, vocab, student_hidden.device)
    divergence = _divergence(T, direction, beta, backend, student_hidden.device)
    check.check_choice("reduction", reduction, check.REDUCTIONS)
    # valid_rows reads only the shape and device of the logits it is given (and V, to check the
    # labels' range): a zero-stride view stands in for the logits that are never made.
    valid = check.valid_rows(student_hidden.new_empty(()).expand(*rows, vocab), labels, ignore_index, mask)
    if chunk_size is None:
        chunk_size = default_chunk_size(vocab, student_hidden.device)
    elif isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer (rows per chunk) or None, got {chunk_size!r}")

    teacher_logits, teacher_hidden = (None if t is None else t.reshape(-1, t.shape[-1])
                                      for t in (teacher_logits, teacher_hidden))
    teacher_dtype = (teacher_logits if teacher_logits is not None else teacher_hidden).dtype
    loss_dtype = torch.promote_types(_at_least_fp32(student_hidden.dtype), _at_least_fp32(teacher_dtype))
    loss = LinearDivergence.apply(
        student_hidden.reshape(-1, student_hidden.shape[-1]), student_weight,
        teacher_logits, teacher_hidden, teacher_weight, valid.reshape(-1),
        divergence, chunk_size, reduction, loss_dtype,
    )
    return loss.reshape(rows) if reduction == "none" else loss


class LinearDivergence(torch.autograd.Function):
    """The chunked forward and backward on flattened rows: hidden (N, H), weight (V, H), the
    teacher as logits (N, V) or as hidden (N, H_t) and weight (V, H_t), valid (N,) bool."""

    @staticmethod
    def forward(ctx, hidden, weight, teacher_logits, teacher_hidden, teacher_weight, valid,
                divergence, chunk_size, reduction, loss_dtype):
        teacher = (teacher_logits, teacher_hidden, teacher_weight)
        ctx.settings = (divergence, chunk_size, loss_dtype)
        ctx.reduction, ctx.weight_dtype = reduction, weight.dtype
        if reduction == "none":  # backward makes the chunks again, with the per-row grad_output
            ctx.save_for_backward(hidden, weight, *teacher, valid)
            per_row, _, _ = _sweep(hidden, weight, teacher, valid, *ctx.settings, "none")
            return per_row
        count = valid.sum().clamp(min=1).to(loss_dtype)
        scale = 1.0 / count if reduction == "mean" else torch.ones_like(count)
        total, grad_hidden, grad_weight = _sweep(hidden, weight, teacher, valid, *ctx.settings, "sum", scale,
                                                 *ctx.needs_input_grad[:2])
        # The weight gradient stays in its fp32 accumulator until grad_output has scaled it, so it
        # is rounded to the weight's dtype once. It existed at the end of forward anyway, and the
        # loss's backward comes first in a step's backward: keeping it till then raises no peak.
        ctx.save_for_backward(grad_hidden, grad_weight)
        return total / count if reduction == "mean" else total

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        if ctx.reduction == "none":
            hidden, weight, teacher_logits, teacher_hidden, teacher_weight, valid = ctx.saved_tensors
            _, grad_hidden, grad_weight = _sweep(hidden, weight, (teacher_logits, teacher_hidden, teacher_weight),
                                                 valid, *ctx.settings, "none", grad_loss,
                                                 *ctx.needs_input_grad[:2])
        else:
            grad_hidden, grad_weight = (None if g is None else g * grad_loss for g in ctx.saved_tensors)
        if grad_weight is not None:
            grad_weight = grad_weight.to(ctx.weight_dtype)
        return grad_hidden, grad_weight, None, None, None, None, None, None, None, None


def _sweep(hidden, weight, teacher, valid, divergence, chunk_size, loss_dtype, reduction,
           grad_output=None, want_hidden=False, want_weight=False):
    """One pass over the rows, chunk_size at a time; teacher is (logits, hidden, weight), the
    logits or the other two None.

    reduction "sum" gives the summed loss and the gradients of grad_output * loss (grad_output
    0-d); "none" gives the per-row losses and the gradients of sum(grad_output * per_row)
    (grad_output (N,)). A gradient not wanted is None; with neither wanted, no graph is built.
    Runs with grad mode off (in forward, and in backward through once_differentiable), so the
    products below record nothing; only the divergence of each chunk is differentiated."""
    n = hidden.shape[0]
    want_grad = want_hidden or want_weight
    loss = torch.zeros(n if reduction == "none" else (), dtype=loss_dtype, device=hidden.device)
    grad_hidden = torch.empty_like(hidden) if want_hidden else None
    grad_weight = (torch.zeros(weight.shape, dtype=_at_least_fp32(weight.dtype), device=weight.device)
                   if want_weight else None)
    for start in range(0, n, chunk_size):
        rows = slice(start, min(start + chunk_size, n))
        h = hidden[rows]
        logits = (h @ weight.T).requires_grad_(want_grad)
        target = _teacher_rows(*teacher, rows)
        with torch.enable_grad():
            chunk_loss = _chunk_loss(divergence, logits, target, valid[rows], reduction, rows)
            if want_grad:
                chunk_grad_output = grad_output if reduction == "sum" else grad_output[rows]
                (g,) = torch.autograd.grad(chunk_loss, logits, chunk_grad_output.to(chunk_loss.dtype))
        if reduction == "none":
            loss[rows] = chunk_loss.detach()
        else:
            loss += chunk_loss.detach()
        if want_hidden:
            torch.mm(g, weight, out=grad_hidden[rows])
        if want_weight:
            if grad_weight.dtype == g.dtype:
                grad_weight.addmm_(g.T, h)
            else:  # a bf16/fp16 product (fp32 inside the matmul), summed over chunks in fp32
                grad_weight += g.T @ h
    return loss, grad_hidden, grad_weight


def _chunk_loss(divergence, logits, teacher_logits, valid, reduction, rows):
    try:
        return divergence(logits, teacher_logits, mask=valid, reduction=reduction)
    except ValueError as err:  # say which rows: the message's positions count from the chunk's start
        raise ValueError(f"in rows {rows.start} to {rows.stop - 1} of the flattened input, where "
                         f"student_logits = student_hidden @ student_weight.T: {err}") from err


def _teacher_rows(teacher_logits, teacher_hidden, teacher_weight, rows):
    if teacher_logits is not None:
        return teacher_logits[rows]
    return teacher_hidden[rows] @ teacher_weight.T


def _divergence(T, direction, beta, backend, device):
    """The public loss, with everything but the chunk's logits, mask and reduction bound."""
    T = check.check_temperature(T)
    check.check_choice("direction", direction, check.DIRECTIONS)
    check.check_choice("backend", backend, losses.BACKENDS)
    # Checked here, once, rather than by the first chunk, whose message would name its rows.
    if backend == "triton" and (reason := kernels.unavailable_reason(device)):
        raise ValueError(f"backend='triton' cannot run here: {reason}")
    if beta is None:
        return partial(losses.kl_divergence, T=T, direction=direction, backend=backend)
    beta = check.check_unit_interval("beta", beta)
    if direction != "forward":
        raise ValueError(f"pass either direction (a KL) or beta (a generalized JSD), not both; got "
                         f"direction={direction!r} and beta={beta!r} (beta=1.0 is the reverse KL)")
    return partial(losses.generalized_jsd, beta=beta, T=T, backend=backend)


def _check_linear(hidden_name, hidden, weight_name, weight) -> None:
    """hidden (..., H) and weight (V, H): floating point, same dtype and device, finite."""
    for name, x in ((hidden_name, hidden), (weight_name, weight)):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point torch.Tensor, got "
                             f"{f'dtype {x.dtype}' if isinstance(x, torch.Tensor) else type(x).__name__}")
    if hidden.dim() == 0 or hidden.shape[-1] == 0:
        raise ValueError(f"{hidden_name} must have shape (..., H) with H >= 1, got {tuple(hidden.shape)}")
    if weight.dim() != 2 or weight.shape[0] == 0:
        raise ValueError(f"{weight_name} must have shape (V, H) with V >= 1, the layout of nn.Linear.weight, "
                         f"got {tuple(weight.shape)}")
    if weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"{hidden_name} and {weight_name} must share the hidden size H, got {hidden_name} "
                         f"{tuple(hidden.shape)} (H last) and {weight_name} {tuple(weight.shape)} (H second)")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"{hidden_name} and {weight_name} must have the same dtype, got {hidden.dtype} and "
                         f"{weight.dtype}")
    if hidden.device != weight.device:
        raise ValueError(f"{hidden_name} and {weight_name} must be on the same device, got {hidden.device} "
                         f"and {weight.device}")
    for name, x in ((hidden_name, hidden), (weight_name, weight)):
        if not torch.isfinite(x).all():
            raise ValueError(f"{name} contains NaN or inf")


def _check_teacher(teacher_logits, teacher_hidden, teacher_weight, rows, vocab, device) -> None:
    """Exactly one form of teacher, shaped like the student's rows and vocabulary, on its
    device, and asking for no gradient."""
    if teacher_logits is not None and (teacher_hidden is not None or teacher_weight is not None):
        raise ValueError("pass the teacher either as teacher_logits or as teacher_hidden and teacher_weight, "
                         "not both")
    if teacher_logits is None and (teacher_hidden is None or teacher_weight is None):
        given = [name for name, x in (("teacher_hidden", teacher_hidden), ("teacher_weight", teacher_weight))
                 if x is not None]
        raise ValueError("pass the teacher as teacher_logits (..., V), or as teacher_hidden (..., H) with "
                         f"teacher_weight (V, H); got {' and '.join(given) or 'neither'}")
    if teacher_logits is not None:
        check.check_logits("teacher_logits", teacher_logits)
        named = (("teacher_logits", teacher_logits),)
        leading, teacher_vocab = tuple(teacher_logits.shape[:-1]), teacher_logits.shape[-1]
        where = "last dimension"
    else:
        _check_linear("teacher_hidden", teacher_hidden, "teacher_weight", teacher_weight)
        named = (("teacher_hidden", teacher_hidden), ("teacher_weight", teacher_weight))
        leading, teacher_vocab = tuple(teacher_hidden.shape[:-1]), teacher_weight.shape[0]
        where = "first dimension of teacher_weight"
    first = named[0][0]
    if leading != rows:
        raise ValueError(f"{first} must have student_hidden's leading shape {rows}, got {leading}")
    if teacher_vocab != vocab:
        raise ValueError(f"the teacher's vocabulary size ({where}: {teacher_vocab}) must equal student_weight's "
                         f"V = {vocab}; if one model pads its embedding table, slice both to the shared "
                         f"tokenizer's size")
    for name, x in named:
        if x.device != device:
            raise ValueError(f"{name} must be on student_hidden's device {device}, got {x.device}")
        if x.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name} requires grad, but fused_linear_kl gives the teacher no gradient (it is "
                             f"the target, not trained here): pass {name}.detach()")


def _at_least_fp32(dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
