"""Attribution graphs (circuitviz.circuit): EAP scores against exact edge patching, exact
circuit evaluation, pruning, JSON, GQA, the induction known answer and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import circuitviz
from circuitviz.engine import has_hooks
from circuitviz.engine._pairs import InputError, PromptPairs, tokenize
from circuitviz.engine.graph import Graph, circuit, edge_patch
from circuitviz.engine.graph._eap import final_logits, receiver_grads
from circuitviz.engine.graph._layout import Layout, all_weights

# One token changed in the middle: a small corruption, where first order should be good.
PAIRS = PromptPairs(
    clean=["t1 t2 t3 t4 t5 t6", "t7 t8 t9 t10 t11 t6", "t20 t21 t22 t23 t24 t6"],
    corrupted=["t1 t2 t3 t4 t9 t6", "t7 t8 t9 t10 t3 t6", "t20 t21 t22 t23 t30 t6"],
    answers=["t3", "t9", "t22"],
    wrong_answers=["t5", "t4", "t24"],
)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return circuitviz.tiny_model(request.param, n_layers=2)


@pytest.fixture(scope="module")
def graph(model):
    return circuit(model, PAIRS, progress=False)


def pearson(a, b) -> float:
    return float(np.corrcoef(np.asarray(a, float), np.asarray(b, float))[0, 1])


def test_graph_has_every_node_and_residual_edge(model, graph):
    layout = Layout.of(model)
    ids = [n.id for n in graph.nodes]
    assert ids[0] == "EMBED" and ids[-1] == "LOGITS"
    assert {"L0H0", "L1H3", "MLP0", "MLP1"} <= set(ids)
    assert len(ids) == 2 + 2 * (4 + 1)
    # senders before receivers: EMBED feeds all 2·(q,k,v,mlp) + logits receivers, L1 heads
    # feed only MLP1 and the logits, MLP1 only the logits.
    per_layer = layout.n_heads + 2 * layout.n_kv_heads + 1
    assert sum(e.source == "EMBED" for e in graph.edges) == 2 * per_layer + 1
    assert {(e.target, e.input) for e in graph.edges if e.source == "L1H2"} == {
        ("MLP1", "mlp"),
        ("LOGITS", "logits"),
    }
    assert all(e.source != "MLP1" or e.target == "LOGITS" for e in graph.edges)


def test_eap_matches_exact_edge_patching(model, graph):
    edges = graph.edges
    exact = graph.patch_edges(model, PAIRS, edges)
    eap = [e.weight for e in edges]
    ig = circuit(model, PAIRS, method="eap-ig", steps=8, progress=False)
    eap_ig = [ig.score(e.source, e.target, e.input) for e in edges]
    r_eap, r_ig = pearson(eap, exact), pearson(eap_ig, exact)
    print(f"{model.cfg.model_name}: {len(edges)} edges, Pearson EAP {r_eap:.3f}, EAP-IG {r_ig:.3f}")
    assert r_eap > 0.85
    assert r_ig > 0.98
    # a single edge through the public function: one float, equal to the batched value
    one = edge_patch(model, PAIRS, graph, edges[0])
    assert one == pytest.approx(float(exact[0]), abs=1e-6)


def test_edge_sweeps_hold_one_pass_of_masks_at_a_time(model, graph, monkeypatch):
    """Sweeping many edges never builds every edge's mask at once (each is a whole
    [sender, receiver(, pos)] mask; 70k of them at the demo shape would be ~10 GB)."""
    from circuitviz.engine.graph import _faithfulness

    graph = circuit(model, PAIRS, progress=False)  # its own evaluation cache
    ctx = _faithfulness.context(graph, model, PAIRS)
    ctx.max_rows = 2 * len(PAIRS.clean)  # two circuits per forward pass
    seen = []
    run = _faithfulness.circuit_logits

    def spy(model, layout, weights, clean, ref, masks, *mask):
        seen.append(masks.shape[0])
        return run(model, layout, weights, clean, ref, masks, *mask)

    monkeypatch.setattr(_faithfulness, "circuit_logits", spy)
    edges = graph.edges[:7]
    swept = graph.patch_edges(model, PAIRS, edges, progress=False)
    assert seen == [2, 2, 2, 1]
    singles = [graph.patch_edge(model, PAIRS, e) for e in edges]
    np.testing.assert_allclose(swept.numpy(), singles, atol=1e-6)


def test_patching_no_edge_is_clean_and_every_edge_is_corrupted(model, graph):
    full = graph.faithfulness(model, PAIRS)
    assert full.metric == pytest.approx(graph.clean, abs=1e-6)
    assert full.recovered == pytest.approx(1.0, abs=1e-4)
    senders = Layout.of(model).senders
    none = graph.faithfulness(model, PAIRS, ablated=senders)
    assert none.metric == pytest.approx(graph.corrupted, abs=1e-6)
    assert none.recovered == pytest.approx(0.0, abs=1e-4)
    # Per position, the same two extremes.
    gp = circuit(model, PAIRS, per_position=True, progress=False)
    assert gp.faithfulness(model, PAIRS).metric == pytest.approx(graph.clean, abs=1e-6)
    allp = [f"{s}:P{p}" for s in senders for p in range(gp.n_pos)]
    assert gp.faithfulness(model, PAIRS, ablated=allp).metric == pytest.approx(
        graph.corrupted, abs=1e-6
    )


def test_batch_graph_is_mean_of_per_example_graphs(model, graph):
    singles = []
    for i in range(len(PAIRS)):
        one = PromptPairs(
            PAIRS.clean[i], PAIRS.corrupted[i], PAIRS.answers[i], PAIRS.wrong_answers[i]
        )
        singles.append(circuit(model, one, progress=False).scores)
    torch.testing.assert_close(torch.stack(singles).mean(0), graph.scores, atol=1e-7, rtol=1e-5)


def test_per_position_scores_sum_to_the_graph_and_eap_ig_with_one_step_is_eap(model, graph):
    gp = circuit(model, PAIRS, per_position=True, progress=False)
    assert gp.scores.shape[2] == tokenize(model, PAIRS).n_pos
    torch.testing.assert_close(gp.scores.sum(2, keepdim=True), graph.scores, atol=1e-7, rtol=1e-5)
    assert all(":P" in n.id for n in gp.nodes)
    one = circuit(model, PAIRS, method="eap-ig", steps=1, progress=False)
    torch.testing.assert_close(one.scores, graph.scores)


def test_gqa_receivers_are_per_kv_head_and_their_gradients_are_exact(model):
    """Per-head pre-norm gradients of q (per query head) and k, v (per KV head) sum to the
    gradient at ln1's input: nothing lost or double counted, and GQA k/v are shared."""
    layout, weights = Layout.of(model), all_weights(model)
    tokens = tokenize(model, PAIRS)
    rows = torch.arange(tokens.batch)

    def metric(lg):
        return lg[rows, tokens.answers] - lg[rows, tokens.wrong_answers]

    grads = receiver_grads(model, layout, weights, tokens.clean, lambda logits: metric)
    torch.manual_seed(0)
    delta = torch.randn(tokens.batch, tokens.n_pos, int(model.cfg.d_model)) * 1e-3
    with torch.no_grad():
        base = metric(final_logits(model, tokens.clean, [])).mean()
        moved = metric(
            final_logits(model, tokens.clean, [("blocks.1.ln1.hook_in", lambda x, hook: x + delta)])
        ).mean()
    predicted = (grads[layout.receiver_slice(1, "attn")].sum(0) * delta).sum()
    assert float(predicted) == pytest.approx(float(moved - base), rel=0.05)
    n_kv = layout.n_kv_heads
    assert layout.receiver_slice(1, "k").stop - layout.receiver_slice(1, "k").start == n_kv
    k_edges = [e for e in circuit(model, PAIRS, progress=False).edges if e.input == "k"]
    if n_kv < layout.n_heads:  # llama: KV0 is read by L·H0 and L·H1
        assert {e.targets for e in k_edges if e.target.startswith("L1")} == {
            ("L1H0", "L1H1"),
            ("L1H2", "L1H3"),
        }
        assert all(e.kv_head in (0, 1) for e in k_edges)
    else:
        assert all(e.kv_head is None and e.targets == (e.target,) for e in k_edges)


