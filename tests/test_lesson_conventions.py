"""The conventions of CONTRIBUTING.md that a machine can check, on every reference lesson, solutions/NN_*.ipynb.

Each test runs once per lesson, so a failure names the lesson. What no test here can judge (that a number in
the prose came from the run, that a setting was chosen on the validation split, that a hint leads rather than
hands over) is for the lesson's author and its reviewer; what can be judged is:

- plots persist: no FigureWidget; every stored figure is kdlearn.plots' (plotly's data and an HTML form that
  draws without a kernel), small, titled, its axes labelled; no figure or data dumped as text;
- every claim cell is checked by nbval and stored its ✓;
- "Next" links to the next lesson's file, or names the next lesson as not yet written; every link to a lesson
  names a file that exists;
- a lesson that names a paper ("Hinton et al.") links it, at the first mention;
- an exercise's general hint shares no line of code with the exercise's solution.
"""

from __future__ import annotations

import importlib
import json
import re
from pathlib import Path

import nbformat
import pytest

from kdlearn.course import SOLUTION_BEGIN, SOLUTION_END
from kdlearn.exercises import Exercise
from kdlearn.plots import PLOTLY_MIMETYPE

ROOT = Path(__file__).parents[1]
SOLUTIONS = ROOT / "solutions"
LESSONS = sorted(SOLUTIONS.glob("[0-9][0-9]_*.ipynb"))
CHECK_TAG = "nbval-check-output"
# "Tens of KB per figure at most" (CONTRIBUTING.md): round or subsample long arrays below this.
MAX_FIGURE_BYTES = 50_000
# A text output this long is a dump, not something a reader reads.
MAX_TEXT_OUTPUT_CHARS = 20_000
EXERCISE_HEADER = re.compile(r"#\s*Exercise\s+(\d+(?:\.\d+)+)\b")
LESSON_LINK = re.compile(r"\]\(\s*(?:\./)?(\d\d_[^)#\s/]+\.ipynb)(?:#[^)\s]*)?\s*\)")
WEB_LINK = re.compile(r"https?://\S+")
PAPER = re.compile(r"\b([A-Z][\w'-]+) et al\.")
# What a figure looks like printed: plotly's repr (Figure({...}), FigureWidget({...})) or its data as a dict.
FIGURE_REPR = re.compile(r"\b(?:Figure|FigureWidget)\(\{")
DICT_KEY = r"""['"]{}['"]\s*:"""
CARTESIAN_TRACES = {"bar", "scatter", "scattergl", "heatmap", "heatmapgl", "histogram", "histogram2d",
                    "histogram2dcontour", "box", "violin", "contour", "waterfall", "funnel", "candlestick", "ohlc",
                    "image"}

lessons = pytest.mark.parametrize("path", LESSONS, ids=[path.stem for path in LESSONS])


def read(path: Path) -> nbformat.NotebookNode:
    return nbformat.read(path, as_version=4)


def code_cells(notebook) -> list[tuple[int, nbformat.NotebookNode]]:
    """(number, cell) for each code cell, numbered from 1 as `kdlearn check` numbers them."""
    return list(enumerate((cell for cell in notebook.cells if cell.cell_type == "code"), start=1))


def first_line(cell) -> str:
    return cell.source.strip().split("\n", 1)[0][:70]


def figures(notebook) -> list[tuple[int, dict]]:
    """(code cell number, output data) for each stored plotly figure."""
    return [(number, output["data"]) for number, cell in code_cells(notebook) for output in cell.outputs
            if PLOTLY_MIMETYPE in output.get("data", {})]


def texts(output) -> list[str]:
    """What an output shows as plain text."""
    if output.get("output_type") == "stream":
        return [output.get("text", "")]
    plain = output.get("data", {}).get("text/plain")
    return [plain] if isinstance(plain, str) else []


def prose(notebook) -> list[str]:
    """The lesson's Markdown, in order: its Markdown cells and the Markdown its code cells render."""
    found = []
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            found.append(cell.source)
        elif cell.cell_type == "code":
            found.extend(output["data"]["text/markdown"] for output in cell.outputs
                         if isinstance(output.get("data", {}).get("text/markdown"), str))
    return found


def title_text(value) -> str:
    if isinstance(value, dict):
        value = value.get("text", "")
    return str(value or "").strip()


# --- plots persist --------------------------------------------------------------------------------


@lessons
def test_no_figurewidget(path):
    users = [f"cell {number} (`{first_line(cell)}`)" for number, cell in code_cells(read(path))
             if "FigureWidget" in cell.source]
    assert not users, (f"{path.name}: a FigureWidget draws nothing without a kernel; use kdlearn.plots.show "
                       f"(a figure that does not move) or kdlearn.plots.interactive (one a control moves): {users}")


