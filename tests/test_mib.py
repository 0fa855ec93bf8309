"""MIB faithfulness scores (circuitviz.mib_scores): every curve point against a single
``Graph.faithfulness`` call, CPR/CMD against the trapezoid rule, node-level circuits, exact
node scores against edge patching, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitviz
from circuitviz.engine import has_hooks
from circuitviz.engine._pairs import InputError, PromptPairs
from circuitviz.engine.graph import MIB_FRACTIONS, circuit, exact_node_scores, mib_scores
from circuitviz.engine.graph._select import graph_candidates

torch.set_num_threads(1)

PAIRS = PromptPairs(
    clean=["t1 t2 t3 t4 t5 t6", "t7 t8 t9 t10 t11 t6", "t20 t21 t22 t23 t24 t6"],
    corrupted=["t1 t2 t3 t4 t9 t6", "t7 t8 t9 t10 t3 t6", "t20 t21 t22 t23 t30 t6"],
    answers=["t3", "t9", "t22"],
    wrong_answers=["t5", "t4", "t24"],
)
# A finer grid than MIB's for the 2-layer models (MIB's smallest sizes hold no edge there).
GRID = (0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return circuitviz.tiny_model(request.param, n_layers=2)


@pytest.fixture(scope="module")
def graph(model):
    return circuit(model, PAIRS, progress=False)


def logits(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(circuitviz.engine.tokenize(model, PAIRS).clean)


def test_each_edge_point_is_one_graph_faithfulness_call(model, graph):
    """Reference: ``Graph.prune(top_edges=n).faithfulness(model, pairs)`` per point."""
    res = mib_scores(graph, model, PAIRS, fractions=GRID, progress=False)
    total = int(graph.kept.sum())
    assert res.total == res.total_edges == total
    assert res.n_items == [int(x * total) for x in GRID]
    checked = 0
    for n, n_edges, f in zip(res.n_items, res.n_edges, res.faithfulness, strict=True):
        assert n_edges <= n
        if n_edges == 0:  # nothing fits: the empty circuit is the corrupted run
            assert abs(f) <= 1e-4
            continue
        ref = graph.prune(top_edges=n).faithfulness(model, PAIRS)
        assert ref.n_edges == n_edges
        assert abs(ref.recovered - f) <= 1e-4
        checked += 1
    assert checked >= 5
    assert abs(res.faithfulness[-1] - 1.0) <= 1e-4  # every edge: the clean run
    assert res.clean == pytest.approx(graph.clean, abs=1e-4)
    assert res.corrupted == pytest.approx(graph.corrupted, abs=1e-4)


def test_signed_ranking_points_are_signed_prunes(model, graph):
    """``absolute=False``: reference ``Graph.prune(top_edges=n, rank="signed").faithfulness``.
    Each circuit is the on-path part of a signed top-k (most negative first): every edge at
    most as large as its largest one (but not 0) is in it, or off the paths of those edges."""
    res = mib_scores(graph, model, PAIRS, fractions=GRID, absolute=False, progress=False)
    assert not res.absolute and "signed" in repr(res)
    cands = graph_candidates(graph)
    for n, n_edges, f in zip(res.n_items, res.n_edges, res.faithfulness, strict=True):
        if n_edges == 0:
            continue
        pruned = graph.prune(top_edges=n, rank="signed")
        assert abs(pruned.faithfulness(model, PAIRS).recovered - f) <= 1e-4
        largest = max(e.weight for e in pruned.edges)
        stronger = (cands.weight <= largest) & (cands.weight != 0)  # weight 0 never counts
        assert int(cands.paths(stronger)[0].sum()) <= n_edges
    nodes = mib_scores(graph, model, PAIRS, level="node", fractions=GRID, absolute=False)
    for n, f in zip(nodes.n_items, nodes.faithfulness, strict=True):
        pruned = graph.prune(top_nodes=n, rank="signed")
        if pruned.kept.any():
            assert abs(pruned.faithfulness(model, PAIRS).recovered - f) <= 1e-4
    with pytest.raises(InputError, match="rank must be one of"):
        graph.prune(top_edges=3, rank="size")


def test_cpr_and_cmd_are_mib_trapezoid_areas(model, graph):
    """Reference: numpy's trapezoid rule over the fraction axis (MIB: linear axis)."""
    res = mib_scores(graph, model, PAIRS, fractions=GRID, progress=False)
    x, f = np.array(res.fraction), np.array(res.faithfulness)
    trapezoid = getattr(np, "trapezoid", None) or np.trapz
    assert res.cpr == pytest.approx(float(trapezoid(f, x)), abs=1e-9)
    assert res.cmd == pytest.approx(float(trapezoid(np.abs(1 - f), x)), abs=1e-9)
    assert res.fraction == list(GRID)


def test_default_grid_is_mib(model, graph):
    res = mib_scores(graph, model, PAIRS, progress=False)
    assert res.fraction == list(MIB_FRACTIONS) == [
        0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0
    ]  # fmt: skip
    assert abs(res.faithfulness[-1] - 1.0) <= 1e-4
    assert len(res.faithfulness) == 10 and "CPR" in repr(res)


