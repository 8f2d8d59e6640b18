"""Argument checks shared by the losses (and, later, the kernels that must match them).

Every failure is a ValueError that names the argument and says what was wrong, so that a
learner or a practitioner reads the fix in the message instead of a traceback deep in torch.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import torch

REDUCTIONS = ("none", "sum", "mean")
DIRECTIONS = ("forward", "reverse")


def check_logits(name: str, logits) -> None:
    """A floating-point tensor of shape (..., V), V >= 1. Its values: check_values."""
    if not isinstance(logits, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor (logits), got dtype {logits.dtype}; "
            f"convert it with {name}.float()"
        )
    if logits.dim() == 0 or logits.shape[-1] == 0:
        raise ValueError(f"{name} must have shape (..., V) with V >= 1, got {tuple(logits.shape)}")


def check_values(name: str, logits: torch.Tensor) -> None:
    """No NaN and no +inf (-inf masks a vocabulary entry).

    A separate pass over every value: the Triton kernels skip it and look for NaN and +inf
    while they read the logits anyway, calling this only to word the error."""
    if torch.isnan(logits).any():
        raise ValueError(f"{name} contains NaN")
    if torch.isposinf(logits).any():
        raise ValueError(f"{name} contains +inf; mask vocabulary entries with -inf, not +inf")


def check_pair(student_logits, teacher_logits) -> None:
    """Both logits tensors of floats, with the same leading shape, vocabulary and device."""
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    s, t = tuple(student_logits.shape), tuple(teacher_logits.shape)
    if s[:-1] != t[:-1]:
        raise ValueError(
            f"student_logits and teacher_logits must have the same leading shape, "
            f"got student_logits {s} and teacher_logits {t}"
        )
    if s[-1] != t[-1]:
        raise ValueError(
            f"student_logits and teacher_logits must have the same vocabulary size V (last dimension), "
            f"got {s[-1]} and {t[-1]} (shapes {s} and {t}); if one model pads its embedding table, "
            f"slice both to the shared tokenizer's size"
        )
    if student_logits.device != teacher_logits.device:
        raise ValueError(
            f"student_logits and teacher_logits must be on the same device, "
            f"got {student_logits.device} and {teacher_logits.device}"
        )


def check_temperature(T) -> float:
    if isinstance(T, bool) or not isinstance(T, Real) or not math.isfinite(T) or T <= 0:
        raise ValueError(f"T (temperature) must be a finite number > 0, got {T!r}")
    return float(T)


def check_unit_interval(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def check_positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return value


def check_choice(name: str, value, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {value!r}")


def valid_rows(logits: torch.Tensor, labels, ignore_index: int, mask) -> torch.Tensor:
    """The boolean (...) tensor of positions that count: not ignored by labels, not masked out."""
    rows = tuple(logits.shape[:-1])
    valid = torch.ones(rows, dtype=torch.bool, device=logits.device)
    if isinstance(ignore_index, bool) or not isinstance(ignore_index, Integral):
        raise ValueError(f"ignore_index must be an integer, got {ignore_index!r}")
    if labels is not None:
        if not isinstance(labels, torch.Tensor) or labels.is_floating_point() or labels.is_complex() \
                or labels.dtype == torch.bool:
            raise ValueError(f"labels must be an integer tensor of class indices, got {_describe(labels)}")
        if tuple(labels.shape) != rows:
            raise ValueError(
                f"labels must have the logits' leading shape {rows}, got {tuple(labels.shape)} "
                f"(logits {tuple(logits.shape)})"
            )
        if labels.device != logits.device:
            raise ValueError(f"labels must be on the logits' device {logits.device}, got {labels.device}")
        # Compare in int64: in a narrower dtype, ignore_index would wrap (-100 is 156 in uint8)
        # and silently leave out a row that counts.
        labels = labels.long()
        valid = labels != ignore_index
        vocab = logits.shape[-1]
        out_of_range = valid & ((labels < 0) | (labels >= vocab))
        if out_of_range.any():
            bad = labels[out_of_range][0].item()
            raise ValueError(
                f"labels must be class indices in [0, {vocab}) or ignore_index={ignore_index}, found {bad}"
            )
    if mask is not None:
        if not isinstance(mask, torch.Tensor) or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a boolean tensor (True = position counts), got {_describe(mask)}")
        if tuple(mask.shape) != rows:
            raise ValueError(
                f"mask must have the logits' leading shape {rows}, got {tuple(mask.shape)} "
                f"(logits {tuple(logits.shape)})"
            )
        if mask.device != logits.device:
            raise ValueError(f"mask must be on the logits' device {logits.device}, got {mask.device}")
        valid = valid & mask
    return valid


def check_rows_have_mass(name: str, logits: torch.Tensor, valid: torch.Tensor) -> None:
    """A counted row whose every logit is -inf is no distribution: ask the user to mask it."""
    empty = valid & torch.isneginf(logits).all(dim=-1)
    if empty.any():
        where = tuple(int(i) for i in empty.nonzero()[0].tolist())
        raise ValueError(
            f"{name} has a row whose every logit is -inf (at position {where}), which is no distribution; "
            f"leave such rows out with labels=ignore_index or mask=False"
        )


def topk_cache_rounding(log_p_topk: torch.Tensor) -> float:
    """How far above 1 the probabilities of a correct cache may sum by rounding alone: its dtype's
    in each of the k entries (exp(a_j) off by about eps |a_j|, so the sum by about
    eps * sum_j p_j |a_j| <= eps * (1 + log k)), and 1e-4 for logits - logsumexp computed in fp32."""
    return 1e-4 + torch.finfo(log_p_topk.dtype).eps * (1.0 + math.log(log_p_topk.shape[-1]))


def checked_topk_cache(student_logits, logprobs, indices, valid):
    """Check a top-k cache against the student logits, on the rows that count; return its
    log-probabilities and int64 indices with left-out rows made harmless (-inf, 0..k-1)."""
    for name, x in (("teacher_topk_logprobs", logprobs), ("teacher_topk_indices", indices)):
        if not isinstance(x, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.device != student_logits.device:
            raise ValueError(f"{name} must be on student_logits' device {student_logits.device}, got {x.device}")
    if not logprobs.is_floating_point():
        raise ValueError(f"teacher_topk_logprobs must be a floating-point tensor (log-probabilities), "
                         f"got dtype {logprobs.dtype}")
    if indices.is_floating_point() or indices.is_complex() or indices.dtype == torch.bool:
        raise ValueError(f"teacher_topk_indices must be an integer tensor of vocabulary indices, "
                         f"got dtype {indices.dtype}")
    rows, V = tuple(student_logits.shape[:-1]), student_logits.shape[-1]
    if logprobs.dim() == 0 or tuple(logprobs.shape[:-1]) != rows or logprobs.shape[-1] == 0:
        raise ValueError(f"teacher_topk_logprobs must have shape (*leading, k) with student_logits' leading "
                         f"shape {rows} and k >= 1, got {tuple(logprobs.shape)} (student_logits "
                         f"{tuple(student_logits.shape)})")
    if indices.shape != logprobs.shape:
        raise ValueError(f"teacher_topk_indices must have teacher_topk_logprobs' shape {tuple(logprobs.shape)}, "
                         f"got {tuple(indices.shape)}")
    k = logprobs.shape[-1]
    if k > V:
        raise ValueError(f"teacher_topk_logprobs holds k = {k} entries per row, more than the vocabulary "
                         f"V = {V} of student_logits")
    keep = valid.unsqueeze(-1)
    indices, values = indices.long(), logprobs.detach()
    out_of_range = keep & ((indices < 0) | (indices >= V))
    if out_of_range.any():
        raise ValueError(f"teacher_topk_indices must be vocabulary indices in [0, {V}), "
                         f"found {indices[out_of_range][0].item()}")
    if (keep & (indices.sort(dim=-1).values.diff(dim=-1) == 0).any(dim=-1, keepdim=True)).any():
        raise ValueError("teacher_topk_indices repeats an index within a row; each cached token must appear once")
    if (keep & torch.isnan(values)).any():
        raise ValueError("teacher_topk_logprobs contains NaN")
    slack = math.log1p(topk_cache_rounding(logprobs))
    if (keep & (values > slack)).any():
        raise ValueError(f"teacher_topk_logprobs must be log-probabilities (<= 0), found "
                         f"{values[keep & (values > slack)][0].item()}; pass the top k of "
                         f"log_softmax(teacher_logits / T), not logits or probabilities")
    summed = values.float() if values.dtype in (torch.float16, torch.bfloat16) else values  # in fp32 at least
    log_sum = torch.logsumexp(summed.masked_fill(~keep, -math.inf), dim=-1)
    if (log_sum > slack).any():
        raise ValueError(f"teacher_topk_logprobs' probabilities sum to more than 1 in a row "
                         f"({log_sum.max().exp().item():.6g}); they must be log_softmax values of one "
                         f"distribution, computed in fp32 or better")
    arange = torch.arange(k, device=indices.device).expand_as(indices)
    return logprobs.masked_fill(~keep, -math.inf), torch.where(keep, indices, arange)


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of dtype {x.dtype}"
    return type(x).__name__
