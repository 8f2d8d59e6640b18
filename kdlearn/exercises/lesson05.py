"""Checks for lesson 05, write the kernel; and the counter the lesson measures its kernels with.

    from kdlearn.exercises import lesson05 as check
    check.softmax_row(softmax_row)
    check.online_update(online_update)
    check.kl_terms(kl_terms)
    check.kl_gradient(kl_gradient)
    check.kl_kernel(kl_kernel)

Exercises 5.1 to 5.4 are ``@triton.jit`` device functions: the arithmetic that the lesson's kernels
do on one block of a row. Their check launches a small kernel around the learner's function (a
*harness*: load a few rows, call the function, store what it returns) and compares what was stored
with kdlearn's losses and their autograd gradients. Exercise 5.5 is a whole kernel, the fused KL
divergence and its gradient: its check launches the learner's kernel itself, with kdlearn's device
functions, on rows laid out in buffers with guard regions around them, so that a read or a write
past a row's end shows up (a missing mask, an off-by-one in a loop, a wrong row stride) instead of
touching memory that belongs to nobody.

The kernels run the way the learner's function was made. Triton reads TRITON_INTERPRET when
``@triton.jit`` defines a function. Without a GPU the lesson sets it first thing, ``triton.jit``
gives an interpreted function, and the check runs on CPU tensors; a mistake is then an ordinary
Python exception, which the interpreter wraps in ``InterpreterError`` once per call level and
``_launch`` unwraps, so that the stub's ``NotImplementedError`` reads "not attempted yet". With a
GPU the function is compiled, and so is the harness, on CUDA tensors; a compiler cannot compile the
stub's ``raise``, so the stub is recognised from the function's source before anything is compiled.

``reference(name)`` gives kdlearn's answer to an exercise as a ``@triton.jit`` function, for the
cells after an exercise until the learner's passes (``Exercise.passing_or``).

``KernelWork`` counts what kernels do while they run through the interpreter: the bytes their loads
and stores move, the distinct bytes each launch reads, the exponentials and the other floating-point
operations. The interpreter has no cache and no clock, so these are counts of the work itself, the
same on any machine; the lesson divides them by a GPU's rates.
"""

from __future__ import annotations

import ast
import inspect
import math
import textwrap
import warnings

import numpy as np
import torch

import kdlearn
from kdlearn.exercises import Exercise, Mismatch, close, expect_close, named_answer, show

try:
    import triton.language as tl  # the harnesses' globals must hold it, for the interpreter and the compiler
except ImportError:  # Triton ships for Linux only
    tl = None

NEG_INF = -math.inf


# --- kdlearn's answers, jitted on demand -------------------------------------------------------
# Plain functions here, decorated by reference(): triton.jit reads TRITON_INTERPRET when it
# decorates, and a lesson may switch the interpreter on after importing this module.


def _softmax_row(x, inv_T):
    z = x * inv_T
    z = z - tl.max(z, axis=0)
    e = tl.exp(z)
    return e / tl.sum(e, axis=0)


def _online_update(m, s, z):
    new_m = tl.maximum(m, tl.max(z, axis=0))
    # While everything seen is -inf, so is new_m: shift by 0 instead, so that the exponents
    # below are exp(-inf) = 0 rather than exp(-inf - -inf) = exp(nan).
    shift = tl.where(new_m == float("-inf"), 0.0, new_m)
    new_s = s * tl.exp(m - shift) + tl.sum(tl.exp(z - shift), axis=0)
    return new_m, new_s


def _kl_terms(log_p, log_q):
    p = tl.exp(log_p)
    return tl.where(p > 0, p * (log_p - log_q), 0.0)


def _kl_gradient(q, p, inv_T):
    return (q - p) * inv_T


