"""Lesson 06's checks, beyond what tests/test_exercises.py proves for every lesson.

Here: the common mistakes get the hint that names them, never a traceback; reasonable right
answers (F.mse_loss, F.normalize, einsum) pass; and kdlearn's reference answers, the fallbacks the
lesson uses until the learner's pass, agree with computations written out here.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from kdlearn.exercises import CORRECT, lesson06
from tests.wrong_answers import assert_caught, wrong

# --- Exercise 6.1: right and wrong hint terms -------------------------------------------------------


def hint_right(s, t, r):
    return F.mse_loss(r(s), t)


def hint_by_hand(s, t, r):
    return ((r(s) - t) ** 2).mean()


def hint_no_projection(s, t, r):
    return ((s - t) ** 2).mean()


def hint_projects_the_teacher(s, t, r):
    return F.mse_loss(s, r(t))


def hint_sum(s, t, r):
    return ((r(s) - t) ** 2).sum()


def hint_per_example(s, t, r):
    return ((r(s) - t) ** 2).sum() / s.shape[0]


def hint_papers_half(s, t, r):
    return 0.5 * ((r(s) - t) ** 2).flatten(1).sum(dim=1).mean()


def hint_l1(s, t, r):
    return F.l1_loss(r(s), t)


def hint_rmse(s, t, r):
    return F.mse_loss(r(s), t).sqrt()


def hint_norm(s, t, r):
    return (r(s) - t).norm()


def hint_detached(s, t, r):
    return F.mse_loss(r(s).detach(), t)


def hint_no_grad(s, t, r):
    with torch.no_grad():
        return F.mse_loss(r(s), t)


def hint_unreduced(s, t, r):
    return F.mse_loss(r(s), t, reduction="none")


def hint_no_return(s, t, r):
    F.mse_loss(r(s), t)


# --- Exercise 6.2: right and wrong attention maps ------------------------------------------------------


def at_right(a):
    return F.normalize(a.pow(2).sum(dim=1).flatten(1), dim=1)


def at_einsum(a):
    q = torch.einsum("nchw,nchw->nhw", a, a).reshape(a.shape[0], -1)
    return q / q.norm(dim=1, keepdim=True).clamp_min(1e-12)


def at_mean_over_channels(a):   # the mean is the sum over C, a constant the normalisation removes
    return F.normalize(a.pow(2).mean(dim=1).flatten(1), dim=1)


def at_unnormalised(a):
    return a.pow(2).sum(dim=1).flatten(1)


def at_l1_normalised(a):
    q = a.pow(2).sum(dim=1).flatten(1)
    return q / q.sum(dim=1, keepdim=True).clamp_min(1e-12)


def at_batch_norm(a):
    q = a.pow(2).sum(dim=1).flatten(1)
    return q / q.norm()


def at_p_1(a):
    return F.normalize(a.abs().sum(dim=1).flatten(1), dim=1)


def at_plain_sum(a):
    q = a.sum(dim=1).flatten(1)
    return q / q.norm(dim=1, keepdim=True)


def at_unflattened(a):
    q = a.pow(2).sum(dim=1)
    return q / q.flatten(1).norm(dim=1)[:, None, None]


def at_over_positions(a):
    return F.normalize(a.pow(2).sum(dim=(2, 3)), dim=1)


def at_nan_at_zero(a):
    q = a.pow(2).sum(dim=1).flatten(1)
    return q / q.norm(dim=1, keepdim=True)


RIGHT_ANSWERS = [(lesson06.hint_term, hint_right), (lesson06.hint_term, hint_by_hand),
                 (lesson06.attention_map, at_right), (lesson06.attention_map, at_einsum),
                 (lesson06.attention_map, at_mean_over_channels)]

WRONG_ANSWERS = [
    wrong(lesson06.hint_term, hint_no_projection, "go through the projection", detail="never called projection"),
    wrong(lesson06.hint_term, hint_projects_the_teacher, "applies to the student's features"),
    wrong(lesson06.hint_term, hint_sum, "sum of the squared errors"),
    wrong(lesson06.hint_term, hint_per_example, "over the examples only"),
    wrong(lesson06.hint_term, hint_papers_half, "the paper's 1/2"),
    wrong(lesson06.hint_term, hint_l1, "not taken in absolute value"),
    wrong(lesson06.hint_term, hint_rmse, "leave out the square root"),
    wrong(lesson06.hint_term, hint_norm, "a norm of the error"),
    wrong(lesson06.hint_term, hint_detached, "no .detach()", detail="no gradient"),
    wrong(lesson06.hint_term, hint_no_grad, "no .detach()", detail="no gradient"),
    wrong(lesson06.hint_term, hint_unreduced, "single number", detail="one number, the loss"),
    wrong(lesson06.hint_term, hint_no_return, "`return`", detail="returned None"),
    wrong(lesson06.attention_map, at_unnormalised, "divide each flattened map by its own L2 norm"),
    wrong(lesson06.attention_map, at_l1_normalised, "not by the sum of its entries"),
    wrong(lesson06.attention_map, at_batch_norm, "not by one norm of the whole batch"),
    wrong(lesson06.attention_map, at_p_1, "power p = 2 before the sum over the channels"),
    wrong(lesson06.attention_map, at_plain_sum, "power p = 2"),
    wrong(lesson06.attention_map, at_unflattened, "flatten it", detail="unflattened"),
    wrong(lesson06.attention_map, at_over_positions, "sum over the channels", detail="one value per channel"),
    wrong(lesson06.attention_map, at_nan_at_zero, "all-zero map has norm 0", detail="the second all zero"),
]


@pytest.mark.parametrize("exercise, answer", RIGHT_ANSWERS)
def test_right_answers_pass(exercise, answer):
    verdict = exercise.evaluate(answer)
    assert verdict.status == CORRECT, str(verdict)


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_wrong_answers_get_the_hint_that_names_the_mistake(exercise, answer, hint, detail):
    assert_caught(exercise, answer, hint, detail)


def test_the_references_pass_and_agree_with_computations_here():
    assert lesson06.hint_term.evaluate(lesson06.reference("hint_term")).passed
    assert lesson06.attention_map.evaluate(lesson06.reference("attention_map")).passed
    generator = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 2, 4, 4, generator=generator), torch.randn(3, 5, 4, 4, generator=generator)
    projection = nn.Conv2d(2, 5, 1)
    torch.testing.assert_close(lesson06.reference("hint_term")(s, t, projection), hint_by_hand(s, t, projection))
    torch.testing.assert_close(lesson06.reference("attention_map")(t), at_einsum(t))
    with pytest.raises(ValueError, match="name"):
        lesson06.reference("rkd")
