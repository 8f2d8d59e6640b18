"""Grade learners' notebooks against the reference lessons: ``kdlearn check``.

For each learner's notebook the grader finds its lesson (from the line
``from kdlearn.exercises import lessonNN as check``, a file name starting ``NN_``, or the cell ids
it shares with a reference) and that lesson's reference, solutions/NN_*.ipynb. The lesson's
exercises are the verdicts its reference run shows as ``correct ✓`` in its check cells (the cells
tagged ``nbval-check-output``).

The learner's file is never run or written: the grader runs a copy, in a temporary folder, in
which every check cell is the reference's own (its source, its stored outputs, its tag), so that
an edited check cell or a pasted verdict counts for nothing, and nbval markers the learner added
elsewhere are removed. nbval runs that copy (``--nbval-lax``, a timeout per cell) in a pytest
process of its own, with kdlearn.nbval_recorder writing down what each cell did. An exercise
passes when nbval finds that its check cell reproduced the reference's output; otherwise the
learner's own verdict says whether it failed (with the detail and hint the learner saw) or was
not attempted, and a check that printed no verdict fails with the reason.
"""

from __future__ import annotations

import argparse
import copy
import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TextIO

import nbformat

import kdlearn
from kdlearn.course import CELL_TIMEOUT_S
from kdlearn.exercises import CORRECT, NOT_ATTEMPTED, WRONG

PASS, FAIL, NOT_DONE = "pass", "fail", "not attempted"
CHECK_TAG = "nbval-check-output"
LESSON_IMPORT = re.compile(r"^\s*from\s+kdlearn\.exercises\s+import\s+lesson(\d\d)\s+as\s+check\b", re.MULTILINE)
LESSON_FILE_NAME = re.compile(r"(\d\d)_")
VERDICT_LINE = re.compile(
    rf"Exercise (?P<number>\S+) \((?P<title>.*)\): (?P<status>{'|'.join(map(re.escape, (CORRECT, WRONG, NOT_ATTEMPTED)))})")
# What nbval obeys besides the check tag: its tags (nbval-skip, nbval-ignore-output, ...,
# raises-exception) and its comment markers (# NBVAL_SKIP, ...). A learner's copy loses them all,
# so that no cell of theirs is skipped or allowed to raise.
NBVAL_TAG = re.compile(r"nbval-.*|raises-exception|pytest-validate-ignore-output")
NBVAL_COMMENT = re.compile(r"\s*#+\s*(NBVAL_\w+|PYTEST_VALIDATE_IGNORE_OUTPUT)\s*")
# Past the per-cell timeout, nbval waits this long for a stopped cell's last outputs.
NBVAL_OUTPUT_WAIT_S = 5
KERNEL_START_S = 60


# --- the reference -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ReferenceExercise:
    number: str
    title: str


@dataclass(frozen=True)
class CheckCell:
    cell: nbformat.NotebookNode      # the reference's cell: source, stored outputs, tags
    exercise: ReferenceExercise | None        # the exercise it shows as correct; None for other checked output


@dataclass(frozen=True)
class Reference:
    lesson: str
    path: Path
    check_cells: tuple[CheckCell, ...]
    cell_ids: frozenset[str]

    @property
    def exercises(self) -> list[ReferenceExercise]:
        return [check.exercise for check in self.check_cells if check.exercise]


@dataclass(frozen=True)
class PrintedVerdict:
    number: str
    title: str
    status: str
    lines: tuple[str, ...]   # the detail and hint lines below the verdict, unindented


def printed_verdicts(text: str) -> list[PrintedVerdict]:
    """The verdicts in a check's printed output, each with the lines that follow it."""
    found: list[tuple[re.Match, list[str]]] = []
    for line in text.splitlines():
        match = VERDICT_LINE.fullmatch(line)
        if match:
            found.append((match, []))
        elif found and line.strip():
            found[-1][1].append(line.strip())
    return [PrintedVerdict(m["number"], m["title"], m["status"], tuple(lines)) for m, lines in found]


def stdout_of(cell: nbformat.NotebookNode) -> str:
    return "".join(o.get("text", "") for o in cell.get("outputs", [])
                   if o.get("output_type") == "stream" and o.get("name") == "stdout")


