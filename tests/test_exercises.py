"""The exercise checks, proven against the notebooks themselves.

Every exercise is discovered from the reference notebooks (solutions/NN_*.ipynb): a code cell whose
first line is ``# Exercise N.M`` and which defines one function, named like its Exercise object in
kdlearn.exercises.lessonNN. A new lesson's exercises are therefore covered without editing this file.
"""

from __future__ import annotations

import ast
import functools
import importlib
import importlib.util
import pkgutil
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import nbformat
import pytest
import torch
import torch.nn.functional as F

import kdlearn.exercises
from kdlearn.course import SOLUTION_BEGIN
from kdlearn.exercises import CORRECT, NOT_ATTEMPTED, WRONG, Exercise, lesson00, lesson01
from tests.wrong_answers import assert_caught, wrong

ROOT = Path(__file__).parents[1]
SOLUTIONS = ROOT / "solutions"
LESSONS = ROOT / "lessons"
EXERCISE_HEADER = re.compile(r"#\s*Exercise\s+(\d+(?:\.\d+)+)\b")


# --- discovery ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExerciseCell:
    notebook: Path
    lesson: str            # "00", from the notebook's file name
    number: str            # "0.1", from the cell's "# Exercise N.M" line
    function: str | None   # the one function the cell defines (None if it defines not exactly one)
    source: str

    @property
    def id(self) -> str:
        return f"{self.lesson}-{self.function or self.number}"


def defined_functions(source: str) -> list[str]:
    return [node.name for node in ast.parse(source).body if isinstance(node, ast.FunctionDef)]


