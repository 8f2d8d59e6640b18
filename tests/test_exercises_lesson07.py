"""Lesson 07's checks, beyond what tests/test_exercises.py proves for every lesson: the common
mistakes get the hint that names them, right answers written independently pass, and kdlearn's
reference answers (the fallbacks the lesson uses until the learner's pass) pass."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from kdlearn.exercises import CORRECT, lesson07
from tests.wrong_answers import assert_caught, wrong

EXERCISES = ("mutual_loss", "ensemble_soft_targets")


def kl(p_logits, q_logits):
    p = torch.softmax(p_logits, -1)
    return (p * (torch.log_softmax(p_logits, -1) - torch.log_softmax(q_logits, -1))).sum(-1).mean()


# --- Exercise 7.1 -------------------------------------------------------------------------------


def ml_right(z, y):
    K = len(z)
    return sum(F.cross_entropy(z[k], y) + sum(kl(z[l].detach(), z[k]) for l in range(K) if l != k) / (K - 1)
               for k in range(K))


def ml_right_with_kl_div(z, y):
    K, log_q = len(z), torch.log_softmax(z, -1)
    total = 0
    for k in range(K):
        peers = [F.kl_div(log_q[k], log_q[l].detach(), reduction="batchmean", log_target=True)
                 for l in range(K) if l != k]
        total = total + F.cross_entropy(z[k], y) + torch.stack(peers).mean()
    return total


def ml_not_detached(z, y):
    K = len(z)
    return sum(F.cross_entropy(z[k], y) + sum(kl(z[l], z[k]) for l in range(K) if l != k) / (K - 1)
               for k in range(K))


def ml_reversed(z, y):
    K = len(z)
    return sum(F.cross_entropy(z[k], y) + sum(kl(z[k], z[l].detach()) for l in range(K) if l != k) / (K - 1)
               for k in range(K))


def ml_no_ce(z, y):
    K = len(z)
    return sum(sum(kl(z[l].detach(), z[k]) for l in range(K) if l != k) / (K - 1) for k in range(K))


def ml_peers_summed(z, y):
    K = len(z)
    return sum(F.cross_entropy(z[k], y) + sum(kl(z[l].detach(), z[k]) for l in range(K) if l != k) for k in range(K))


def ml_members_mean(z, y):
    return ml_right(z, y) / len(z)


def ml_rows_summed(z, y):
    return ml_right(z, y) * len(y)


def ml_per_student(z, y):
    return torch.stack([F.cross_entropy(z[k], y) for k in range(len(z))])


def ml_as_number(z, y):
    return ml_right(z, y).item()


def ml_no_grad(z, y):
    return ml_right(z.detach(), y)


def ml_no_return(z, y):
    ml_right(z, y)


# --- Exercise 7.2 -------------------------------------------------------------------------------


def es_right(z, T):
    return torch.softmax(z / T, dim=-1).mean(dim=0)


def es_by_loop(z, T):
    return sum(torch.exp(torch.log_softmax(z[k] / T, -1)) for k in range(len(z))) / len(z)


def es_logits_averaged(z, T):
    return torch.softmax(z.mean(dim=0) / T, dim=-1)


def es_log_probs_averaged(z, T):
    return torch.softmax(torch.log_softmax(z / T, -1).mean(0), dim=-1)


def es_no_T(z, T):
    return torch.softmax(z, dim=-1).mean(dim=0)


def es_summed(z, T):
    return torch.softmax(z / T, dim=-1).sum(dim=0)


def es_softmax_over_teachers(z, T):
    return torch.softmax(z / T, dim=0).mean(dim=0)


def es_mean_over_examples(z, T):
    return torch.softmax(z / T, dim=-1).mean(dim=1)


def es_no_return(z, T):
    es_right(z, T)


WRONG_ANSWERS = [
    wrong(lesson07.mutual_loss, ml_not_detached, "Detach each peer", detail="the gradient is not"),
    wrong(lesson07.mutual_loss, ml_reversed, "KL points the wrong way"),
    wrong(lesson07.mutual_loss, ml_no_ce, "add its cross-entropy"),
    wrong(lesson07.mutual_loss, ml_peers_summed, "Average the KL over the K - 1 peers", detail="3 students"),
    wrong(lesson07.mutual_loss, ml_members_mean, "Add the students' losses"),
    wrong(lesson07.mutual_loss, ml_rows_summed, "Average over the examples"),
    wrong(lesson07.mutual_loss, ml_per_student, "into one scalar"),
    wrong(lesson07.mutual_loss, ml_as_number, "", detail="a torch.Tensor was expected"),
    wrong(lesson07.mutual_loss, ml_no_grad, "no .detach() of the student's own logits"),
    wrong(lesson07.mutual_loss, ml_no_return, "`return`", detail="returned None"),
    wrong(lesson07.ensemble_soft_targets, es_logits_averaged, "Average the probabilities"),
    wrong(lesson07.ensemble_soft_targets, es_log_probs_averaged, "Average the probabilities"),
    wrong(lesson07.ensemble_soft_targets, es_no_T, "Divide the logits by T", detail="T = 4"),
    wrong(lesson07.ensemble_soft_targets, es_summed, "not the sum"),
    wrong(lesson07.ensemble_soft_targets, es_softmax_over_teachers, "over the classes, the last dimension"),
    wrong(lesson07.ensemble_soft_targets, es_mean_over_examples, "not over the examples", detail="shape"),
    wrong(lesson07.ensemble_soft_targets, es_no_return, "`return`", detail="returned None"),
]


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_wrong_answer_gets_its_hint(exercise, answer, hint, detail):
    """A common mistake is reported as 'not yet' with the hint that names it, never as a traceback."""
    assert_caught(exercise, answer, hint, detail)


@pytest.mark.parametrize("exercise, answer", [
    pytest.param(lesson07.mutual_loss, ml_right, id="mutual-explicit-kl"),
    pytest.param(lesson07.mutual_loss, ml_right_with_kl_div, id="mutual-kl_div-batchmean"),
    pytest.param(lesson07.ensemble_soft_targets, es_right, id="ensemble-softmax-mean"),
    pytest.param(lesson07.ensemble_soft_targets, es_by_loop, id="ensemble-loop"),
])
def test_right_answers_written_independently_pass(exercise, answer):
    verdict = exercise.evaluate(answer)
    assert verdict.status == CORRECT, str(verdict)


@pytest.mark.parametrize("name", EXERCISES)
def test_reference_passes_its_check(name):
    assert getattr(lesson07, name).evaluate(lesson07.reference(name)).status == CORRECT


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_passing_or_falls_back_for_a_wrong_answer(exercise, answer, hint, detail, capsys):
    name = next(n for n in EXERCISES if getattr(lesson07, n) is exercise)
    fallback = lesson07.reference(name)
    assert exercise.passing_or(answer, fallback, "kdlearn's version") is fallback
    assert "kdlearn's version" in capsys.readouterr().out


@pytest.mark.parametrize("name", EXERCISES)
def test_general_hint_leads_without_handing_over_the_code(name):
    hint = getattr(lesson07, name).hint
    for giveaway in ("softmax(", "mean(", "detach()", "kl_div", "cross_entropy(", "dim=", "return ", "/ T"):
        assert giveaway not in hint, f"the general hint of {name} hands over {giveaway!r}: {hint}"


def test_reference_of_an_unknown_exercise_is_a_value_error():
    with pytest.raises(ValueError, match="name must be one of"):
        lesson07.reference("mutual")
