"""CircuitView's layout of feature circuits: the kernel's cell rule (``graph._placement``:
each SAE node's column and tier in its layer × site × position cell) and, in Chromium, the
drawn demo IOI feature circuit at its default size and a larger one, measured for overlaps
(node marks with node marks, labels with labels and with node marks) from the DOM's boxes.
Screenshots: tests/artifacts/circuit_layout_{default,large}.png."""

from __future__ import annotations

from itertools import pairwise

import pytest

from circuitviz.engine.graph._placement import (
    TIER_ROWS,
    feature_cells,
    graph_layout,
    place_feature_nodes,
)


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


def laid_out(nodes, **meta):
    out = graph_layout({"n_layers": 2, "n_heads": 2, "nodes": nodes, **meta})
    return {n["id"]: (n["x"], n["y"]) for n in out["nodes"]}, out["layout"]


def head(layer, h, pos=None):
    suffix = "" if pos is None else f":P{pos}"
    return {"id": f"L{layer}H{h}{suffix}", "type": "head", "layer": layer, "head": h, "pos": pos}


def test_layers_run_bottom_up_heads_then_the_mlp_across_each_node_its_own_spot():
    nodes = [
        {"id": "EMBED", "type": "embed", "layer": -1},
        head(0, 0),
        head(0, 1),
        {"id": "MLP0", "type": "mlp", "layer": 0},
        head(1, 0),
        {"id": "LOGITS", "type": "logits", "layer": 2},
    ]
    at, layout = laid_out(nodes)
    y = {k: v[1] for k, v in at.items()}
    assert y["EMBED"] < y["L0H0"] < y["MLP0"] < y["L1H0"] < y["LOGITS"]
    assert y["MLP0"] - y["L0H0"] == 0.25  # the MLP reads the heads: a quarter row up
    assert at["L0H0"][0] < at["L0H1"][0] < at["MLP0"][0]
    assert len(set(at.values())) == len(nodes)
    assert [r["layer"] for r in layout["rows"]] == [-1, 0, 1, 2] and layout["min_gap"] == 1


def test_only_layers_with_nodes_get_rows_and_tokens_get_bands():
    sparse = [
        {"id": "EMBED", "type": "embed", "layer": -1},
        head(7, 0),
        head(20, 1),
        {"id": "LOGITS", "type": "logits", "layer": 30},
    ]
    _, layout = laid_out(sparse, n_layers=30)
    assert layout["height"] == 3 and [r["y"] for r in layout["rows"]] == [0, 1, 2, 3]
    at, layout = laid_out([head(0, 0, 0), head(0, 1, 0), head(0, 0, 1)], per_position=True)
    assert at["L0H0:P0"][0] < at["L0H1:P0"][0] < at["L0H0:P1"][0] < layout["width"]
    assert [b["pos"] for b in layout["bands"]] == [0, 1]


def test_sae_nodes_sit_half_a_row_up_in_their_cell_clear_of_the_mlp_column():
    nodes = [
        head(0, 1, 2),
        {"id": "MLP0:P2", "type": "mlp", "layer": 0, "pos": 2},
        sae_node(3, layer=0, pos=2, score=0.5),
        sae_node(7, layer=0, pos=2, score=0.1),
        sae_node(0, layer=0, pos=2, kind="error", score=0.2),
        sae_node(3, layer=0, pos=1, score=0.3),
    ]
    at, layout = laid_out(nodes, n_heads=4, per_position=True, tokens=["a", "b", "c"])
    f, h, mlp = at["L0F3:P2"], at["L0H1:P2"], at["MLP0:P2"]
    assert f[1] - h[1] == 0.5 and f[1] > mlp[1]
    xs = [at[i][0] for i in ("L0F3:P2", "L0F7:P2", "L0ERR:P2")]
    assert xs == sorted(xs) and max(xs) <= mlp[0] - 1
    assert at["L0F3:P1"][0] < min(xs) and layout["min_gap"] == TIER_ROWS


def test_a_crowded_cell_stacks_its_tiers_and_moves_the_layers_above_up():
    crowd = [head(0, 0, 0), head(1, 0, 0)] + [sae_node(i, layer=0, pos=0) for i in range(5)]
    at, layout = laid_out(crowd, per_position=True)  # two head columns: five latents, 3 tiers
    y = {k: v[1] for k, v in at.items()}
    tiers = sorted({y[f"L0F{i}:P0"] for i in range(5)})
    assert tiers == [0.5, 0.5 + TIER_ROWS, 0.5 + 2 * TIER_ROWS]
    assert y["L1H0:P0"] - tiers[-1] == 0.5  # the next layer keeps its half row
    _, flat = laid_out(crowd[:3], per_position=True)
    assert layout["height"] - flat["height"] == 2 * TIER_ROWS


