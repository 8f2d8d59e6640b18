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


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of dtype {x.dtype}"
    return type(x).__name__
