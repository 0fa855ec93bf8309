"""CircuitView: a circuit graph (embeddings, heads, MLPs, logits) with click-to-ablate.

The graph is a ``circuitviz.Graph``, its JSON (dict, string or file path; schema in
docs/graph_schema.md), or — given none — the EAP graph of ``circuitviz.circuit``.
Nodes travel as JSON (a few hundred); edges as binary arrays (source/target node indices,
float32 weights), since an all-pairs graph has tens of thousands of them.
"""

from __future__ import annotations

import json
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import traitlets as t

from ..engine import InputError, PromptPairs
from ..engine._results import ablation_target
from ..engine.graph import Graph, circuit
from ..engine.graph._schema import GRAPH_META, check_graph_json
from ._base import STATIC, AblationView
from ._codec import decode, encode

NODE_TYPES = ("embed", "head", "mlp", "logits")
#: Nodes travel as JSON: past this many (a per-position graph of a long prompt) only the
#: strongest are sent, keeping every message well under 10 MiB.
MAX_NODES = 20_000
EDGE_INPUTS = ("q", "k", "v", "mlp", "logits")
#: The view draws at most this many edges, the strongest (``prune`` in js/src/layout.ts).
MAX_DRAWN_EDGES = 400


def shrink(graph: Any, max_edges: int | None) -> Any:
    """A Graph with more than ``max_edges`` edges, pruned to its strongest ``max_edges``
    (``Graph.prune``): listing 70k edges is slow, and the view draws at most
    :data:`MAX_DRAWN_EDGES` of them."""
    if isinstance(graph, Graph) and max_edges is not None and int(graph.kept.sum()) > max_edges:
        return graph.prune(top_n=max_edges)
    return graph


def graph_dict(graph: Any, max_edges: int | None = None) -> tuple[dict[str, Any], Any]:
    """Graph JSON as a dict, plus the Graph object when one was given (for faithfulness)."""
    if hasattr(graph, "to_json"):
        graph = shrink(graph, max_edges)
        data = graph.to_json()
        return (json.loads(data) if isinstance(data, str) else dict(data)), graph
    if isinstance(graph, Mapping):
        return dict(graph), None
    if isinstance(graph, Path) or (isinstance(graph, str) and not graph.lstrip().startswith("{")):
        path = Path(graph)
        if not path.is_file():
            raise InputError(f"No graph file at {str(path)!r}: pass a Graph, its JSON or a path.")
        return json.loads(path.read_text(encoding="utf-8")), None
    if isinstance(graph, str):
        return json.loads(graph), None
    raise InputError(
        f"graph must be a circuitviz.Graph, dict, JSON string or path, not {type(graph).__name__}."
    )


def graph_object(data: dict[str, Any]) -> Graph | None:
    """Rebuild a Graph from JSON, so that faithfulness works; None for graph JSON that is not
    a whole ``circuitviz.circuit`` graph (a hand-made or node-only one is still drawn)."""
    try:
        return Graph.from_json(data)
    except (InputError, LookupError, TypeError, ValueError, AttributeError):
        return None


def graph_payload(data: dict[str, Any]) -> dict[str, Any]:
    """Validate graph JSON and turn it into the ``graph`` trait (edges binary)."""
    check_graph_json(data)
    schema = data.get("schema", "circuitviz.graph/1")
    if not str(schema).startswith("circuitviz.graph/"):
        raise InputError(f"Not a circuitviz graph (schema {schema!r}).")
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise InputError("The graph has no nodes.")
    nodes, index = [], {}
    for n in raw_nodes:
        if not isinstance(n, Mapping) or not isinstance(n.get("id"), str):
            raise InputError(f"Every graph node needs a string 'id'; got {n!r:.80}.")
        if n["id"] in index:
            raise InputError(f"Duplicate graph node id {n['id']!r}.")
        score = n.get("score")
        index[n["id"]] = len(nodes)
        nodes.append(
            {
                "id": n["id"],
                "type": str(n.get("type", "head")),
                "layer": int(n.get("layer", 0)),
                "head": None if n.get("head") is None else int(n["head"]),
                "pos": None if n.get("pos") is None else int(n["pos"]),
                "label": str(n.get("label", n["id"])),
                "score": None if score is None or not np.isfinite(score) else float(score),
            }
        )
    if len(nodes) > MAX_NODES:
        io = [n for n in nodes if n["type"] in ("embed", "logits")]
        rest = sorted(
            (n for n in nodes if n["type"] not in ("embed", "logits")),
            key=lambda n: -abs(n["score"] or 0.0),
        )
        nodes = [*io, *rest[: max(0, MAX_NODES - len(io))]]
        warnings.warn(
            f"The graph has {len(raw_nodes)} nodes; showing the {len(nodes)} strongest.",
            stacklevel=3,
        )
        index = {n["id"]: i for i, n in enumerate(nodes)}
    src, dst, weight, kind = [], [], [], []
    inputs = list(EDGE_INPUTS)
    for e in data.get("edges") or []:
        a, b = index.get(e.get("source")), index.get(e.get("target"))
        w = e.get("weight")
        if a is None or b is None or w is None or not np.isfinite(w):
            continue  # an edge to a pruned node, or a NaN weight, has nothing to draw
        inp = str(e.get("input", ""))
        if inp not in inputs:
            inputs.append(inp)
        src.append(a)
        dst.append(b)
        weight.append(float(w))
        kind.append(inputs.index(inp))
    idx_dtype = "uint16" if len(nodes) < 2**16 else "uint32"
    edges = (
        {
            "source": encode(np.array(src), idx_dtype),
            "target": encode(np.array(dst), idx_dtype),
            "weight": encode(np.array(weight), "float32"),
            "input": encode(np.array(kind), "uint8"),
            "inputs": inputs,
        }
        if src
        else None
    )
    out = {k: data[k] for k in GRAPH_META if k in data}
    out.setdefault(
        "n_layers", 1 + max((n["layer"] for n in nodes if n["type"] in ("head", "mlp")), default=0)
    )
    out.setdefault(
        "n_heads", 1 + max((n["head"] or 0 for n in nodes if n["type"] == "head"), default=0)
    )
    out["nodes"], out["edges"] = nodes, edges
    return out


