"""Lesson 10's checks, beyond what tests/test_exercises.py proves for every lesson.

Here: the common mistakes get the hint that names them, never a traceback; right answers written
in other reasonable ways pass; kdlearn's reference answers (the fallbacks the lesson uses until
the learner's pass) pass, and agree with what the lesson says of them: the decision is the one
kdlearn.distill.train makes, and the error rates are those counted by hand.
"""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from kdlearn import distill, lm, teachers
from kdlearn.exercises import CORRECT, lesson10
from tests.wrong_answers import assert_caught, wrong

EXERCISES = ("choose_on_policy", "position_error_rates")


# --- Exercise 10.1: right and wrong decisions ------------------------------------------------------


def choose_right(lmbda, generator):
    return generator.random() < lmbda


def choose_from_the_top(lmbda, generator):
    return generator.random() >= 1 - lmbda   # also exactly lmbda: valid, though not distill.train's draw


def choose_numpy_bool(lmbda, generator):
    return np.bool_(generator.uniform(0, 1) < lmbda)


def choose_at_most(lmbda, generator):
    return generator.random() <= lmbda


def choose_above(lmbda, generator):
    return generator.random() > lmbda


def choose_strictly_above_complement(lmbda, generator):
    return generator.random() > 1 - lmbda


def choose_global_random(lmbda, generator):
    return random.random() < lmbda


def choose_torch(lmbda, generator):
    return bool(torch.rand(()) < lmbda)


def choose_threshold(lmbda, generator):
    return lmbda >= 0.5


def choose_the_draw(lmbda, generator):
    return generator.random()


def choose_lmbda(lmbda, generator):
    return lmbda


def choose_fixed_seed(lmbda, generator):
    return random.Random(0).random() < lmbda


def choose_no_return(lmbda, generator):
    generator.random() < lmbda


def choose_as_text(lmbda, generator):
    return "on" if generator.random() < lmbda else "off"


# --- Exercise 10.2: right and wrong error rates ----------------------------------------------------


def wrong_after(prompt, output, i):
    return i >= len(output) or output[i] not in set(prompt[:-1]) - set(output[:i])


def rates_right(prompts, outputs):
    size = len(prompts[0]) - 1
    return [sum(wrong_after(p, o, i) for p, o in zip(prompts, outputs)) / len(prompts) for i in range(size)]


def rates_as_tensor(prompts, outputs):
    return torch.tensor(rates_right(prompts, outputs))


def rates_as_numpy(prompts, outputs):
    return np.array(rates_right(prompts, outputs), dtype=np.float32)


def rates_as_tuple(prompts, outputs):
    return tuple(rates_right(prompts, outputs))


def rates_prompt_order(prompts, outputs):
    return [sum(i >= len(o) or o[i] != p[i] for p, o in zip(prompts, outputs)) / len(prompts) for i in range(4)]


def rates_accuracy(prompts, outputs):
    return [1 - r for r in rates_right(prompts, outputs)]


def rates_repeats_allowed(prompts, outputs):
    return [sum(i >= len(o) or o[i] not in p[:-1] for p, o in zip(prompts, outputs)) / len(prompts) for i in range(4)]


def rates_over_long_enough(prompts, outputs):
    rates = []
    for i in range(4):
        reached = [(p, o) for p, o in zip(prompts, outputs) if i < len(o)]
        rates.append(sum(wrong_after(p, o, i) for p, o in reached) / max(1, len(reached)))
    return rates


def rates_missing_is_right(prompts, outputs):
    return [sum(i < len(o) and wrong_after(p, o, i) for p, o in zip(prompts, outputs)) / len(prompts)
            for i in range(4)]


def rates_compounding(prompts, outputs):
    rates = [0.0] * 4
    for p, o in zip(prompts, outputs):
        failed = False
        for i in range(4):
            failed = failed or wrong_after(p, o, i)
            rates[i] += failed / len(prompts)
    return rates


def rates_counts(prompts, outputs):
    return [sum(wrong_after(p, o, i) for p, o in zip(prompts, outputs)) for i in range(4)]


def rates_per_output(prompts, outputs):
    return [[float(wrong_after(p, o, i)) for i in range(4)] for p, o in zip(prompts, outputs)]


def rates_with_the_end(prompts, outputs):
    return rates_right(prompts, outputs) + [0.0]


def rates_no_return(prompts, outputs):
    rates_right(prompts, outputs)


def rates_raises(prompts, outputs):
    return [o[3] for o in outputs]


