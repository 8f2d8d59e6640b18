"""Lesson 09's checks, beyond what tests/test_exercises.py proves for every lesson.

Here: the common mistakes get the hint that names them, never a traceback; right answers written
in other reasonable ways pass; kdlearn's reference answers (the fallbacks the lesson uses until the
learner's pass) pass, and agree with counts made by hand.
"""

from __future__ import annotations

import statistics
from collections import Counter

import pytest

from kdlearn.exercises import CORRECT, NOT_ATTEMPTED, lesson09
from kdlearn.tasks import AnyOrder
from tests.wrong_answers import assert_caught, wrong

EXERCISES = ("keep_accepted", "choose_on_validation")


# --- Exercise 9.1: right and wrong filters ------------------------------------------------------------


def ka_right(samples, verifier, at_most=None):
    kept, count = [], Counter()
    for prompt, output in samples:
        if verifier(prompt, output) and (at_most is None or count[prompt] < at_most):
            kept.append((prompt, output))
            count[prompt] += 1
    return kept, len(kept) / len(samples)


def ka_lists_and_list(samples, verifier, at_most=None):
    """Pairs as lists and the result as a list: the same samples, another shape of container."""
    kept, share = ka_right(samples, verifier, at_most)
    return [[p, o] for p, o in kept], share


def ka_rejected(samples, verifier, at_most=None):
    kept = [(p, o) for p, o in samples if not verifier(p, o)]
    return kept, len(kept) / len(samples)


def ka_first_n_then_filter(samples, verifier, at_most=None):
    count, kept = Counter(), []
    for prompt, output in samples:
        count[prompt] += 1
        if (at_most is None or count[prompt] <= at_most) and verifier(prompt, output):
            kept.append((prompt, output))
    return kept, len(kept) / len(samples)


def ka_global_cap(samples, verifier, at_most=None):
    kept = [(p, o) for p, o in samples if verifier(p, o)]
    kept = kept if at_most is None else kept[:at_most]
    return kept, len(kept) / len(samples)


def ka_deduplicated(samples, verifier, at_most=None):
    kept, _ = ka_right(list(dict.fromkeys(samples)), verifier, at_most)
    return kept, len(kept) / len(samples)


def ka_sorted(samples, verifier, at_most=None):
    kept, share = ka_right(samples, verifier, at_most)
    return sorted(kept), share


def ka_none_as_zero(samples, verifier, at_most=None):
    return ka_right(samples, verifier, at_most or 0)


def ka_swapped_verifier(samples, verifier, at_most=None):
    return ka_right([(o, p) for p, o in samples], verifier, at_most)


def ka_outputs_only(samples, verifier, at_most=None):
    kept, share = ka_right(samples, verifier, at_most)
    return [o for _, o in kept], share


def ka_kept_only(samples, verifier, at_most=None):
    return ka_right(samples, verifier, at_most)[0]


def ka_percent(samples, verifier, at_most=None):
    kept, share = ka_right(samples, verifier, at_most)
    return kept, 100 * share


def ka_share_thrown_away(samples, verifier, at_most=None):
    kept, share = ka_right(samples, verifier, at_most)
    return kept, 1 - share


def ka_share_of_accepted(samples, verifier, at_most=None):
    kept, _ = ka_right(samples, verifier, at_most)
    return kept, len(kept) / sum(verifier(p, o) for p, o in samples)


def ka_share_of_prompts(samples, verifier, at_most=None):
    kept, _ = ka_right(samples, verifier, at_most)
    return kept, len(kept) / len({p for p, _ in samples})


def ka_count(samples, verifier, at_most=None):
    kept, _ = ka_right(samples, verifier, at_most)
    return kept, len(kept)


def ka_no_return(samples, verifier, at_most=None):
    ka_right(samples, verifier, at_most)


def ka_not_attempted(samples, verifier, at_most=None):
    raise NotImplementedError


# --- Exercise 9.2: right and wrong choices ----------------------------------------------------------


