"""kdlearn check, the grader, on a class of synthetic submissions of lesson 00.

One class is graded once, through the command an instructor types, and shared by the tests that
read its report: each submission costs a notebook run of several seconds. The grader's pieces
that need no notebook run (reading verdicts, building the graded copy, judging what the cells
did) are tested directly below it.
"""

from __future__ import annotations

import csv
import hashlib
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from kdlearn import grading
from kdlearn.course import STUB

ROOT = Path(__file__).parents[1]
LESSON = ROOT / "lessons" / "00_setup_and_tour.ipynb"
SOLUTIONS = ROOT / "solutions"
CELL_TIMEOUT_S = 20
EXERCISE = "Exercise 0.1 (cross-entropy of a hard label)"
WRONG_SIGN_HINT = "Hint: Cross-entropy is the *negative* log-probability: it is never below 0."
GRACE_PROBLEM = ("cell 6 (`check.cross_entropy(lambda logits, label: torch.lo...`) raised NameError: "
                 "name 'check' is not defined")   # her retyped check no longer imports the checks
# Seven notebook runs of 5 to 10 s, one of them also waiting out the cell timeout.
CLASS_TIME_LIMIT_S = 240


# --- the synthetic class -----------------------------------------------------------------------


def learner_version() -> nbformat.NotebookNode:
    return nbformat.read(LESSON, as_version=4)


def exercise_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    return next(c for c in notebook.cells if c.cell_type == "code" and c.source.startswith("# Exercise 0.1"))


