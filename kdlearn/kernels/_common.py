"""What kdlearn's Triton kernels share: the online logsumexp, the scan for bad values, launch
settings, and the handling of the interpreter.

Triton reads TRITON_INTERPRET when @triton.jit defines a kernel; kdlearn defines its own kernels when
one is first called (importing kdlearn imports neither Triton nor a kernel), so set TRITON_INTERPRET=1
before you define a kernel or first call one of kdlearn's; setting it before importing kdlearn, at the
top of a notebook or script, is always early enough. This module is imported inside that first call,
just before the kernel modules, and its INTERPRETED records the mode their kernels were defined in.
"""

from __future__ import annotations

import contextlib

import numpy
import torch
import triton
import triton.language as tl

# triton.jit reads TRITON_INTERPRET when it decorates a kernel, which happens when the kernel
# modules are imported, right after this one.
INTERPRETED = bool(triton.knobs.runtime.interpret)

# Columns a program holds at once. Larger blocks mean fewer loop iterations but more registers;
# rows longer than this are streamed block by block.
MAX_BLOCK_V = 4096
NUM_WARPS = 8

# What a kernel can find wrong with a row, one bit each of a per-row int32; the specification's
# checks then find the row again and word the error. (Globals a kernel reads must be tl.constexpr.)
STUDENT_NAN, STUDENT_POSINF = tl.constexpr(1), tl.constexpr(2)
TEACHER_NAN, TEACHER_POSINF = tl.constexpr(4), tl.constexpr(8)
STUDENT_EMPTY, TEACHER_EMPTY = tl.constexpr(16), tl.constexpr(32)


@triton.jit
def online_logsumexp(x, running_max, running_sum):
    """Fold a block x into a running max and a running sum of exp(x - running_max)."""
    new_max = tl.maximum(running_max, tl.max(x, axis=0))
    # While every value seen is -inf, shift by 0 rather than by -inf: exp(-inf - 0) = 0, not NaN.
    shift = tl.where(new_max == float("-inf"), 0.0, new_max)
    running_sum = running_sum * tl.exp(running_max - shift) + tl.sum(tl.exp(x - shift), axis=0)
    return new_max, running_sum


@triton.jit
def bad_value_flags(x, NAN_FLAG: tl.constexpr, POSINF_FLAG: tl.constexpr):
    has_nan = tl.max((x != x).to(tl.int32), axis=0)
    has_posinf = tl.max((x == float("inf")).to(tl.int32), axis=0)
    return has_nan * NAN_FLAG | has_posinf * POSINF_FLAG


def launch_settings(V: int, compute: torch.dtype) -> dict:
    """The constexpr and launch arguments every kernel here takes, for rows of V columns."""
    return dict(COMPUTE=tl.float64 if compute == torch.float64 else tl.float32,
                BLOCK_V=min(triton.next_power_of_2(V), MAX_BLOCK_V), num_warps=NUM_WARPS)


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32 arithmetic for fp32, bf16 and fp16 inputs; fp64 when any input is fp64."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def as_rows(logits: torch.Tensor) -> torch.Tensor:
    """(..., V) as (N, V) with unit column stride: a view wherever one exists."""
    if logits.stride(-1) != 1:
        logits = logits.contiguous()
    try:
        return logits.view(-1, logits.shape[-1])
    except RuntimeError:  # leading dimensions that no single row stride describes
        return logits.reshape(-1, logits.shape[-1])


def quiet_interpreter():
    """The interpreter evaluates both sides of every tl.where with NumPy, which warns about the
    -inf - -inf and log(0) in the side that is then thrown away, and about a gradient that exceeds
    fp16 (stored as inf, as torch does); compiled kernels do not warn."""
    if not INTERPRETED:
        return contextlib.nullcontext()
    return numpy.errstate(invalid="ignore", divide="ignore", over="ignore")
