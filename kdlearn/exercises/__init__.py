"""How the lessons check their exercises.

Each exercise asks the learner for a function. Its check calls that function on a few
inputs, compares the results with kdlearn's own answer, and prints one verdict:

    Exercise 1.1 (softmax with temperature): correct ✓
    Exercise 1.1 (softmax with temperature): not yet ✗
      For logits [2, 1, 0.1] at T=4 the answer should be [...], but your function returned [...].
      Hint: ...
    Exercise 1.1 (softmax with temperature): not attempted yet
      ...

The first line is stable ("Exercise <number> (<title>): <status>"), so a grader can read it.
A learner never sees a traceback from a check: whatever their function raises becomes part
of the verdict. The lesson modules (lesson00, lesson01, ...) define the exercises; a
notebook imports its lesson's module and calls ``check.<exercise>(learner_function)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

CORRECT = "correct ✓"
WRONG = "not yet ✗"
NOT_ATTEMPTED = "not attempted yet"

NOT_ATTEMPTED_ADVICE = (
    "Replace the `raise NotImplementedError` line in the exercise cell with your code, "
    "run that cell, then run this check again."
)


class Mismatch(Exception):
    """Raised inside a check when the learner's answer differs from the expected one.

    ``detail`` says what was expected and what came back; ``hint`` (optional) replaces the
    exercise's general hint when the check recognised a specific mistake."""

    def __init__(self, detail: str, hint: str | None = None):
        super().__init__(detail)
        self.detail = detail
        self.hint = hint


@dataclass(frozen=True)
class Verdict:
    number: str
    title: str
    status: str
    detail: str = ""
    hint: str = ""

    @property
    def passed(self) -> bool:
        return self.status == CORRECT

    def __str__(self) -> str:
        lines = [f"Exercise {self.number} ({self.title}): {self.status}"]
        if self.detail:
            lines.append(f"  {self.detail}")
        if self.hint:
            lines.append(f"  Hint: {self.hint}")
        return "\n".join(lines)


class Exercise:
    """One exercise: its number, title, general hint, and the function that checks an answer.

    ``run_checks(answer)`` returns normally when the answer is right and raises Mismatch when it
    is not; any other exception comes from the learner's code and is reported as such."""

    def __init__(self, number: str, title: str, hint: str, run_checks: Callable[[Callable], None]):
        self.number, self.title, self.hint = number, title, hint
        self._run_checks = run_checks

    def evaluate(self, answer) -> Verdict:
        def verdict(status, detail="", hint=""):
            return Verdict(self.number, self.title, status, detail, hint)

        if not callable(answer):
            return verdict(WRONG, f"The check expects your function itself, got {type(answer).__name__}.",
                           "Pass the function's name without calling it, e.g. check.x(my_function).")
        try:
            self._run_checks(answer)
        except NotImplementedError:
            return verdict(NOT_ATTEMPTED, NOT_ATTEMPTED_ADVICE)
        except Mismatch as mismatch:
            return verdict(WRONG, mismatch.detail, mismatch.hint or self.hint)
        except Exception as error:  # the learner's code failed: report it, never a traceback
            return verdict(WRONG, f"Your function raised {type(error).__name__}: {error}", self.hint)
        return verdict(CORRECT)

    def __call__(self, answer) -> None:
        """Check ``answer`` and print the verdict."""
        print(self.evaluate(answer))

    def passing_or(self, answer, fallback: Callable, fallback_name: str):
        """The learner's function once it passes this exercise, kdlearn's until then.

        Lets the cells after an exercise run whether or not the learner has solved it."""
        if self.evaluate(answer).passed:
            # A passing callable need not be a plain function (functools.partial has no __name__).
            print(f"Using your {getattr(answer, '__name__', 'function')} (exercise {self.number} passes).")
            return answer
        print(f"Exercise {self.number} is not solved yet, so the cells below use {fallback_name} instead.")
        return fallback


def named_answer(answers: dict[str, Callable], name: str) -> Callable:
    """``answers[name]``, or a ValueError listing the names there are: each lesson module's
    ``reference(name)``, which hands kdlearn's own answer to a notebook, looks names up here."""
    if name not in answers:
        raise ValueError(f"name must be one of {', '.join(map(repr, answers))}; got {name!r}")
    return answers[name]


class ClaimFailed(AssertionError):
    """A fact that a lesson's prose states did not hold in this run."""


def claim(statement: str, holds: bool, measured: str = "") -> None:
    """Print ``✓ statement`` when ``holds``; raise ClaimFailed when it does not.

    A lesson's prose may say what its run measured ("distillation closes most of the gap") only
    where a cell tagged ``nbval-check-output`` claims it: the printed line is stored, so a rerun in
    which the fact stops holding fails nbval instead of leaving the prose wrong. ``measured`` (the
    figures behind the claim) is shown only when it fails, so the stored line does not change with
    a figure that may move a little."""
    if not holds:
        raise ClaimFailed(f"The lesson says that {statement}, but this run measured otherwise"
                          f"{': ' + measured if measured else ''}. Rerun the lesson from the top; if it "
                          f"still fails, the text above needs to change with the numbers.")
    print(f"✓ {statement}")


# --- helpers the lesson modules use to compare an answer with the expected one ---------------


def show(x, digits: int = 4) -> str:
    """A short, stable text for a tensor or number, for verdicts."""
    if isinstance(x, torch.Tensor):
        values = x.detach().cpu().flatten().tolist()
        if x.dim() == 0:
            return f"{values[0]:.{digits}g}"
        shown = ", ".join(f"{v:.{digits}g}" for v in values[:8])
        return f"[{shown}{', ...' if len(values) > 8 else ''}]"
    if isinstance(x, float):
        return f"{x:.{digits}g}"
    return repr(x)


def as_tensor(result, what: str) -> torch.Tensor:
    """The learner's result as a tensor, or a Mismatch explaining what came back instead."""
    if isinstance(result, torch.Tensor):
        return result
    if result is None:
        raise Mismatch(f"Your function returned None for {what}.",
                       "Did you forget the `return` statement?")
    raise Mismatch(f"Your function returned a {type(result).__name__} for {what}; a torch.Tensor was expected.")


def close(got: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-4, atol: float = 1e-6) -> bool:
    return got.shape == expected.shape and torch.allclose(
        got.detach().to(torch.float64).cpu(), expected.detach().to(torch.float64).cpu(), rtol=rtol, atol=atol)


def expect_close(got, expected: torch.Tensor, what: str, mistakes=()) -> None:
    """Raise Mismatch unless ``got`` equals ``expected`` up to rounding.

    ``mistakes`` is a sequence of (wrong_value, hint) pairs: when ``got`` equals one of the
    values that a known mistake produces, the verdict names that mistake."""
    got = as_tensor(got, what)
    if tuple(got.shape) != tuple(expected.shape):
        raise Mismatch(f"For {what} the answer should have shape {tuple(expected.shape)}, "
                       f"but your function returned shape {tuple(got.shape)}.")
    if close(got, expected):
        return
    hint = next((h for wrong, h in mistakes if close(got, wrong)), None)
    if not torch.isfinite(got.detach()).all() and torch.isfinite(expected).all():
        hint = hint or "Your result has NaN or inf where the answer is finite: look for an exp that overflows."
    raise Mismatch(f"For {what} the answer should be {show(expected)}, but your function returned {show(got)}.",
                   hint)