def test_prune_keeps_top_edges_on_paths_and_faithfulness_grows(model, graph):
    top = graph.prune(top_edges=8)
    assert 0 < len(top.edges) <= 8
    ids = {n.id for n in top.nodes}
    assert {"EMBED", "LOGITS"} <= ids
    for e in top.edges:
        assert e.source in ids and e.target in ids
    # every kept non-terminal node both receives and sends an edge
    for n in ids - {"EMBED", "LOGITS"}:
        assert any(n in e.targets for e in top.edges) and any(e.source == n for e in top.edges)
    cut = sorted(abs(e.weight) for e in graph.edges)[-5]
    thr = graph.prune(min_weight=cut)
    assert all(abs(e.weight) >= cut for e in thr.edges)
    curve = graph.faithfulness_curve(model, PAIRS, top_edges=[5, 20, 1000])
    # all edges with a nonzero score (an exactly-zero one, e.g. EMBED → a layer-1 query where
    # the prompts don't differ, changes nothing when patched)
    assert curve.n_edges[-1] == sum(e.weight != 0 for e in graph.edges)
    assert curve.recovered[-1] == pytest.approx(1.0, abs=1e-4)
    fig = curve.figure()
    assert list(fig.data[0].x) == curve.n_edges
    # circuits given as nodes and live ablations: one forward each
    by_nodes = top.faithfulness(model, PAIRS, nodes=[n.id for n in top.nodes])
    assert by_nodes.n_edges >= len(top.edges)
    head = next(n.id for n in top.nodes if n.type == "head")
    knocked = top.faithfulness(model, PAIRS, ablated=[head])
    assert knocked.n_edges < len(top.edges)
    mean = top.faithfulness(model, PAIRS, ablation="mean")
    assert mean.ablation == "mean" and np.isfinite(mean.recovered)


