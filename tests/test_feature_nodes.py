"""Feature nodes in CircuitView and its static figure (tiny llama, tiny TopK SAEs): what the
kernel sends, the click-to-ablate rule for latents, the hover card (against W_dec @ W_U and
the latents by hand), faithfulness, and a browser test (drawn with a legend, hover card,
click → the kernel's ablation state; screenshot in tests/artifacts/feature_nodes.png)."""

from __future__ import annotations

import json

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks, hooks
from circuitviz.engine._pairs import tokenize
from circuitviz.views import CircuitView
from tests._tiny_sae import feature_pairs, tiny_saes

TOL = 1e-4


@pytest.fixture(scope="module")
def saes(tiny_llama):
    return tiny_saes(tiny_llama)


@pytest.fixture(scope="module")
def pairs():
    return feature_pairs()


@pytest.fixture(scope="module")
def graph(tiny_llama, pairs, saes):
    return cv.circuit(tiny_llama, pairs, saes=saes, progress=False)


def shown_features(view):
    return [n for n in view.graph["nodes"] if n["type"] == "feature"]


def test_view_sends_only_the_shown_feature_subgraph(tiny_llama, pairs, graph):
    view = CircuitView(tiny_llama, pairs, graph=graph)
    nodes = view.graph["nodes"]
    feats = shown_features(view)
    assert feats and any(n["type"] == "error" for n in nodes)
    assert len(nodes) < len(graph.ids)  # the kernel pruned; only the shown part is sent
    assert view.graph["saes"] == graph.saes
    for n in feats:
        assert n["id"] == f"L{n['layer']}F{n['feature']}:P{n['pos']}"
        assert n["hook"] == f"blocks.{n['layer']}.hook_resid_post"
        assert n["ablates"] == n["id"]  # that latent at that position
    errors = [n for n in nodes if n["type"] == "error"]
    assert all(n["ablates"] == n["id"] == f"L{n['layer']}ERR:P{n['pos']}" for n in errors)
    assert view.graph["totals"]["nodes"] == sum(
        t in ("head", "mlp", "feature", "error") for t in (n.type for n in graph.nodes)
    )


def test_click_ablates_the_latent_as_the_engine_does(tiny_llama, pairs, graph, saes):
    view = CircuitView(tiny_llama, pairs, graph=graph)
    target = shown_features(view)[0]["ablates"]
    view._handle_custom_msg({"type": "ablate", "components": [target], "request": 1}, [])
    ref = cv.ablate(tiny_llama, pairs, features=[target], saes=saes)
    assert view.ablated == [target]
    assert abs(view.result["ablated"] - ref.ablated) <= TOL
    # shift-click style: a head with it
    res = view.ablate([target, "L0H1"])
    assert sorted(res.components) == sorted([target, "L0H1"])
    assert not has_hooks(tiny_llama)


def test_feature_card_by_hand(tiny_llama, pairs, graph, saes):
    view = CircuitView(tiny_llama, pairs, graph=graph)
    node = shown_features(view)[0]
    sent = []
    view.send = lambda content, buffers=None: sent.append(content)
    view._handle_custom_msg({"type": "feature_card", "node": node["id"], "request": "f"}, [])
    card = sent[-1]
    assert card["type"] == "feature_card" and card["request"] == "f"
    layer, index = node["layer"], node["feature"]
    sae = saes[node["hook"]]
    direction = sae.W_dec[index] @ tiny_llama.W_U.detach()
    top = direction.topk(6)
    assert [t for t, _ in card["promoted"]] == [tiny_llama.to_string(int(i)) for i in top.indices]
    assert card["promoted"][0][1] == pytest.approx(float(top.values[0]), abs=1e-4)
    assert card["suppressed"][0][1] == pytest.approx(float(direction.min()), abs=1e-4)
    tokens = tokenize(tiny_llama, pairs)
    acts = []

    def rec(x, hook):
        acts.append(sae.encode(x)[..., index].max())

    with torch.no_grad(), hooks(tiny_llama, [(node["hook"], rec)]):
        tiny_llama(tokens.clean)
        tiny_llama(tokens.corrupted)
    assert card["max_act"] == pytest.approx(float(max(acts)), abs=1e-4)
    assert card["label"] == f"L{layer} F{index}" and card["node"] == f"L{layer}F{index}"
    assert len(json.dumps(card)) < 1024  # small payload
    view._handle_custom_msg({"type": "feature_card", "node": node["id"], "request": "g"}, [])
    assert sent[-1] == {**card, "request": "g"}  # cached
    view._handle_custom_msg({"type": "feature_card", "node": "L0H1", "request": "h"}, [])
    assert sent[-1]["type"] == "error" and "not a feature id" in sent[-1]["message"]
    view._handle_custom_msg({"type": "feature_card", "node": "L0F999", "request": "i"}, [])
    assert "out of range" in sent[-1]["message"]


def test_faithfulness_of_the_shown_feature_circuit(tiny_llama, pairs, graph):
    view = CircuitView(tiny_llama, pairs, graph=graph)
    target = shown_features(view)[0]["ablates"]
    view._handle_custom_msg({"type": "faithfulness", "ablated": [target], "request": 2}, [])
    f = view.faithfulness
    assert f["ablated_nodes"] == [target]
    shown = view.shown_circuit()
    assert f["circuit"] == pytest.approx(float(shown.faithfulness(tiny_llama, pairs)))
    after = shown.faithfulness(tiny_llama, pairs, ablated=[target])
    assert f["ablated"] == pytest.approx(float(after))


