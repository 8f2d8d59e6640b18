"""The course as a static web site: every reference lesson, with its stored outputs, as an HTML page.

    python -m kdlearn.site                                  # solutions/ -> site/
    kdlearn site                                            # the same, through the kdlearn command
    python -m kdlearn.site --out public --solutions solutions
    python -m kdlearn.site 01                               # lesson 01's page alone (and the index)

The pages are made from solutions/, where every lesson's outputs are stored, so they show each
exercise solved: publish them for the open course, not for a graded class (``kdlearn handout``
makes what a class gets). Nothing is run: a page shows what the last ``kdlearn build`` stored.

Each page is nbconvert's HTML (its JupyterLab template). Four things are changed on the way:

- a link from one lesson to another (``02_hinton_reproduced.ipynb``) points at that lesson's page
  (``02_hinton_reproduced.html``); a link to a lesson that is not in the folder is left as it is and
  reported;
- plotly.js is copied beside the pages and loaded first in every page's <head>. kdlearn.plots'
  figures draw with ``window.Plotly`` when the page has it, so the plots draw offline. It has to
  come before the require.js that nbconvert's page loads: loaded after it, plotly.js registers as an
  AMD module and never sets ``window.Plotly``;
- the page's <title> is the lesson's title;
- an output that holds both a widget's view and a figure of kdlearn.plots (a figure that a live kernel
  redraws inside a widget, stored with its first picture) shows the figure: without a kernel, the
  widget could only show that same picture, and only with a widget manager fetched from a CDN.

An index.html lists the lessons by their titles.
"""

from __future__ import annotations

import argparse
import html
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from kdlearn import plots

PLOTLY_FILE = "plotly.min.js"
INDEX_FILE = "index.html"
LESSON_GLOB = "[0-9][0-9]_*.ipynb"
# href="02_hinton_reproduced.ipynb", or "./02_...ipynb#a-heading": a link to a lesson beside this one.
LESSON_LINK = re.compile(r'(?P<start>\bhref=")(?:\./)?(?P<stem>\d\d_[^"/#?]+)\.ipynb(?P<anchor>#[^"]*)?"')
HEAD_TAG = re.compile(r"<head\b[^>]*>", re.IGNORECASE)
HEADING = re.compile(r"^#\s+(.+?)\s*#*\s*$", re.MULTILINE)


class SiteError(Exception):
    """Something that stops the site from being written, said in a sentence (no traceback)."""


@dataclass
class Page:
    source: Path
    title: str
    # Links to lessons that have no page here, as written in the notebook (e.g. "07_who_teaches.ipynb").
    broken_links: list[str] = field(default_factory=list)
    written: bool = True  # False for a lesson that the index lists but this build did not render

    @property
    def file_name(self) -> str:
        return self.source.with_suffix(".html").name


def lesson_title(notebook: nbformat.NotebookNode, fallback: str) -> str:
    """The first level-1 heading of the lesson's Markdown, as plain text ("01 · Soft targets and temperature")."""
    for cell in notebook.cells:
        if cell.cell_type == "markdown":
            match = HEADING.search(cell.source)
            if match:
                text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", match.group(1))  # a link keeps its words
                return re.sub(r"[*`]", "", text).strip() or fallback  # emphasis and code marks go
    return fallback


def rewrite_lesson_links(page_html: str, pages: set[str]) -> tuple[str, list[str]]:
    """``page_html`` with each link to a lesson in ``pages`` (file names, "02_x.html") pointing at its
    page, and the lesson links that have no page, in the order they appear."""
    broken = []

    def rewrite(match: re.Match) -> str:
        target = f"{match['stem']}.html"
        if target not in pages:
            broken.append(f"{match['stem']}.ipynb{match['anchor'] or ''}")
            return match.group(0)
        return f'{match["start"]}{target}{match["anchor"] or ""}"'

    return LESSON_LINK.sub(rewrite, page_html), broken


def load_plotly_first(page_html: str) -> str:
    """``page_html`` with the local plotly.js as the first element of its <head>, before any script."""
    head = HEAD_TAG.search(page_html)
    if head is None:
        raise SiteError("nbconvert wrote a page without a <head>: cannot load plotly.js in it")
    tag = f'<script src="{PLOTLY_FILE}"></script>'
    return page_html[: head.end()] + tag + page_html[head.end():]


def show_stored_figures(notebook: nbformat.NotebookNode) -> None:
    """Drop the widget view from each output that also stores a figure of kdlearn.plots, so the page shows
    the figure (nbconvert prefers a widget view to any other form of an output)."""
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if plots.WIDGET_VIEW_MIMETYPE in data and plots.PLOTLY_MIMETYPE in data:
                del data[plots.WIDGET_VIEW_MIMETYPE]


