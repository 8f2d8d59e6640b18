"""Lesson 05's checks, beyond what tests/test_exercises.py proves for every lesson.

Its exercises are @triton.jit functions: four device functions, checked by running them inside small
kernels, and one whole kernel, checked by launching it on rows with guard regions around them. Here:
the common mistakes get the hint that names them (for the kernel: a missing mask, a fill value of 0,
an off-by-one in either loop or in the mask, a wrong row stride, ...); general hints lead without
handing over the answer; an error inside a kernel reaches the learner unwrapped; kdlearn's reference
answers (the fallbacks) pass; a function compiled for a GPU is recognised, its stub as "not attempted
yet"; the counter the lesson measures its kernels with (KernelWork) counts what it says, interpreted
or compiled; and every kernel of the lesson, and every harness of its checks, compiles for an H100
(the notebook runs them only through the interpreter in CI).
"""

from __future__ import annotations

import ast
import inspect
import json
import linecache
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
EXERCISES = ("softmax_row", "online_update", "kl_terms", "kl_gradient", "kl_kernel")


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



# Wrong kernels for exercise 5.5: kdlearn's kernel with one mistake each, written into its source.
REFERENCE_KERNEL = textwrap.dedent(inspect.getsource(lesson05._kl_kernel)).replace("def _kl_kernel(", "def kl_kernel(")
PASS_1 = '    m_p, s_p = float("-inf"), 0.0\n    for start in range(0, V, BLOCK):'
PASS_2 = '    total = tl.zeros([BLOCK], dtype=tl.float32)\n    for start in range(0, V, BLOCK):'
LOAD_Q = 'log_q = tl.load(student_row + cols, mask=inside, other=float("-inf"))'
LOAD_P = 'log_p = tl.load(teacher_row + cols, mask=inside, other=float("-inf"))'
STORE_GRADIENT = "tl.store(grad_ptr + row * V + cols, gradient.to(grad_ptr.dtype.element_ty), mask=inside)"


def mutant(name: str, *replacements: tuple[str, str]):
    """kdlearn's kernel with each (old, new) replacement made, jitted as the lesson would jit it."""
    source = REFERENCE_KERNEL.replace("def kl_kernel(", f"def {name}(")
    for old, new in replacements:
        assert old in source, old
        source = source.replace(old, new)
    filename = f"<wrong kernel {name}>"
    # Triton reads a kernel's source through inspect, which finds it in linecache.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace = {"tl": tl, "triton": triton}
    exec(compile(source, filename, "exec"), namespace)
    return triton.jit(namespace[name])


def kernel_without_jit(student_ptr, student_stride, teacher_ptr, teacher_stride, loss_ptr, grad_ptr, V, inv_T,
                       BLOCK, online_update, kl_terms, kl_gradient):
    pass


