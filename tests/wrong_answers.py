"""What every lesson's wrong-answer tests share: how a case is written, and what its verdict must say."""

from __future__ import annotations

import pytest

from kdlearn.exercises import WRONG


def wrong(exercise, answer, hint="", detail="", id=None):
    """A wrong answer to an exercise, with words its hint and its detail must contain."""
    return pytest.param(exercise, answer, hint, detail, id=id or getattr(answer, "__name__", repr(answer)))


def assert_caught(exercise, answer, hint: str, detail: str) -> None:
    """The mistake is reported as 'not yet', with the hint that names it, and never a traceback."""
    verdict = exercise.evaluate(answer)
    text = str(verdict)
    assert verdict.status == WRONG and not verdict.passed, text
    assert hint in verdict.hint, text
    assert detail in verdict.detail, text
    lines = text.split("\n")
    assert lines[0] == f"Exercise {exercise.number} ({exercise.title}): not yet ✗"
    assert lines[-1] == f"  Hint: {verdict.hint}"
    assert "Traceback" not in text and "InterpreterError" not in text
