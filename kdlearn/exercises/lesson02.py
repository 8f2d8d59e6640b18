"""Checks for lesson 02, Hinton 2015 reproduced.

    from kdlearn.exercises import lesson02 as check
    check.gap_closed(gap_closed)
    check.distillation_step(distillation_step)

Exercise 2.1 is checked against the share of the gap computed from the mean errors, on a few
hand-made tables (the paper's, several seeds, distillation that hurt, no gap at all). Exercise 2.2
is checked by letting the learner's step update a tiny student with plain SGD and comparing its
new weights with the update that kdlearn.kd_loss's gradient gives. ``reference(name)`` gives
kdlearn's answer to an exercise, for the cells after it until the learner's passes
(``Exercise.passing_or``).
"""

from __future__ import annotations

import copy
import math
import statistics
from numbers import Real

import numpy as np
import torch

import kdlearn
from kdlearn import models
from kdlearn.exercises import Exercise, Mismatch, close, named_answer

# --- kdlearn's answers -------------------------------------------------------------------------


def _gap_closed(teacher_errors, scratch_errors, distilled_errors) -> float:
    """(mean scratch - mean distilled) / (mean scratch - mean teacher); nan when the two means are
    equal (no gap, so no share of it can be closed)."""
    teacher, scratch, distilled = (statistics.fmean(errors) for errors in
                                   (teacher_errors, scratch_errors, distilled_errors))
    if scratch == teacher:
        return float("nan")
    return (scratch - distilled) / (scratch - teacher)


def _distillation_step(student, teacher, optimizer, x, y, T, alpha) -> float:
    """One step of distillation on the batch (x, y); returns the batch loss before the step."""
    teacher.eval()  # no dropout: the teacher's soft targets are its best, deterministic guess
    with torch.no_grad():  # the teacher is fixed: no graph, no gradient into its weights
        teacher_logits = teacher(x)
    loss = kdlearn.kd_loss(student(x), teacher_logits, y, T=T, alpha=alpha)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    return loss.item()


_REFERENCES = {"gap_closed": _gap_closed, "distillation_step": _distillation_step}


def reference(name: str):
    """kdlearn's answer to exercise ``name`` ("gap_closed" or "distillation_step"), a plain function
    with the exercise's arguments."""
    return named_answer(_REFERENCES, name)


def _as_float(result, what: str) -> float:
    """The learner's result as a Python float, or a Mismatch saying what came back instead."""
    if isinstance(result, torch.Tensor) and result.numel() == 1:
        return float(result.detach())
    if isinstance(result, np.ndarray) and result.size == 1:
        return float(result.reshape(()))
    if isinstance(result, Real) and not isinstance(result, bool):
        return float(result)
    if result is None:
        raise Mismatch(f"Your function returned None for {what}.", "Did you forget the `return` statement?")
    raise Mismatch(f"Your function returned a {type(result).__name__} for {what}; one number was expected.")


def _same(a: float, b: float) -> bool:
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


# --- Exercise 2.1: the share of the gap that distillation closed --------------------------------


def _gap_cases():
    return [
        ([67], [146], [74], "the paper's single run: teacher 67, scratch 146, distilled 74 errors"),
        ([12, 12, 11], [15, 21, 16], [13, 14, 14], "three seeds: teacher [12, 12, 11], scratch [15, 21, 16], "
                                                   "distilled [13, 14, 14]"),
        ([10, 10], [20, 14], [12, 13], "two seeds: teacher [10, 10], scratch [20, 14], distilled [12, 13]"),
        ([10, 12], [16, 18], [19, 19], "distillation that hurt: teacher [10, 12], scratch [16, 18], "
                                       "distilled [19, 19]"),
        ([12, 14], [16, 18], [11, 11], "a student better than its teacher: teacher [12, 14], scratch [16, 18], "
                                       "distilled [11, 11]"),
    ]


