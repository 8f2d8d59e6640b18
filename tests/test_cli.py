"""The `kdlearn` command: its help, its errors, and the subcommands it hands to other modules.

Grading itself is tested in test_grading.py; nothing here runs a notebook.
"""

from __future__ import annotations

import importlib
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from kdlearn import cli

ROOT = Path(__file__).parents[1]
ENTRY_POINT = Path(sys.executable).parent / "kdlearn"


def kdlearn(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The installed command, as a user types it."""
    assert ENTRY_POINT.exists(), "the kdlearn command is not installed: pip install -e ."
    return subprocess.run([str(ENTRY_POINT), *args], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_help_lists_every_command_with_what_it_does():
    process = kdlearn("--help")
    assert process.returncode == 0
    assert process.stdout.startswith("usage: kdlearn [-h] COMMAND ...")
    listed = [line.split()[0] for line in process.stdout.splitlines() if re.match(r"    \S", line)]
    assert listed == list(cli.COMMANDS)
    for name, (_, _, summary) in cli.COMMANDS.items():
        assert " ".join(summary.split()[:3]) in " ".join(process.stdout.split())
    assert "kdlearn COMMAND --help" in process.stdout


def test_a_missing_notebook_is_a_message_not_a_traceback(tmp_path):
    process = kdlearn("check", "nope.ipynb", cwd=tmp_path)
    assert process.returncode == 2
    assert process.stderr.strip().endswith("kdlearn check: error: no such file or folder: nope.ipynb")
    assert "Traceback" not in process.stderr


@pytest.mark.parametrize("argv, message", [
    ([], "the following arguments are required: COMMAND"),
    (["grade"], "invalid choice: 'grade'"),
])
def test_a_wrong_command_is_a_usage_error(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_status:
        cli.main(argv)
    assert exit_status.value.code == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command, module, expected, prog", [
    ("check", "kdlearn.grading", [], "kdlearn check"),
    ("build", "kdlearn.course", ["build"], "kdlearn"),
    ("hinton", "kdlearn.experiments.hinton", [], "kdlearn hinton"),
    ("families", "kdlearn.experiments.families", [], "kdlearn families"),
    ("schemes", "kdlearn.experiments.schemes", [], "kdlearn schemes"),
    ("train-teachers", "kdlearn.experiments.train_teachers", [], "kdlearn train-teachers"),
    ("divergences", "kdlearn.experiments.divergences", [], "kdlearn divergences"),
    ("sequence-kd", "kdlearn.experiments.sequence_kd", [], "kdlearn sequence-kd"),
    ("on-policy", "kdlearn.experiments.on_policy", [], "kdlearn on-policy"),
    ("bench", "kdlearn.bench", [], "kdlearn bench"),
    ("site", "kdlearn.site", [], "kdlearn site"),
    ("handout", "kdlearn.handout", [], "kdlearn handout"),
])
def test_each_command_hands_its_arguments_to_its_module(command, module, expected, prog, monkeypatch):
    received = []
    monkeypatch.setattr(importlib.import_module(module), "main",
                        lambda argv, prog: received.append((argv, prog)) or 7)
    assert cli.main([command, "--json", "x", "--help"]) == 7
    assert received == [([*expected, "--json", "x", "--help"], prog)]


@pytest.mark.parametrize("command, option", [
    ("build", "--no-run"), ("hinton", "--seeds"), ("bench", "--cases"), ("check", "--solutions"),
    ("divergences", "--scan"), ("sequence-kd", "--evaluate-on"), ("on-policy", "--scan"),
    ("families", "--regimes"), ("schemes", "--scan"),
    ("site", "--out"), ("handout", "--repository"),
])
def test_a_commands_help_is_its_modules_help_named_as_typed(command, option, capsys):
    with pytest.raises(SystemExit) as exit_status:
        cli.main([command, "--help"])
    assert exit_status.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: kdlearn {command} ")
    assert option in out


def test_build_outside_the_repository_says_where_to_run_it(tmp_path):
    process = kdlearn("build", "--no-run", cwd=tmp_path)
    assert process.returncode == 1
    assert process.stderr.strip() == (f"no reference lessons (NN_name.ipynb) in {tmp_path.resolve() / 'solutions'}: "
                                      "run this from the root folder of the kdlearn repository")
    assert not (tmp_path / "lessons").exists()


def test_check_says_where_no_references_are(tmp_path, capsys):
    notebook = tmp_path / "alice.ipynb"
    nbformat.write(nbformat.v4.new_notebook(), notebook)
    with pytest.raises(SystemExit) as exit_status:
        cli.main(["check", str(notebook), "--solutions", str(tmp_path / "nowhere")])
    assert exit_status.value.code == 2
    assert "no reference lessons (NN_*.ipynb) in" in capsys.readouterr().err


def test_check_grades_a_notebook_that_is_no_lesson_without_running_it(tmp_path, capsys):
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('hello')")]),
                   tmp_path / "homework.ipynb")
    assert cli.main(["check", str(tmp_path), "--solutions", str(ROOT / "solutions")]) == 1
    out = capsys.readouterr().out
    assert f"{tmp_path / 'homework.ipynb'}: not a kdlearn lesson" in out
    assert out.rstrip().split("\n")[-2:] == [
        "notebook" + " " * (len(str(tmp_path / "homework.ipynb")) - len("notebook")) + "  score  problems",
        f"{tmp_path / 'homework.ipynb'}  -      not a kdlearn lesson: it has no line "
        "`from kdlearn.exercises import lessonNN as check`, no cell of a reference lesson, "
        "and its file name does not start with a lesson number (NN_)",
    ]