def _kl_kernel(student_ptr, student_stride, teacher_ptr, teacher_stride, loss_ptr, grad_ptr, V, inv_T,
               BLOCK: tl.constexpr, online_update: tl.constexpr, kl_terms: tl.constexpr,
               kl_gradient: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)  # int64: row * stride passes 2**31 in a large batch
    student_row = student_ptr + row * student_stride
    teacher_row = teacher_ptr + row * teacher_stride
    # Pass 1: both rows' log-sum-exp, in one walk along them.
    m_q, s_q = float("-inf"), 0.0
    m_p, s_p = float("-inf"), 0.0
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < V
        a = tl.load(student_row + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_T
        b = tl.load(teacher_row + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_T
        m_q, s_q = online_update(m_q, s_q, a)
        m_p, s_p = online_update(m_p, s_p, b)
    lse_q = m_q + tl.log(s_q)
    lse_p = m_p + tl.log(s_p)
    # Pass 2: the terms of the divergence, added up per position; the gradient, block by block.
    total = tl.zeros([BLOCK], dtype=tl.float32)
    for start in range(0, V, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < V
        log_q = tl.load(student_row + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_T - lse_q
        log_p = tl.load(teacher_row + cols, mask=inside, other=float("-inf")).to(tl.float32) * inv_T - lse_p
        total += kl_terms(log_p, log_q)
        gradient = kl_gradient(tl.exp(log_q), tl.exp(log_p), inv_T)
        tl.store(grad_ptr + row * V + cols, gradient.to(grad_ptr.dtype.element_ty), mask=inside)
    tl.store(loss_ptr + row, tl.sum(total, axis=0))


_REFERENCES = {"softmax_row": _softmax_row, "online_update": _online_update, "kl_terms": _kl_terms,
               "kl_gradient": _kl_gradient, "kl_kernel": _kl_kernel}
_jitted: dict = {}


def reference(name: str):
    """kdlearn's answer to exercise ``name`` (one of softmax_row, online_update, kl_terms,
    kl_gradient, kl_kernel), as a @triton.jit function: a device function a kernel can call, or
    for kl_kernel a kernel to launch."""
    answer = named_answer(_REFERENCES, name)
    if name not in _jitted:
        import triton

        _jitted[name] = triton.jit(answer)
    return _jitted[name]


# --- running a learner's function or kernel ------------------------------------------------------


def _raises_not_implemented(fn) -> bool:
    """Whether ``fn``'s source still holds the stub's ``raise NotImplementedError``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return False
    return any(isinstance(node, ast.Raise) and node.exc is not None and "NotImplementedError" in ast.unparse(node.exc)
               for node in ast.walk(tree))


def _compiled(answer) -> bool:
    """Whether the learner's function is compiled (True) or interpreted (False); Mismatch if neither."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction
    except ImportError:
        raise Mismatch("Triton is not installed here (it ships for Linux only), so no kernel can run.",
                       "Run this lesson on Linux, or on Binder.") from None
    if isinstance(answer, InterpretedFunction):
        return False
    if not isinstance(answer, JITFunction):
        raise Mismatch(f"{getattr(answer, '__name__', 'Your function')} is a plain Python function, and a "
                       f"kernel can call only functions that Triton compiles.",
                       "Put @triton.jit on the line above `def`.")
    if _raises_not_implemented(answer.fn):
        raise NotImplementedError("the exercise's stub is still there")
    if not torch.cuda.is_available():
        raise Mismatch("Your function was compiled for a GPU, and this machine has none.",
                       "Triton reads TRITON_INTERPRET when @triton.jit defines a function, so the interpreter "
                       "must be on before your cell runs: restart the kernel and run the lesson from the top "
                       "(its first cell sets TRITON_INTERPRET=1).")
    return True


_harnesses: dict = {}


def _run_kernel(kernel, rows: int, compiled: bool, *args, **kwargs) -> None:
    """Launch ``kernel`` on ``rows`` programs; tensor arguments not yet on the GPU (when compiled) are
    copied there and back. The learner's own error is reported, unwrapped."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import InterpreterError

    device = "cuda" if compiled else "cpu"
    on_device = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    try:
        # The interpreter computes with numpy, which warns about the nan that a tl.where then discards
        # (and about the maximum of a block of NaN, read past a row's end by a wrong kernel).
        with np.errstate(all="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            kernel[(rows,)](*on_device, **kwargs)
    except CompilationError as error:
        while isinstance(error.__cause__, CompilationError):
            error = error.__cause__
        raise Mismatch("Triton could not compile your function:\n" + textwrap.indent(error.message, "    ")) from None
    except Exception as error:
        cause = error
        while isinstance(cause, InterpreterError) and cause.__cause__ is not None:
            cause = cause.__cause__
        if isinstance(cause, TypeError) and "NoneType" in str(cause):
            raise Mismatch("Your function returned None.", "Did you forget the `return` statement?") from None
        if isinstance(cause, TypeError) and ("unpack" in str(cause) or "not iterable" in str(cause)):
            raise Mismatch("The kernel expects two values from your function, and could not unpack what it "
                           "returned.", "It returns two values: the new maximum first, then the new sum.") from None
        raise cause from None
    for original, copy in zip(args, on_device):
        if isinstance(original, torch.Tensor) and copy is not original:
            original.copy_(copy)


def _launch(harness, rows: int, compiled: bool, *args, **kwargs) -> None:
    """Run the plain function ``harness`` as a kernel, interpreted on the CPU or compiled on the GPU."""
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    if (harness, compiled) not in _harnesses:
        _harnesses[harness, compiled] = (JITFunction if compiled else InterpretedFunction)(harness)
    _run_kernel(_harnesses[harness, compiled], rows, compiled, *args, **kwargs)


# The harnesses store a result that should be one number per row across a whole block, so that a
# block returned instead (a forgotten tl.max or tl.sum) shows up as values that vary along the row.


def _softmax_harness(x_ptr, out_ptr, V, inv_T, BLOCK: tl.constexpr, softmax_row: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < V
    x = tl.load(x_ptr + row * V + cols, mask=inside, other=float("-inf"))
    tl.store(out_ptr + row * V + cols, softmax_row(x, inv_T), mask=inside)


def _online_update_harness(m_ptr, s_ptr, z_ptr, new_m_ptr, new_s_ptr, BLOCK: tl.constexpr,
                           online_update: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    z = tl.load(z_ptr + row * BLOCK + cols)
    new_m, new_s = online_update(tl.load(m_ptr + row), tl.load(s_ptr + row), z)
    tl.store(new_m_ptr + row * BLOCK + cols, new_m + tl.zeros([BLOCK], dtype=tl.float32))
    tl.store(new_s_ptr + row * BLOCK + cols, new_s + tl.zeros([BLOCK], dtype=tl.float32))


def _kl_terms_harness(log_p_ptr, log_q_ptr, terms_ptr, sums_ptr, V, BLOCK: tl.constexpr, kl_terms: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < V
    # Past V both sides read -inf, as in the lesson's kernel: p = 0 there, so the terms must be 0.
    log_p = tl.load(log_p_ptr + row * V + cols, mask=inside, other=float("-inf"))
    log_q = tl.load(log_q_ptr + row * V + cols, mask=inside, other=float("-inf"))
    terms = kl_terms(log_p, log_q) + tl.zeros([BLOCK], dtype=tl.float32)
    tl.store(terms_ptr + row * V + cols, terms, mask=inside)
    tl.store(sums_ptr + row * BLOCK + cols, tl.sum(terms, axis=0) + tl.zeros([BLOCK], dtype=tl.float32))


def _kl_gradient_harness(q_ptr, p_ptr, grad_ptr, V, inv_T, BLOCK: tl.constexpr, kl_gradient: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < V
    q = tl.load(q_ptr + row * V + cols, mask=inside, other=0.0)
    p = tl.load(p_ptr + row * V + cols, mask=inside, other=0.0)
    tl.store(grad_ptr + row * V + cols, kl_gradient(q, p, inv_T), mask=inside)


def _block(n: int) -> int:
    """The smallest power of two >= n: a Triton block's length must be a power of two."""
    return 1 << max(n - 1, 0).bit_length()


def _one_per_row(stored: torch.Tensor, what: str, name: str, hint: str) -> torch.Tensor:
    """The per-row value a harness stored across a block, or a Mismatch when it varies along the row."""
    varies = (stored != stored[:, :1]) & ~(stored.isnan() & stored[:, :1].isnan())
    if varies.any():
        raise Mismatch(f"For {what}, your {name} differs from entry to entry of the block "
                       f"({show(stored[varies.any(dim=1).nonzero()[0, 0]])}); it should be one number.", hint)
    return stored[:, 0]


# --- Exercise 5.1: softmax of a row that fits in one block ---------------------------------------


def _check_softmax_row(answer) -> None:
    compiled = _compiled(answer)
    generator = torch.Generator().manual_seed(51)
    cases = [
        (torch.tensor([[2.0, 1.0, 0.1]]), 1.0, "logits [2, 1, 0.1] at T=1"),
        (torch.tensor([[2.0, 1.0, 0.1]]), 4.0, "logits [2, 1, 0.1] at T=4"),
        (torch.randn(3, 12, generator=generator) * 3, 0.5, "3 rows of 12 random logits at T=0.5"),
        (torch.tensor([[1.0, NEG_INF, 3.0, 0.5, NEG_INF]]), 2.0, "logits [1, -inf, 3, 0.5, -inf] at T=2"),
        (torch.tensor([[1000.0, 999.0, 0.0]]), 2.0, "the large logits [1000, 999, 0] at T=2"),
    ]
    for x, T, what in cases:
        rows, V = x.shape
        out = torch.full_like(x, math.nan)
        _launch(_softmax_harness, rows, compiled, x, out, V, 1.0 / T, BLOCK=_block(V), softmax_row=answer)
        exps = torch.exp(x / T - (x / T).max(dim=-1, keepdim=True).values)
        mistakes = [
            (torch.softmax(x, dim=-1), "The temperature seems unused: the logits are divided by T (multiplied by "
                                       "inv_T) before anything else."),
            (torch.softmax(x * T, dim=-1), "The logits were multiplied by T, which sharpens the distribution; "
                                           "inv_T is 1/T, the factor that softens it."),
            (exps, "Your values do not add up to 1 along the row: the exponentials are not normalised yet."),
        ]
        expect_close(out, kdlearn.soft_targets(x, T), what, mistakes)


softmax_row = Exercise(
    "5.1", "softmax of one row in one block",
    hint="Scale the row by the temperature, then do what exercise 1.1 did in PyTorch: shift by the row's largest "
         "value so that no exponential overflows, exponentiate, normalise. Here each reduction runs over the "
         "block's one axis. The entries past the row's end arrive as -inf: what does exp make of them?",
    run_checks=_check_softmax_row,
)


# --- Exercise 5.2: the online (streaming) softmax update -----------------------------------------


def _online_cases():
    generator = torch.Generator().manual_seed(52)
    block = torch.randn(8, generator=generator) * 2
    padded = torch.cat([torch.randn(5, generator=generator), torch.full((3,), NEG_INF)])
    return [
        # (m, s, z, what); the cases where the known mistakes differ from the right answer come first
        (1.0, 2.5, block + 3.0, "m = 1, s = 2.5 and a block whose maximum is larger than m"),
        (NEG_INF, 0.0, block, "the first block (m = -inf, s = 0)"),
        (6.0, 1.7, block, "m = 6, s = 1.7 and a block whose every value is below m"),
        (0.5, 3.0, padded, "m = 0.5, s = 3 and a block whose last 3 entries are -inf (past the row's end)"),
        (2.0, 1.25, torch.full((8,), NEG_INF), "m = 2, s = 1.25 and a block that is entirely -inf"),
        (NEG_INF, 0.0, torch.full((8,), NEG_INF), "m = -inf, s = 0 and a block that is entirely -inf"),
    ]


def _online_expected(m: float, s: float, z: torch.Tensor) -> tuple[float, float]:
    """The running max and sum after ``z``, from the definition: the max of everything seen so far, and
    the sum of exp(value - that max), where the values seen before contributed s * exp(m) in total."""
    z = z.double()
    new_m = max(m, z.max().item())
    if new_m == NEG_INF:
        return new_m, 0.0
    log_total = torch.logsumexp(torch.cat([torch.tensor([m + math.log(s) if s > 0 else NEG_INF],
                                                        dtype=torch.float64), z]), dim=0)
    return new_m, math.exp(log_total.item() - new_m)


def _online_mistakes(m: float, s: float, z: torch.Tensor):
    new_m = max(m, z.max().item())
    if not math.isfinite(new_m) or not math.isfinite(m):
        return []
    fresh = torch.exp(z.double() - new_m).sum().item()
    block_max = z.max().item()
    own_max = torch.exp(z.double() - block_max).sum().item() if math.isfinite(block_max) else 0.0
    return [
        (s + fresh, "When the maximum grows, the old sum is still measured against the old maximum: each of its "
                    "terms is exp(value - m), and it needs re-measuring against the new maximum before the "
                    "block's terms are added to it."),
        (s * math.exp(new_m - m) + fresh, "The old sum is rescaled the wrong way round: measured against a larger "
                                          "maximum, each old term shrinks, so the factor is at most 1."),
        (s * math.exp(m - new_m) + own_max, "The block's exponentials are measured against the block's own "
                                            "maximum; the sum they join is measured against the new running "
                                            "maximum, and they must be too."),
    ]


def _check_online_update(answer) -> None:
    compiled = _compiled(answer)
    for m, s, z, what in _online_cases():
        # One case per launch, so that the first case that fails is the one the verdict names.
        new_m = torch.full((1, 8), math.nan)
        new_s = torch.full((1, 8), math.nan)
        _launch(_online_update_harness, 1, compiled, torch.tensor([m]), torch.tensor([s]), z.clone(), new_m, new_s,
                BLOCK=8, online_update=answer)
        got = torch.stack([
            _one_per_row(new_m, what, "new maximum", "The new maximum is one number: the block still needs "
                                                     "reducing to its largest value.")[0],
            _one_per_row(new_s, what, "new sum", "The new sum is one number: the block's exponentials still need "
                                                 "adding up.")[0],
        ])
        expected = torch.tensor(_online_expected(m, s, z))
        if close(got, expected):
            continue
        mistakes = [(torch.tensor([expected[0].item(), wrong]), hint) for wrong, hint in _online_mistakes(m, s, z)]
        mistakes.append((expected.flip(0), "The two values come back in the wrong order: the maximum first, then "
                                           "the sum."))
        hint = next((h for wrong, h in mistakes if close(got, wrong)), None)
        if hint is None and torch.isnan(got).any() and z.max().item() == NEG_INF:
            hint = ("With everything so far -inf, new_m is -inf too, and an exponent measured against it is "
                    "-inf - -inf = nan. While new_m is -inf, measure against a shift that is finite: any finite "
                    "shift cancels out of the softmax.")
        raise Mismatch(f"For {what}, (new_m, new_s) should be {show(expected)}, but your function returned "
                       f"{show(got)}.", hint)


online_update = Exercise(
    "5.2", "online softmax update",
    hint="A new block changes two things: the running maximum may grow, and the sum gains the block's "
         "exponentials. The old sum and the new terms must both be measured against the same, new maximum. "
         "While everything seen is -inf there is no finite maximum to measure against: choose a shift that "
         "cannot make a NaN.",
    run_checks=_check_online_update,
)


# --- Exercise 5.3: the terms of KL(p || q) ------------------------------------------------------


def _kl_cases():
    generator = torch.Generator().manual_seed(53)
    student = torch.randn(3, 10, generator=generator) * 2
    teacher = torch.randn(3, 10, generator=generator) * 2
    masked_s, masked_t = student.clone(), teacher.clone()
    masked_s[:, [2, 7]] = NEG_INF        # a masked vocabulary: -inf on both sides
    masked_t[:, [2, 7]] = NEG_INF
    masked_t[0, 4] = NEG_INF             # and an entry only the teacher rules out (p = 0, q > 0)
    return [
        (student, teacher, 2.0, "3 rows of 10 logits at T=2"),
        (student * 8, teacher * 8, 0.5, "3 rows of 10 widely spread logits at T=0.5 (some p underflow to 0)"),
        (masked_s, masked_t, 1.0, "3 rows of 10 logits with masked entries (-inf) at T=1"),
    ]


def _check_kl_terms(answer) -> None:
    compiled = _compiled(answer)
    for student, teacher, T, what in _kl_cases():
        rows, V = student.shape
        block = _block(V + 1)  # at least one entry past the row's end
        log_q = torch.log_softmax(student / T, dim=-1)
        log_p = torch.log_softmax(teacher / T, dim=-1)
        terms = torch.full_like(log_p, math.nan)
        sums = torch.full((rows, block), math.nan)
        _launch(_kl_terms_harness, rows, compiled, log_p, log_q, terms, sums, V, BLOCK=block, kl_terms=answer)
        p, q = log_p.exp(), log_q.exp()
        expected = torch.where(p > 0, p * (log_p - log_q), 0.0)
        if (torch.isnan(terms) & (p == 0)).any() and not torch.isnan(terms[p > 0]).any():
            raise Mismatch(f"For {what} your terms are NaN where p = 0 (log p = -inf): {show(terms)}.",
                           "There the term is 0 * (-inf - log q), which is nan, whereas it is 0 by convention. "
                           "A product cannot give that 0; a choice between two values can.")
        mistakes = [
            (torch.where(q > 0, q * (log_q - log_p), 0.0),
             "That is KL(q || p), the reverse direction: the forward KL weighs each log-ratio by the teacher's "
             "probability."),
            (torch.where(p > 0, p * (log_q - log_p), 0.0), "The sign is flipped: the log-ratio is the teacher's "
                                                            "log-probability minus the student's."),
            (log_p - log_q, "Each log-ratio needs weighing by the teacher's probability of that entry."),
            (expected.sum(dim=-1, keepdim=True).expand_as(expected),
             "Return one term per entry of the block, not their sum: the kernel adds the terms up itself."),
        ]
        expect_close(terms, expected, f"the terms of {what}", mistakes)
        row_sums = _one_per_row(sums, what, "sum", "")
        kl = kdlearn.kl_divergence(student, teacher, T=T, reduction="none")
        if torch.isnan(row_sums).any():
            raise Mismatch(f"For {what} the terms inside the row are right, but past the row's end (where the "
                           f"kernel loads -inf on both sides) they add up to {show(row_sums)}.",
                           "Past the end p = 0: the term must be 0 there, not 0 * (-inf - -inf) = nan. A product "
                           "cannot give that 0; a choice between two values can.")
        expect_close(row_sums, kl, f"the sum of the terms over {what} (kdlearn.kl_divergence)")


kl_terms = Exercise(
    "5.3", "the terms of KL(p || q)",
    hint="Each term is the teacher's probability of an entry times the log-ratio of the two probabilities; "
         "log_p gives the probability itself with one exponential. Where that probability is 0 the term is 0 "
         "by convention, but the arithmetic gives 0 times infinity: decide the value there with tl.where.",
    run_checks=_check_kl_terms,
)


# --- Exercise 5.4: the gradient with respect to the student's logits -----------------------------


def _check_kl_gradient(answer) -> None:
    compiled = _compiled(answer)
    generator = torch.Generator().manual_seed(54)
    student = torch.randn(4, 12, generator=generator) * 2
    teacher = torch.randn(4, 12, generator=generator) * 2
    masked_s, masked_t = student.clone(), teacher.clone()
    masked_s[:, [0, 5]] = NEG_INF
    masked_t[:, [0, 5]] = NEG_INF
    cases = [(student, teacher, 2.0, "4 rows of 12 logits at T=2"),
             (student, teacher, 0.5, "4 rows of 12 logits at T=0.5"),
             (masked_s, masked_t, 4.0, "4 rows of 12 logits with masked entries (-inf) at T=4")]
    for s, t, T, what in cases:
        rows, V = s.shape
        q, p = kdlearn.soft_targets(s, T), kdlearn.soft_targets(t, T)
        grad = torch.full_like(q, math.nan)
        _launch(_kl_gradient_harness, rows, compiled, q, p, grad, V, 1.0 / T, BLOCK=_block(V), kl_gradient=answer)
        logits = s.clone().requires_grad_(True)
        kdlearn.kl_divergence(logits, t, T=T, reduction="sum").backward()
        mistakes = [
            ((p - q) / T, "The sign is flipped: the gradient is positive where the student puts more probability "
                          "than the teacher, so that a descent step lowers those logits."),
            (q - p, "The factor 1/T is missing: the student's logits are scaled by inv_T before the softmax, and "
                    "the chain rule brings that factor out."),
            ((q - p) * T, "That is the gradient of T² · KL (kd_loss's soft term); the divergence itself has no T², "
                          "and its gradient carries 1/T, not T."),
            ((q - p) / T ** 2, "That divides by T twice: the chain rule brings out one factor 1/T, and the "
                               "divergence has no T² to divide by."),
        ]
        expect_close(grad, logits.grad, f"the gradient on {what}", mistakes)


kl_gradient = Exercise(
    "5.4", "the gradient of KL(p || q) with respect to the student's logits",
    hint="Differentiate with respect to the scaled logits, s / T, first (the cell above does it, through the "
         "log-sum-exp), then apply the chain rule for that scaling.",
    run_checks=_check_kl_gradient,
)


# --- Exercise 5.5: the whole kernel, the fused KL divergence and its gradient ------------------------
#
# The learner's kernel runs on rows laid out in flat buffers with guards around them: the inputs'
# guards (after the last row, and between rows where the row stride is larger than V) hold NaN, so
# that a load past a row's end poisons the result rather than reading another allocation; the
# outputs start as SENTINEL, a value neither the loss nor the gradient ever takes, and their guards
# as GUARD_MARK, so that an entry never written and a write past the end can both be seen.

_KERNEL_BLOCK = 16
_GUARD = 4 * _KERNEL_BLOCK      # guard entries after each buffer: more than a block past the last row
_SENTINEL = -7777.0
_GUARD_MARK = 7777.0


class _KernelCase:
    def __init__(self, what, student, teacher, T, student_stride=None, feature="basic"):
        self.what, self.student, self.teacher, self.T = what, student, teacher, T
        self.rows, self.V = student.shape
        self.student_stride = student_stride or self.V
        # What this case adds to the ones before it, so that a failure here can be blamed on it.
        self.feature = feature


def _kernel_cases() -> list[_KernelCase]:
    generator = torch.Generator().manual_seed(55)

    def logits(rows, V):
        return torch.randn(rows, V, generator=generator) * 2

    masked_s, masked_t = logits(3, 40), logits(3, 40)
    masked_s[:, 35:] = masked_t[:, 35:] = NEG_INF       # a masked stretch of vocabulary, on both sides
    masked_t[0, [3, 9]] = NEG_INF                        # entries only the teacher rules out
    masked_s[1, :20] = masked_t[1, :20] = NEG_INF        # a row whose whole first block is -inf
    b = _KERNEL_BLOCK
    return [
        _KernelCase(f"3 rows of 64 logits (4 whole blocks of {b}) at T=2", logits(3, 64), logits(3, 64), 2.0),
        _KernelCase(f"4 rows of 37 logits at T=0.5 (in blocks of {b}, the last block of a row sticks out past its "
                    f"end)",
                    logits(4, 37), logits(4, 37), 0.5, feature="partial block"),
        _KernelCase(f"2 rows of 5 logits at T=1 (one block of {b}, mostly past the row's end)",
                    logits(2, 5), logits(2, 5), 1.0, feature="partial block"),
        _KernelCase("3 rows of 40 logits at T=1 with -inf entries (a masked stretch of vocabulary, entries only "
                    "the teacher rules out, a row whose first block is all -inf)", masked_s, masked_t, 1.0,
                    feature="-inf"),
        _KernelCase("3 rows of 37 logits at T=2 where the student's rows are slices of rows of 48 (a padded "
                    "vocabulary: its row stride is 48) and the teacher's are contiguous (row stride 37)",
                    logits(3, 37), logits(3, 37), 2.0, student_stride=48, feature="stride"),
    ]


def _rows_in_buffer(values: torch.Tensor, stride: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(buffer, view): ``values`` as rows ``stride`` apart in a NaN-filled buffer with a guard after them."""
    rows, V = values.shape
    buffer = torch.full((rows * stride + _GUARD,), math.nan, device=device)
    view = buffer[: rows * stride].view(rows, stride)[:, :V]
    view.copy_(values)
    return buffer, view


def _output_buffer(n: int, device) -> torch.Tensor:
    buffer = torch.full((n + _GUARD,), _GUARD_MARK, device=device)
    buffer[:n] = _SENTINEL
    return buffer


def _simulate(case: _KernelCase, *, scale_pass_2=True, normalise=True, pass_1_blocks=None, fill_1=NEG_INF,
              fill_2=NEG_INF, last_block_only=False, gradient_sign=1.0, terms_by_hand=False):
    """(loss, gradient) of the kernel, in float64, as a kernel with the given mistakes would compute them.
    A fill of "beyond" reads past each row's end what lies there: the next row, or the NaN guard."""
    b = _KERNEL_BLOCK
    blocks = -(-case.V // b)
    width = blocks * b

    def padded(x, fill):
        if fill == "beyond":
            flat = torch.cat([x.double().flatten(), torch.full((width,), math.nan, dtype=torch.float64)])
            return torch.stack([flat[r * case.V: r * case.V + width] for r in range(case.rows)])
        return torch.cat([x.double(), torch.full((case.rows, width - case.V), fill, dtype=torch.float64)], dim=1)

    inv_T = 1.0 / case.T
    columns = (pass_1_blocks if pass_1_blocks is not None else blocks) * b
    lse_q = torch.logsumexp(padded(case.student, fill_1)[:, :columns] * inv_T, dim=1, keepdim=True)
    lse_p = torch.logsumexp(padded(case.teacher, fill_1)[:, :columns] * inv_T, dim=1, keepdim=True)
    scale = inv_T if scale_pass_2 else 1.0
    log_q = padded(case.student, fill_2) * scale - (lse_q if normalise else 0.0)
    log_p = padded(case.teacher, fill_2) * scale - (lse_p if normalise else 0.0)
    p, q = log_p.exp(), log_q.exp()
    terms = p * (log_p - log_q)
    if not terms_by_hand:
        terms = torch.where(p > 0, terms, torch.zeros((), dtype=torch.float64))
    if last_block_only:
        terms = terms[:, (blocks - 1) * b:]
    gradient = gradient_sign * (q - p)[:, : case.V] * inv_T
    return terms.sum(dim=1), gradient


def _kernel_mistakes(case: _KernelCase):
    blocks = -(-case.V // _KERNEL_BLOCK)
    sticks_out = blocks * _KERNEL_BLOCK > case.V
    mistakes = [
        (dict(scale_pass_2=False), "Pass 2 seems to take the raw logits: they need the same scaling by the "
                                   "temperature as in pass 1 before the normalisers are subtracted."),
        (dict(normalise=False), "Pass 2's log-probabilities are not normalised: a logit, scaled, becomes a "
                                "log-probability once its row's log-sum-exp (pass 1's result) is subtracted."),
        (dict(last_block_only=True), "Your loss counts the terms of the last block only: the row's loss adds up "
                                     "the terms of every block, so they must accumulate across the loop."),
        (dict(gradient_sign=-1.0), "The gradient's sign is flipped: kl_gradient takes the student's "
                                   "probabilities first, then the teacher's."),
    ]
    if blocks > 1:
        mistakes.append((dict(pass_1_blocks=blocks - 1), "Pass 1 stops one block before the row's end, so the "
                         "normalisers leave out the last block's logits: its loop must start a block at every "
                         "multiple of BLOCK below V."))
    if sticks_out:
        fill_hint = ("Masked-off entries load the fill value `other`, which is 0 unless you give one, and a logit "
                     "of 0 past the row's end counts as a real entry. Fill with a value whose exponential is 0.")
        mistakes += [(dict(fill_1=0.0, fill_2=0.0), fill_hint), (dict(fill_1=0.0), fill_hint),
                     (dict(fill_2=0.0), fill_hint),
                     (dict(terms_by_hand=True), "Past the row's end both logits are -inf, the teacher's probability "
                      "is 0, and a term computed by hand is 0 · (-inf - -inf) = nan: let kl_terms (exercise 5.3) "
                      "form the terms, it gives 0 there.")]
        if case.student_stride == case.V:
            mistakes.append((dict(fill_2="beyond"), "Pass 2's loads read past the row's end, into the next row: the "
                             "last block of a row sticks out past its end, and a load there needs a mask (and a fill "
                             "value that weighs nothing), as in pass 1."))
    return mistakes


def _matches(got: torch.Tensor, wrong: torch.Tensor) -> bool:
    """``got`` equals what a mistake gives, NaN where it gives NaN."""
    nan = wrong.isnan()
    return bool((got.isnan() == nan).all()) and close(got.double()[~nan], wrong[~nan], rtol=1e-4, atol=1e-5)


def _check_written(case: _KernelCase, loss_buffer: torch.Tensor, grad_buffer: torch.Tensor) -> None:
    """Mismatch where the kernel wrote past the end of an output or left part of it unwritten."""
    rows, V = case.rows, case.V
    past = (grad_buffer[rows * V:] != _GUARD_MARK).nonzero().flatten()
    if len(past):
        written = set((rows * V + past).tolist())
        at_student_stride = {r * case.student_stride + c for r in range(rows) for c in range(V)}
        if written == {rows * V}:
            hint = ("That is one entry past the end of the last row: the mask lets through the column equal to V, "
                    "one past the last one.")
        elif case.student_stride != V and written <= at_student_stride:
            hint = ("The gradient is a new tensor of its own, (N, V) and contiguous: its rows are V apart, "
                    "whatever the logits' strides.")
        else:
            hint = ("The last block of a row sticks out past its end, and a store there writes whatever lies "
                    "beyond (the next row, or past the tensor) unless it is masked.")
        entries = "1 entry" if len(past) == 1 else f"{len(past)} entries"
        raise Mismatch(f"For {case.what}, your kernel wrote past the end of the gradient: {entries} after its "
                       f"last row changed.", hint)
    if (loss_buffer[rows:] != _GUARD_MARK).any():
        raise Mismatch(f"For {case.what}, your kernel wrote past the end of the loss.",
                       "The loss has one entry per row: each program stores one number, at its own row.")
    loss, grad = loss_buffer[:rows], grad_buffer[: rows * V].view(rows, V)
    if (loss == _SENTINEL).all():
        raise Mismatch(f"For {case.what}, your kernel stored no loss.",
                       "After pass 2, each program stores the sum of its row's terms, once, at its own row of the "
                       "loss.")
    if (loss == _SENTINEL).any():
        missing = (loss == _SENTINEL).nonzero().flatten().tolist()
        raise Mismatch(f"For {case.what}, your kernel stored no loss for rows {missing}.",
                       "Each program handles one row, the one tl.program_id(0) names, and stores that row's loss.")
    unwritten = grad == _SENTINEL
    if unwritten.all():
        raise Mismatch(f"For {case.what}, your kernel stored no gradient.",
                       "Pass 2 has both probabilities of each block at hand: it stores that block of the gradient, "
                       "in the gradient's own row.")
    if unwritten.any():
        whole_rows = unwritten.all(dim=1)
        if whole_rows.any() and not (unwritten & ~whole_rows[:, None]).any():
            raise Mismatch(f"For {case.what}, your kernel wrote no gradient for rows "
                           f"{whole_rows.nonzero().flatten().tolist()}.",
                           "Each program handles one row, the one tl.program_id(0) names, and writes that row of "
                           "the gradient.")
        first = int(unwritten.any(dim=0).nonzero()[0])
        if unwritten[:, first:].all():
            raise Mismatch(f"For {case.what}, your kernel never wrote the last entries of the gradient's rows "
                           f"(columns {first} to {V - 1}).",
                           "Pass 2 stops before the row's end: its loop must start a block at every multiple of "
                           "BLOCK below V, the last (perhaps partial) block included.")
        raise Mismatch(f"For {case.what}, your kernel left {int(unwritten.sum())} entries of the gradient "
                       f"unwritten.", None)


def _blame(case: _KernelCase, loss: torch.Tensor, grad: torch.Tensor) -> str | None:
    """A hint for a wrong result from what this case adds to the ones that passed before it."""
    nan = bool(loss.isnan().any() or grad.isnan().any())
    if case.feature == "partial block":
        if nan:
            return ("Your kernel reads past the end of a row (what lies beyond is NaN here). The last block of a row "
                    "sticks out past its end: every load in it needs a mask, and a fill value that weighs nothing.")
        return ("Your kernel is right when V is a multiple of BLOCK and wrong here, where the last block of each row "
                "sticks out past its end: check that both loops reach that block, and that its loads are masked, "
                "with a fill value that weighs nothing.")
    if case.feature == "-inf" and nan:
        return ("Where logits are -inf, an expression such as -inf - -inf is nan. Let online_update (exercise 5.2) "
                "form the normalisers and kl_terms (5.3) the terms: they give 0 where a probability is 0.")
    if case.feature == "stride":
        return (f"Your kernel is right on contiguous rows and wrong here, where the student's rows are "
                f"{case.student_stride} elements apart and the teacher's {case.V}: each tensor's row starts at "
                f"row × its own stride, which is V only when its rows are contiguous.")
    return None


def _check_kl_kernel(answer) -> None:
    compiled = _compiled(answer)
    device = "cuda" if compiled else "cpu"
    functions = {name: reference(name) for name in ("online_update", "kl_terms", "kl_gradient")}
    for case in _kernel_cases():
        rows, V = case.rows, case.V
        student_buffer, student = _rows_in_buffer(case.student, case.student_stride, device)
        teacher_buffer, teacher = _rows_in_buffer(case.teacher, V, device)
        loss_buffer, grad_buffer = _output_buffer(rows, device), _output_buffer(rows * V, device)
        _run_kernel(answer, rows, compiled, student, case.student_stride, teacher, V, loss_buffer,
                    grad_buffer, V, 1.0 / case.T, BLOCK=_KERNEL_BLOCK, **functions)
        loss_buffer, grad_buffer = loss_buffer.cpu(), grad_buffer.cpu()
        untouched = [_rows_in_buffer(case.student, case.student_stride, "cpu")[0],
                     _rows_in_buffer(case.teacher, V, "cpu")[0]]
        if not all(torch.equal(buffer.cpu().nan_to_num(_GUARD_MARK), original.nan_to_num(_GUARD_MARK))
                   for buffer, original in zip((student_buffer, teacher_buffer), untouched)):
            raise Mismatch(f"For {case.what}, your kernel wrote into the logits.",
                           "The kernel reads the logits and writes only the loss and the gradient.")
        _check_written(case, loss_buffer, grad_buffer)
        loss, grad = loss_buffer[:rows], grad_buffer[: rows * V].view(rows, V)
        student_logits = case.student.clone().requires_grad_(True)
        expected_loss = kdlearn.kl_divergence(student_logits, case.teacher, T=case.T, reduction="none")
        expected_loss.sum().backward()
        expected_grad = student_logits.grad
        if close(loss, expected_loss, rtol=1e-4, atol=1e-5) and close(grad, expected_grad):
            continue
        hint = next((hint for mistake, hint in _kernel_mistakes(case)
                     if all(map(_matches, (loss, grad), _simulate(case, **mistake)))), None)
        hint = hint or _blame(case, loss, grad)
        if not close(loss, expected_loss, rtol=1e-4, atol=1e-5):
            raise Mismatch(f"For {case.what}, the loss of each row should be {show(expected_loss.detach())}, but "
                           f"your kernel stored {show(loss)}.", hint)
        raise Mismatch(f"For {case.what}, the loss is right but the gradient is not: it should be "
                       f"{show(expected_grad)}, and your kernel stored {show(grad)}.", hint)


kl_kernel = Exercise(
    "5.5", "the fused KL kernel: loss and gradient, from raw logits",
    hint="Follow online_softmax_kernel above: one program per row, and each tensor's row starts at row × that "
         "tensor's own stride. Pass 1 walks both rows block by block and folds each block into its side's running "
         "maximum and sum; pass 2 walks them again, turns each block into log-probabilities, adds up the terms "
         "and stores the block of the gradient. In a block that sticks out past the row's end, every load and "
         "store needs a mask, and a masked load a fill value that weighs nothing. The row's loss is stored once, "
         "after the loop.",
    run_checks=_check_kl_kernel,
)


# --- counting what kernels do ---------------------------------------------------------------------


class KernelWork:
    """What Triton kernels do inside ``with KernelWork() as work:``, counted as they run through the
    interpreter, element by element:

        loaded, stored    bytes that tl.load and tl.store move (entries a mask leaves out move nothing)
        distinct_loaded   bytes at distinct addresses among each launch's loads, summed over launches:
                          what the loads would cost if every second read within a launch hit a cache
        exps              exponentials (tl.exp, tl.exp2), which a GPU computes on its special-function units
        other_ops         the other floating-point operations: adds, multiplies, comparisons, selections,
                          and one per element of a reduction (tl.sum, tl.max)
        launches          kernel launches

    Arithmetic is counted lane by lane, the masked-off lanes of a block included (a GPU computes them
    too), and scalars count one each, so per-row and per-block work is included. The counts depend on
    the kernels' code and the tensors' shapes, not on the machine. The interpreter's own copies of the
    arguments (it moves their storages to the host and back) are hidden from PyTorch dispatch modes, so
    that a TorchDispatchMode counting PyTorch's operations around the block sees none of them.

    Kernels compiled for a GPU (``triton.jit`` without TRITON_INTERPRET) are counted too, on CPU tensors:
    inside the block, launching one runs an interpreted twin of it, and the compiled functions it calls
    (by name, or passed to it) are swapped for interpreted twins until the block ends. This relies on
    the interpreter's internals (Triton 3.x) and is meant for measuring, not for production code.
    """

    def __init__(self):
        self.loaded = self.stored = self.distinct_loaded = 0
        self.exps = self.other_ops = self.launches = 0
        self._addresses: list | None = None
        self._restore: list = []

    def __enter__(self) -> "KernelWork":
        try:
            self._count_in_the_interpreter()
            self._run_compiled_kernels_interpreted()
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for undo in reversed(self._restore):
            undo()
        self._restore = []

    def _patch(self, owner, name: str, replacement) -> None:
        original = getattr(owner, name)
        setattr(owner, name, replacement)
        self._restore.append(lambda: setattr(owner, name, original))

    def _count_in_the_interpreter(self) -> None:
        from torch.utils._python_dispatch import _disable_current_modes
        from triton.runtime import interpreter
        from triton.runtime.jit import JITFunction

        work = self
        builder, reduce_ops, executor = interpreter.InterpreterBuilder, interpreter.ReduceOps, interpreter.GridExecutor
        originals = {(cls, name): getattr(cls, name) for cls, name in [
            (builder, "create_masked_load"), (builder, "create_masked_store"), (builder, "unary_op"),
            (builder, "binary_op"), (builder, "ternary_op"), (reduce_ops, "sum"), (reduce_ops, "min_max"),
            (executor, "__call__")]}

        def element_bytes(pointers):
            return pointers.get_element_ty().primitive_bitwidth // 8

        def is_float(*handles):
            return any(h.data.dtype.kind == "f" for h in handles)

        def load(self, pointers, mask, *args, **kwargs):
            taken = np.broadcast_to(mask.data, pointers.data.shape)
            work.loaded += int(taken.sum()) * element_bytes(pointers)
            work._addresses.append((pointers.data[taken].ravel(), element_bytes(pointers)))
            return originals[builder, "create_masked_load"](self, pointers, mask, *args, **kwargs)

        def store(self, pointers, value, mask, *args, **kwargs):
            work.stored += int(np.broadcast_to(mask.data, pointers.data.shape).sum()) * element_bytes(pointers)
            return originals[builder, "create_masked_store"](self, pointers, value, mask, *args, **kwargs)

        def unary(self, arg, op):
            if op in (np.exp, np.exp2):
                work.exps += arg.data.size
            elif is_float(arg):
                work.other_ops += arg.data.size
            return originals[builder, "unary_op"](self, arg, op)

        def binary(self, lhs, rhs, op):
            if is_float(lhs, rhs):
                work.other_ops += int(np.prod(np.broadcast_shapes(lhs.data.shape, rhs.data.shape)))
            return originals[builder, "binary_op"](self, lhs, rhs, op)

        def ternary(self, a, b, c, op):
            out = originals[builder, "ternary_op"](self, a, b, c, op)
            if is_float(out):
                work.other_ops += out.data.size
            return out

        def reduce_sum(self, input):
            work.other_ops += input.handle.data.size
            return originals[reduce_ops, "sum"](self, input)

        def reduce_min_max(self, input, *args, **kwargs):
            work.other_ops += (input[0] if isinstance(input, tuple) else input).handle.data.size
            return originals[reduce_ops, "min_max"](self, input, *args, **kwargs)

        def launch(self, *args, **kwargs):
            def interpreted(value):   # a compiled device function passed to the kernel, as an interpreted twin
                return interpreter.InterpretedFunction(value.fn) if isinstance(value, JITFunction) else value

            args = [interpreted(value) for value in args]
            kwargs = {name: interpreted(value) for name, value in kwargs.items()}
            work.launches += 1
            work._addresses = []
            try:
                # numpy warns about the nan on the side of a tl.where that is then thrown away. The
                # interpreter copies the arguments' storages to the host and back with torch: that is
                # no work of the kernel's, so a TorchDispatchMode counting around the block must not see it.
                with np.errstate(all="ignore"), warnings.catch_warnings(), _disable_current_modes():
                    warnings.simplefilter("ignore", RuntimeWarning)
                    return originals[executor, "__call__"](self, *args, **kwargs)
            finally:
                by_size: dict = {}
                for addresses, size in work._addresses:
                    by_size.setdefault(size, []).append(addresses)
                work.distinct_loaded += sum(size * np.unique(np.concatenate(parts)).size
                                            for size, parts in by_size.items())
                work._addresses = None

        for (cls, name), replacement in {
                (builder, "create_masked_load"): load, (builder, "create_masked_store"): store,
                (builder, "unary_op"): unary, (builder, "binary_op"): binary, (builder, "ternary_op"): ternary,
                (reduce_ops, "sum"): reduce_sum, (reduce_ops, "min_max"): reduce_min_max,
                (executor, "__call__"): launch}.items():
            self._patch(cls, name, replacement)

    def _run_compiled_kernels_interpreted(self) -> None:
        import triton
        import triton.language.standard
        from triton.runtime.interpreter import InterpretedFunction
        from triton.runtime.jit import JITFunction, mangle_type

        mangle_type(torch.empty(1))  # its first call imports modules that must see the real triton.language
        swapped: set = set()
        twins: dict = {}

        def swap(namespace: dict) -> None:
            # Every compiled function in the namespace, and in the namespaces those come from, interpreted.
            if id(namespace) in swapped:
                return
            swapped.add(id(namespace))
            for name, value in list(namespace.items()):
                if isinstance(value, JITFunction):
                    namespace[name] = InterpretedFunction(value.fn)
                    self._restore.append(lambda namespace=namespace, name=name, value=value:
                                         namespace.__setitem__(name, value))
                    swap(value.fn.__globals__)

        def run(kernel, *args, grid, warmup, **kwargs):
            swap(kernel.fn.__globals__)   # the device functions it calls by name
            twin = twins.setdefault(id(kernel), InterpretedFunction(kernel.fn))   # a JITFunction hashes its code
            return twin.run(*args, grid=grid, warmup=warmup, **kwargs)

        # triton.language's own jitted helpers (tl.max, tl.sum, tl.zeros) are compiled ones too, then.
        swap(vars(triton.language))
        swap(vars(triton.language.standard))
        self._patch(JITFunction, "run", run)


# --- counting what a compiled kernel does ---------------------------------------------------------

_MACHINE_CODE = """
import collections, json, re, subprocess, sys, tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

import kernel_source

signature, constants, num_warps, capability = json.loads(sys.argv[1])
constexprs = {**constants, **kernel_source.functions}
compiled = triton.compile(
    ASTSource(kernel_source.kernel, {**signature, **{name: "constexpr" for name in constexprs}}, constexprs=constexprs),
    target=GPUTarget("cuda", capability, 32), options={"num_warps": num_warps})
with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
    cubin.write(compiled.asm["cubin"])
    cubin.flush()
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    sass = subprocess.run([str(cuobjdump), "-sass", cubin.name], capture_output=True, text=True, check=True).stdout
# An instruction line: /*0250*/  [@!P3]  MUFU.EX2 R16, R16 ;
opcode = re.compile(r"^\\s*/\\*[0-9a-f]+\\*/\\s+(?:@!?U?P[T0-9]+\\s+)?([A-Z][A-Z0-9_.]*)", re.MULTILINE)
print(json.dumps(collections.Counter(opcode.findall(sass))))
"""


def _plain_source(fn) -> str:
    """The source of ``fn`` without its decorators."""
    node = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
    node.decorator_list = []
    return ast.unparse(node)


def machine_code(kernel, signature: dict, constants: dict, functions: dict, num_warps: int = 4,
                 capability: int = 90) -> dict:
    """How often each instruction occurs in ``kernel`` compiled for an NVIDIA GPU of compute capability
    ``capability`` (90: an H100), counted in its machine code (SASS): {"MUFU.EX2": 130, "FFMA": ...}.

    No GPU is needed: Triton's compiler and NVIDIA's cuobjdump, both shipped with Triton, run on the CPU,
    in a subprocess without TRITON_INTERPRET. ``signature`` gives the type of each runtime argument
    ("*bf16", "i32", "fp32"), ``constants`` the compile-time numbers (BLOCK), ``functions`` the device
    functions the kernel receives as compile-time arguments. The kernel (and each function) may call
    triton.language and those arguments, nothing else: their sources are copied into a module of their own.
    Each instruction in a loop's body is counted once, however often the loop runs.
    """
    import json
    import os
    import subprocess
    import sys
    import tempfile

    names = {name: getattr(fn, "fn", fn).__name__ for name, fn in functions.items()}
    sources = [_plain_source(getattr(fn, "fn", fn)) for fn in [kernel, *functions.values()]]
    module = "\n\n".join(["import triton", "import triton.language as tl", *sources,
                          f"kernel = triton.jit({getattr(kernel, 'fn', kernel).__name__})",
                          "functions = {" + ", ".join(f"{name!r}: triton.jit({fn})" for name, fn in names.items())
                          + "}"]) + "\n"
    with tempfile.TemporaryDirectory() as folder:
        with open(os.path.join(folder, "kernel_source.py"), "w") as file:
            file.write(module)
        env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
        env["PYTHONPATH"] = os.pathsep.join([folder, env.get("PYTHONPATH", "")])
        result = subprocess.run([sys.executable, "-c", _MACHINE_CODE, json.dumps([signature, constants, num_warps,
                                                                                   capability])],
                                env=env, cwd=folder, capture_output=True, text=True, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(f"compiling the kernel failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])
