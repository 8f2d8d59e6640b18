"""Lesson 04's checks, beyond what tests/test_exercises.py proves for every lesson.

Here: the common mistakes get the hint that names them, never a traceback; the ways of returning
a slope that a learner may reasonably choose are accepted; kdlearn's reference answers (the
fallbacks the lesson uses until the learner's pass) pass, and agree with the closed forms and the
high-temperature limit that the lesson derives.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import kdlearn
from kdlearn.exercises import CORRECT, lesson04
from tests.wrong_answers import assert_caught, wrong

EXERCISES = ("soft_term_gradient", "log_log_slope", "logit_matching_gradient")


def soft(logits, T, dim=-1):
    return torch.softmax(logits / T, dim=dim)


def centred(logits, dim=-1):
    return logits - logits.mean(dim=dim, keepdim=True)


# --- Exercise 4.1: right and wrong gradients of the soft term -----------------------------------


def sg_right(z, v, T):
    return T * (soft(z, T) - soft(v, T))


def sg_sign_flipped(z, v, T):
    return T * (soft(v, T) - soft(z, T))


def sg_without_T(z, v, T):
    return soft(z, T) - soft(v, T)


def sg_over_T(z, v, T):
    return (soft(z, T) - soft(v, T)) / T


def sg_T_squared(z, v, T):
    return T * T * (soft(z, T) - soft(v, T))


def sg_probabilities_at_T_1(z, v, T):
    return T * (soft(z, 1.0) - soft(v, 1.0))


def sg_batch_mean(z, v, T):
    return T * (soft(z, T) - soft(v, T)) / z.shape[0]


def sg_dim_0(z, v, T):
    return T * (soft(z, T, dim=0) - soft(v, T, dim=0))


def sg_naive_exp(z, v, T):
    q, p = torch.exp(z / T), torch.exp(v / T)
    return T * (q / q.sum(dim=-1, keepdim=True) - p / p.sum(dim=-1, keepdim=True))


def sg_returns_the_loss(z, v, T):
    return kdlearn.kd_loss(z, v, T=T, alpha=1.0)


def sg_float32(z, v, T):
    return sg_right(z.float(), v.float(), T)


def sg_no_return(z, v, T):
    sg_right(z, v, T)


def sg_raises(z, v, T):
    return z + "a string"


# --- Exercise 4.2: right and wrong slopes --------------------------------------------------------


def slope_right(x, y):
    return float(np.polyfit(np.log(x.numpy()), np.log(y.numpy()), 1)[0])


def slope_as_tensor(x, y):
    a, b = torch.log(x), torch.log(y)
    return ((a - a.mean()) * (b - b.mean())).sum() / ((a - a.mean()) ** 2).sum()


def slope_log10_both(x, y):
    return np.polyfit(np.log10(x.numpy()), np.log10(y.numpy()), 1)[0]   # a numpy float64


def slope_lstsq_one_element(x, y):
    design = torch.stack([torch.log(x), torch.ones_like(x)], dim=1)
    return torch.linalg.lstsq(design, torch.log(y).unsqueeze(1)).solution[0]   # shape (1,)


def slope_intercept(x, y):
    return float(np.polyfit(np.log(x.numpy()), np.log(y.numpy()), 1)[1])


def slope_endpoints(x, y):
    return math.log(y[-1] / y[0]) / math.log(x[-1] / x[0])


def slope_without_logs(x, y):
    return float(np.polyfit(x.numpy(), y.numpy(), 1)[0])


def slope_log_y_only(x, y):
    return float(np.polyfit(x.numpy(), np.log(y.numpy()), 1)[0])


def slope_log10_y_ln_x(x, y):
    return float(np.polyfit(np.log(x.numpy()), np.log10(y.numpy()), 1)[0])


def slope_ln_y_log10_x(x, y):
    return float(np.polyfit(np.log10(x.numpy()), np.log(y.numpy()), 1)[0])


def slope_swapped(x, y):
    return float(np.polyfit(np.log(y.numpy()), np.log(x.numpy()), 1)[0])


def slope_and_intercept(x, y):
    return np.polyfit(np.log(x.numpy()), np.log(y.numpy()), 1)


def slope_as_text(x, y):
    return f"{slope_right(x, y):.3f}"


def slope_no_return(x, y):
    slope_right(x, y)


# --- Exercise 4.3: right and wrong logit-matching gradients --------------------------------------


def lm_right(z, v):
    return (centred(z) - centred(v)) / z.shape[-1]


def lm_means_kept(z, v):
    return (z - v) / z.shape[-1]


def lm_student_mean_only(z, v):
    return (centred(z) - v) / z.shape[-1]


def lm_teacher_mean_only(z, v):
    return (z - centred(v)) / z.shape[-1]


def lm_over_V_squared(z, v):
    return (centred(z) - centred(v)) / z.shape[-1] ** 2


def lm_without_V(z, v):
    return centred(z) - centred(v)


def lm_over_2V(z, v):
    return (centred(z) - centred(v)) / (2 * z.shape[-1])


def lm_sign_flipped(z, v):
    return (centred(v) - centred(z)) / z.shape[-1]


def lm_dim_0(z, v):
    return (centred(z, dim=0) - centred(v, dim=0)) / z.shape[-1]


def lm_batch_mean(z, v):
    return (z - z.mean() - (v - v.mean())) / z.shape[-1]


def lm_V_from_shape_0(z, v):
    return (centred(z) - centred(v)) / z.shape[0]


def lm_returns_the_loss(z, v):
    return (centred(z) - centred(v)).pow(2).sum() / (2 * z.shape[-1])



WRONG_ANSWERS = [
    wrong(lesson04.soft_term_gradient, sg_sign_flipped, "sign is flipped"),
    wrong(lesson04.soft_term_gradient, sg_without_T, "factor T is missing"),
    wrong(lesson04.soft_term_gradient, sg_over_T, "gradient of KL(p_T || q_T) alone"),
    wrong(lesson04.soft_term_gradient, sg_T_squared, "One factor T too many"),
    wrong(lesson04.soft_term_gradient, sg_probabilities_at_T_1, "probabilities are at temperature T"),
    wrong(lesson04.soft_term_gradient, sg_batch_mean, "without dividing by the number of rows"),
    wrong(lesson04.soft_term_gradient, sg_dim_0, "the last dimension, the classes", detail="a batch of 6 rows"),
    wrong(lesson04.soft_term_gradient, sg_naive_exp, "NaN or inf", detail="large logits"),
    wrong(lesson04.soft_term_gradient, sg_returns_the_loss, "not the loss", detail="one number"),
    wrong(lesson04.soft_term_gradient, sg_float32, "Keep the logits' own dtype", detail="float64"),
    wrong(lesson04.soft_term_gradient, sg_no_return, "`return`", detail="returned None"),
    wrong(lesson04.soft_term_gradient, sg_raises, lesson04.soft_term_gradient.hint, detail="Your function raised"),
    wrong(lesson04.log_log_slope, slope_intercept, "That is the intercept"),
    wrong(lesson04.log_log_slope, slope_endpoints, "first and the last point", detail="bends"),
    wrong(lesson04.log_log_slope, slope_without_logs, "Fit a line to the logarithms"),
    wrong(lesson04.log_log_slope, slope_log_y_only, "logarithm of x as well"),
    wrong(lesson04.log_log_slope, slope_log10_y_ln_x, "same logarithm on both axes"),
    wrong(lesson04.log_log_slope, slope_ln_y_log10_x, "same logarithm on both axes"),
    wrong(lesson04.log_log_slope, slope_swapped, "not log x against log y"),
    wrong(lesson04.log_log_slope, slope_and_intercept, "Return the slope alone", detail="returned 2 values"),
    wrong(lesson04.log_log_slope, slope_as_text, "",
          detail="returned a str for the 9 points of y = 3 / x² from x = 1 to 100; a number was expected"),
    wrong(lesson04.log_log_slope, slope_no_return, "`return`", detail="returned None"),
    wrong(lesson04.logit_matching_gradient, lm_means_kept, "Remove each row's mean from both sides"),
    wrong(lesson04.logit_matching_gradient, lm_student_mean_only, "Remove the teacher's mean as well"),
    wrong(lesson04.logit_matching_gradient, lm_teacher_mean_only, "Remove the student's mean as well"),
    wrong(lesson04.logit_matching_gradient, lm_over_V_squared, "divided by V twice"),
    wrong(lesson04.logit_matching_gradient, lm_without_V, "Divide by V"),
    wrong(lesson04.logit_matching_gradient, lm_over_2V, "cancels the 1/2"),
    wrong(lesson04.logit_matching_gradient, lm_sign_flipped, "sign is flipped"),
    wrong(lesson04.logit_matching_gradient, lm_dim_0, "mean down the columns", detail="a batch of 6 rows"),
    wrong(lesson04.logit_matching_gradient, lm_batch_mean, "not the mean of the whole batch"),
    wrong(lesson04.logit_matching_gradient, lm_V_from_shape_0, "divided by the number of rows"),
    wrong(lesson04.logit_matching_gradient, lm_returns_the_loss, "not the loss", detail="one number"),
]


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_wrong_answer_gets_its_hint(exercise, answer, hint, detail):
    """A common mistake is reported as 'not yet' with the hint that names it, never as a traceback."""
    assert_caught(exercise, answer, hint, detail)



@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_passing_or_falls_back_for_a_wrong_answer(exercise, answer, hint, detail, capsys):
    """A wrong answer never reaches the lesson's plots: kdlearn's version is used instead."""
    fallback = lesson04.reference(exercise_name(exercise))
    assert exercise.passing_or(answer, fallback, "kdlearn's version") is fallback
    assert "kdlearn's version" in capsys.readouterr().out


@pytest.mark.parametrize("name", EXERCISES)
def test_general_hint_names_the_idea_without_handing_over_the_code(name):
    """The hint a learner gets for a mistake the check does not recognise leads to the answer; the
    answer itself, its code or its closed form, lives only in solutions/."""
    hint = getattr(lesson04, name).hint
    for giveaway in ("softmax(", "mean(", "dim=", "return ", "polyfit", "log(", "T * (q - p)", "T (q - p)",
                     "shape[", "sum(", "/ V"):
        assert giveaway not in hint, f"the general hint of {name} hands over {giveaway!r}: {hint}"


def exercise_name(exercise) -> str:
    return next(name for name in EXERCISES if getattr(lesson04, name) is exercise)


@pytest.mark.parametrize("exercise, answer", [
    pytest.param(lesson04.soft_term_gradient, sg_right, id="soft-term-closed-form"),
    pytest.param(lesson04.log_log_slope, slope_right, id="slope-python-float"),
    pytest.param(lesson04.log_log_slope, slope_as_tensor, id="slope-0d-tensor"),
    pytest.param(lesson04.log_log_slope, slope_log10_both, id="slope-log10-on-both-axes-numpy-float"),
    pytest.param(lesson04.log_log_slope, slope_lstsq_one_element, id="slope-one-element-tensor"),
    pytest.param(lesson04.logit_matching_gradient, lm_right, id="logit-matching-closed-form"),
])
def test_right_answers_in_any_reasonable_form_pass(exercise, answer):
    """Closed forms written independently of the checks pass; a slope may come as any kind of number."""
    verdict = exercise.evaluate(answer)
    assert verdict.status == CORRECT, str(verdict)


# --- kdlearn's answers, the fallbacks --------------------------------------------------------------


@pytest.mark.parametrize("name", EXERCISES)
def test_reference_passes_its_check(name):
    """The fallback the lesson uses until the learner's function passes is itself right."""
    assert getattr(lesson04, name).evaluate(lesson04.reference(name)).status == CORRECT


