"""What a graded class gets: the learner notebooks and kdlearn as a wheel, and no solutions.

    kdlearn handout DIR                  # run from the root folder of the kdlearn repository
    python -m kdlearn.handout DIR [--repository PATH]

The open course, this repository and its Binder link, includes solutions/: every exercise solved,
every output stored. A class whose exercises are graded gets DIR instead:

- the learner notebooks, lessons/NN_name.ipynb, once they are checked to be up to date with their
  references (``kdlearn build`` wrote them from solutions/ as it stands) and to hold no output and no
  solution block;
- kdlearn's wheel, built from the package alone (kdlearn/, pyproject.toml, README.md copied to a
  temporary folder first), and checked to hold no notebook;
- README.md, telling learners how to install the wheel and open the lessons.

Nothing is written into DIR until every check has passed, and DIR must be new or empty, so that an
old wheel or lesson is never handed out beside a new one.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import nbformat

from kdlearn.course import SOLUTION_BEGIN, SOLUTION_END, lesson_pairs, stale_lessons

# What the wheel is built from: the package and the files its pyproject.toml reads.
WHEEL_SOURCES = ("pyproject.toml", "README.md", "kdlearn")
LEARNER_README = "README.md"


class HandoutError(Exception):
    """Something that stops the hand-out, said in sentences (no traceback)."""


def learner_problems(path: Path) -> list[str]:
    """What in a learner notebook would give a learner an answer: outputs, solution blocks, widget state."""
    notebook = nbformat.read(path, as_version=4)
    problems = []
    if "widgets" in notebook.metadata:
        problems.append("it stores widget state (from a run)")
    for number, cell in enumerate(notebook.cells, start=1):
        if cell.cell_type != "code":
            continue
        if cell.get("outputs"):
            problems.append(f"cell {number} has outputs")
        markers = {line.strip() for line in cell.source.splitlines()} & {SOLUTION_BEGIN, SOLUTION_END}
        if markers:
            problems.append(f"cell {number} has a solution block ({' / '.join(sorted(markers))})")
    return problems


def check_lessons(repository: Path) -> list[Path]:
    """The learner notebooks to hand out, or HandoutError saying what is wrong with them."""
    solutions, lessons = repository / "solutions", repository / "lessons"
    if not (repository / "pyproject.toml").is_file() or not lesson_pairs(solutions, lessons):
        raise HandoutError(f"no kdlearn repository at {repository.resolve()} (no pyproject.toml, or no reference "
                           "lessons NN_name.ipynb in its solutions/): run this from the root folder of the "
                           "kdlearn repository, or give it with --repository PATH")
    messages = [f"{path} is out of date with its reference in {solutions}"
                for path in stale_lessons(solutions, lessons)]
    if messages:
        messages.append("Run `kdlearn build --no-run` to write the learner versions from the references as "
                        "they are (or `kdlearn build` to rerun the references first), then hand out again.")
        raise HandoutError("\n".join(messages))
    references = {ref.name for ref, _ in lesson_pairs(solutions, lessons)}
    handed_out = sorted(lessons.glob("*.ipynb"))
    for path in handed_out:
        if path.name not in references:
            messages.append(f"{path} has no reference in {solutions}: a lesson that cannot be graded is not "
                            "handed out (remove it, or add its reference and run `kdlearn build`)")
        else:
            messages.extend(f"{path}: {problem}" for problem in learner_problems(path))
    if messages:
        raise HandoutError("\n".join(messages))
    return handed_out


def _build_isolation_options() -> list[str]:
    """pip's options for building the wheel: with the setuptools already installed here when it can
    build a wheel by itself (>= 70.1), so that no build environment is downloaded and it works offline."""
    if importlib.util.find_spec("setuptools") is None:
        return []
    version = tuple(int(part) for part in importlib.metadata.version("setuptools").split(".")[:2] if part.isdigit())
    return ["--no-build-isolation"] if version >= (70, 1) else []


def wheel_problems(wheel: Path) -> list[str]:
    """Files in the wheel that would hand a learner a lesson's answers."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    return [name for name in names
            if name.endswith(".ipynb") or name.split("/")[0] in ("solutions", "lessons")]