WRONG_ANSWERS = [
    wrong(lesson10.choose_on_policy, choose_at_most, "none of them may count at lmbda = 0", detail="drew 0.0"),
    wrong(lesson10.choose_on_policy, choose_above, "must count at lmbda = 1", detail="At lmbda = 1"),
    wrong(lesson10.choose_on_policy, choose_strictly_above_complement, "must count at lmbda = 1", detail="drew 0.0"),
    wrong(lesson10.choose_on_policy, choose_global_random, "not from the random module's own functions",
          detail="seeded alike"),
    wrong(lesson10.choose_on_policy, choose_torch, "not from the random module's own functions",
          detail="seeded alike"),
    wrong(lesson10.choose_on_policy, choose_threshold, "made afresh for each batch", detail="at every one of"),
    wrong(lesson10.choose_on_policy, choose_the_draw, "not a probability or the draw itself",
          detail="returned the number"),
    wrong(lesson10.choose_on_policy, choose_lmbda, "not a probability or the draw itself"),
    wrong(lesson10.choose_on_policy, choose_fixed_seed, "made afresh for each batch", detail="at every one of"),
    wrong(lesson10.choose_on_policy, choose_no_return, "`return`", detail="returned None"),
    wrong(lesson10.choose_on_policy, choose_as_text, lesson10.choose_on_policy.hint, detail="returned a str"),
    wrong(lesson10.position_error_rates, rates_prompt_order, "Any ordering of the prompt's digits is right"),
    wrong(lesson10.position_error_rates, rates_accuracy, "share of outputs right"),
    wrong(lesson10.position_error_rates, rates_repeats_allowed, "wrong the second time"),
    wrong(lesson10.position_error_rates, rates_over_long_enough, "not by those long enough"),
    wrong(lesson10.position_error_rates, rates_missing_is_right, "a missing character is a mistake"),
    wrong(lesson10.position_error_rates, rates_compounding, "Judge each position on its own"),
    wrong(lesson10.position_error_rates, rates_counts, "divide by the number of outputs for a share"),
    wrong(lesson10.position_error_rates, rates_per_output, "one error rate per position", detail="shape (10, 4)"),
    wrong(lesson10.position_error_rates, rates_with_the_end, "one error rate per position", detail="shape (5,)"),
    wrong(lesson10.position_error_rates, rates_no_return, "`return`", detail="returned None"),
    wrong(lesson10.position_error_rates, rates_raises, lesson10.position_error_rates.hint,
          detail="Your function raised IndexError"),
]


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_wrong_answer_gets_its_hint(exercise, answer, hint, detail):
    """A common mistake is reported as 'not yet' with the hint that names it, never as a traceback."""
    assert_caught(exercise, answer, hint, detail)


def exercise_name(exercise) -> str:
    return next(name for name in EXERCISES if getattr(lesson10, name) is exercise)


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_passing_or_falls_back_for_a_wrong_answer(exercise, answer, hint, detail, capsys):
    """A wrong answer never reaches the lesson's figures: kdlearn's version is used instead."""
    fallback = lesson10.reference(exercise_name(exercise))
    assert exercise.passing_or(answer, fallback, "kdlearn's version") is fallback
    assert "kdlearn's version" in capsys.readouterr().out


@pytest.mark.parametrize("exercise, answer", [
    pytest.param(lesson10.choose_on_policy, choose_right, id="decision-below-lmbda"),
    pytest.param(lesson10.choose_on_policy, choose_from_the_top, id="decision-from-the-top"),
    pytest.param(lesson10.choose_on_policy, choose_numpy_bool, id="decision-numpy-bool"),
    pytest.param(lesson10.position_error_rates, rates_right, id="rates-list"),
    pytest.param(lesson10.position_error_rates, rates_as_tensor, id="rates-tensor"),
    pytest.param(lesson10.position_error_rates, rates_as_numpy, id="rates-float32-array"),
    pytest.param(lesson10.position_error_rates, rates_as_tuple, id="rates-tuple"),
])
def test_right_answers_in_any_reasonable_form_pass(exercise, answer):
    verdict = exercise.evaluate(answer)
    assert verdict.status == CORRECT, str(verdict)


@pytest.mark.parametrize("name", EXERCISES)
def test_general_hint_names_the_idea_without_handing_over_the_code(name):
    hint = getattr(lesson10, name).hint
    for giveaway in ("random()", "< lmbda", "<=", "set(", "len(", "sum(", "return ", "[:i]", "/ len"):
        assert giveaway not in hint, f"the general hint of {name} hands over {giveaway!r}: {hint}"


@pytest.mark.parametrize("name", EXERCISES)
def test_reference_passes_its_check(name):
    assert getattr(lesson10, name).evaluate(lesson10.reference(name)).status == CORRECT


def test_reference_of_an_unknown_exercise_is_a_value_error():
    with pytest.raises(ValueError, match="name must be one of"):
        lesson10.reference("sampler")


# --- what the lesson says of kdlearn's answers --------------------------------------------------------


@pytest.mark.usefixtures("single_torch_thread")
@pytest.mark.parametrize("lmbda", [0.0, 0.3, 1.0])
def test_the_decision_is_the_one_distill_train_makes(lmbda):
    """distill.train draws its schedule from a generator seeded with "policy/<seed>": the reference,
    given that generator, predicts which of its steps were on-policy."""
    teacher = teachers.load("any_order")
    data = [(e.prompt, e.answer) for e in teacher.task.examples("train", 50)]
    student = lm.GPT(lm.GPTConfig(vocab_size=teacher.tokenizer.vocab_size, context=16, width=8, depth=1, heads=1),
                     seed=0)
    history = distill.train(student, teacher.tokenizer, data, teacher=teacher.model, objective=distill.Objective(),
                            steps=12, batch_size=2, lmbda=lmbda, seed=4, progress=False)
    generator = random.Random("policy/4")
    choose = lesson10.reference("choose_on_policy")
    assert history.on_policy == [choose(lmbda, generator) for _ in range(12)]


def test_reference_error_rates_count_what_the_lesson_says():
    """By hand: "3817:" -> 3817 (right), 7138 (right, another order), 3317 (the second 3 repeats), 38 (stops
    after two), 3819 (9 is not in the prompt)."""
    rates = lesson10.reference("position_error_rates")(["3817:"] * 5, ["3817", "7138", "3317", "38", "3819"])
    assert rates == pytest.approx([0.0, 1 / 5, 1 / 5, 2 / 5])
