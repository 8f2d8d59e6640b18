"""Lesson 01 in a real browser, twice, with screenshots left in test-artifacts/browser/ for a person to look at.

- As a learner runs it: JupyterLab serves a copy of the learner notebook on 127.0.0.1 with token
  authentication, headless Chromium runs every cell, and a drag of the temperature slider redraws the bar chart.
- As the course's static site shows it: kdlearn.site renders the reference lessons to HTML, Chromium opens
  lesson 01's page (and every other lesson's) from disk with every request that is not for a local file refused,
  and every plot on it draws.

Chromium is Debian's package (`apt-get install chromium`, which .ci/run does), driven by Playwright through its
executable path: Playwright's own browser download needs a network this project cannot count on.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
import pytest
from plotly.offline import get_plotlyjs_version

from kdlearn import plots, site

try:
    from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright
except ImportError:  # reported by the `browser` fixture as a failure that says how to install it
    sync_playwright = None

ROOT = Path(__file__).parents[1]
LESSON = "01_soft_targets.ipynb"
# Debian's Chromium by default; elsewhere (macOS, another distribution) point KDLEARN_CHROMIUM at a
# Chromium or Chrome executable.
CHROMIUM = Path(os.environ.get("KDLEARN_CHROMIUM", "/usr/bin/chromium"))
ARTIFACTS = ROOT / "test-artifacts" / "browser"
SCREENSHOT = ARTIFACTS / "lesson01.png"
FAILURE_SCREENSHOT = ARTIFACTS / "lesson01-failure.png"
SERVER_LOG = ARTIFACTS / "jupyterlab.log"
SITE_SCREENSHOT = ARTIFACTS / "site-lesson01.png"
SITE_FAILURE_SCREENSHOT = ARTIFACTS / "site-lesson01-failure.png"
# The lesson needs these JupyterLab extensions: ipywidgets' manager for the slider, and plotly's renderer for the
# figure kdlearn.plots stores as plotly's mimetype. They come with the venv's packages, in its
# share/jupyter/labextensions.
LESSON_EXTENSIONS = {"@jupyter-widgets/jupyterlab-manager", "jupyterlab-plotly"}

# Generous limits for a busy 2-core CI runner: Run All takes lesson 01 about 13 s, 36 s with both cores busy.
SERVER_START_S = 90
KERNEL_READY_MS = 120_000
RUN_ALL_MS = 300_000
REDRAW_MS = 60_000
UI_MS = 60_000


@dataclass(frozen=True)
class JupyterLab:
    url: str
    token: str = field(repr=False)  # kept out of pytest's failure reports


def http_status(url: str) -> int:
    """The HTTP status of a GET, redirects not followed (a redirect to the login page counts as a refusal)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args, **kwargs):
            return None

    try:
        with urllib.request.build_opener(NoRedirect).open(url, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except (urllib.error.URLError, OSError):
        return 0


def wait_until_serving(process: subprocess.Popen, info_file: Path, log: Path) -> dict:
    """Wait for the server to write its info file (port, token) and answer /api/status with the token."""
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with status {process.returncode} before it served; "
                               f"its log, {log}:\n{log.read_text()[-3000:]}")
        try:
            info = json.loads(info_file.read_text())
        except (OSError, ValueError):  # not written yet, or half written
            info = None
        if info and http_status(f"{info['url'].rstrip('/')}/api/status?token={info['token']}") == 200:
            return info
        time.sleep(0.2)  # the poll interval; the state waited on is the server's answer
    raise RuntimeError(f"JupyterLab did not serve within {SERVER_START_S} s; its log, {log}:\n"
                       f"{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """Ask the server to stop (it shuts its kernels down), then kill its whole process group if it hangs."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
    try:  # the group is the server and the kernels it started: nothing else is in it
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory) -> Iterator[JupyterLab]:
    """JupyterLab as `make lab` starts it (127.0.0.1, token auth), on a free port, in a copy of the lesson.

    The copy matters: JupyterLab autosaves, and lessons/ must stay as the repository has it. Config, data and
    runtime folders are fresh ones, so that no user settings, workspace or kernelspec leaks in; the venv's own
    share/jupyter, where the widget extensions live, is still searched."""
    home = tmp_path_factory.mktemp("jupyterlab")
    root, runtime = home / "lessons", home / "runtime"
    root.mkdir()
    shutil.copy(ROOT / "lessons" / LESSON, root / LESSON)
    config = home / "config"
    # No "Would you like to receive official Jupyter news?" toast over the notebook, and no request outside.
    notification = config / "lab" / "user-settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    env = {name: value for name, value in os.environ.items() if not name.startswith(("JUPYTER", "JPY_"))}
    env.update(JUPYTER_CONFIG_DIR=str(config), JUPYTER_DATA_DIR=str(home / "data"), JUPYTER_RUNTIME_DIR=str(runtime))
    token = secrets.token_hex(24)
    command = [sys.executable, "-m", "jupyterlab", "--ServerApp.ip=127.0.0.1", "--ServerApp.port=0",
               f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--ServerApp.open_browser=False",
               # window.jupyterapp: the test reads the notebook's model (execution counts, error outputs)
               # rather than prompts, which JupyterLab leaves blank in cells scrolled out of view.
               "--LabApp.expose_app_in_browser=True"]
    if os.getuid() == 0:  # Jupyter refuses to run as root unless told; CI containers run as root
        command.append("--allow-root")
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with SERVER_LOG.open("w") as log_file:
        process = subprocess.Popen(command, env=env, cwd=root, stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    try:
        info = wait_until_serving(process, runtime / f"jpserver-{process.pid}.json", SERVER_LOG)
        yield JupyterLab(url=info["url"].rstrip("/"), token=token)
    finally:
        stop(process)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if sync_playwright is None:
        pytest.fail("Playwright is not installed: `pip install -e '.[dev]'` (`make setup` does it).")
    if not CHROMIUM.exists():
        pytest.fail(f"No Chromium at {CHROMIUM}: install Debian's package, `apt-get install chromium` "
                    "(.ci/run does it), or set KDLEARN_CHROMIUM to a Chromium or Chrome executable. "
                    "Playwright's own browser download is not used.")
    with sync_playwright() as playwright:
        # --no-sandbox: Chromium's sandbox refuses to run as root, which CI containers are; the only page it
        # opens is our own JupyterLab. --disable-dev-shm-usage: containers often have a tiny /dev/shm.
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                                             args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield browser
        browser.close()


@contextmanager
def screenshot_on_failure(page: Page, path: Path = FAILURE_SCREENSHOT) -> Iterator[None]:
    """Keep the page as it was when something failed, so that a CI failure can be seen, not guessed."""
    try:
        yield
    except BaseException:
        page.screenshot(path=path)
        print(f"failure screenshot: {path}; JupyterLab's log: {SERVER_LOG}")
        raise


# The lesson's notebook panel, found through the JupyterLab application that --LabApp.expose_app_in_browser
# exposes; every script below starts from it.
FIND_PANEL = """
const app = window.jupyterapp;
const panel = app && [...app.shell.widgets('main')].find(widget => widget.context?.path === path);
"""
KERNEL_IDLE = f"""path => {{ {FIND_PANEL}
  const kernel = panel?.sessionContext.session?.kernel;
  return Boolean(kernel) && kernel.connectionStatus === 'connected' && kernel.status === 'idle';
}}"""
# Every non-empty code cell: its number in the notebook (from 1, as the status bar counts), its execution count,
# whether it is queued or running, and its errors.
CODE_CELLS = f"""path => {{ {FIND_PANEL}
  return [...panel.content.model.cells]
    .map((cell, index) => ({{ cell, number: index + 1 }}))
    .filter(({{ cell }}) => cell.type === 'code' && cell.sharedModel.getSource().trim() !== '')
    .map(({{ cell, number }}) => ({{
      number,
      count: cell.executionCount,
      running: cell.executionState === 'running',
      errors: cell.outputs.toJSON().filter(out => out.output_type === 'error')
                                   .map(out => `${{out.ename}}: ${{out.evalue}}`),
    }}));
}}"""
# Run All has finished: every cell has run, or one raised and JupyterLab dropped the cells queued after it.
RUN_ALL_FINISHED = f"""path => {{
  const cells = ({CODE_CELLS})(path);
  const allRan = cells.every(cell => cell.count !== null), oneRaised = cells.some(cell => cell.errors.length);
  return cells.length > 0 && cells.every(cell => !cell.running) && (allRan || oneRaised);
}}"""


def bar_heights(bars: Locator) -> list[float]:
    return bars.evaluate_all("paths => paths.map(path => path.getBBox().height)")


def drag_slider(page: Page, slider: Locator, fraction: float) -> None:
    """Drag the slider's handle with the mouse, as a learner does, to `fraction` of the way along its track."""
    handle = slider.locator(".noUi-handle").bounding_box()
    track = slider.locator(".noUi-base").bounding_box()
    y = handle["y"] + handle["height"] / 2
    page.mouse.move(handle["x"] + handle["width"] / 2, y)
    page.mouse.down()
    page.mouse.move(track["x"] + fraction * track["width"], y, steps=10)
    page.mouse.up()


def test_jupyterlab_refuses_requests_without_the_token(jupyterlab):
    assert http_status(f"{jupyterlab.url}/api/status?token={jupyterlab.token}") == 200
    assert http_status(f"{jupyterlab.url}/api/status") == 403
    assert http_status(f"{jupyterlab.url}/api/contents/{LESSON}?token=not-the-token") == 403
    assert http_status(f"{jupyterlab.url}/lab/tree/{LESSON}") in (302, 403)  # 302: to the login page
    assert jupyterlab.url.startswith("http://127.0.0.1:")


def test_lesson01_runs_in_the_browser_and_its_slider_redraws_the_plot(jupyterlab, browser):
    for old in (SCREENSHOT, FAILURE_SCREENSHOT):  # a stale picture must not pass for this run's
        old.unlink(missing_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(UI_MS)
    try:
        with screenshot_on_failure(page):
            page.goto(f"{jupyterlab.url}/lab/tree/{LESSON}?token={jupyterlab.token}")
            page.wait_for_function(KERNEL_IDLE, arg=LESSON, timeout=KERNEL_READY_MS)
            page_config = json.loads(page.locator("#jupyter-config-data").text_content())
            extensions = {extension["name"] for extension in page_config["federated_extensions"]}
            assert LESSON_EXTENSIONS <= extensions, f"JupyterLab lacks the extensions {LESSON_EXTENSIONS - extensions}"

            page.get_by_role("menubar").get_by_role("menuitem", name="Run", exact=True).click()
            page.locator('[data-command="runmenu:run-all"]').click()
            started = time.monotonic()
            page.wait_for_function(RUN_ALL_FINISHED, arg=LESSON, timeout=RUN_ALL_MS, polling=250)
            print(f"Run All Cells: {time.monotonic() - started:.1f} s")
            cells = page.evaluate(CODE_CELLS, LESSON)
            errors = {f"cell {cell['number']}": cell["errors"] for cell in cells if cell["errors"]}
            assert not errors, f"the lesson raised: {errors}"
            assert all(cell["count"] is not None for cell in cells), f"not every cell ran: {cells}"

            # The first slider of the lesson is the temperature, above the bar chart of one digit's soft targets:
            # kdlearn.plots.interactive shows them as two outputs of one cell, the controls, then the figure,
            # which the kernel replaces (update_display_data) when the slider moves.
            output = page.locator(".jp-Cell-outputArea").filter(has=page.locator(".widget-slider")).first
            output.scroll_into_view_if_needed()
            slider, plot = output.locator(".widget-slider").first, output.locator(".js-plotly-plot").first
            readout, title = slider.locator(".widget-readout"), plot.locator(".gtitle")
            bars = plot.locator(".barlayer .point path")
            expect(slider.locator(".widget-label")).to_have_text("T")
            expect(readout).to_have_text("1.00")
            expect(bars).to_have_count(10)  # one per digit
            expect(title).to_contain_text("soft targets at T = 1.00")
            before, tallest_shape = bar_heights(bars), bars.nth(2).get_attribute("d")
            assert max(before) == before[2], f"at T = 1 the teacher should be sure of the 2: {before}"

            drag_slider(page, slider, fraction=0.9)
            expect(readout).not_to_have_text("1.00")
            temperature = readout.text_content()
            assert float(temperature) > 5, f"dragging the slider 90% of the way gave T = {temperature}"
            # The kernel's redraw sets the bars, then the title: once the title shows the slider's final value,
            # the kernel has answered the last move.
            expect(title).to_contain_text(f"soft targets at T = {temperature}", timeout=REDRAW_MS)
            expect(bars.nth(2)).not_to_have_attribute("d", tallest_shape, timeout=REDRAW_MS)
            after = bar_heights(bars)
            # A higher temperature flattens the distribution: the tallest bar shrinks, the shortest grows.
            assert max(after) < 0.5 * max(before), f"T = {temperature}: bars {before} -> {after}"
            assert min(after) > min(before), f"T = {temperature}: bars {before} -> {after}"

            output.scroll_into_view_if_needed()
            page.screenshot(path=SCREENSHOT)
            print(f"screenshot: {SCREENSHOT}")
    finally:
        page.close()


# Each plot of a static page: whether plotly drew it (its SVG), its title, and how many marks it shows. plotly.js
# draws each trace in its layer of the subplot (.barlayer, .scatterlayer, .heatmaplayer: all .mlayer), pies in
# .pielayer. A bar counts when it has a height; another mark (a line, a marker, a heatmap's image) when it has a size.
PLOTS_DRAWN = """divs => divs.map(div => {
  const graph = div.matches('.js-plotly-plot') ? div : div.querySelector('.js-plotly-plot');
  const marks = selector => graph ? [...graph.querySelectorAll(selector)] : [];
  const sized = element => { const box = element.getBBox(); return box.width > 0 || box.height > 0; };
  return {
    id: div.id,
    svg: marks('svg.main-svg').length > 0,
    title: graph?.querySelector('.gtitle')?.textContent ?? '',
    barLayers: marks('.barlayer').length,
    barPaths: marks('.barlayer .point path').length,
    bars: marks('.barlayer .point path').filter(path => path.getBBox().height > 0).length,
    marks: marks('.mlayer .trace path, .mlayer image, .pielayer .slice path')
      .filter(element => element.tagName !== 'path' || element.getAttribute('d').trim() !== '')
      .filter(sized).length,
  };
})"""


def stored_plot_ids(notebook_path: Path) -> list[str]:
    """The div ids of the figures kdlearn.plots stored in a notebook, in order."""
    notebook = nbformat.read(notebook_path, as_version=4)
    return [output.data["text/html"].split('id="', 1)[1].split('"', 1)[0]
            for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs if plots.PLOTLY_MIMETYPE in output.get("data", {})]


@dataclass(frozen=True)
class StaticSite:
    solutions: Path  # the reference lessons the pages were made from
    pages: Path


@pytest.fixture(scope="module")
def static_site(tmp_path_factory) -> StaticSite:
    """The course's static pages, as `kdlearn site` writes them, from a copy of solutions/: the figures a
    test expects are read from the very notebooks the pages were made from, even if solutions/ changes."""
    home = tmp_path_factory.mktemp("site")
    shutil.copytree(ROOT / "solutions", home / "solutions")
    site.build_site(home / "solutions", home / "pages")
    return StaticSite(home / "solutions", home / "pages")


def plots_drawn(page: Page, page_file: Path, expected: list[str], errors: list[str], refused: list[str]) -> list[dict]:
    """Open the page, wait for its plots, and check that each of the figures ``expected`` (their div ids) drew
    data; what PLOTS_DRAWN found."""
    page.goto(page_file.as_uri())
    assert page.evaluate("typeof window.Plotly === 'object' && window.Plotly.version") == \
        get_plotlyjs_version(), "the page's own plotly.js did not set window.Plotly"
    page.wait_for_function(
        "n => document.querySelectorAll('.kdlearn-plot svg.main-svg').length >= n", arg=len(expected))
    drawn = page.locator(".kdlearn-plot").evaluate_all(PLOTS_DRAWN)
    assert [plot["id"] for plot in drawn] == expected, "the page lacks some of the lesson's figures"
    blank = [plot for plot in drawn if not plot["svg"] or plot["marks"] == 0
             or (plot["barLayers"] and plot["bars"] == 0)]
    assert not blank, f"plots that drew no data: {blank}; page errors: {errors}; refused: {refused}"
    assert all(plot["title"] for plot in drawn), f"plots without a title: {drawn}"
    return drawn


def draw_offline(browser: Browser, page_file: Path, expected: list[str], failure_screenshot: Path):
    """plots_drawn on a static page opened from disk with every request that is not for a local file refused;
    the open page, what PLOTS_DRAWN found, and the refused URLs."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.set_default_timeout(UI_MS)
    refused, errors = [], []
    # Nothing leaves the machine: the page's plotly.js is the local copy; require.js, MathJax and the widget
    # manager from CDNs are refused (the static page needs none of them to draw its plots).
    page.route("**/*", lambda route: route.continue_() if route.request.url.startswith("file:")
               else (refused.append(route.request.url), route.abort()))
    page.on("pageerror", lambda error: errors.append(str(error)))
    try:
        with screenshot_on_failure(page, failure_screenshot):
            drawn = plots_drawn(page, page_file, expected, errors, refused)
    except BaseException:
        page.close()
        raise
    return page, drawn, refused


def test_lesson01s_static_page_draws_every_plot_offline(browser, static_site):
    for old in (SITE_SCREENSHOT, SITE_FAILURE_SCREENSHOT):
        old.unlink(missing_ok=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    reference = static_site.solutions / LESSON
    assert "FigureWidget" not in reference.read_text(), (
        f"{reference} still uses plotly's FigureWidget, which draws nothing without a kernel: "
        "kdlearn.plots.show or kdlearn.plots.interactive stores a figure that a page can draw")
    expected = stored_plot_ids(reference)
    assert expected, f"{reference} stores no figure of kdlearn.plots"
    page, drawn, refused = draw_offline(browser, static_site.pages / reference.with_suffix(".html").name, expected,
                                        SITE_FAILURE_SCREENSHOT)
    try:
        with screenshot_on_failure(page, SITE_FAILURE_SCREENSHOT):
            # The temperature's bar chart, as the reference run stored it at T = 1.
            bar_charts = [plot for plot in drawn if plot["title"].startswith("soft targets at T = 1.00")]
            assert bar_charts and bar_charts[0]["barPaths"] == 10, f"no bar chart of soft targets at T = 1: {drawn}"
            page.locator(f"#{bar_charts[0]['id']}").scroll_into_view_if_needed()
            page.screenshot(path=SITE_SCREENSHOT)
            print(f"screenshot: {SITE_SCREENSHOT}; refused {len(refused)} requests: {refused}")
    finally:
        page.close()


OTHER_LESSONS = sorted(path.name for path in (ROOT / "solutions").glob("[0-9][0-9]_*.ipynb") if path.name != LESSON)


@pytest.mark.parametrize("lesson", OTHER_LESSONS, ids=[name.removesuffix(".ipynb") for name in OTHER_LESSONS])
def test_every_other_lessons_static_page_draws_its_plots_offline(browser, static_site, lesson):
    reference = static_site.solutions / lesson
    failure = ARTIFACTS / f"site-{reference.stem}-failure.png"
    failure.unlink(missing_ok=True)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page, _, _ = draw_offline(browser, static_site.pages / reference.with_suffix(".html").name,
                              stored_plot_ids(reference), failure)
    page.close()
