"""Lesson 05's checks, beyond what tests/test_exercises.py proves for every lesson.

Its exercises are @triton.jit device functions, checked by running them inside small kernels. Here:
the common mistakes get the hint that names them; an error inside a kernel reaches the learner
unwrapped; kdlearn's reference answers (the fallbacks) pass; a function compiled for a GPU is
recognised, its stub as "not attempted yet"; and every kernel of the lesson, and every harness of
its checks, compiles for an H100 (the notebook runs them only through the interpreter in CI).
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pytest
import torch
import triton
import triton.language as tl

from kdlearn.exercises import CORRECT, NOT_ATTEMPTED, lesson05
from tests.wrong_answers import assert_caught, wrong

ROOT = Path(__file__).parents[1]
REFERENCE = ROOT / "solutions" / "05_write_the_kernel.ipynb"
EXERCISES = ("softmax_row", "online_update", "kl_terms", "kl_gradient")


# --- wrong answers -------------------------------------------------------------------------------


@triton.jit
def softmax_ignores_T(x, inv_T):
    z = x - tl.max(x, axis=0)
    return tl.exp(z) / tl.sum(tl.exp(z), axis=0)


@triton.jit
def softmax_times_T(x, inv_T):
    z = x / inv_T
    z = z - tl.max(z, axis=0)
    return tl.exp(z) / tl.sum(tl.exp(z), axis=0)


@triton.jit
def softmax_without_max(x, inv_T):
    e = tl.exp(x * inv_T)
    return e / tl.sum(e, axis=0)


@triton.jit
def softmax_unnormalised(x, inv_T):
    z = x * inv_T
    return tl.exp(z - tl.max(z, axis=0))


@triton.jit
def update_without_rescale(m, s, z):
    new_m = tl.maximum(m, tl.max(z, axis=0))
    return new_m, s + tl.sum(tl.exp(z - new_m), axis=0)


@triton.jit
def update_rescaled_backwards(m, s, z):
    new_m = tl.maximum(m, tl.max(z, axis=0))
    return new_m, s * tl.exp(new_m - m) + tl.sum(tl.exp(z - new_m), axis=0)


@triton.jit
def update_against_block_max(m, s, z):
    block_max = tl.max(z, axis=0)
    new_m = tl.maximum(m, block_max)
    return new_m, s * tl.exp(m - new_m) + tl.sum(tl.exp(z - block_max), axis=0)


@triton.jit
def update_nan_on_masked_block(m, s, z):
    new_m = tl.maximum(m, tl.max(z, axis=0))
    return new_m, s * tl.exp(m - new_m) + tl.sum(tl.exp(z - new_m), axis=0)


@triton.jit
def update_returns_sum_first(m, s, z):
    new_m = tl.maximum(m, tl.max(z, axis=0))
    shift = tl.where(new_m == float("-inf"), 0.0, new_m)
    return s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift), axis=0), new_m


@triton.jit
def update_without_block_max(m, s, z):
    return tl.maximum(m, z), s


@triton.jit
def update_returns_one_value(m, s, z):
    return tl.maximum(m, tl.max(z, axis=0))


@triton.jit
def update_returns_nothing(m, s, z):
    new_m = tl.maximum(m, tl.max(z, axis=0))  # noqa: F841 (the missing return is the mistake)


@triton.jit
def update_with_a_typo(m, s, z):
    return m + "1", s


def update_without_jit(m, s, z):
    return m, s


@triton.jit
def terms_without_where(log_p, log_q):
    return tl.exp(log_p) * (log_p - log_q)


@triton.jit
def terms_reverse_kl(log_p, log_q):
    q = tl.exp(log_q)
    return tl.where(q > 0, q * (log_q - log_p), 0.0)


@triton.jit
def terms_sign_flipped(log_p, log_q):
    p = tl.exp(log_p)
    return tl.where(p > 0, p * (log_q - log_p), 0.0)


@triton.jit
def terms_without_p(log_p, log_q):
    return log_p - log_q


@triton.jit
def terms_summed(log_p, log_q):
    p = tl.exp(log_p)
    return tl.sum(tl.where(p > 0, p * (log_p - log_q), 0.0), axis=0)


@triton.jit
def gradient_p_minus_q(q, p, inv_T):
    return (p - q) * inv_T


@triton.jit
def gradient_without_T(q, p, inv_T):
    return q - p


@triton.jit
def gradient_times_T(q, p, inv_T):
    return (q - p) / inv_T


@triton.jit
def gradient_over_T_squared(q, p, inv_T):
    return (q - p) * inv_T * inv_T



WRONG_ANSWERS = [
    wrong(lesson05.softmax_row, softmax_ignores_T, "temperature seems unused"),
    wrong(lesson05.softmax_row, softmax_times_T, "multiplying by T sharpens"),
    wrong(lesson05.softmax_row, softmax_without_max, "NaN or inf", detail="large logits [1000, 999, 0]"),
    wrong(lesson05.softmax_row, softmax_unnormalised, "Divide by the sum"),
    wrong(lesson05.online_update, update_without_rescale, "multiply it by exp(m - new_m)",
          detail="block whose maximum is larger than m"),
    wrong(lesson05.online_update, update_rescaled_backwards, "the wrong way round"),
    wrong(lesson05.online_update, update_against_block_max, "not against the block's own maximum"),
    wrong(lesson05.online_update, update_nan_on_masked_block, "exp(-inf - -inf)",
          detail="m = -inf, s = 0 and a block that is entirely -inf"),
    wrong(lesson05.online_update, update_returns_sum_first, "Return the maximum first"),
    wrong(lesson05.online_update, update_without_block_max, "tl.max(z, axis=0)", detail="differs from entry to entry"),
    wrong(lesson05.online_update, update_returns_one_value, "Return two values", detail="could not unpack"),
    wrong(lesson05.online_update, update_returns_nothing, "`return`", detail="returned None"),
    wrong(lesson05.online_update, update_with_a_typo, lesson05.online_update.hint, detail="Your function raised"),
    wrong(lesson05.online_update, update_without_jit, "@triton.jit", detail="plain Python function"),
    wrong(lesson05.kl_terms, terms_without_where, "tl.where(p > 0", detail="past the row's end"),
    wrong(lesson05.kl_terms, terms_reverse_kl, "KL(q || p)"),
    wrong(lesson05.kl_terms, terms_sign_flipped, "sign is flipped"),
    wrong(lesson05.kl_terms, terms_without_p, "Weigh each log-ratio"),
    wrong(lesson05.kl_terms, terms_summed, "not their sum"),
    wrong(lesson05.kl_gradient, gradient_p_minus_q, "sign is flipped"),
    wrong(lesson05.kl_gradient, gradient_without_T, "factor 1/T is missing"),
    wrong(lesson05.kl_gradient, gradient_times_T, "gradient of T² · KL"),
    wrong(lesson05.kl_gradient, gradient_over_T_squared, "One factor inv_T only"),
]


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_wrong_answer_gets_its_hint(exercise, answer, hint, detail):
    """A common mistake is reported as 'not yet' with the hint that names it, never as a traceback."""
    assert_caught(exercise, answer, hint, detail)



@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_passing_or_falls_back_for_a_wrong_answer(exercise, answer, hint, detail, capsys):
    """A wrong device function never reaches the lesson's kernels."""
    fallback = lesson05.reference(exercise_name(exercise))
    assert exercise.passing_or(answer, fallback, "kdlearn's version") is fallback
    assert "kdlearn's version" in capsys.readouterr().out