def _check_gap_closed(answer) -> None:
    for teacher, scratch, distilled, what in _gap_cases():
        expected = _gap_closed(teacher, scratch, distilled)
        got = _as_float(answer(list(teacher), list(scratch), list(distilled)), f"{what}")
        if _same(got, expected):
            continue
        t, s, d = (statistics.fmean(e) for e in (teacher, scratch, distilled))
        per_seed = statistics.fmean((si - di) / (si - ti) for ti, si, di in zip(teacher, scratch, distilled)
                                    if si != ti) if len(teacher) > 1 else math.nan
        mistakes = [
            (100 * expected, "Return a fraction (0.91 for the paper), not a percentage: the lesson formats it."),
            (1 - expected, "That is the share of the gap still open, measured from the teacher; the share "
                           "closed is measured from the scratch student."),
            (-expected, "The sign is flipped: a distilled student with fewer errors than the scratch one closed a "
                        "positive share of the gap."),
            ((s - d) / s, "That is the improvement relative to the scratch student's errors; divide by the gap, "
                          "scratch - teacher."),
            (per_seed, "Average the errors over the seeds first, then take one ratio of the means: a ratio per "
                       "seed is at the mercy of a seed whose gap is tiny."),
            (min(max(expected, 0.0), 1.0), "Do not clip the result to [0, 1]: below 0 says distillation hurt, "
                                          "above 1 that the student beat its teacher; both are worth seeing."),
        ]
        hint = next((h for wrong, h in mistakes if not math.isnan(wrong) and _same(got, wrong)), None)
        raise Mismatch(f"For {what} the answer should be {expected:.4g}, but your function returned {got:.4g}.",
                       hint)
    # The degenerate case: the same mean errors for teacher and scratch student.
    what = "no gap: teacher [10, 12], scratch [11, 11], distilled [10, 11]"
    convention = ("When the scratch student's mean errors equal the teacher's there is no gap to close: return "
                  "float('nan'), checking for that case before you divide.")
    try:
        got = _as_float(answer([10, 12], [11, 11], [10, 11]), what)
    except ZeroDivisionError:
        raise Mismatch(f"For {what} your function raised ZeroDivisionError.", convention) from None
    if not math.isnan(got):
        raise Mismatch(f"For {what} the answer should be nan, but your function returned {got:.4g}.", convention)


gap_closed = Exercise(
    "2.1", "the share of the gap that distillation closed",
    hint="Average each list over the seeds first. Then compare two distances, both measured from the scratch "
         "student's mean: how far distillation moved it, and how far the teacher is. Mind the case where the "
         "second distance is zero.",
    run_checks=_check_gap_closed,
)


# --- Exercise 2.2: one step of distillation ----------------------------------------------------

# Plain SGD, so that the expected new weights are w - lr * gradient, and a large rate, so that every
# mistake moves them visibly.
_STEP_LR = 0.5
# The gradient a previous step left behind in the student: a step that forgets zero_grad() adds it.
_STALE_GRADIENT = 0.3


def _step_setup(seed: int):
    """A teacher with dropout, handed over in train mode (as it comes out of training), a student with
    a stale gradient, an SGD optimizer over the student, and a batch."""
    generator = torch.Generator().manual_seed(seed)
    teacher = models.mlp(16, (32,), 4, dropout=0.5, seed=seed)
    student = models.mlp(16, (8,), 4, seed=seed + 1)
    for parameter in student.parameters():
        parameter.grad = torch.full_like(parameter, _STALE_GRADIENT)
    x = torch.randn(12, 16, generator=generator)
    y = torch.randint(0, 4, (12,), generator=generator)
    return teacher, student, torch.optim.SGD(student.parameters(), lr=_STEP_LR), x, y


def _updated(student, teacher, x, y, *, stale: bool = False, **kd_options):
    """The student's weights after one SGD step on kd_loss(**kd_options), and that loss."""
    student = copy.deepcopy(student)
    teacher = copy.deepcopy(teacher).eval()
    with torch.no_grad():
        teacher_logits = teacher(x)
    loss = kdlearn.kd_loss(student(x), teacher_logits, y, **kd_options)
    gradients = torch.autograd.grad(loss, list(student.parameters()))
    with torch.no_grad():
        weights = [p - _STEP_LR * (g + (_STALE_GRADIENT if stale else 0.0))
                   for p, g in zip(student.parameters(), gradients)]
    return weights, loss.item()


