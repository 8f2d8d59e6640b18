"""Fused Triton kernels for the soft-target losses, one operation per module.

    softmax_divergence   forward KL, reverse KL and generalized JSD from raw logits at temperature T
    topk_divergence      the KL against a teacher cached as its top-k log-probabilities (topk_kl)
    linear_divergence    the LM head fused with either of them, a chunk of tokens at a time
                         (fused_linear_kl): the N x V logits never exist
    _common              what the kernels share: the online logsumexp, launch settings

Users do not call these modules directly: kdlearn.kl_divergence, generalized_jsd and kd_loss
dispatch to them (``backend=None`` picks the kernel wherever it can run, ``"triton"`` insists,
``"torch"`` keeps the plain PyTorch specification in kdlearn.losses).

Where a kernel runs: on CUDA tensors, compiled; on CPU tensors only through Triton's interpreter.
When to switch the interpreter on (the rule kdlearn.environment.TRITON_INTERPRET_RULE states):
Triton reads TRITON_INTERPRET when @triton.jit defines a kernel; kdlearn defines its own kernels when
one is first called (importing kdlearn imports neither Triton nor a kernel), so set TRITON_INTERPRET=1
before you define a kernel or first call one of kdlearn's; setting it before importing kdlearn, at the
top of a notebook or script, is always early enough. (The modules that define kernels, _common,
softmax_divergence and topk_divergence, are imported inside that first call; linear_divergence, which
``import kdlearn`` does import, defines none and imports no Triton.)
"""

from __future__ import annotations

import importlib.util
import os
import sys

import torch


def interpreted() -> bool:
    """Whether the kernels run (or, once imported, will run) through Triton's interpreter."""
    common = sys.modules.get("kdlearn.kernels._common")
    if common is not None:
        return common.INTERPRETED
    return os.environ.get("TRITON_INTERPRET") == "1"


def unavailable_reason(device: torch.device) -> str | None:
    """None when kdlearn's Triton kernels can run on tensors on ``device``; otherwise why not."""
    if importlib.util.find_spec("triton") is None:
        return "Triton is not installed (it ships for Linux only)"
    if device.type == "cuda":
        return None
    if device.type == "cpu":
        if interpreted():
            return None
        return ("Triton kernels run on CPU tensors only through its interpreter: set TRITON_INTERPRET=1 "
                "before kdlearn's kernels are first called (setting it before importing kdlearn is always early enough)")
    return f"Triton kernels run on CUDA tensors (or CPU tensors under TRITON_INTERPRET=1), got device {device}"
