"""Checks for lesson 10, on-policy distillation.

    from kdlearn.exercises import lesson10 as check
    check.choose_on_policy(choose_on_policy)
    check.position_error_rates(position_error_rates)

Exercise 10.1 is the decision kdlearn.distill.train makes before each update: whether the
student writes this batch (with probability lmbda). It is checked on seeded generators and on
generators rigged to draw the extremes of random.random(), so that lmbda 0 and 1 must hold
exactly, and for its share of on-policy batches, its use of the generator it is given (the same
seed gives the same schedule, whatever else draws random numbers) and its independence of the
seed's value. Exercise 10.2 is the error rate at each position of an any-order answer, checked
against kdlearn.experiments.on_policy.position_errors on hand-made outputs (repeats, digits not
in the prompt, short and long outputs) and on corrupted answers of the task's test prompts.
``reference(name)`` gives kdlearn's answer to an exercise, for the cells after it until the
learner's passes (``Exercise.passing_or``).
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch

from kdlearn import tasks
from kdlearn.exercises import Exercise, Mismatch, expect_close, named_answer
from kdlearn.experiments import on_policy

# --- kdlearn's answers -------------------------------------------------------------------------


def _choose_on_policy(lmbda: float, generator: random.Random) -> bool:
    """True with probability lmbda: one draw from the generator, in [0, 1), below lmbda."""
    return generator.random() < lmbda


def _position_error_rates(prompts: list[str], outputs: list[str]) -> list[float]:
    """The share of outputs wrong at each answer position of AnyOrder (on_policy.wrong_at)."""
    task = tasks.AnyOrder(len(prompts[0]) - 1)
    return on_policy.position_errors(task, [tasks.Example(p, p[:-1]) for p in prompts], outputs)


_REFERENCES = {"choose_on_policy": _choose_on_policy, "position_error_rates": _position_error_rates}


def reference(name: str):
    """kdlearn's answer to exercise ``name`` ("choose_on_policy" or "position_error_rates"), a plain
    function with the exercise's arguments."""
    return named_answer(_REFERENCES, name)


# --- Exercise 10.1: the lambda-mixing decision -------------------------------------------------


class _Rigged(random.Random):
    """A generator whose random() always returns ``value``: the extremes random.random() can reach."""

    def __init__(self, value: float):
        super().__init__(0)
        self.value = value

    def random(self) -> float:
        return self.value


LARGEST_DRAW = 1 - 2 ** -53  # the largest float random.random() returns


def _decision(answer, lmbda: float, generator: random.Random, what: str) -> bool:
    result = answer(lmbda, generator)
    if isinstance(result, (bool, np.bool_)):
        return bool(result)
    if isinstance(result, torch.Tensor) and result.dtype == torch.bool and result.numel() == 1:
        return bool(result)
    if result is None:
        raise Mismatch(f"Your function returned None for {what}.", "Did you forget the `return` statement?")
    if isinstance(result, (float, np.floating)):
        raise Mismatch(f"Your function returned the number {float(result):.4g} for {what}; the decision is True "
                       f"(the student writes this batch) or False.",
                       "Return whether this batch is on-policy, not a probability or the draw itself: the draw "
                       "decides by being compared with lmbda.")
    raise Mismatch(f"Your function returned a {type(result).__name__} for {what}; True or False was expected.")


def _schedule(answer, lmbda: float, generator: random.Random, steps: int, what: str) -> list[bool]:
    return [_decision(answer, lmbda, generator, what) for _ in range(steps)]


