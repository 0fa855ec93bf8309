"""Graph JSON with absurd shapes (``n_layers = 10**9``, a node at layer 10^9, positions past
the tokens, 10^7 nodes) is an InputError from ``check_graph_json`` before ``CircuitView``,
``Graph.from_json`` or a figure allocates anything from it; the model is left untouched."""

from __future__ import annotations

import json

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import circuitviz as cv
from circuitviz.engine import InputError, has_hooks
from circuitviz.export import ExportError
from circuitviz.views import CircuitView

try:  # tests/ may or may not be a package; pytest finds the imported fixtures here
    from tests.test_hardening_views import HYPOTHESIS, PROBE, graph, logits_before
except ImportError:
    from test_hardening_views import HYPOTHESIS, PROBE, graph, logits_before

__all__ = ["graph", "logits_before"]  # fixtures, used by name


SMALL = {
    "schema": "circuitviz.graph/1",
    "model": "tiny",
    "method": "eap",
    "metric": "logit_diff",
    "per_position": False,
    "n_layers": 2,
    "n_heads": 4,
    "tokens": ["<bos>", "a", "b"],
    "clean": 1.0,
    "corrupted": -1.0,
    "nodes": [
        {"id": "EMBED", "type": "embed", "layer": -1, "score": None},
        {"id": "L0H1", "type": "head", "layer": 0, "head": 1, "score": 0.4},
        {"id": "MLP1", "type": "mlp", "layer": 1, "score": -0.2},
        {"id": "LOGITS", "type": "logits", "layer": 2, "score": None},
    ],
    "edges": [
        {"source": "EMBED", "target": "L0H1", "input": "q", "weight": 0.3},
        {"source": "L0H1", "target": "MLP1", "input": "mlp", "weight": -0.5},
        {"source": "MLP1", "target": "LOGITS", "input": "logits", "weight": 1.2},
    ],
}


def with_node(**fields) -> dict:
    return {**SMALL, "nodes": [*SMALL["nodes"], {"id": "X", "type": "head", "layer": 0, **fields}]}


ABSURD_GRAPHS = [
    ({**SMALL, "n_layers": 10**9}, "n_layers"),
    ({**SMALL, "n_heads": 10**9}, "n_heads"),
    ({**SMALL, "n_layers": "2"}, "n_layers"),
    ({**SMALL, "n_kv_heads": 3}, "n_kv_heads"),
    ({k: v for k, v in with_node(layer=10**9).items() if k != "n_layers"}, "layer"),
    (with_node(layer=5), "layer"),
    (with_node(layer=-1), "layer"),
    (with_node(head=99), "head"),
    (with_node(pos=3), "pos"),
    (with_node(pos=-1), "pos"),
    (with_node(score="high"), "score"),
    (with_node(type="<script>"), "type"),
    (with_node(label="x" * 10**6), "label"),
    ({**SMALL, "nodes": [*SMALL["nodes"], SMALL["nodes"][1]]}, "Duplicate"),
    ({**SMALL, "nodes": [{"id": "x" * 10**6}]}, "id"),
    ({**SMALL, "nodes": [SMALL["nodes"][1]] * 10**7}, "nodes"),
    ({**SMALL, "edges": [SMALL["edges"][0]] * (10**7 + 1)}, "edges"),
    ({**SMALL, "edges": [{"source": 1, "target": "L0H1", "weight": 1.0}]}, "source"),
    ({**SMALL, "tokens": ["a"] * 10**5}, "tokens"),
    ({**SMALL, "tokens": [1, 2]}, "tokens"),
    ({**SMALL, "per_position": "yes"}, "per_position"),
    ({**SMALL, "metric": "m" * 10**6}, "metric"),
    ({**SMALL, "schema": "evil/1"}, "schema"),
    ({**SMALL, "nodes": []}, "no nodes"),
    ([SMALL], "list"),
]


@pytest.mark.parametrize(
    ("data", "expect"), ABSURD_GRAPHS, ids=[str(i) for i in range(len(ABSURD_GRAPHS))]
)
def test_absurd_graph_json_is_refused_before_allocating(
    data, expect, tiny_llama, tiny_pairs, logits_before
):
    with pytest.raises(InputError, match=expect) as info:
        CircuitView(graph=data, model=tiny_llama, pairs=tiny_pairs)
    assert len(str(info.value)) < 400  # names the field, never echoes it
    with pytest.raises(InputError):
        cv.Graph.from_json(data)
    assert not has_hooks(tiny_llama)
    assert torch.equal(tiny_llama(PROBE), logits_before)


def test_graph_from_json_refuses_shapes_too_big_to_hold(graph):
    data = json.loads(graph.to_json())
    with pytest.raises(InputError, match="edge scores"):
        cv.Graph.from_json({**data, "n_layers": 1024, "n_heads": 1024, "n_kv_heads": 1024})
    with pytest.raises(InputError, match="lacks"):
        cv.Graph.from_json({k: v for k, v in data.items() if k != "prompts"})
    assert cv.Graph.from_json(data).to_json() == graph.to_json()  # a real graph still reads


FIELDS = st.sampled_from(["layer", "head", "pos", "score", "type", "id", "label"])
VALUES = st.one_of(
    st.integers(-(10**12), 10**12), st.none(), st.text(max_size=5), st.floats(), st.booleans()
)


@HYPOTHESIS
@given(
    node=st.integers(0, 3),
    field=FIELDS,
    value=VALUES,
    top=st.sampled_from(["n_layers", "n_heads", "tokens", None]),
    top_value=VALUES,
)
def test_mutated_graph_json_is_drawn_or_refused(node, field, value, top, top_value):
    """Property: graph JSON with any one node field and any one shape field changed either is
    an InputError or becomes a view whose figure builds."""
    data = json.loads(json.dumps(SMALL))
    data["nodes"][node][field] = value
    if top is not None:
        data[top] = top_value
    try:
        view = CircuitView(graph=data)
    except InputError:
        return
    try:
        fig = view.figure()
    except ExportError as err:  # nothing left on an EMBED→LOGITS path: said plainly
        assert "no nodes to draw" in str(err)
        return
    assert fig.data  # drawn, in bounded time and memory
