"""Checks for lesson 09, teacher-written data.

    from kdlearn.exercises import lesson09 as check
    check.keep_accepted(keep_accepted)
    check.choose_on_validation(choose_on_validation)

Exercise 9.1, the rejection-sampling filter, is checked on hand-made samples of the any-order task
(prompts interleaved, a prompt whose first samples are rejected, repeats, nothing accepted) and on
a few hundred drawn ones, against kdlearn.experiments.sequence_kd.keep_accepted, the filter the
lesson's experiment uses. Exercise 9.2 is checked on tables of per-seed accuracies built so that
each usual way of choosing wrongly (by the test split, by the luckiest seed, by the first seed, the
last of a tie) picks a different setting from the right one. ``reference(name)`` gives kdlearn's
answer to an exercise, for the cells after it until the learner's passes (``Exercise.passing_or``).
"""

from __future__ import annotations

import math
import random
import statistics
from numbers import Real

from kdlearn.exercises import Exercise, Mismatch, named_answer
from kdlearn.experiments.sequence_kd import keep_accepted as _keep_accepted
from kdlearn.tasks import AnyOrder

# --- kdlearn's answers -------------------------------------------------------------------------


def _choose_on_validation(figures: dict) -> object:
    """The key of ``figures`` whose "validation" accuracies have the highest mean; the first listed of equals."""
    return max(figures, key=lambda setting: statistics.fmean(figures[setting]["validation"]))


_REFERENCES = {"keep_accepted": _keep_accepted, "choose_on_validation": _choose_on_validation}


def reference(name: str):
    """kdlearn's answer to exercise ``name`` ("keep_accepted" or "choose_on_validation"), a plain
    function with the exercise's arguments."""
    return named_answer(_REFERENCES, name)


# --- Exercise 9.1: keep the samples the verifier accepts ----------------------------------------

_TASK = AnyOrder(4)


def _verifier(prompt: str, output: str) -> bool:
    return _TASK.is_correct(prompt, output)


def _drawn_samples(n: int, seed: int) -> list[tuple[str, str]]:
    """n samples like a teacher's at a high temperature: a prompt's digits shuffled, one in three
    with a digit written twice, the prompts drawn with repeats and in no order."""
    rng = random.Random(seed)
    prompts = ["".join(rng.sample("0123456789", 4)) + ":" for _ in range(12)]
    samples = []
    for _ in range(n):
        prompt = rng.choice(prompts)
        digits = rng.sample(prompt[:-1], 4)
        if rng.random() < 1 / 3:
            digits[rng.randrange(1, 4)] = digits[0]
        samples.append((prompt, "".join(digits)))
    return samples


_HAND_MADE = [
    ("3817:", "7138"), ("2045:", "5402"), ("3817:", "7713"), ("3817:", "1387"), ("2045:", "2045"),
    ("9012:", "9999"), ("3817:", "8731"), ("2045:", "5402"), ("9012:", "2109"), ("3817:", "7138"),
]
_FIRST_REJECTED = [("6543:", "6643"), ("6543:", "6655"), ("6543:", "3456"), ("6543:", "4365"),
                   ("1098:", "1111"), ("1098:", "8901")]


def _filter_cases():
    drawn = _drawn_samples(300, seed=91)
    return [
        (_HAND_MADE, None, "10 samples of three prompts, interleaved, with at_most=None"),
        (_HAND_MADE, 2, "the same 10 samples with at_most=2"),
        (_HAND_MADE, 1, "the same 10 samples with at_most=1"),
        (_FIRST_REJECTED, 1, "6 samples whose prompts' first samples are rejected, with at_most=1"),
        ([("5678:", "5555"), ("5678:", "8765x"), ("0123:", "01234")], None,
         "3 samples that the verifier all rejects"),
        (drawn, None, "300 drawn samples of 12 prompts, with at_most=None"),
        (drawn, 3, "the same 300 samples with at_most=3"),
    ]


def _as_pairs(kept, what: str) -> list[tuple[str, str]]:
    if not isinstance(kept, (list, tuple)):
        raise Mismatch(f"For {what} the first thing your function returned is a {type(kept).__name__}; a list "
                       f"of (prompt, output) pairs was expected.")
    pairs = []
    for item in kept:
        if isinstance(item, str):
            raise Mismatch(f"For {what} your function kept {item!r}, a string alone; keep each sample whole.",
                           "Keep (prompt, output) pairs, as the samples came: a student is trained on the prompt "
                           "together with the output the teacher wrote for it.")
        if not isinstance(item, (list, tuple)) or len(item) != 2:
            raise Mismatch(f"For {what} your function kept {item!r}; each kept sample should be a (prompt, "
                           f"output) pair.")
        pairs.append((item[0], item[1]))
    return pairs


