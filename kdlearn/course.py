"""The course's notebooks: one source for each lesson, and the learner version derived from it.

solutions/NN_name.ipynb is the reference lesson: every exercise solved, the outputs of a full run
stored (its check cells, tagged ``nbval-check-output``, are what nbval compares in CI and what a
learner's run must reproduce). lessons/NN_name.ipynb is the learner version, never edited by
hand: ``learner_version`` replaces each solution, written between the lines

    # BEGIN SOLUTION
    ...
    # END SOLUTION

with a ``raise NotImplementedError`` stub, and clears the outputs.

    python -m kdlearn.course build     # run each reference lesson, store its outputs, write the learner versions
    python -m kdlearn.course build 05  # the same for lesson 05 alone
    python -m kdlearn.course check     # exit 1 if a learner version is out of date with its reference
    python -m kdlearn.course measure   # wall time and peak memory of each lesson, run top to bottom
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat

SOLUTION_BEGIN = "# BEGIN SOLUTION"
SOLUTION_END = "# END SOLUTION"
STUB = 'raise NotImplementedError("exercise not attempted yet: replace this line with your code")'
# Tags that only make sense on a notebook with stored outputs.
REFERENCE_ONLY_TAGS = {"nbval-check-output"}
CELL_TIMEOUT_S = 300


def strip_solutions(source: str) -> str:
    """The cell's source with each solution block replaced by the stub, indented alike."""
    kept, inside = [], False
    for line in source.splitlines():
        marker = line.strip()
        if marker == SOLUTION_BEGIN:
            if inside:
                raise ValueError(f"{SOLUTION_BEGIN!r} inside another solution block:\n{source}")
            inside = True
            kept.append(line[: len(line) - len(line.lstrip())] + STUB)
        elif marker == SOLUTION_END:
            if not inside:
                raise ValueError(f"{SOLUTION_END!r} without {SOLUTION_BEGIN!r}:\n{source}")
            inside = False
        elif not inside:
            kept.append(line)
    if inside:
        raise ValueError(f"{SOLUTION_BEGIN!r} without {SOLUTION_END!r}:\n{source}")
    return "\n".join(kept)


def learner_version(reference: nbformat.NotebookNode) -> nbformat.NotebookNode:
    """The notebook a learner gets: solutions stubbed out, no outputs."""
    notebook = copy.deepcopy(reference)
    notebook.metadata.pop("widgets", None)
    for cell in notebook.cells:
        tags = [t for t in cell.metadata.get("tags", []) if t not in REFERENCE_ONLY_TAGS]
        if tags:
            cell.metadata["tags"] = tags
        else:
            cell.metadata.pop("tags", None)
        # nbclient's run timestamps: left in, every rebuild would rewrite every learner notebook.
        cell.metadata.pop("execution", None)
        if cell.cell_type == "code":
            cell.source = strip_solutions(cell.source)
            cell.outputs = []
            cell.execution_count = None
    return notebook


def execute(notebook: nbformat.NotebookNode, directory: Path) -> nbformat.NotebookNode:
    """Run the notebook top to bottom in a fresh kernel, in ``directory``; outputs are stored."""
    from nbclient import NotebookClient

    # The widgets' state is stored so that a slider shows where it stood in a notebook opened without a
    # kernel; the figure beside it is an ordinary output (kdlearn.plots).
    client = NotebookClient(notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3",
                            resources={"metadata": {"path": str(directory)}}, store_widget_state=True)
    client.execute()
    return notebook


def lesson_pairs(solutions: Path, lessons: Path) -> list[tuple[Path, Path]]:
    return [(ref, lessons / ref.name) for ref in sorted(solutions.glob("[0-9][0-9]_*.ipynb"))]