def exercise_cells(folder: Path) -> list[ExerciseCell]:
    found = []
    for path in sorted(folder.glob("[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            header = EXERCISE_HEADER.fullmatch(cell.source.split("\n", 1)[0].strip())
            if cell.cell_type == "code" and header:
                functions = defined_functions(cell.source)
                found.append(ExerciseCell(path, path.name[:2], header.group(1),
                                          functions[0] if len(functions) == 1 else None, cell.source))
    return found


def lesson_modules() -> dict[str, object]:
    """{"00": kdlearn.exercises.lesson00, ...}: every lessonNN module of kdlearn.exercises."""
    names = [info.name for info in pkgutil.iter_modules(kdlearn.exercises.__path__)]
    return {name[-2:]: importlib.import_module(f"kdlearn.exercises.{name}")
            for name in sorted(names) if re.fullmatch(r"lesson\d\d", name)}


def exercises_in(module) -> dict[str, Exercise]:
    return {name: value for name, value in vars(module).items() if isinstance(value, Exercise)}


REFERENCE_CELLS = exercise_cells(SOLUTIONS)
LEARNER_CELLS = {(cell.lesson, cell.number): cell for cell in exercise_cells(LESSONS)}
MODULES = lesson_modules()
ALL_EXERCISES = [(lesson, name, exercise) for lesson, module in MODULES.items()
                 for name, exercise in exercises_in(module).items()]


def exercise_for(cell: ExerciseCell) -> Exercise:
    module = MODULES.get(cell.lesson)
    assert module is not None, (
        f"{cell.notebook.name} has exercises but there is no kdlearn.exercises.lesson{cell.lesson}")
    exercise = getattr(module, cell.function or "", None)
    assert isinstance(exercise, Exercise), (
        f"{cell.notebook.name}: exercise {cell.number} defines {cell.function!r}, "
        f"but kdlearn.exercises.lesson{cell.lesson} has no Exercise of that name")
    return exercise


def function_from(source: str, name: str) -> Callable:
    """Run ``import torch`` and the cell in a fresh namespace, as the notebook would; return ``name``."""
    namespace: dict = {}
    exec(compile("import torch\n" + source, "<exercise cell>", "exec"), namespace)
    return namespace[name]


def learner_cell(cell: ExerciseCell) -> ExerciseCell:
    learner = LEARNER_CELLS.get((cell.lesson, cell.number))
    assert learner is not None, f"lessons/{cell.notebook.name} has no '# Exercise {cell.number}' cell"
    return learner


def reference_solution(lesson: str, name: str) -> Callable:
    cell = next((c for c in REFERENCE_CELLS if (c.lesson, c.function) == (lesson, name)), None)
    assert cell is not None, f"no exercise cell in solutions/{lesson}_*.ipynb defines {name}"
    return function_from(cell.source, cell.function)


cells = pytest.mark.parametrize("cell", REFERENCE_CELLS, ids=lambda c: c.id)
exercises = pytest.mark.parametrize("lesson, name, exercise", ALL_EXERCISES,
                                    ids=[f"{lesson}-{name}" for lesson, name, _ in ALL_EXERCISES])


def test_the_notebooks_have_exercises():
    """Discovery finds the course's exercises (an empty list would make every test below vacuous)."""
    assert len(REFERENCE_CELLS) >= 3
    assert {cell.lesson for cell in REFERENCE_CELLS} >= {"00", "01"}


# --- the notebooks and the checks fit together ---------------------------------------------------


@cells
def test_exercise_cell_defines_exactly_one_function(cell):
    """A learner fills in one function per exercise cell, the one the check is called on."""
    assert cell.function is not None, (
        f"{cell.notebook.name}, exercise {cell.number}: expected one function, found {defined_functions(cell.source)}")


@cells
def test_exercise_number_matches_its_check(cell):
    """The number a learner reads above the cell is the one the verdict prints."""
    exercise = exercise_for(cell)
    assert cell.number == exercise.number
    assert int(cell.number.split(".")[0]) == int(cell.lesson), "exercise N.M belongs in lesson N"


@exercises
def test_every_check_is_used_by_exactly_one_exercise_cell(lesson, name, exercise):
    """No orphan check: each Exercise in kdlearn.exercises.lessonNN has exactly one cell in lesson NN."""
    users = [cell for cell in REFERENCE_CELLS if cell.lesson == lesson and cell.function == name]
    assert len(users) == 1, (
        f"lesson{lesson}.{name} is used by {len(users)} exercise cells in solutions/{lesson}_*.ipynb")


def test_every_solution_block_is_in_an_exercise_cell():
    """A solved exercise is never missed by these tests because its header is misspelt."""
    exercise_sources = {cell.source for cell in REFERENCE_CELLS}
    for path in sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb")):
        for cell in nbformat.read(path, as_version=4).cells:
            if SOLUTION_BEGIN in cell.source:
                assert cell.source in exercise_sources, (
                    f"{path.name}: solution outside a '# Exercise N.M' cell:\n{cell.source}")


@cells
def test_learner_notebook_has_the_same_exercise(cell):
    """The learner version offers every exercise of the reference, with the same function name."""
    assert learner_cell(cell).function == cell.function


# --- the reference solution passes, the stub is "not attempted" --------------------------------


@cells
def test_reference_solution_passes_its_check(cell):
    """The solution in solutions/ is marked correct, so a learner who writes it is told so."""
    exercise = exercise_for(cell)
    verdict = exercise.evaluate(function_from(cell.source, cell.function))
    assert verdict.status == CORRECT, str(verdict)
    assert verdict.passed
    assert str(verdict).split("\n")[0] == f"Exercise {exercise.number} ({exercise.title}): correct ✓"


@cells
def test_learner_stub_is_not_attempted(cell):
    """Running the check on the untouched learner cell says 'not attempted yet', without a traceback."""
    exercise = exercise_for(cell)
    learner = learner_cell(cell)
    verdict = exercise.evaluate(function_from(learner.source, learner.function))
    assert verdict.status == NOT_ATTEMPTED, str(verdict)
    assert not verdict.passed
    assert str(verdict).split("\n")[0] == f"Exercise {exercise.number} ({exercise.title}): not attempted yet"
    assert "NotImplementedError" in str(verdict)


# --- wrong answers get the specific hint ---------------------------------------------------------


def ce_missing_minus(logits, label):
    return torch.log_softmax(logits, dim=-1)[label]


def ce_probability(logits, label):
    return torch.softmax(logits, dim=-1)[label]


def ce_raw_logit(logits, label):
    return -logits[label]


def sm_ignores_T(logits, T):
    return torch.softmax(logits, dim=-1)


def sm_multiplies_by_T(logits, T):
    return torch.softmax(logits * T, dim=-1)


def sm_dim_0(logits, T):
    return torch.softmax(logits / T, dim=0)


def sm_naive(logits, T):
    exps = torch.exp(logits / T)
    return exps / exps.sum(dim=-1, keepdim=True)


def sm_no_return(logits, T):
    torch.softmax(logits / T, dim=-1)


def sm_list(logits, T):
    return torch.softmax(logits / T, dim=-1).tolist()


def kd(student, teacher, labels, T, alpha, *, t_squared=True, reverse=False, swap=False,
       hard_at_T=False, reduction="mean"):
    """Hinton's loss written out, with switches for the usual mistakes."""
    log_q = torch.log_softmax(student / T, dim=-1)
    log_p = torch.log_softmax(teacher / T, dim=-1)
    kl_rows = ((log_q.exp() * (log_q - log_p)) if reverse else (log_p.exp() * (log_p - log_q))).sum(dim=-1)
    hard_rows = F.cross_entropy(student / T if hard_at_T else student, labels, reduction="none")
    soft_weight, hard_weight = (1 - alpha, alpha) if swap else (alpha, 1 - alpha)
    rows = soft_weight * (T * T if t_squared else 1.0) * kl_rows + hard_weight * hard_rows
    return rows.sum() if reduction == "sum" else rows.mean()


def kd_right(s, t, y, T, alpha):
    return kd(s, t, y, T, alpha)


def kd_no_t_squared(s, t, y, T, alpha):
    return kd(s, t, y, T, alpha, t_squared=False)


def kd_reverse_kl(s, t, y, T, alpha):
    return kd(s, t, y, T, alpha, reverse=True)


def kd_alpha_swapped(s, t, y, T, alpha):
    return kd(s, t, y, T, alpha, swap=True)


def kd_hard_at_T(s, t, y, T, alpha):
    return kd(s, t, y, T, alpha, hard_at_T=True)


def kd_batch_sum(s, t, y, T, alpha):
    return kd(s, t, y, T, alpha, reduction="sum")


def kd_raises(s, t, y, T, alpha):
    return s + "a string"   # TypeError, as a learner's typo would raise


def kd_from_kl_div(s, t, y, T, alpha, **kl_div_options):
    """Hinton's loss as a learner writes it with torch.nn.functional.kl_div, options as given."""
    log_q = torch.log_softmax(s / T, dim=-1)
    log_p = torch.log_softmax(t / T, dim=-1)
    target = kl_div_options.pop("target", log_p)
    soft_term = F.kl_div(log_q, target, **kl_div_options)
    return alpha * T * T * soft_term + (1 - alpha) * F.cross_entropy(s, y)


def kd_kl_div_right(s, t, y, T, alpha):
    return kd_from_kl_div(s, t, y, T, alpha, log_target=True, reduction="batchmean")


def kd_kl_div_default_reduction(s, t, y, T, alpha):
    # The commonest mistake: reduction="mean" (the default) divides by B·V, not by B.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch warns about exactly this, in words of its own
        return kd_from_kl_div(s, t, y, T, alpha, log_target=True)


def kd_kl_div_summed(s, t, y, T, alpha):
    return kd_from_kl_div(s, t, y, T, alpha, log_target=True, reduction="sum")


def kd_kl_div_probability_target(s, t, y, T, alpha):
    return kd_from_kl_div(s, t, y, T, alpha, target=torch.softmax(t / T, dim=-1), log_target=True,
                          reduction="batchmean")


def kd_kl_div_log_target_missing(s, t, y, T, alpha):
    return kd_from_kl_div(s, t, y, T, alpha, reduction="batchmean")   # log-probabilities read as probabilities



WRONG_ANSWERS = [
    wrong(lesson00.cross_entropy, ce_missing_minus, hint="*negative* log-probability"),
    wrong(lesson00.cross_entropy, ce_probability, hint="the label's probability itself"),
    wrong(lesson00.cross_entropy, ce_raw_logit, hint="raw logit"),
    wrong(lesson01.softmax_with_temperature, sm_ignores_T, hint="temperature seems unused"),
    wrong(lesson01.softmax_with_temperature, sm_multiplies_by_T, hint="multiplying sharpens"),
    wrong(lesson01.softmax_with_temperature, sm_dim_0, hint="dim=-1"),
    wrong(lesson01.softmax_with_temperature, sm_naive, hint="NaN or inf", detail="large logits"),
    wrong(lesson01.softmax_with_temperature, sm_no_return, hint="`return`", detail="returned None"),
    wrong(lesson01.softmax_with_temperature, sm_list, hint=lesson01.softmax_with_temperature.hint,
          detail="returned a list for logits [2, 1, 0.1] at T=1; a torch.Tensor was expected"),
    wrong(lesson01.distillation_loss, kd_no_t_squared, hint="T²"),
    wrong(lesson01.distillation_loss, kd_reverse_kl, hint="KL(student || teacher)"),
    wrong(lesson01.distillation_loss, kd_alpha_swapped, hint="weights are swapped"),
    wrong(lesson01.distillation_loss, kd_hard_at_T, hint="student at T = 1"),
    wrong(lesson01.distillation_loss, kd_batch_sum, hint="Average over the rows"),
    wrong(lesson01.distillation_loss, kd_kl_div_default_reduction, hint="default reduction, 'mean', divides by every"),
    wrong(lesson01.distillation_loss, kd_kl_div_summed, hint="summed over the examples"),
    wrong(lesson01.distillation_loss, kd_kl_div_probability_target, hint="given probabilities"),
    wrong(lesson01.distillation_loss, kd_kl_div_log_target_missing, hint="log_target=True", detail="returned nan"),
    wrong(lesson01.distillation_loss, kd_raises, hint=lesson01.distillation_loss.hint,
          detail="Your function raised TypeError"),
    wrong(lesson01.distillation_loss, 0.5, hint="without calling it",
          detail="expects your function itself, got float", id="a-number"),
    wrong(lesson01.softmax_with_temperature, sm_dim_0(torch.zeros(2, 2), 1.0), hint="without calling it",
          detail="expects your function itself, got Tensor", id="the-function's-result"),
]


def test_the_switchable_loss_is_right_when_no_switch_is_on():
    """The wrong losses below differ from the right one only by the mistake they are named after."""
    assert lesson01.distillation_loss.evaluate(kd_right).status == CORRECT
    assert lesson01.distillation_loss.evaluate(kd_kl_div_right).status == CORRECT


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_wrong_answer_gets_its_hint(exercise, answer, hint, detail):
    """A common mistake is reported as 'not yet' with the hint that names it, never as a traceback."""
    assert_caught(exercise, answer, hint, detail)



@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_calling_a_check_prints_the_verdict(exercise, answer, hint, detail, capsys):
    """check.x(f) in a notebook prints exactly the verdict, and raises nothing."""
    assert exercise(answer) is None
    assert capsys.readouterr().out == str(exercise.evaluate(answer)) + "\n"


# --- passing_or ----------------------------------------------------------------------------------


def fallback(*args, **kwargs):
    raise AssertionError("the fallback is only returned, never called by passing_or")


@exercises
def test_passing_or_keeps_a_passing_function(lesson, name, exercise, capsys):
    """Once solved, the cells after an exercise use the learner's own function, and say so."""
    solution = reference_solution(lesson, name)
    assert exercise.passing_or(solution, fallback, "kdlearn.fallback") is solution
    out = capsys.readouterr().out
    assert out == f"Using your {solution.__name__} (exercise {exercise.number} passes).\n"


def test_passing_or_accepts_any_passing_callable(capsys):
    """A passing callable without a __name__ is used like any other, not met with a traceback."""
    solution = functools.partial(reference_solution("00", "cross_entropy"))
    assert lesson00.cross_entropy.evaluate(solution).passed
    assert lesson00.cross_entropy.passing_or(solution, fallback, "kdlearn.fallback") is solution
    assert capsys.readouterr().out == "Using your function (exercise 0.1 passes).\n"


@cells
def test_passing_or_falls_back_for_the_stub(cell, capsys):
    """An unsolved exercise does not block the rest of the lesson: kdlearn's function is used, and named."""
    exercise = exercise_for(cell)
    stub = function_from(learner_cell(cell).source, cell.function)
    assert exercise.passing_or(stub, fallback, "kdlearn.fallback") is fallback
    out = capsys.readouterr().out
    assert out == f"Exercise {exercise.number} is not solved yet, so the cells below use kdlearn.fallback instead.\n"


@pytest.mark.parametrize("exercise, answer, hint, detail", WRONG_ANSWERS)
def test_passing_or_falls_back_for_a_wrong_answer(exercise, answer, hint, detail, capsys):
    """A wrong answer is never silently used by the cells after the exercise."""
    assert exercise.passing_or(answer, fallback, "kdlearn.fallback") is fallback
    assert "kdlearn.fallback" in capsys.readouterr().out


# --- verdict text --------------------------------------------------------------------------------


def test_verdict_text_layout():
    """The first line is stable for graders; detail and hint follow, indented, only when present."""
    from kdlearn.exercises import Verdict

    assert str(Verdict("9.9", "a title", CORRECT)) == "Exercise 9.9 (a title): correct ✓"
    assert str(Verdict("9.9", "a title", WRONG, "what differs", "what to try")) == (
        "Exercise 9.9 (a title): not yet ✗\n  what differs\n  Hint: what to try")


def test_not_attempted_verdict_tells_what_to_replace():
    """A learner who runs the check on the stub is told to replace the NotImplementedError line."""
    def stub(*args):
        raise NotImplementedError

    verdict = lesson00.cross_entropy.evaluate(stub)
    assert verdict.status == NOT_ATTEMPTED
    assert "NotImplementedError" in str(verdict)
    assert "Hint:" not in str(verdict)


@pytest.mark.parametrize("exercise", [lesson00.cross_entropy, lesson01.softmax_with_temperature,
                                      lesson01.distillation_loss], ids=lambda e: e.number)
def test_general_hints_of_lessons_00_and_01_lead_without_handing_over_code(exercise):
    """A general hint names the idea; the code (a torch call, a formula) lives only in solutions/."""
    assert "torch" not in exercise.hint, exercise.hint
    assert not re.search(r"\w\(|sum_|/ ?T\b|T²|T \* T", exercise.hint), exercise.hint  # calls, sums, T factors


# --- lesson 00's rule for TRITON_INTERPRET ---------------------------------------------------------


def one_line(text: str) -> str:
    """Text as words: Markdown's backticks and quote marks and the line breaks of a docstring removed."""
    return " ".join(text.replace("`", "").replace("> ", " ").split())


def test_lesson00_and_the_kernels_state_the_triton_interpret_rule_in_the_same_words():
    """One rule, in one wording: lesson 00, kdlearn.environment and the kernels' docstrings never disagree."""
    from kdlearn.environment import TRITON_INTERPRET_RULE

    rule = one_line(TRITON_INTERPRET_RULE)
    lesson = nbformat.read(SOLUTIONS / "00_setup_and_tour.ipynb", as_version=4)
    markdown = one_line(" ".join(cell.source for cell in lesson.cells if cell.cell_type == "markdown"))
    assert rule in markdown
    for module in ["__init__.py", "_common.py"]:
        # Read without importing: _common imports Triton, and its import fixes the interpreter's mode.
        docstring = ast.get_docstring(ast.parse((ROOT / "kdlearn" / "kernels" / module).read_text()))
        assert rule in one_line(docstring), f"kdlearn/kernels/{module}"


def test_triton_advice_states_the_rule_where_a_kernel_could_not_run_yet(monkeypatch):
    from kdlearn import environment

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if environment.version_of("triton") is None:
        assert environment.triton_advice() is None
        return
    assert environment.TRITON_INTERPRET_RULE in environment.triton_advice()
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert environment.triton_advice() is None


RULE_PROBE = """
import os, sys
import torch
import kdlearn
kernel_modules = [m for m in ("kdlearn.kernels._common", "kdlearn.kernels.softmax_divergence",
                              "kdlearn.kernels.topk_divergence") if m in sys.modules]
print("after import kdlearn:", "triton" in sys.modules, kernel_modules)
student, teacher = torch.randn(4, 10), torch.randn(4, 10)
try:
    kdlearn.kl_divergence(student, teacher, T=2.0, backend="triton")
except ValueError as error:
    print("before:", "TRITON_INTERPRET=1" in str(error))
os.environ["TRITON_INTERPRET"] = "1"
kernel = kdlearn.kl_divergence(student, teacher, T=2.0, backend="triton")
print("after:", torch.allclose(kernel, kdlearn.kl_divergence(student, teacher, T=2.0, backend="torch"), atol=1e-6))
"""


def test_the_rule_holds_switching_the_interpreter_on_after_importing_kdlearn_works():
    """What the rule rests on: importing kdlearn imports neither Triton nor a kernel module, so setting
    TRITON_INTERPRET=1 after the import (and even after a refused kernel call) still runs the kernels."""
    import subprocess
    import sys

    if importlib.util.find_spec("triton") is None:
        pytest.skip("Triton is not installed")
    import os

    environment = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    environment["CUDA_VISIBLE_DEVICES"] = ""   # CPU tensors, as on a learner's laptop
    run = subprocess.run([sys.executable, "-c", RULE_PROBE], capture_output=True, text=True, env=environment,
                         cwd=ROOT, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split("\n")[:3] == ["after import kdlearn: False []", "before: True", "after: True"], run.stdout


def test_a_claim_that_holds_prints_its_statement_and_one_that_fails_raises(capsys):
    from kdlearn.exercises import ClaimFailed, claim

    claim("distillation closes most of the gap", True, measured="84% closed")
    assert capsys.readouterr().out == "✓ distillation closes most of the gap\n"
    with pytest.raises(ClaimFailed, match="closes most of the gap, but this run measured otherwise: 12% closed"):
        claim("distillation closes most of the gap", False, measured="12% closed")
