"""CircuitView at real scale: the demo IOI graph (SmolLM2-135M, 8 pairs, 70k edges).

The kernel prunes (``engine/graph/_select.py``) and sends only the shown subgraph; the page
draws it. Browser tests run the view's own bundle in Chromium against an in-process kernel:
the standalone export's model shim is bridged to this Python process (trait changes and
messages go to the real ``CircuitView``; its new state comes back), so pruning, search, pins,
filters and the hover preview run end to end without JupyterLab.
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import statistics
import time
from pathlib import Path

import pytest

import circuitviz as cv
from circuitviz.export._html import write_html
from circuitviz.views import CircuitView

DOCS_IMG = Path(__file__).parent.parent / "docs" / "img"
#: Traits the kernel may change in reply to the page.
KERNEL_TRAITS = ("graph", "pinned", "selected", "error", "faithfulness", "searchable")
SETTINGS = list(
    itertools.product((5, 30, 120, 240), (20, 80, 400), (0.0, 0.1), ([], ["L3H3", "MLP7"]))
)


@pytest.fixture(scope="module")
def demo_pairs(demo_model):
    return cv.tasks.ioi(demo_model, n=8, seed=0)


@pytest.fixture(scope="module")
def demo_graph(demo_model, demo_pairs):
    return cv.circuit(demo_model, demo_pairs, progress=False)


def off_path(shown: dict) -> list[str]:
    """Shown nodes not on a shown EMBED → LOGITS path (plain reachability over the drawn
    edges: GQA k/v edges are drawn into every shown head of their group)."""
    types = {n["id"]: n["type"] for n in shown["nodes"]}
    fwd = {i for i, t in types.items() if t == "embed"}
    bwd = {i for i, t in types.items() if t == "logits"}
    edges = [(e["source"], e["target"]) for e in shown["edges"]]
    for _ in range(len(types)):
        fwd |= {b for a, b in edges if a in fwd}
        bwd |= {a for a, b in edges if b in bwd}
    return sorted(set(types) - (fwd & bwd))


def message_bytes(view: CircuitView, names=("graph", "searchable")) -> int:
    from ipywidgets.widgets.widget import _remove_buffers

    state, _, buffers = _remove_buffers(view.get_state(list(names)))
    return len(json.dumps(state)) + sum(len(bytes(b)) for b in buffers)


# ----------------------------------------------------------------------------- kernel side


def test_every_shown_node_is_connected_at_every_setting(demo_graph):
    """Connected whatever the settings, pins included; counts of what is shown respected."""
    view = CircuitView(graph=demo_graph)
    for top_nodes, top_edges, rel, pins in SETTINGS:
        view.top_nodes, view.top_edges, view.min_rel_weight, view.pinned = (
            top_nodes,
            top_edges,
            rel,
            pins,
        )
        shown = view.shown_graph()
        ids = {n["id"] for n in shown["nodes"]}
        assert not off_path(shown), (top_nodes, top_edges, rel, pins)
        assert set(pins) <= ids
        inner = [n for n in shown["nodes"] if n["type"] in ("head", "mlp")]
        if not pins:
            assert len(inner) <= top_nodes
            assert len({(e["source"], e["input"], e["weight"]) for e in shown["edges"]}) <= (
                top_edges
            )
        assert message_bytes(view) < 10 * 2**20


def test_filters_and_vocabulary(demo_graph):
    view = CircuitView(graph=demo_graph)
    view.edge_inputs = ["q", "logits", "mlp"]
    assert {e["input"] for e in view.shown_graph()["edges"]} <= {"q", "logits", "mlp"}
    assert not off_path(view.shown_graph())
    view.edge_inputs, view.edge_sign = list(cv.views._circuit.EDGE_INPUTS), "negative"
    assert all(e["weight"] < 0 for e in view.shown_graph()["edges"])
    with pytest.warns(DeprecationWarning, match="top_nodes"):
        view.top_n = 12
    assert view.top_nodes == 12
    with pytest.warns(DeprecationWarning, match="top_edges"):
        pruned = demo_graph.prune(top_n=100)
    assert len(pruned.edges) == len(demo_graph.prune(top_edges=100).edges) <= 100


def test_faithfulness_curve_keeps_the_edge_counts_asked_for(demo_model, demo_pairs, demo_graph):
    """``top_edges=[30, 100, 300, 1000]`` gives circuits of (nearly) that many edges: each
    the strongest that fit on EMBED → LOGITS paths (the old top-n kept 9/76/221/900)."""
    counts = [30, 100, 300, 1000]
    curve = demo_graph.faithfulness_curve(demo_model, demo_pairs, top_edges=counts)
    for asked, kept in zip(counts, curve.n_edges, strict=True):
        assert 0.5 * asked <= kept <= asked
    assert curve.recovered[-1] > curve.recovered[0]


# ----------------------------------------------------------------------------- browser bridge

BRIDGE = r"""
<script>
window.cvBridgeTimes = [];
(() => {
  const bytes = (b64) => {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return new DataView(out.buffer);
  };
  const CONTROLS = %(controls)s;
  async function apply(model, reply) {
    const update = JSON.parse(reply);
    const t0 = performance.now();
    for (const [key, value, paths, buffers] of update.state) {
      paths.forEach((path, i) => {
        let obj = value;
        for (const k of path.slice(0, -1)) obj = obj[k];
        obj[path[path.length - 1]] = bytes(buffers[i]);
      });
      model.state[key] = value;
      model.emit("change:" + key, value);
    }
    for (const [content, buffers] of update.messages) model.emit("msg:custom", content, buffers.map(bytes));
    await new Promise((r) => requestAnimationFrame(() => requestAnimationFrame(r)));
    const requested = Number(document.querySelector(".cv-circuit").getAttribute("data-requested") || 0);
    window.cvBridgeTimes.push({ paint: performance.now() - t0, total: requested ? performance.now() - requested : null, kernel: update.kernel_ms });
  }
  window.cvBridge = {
    save(model) {
      const controls = Object.fromEntries(CONTROLS.map((k) => [k, model.state[k]]));
      window.pyKernel("state", JSON.stringify(controls)).then((r) => apply(model, r));
    },
    send(model, msg) {
      window.pyKernel("msg", JSON.stringify(msg)).then((r) => apply(model, r));
      return true;
    },
  };
})();
</script>
"""


class Bridge:
    """Serves one CircuitView to a page: ``pyKernel(kind, json)`` applies the page's controls
    (only ``FRONTEND_TRAITS``) or routes a message, and returns the kernel's new state."""

    def __init__(self, view: CircuitView, page, path: Path):
        self.view = view
        self.sent: list = []
        self.largest = 0
        self.last = {key: self.blob(key)[0] for key in KERNEL_TRAITS}  # what the page has
        view.send = lambda content, buffers=None: self.sent.append((content, buffers or []))
        page.expose_function("pyKernel", self.call)
        write_html(view, path)
        text = path.read_text(encoding="utf-8")
        text = text.replace("save_changes() {}", "save_changes() { window.cvBridge.save(this); }")
        text = text.replace(
            "send(msg) {", "send(msg) { if (window.cvBridge.send(this, msg)) return;"
        )
        controls = json.dumps(sorted(CircuitView.FRONTEND_TRAITS))
        text = text.replace("<head>", "<head>" + BRIDGE % {"controls": controls}, 1)
        path.write_text(text, encoding="utf-8")

    def blob(self, key: str):
        from ipywidgets.widgets.widget import _remove_buffers

        value, paths, buffers = _remove_buffers({key: getattr(self.view, key)})
        return json.dumps(value) + "".join(bytes(b).hex() for b in buffers), (
            value,
            paths,
            buffers,
        )

    def call(self, kind: str, payload: str) -> str:
        t0 = time.perf_counter()
        content = json.loads(payload)
        if kind == "state":
            with self.view.hold_trait_notifications():
                for key, value in content.items():
                    if key in CircuitView.FRONTEND_TRAITS and getattr(self.view, key) != value:
                        setattr(self.view, key, value)
        else:
            self.view._handle_custom_msg(content, [])
        kernel_ms = 1000 * (time.perf_counter() - t0)
        state = []
        for key in KERNEL_TRAITS:
            blob, (value, paths, buffers) = self.blob(key)
            if self.last.get(key) == blob:
                continue  # as in Jupyter: only changed traits are sent
            self.last[key] = blob
            size = len(json.dumps(value)) + sum(len(bytes(b)) for b in buffers)
            self.largest = max(self.largest, size)
            state.append(
                [
                    key,
                    value[key],
                    [p[1:] for p in paths],
                    [base64.b64encode(bytes(b)).decode() for b in buffers],
                ]
            )
        messages = [
            [c, [base64.b64encode(bytes(b)).decode() for b in bufs]] for c, bufs in self.sent
        ]
        self.sent.clear()
        return json.dumps({"state": state, "messages": messages, "kernel_ms": kernel_ms})