def _shown(pairs: list[tuple[str, str]], limit: int = 6) -> str:
    text = ", ".join(f"{p}{o}" for p, o in pairs[:limit])
    return f"[{text}{', ...' if len(pairs) > limit else ''}] ({len(pairs)})"


def _first_n_then_filter(samples, at_most):
    seen, taken = {}, []
    for prompt, output in samples:
        seen[prompt] = seen.get(prompt, 0) + 1
        if at_most is None or seen[prompt] <= at_most:
            taken.append((prompt, output))
    return [s for s in taken if _verifier(*s)]


def _check_keep_accepted(answer) -> None:
    for samples, at_most, what in _filter_cases():
        expected, expected_share = _keep_accepted(samples, _verifier, at_most)
        calls = []

        def verifier(prompt, output):
            calls.append(prompt)
            return _verifier(prompt, output)

        result = answer(list(samples), verifier, at_most)
        if result is None:
            raise Mismatch(f"Your function returned None for {what}.", "Did you forget the `return` statement?")
        if not isinstance(result, (tuple, list)) or len(result) != 2 or isinstance(result[0], str):
            raise Mismatch(f"For {what} your function returned {type(result).__name__} {str(result)[:80]}; two "
                           f"things were expected: the kept samples and the share kept.",
                           "Return a pair: the list of kept (prompt, output) samples, and the share of all the "
                           "samples that it holds.")
        kept, share = result
        kept = _as_pairs(kept, what)
        if kept != expected:
            accepted = [s for s in samples if _verifier(*s)]
            rejected = [s for s in samples if not _verifier(*s)]
            mistakes = [
                (rejected, "Those are the samples the verifier rejected: keep the ones for which it returns True."),
                (_first_n_then_filter(samples, at_most),
                 "Your cap counted the rejected samples too: a prompt whose first samples fail should still get "
                 "up to at_most accepted ones from its later samples. Count only what you keep."),
                (accepted[:at_most] if at_most is not None else None,
                 "at_most is a cap per prompt, not on the whole set: count the kept samples of each prompt "
                 "separately."),
                (list(dict.fromkeys(accepted)) if at_most is None else None,
                 "Keep repeats: when the teacher writes the same correct output twice for a prompt, both samples "
                 "are kept (they weigh that output twice, as the teacher did)."),
                (sorted(expected), "Keep the samples in the order they came: sorting changes which ones the cap "
                                   "keeps and what a reader expects."),
            ]
            prompts = {p for p, _ in samples}
            if any(first not in prompts for first in calls):
                mistakes.insert(0, (kept, "The verifier was called with something other than a prompt first: call "
                                          "it as verifier(prompt, output)."))
            if at_most is None:
                mistakes.append(([], "at_most=None means no cap: keep every accepted sample."))
            hint = next((h for wrong, h in mistakes if wrong is not None and kept == wrong), None)
            raise Mismatch(f"For {what} the kept samples should be {_shown(expected)}, but your function kept "
                           f"{_shown(kept)}.", hint)
        if not isinstance(share, Real) or isinstance(share, bool):
            raise Mismatch(f"For {what} the share your function returned is a {type(share).__name__}; a number "
                           f"from 0 to 1 was expected.")
        if math.isclose(share, expected_share, rel_tol=1e-9, abs_tol=1e-12):
            continue
        prompts = len({p for p, _ in samples})
        mistakes = [
            (100 * expected_share, "Give the share as a fraction from 0 to 1, not a percentage."),
            (1 - expected_share, "That is the share thrown away; return the share kept."),
            (len(expected) / max(1, sum(_verifier(*s) for s in samples)),
             "Divide by the number of samples the teacher wrote, all of them: the share kept says how much of "
             "the teacher's work (and cost) the filter let through."),
            (len(expected) / prompts, "Divide by the number of samples, not of prompts."),
            (float(len(expected)), "Return the share, the number kept divided by the number written, not the count."),
        ]
        hint = next((h for wrong, h in mistakes if math.isclose(share, wrong, rel_tol=1e-9, abs_tol=1e-12)), None)
        raise Mismatch(f"For {what} the share kept should be {expected_share:.4g} ({len(expected)} of "
                       f"{len(samples)} samples), but your function returned {share:.4g}.", hint)


keep_accepted = Exercise(
    "9.1", "keep the samples the verifier accepts",
    hint="Go through the samples in the order they came and ask the verifier about each one. Keep a count per "
         "prompt of the samples already kept, so that the cap only ever counts accepted samples. The share is "
         "taken over everything the teacher wrote.",
    run_checks=_check_keep_accepted,
)


# --- Exercise 9.2: choose a setting on the validation split -------------------------------------

