"""Every Triton kernel compiles for an H100 (sm_90), on a machine without a GPU.

The interpreter runs a kernel as NumPy and forgives what the compiler does not (a global that is
not tl.constexpr, a loop variable that changes type). triton.compile with an explicit target
runs the whole compiler, down to ptxas, which ships with Triton's Linux wheels, so CI catches
those errors without a GPU. It runs in a subprocess because this test session has the
interpreter switched on, and triton.jit reads that setting when a kernel module is imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

# kernel -> (argument types by name, the constexpr variants to compile). "{x}" is the input
# element type, "{c}" the compute type (fp64 for fp64 inputs, else fp32).
ELEMENTS = ("fp32", "bf16", "fp16", "fp64")
SOFTMAX_DIVERGENCE_COMMON = dict(student_ptr="*{x}", student_row_stride="i64", teacher_ptr="*{x}",
                                 teacher_row_stride="i64", counted_ptr="*i8", V="i32", temperature_ptr="*{c}",
                                 beta="fp32", log_beta="fp32", log_one_minus_beta="fp32")
SOFTMAX_DIVERGENCE_VARIANTS = [dict(x=x, DIVERGENCE=d, BLOCK_V=4096) for x in ELEMENTS for d in (0, 1, 2)]
TOPK_VARIANTS = [dict(x=x, BLOCK_V=4096) for x in ELEMENTS]
KERNELS = {
    "kdlearn.kernels.softmax_divergence._forward_kernel": (dict(
        SOFTMAX_DIVERGENCE_COMMON, loss_ptr="*{c}", stats_ptr="*{c}", flags_ptr="*i32"), SOFTMAX_DIVERGENCE_VARIANTS),
    "kdlearn.kernels.softmax_divergence._backward_kernel": (dict(
        SOFTMAX_DIVERGENCE_COMMON, stats_ptr="*{c}", upstream_ptr="*{c}", grad_ptr="*{x}", grad_row_stride="i64"),
        SOFTMAX_DIVERGENCE_VARIANTS),
    "kdlearn.kernels.topk_divergence._tail_logsumexp_kernel": (dict(
        student_ptr="*{x}", student_row_stride="i64", cached_bits_ptr="*i32", bits_row_stride="i64",
        stats_ptr="*{c}", flags_ptr="*i32", V="i32", temperature_ptr="*{c}"), TOPK_VARIANTS),
    "kdlearn.kernels.topk_divergence._tail_gradient_kernel": (dict(
        student_ptr="*{x}", student_row_stride="i64", stats_ptr="*{c}", scale_ptr="*{c}", grad_ptr="*{x}",
        grad_row_stride="i64", V="i32", temperature_ptr="*{c}"), TOPK_VARIANTS),
}

COMPILE = textwrap.dedent("""
    import importlib, json, sys
    import triton, triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    name, types, variants = json.loads(sys.argv[1])
    module, kernel = name.rsplit(".", 1)
    fn = getattr(importlib.import_module(module), kernel)
    for variant in variants:
        element = variant.pop("x")
        compute = "fp64" if element == "fp64" else "fp32"
        constexprs = dict(variant, COMPUTE=tl.float64 if compute == "fp64" else tl.float32)
        signature = {arg: types[arg].format(x=element, c=compute) if arg in types else "constexpr"
                     for arg in fn.arg_names}
        positions = {(fn.arg_names.index(arg),): value for arg, value in constexprs.items()}
        compiled = triton.compile(ASTSource(fn, signature, constexprs=positions),
                                  target=GPUTarget("cuda", 90, 32), options=dict(num_warps=8))
        assert compiled.asm["cubin"], "no machine code came out"
        print(element, variant, "compiled")
""")


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_kernel_compiles_for_sm90(kernel):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    types, variants = KERNELS[kernel]
    result = subprocess.run([sys.executable, "-c", COMPILE, json.dumps([kernel, types, variants])],
                            env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"{kernel} does not compile:\n{result.stdout}{result.stderr[-3000:]}"
    assert result.stdout.count("compiled") == len(variants)
