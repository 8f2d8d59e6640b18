"""Checks for lesson 04, why T², and the high-temperature limit.

    from kdlearn.exercises import lesson04 as check
    check.soft_term_gradient(soft_term_gradient)
    check.log_log_slope(log_log_slope)
    check.logit_matching_gradient(logit_matching_gradient)

The two gradients are checked against autograd: of kdlearn.kd_loss's soft term (alpha=1,
reduction="sum", so that each row gets the gradient of its own loss), and of the squared error
between the row-centred logits. ``reference(name)`` gives kdlearn's answer to an exercise, for the
cells after it until the learner's passes (``Exercise.passing_or``).
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch

import kdlearn
from kdlearn.exercises import Exercise, Mismatch, as_tensor, expect_close, named_answer

# --- kdlearn's answers -------------------------------------------------------------------------


def _soft_term_gradient(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float) -> torch.Tensor:
    """Per row, the gradient of T² KL(p_T || q_T) with respect to that row's student logits, by autograd."""
    logits = student_logits.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        kdlearn.kd_loss(logits, teacher_logits.detach(), T=T, alpha=1.0, reduction="sum", backend="torch").backward()
    return logits.grad


def _centred(logits: torch.Tensor) -> torch.Tensor:
    return logits - logits.mean(dim=-1, keepdim=True)


