"""Lesson 03's checks, beyond what tests/test_exercises.py proves for every lesson.

Here: the common mistakes get the hint that names them, never a traceback; the ways of returning
a right answer that a learner may reasonably choose are accepted; kdlearn's reference answers (the
fallbacks the lesson uses until the learner's pass) pass, and do what the lesson says they do.
"""

from __future__ import annotations

import copy

import pytest
import torch

from kdlearn import models
from kdlearn.exercises import CORRECT, lesson03
from tests.wrong_answers import assert_caught

# --- Exercise 3.1: shifting one class's bias ---------------------------------------------------


def sb_right(model, class_index, amount):
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted[-1].bias[class_index] += amount
    return shifted


def sb_state_dict(model, class_index, amount):
    shifted = copy.deepcopy(model)
    state = shifted.state_dict()
    state[f"{len(shifted) - 1}.bias"][class_index] += amount
    return shifted


def sb_in_place(model, class_index, amount):
    with torch.no_grad():
        model[-1].bias[class_index] += amount
    return model


def sb_shallow_copy(model, class_index, amount):
    shifted = copy.copy(model)
    with torch.no_grad():
        shifted[-1].bias[class_index] += amount
    return shifted


def sb_weights(model, class_index, amount):
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted[-1].weight[class_index] += amount
    return shifted


def sb_first_layer(model, class_index, amount):
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted[0].bias[class_index] += amount
    return shifted


def sb_wrong_sign(model, class_index, amount):
    return sb_right(model, class_index, -amount)


def sb_every_class(model, class_index, amount):
    shifted = copy.deepcopy(model)
    with torch.no_grad():
        shifted[-1].bias += amount
    return shifted


def sb_wrong_class(model, class_index, amount):
    return sb_right(model, (class_index + 1) % 4, amount)


def sb_no_return(model, class_index, amount):
    sb_right(model, class_index, amount)


def sb_without_no_grad(model, class_index, amount):
    shifted = copy.deepcopy(model)
    shifted[-1].bias[class_index] += amount   # RuntimeError: a leaf that requires grad, changed in place
    return shifted


def sb_returns_bias(model, class_index, amount):
    return sb_right(model, class_index, amount)[-1].bias


# --- Exercise 3.2: choosing the shift ----------------------------------------------------------


def margins(student, c, *, leave_c_out=True):
    others = student.clone()
    if leave_c_out:
        others[:, c] = float("-inf")
    return others.max(dim=-1).values - student[:, c]


def cs(teacher, student, c, *, k_from=None, sign=1.0, pick=None, leave_c_out=True, margins_of=None):
    """The rule written out, with switches for the usual mistakes."""
    k = int(((k_from if k_from is not None else teacher).argmax(dim=-1) == c).sum())
    m = (sign * margins(margins_of if margins_of is not None else student, c, leave_c_out=leave_c_out)).sort().values
    return float(pick(m, k) if pick else (m[k - 1] + m[k]) / 2)


def cs_right(teacher, student, c):
    return cs(teacher, student, c)


def cs_tensor(teacher, student, c):
    return torch.tensor(cs(teacher, student, c))


def cs_with_topk(teacher, student, c):
    k = int((teacher.argmax(dim=-1) == c).sum())
    rest = torch.cat([student[:, :c], student[:, c + 1:]], dim=-1)
    low = (rest.max(dim=-1).values - student[:, c]).topk(k + 1, largest=False).values
    return (low[-2] + low[-1]).item() / 2


def cs_wrong_sign(teacher, student, c):
    return -cs(teacher, student, c)


def cs_kth_margin(teacher, student, c):
    return cs(teacher, student, c, pick=lambda m, k: m[k - 1])


def cs_off_by_one(teacher, student, c):
    return cs(teacher, student, c, pick=lambda m, k: (m[k] + m[k + 1]) / 2)


def cs_max_over_all(teacher, student, c):
    return cs(teacher, student, c, leave_c_out=False)


def cs_teacher_margins(teacher, student, c):
    return cs(teacher, student, c, margins_of=teacher)


def cs_student_count(teacher, student, c):
    return cs(teacher, student, c, k_from=student)


def cs_every_row(teacher, student, c):
    return margins(student, c)


def cs_no_return(teacher, student, c):
    cs(teacher, student, c)


def cs_string(teacher, student, c):
    return f"{cs(teacher, student, c):.3f}"


RIGHT = [
    (lesson03.shift_bias, sb_right),
    (lesson03.shift_bias, sb_state_dict),
    (lesson03.shift_bias, lesson03.reference("shift_bias")),
    (lesson03.choose_shift, cs_right),
    (lesson03.choose_shift, cs_tensor),
    (lesson03.choose_shift, cs_with_topk),
    (lesson03.choose_shift, lesson03.reference("choose_shift")),
]