def test_circuits_per_pass_follow_the_memory_budget(model, graph):
    """A pass holds at most ``memory_budget`` bytes of sender deviations (a 70B model's
    circuit alone is GBs), and how circuits are chunked never changes their metrics."""
    from circuitviz.engine.graph._faithfulness import context

    ctx = context(graph, model, PAIRS)
    wide = graph.faithfulness_curve(model, PAIRS, top_edges=[2, 5, 10, 20, 1000]).recovered
    assert ctx.circuits_per_pass == 64 // PAIRS.clean.__len__()
    senders, _, n_pos, d_model = ctx.ref.shape
    ctx.memory_budget = 2.5 * senders * len(PAIRS.clean) * n_pos * d_model * 4
    assert ctx.circuits_per_pass == 2
    ctx.memory_budget = 1.0
    assert ctx.circuits_per_pass == 1  # never fewer than one circuit a pass
    narrow = graph.faithfulness_curve(model, PAIRS, top_edges=[2, 5, 10, 20, 1000]).recovered
    ctx.memory_budget = 2**30
    assert narrow == pytest.approx(wide, abs=1e-4)  # batch shape: float rounding only


def test_per_position_pruning_keeps_every_node_its_edges_name(model):
    """A path can enter a head through its k/v input at position s and leave it at a later
    position. The head's node at s is kept for that edge, so a view draws every kept edge."""
    from circuitviz.views import CircuitView

    gp = circuit(model, PAIRS, per_position=True, progress=False)
    entered_by_kv_only = 0
    for n in (10, 40, 150, 600):
        top = gp.prune(top_edges=n)
        ids = {node.id for node in top.nodes}
        edges = top.edges
        for e in edges:
            assert e.source in ids and set(e.targets) <= ids, e
        senders = {e.source for e in edges}
        entered_by_kv_only += sum(
            1 for e in edges if e.input in ("k", "v") and not set(e.targets) & senders
        )
        assert len(edges) <= n
        view = CircuitView(graph=top, state={"top_edges": len(edges), "top_nodes": 10**6})
        # a k/v edge of a GQA group is drawn into each kept head of the group
        assert len(view.shown_graph()["edges"]) == sum(len(e.targets) for e in edges)
    assert entered_by_kv_only > 0  # the case this test is about did arise


def test_json_round_trip_and_schema(model, graph):
    pruned = circuit(model, PAIRS, per_position=True, progress=False).prune(top_edges=12)
    for g in (graph, pruned):
        text = g.to_json()
        data = json.loads(text)
        assert data["schema"] == "circuitviz.graph/1"
        assert data["model"] == f"tiny-{model.cfg.model_name.split('-')[1]}"
        assert data["prompts"] == PAIRS.to_dict()
        assert set(data["nodes"][0]) == {"id", "type", "layer", "head", "pos", "label", "score"}
        assert {"source", "target", "input", "weight"} <= set(data["edges"][0])
        back = Graph.from_json(text)
        assert back.to_json() == text
        assert [e.to_dict() for e in back.edges] == data["edges"]
    # a round-tripped graph still evaluates on its model
    back = Graph.from_json(pruned.to_json())
    assert back.faithfulness(model, PAIRS).recovered == pytest.approx(
        pruned.faithfulness(model, PAIRS).recovered, abs=1e-5
    )