def choose_right(figures):
    means = {setting: sum(f["validation"]) / len(f["validation"]) for setting, f in figures.items()}
    best = max(means.values())
    return next(setting for setting, mean in means.items() if mean == best)


def choose_by_test(figures):
    return max(figures, key=lambda s: statistics.fmean(figures[s]["test"]))


def choose_by_both(figures):
    return max(figures, key=lambda s: statistics.fmean(figures[s]["validation"]) + statistics.fmean(
        figures[s].get("test", [0])))


def choose_luckiest_seed(figures):
    return max(figures, key=lambda s: max(figures[s]["validation"]))


def choose_first_seed(figures):
    return max(figures, key=lambda s: figures[s]["validation"][0])


def choose_lowest(figures):
    return min(figures, key=lambda s: statistics.fmean(figures[s]["validation"]))


def choose_last_of_a_tie(figures):
    return sorted(figures, key=lambda s: statistics.fmean(figures[s]["validation"]))[-1]


def choose_returns_the_accuracy(figures):
    return max(statistics.fmean(f["validation"]) for f in figures.values())


def choose_no_return(figures):
    choose_right(figures)


WRONG_ANSWERS = [
    wrong(lesson09.keep_accepted, ka_rejected, "the verifier rejected"),
    wrong(lesson09.keep_accepted, ka_first_n_then_filter, "counted the rejected samples too", detail="at_most=2"),
    wrong(lesson09.keep_accepted, ka_global_cap, "cap per prompt", detail="at_most=2"),
    wrong(lesson09.keep_accepted, ka_deduplicated, "Keep repeats", detail="at_most=None"),
    wrong(lesson09.keep_accepted, ka_sorted, "in the order they came"),
    wrong(lesson09.keep_accepted, ka_none_as_zero, "no cap", detail="at_most=None"),
    wrong(lesson09.keep_accepted, ka_swapped_verifier, "verifier(prompt, output)"),
    wrong(lesson09.keep_accepted, ka_outputs_only, "(prompt, output) pairs", detail="a string alone"),
    wrong(lesson09.keep_accepted, ka_kept_only, "Return a pair", detail="two things were expected"),
    wrong(lesson09.keep_accepted, ka_percent, "not a percentage", detail="share kept should be 0.8"),
    wrong(lesson09.keep_accepted, ka_share_thrown_away, "share thrown away"),
    wrong(lesson09.keep_accepted, ka_share_of_accepted, "all of them"),
    wrong(lesson09.keep_accepted, ka_share_of_prompts, "not of prompts"),
    wrong(lesson09.keep_accepted, ka_count, "not the count"),
    wrong(lesson09.keep_accepted, ka_no_return, "`return`", detail="returned None"),
    wrong(lesson09.choose_on_validation, choose_by_test, "chose by the test figures"),
    wrong(lesson09.choose_on_validation, choose_by_both, "used the test figures as well"),
    wrong(lesson09.choose_on_validation, choose_luckiest_seed, "luckiest seed"),
    wrong(lesson09.choose_on_validation, choose_first_seed, "first seed alone"),
    wrong(lesson09.choose_on_validation, choose_lowest, "lowest validation accuracy"),
    wrong(lesson09.choose_on_validation, choose_last_of_a_tie, "listed first", detail="tied"),
    wrong(lesson09.choose_on_validation, choose_returns_the_accuracy, "not its accuracy"),
    wrong(lesson09.choose_on_validation, choose_no_return, "`return`", detail="returned None"),
]


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_wrong_answer_gets_its_hint(exercise, answer, hint, detail):
    """A common mistake is reported as 'not yet' with the hint that names it, never as a traceback."""
    assert_caught(exercise, answer, hint, detail)


