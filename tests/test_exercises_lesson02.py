"""Lesson 02's checks, beyond what tests/test_exercises.py proves for every lesson.

Here: the common mistakes get the hint that names them, never a traceback; kdlearn's reference
answers (the fallbacks the lesson uses until the learner's pass) pass, agree with
kdlearn.experiments.hinton's own figure, and take the step that kdlearn.training.train takes; and
a check leaves the caller's random state as it was.
"""

from __future__ import annotations

import math

import pytest
import torch

import kdlearn
from kdlearn import data, models, training
from kdlearn.exercises import CORRECT, lesson02
from kdlearn.experiments import hinton
from tests.wrong_answers import assert_caught, wrong

# --- Exercise 2.1: right and wrong shares of the gap ---------------------------------------------


def means(*lists):
    return [sum(errors) / len(errors) for errors in lists]


def gc_right(t, s, d):
    t, s, d = means(t, s, d)
    return float("nan") if s == t else (s - d) / (s - t)


def gc_percent(t, s, d):
    return 100 * gc_right(t, s, d)


def gc_still_open(t, s, d):
    t, s, d = means(t, s, d)
    return (d - t) / (s - t)


def gc_sign_flipped(t, s, d):
    return -gc_right(t, s, d)


def gc_relative_to_scratch(t, s, d):
    t, s, d = means(t, s, d)
    return (s - d) / s


def gc_ratio_per_seed(t, s, d):
    ratios = [(si - di) / (si - ti) for ti, si, di in zip(t, s, d)]
    return sum(ratios) / len(ratios)


def gc_clipped(t, s, d):
    return min(max(gc_right(t, s, d), 0.0), 1.0)


def gc_divides_by_zero(t, s, d):
    t, s, d = means(t, s, d)
    return (s - d) / (s - t)


def gc_zero_without_gap(t, s, d):
    t, s, d = means(t, s, d)
    return 0.0 if s == t else (s - d) / (s - t)


def gc_tensor(t, s, d):
    return torch.tensor(gc_right(t, s, d))


def gc_no_return(t, s, d):
    gc_right(t, s, d)


# --- Exercise 2.2: right and wrong steps --------------------------------------------------------


def step(student, teacher, optimizer, x, y, T, alpha, *, eval_teacher=True, no_grad=True, zero_grad=True,
         t_squared=True, swap=False, use_T=True, do_step=True, returns="item"):
    """One distillation step written out, with switches for the usual mistakes."""
    if eval_teacher:
        teacher.eval()
    with torch.set_grad_enabled(not no_grad):
        teacher_logits = teacher(x)
    loss = kdlearn.kd_loss(student(x), teacher_logits, y, T=T if use_T else 1.0,
                           alpha=1 - alpha if swap else alpha, t_squared=t_squared)
    if zero_grad:
        optimizer.zero_grad()
    loss.backward()
    if do_step:
        optimizer.step()
    return {"item": loss.item(), "tensor": loss, "none": None, "wrong": loss.item() + 1}[returns]


def st_right(*args):
    return step(*args)


def st_returns_tensor(*args):
    return step(*args, returns="tensor")


def st_teacher_in_train_mode(*args):
    return step(*args, eval_teacher=False)


def st_teacher_gradients(*args):
    return step(*args, no_grad=False)


def st_no_zero_grad(*args):
    return step(*args, zero_grad=False)


def st_no_t_squared(*args):
    return step(*args, t_squared=False)


def st_alpha_swapped(*args):
    return step(*args, swap=True)


def st_T_unused(*args):
    return step(*args, use_T=False)


def st_no_optimizer_step(*args):
    return step(*args, do_step=False)


def st_returns_nothing(*args):
    return step(*args, returns="none")


def st_returns_wrong_loss(*args):
    return step(*args, returns="wrong")


def st_steps_teacher(student, teacher, optimizer, x, y, T, alpha):
    loss = step(student, teacher, optimizer, x, y, T, alpha)
    with torch.no_grad():
        next(teacher.parameters()).add_(1.0)
    return loss



