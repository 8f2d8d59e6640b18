"""The notebook tooling: learner versions are generated from the references, up to date, and leak nothing."""

from __future__ import annotations

import copy
import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from kdlearn.course import (SOLUTION_BEGIN, SOLUTION_END, STUB, learner_version, lesson_pairs, stale_lessons,
                            strip_solutions)
from kdlearn.exercises import CORRECT, Exercise

ROOT = Path(__file__).parents[1]
SOLUTIONS = ROOT / "solutions"
LESSONS = ROOT / "lessons"
PAIRS = lesson_pairs(SOLUTIONS, LESSONS)
CHECK_TAG = "nbval-check-output"
CHECK_CALL = re.compile(r"\bcheck\.(\w+)\(")                   # check.x(...), not check.x.passing_or(...)
EXERCISE_CHECK_CALL = re.compile(r"\bcheck\.(\w+)\(\s*(\w+)\s*\)")  # check.x(x): the learner's own function

pairs = pytest.mark.parametrize("reference, learner", PAIRS, ids=[ref.name for ref, _ in PAIRS])
references = pytest.mark.parametrize("path", [ref for ref, _ in PAIRS], ids=[ref.name for ref, _ in PAIRS])
learners = pytest.mark.parametrize("path", [lesson for _, lesson in PAIRS], ids=[ref.name for ref, _ in PAIRS])


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def code_cells(path: Path):
    return [cell for cell in read(path).cells if cell.cell_type == "code"]


def stream_text(cell) -> str:
    return "".join(output.get("text", "") for output in cell.outputs if output.output_type == "stream")


def solution_lines(source: str) -> list[str]:
    """The non-blank lines between the solution markers."""
    lines, inside = [], False
    for line in source.splitlines():
        if line.strip() in (SOLUTION_BEGIN, SOLUTION_END):
            inside = line.strip() == SOLUTION_BEGIN
        elif inside and line.strip():
            lines.append(line.strip())
    return lines


def test_the_course_has_lessons():
    """The tests below look at real notebooks (an empty folder would make them vacuous)."""
    assert len(PAIRS) >= 2
    assert all(reference.exists() and learner.exists() for reference, learner in PAIRS)


# --- the learner versions are generated, and up to date ------------------------------------------


def test_learner_versions_are_up_to_date():
    """lessons/ is exactly what the references give: nobody edited it by hand or forgot to rebuild."""
    stale = stale_lessons(SOLUTIONS, LESSONS)
    assert stale == [], f"out of date: {stale}; regenerate with `python -m kdlearn.course build --no-run`"


def test_no_learner_version_without_a_reference():
    """Every lesson a learner opens has a reference that tests and rebuilds it."""
    assert sorted(p.name for p in LESSONS.glob("*.ipynb")) == sorted(p.name for p in SOLUTIONS.glob("*.ipynb"))


# --- no solution leaks ---------------------------------------------------------------------------


@learners
def test_no_solution_marker_in_a_learner_notebook(path):
    """The markers, and so the blocks they enclose, never reach a learner."""
    text = path.read_text(encoding="utf-8")
    assert SOLUTION_BEGIN not in text and SOLUTION_END not in text


@pairs
def test_no_solution_line_in_a_learner_cell(reference, learner):
    """Each solved cell reaches the learner with its solution replaced by the stub."""
    learner_cells = {cell.id: cell for cell in read(learner).cells}
    solved = [cell for cell in read(reference).cells if SOLUTION_BEGIN in cell.source]
    assert solved, f"{reference.name} has no solution block"
    for cell in solved:
        assert cell.id in learner_cells, f"{learner.name} lacks cell {cell.id}:\n{cell.source}"
        stubbed = learner_cells[cell.id].source
        assert STUB in stubbed
        learner_lines = {line.strip() for line in stubbed.splitlines()}
        leaked = [line for line in solution_lines(cell.source) if line in learner_lines]
        assert not leaked, f"{learner.name}, cell {cell.id} shows solution lines {leaked}"


# --- outputs and nbval tags ----------------------------------------------------------------------


