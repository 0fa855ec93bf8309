"""Widget tests without a browser: traits, binary buffers, message handling, validation,
safety and state, on tiny models."""

from __future__ import annotations

import itertools
import json
import re

import numpy as np
import pytest
import torch
from ipywidgets.widgets.widget import _remove_buffers

import circuitviz as cv
from circuitviz.engine import AblationResult, AttentionResult, InputError, PatchResult
from circuitviz.export._html import render_html, write_html
from circuitviz.views import AttentionView, CircuitView, PatchingView, explore
from circuitviz.views._codec import MAX_MESSAGE_BYTES, decode, encode, row_chunks

HOSTILE = [
    "<img src=x onerror=alert(1)>",
    "</script><script>alert(2)</script>",
    "{{ 7*7 }}",
    "&amp;",
]


@pytest.fixture(scope="module")
def model(tiny_llama):
    return tiny_llama


@pytest.fixture(scope="module")
def pairs(tiny_pairs):
    return tiny_pairs


@pytest.fixture(scope="module")
def heads(model, pairs):
    return cv.patch(model, pairs, over="heads", progress=False)


class Outbox:
    """Stands in for ``widget.send``: records (content, buffers)."""

    def __init__(self, view):
        self.sent: list[tuple[dict, list]] = []
        view.send = lambda content, buffers=None: self.sent.append((content, list(buffers or [])))

    def types(self) -> list[str]:
        return [c["type"] for c, _ in self.sent]


def state_parts(view) -> tuple[str, list]:
    """The JSON text and binary buffers of a widget's synced state, as ipywidgets sends them."""
    state, _, buffers = _remove_buffers(view.get_state())
    return json.dumps(state), buffers


def no_long_number_lists(text: str, limit: int = 64) -> bool:
    return not re.search(r"\[(?:-?[\d.e+-]+,){" + str(limit) + ",}", text)


def synthetic_attention(
    n_pos: int, n_layers: int = 2, n_heads: int = 3, tokens=None
) -> AttentionResult:
    torch.manual_seed(0)
    p = torch.rand(n_layers, n_heads, n_pos, n_pos).tril()
    p = (p / p.sum(-1, keepdim=True)).to(torch.float16)
    scores = {
        r: torch.rand(n_layers, n_heads) for r in ("previous_token", "duplicate_token", "induction")
    }
    return AttentionResult(p, tokens or [f"tok{i}" for i in range(n_pos)], scores, "synthetic")


# ----------------------------------------------------------------------------- codec


@pytest.mark.parametrize("dtype", ["float16", "float32", "uint8", "int32"])
def test_codec_round_trips_bytes_not_lists(dtype):
    arr = (np.arange(24).reshape(2, 3, 4) % 7).astype(dtype)
    enc = encode(torch.from_numpy(arr.copy()) if dtype != "uint8" else arr, dtype)
    assert isinstance(enc["view"], bytes) and enc["shape"] == [2, 3, 4] and enc["dtype"] == dtype
    assert len(enc["view"]) == arr.nbytes
    np.testing.assert_array_equal(decode(enc), arr)


def test_codec_is_little_endian_and_rejects_unknown_dtypes():
    assert encode(np.array([1.0], dtype=">f4"), "float32")["view"] == np.float32(1).tobytes()
    assert encode(np.array([1], dtype=np.uint16), "uint16")["view"] == b"\x01\x00"
    with pytest.raises(ValueError):
        encode(np.zeros(2), "complex64")


def test_row_chunks_cover_all_rows_under_the_limit():
    chunks = row_chunks(1000, 3000, limit=100_000)
    assert chunks[0][0] == 0 and chunks[-1][1] == 1000
    assert all(b == c for (_, b), (c, _) in itertools.pairwise(chunks))
    assert all((b - a) * 3000 <= 100_000 for a, b in chunks)


# ----------------------------------------------------------------------------- attention