# Each table is built so that a usual wrong rule picks another setting than the right one:
# "A" has the best mean on validation; "B" the luckiest seed; "C" the best first seed; "D" the best
# test figures (and a poor validation mean); "E" the lowest validation mean; "F" the best sum of the
# two splits' means.
_TABLE = {
    "A": {"validation": [0.33, 0.32, 0.34], "test": [0.30, 0.31, 0.33]},
    "B": {"validation": [0.20, 0.45, 0.22], "test": [0.28, 0.30, 0.27]},
    "C": {"validation": [0.40, 0.20, 0.21], "test": [0.25, 0.27, 0.26]},
    "D": {"validation": [0.16, 0.14, 0.15], "test": [0.50, 0.48, 0.52]},
    "E": {"validation": [0.05, 0.06, 0.04], "test": [0.10, 0.09, 0.11]},
    "F": {"validation": [0.31, 0.30, 0.32], "test": [0.40, 0.41, 0.39]},
}
_TEMPERATURES = {
    0.5: {"validation": [0.30, 0.31, 0.29]},
    1.0: {"validation": [0.28, 0.27, 0.35]},
    2.0: {"validation": [0.31, 0.33, 0.32]},
    3.0: {"validation": [0.29, 0.35, 0.26]},
}
_TIED = {
    (3.0, 1, None): {"validation": [0.36, 0.34, 0.35], "test": [0.30, 0.29, 0.31]},
    (2.0, 4, None): {"validation": [0.30, 0.31, 0.32], "test": [0.20, 0.21, 0.22]},
    (3.0, 4, 1): {"validation": [0.34, 0.36, 0.35], "test": [0.31, 0.30, 0.29]},
}


def _choice_cases():
    return [
        (_TABLE, "five settings A to E, each with three seeds on the validation and on the test split"),
        (_TEMPERATURES, "four temperatures with validation figures only"),
        (_TIED, "three (temperature, samples per prompt, kept per prompt) settings, two of them tied on validation"),
    ]


def _by(figures: dict, rule) -> object:
    values = {setting: rule(figures[setting]) for setting in figures}
    return max(values, key=values.get)


def _check_choose_on_validation(answer) -> None:
    for figures, what in _choice_cases():
        expected = _choose_on_validation(figures)
        try:
            got = answer({k: {split: list(v) for split, v in f.items()} for k, f in figures.items()})
        except KeyError as error:
            if error.args and error.args[0] == "test":
                raise Mismatch(f"For {what} your function looked for test figures, which this table does not have.",
                               "Choose without the test split at all: it is kept for the final figures, once.") from None
            raise
        if got is None:
            raise Mismatch(f"Your function returned None for {what}.", "Did you forget the `return` statement?")
        if got == expected:
            continue
        if isinstance(got, Real) and not isinstance(got, bool) and not isinstance(expected, Real):
            raise Mismatch(f"For {what} your function returned the number {got}; the setting itself (one of the "
                           f"table's keys, here {expected!r}) was expected.",
                           "Return the key of the best setting, not its accuracy.")
        with_test = all("test" in f for f in figures.values())
        mistakes = [
            (lambda f: statistics.fmean(f["test"]),
             "You chose by the test figures. The test split is looked at once, for the final numbers; a setting "
             "chosen on it makes those numbers optimistic. Choose on the validation split."),
            (lambda f: statistics.fmean(f["validation"]) + statistics.fmean(f["test"]),
             "Your choice used the test figures as well; choose on the validation split alone."),
        ] if with_test else []
        mistakes += [
            (lambda f: max(f["validation"]), "You chose the setting with the luckiest seed. One seed can be lucky; "
                                             "compare the mean over the seeds."),
            (lambda f: f["validation"][0], "You chose by the first seed alone; compare the mean over all the seeds."),
            (lambda f: -statistics.fmean(f["validation"]), "That is the setting with the lowest validation "
                                                           "accuracy; choose the highest."),
        ]
        hint = next((h for rule, h in mistakes if _by(figures, rule) == got), None)
        if hint is None and got in figures and statistics.fmean(figures[got]["validation"]) == \
                statistics.fmean(figures[expected]["validation"]):
            hint = ("Those two are tied on the validation mean; the rule gives a tie to the setting listed first, "
                    "so that the choice never depends on how the ties are broken by accident.")
        raise Mismatch(f"For {what} the setting to choose is {expected!r}, but your function returned {got!r}.", hint)


choose_on_validation = Exercise(
    "9.2", "choose a setting on the validation split",
    hint="Summarise each setting by its average over the seeds, on the one split meant for choosing, and take "
         "the best; when two are equal, keep the one listed first.",
    run_checks=_check_choose_on_validation,
)