def test_sae_sites_of_one_block_read_bottom_up_in_forward_order():
    def at_site(site, i, kind="feature"):
        return sae_node(i, layer=0, pos=1, site=site, kind=kind)

    nodes = [
        head(0, 0, 1),
        {"id": "MLP0:P1", "type": "mlp", "layer": 0, "pos": 1},
        at_site("pre", 1),
        at_site("attn", 2),
        at_site("attn", 0, kind="error"),
        at_site("mid", 3),
        at_site("mlp", 4),
        at_site("", 5),
    ]
    at, _ = laid_out(nodes, n_heads=4, per_position=True)
    order = ["L0preF1:P1", "L0H0:P1", "L0attnF2:P1", "L0midF3:P1", "MLP0:P1", "L0mlpF4:P1"]
    ys = [at[i][1] for i in [*order, "L0F5:P1"]]
    assert ys == sorted(ys) and len(set(ys)) == len(ys)
    assert min(b - a for a, b in pairwise(ys)) >= 0.5
    assert at["L0attnERR:P1"][1] == at["L0attnF2:P1"][1]


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
    # The static figure draws the same layout: screen = offset + scale × figure, per axis.
    drawn = page.evaluate(
        """() => Object.fromEntries([...document.querySelectorAll('.cv-circuit g.cv-node')]
             .map((g) => [g.dataset.component, g.getAttribute('transform')
               .match(/translate\\(([-\\d.]+),([-\\d.]+)\\)/).slice(1).map(Number)]))"""
    )
    fig = view.figure()
    placed = figure_positions(fig)
    assert set(placed) == set(drawn)
    for axis, sign in ((0, 1), (1, -1)):
        a, b = sorted(placed, key=lambda k: placed[k][axis])[:: len(placed) - 1]
        scale = (drawn[b][axis] - drawn[a][axis]) / (placed[b][axis] - placed[a][axis])
        assert sign * scale > 0
        for k in placed:
            want = drawn[a][axis] + scale * (placed[k][axis] - placed[a][axis])
            assert drawn[k][axis] == pytest.approx(want, abs=0.5), k
    assert figure_overlaps(fig) == ([], [])


def figure_positions(fig) -> dict[str, tuple[float, float]]:
    """Node id → (x, y) of the static figure's node markers (data units)."""
    out = {}
    for tr in fig.data:
        if tr.mode == "markers" and tr.name not in ("ablated", "selected") and tr.customdata:
            for (node_id, _), x, y in zip(tr.customdata, tr.x, tr.y, strict=True):
                out[node_id] = (x, y)
    return out


def figure_overlaps(fig):
    """Pairs of node markers, and of labels, whose boxes overlap in the static figure's
    pixels (markers: their size; labels: the export's own text box estimate)."""
    from circuitviz.export._graph_labels import text_box_size

    lay = fig.layout
    m = lay.margin
    (x0, x1), (y0, y1) = lay.xaxis.range, lay.yaxis.range
    plot_w, plot_h = lay.width - m.l - m.r, lay.height - m.t - m.b

    def px(x, y):
        return m.l + (x - x0) / (x1 - x0) * plot_w, m.t + (y1 - y) / (y1 - y0) * plot_h

    def clash(boxes):
        return [
            (a, b)
            for i, (a, p) in enumerate(boxes)
            for b, q in boxes[i + 1 :]
            if p[0] < q[2] - 0.5 and q[0] < p[2] - 0.5 and p[1] < q[3] - 0.5 and q[1] < p[3] - 0.5
        ]

    marks, labels = [], []
    for tr in fig.data:
        if tr.mode == "markers" and tr.name not in ("ablated", "selected") and tr.customdata:
            for (node_id, _), x, y, size in zip(
                tr.customdata, tr.x, tr.y, tr.marker.size, strict=True
            ):
                cx, cy = px(x, y)
                marks.append(
                    (node_id, (cx - size / 2, cy - size / 2, cx + size / 2, cy + size / 2))
                )
        if tr.name == "labels":
            font = tr.textfont.size
            for text, x, y in zip(tr.text, tr.x, tr.y, strict=True):
                w, h = text_box_size(text, font)
                cx, cy = px(x, y)
                labels.append((text, (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)))
    assert marks and labels
    return clash(marks), clash(labels)