def test_attention_view_traits_are_binary(model):
    view = AttentionView(model, "t1 t2 t3 t4 t1 t2 t3")
    assert view.tokens == ["<bos>", "t1", "t2", "t3", "t4", "t1", "t2", "t3"]
    assert (view.n_layers, view.n_heads) == (model.cfg.n_layers, model.cfg.n_heads)
    assert view.thumbnails["dtype"] == "uint8" and view.thumbnails["shape"] == [2, 4, 8, 8]
    thumbs = decode(view.thumbnails)
    full = view.attention.patterns.float()
    # max-pooling at full size is the identity (up to uint8 rounding)
    np.testing.assert_allclose(thumbs / 255, full.numpy(), atol=1 / 255 + 1e-3)
    assert set(view.scores) == {"previous_token", "duplicate_token", "induction"}
    assert decode(view.scores["induction"]).shape == (2, 4)
    text, buffers = state_parts(view)
    assert len(buffers) >= 4 and no_long_number_lists(text)
    assert re.fullmatch(r"L\d+H\d+", view.selected)


def test_layer_patterns_are_sent_lazily_and_reassemble_exactly():
    res = synthetic_attention(50)
    view = AttentionView(res)
    _, buffers = state_parts(view)
    # the widget's own state carries thumbnails only: far less than one layer's patterns
    assert sum(len(b) for b in buffers) < res.patterns[0].numel() * 2
    out = Outbox(view)
    view._handle_custom_msg({"type": "request_layer", "layer": 1})
    assert set(out.types()) == {"layer"}
    got = np.zeros((3, 50, 50), dtype=np.float16)
    for content, bufs in out.sent:
        assert (
            content["layer"] == 1
            and content["dtype"] == "float16"
            and content["chunks"] == len(out.sent)
        )
        rows = np.frombuffer(bufs[0], dtype="<f2").reshape(content["row1"] - content["row0"], 50)
        got[content["head"], content["row0"] : content["row1"]] = rows
    np.testing.assert_array_equal(got, res.patterns[1].numpy())


def test_long_prompt_messages_stay_under_the_limit():
    res = synthetic_attention(1600, n_layers=1, n_heads=2)
    view = AttentionView(res)
    text, buffers = state_parts(view)
    assert len(text) + sum(len(b) for b in buffers) < 1 * 2**20  # thumbnails are 32×32
    assert view.thumbnails["shape"] == [1, 2, 32, 32]
    msgs = view.layer_messages(0)
    assert len(msgs) == 4  # 1600² float16 = 5 MB per head: two row chunks each
    for content, bufs in msgs:
        assert len(json.dumps(content)) + sum(len(b) for b in bufs) < MAX_MESSAGE_BYTES // 2


@pytest.mark.parametrize("layer", [99, -1, "0", None, True])
def test_bad_layer_requests_reply_with_an_error(layer):
    view = AttentionView(synthetic_attention(6))
    out = Outbox(view)
    view._handle_custom_msg({"type": "request_layer", "layer": layer})
    assert out.types() == ["error"] and "out of range" in out.sent[0][0]["message"]


def test_attention_show_scores_is_validated():
    view = AttentionView(synthetic_attention(6))
    view.show_scores = "induction"
    with pytest.raises(Exception, match="show_scores"):
        view.show_scores = "<script>"


# ----------------------------------------------------------------------------- patching


def test_patching_map_payload(model, pairs, heads):
    view = PatchingView(heads)
    m = view.map
    assert m["axes"] == ["layer", "head"] and m["values"]["dtype"] == "float32"
    np.testing.assert_allclose(decode(m["values"]), heads.values.numpy(), rtol=1e-6)
    assert m["baseline"] == pytest.approx(heads.corrupted) and "corrupted" in m["baseline_label"]
    assert m["labels"]["head"] == ["H0", "H1", "H2", "H3"]
    assert not view.can_ablate
    assert view.result["clean"] == pytest.approx(heads.clean)
    _, buffers = state_parts(view)
    assert buffers