def test_reference_of_an_unknown_exercise_is_a_value_error():
    with pytest.raises(ValueError, match="name must be one of"):
        lesson04.reference("slope")


def logits_pair(rows=5, V=10, seed=0):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(rows, V, generator=generator, dtype=torch.float64) * 2 + 1
    teacher = torch.randn(rows, V, generator=generator, dtype=torch.float64) * 5 - 3
    return student, teacher


@pytest.mark.parametrize("T", [0.5, 1.0, 4.0, 50.0])
def test_reference_soft_term_gradient_is_each_rows_gradient_of_kd_loss(T):
    """Autograd of kd_loss's batch mean is the reference divided by the number of rows (the lesson's claim)."""
    student, teacher = logits_pair()
    logits = student.clone().requires_grad_(True)
    kdlearn.kd_loss(logits, teacher, T=T, alpha=1.0).backward()
    gradient = lesson04.reference("soft_term_gradient")(student, teacher, T)
    torch.testing.assert_close(logits.grad, gradient / len(student))
    torch.testing.assert_close(gradient, sg_right(student, teacher, T))
    torch.testing.assert_close(gradient.sum(dim=-1), torch.zeros(len(student), dtype=torch.float64))


def test_soft_term_gradient_tends_to_logit_matching_as_one_over_T():
    """The lesson's high-temperature limit: T (q - p) -> ((z - mean z) - (v - mean v)) / V, with a
    relative gap that falls as 1/T; means left in, the gap to (z - v) / V does not close."""
    student, teacher = logits_pair()
    matching = lesson04.reference("logit_matching_gradient")(student, teacher)
    torch.testing.assert_close(matching, lm_right(student, teacher))

    def gap(T, target):
        return ((lesson04.reference("soft_term_gradient")(student, teacher, T) - target).norm() / target.norm()).item()

    temperatures = [100.0, 1000.0, 10000.0]
    gaps = [gap(T, matching) for T in temperatures]
    assert gaps[-1] < 1e-3
    slope = lesson04.reference("log_log_slope")(torch.tensor(temperatures), torch.tensor(gaps))
    assert slope == pytest.approx(-1.0, abs=0.02)
    assert gap(10000.0, (student - teacher) / student.shape[-1]) > 0.3


def test_soft_gradient_without_t_squared_falls_as_one_over_T_squared():
    """The lesson's measured exponents: -2 without the factor T², 0 with it, for T well above the logits."""
    student, teacher = logits_pair()

    def norm(T, t_squared):
        logits = student.clone().requires_grad_(True)
        kdlearn.kd_loss(logits, teacher, T=T, alpha=1.0, t_squared=t_squared).backward()
        return logits.grad.norm().item()

    temperatures = torch.tensor([100.0, 300.0, 1000.0], dtype=torch.float64)
    slope = lesson04.reference("log_log_slope")
    with_t2 = torch.tensor([norm(T, True) for T in temperatures.tolist()])
    without_t2 = torch.tensor([norm(T, False) for T in temperatures.tolist()])
    assert slope(temperatures, without_t2) == pytest.approx(-2.0, abs=0.02)
    assert slope(temperatures, with_t2) == pytest.approx(0.0, abs=0.02)


def test_reference_log_log_slope_recovers_a_power_law():
    x = torch.logspace(-1, 2, 7, dtype=torch.float64)
    assert lesson04.reference("log_log_slope")(x, 0.3 * x ** 1.7) == pytest.approx(1.7)
