"""The IOI attribution graph on the demo model (SmolLM2-135M: 30 layers, 9 query heads on
3 KV heads): GQA receivers, exact extremes and a faithful circuit. ~5 s on a 2-core CPU once
the model is loaded (listing its 70,651 edges took ~40 s before Graph.edges was vectorised)."""

from __future__ import annotations

import pytest

import circuitviz
from circuitviz.engine import has_hooks
from circuitviz.engine.graph import Graph
from circuitviz.tasks import ioi

pytestmark = pytest.mark.demo


def test_ioi_graph_on_demo_model(demo_model):
    pairs = ioi(demo_model, n=4, seed=0)
    graph = circuitviz.circuit(demo_model, pairs, progress=False)
    assert graph.clean > 2 and graph.corrupted < 0
    assert len(graph.nodes) == 1 + 30 * 10 + 1
    # q per query head, k and v per KV head (3 groups of 3), the MLP: 9 + 3 + 3 + 1 receivers
    from_embed = [e for e in graph.edges if e.source == "EMBED" and e.target.startswith("L5H")]
    assert sorted({(e.input, e.kv_head) for e in from_embed if e.input != "q"}) == [
        ("k", 0),
        ("k", 1),
        ("k", 2),
        ("v", 0),
        ("v", 1),
        ("v", 2),
    ]
    assert {e.targets for e in from_embed if e.input == "k"} == {
        ("L5H0", "L5H1", "L5H2"),
        ("L5H3", "L5H4", "L5H5"),
        ("L5H6", "L5H7", "L5H8"),
    }
    curve = graph.faithfulness_curve(demo_model, pairs, top_edges=[300, 3000])
    assert curve.recovered[1] > 0.6
    assert curve.recovered[1] > curve.recovered[0]
    pruned = graph.prune(top_edges=300)
    assert Graph.from_json(pruned.to_json()).to_json() == pruned.to_json()
    assert not has_hooks(demo_model)