def test_attribution_and_noising_baselines(heads):
    attr = PatchResult(**{**heads.__dict__, "method": "attribution"})
    noise = PatchResult(**{**heads.__dict__, "direction": "noise"})
    # attribution values are estimated metrics after patching (run baseline + estimated change)
    assert PatchingView(attr).map["baseline"] == pytest.approx(heads.corrupted)
    assert PatchingView(noise).map["baseline"] == pytest.approx(heads.clean)


def test_ablation_message_round_trip(model, pairs, heads):
    view = PatchingView(heads, model=model, pairs=pairs)
    assert view.can_ablate and view.result["components"] == []  # baseline filled at start
    out = Outbox(view)
    msg = {
        "type": "ablate",
        "components": ["L0H1", "MLP1"],
        "mode": "mean",
        "metric": "logit_diff",
        "request": 3,
    }
    view._handle_custom_msg(msg)
    assert out.types() == ["ablation"] and out.sent[0][0]["request"] == 3
    direct = cv.ablate(model, pairs, heads=[(0, 1)], mlps=[1], mode="mean")
    assert view.ablated == ["L0H1", "MLP1"] and view.mode == "mean"
    assert view.result["ablated"] == pytest.approx(direct.ablated)
    assert isinstance(view.ablation, AblationResult) and view.error == ""
    assert json.loads(json.dumps(out.sent[0][0]))["result"]["top_after"]["tokens"]
    view._handle_custom_msg({"type": "ablate", "components": [], "request": 4})
    assert view.ablated == [] and view.result["ablated"] is None


BAD_MESSAGES = [
    ({"type": "ablate", "components": ["L9H0"]}, "out of range"),
    ({"type": "ablate", "components": ["L0H99"]}, "out of range"),
    ({"type": "ablate", "components": ["EMBED"]}, "Unknown component"),
    ({"type": "ablate", "components": ["<img src=x onerror=alert(1)>"]}, "Unknown component"),
    ({"type": "ablate", "components": "L0H1"}, "list"),
    ({"type": "ablate", "components": [3]}, "Unknown component"),
    ({"type": "ablate", "components": ["L0H1"], "mode": "bogus"}, "mode"),
    ({"type": "ablate", "components": ["L0H1"], "metric": "nope"}, "metric"),
    ({"type": "ablate", "components": ["L0H1"] * 2000}, "Too many"),
    ({"type": "explode"}, "Unknown message type"),
    ({"no": "type"}, "Malformed"),
    ("not a dict", "Malformed"),
]


@pytest.mark.parametrize(("content", "expect"), BAD_MESSAGES)
def test_invalid_messages_reply_with_errors_and_change_nothing(
    model, pairs, heads, content, expect
):
    view = PatchingView(heads, model=model, pairs=pairs)
    view.ablate(["L1H0"])
    before = (list(view.ablated), dict(view.result))
    out = Outbox(view)
    view._handle_custom_msg(content)  # must not raise
    assert out.types() == ["error"] and expect in out.sent[0][0]["message"]
    assert expect in view.error
    assert (view.ablated, view.result) == before


def test_ablation_without_model_is_an_error_reply(heads):
    view = PatchingView(heads)
    out = Outbox(view)
    view._handle_custom_msg({"type": "ablate", "components": ["L0H0"], "request": 1})
    assert out.sent[0][0] == {"type": "error", "request": 1, "message": view.error}
    assert "model=" in view.error


# ----------------------------------------------------------------------------- circuit

