"""Checks for lesson 05, write the kernel.

    from kdlearn.exercises import lesson05 as check
    check.softmax_row(softmax_row)
    check.online_update(online_update)
    check.kl_terms(kl_terms)
    check.kl_gradient(kl_gradient)

Each exercise is a ``@triton.jit`` device function: the arithmetic that the lesson's kernels do on
one block of a row. A check launches a small kernel around it (a *harness*: load a few rows, call
the learner's function, store what it returns) and compares what was stored with kdlearn's losses
and their autograd gradients.

The harness runs the way the learner's function was made. Without a GPU the lesson switches on
Triton's interpreter, ``triton.jit`` gives an interpreted function, and the harness runs on CPU
tensors; a mistake is then an ordinary Python exception, which the interpreter wraps in
``InterpreterError`` once per call level and ``_launch`` unwraps, so that the stub's
``NotImplementedError`` reads "not attempted yet". With a GPU the function is compiled, and so is
the harness, on CUDA tensors; a compiler cannot compile the stub's ``raise``, so the stub is
recognised from the function's source before anything is compiled.

``reference(name)`` gives kdlearn's answer to an exercise as a ``@triton.jit`` function, for the
cells after an exercise until the learner's passes (``Exercise.passing_or``).
"""

from __future__ import annotations

import ast
import inspect
import math
import textwrap

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


_REFERENCES = {"softmax_row": _softmax_row, "online_update": _online_update, "kl_terms": _kl_terms,
               "kl_gradient": _kl_gradient}
_jitted: dict = {}


def reference(name: str):
    """kdlearn's answer to exercise ``name`` (one of softmax_row, online_update, kl_terms,
    kl_gradient), as a @triton.jit function a kernel can call."""
    answer = named_answer(_REFERENCES, name)
    if name not in _jitted:
        import triton

        _jitted[name] = triton.jit(answer)
    return _jitted[name]


# --- running a learner's device function inside a harness kernel --------------------------------


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
                       "Without a GPU, Triton's interpreter must be on before Triton is imported: restart the "
                       "kernel and run the lesson from the top (its first cell sets TRITON_INTERPRET=1).")
    return True


_harnesses: dict = {}


def _launch(harness, rows: int, compiled: bool, *args, **kwargs) -> None:
    """Run ``harness`` on ``rows`` programs, interpreted on the CPU or compiled on the GPU; tensor
    arguments are copied to the GPU and back. The learner's own error is reported, unwrapped."""
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import InterpreterError
    from triton.runtime.interpreter import InterpretedFunction
    from triton.runtime.jit import JITFunction

    if (harness, compiled) not in _harnesses:
        _harnesses[harness, compiled] = (JITFunction if compiled else InterpretedFunction)(harness)
    device = "cuda" if compiled else "cpu"
    on_device = [a.to(device) if isinstance(a, torch.Tensor) else a for a in args]
    try:
        # The interpreter computes with numpy, which warns about the nan that a tl.where then discards.
        with np.errstate(all="ignore"):
            _harnesses[harness, compiled][(rows,)](*on_device, **kwargs)
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
                           "returned.", "Return two values, the new maximum and the new sum: `return new_m, new_s`.") from None
        raise cause from None
    for original, copy in zip(args, on_device):
        if isinstance(original, torch.Tensor) and copy is not original:
            original.copy_(copy)


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
            (torch.softmax(x, dim=-1), "The temperature seems unused: multiply the logits by inv_T first."),
            (torch.softmax(x * T, dim=-1), "Multiply by inv_T = 1/T; multiplying by T sharpens instead of softening."),
            (exps, "Divide by the sum of the exponentials (tl.sum(..., axis=0)), so that the row adds up to 1."),
        ]
        expect_close(out, kdlearn.soft_targets(x, T), what, mistakes)