def exercise_name(exercise) -> str:
    return next(name for name in EXERCISES if getattr(lesson05, name) is exercise)


def test_an_error_inside_the_kernel_reaches_the_learner_unwrapped():
    """The interpreter wraps an exception once per call level; the verdict names the learner's own."""
    verdict = lesson05.online_update.evaluate(update_with_a_typo)
    assert verdict.detail.startswith("Your function raised AttributeError:"), str(verdict)


# --- kdlearn's answers, the fallbacks --------------------------------------------------------------


@pytest.mark.parametrize("name", EXERCISES)
def test_reference_passes_its_check(name):
    """The fallback the lesson's kernels use until the learner's function passes is itself right."""
    assert getattr(lesson05, name).evaluate(lesson05.reference(name)).status == CORRECT


def test_reference_of_an_unknown_exercise_is_a_value_error():
    with pytest.raises(ValueError, match="name must be one of"):
        lesson05.reference("softmax")


# --- a function compiled for a GPU (no interpreter) ----------------------------------------------

COMPILED_ANSWERS = '''
import triton
import triton.language as tl


@triton.jit
def online_update(m, s, z):
    new_m = tl.maximum(m, tl.max(z, axis=0))
    shift = tl.where(new_m == float("-inf"), 0.0, new_m)
    return new_m, s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift), axis=0)


@triton.jit
def stub(m, s, z):
    raise NotImplementedError("exercise not attempted yet: replace this line with your code")
'''