GRAPH = {
    "schema": "circuitviz.graph/1",
    "model": "tiny-llama",
    "method": "eap",
    "metric": "logit_diff",
    "per_position": False,
    "n_layers": 2,
    "n_heads": 4,
    "tokens": ["<bos>", *HOSTILE],
    "clean": 1.0,
    "corrupted": -1.0,
    "nodes": [
        {"id": "EMBED", "type": "embed", "layer": -1, "score": None},
        {"id": "L0H1", "type": "head", "layer": 0, "head": 1, "score": 0.4, "label": HOSTILE[0]},
        {"id": "MLP0", "type": "mlp", "layer": 0, "score": -0.2},
        {"id": "L1H3", "type": "head", "layer": 1, "head": 3, "score": 0.9},
        {"id": "LOGITS", "type": "logits", "layer": 2, "score": None},
    ],
    "edges": [
        {"source": "EMBED", "target": "L0H1", "input": "q", "weight": 0.03},
        {"source": "L0H1", "target": "L1H3", "input": "v", "weight": -0.5},
        {"source": "L1H3", "target": "LOGITS", "input": "logits", "weight": 1.2},
        {"source": "L0H0", "target": "LOGITS", "input": "logits", "weight": 9.0},  # pruned node
        {"source": "MLP0", "target": "LOGITS", "input": "logits", "weight": float("nan")},
    ],
}


def test_circuit_graph_edges_are_binary(tmp_path):
    view = CircuitView(graph=GRAPH)
    g = view.graph
    # MLP0's only edge has a NaN weight: it is on no EMBED → LOGITS path, so not shown
    assert [n["id"] for n in g["nodes"]] == ["EMBED", "L0H1", "L1H3", "LOGITS"]
    edges = g["edges"]
    assert edges["source"]["dtype"] == "uint16" and edges["weight"]["dtype"] == "float32"
    np.testing.assert_array_equal(decode(edges["source"]), [2, 1, 0])  # strongest first
    np.testing.assert_array_equal(decode(edges["target"]), [3, 2, 1])
    np.testing.assert_allclose(decode(edges["weight"]), [1.2, -0.5, 0.03], rtol=1e-6)
    assert [edges["inputs"][i] for i in decode(edges["input"])] == ["logits", "v", "q"]
    text, buffers = state_parts(view)
    assert len(buffers) == 4 and no_long_number_lists(text)
    assert not view.can_ablate and view.result["clean"] == 1.0
    # the same graph from a JSON string and from a file
    path = tmp_path / "g.json"
    path.write_text(json.dumps(GRAPH))
    assert CircuitView(graph=json.dumps(GRAPH)).graph["nodes"] == g["nodes"]
    assert CircuitView(graph=str(path)).graph["nodes"] == g["nodes"]
    assert CircuitView(graph=path).graph["nodes"] == g["nodes"]


def test_only_the_shown_subgraph_is_sent(monkeypatch):
    """The kernel keeps the graph; the browser gets the shown part (and the strongest ids,
    for search)."""
    import circuitviz.views._circuit as circuit_module

    monkeypatch.setattr(circuit_module, "MAX_SEARCHABLE", 3)
    view = CircuitView(graph=GRAPH)
    assert view.searchable == ["L1H3", "L0H1", "MLP0"]
    assert [n["id"] for n in view.graph["nodes"]] == ["EMBED", "L0H1", "L1H3", "LOGITS"]
    assert view.graph["totals"] == {"nodes": 3, "edges": 3}
    view.top_edges = 1  # the strongest edge alone is no EMBED → LOGITS path
    assert view.graph["nodes"] == [] and view.graph["edges"] is None


@pytest.mark.parametrize(
    "bad",
    [
        {**GRAPH, "schema": "other/1"},
        {**GRAPH, "nodes": []},
        {**GRAPH, "nodes": [{"id": 3}]},
        "missing.json",
    ],
)
def test_bad_graphs_raise_input_errors(bad):
    with pytest.raises(InputError):
        CircuitView(graph=bad)