def test_bad_input_is_a_clear_error_and_leaves_no_hooks(model, graph):
    tokens = tokenize(model, PAIRS)
    with torch.inference_mode():
        before = model(tokens.clean)
    other = circuitviz.tiny_model("gpt2" if graph.n_kv_heads != graph.n_heads else "llama")
    cases = [
        (lambda: circuit(model, PAIRS, method="eap-ig", steps=0), "steps"),
        (lambda: circuit(model, PAIRS, method="eap", steps=3), "eap-ig"),
        (lambda: circuit(model, PAIRS, method="acdc"), "method"),
        (lambda: graph.faithfulness(other, PAIRS), "another model"),
        (lambda: graph.faithfulness(model, PromptPairs("t1 t2", "t1 t3", "t4", "t5")), "pairs"),
        (lambda: graph.faithfulness(model, PAIRS, nodes=[]), "empty"),
        (lambda: graph.faithfulness(model, PAIRS, edges=[]), "empty"),
        (lambda: graph.faithfulness(model, PAIRS, nodes=["L9H0"]), "not in this model"),
        (lambda: graph.faithfulness(model, PAIRS, ablated=["head3"]), "Unknown component"),
        (lambda: graph.faithfulness(model, PAIRS, ablated=["LOGITS"]), "LOGITS"),
        (lambda: graph.patch_edge(model, PAIRS, ("MLP1", "L0H0", "q")), "runs after"),
        (lambda: graph.faithfulness(model, PAIRS, ablation="zero"), "ablation"),
        (lambda: graph.prune(top_edges=-1), "top_edges"),
    ]
    for call, words in cases:
        with pytest.raises(InputError, match=words):
            call()
        assert not has_hooks(model)

    def broken(logits):  # fails inside the hooked backward pass
        raise RuntimeError("metric failed")

    with pytest.raises(RuntimeError, match="metric failed"):
        circuit(model, PAIRS, metric=broken, progress=False)
    assert not has_hooks(model)
    with torch.inference_mode():
        assert torch.equal(model(tokens.clean), before)


def test_cost_is_a_fixed_number_of_passes(model):
    """EAP: two forwards (corrupted, clean with gradient) and one backward, however many
    edges; EAP-IG: one more forward and backward per extra step."""
    from circuitviz.engine import hooks

    calls = []

    def count(x, hook):
        calls.append(x.requires_grad)

    for method, steps, passes in (("eap", None, 2), ("eap-ig", 4, 5)):
        calls.clear()
        with hooks(model, [("ln_final.hook_in", count)]):
            circuit(model, PAIRS, method=method, steps=steps, progress=False)
        assert len(calls) == passes
        assert sum(calls) == passes - 1  # every pass but the corrupted one is differentiated


def test_a_demo_sized_graph_lists_and_round_trips_its_70k_edges():
    """The demo model's shape (30 layers, 9 query heads on 3 KV heads) without the model:
    every valid edge listed once, largest |weight| first, and JSON that round-trips exactly,
    for the whole graph, a pruned one and a per-position one. (Listing used to look every
    target up in a list and take ~1 min; now about a second.)"""
    layout = Layout(30, 9, 3)
    gen = torch.Generator().manual_seed(0)

    def build(n_pos: int) -> Graph:
        scores = torch.randn(len(layout.senders), len(layout.receivers), n_pos, generator=gen)
        scores = scores.round(decimals=1) * layout.valid[:, :, None]  # ties in |weight|
        return Graph.build(
            layout=layout,
            scores=scores,
            model="synthetic",
            prompts=PAIRS.to_dict(),
            tokens=[f"t{i}" for i in range(n_pos)],
            method="eap",
            metric="logit_diff",
            per_position=n_pos > 1,
            clean=3.0,
            corrupted=-1.0,
        )

    graph = build(1)
    n_valid = int(layout.valid.sum())
    assert n_valid == 70651
    edges = graph.edges
    assert len(edges) == n_valid == len({(e.source, e.target, e.input) for e in edges})
    weights = [abs(e.weight) for e in edges]
    assert weights == sorted(weights, reverse=True)
    index = [graph.edge_index(e) for e in edges]
    assert all(
        index[i] < index[i + 1] for i in range(len(edges) - 1) if weights[i] == weights[i + 1]
    )  # ties in (sender, receiver) order: deterministic
    assert all(e.weight == float(graph.scores[i]) for e, i in zip(edges, index, strict=True))
    # GQA: one k and one v receiver per KV head, shared by its 3 query heads
    into = {(e.input, e.kv_head, e.targets) for e in edges if e.source == "EMBED"}
    assert ("k", 2, ("L29H6", "L29H7", "L29H8")) in into
    assert ("q", None, ("L29H7",)) in into
    assert len(graph.nodes) == len(layout.nodes) == 302

    pruned = graph.prune(top_edges=2000)
    per_pos = build(4).prune(top_edges=5000)
    for g in (graph, pruned, per_pos):
        text = g.to_json()
        back = Graph.from_json(text)
        assert back.to_json() == text
        assert torch.equal(back.kept, g.kept) and torch.equal(back.node_mask, g.node_mask)
        assert torch.equal(back.scores[back.kept], g.scores[g.kept])
    # pruning can drop heads of a GQA group: shared k/v edges then list only the kept ones
    data = json.loads(pruned.to_json())
    kept_ids = {n["id"] for n in data["nodes"]}
    assert all(set(e.get("targets", [e["target"]])) <= kept_ids for e in data["edges"])
    assert any(e["input"] == "k" and len(e["targets"]) < 3 for e in data["edges"])
    data = json.loads(per_pos.to_json())
    assert all(":P" in e["source"] and ":P" in e["target"] for e in data["edges"])