def load_reference(path: Path) -> Reference:
    notebook = nbformat.read(path, as_version=4)
    check_cells = []
    for cell in notebook.cells:
        if cell.cell_type != "code" or CHECK_TAG not in cell.metadata.get("tags", []):
            continue
        correct = [v for v in printed_verdicts(stdout_of(cell)) if v.status == CORRECT]
        if len(correct) > 1:
            raise SystemExit(f"{path}: one check cell shows exercises {', '.join(v.number for v in correct)} "
                             "as correct; give each exercise a check cell of its own")
        exercise = ReferenceExercise(correct[0].number, correct[0].title) if correct else None
        check_cells.append(CheckCell(cell, exercise))
    ids = frozenset(cell.id for cell in notebook.cells if "id" in cell)
    return Reference(path.name[:2], path, tuple(check_cells), ids)


class ReferenceLessons:
    """The reference lessons in a solutions folder (NN_name.ipynb), each read once, when first needed."""

    def __init__(self, solutions: Path):
        self.solutions = solutions
        self.paths = {path.name[:2]: path for path in sorted(solutions.glob("[0-9][0-9]_*.ipynb"))}
        self._read: dict[str, Reference] = {}

    def get(self, lesson: str) -> Reference | None:
        if lesson in self.paths and lesson not in self._read:
            self._read[lesson] = load_reference(self.paths[lesson])
        return self._read.get(lesson)

    def lesson_of(self, notebook: nbformat.NotebookNode, path: Path) -> str | None:
        """The lesson a learner's notebook is: "01" for one that imports kdlearn.exercises.lesson01
        as check, else for a file named 01_*, else for one that shares most cell ids (which the
        learner versions keep from their references) with the reference lesson 01."""
        for cell in notebook.cells:
            match = LESSON_IMPORT.search(cell.source) if cell.cell_type == "code" else None
            if match:
                return match[1]
        match = LESSON_FILE_NAME.match(path.name)
        if match:
            return match[1]
        ids = {cell.id for cell in notebook.cells if "id" in cell}
        shared = {lesson: len(ids & self.get(lesson).cell_ids) for lesson in self.paths}
        best = max(shared, key=shared.get, default=None)
        return best if best is not None and shared[best] > 0 else None


# --- the copy that runs ------------------------------------------------------------------------


def graded_copy(learner: nbformat.NotebookNode, reference: Reference) -> tuple[nbformat.NotebookNode, dict[int, int]]:
    """The notebook to run, and where each reference check cell sits in it, as
    {index in reference.check_cells: number of the code cell, from 0}.

    A check cell is found by its cell id, which the learner version keeps, else by an identical
    source; whatever the learner did to it, the copy holds the reference's cell."""
    graded = copy.deepcopy(learner)
    positions = [i for i, cell in enumerate(graded.cells) if cell.cell_type == "code"]
    code = [graded.cells[i] for i in positions]
    placed: dict[int, int] = {}
    for index, check in enumerate(reference.check_cells):
        free = [n for n in range(len(code)) if n not in placed.values()]
        found = next((n for n in free if "id" in check.cell and code[n].get("id") == check.cell.id), None)
        if found is None:
            found = next((n for n in free if code[n].source == check.cell.source), None)
        if found is not None:
            placed[index] = found

    for cell in graded.cells:
        tags = [tag for tag in cell.metadata.get("tags", []) if not NBVAL_TAG.fullmatch(tag)]
        if tags:
            cell.metadata["tags"] = tags
        else:
            cell.metadata.pop("tags", None)
        if cell.cell_type == "code":
            cell.source = "\n".join(line for line in cell.source.split("\n") if not NBVAL_COMMENT.fullmatch(line))
            # nbval compares only cells that have run; the learner's own outputs are not evidence.
            cell.outputs, cell.execution_count = [], None
    for index, number in placed.items():
        replacement = copy.deepcopy(reference.check_cells[index].cell)
        if "id" in code[number]:
            replacement["id"] = code[number].id     # cell ids stay unique within the copy
        else:
            replacement.pop("id", None)              # and absent from a notebook format without them
        graded.cells[positions[number]] = replacement
    return graded, placed