WRONG_ANSWERS = [
    wrong(lesson02.gap_closed, gc_percent, "not a percentage"),
    wrong(lesson02.gap_closed, gc_still_open, "still open"),
    wrong(lesson02.gap_closed, gc_sign_flipped, "sign is flipped"),
    wrong(lesson02.gap_closed, gc_relative_to_scratch, "divide by the gap"),
    wrong(lesson02.gap_closed, gc_ratio_per_seed, "ratio of the means"),
    wrong(lesson02.gap_closed, gc_clipped, "Do not clip", "distillation that hurt"),
    wrong(lesson02.gap_closed, gc_divides_by_zero, "float('nan')", "raised ZeroDivisionError"),
    wrong(lesson02.gap_closed, gc_zero_without_gap, "float('nan')", "should be nan"),
    wrong(lesson02.gap_closed, gc_no_return, "`return`", "returned None"),
    wrong(lesson02.distillation_step, st_teacher_in_train_mode, "teacher.eval()"),
    wrong(lesson02.distillation_step, st_teacher_gradients, "torch.no_grad()", "gradients in the teacher"),
    wrong(lesson02.distillation_step, st_no_zero_grad, "optimizer.zero_grad()"),
    wrong(lesson02.distillation_step, st_no_t_squared, "T²"),
    wrong(lesson02.distillation_step, st_alpha_swapped, "weights are swapped"),
    wrong(lesson02.distillation_step, st_T_unused, "pass T=T"),
    wrong(lesson02.distillation_step, st_no_optimizer_step, "optimizer.step()", "differ"),
    wrong(lesson02.distillation_step, st_returns_nothing, "`return`", "returned None"),
    wrong(lesson02.distillation_step, st_returns_wrong_loss, "loss.item()", "updated the student correctly"),
    wrong(lesson02.distillation_step, st_steps_teacher, "Only the student learns", "changed the teacher"),
]


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_wrong_answer_gets_its_hint(exercise, answer, hint, detail):
    """A common mistake is reported as 'not yet' with the hint that names it, never as a traceback."""
    assert_caught(exercise, answer, hint, detail)



@pytest.mark.parametrize("exercise, answer", [
    (lesson02.gap_closed, gc_right), (lesson02.gap_closed, gc_tensor),
    (lesson02.gap_closed, lesson02.reference("gap_closed")),
    (lesson02.distillation_step, st_right), (lesson02.distillation_step, st_returns_tensor),
    (lesson02.distillation_step, lesson02.reference("distillation_step")),
], ids=lambda value: getattr(value, "__name__", None) or getattr(value, "number", None))
def test_right_answers_pass(exercise, answer):
    """The switchable answers are right with no switch on; a 0-d tensor is as good as a float; the
    fallbacks pass."""
    verdict = exercise.evaluate(answer)
    assert verdict.status == CORRECT, str(verdict)


# --- the reference answers ----------------------------------------------------------------------


def test_gap_closed_is_the_experiments_figure():
    """The lesson's figure and hinton.Results.gap_closed agree, on the paper's table and on a run's."""
    assert lesson02.reference("gap_closed")([67], [146], [74]) == pytest.approx(72 / 79)
    results = hinton.Results(hinton.Settings(seeds=(0, 1, 2)), in_features=64, num_classes=10, test_size=540,
                             errors={"teacher": [12, 12, 11], "scratch": [15, 21, 16], "distilled": [17, 15, 14]})
    assert lesson02.reference("gap_closed")(*(results.errors[name] for name in hinton.MODELS)) == pytest.approx(
        results.gap_closed())
    assert math.isnan(lesson02.reference("gap_closed")([5, 7], [6, 6], [4, 4]))


def test_reference_step_is_the_step_that_train_takes():
    """One step of the reference on a batch moves the student as training.train does for one epoch
    of one batch (the same kd_loss, teacher in eval mode, AdamW without weight decay)."""
    ds = data.digits()
    batch = data.Split(ds.transfer.x[:32], ds.transfer.y[:32])
    teacher = models.mlp(64, (32,), dropout=0.5, seed=0)
    by_train, by_step = models.mlp(64, (16,), seed=1), models.mlp(64, (16,), seed=1)
    training.train(by_train, batch, teacher=teacher, loss="kd", T=3.0, alpha=0.8, epochs=1, batch_size=32,
                   lr=1e-2, progress=False)
    teacher.train()
    optimizer = torch.optim.AdamW(by_step.parameters(), lr=1e-2, weight_decay=0.0)
    lesson02.reference("distillation_step")(by_step, teacher, optimizer, batch.x, batch.y, 3.0, 0.8)
    for a, b in zip(by_train.parameters(), by_step.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    assert not teacher.training


def test_step_check_leaves_the_callers_random_state_alone():
    """Checking a step (whose teacher has dropout) draws nothing from the notebook's global RNG."""
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    lesson02.distillation_step.evaluate(st_teacher_in_train_mode)
    lesson02.distillation_step.evaluate(st_right)
    assert torch.equal(torch.rand(3), expected)


def test_reference_names_are_checked():
    with pytest.raises(ValueError, match="gap_closed"):
        lesson02.reference("gap")
