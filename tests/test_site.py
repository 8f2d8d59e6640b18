"""kdlearn.site: the reference lessons as static pages that draw their plots offline.

Most tests render small lessons written here, whose outputs are what kdlearn.plots displays; one
renders the real course. The pages are drawn in a real browser in test_browser.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import plotly.graph_objects as go
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from kdlearn import plots, site

ROOT = Path(__file__).parents[1]


def figure_output(figure: go.Figure):
    """The output that plots.show stores for ``figure``."""
    return new_output("display_data", data=plots.mimebundle(figure))


def bars(title: str) -> go.Figure:
    return go.Figure(go.Bar(y=[1.0, 3.0, 2.0]), layout=dict(title=title, xaxis_title="digit", yaxis_title="p"))


def slider_output(model_id: str = "0123456789abcdef"):
    """The controls' output of plots.interactive: a widget view (its state is not needed for a page)."""
    return new_output("display_data", data={
        "application/vnd.jupyter.widget-view+json": {"version_major": 2, "version_minor": 0, "model_id": model_id},
        "text/plain": "HBox(children=(FloatSlider(value=1.0, description='T'),))"})


@pytest.fixture
def course(tmp_path) -> Path:
    """Two lessons: 00 with a static plot and links (to 01, to a heading of 01, to a lesson that does
    not exist), 01 with an interactive plot."""
    solutions = tmp_path / "solutions"
    solutions.mkdir()
    first = new_notebook(cells=[
        new_markdown_cell("# 00 · The *first* lesson\n\nWhat it is about."),
        new_code_cell("plots.show(bars('static bars'))", outputs=[figure_output(bars("static bars"))]),
        new_markdown_cell("See [the temperature](01_second.ipynb#temperature) again later.\n\n"
                          "**Next:** [01 · The second lesson](01_second.ipynb), then "
                          "[07 · Who teaches whom](07_who_teaches_whom.ipynb)."),
    ])
    second = new_notebook(cells=[
        new_markdown_cell("Some words before the title.\n\n# 01 · The second lesson"),
        new_code_cell("plots.interactive(draw, T=slider)",
                      outputs=[slider_output(), figure_output(bars("soft targets at T = 1.00"))]),
        new_markdown_cell("Back to [the first lesson](./00_first.ipynb)."),
    ])
    nbformat.write(first, solutions / "00_first.ipynb")
    nbformat.write(second, solutions / "01_second.ipynb")
    (solutions / "notes.ipynb").write_text("not a lesson: its name has no number")
    return solutions