WRONG_KERNELS = [
    ("loads_past_the_end", [(LOAD_Q, "log_q = tl.load(student_row + cols)"),
                            (LOAD_P, "log_p = tl.load(teacher_row + cols)")],
     "read past the row's end, into the next row", "4 rows of 37 logits"),
    ("pass_1_loads_past_the_end", [('a = tl.load(student_row + cols, mask=inside, other=float("-inf"))',
                                    "a = tl.load(student_row + cols)")],
     "reads past the end of a row (what lies beyond is NaN here)", "4 rows of 37 logits"),
    ("fill_value_zero", [(', other=float("-inf"))', ")")], "fill value `other`", "4 rows of 37 logits"),
    ("fill_value_zero_in_pass_1", [('mask=inside, other=float("-inf")).to(tl.float32) * inv_T\n',
                                    "mask=inside).to(tl.float32) * inv_T\n")], "fill value `other`", ""),
    ("store_without_mask", [(STORE_GRADIENT, STORE_GRADIENT.replace(", mask=inside", ""))],
     "a store there writes whatever lies beyond", "wrote past the end of the gradient"),
    ("mask_one_too_far", [("inside = cols < V", "inside = cols <= V")], "one entry past the end of the last row",
     "wrote past the end of the gradient: 1 entry after"),
    ("pass_2_stops_a_block_early", [(PASS_2, PASS_2.replace("range(0, V, BLOCK)", "range(0, V - BLOCK, BLOCK)"))],
     "Pass 2 stops before the row's end", "(columns 48 to 63)"),
    ("pass_2_skips_the_partial_block", [(PASS_2, PASS_2.replace("range(0, V, BLOCK)",
                                                                "range(0, V // BLOCK * BLOCK, BLOCK)"))],
     "Pass 2 stops before the row's end", "(columns 32 to 36)"),
    ("pass_1_stops_a_block_early", [(PASS_1, PASS_1.replace("range(0, V, BLOCK)", "range(0, V - BLOCK, BLOCK)"))],
     "Pass 1 stops one block before the row's end", "3 rows of 64 logits"),
    ("student_rows_V_apart", [("student_ptr + row * student_stride", "student_ptr + row * V")],
     "each tensor's row starts at row × its own stride", "slices of rows of 48"),
    ("teacher_at_the_student_stride", [("teacher_ptr + row * teacher_stride", "teacher_ptr + row * student_stride")],
     "each tensor's row starts at row × its own stride", "slices of rows of 48"),
    ("gradient_at_the_student_stride", [("grad_ptr + row * V + cols", "grad_ptr + row * student_stride + cols")],
     "its rows are V apart", "wrote past the end of the gradient"),
    ("temperature_missing_in_pass_2", [(".to(tl.float32) * inv_T - lse_", ".to(tl.float32) - lse_")],
     "same scaling by the temperature", "3 rows of 64 logits"),
    ("log_probabilities_not_normalised", [(" * inv_T - lse_q", " * inv_T"), (" * inv_T - lse_p", " * inv_T")],
     "not normalised", ""),
    ("loss_of_the_last_block_only", [("total += kl_terms", "total = kl_terms")], "terms of the last block only", ""),
    ("gradient_arguments_swapped", [("kl_gradient(tl.exp(log_q), tl.exp(log_p), inv_T)",
                                     "kl_gradient(tl.exp(log_p), tl.exp(log_q), inv_T)")],
     "sign is flipped", "the loss is right but the gradient is not"),
    ("terms_by_hand", [("kl_terms(log_p, log_q)", "tl.exp(log_p) * (log_p - log_q)")],
     "let kl_terms (exercise 5.3) form the terms", "4 rows of 37 logits"),
    ("no_loss_stored", [("    tl.store(loss_ptr + row, tl.sum(total, axis=0))\n", "")], "once, at its own row",
     "stored no loss."),
    ("no_gradient_stored", [(STORE_GRADIENT, "pass")], "stores that block of the gradient", "stored no gradient"),
    ("every_program_on_row_0", [("row = tl.program_id(0).to(tl.int64)", "row = 0")], "one tl.program_id(0) names",
     "stored no loss for rows [1, 2]"),
]