def run_nbval(notebook: Path, record: Path, cell_timeout: float, code_cells: int) -> tuple[dict[int, dict], str | None]:
    """Run ``notebook`` through nbval in its own pytest process, in the notebook's folder.

    Returns what kdlearn.nbval_recorder wrote to ``record`` (keep it out of that folder, where the
    learner's code writes) for each code cell it ran, by code cell number, and why the run ended
    early, if it did."""
    folder = notebook.parent
    # A configuration file of our own keeps pytest from taking one from a parent folder.
    (folder / "pytest.ini").write_text("[pytest]\n", encoding="utf-8")
    command = [sys.executable, "-m", "pytest", "-p", "nbval.plugin", "-p", "kdlearn.nbval_recorder",
               f"--kdlearn-record={record}", "--nbval-lax", "--nbval-current-env",
               f"--nbval-cell-timeout={cell_timeout:g}", "-p", "no:cacheprovider", "-q", notebook.name]
    # Only nbval and the recorder: no other installed pytest plugin may reorder or skip cells.
    environment = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    environment.pop("PYTEST_ADDOPTS", None)
    # Never reached while nbval's own timeouts work: a backstop for a run that hangs anyway.
    limit = KERNEL_START_S + code_cells * (cell_timeout + NBVAL_OUTPUT_WAIT_S * 2) + 60
    ended_early = None
    try:
        run = subprocess.run(command, cwd=folder, env=environment, capture_output=True, text=True, timeout=limit)
        # pytest's exit statuses: 0 all cells passed, 1 some failed, 5 no code cell to run.
        if run.returncode not in (0, 1, 5):
            last_line = (run.stdout + run.stderr).strip().split("\n")[-1]
            ended_early = f"nbval could not run it (pytest exit status {run.returncode}: {last_line})"
    except subprocess.TimeoutExpired:
        ended_early = f"grading stopped after {limit:g} s, before the notebook finished"
    records = {}
    if record.exists():
        for line in record.read_text(encoding="utf-8").splitlines():
            try:
                entry = json.loads(line)
            except json.JSONDecodeError:  # the last line, cut short where the backstop stopped the run
                break
            records[entry["cell"]] = entry
    return records, ended_early


# --- the verdicts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExerciseResult:
    number: str
    title: str
    status: str                    # PASS, FAIL or NOT_DONE
    lines: tuple[str, ...] = ()    # for a failure: what the learner saw, or why there is no verdict


@dataclass(frozen=True)
class NotebookResult:
    name: str
    lesson: str | None
    graded: bool                   # a reference was found and the copy was run
    exercises: tuple[ExerciseResult, ...] = ()
    problems: tuple[str, ...] = ()
    seconds: float = 0.0

    @property
    def passed(self) -> int:
        return sum(e.status == PASS for e in self.exercises)

    @property
    def all_passed(self) -> bool:
        return self.graded and self.passed == len(self.exercises)


def _cell(number: int, sources: list[str]) -> str:
    """'cell 7 (`1/0`)': the code cell's number from 1, which is Jupyter's [7] after a run from
    the top, and its first line."""
    first = next((line.strip() for line in sources[number].split("\n") if line.strip()), "")
    return f"cell {number + 1} (`{first[:50]}{'...' if len(first) > 50 else ''}`)"


def _first_line(text: str) -> str:
    return text.strip().split("\n")[0]


def judge(reference: Reference, placed: dict[int, int], records: dict[int, dict], sources: list[str],
          cell_timeout: float, ended_early: str | None) -> tuple[tuple[ExerciseResult, ...], tuple[str, ...]]:
    """Each exercise's result and the notebook's problems, from what each code cell of the graded
    copy did (``records``, by code cell number; ``sources``, the copy's code cells)."""
    checks_at = {number: index for index, number in placed.items()}
    ran = {n: r for n, r in records.items() if r["started_with_kernel"]}
    not_run = sorted(n for n, r in records.items() if not r["started_with_kernel"])
    # Why cells did not run: the kernel stopped during a cell, or it never started.
    stopped_in = next((n for n in sorted(ran) if not ran[n]["kernel_alive_after"]), None)
    if stopped_in is not None:
        kernel_gone = f"the kernel stopped in {_cell(stopped_in, sources)}"
    elif not_run:
        kernel_gone = f"the kernel did not start ({records[not_run[0]]['message']})"
    else:
        kernel_gone = None

    def what_happened(number: int) -> str | None:
        record, cell = ran[number], _cell(number, sources)
        if not record["kernel_alive_after"]:
            return f"{cell} stopped the kernel (it crashed, or ran past {cell_timeout:g} s and could not be interrupted)"
        if record["timed_out"]:
            return f"{cell} timed out after {cell_timeout:g} s"
        if record["error"]:
            return f"{cell} raised {record['error']['ename']}: {_first_line(record['error']['evalue'])}"
        if record["outcome"] == "failed":
            return f"{cell}'s output differs from the reference" if number in checks_at else f"{cell} failed: {record['message']}"
        return None

    def exercise_result(index: int, exercise: ReferenceExercise) -> ExerciseResult:
        def result(status: str, *lines: str) -> ExerciseResult:
            return ExerciseResult(exercise.number, exercise.title, status, lines)

        number = placed.get(index)
        if number is None:
            return result(FAIL, "check cell missing")
        if number not in ran:
            return result(FAIL, f"not reached: {kernel_gone or ended_early or 'the cell did not run'}")
        record = ran[number]
        if record["outcome"] == "passed":
            return result(PASS)
        verdict = next((v for v in printed_verdicts(record["stdout"]) if v.number == exercise.number), None)
        if verdict is None:
            return result(FAIL, f"no verdict: {what_happened(number) or f'{_cell(number, sources)} printed none'}")
        if verdict.status == NOT_ATTEMPTED:
            return result(NOT_DONE)
        if verdict.status == WRONG:
            return result(FAIL, *verdict.lines)
        return result(FAIL, f"the check printed {CORRECT}, but its output differs from the reference")

    problems = [ended_early] if ended_early else []
    for number in sorted(ran):
        is_exercise_check = number in checks_at and reference.check_cells[checks_at[number]].exercise is not None
        problem = None if is_exercise_check else what_happened(number)   # an exercise's check: see the exercise
        if problem:
            problems.append(problem)
    if not_run:
        cells = f"cell {not_run[0] + 1}" if len(not_run) == 1 else f"cells {not_run[0] + 1} to {not_run[-1] + 1}"
        # Where the kernel stopped in a cell, that cell's own problem above says so.
        problems.append(f"{cells} did not run" + ("" if stopped_in is not None else f": {kernel_gone}"))
    for index, check in enumerate(reference.check_cells):
        if check.exercise is None and index not in placed:
            problems.append(f"a checked cell of the reference is missing: `{_first_line(check.cell.source)}`")

    exercises = tuple(exercise_result(index, check.exercise)
                      for index, check in enumerate(reference.check_cells) if check.exercise)
    return exercises, tuple(problems)