def _same_weights(got, expected) -> bool:
    return all(close(g, e, rtol=1e-4, atol=1e-6) for g, e in zip(got, expected))


def _check_distillation_step(answer) -> None:
    for seed, T, alpha in [(20, 4.0, 0.9), (21, 2.0, 0.3)]:
        what = f"a tiny student and teacher at T={T:g}, alpha={alpha:g}"
        teacher, student, optimizer, x, y = _step_setup(seed)
        student_before, teacher_before = copy.deepcopy(student), copy.deepcopy(teacher)
        expected, expected_loss = _updated(student, teacher, x, y, T=T, alpha=alpha)
        # The teacher's dropout draws from the global RNG: fork it, so that the check leaves the
        # notebook's random state as it was and gives the same verdict on every run.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            returned = answer(student, teacher, optimizer, x.clone(), y.clone(), T, alpha)
        after = [p.detach() for p in student.parameters()]

        if any(p.grad is not None for p in teacher.parameters()):
            raise Mismatch(f"For {what} your step left gradients in the teacher's weights.",
                           "Compute the teacher's logits inside `with torch.no_grad():` so that backward() "
                           "reaches the student only; the teacher is fixed, and its graph costs memory.")
        if not _same_weights(teacher.parameters(), teacher_before.parameters()):
            raise Mismatch(f"For {what} your step changed the teacher's weights.",
                           "Only the student learns: step the optimizer you were given, which holds the "
                           "student's parameters alone.")
        if _same_weights(after, expected):
            loss = _as_float(returned, what)
            if not math.isclose(loss, expected_loss, rel_tol=1e-4, abs_tol=1e-6):
                raise Mismatch(f"For {what} your step updated the student correctly but returned {loss:.4g}; "
                               f"the batch loss (before the step) is {expected_loss:.4g}.",
                               "Return loss.item(), the loss you called backward() on.")
            continue
        if _same_weights(after, student_before.parameters()):
            hint = "The student's weights did not move: call optimizer.step() after loss.backward()."
        elif teacher.training:
            hint = ("The teacher was still in train mode, so its dropout made its soft targets noisy: call "
                    "teacher.eval() before computing its logits.")
        else:
            mistakes = [
                (_updated(student_before, teacher_before, x, y, T=T, alpha=alpha, stale=True)[0],
                 "The step added the gradient a previous step had left behind: call optimizer.zero_grad() "
                 "before loss.backward()."),
                (_updated(student_before, teacher_before, x, y, T=T, alpha=alpha, t_squared=False)[0],
                 "The soft term lost its T²: kdlearn.kd_loss multiplies it by T², as lesson 01 explains; "
                 "use it rather than a KL of your own."),
                (_updated(student_before, teacher_before, x, y, T=T, alpha=1 - alpha)[0],
                 "The weights are swapped: alpha weighs the soft term, 1 - alpha the hard labels; pass "
                 "alpha=alpha to kd_loss."),
                (_updated(student_before, teacher_before, x, y, T=1.0, alpha=alpha)[0],
                 "The temperature seems unused: pass T=T to kd_loss."),
            ]
            hint = next((h for wrong, h in mistakes if _same_weights(after, wrong)), None)
        raise Mismatch(f"For {what} the student's weights after your step differ from those after one step "
                       f"on kdlearn.kd_loss's gradient.", hint)


distillation_step = Exercise(
    "2.2", "one step of distillation",
    hint="Three things happen in a step. The teacher only gives targets: switch off what makes it random, and "
         "keep autograd away from it. The loss is the one lesson 01 built (kdlearn has it). Then one clean "
         "optimiser step for the student: think of what the previous step left behind in its gradients, and "
         "return the loss as a plain number.",
    run_checks=_check_distillation_step,
)