JUDGE_COMPILED = """
import json
import answers
from kdlearn.exercises import lesson05
print(json.dumps([type(answers.online_update).__name__] +
                 [str(lesson05.online_update.evaluate(f)) for f in (answers.stub, answers.online_update)]))
"""


def without_interpreter() -> dict:
    return {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}


@pytest.mark.skipif(torch.cuda.is_available(), reason="on a GPU a compiled function is checked on the GPU")
def test_a_compiled_function_is_recognised_without_a_gpu(tmp_path):
    """Where triton.jit compiles (no interpreter), the stub still reads 'not attempted yet' (a compiler
    cannot compile its `raise`), and a finished function without a GPU gets the way out."""
    (tmp_path / "answers.py").write_text(COMPILED_ANSWERS)
    env = without_interpreter() | {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run([sys.executable, "-c", JUDGE_COMPILED], env=env, cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    kind, stub, finished = json.loads(result.stdout.strip().splitlines()[-1])
    assert kind == "JITFunction"
    assert stub.split("\n")[0] == f"Exercise 5.2 ({lesson05.online_update.title}): {NOT_ATTEMPTED}", stub
    assert "compiled for a GPU, and this machine has none" in finished, finished
    assert "TRITON_INTERPRET=1" in finished


# --- every kernel compiles for an H100 -----------------------------------------------------------


def notebook_device_code() -> str:
    """The @triton.jit functions of the reference lesson, solutions included, as one module."""
    functions = []
    for cell in nbformat.read(REFERENCE, as_version=4).cells:
        if cell.cell_type != "code" or "@triton.jit" not in cell.source:
            continue
        for node in ast.parse(cell.source).body:
            if isinstance(node, ast.FunctionDef) and any(ast.unparse(d) == "triton.jit" for d in node.decorator_list):
                functions.append(ast.unparse(node))
    return "import triton\nimport triton.language as tl\n\n\n" + "\n\n\n".join(functions) + "\n"


COMPILE = textwrap.dedent("""
    import json, sys
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from triton.runtime.jit import JITFunction

    import lesson
    from kdlearn.exercises import lesson05

    EXERCISES = ("softmax_row", "online_update", "kl_terms", "kl_gradient")
    LOGITS = ("logits_ptr", "student_ptr", "teacher_ptr", "grad_ptr")

    def compile_for_h100(fn, element, block):
        signature, constexprs = {}, {}
        for arg in fn.arg_names:
            if arg in EXERCISES:
                constexprs[arg] = getattr(lesson, arg)        # the lesson's own solution
            elif arg == "BLOCK":
                constexprs[arg] = block
            elif arg.endswith("_ptr"):
                signature[arg] = "*" + (element if arg in LOGITS else "fp32")
            else:
                signature[arg] = {"V": "i32", "inv_T": "fp32"}[arg]
        signature.update({arg: "constexpr" for arg in constexprs})
        compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], "no machine code came out"

    kernels = [name for name in vars(lesson) if name.endswith("_kernel")]
    for name in kernels:
        for element in ("fp32", "bf16"):
            compile_for_h100(getattr(lesson, name), element, 4096)
    harnesses = [name for name in vars(lesson05) if name.endswith("_harness")]
    for name in harnesses:
        compile_for_h100(JITFunction(getattr(lesson05, name)), "fp32", 16)
    print(json.dumps([kernels, harnesses]))
""")


def test_the_lesson_kernels_and_the_check_harnesses_compile_for_sm90(tmp_path):
    """The interpreter forgives what the compiler does not; a learner with a GPU runs these compiled."""
    (tmp_path / "lesson.py").write_text(notebook_device_code())
    env = without_interpreter() | {"PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)])}
    result = subprocess.run([sys.executable, "-c", COMPILE], env=env, cwd=tmp_path, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    kernels, harnesses = json.loads(result.stdout.strip().splitlines()[-1])
    assert len(kernels) >= 5 and len(harnesses) == 4, (kernels, harnesses)