def grade_notebook(path: Path, references: ReferenceLessons, cell_timeout: float) -> NotebookResult:
    name = str(path)
    try:
        learner = nbformat.read(path, as_version=4)
        nbformat.validate(learner)
    except Exception as error:  # whatever is wrong with a submitted file is its verdict, not a crash
        return NotebookResult(name, None, False, problems=(f"could not be read: {_first_line(str(error))[:200]}",))
    lesson = references.lesson_of(learner, path)
    if lesson is None:
        return NotebookResult(name, None, False, problems=(
            "not a kdlearn lesson: it has no line `from kdlearn.exercises import lessonNN as check`, "
            "no cell of a reference lesson, and its file name does not start with a lesson number (NN_)",))
    reference = references.get(lesson)
    if reference is None:
        return NotebookResult(name, lesson, False, problems=(
            f"no reference lesson {lesson}_*.ipynb in {references.solutions} to grade it against",))

    graded, placed = graded_copy(learner, reference)
    sources = [cell.source for cell in graded.cells if cell.cell_type == "code"]
    with tempfile.TemporaryDirectory(prefix="kdlearn-grading-") as folder:
        copy_path = Path(folder) / "run" / "submission.ipynb"
        copy_path.parent.mkdir()
        nbformat.write(graded, copy_path)
        records, ended_early = run_nbval(copy_path, Path(folder) / "cells.jsonl", cell_timeout, len(sources))
    exercises, problems = judge(reference, placed, records, sources, cell_timeout, ended_early)
    return NotebookResult(name, lesson, True, exercises, problems)


def grade_class(paths: list[Path], references: ReferenceLessons, cell_timeout: float,
                progress: TextIO | None = None) -> list[NotebookResult]:
    """Grade each notebook in turn; one that cannot be graded never stops the others."""
    results = []
    for path in paths:
        if progress:
            print(f"grading {path} ...", end="", file=progress, flush=True)
        start = time.perf_counter()
        result = replace(grade_notebook(path, references, cell_timeout), seconds=time.perf_counter() - start)
        results.append(result)
        if progress:
            print(f" {result.seconds:.0f} s", file=progress, flush=True)
    return results


# --- the report --------------------------------------------------------------------------------


def notebook_report(result: NotebookResult) -> str:
    if not result.graded:
        return f"{result.name}: {'; '.join(result.problems)}"
    lines = [f"{result.name}: lesson {result.lesson}, {result.passed}/{len(result.exercises)} passed"]
    for exercise in result.exercises:
        lines.append(f"  Exercise {exercise.number} ({exercise.title}): {exercise.status}")
        lines.extend(f"    {line}" for line in exercise.lines)
    lines.extend(f"  problem: {problem}" for problem in result.problems)
    return "\n".join(lines)


