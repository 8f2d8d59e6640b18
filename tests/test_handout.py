"""`kdlearn handout`: what a graded class gets holds the learner notebooks and kdlearn's wheel, and no answer.

Each test hands out from a small repository made here: the real package (pyproject.toml, README.md,
kdlearn/) beside one reference lesson of its own, so that the real lessons being edited elsewhere
cannot make these tests pass or fail.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from kdlearn import course, handout, teachers

ROOT = Path(__file__).parents[1]
ANSWER = "return sorted(values)[len(values) // 2]"
ENTRY_POINT = Path(sys.executable).parent / "kdlearn"


def reference_lesson() -> nbformat.NotebookNode:
    return new_notebook(cells=[
        new_markdown_cell("# 00 · A small lesson\n\nWrite the median."),
        new_code_cell(f"# Exercise 0.1\ndef median(values):\n    {course.SOLUTION_BEGIN}\n    {ANSWER}\n"
                      f"    {course.SOLUTION_END}", execution_count=1),
        new_code_cell("median([3, 1, 2])", execution_count=2,
                      outputs=[new_output("execute_result", data={"text/plain": "2"}, execution_count=2)]),
    ])


@pytest.fixture
def repository(tmp_path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, repo / name)
    shutil.copytree(ROOT / "kdlearn", repo / "kdlearn", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "solutions").mkdir()
    (repo / "lessons").mkdir()
    nbformat.write(reference_lesson(), repo / "solutions" / "00_small.ipynb")
    course.build(repo / "solutions", repo / "lessons", run=False)
    return repo


def kdlearn_handout(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The installed command, as an instructor types it."""
    return subprocess.run([str(ENTRY_POINT), "handout", *args], capture_output=True, text=True, cwd=cwd, timeout=300)


def test_the_handout_holds_the_learner_notebooks_a_wheel_without_solutions_and_a_readme(repository, tmp_path):
    process = kdlearn_handout(str(tmp_path / "class"), cwd=repository)
    assert process.returncode == 0, process.stderr
    out = tmp_path / "class"
    wheels = list(out.glob("kdlearn-*-py3-none-any.whl"))
    assert len(wheels) == 1
    assert sorted(path.name for path in out.iterdir()) == sorted(["00_small.ipynb", "README.md", wheels[0].name])

    with zipfile.ZipFile(wheels[0]) as archive:
        names = archive.namelist()
    assert "kdlearn/exercises/lesson00.py" in names and "kdlearn/plots.py" in names
    # The data the lessons load ship too: the Hinton scan and every language-model teacher, both files.
    assert "kdlearn/experiments/hinton_tuning.json" in names and "kdlearn/experiments/on_policy_scan.json" in names
    assert teachers.names() and all(f"kdlearn/teachers/{name}.{suffix}" in names
                                    for name in teachers.names() for suffix in ("json", "safetensors"))
    assert all(name.startswith(("kdlearn/", "kdlearn-")) for name in names), names
    assert not [name for name in names if name.endswith(".ipynb") or "solutions/" in name]

    notebook = nbformat.read(out / "00_small.ipynb", as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert all(cell.outputs == [] and cell.execution_count is None for cell in code)
    source = "\n".join(cell.source for cell in code)
    assert ANSWER not in source and course.SOLUTION_BEGIN not in source and course.STUB in source
    assert ANSWER not in (out / "00_small.ipynb").read_text()

    readme = (out / "README.md").read_text()
    assert f'pip install "{wheels[0].name}[course]"' in readme
    assert "- `00_small.ipynb`: 00 · A small lesson" in readme and "jupyter lab" in readme
    assert f"wrote {out / 'README.md'}" in process.stdout


def test_a_stale_learner_version_stops_the_handout_with_what_to_run(repository, tmp_path):
    reference = nbformat.read(repository / "solutions" / "00_small.ipynb", as_version=4)
    reference.cells[0].source += "\n\nA sentence added after the last build."
    nbformat.write(reference, repository / "solutions" / "00_small.ipynb")
    process = kdlearn_handout(str(tmp_path / "class"), cwd=repository)
    assert process.returncode == 1
    assert process.stderr.splitlines() == [
        f"kdlearn handout: {Path('lessons') / '00_small.ipynb'} is out of date with its reference in solutions",
        "Run `kdlearn build --no-run` to write the learner versions from the references as they are "
        "(or `kdlearn build` to rerun the references first), then hand out again.",
    ]
    assert not (tmp_path / "class").exists()


def test_a_learner_notebook_without_a_reference_and_one_with_answers_are_refused(repository, tmp_path):
    leaked = reference_lesson()  # outputs and a solution block: a reference copied into lessons/ by hand
    nbformat.write(leaked, repository / "lessons" / "01_copied.ipynb")
    with pytest.raises(handout.HandoutError) as error:
        handout.make_handout(repository, tmp_path / "class")
    assert str(error.value) == (
        f"{repository / 'lessons' / '01_copied.ipynb'} has no reference in {repository / 'solutions'}: a lesson "
        "that cannot be graded is not handed out (remove it, or add its reference and run `kdlearn build`)")
    assert handout.learner_problems(repository / "lessons" / "01_copied.ipynb") == [
        "cell 2 has a solution block (# BEGIN SOLUTION / # END SOLUTION)", "cell 3 has outputs"]
    assert not (tmp_path / "class").exists()


def test_a_folder_that_is_not_empty_is_refused_before_anything_is_written(repository, tmp_path):
    out = tmp_path / "class"
    out.mkdir()
    (out / "kdlearn-0.0.1-py3-none-any.whl").write_text("last term's wheel")
    with pytest.raises(handout.HandoutError, match="is not an empty folder"):
        handout.make_handout(repository, out)
    assert [path.name for path in out.iterdir()] == ["kdlearn-0.0.1-py3-none-any.whl"]


def test_outside_a_repository_it_says_where_to_run_it(tmp_path):
    process = kdlearn_handout(str(tmp_path / "class"), cwd=tmp_path)
    assert process.returncode == 1
    assert process.stderr.strip() == (
        f"kdlearn handout: no kdlearn repository at {tmp_path.resolve()} (no pyproject.toml, or no reference "
        "lessons NN_name.ipynb in its solutions/): run this from the root folder of the kdlearn repository, "
        "or give it with --repository PATH")
    assert "Traceback" not in process.stderr
