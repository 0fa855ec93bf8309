"""The attribution graph: nodes, scored edges, pruning and JSON (schema circuitviz.graph/1,
documented in docs/graph_schema.md)."""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from .._badges import role_map
from .._columns import Columns
from .._components import as_int, listed
from .._metrics import MetricFn
from .._pairs import InputError, PromptPairs
from . import _faithfulness as _f
from ._layout import Layout, Receiver, shared_layout
from ._schema import check_graph_json

SCHEMA = "circuitviz.graph/1"
_NODE_RE = re.compile(r"^(EMBED|LOGITS|MLP(\d+)|L(\d+)H(\d+))(?::P(\d+))?$")


@dataclass(frozen=True)
class Node:
    id: str  # "L3H5", "MLP7", "EMBED", "LOGITS", with ":P4" per position
    type: str  # "embed" | "head" | "mlp" | "logits"
    layer: int  # -1 for EMBED, n_layers for LOGITS
    head: int | None
    pos: int | None
    label: str
    score: float

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Edge:
    """``source → target`` through ``input`` ("q", "k", "v", "mlp", "logits").

    ``weight`` is the attribution score: ≈ the change of the metric when this edge alone is
    patched with its corrupted value. With grouped-query attention a k/v input is shared by
    a group of query heads: ``targets`` lists them all (``target`` is the first) and
    ``kv_head`` names the KV head; otherwise ``targets == (target,)`` and ``kv_head`` is None.
    """

    source: str
    target: str
    input: str
    weight: float
    targets: tuple[str, ...] = ()
    kv_head: int | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "source": self.source,
            "target": self.target,
            "input": self.input,
            "weight": self.weight,
        }
        if self.kv_head is not None:
            out["kv_head"] = self.kv_head
            out["targets"] = list(self.targets)
        return out


def parse_node(node_id: str, layout: Layout, n_pos: int | None) -> tuple[int, int | None]:
    """Node id -> (node index in ``layout.nodes``, position or None)."""
    m = _NODE_RE.match(str(node_id))
    if m is None:
        raise InputError(
            f"Unknown node id {node_id!r}: use 'EMBED', 'LOGITS', 'MLP<layer>' or "
            "'L<layer>H<head>', with ':P<pos>' on per-position graphs."
        )
    base, pos = m.group(1), m.group(5)
    index = layout.node_index.get(base)
    if index is None:
        raise InputError(
            f"Node {node_id!r} is not in this model ({layout.n_layers} layers, "
            f"{layout.n_heads} heads)."
        )
    if pos is not None:
        if n_pos is None:
            raise InputError(f"Node {node_id!r} has a position but the graph is not per position.")
        if int(pos) >= n_pos:
            raise InputError(f"Node {node_id!r}: the prompts have only {n_pos} positions.")
    return index, None if pos is None else int(pos)