def render_lesson(path: Path, pages: set[str], exporter) -> tuple[str, Page]:
    notebook = nbformat.read(path, as_version=4)
    show_stored_figures(notebook)
    page = Page(source=path, title=lesson_title(notebook, fallback=path.stem))
    body, _ = exporter.from_notebook_node(notebook, resources={"metadata": {"name": page.title}})
    body, page.broken_links = rewrite_lesson_links(body, pages)
    return load_plotly_first(body), page


def index_html(pages: list[Page]) -> str:
    items = "\n".join(f'  <li><a href="{html.escape(page.file_name)}">{html.escape(page.title)}</a></li>'
                      for page in pages)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>kdlearn: the lessons</title>
<style>
  body {{ font-family: system-ui, sans-serif; max-width: 46rem; margin: 3rem auto; padding: 0 1rem;
         line-height: 1.5; color: #222; }}
  ul.lessons {{ list-style: none; padding: 0; }}  /* the titles carry their numbers */
  li {{ margin: 0.3rem 0; }}
  .note {{ color: #555; }}
</style>
</head>
<body>
<h1>kdlearn: knowledge distillation, a course you run</h1>
<ul class="lessons">
{items}
</ul>
<p class="note">These pages are the reference lessons as one run stored them: every exercise is shown
solved, and every plot as it was first drawn. Sliders move plots only in a running notebook: open the
learner versions (the repository's <code>lessons/</code> folder) in JupyterLab to run the lessons and
write the exercises yourself.</p>
</body>
</html>
"""


def build_site(solutions: Path, out: Path, only: list[str] | None = None) -> list[Page]:
    """Write one page per reference lesson in ``solutions``, index.html and plotly.js into ``out``.

    ``only`` names some lessons by the start of their file name ("01", "01_soft_targets"), to write
    those pages alone (the index still lists every lesson, and links to the others still point at
    their pages)."""
    if not solutions.is_dir():
        raise SiteError(f"no folder {solutions}: give the reference lessons' folder with --solutions DIR")
    sources = sorted(solutions.glob(LESSON_GLOB))
    if not sources:
        raise SiteError(f"no reference lessons (NN_name.ipynb) in {solutions}")
    unknown = [name for name in only or [] if not any(source.name.startswith(name) for source in sources)]
    if unknown:
        raise SiteError(f"no lesson in {solutions} starts with {', '.join(unknown)}")
    from nbconvert import HTMLExporter  # imported here: `kdlearn --help` need not load it

    exporter = HTMLExporter(template_name="lab")
    names = {source.with_suffix(".html").name for source in sources}
    out.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(plots.plotlyjs_path(), out / PLOTLY_FILE)
    pages = []
    for source in sources:
        if only and not any(source.name.startswith(name) for name in only):
            notebook = nbformat.read(source, as_version=4)  # listed in the index, not written
            pages.append(Page(source=source, title=lesson_title(notebook, fallback=source.stem), written=False))
            continue
        try:
            page_html, page = render_lesson(source, names, exporter)
        except (OSError, ValueError) as error:  # unreadable, or not a notebook (nbformat's errors are ValueErrors)
            raise SiteError(f"could not read {source}: {error}") from error
        (out / page.file_name).write_text(page_html, encoding="utf-8")
        pages.append(page)
    (out / INDEX_FILE).write_text(index_html(pages), encoding="utf-8")
    return pages


def main(argv: list[str] | None = None, prog: str = "python -m kdlearn.site") -> int:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Render the reference lessons, with their stored outputs, to static HTML pages that "
                    "draw their plots offline, and an index.html listing them. The pages show every "
                    "exercise solved.",
        epilog="Example: kdlearn site --out site, then open site/index.html")
    parser.add_argument("--out", type=Path, default=Path("site"), metavar="DIR",
                        help="the folder to write the pages into (default: site)")
    parser.add_argument("--solutions", type=Path, default=Path("solutions"), metavar="DIR",
                        help="the reference lessons (default: solutions)")
    parser.add_argument("only", nargs="*", metavar="LESSON",
                        help="write only these lessons' pages, e.g. 01 (default: every lesson)")
    args = parser.parse_args(argv)
    try:
        pages = build_site(args.solutions, args.out, only=args.only)
    except SiteError as error:
        parser.error(str(error))
    for page in (page for page in pages if page.written):
        print(f"wrote {args.out / page.file_name}  ({page.title})")
        for link in page.broken_links:
            print(f"warning: {page.source} links to {link}, which is not a lesson in {args.solutions}; "
                  "the link is left as it is", file=sys.stderr)
    print(f"open {args.out / INDEX_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
