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
    kernel = _triton_kernel(backend, student_logits, teacher_logits)
    if kernel:
        return T, valid, student_logits, teacher_logits, kernel
    for name, logits in (("student_logits", student_logits), ("teacher_logits", teacher_logits)):
        check.check_values(name, logits)
        check.check_rows_have_mass(name, logits, valid)
    return T, valid, _zero_left_out(student_logits, valid), _zero_left_out(teacher_logits, valid), None


def _zero_left_out(logits: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The logits with left-out rows set to 0, so that a left-out row of -inf (no distribution)
    cannot put a NaN into the gradient through 0 * NaN."""
    return torch.where(valid.unsqueeze(-1), logits, 0.0)


def _triton_kernel(backend, student_logits, teacher_logits):
    """kdlearn.kernels' per-row divergence when the backend says so and it can run, else None."""
    check.check_choice("backend", backend, BACKENDS)
    if backend == "torch":
        return None
    from kdlearn import kernels

    reason = kernels.unavailable_reason(student_logits.device)
    teacher_grad = teacher_logits.requires_grad and torch.is_grad_enabled()
    if backend is None and (reason or teacher_grad or not student_logits.is_cuda):
        return None
    if reason:
        raise ValueError(f"backend='triton' cannot run here: {reason}")
    if teacher_grad:
        raise ValueError("backend='triton' computes no gradient for teacher_logits, which requires one; "
                         "pass teacher_logits.detach(), or backend='torch'")
    from kdlearn.kernels.softmax_divergence import softmax_divergence

    return softmax_divergence


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


def reduce_rows(per_row: torch.Tensor, valid: torch.Tensor, reduction: str) -> torch.Tensor:
    """The reduction every loss shares (kernels included): see the module docstring."""
    per_row = torch.where(valid, per_row, 0.0)
    if reduction == "none":
        return per_row
    total = per_row.sum()
    if reduction == "sum":
        return total
    return total / valid.sum().clamp(min=1)