@dataclass(eq=False)
class Graph:
    """Attribution graph of one model on one batch of prompt pairs.

    ``scores [sender, receiver, pos]`` holds every edge's score (``pos`` has size 1 unless
    ``per_position``); ``kept`` marks the edges in this (possibly pruned) graph and
    ``node_mask [node, pos]`` its nodes, in the order of :class:`Layout`.
    """

    model: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    prompts: dict[str, list[str]]
    tokens: list[str]
    method: str
    metric: str
    per_position: bool
    clean: float
    corrupted: float
    scores: torch.Tensor
    kept: torch.Tensor
    node_mask: torch.Tensor
    node_scores: torch.Tensor  # [node, pos]
    steps: int = 1
    # Per-position graphs of mixed-length pairs: each prompt's token per column (else None).
    columns: Columns | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    # construction ------------------------------------------------------------------------
    @classmethod
    def build(cls, *, layout: Layout, scores: torch.Tensor, **info: Any) -> Graph:
        valid = layout.valid[:, :, None].expand_as(scores)
        # A node's score: the summed scores of its outgoing edges, i.e. the attribution-patching
        # estimate of patching its whole output; the logits get their incoming sum.
        out = scores.sum(1)
        into_logits = scores[:, layout.logits_receiver].sum(0, keepdim=True)
        return cls(
            n_layers=layout.n_layers,
            n_heads=layout.n_heads,
            n_kv_heads=layout.n_kv_heads,
            scores=scores,
            kept=valid.clone(),
            node_mask=torch.ones(len(layout.nodes), scores.shape[2], dtype=torch.bool),
            node_scores=torch.cat([out, into_logits]),
            **info,
        )

    @property
    def layout(self) -> Layout:
        # Shared per shape (lru_cache): cheap on every access, and right after replace().
        return shared_layout(self.n_layers, self.n_heads, self.n_kv_heads)

    @property
    def n_pos(self) -> int:
        return self.scores.shape[2]

    def _suffix(self, pos: int) -> str:
        return f":P{pos}" if self.per_position else ""

    # listing -----------------------------------------------------------------------------
    @property
    def nodes(self) -> list[Node]:
        idx = self.node_mask.nonzero()
        scores = self.node_scores[self.node_mask].tolist()  # same (node, pos) order as idx
        names = self.layout.nodes
        return [
            self._node(names[i], p, score)
            for (i, p), score in zip(idx.tolist(), scores, strict=True)
        ]

    def _node(self, base: str, p: int, score: float) -> Node:
        pos = p if self.per_position else None
        label = base if pos is None else f"{base} @ {p}:{self.tokens[p]}"
        if base == "EMBED":
            return Node("EMBED" + self._suffix(p), "embed", -1, None, pos, label, score)
        if base == "LOGITS":
            return Node(
                "LOGITS" + self._suffix(p), "logits", self.n_layers, None, pos, label, score
            )
        if base.startswith("MLP"):
            return Node(base + self._suffix(p), "mlp", int(base[3:]), None, pos, label, score)
        layer, head = map(int, base[1:].split("H"))
        return Node(base + self._suffix(p), "head", layer, head, pos, label, score)

    @property
    def edges(self) -> list[Edge]:
        """Edges of this graph, largest ``|weight|`` first (ties in sender, receiver,
        position order)."""
        idx = self.kept.nonzero()  # row-major: the order of self.scores[self.kept]
        weights = self.scores[self.kept]
        order = weights.abs().argsort(descending=True, stable=True)
        if not len(order):
            return []
        layout = self.layout
        senders, receivers, index = layout.senders, layout.receivers, layout.node_index
        node_mask = self.node_mask.tolist()
        gqa = layout.group > 1
        suffixes = [self._suffix(p) for p in range(self.n_pos)]
        # What an edge shows of its receiver depends only on (receiver, pos): its kept
        # targets (a GQA group may have lost heads in pruning), input and KV head.
        shown: dict[tuple[int, int], tuple[str, str, tuple[str, ...], int | None]] = {}
        out = []
        s_, r_, p_ = idx[order].T.tolist()
        for s, r, p, w in zip(s_, r_, p_, weights[order].tolist(), strict=True):
            rec = shown.get((r, p))
            if rec is None:
                rec = shown[r, p] = self._receiver_shown(receivers[r], p, node_mask, index, gqa)
            sfx = suffixes[p]
            out.append(Edge(senders[s] + sfx, rec[0], rec[1], w, rec[2], rec[3]))
        return out

    def _receiver_shown(
        self, rec: Receiver, p: int, node_mask: list, index: dict[str, int], gqa: bool
    ) -> tuple[str, str, tuple[str, ...], int | None]:
        """(target, input, targets, kv_head) of the edges into ``rec`` at position ``p``."""
        sfx = self._suffix(p)
        targets = tuple(t for t in rec.targets if node_mask[index[t]][p]) or rec.targets
        kv_head = rec.index if gqa and rec.input in ("k", "v") else None
        return targets[0] + sfx, rec.input, tuple(t + sfx for t in targets), kv_head

    def edge_index(self, edge: Edge | Sequence | dict) -> tuple[int, int, int]:
        """(sender, receiver, pos) of an :class:`Edge`, a ``(source, target, input)`` tuple
        or a dict with those keys."""
        if isinstance(edge, Edge):
            source, target, kind = edge.source, edge.target, edge.input
        elif isinstance(edge, dict):
            try:
                source, target, kind = edge["source"], edge["target"], edge["input"]
            except KeyError as e:
                raise InputError(
                    f"An edge dict needs 'source', 'target' and 'input' ({e})."
                ) from None
        else:
            try:
                source, target, kind = edge
            except (TypeError, ValueError):
                raise InputError(
                    f"Can't read edge {edge!r}: give an Edge, a dict or (source, target, input)."
                ) from None
        layout = self.layout
        n_pos = self.n_pos if self.per_position else None
        s, ps = parse_node(source, layout, n_pos)
        t, pt = parse_node(target, layout, n_pos)
        if self.per_position and (ps is None or ps != pt):
            raise InputError(
                f"Edge {source}→{target}: per-position edges join nodes at the same position."
            )
        if s == len(layout.senders):
            raise InputError("LOGITS sends no edges.")
        r = layout.receiver_index.get((layout.nodes[t], kind))
        if r is None:
            raise InputError(f"{layout.nodes[t]} has no input {kind!r} (q, k, v, mlp, logits).")
        if not layout.valid_rows[s][r]:
            raise InputError(f"No edge {source}→{target} ({kind}): {source} runs after it.")
        return s, r, ps or 0

    def score(self, source: str, target: str, input: str) -> float:
        """The score of one edge (pruned or not)."""
        return float(self.scores[self.edge_index((source, target, input))])

    # pruning -----------------------------------------------------------------------------
    def prune(self, **options: Any) -> Graph:
        """A new graph with only what the shared pruning rule keeps (``_select``; the view,
        its figure and the CLI use the same rule and words):

        - ``top_edges``: at most this many edges, the strongest that fit once everything off
          an EMBED → LOGITS path is dropped;
        - ``top_nodes``: at most this many head/MLP nodes, the strongest by ``|score|``;
        - ``min_weight`` (absolute ``|weight|``) / ``min_rel_weight`` (fraction of the
          strongest edge);
        - ``inputs`` (edge inputs kept, e.g. ``("q", "k")``), ``sign`` (``"positive"``,
          ``"negative"``, ``"both"``);
        - ``pinned``: node ids kept with the strongest path through each;
        - ``rank``: ``"abs"`` (default: strongest by ``|weight|``/``|score|``) or
          ``"signed"`` (most negative first: patching them lowers the metric most) for
          ``top_edges`` and ``top_nodes``.

        Every node of the result lies on an EMBED → LOGITS path of its edges. Edges with
        weight exactly 0 never count. Pruning starts from this graph's edges. ``top_n`` and
        ``threshold`` are deprecated names of ``top_edges`` and ``min_weight``."""
        from ._select import Pruning, graph_candidates, select

        rule = Pruning.of(where="prune", **options)
        if rule.empty:
            raise InputError("prune needs top_edges=…, top_nodes=…, min_weight=… or another limit.")
        edges, nodes = select(graph_candidates(self), rule)
        return self.with_selection(edges, nodes)

    def with_selection(self, edges: Any, nodes: Any) -> Graph:
        """This graph restricted to a selection from ``graph_candidates(self)`` (flat edge
        and node masks, as ``_select.select`` returns)."""
        listed = self.node_mask.nonzero()
        s, r, p = self._listed_edges()
        e = torch.as_tensor(edges)
        kept = torch.zeros_like(self.kept)
        kept[s[e], r[e], p[e]] = True
        node_mask = torch.zeros_like(self.node_mask)
        on = listed[torch.as_tensor(nodes)]
        node_mask[on[:, 0], on[:, 1]] = True
        return replace(self, kept=kept, node_mask=node_mask, _cache=self._cache)

    def _listed_edges(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(sender, receiver, pos) of the edges ``graph_candidates`` lists, in its order."""
        from ._select import listed_edges

        return listed_edges(self)

    # serialization -----------------------------------------------------------------------
    def to_dict(self, *, with_roles: Any = None) -> dict[str, Any]:
        """The graph as JSON-ready data (docs/graph_schema.md); ``with_roles``: a
        :class:`~circuitviz.HeadRoles` (or ``{head: [roles]}``) written as ``roles``."""
        roles = role_map(with_roles, n_layers=self.n_layers, n_heads=self.n_heads)
        return {
            "schema": SCHEMA,
            "model": self.model,
            "prompts": self.prompts,
            "method": self.method,
            "metric": self.metric,
            "per_position": self.per_position,
            "steps": self.steps,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "tokens": self.tokens,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": [e.to_dict() for e in self.edges],
            **self._columns_dict(),
        } | ({"roles": roles} if with_roles is not None else {})

    def _columns_dict(self) -> dict[str, Any]:
        return {"columns": self.columns.to_dict()} if self.columns is not None else {}

    def to_json(self, *, with_roles: Any = None, **kwargs: Any) -> str:
        """:meth:`to_dict` as a JSON string (``kwargs`` go to ``json.dumps``)."""
        return json.dumps(self.to_dict(with_roles=with_roles), **kwargs)

    @classmethod
    def from_json(cls, text: str | dict) -> Graph:
        """The Graph of :meth:`to_json`'s output (a string or its dict). Shapes are checked
        against the node list and sane bounds first (:func:`check_graph_json`): a file that
        declares absurd sizes is an :class:`InputError`, not a hung kernel."""
        data = json.loads(text) if isinstance(text, str) else text
        if isinstance(data, dict) and "saes" in data:  # a feature graph (sparse, per position)
            from ._feature_graph import FeatureGraph

            return FeatureGraph.from_json(data)  # type: ignore[return-value]
        check_graph_json(data, whole=True)  # shapes fit the nodes before anything is allocated
        if data.get("schema") != SCHEMA:
            raise InputError(f"Not a {SCHEMA} graph (schema {data.get('schema')!r}).")
        layout = shared_layout(
            data["n_layers"], data["n_heads"], data.get("n_kv_heads", data["n_heads"])
        )
        per_pos = bool(data["per_position"])
        n_pos = len(data["tokens"]) if per_pos else 1
        scores = torch.zeros(len(layout.senders), len(layout.receivers), n_pos)
        kept = torch.zeros_like(scores, dtype=torch.bool)
        node_mask = torch.zeros(len(layout.nodes), n_pos, dtype=torch.bool)
        node_scores = torch.zeros(len(layout.nodes), n_pos)
        g = cls(
            model=data["model"],
            n_layers=layout.n_layers,
            n_heads=layout.n_heads,
            n_kv_heads=layout.n_kv_heads,
            prompts=data["prompts"],
            tokens=list(data["tokens"]),
            method=data["method"],
            metric=data["metric"],
            per_position=per_pos,
            clean=float(data["clean"]),
            corrupted=float(data["corrupted"]),
            scores=scores,
            kept=kept,
            node_mask=node_mask,
            node_scores=node_scores,
            steps=int(data.get("steps", 1)),
            columns=Columns.from_dict(data["columns"]) if data.get("columns") else None,
        )
        # Parse everything first (a later entry for the same node or edge wins), then fill
        # the tensors in one indexed assignment each.
        node_values: dict[tuple[int, int], float] = {}
        for n in data["nodes"]:
            i, p = parse_node(n["id"], layout, n_pos if per_pos else None)
            node_values[i, p or 0] = float(n["score"])
        _fill(node_scores, node_mask, node_values)
        edge_values: dict[tuple[int, int, int], float] = {}
        for e in data["edges"]:
            edge_values[g.edge_index(e)] = float(e["weight"])
        _fill(scores, kept, edge_values)
        return g

    def __repr__(self) -> str:
        return (
            f"Graph({self.model}, {self.method}, metric={self.metric}, "
            f"{int(self.node_mask.sum())} nodes, {int(self.kept.sum())} edges"
            f"{', per position' if self.per_position else ''})"
        )

    # evaluation on the model -------------------------------------------------------------
    def faithfulness(
        self,
        model: TransformerBridge,
        pairs: PromptPairs,
        *,
        nodes: Iterable[str] | None = None,
        edges: Iterable | None = None,
        ablation: str = "corrupted",
        ablated: Iterable[str] = (),
        metric: str | MetricFn | None = None,
    ) -> _f.Faithfulness:
        """Exact faithfulness of a circuit — this graph's edges, or the given ``nodes`` or
        ``edges`` — in one forward pass once the baselines are cached: every edge outside it
        is patched with its corrupted value (or the batch mean of the clean run), and the
        ``ablated`` nodes lose all their outgoing edges too."""
        ctx = _f.context(self, model, pairs, ablation, metric)
        mask = _f.circuit_mask(self, nodes, edges, ablated)
        (value,) = ctx.metrics(model, mask[None])
        return _f.Faithfulness(
            ctx.recovered(value), value, ctx.clean, ctx.reference, int(mask.sum()), ablation
        )

    def faithfulness_curve(
        self,
        model: TransformerBridge,
        pairs: PromptPairs,
        *,
        top_edges: Sequence[int] = (10, 30, 100, 300, 1000),
        ablation: str = "corrupted",
        metric: str | MetricFn | None = None,
        sizes: Sequence[int] | None = None,
    ) -> _f.FaithfulnessCurve:
        """Faithfulness of ``prune(top_edges=n)`` (at most ``n`` edges, all on EMBED→LOGITS
        paths) for each ``n``, batched into as few forward passes as memory allows. The curve
        reports the edges actually kept (``n_edges``, ≤ n). ``sizes`` is the deprecated name
        of ``top_edges``."""
        if sizes is not None:
            warnings.warn(
                "faithfulness_curve(sizes=…) is deprecated: use top_edges= (edge counts).",
                DeprecationWarning,
                stacklevel=2,
            )
            top_edges = sizes
        counts = [as_int(n) for n in listed(top_edges, "top_edges", "[10, 100, 1000]")]
        if not counts or None in counts or min(counts) < 1:  # type: ignore[type-var]
            raise InputError(f"top_edges must be positive edge counts, got {counts}.")
        ctx = _f.context(self, model, pairs, ablation, metric)
        pruned = [self.prune(top_edges=n) for n in counts]
        masks = torch.stack([g.kept if self.per_position else g.kept[:, :, 0] for g in pruned])
        values = ctx.metrics(model, masks)
        return _f.FaithfulnessCurve(
            top_edges=counts,
            n_edges=[int(g.kept.sum()) for g in pruned],
            n_nodes=[int(g.node_mask.sum()) for g in pruned],
            recovered=[ctx.recovered(v) for v in values],
            metric=values,
            clean=ctx.clean,
            corrupted=ctx.reference,
            model=self.model,
            method=self.method,
            ablation=ablation,
        )

    def patch_edges(
        self,
        model: TransformerBridge,
        pairs: PromptPairs,
        edges: Iterable,
        *,
        ablation: str = "corrupted",
        metric: str | MetricFn | None = None,
        progress: bool = True,
    ) -> torch.Tensor:
        """Exact effect ``M(patched) − M(clean)`` of patching each edge alone (the quantity an
        edge's weight estimates), ``[n_edges]``; one forward row per edge and prompt, with
        only one pass's worth of edge masks in memory at a time."""
        edges = listed(edges, "edges", "graph.edges[:10]")
        if not edges:
            raise InputError("patch_edges needs at least one edge, e.g. graph.edges[:10].")
        index = torch.tensor([self.edge_index(e) for e in edges], dtype=torch.long)
        ctx = _f.context(self, model, pairs, ablation, metric)
        full = torch.ones_like(self.kept)

        def masks(start: int, stop: int) -> torch.Tensor:
            m = full[None].repeat(stop - start, 1, 1, 1)
            s, r, p = index[start:stop].T
            m[torch.arange(stop - start), s, r, p] = False
            return m if self.per_position else m[..., 0]

        values = ctx.metrics(model, masks, n=len(index), progress=progress)
        return torch.tensor(values) - ctx.clean

    def patch_edge(
        self,
        model: TransformerBridge,
        pairs: PromptPairs,
        edge: Edge | Sequence | dict,
        *,
        ablation: str = "corrupted",
        metric: str | MetricFn | None = None,
    ) -> float:
        """Exact effect ``M(patched) − M(clean)`` of patching one edge, in one forward pass."""
        return float(
            self.patch_edges(
                model, pairs, [edge], ablation=ablation, metric=metric, progress=False
            )[0]
        )

    # figures -----------------------------------------------------------------------------
    def figure(self, **options: Any):
        """A publication figure of this graph (see :func:`circuitviz.export.graph_figure`:
        ``top_edges=``, ``top_nodes=``, ``min_weight=``, ``min_rel_weight=`` (pruned by
        :meth:`prune`), ``ablated=``, ``selected=``, ``title=`` and style)."""
        from ...export import graph_figure

        return graph_figure(self, **options)

    def save(self, path: str | os.PathLike, **options: Any) -> Path:
        """Write this graph as SVG, PDF, PNG or standalone HTML (by extension); returns the
        path."""
        from ...export import save

        return save(self, path, **options)

    # checks ------------------------------------------------------------------------------
    def node_indices(self, ids: Iterable[str]) -> list[tuple[int, int | None]]:
        n_pos = self.n_pos if self.per_position else None
        return [parse_node(i, self.layout, n_pos) for i in ids]


def _fill(values: torch.Tensor, mask: torch.Tensor, entries: dict[tuple[int, ...], float]) -> None:
    """``values[index] = value`` and ``mask[index] = True`` for every entry."""
    if not entries:
        return
    index = tuple(torch.tensor(list(entries), dtype=torch.long).T)
    values[index] = torch.tensor(list(entries.values()), dtype=values.dtype)
    mask[index] = True
