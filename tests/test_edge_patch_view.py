"""CircuitView's edge panel ("patch this path exactly") and MIB curve, in Chromium against an
in-process kernel (the bridge of tests/test_circuit_view.py): a clicked edge shows its score
and, on the button, its exact value, which must equal ``Graph.patch_edge`` and
``path_patch(direction="noise") − clean`` (≤ 1e-4) for q/k/v (GQA: the KV head), MLP and
logits edges on the tiny Llama (GQA) and GPT-2 models."""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
import tests.test_circuit_view as tcv
from circuitviz.engine import has_hooks
from circuitviz.engine.graph import mib_scores
from circuitviz.views import CircuitView

torch.set_num_threads(1)

PAIRS = cv.PromptPairs(
    clean=["t1 t2 t3 t4 t5 t6", "t7 t8 t9 t10 t11 t6", "t20 t21 t22 t23 t24 t6"],
    corrupted=["t1 t2 t3 t4 t9 t6", "t7 t8 t9 t10 t3 t6", "t20 t21 t22 t23 t30 t6"],
    answers=["t3", "t9", "t22"],
    wrong_answers=["t5", "t4", "t24"],
)
#: (source, target, input) of the edges clicked: every receiver kind.
EDGES = [
    ("L0H1", "L1H2", "q"),
    ("L0H0", "L1H3", "k"),  # GQA: L1H3 reads KV head 1 (shared with L1H2)
    ("MLP0", "L1H1", "v"),
    ("L0H2", "MLP1", "mlp"),
    ("L1H0", "LOGITS", "logits"),
    ("EMBED", "L0H1", "v"),
]


@pytest.fixture(params=["llama", "gpt2"])
def model(request, tiny_llama, tiny_gpt2):
    return tiny_llama if request.param == "llama" else tiny_gpt2


@pytest.fixture
def bridged(page, tmp_path, model, monkeypatch):
    monkeypatch.setattr(
        tcv, "KERNEL_TRAITS", (*tcv.KERNEL_TRAITS, "selected_edge", "edge_info", "mib")
    )
    graph = cv.circuit(model, PAIRS, progress=False)
    view = CircuitView(model, PAIRS, graph=graph, state={"top_nodes": 100, "top_edges": 1000})
    tcv.Bridge(view, page, tmp_path / "circuit.html")
    page.goto((tmp_path / "circuit.html").as_uri())
    page.locator(".cv-circuit g.cv-node").first.wait_for()
    return view, graph


def path_patched(model, source: str, target: str, kind: str) -> float | None:
    """``path_patch`` (noise: the clean run, the sender's corrupted output reaching only the
    receiver's input) minus the clean metric; None where path_patch has no such path."""
    if source == "EMBED" or kind == "mlp":
        return None
    receivers, receiver_input = ("logits", "resid") if kind == "logits" else ([target], kind)
    value = cv.path_patch(
        model,
        PAIRS,
        senders=[source],
        receivers=receivers,
        receiver_input=receiver_input,
        direction="noise",
        progress=False,
    )
    clean = cv.ablate(model, PAIRS).clean
    return float(value) - clean


@pytest.mark.browser
def test_clicked_edge_shows_score_and_exact_value(bridged, page, model):
    """Reference: ``Graph.patch_edge`` for every edge, and ``path_patch`` for head/MLP → q, k,
    v and logits edges."""
    view, graph = bridged
    checked_path_patch = 0
    for source, target, kind in EDGES:
        selector = f'.cv-circuit path[data-edge="{source}->{target}"][data-input="{kind}"]'
        page.locator(selector).dispatch_event("click")
        page.wait_for_function(
            "name => document.querySelector('[data-role=\"edge-name\"]')?.textContent === name",
            arg=f"{source} → {target}",
        )
        assert page.locator(selector).get_attribute("data-selected") == "true"
        score = float(page.get_attribute('[data-role="edge-score"]', "data-value"))
        assert score == pytest.approx(graph.score(source, target, kind), abs=1e-6)
        page.click('[data-role="patch-edge"]')
        page.wait_for_function(
            "() => document.querySelector('[data-role=\"edge-exact\"]')?.dataset.value !== ''"
        )
        shown = float(page.get_attribute('[data-role="edge-exact"]', "data-value"))
        reference = graph.patch_edge(model, PAIRS, (source, target, kind))
        assert abs(shown - reference) <= 1e-4
        by_path = path_patched(model, source, target, kind)
        if by_path is not None:
            assert abs(shown - by_path) <= 1e-4
            checked_path_patch += 1
        if kind == "k" and graph.n_kv_heads < graph.n_heads:
            assert "KV head 1" in page.inner_text('[data-role="edge-panel"]')
        assert view.edge_info["exact"] == shown
    assert checked_path_patch == 4
    tcv.screenshot(page, f"circuit_edge_panel_{graph.model}")
    page.click('[data-role="edge-clear"]')
    page.wait_for_function("() => !document.querySelector('[data-role=\"edge-name\"]')")
    assert view.selected_edge == [] and view.edge_info == {}
    assert not has_hooks(model)
    assert not page.console_errors