def build_wheel(repository: Path, into: Path) -> Path:
    """kdlearn's wheel, built from a clean copy of the package (no stale build/ folder can leak into it)."""
    with tempfile.TemporaryDirectory(prefix="kdlearn-wheel-") as scratch:
        source = Path(scratch) / "source"
        source.mkdir()
        for name in WHEEL_SOURCES:
            path = repository / name
            if path.is_dir():
                shutil.copytree(path, source / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            elif path.is_file():
                shutil.copy2(path, source / name)
        command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--quiet", *_build_isolation_options(),
                   "--wheel-dir", str(into), str(source)]
        process = subprocess.run(command, capture_output=True, text=True)
        if process.returncode != 0:
            raise HandoutError(f"building kdlearn's wheel failed (`{' '.join(command)}`):\n"
                               f"{(process.stderr or process.stdout).strip()[-3000:]}")
    wheels = sorted(into.glob("kdlearn-*.whl"))
    if len(wheels) != 1:
        raise HandoutError(f"expected one kdlearn wheel from pip, found {[wheel.name for wheel in wheels]}")
    leaked = wheel_problems(wheels[0])
    if leaked:
        raise HandoutError(f"the wheel {wheels[0].name} holds notebooks, which a class must not get: "
                           f"{', '.join(leaked)}; check pyproject.toml's package settings")
    return wheels[0]


def readme(wheel_name: str, lessons: list[tuple[str, str]]) -> str:
    listing = "\n".join(f"- `{name}`: {title}" for name, title in lessons)
    return f"""# kdlearn: the lessons

This folder holds the course's lessons, one notebook each, and `{wheel_name}`, the `kdlearn`
library that the lessons use and that checks your exercises.

{listing}

## Install, once

You need Python 3.10 or newer. In this folder, in a terminal:

```bash
python -m venv .venv
. .venv/bin/activate        # on Windows: .venv\\Scripts\\activate
pip install "{wheel_name}[course]"
```

That installs kdlearn, PyTorch, JupyterLab and the rest the lessons need. On Linux, PyPI's PyTorch
is a large build for NVIDIA GPUs; the lessons need only a CPU, and installing the CPU build first
saves several GB: `pip install torch --index-url https://download.pytorch.org/whl/cpu`, then the
line above.

## Open the lessons

```bash
. .venv/bin/activate
jupyter lab
```

JupyterLab opens in your browser, in this folder. Start with the first lesson and run its cells
from the top (Run → Run All Cells does them all). Each exercise is a function you write in the
cell that says `raise NotImplementedError`; the cell below it checks your function and says
**correct ✓**, **not yet ✗** with a hint, or **not attempted yet**. The cells after an exercise
work whether or not you have solved it yet.

## Hand in

Save each notebook (File → Save Notebook) and hand in the `.ipynb` files as your instructor
asks. Keep the check cells as they are: your work is graded by running them again.
"""


def make_handout(repository: Path, out: Path) -> list[Path]:
    """Check the learner notebooks, build the wheel, and write the hand-out into ``out``; the files written."""
    from kdlearn.site import lesson_title

    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise HandoutError(f"{out} is not an empty folder: hand out into a new or empty one, so that nothing "
                           "old goes out with the new files")
    lessons = check_lessons(repository)
    with tempfile.TemporaryDirectory(prefix="kdlearn-handout-") as scratch:
        wheel = build_wheel(repository, Path(scratch))
        out.mkdir(parents=True, exist_ok=True)
        written = [Path(shutil.copy2(wheel, out / wheel.name))]
    titles = []
    for path in lessons:
        written.append(Path(shutil.copy2(path, out / path.name)))
        titles.append((path.name, lesson_title(nbformat.read(path, as_version=4), fallback=path.stem)))
    (out / LEARNER_README).write_text(readme(written[0].name, titles), encoding="utf-8")
    written.append(out / LEARNER_README)
    return written


def main(argv: list[str] | None = None, prog: str = "python -m kdlearn.handout") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Make what a graded class gets: the learner notebooks (checked up to date and free of "
                    "solutions and outputs), kdlearn's wheel (no solutions in it) and a README that says how "
                    "to install it and open the lessons.",
        epilog="Example, from the repository's root folder: kdlearn handout handout/")
    parser.add_argument("out", type=Path, metavar="DIR", help="a new or empty folder to write the hand-out into")
    parser.add_argument("--repository", type=Path, default=Path("."), metavar="PATH",
                        help="the kdlearn repository to hand out from (default: the current folder)")
    args = parser.parse_args(argv)
    try:
        written = make_handout(args.repository, args.out)
    except HandoutError as error:
        print(f"{prog}: {error}", file=sys.stderr)
        return 1
    for path in written:
        print(f"wrote {path}")
    print(f"Give learners the folder {args.out}; its {LEARNER_README} says how to install and start.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