def build_graph(
    model: Any, pairs: PromptPairs, metric: str, max_edges: int | None = None
) -> tuple[dict[str, Any], Graph]:
    """The EAP graph of ``circuitviz.circuit`` on ``pairs``, as JSON and as the Graph."""
    return graph_dict(circuit(model, pairs, metric=metric, progress=False), max_edges)


class CircuitView(AblationView):
    """A circuit graph: layers bottom-up, heads and MLPs per layer (and per token when the
    graph is per position); edge width and colour show weight and sign.

    Plain click ablates only that node (click again to clear); shift-click adds or removes it;
    alt-click pins it (pinned nodes stay visible whatever ``top_n``).

    ``max_edges``: a ``Graph`` with more edges is shown pruned to its strongest ``max_edges``
    (``None``: all); JSON graphs are shown as given.
    """

    _esm = STATIC / "circuit.js"
    BUNDLE: ClassVar[str] = "circuit"
    STATE_KEYS = ("selected", "ablated", "mode", "metric", "top_n", "threshold", "pinned")
    FRONTEND_TRAITS = frozenset({"selected", "pinned", "top_n", "threshold"})

    graph = t.Dict().tag(sync=True)
    """The graph: metadata and ``nodes`` as JSON, ``edges`` as binary arrays."""

    top_n = t.Int(30).tag(sync=True)
    """How many head/MLP nodes to show, by |score| (embeddings and logits always)."""

    threshold = t.Float(0.0).tag(sync=True)
    """Hide edges whose |weight| is below this fraction of the strongest edge (0–1)."""

    pinned = t.List(t.Unicode()).tag(sync=True)
    """Nodes shown whatever ``top_n``."""

    has_faithfulness = t.Bool(False).tag(sync=True)
    """Whether the graph can score its own faithfulness (needs a Graph, model and pairs)."""

    faithfulness = t.Dict().tag(sync=True)
    """``{"circuit": f, "ablated": f, "nodes": [...], "ablated_nodes": [...]}``: faithfulness
    (fraction of the clean−corrupted metric recovered) of the shown circuit, and of it with the
    ablated nodes removed. The view asks for it whenever the shown circuit or the ablation set
    changes (and on its "Faithfulness" button)."""

    def __init__(
        self,
        model: Any = None,
        pairs: PromptPairs | None = None,
        graph: Any = None,
        *,
        state: Mapping[str, Any] | None = None,
        metric: str = "logit_diff",
        max_edges: int | None = 5000,
        **kwargs: Any,
    ) -> None:
        if graph is None:
            if model is None or pairs is None:
                raise InputError("CircuitView needs graph=, or model= and pairs= to build one.")
            data, obj = build_graph(model, pairs, metric, max_edges)
        else:
            data, obj = graph_dict(graph, max_edges)
        payload = graph_payload(data)  # validated before it is rebuilt as a Graph
        if obj is None and model is not None and pairs is not None:  # only for faithfulness
            obj = graph_object(data)
        self._graph = obj
        self._faith_cache: dict[tuple[tuple[str, ...], tuple[str, ...]], float] = {}
        ranked = sum(n["type"] not in ("embed", "logits") for n in payload["nodes"])
        if payload.get("metric") in ("logit_diff", "normalized_logit_diff", "answer_prob", "kl"):
            metric = payload["metric"]
        super().__init__(
            model=model, pairs=pairs, graph=payload, metric=metric, top_n=min(30, ranked), **kwargs
        )
        self.has_faithfulness = bool(
            obj is not None and hasattr(obj, "faithfulness") and self.can_ablate
        )
        if not self.can_ablate and payload.get("clean") is not None:
            self.result = {k: payload.get(k) for k in ("metric", "clean", "corrupted")}
        self._apply_state(state)
        self._baseline()

    def shown_graph(self) -> dict[str, Any]:
        """What the view draws now, as graph JSON: EMBED, LOGITS, the pinned nodes and the
        ``top_n`` head/MLP nodes by |score|; among them, the edges of at least ``threshold`` ×
        the strongest |weight|, the strongest :data:`MAX_DRAWN_EDGES` (``prune`` in
        js/src/layout.ts does the same in the browser)."""
        g = self.graph
        nodes = g["nodes"]
        pinned = set(self.pinned)
        keep, ranked = set(), []
        for i, n in enumerate(nodes):
            io = n["type"] in ("embed", "logits") and (n["pos"] is None or n["score"] != 0)
            if io or n["id"] in pinned:
                keep.add(i)
            else:
                ranked.append(i)
        ranked.sort(key=lambda i: -abs(nodes[i]["score"] or 0.0))  # stable, as in JS
        keep.update(ranked[: max(0, self.top_n)])
        edges = []
        if g.get("edges"):
            e = {k: decode(g["edges"][k]) for k in ("source", "target", "weight", "input")}
            size = np.abs(e["weight"].astype(np.float64))
            cut = float(self.threshold) * float(size.max(initial=0.0))
            for j in np.argsort(-size, kind="stable"):
                if len(edges) == MAX_DRAWN_EDGES:
                    break
                a, b = int(e["source"][j]), int(e["target"][j])
                if size[j] >= cut and size[j] > 0 and a in keep and b in keep:
                    edges.append(
                        {
                            "source": nodes[a]["id"],
                            "target": nodes[b]["id"],
                            "input": g["edges"]["inputs"][int(e["input"][j])],
                            "weight": float(e["weight"][j]),
                        }
                    )
        meta = {k: v for k, v in g.items() if k not in ("nodes", "edges")}
        return {**meta, "nodes": [nodes[i] for i in sorted(keep)], "edges": edges}

    def figure(self, **options: Any) -> Any:
        """The shown circuit (:meth:`shown_graph`) as a publication figure, ablated nodes
        crossed out and the selected one ringed (see :func:`circuitviz.export.graph_figure`)."""
        from ..export import graph_figure

        data = self.shown_graph()
        ids = {n["id"] for n in data["nodes"]}
        gone = set(self.ablated)
        defaults = {
            "ablated": [i for i in ids if ablation_target(i) in gone],
            "selected": self.selected if self.selected in ids else None,
        }
        return graph_figure(data, **{**defaults, **options})

    @property
    def node_ids(self) -> list[str]:
        return [n["id"] for n in self.graph["nodes"]]

    @t.validate("threshold")
    def _check_threshold(self, proposal: Any) -> float:
        return min(1.0, max(0.0, float(proposal["value"])))

    @t.validate("top_n")
    def _check_top_n(self, proposal: Any) -> int:
        return max(0, int(proposal["value"]))

    def _faithfulness_of(self, nodes: list[str], dropped: list[str]) -> float:
        """One forward pass per new (circuit, ablated) pair; the view asks again on every
        change, so answers are remembered (the model and pairs are fixed for this view)."""
        key = (tuple(nodes), tuple(dropped))
        if key not in self._faith_cache:
            value = self._graph.faithfulness(self._model, self._pairs, nodes=nodes, ablated=dropped)
            if len(self._faith_cache) > 256:
                self._faith_cache.clear()
            self._faith_cache[key] = float(value)
        return self._faith_cache[key]

    def _msg_faithfulness(self, content: dict[str, Any]) -> None:
        if not self.has_faithfulness:
            raise InputError(
                "This graph cannot compute faithfulness (needs a Graph with model and pairs)."
            )
        known = set(self.node_ids)
        nodes = content.get("nodes")
        ablated = content.get("ablated", [])
        if not isinstance(nodes, list) or not all(isinstance(n, str) and n in known for n in nodes):
            raise InputError("faithfulness: 'nodes' must be ids of this graph's nodes.")
        if not isinstance(ablated, list) or not all(isinstance(n, str) for n in ablated):
            raise InputError("faithfulness: 'ablated' must be a list of component ids.")
        gone = set(ablated)
        types = {n["id"]: n["type"] for n in self.graph["nodes"]}
        dropped = [
            n for n in nodes if types[n] in ("head", "mlp") and re.sub(r":P\d+$", "", n) in gone
        ]
        circuit = self._faithfulness_of(nodes, [])
        after = self._faithfulness_of(nodes, dropped) if dropped else circuit
        self.faithfulness = {
            "circuit": float(circuit),
            "ablated": float(after),
            "nodes": list(nodes),
            "ablated_nodes": dropped,
        }
        self.send({"type": "faithfulness", "request": content.get("request")})
