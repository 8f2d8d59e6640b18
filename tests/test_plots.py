"""kdlearn.plots: figures stored as data that draws without a kernel, and the redraw of an interactive one."""

from __future__ import annotations

import json

import ipywidgets as widgets
import plotly.graph_objects as go
import pytest
from IPython.core.interactiveshell import InteractiveShell

from kdlearn import plots


def bars(height: float = 1.0) -> go.Figure:
    return go.Figure(go.Bar(x=["a", "b"], y=[height, 2 * height]), layout=dict(title="two bars", height=300))


def test_a_figure_is_stored_for_jupyterlab_and_for_plain_html():
    bundle = plots.mimebundle(bars())
    spec = bundle[plots.PLOTLY_MIMETYPE]
    assert spec["data"][0]["y"] == [1.0, 2.0] and spec["layout"]["title"]["text"] == "two bars"
    html = bundle["text/html"]
    div_id = html.split('id="')[1].split('"')[0]
    assert f'Plotly.newPlot("{div_id}"' in html and "height: 300px" in html
    # The script carries the same figure that JupyterLab's renderer gets.
    figure_json = html.split("var figure = ")[1].split(";\n")[0]
    assert json.loads(figure_json) == spec
    assert bundle["text/plain"] == "<plotly figure: two bars>"


def test_div_ids_differ_between_figures_and_no_title_can_end_the_script_early():
    first, second = plots.mimebundle(bars()), plots.mimebundle(bars())
    assert first["text/html"].split('id="')[1][:25] != second["text/html"].split('id="')[1][:25]
    sneaky = plots.mimebundle(go.Figure(layout=dict(title="</script><b>")))["text/html"]
    assert sneaky.count("</script>") == 1


def test_the_plotly_js_for_offline_pages_ships_with_plotly():
    assert plots.plotlyjs_path().stat().st_size > 1_000_000


class Captured:
    """What IPython.display sends: each display and each update, by display id."""

    def __init__(self, monkeypatch):
        self.shown, self.updates = [], []
        shell = InteractiveShell.instance()
        publisher = shell.display_pub

        def publish(data, metadata=None, *, transient=None, update=False, **kwargs):
            (self.updates if update else self.shown).append((data, (transient or {}).get("display_id")))

        monkeypatch.setattr(publisher, "publish", publish)


def test_interactive_stores_the_first_picture_beside_its_output_widget_and_redraws_there(monkeypatch):
    captured = Captured(monkeypatch)
    slider = widgets.FloatSlider(value=1.0, min=0.0, max=5.0)
    plots.interactive(lambda height: bars(height), height=slider)
    stored, _ = captured.shown[-1]
    assert stored[plots.PLOTLY_MIMETYPE]["data"][0]["y"] == [1.0, 2.0] and 'class="kdlearn-plot"' in stored["text/html"]
    assert stored[plots.WIDGET_VIEW_MIMETYPE]["model_id"]
    shown_before = len(captured.shown)
    slider.value = 3.0
    redrawn, _ = captured.shown[-1]  # outside a kernel, the Output widget passes its display through
    assert len(captured.shown) == shown_before + 1 and not captured.updates
    assert redrawn[plots.PLOTLY_MIMETYPE]["data"][0]["y"] == [3.0, 6.0]


def test_interactive_needs_a_control():
    with pytest.raises(ValueError, match="controls"):
        plots.interactive(lambda: bars())