def test_circuit_default_graph_scores_heads_and_mlps(model, pairs):
    view = CircuitView(model, pairs)
    ids = {n["id"] for n in view.graph["nodes"]}
    assert {"EMBED", "LOGITS", "L0H0", "L1H3", "MLP0", "MLP1"} <= ids
    assert len(ids) == 2 + 2 * 4 + 2
    assert view.can_ablate and view.result["top_before"]["tokens"]
    out = Outbox(view)
    view._handle_custom_msg(
        {"type": "ablate", "components": ["MLP0"], "mode": "zero", "metric": "kl", "request": 1}
    )
    assert out.types() == ["ablation"] and view.metric == "kl" and view.ablated == ["MLP0"]


def test_faithfulness_of_shown_and_ablated_circuit(model, pairs, monkeypatch):
    """Faithfulness is of the shown circuit (its shown edges, the kernel's selection), with
    and without the ablated nodes; answers are cached per (circuit, ablation)."""
    from circuitviz import Graph, circuit

    graph = circuit(model, pairs, progress=False)
    view = CircuitView(model, pairs, graph)
    assert view.has_faithfulness
    calls = []
    real = Graph.faithfulness
    monkeypatch.setattr(
        Graph, "faithfulness", lambda self, *a, **k: calls.append(k) or real(self, *a, **k)
    )
    out = Outbox(view)
    head = next(n["id"] for n in view.shown_graph()["nodes"] if n["type"] == "head")
    view._handle_custom_msg({"type": "faithfulness", "ablated": [head, "LOGITS"]})
    f = view.faithfulness
    shown = view.shown_circuit()
    assert f["nodes"] == [n["id"] for n in view.shown_graph()["nodes"]]
    assert f["ablated_nodes"] == [head]  # LOGITS is never "ablated"
    assert f["circuit"] == pytest.approx(float(shown.faithfulness(model, pairs)))
    assert f["ablated"] == pytest.approx(float(shown.faithfulness(model, pairs, ablated=[head])))
    n_calls = len(calls)
    view._handle_custom_msg({"type": "faithfulness", "ablated": [head]})
    assert len(calls) == n_calls and out.types() == ["faithfulness", "faithfulness"]
    view._handle_custom_msg({"type": "faithfulness", "ablated": "L0H1"})
    assert out.types()[-1] == "error"
    assert not CircuitView(graph=GRAPH).has_faithfulness


# ----------------------------------------------------------------------------- state


def test_state_round_trips_through_json(model, pairs, heads):
    view = CircuitView(model, pairs, GRAPH)
    view.ablate(["L0H1", "MLP0"], mode="resample")
    view.top_nodes, view.min_rel_weight, view.pinned, view.selected = 2, 0.25, ["L0H1"], "L1H3"
    state = json.loads(json.dumps(view.state))
    again = CircuitView(model, pairs, GRAPH, state=state)
    assert again.state == view.state
    assert again.result["ablated"] == pytest.approx(view.result["ablated"])
    p = PatchingView(
        heads,
        model=model,
        pairs=pairs,
        state={"ablated": ["L1H2"], "mode": "mean", "selected": "L1H2"},
    )
    assert p.ablated == ["L1H2"] and p.result["mode"] == "mean" and p.state["selected"] == "L1H2"
    a = AttentionView(
        synthetic_attention(5), state={"selected": "L1H2", "show_scores": "induction"}
    )
    assert AttentionView(a.attention, state=json.loads(json.dumps(a.state))).state == a.state
    with pytest.raises(InputError, match="Unknown state keys"):
        CircuitView(graph=GRAPH, state={"zoom": 3})
    with pytest.warns(DeprecationWarning, match="min_rel_weight"):
        assert CircuitView(graph=GRAPH, state={"threshold": 7}).min_rel_weight == 1.0


# ----------------------------------------------------------------------------- safety and HTML