@lessons
def test_every_stored_figure_draws_without_a_kernel(path):
    """kdlearn.plots stores plotly's data for JupyterLab and an HTML form that draws wherever HTML runs."""
    problems = [f"cell {number}: stores {sorted(data)}" for number, data in figures(read(path))
                if 'class="kdlearn-plot"' not in data.get("text/html", "")]
    assert not problems, (f"{path.name}: figures without kdlearn.plots' text/html (show them with "
                          f"kdlearn.plots.show or kdlearn.plots.interactive): {problems}")


@lessons
def test_every_figure_is_small_titled_and_its_axes_labelled(path):
    problems = []
    for number, data in figures(read(path)):
        figure = data[PLOTLY_MIMETYPE]
        size = len(json.dumps(figure, separators=(",", ":")))
        if size > MAX_FIGURE_BYTES:
            problems.append(f"cell {number}: {size / 1000:.0f} KB of figure data (at most {MAX_FIGURE_BYTES // 1000} "
                            "KB: round or subsample long arrays)")
        layout = figure.get("layout", {})
        if not title_text(layout.get("title")):
            problems.append(f"cell {number}: a figure without a title")
        traces = [trace for trace in figure.get("data", []) if trace.get("type", "scatter") in CARTESIAN_TRACES]
        for axis in ("x", "y"):
            used = {trace.get(f"{axis}axis", axis) for trace in traces}
            labels = [title_text(layout.get(f"{axis}axis{name[1:]}", {}).get("title")) for name in sorted(used)]
            if used and not any(labels):
                problems.append(f"cell {number}: {title_text(layout.get('title'))!r} has no {axis} axis title")
    assert not problems, f"{path.name}: {problems}"


@lessons
def test_no_output_prints_a_figure_or_a_data_dump(path):
    problems = []
    for number, cell in code_cells(read(path)):
        for output in cell.outputs:
            for text in texts(output):
                if FIGURE_REPR.search(text) or (re.search(DICT_KEY.format("data"), text)
                                                and re.search(DICT_KEY.format("layout"), text)):
                    problems.append(f"cell {number} (`{first_line(cell)}`) prints a figure as text")
                elif len(text) > MAX_TEXT_OUTPUT_CHARS:
                    problems.append(f"cell {number} (`{first_line(cell)}`) prints {len(text)} characters")
    assert not problems, (f"{path.name}: show a figure with kdlearn.plots.show (a cell that ends in a figure, "
                          f"or print(figure), shows it as text): {problems}")


# --- honest numbers -------------------------------------------------------------------------------


@lessons
def test_every_claim_is_checked_and_stored_as_holding(path):
    """A fact the prose relies on is asserted by claim() in a cell nbval compares, its ✓ line stored."""
    problems = []
    for number, cell in code_cells(read(path)):
        if not re.search(r"\bclaim\(", cell.source):
            continue
        if CHECK_TAG not in cell.metadata.get("tags", []):
            problems.append(f"cell {number} (`{first_line(cell)}`) calls claim() but is not tagged {CHECK_TAG}")
        shown = "".join(text for output in cell.outputs for text in texts(output))
        if not re.search(r"^✓ ", shown, re.MULTILINE):
            problems.append(f"cell {number} (`{first_line(cell)}`) stores no ✓ line: rebuild the lesson")
    assert not problems, f"{path.name}: {problems}"


# --- sources and the way on -----------------------------------------------------------------------


@lessons
def test_next_links_to_the_next_lesson_or_says_it_is_not_yet_written(path):
    notebook = read(path)
    markdown = [cell.source for cell in notebook.cells if cell.cell_type == "markdown"]
    last = markdown[-1] if markdown else ""
    assert "Next" in last, f"{path.name}: its last Markdown cell has no 'Next': {last[-200:]!r}"
    number = int(path.name[:2]) + 1
    following = sorted(SOLUTIONS.glob(f"{number:02d}_*.ipynb"))
    if following:
        assert following[0].name in LESSON_LINK.findall(last), (
            f"{path.name}: 'Next' should be a Markdown link to {following[0].name}, e.g. "
            f"[{number:02d} · Title]({following[0].name}): {last[-300:]!r}")
    else:
        assert re.search(rf"\b{number:02d} · [^\n()\[\]]+\(not yet written\)", last), (
            f"{path.name}: lesson {number:02d} does not exist yet, so 'Next' names it, unlinked, as "
            f"'{number:02d} · Its title (not yet written)': {last[-300:]!r}")


@lessons
def test_every_link_to_a_lesson_names_a_file_that_exists(path):
    linked = {name for text in prose(read(path)) for name in LESSON_LINK.findall(text)}
    missing = sorted(name for name in linked if not (SOLUTIONS / name).exists())
    assert not missing, f"{path.name} links to lessons that do not exist: {missing}"