def drawn(page) -> dict:
    return page.evaluate(
        """() => ({
          nodes: [...document.querySelectorAll('.cv-circuit g.cv-node')].map(e => e.dataset.component),
          edges: [...document.querySelectorAll('.cv-circuit path[data-edge]')].map(e => e.dataset.edge),
        })"""
    )


def wait_drawn(page, n_before: int) -> None:
    page.wait_for_function(f"window.cvBridgeTimes.length > {n_before}")


def screenshot(page, name: str, docs: bool = False) -> Path:
    from tests.conftest import ARTIFACTS

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.locator(".cv-circuit").screenshot(path=str(path))
    if docs and os.environ.get("CIRCUITVIZ_UPDATE_DOCS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_IMG / f"{name}.png")
    return path


@pytest.fixture
def bridged(page, tmp_path, demo_model, demo_pairs, demo_graph):
    view = CircuitView(demo_model, demo_pairs, graph=demo_graph)
    bridge = Bridge(view, page, tmp_path / "circuit.html")
    page.goto((tmp_path / "circuit.html").as_uri())
    page.locator(".cv-circuit g.cv-node").first.wait_for()
    return view, bridge


@pytest.mark.browser
def test_demo_graph_reads_at_the_default_fit(bridged, page, summary):
    """Labels ≥ 11 px, none overlapping a label, a node or an edge; rows named by layer; the
    side panel beside the graph; every mark in the legend."""
    view, _bridge = bridged
    # the view scores its shown circuit by itself (one forward pass in the kernel)
    page.locator('.cv-circuit .cv-faith[data-state="ready"]').wait_for(timeout=120_000)
    page.wait_for_timeout(200)  # the screen-space layer is drawn on the next frame
    screenshot(page, "circuit_view", docs=True)
    shown_f = float(page.locator('.cv-circuit [data-role="faithfulness-circuit"]').inner_text())
    assert shown_f == pytest.approx(view.faithfulness["circuit"], abs=6e-4)
    info = page.evaluate(
        """() => {
          const r = (e) => e.getBoundingClientRect();
          const labels = [...document.querySelectorAll('.cv-circuit [data-role="node-label"]')];
          const nodes = [...document.querySelectorAll('.cv-circuit g.cv-node > :is(circle,rect)')];
          const svg = document.querySelector('.cv-circuit svg.cv-graph');
          const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom && b.top < a.bottom;
          const boxes = labels.map((l) => { const b = r(l); return {left: b.left + 1, right: b.right - 1, top: b.top + 1, bottom: b.bottom - 1}; });
          let labelOverlaps = 0, nodeOverlaps = 0;
          boxes.forEach((a, i) => boxes.forEach((b, j) => { if (i < j && hit(a, b)) labelOverlaps++; }));
          boxes.forEach((a) => nodes.forEach((n) => { if (hit(a, r(n))) nodeOverlaps++; }));
          // an edge under a label: sample each drawn path in screen space
          // edges through labels that were placed edge-free (the rest sit above edges, haloed)
          let edgeHits = 0;
          const clear = boxes.filter((_, i) => labels[i].dataset.overEdge === "false");
          const ctm = document.querySelector('.cv-circuit .cv-viewport').getScreenCTM();
          for (const p of document.querySelectorAll('.cv-circuit path[data-edge]')) {
            const L = p.getTotalLength();
            for (let s = 0; s <= 20; s++) {
              const q = p.getPointAtLength((L * s) / 20).matrixTransform(ctm);
              if (clear.some((b) => q.x > b.left && q.x < b.right && q.y > b.top && q.y < b.bottom)) { edgeHits++; break; }
            }
          }
          const overlay = document.querySelector('.cv-circuit .cv-overlay');
          const above = overlay.compareDocumentPosition(document.querySelector('.cv-circuit .cv-edges')) & Node.DOCUMENT_POSITION_PRECEDING;
          const halo = labels.every((l) => getComputedStyle(l).paintOrder.startsWith("stroke") && getComputedStyle(l).stroke !== "none");
          const side = r(document.querySelector('.cv-circuit [data-role="side-panel"]'));
          return {
            sizes: labels.map((l) => parseFloat(getComputedStyle(l).fontSize) * l.getScreenCTM().a),
            labelled: labels.length, nodes: nodes.length, labelOverlaps, nodeOverlaps, edgeHits,
            overEdges: labels.filter((l) => l.dataset.overEdge === "true").length, above: !!above, halo,
            layers: [...document.querySelectorAll('.cv-circuit [data-role="layer-label"]')].map((e) => e.textContent),
            sideLeft: side.left, svgRight: r(svg).right, height: r(document.querySelector('.cv-circuit')).height,
            legend: [...document.querySelectorAll('.cv-circuit [data-legend]')].map((e) => e.dataset.legend),
          };
        }"""
    )
    shown = view.shown_graph()
    assert info["nodes"] == len(shown["nodes"]) and 10 <= info["nodes"] <= 60  # tens of nodes
    assert min(info["sizes"]) >= 11
    assert info["labelled"] >= 0.8 * info["nodes"], info
    assert info["labelOverlaps"] == info["nodeOverlaps"] == info["edgeHits"] == 0
    assert info["above"] and info["halo"]  # no label sits under an edge
    layers = {n["layer"] for n in shown["nodes"] if n["type"] in ("head", "mlp")}
    assert {"embed", "logits", *(f"L{x}" for x in layers)} <= set(info["layers"])
    assert info["sideLeft"] >= info["svgRight"] and info["height"] < 760
    for mark in ("type-head", "type-mlp", "ring-positive", "ring-negative", "edge-positive"):
        assert mark in info["legend"]
    for mark in ("edge-negative", "edge-width", "size", "ablated", "selected", "pinned"):
        assert mark in info["legend"]
    summary.append(
        f"circuit view, demo IOI graph: {info['labelled']}/{info['nodes']} nodes labelled at "
        f"≥ {min(info['sizes']):.0f} px ({info['overEdges']} across edges, on a halo above "
        f"them); first message {message_bytes(view) / 1024:.0f} KiB; faithfulness of the "
        f"shown circuit {view.faithfulness['circuit']:.3f}"
    )
    assert not page.console_errors


@pytest.mark.browser
def test_controls_search_pins_and_repaint_time(bridged, page, summary):
    view, bridge = bridged
    times = page.evaluate("window.cvBridgeTimes")
    assert page.locator('.cv-circuit [data-role="controls-notice"]').inner_text() == ""

    def change(role: str, value: str) -> None:
        n = len(page.evaluate("window.cvBridgeTimes"))
        page.locator(f'.cv-circuit [data-role="{role}"]').fill(value)
        page.locator(f'.cv-circuit [data-role="{role}"]').dispatch_event("change")
        wait_drawn(page, n)

    for top_nodes, top_edges, rel in [
        (5, 20, "0"),
        (120, 400, "0"),
        (240, 80, "0.1"),
        (30, 80, "0"),
    ]:
        change("top-nodes", str(top_nodes))
        change("top-edges", str(top_edges))
        change("min-rel-weight", rel)
        shown = view.shown_graph()
        d = drawn(page)
        assert sorted(d["nodes"]) == sorted(n["id"] for n in shown["nodes"])
        assert sorted(d["edges"]) == sorted(f"{e['source']}->{e['target']}" for e in shown["edges"])
        assert not off_path(shown)
    # filters: q edges off, then only negative edges
    n = len(page.evaluate("window.cvBridgeTimes"))
    page.locator('.cv-circuit [data-role="edge-input"][value="q"]').uncheck()
    wait_drawn(page, n)
    assert page.locator('.cv-circuit path[data-input="q"]').count() == 0
    for sign, colour in (("positive", "rgb(33,102,172)"), ("negative", "rgb(178,24,43)")):
        n = len(page.evaluate("window.cvBridgeTimes"))
        page.locator('.cv-circuit [data-role="edge-sign"]').select_option(sign)
        wait_drawn(page, n)
        strokes = page.eval_on_selector_all(
            ".cv-circuit path[data-edge]", "e => e.map(p => p.getAttribute('stroke'))"
        )
        assert set(strokes) <= {colour} and not off_path(view.shown_graph())
        if not strokes:  # no path of that sign alone: the view says so
            assert (
                "no EMBED → LOGITS path"
                in page.locator('.cv-circuit [data-role="controls-notice"]').inner_text()
            )
    page.locator('.cv-circuit [data-role="edge-sign"]').select_option("both")
    # search: a head that is not shown is pinned, drawn, selected and centred
    hidden = next(
        i for i in view.node_ids if i.startswith("L") and i not in set(drawn(page)["nodes"])
    )
    n = len(page.evaluate("window.cvBridgeTimes"))
    page.locator('.cv-circuit [data-role="search"]').fill(hidden.lower())
    page.locator('.cv-circuit [data-role="search"]').press("Enter")
    wait_drawn(page, n)
    node = page.locator(f'.cv-circuit [data-component="{hidden}"]')
    assert (
        node.get_attribute("data-selected") == "true"
        and node.get_attribute("data-pinned") == "true"
    )
    box = node.bounding_box()
    svg = page.locator(".cv-circuit svg.cv-graph").bounding_box()
    assert abs(box["x"] + box["width"] / 2 - (svg["x"] + 46 + (svg["width"] - 46) / 2)) < 30
    assert abs(box["y"] + box["height"] / 2 - (svg["y"] + svg["height"] / 2)) < 30
    assert not off_path(view.shown_graph())
    # hover a head: its attention pattern on the clean prompt, from the kernel
    head = page.locator('.cv-circuit g.cv-node[data-type="head"]').first
    head.hover()
    page.locator('.cv-circuit [data-role="head-preview-canvas"]').wait_for()
    screenshot(page, "circuit_view_search_filters")
    times = page.evaluate("window.cvBridgeTimes")
    paint = [t["paint"] for t in times]
    total = [t["total"] for t in times if t["total"] is not None]
    kernel = [t["kernel"] for t in times]
    summary.append(
        f"circuit view repaint (demo IOI graph, {len(paint)} control changes, loaded 2-core CPU): "
        f"browser median {statistics.median(paint):.0f} ms, max {max(paint):.0f} ms; kernel "
        f"pruning median {statistics.median(kernel):.0f} ms; control→painted median "
        f"{statistics.median(total):.0f} ms; largest message {bridge.largest / 1024:.0f} KiB"
    )
    assert statistics.median(paint) <= 100
    assert bridge.largest < 10 * 2**20
    assert not page.console_errors


@pytest.mark.browser
def test_narrow_output_stacks_the_panel_and_collapses_it(bridged, page):
    page.set_viewport_size({"width": 620, "height": 900})
    page.wait_for_timeout(300)
    root = page.locator(".cv-circuit")
    assert root.get_attribute("data-narrow") == "true"
    assert not page.locator('.cv-circuit [data-role="side-panel"]').is_visible()
    page.locator('.cv-circuit [data-role="panel-toggle"]').click()
    side = page.locator('.cv-circuit [data-role="side-panel"]').bounding_box()
    svg = page.locator(".cv-circuit svg.cv-graph").bounding_box()
    assert side["y"] >= svg["y"] + svg["height"] - 1  # below the graph
    assert svg["x"] + svg["width"] <= 620


def test_static_figure_matches_the_view(demo_graph):
    """The figure of a view draws the nodes and edges the page draws (the kernel's shown
    subgraph), coloured by the same rule: fill by node type, ring and edge by sign."""
    import re

    from circuitviz.export._style import CATEGORICAL, NEGATIVE, POSITIVE

    colors_ts = (Path(__file__).parent.parent / "js" / "src" / "colors.ts").read_text()
    for kind in ("embed", "head", "mlp", "logits"):
        assert re.search(rf'{kind}: "{CATEGORICAL[kind]}"', colors_ts, re.I), kind
    rgb = {
        name: "#" + "".join(f"{int(v):02x}" for v in m)
        for name, *m in re.findall(r'(\w+) = "rgb\((\d+),(\d+),(\d+)\)"', colors_ts)
    }
    assert (rgb["POSITIVE"], rgb["NEGATIVE"]) == (POSITIVE, NEGATIVE)

    view = CircuitView(graph=demo_graph)
    view.pinned = ["L3H3"]
    shown = view.shown_graph()
    fig = view.figure()
    nodes = {}
    for t in fig.data:
        if t.mode == "markers" and t.name in ("embed", "head", "MLP", "logits"):
            for (node_id, score), ring in zip(t.customdata, t.marker.line.color, strict=True):
                nodes[node_id] = ring
                assert t.marker.color == CATEGORICAL[t.name.lower()]
                assert ring == ("white" if not score else POSITIVE if score > 0 else NEGATIVE)
    assert set(nodes) == {n["id"] for n in shown["nodes"]}
    lines = {"positive": 0, "negative": 0}
    for t in fig.data:
        if t.mode == "lines" and t.name in ("positive edges", "negative edges"):
            lines[t.name.split()[0]] += sum(v is None for v in t.x)
            assert t.line.color == (POSITIVE if t.name.startswith("positive") else NEGATIVE)
    assert lines["positive"] == sum(e["weight"] >= 0 for e in shown["edges"])
    assert lines["negative"] == sum(e["weight"] < 0 for e in shown["edges"])


@pytest.mark.browser
def test_per_position_graph_labels_its_token_columns(tiny_llama, tiny_pairs, page, tmp_path):
    """Per-position graphs: one column band per token, labelled with its position and token
    under the graph; rows still labelled by layer; node labels still ≥ 11 px."""
    graph = cv.circuit(tiny_llama, tiny_pairs, per_position=True, progress=False)
    view = CircuitView(tiny_llama, tiny_pairs, graph=graph)
    Bridge(view, page, tmp_path / "circuit.html")
    page.goto((tmp_path / "circuit.html").as_uri())
    page.locator(".cv-circuit g.cv-node").first.wait_for()
    page.wait_for_timeout(200)
    screenshot(page, "circuit_view_per_position")
    texts = "els => els.map(e => e.textContent)"
    bands = page.eval_on_selector_all('.cv-circuit [data-role="band-label"]', texts)
    tokens = graph.tokens
    assert bands == [f"{i}:{t}" for i, t in enumerate(tokens)]
    layers = page.eval_on_selector_all('.cv-circuit [data-role="layer-label"]', texts)
    assert {"embed", "logits"} <= set(layers)
    sizes = page.eval_on_selector_all(
        '.cv-circuit [data-role="node-label"]',
        "els => els.map(l => parseFloat(getComputedStyle(l).fontSize) * l.getScreenCTM().a)",
    )
    assert sizes and min(sizes) >= 11
    # heads move information across positions, so plain reachability does not apply here;
    # every drawn node still touches a drawn edge
    shown = view.shown_graph()
    touched = {e["source"] for e in shown["edges"]} | {e["target"] for e in shown["edges"]}
    assert shown["nodes"] and {n["id"] for n in shown["nodes"]} <= touched
    assert not page.console_errors


def test_hand_made_json_gets_the_same_rule():
    """Graph JSON with no Graph behind it (here random, hand-built) is pruned by the same rule
    on its own edges: connected at every setting, pins kept, counts respected."""
    from tests.test_export import big_graph

    data = big_graph(8, 4, 600)
    view = CircuitView(graph=data)
    assert view.shown_circuit() is None and not view.has_faithfulness
    for top_nodes, top_edges, rel, pins in SETTINGS:
        pins = [p for p in pins if p in view.node_ids] or ["L5H2"]
        view.top_nodes, view.top_edges, view.min_rel_weight = top_nodes, top_edges, rel
        view.error = ""
        view.pinned = pins
        shown = view.shown_graph()
        for pin in set(pins) - set(view.pinned):  # no path through it: dropped, and said so
            assert pin in view.error and "no EMBED→LOGITS path" in view.error
        assert not off_path(shown) and set(view.pinned) <= {n["id"] for n in shown["nodes"]}
        if top_edges < len(shown["edges"]):
            # only the pin's path may go beyond the limit
            view.pinned = []
            assert len(view.shown_graph()["edges"]) <= top_edges


def test_per_position_nodes_ablate_their_position_only(tiny_llama, tiny_pairs):
    """The kernel decides what a graph node's click ablates (node["ablates"]), as for a
    heads_by_pos cell: a per-position node is that head at that position only; the figure
    crosses out what the ablation set covers, by the same rule."""
    graph = cv.circuit(tiny_llama, tiny_pairs, per_position=True, progress=False)
    view = cv.CircuitView(tiny_llama, tiny_pairs, graph)
    heads = [n for n in view.graph["nodes"] if n["type"] == "head"]
    assert heads and all(n["ablates"] == n["id"] and ":P" in n["id"] for n in heads)
    assert all(n["ablates"] is None for n in view.graph["nodes"] if n["type"] == "embed")
    node = heads[0]
    res = view.ablate([node["ablates"]])
    assert res.components == [node["id"]]
    assert res.ablated == pytest.approx(
        cv.ablate(tiny_llama, tiny_pairs, heads=[node["id"]]).ablated, abs=1e-6
    )
    from circuitviz.engine._cells import is_covered

    gone = set(view.ablated)
    same_head = [n for n in heads if n["id"].split(":")[0] == node["id"].split(":")[0]]
    assert [n["id"] for n in same_head if is_covered(n["ablates"], gone)] == [node["id"]]
    assert view.figure().data  # drawn with that node crossed out
