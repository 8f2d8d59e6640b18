"""Soft-target losses in plain PyTorch: the specification every kdlearn kernel is tested against.

Conventions, shared by every function here:

* Logits have shape (..., V): (B, V) for a classifier, (B, T, V) for a language model. Each
  position along the leading dimensions is a *row*: one distribution over V classes or tokens.
* p = softmax(teacher_logits / T) is the teacher, q = softmax(student_logits / T) the student.
  "forward" KL is KL(p || q) (the teacher's expectation, as in the GKD and MiniLLM papers),
  "reverse" KL is KL(q || p).
* Rows are left out with ``labels == ignore_index`` or ``mask == False``. A left-out row adds 0
  to the loss and gets a zero gradient, whatever its logits hold.
* reduction="none" returns one value per row (shape ``logits.shape[:-1]``, 0 at left-out rows);
  "sum" adds the rows that count; "mean" divides that sum by the number of rows that count
  (0 when none does). For (B, V) logits with no row left out, "mean" equals torch's
  ``kl_div(..., reduction="batchmean")``; for (B, T, V) it is the per-token mean, whereas
  "batchmean" would divide by B only.
* kl_divergence and generalized_jsd are divergences between the tempered distributions and
  carry no T² factor; kd_loss carries it (switchable), as Hinton et al. prescribe.
* backend: None runs the fused Triton kernel (kdlearn.kernels) on CUDA tensors when Triton is
  installed and no gradient for the teacher is asked for, and this plain PyTorch otherwise;
  "torch" always runs the code here; "triton" insists on the kernel (on CPU tensors through
  Triton's interpreter, TRITON_INTERPRET=1, which is for testing and learning, not speed). Both
  compute the same thing: the kernels are tested against this module.
* Numerics: fp16 and bf16 inputs are computed in fp32 and the loss is returned in fp32. A logit
  of -inf masks a vocabulary entry; 0 * log 0 counts as 0, also when a probability underflows.
  The result is infinite only where the divergence really is: the distribution in front of the
  log puts mass where the other has none.
"""

from __future__ import annotations

import math

import torch

from kdlearn import _validation as check

BACKENDS = (None, "torch", "triton")


def soft_targets(logits: torch.Tensor, T: float) -> torch.Tensor:
    """Softmax at temperature T over the last dimension.

        p_i = exp(z_i / T) / sum_j exp(z_j / T)

    T = 1 is the ordinary softmax; T > 1 flattens the distribution and shows how the small
    probabilities relate ("dark knowledge"); T -> 0 approaches the one-hot argmax.
    Computed, and returned, in at least fp32.
    """
    check.check_logits("logits", logits)
    check.check_values("logits", logits)
    T = check.check_temperature(T)
    check.check_rows_have_mass("logits", logits, torch.ones(logits.shape[:-1], dtype=torch.bool,
                                                            device=logits.device))
    return torch.softmax(_at_least_fp32(logits) / T, dim=-1)


