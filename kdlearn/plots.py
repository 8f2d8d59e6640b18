"""Plots that persist: a lesson's figures are stored in the notebook and drawn without a kernel.

    from kdlearn import plots
    plots.show(figure)                                # a plotly figure that does not move
    plots.interactive(draw, T=widgets.FloatSlider())  # draw(T=...) -> figure, redrawn as T moves

A plotly FigureWidget lives in the kernel: a notebook opened without running it, read in nbviewer
or rendered to HTML shows nothing where it was. So every figure here is output as data, in two
forms stored with the notebook:

- ``application/vnd.plotly.v1+json``, which JupyterLab draws with plotly's own renderer;
- ``text/html``, a <div> and a short script that draws it with plotly.js wherever HTML runs
  (nbviewer, nbconvert, the course's static site): it uses the page's plotly.js when the page has
  one (``python -m kdlearn.site`` puts a local copy in every page) and fetches the version this
  plotly was built with otherwise.

``interactive`` shows the controls, then the figure of their first values (so that picture is
stored too), and redraws the figure in place, inside an ipywidgets Output widget, each time a
control moves.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Callable
from pathlib import Path

import plotly
import plotly.io as pio
from IPython.display import display
from plotly.offline import get_plotlyjs_version

PLOTLY_MIMETYPE = "application/vnd.plotly.v1+json"
WIDGET_VIEW_MIMETYPE = "application/vnd.jupyter.widget-view+json"
DEFAULT_HEIGHT_PX = 450
_figure_numbers = itertools.count()  # div ids stay unique within a run and the same on every rerun

_DRAW_SCRIPT = """(function () {
  var figure = %(figure)s;
  function draw(Plotly) { Plotly.newPlot("%(div_id)s", figure.data, figure.layout, figure.config); }
  if (window.Plotly) { draw(window.Plotly); return; }
  var url = "%(cdn_url)s";
  if (typeof window.requirejs === "function") {  // classic Notebook and nbviewer: plotly.js loads as an AMD module
    window.requirejs.config({paths: {"kdlearn-plotly": url.replace(/\\.js$/, "")}});
    window.requirejs(["kdlearn-plotly"], draw);
    return;
  }
  var loading = document.querySelector("script[data-kdlearn-plotly]");
  if (!loading) {
    loading = document.createElement("script");
    loading.src = url;
    loading.setAttribute("data-kdlearn-plotly", "");
    document.head.appendChild(loading);
  }
  loading.addEventListener("load", function () { draw(window.Plotly); });
})();"""


def plotlyjs_path() -> Path:
    """The plotly.js bundle that ships inside the plotly package (for pages that work offline)."""
    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def mimebundle(figure) -> dict[str, object]:
    """The outputs that store ``figure`` (a plotly Figure or a dict of data/layout) in a notebook."""
    spec = json.loads(pio.to_json(figure, validate=True))
    spec.setdefault("layout", {})
    spec["config"] = {"responsive": True, "displaylogo": False, **spec.get("config", {})}
    text = json.dumps(spec, sort_keys=True, separators=(",", ":"))
    number = next(_figure_numbers)
    div_id = "kdlearn-plot-" + hashlib.sha1(f"{number}:{text}".encode()).hexdigest()[:12]
    height = spec["layout"].get("height", DEFAULT_HEIGHT_PX)
    script = _DRAW_SCRIPT % {
        # "</" would end the <script> element early if a title contained "</script>".
        "figure": text.replace("</", "<\\/"),
        "div_id": div_id,
        "cdn_url": f"https://cdn.plot.ly/plotly-{get_plotlyjs_version()}.min.js",
    }
    html = (f'<div id="{div_id}" class="kdlearn-plot" style="height: {height}px; width: 100%;"></div>\n'
            f'<script type="text/javascript">\n{script}\n</script>')
    title = spec["layout"].get("title", {})
    title = title.get("text", "") if isinstance(title, dict) else str(title)
    return {PLOTLY_MIMETYPE: spec, "text/html": html,
            "text/plain": f"<plotly figure{': ' + title if title else ''}>"}


def show(figure) -> None:
    """Display ``figure`` so that it is stored with the notebook and drawn without a kernel."""
    display(mimebundle(figure), raw=True)


def interactive(draw: Callable[..., object], **controls) -> None:
    """Controls (ipywidgets, by the name ``draw`` takes them under) above the figure
    ``draw(**values)``; moving a control redraws the figure in place.

        plots.interactive(lambda T: bars_at(T), T=widgets.FloatLogSlider(value=1.0, ...))

    The figure lives in an ipywidgets Output widget, which the kernel redraws into: JupyterLab drops an
    update_display_data sent from a widget's callback (ipywidgets issue #1844), so a figure displayed as an
    ordinary output could not be redrawn there. The output that shows the Output widget also stores the
    figure of the controls' first values as an ordinary figure: a reader without a kernel (JupyterLab before
    the notebook is run, the course's static pages) sees that picture, since no widget can be shown there."""
    if not controls:
        raise ValueError("controls must name at least one widget, e.g. T=widgets.FloatSlider()")
    import ipywidgets as widgets

    def current_figure():
        return mimebundle(draw(**{name: control.value for name, control in controls.items()}))

    first = current_figure()
    # The live view starts from the same picture. It is set as the widget's content rather than
    # displayed inside `with area:`, which would have the notebook runner (nbclient) reroute the cell's
    # outputs for a moment; the redraws below happen only in a live kernel.
    area = widgets.Output(outputs=({"output_type": "display_data", "data": first, "metadata": {}},))
    display(widgets.HBox(list(controls.values())))
    display({**first, WIDGET_VIEW_MIMETYPE: {"version_major": 2, "version_minor": 0, "model_id": area.model_id}},
            raw=True)

    def redraw(change=None):
        figure = current_figure()
        with area:
            area.clear_output(wait=True)  # no flicker: the old figure goes when the new one comes
            display(figure, raw=True)

    for control in controls.values():
        control.observe(redraw, names="value")
