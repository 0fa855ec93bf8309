"""Feature graphs on nnsight — ``circuit(model, pairs, saes=...)`` (EAP and EAP-IG) and
``FeatureGraph.faithfulness`` (errors kept, ablated or following the graph; corrupted and
mean ablation; the complement; nodes ablated by name) — locally and on the fake NDIF, with
SAEs at resid_pre and resid_post (every other site kind: ``test_backends_feature_graph_sites``).

Reference for every number: the same call on the TransformerLens bridge with the same
weights, which ``test_feature_circuit.py`` and ``test_error_nodes.py`` check against autograd
on a hand-spliced model and hand-written latent hooks. Tolerance 1e-4 in float32 on edge
weights, node scores and metric values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitviz as cv
from circuitviz.engine.graph import FeatureGraph
from tests._tiny_sae import feature_pairs, tiny_saes, tiny_site_saes
from tests.test_backends import TOL, logits_of
from tests.test_remote import Setup

pytest.importorskip("nnsight")

#: SAEs at resid_post of both layers, or at resid_pre of both (the embeddings' included)
#: and resid_post of the last: a resid_pre SAE right after a resid_post one splices twice.
SITE_SETS = {
    "post": None,
    "pre": ["blocks.0.hook_resid_pre", "blocks.1.hook_resid_pre", "blocks.1.hook_resid_post"],
}


@pytest.fixture(scope="module")
def pairs():
    return feature_pairs()


@pytest.fixture(scope="module")
def site_saes(both):
    bridge, _ = both
    return {
        name: tiny_saes(bridge) if hooks is None else tiny_site_saes(bridge, hooks)
        for name, hooks in SITE_SETS.items()
    }


def answer_margin(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 3] - logits[:, 7]  # a custom metric: the full logits come back


def edges_of(graph: FeatureGraph) -> dict[tuple[str, str, int], float]:
    return {
        (graph.ids[s], graph.ids[d], int(i)): float(w)
        for s, d, i, w in zip(graph.src, graph.dst, graph.input, graph.weight, strict=True)
    }


def assert_same_graph(got: FeatureGraph, ref: FeatureGraph) -> None:
    """The same nodes (ids, in order, and their table), the same non-zero edges, and every
    weight, node score and baseline within 1e-4 (1e-4 of the largest weight when that is
    below 1)."""
    assert isinstance(got, FeatureGraph)
    assert got.ids == ref.ids and got.labels == ref.labels
    for name in ("type", "layer", "head", "pos", "feature", "site"):
        assert np.array_equal(getattr(got, name), getattr(ref, name)), name
    a, b = edges_of(got), edges_of(ref)
    assert a.keys() == b.keys() and len(a) > 100
    scale = float(np.abs(ref.weight).max())
    assert scale > 1e-6  # scores, not an empty graph
    # 1e-4, and relative to the scores' scale where they are small (answer_prob's)
    assert max(abs(a[k] - b[k]) for k in a) <= TOL * min(1.0, scale)
    assert np.abs(got.node_scores - ref.node_scores).max() <= TOL * min(1.0, scale)
    assert abs(got.clean - ref.clean) <= TOL and abs(got.corrupted - ref.corrupted) <= TOL
    assert (got.method, got.metric, got.steps) == (ref.method, ref.metric, ref.steps)
    assert got.n_candidates == ref.n_candidates and got.saes == ref.saes
    assert (got.model, got.n_layers, got.n_heads, got.n_kv_heads) == (
        ref.model,
        ref.n_layers,
        ref.n_heads,
        ref.n_kv_heads,
    )


def assert_same_faithfulness(got, ref) -> None:
    assert abs(got.metric - ref.metric) <= TOL
    assert abs(got.clean - ref.clean) <= TOL and abs(got.corrupted - ref.corrupted) <= TOL
    assert abs(got.recovered - ref.recovered) * abs(ref.clean - ref.corrupted) <= TOL
    assert got.n_edges == ref.n_edges and got.ablation == ref.ablation


# ----------------------------------------------------------------------------- graphs


@pytest.mark.parametrize("sites", list(SITE_SETS))
@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_feature_graph_equals_the_bridge(both, pairs, site_saes, method, sites):
    bridge, nn = both
    saes = site_saes[sites]
    steps = 3 if method == "eap-ig" else None
    ref = cv.circuit(bridge, pairs, saes=saes, method=method, steps=steps, progress=False)
    got = cv.circuit(nn, pairs, saes=saes, method=method, steps=steps, progress=False)
    assert_same_graph(got, ref)
    assert not nn.has_hooks() and all(p.grad is None for p in nn.lm._module.parameters())


@pytest.mark.parametrize("metric", ["kl", "answer_prob", answer_margin], ids=str)
def test_eap_ig_feature_graph_with_other_metrics_equals_the_bridge(both, pairs, site_saes, metric):
    """Each step's metric gradient is taken at that step's own (spliced) logits."""
    bridge, nn = both
    saes = site_saes["post"]
    options = {"method": "eap-ig", "steps": 2, "metric": metric, "progress": False}
    ref = cv.circuit(bridge, pairs, saes=saes, **options)
    got = cv.circuit(nn, pairs, saes=saes, **options)
    assert_same_graph(got, ref)
    if callable(metric):  # the graph remembers it for its faithfulness
        assert_same_faithfulness(
            got.prune(top_edges=20).faithfulness(nn, pairs),
            ref.prune(top_edges=20).faithfulness(bridge, pairs),
        )


def test_an_nnsight_model_object_as_it_is(both, pairs, site_saes):
    _, nn = both
    saes = site_saes["post"]
    raw = cv.circuit(nn.lm, pairs, saes=saes, progress=False)
    wrapped = cv.circuit(nn, pairs, saes=saes, progress=False)
    assert edges_of(raw) == edges_of(wrapped)
    got = raw.prune(top_edges=15).faithfulness(nn.lm, pairs, errors="ablated")
    ref = wrapped.prune(top_edges=15).faithfulness(nn, pairs, errors="ablated")
    assert got.metric == ref.metric and got.metric != got.clean


# ----------------------------------------------------------------------------- faithfulness


@pytest.mark.parametrize("sites", list(SITE_SETS))
@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_faithfulness_equals_the_bridge(both, pairs, site_saes, ablation, sites):
    """One graph (the bridge's), evaluated on each backend: its pruned circuit with error
    terms kept, ablated and as the graph has them; its complement; nodes ablated by name
    (a latent everywhere, an error node at one position, a head); a hand-picked circuit."""
    bridge, nn = both
    saes = site_saes[sites]
    graph = cv.circuit(bridge, pairs, saes=saes, progress=False)
    small = graph.prune(top_edges=25)
    feature = next(n for n in small.nodes if n.type == "feature")
    error = next(n for n in small.nodes if n.type == "error")
    cases = [
        {},
        {"errors": "ablated"},
        {"errors": "graph"},
        {"complement": True},
        {"complement": True, "errors": "ablated"},
        {"ablated": [feature.id.split(":")[0], error.id, "L1H0"]},
        {"nodes": [feature.id, error.id, "L0H1:P5", "MLP0:P5"], "errors": "graph"},
    ]
    values = set()
    for options in cases:
        ref = small.faithfulness(bridge, pairs, ablation=ablation, **options)
        got = small.faithfulness(nn, pairs, ablation=ablation, **options)
        assert_same_faithfulness(got, ref)
        values.add(round(ref.metric, 6))
    assert len(values) >= 4  # the cases differ
    assert not nn.has_hooks()


# ----------------------------------------------------------------------------- remote


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def remote(request):
    """The fake NDIF, its client named as the bridge (one graph is evaluated on both)."""
    setup = Setup(request.param)
    setup.client = setup.make_client(model_name=setup.bridge.cfg.model_name)
    return setup, tiny_saes(setup.bridge)


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_remote_feature_graph_is_one_job_and_equals_the_bridge(remote, pairs, method):
    """A built-in metric's gradient is taken in the job itself: one job whatever the steps
    (normalized_logit_diff: its baselines are that job's clean and corrupted readouts); a
    callable metric's needs the readouts first: two. A faithfulness is one job, its
    baselines riding along."""
    setup, saes = remote
    steps = 4 if method == "eap-ig" else None
    for metric in ("logit_diff", "normalized_logit_diff"):
        options = {"method": method, "steps": steps, "metric": metric, "progress": False}
        ref = cv.circuit(setup.bridge, pairs, saes=saes, **options)
        sent = len(setup.fake.requests)
        got = cv.circuit(setup.client, pairs, saes=saes, **options)
        assert len(setup.fake.requests) == sent + 1
        assert_same_graph(got, ref)
    options = {"method": method, "steps": steps, "metric": answer_margin, "progress": False}
    sent = len(setup.fake.requests)
    got = cv.circuit(setup.client, pairs, saes=saes, **options)
    assert len(setup.fake.requests) == sent + 2
    # the first job: readouts only (full logits for a callable metric), no SAE data
    assert setup.fake.result_bytes[-2] * 4 < setup.fake.result_bytes[-1]
    assert_same_graph(got, cv.circuit(setup.bridge, pairs, saes=saes, **options))
    small = ref.prune(top_edges=20)
    for ablation in ("corrupted", "mean"):
        sent = len(setup.fake.requests)
        got_f = small.faithfulness(setup.client, pairs, ablation=ablation, errors="ablated")
        assert len(setup.fake.requests) == sent + 1 and setup.fake.result_bytes[-1] < 4096
        ref_f = small.faithfulness(setup.bridge, pairs, ablation=ablation, errors="ablated")
        assert_same_faithfulness(got_f, ref_f)
    assert setup.states[-1] == "done" and not setup.server.has_hooks()
    assert all(p.grad is None for p in setup.server.lm._module.parameters())


# ----------------------------------------------------------------------------- the view


def test_circuit_view_scores_an_nnsight_feature_graph(both, pairs, site_saes):
    """CircuitView draws the nnsight FeatureGraph as the bridge's and scores its shown
    circuit — with a latent ablated, and the error-node variants — to the same numbers."""
    from circuitviz.views import CircuitView

    bridge, nn = both
    saes = site_saes["post"]
    ref_graph = cv.circuit(bridge, pairs, saes=saes, progress=False)
    got_graph = cv.circuit(nn, pairs, saes=saes, progress=False)
    views = [
        CircuitView(bridge, pairs, graph=ref_graph, max_edges=40),
        CircuitView(nn, pairs, graph=got_graph, max_edges=40),
    ]
    ref_view, got_view = views
    assert got_view.has_faithfulness
    assert [n["id"] for n in got_view.graph["nodes"]] == [n["id"] for n in ref_view.graph["nodes"]]
    target = next(n for n in ref_view.graph["nodes"] if n["type"] == "feature")["ablates"]
    for view in views:
        view.send = lambda content, buffers=None: None
        view._handle_custom_msg({"type": "faithfulness", "ablated": [target], "request": 1}, [])
    ref, got = ref_view.faithfulness, got_view.faithfulness
    assert got.keys() == ref.keys() and got["ablated_nodes"] == [target]
    gap = ref_graph.clean - ref_graph.corrupted
    for key, value in ref.items():
        if isinstance(value, float):
            assert abs(got[key] - value) * abs(gap) <= TOL, key
    assert not nn.has_hooks()


def test_remote_circuit_view_scores_a_feature_graph(remote, pairs):
    """On NDIF the view's faithfulness (the circuit, it with a latent ablated, the error-node
    variants) runs as jobs off the message loop, one job a value, equal to the bridge's."""
    from circuitviz.views import CircuitView
    from tests.test_backends_graph import settled
    from tests.test_remote_view import settled as view_settled

    setup, saes = remote
    graph = cv.circuit(setup.bridge, pairs, saes=saes, progress=False)
    ref_view = CircuitView(setup.bridge, pairs, graph=graph, max_edges=40)
    got_view = CircuitView(setup.client, pairs, graph=graph, max_edges=40, saes=saes)
    view_settled(got_view)  # its baselines: a job off the calling cell
    target = next(n for n in ref_view.graph["nodes"] if n["type"] == "feature")["ablates"]
    sent = len(setup.fake.requests)
    for view in (ref_view, got_view):
        view.send = lambda content, buffers=None: None
        view._handle_custom_msg({"type": "faithfulness", "ablated": [target], "request": 1}, [])
    settled(got_view)
    ref, got = ref_view.faithfulness, got_view.faithfulness
    assert got.keys() == ref.keys() and len(setup.fake.requests) - sent == len(got) - 2
    gap = graph.clean - graph.corrupted
    for key, value in ref.items():
        if isinstance(value, float):
            assert abs(got[key] - value) * abs(gap) <= TOL, key
    assert not setup.server.has_hooks()


# ----------------------------------------------------------------------------- bad input


def test_bad_feature_graph_input_on_nnsight_is_refused_and_changes_nothing(both, pairs):
    bridge, nn = both
    tokens = bridge.to_tokens("t1 t2 t3 t4")
    before = logits_of(nn, tokens)
    both_at_mlp1 = tiny_site_saes(
        bridge,
        ["blocks.1.hook_mlp_out"],
        transcoders=[("blocks.1.hook_resid_mid", "blocks.1.hook_mlp_out")],
    )
    with pytest.raises(cv.InputError, match="keep one of them"):
        cv.circuit(nn, pairs, saes=both_at_mlp1, progress=False)
    saes = tiny_saes(bridge)
    unequal = cv.PromptPairs(["t1 t2 t3 t4 t1"], ["t5 t6"], [" t3"], [" t7"])
    with pytest.raises(cv.InputError, match=r"length|token"):
        cv.circuit(nn, unequal, saes=saes, progress=False)
    with pytest.raises(cv.InputError, match="steps"):
        cv.circuit(nn, pairs, saes=saes, method="eap-ig", steps=0)
    graph = cv.circuit(nn, pairs, saes=saes, progress=False)
    with pytest.raises(cv.InputError, match="errors"):
        graph.faithfulness(nn, pairs, errors="some")
    with pytest.raises(cv.InputError, match="ablation"):
        graph.faithfulness(nn, pairs, ablation="zero")
    with pytest.raises(cv.InputError, match="not a node"):
        graph.faithfulness(nn, pairs, nodes=["L7F3:P0"])
    with pytest.raises(cv.InputError, match="not the graph's"):
        graph.faithfulness(nn, pairs, saes=tiny_saes(bridge, d_sae=32))
    assert not nn.has_hooks()
    assert torch.equal(logits_of(nn, tokens), before)


def test_a_site_no_feature_circuit_splices_is_refused_as_on_the_bridge(both, pairs):
    """A transcoder writing another block's MLP output: the bridge's refusal (naming the
    sites feature circuits splice), up front, with no hook left."""
    bridge, nn = both
    saes = tiny_site_saes(bridge, [], [("blocks.0.hook_resid_mid", "blocks.1.hook_mlp_out")])
    with pytest.raises(cv.InputError, match=r"transcoders that write") as ref:
        cv.circuit(bridge, pairs, saes=saes, progress=False)
    with pytest.raises(cv.InputError, match=r"transcoders that write") as got:
        cv.circuit(nn, pairs, saes=saes, progress=False)
    assert str(got.value) == str(ref.value)
    assert not nn.has_hooks()


# ----------------------------------------------------------------------------- demo


@pytest.mark.demo
@pytest.mark.slow
def test_demo_feature_graph_on_nnsight_equals_the_bridge(demo_model):
    """SmolLM2-135M (30 layers, GQA) with its shipped SAEs on IOI pairs: the EAP and EAP-IG
    feature graphs and a pruned circuit's faithfulness (errors kept and ablated)."""
    nn = cv.load_model(demo_model, backend="nnsight")
    saes = cv.load_saes("demo")
    pairs = cv.PromptPairs(
        [
            "When John and Mary went to the store, John gave a drink to",
            "When Tom and Anna went to the park, Tom gave a ball to",
        ],
        [
            "When John and Mary went to the store, Mary gave a drink to",
            "When Tom and Anna went to the park, Anna gave a ball to",
        ],
        [" Mary", " Anna"],
        [" John", " Tom"],
    )
    for method, steps in (("eap", None), ("eap-ig", 2)):
        ref = cv.circuit(demo_model, pairs, saes=saes, method=method, steps=steps, progress=False)
        got = cv.circuit(nn, pairs, saes=saes, method=method, steps=steps, progress=False)
        assert_same_graph(got, ref)
    small = ref.prune(top_nodes=30)
    for errors in ("kept", "ablated"):
        assert_same_faithfulness(
            small.faithfulness(nn, pairs, errors=errors),
            small.faithfulness(demo_model, pairs, errors=errors),
        )
    assert not nn.has_hooks()