def check_cell(notebook: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The check of exercise 0.1 (the lesson's second call of it checks a wrong answer on purpose)."""
    return next(c for c in notebook.cells if c.cell_type == "code" and "check.cross_entropy(cross_entropy)" in c.source)


def answered(body: str) -> nbformat.NotebookNode:
    """The learner version with the exercise's stub replaced by ``body`` (indented like the stub)."""
    notebook = learner_version()
    cell = exercise_cell(notebook)
    assert STUB in cell.source
    cell.source = cell.source.replace(STUB, body)
    return notebook


def solved() -> nbformat.NotebookNode:
    """The learner version with the reference's answer, as a learner who solved it would have."""
    notebook = learner_version()
    reference = nbformat.read(SOLUTIONS / LESSON.name, as_version=4)
    exercise_cell(notebook).source = exercise_cell(reference).source
    return notebook


def raising_after_the_check() -> nbformat.NotebookNode:
    """Solved, plus a cell after the check that raises and is marked to be allowed to (it is not)."""
    notebook = solved()
    after = notebook.cells.index(check_cell(notebook)) + 1
    raising = nbformat.v4.new_code_cell("# NBVAL_RAISES_EXCEPTION\n1/0", metadata={"tags": ["raises-exception"]})
    notebook.cells.insert(after, raising)
    return notebook


def faked_verdict(*, keep_cell_id: bool) -> nbformat.NotebookNode:
    """Unsolved, with the check cell rewritten to print a correct verdict, and that verdict pasted
    into its outputs; without ``keep_cell_id`` the check is a new cell, as if retyped."""
    notebook = learner_version()
    check = check_cell(notebook)
    check.source = f'print("{EXERCISE}: correct ✓")'
    check.outputs = [nbformat.v4.new_output("stream", name="stdout", text=f"{EXERCISE}: correct ✓\n")]
    check.execution_count = 5
    if not keep_cell_id:
        check.id = "retyped"
    return notebook


def write(notebook: nbformat.NotebookNode, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(notebook, path)
    return path


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def graded_class(tmp_path_factory):
    """The class graded by one `kdlearn check` on its folder: the process, its CSV, the time it took,
    and each learner file's digest before grading."""
    folder = tmp_path_factory.mktemp("class")
    submissions = folder / "submissions"
    # File names without a lesson number: the grader must tell the lesson from the content.
    write(solved(), submissions / "alice.ipynb")
    write(answered("return torch.log_softmax(logits, dim=-1)[label]"), submissions / "bob.ipynb")
    write(learner_version(), submissions / "carol.ipynb")
    write(raising_after_the_check(), submissions / "dave.ipynb")
    write(answered("while True:\n        pass"), submissions / "erin.ipynb")
    write(faked_verdict(keep_cell_id=True), submissions / "frank.ipynb")
    write(faked_verdict(keep_cell_id=False), submissions / "grace.ipynb")
    (submissions / "henry.ipynb").write_text("my answers are in the email\n", encoding="utf-8")
    before = {path.name: digest(path) for path in submissions.iterdir()}

    grades = folder / "grades.csv"
    start = time.perf_counter()
    process = subprocess.run(
        [sys.executable, "-m", "kdlearn.cli", "check", str(submissions), "--solutions", str(SOLUTIONS),
         "--timeout", str(CELL_TIMEOUT_S), "--csv", str(grades)],
        capture_output=True, text=True, cwd=folder, timeout=2 * CLASS_TIME_LIMIT_S)
    seconds = time.perf_counter() - start
    return {"process": process, "csv": grades, "seconds": seconds, "submissions": submissions, "before": before}


def name(graded_class, file_name: str) -> str:
    return str(graded_class["submissions"] / file_name)


# --- what the instructor gets ------------------------------------------------------------------


def test_the_class_table_is_exactly_right(graded_class):
    out = graded_class["process"].stdout
    table = out[out.index("\nnotebook ") + 1:].rstrip("\n").split("\n")
    rows = [line.split("  ") for line in table]
    rows = [[cell.strip() for cell in row if cell.strip()] for row in rows]
    def n(file_name: str) -> str:
        return name(graded_class, file_name)

    assert rows == [
        ["notebook", "0.1", "score", "problems"],
        [n("alice.ipynb"), "pass", "1/1"],
        [n("bob.ipynb"), "fail", "0/1"],
        [n("carol.ipynb"), "not attempted", "0/1"],
        [n("dave.ipynb"), "pass", "1/1", "cell 6 (`1/0`) raised ZeroDivisionError: division by zero"],
        [n("erin.ipynb"), "fail", "0/1"],
        [n("frank.ipynb"), "not attempted", "0/1"],
        [n("grace.ipynb"), "fail", "0/1", GRACE_PROBLEM],
        [n("henry.ipynb"), "-", "could not be read: Notebook does not appear to be JSON: "
                                "'my answers are in the email\\n'"],
    ]


def test_each_notebook_block_says_why(graded_class):
    out = graded_class["process"].stdout
    blocks = {block.split(":")[0]: block for block in out.split("\n\n")}
    bob = blocks[name(graded_class, "bob.ipynb")]
    assert f"  {EXERCISE}: fail\n" in bob
    assert "the answer should be 0.417, but your function returned -0.417." in bob
    assert f"    {WRONG_SIGN_HINT}" in bob          # the hint the learner saw
    assert f"  {EXERCISE}: not attempted" in blocks[name(graded_class, "carol.ipynb")]
    erin = blocks[name(graded_class, "erin.ipynb")]
    assert f"no verdict: cell 5 (`from kdlearn.exercises import lesson00 as check`) timed out after {CELL_TIMEOUT_S} s" in erin
    assert f"  {EXERCISE}: fail\n    check cell missing" in blocks[name(graded_class, "grace.ipynb")]


def test_exit_status_and_progress(graded_class):
    process = graded_class["process"]
    assert process.returncode == 1, process.stderr
    assert "Traceback" not in process.stdout + process.stderr
    assert [line.split(" ...")[0] for line in process.stderr.splitlines()] == [
        f"grading {name(graded_class, f)}" for f in sorted(graded_class["before"])]


def test_the_csv_for_a_gradebook(graded_class):
    with open(graded_class["csv"], newline="", encoding="utf-8") as file:
        rows = list(csv.reader(file))
    def n(file_name: str) -> str:
        return name(graded_class, file_name)

    assert rows == [
        ["notebook", "lesson", "0.1", "passed", "total", "problems"],
        [n("alice.ipynb"), "00", "pass", "1", "1", ""],
        [n("bob.ipynb"), "00", "fail", "0", "1", ""],
        [n("carol.ipynb"), "00", "not attempted", "0", "1", ""],
        [n("dave.ipynb"), "00", "pass", "1", "1", "cell 6 (`1/0`) raised ZeroDivisionError: division by zero"],
        [n("erin.ipynb"), "00", "fail", "0", "1", ""],
        [n("frank.ipynb"), "00", "not attempted", "0", "1", ""],
        [n("grace.ipynb"), "00", "fail", "0", "1", GRACE_PROBLEM],
        [n("henry.ipynb"), "", "", "", "", "could not be read: Notebook does not appear to be JSON: "
                                           "'my answers are in the email\\n'"],
    ]


def test_learners_files_are_left_byte_for_byte(graded_class):
    after = {path.name: digest(path) for path in graded_class["submissions"].iterdir()}
    assert after == graded_class["before"]


def test_the_class_is_graded_in_bounded_time(graded_class):
    assert graded_class["seconds"] < CLASS_TIME_LIMIT_S


# --- the pieces, without running a notebook ----------------------------------------------------


def reference() -> grading.Reference:
    return grading.ReferenceLessons(SOLUTIONS).get("00")


def test_the_reference_exercises_are_its_correct_verdicts():
    ref = reference()
    assert ref.exercises == [grading.ReferenceExercise("0.1", "cross-entropy of a hard label")]
    # The lesson's demonstration of a wrong answer is checked output, not an exercise.
    assert [check.exercise for check in ref.check_cells] == [ref.exercises[0], None]


def test_printed_verdicts_keep_their_detail_and_hint():
    text = ("Using your function.\n"
            "Exercise 5.3 (the terms of KL(p || q)): not yet ✗\n"
            "  For x the answer should be 1, but your function returned 2.\n"
            "  Hint: look again.\n"
            "Exercise 5.4 (g): not attempted yet\n  Replace the stub.\n")
    assert grading.printed_verdicts(text) == [
        grading.PrintedVerdict("5.3", "the terms of KL(p || q)", "not yet ✗",
                               ("For x the answer should be 1, but your function returned 2.", "Hint: look again.")),
        grading.PrintedVerdict("5.4", "g", "not attempted yet", ("Replace the stub.",)),
    ]


def test_the_lesson_comes_from_the_import_line_the_file_name_or_the_cell_ids():
    references = grading.ReferenceLessons(SOLUTIONS)
    assert references.lesson_of(learner_version(), Path("alice.ipynb")) == "00"
    plain = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print(1)")])
    assert references.lesson_of(plain, Path("03_the_missing_class.ipynb")) == "03"
    assert references.lesson_of(plain, Path("homework.ipynb")) is None
    # Lesson 00 imports its checks in a check cell; rewritten, the cell ids still tell.
    assert references.lesson_of(faked_verdict(keep_cell_id=False), Path("grace.ipynb")) == "00"


def test_the_graded_copy_runs_the_reference_checks_and_no_learner_markers():
    notebook = faked_verdict(keep_cell_id=True)
    exercise = exercise_cell(notebook)
    exercise.source = exercise.source + "\n# NBVAL_SKIP"
    exercise.metadata["tags"] = ["nbval-skip", "mine"]
    ref = reference()
    graded, placed = grading.graded_copy(notebook, ref)
    code = [cell for cell in graded.cells if cell.cell_type == "code"]
    for index, number in placed.items():
        assert code[number].source == ref.check_cells[index].cell.source
        assert code[number].outputs == ref.check_cells[index].cell.outputs
        assert code[number].metadata["tags"] == ["nbval-check-output"]
    assert sorted(placed) == [0, 1]
    exercise = exercise_cell(graded)
    assert "NBVAL" not in exercise.source and exercise.metadata["tags"] == ["mine"]
    assert all(cell.outputs == [] for n, cell in enumerate(code) if n not in placed.values())


def test_a_check_cell_without_its_id_is_found_by_its_source():
    notebook = learner_version()
    for cell in notebook.cells:
        cell.id = f"renumbered-{notebook.cells.index(cell)}"
    graded, placed = grading.graded_copy(notebook, reference())
    assert sorted(placed) == [0, 1]
    assert len({cell.id for cell in graded.cells}) == len(graded.cells)


def cell_record(number: int, outcome: str = "passed", *, stdout: str = "", error=None, started=True,
                timed_out=False, alive_after=True, message="") -> dict:
    return {"cell": number, "outcome": outcome, "message": message, "stdout": stdout, "error": error,
            "started_with_kernel": started, "timed_out": timed_out, "kernel_alive_after": alive_after}


SOURCES = ["import kdlearn", "import torch", "import os", "# Exercise 0.1\ndef cross_entropy(...)",
           "from kdlearn.exercises import lesson00 as check\n\ncheck.cross_entropy(cross_entropy)",
           "check.cross_entropy(lambda logits, label: ...)"]
PLACED = {0: 4, 1: 5}


def test_a_kernel_that_stops_leaves_the_exercises_after_it_not_reached():
    records = {0: cell_record(0), 1: cell_record(1),
               2: cell_record(2, "failed", timed_out=True, alive_after=False),
               3: cell_record(3, "failed", started=False, message="Kernel dead on test start"),
               4: cell_record(4, "failed", started=False), 5: cell_record(5, "failed", started=False)}
    exercises, problems = grading.judge(reference(), PLACED, records, SOURCES, 30, None)
    assert exercises == (grading.ExerciseResult(
        "0.1", "cross-entropy of a hard label", "fail", ("not reached: the kernel stopped in cell 3 (`import os`)",)),)
    assert problems == (
        "cell 3 (`import os`) stopped the kernel (it crashed, or ran past 30 s and could not be interrupted)",
        "cells 4 to 6 did not run",
    )


def test_a_run_stopped_from_outside_says_so():
    records = {0: cell_record(0), 1: cell_record(1)}
    ended = "grading stopped after 500 s, before the notebook finished"
    exercises, problems = grading.judge(reference(), PLACED, records, SOURCES, 30, ended)
    assert exercises[0].lines == (f"not reached: {ended}",)
    assert problems == (ended,)


def test_a_check_that_raises_and_checked_output_that_differs():
    name_error = {"ename": "NameError", "evalue": "name 'cross_entropy' is not defined"}
    records = {n: cell_record(n) for n in range(4)}
    records[4] = cell_record(4, "failed", error=name_error)
    records[5] = cell_record(5, "failed", stdout="something else\n")
    exercises, problems = grading.judge(reference(), PLACED, records, SOURCES, 30, None)
    assert exercises[0].status == "fail"
    assert exercises[0].lines == ("no verdict: cell 5 (`from kdlearn.exercises import lesson00 as check`) "
                                  "raised NameError: name 'cross_entropy' is not defined",)
    assert problems == ("cell 6 (`check.cross_entropy(lambda logits, label: ...)`)'s output differs from the reference",)