@learners
def test_learner_notebook_is_clean(path):
    """A learner starts from a notebook with no outputs, no execution counts, no reference-only tags."""
    for cell in code_cells(path):
        assert cell.outputs == [], f"{path.name}: stored outputs in\n{cell.source}"
        assert cell.execution_count is None, f"{path.name}: execution count in\n{cell.source}"
        assert "execution" not in cell.metadata, f"{path.name}: run timestamps in\n{cell.source}"
    for cell in read(path).cells:
        assert CHECK_TAG not in cell.metadata.get("tags", []), f"{path.name}: {CHECK_TAG} on\n{cell.source}"


@references
def test_reference_check_cells_are_compared_by_nbval(path):
    """Every check in a reference is tagged nbval-check-output and has a stored verdict to compare with.
    A check is a call of one of the lesson's exercises; its module's other helpers (counters,
    reference answers) are not checks."""
    module = importlib.import_module(f"kdlearn.exercises.lesson{path.name[:2]}")
    checks = [cell for cell in code_cells(path)
              if any(isinstance(getattr(module, name, None), Exercise) for name in CHECK_CALL.findall(cell.source))]
    assert checks, f"{path.name} has no check cell"
    for cell in checks:
        assert CHECK_TAG in cell.metadata.get("tags", []), (
            f"{path.name}: check cell not tagged {CHECK_TAG}:\n{cell.source}")
        assert stream_text(cell).strip(), f"{path.name}: no stored output for\n{cell.source}"


@references
def test_reference_exercise_checks_read_correct(path):
    """The stored verdict of each check on the learner's function is 'correct ✓', as a solved run prints."""
    module = importlib.import_module(f"kdlearn.exercises.lesson{path.name[:2]}")
    exercise_checks = [(cell, match) for cell in code_cells(path)
                       for match in [EXERCISE_CHECK_CALL.search(cell.source)] if match and match[1] == match[2]]
    assert exercise_checks, f"{path.name} checks none of its exercises"
    for cell, match in exercise_checks:
        exercise = getattr(module, match[1])
        assert isinstance(exercise, Exercise)
        expected = f"Exercise {exercise.number} ({exercise.title}): {CORRECT}\n"
        assert stream_text(cell) == expected, (
            f"{path.name}: stored output of `{cell.source.strip()}` is stale; rerun `python -m kdlearn.course build`")


# --- strip_solutions -----------------------------------------------------------------------------


def test_strip_solutions_replaces_a_block_with_the_stub_at_its_indentation():
    """The learner gets the lines around the solution, and the stub where the solution was."""
    source = "\n".join([
        "# Exercise 9.1",
        "def f(x):",
        "    y = x + 1",
        "    # BEGIN SOLUTION",
        "    z = y * 2",
        "",
        "    return z",
        "    # END SOLUTION",
        "",
        "print('after')",
    ])
    assert strip_solutions(source) == "\n".join([
        "# Exercise 9.1",
        "def f(x):",
        "    y = x + 1",
        "    " + STUB,
        "",
        "print('after')",
    ])


def test_strip_solutions_handles_two_blocks_in_one_cell():
    """A cell with two solution blocks, at different depths, gets two stubs."""
    source = "\n".join([
        "def f(x):",
        "    # BEGIN SOLUTION",
        "    return x",
        "    # END SOLUTION",
        "class C:",
        "    def g(self):",
        "        # BEGIN SOLUTION",
        "        return 1",
        "        # END SOLUTION",
        "    h = 2",
    ])
    assert strip_solutions(source) == "\n".join([
        "def f(x):",
        "    " + STUB,
        "class C:",
        "    def g(self):",
        "        " + STUB,
        "    h = 2",
    ])


def test_strip_solutions_leaves_a_cell_without_markers_alone():
    """Cells that are not exercises reach the learner unchanged."""
    source = "import torch\n\nprint(torch.ones(2))"
    assert strip_solutions(source) == source


@pytest.mark.parametrize("source, message", [
    pytest.param("x = 1\n# END SOLUTION", "without", id="END-without-BEGIN"),
    pytest.param("def f():\n    # BEGIN SOLUTION\n    return 1", "without", id="BEGIN-without-END"),
    pytest.param("def f():\n    # BEGIN SOLUTION\n    # BEGIN SOLUTION\n    return 1\n    # END SOLUTION",
                 "inside another", id="nested-BEGIN"),
])
def test_strip_solutions_rejects_unbalanced_markers(source, message):
    """A typo in the markers stops the build instead of leaking a solution or dropping code."""
    with pytest.raises(ValueError, match=message):
        strip_solutions(source)