def build(solutions: Path, lessons: Path, *, run: bool = True, only: list[str] | None = None) -> None:
    """Run the references and write their learner versions; ``only`` names some lessons by the start
    of their file name ("05", "05_write_the_kernel"), to rebuild those alone."""
    pairs = lesson_pairs(solutions, lessons)
    if not pairs:
        raise SystemExit(f"no reference lessons (NN_name.ipynb) in {solutions.resolve()}: run this from the "
                         "root folder of the kdlearn repository")
    if only:
        unknown = [name for name in only if not any(ref.name.startswith(name) for ref, _ in pairs)]
        if unknown:
            raise SystemExit(f"no lesson in {solutions} starts with {', '.join(unknown)}")
        pairs = [(ref, lesson) for ref, lesson in pairs if any(ref.name.startswith(name) for name in only)]
    for ref_path, lesson_path in pairs:
        reference = nbformat.read(ref_path, as_version=4)
        if run:
            print(f"running {ref_path} ...", flush=True)
            nbformat.write(execute(reference, ref_path.parent), ref_path)
        nbformat.write(learner_version(reference), lesson_path)
        print(f"wrote {lesson_path}")


def stale_lessons(solutions: Path, lessons: Path) -> list[str]:
    """The learner versions that are missing or differ from what their reference gives."""
    stale = []
    for ref_path, lesson_path in lesson_pairs(solutions, lessons):
        expected = nbformat.writes(learner_version(nbformat.read(ref_path, as_version=4))).rstrip("\n") + "\n"
        if not lesson_path.exists() or lesson_path.read_text(encoding="utf-8") != expected:
            stale.append(str(lesson_path))
    return stale


def measure(paths: list[Path]) -> list[tuple[str, float, float, int]]:
    """(notebook, wall seconds, peak memory in MB, exit status) for each notebook, each run in a
    fresh process; the peak is the largest resident set of that process and its kernel."""
    rows = []
    for path in paths:
        start = time.perf_counter()
        child = subprocess.Popen([sys.executable, "-m", "kdlearn.course", "run", str(path)])
        _, status, usage = os.wait4(child.pid, 0)
        rows.append((str(path), time.perf_counter() - start, usage.ru_maxrss / 1024,
                     os.waitstatus_to_exitcode(status)))
    return rows


def main(argv: list[str] | None = None, prog: str = "python -m kdlearn.course") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0])
    parser.add_argument("--solutions", type=Path, default=Path("solutions"), help="reference lessons (default: solutions)")
    parser.add_argument("--lessons", type=Path, default=Path("lessons"), help="learner versions (default: lessons)")
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="run each reference lesson and write the learner versions")
    build_cmd.add_argument("--no-run", action="store_true", help="write the learner versions without running anything")
    build_cmd.add_argument("only", nargs="*", metavar="LESSON", help="only these lessons, e.g. 05 (default: every lesson)")
    commands.add_parser("check", help="exit 1 if a learner version is out of date")
    measure_cmd = commands.add_parser("measure", help="time and peak memory of each lesson")
    measure_cmd.add_argument("notebooks", nargs="*", type=Path, help="default: every reference and learner lesson")
    run_cmd = commands.add_parser("run", help="run one notebook top to bottom without saving it")
    run_cmd.add_argument("notebook", type=Path)
    args = parser.parse_args(argv)

    if args.command == "build":
        build(args.solutions, args.lessons, run=not args.no_run, only=args.only)
    elif args.command == "check":
        stale = stale_lessons(args.solutions, args.lessons)
        for path in stale:
            print(f"{path} is out of date: run `python -m kdlearn.course build --no-run`")
        return 1 if stale else 0
    elif args.command == "measure":
        paths = args.notebooks or [p for pair in lesson_pairs(args.solutions, args.lessons) for p in pair]
        print(f"{'notebook':44} {'wall s':>7} {'peak MB':>8}  status")
        for name, seconds, megabytes, code in measure(paths):
            print(f"{name:44} {seconds:7.1f} {megabytes:8.0f}  {'ok' if code == 0 else f'failed ({code})'}")
    elif args.command == "run":
        execute(nbformat.read(args.notebook, as_version=4), args.notebook.parent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