@lessons
def test_a_paper_named_is_linked_at_its_first_mention(path):
    """For each paper the lesson names as "X et al.", the first Markdown (a cell's, or one a cell renders) that
    names X in any form ("Hinton et al.", "Hinton, Vinyals and Dean") carries a link."""
    texts_in_order = prose(read(path))
    authors = sorted({author for text in texts_in_order for author in PAPER.findall(text)})
    unlinked = []
    for author in authors:
        first = next(text for text in texts_in_order if re.search(rf"\b{re.escape(author)}\b", text))
        if not WEB_LINK.search(first):
            unlinked.append(f"{author} et al.")
    assert not unlinked, (f"{path.name}: link each paper where the lesson first names it (its arXiv abs page, "
                          f"e.g. https://arxiv.org/abs/1503.02531): {unlinked}")


# --- hints lead -----------------------------------------------------------------------------------


def normalised(line: str) -> str:
    """A line of code without its comment, its whitespace and a leading `return`."""
    code = re.sub(r"\s+#.*$", "", line.strip())
    code = re.sub(r"^return\s+", "", code)
    return re.sub(r"\s+", "", code)


def telling_lines(solution: str) -> set[str]:
    """The solution's non-trivial lines, and the right-hand side of each assignment, normalised: what a hint
    that contains them has handed over."""
    found = set()
    for line in solution.splitlines():
        code = normalised(line)
        parts = [code]
        assignment = re.match(r"^[\w.,\[\]()]+\s*[-+*/]?=(?!=)(.+)$", code)
        if assignment:
            parts.append(assignment.group(1))
        found.update(part for part in parts if len(part) >= 12 and re.search(r"[()\[\]+\-*/@]", part))
    return found


def solution_blocks(source: str) -> str:
    inside, kept = False, []
    for line in source.splitlines():
        if line.strip() == SOLUTION_BEGIN:
            inside = True
        elif line.strip() == SOLUTION_END:
            inside = False
        elif inside:
            kept.append(line)
    return "\n".join(kept)


def exercises_of(path: Path) -> dict[str, Exercise]:
    try:
        module = importlib.import_module(f"kdlearn.exercises.lesson{path.name[:2]}")
    except ModuleNotFoundError:
        return {}
    return {exercise.number: exercise for exercise in vars(module).values() if isinstance(exercise, Exercise)}


@lessons
def test_general_hints_share_no_line_of_code_with_the_solution(path):
    exercises = exercises_of(path)
    if not exercises:
        pytest.skip(f"kdlearn.exercises.lesson{path.name[:2]} does not exist: {path.name} has no exercises")
    solutions = {}
    for cell in read(path).cells:
        header = EXERCISE_HEADER.fullmatch(cell.source.split("\n", 1)[0].strip())
        if cell.cell_type == "code" and header:
            solutions[header.group(1)] = solution_blocks(cell.source)
    problems = []
    for number, exercise in sorted(exercises.items()):
        if number not in solutions:
            problems.append(f"exercise {number} has no '# Exercise {number}' cell in {path.name}")
            continue
        hint = re.sub(r"[\s`]+", "", exercise.hint)
        handed_over = sorted(line for line in telling_lines(solutions[number]) if line in hint)
        if handed_over:
            problems.append(f"exercise {number}'s hint hands over {handed_over}")
    assert not problems, (f"{path.name}: a general hint names the idea, the answer lives only in solutions/: "
                          f"{problems}")


# --- the checks themselves, on examples -----------------------------------------------------------


def test_the_hint_check_catches_a_line_of_the_answer_however_it_is_spaced():
    solution = "    scaled = logits / T\n    p = torch.softmax(scaled - scaled.max(dim=-1, keepdim=True).values, dim=-1)\n    return p"
    lines = telling_lines(solution)
    handing_over = re.sub(r"[\s`]+", "", "Subtract the maximum: `torch.softmax(scaled - scaled.max(dim=-1, "
                                           "keepdim=True).values, dim = -1)`.")
    leading = re.sub(r"[\s`]+", "", "An ordinary softmax, after the temperature has rescaled the logits.")
    assert any(line in handing_over for line in lines)
    assert not any(line in leading for line in lines)
    assert "p" not in lines and "logits/T" not in lines  # too short to hand anything over


def test_the_dump_check_knows_a_figure_printed_as_text():
    assert FIGURE_REPR.search("Figure({\n    'data': [{'type': 'bar', 'y': [1, 2]}],\n    'layout': {}\n})")
    assert FIGURE_REPR.search("FigureWidget({\n    'data': []\n})")
    assert not FIGURE_REPR.search("<plotly figure: soft targets at T = 1.00>")