# --- learner_version -----------------------------------------------------------------------------


# What nbclient records in a cell's metadata when `build` runs the reference.
RUN_TIMINGS = {"iopub.execute_input": "2026-11-22T10:49:14.673039Z", "iopub.status.busy": "2026-11-22T10:49:14.672919Z",
               "iopub.status.idle": "2026-11-22T10:49:15.733259Z", "shell.execute_reply": "2026-11-22T10:49:15.731699Z"}


def synthetic_reference() -> nbformat.NotebookNode:
    kernelspec = {"name": "python3", "display_name": "Python 3", "language": "python"}
    widgets = {"application/vnd.jupyter.widget-state+json": {"state": {}}}
    notebook = new_notebook(metadata={"widgets": widgets, "kernelspec": kernelspec})
    exercise = new_code_cell("# Exercise 9.1\ndef f(x):\n    # BEGIN SOLUTION\n    return x\n    # END SOLUTION",
                             execution_count=1, metadata={"execution": RUN_TIMINGS})
    check = new_code_cell("check.f(f)", execution_count=2,
                          outputs=[new_output("stream", name="stdout", text="Exercise 9.1 (f): correct ✓\n")],
                          metadata={"tags": [CHECK_TAG, "keep-me"]})
    notebook.cells = [new_markdown_cell("# Lesson 99"), exercise, check]
    return notebook


def test_learner_version_leaves_its_input_alone():
    """Building the learner version never changes the reference notebook it came from."""
    reference = synthetic_reference()
    before = copy.deepcopy(reference)
    learner_version(reference)
    assert reference == before


@references
def test_learner_version_leaves_a_real_reference_alone(path):
    """Also for the course's own references, outputs and tags included."""
    reference = read(path)
    before = copy.deepcopy(reference)
    learner_version(reference)
    assert reference == before


def test_learner_version_drops_reference_only_state():
    """The learner version has no widget state, outputs, counts, nor nbval tags; other tags stay."""
    learner = learner_version(synthetic_reference())
    assert "widgets" not in learner.metadata
    assert "kernelspec" in learner.metadata
    exercise, check = learner.cells[1], learner.cells[2]
    assert exercise.source == "# Exercise 9.1\ndef f(x):\n    " + STUB
    assert check.outputs == [] and check.execution_count is None and exercise.execution_count is None
    assert check.metadata["tags"] == ["keep-me"]


def test_learner_version_drops_the_reference_run_timings():
    """Rerunning a reference changes nothing in its learner version: no run timestamps reach a learner."""
    learner = learner_version(synthetic_reference())
    assert all("execution" not in cell.metadata for cell in learner.cells)


# --- the command line ----------------------------------------------------------------------------


def course(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdlearn.course", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)


def test_check_command_passes_on_the_committed_lessons():
    """CI's `python -m kdlearn.course check` succeeds on the repository as it is."""
    result = course("check")
    assert result.returncode == 0, result.stdout + result.stderr


def edit_a_cell(lessons: Path, name: str) -> None:
    notebook = read(lessons / name)
    cell = next(cell for cell in notebook.cells if cell.cell_type == "code")
    cell.source += "\nprint('edited by hand')"
    nbformat.write(notebook, lessons / name)


def delete(lessons: Path, name: str) -> None:
    (lessons / name).unlink()


@pytest.mark.parametrize("spoil", [edit_a_cell, delete], ids=["edited", "missing"])
def test_check_command_fails_on_a_stale_lesson(spoil, tmp_path):
    """A learner notebook edited by hand, or missing, fails the check with the way to fix it."""
    lessons = tmp_path / "lessons"
    shutil.copytree(LESSONS, lessons)
    name = PAIRS[-1][1].name
    spoil(lessons, name)
    result = course("--solutions", str(SOLUTIONS), "--lessons", str(lessons), "check")
    assert result.returncode == 1, result.stdout + result.stderr
    assert f"{lessons / name} is out of date" in result.stdout
    assert "python -m kdlearn.course build --no-run" in result.stdout
    assert PAIRS[0][1].name not in result.stdout, "only the spoiled lesson is reported"


def test_help_lists_the_commands():
    """`python -m kdlearn.course --help` tells a maintainer what the tool does."""
    result = course("--help")
    assert result.returncode == 0, result.stderr
    for command in ("build", "check", "measure"):
        assert command in result.stdout