def _check_choose_on_policy(answer) -> None:
    for draw in (0.0, LARGEST_DRAW):
        if _decision(answer, 0.0, _Rigged(draw), f"lmbda = 0 and a draw of {draw!r}"):
            raise Mismatch(f"At lmbda = 0 your function chose on-policy when the generator drew {draw!r}.",
                           "lmbda = 0 must mean never, whatever the draw: random() returns numbers from 0.0 "
                           "(included) up to just below 1, and none of them may count at lmbda = 0. Compare so that "
                           "equality counts as off-policy.")
        if not _decision(answer, 1.0, _Rigged(draw), f"lmbda = 1 and a draw of {draw!r}"):
            raise Mismatch(f"At lmbda = 1 your function chose off-policy when the generator drew {draw!r}.",
                           "lmbda = 1 must mean always, whatever the draw: every number random() returns, from 0.0 "
                           "up to just below 1, must count at lmbda = 1.")
    for lmbda, expected in ((0.0, False), (1.0, True)):
        decisions = _schedule(answer, lmbda, random.Random(10), 2000, f"lmbda = {lmbda:g}")
        if any(d != expected for d in decisions):
            raise Mismatch(f"At lmbda = {lmbda:g} your function chose {'off' if expected else 'on'}-policy "
                           f"{sum(d != expected for d in decisions)} times in 2000 steps; lmbda = {lmbda:g} means "
                           f"{'always' if expected else 'never'}.")
    steps = 4000
    for lmbda in (0.05, 0.25, 0.5, 0.9):
        share = sum(_schedule(answer, lmbda, random.Random(f"share/{lmbda}"), steps, f"lmbda = {lmbda}")) / steps
        if share in (0.0, 1.0):
            raise Mismatch(f"At lmbda = {lmbda} your function chose {'on' if share else 'off'}-policy at every one of "
                           f"{steps} steps.", "The decision is random, made afresh for each batch: a coin that comes "
                                              "up on-policy with probability lmbda, tossed with the generator.")
        spread = math.sqrt(lmbda * (1 - lmbda) / steps)
        if abs(share - lmbda) > 4.5 * spread:
            hint = None
            if abs(share - (1 - lmbda)) <= 4.5 * spread:
                hint = ("Your share of on-policy batches is 1 - lmbda: you chose on-policy when the draw is above "
                        "the threshold, where it should be below it.")
            raise Mismatch(f"At lmbda = {lmbda} your function chose on-policy for {share:.3f} of {steps} steps; the "
                           f"share should be about {lmbda} (within {4.5 * spread:.3f}).", hint)
    first = _schedule(answer, 0.5, random.Random(7), 200, "a generator seeded with 7")
    random.seed(12345)  # other code drawing from the module-level generator must change nothing
    torch.manual_seed(12345)
    second = _schedule(answer, 0.5, random.Random(7), 200, "a generator seeded with 7")
    if first != second:
        raise Mismatch("Two generators seeded alike gave different schedules at lmbda = 0.5.",
                       "Draw from the generator you are given, not from the random module's own functions, numpy "
                       "or torch: only then does a seed give the same schedule on every run.")
    if _schedule(answer, 0.5, random.Random(8), 200, "a generator seeded with 8") == first:
        raise Mismatch("Generators seeded with 7 and with 8 gave the same 200 decisions at lmbda = 0.5.",
                       "The decision has to be random: draw from the generator at every call, so that a different "
                       "seed gives a different schedule.")


choose_on_policy = Exercise(
    "10.1", "the lambda-mixing decision",
    hint="Each call decides one batch with one draw from the generator you are given: a uniform number in "
         "[0, 1) falls below lmbda with probability exactly lmbda. Check the two ends: at lmbda = 0 no draw may "
         "count, at lmbda = 1 every draw must.",
    run_checks=_check_choose_on_policy,
)


# --- Exercise 10.2: the error rate at each position of the answer --------------------------------


def _position_cases():
    handmade = [("3817:", o) for o in ("3817", "7138", "3317", "38", "3819", "", "38177", "8:17", "1111", "8713")]
    rng = random.Random(102)
    test = tasks.AnyOrder(4).examples("test")[:60]
    corrupted = []
    for example in test:
        answer = list(example.answer)
        kind = rng.randrange(5)
        if kind == 1:
            answer[rng.randrange(1, 4)] = answer[rng.randrange(0, 4)]      # a repeat, sometimes of itself
        elif kind == 2:
            answer[rng.randrange(4)] = rng.choice("0123456789")           # any digit, maybe one not in the prompt
        elif kind == 3:
            answer = answer[:rng.randrange(4)]                             # stopped early
        corrupted.append((example.prompt, "".join(answer)))
    return [(handmade, 'ten outputs for "3817:": 3817, 7138, 3317, 38, 3819, (empty), 38177, 8:17, 1111 and 8713'),
            (corrupted, "60 test prompts of any_order(4), their answers corrupted (repeats, other digits, cut short)")]


