"""Lesson 08's checks, beyond what tests/test_exercises.py proves for every lesson.

Here: the mistakes trainers have made (no shift, the wrong mean, batchmean, the mixture's weights
on the wrong distributions, a mixture of log-probabilities, NaN from logs of zeros) each get the
hint that names them, never a traceback; right answers written in other ways pass; and kdlearn's
reference answers, the fallbacks the lesson uses, agree with computations written out here entry
by entry.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from kdlearn.exercises import CORRECT, lesson08
from tests.wrong_answers import assert_caught, wrong

EXERCISES = ("completion_kl", "jsd_in_log_space")


# --- Exercise 8.1: right and wrong token-level losses ------------------------------------------------


def per_token_forward(student, teacher):
    log_q, log_p = torch.log_softmax(student, dim=-1), torch.log_softmax(teacher, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def shifted_mask(labels):
    return (labels[:, 1:] != -100).float()


def ck_right(student, teacher, labels):
    kl, counted = per_token_forward(student[:, :-1], teacher[:, :-1]), shifted_mask(labels)
    return (kl * counted).sum() / counted.sum().clamp(min=1)


def ck_kl_div_on_the_rows_that_count(student, teacher, labels):
    counted = labels[:, 1:] != -100
    if not counted.any():
        return torch.tensor(0.0)
    return F.kl_div(torch.log_softmax(student[:, :-1][counted], -1), torch.log_softmax(teacher[:, :-1][counted], -1),
                    reduction="batchmean", log_target=True)


def ck_kl_div_no_guard(student, teacher, labels):
    counted = labels[:, 1:] != -100
    return F.kl_div(torch.log_softmax(student[:, :-1][counted], -1), torch.softmax(teacher[:, :-1][counted], -1),
                    reduction="batchmean")


def ck_no_shift(student, teacher, labels):
    counted = (labels != -100).float()
    return (per_token_forward(student, teacher) * counted).sum() / counted.sum()


def ck_over_all_positions(student, teacher, labels):
    kl = per_token_forward(student[:, :-1], teacher[:, :-1])
    return (kl * shifted_mask(labels)).sum() / kl.numel()


def ck_over_B_times_L(student, teacher, labels):
    kl = per_token_forward(student[:, :-1], teacher[:, :-1])
    return (kl * shifted_mask(labels)).sum() / labels.numel()


def ck_unmasked_mean(student, teacher, labels):
    return per_token_forward(student, teacher).mean()


def ck_batchmean(student, teacher, labels):
    kl = per_token_forward(student[:, :-1], teacher[:, :-1])
    return (kl * shifted_mask(labels)).sum() / labels.shape[0]


def ck_mean_per_sequence(student, teacher, labels):
    kl, counted = per_token_forward(student[:, :-1], teacher[:, :-1]), shifted_mask(labels)
    return ((kl * counted).sum(-1) / counted.sum(-1).clamp(min=1)).mean()


def ck_mean_per_sequence_nan(student, teacher, labels):
    kl, counted = per_token_forward(student[:, :-1], teacher[:, :-1]), shifted_mask(labels)
    return ((kl * counted).sum(-1) / counted.sum(-1)).mean()


def ck_reverse(student, teacher, labels):
    return ck_right(teacher, student, labels)


def ck_per_token(student, teacher, labels):
    return per_token_forward(student[:, :-1], teacher[:, :-1]) * shifted_mask(labels)


def ck_zero_over_zero(student, teacher, labels):
    kl, counted = per_token_forward(student[:, :-1], teacher[:, :-1]), shifted_mask(labels)
    return (kl * counted).sum() / counted.sum()


def ck_no_return(student, teacher, labels):
    ck_right(student, teacher, labels)


def ck_raises(student, teacher, labels):
    return student @ labels


# --- Exercise 8.2: right and wrong JSD(beta) -----------------------------------------------------------


def kl_rows(log_a, log_b):
    a = log_a.exp()
    return torch.where(a > 0, a * (log_a - log_b), 0.0).sum(-1)


def jsd_right(student, teacher, beta):
    log_q, log_p = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
    return beta * kl_rows(log_p, log_m) + (1 - beta) * kl_rows(log_q, log_m)


def jsd_logsumexp(student, teacher, beta):
    log_q, log_p = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    weights = torch.tensor([math.log(beta), math.log(1 - beta)]).view(2, *([1] * log_p.dim()))
    log_m = torch.logsumexp(torch.stack([log_p, log_q]) + weights, dim=0)
    terms = torch.stack([kl_rows(log_p, log_m), kl_rows(log_q, log_m)])
    return beta * terms[0] + (1 - beta) * terms[1]


def jsd_probability_space(student, teacher, beta):
    q, p = torch.softmax(student, -1), torch.softmax(teacher, -1)
    m = beta * p + (1 - beta) * q
    return beta * (p * torch.log(p / m)).sum(-1) + (1 - beta) * (q * torch.log(q / m)).sum(-1)


def jsd_kl_div_log_target(student, teacher, beta):
    log_q, log_p = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
    return (beta * F.kl_div(log_m, log_p, reduction="none", log_target=True).sum(-1)
            + (1 - beta) * F.kl_div(log_m, log_q, reduction="none", log_target=True).sum(-1))


def jsd_mixture_swapped(student, teacher, beta):
    log_q, log_p = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    log_m = torch.logaddexp(log_q + math.log(beta), log_p + math.log(1 - beta))
    return beta * kl_rows(log_p, log_m) + (1 - beta) * kl_rows(log_q, log_m)


def jsd_terms_swapped(student, teacher, beta):
    log_q, log_p = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
    return (1 - beta) * kl_rows(log_p, log_m) + beta * kl_rows(log_q, log_m)


def jsd_geometric(student, teacher, beta):
    log_q, log_p = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    log_m = beta * log_p + (1 - beta) * log_q
    return beta * kl_rows(log_p, log_m) + (1 - beta) * kl_rows(log_q, log_m)


def jsd_always_symmetric(student, teacher, beta):
    return jsd_right(student, teacher, 0.5)


def jsd_equal_terms(student, teacher, beta):
    log_q, log_p = torch.log_softmax(student, -1), torch.log_softmax(teacher, -1)
    log_m = torch.logaddexp(log_p + math.log(beta), log_q + math.log(1 - beta))
    return 0.5 * kl_rows(log_p, log_m) + 0.5 * kl_rows(log_q, log_m)


def jsd_mean(student, teacher, beta):
    return jsd_right(student, teacher, beta).mean()


def jsd_no_return(student, teacher, beta):
    jsd_right(student, teacher, beta)


WRONG_ANSWERS = [
    wrong(lesson08.completion_kl, ck_no_shift, "logits at position t predict the token at t + 1"),
    wrong(lesson08.completion_kl, ck_over_all_positions, "B x (L - 1)"),
    wrong(lesson08.completion_kl, ck_over_B_times_L, "B x L"),
    wrong(lesson08.completion_kl, ck_unmasked_mean, "averaged over every position"),
    wrong(lesson08.completion_kl, ck_batchmean, "batchmean"),
    wrong(lesson08.completion_kl, ck_mean_per_sequence, "each sequence's mean and then the mean over sequences"),
    wrong(lesson08.completion_kl, ck_mean_per_sequence_nan, "each sequence's mean"),
    wrong(lesson08.completion_kl, ck_reverse, "reverse KL"),
    wrong(lesson08.completion_kl, ck_per_token, "Average the per-token divergences", detail="shape (2, 6)"),
    wrong(lesson08.completion_kl, ck_zero_over_zero, "divided 0 by 0", detail="no completion token at all"),
    wrong(lesson08.completion_kl, ck_kl_div_no_guard, "divided 0 by 0", detail="no completion token at all"),
    wrong(lesson08.completion_kl, ck_no_return, "`return`", detail="returned None"),
    wrong(lesson08.completion_kl, ck_raises, lesson08.completion_kl.hint, detail="Your function raised"),
    wrong(lesson08.jsd_in_log_space, jsd_probability_space, "0 x -inf = NaN", detail="with -inf entries"),
    wrong(lesson08.jsd_in_log_space, jsd_kl_div_log_target, "0 x -inf = NaN", detail="with -inf entries"),
    wrong(lesson08.jsd_in_log_space, jsd_mixture_swapped, "mixture's weights are on the wrong distributions",
          detail="beta = 0.1"),
    wrong(lesson08.jsd_in_log_space, jsd_terms_swapped, "weights of the two KL terms are swapped",
          detail="beta = 0.1"),
    wrong(lesson08.jsd_in_log_space, jsd_geometric, "You mixed the log-probabilities"),
    wrong(lesson08.jsd_in_log_space, jsd_always_symmetric, "symmetric JSD", detail="beta = 0.1"),
    wrong(lesson08.jsd_in_log_space, jsd_equal_terms, "not equally", detail="beta = 0.1"),
    wrong(lesson08.jsd_in_log_space, jsd_mean, "each row's divergence", detail="one value per row"),
    wrong(lesson08.jsd_in_log_space, jsd_no_return, "`return`", detail="returned None"),
]


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_wrong_answer_gets_its_hint(exercise, answer, hint, detail):
    """A common mistake is reported as 'not yet' with the hint that names it, never as a traceback."""
    assert_caught(exercise, answer, hint, detail)


def exercise_name(exercise) -> str:
    return next(name for name in EXERCISES if getattr(lesson08, name) is exercise)


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_passing_or_falls_back_for_a_wrong_answer(exercise, answer, hint, detail, capsys):
    """A wrong answer never reaches the lesson's measurements: kdlearn's version is used instead."""
    fallback = lesson08.reference(exercise_name(exercise))
    assert exercise.passing_or(answer, fallback, "kdlearn's version") is fallback
    assert "kdlearn's version" in capsys.readouterr().out


@pytest.mark.parametrize("exercise, answer", [
    pytest.param(lesson08.completion_kl, ck_right, id="masked-sum-over-count"),
    pytest.param(lesson08.completion_kl, ck_kl_div_on_the_rows_that_count, id="kl_div-batchmean-on-counted-rows"),
    pytest.param(lesson08.jsd_in_log_space, jsd_right, id="logaddexp"),
    pytest.param(lesson08.jsd_in_log_space, jsd_logsumexp, id="logsumexp"),
])
def test_right_answers_in_any_reasonable_form_pass(exercise, answer):
    verdict = exercise.evaluate(answer)
    assert verdict.status == CORRECT, str(verdict)


@pytest.mark.parametrize("name", EXERCISES)
def test_general_hint_names_the_idea_without_handing_over_the_code(name):
    hint = getattr(lesson08, name).hint
    for giveaway in ("log_softmax", "logaddexp", "logsumexp", "[:, 1:]", "[:, :-1]", "clamp", "sum(", "mean(",
                     "!= -100", "torch.", "beta * p"):
        assert giveaway not in hint, f"the general hint of {name} hands over {giveaway!r}: {hint}"


# --- kdlearn's answers, the fallbacks, against loops written out here ---------------------------------


@pytest.mark.parametrize("name", EXERCISES)
def test_reference_passes_its_check(name):
    assert getattr(lesson08, name).evaluate(lesson08.reference(name)).status == CORRECT


def test_reference_of_an_unknown_exercise_is_a_value_error():
    with pytest.raises(ValueError, match="name must be one of"):
        lesson08.reference("jsd")


def test_reference_completion_kl_is_the_mean_over_completion_tokens_of_a_loop():
    """Position by position: logits at t against the label at t + 1, in float64, one mean over the batch."""
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(3, 6, 5, generator=generator, dtype=torch.float64)
    teacher = torch.randn(3, 6, 5, generator=generator, dtype=torch.float64) * 2
    labels = torch.tensor([[-100, -100, 3, 4, 2, -100], [-100, 1, 1, 2, 2, 2], [-100, -100, -100, -100, -100, 3]])
    total, count = 0.0, 0
    for b in range(3):
        for t in range(5):
            if labels[b, t + 1] == -100:
                continue
            p = torch.softmax(teacher[b, t], -1).tolist()
            q = torch.softmax(student[b, t], -1).tolist()
            total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
            count += 1
    assert count == 3 + 5 + 1
    assert lesson08.reference("completion_kl")(student, teacher, labels).item() == pytest.approx(total / count)


def test_reference_jsd_is_the_definition_entry_by_entry_and_finite_where_entries_are_masked():
    student = torch.tensor([[1.0, -math.inf, 0.5, 2.0], [0.0, 1.0, -math.inf, -math.inf]], dtype=torch.float64)
    teacher = torch.tensor([[-math.inf, 0.0, 1.5, 1.0], [2.0, -1.0, 0.0, -math.inf]], dtype=torch.float64)
    beta = 0.3
    got = lesson08.reference("jsd_in_log_space")(student, teacher, beta)
    for row in range(2):
        p, q = torch.softmax(teacher[row], -1).tolist(), torch.softmax(student[row], -1).tolist()
        m = [beta * pi + (1 - beta) * qi for pi, qi in zip(p, q)]
        expected = (beta * sum(pi * math.log(pi / mi) for pi, mi in zip(p, m) if pi > 0)
                    + (1 - beta) * sum(qi * math.log(qi / mi) for qi, mi in zip(q, m) if qi > 0))
        assert got[row].item() == pytest.approx(expected)
    assert torch.isnan(jsd_probability_space(student, teacher, beta)).all()
