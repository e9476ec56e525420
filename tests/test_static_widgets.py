"""What the static book keeps of an executed notebook's widgets (`repro.notebooks.static_widget_outputs`)
and the static twin FeaturePages carries for it (`text/html`, its code inline, no widget manager)."""

import json

import nbformat
import pytest
from benchmark_script import load

from repro.features.site import FeatureSite
from repro.notebooks import WIDGET_STATE, WIDGET_VIEW, static_widget_outputs
from repro.widgets.pages import FeaturePages, write_standalone

_synthetic = load("_synthetic_features")  # shared with benchmarks/feature_pages.py
synthetic_blocks = _synthetic.synthetic_blocks


def _view(model_id: str, **extra) -> dict:
    return nbformat.v4.new_output("display_data", data={WIDGET_VIEW: {"model_id": model_id, "version_major": 2},
                                                       "text/plain": "w", **extra})


def _notebook(with_gallery: bool):
    state = {
        "bar": {"model_name": "HBoxModel", "state": {"children": ["IPY_MODEL_label", "IPY_MODEL_progress"]}},
        "label": {"model_name": "HTMLModel", "state": {}},
        "progress": {"model_name": "FloatProgressModel", "state": {}},
        "pages": {"model_name": "AnyModel", "state": {}},
        "gallery": {"model_name": "AnyModel", "state": {}},
    }
    cells = [nbformat.v4.new_code_cell(outputs=[_view("bar"), nbformat.v4.new_output("stream", text="log\n")]),
             nbformat.v4.new_code_cell(outputs=[_view("pages", **{"text/html": "<div>static</div>"})])]
    if with_gallery:
        cells.append(nbformat.v4.new_code_cell(outputs=[_view("gallery")]))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["widgets"] = {WIDGET_STATE: {"state": state, "version_major": 2}}
    return nb


def test_static_twins_stay_progress_bars_go_and_the_state_with_them():
    nb = _notebook(with_gallery=False)
    assert static_widget_outputs(nb) == {"static": 1, "progress_bars": 1, "widgets_left": 0}
    assert [o.get("output_type") for o in nb.cells[0].outputs] == ["stream"]  # the bar is gone, the log stays
    assert nb.cells[1].outputs[0]["data"] == {"text/plain": "w", "text/html": "<div>static</div>"}
    assert "widgets" not in nb.metadata  # nothing left to render: no widget runtime on the page


def test_a_widget_without_a_static_twin_keeps_the_state():
    nb = _notebook(with_gallery=True)
    assert static_widget_outputs(nb) == {"static": 1, "progress_bars": 1, "widgets_left": 1}
    assert WIDGET_VIEW in nb.cells[2].outputs[0]["data"]
    assert "gallery" in nb.metadata["widgets"][WIDGET_STATE]["state"]


def _state_in(html: str) -> dict:
    return json.loads(html.split("const state = ", 1)[1].split(";\nconst model", 1)[0].replace("<\\/", "</"))


def test_feature_pages_carry_their_static_twin():
    site = FeatureSite(synthetic_blocks(("down.2.1",), n_features=20, m=4, grid=8, n_images=20, sample=8),
                       lambda i: b"", page_size=8, thumb=32)
    w = FeaturePages(site, src="05_features.files", title="t</script>", sort="freq")
    data = w._repr_mimebundle_()
    data = data[0] if isinstance(data, tuple) else data
    assert WIDGET_VIEW in data  # JupyterLab still gets the live widget
    html = data["text/html"]
    element = f"repro-fp-{w.model_id}"
    assert html.startswith(f'<div id="{element}"></div>') and f'getElementById("{element}")' in html
    assert "window.__reproPages = { render }" in html and "export default" not in html
    assert html.count("</script>") == 1  # the title's "</script>" is escaped inside the state
    state = _state_in(html)
    assert state["src"] == "05_features.files" and state["sort"] == "freq" and state["live"] is False


def test_standalone_page_reads_the_site_beside_it(tmp_path):
    page = write_standalone(tmp_path, title="A & B", page_size=7, sort="dens")
    assert page == tmp_path / "index.html" and [p.name for p in tmp_path.iterdir()] == ["index.html"]
    html = page.read_text()
    assert html.startswith("<!DOCTYPE html>") and "<title>A &amp; B</title>" in html
    assert 'getElementById("feature-pages")' in html and "export default" not in html
    state = _state_in(html)
    assert (state["src"], state["block"], state["page_size"], state["sort"]) == (".", "", 7, "dens")
    assert state["title"] == "A & B" and state["alpha"] == 0.6 and state["live"] is False


def test_standalone_page_refuses_a_folder_that_is_not_there(tmp_path):
    from repro.errors import ReproError

    with pytest.raises(ReproError, match="no feature site at"):
        write_standalone(tmp_path / "missing")
    assert not (tmp_path / "missing").exists()  # nothing half-written
