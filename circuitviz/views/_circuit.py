"""CircuitView: a circuit graph (embeddings, heads, MLPs, logits) with click-to-ablate.

The graph is a ``circuitviz.Graph``, its JSON (dict, string or file path; schema in
docs/graph_schema.md), or — given none — the EAP graph of ``circuitviz.circuit``. The whole
graph stays in the kernel; the browser receives only the shown subgraph (the pruning rule of
``engine/graph/_select.py``): its nodes as JSON, its edges as binary arrays (source/target
node indices, float32 weights).
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import traitlets as t

from ..engine import InputError, PromptPairs, backends
from ..engine._badges import badge_legend, role_map
from ..engine._cells import is_covered
from ..engine._columns import Columns
from ..engine._components import parse_id
from ..engine._sites import SITE_HOOKS
from ..engine.graph import FeatureGraph, Graph, _select, circuit
from ..engine.graph._placement import LAYOUT_FIELDS, graph_layout
from ..engine.graph._schema import GRAPH_META, check_graph_json
from ._base import STATIC, AblationView
from ._circuit_faith import CircuitFaithfulness
from ._circuit_mib import CircuitExtras
from ._clamp import FeatureSteering, collapse
from ._codec import decode, encode
from ._feature_nodes import FeatureNodes
from ._head_preview import HeadPreview

NODE_TYPES = ("embed", "head", "mlp", "logits", "feature", "error")
EDGE_INPUTS = _select.EDGE_INPUTS
#: The search box lists at most this many node ids (the strongest), so that a per-position
#: graph of a long prompt still sends a small message.
MAX_SEARCHABLE = 50_000
#: What ``explore()`` and a new view show: tens of nodes, a circuit a person can read.
DEFAULT_TOP_NODES = 30
DEFAULT_TOP_EDGES = 80
#: Keys of the ``graph`` trait that describe the view, not the graph (left out of
#: :meth:`CircuitView.shown_graph`).
VIEW_ONLY_KEYS = ("nodes", "edges", "totals", "n_edges", "notice", "role_badges", "layout")


def graph_dict(graph: Any) -> tuple[dict[str, Any] | None, Graph | None]:
    """(graph JSON as a dict, or None for a Graph object; the Graph object, if given)."""
    if isinstance(graph, (Graph, FeatureGraph)):
        return None, graph
    if hasattr(graph, "to_json"):
        data = graph.to_json()
        return (json.loads(data) if isinstance(data, str) else dict(data)), None
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
    """Rebuild a Graph from JSON, so that the exact path rule and faithfulness work; None for
    graph JSON that is not a whole ``circuitviz.circuit`` graph (a hand-made one is still
    drawn, pruned by the same rule on its own edges)."""
    try:
        return Graph.from_json(data)
    except (InputError, LookupError, TypeError, ValueError, AttributeError):
        return None


def graph_payload(data: dict[str, Any]) -> dict[str, Any]:
    """Validate graph JSON; returns it normalised: metadata, ``nodes`` as dicts with every
    field, ``edges`` as given (those to unknown nodes or with non-finite weights are dropped
    later by the pruning rule)."""
    check_graph_json(data)
    schema = data.get("schema", "circuitviz.graph/1")
    if not str(schema).startswith("circuitviz.graph/"):
        raise InputError(f"Not a circuitviz graph (schema {schema!r}).")
    raw_nodes = data.get("nodes")
    if not isinstance(raw_nodes, list) or not raw_nodes:
        raise InputError("The graph has no nodes.")
    nodes, seen = [], set()
    for n in raw_nodes:
        if not isinstance(n, Mapping) or not isinstance(n.get("id"), str):
            raise InputError(f"Every graph node needs a string 'id'; got {n!r:.80}.")
        if n["id"] in seen:
            raise InputError(f"Duplicate graph node id {n['id']!r}.")
        seen.add(n["id"])
        nodes.append(node_dict(n))
    edges = data.get("edges") or []
    if not isinstance(edges, list) or not all(isinstance(e, Mapping) for e in edges):
        raise InputError("The graph's 'edges' must be a list of objects.")
    out = {k: data[k] for k in GRAPH_META if k in data}
    if out.get("columns"):  # the notes sent are the kernel's, not a file's
        out["columns"] = Columns.from_dict(out["columns"]).to_dict()
    if "saes" in data:  # a feature graph: rebuilt as one (graph_object)
        out.update({k: data[k] for k in ("saes", "n_kv_heads", "steps") if k in data})
    inner = [n for n in nodes if n["type"] in ("head", "mlp")]
    out.setdefault("n_layers", 1 + max((n["layer"] for n in inner), default=0))
    out.setdefault(
        "n_heads", 1 + max((n["head"] or 0 for n in nodes if n["type"] == "head"), default=0)
    )
    out["nodes"], out["edges"] = nodes, edges
    return out


def node_dict(n: Mapping[str, Any]) -> dict[str, Any]:
    """A graph node with every field the view reads, typed."""
    score = n.get("score")
    finite = isinstance(score, (int, float)) and np.isfinite(score)
    kind = str(n.get("type", "head"))
    return {
        "id": n["id"],
        "type": str(n.get("type", "head")),
        "layer": int(n.get("layer", 0)),
        "head": None if n.get("head") is None else int(n["head"]),
        "pos": None if n.get("pos") is None else int(n["pos"]),
        "label": str(n.get("label", n["id"])),
        "score": float(score) if finite else None,
        "ablates": node_ablates(n["id"], kind),
        **feature_fields(n),
    }


def feature_fields(n: Mapping[str, Any]) -> dict[str, Any]:
    """A feature node's SAE latent index, hook and site (an error node's hook and site), when
    present."""
    out: dict[str, Any] = {}
    if isinstance(n.get("feature"), int) and not isinstance(n.get("feature"), bool):
        out["feature"] = int(n["feature"])
    if isinstance(n.get("hook"), str):
        out["hook"] = n["hook"][:64]
    if n.get("site") in SITE_HOOKS:  # where the layout draws it (engine._sites)
        out["site"] = n["site"]
    return out


def node_ablates(node_id: str, kind: str) -> str | None:
    """What a click on a graph node ablates: its head, MLP, SAE latent or SAE error term, at
    its position on per-position graphs ("L3H5:P4", as a heads_by_pos cell; "L11F1234:P5",
    "L11ERR:P5"); None for embeddings, logits or an id outside the component grammar. The one
    rule: the browser, the figure and faithfulness use it."""
    if kind not in ("head", "mlp", "feature", "error"):
        return None
    try:
        return parse_id(node_id).id
    except InputError:
        return None


def encode_edges(
    src: np.ndarray, dst: np.ndarray, weight: np.ndarray, kind: np.ndarray, inputs: list[str]
) -> dict[str, Any] | None:
    """Edges as binary arrays (node indices into the sent ``nodes``, float32 weights)."""
    if not len(src):
        return None
    idx_dtype = "uint16" if max(int(src.max()), int(dst.max())) < 2**16 else "uint32"
    return {
        "source": encode(src, idx_dtype),
        "target": encode(dst, idx_dtype),
        "weight": encode(weight, "float32"),
        "input": encode(kind, "uint8"),
        "inputs": list(inputs),
    }


def _deprecated_alias(old: str, new: str) -> property:
    """A property that warns and reads/writes the trait ``new``."""

    def get(self: Any) -> Any:
        _renamed(old, new)
        return getattr(self, new)

    def set_(self: Any, value: Any) -> None:
        _renamed(old, new)
        setattr(self, new, value)

    return property(get, set_, doc=f"Deprecated: :attr:`{new}`.")


class CircuitView(
    CircuitFaithfulness, CircuitExtras, FeatureNodes, FeatureSteering, HeadPreview, AblationView
):
    """A circuit graph: one row per layer (embeddings at the bottom, logits on top), heads and
    MLPs across it (and one column band per token when the graph is per position); edge width
    and colour show |weight| and sign.

    The whole graph stays in the kernel. The controls (``top_nodes``, ``top_edges``,
    ``min_rel_weight``, ``edge_inputs``, ``edge_sign``, ``pinned``) pick what is shown with
    the rule of ``Graph.prune`` (every shown node on a shown EMBED → LOGITS path), and only
    that subgraph is sent to the browser, which lays it out and draws it.

    Plain click ablates only that node (click again to clear); shift-click adds or removes it;
    alt-click pins it (a pinned node is shown with the strongest path through it). Clicking an
    edge selects it: the side panel shows its score and patches it exactly on request
    (:meth:`patch_selected_edge`); :meth:`mib_curve` adds MIB's faithfulness curve with the
    shown circuit's point (``_circuit_mib.py``).

    A feature graph (``circuit(..., saes=...)``) also draws SAE latents (diamonds) and error
    nodes (triangles); hovering a latent shows its card (``feature_card``), and a click
    ablates that latent, or that error term (``"L11ERR:P5"``), at that position with
    ``saes=`` (default: the SAEs the graph was built with). Its faithfulness panel adds the
    circuit with every error node ablated, and completeness both ways.

    ``max_edges``: a ``Graph`` with more edges is first pruned to ``top_edges=max_edges``
    (``None``: keep all; the browser never receives more than the shown subgraph anyway).

    Feature graphs (``saes=``): selecting a feature node offers Ablate and Clamp × N (see
    :class:`~circuitviz.views._clamp.FeatureSteering`); feature nodes can be grouped into
    supernodes (``supernodes``), drawn and exported as one node.
    """

    _esm = STATIC / "circuit.js"
    BUNDLE: ClassVar[str] = "circuit"
    STATE_KEYS = (
        "selected",
        "ablated",
        "mode",
        "metric",
        "top_nodes",
        "top_edges",
        "min_rel_weight",
        "edge_inputs",
        "edge_sign",
        "pinned",
        "supernodes",
        "clamp_scale",
        "selected_edge",
    )
    #: Traits the page may write (everything else is the kernel's), each validated below:
    #: the selection and the controls (ablation goes through the "ablate" message).
    FRONTEND_TRAITS: ClassVar[frozenset[str]] = frozenset(STATE_KEYS) - {
        "ablated",
        "mode",
        "metric",
    }

    graph = t.Dict().tag(sync=True)
    """The shown subgraph: metadata, ``nodes`` as JSON, ``edges`` as binary arrays (indices
    into ``nodes``), and ``totals`` (nodes and edges of the whole graph)."""

    searchable = t.List(t.Unicode()).tag(sync=True)
    """Ids of the whole graph's nodes (the strongest :data:`MAX_SEARCHABLE`), for the search
    box: finding one that is not shown pins it."""

    top_nodes = t.Int(DEFAULT_TOP_NODES).tag(sync=True)
    """Show at most this many head/MLP **nodes**, the strongest by |score| (embeddings and
    logits are not counted)."""

    top_edges = t.Int(DEFAULT_TOP_EDGES).tag(sync=True)
    """Show at most this many **edges**, the strongest that lie on EMBED → LOGITS paths."""

    min_rel_weight = t.Float(0.0).tag(sync=True)
    """Hide edges whose |weight| is below this **fraction** of the strongest edge (0–1)."""

    edge_inputs = t.List(t.Unicode(), default_value=list(EDGE_INPUTS)).tag(sync=True)
    """Edge inputs shown: some of ``"q"``, ``"k"``, ``"v"``, ``"mlp"``, ``"logits"``."""

    edge_sign = t.Unicode("both").tag(sync=True)
    """Edges shown by sign: ``"both"``, ``"positive"`` or ``"negative"``."""

    pinned = t.List(t.Unicode()).tag(sync=True)
    """Nodes always shown, each with the strongest path through it."""

    has_faithfulness = t.Bool(False).tag(sync=True)
    """Whether the graph can score its own faithfulness (needs a Graph, model and pairs)."""

    faithfulness = t.Dict().tag(sync=True)
    """``{"circuit": f, "ablated": f, "nodes": [...], "ablated_nodes": [...]}``: faithfulness
    (fraction of the clean−corrupted metric recovered) of the shown circuit (its shown edges),
    and of it with the ablated nodes removed. The view asks for it whenever the shown circuit
    or the ablation set changes (and on its "Faithfulness" button). A feature graph adds
    ``"errors_ablated"`` (the circuit with every error node taken out), ``"complement"`` and
    ``"complement_errors_ablated"`` (everything but the circuit: near 0 = complete), see
    :data:`~circuitviz.views._feature_nodes.ERROR_VARIANTS`."""

    def __init__(
        self,
        model: Any = None,
        pairs: PromptPairs | None = None,
        graph: Any = None,
        *,
        state: Mapping[str, Any] | None = None,
        metric: str = "logit_diff",
        max_edges: int | None = None,
        roles: Any = None,
        saes: Any = None,
        **kwargs: Any,
    ) -> None:
        # roles: a HeadRoles (circuitviz.head_roles) or {head: [roles]}, drawn as badges on
        # the head nodes; default: the graph JSON's own "roles" (Graph.to_json(with_roles=)).
        # The view scores circuits by their faithfulness: refused up front where it can't run.
        backends.require(model, "faithfulness")
        if graph is None:
            if model is None or pairs is None:
                raise InputError("CircuitView needs graph=, or model= and pairs= to build one.")
            graph = circuit(model, pairs, metric=metric, progress=False)
        data, obj = graph_dict(graph)
        if roles is None and data is not None:
            roles = data.get("roles")  # checked with the rest by graph_payload
        if obj is not None and max_edges is not None and int(obj.kept.sum()) > max_edges:
            obj = obj.prune(top_edges=max_edges)
        if data is not None:
            data = graph_payload(data)  # validated before it is rebuilt as a Graph
            obj = graph_object(data)
        self._full = obj
        self._meta, self._nodes, self._cands = self._candidates(obj, data)
        self._role_meta(roles)
        self._shown: tuple[np.ndarray, np.ndarray] | None = None
        self._attention: Any = None  # the clean prompt's patterns, for head previews
        self._selections: dict[_select.Pruning, tuple[np.ndarray, np.ndarray]] = {}
        self._faith_cache: dict[tuple[bytes, tuple[str, ...]], float] = {}
        if self._meta.get("metric") in ("logit_diff", "normalized_logit_diff", "answer_prob", "kl"):
            metric = self._meta["metric"]
        super().__init__(model=model, pairs=pairs, metric=metric, **kwargs)
        self._init_features(obj, saes)
        self._feature_defaults(obj, kwargs)
        order = np.argsort(-np.abs(np.nan_to_num(self._cands.node_score)), kind="stable")
        self.searchable = [self._cands.node_ids[i] for i in order[:MAX_SEARCHABLE]]
        # Scoring circuits (faithfulness) runs where the backend runs it; without it the view
        # still draws, ablates and steers (an nnsight model's clamp panel).
        scores = not backends.is_nnsight(model) or "faithfulness" in backends.PORTED
        self.has_faithfulness = bool(obj is not None and self.can_ablate and scores)
        # a remote model's faithfulness and steer run as jobs off the message loop (_tasks)
        self._task_jobs = backends.remote_jobs(model) if self.can_ablate else None
        self._init_steering(self._saes)  # the SAEs given, else the feature graph's own
        if not self.can_ablate and self._meta.get("clean") is not None:
            self.result = {k: self._meta.get(k) for k in ("metric", "clean", "corrupted")}
        self._apply_state(state)
        self.observe(self._show, names=sorted(self.FRONTEND_TRAITS - {"selected", "clamp_scale"}))
        self._show()
        self._baseline()

    @staticmethod
    def _candidates(
        obj: Graph | None, data: dict[str, Any] | None
    ) -> tuple[dict[str, Any], list[dict[str, Any]], _select.Candidates]:
        if obj is not None:
            cands = _select.graph_candidates(obj)
            nodes = [n.to_dict() for n in obj.nodes]
            meta = _graph_meta(obj)
            if data is not None:  # the JSON's own labels win (a hand-edited graph)
                labels = {n["id"]: n["label"] for n in data["nodes"]}
                for n in nodes:
                    n["label"] = labels.get(n["id"], n["label"])
                meta = {k: data[k] for k in GRAPH_META if k in data} | meta
            return meta, [node_dict(n) for n in nodes], cands
        assert data is not None
        meta = {k: v for k, v in data.items() if k not in ("nodes", "edges")}
        return meta, data["nodes"], _select.json_candidates(data["nodes"], data["edges"])

    def _role_meta(self, roles: Any) -> None:
        """Head roles join the graph's metadata (so the figure and the shown JSON carry
        them); the badges' legend is sent with each shown subgraph."""
        role_of = role_map(
            roles, n_layers=self._meta.get("n_layers"), n_heads=self._meta.get("n_heads")
        )
        self._meta.pop("roles", None)
        if role_of:
            self._meta["roles"] = role_of

    # -- the shown subgraph ----------------------------------------------------------------
    @property
    def pruning(self) -> _select.Pruning:
        """The rule's settings from the controls (``Graph.prune`` words)."""
        return _select.Pruning(
            top_nodes=self.top_nodes,
            top_edges=self.top_edges,
            min_rel_weight=self.min_rel_weight or None,
            inputs=None if set(self.edge_inputs) >= set(EDGE_INPUTS) else tuple(self.edge_inputs),
            sign=self.edge_sign,
            pinned=tuple(self.pinned),
        )

    def _show(self, _change: Any = None) -> None:
        """Recompute the shown subgraph and send it (only it) to the browser."""
        rule = self.pruning
        try:
            if rule not in self._selections:  # going back to a setting costs nothing
                if len(self._selections) > 64:
                    self._selections.clear()
                self._selections[rule] = _select.select(self._cands, rule)
            edges, nodes = self._selections[rule]
        except _select.UnreachableNode as err:  # a pin no path reaches: drop it, say why
            self.error = str(err)
            self.pinned = [p for p in self.pinned if p != err.node]
            return
        self._shown = edges, nodes
        c = self._cands
        keep = np.flatnonzero(nodes)
        new_index = np.full(len(nodes), -1)
        new_index[keep] = np.arange(len(keep))
        idx = np.flatnonzero(edges)
        idx = idx[np.argsort(-np.abs(c.weight[idx]), kind="stable")]  # strongest first
        rows, dst = c.drawn_targets(idx, nodes)
        rows, dst = rows[np.argsort(rows, kind="stable")], dst[np.argsort(rows, kind="stable")]
        lines = idx[rows]
        payload = dict(self._meta)
        payload["nodes"] = [self._nodes[i] for i in keep]
        if "roles" in payload:
            payload["role_badges"] = badge_legend(payload["roles"])
        payload["edges"] = encode_edges(
            new_index[c.src[lines]], new_index[dst], c.weight[lines], c.input[lines], c.inputs
        )
        payload["n_edges"] = int(edges.sum())
        if not len(keep):
            payload["notice"] = (
                "Nothing to show: no EMBED → LOGITS path is left at these settings (a sign or "
                "input filter keeps only paths made entirely of such edges). Show more, or "
                "relax a filter."
            )
        payload["totals"] = {
            "nodes": int(c.ranked.sum()),
            "edges": int((np.isfinite(c.weight) & (c.weight != 0)).sum()),
        }
        # where every node sits is the kernel's rule (graph._placement): the page scales it
        self.graph = graph_layout(collapse(payload, self.supernodes))

    def shown_graph(self) -> dict[str, Any]:
        """What the view draws now, as graph JSON: the nodes and edges the controls select
        (``Graph.prune``'s rule), edges strongest first."""
        g = self.graph
        nodes = g["nodes"]
        edges = []
        if g.get("edges"):
            e = {k: decode(g["edges"][k]) for k in ("source", "target", "weight", "input")}
            inputs = g["edges"]["inputs"]
            for a, b, w, k in zip(e["source"], e["target"], e["weight"], e["input"], strict=True):
                edges.append(
                    {
                        "source": nodes[int(a)]["id"],
                        "target": nodes[int(b)]["id"],
                        "input": inputs[int(k)],
                        "weight": float(w),
                    }
                )
        meta = {k: v for k, v in g.items() if k not in VIEW_ONLY_KEYS}
        # without where the page draws them (the figure lays them out the same way again)
        shown = [{k: v for k, v in n.items() if k not in LAYOUT_FIELDS} for n in nodes]
        return {**meta, "nodes": shown, "edges": edges}

    def shown_circuit(self) -> Graph | FeatureGraph | None:
        """The shown subgraph as a ``Graph`` (None for hand-made graph JSON)."""
        if self._full is None or self._shown is None:
            return None
        return self._full.with_selection(*self._shown)

    def figure(self, **options: Any) -> Any:
        """The shown circuit (:meth:`shown_graph`) as a publication figure, ablated nodes
        crossed out and the selected one ringed (see :func:`circuitviz.export.graph_figure`)."""
        from ..export import graph_figure

        data = self.shown_graph()
        ids = {n["id"] for n in data["nodes"]}
        gone = set(self.ablated)
        defaults = {
            "ablated": [n["id"] for n in data["nodes"] if is_covered(n.get("ablates"), gone)],
            "selected": self.selected if self.selected in ids else None,
        }
        return graph_figure(data, **{**defaults, **options})

    @property
    def node_ids(self) -> list[str]:
        """Ids of every node of the graph (shown or not)."""
        return list(self._cands.node_ids)

    # -- deprecated names ----------------------------------------------------------------------
    top_n = _deprecated_alias("top_n", "top_nodes")
    threshold = _deprecated_alias("threshold", "min_rel_weight")

    def _apply_state(self, state: Mapping[str, Any] | None) -> None:
        if isinstance(state, Mapping):
            state = dict(state)
            for old, new in OLD_STATE_KEYS.items():
                if old in state:
                    _renamed(old, new)
                    state.setdefault(new, state.pop(old))
                    state.pop(old, None)
        super()._apply_state(state)

    # -- validation of what the page may write ---------------------------------------------------
    @t.validate("min_rel_weight")
    def _check_min_rel_weight(self, proposal: Any) -> float:
        value = float(proposal["value"])
        if not np.isfinite(value):
            raise t.TraitError("min_rel_weight must be a number in [0, 1].")
        return min(1.0, max(0.0, value))

    @t.validate("top_nodes", "top_edges")
    def _check_counts(self, proposal: Any) -> int:
        return max(0, int(proposal["value"]))

    @t.validate("edge_inputs")
    def _check_inputs(self, proposal: Any) -> list[str]:
        value = list(proposal["value"])
        bad = sorted(set(value) - set(EDGE_INPUTS))
        if bad:
            raise t.TraitError(f"Unknown edge inputs {bad}: use some of {list(EDGE_INPUTS)}.")
        return value

    @t.validate("edge_sign")
    def _check_sign(self, proposal: Any) -> str:
        if proposal["value"] not in _select.SIGNS:
            raise t.TraitError(f"edge_sign must be one of {list(_select.SIGNS)}.")
        return proposal["value"]

    @t.validate("pinned")
    def _check_pinned(self, proposal: Any) -> list[str]:
        value = list(dict.fromkeys(proposal["value"]))
        known = self._cands.index
        bad = [p for p in value if p not in known]
        if bad:
            raise t.TraitError(f"Can't pin {bad}: not nodes of this graph.")
        return value

    # -- messages ------------------------------------------------------------------------------
    def _msg_hello(self, content: dict[str, Any]) -> None:
        """The page asks whether a kernel answers (a standalone export replays ``live: False``
        from :meth:`static_replies`, and the page then disables the controls)."""
        self.send({"type": "hello", "live": True})

    def static_replies(self) -> list[dict[str, Any]]:
        """Replies a standalone HTML export replays: no kernel, so the controls are off."""
        return [{"match": {"type": "hello"}, "messages": [({"type": "hello", "live": False}, [])]}]


OLD_STATE_KEYS = {"top_n": "top_nodes", "threshold": "min_rel_weight"}


def _renamed(old: str, new: str) -> None:
    warnings.warn(
        f"CircuitView.{old} is deprecated: use {new} ({_MEANINGS[new]}).",
        DeprecationWarning,
        stacklevel=3,
    )


_MEANINGS = {
    "top_nodes": "a count of head/MLP nodes",
    "min_rel_weight": "a fraction of the strongest edge's |weight|",
}


def _graph_meta(graph: Graph | FeatureGraph) -> dict[str, Any]:
    extra = {"saes": graph.saes} if isinstance(graph, FeatureGraph) else {}
    if getattr(graph, "columns", None) is not None:  # mixed-length pairs, per position
        extra["columns"] = graph.columns.to_dict()
    return extra | {
        "model": graph.model,
        "method": graph.method,
        "metric": graph.metric,
        "per_position": graph.per_position,
        "n_layers": graph.n_layers,
        "n_heads": graph.n_heads,
        "tokens": list(graph.tokens),
        "clean": graph.clean,
        "corrupted": graph.corrupted,
        "prompts": graph.prompts,
    }