def exercise_name(exercise) -> str:
    return next(name for name in EXERCISES if getattr(lesson09, name) is exercise)


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_passing_or_falls_back_for_a_wrong_answer(exercise, answer, hint, detail, capsys):
    """A wrong answer never reaches the lesson's experiment: kdlearn's version is used instead."""
    fallback = lesson09.reference(exercise_name(exercise))
    assert exercise.passing_or(answer, fallback, "kdlearn's version") is fallback
    assert "kdlearn's version" in capsys.readouterr().out


def test_the_stub_reads_as_not_attempted():
    assert lesson09.keep_accepted.evaluate(ka_not_attempted).status == NOT_ATTEMPTED


@pytest.mark.parametrize("name", EXERCISES)
def test_general_hint_names_the_idea_without_handing_over_the_code(name):
    hint = getattr(lesson09, name).hint
    for giveaway in ("verifier(", "len(", "max(", "fmean", "mean(", "return ", "[\"validation\"]", "at_most"):
        assert giveaway not in hint, f"the general hint of {name} hands over {giveaway!r}: {hint}"


@pytest.mark.parametrize("exercise, answer", [
    pytest.param(lesson09.keep_accepted, ka_right, id="filter-counter"),
    pytest.param(lesson09.keep_accepted, ka_lists_and_list, id="filter-lists"),
    pytest.param(lesson09.choose_on_validation, choose_right, id="choose-by-hand"),
])
def test_right_answers_in_any_reasonable_form_pass(exercise, answer):
    verdict = exercise.evaluate(answer)
    assert verdict.status == CORRECT, str(verdict)


# --- kdlearn's answers, the fallbacks -----------------------------------------------------------------


@pytest.mark.parametrize("name", EXERCISES)
def test_reference_passes_its_check(name):
    assert getattr(lesson09, name).evaluate(lesson09.reference(name)).status == CORRECT


def test_reference_of_an_unknown_exercise_is_a_value_error():
    with pytest.raises(ValueError, match="name must be one of"):
        lesson09.reference("filter")


def test_reference_filter_counts_by_hand():
    """Three prompts, ten samples: the counts and shares worked out by hand."""
    task = AnyOrder(4)
    samples = [("3817:", "7138"), ("2045:", "5402"), ("3817:", "7713"), ("3817:", "1387"), ("2045:", "2045"),
               ("9012:", "9999"), ("3817:", "8731"), ("2045:", "5402"), ("9012:", "2109"), ("3817:", "7138")]
    keep = lesson09.reference("keep_accepted")
    kept, share = keep(samples, task.is_correct)
    assert len(kept) == 8 and share == pytest.approx(0.8)
    assert ("3817:", "7713") not in kept and ("9012:", "9999") not in kept
    kept, share = keep(samples, task.is_correct, 1)
    assert kept == [("3817:", "7138"), ("2045:", "5402"), ("9012:", "2109")] and share == pytest.approx(0.3)
    kept, share = keep(samples, task.is_correct, 2)
    assert Counter(p for p, _ in kept) == {"3817:": 2, "2045:": 2, "9012:": 1} and share == pytest.approx(0.5)


@pytest.mark.parametrize("at_most", [0, -1, 1.5, True])
def test_reference_filter_refuses_a_bad_cap(at_most):
    with pytest.raises(ValueError, match="at_most"):
        lesson09.reference("keep_accepted")([("3817:", "7138")], AnyOrder(4).is_correct, at_most)


def test_reference_filter_refuses_no_samples():
    with pytest.raises(ValueError, match="samples is empty"):
        lesson09.reference("keep_accepted")([], AnyOrder(4).is_correct)


def test_reference_choice_takes_the_best_mean_and_the_first_of_a_tie():
    choose = lesson09.reference("choose_on_validation")
    figures = {"low": {"validation": [0.1, 0.9]}, "steady": {"validation": [0.6, 0.6]}, "same": {"validation": [0.6, 0.6]}}
    assert choose(figures) == "steady"
    assert choose({"a": {"validation": [0.2], "test": [0.9]}, "b": {"validation": [0.3], "test": [0.1]}}) == "b"