def _as_rates(result, what: str) -> torch.Tensor:
    if result is None:
        raise Mismatch(f"Your function returned None for {what}.", "Did you forget the `return` statement?")
    try:
        return torch.as_tensor(np.asarray(result, dtype=np.float64))
    except (TypeError, ValueError):
        raise Mismatch(f"Your function returned a {type(result).__name__} for {what}; a list of one share per "
                       "position was expected.") from None


def _rates(rows: list[list[bool]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).mean(dim=0)


def _check_position_error_rates(answer) -> None:
    for cases, what in _position_cases():
        prompts, outputs = [p for p, _ in cases], [o for _, o in cases]
        expected = torch.tensor(_position_error_rates(prompts, outputs), dtype=torch.float64)
        got = _as_rates(answer(list(prompts), list(outputs)), what)
        size = len(prompts[0]) - 1
        if got.dim() != 1 or got.numel() != size:
            raise Mismatch(f"For {what} your function returned shape {tuple(got.shape)}; the answer is one share per "
                           f"position of the answer, {size} of them.",
                           "Return one error rate per position (1 to 4), each over all the outputs.")
        digits = [set(p[:-1]) for p in prompts]

        def written(o, i):
            return o[i] if i < len(o) else None

        prompt_order = _rates([[written(o, i) != p[i] for i in range(size)] for p, o in zip(prompts, outputs)])
        repeats_allowed = _rates([[written(o, i) not in d for i in range(size)] for d, o in zip(digits, outputs)])
        short_skipped = torch.tensor([
            sum(i < len(o) and o[i] not in d - set(o[:i]) for d, o in zip(digits, outputs))
            / max(1, sum(i < len(o) for o in outputs)) for i in range(size)], dtype=torch.float64)
        short_right = torch.tensor([
            sum(i < len(o) and o[i] not in d - set(o[:i]) for d, o in zip(digits, outputs)) / len(outputs)
            for i in range(size)], dtype=torch.float64)
        compounding = _rates([[any(written(o, j) is None or o[j] not in d - set(o[:j]) for j in range(i + 1))
                               for i in range(size)] for d, o in zip(digits, outputs)])
        mistakes = [
            (prompt_order, "Any ordering of the prompt's digits is right: a position is wrong only when its digit is "
                           "not in the prompt or was written before it, not when it differs from the prompt's order."),
            (1 - expected, "That is the share of outputs right at each position; the exercise asks for the share "
                           "wrong there."),
            (repeats_allowed, "A digit that is already in the output is wrong the second time: check it against the "
                              "prompt's digits not yet written, not against all of them."),
            (short_skipped, "An output that stops before position i is wrong there, and every output counts: divide "
                            "by the number of outputs, not by those long enough to reach the position."),
            (short_right, "An output that stops before position i is wrong there: a missing character is a mistake."),
            (compounding, "Judge each position on its own, after what was written before it: the position after a "
                          "mistake can still be right (after 33, the 1 of 3317 is a digit not yet written)."),
            (expected * len(outputs), "Those are counts of outputs; divide by the number of outputs for a share."),
        ]
        expect_close(got, expected, what, mistakes)


position_error_rates = Exercise(
    "10.2", "the error rate at each position of the answer",
    hint="Walk along each output: at position i, the character is right when it is one of the prompt's digits "
         "that the output has not written before position i; a missing character is wrong. Then, for each "
         "position, take the share of all the outputs that are wrong there.",
    run_checks=_check_position_error_rates,
)