def summary(results: list[NotebookResult]) -> tuple[list[str], list[dict[str, str]]]:
    """Every exercise number in the class, in the order the lessons give them, and one row per
    notebook: its name, lesson, each exercise's status, the exercises passed and their total, and
    its problems."""
    numbers: list[str] = []
    for result in results:
        numbers.extend(e.number for e in result.exercises if e.number not in numbers)
    rows = []
    for result in results:
        status = {e.number: e.status for e in result.exercises}
        rows.append({"notebook": result.name, "lesson": result.lesson or "",
                     **{number: status.get(number, "") for number in numbers},
                     "passed": str(result.passed) if result.graded else "",
                     "total": str(len(result.exercises)) if result.graded else "",
                     "problems": "; ".join(result.problems)})
    return numbers, rows


def summary_table(results: list[NotebookResult]) -> str:
    numbers, rows = summary(results)
    lines = [["notebook", *numbers, "score", "problems"]]
    for row in rows:
        score = f"{row['passed']}/{row['total']}" if row["total"] else "-"
        lines.append([row["notebook"], *(row[number] for number in numbers), score, row["problems"]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]) - 1)]
    return "\n".join("  ".join([*(cell.ljust(width) for cell, width in zip(line, widths)), line[-1]]).rstrip()
                     for line in lines)


def write_csv(results: list[NotebookResult], path: Path) -> None:
    """The summary as CSV, for a gradebook; the score is two columns, passed and total, so that no
    spreadsheet reads 1/2 as a date."""
    numbers, rows = summary(results)
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=["notebook", "lesson", *numbers, "passed", "total", "problems"])
        writer.writeheader()
        writer.writerows(rows)


# --- the command -------------------------------------------------------------------------------


def default_solutions() -> Path:
    """The solutions folder of the repository kdlearn is installed from (pip install -e), else ./solutions."""
    beside_package = Path(kdlearn.__file__).resolve().parents[1] / "solutions"
    return beside_package if beside_package.is_dir() else Path("solutions")


def notebooks_in(arguments: list[Path], parser: argparse.ArgumentParser) -> list[Path]:
    paths = []
    for argument in arguments:
        if argument.is_dir():
            found = sorted(p for p in argument.rglob("*.ipynb") if ".ipynb_checkpoints" not in p.parts)
            if not found:
                parser.error(f"no notebooks (*.ipynb) in the folder {argument}")
            paths.extend(found)
        elif argument.exists():
            paths.append(argument)
        else:
            parser.error(f"no such file or folder: {argument}")
    return paths


def _positive_seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def main(argv: list[str] | None = None, prog: str = "kdlearn check") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Grade learners' notebooks: run a copy of each (the learner's file is never changed) and "
                    "print, per notebook and per exercise, pass, fail (with the hint the learner saw) or not "
                    "attempted, then a summary table for the class.",
        epilog="Exit status: 0 when every exercise of every notebook passes, 1 otherwise, 2 for a usage error. "
               "Example: kdlearn check submissions/ --csv grades.csv")
    parser.add_argument("notebooks", nargs="+", type=Path, metavar="NOTEBOOK",
                        help="a learner's notebook, or a folder to search for notebooks (subfolders included)")
    parser.add_argument("--solutions", type=Path, metavar="DIR",
                        help=f"the reference lessons (default: {default_solutions()})")
    parser.add_argument("--timeout", type=_positive_seconds, default=CELL_TIMEOUT_S, metavar="SECONDS",
                        help=f"stop a cell that runs longer than this (default: {CELL_TIMEOUT_S}, as in CI)")
    parser.add_argument("--csv", type=Path, metavar="FILE",
                        help="also write the summary table to FILE, one row per notebook, for a gradebook")
    args = parser.parse_args(argv)

    if importlib.util.find_spec("nbval") is None:
        parser.error("grading runs the notebooks through nbval, which is not installed: pip install 'kdlearn[grading]'")
    references = ReferenceLessons(args.solutions or default_solutions())
    if not references.paths:
        parser.error(f"no reference lessons (NN_*.ipynb) in {references.solutions}: "
                     "give their folder with --solutions DIR")
    paths = notebooks_in(args.notebooks, parser)

    results = grade_class(paths, references, args.timeout, progress=sys.stderr)
    print("\n\n".join(notebook_report(result) for result in results))
    print()
    print(summary_table(results))
    if args.csv:
        write_csv(results, args.csv)
    return 0 if all(result.all_passed for result in results) else 1