def test_view_of_feature_graph_json(tiny_llama, pairs, graph, saes, tmp_path):
    path = tmp_path / "features.json"
    path.write_text(graph.to_json(), encoding="utf-8")
    view = CircuitView(tiny_llama, pairs, graph=str(path), saes=saes)
    assert type(view._full).__name__ == "FeatureGraph" and view.has_faithfulness
    assert {n["id"] for n in view.graph["nodes"]} == {
        n["id"] for n in CircuitView(tiny_llama, pairs, graph=graph).graph["nodes"]
    }
    other = tiny_saes(tiny_llama, layers=[1], d_sae=32, k=4)
    with pytest.raises(cv.InputError, match="not the graph's"):
        CircuitView(tiny_llama, pairs, graph=graph, saes=other)


def test_static_figure_draws_feature_nodes_with_a_legend(graph, tmp_path):
    small = graph.prune(top_edges=40)
    fig = small.figure()
    names = {t.name for t in fig.data}
    assert {"SAE feature", "SAE error"} <= names
    feats = next(t for t in fig.data if t.name == "SAE feature")
    assert feats.marker.symbol == "diamond-tall"
    n_feat = sum(n.type == "feature" for n in small.nodes)
    assert len(feats.x) == n_feat
    points = {
        (x, y) for t in fig.data if t.mode == "markers" for x, y in zip(t.x, t.y, strict=True)
    }
    n_nodes = sum(
        len(t.x) for t in fig.data if t.mode == "markers" and t.name not in ("ablated", "selected")
    )
    assert len(points) == n_nodes  # no two nodes on one spot
    out = small.save(tmp_path / "features.svg")
    assert "SAE feature" in out.read_text(encoding="utf-8")


# --------------------------------------------------------------------------- browser
@pytest.mark.browser
def test_browser_feature_nodes_legend_card_and_click(
    page, tmp_path, tiny_llama, pairs, graph, monkeypatch
):
    from circuitviz.export import _html
    from tests.conftest import ARTIFACTS
    from tests.test_circuit_view import Bridge

    spec = _html.view_spec

    def live_spec(view):  # the bridge is a live kernel: keep the ablation controls
        out = spec(view)
        out["state"]["can_ablate"], out["state"]["standalone"] = True, ""
        return out

    monkeypatch.setattr(_html, "view_spec", live_spec)
    import tests.test_circuit_view as tcv

    # the ablation set and result come back to the page too, as from a kernel
    monkeypatch.setattr(tcv, "KERNEL_TRAITS", (*tcv.KERNEL_TRAITS, "ablated", "result"))
    view = CircuitView(tiny_llama, pairs, graph=graph)
    view.top_nodes, view.top_edges = 24, 60
    Bridge(view, page, tmp_path / "features.html")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto((tmp_path / "features.html").as_uri())
    feat = page.locator('.cv-circuit g.cv-node[data-type="feature"]')
    feat.first.wait_for()
    assert feat.count() == len(shown_features(view))
    assert page.locator('.cv-circuit g.cv-node[data-type="error"]').count() >= 1
    assert page.locator('.cv-circuit [data-legend="type-feature"]').is_visible()
    assert page.locator('.cv-circuit [data-legend="type-error"]').is_visible()
    assert page.locator('.cv-circuit [data-input-box="feature"]').is_visible()
    # the strongest latent: hover shows its card, from the kernel
    best = max(shown_features(view), key=lambda n: abs(n["score"] or 0))
    node = page.locator(f'.cv-circuit g.cv-node[data-component="{best["id"]}"]')
    node.hover()
    title = page.locator('.cv-circuit [data-role="feature-card-title"]')
    title.wait_for()
    assert title.inner_text().startswith(best["id"].split(":")[0])
    assert (
        "promotes:" in page.locator('.cv-circuit [data-role="feature-card-promoted"]').inner_text()
    )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(".cv-circuit").screenshot(path=str(ARTIFACTS / "feature_nodes.png"))
    # click: the kernel ablates that latent at that position
    node.click()
    page.wait_for_function(
        f"""document.querySelector('.cv-circuit g.cv-node[data-component="{best["id"]}"]')
            ?.dataset.ablated === 'true'"""
    )
    assert view.ablated == [best["ablates"]]
    assert view.result["ablated"] is not None
    page.locator(".cv-circuit").screenshot(path=str(ARTIFACTS / "feature_nodes_ablated.png"))
    assert not page.console_errors


def test_feature_graph_view_defaults(tiny_llama, pairs, graph):
    from circuitviz.views._feature_nodes import FEATURE_TOP_EDGES, FEATURE_TOP_NODES

    view = CircuitView(tiny_llama, pairs, graph=graph)
    assert (view.top_nodes, view.top_edges) == (FEATURE_TOP_NODES, FEATURE_TOP_EDGES)
    mine = CircuitView(tiny_llama, pairs, graph=graph, top_nodes=7)
    assert mine.top_nodes == 7 and mine.top_edges == FEATURE_TOP_EDGES
    kept = CircuitView(tiny_llama, pairs, graph=graph, state={"top_nodes": 9})
    assert kept.top_nodes == 9
    plain = CircuitView(tiny_llama, pairs, graph=cv.circuit(tiny_llama, pairs, progress=False))
    assert plain.top_nodes == 30


def test_feature_graph_view_widens_its_default_edge_limit_until_a_path_shows(
    tiny_llama, pairs, graph, monkeypatch
):
    from circuitviz.views import _feature_nodes

    monkeypatch.setattr(_feature_nodes, "FEATURE_TOP_EDGES", 1)  # no path fits in one edge
    view = CircuitView(tiny_llama, pairs, graph=graph)
    assert view.graph["nodes"] and view.top_edges > 1
    assert not CircuitView(tiny_llama, pairs, graph=graph, top_edges=1).graph["nodes"]