@pytest.mark.parametrize("exercise, answer", RIGHT, ids=[f"{e.number}-{a.__name__}" for e, a in RIGHT])
def test_right_answers_pass(exercise, answer):
    """Every reasonable way to write the answer is marked correct: a copy shifted in place or through its
    state_dict; a float or a 0-d tensor."""
    verdict = exercise.evaluate(answer)
    assert verdict.status == CORRECT, str(verdict)


WRONG_ANSWERS = [
    (lesson03.shift_bias, sb_in_place, "returned the model it was given", "copy.deepcopy"),
    (lesson03.shift_bias, sb_shallow_copy, "changed the original model's parameters", "shallow copy"),
    (lesson03.shift_bias, sb_weights, "output weights differ", "not the weights"),
    (lesson03.shift_bias, sb_first_layer, "changes a hidden layer", "model[-1].bias"),
    (lesson03.shift_bias, sb_wrong_sign, "moved by -2.5, not 2.5", "add it, don't subtract it"),
    (lesson03.shift_bias, sb_every_class, "every logit moved", "Shift only the bias of class_index"),
    (lesson03.shift_bias, sb_wrong_class, "the logits should move by [0, 2.5, 0, 0]", lesson03.shift_bias.hint),
    (lesson03.shift_bias, sb_no_return, "returned None", "`return shifted`"),
    (lesson03.shift_bias, sb_without_no_grad, "Your function raised RuntimeError", "torch.no_grad()"),
    (lesson03.shift_bias, sb_returns_bias, "returned a Parameter", lesson03.shift_bias.hint),
    (lesson03.choose_shift, cs_wrong_sign, "class_index=2", "Wrong sign"),
    (lesson03.choose_shift, cs_kth_margin, "class_index=2", "midpoint"),
    (lesson03.choose_shift, cs_off_by_one, "class_index=2", "Off by one"),
    (lesson03.choose_shift, cs_max_over_all, "class_index=0", "Leave class_index out"),
    (lesson03.choose_shift, cs_teacher_margins, "class_index=2", "The margins are the student's"),
    (lesson03.choose_shift, cs_student_count, "class_index=2", "not the student"),
    (lesson03.choose_shift, cs_every_row, "shape (16,)", "Return the one shift"),
    (lesson03.choose_shift, cs_no_return, "returned None", "`return`"),
    (lesson03.choose_shift, cs_string, "returned a str", lesson03.choose_shift.hint),
]


@pytest.mark.parametrize("exercise, answer, detail, hint", WRONG_ANSWERS,
                         ids=[f"{e.number}-{a.__name__}" for e, a, _, _ in WRONG_ANSWERS])
def test_wrong_answer_gets_its_hint(exercise, answer, detail, hint):
    """A common mistake is 'not yet', says what came back, and names the mistake; never a traceback."""
    assert_caught(exercise, answer, hint, detail)



def test_the_wrong_answers_differ_from_the_right_one_by_their_mistake_only():
    """The switchable helpers above are right when no mistake is switched on (else the tests prove nothing)."""
    assert lesson03.shift_bias.evaluate(lambda m, c, a: sb_wrong_sign(m, c, -a)).status == CORRECT
    assert lesson03.choose_shift.evaluate(lambda t, s, c: -cs_wrong_sign(t, s, c)).status == CORRECT


# --- kdlearn's answers do what the lesson says -------------------------------------------------


def test_reference_shift_bias_moves_one_logit_and_leaves_the_original_alone():
    model = models.mlp(64, (30, 30), 10, seed=0)
    x = torch.rand(5, 64, generator=torch.Generator().manual_seed(0))
    before = copy.deepcopy(model.state_dict())
    shifted = lesson03.reference("shift_bias")(model, 3, 3.5)
    with torch.no_grad():
        moved = shifted(x) - model(x)
    expected = torch.zeros(5, 10)
    expected[:, 3] = 3.5
    torch.testing.assert_close(moved, expected, rtol=0, atol=1e-5)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_reference_choose_shift_makes_the_student_predict_the_class_as_often_as_the_teacher():
    """After the chosen shift the student predicts the class on exactly as many rows as the teacher, whether
    the shift must raise the bias or lower it; a teacher that never (or always) predicts it is refused."""
    generator = torch.Generator().manual_seed(5)
    teacher = torch.randn(300, 10, generator=generator) * 2
    choose = lesson03.reference("choose_shift")
    for offset in (-4.0, 3.0):
        student = teacher + 0.5 * torch.randn(300, 10, generator=generator)
        student[:, 3] += offset
        shift = choose(teacher, student, 3)
        assert (shift > 0) == (offset < 0)
        shifted = student.clone()
        shifted[:, 3] += shift
        assert int((shifted.argmax(dim=-1) == 3).sum()) == int((teacher.argmax(dim=-1) == 3).sum())
    never = teacher.clone()
    never[:, 3] = -100.0
    with pytest.raises(ValueError, match="some rows but not all"):
        choose(never, teacher, 3)


def test_reference_rejects_an_unknown_name():
    with pytest.raises(ValueError, match="shift_bias"):
        lesson03.reference("shift")