def test_hostile_strings_stay_data(tmp_path, heads):
    res = synthetic_attention(5, tokens=["<bos>", *HOSTILE])
    view = AttentionView(res)
    assert view.tokens == ["<bos>", *HOSTILE]
    labels = {**heads.labels, "head": HOSTILE}
    pview = PatchingView(PatchResult(**{**heads.__dict__, "labels": labels}))
    assert pview.map["labels"]["head"] == HOSTILE
    for obj in (view, pview, CircuitView(graph=GRAPH)):
        page = render_html(obj)
        assert "<img src=x" not in page and "{{ 7*7 }}" in page
        assert page.count("</script>") == page.count("<script")  # no token closes a script
        blocks = re.findall(
            r'<script type="application/json" id="cv-views">(.*?)</script>', page, re.S
        )
        specs = json.loads(blocks[0])
        assert HOSTILE[1] in json.dumps(specs, ensure_ascii=False)


def test_write_html_is_self_contained(tmp_path, model, pairs, heads):
    out = write_html(explore(model, pairs), tmp_path / "explore.html")
    page = out.read_text(encoding="utf-8")
    assert (
        not re.search(r"<script[^>]+src=", page) and "http://" not in page.split("<body>")[1][:2000]
    )
    assert (
        'id="cv-js-attention"' in page
        and 'id="cv-js-patching"' in page
        and 'id="cv-js-circuit"' in page
    )
    specs = json.loads(re.search(r'id="cv-views">(.*?)</script>', page, re.S)[1])
    assert [s["module"] for s in specs] == ["patching", "attention", "circuit"]
    attention = specs[1]
    assert attention["buffers"] and len(attention["replies"]) == model.cfg.n_layers
    assert attention["replies"][0]["messages"][0][0]["type"] == "layer"
    # a bare PatchResult and AttentionResult work too
    assert "cv-js-patching" in render_html(heads)
    assert "cv-js-attention" in render_html(synthetic_attention(4))


def test_explore_links_selection(model, pairs):
    box = explore(model, pairs)
    box.circuit.selected = "L1H2"
    assert box.patching.selected == box.attention.selected == "L1H2"
    box.attention.selected = "L0H3"
    assert box.circuit.selected == "L0H3"


def test_explore_shares_one_ablation_set(model, pairs):
    box = explore(model, pairs)
    box.patching._handle_custom_msg({"type": "ablate", "components": ["L1H2"], "request": 1})
    assert box.circuit.ablated == ["L1H2"] and box.circuit.result == box.patching.result
    assert box.circuit.ablation is box.patching.ablation
    box.circuit._handle_custom_msg(
        {"type": "ablate", "components": ["L0H1", "MLP1"], "mode": "mean", "request": 2}
    )
    assert box.patching.ablated == ["L0H1", "MLP1"] and box.patching.mode == "mean"
    assert box.patching.result["ablated"] == box.circuit.result["ablated"]
    box.circuit._handle_custom_msg({"type": "ablate", "components": ["L9H0"], "request": 3})
    assert box.circuit.error and box.patching.ablated == ["L0H1", "MLP1"]  # errors stay local
    box.patching.reset()
    assert box.circuit.ablated == [] == box.patching.ablated


# ----------------------------------------------------------------------------- in a browser