def test_node_level_points_are_top_nodes_circuits(model, graph):
    """Reference: ``Graph.prune(top_nodes=n).faithfulness`` (the graph's node scores)."""
    res = mib_scores(graph, model, PAIRS, level="node", fractions=GRID, progress=False)
    n_ranked = 2 * (graph.n_heads + 1)
    assert res.total == n_ranked
    for n, f in zip(res.n_items, res.faithfulness, strict=True):
        pruned = graph.prune(top_nodes=n)
        if not pruned.kept.any():
            assert abs(f) <= 1e-4
            continue
        assert abs(pruned.faithfulness(model, PAIRS).recovered - f) <= 1e-4
    assert abs(res.faithfulness[-1] - 1.0) <= 1e-4


def test_exact_node_scores_equal_patching_every_outgoing_edge(model, graph):
    """Reference: ``Graph.faithfulness(edges=every edge but the node's outgoing ones)`` —
    patching all of a node's outgoing edges is patching its output."""
    scores = exact_node_scores(model, PAIRS, progress=False)
    assert len(scores) == 2 * (graph.n_heads + 1)
    edges = graph.edges
    for node in ("L0H1", "L1H3", "MLP0", "MLP1"):
        kept = [e for e in edges if e.source != node]
        ref = graph.faithfulness(model, PAIRS, edges=kept)
        assert abs((ref.metric - ref.clean) - scores[node]) <= 1e-4


def test_node_scores_choose_the_circuit(model, graph):
    """With given node scores, the circuit at n nodes is the n strongest by |score|."""
    scores = exact_node_scores(model, PAIRS, progress=False)
    res = mib_scores(
        graph, model, PAIRS, level="node", node_scores=scores, fractions=GRID, progress=False
    )
    strongest = sorted(scores, key=lambda k: -abs(scores[k]))
    for n, f in zip(res.n_items, res.faithfulness, strict=True):
        if n == 0:
            continue
        rescored = circuitviz.engine.graph._mib.scored_graph(graph, scores)
        pruned = rescored.prune(top_nodes=n)
        inner = {x.id for x in pruned.nodes} - {"EMBED", "LOGITS"}
        assert inner <= set(strongest[:n])
        if pruned.kept.any():
            assert abs(pruned.faithfulness(model, PAIRS).recovered - f) <= 1e-4
    heads = circuitviz.patch(model, PAIRS, over="heads", direction="noise", progress=False)
    by_map = mib_scores(graph, model, PAIRS, level="node", node_scores=heads, progress=False)
    assert by_map.total == 2 * graph.n_heads  # MLPs unscored: not counted


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"level": "neuron"}, "Unknown level"),
        ({"fractions": [0.5, 0.2]}, "increasing"),
        ({"fractions": [0.0, 1.0]}, "(0, 1]"),
        ({"fractions": [0.5]}, "at least two"),
        ({"node_scores": {"L0H0": 1.0}}, "level='node'"),
        ({"level": "node", "node_scores": {"L9H0": 1.0}}, "not a head or MLP"),
        ({"level": "node", "node_scores": {"L0H0": float("nan")}}, "finite"),
        ({"level": "node", "node_scores": {}}, "non-empty"),
        ({"ablation": "zero"}, "Unknown ablation"),
        ({"absolute": "yes"}, "absolute must be"),
    ],
)
def test_bad_input_names_the_fix_and_leaves_no_hook(model, graph, options, words):
    before = logits(model)
    with pytest.raises(InputError, match=None) as err:
        mib_scores(graph, model, PAIRS, progress=False, **options)
    assert words in str(err.value)
    assert not has_hooks(model)
    assert torch.equal(before, logits(model))


def test_other_pairs_are_refused(model, graph):
    other = PromptPairs(["t1 t2 t3"], ["t4 t5 t6"], ["t3"], ["t6"])
    with pytest.raises(InputError, match="not the ones the graph was built on"):
        mib_scores(graph, model, other, progress=False)
    assert not has_hooks(model)


@pytest.mark.demo
@pytest.mark.slow
def test_demo_ioi_points_are_single_faithfulness_calls(demo_model):
    """Demo model, 2 IOI pairs, two of MIB's sizes (0.1 % and 1 % of 70,651 edges).
    Reference: ``Graph.prune(top_edges=n).faithfulness``."""
    pairs = circuitviz.tasks.ioi(demo_model, n=2, seed=0)
    graph = circuit(demo_model, pairs, progress=False)
    res = mib_scores(graph, demo_model, pairs, fractions=(0.001, 0.01), progress=False)
    assert res.n_items == [int(0.001 * res.total), int(0.01 * res.total)] == [70, 706]
    for n, f in zip(res.n_items, res.faithfulness, strict=True):
        assert abs(graph.prune(top_edges=n).faithfulness(demo_model, pairs).recovered - f) <= 1e-4