def kl_divergence(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    T: float = 1.0,
    direction: str = "forward",
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """KL divergence between teacher and student at temperature T, per row then reduced.

        forward:  KL(p || q) = sum_v p_v (log p_v - log q_v)
        reverse:  KL(q || p) = sum_v q_v (log q_v - log p_v)

    with p = softmax(teacher_logits / T), q = softmax(student_logits / T). Forward KL makes the
    student cover every mode of the teacher; reverse KL lets it pick one (mode seeking).
    No T² factor: multiply by T**2 yourself, or use kd_loss.
    """
    check.check_choice("direction", direction, check.DIRECTIONS)
    T, valid, student, teacher, kernel = _prepare(student_logits, teacher_logits, T, labels, ignore_index,
                                                  mask, reduction, backend)
    if kernel:
        per_row = kernel(student, teacher, valid, T=T, divergence=direction)
    else:
        log_q, log_p = _log_probs(student, T), _log_probs(teacher, T)
        per_row = _kl_rows(log_p, log_q) if direction == "forward" else _kl_rows(log_q, log_p)
    return reduce_rows(per_row, valid, reduction)


def generalized_jsd(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    beta: float = 0.5,
    T: float = 1.0,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    mask: torch.Tensor | None = None,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Generalized Jensen-Shannon divergence JSD(beta) of the GKD paper, at temperature T.

        m = beta * p + (1 - beta) * q
        JSD(beta) = beta * KL(p || m) + (1 - beta) * KL(q || m)      for 0 < beta < 1
        JSD(0) = KL(p || q)   (forward KL),   JSD(1) = KL(q || p)   (reverse KL)

    with p the teacher and q the student at temperature T. The mixture is formed in log space
    (log m = logaddexp(log beta + log p, log(1 - beta) + log q)), so no probability is rounded
    to 0 before its log is taken. Inside (0, 1) the value tends to 0 at both ends; the endpoints
    are defined as the two KLs, as in the GKD reference implementation (and TRL), so that beta
    moves a training recipe from forward to reverse KL. beta = 0.5 is symmetric in p and q.
    No T² factor.
    """
    beta = check.check_unit_interval("beta", beta)
    T, valid, student, teacher, kernel = _prepare(student_logits, teacher_logits, T, labels, ignore_index,
                                                  mask, reduction, backend)
    if kernel:
        divergence = {0.0: "forward", 1.0: "reverse"}.get(beta, "jsd")
        return reduce_rows(kernel(student, teacher, valid, T=T, divergence=divergence, beta=beta), valid,
                           reduction)
    log_q, log_p = _log_probs(student, T), _log_probs(teacher, T)
    if beta == 0.0:
        per_row = _kl_rows(log_p, log_q)
    elif beta == 1.0:
        per_row = _kl_rows(log_q, log_p)
    else:
        log_m = _log_mixture(log_p, log_q, beta)
        per_row = beta * _kl_rows(log_p, log_m) + (1.0 - beta) * _kl_rows(log_q, log_m)
    return reduce_rows(per_row, valid, reduction)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor | None = None,
    *,
    T: float,
    alpha: float,
    t_squared: bool = True,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Hinton, Vinyals and Dean's distillation loss (2015).

        loss = alpha * T² * KL(p_T || q_T) + (1 - alpha) * CE(q_1, labels)

    p_T, q_T: teacher and student softmax at temperature T; q_1: the student at T = 1.
    The soft term's gradient scales as 1/T², so it is multiplied by T² (t_squared=True) to keep
    the two terms' balance independent of T; t_squared=False drops the factor. The KL differs
    from the paper's soft cross-entropy only by the teacher's entropy, a constant for the
    student, so the gradients are the same. labels (class indices, shape ``logits.shape[:-1]``)
    are needed when alpha < 1; rows whose label is ignore_index are left out of both terms.
    """
    T = check.check_temperature(T)
    alpha = check.check_unit_interval("alpha", alpha)
    if labels is None and alpha < 1.0:
        raise ValueError(f"labels is required when alpha < 1 (the hard-label term has weight 1 - alpha = "
                         f"{1.0 - alpha:g}); pass labels, or alpha=1.0 for soft targets only")
    T, valid, student, teacher, kernel = _prepare(student_logits, teacher_logits, T, labels, ignore_index,
                                                  None, reduction, backend)
    terms = []  # alpha in [0, 1], so at least one term has a weight above 0
    if alpha > 0.0:
        if kernel:
            soft = kernel(student, teacher, valid, T=T, divergence="forward")
        else:
            soft = _kl_rows(_log_probs(teacher, T), _log_probs(student, T))
        terms.append(alpha * (T * T if t_squared else 1.0) * soft)
    if alpha < 1.0:
        safe_labels = torch.where(valid, labels.long(), 0)  # gather takes int64 indices only
        # The kernel gets left-out rows as they are; here they must be zeroed, as _prepare does.
        student = _zero_left_out(student, valid) if kernel else student
        hard = -_log_probs(student, 1.0).gather(-1, safe_labels.unsqueeze(-1)).squeeze(-1)
        terms.append((1.0 - alpha) * hard)
    per_row = sum(terms)
    return reduce_rows(per_row, valid, reduction)


def topk_kl(
    student_logits: torch.Tensor,
    teacher_topk_logprobs: torch.Tensor,
    teacher_topk_indices: torch.Tensor,
    *,
    T: float = 1.0,
    labels: torch.Tensor | None = None,
    ignore_index: int = -100,
    reduction: str = "mean",
    backend: str | None = None,
) -> torch.Tensor:
    """Forward KL against a teacher known only by its cached top-k log-probabilities.

    An offline cache keeps, per row, the teacher's k largest log-probabilities at temperature T,
    a_j = log softmax(teacher_logits / T)_{i_j} (shape (..., k)), and their vocabulary indices
    i_1 .. i_k. Teacher and student are compared over k + 1 buckets, the k cached tokens and one
    tail bucket that holds the rest of the vocabulary:

        p_j = exp(a_j)                              p_tail = 1 - sum_j p_j
        q_j = softmax(student_logits / T)_{i_j}     q_tail = 1 - sum_j q_j = sum of q_v over the other v
        loss = sum_j p_j log(p_j / q_j) + p_tail log(p_tail / q_tail)

    a true KL divergence between two (k + 1)-bucket distributions, so never negative, equal to the
    full forward KL (kl_divergence) when the cache holds the whole vocabulary (k = V), and by the
    data processing inequality never above the full KL against the uncached teacher. The KL over
    the cached tokens alone, without the tail, is no divergence: it can go negative.

    Gradient, with respect to student logit z_v:
        (q_v - p_v) / T                      for a cached token v
        (q_v - p_tail * q_v / q_tail) / T    for every other token

    Numerics: no tail is rounded away. The teacher's is log(1 - exp(logsumexp_j a_j)), in log
    space (log1mexp), so a tail of 1e-10 behind a top token of log-probability -1e-10 is kept in
    fp32; it is 0 where the cached probabilities sum to 1 or, within rounding, more. The student's
    is the logsumexp of its log-probabilities outside the cache, not 1 minus a sum close to 1.
    Where the student has no tail at all (it masks every uncached token with -inf, or k = V), a
    teacher tail within the cache's rounding (see below) is that rounding and counts as 0; a
    larger one makes the divergence infinite, as it is. -inf cached log-probabilities are masked
    entries (p_j = 0, a term of 0). Rounding cannot make the result negative: it is clamped at 0.

    The cache is checked on the rows that count: indices integers in [0, V), distinct within a
    row; log-probabilities <= 0 whose probabilities sum to at most 1, both up to rounding (that of
    the cache's dtype, eps * (1 + log k), plus 1e-4 for log-probabilities computed as
    logits - logsumexp in fp32). Left-out rows (labels == ignore_index, labels of shape
    ``student_logits.shape[:-1]``) may hold padding; they add 0 and get a zero gradient. No T²
    factor. teacher_topk_logprobs gets a gradient too when it requires one.
    """
    T = check.check_temperature(T)
    check.check_choice("reduction", reduction, check.REDUCTIONS)
    check.check_logits("student_logits", student_logits)
    valid = check.valid_rows(student_logits, labels, ignore_index, None)
    log_p_topk, indices = check.checked_topk_cache(student_logits, teacher_topk_logprobs, teacher_topk_indices,
                                                   valid)
    if _use_triton(backend, student_logits):
        from kdlearn.kernels.topk_divergence import topk_divergence

        return reduce_rows(topk_divergence(student_logits, log_p_topk, indices, valid, T=T), valid, reduction)
    check.check_values("student_logits", student_logits)
    check.check_rows_have_mass("student_logits", student_logits, valid)
    log_q = _log_probs(_zero_left_out(student_logits, valid), T)
    log_q_topk = log_q.gather(-1, indices)
    log_q_tail = _logsumexp(log_q.scatter(-1, indices, -math.inf))
    return reduce_rows(_topk_kl_rows(log_p_topk, log_q_topk, log_q_tail), valid, reduction)


# --- the pieces the losses share -------------------------------------------------------------


def _prepare(student_logits, teacher_logits, T, labels, ignore_index, mask, reduction, backend):
    """Check every argument and pick the backend. Return T, the rows that count, the logits, and
    the kernel that computes per-row divergences (None for the plain PyTorch here).

    For PyTorch, left-out rows are zeroed; the kernel skips them, and looks for NaN, +inf and
    rows of only -inf as it reads."""
    check.check_pair(student_logits, teacher_logits)
    T = check.check_temperature(T)
    check.check_choice("reduction", reduction, check.REDUCTIONS)
    valid = check.valid_rows(student_logits, labels, ignore_index, mask)
    if _use_triton(backend, student_logits, teacher_logits.requires_grad and torch.is_grad_enabled()):
        from kdlearn.kernels.softmax_divergence import softmax_divergence

        return T, valid, student_logits, teacher_logits, softmax_divergence
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        check.check_values(name, logits)
        check.check_rows_have_mass(name, logits, valid)
    return T, valid, _zero_left_out(student_logits, valid), _zero_left_out(teacher_logits, valid), None


def _zero_left_out(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The logits with left-out rows set to 0, so that a left-out row of -inf (no distribution)
    cannot put a NaN into the gradient through 0 * NaN."""
    return torch.where(valid.unsqueeze(-1), logits, 0.0)


def _use_triton(backend, logits: torch.Tensor, teacher_needs_grad: bool = False) -> bool:
    """Whether a loss runs its Triton kernel: see ``backend`` in the module docstring."""
    check.check_choice("backend", backend, BACKENDS)
    if backend == "torch":
        return False
    from kdlearn import kernels

    if backend is None:  # CPU tensors first: this runs on every loss call of a training loop
        return logits.is_cuda and not teacher_needs_grad and kernels.unavailable_reason(logits.device) is None
    if reason := kernels.unavailable_reason(logits.device):
        raise ValueError(f"backend='triton' cannot run here: {reason}")
    if teacher_needs_grad:
        raise ValueError("backend='triton' computes no gradient for teacher_logits, which requires one; "
                         "pass teacher_logits.detach(), or backend='torch'")
    return True


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def _log_probs(logits: torch.Tensor, T: float) -> torch.Tensor:
    return torch.log_softmax(_at_least_fp32(logits) / T, dim=-1)


def _kl_rows(log_a: torch.Tensor, log_b: torch.Tensor) -> torch.Tensor:
    """sum_v a_v (log a_v - log b_v) per row, from log-probabilities.

    Where a_v is 0 (a -inf logit, or a probability that underflowed) the term is 0, and the
    torch.where keeps the gradient of that entry at 0 instead of 0 * inf = NaN."""
    a = log_a.exp()
    return (a * torch.where(a > 0, log_a - log_b, 0.0)).sum(-1)


def _log_mixture(log_p: torch.Tensor, log_q: torch.Tensor, beta: float) -> torch.Tensor:
    """log(beta * p + (1 - beta) * q) elementwise, in log space.

    Entries where both p and q are 0 are set aside before logaddexp, whose gradient at
    (-inf, -inf) is NaN, and put back as -inf afterwards."""
    neither = torch.isneginf(log_p) & torch.isneginf(log_q)
    a = (log_p + math.log(beta)).masked_fill(neither, 0.0)
    b = (log_q + math.log1p(-beta)).masked_fill(neither, 0.0)
    return torch.logaddexp(a, b).masked_fill(neither, -math.inf)


def _topk_kl_rows(log_p_topk: torch.Tensor, log_q_topk: torch.Tensor, log_q_tail: torch.Tensor) -> torch.Tensor:
    """topk_kl per row from the k cached log-probabilities of both sides (..., k) and the
    student's tail (...). Shared with the Triton kernel, which gets the student's side from its own
    pass over the logits and differentiates this (small) function for its gradient."""
    dtype = torch.promote_types(_at_least_fp32(log_p_topk).dtype, log_q_topk.dtype)
    log_p_tail = _log_rest(log_p_topk.to(dtype))
    rounding_only = torch.isneginf(log_q_tail) & (log_p_tail <= math.log(check.topk_cache_rounding(log_p_topk)))
    log_p_tail = log_p_tail.masked_fill(rounding_only, -math.inf)
    log_p = torch.cat([log_p_topk.to(dtype), log_p_tail.unsqueeze(-1)], dim=-1)
    log_q = torch.cat([log_q_topk.to(dtype), log_q_tail.to(dtype).unsqueeze(-1)], dim=-1)
    return _kl_rows(log_p, log_q).clamp(min=0.0)


def _log_rest(log_probs: torch.Tensor) -> torch.Tensor:
    """log(1 - sum_j exp(log_probs_j)) over the last dimension: the log of the mass the listed
    entries leave, -inf where they sum to 1 or (by rounding) more.

    log1mexp(x) = log(1 - exp(x)) is log(-expm1(x)) for x > -log 2 and log1p(-exp(x)) below
    (Maechler 2012), each accurate on its side. Each branch is fed only inputs at which its
    gradient is finite, because the branch torch.where leaves unused still passes 0 * inf = NaN back."""
    log_sum = _logsumexp(log_probs)
    full = log_sum >= 0.0
    x = log_sum.masked_fill(full, -1.0)  # a stand-in: log1mexp's gradient at 0 is infinite
    half = -math.log(2.0)
    rest = torch.where(x > half, torch.log(-torch.expm1(x.clamp(min=half))), torch.log1p(-torch.exp(x.clamp(max=half))))
    return rest.masked_fill(full, -math.inf)


def _logsumexp(x: torch.Tensor) -> torch.Tensor:
    """torch.logsumexp over the last dimension, with gradient 0 rather than NaN where every entry is -inf."""
    empty = torch.isneginf(x).all(dim=-1, keepdim=True)
    return torch.logsumexp(x.masked_fill(empty, 0.0), dim=-1).masked_fill(empty.squeeze(-1), -math.inf)


def reduce_rows(per_row: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """The reduction every loss shares (kernels included): see the module docstring."""
    per_row = torch.where(valid, per_row, 0.0)
    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1)
