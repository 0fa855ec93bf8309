"""view.save(...) and view.figure(): a static figure of what each view shows now (selection,
ablation set, top_nodes, top_edges, min_rel_weight, pins), and the view itself as standalone HTML."""

from __future__ import annotations

import itertools
import xml.etree.ElementTree as ET

import pytest

import circuitviz as cv
from circuitviz.export import ExportError
from circuitviz.export._html import write_html
from circuitviz.views import AttentionView, CircuitView, PatchingView, explore


@pytest.fixture(scope="module")
def graph(tiny_llama, tiny_pairs):
    return cv.circuit(tiny_llama, tiny_pairs, progress=False)


NODE_TRACES = ("embed", "head", "MLP", "logits")


def crosses(fig) -> int:
    """Crossed-out cells: all crosses are one black path (two strokes each) on a white halo."""
    black = [s for s in fig.layout.shapes if s.name == "ablated" and s.line.color == "#000000"]
    return sum(s.path.count("M") for s in black) // 2


def outlines(fig) -> int:
    """Outlined cells: all outlines are one path, a closed square each."""
    return sum(s.path.count("Z") for s in fig.layout.shapes if s.name == "selected")


def test_patching_view_figure_marks_its_selection_and_ablations(tiny_llama, tiny_pairs, tmp_path):
    by_pos = cv.patch(tiny_llama, tiny_pairs, over="heads_by_pos", progress=False)
    view = PatchingView(by_pos, model=tiny_llama, pairs=tiny_pairs)
    assert crosses(view.figure()) == 0
    view.ablate(["L0H1", "L1H3"])
    view.selected = "L1H2"
    fig = view.figure()
    n_pos = by_pos.values.shape[by_pos.axes.index("pos")]
    assert crosses(fig) == 2 * n_pos  # every position of each ablated head
    assert outlines(fig) == n_pos
    view.selected = "MLP0"  # linked from another view: not a cell of a heads map
    assert outlines(view.figure()) == 0
    assert outlines(view.figure(selected="L0H0")) == n_pos  # options override the view
    svg = view.save(tmp_path / "map.svg")
    text = svg.read_text()
    ET.fromstring(text)
    assert "heads_by_pos" in text and "L1H3" in text


def test_circuit_view_figure_draws_the_shown_circuit(tiny_llama, tiny_pairs, graph, tmp_path):
    view = CircuitView(tiny_llama, tiny_pairs, graph=graph)
    view.top_nodes, view.min_rel_weight = 4, 0.01
    shown = view.shown_graph()
    heads = [n for n in shown["nodes"] if n["type"] in ("head", "mlp")]
    assert 0 < len(heads) <= 4
    assert {"EMBED", "LOGITS"} <= {n["id"] for n in shown["nodes"]}
    strongest = max(abs(e.weight) for e in graph.edges)
    ids = {n["id"] for n in shown["nodes"]}
    assert all(abs(e["weight"]) >= 0.01 * strongest for e in shown["edges"])
    assert all(e["source"] in ids and e["target"] in ids for e in shown["edges"])
    weights = [abs(e["weight"]) for e in shown["edges"]]
    assert weights == sorted(weights, reverse=True)
    view.pinned = ["L0H0"]
    assert "L0H0" in {n["id"] for n in view.shown_graph()["nodes"]}
    target = heads[0]["id"]
    view.ablate([target])
    view.selected = target
    fig = view.figure()
    marked = {t.name: t for t in fig.data if t.mode == "markers"}
    assert len(marked["ablated"].x) == 1 and len(marked["selected"].x) == 1
    drawn = sum(len(t.x) for t in fig.data if t.mode == "markers" and t.name in NODE_TRACES)
    assert drawn == len(view.shown_graph()["nodes"])
    ET.fromstring(view.save(tmp_path / "circuit.svg").read_text())


def test_attention_view_figure_is_the_focused_head_or_the_role_scores(tiny_llama, tmp_path):
    view = AttentionView(tiny_llama, "t1 t2 t3 t1 t2 t3")
    view.selected = "L1H2"
    assert view.figure().layout.title.text == "Attention of L1H2"
    view.show_scores = "induction"
    fig = view.figure()
    assert fig.layout.title.text == "Head-role scores" and len(fig.data) == 1
    assert view.figure(layer=0, head=1).layout.title.text == "Attention of L0H1"
    assert view.save(tmp_path / "attention.png", dpi=50).read_bytes()[:4] == b"\x89PNG"


def test_views_and_explore_save_standalone_html(tiny_llama, tiny_pairs, tmp_path):
    box = explore(tiny_llama, tiny_pairs)
    assert "<html" in box.save(tmp_path / "explore.html").read_text().lower()
    assert "<html" in box.patching.save(tmp_path / "map.html").read_text().lower()
    with pytest.raises(ExportError, match="save one of its views"):
        box.save(tmp_path / "explore.svg")
    with pytest.raises(ExportError, match="unknown extension"):
        box.circuit.save(tmp_path / "circuit.jpg")
    assert not (tmp_path / "explore.svg").exists()


# ----------------------------------------------------------------------------- in a browser


@pytest.mark.browser
def test_shown_graph_is_what_the_browser_draws(tiny_pairs, tmp_path, page):
    """The kernel decides what is shown (CircuitView.shown_graph) and the page draws exactly
    that, over settings of top_nodes, top_edges, min_rel_weight and pins."""
    deeper = cv.tiny_model("llama", n_layers=6)
    view = CircuitView(deeper, tiny_pairs, graph=cv.circuit(deeper, tiny_pairs, progress=False))
    path = tmp_path / "circuit.html"
    settings = itertools.product((3, 12, 30), (20, 400), (0.0, 0.05), ([], ["MLP1"]))
    for top_nodes, top_edges, rel, pinned in settings:
        view.top_nodes, view.top_edges = top_nodes, top_edges
        view.min_rel_weight, view.pinned = rel, pinned
        write_html(view, path)
        page.goto(path.as_uri())
        page.locator(".cv-circuit [data-component]").first.wait_for()
        nodes = page.eval_on_selector_all(
            ".cv-circuit g.cv-node", "els => els.map(e => e.getAttribute('data-component'))"
        )
        edges = page.eval_on_selector_all(
            ".cv-circuit path[data-edge]", "els => els.map(e => e.getAttribute('data-edge'))"
        )
        shown = view.shown_graph()
        assert sorted(nodes) == sorted(n["id"] for n in shown["nodes"])
        assert sorted(edges) == sorted(f"{e['source']}->{e['target']}" for e in shown["edges"])
        assert set(pinned) <= set(nodes)
    assert not page.console_errors