@pytest.mark.browser
def test_standalone_html_works_without_a_kernel(tmp_path, page, model, pairs):
    """The exported page renders the same views: hover, selection, export work; the circuit's
    controls say they need a kernel (the kernel prunes);
    ablation says it needs a kernel; hostile tokens stay text (no dialog, no element)."""
    box = explore(model, pairs)
    hostile = AttentionView(synthetic_attention(5, tokens=["<bos>", *HOSTILE]))
    write_html(box, tmp_path / "explore.html")
    write_html(hostile, tmp_path / "hostile.html")

    page.goto((tmp_path / "hostile.html").as_uri())
    tokens = page.locator('.cv-attention [data-role="tokens"] .cv-token')
    tokens.first.wait_for()
    assert tokens.all_inner_texts() == ["<bos>", *HOSTILE]
    assert page.locator(".cv-root img").count() == 0 and not page.dialogs
    page.locator('.cv-attention [data-role="focus"] canvas').wait_for()

    page.goto((tmp_path / "explore.html").as_uri())
    cell = page.locator('.cv-patching [data-component="L1H2"]')
    cell.hover()
    tip = page.locator('.cv-patching [data-role="tooltip"]').inner_text()
    assert tip.startswith("L1H2") and "effect vs corrupted baseline" in tip
    assert "click: select only (ablation needs a live kernel)" in tip
    # one notice per view, up front; no ablation controls; a click selects, no error box
    notices = page.locator('[data-role="standalone-notice"]')
    assert notices.count() == 2 and "live Python kernel" in notices.first.inner_text()
    assert page.locator('.cv-patching select[data-role="mode"]').count() == 0
    cell.click()
    assert page.locator('.cv-patching [data-role="error"]').inner_text() == ""
    assert "live kernel" in page.locator('.cv-patching [data-role="click-info"]').inner_text()
    assert page.locator(".cv-patching").get_attribute("data-busy") == "false"
    # selection is linked across the three views
    title = page.locator('.cv-attention [data-role="focus-title"]')
    assert title.inner_text().startswith("L1H2")
    node = page.locator('.cv-circuit [data-component="L1H2"]')
    assert node.count() == 0 or node.get_attribute("data-selected") == "true"
    page.locator('.cv-circuit [data-role="controls-notice"]').filter(has_text="kernel").wait_for()
    assert page.locator('.cv-circuit [data-role="min-rel-weight"]').is_disabled()
    # keyboard: Enter on a focused thumbnail focuses that head everywhere
    page.locator('.cv-attention [data-component="L0H3"]').focus()
    page.keyboard.press("Enter")
    assert page.locator('.cv-attention [data-role="focus-title"]').inner_text().startswith("L0H3")
    with page.expect_download() as download:
        page.locator('.cv-patching [data-role="export-svg"]').click()
    svg = open(download.value.path(), encoding="utf-8").read()
    assert svg.lstrip().startswith("<?xml") and 'data-component="L1H2"' in svg
    assert not page.console_errors and not page.dialogs


@pytest.mark.browser
def test_a_1200_token_prompt_stays_responsive(tmp_path, page, summary):
    """A long prompt: the focused head is a canvas (not 1.4 M SVG cells), and hovering a token
    recolours all 1,200 tokens within a frame budget."""
    n = 1200
    write_html(AttentionView(synthetic_attention(n)), tmp_path / "long.html")
    page.goto((tmp_path / "long.html").as_uri())
    page.locator('.cv-attention [data-component="L1H2"]').click()
    focus = page.locator('.cv-attention [data-role="focus"]')
    focus.locator("canvas").first.wait_for()
    assert focus.locator("*").count() < 50  # a canvas, not 1.4 M cell elements
    spans = page.locator('.cv-attention [data-role="tokens"] .cv-token')
    assert spans.count() == n
    hover_ms = page.evaluate(
        """() => {
            const spans = document.querySelectorAll('.cv-attention [data-role="tokens"] .cv-token');
            const times = [];
            for (const i of [1199, 600, 5, 1100, 900]) {
                const t0 = performance.now();
                spans[i].dispatchEvent(new MouseEvent("mouseover", { bubbles: true }));
                times.push(performance.now() - t0);
            }
            return times;
        }"""
    )
    assert page.locator('.cv-attention [data-role="tokens"] [data-focus="true"]').inner_text() == (
        "tok900"
    )
    worst = max(hover_ms)
    summary.append(
        f"AttentionView, {n} tokens: token hover recolours all tokens in {worst:.0f} ms (worst of 5)"
    )
    assert worst < 250, hover_ms
    assert not page.console_errors and not page.dialogs