def shot_mib(page, name: str) -> None:
    """The whole view, and the curve's panel alone (to read its labels)."""
    from tests.conftest import ARTIFACTS

    page.locator('[data-role="mib"]').scroll_into_view_if_needed()
    tcv.screenshot(page, name)
    page.locator('[data-role="mib"]').screenshot(path=str(ARTIFACTS / f"{name}_panel.png"))


@pytest.mark.browser
def test_mib_curve_with_the_shown_circuits_point(bridged, page, model):
    """Reference: ``mib_scores`` (each point = one ``Graph.faithfulness`` call, see
    tests/test_mib.py); the marked point is the shown circuit's faithfulness and share."""
    view, graph = bridged
    page.click('[data-role="mib-run"]')
    page.locator('[data-role="mib-plot"]').wait_for()
    page.wait_for_selector('[data-role="mib-current"]')
    res = mib_scores(graph, model, PAIRS, progress=False)
    points = page.eval_on_selector_all(
        '[data-role="mib-point"]', "els => els.map(e => [+e.dataset.fraction, +e.dataset.value])"
    )
    assert [p[0] for p in points] == res.fraction
    assert max(abs(p[1] - f) for p, f in zip(points, res.faithfulness, strict=True)) <= 1e-4
    assert page.inner_text('[data-role="mib-areas"]').startswith(f"CPR {res.cpr:.3f}"[:8])
    shown = view.shown_circuit()
    current = float(page.get_attribute('[data-role="mib-current"]', "data-value"))
    assert abs(current - shown.faithfulness(model, PAIRS).recovered) <= 1e-4
    fraction = float(page.get_attribute('[data-role="mib-current"]', "data-fraction"))
    assert fraction == pytest.approx(int(shown.kept.sum()) / int(graph.kept.sum()))
    for role in ("mib-x-label", "mib-y-label", "mib-legend"):
        assert page.text_content(f'[data-role="{role}"]').strip()
    shot_mib(page, f"circuit_mib_{graph.model}_before")
    # pruning moves the point: the kernel recomputes it
    n_before = page.evaluate("window.cvBridgeTimes.length")
    page.fill('[data-role="top-edges"]', "6")
    page.dispatch_event('[data-role="top-edges"]', "change")
    tcv.wait_drawn(page, n_before)
    page.wait_for_function(
        "f => +document.querySelector('[data-role=\"mib-current\"]')?.dataset.fraction < f",
        arg=fraction,
    )
    moved = float(page.get_attribute('[data-role="mib-current"]', "data-value"))
    small = view.shown_circuit()
    assert int(small.kept.sum()) <= 6
    assert abs(moved - small.faithfulness(model, PAIRS).recovered) <= 1e-4
    shot_mib(page, f"circuit_mib_{graph.model}_after")
    assert not page.console_errors


def test_selected_edge_is_checked_by_the_kernel(tiny_llama):
    graph = cv.circuit(tiny_llama, PAIRS, progress=False)
    view = CircuitView(tiny_llama, PAIRS, graph=graph)
    view.set_state({"selected_edge": ["L1H0", "L0H0", "q"]})
    assert view.selected_edge == [] and "runs after" in view.error
    view.set_state({"selected_edge": ["L0H0", "L1H0", "z"]})
    assert view.selected_edge == [] and "input must be one of" in view.error
    with pytest.raises(cv.InputError, match="No edge is selected"):
        view.patch_selected_edge()
    view.selected_edge = ["L0H0", "L1H1", "v"]
    assert view.edge_info["kv_head"] == 0
    assert view.patch_selected_edge() == graph.patch_edge(tiny_llama, PAIRS, ("L0H0", "L1H0", "v"))
    assert view.state["selected_edge"] == ["L0H0", "L1H1", "v"]
    # per position: the edge at one position (reference: Graph.patch_edge of that edge)
    per_pos = cv.circuit(tiny_llama, PAIRS, per_position=True, progress=False)
    view_pp = CircuitView(tiny_llama, PAIRS, graph=per_pos)
    edge = ["L0H2:P5", "L1H2:P5", "q"]
    view_pp.selected_edge = edge
    assert view_pp.edge_info["weight"] == per_pos.score(*edge)
    assert view_pp.patch_selected_edge() == per_pos.patch_edge(tiny_llama, PAIRS, tuple(edge))
    view_pp.set_state({"selected_edge": ["L0H2:P4", "L1H2:P5", "q"]})
    assert view_pp.selected_edge == edge and "same position" in view_pp.error
    # a graph without a model shows the score but cannot patch
    drawn = CircuitView(graph=graph)
    drawn.selected_edge = ["L0H0", "L1H1", "v"]
    assert drawn.edge_info["can_patch"] is False
    with pytest.raises(cv.InputError, match="needs a circuitviz Graph"):
        drawn.patch_selected_edge()
    assert not has_hooks(tiny_llama)
