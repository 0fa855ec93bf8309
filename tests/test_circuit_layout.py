"""CircuitView's layout of feature circuits: the kernel's cell rule (``graph._placement``:
each SAE node's column and tier in its layer × site × position cell) and, in Chromium, the
drawn demo IOI feature circuit at its default size and a larger one, measured for overlaps
(node marks with node marks, labels with labels and with node marks) from the DOM's boxes.
Screenshots: tests/artifacts/circuit_layout_{default,large}.png."""

from __future__ import annotations

import pytest

from circuitviz.engine.graph._placement import feature_cells, place_feature_nodes


def sae_node(i: int, *, layer=3, pos=5, site="", score=None, kind="feature"):
    return {
        "id": f"L{layer}{site}F{i}:P{pos}" if kind == "feature" else f"L{layer}{site}ERR:P{pos}",
        "type": kind,
        "layer": layer,
        "pos": pos,
        "site": site,
        "score": float(i + 1) if score is None else score,
    }


def test_a_cell_spreads_up_to_n_heads_nodes_strongest_first_error_last():
    nodes = [sae_node(i) for i in range(3)] + [sae_node(0, kind="error", score=99.0)]
    cells = feature_cells(nodes, n_heads=7)
    # strongest (F2) first over the head columns 0 … 6, the error node last
    assert [cells[n][0] for n in ("L3F2:P5", "L3F1:P5", "L3F0:P5", "L3ERR:P5")] == [0, 2, 4, 6]
    assert {t for _, t in cells.values()} == {0}
    assert feature_cells([sae_node(0)], n_heads=7) == {"L3F0:P5": (3.0, 0)}  # alone: centred


def test_a_crowded_cell_wraps_into_tiers_never_in_the_mlp_column():
    nodes = [sae_node(i) for i in range(20)] + [sae_node(0, kind="error")]
    cells = feature_cells(nodes, n_heads=9)
    assert max(s for s, _ in cells.values()) <= 8  # column 9 is the MLP's
    assert sorted({t for _, t in cells.values()}) == [0, 1, 2]
    # nine to a row, strongest in the lowest tier, no two nodes on one spot
    assert cells["L3F19:P5"] == (0, 0) and cells["L3F10:P5"] == (0, 1)
    assert cells["L3ERR:P5"] == (2, 2)
    assert len(set(cells.values())) == len(nodes)


def test_cells_are_per_layer_site_and_position_and_supernodes_rank_among_latents():
    nodes = [
        sae_node(0, score=1.0),
        sae_node(1, site="attn", score=5.0),
        sae_node(2, pos=6),
        {"id": "S1", "type": "supernode", "layer": 3, "pos": 5, "site": "", "score": -3.0},
        {"id": "L3H0:P5", "type": "head", "layer": 3, "pos": 5, "score": 9.0},
    ]
    cells = feature_cells(nodes, n_heads=4)
    assert "L3H0:P5" not in cells
    assert cells["S1"] == (0, 0) and cells["L3F0:P5"] == (3, 0)  # |−3| ranks above 1
    assert cells["L3attnF1:P5"] == (1.5, 0) and cells["L3F2:P6"] == (1.5, 0)


def test_place_feature_nodes_copies_and_leaves_plain_graphs_alone():
    nodes = [sae_node(0), {"id": "L3H0:P5", "type": "head", "layer": 3, "pos": 5}]
    payload = {"n_heads": 4, "nodes": nodes}
    placed = place_feature_nodes(payload)
    assert placed["nodes"][0]["slot"] == 1.5 and placed["nodes"][0]["tier"] == 0
    assert "slot" not in nodes[0] and "slot" not in placed["nodes"][1]
    plain = {"n_heads": 4, "nodes": nodes[1:]}
    assert place_feature_nodes(plain) is plain


# --------------------------------------------------------------------------- browser
OVERLAPS_JS = """() => {
  const root = document.querySelector(".cv-circuit");
  const box = (e) => { const r = e.getBoundingClientRect();
    return { x0: r.left, y0: r.top, x1: r.right, y1: r.bottom }; };
  const hit = (a, b) => a.x0 + 0.5 < b.x1 && b.x0 + 0.5 < a.x1 && a.y0 + 0.5 < b.y1 && b.y0 + 0.5 < a.y1;
  const marks = [...root.querySelectorAll("g.cv-node")].map((g) => [g.dataset.component,
    box(g.querySelector("circle:not([data-role]), rect, path, polygon"))]);
  const labels = [...root.querySelectorAll('text[data-role="node-label"]')].map((t) =>
    [t.dataset.for, box(t)]);
  const pairs = (xs, ys, same) => { const out = [];
    xs.forEach(([a, p], i) => ys.forEach(([b, q], j) => {
      if ((!same || j > i) && hit(p, q)) out.push(a + " / " + b); })); return out; };
  return { marks: marks.length, labels: labels.length,
           markMark: pairs(marks, marks, true), labelLabel: pairs(labels, labels, true),
           labelMark: pairs(labels, marks, false) };
}"""


@pytest.fixture(scope="module")
def demo_feature_circuit(demo_model):
    import circuitviz as cv

    pairs = cv.tasks.ioi(demo_model, n=8, seed=0)
    graph = cv.circuit(demo_model, pairs, saes=cv.load_saes("demo"), progress=False)
    return pairs, graph


@pytest.mark.browser
@pytest.mark.parametrize("size", ["default", "large"])
def test_demo_feature_circuit_draws_without_overlaps(
    demo_model, demo_feature_circuit, page, tmp_path, artifacts, size
):
    from circuitviz.export._html import write_html
    from circuitviz.views import CircuitView

    pairs, graph = demo_feature_circuit
    view = CircuitView(demo_model, pairs, graph=graph)
    if size == "large":
        view.top_edges *= 2
    n_nodes = len(view.graph["nodes"])
    assert n_nodes >= (120 if size == "large" else 60)
    # the crowded cells wrap: some cell of the demo circuit holds more latents than heads
    assert max(n.get("tier", 0) for n in view.graph["nodes"]) >= 1
    path = write_html(view, tmp_path / "circuit.html")
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto(path.as_uri())
    page.locator(".cv-circuit g.cv-node").first.wait_for()
    page.wait_for_function(
        "document.querySelectorAll('.cv-circuit [data-role=node-label]').length > 0"
    )
    got = page.evaluate(OVERLAPS_JS)
    page.locator(".cv-circuit svg.cv-graph").screenshot(
        path=str(artifacts / f"circuit_layout_{size}.png")
    )
    assert got["marks"] == n_nodes and got["labels"] >= n_nodes // 3
    assert got["markMark"] == [] and got["labelLabel"] == [] and got["labelMark"] == []
    assert not page.console_errors