def _logit_matching_gradient(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """Per row, the gradient of (1/2V) ||(z - mean z) - (v - mean v)||² with respect to z, by autograd."""
    logits = student_logits.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        gap = _centred(logits) - _centred(teacher_logits.detach())
        (gap.pow(2).sum() / (2 * logits.shape[-1])).backward()
    return logits.grad


def _log_log_slope(x, y) -> float:
    """The slope of the least-squares line through the points (log x, log y)."""
    log_x = np.log(np.asarray(x, dtype=np.float64))
    log_y = np.log(np.asarray(y, dtype=np.float64))
    return float(np.polyfit(log_x, log_y, 1)[0])


_REFERENCES = {"soft_term_gradient": _soft_term_gradient, "log_log_slope": _log_log_slope,
               "logit_matching_gradient": _logit_matching_gradient}


def reference(name: str):
    """kdlearn's answer to exercise ``name`` (one of soft_term_gradient, log_log_slope,
    logit_matching_gradient), a plain function with the exercise's arguments."""
    return named_answer(_REFERENCES, name)


def _gradient_result(got, expected: torch.Tensor, what: str) -> torch.Tensor:
    """The learner's gradient as a tensor, or a Mismatch for a loss or a wrongly shaped result."""
    got = as_tensor(got, what)
    if got.dim() == 0 and expected.dim() > 0:
        raise Mismatch(f"For {what} your function returned one number, {got.item():.4g}; a gradient has one "
                       f"entry per logit, shape {tuple(expected.shape)}.",
                       "Return the gradient itself (a tensor shaped like student_logits), not the loss.")
    return got


# --- Exercise 4.1: the gradient of the soft term -----------------------------------------------


def _soft_cases():
    generator = torch.Generator().manual_seed(41)
    student = torch.randn(6, 10, generator=generator) * 2 + 1
    teacher = torch.randn(6, 10, generator=generator) * 4
    return [
        (torch.tensor([2.0, 1.0, 0.1, -1.0, 0.5]), torch.tensor([0.5, 3.0, -1.0, 0.0, 1.0]), 4.0,
         "the row of logits [2, 1, 0.1, -1, 0.5] (student) and [0.5, 3, -1, 0, 1] (teacher) at T=4"),
        (student, teacher, 2.0, "a batch of 6 rows of 10 logits at T=2"),
        (student, teacher, 20.0, "a batch of 6 rows of 10 logits at T=20"),
        (student, teacher, 0.5, "a batch of 6 rows of 10 logits at T=0.5"),
        (torch.tensor([[1000.0, 999.0, 0.0]]), torch.tensor([[0.0, 1000.0, 998.0]]), 2.0,
         "the large logits [1000, 999, 0] (student) and [0, 1000, 998] (teacher) at T=2"),
        (student.double() * 3, teacher.double() * 3, 1000.0, "6 rows of 10 float64 logits at T=1000"),
    ]


def _check_soft_term_gradient(answer) -> None:
    for student, teacher, T, what in _soft_cases():
        expected = _soft_term_gradient(student, teacher, T)
        got = _gradient_result(answer(student.clone(), teacher.clone(), T), expected, what)
        if student.dtype == torch.float64 and got.dtype != torch.float64:
            raise Mismatch(f"For {what} your function returned {got.dtype}; float64 logits should give a float64 "
                           f"gradient.", "Keep the logits' own dtype (no .float()): at a high T the differences "
                                         "q - p are tiny, and the lesson measures them in float64.")
        q, p = torch.softmax(student / T, dim=-1), torch.softmax(teacher / T, dim=-1)
        mistakes = [
            (T * (p - q), "The sign is flipped: the gradient is T (q - p), positive where the student puts more "
                          "probability than the teacher, so that a descent step lowers those logits."),
            (q - p, "The factor T is missing: T² from the loss times 1/T from the chain rule (the logits are "
                    "divided by T before the softmax) leaves T (q - p)."),
            ((q - p) / T, "That is the gradient of KL(p_T || q_T) alone, (q - p) / T. The soft term is "
                          "T² times the KL, so its gradient is T² (q - p) / T = T (q - p)."),
            (T * T * (q - p), "One factor T too many: differentiating softmax(z / T) with respect to z brings a "
                              "factor 1/T, so T² · (1/T) leaves T (q - p)."),
            (T * (torch.softmax(student, dim=-1) - torch.softmax(teacher, dim=-1)),
             "The probabilities are at temperature T: q = softmax(student_logits / T), "
             "p = softmax(teacher_logits / T)."),
            (T * (q - p) / student.shape[0], "Return each row's own gradient, without dividing by the number of "
                                             "rows (kd_loss's mean over the rows does that; this function does not)."),
        ]
        if student.dim() > 1:
            mistakes.append((T * (torch.softmax(student / T, dim=0) - torch.softmax(teacher / T, dim=0)),
                             "You normalised down the columns, across the rows of the batch: each row is one "
                             "distribution, so the softmax runs over the last dimension, the classes."))
        expect_close(got, expected, what, mistakes)


soft_term_gradient = Exercise(
    "4.1", "the gradient of the soft term",
    hint="Follow the four steps of the derivation above: the KL's gradient with respect to the scaled logits "
         "(what the log-sum-exp gives), then the chain rule through the division by T, then the factor T² of "
         "the loss. Both distributions are softmaxes at temperature T, one per row, over its classes.",
    run_checks=_check_soft_term_gradient,
)


# --- Exercise 4.2: the slope of a power law on log-log axes -------------------------------------


def _slope_cases():
    generator = torch.Generator().manual_seed(42)
    exact = torch.logspace(0, 2, 9, dtype=torch.float64)
    bending = torch.tensor([1.0, 2.0, 4.0, 10.0, 30.0, 100.0, 300.0, 1000.0], dtype=torch.float64)
    noisy = torch.logspace(0, 3, 12, dtype=torch.float64)
    noise = torch.exp(0.2 * torch.randn(12, generator=generator, dtype=torch.float64))
    return [
        (exact, 3.0 * exact ** -2.0, "the 9 points of y = 3 / x² from x = 1 to 100"),
        (bending, 0.05 + 2.0 / bending ** 2, "8 points of y = 0.05 + 2 / x², which bends from slope -2 to level"),
        (noisy, 5.0 / noisy * noise, "12 points scattered around y = 5 / x"),
    ]


def _as_number(result, what: str) -> torch.Tensor:
    """The learner's slope as a 0-d float64 tensor, or a Mismatch saying what came back instead."""
    count = (len(result) if isinstance(result, (tuple, list)) else result.numel() if isinstance(result, torch.Tensor)
             else result.size if isinstance(result, np.ndarray) else 1)
    if count != 1:
        raise Mismatch(f"For {what} your function returned {count} values; one number, the slope, was "
                       f"expected.", "Return the slope alone: numpy.polyfit(log_x, log_y, 1) gives "
                                     "[slope, intercept], so take its first entry.")
    if isinstance(result, torch.Tensor):
        return result.detach().to(torch.float64).reshape(())
    if isinstance(result, np.ndarray):
        return torch.tensor(float(result.reshape(())), dtype=torch.float64)
    if isinstance(result, Real) and not isinstance(result, bool):
        return torch.tensor(float(result), dtype=torch.float64)
    if result is None:
        as_tensor(result, what)  # "did you forget the `return`?"
    raise Mismatch(f"Your function returned a {type(result).__name__} for {what}; a number was expected.")


def _check_log_log_slope(answer) -> None:
    for x, y, what in _slope_cases():
        expected = torch.tensor(_log_log_slope(x, y), dtype=torch.float64)
        got = _as_number(answer(x.clone(), y.clone()), what)
        log_x, log_y = np.log(x.numpy()), np.log(y.numpy())
        fit = np.polyfit(log_x, log_y, 1)
        mistakes = [
            (fit[1], "That is the intercept, log c in log y = log c + k log x; return the slope k."),
            ((log_y[-1] - log_y[0]) / (log_x[-1] - log_x[0]),
             "That is the slope between the first and the last point; fit a line through every point "
             "(least squares), so that no single point decides."),
            (np.polyfit(x.numpy(), y.numpy(), 1)[0], "Fit a line to the logarithms: log y against log x."),
            (np.polyfit(x.numpy(), log_y, 1)[0], "Take the logarithm of x as well: a power law is a straight line "
                                                 "in log y against log x."),
            (np.polyfit(log_x, log_y / math.log(10), 1)[0], "Use the same logarithm on both axes (torch.log, "
                                                            "base e, for both; or log10 for both)."),
            (np.polyfit(log_x / math.log(10), log_y, 1)[0], "Use the same logarithm on both axes (torch.log, "
                                                            "base e, for both; or log10 for both)."),
            (np.polyfit(log_y, log_x, 1)[0], "Fit log y against log x, not log x against log y: the slope "
                                             "is d log y / d log x."),
        ]
        expect_close(got, expected, what, [(torch.tensor(float(wrong), dtype=torch.float64), hint)
                                           for wrong, hint in mistakes])


log_log_slope = Exercise(
    "4.2", "the slope of a power law on log-log axes",
    hint="A power law y = c x^k is a straight line once both axes are logarithms, and k is its slope: take "
         "the logarithms of x and of y, then fit one straight line through all the points by least squares.",
    run_checks=_check_log_log_slope,
)


# --- Exercise 4.3: the gradient of matching logits ----------------------------------------------


def _matching_cases():
    generator = torch.Generator().manual_seed(43)
    student = torch.randn(6, 10, generator=generator) * 2 + torch.randn(6, 1, generator=generator) * 3
    teacher = torch.randn(6, 10, generator=generator) * 4 + 5
    return [
        (torch.tensor([5.0, 4.0, 3.1, 2.0]), torch.tensor([0.5, 3.0, -1.0, 0.0]),
         "the row of logits [5, 4, 3.1, 2] (student, mean 3.525) and [0.5, 3, -1, 0] (teacher, mean 0.625)"),
        (student, teacher, "a batch of 6 rows of 10 logits, each row with its own mean"),
    ]


def _check_logit_matching_gradient(answer) -> None:
    for student, teacher, what in _matching_cases():
        expected = _logit_matching_gradient(student, teacher)
        got = _gradient_result(answer(student.clone(), teacher.clone()), expected, what)
        V = student.shape[-1]
        gap = _centred(student) - _centred(teacher)
        mistakes = [
            ((student - teacher) / V, "Remove each row's mean from both sides: softmax ignores a constant added to a "
                                      "row, so the distillation gradient never sees the means, and the logit "
                                      "matching it tends to must not either."),
            ((_centred(student) - teacher) / V, "Remove the teacher's mean as well as the student's."),
            ((student - _centred(teacher)) / V, "Remove the student's mean as well as the teacher's."),
            (gap / V ** 2, "You divided by V twice: the 1/(2V) in front of the loss, times the 2 that the square "
                           "brings down, leaves a single factor 1/V."),
            (gap, "Divide by V, the number of classes: the loss is (1/(2V)) times the sum of squares."),
            (gap / (2 * V), "The 2 that the square brings down cancels the 1/2 of 1/(2V): divide by V only."),
            (-gap / V, "The sign is flipped: the gradient is positive where the student's (centred) logit is above "
                       "the teacher's, so that a descent step lowers it."),
        ]
        if student.dim() > 1:
            mistakes += [
                ((student - student.mean(dim=0) - (teacher - teacher.mean(dim=0))) / V,
                 "You took the mean down the columns, across the rows of the batch: each row needs its own mean, "
                 "over its classes (the last dimension)."),
                ((student - student.mean() - (teacher - teacher.mean())) / V,
                 "You removed one mean for the whole batch: each row needs its own mean, over its classes, not "
                 "the mean of the whole batch."),
                (gap / student.shape[0], "You divided by the number of rows: V is the number of classes, the size "
                                         "of the last dimension."),
            ]
        expect_close(got, expected, what, mistakes)


logit_matching_gradient = Exercise(
    "4.3", "the gradient of matching zero-mean logits",
    hint="The derivation above gives the gradient in terms of d, the difference between the two rows once each "
         "is centred on its own mean over the classes; the factor in front comes from the 1/(2V) of E and the 2 "
         "that the square brings down.",
    run_checks=_check_logit_matching_gradient,
)