def run_site(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kdlearn.site", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=120)


def plot_ids(notebook_path: Path) -> list[str]:
    notebook = nbformat.read(notebook_path, as_version=4)
    return [re.search(r'id="(kdlearn-plot-\w+)"', output.data["text/html"]).group(1)
            for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if plots.PLOTLY_MIMETYPE in output.get("data", {})]


def first_script(page: str) -> str:
    return re.search(r"<script\b[^>]*>", page).group(0)


def test_a_page_per_lesson_and_an_index_that_lists_them_by_title(course, tmp_path):
    process = run_site("--solutions", str(course), "--out", "public", cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    out = tmp_path / "public"
    assert sorted(path.name for path in out.iterdir()) == [
        "00_first.html", "01_second.html", "index.html", "plotly.min.js"]
    index = (out / "index.html").read_text()
    assert re.findall(r'<li><a href="([^"]+)">([^<]+)</a></li>', index) == [
        ("00_first.html", "00 · The first lesson"), ("01_second.html", "01 · The second lesson")]
    assert "<title>00 · The first lesson</title>" in (out / "00_first.html").read_text()
    assert "<title>01 · The second lesson</title>" in (out / "01_second.html").read_text()
    assert "exercise is shown" in index and "solved" in index  # the reader is told these are the answers
    assert f"wrote {Path('public') / '00_first.html'}  (00 · The first lesson)" in process.stdout
    assert process.stdout.rstrip().endswith(f"open {Path('public') / 'index.html'}")


def test_links_between_lessons_point_at_their_pages_and_a_missing_lesson_is_reported(course, tmp_path):
    process = run_site("--solutions", str(course), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert process.returncode == 0, process.stderr
    first = (tmp_path / "out" / "00_first.html").read_text()
    second = (tmp_path / "out" / "01_second.html").read_text()
    assert 'href="01_second.html#temperature"' in first and 'href="01_second.html"' in first
    assert 'href="00_first.html"' in second
    assert ".ipynb" not in " ".join(re.findall(r'href="[^"]*"', second))
    # No page to point at: the link stays as written, and the build says so, naming the notebook.
    assert 'href="07_who_teaches_whom.ipynb"' in first
    assert process.stderr.strip() == (
        f"warning: {course / '00_first.ipynb'} links to 07_who_teaches_whom.ipynb, which is not a lesson "
        f"in {course}; the link is left as it is")


def test_every_page_loads_the_local_plotly_js_before_any_other_script(course, tmp_path):
    pages = site.build_site(course, tmp_path / "out")
    assert (tmp_path / "out" / "plotly.min.js").read_bytes() == plots.plotlyjs_path().read_bytes()
    for page in pages:
        page_html = (tmp_path / "out" / page.file_name).read_text()
        assert re.match(r"<!DOCTYPE html>\s*<html[^>]*>\s*<head>\s*<script src=\"plotly.min.js\"></script>", page_html)
        assert first_script(page_html) == '<script src="plotly.min.js">'
        assert page_html.index("plotly.min.js") < page_html.index("require.min.js")  # nbconvert's own loader


def test_the_pages_hold_every_plot_the_lessons_stored(course, tmp_path):
    site.build_site(course, tmp_path / "out")
    for name in ("00_first", "01_second"):
        ids = plot_ids(course / f"{name}.ipynb")
        page = (tmp_path / "out" / f"{name}.html").read_text()
        assert ids and all(f'<div class="kdlearn-plot" id="{div_id}"' in page for div_id in ids)
        assert all(f'Plotly.newPlot("{div_id}"' in page for div_id in ids)
    # The static page shows no figure as text.
    assert "&lt;plotly figure" not in (tmp_path / "out" / "01_second.html").read_text()


def test_a_figure_stored_beside_a_widget_view_is_shown_as_the_figure(tmp_path):
    """A figure that a live kernel redraws inside a widget, its first picture stored in the same output."""
    (tmp_path / "solutions").mkdir()
    both = figure_output(bars("soft targets at T = 1.00"))
    both.data[plots.WIDGET_VIEW_MIMETYPE] = {"version_major": 2, "version_minor": 0, "model_id": "feedfacefeedface"}
    nbformat.write(new_notebook(cells=[new_markdown_cell("# 00 · Redrawn"), new_code_cell("draw()", outputs=[both])]),
                   tmp_path / "solutions" / "00_redrawn.ipynb")
    site.build_site(tmp_path / "solutions", tmp_path / "out")
    page = (tmp_path / "out" / "00_redrawn.html").read_text()
    assert page.count('<div class="kdlearn-plot"') == 1 and "feedfacefeedface" not in page


def test_some_lessons_alone_keep_the_index_and_the_links_to_the_others(course, tmp_path):
    pages = site.build_site(course, tmp_path / "out", only=["01"])
    assert [(page.file_name, page.written) for page in pages] == [("00_first.html", False), ("01_second.html", True)]
    assert sorted(path.name for path in (tmp_path / "out").iterdir()) == ["01_second.html", "index.html", "plotly.min.js"]
    assert 'href="00_first.html"' in (tmp_path / "out" / "01_second.html").read_text()
    assert '<a href="00_first.html">00 · The first lesson</a>' in (tmp_path / "out" / "index.html").read_text()
    with pytest.raises(site.SiteError, match="no lesson in .* starts with 02"):
        site.build_site(course, tmp_path / "out", only=["02"])


@pytest.mark.parametrize("make_folder, message", [
    (lambda tmp: tmp / "nowhere", "no folder {folder}: give the reference lessons' folder with --solutions DIR"),
    (lambda tmp: (tmp / "empty").mkdir() or tmp / "empty", "no reference lessons (NN_name.ipynb) in {folder}"),
])
def test_a_folder_without_lessons_is_a_message_not_a_traceback(make_folder, message, tmp_path):
    folder = make_folder(tmp_path)
    process = run_site("--solutions", str(folder), "--out", str(tmp_path / "out"), cwd=tmp_path)
    assert process.returncode == 2
    assert process.stderr.strip().endswith(f"python -m kdlearn.site: error: {message.format(folder=folder)}")
    assert "Traceback" not in process.stderr
    assert not (tmp_path / "out").exists()


def test_a_notebook_that_cannot_be_read_is_named(tmp_path):
    (tmp_path / "solutions").mkdir()
    (tmp_path / "solutions" / "00_broken.ipynb").write_text("{ not json")
    process = run_site(cwd=tmp_path)
    assert process.returncode == 2
    assert f"error: could not read {Path('solutions') / '00_broken.ipynb'}: " in process.stderr
    assert "Traceback" not in process.stderr


def test_the_real_course_renders_with_no_broken_link(tmp_path):
    # A copy, so that the figures expected are those of the very notebooks rendered.
    shutil.copytree(ROOT / "solutions", tmp_path / "solutions")
    pages = site.build_site(tmp_path / "solutions", tmp_path / "site")
    assert [page.source.name for page in pages] == sorted(path.name for path in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb"))
    assert {page.file_name: page.broken_links for page in pages if page.broken_links} == {}
    for page in pages:
        assert re.match(r"\d\d · \S", page.title), f"{page.source.name}: its first heading is {page.title!r}"
        page_html = (tmp_path / "site" / page.file_name).read_text()
        assert first_script(page_html) == '<script src="plotly.min.js">'
        missing = [div_id for div_id in plot_ids(page.source) if f'id="{div_id}"' not in page_html]
        assert not missing, f"{page.file_name} lacks the plots {missing}"