softmax_row = Exercise(
    "5.1", "softmax of one row in one block",
    hint="z = x * inv_T; subtract tl.max(z, axis=0); e = tl.exp(z); return e / tl.sum(e, axis=0). The entries past "
         "the row's end arrive as -inf, and exp turns them into 0.",
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
        (s + fresh, "When the maximum grows, the old sum still counts exp(value - m) against the old maximum: "
                    "multiply it by exp(m - new_m) before adding the block's terms."),
        (s * math.exp(new_m - m) + fresh, "The old sum is rescaled the wrong way round: the factor is "
                                          "exp(m - new_m), at most 1, since the old terms shrink relative to "
                                          "a larger maximum."),
        (s * math.exp(m - new_m) + own_max, "The block's exponentials must be taken against the new running "
                                            "maximum new_m, not against the block's own maximum."),
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
            _one_per_row(new_m, what, "new maximum", "Reduce the block to one number: tl.max(z, axis=0).")[0],
            _one_per_row(new_s, what, "new sum", "Add the block's exponentials up: tl.sum(..., axis=0).")[0],
        ])
        expected = torch.tensor(_online_expected(m, s, z))
        if close(got, expected):
            continue
        mistakes = [(torch.tensor([expected[0].item(), wrong]), hint) for wrong, hint in _online_mistakes(m, s, z)]
        mistakes.append((expected.flip(0), "Return the maximum first, then the sum: `return new_m, new_s`."))
        hint = next((h for wrong, h in mistakes if close(got, wrong)), None)
        if hint is None and torch.isnan(got).any() and z.max().item() == NEG_INF:
            hint = ("With everything so far -inf, new_m is -inf and exp(m - new_m) is exp(-inf - -inf) = exp(nan). "
                    "Subtract a shift that is 0 when new_m is -inf: tl.where(new_m == float('-inf'), 0.0, new_m).")
        raise Mismatch(f"For {what}, (new_m, new_s) should be {show(expected)}, but your function returned "
                       f"{show(got)}.", hint)


online_update = Exercise(
    "5.2", "online softmax update",
    hint="new_m = tl.maximum(m, tl.max(z, axis=0)); new_s = s * tl.exp(m - new_m) + tl.sum(tl.exp(z - new_m), "
         "axis=0), with new_m replaced by 0 inside the exponents while it is -inf.",
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
                           "There p * (log p - log q) is 0 * (-inf - log q), which is nan, whereas the term is 0 "
                           "by convention: tl.where(p > 0, p * (log_p - log_q), 0.0).")
        mistakes = [
            (torch.where(q > 0, q * (log_q - log_p), 0.0),
             "That is KL(q || p), the reverse direction. The forward KL weighs by the teacher: p * (log p - log q)."),
            (torch.where(p > 0, p * (log_q - log_p), 0.0), "The sign is flipped: log p - log q, not log q - log p."),
            (log_p - log_q, "Weigh each log-ratio by the teacher's probability p = exp(log p)."),
            (expected.sum(dim=-1, keepdim=True).expand_as(expected),
             "Return one term per entry of the block, not their sum: the kernel adds the terms up itself."),
        ]
        expect_close(terms, expected, f"the terms of {what}", mistakes)
        row_sums = _one_per_row(sums, what, "sum", "")
        kl = kdlearn.kl_divergence(student, teacher, T=T, reduction="none")
        if torch.isnan(row_sums).any():
            raise Mismatch(f"For {what} the terms inside the row are right, but past the row's end (where the "
                           f"kernel loads -inf on both sides) they add up to {show(row_sums)}.",
                           "Past the end p = 0: the term must be 0 there, not 0 * (-inf - -inf) = nan. "
                           "Use tl.where(p > 0, ..., 0.0).")
        expect_close(row_sums, kl, f"the sum of the terms over {what} (kdlearn.kl_divergence)")


kl_terms = Exercise(
    "5.3", "the terms of KL(p || q)",
    hint="p = tl.exp(log_p); return tl.where(p > 0, p * (log_p - log_q), 0.0): the term is 0 wherever p is.",
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
            ((p - q) / T, "The sign is flipped: the gradient is (q - p) / T, positive where the student puts more "
                          "mass than the teacher, so that a descent step lowers those logits."),
            (q - p, "The factor 1/T is missing: the student's logits are multiplied by inv_T before the softmax, "
                    "and the chain rule brings that factor out (multiply by inv_T)."),
            ((q - p) * T, "That is T * (q - p), the gradient of T² · KL (kd_loss's soft term); the divergence "
                          "itself has no T², so its gradient is (q - p) * inv_T."),
            ((q - p) / T ** 2, "One factor inv_T only: the divergence has no T² to divide by."),
        ]
        expect_close(grad, logits.grad, f"the gradient on {what}", mistakes)


kl_gradient = Exercise(
    "5.4", "the gradient of KL(p || q) with respect to the student's logits",
    hint="Per entry, d KL / d s_v = (q_v - p_v) / T: return (q - p) * inv_T.",
    run_checks=_check_kl_gradient,
)