WRONG_ANSWERS = [
    wrong(lesson05.softmax_row, softmax_ignores_T, "temperature seems unused"),
    wrong(lesson05.softmax_row, softmax_times_T, "multiplied by T, which sharpens"),
    wrong(lesson05.softmax_row, softmax_without_max, "NaN or inf", detail="large logits [1000, 999, 0]"),
    wrong(lesson05.softmax_row, softmax_unnormalised, "not normalised yet"),
    wrong(lesson05.online_update, update_without_rescale, "re-measuring against the new maximum",
          detail="block whose maximum is larger than m"),
    wrong(lesson05.online_update, update_rescaled_backwards, "the wrong way round"),
    wrong(lesson05.online_update, update_against_block_max, "against the block's own maximum"),
    wrong(lesson05.online_update, update_nan_on_masked_block, "-inf - -inf = nan",
          detail="m = -inf, s = 0 and a block that is entirely -inf"),
    wrong(lesson05.online_update, update_returns_sum_first, "the maximum first, then the sum"),
    wrong(lesson05.online_update, update_without_block_max, "reducing to its largest value",
          detail="differs from entry to entry"),
    wrong(lesson05.online_update, update_returns_one_value, "returns two values", detail="could not unpack"),
    wrong(lesson05.online_update, update_returns_nothing, "`return`", detail="returned None"),
    wrong(lesson05.online_update, update_with_a_typo, lesson05.online_update.hint, detail="Your function raised"),
    wrong(lesson05.online_update, update_without_jit, "@triton.jit", detail="plain Python function"),
    wrong(lesson05.kl_terms, terms_without_where, "A product cannot give that 0", detail="past the row's end"),
    wrong(lesson05.kl_terms, terms_reverse_kl, "KL(q || p)"),
    wrong(lesson05.kl_terms, terms_sign_flipped, "sign is flipped"),
    wrong(lesson05.kl_terms, terms_without_p, "needs weighing by the teacher's probability"),
    wrong(lesson05.kl_terms, terms_summed, "not their sum"),
    wrong(lesson05.kl_gradient, gradient_p_minus_q, "sign is flipped"),
    wrong(lesson05.kl_gradient, gradient_without_T, "factor 1/T is missing"),
    wrong(lesson05.kl_gradient, gradient_times_T, "gradient of T² · KL"),
    wrong(lesson05.kl_gradient, gradient_over_T_squared, "divides by T twice"),
    *[wrong(lesson05.kl_kernel, mutant(name, *replacements), hint, detail, id=name)
      for name, replacements, hint, detail in WRONG_KERNELS],
    wrong(lesson05.kl_kernel, kernel_without_jit, "@triton.jit", detail="plain Python function"),
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
                signature[arg] = {"V": "i32", "inv_T": "fp32", "student_stride": "i32", "teacher_stride": "i32"}[arg]
        signature.update({arg: "constexpr" for arg in constexprs})
        compiled = triton.compile(ASTSource(fn, signature, constexprs=constexprs), target=GPUTarget("cuda", 90, 32))
        assert compiled.asm["cubin"], "no machine code came out"

    kernels = [name for name in vars(lesson) if name.endswith("_kernel")]
    for name in kernels:
        for element in ("fp32", "bf16"):
            compile_for_h100(getattr(lesson, name), element, 4096)
    for element in ("fp32", "bf16"):   # kdlearn's answer to exercise 5.5, the lesson's fallback
        compile_for_h100(lesson05.reference("kl_kernel"), element, 4096)
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
    assert {"softmax_kernel", "online_softmax_kernel", "kl_kernel"} <= set(kernels) and len(harnesses) == 4, (
        kernels, harnesses)


# --- general hints lead ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", EXERCISES)
def test_general_hint_leads_without_handing_over_the_answer(name):
    """No line of kdlearn's answer, and none of its expressions, appears in the hint every learner sees."""
    exercise, answer = getattr(lesson05, name), lesson05.reference(name).fn
    body = ast.parse(textwrap.dedent(inspect.getsource(answer))).body[0].body
    pieces = [ast.unparse(node) for statement in body for node in ast.walk(statement)
              if isinstance(node, (ast.BinOp, ast.Call, ast.Assign, ast.Return)) and len(ast.unparse(node)) > 8]
    handed_over = [piece for piece in pieces if piece.replace(" ", "") in exercise.hint.replace(" ", "")]
    assert not handed_over, handed_over
    assert "return " not in exercise.hint and " = " not in exercise.hint, exercise.hint


# --- KernelWork: what the lesson measures its kernels with ----------------------------------------


def copy_twice(x_ptr, out_ptr, V, BLOCK: tl.constexpr):
    # Reads its row twice and writes exp of it once: 2 loads, 1 distinct load, 1 store, 1 exp per entry.
    row = tl.program_id(0)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        tl.load(x_ptr + row * V + cols, mask=cols < V, other=0.0)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        x = tl.load(x_ptr + row * V + cols, mask=cols < V, other=0.0)
        tl.store(out_ptr + row * V + cols, tl.exp(x) * 2.0 + 1.0, mask=cols < V)


COUNTED = triton.jit(copy_twice)


def count_copy_twice(kernel):
    x, out = torch.randn(3, 10), torch.empty(3, 10)
    with lesson05.KernelWork() as work:
        kernel[(3,)](x, out, 10, BLOCK=8)
    return work, torch.allclose(out, x.exp() * 2 + 1)


def test_kernel_work_counts_bytes_by_mask_and_arithmetic_by_lane():
    work, right = count_copy_twice(COUNTED)
    assert right
    assert (work.launches, work.loaded, work.distinct_loaded, work.stored) == (1, 2 * 30 * 4, 30 * 4, 30 * 4)
    # 3 rows of 2 blocks of 8 lanes, the masked-off lanes included: a GPU computes every lane of a block.
    assert work.exps == 3 * 2 * 8
    assert work.other_ops == 2 * 3 * 2 * 8      # the multiply and the add


def test_kernel_work_leaves_the_interpreter_as_it_found_it():
    from triton.runtime import interpreter

    before = {name: getattr(interpreter.InterpreterBuilder, name) for name in ("create_masked_load", "binary_op")}
    with lesson05.KernelWork():
        pass
    assert before == {name: getattr(interpreter.InterpreterBuilder, name) for name in before}
    x, out = torch.randn(2, 4), torch.empty(2, 4)
    COUNTED[(2,)](x, out, 4, BLOCK=4)          # and kernels still run outside it
    assert torch.allclose(out, x.exp() * 2 + 1)


COUNT_COMPILED = textwrap.dedent("""
    import json, torch, triton
    import triton.language as tl
    import kdlearn
    from triton.runtime.jit import JITFunction
    from kdlearn.exercises import lesson05
    from tests.test_exercises_lesson05 import count_copy_twice, COUNTED
    from kdlearn.kernels import softmax_divergence as sd

    assert isinstance(COUNTED, JITFunction)
    work, right = count_copy_twice(COUNTED)
    s, t = torch.randn(2, 40).bfloat16().requires_grad_(True), torch.randn(2, 40).bfloat16()
    with lesson05.KernelWork() as kernels:
        sd.softmax_divergence(s, t, torch.ones(2, dtype=torch.bool), T=2.0, divergence="forward").sum().backward()
    # kdlearn's answer to exercise 5.5, with compiled device functions passed to it, as the lesson counts it
    functions = {name: lesson05.reference(name) for name in ("online_update", "kl_terms", "kl_gradient")}
    loss, grad = torch.empty(2), torch.empty(2, 40, dtype=torch.bfloat16)
    with lesson05.KernelWork() as lesson_kernel:
        lesson05.reference("kl_kernel")[(2,)](s, 40, t, 40, loss, grad, 40, 0.5, BLOCK=8, **functions)
    lesson_right = torch.allclose(loss, kdlearn.kl_divergence(s.detach(), t, T=2.0, reduction="none"), rtol=1e-3)
    restored = all(isinstance(f, JITFunction) for f in (COUNTED, sd._forward_kernel, sd._load_row_block, tl.max,
                                                        tl.sum)) and JITFunction.run is JITFunction.__dict__["run"]
    print(json.dumps([right, work.loaded, work.stored, work.exps, kernels.launches, kernels.stored, restored,
                      lesson_right, lesson_kernel.loaded / (2 * 40), lesson_kernel.exps / (2 * 40)]))
""")


def test_kernel_work_counts_compiled_kernels_through_interpreted_twins():
    """Without the interpreter (as on a GPU), KernelWork still counts, and puts the compiled kernels back."""
    env = without_interpreter() | {"PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", COUNT_COMPILED], env=env, cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    (right, loaded, stored, exps, launches, kernel_stored, restored, lesson_right, lesson_loaded,
     lesson_exps) = json.loads(result.stdout.strip().splitlines()[-1])
    assert right and (loaded, stored, exps) == (2 * 30 * 4, 30 * 4, 48)
    assert launches == 2 and kernel_stored >= 2 * 40 * 2 and restored
    # two passes over two bf16 rows; 5 exponentials per position and 2 per block of 8 for the rescaling
    assert lesson_right and lesson_loaded == 8 and lesson_exps == 5 + 2 / 8


# --- machine code: the exponentials run on the special-function units ------------------------------


def test_the_compiled_kernel_computes_each_distinct_exponential_once_on_the_special_function_units():
    """The lesson's claim about the compiled kernel: in the H100 machine code every exponential is a MUFU.EX2,
    and the teacher's probability, which kl_terms and the gradient both take, is computed once: 4 per
    element (2 in pass 1, 2 in pass 2) and one per side per block for the online rescaling."""
    functions = {name: lesson05.reference(name) for name in ("online_update", "kl_terms", "kl_gradient")}
    signature = {"student_ptr": "*bf16", "student_stride": "i32", "teacher_ptr": "*bf16", "teacher_stride": "i32",
                 "loss_ptr": "*fp32", "grad_ptr": "*bf16", "V": "i32", "inv_T": "fp32"}
    for block, warps in [(4096, 4), (1024, 8)]:
        machine = lesson05.machine_code(lesson05.reference("kl_kernel"), signature, {"BLOCK": block}, functions,
                                        num_warps=warps)
        per_thread = block // (32 * warps)
        assert machine["MUFU.EX2"] == 4 * per_thread + 2, (block, warps, machine.get("MUFU.EX2"))
