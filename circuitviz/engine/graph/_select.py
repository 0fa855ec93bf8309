"""Which part of an attribution graph to show: one rule for ``Graph.prune``, ``CircuitView``,
its static figure, ``faithfulness_curve`` and the CLI.

The words mean the same everywhere:

- ``top_edges``: at most this many **edges** in the result, the strongest by ``|weight|``
  that fit once everything off an EMBED → LOGITS path is dropped (as many as fit);
- ``top_nodes``: at most this many **head/MLP nodes**, the strongest by ``|score|``
  (embeddings and logits are not counted);
- ``min_weight``: an **absolute** cut, ``|weight| ≥ min_weight``;
- ``min_rel_weight``: a **relative** cut, ``|weight| ≥ min_rel_weight × the strongest
  |weight|`` among the edges the filters let through (0–1);
- ``inputs``: keep only edges into these inputs (``"q"``, ``"k"``, ``"v"``, ``"mlp"``,
  ``"logits"``, and in feature graphs ``"feature"`` and ``"error"``: into an SAE latent or
  error node); ``sign``: ``"positive"``, ``"negative"`` or ``"both"``;
- ``pinned``: node ids always in the result, each with the strongest path through it (the
  largest cut ``|weight| ≥ τ`` that still puts it on an EMBED → LOGITS path; pins ignore
  the other settings);
- ``rank``: what "strongest" means for ``top_edges`` and ``top_nodes``: ``"abs"`` (default,
  the largest ``|weight|`` / ``|score|``) or ``"signed"`` (the most negative first: a weight
  estimates ``M(patched) − M(clean)``, so these are the edges and nodes whose patching lowers
  the metric most, those carrying the clean behaviour; MIB ranks so for CPR, with scores of
  the opposite sign).

Whatever the settings, every node of the result lies on a path EMBED → … → LOGITS made of
edges of the result, so no node is left dangling.

The rule runs over a :class:`Candidates`: a flat list of edges plus a ``paths`` function. A
``Graph`` provides one with its exact path rule (``_prune.on_paths``, which knows how heads
move information across positions); hand-made graph JSON gets :func:`json_candidates`, the
same rule on its edges as a plain DAG.
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .._components import as_int
from .._pairs import InputError

EDGE_INPUTS = ("q", "k", "v", "mlp", "logits", "feature", "error")
SIGNS = ("both", "positive", "negative")
RANKS = ("abs", "signed")
#: How a deprecated word maps onto the vocabulary above.
DEPRECATED = {"top_n": "top_edges", "threshold": "min_weight"}


class UnreachableNode(InputError):
    """A pinned node that no EMBED→LOGITS path passes through (``.node`` is its id)."""

    def __init__(self, node: str) -> None:
        super().__init__(
            f"Can't show {node!r}: no EMBED→LOGITS path of this graph passes through it (its "
            "edges all have weight 0, or it has none), so it would be left unconnected."
        )
        self.node = node


@dataclass(frozen=True)
class Pruning:
    """Settings of the rule (see the module docstring); ``None`` leaves a limit off."""

    top_edges: int | None = None
    top_nodes: int | None = None
    min_weight: float | None = None
    min_rel_weight: float | None = None
    inputs: tuple[str, ...] | None = None
    sign: str = "both"
    pinned: tuple[str, ...] = ()
    rank: str = "abs"

    def __post_init__(self) -> None:
        for name in ("top_edges", "top_nodes"):
            value = getattr(self, name)
            if value is not None and (as_int(value) is None or value < 0):
                raise InputError(f"{name} must be a whole number ≥ 0, got {value!r:.60}.")
        for name, low, high, meaning in (
            ("min_weight", 0.0, math.inf, "an absolute |weight|"),
            ("min_rel_weight", 0.0, 1.0, "a fraction of the strongest edge"),
        ):
            value = getattr(self, name)
            real = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if value is not None and not (real and low <= float(value) <= high):
                span = "≥ 0" if high == math.inf else f"in [{low:g}, {high:g}]"
                raise InputError(f"{name} must be a number {span} ({meaning}), got {value!r:.60}.")
        if self.inputs is not None:
            bad = sorted(set(self.inputs) - set(EDGE_INPUTS))
            if bad:
                raise InputError(f"Unknown edge inputs {bad}: use some of {list(EDGE_INPUTS)}.")
        if self.sign not in SIGNS:
            raise InputError(f"sign must be one of {list(SIGNS)}, got {self.sign!r}.")
        if self.rank not in RANKS:
            raise InputError(f"rank must be one of {list(RANKS)}, got {self.rank!r:.60}.")

    @classmethod
    def of(cls, *, where: str = "prune", **options: Any) -> Pruning:
        """Settings from keyword options, mapping the deprecated ``top_n`` (now ``top_edges``)
        and ``threshold`` (now ``min_weight``) with a warning."""
        for old, new in DEPRECATED.items():
            if old in options:
                value = options.pop(old)
                if value is None:
                    continue
                if options.get(new) is not None:
                    raise InputError(f"{where}: give {new}= only ({old}= is its old name).")
                warnings.warn(
                    f"{where}({old}=…) is deprecated: use {new}= ({_MEANING[new]}).",
                    DeprecationWarning,
                    stacklevel=4,
                )
                options[new] = value
        unknown = sorted(set(options) - set(cls.__dataclass_fields__))
        if unknown:
            raise InputError(
                f"{where}: unknown options {unknown}; use {list(cls.__dataclass_fields__)}."
            )
        if options.get("inputs") is not None:
            options["inputs"] = tuple(options["inputs"])
        options["pinned"] = tuple(options.get("pinned") or ())
        return cls(**options)

    @property
    def empty(self) -> bool:
        return self == Pruning(pinned=self.pinned) and not self.pinned


_MEANING = {
    "top_edges": "at most this many edges, all on EMBED→LOGITS paths",
    "min_weight": "an absolute cut on |weight|; min_rel_weight= is relative to the strongest",
}


@dataclass
class Candidates:
    """A graph's edges, flat: what the rule needs to know, whatever the graph's form."""

    weight: np.ndarray  # [E] float64
    input: np.ndarray  # [E] index into ``inputs``
    inputs: list[str]
    src: np.ndarray  # [E] node index
    dst: np.ndarray  # [E] node index of the (first) receiving node; -1 if none listed
    node_ids: list[str]  # [N]
    node_score: np.ndarray  # [N]
    ranked: np.ndarray  # [N] bool: head/MLP nodes (what top_nodes counts)
    io: np.ndarray  # [N] 1 for embeddings, 2 for logits, 0 otherwise
    #: Coarse node groups ignoring positions (a GQA group is one), where the path through a
    #: pin is searched: per node, and of each edge's two ends.
    node_unit: np.ndarray
    src_unit: np.ndarray
    dst_unit: np.ndarray
    #: edge mask [E] -> (edges on EMBED→LOGITS paths [E], nodes on them [N])
    paths: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]
    #: node mask [N] -> edges whose sender and (some) receiving node are in it [E]
    between: Callable[[np.ndarray], np.ndarray]
    #: (edge indices, kept nodes [N]) -> (row into the indices, node) per drawn line: with
    #: grouped-query attention a k/v edge feeds a group of heads, and it is drawn into each
    #: kept head of the group, so that every drawn node is visibly connected.
    drawn_targets: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]
    index: dict[str, int] = field(init=False)

    def __post_init__(self) -> None:
        self.index = {n: i for i, n in enumerate(self.node_ids)}


def select(c: Candidates, rule: Pruning) -> tuple[np.ndarray, np.ndarray]:
    """(edges [E], nodes [N]) the rule keeps: all on EMBED→LOGITS paths of kept edges."""
    size = np.abs(c.weight)
    base = np.isfinite(c.weight) & (size > 0)
    cand = base.copy()
    if rule.inputs is not None:
        wanted = np.array([name in rule.inputs for name in c.inputs] + [False])
        cand &= wanted[c.input]
    if rule.sign != "both":
        cand &= (c.weight > 0) if rule.sign == "positive" else (c.weight < 0)
    if rule.min_weight is not None:
        cand &= size >= float(rule.min_weight)
    if rule.min_rel_weight is not None and cand.any():
        cand &= size >= float(rule.min_rel_weight) * float(size[cand].max())
    signed = rule.rank == "signed"
    if rule.top_nodes is not None:
        raw = np.nan_to_num(c.node_score)
        score = np.where(c.ranked, -raw if signed else np.abs(raw), -np.inf)
        order = np.argsort(-score, kind="stable")[: int(rule.top_nodes)]
        allowed = ~c.ranked
        allowed[order[c.ranked[order]]] = True
        cand &= c.between(allowed)
    if rule.top_edges is not None:
        cand = _strongest_that_fit(c, cand, -c.weight if signed else size, int(rule.top_edges))
    edges, nodes = c.paths(cand)
    missing = [p for p in rule.pinned if not nodes[_pin_index(c, p)]]  # the rest are in
    if missing:
        extra = np.zeros_like(edges)
        for pin in missing:
            extra |= _through(c, base, size, _pin_index(c, pin))
        edges, nodes = c.paths(edges | extra)
    return edges, nodes


def _pin_index(c: Candidates, node_id: str) -> int:
    if node_id not in c.index:
        raise InputError(f"Can't pin {node_id!r}: this graph has no such node.")
    return c.index[node_id]


def _strongest_that_fit(c: Candidates, cand: np.ndarray, key: np.ndarray, n: int) -> np.ndarray:
    """The k strongest candidates (largest ``key``) for the largest k whose on-path part has
    ≤ n edges. The on-path count only grows with k, so k is found by galloping then
    bisection."""
    order = np.flatnonzero(cand)
    order = order[np.argsort(-key[order], kind="stable")]

    def top(k: int) -> np.ndarray:
        out = np.zeros_like(cand)
        out[order[:k]] = True
        return out

    def fits(k: int) -> bool:
        return int(c.paths(top(k))[0].sum()) <= n

    if n == 0 or not len(order):
        return top(0)
    lo, hi = n, n  # fits(n) always holds: paths only drop edges
    while hi < len(order) and fits(min(2 * hi, len(order))):
        lo = hi = min(2 * hi, len(order))
    if hi < len(order):
        hi = min(2 * hi, len(order))  # does not fit
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return top(min(lo, len(order)))


def _through(c: Candidates, base: np.ndarray, size: np.ndarray, node: int) -> np.ndarray:
    """Edges of the widest path (largest weakest |weight|) EMBED → ``node`` → LOGITS, found
    on the coarse unit graph (positions merged), then every edge between consecutive units
    of it; ``paths`` keeps the part that really connects."""
    if not c.paths(base)[1][node]:
        raise UnreachableNode(c.node_ids[node])
    pairs, inverse = np.unique(
        np.stack([c.src_unit[base], c.dst_unit[base]], 1), axis=0, return_inverse=True
    )
    best = np.zeros(len(pairs))
    np.maximum.at(best, inverse.ravel(), size[base])
    a, b = pairs[:, 0], pairs[:, 1]
    n_units = int(max(pairs.max(), c.node_unit.max())) + 1
    sources = np.zeros(n_units, dtype=bool)
    sinks = np.zeros(n_units, dtype=bool)
    sources[c.node_unit[c.io == 1]] = True
    sinks[c.node_unit[c.io == 2]] = True
    up, down = _widest(a, b, best, sources), _widest(b, a, best, sinks)
    chosen = set()
    for frm, to, width, stop in ((a, b, up, sources), (b, a, down, sinks)):
        unit = int(c.node_unit[node])
        while not stop[unit]:  # step to the neighbour with the widest path onward
            into = np.flatnonzero(to == unit)
            j = into[np.argmax(np.minimum(width[frm[into]], best[into]))]
            chosen.add(int(j))
            unit = int(frm[j])
    keep = np.isin(inverse.ravel(), list(chosen))
    out = np.zeros_like(base)
    out[np.flatnonzero(base)[keep]] = True
    return out


def _widest(frm: np.ndarray, to: np.ndarray, width: np.ndarray, start: np.ndarray) -> np.ndarray:
    """Per unit, the largest weakest-link width of a path from a ``start`` unit (relaxed to a
    fixed point; the unit graph is a DAG, so this takes at most its depth in rounds)."""
    best = np.where(start, np.inf, -np.inf)
    while True:
        new = best.copy()
        np.maximum.at(new, to, np.minimum(best[frm], width))
        if (new == best).all():
            return best
        best = new


# ------------------------------------------------------------------------ graph JSON (no Graph)
_TYPE_ORDER = {"embed": 0, "head": 1, "mlp": 2, "logits": 3}


def json_candidates(nodes: Sequence[Mapping[str, Any]], edges: Sequence[Mapping[str, Any]]):
    """Candidates over graph JSON (validated nodes, edges by node id); edges to unknown nodes
    or with non-finite weights are left out. The path rule is plain DAG reachability from the
    ``embed`` nodes to the ``logits`` nodes along the given edges."""
    index = {n["id"]: i for i, n in enumerate(nodes)}
    inputs = list(EDGE_INPUTS)
    src, dst, weight, kind = [], [], [], []
    for e in edges:
        a, b, w = index.get(e.get("source")), index.get(e.get("target")), e.get("weight")
        if a is None or b is None or not isinstance(w, (int, float)) or not np.isfinite(w):
            continue
        name = str(e.get("input", ""))
        if name not in inputs:
            inputs.append(name)
        src.append(a)
        dst.append(b)
        weight.append(float(w))
        kind.append(inputs.index(name))
    types = [str(n.get("type", "head")) for n in nodes]
    src_a, dst_a = np.array(src, dtype=np.int64), np.array(dst, dtype=np.int64)
    is_in = np.array([t == "embed" for t in types])
    is_out = np.array([t == "logits" for t in types])

    def reach(start: np.ndarray, a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> np.ndarray:
        seen = start.copy()
        while True:
            step = seen.copy()
            step[b[mask & seen[a]]] = True
            if (step == seen).all():
                return seen
            seen = step

    def paths(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fwd = reach(is_in, src_a, dst_a, mask)
        bwd = reach(is_out, dst_a, src_a, mask)
        on = mask & fwd[src_a] & bwd[dst_a]
        node_on = np.zeros(len(nodes), dtype=bool)
        node_on[src_a[on]] = node_on[dst_a[on]] = True
        return on, node_on

    def between(allowed: np.ndarray) -> np.ndarray:
        return allowed[src_a] & allowed[dst_a]

    return Candidates(
        weight=np.array(weight, dtype=np.float64),
        input=np.array(kind, dtype=np.int64),
        inputs=inputs,
        src=src_a,
        dst=dst_a,
        node_ids=[n["id"] for n in nodes],
        node_score=np.array(
            [np.nan if n.get("score") is None else float(n["score"]) for n in nodes]
        ),
        ranked=~(is_in | is_out),
        io=is_in + 2 * is_out,
        node_unit=np.arange(len(nodes)),
        src_unit=src_a,
        dst_unit=dst_a,
        paths=paths,
        between=between,
        drawn_targets=lambda idx, _on: (np.arange(len(idx)), dst_a[idx]),
    )


def prune_json(data: Mapping[str, Any], rule: Pruning) -> dict[str, Any]:
    """Graph JSON with only what ``rule`` keeps (the nodes and edges of :func:`select`)."""
    nodes = list(data.get("nodes") or [])
    kept_edges = [
        e
        for e in data.get("edges") or []
        if isinstance(e.get("weight"), (int, float)) and np.isfinite(e["weight"])
    ]
    c = json_candidates(nodes, kept_edges)
    edges, on = select(c, rule)
    by_pair = _edge_lookup(kept_edges)
    names = c.node_ids
    out_edges = [
        by_pair[names[int(c.src[j])], names[int(c.dst[j])], c.inputs[int(c.input[j])]]
        for j in np.flatnonzero(edges)[np.argsort(-np.abs(c.weight[edges]), kind="stable")]
    ]
    return {
        **data,
        "nodes": [n for n, keep in zip(nodes, on, strict=True) if keep],
        "edges": out_edges,
    }


def _edge_lookup(edges: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str, str], Any]:
    return {(e.get("source"), e.get("target"), str(e.get("input", ""))): e for e in edges}


# ------------------------------------------------------------------------------ a Graph
def graph_candidates(graph: Any) -> Candidates:
    """Candidates over a ``Graph``'s kept edges between its listed nodes, with its exact
    path rule (``_prune.on_paths``); a feature graph brings its own (``_feature_paths``)."""
    import torch

    if hasattr(graph, "candidates"):
        return graph.candidates()

    from ._prune import on_paths

    layout = graph.layout
    n_nodes, n_pos = len(layout.nodes), graph.n_pos
    node_at = torch.full((n_nodes, n_pos), -1, dtype=torch.long)
    listed = graph.node_mask.nonzero()
    node_at[listed[:, 0], listed[:, 1]] = torch.arange(len(listed))
    targets = _receiver_targets(layout)  # [R, n_nodes] bool
    first = targets.float().argmax(1)  # [R]
    s, r, p = listed_edges(graph)
    unit = torch.arange(n_nodes)
    for layer in range(layout.n_layers):  # a GQA group is one unit (its k/v are shared)
        h0 = layout.head_sender(layer)
        heads = torch.arange(layout.n_heads)
        unit[h0 + heads] = h0 + heads // layout.group * layout.group
    receivers = layout.receivers
    inputs = list(EDGE_INPUTS)
    input_code = torch.tensor([inputs.index(x.input) for x in receivers])

    shape = graph.kept.shape
    flat = ((s * shape[1] + r) * shape[2] + p).numpy()  # each edge's place in a dense mask
    node_flat = (listed[:, 0] * n_pos + listed[:, 1]).numpy()

    def paths(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dense = np.zeros(graph.kept.numel(), dtype=bool)
        dense[flat[mask]] = True
        kept, on = on_paths(layout, torch.from_numpy(dense).view(shape))
        return kept.numpy().ravel()[flat], on.numpy().ravel()[node_flat]

    def between(allowed: np.ndarray) -> np.ndarray:
        dense = torch.zeros(n_nodes, n_pos, dtype=torch.bool)
        dense[listed[:, 0], listed[:, 1]] = torch.from_numpy(allowed)
        into = (targets.float() @ dense.float()) > 0  # [R, pos]: some reader is allowed
        return (dense[s, p] & into[r, p]).numpy()

    def drawn_targets(idx: np.ndarray, on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        dense = torch.zeros(n_nodes, n_pos, dtype=torch.bool)
        dense[listed[:, 0], listed[:, 1]] = torch.from_numpy(on)
        i = torch.from_numpy(idx)
        rr, pp = r[i], p[i]
        rows, node = (targets[rr] & dense[:, pp].T).nonzero().T  # [k, n_nodes] -> pairs
        return rows.numpy(), node_at[node, pp[rows]].numpy()

    types = [graph._node(layout.nodes[i], j, 0.0).type for i, j in listed.tolist()]
    return Candidates(
        weight=graph.scores[s, r, p].double().numpy(),
        input=input_code[r].numpy(),
        inputs=inputs,
        src=node_at[s, p].numpy(),
        dst=node_at[first[r], p].numpy(),
        node_ids=[n.id for n in graph.nodes],
        node_score=graph.node_scores[listed[:, 0], listed[:, 1]].double().numpy(),
        ranked=np.array([t in ("head", "mlp") for t in types]),
        io=np.array([{"embed": 1, "logits": 2}.get(t, 0) for t in types]),
        node_unit=unit[listed[:, 0]].numpy(),
        src_unit=unit[s].numpy(),
        dst_unit=unit[first[r]].numpy(),
        paths=paths,
        between=between,
        drawn_targets=drawn_targets,
    )


def listed_edges(graph: Any) -> Any:
    """(sender, receiver, pos) of the graph's kept edges between listed nodes (a sender and
    at least one reader in ``node_mask``), row-major."""
    s, r, p = graph.kept.nonzero().T
    readers = _receiver_targets(graph.layout)[r] & graph.node_mask[:, p].T
    ok = graph.node_mask[s, p] & readers.any(1)
    return s[ok], r[ok], p[ok]


def _receiver_targets(layout: Any) -> Any:
    """[receiver, node] bool: which nodes read each receiver (cached on the shared layout)."""
    import torch

    cached = layout.__dict__.get("_receiver_targets")
    if cached is None:
        cached = torch.zeros(len(layout.receivers), len(layout.nodes), dtype=torch.bool)
        for i, rec in enumerate(layout.receivers):
            for t in rec.targets:
                cached[i, layout.node_index[t]] = True
        layout.__dict__["_receiver_targets"] = cached
    return cached
