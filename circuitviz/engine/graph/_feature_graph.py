"""FeatureGraph: an attribution graph whose nodes include SAE latents and error terms, per
position, with sparse edges (``circuit(model, pairs, saes=...)``; scores in ``_feature_eap``).

It answers to the same words as :class:`~circuitviz.engine.graph.Graph`: ``nodes``, ``edges``,
``prune`` (the one rule of ``_select``, over :meth:`FeatureGraph.candidates`),
``with_selection``, ``faithfulness``, ``to_json``/``from_json``, ``figure``/``save``.

Node ids: ``"L{L}F{i}:P{p}"`` (latent ``i`` of the SAE on ``blocks.{L}.hook_resid_post``,
type ``"feature"``), ``"L{L}ERR:P{p}"`` (that SAE's error term, type ``"error"``);
``"L{L}{site}F{i}:P{p}"`` / ``"L{L}{site}ERR:P{p}"`` at the other sites (``site`` one of
``pre``, ``mid``, ``attn``, ``mlp``, ``tc``: the grammar of ``engine._sites``); and the
per-position component ids of ``Graph`` (``"L3H5:P4"``, ``"MLP7:P4"``, ``"EMBED:P0"``,
``"LOGITS:P9"``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from transformer_lens.model_bridge import TransformerBridge

from .._columns import Columns
from .._components import listed, parse_id
from .._metrics import MetricFn
from .._pairs import InputError, PromptPairs
from .._sites import SITE_PATTERN, site_code
from ..features._sae import SAESet, as_sae_set
from ._feature_eap import INPUTS, TYPES, FeatureScores
from ._feature_sites import SITE_CODES
from ._layout import shared_layout

FEATURE_NODE = re.compile(
    rf"^(?:(EMBED|LOGITS)|MLP(\d+)|L(\d+)H(\d+)|L(\d+)({SITE_PATTERN})?(?:F(\d+)|(ERR))):P(\d+)$"
)


@dataclass(frozen=True)
class FeatureNode:
    """A node of a feature graph. ``feature``/``hook`` are set on feature nodes (``hook``, the
    SAE's ``SAESet`` key, and ``site``, its code in ``engine._sites``, also on error nodes);
    ``head`` on heads."""

    id: str
    type: str  # "embed" | "head" | "mlp" | "logits" | "feature" | "error"
    layer: int
    head: int | None
    pos: int
    label: str
    score: float
    feature: int | None = None
    hook: str | None = None
    site: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("feature", "hook", "site"):
            if out[key] is None:
                del out[key]
        return out


def feature_label(stats: Any, hook: str, layer: int, index: int, site: str = "") -> str:
    """A feature's auto-label from ``SAESet.stats[hook]`` (a ``FeatureStats`` with ``labels``,
    or a dict with ``"labels"``: a list, or a dict keyed by index) when present, else
    ``"L11 F1234"`` (``"L3 attn F12"`` at another site)."""
    entry = stats.get(hook) if isinstance(stats, dict) else None
    labels = getattr(entry, "labels", None)
    if labels is None and isinstance(entry, dict):
        labels = entry.get("labels")
    text = None
    if isinstance(labels, dict):
        text = labels.get(index, labels.get(str(index)))
    elif isinstance(labels, (list, tuple)) and 0 <= index < len(labels):
        text = labels[index]
    return str(text)[:200] if text else f"L{layer} {site + ' ' if site else ''}F{index}"


@dataclass(eq=False)
class FeatureGraph:
    """A feature circuit graph (always per position). The node table and sparse edge arrays
    hold every node and non-zero edge; ``node_mask``/``kept`` mark this (pruned) graph's."""

    model: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    prompts: dict[str, list[str]]
    tokens: list[str]
    method: str
    metric: str
    clean: float
    corrupted: float
    steps: int
    saes: list[dict[str, Any]]  # [{"hook", "d_sae", "name", "site"}], model order
    ids: list[str]
    type: np.ndarray  # [N] index into TYPES
    layer: np.ndarray
    head: np.ndarray  # -1 where none
    pos: np.ndarray
    feature: np.ndarray  # -1 where none
    site: np.ndarray  # index into SITE_CODES on feature and error nodes, -1 elsewhere
    labels: list[str]
    node_scores: np.ndarray  # [N] float64: Σ outgoing edge weights (logits: incoming)
    node_mask: np.ndarray  # [N] bool
    src: np.ndarray  # [E]
    dst: np.ndarray  # [E] (a k/v edge: the first query head of its KV group at that position)
    input: np.ndarray  # [E] index into INPUTS
    weight: np.ndarray  # [E] float32
    kept: np.ndarray  # [E] bool
    n_candidates: int = 0
    #: mixed-length pairs: each prompt's token per column (``engine._columns``); else None
    columns: Columns | None = None
    _cache: dict = field(default_factory=dict, repr=False)

    per_position = True

    # construction ------------------------------------------------------------------------
    @classmethod
    def build(cls, *, scores: FeatureScores, saes: SAESet, **info: Any) -> FeatureGraph:
        n = len(scores.ids)
        node_scores = np.zeros(n)
        np.add.at(node_scores, scores.src, scores.weight.astype(np.float64))
        logits = scores.type == TYPES.index("logits")
        into = np.zeros(n)
        np.add.at(into, scores.dst, scores.weight.astype(np.float64))
        node_scores[logits] = into[logits]
        labels = _labels(scores, saes, info["tokens"], info["n_layers"])
        g = cls(
            saes=[
                {"hook": h, "d_sae": s.d_sae, "name": s.name, "site": site_code(s)}
                for h, s in saes.items()
            ],
            ids=scores.ids,
            type=scores.type,
            layer=scores.layer,
            head=scores.head,
            pos=scores.pos,
            feature=scores.feature,
            site=scores.site,
            labels=labels,
            node_scores=node_scores,
            node_mask=np.ones(n, dtype=bool),
            src=scores.src,
            dst=scores.dst,
            input=scores.input,
            weight=scores.weight,
            kept=np.ones(len(scores.src), dtype=bool),
            n_candidates=scores.n_candidates,
            **info,
        )
        g._cache["saes"] = saes
        return g

    @property
    def layout(self):
        return shared_layout(self.n_layers, self.n_heads, self.n_kv_heads)

    @property
    def n_pos(self) -> int:
        return len(self.tokens)

    def node(self, i: int) -> FeatureNode:
        t = TYPES[int(self.type[i])]
        hook = site = None
        if t in ("feature", "error"):
            site = SITE_CODES[int(self.site[i])]
            hook = self.site_hook(int(self.layer[i]), site)
        return FeatureNode(
            id=self.ids[i],
            type=t,
            layer=int(self.layer[i]),
            head=None if self.head[i] < 0 else int(self.head[i]),
            pos=int(self.pos[i]),
            label=self.labels[i],
            score=float(self.node_scores[i]),
            feature=None if self.feature[i] < 0 else int(self.feature[i]),
            hook=hook,
            site=site,
        )

    def site_hook(self, layer: int, site: str) -> str:
        """The hook (``SAESet`` key) of this graph's SAE at ``site`` of block ``layer``."""
        for s in self.saes:
            if s.get("site", "") == site and s["hook"].startswith(f"blocks.{layer}."):
                return s["hook"]
        raise InputError(f"This graph has no SAE at site {site!r} of block {layer}.")

    @property
    def nodes(self) -> list[FeatureNode]:
        return [self.node(i) for i in np.flatnonzero(self.node_mask)]

    def _listed(self) -> np.ndarray:
        """Indices of the kept edges between listed nodes (what ``candidates`` lists)."""
        ok = self.kept & self.node_mask[self.src]
        kv = self._kv_targets()
        reader = self.node_mask[self.dst] | ((kv >= 0) & self.node_mask[np.maximum(kv, 0)]).any(1)
        return np.flatnonzero(ok & reader)

    def _kv_targets(self) -> np.ndarray:
        """[E, group] node indices of the query heads reading each k/v edge (-1 elsewhere)."""
        cached = self._cache.get("kv_targets")
        if cached is not None and len(cached) == len(self.src):
            return cached
        group = self.n_heads // self.n_kv_heads
        out = np.full((len(self.src), group), -1, dtype=np.int64)
        kv = np.isin(self.input, [INPUTS.index("k"), INPUTS.index("v")])
        if kv.any():
            index = {n: i for i, n in enumerate(self.ids)}
            for j in np.flatnonzero(kv):
                d = int(self.dst[j])
                layer, head, p = int(self.layer[d]), int(self.head[d]), int(self.pos[d])
                first = head - head % group
                for g in range(group):
                    out[j, g] = index.get(f"L{layer}H{first + g}:P{p}", -1)
        self._cache["kv_targets"] = out
        return out

    @property
    def edges(self) -> list[dict[str, Any]]:
        """This graph's edges as dicts (``source``, ``target``, ``input``, ``weight``; k/v
        edges under GQA add ``kv_head`` and ``targets``), largest ``|weight|`` first."""
        idx = self._listed()
        idx = idx[np.argsort(-np.abs(self.weight[idx]), kind="stable")]
        kv = self._kv_targets()
        group = self.n_heads // self.n_kv_heads
        out = []
        for j in idx.tolist():
            e = {
                "source": self.ids[self.src[j]],
                "target": self.ids[self.dst[j]],
                "input": INPUTS[self.input[j]],
                "weight": float(self.weight[j]),
            }
            if group > 1 and kv[j, 0] >= 0:
                targets = [self.ids[t] for t in kv[j] if t >= 0 and self.node_mask[t]]
                e["target"] = targets[0] if targets else e["target"]
                e["kv_head"] = int(self.head[self.dst[j]]) // group
                e["targets"] = targets or [e["target"]]
            out.append(e)
        return out

    # pruning (the one rule of _select) ---------------------------------------------------
    def candidates(self):
        from ._feature_paths import feature_candidates

        return feature_candidates(self)

    def prune(self, **options: Any) -> FeatureGraph:
        """A new graph with only what ``Graph.prune``'s rule keeps (same words; ``top_nodes``
        counts heads, MLPs, features and error nodes)."""
        from ._select import Pruning, select

        rule = Pruning.of(where="prune", **options)
        if rule.empty:
            raise InputError("prune needs top_edges=…, top_nodes=…, min_weight=… or another limit.")
        edges, nodes = select(self.candidates(), rule)
        return self.with_selection(edges, nodes)

    def with_selection(self, edges: Any, nodes: Any) -> FeatureGraph:
        """This graph restricted to a selection from ``candidates()`` (flat masks)."""
        listed_ = self._listed()
        kept = np.zeros_like(self.kept)
        kept[listed_[np.asarray(edges, dtype=bool)]] = True
        node_mask = np.zeros_like(self.node_mask)
        node_mask[np.flatnonzero(self.node_mask)[np.asarray(nodes, dtype=bool)]] = True
        return replace(self, kept=kept, node_mask=node_mask, _cache=self._cache)

    # serialization -----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        from ._graph import SCHEMA

        return {
            "schema": SCHEMA,
            "model": self.model,
            "prompts": self.prompts,
            "method": self.method,
            "metric": self.metric,
            "per_position": True,
            "steps": self.steps,
            "n_layers": self.n_layers,
            "n_heads": self.n_heads,
            "n_kv_heads": self.n_kv_heads,
            "tokens": self.tokens,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "saes": self.saes,
            **({"columns": self.columns.to_dict()} if self.columns is not None else {}),
            "nodes": [n.to_dict() for n in self.nodes],
            "edges": self.edges,
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_json(cls, text: str | dict) -> FeatureGraph:
        """The FeatureGraph of :meth:`to_json`'s output (checked by ``check_graph_json``
        first)."""
        from ._schema import check_graph_json

        data = json.loads(text) if isinstance(text, str) else text
        check_graph_json(data, whole=True)
        saes = data.get("saes")
        if not isinstance(saes, list) or not saes:
            raise InputError("Not a feature graph: 'saes' must list the SAEs it was built with.")
        n_pos = len(data["tokens"])
        ids, rows, labels, scores = [], [], [], []
        index: dict[str, int] = {}
        for n in data["nodes"]:
            m = FEATURE_NODE.match(n["id"])
            if m is None:
                raise InputError(f"Feature graph: unknown node id {n['id']!r:.80}.")
            p = int(m[9])
            if p >= n_pos:
                raise InputError(f"Feature graph: node {n['id']!r} is past the {n_pos} tokens.")
            if m[1] == "EMBED":
                row = ("embed", -1, -1, -1)
            elif m[1] == "LOGITS":
                row = ("logits", data["n_layers"], -1, -1)
            elif m[2] is not None:
                row = ("mlp", int(m[2]), -1, -1)
            elif m[3] is not None:
                row = ("head", int(m[3]), int(m[4]), -1)
            elif m[7] is not None:
                row = ("feature", int(m[5]), -1, int(m[7]))
            else:
                row = ("error", int(m[5]), -1, -1)
            site = -1 if m[5] is None else SITE_CODES.index(m[6] or "")
            index[n["id"]] = len(ids)
            ids.append(n["id"])
            rows.append((TYPES.index(row[0]), row[1], row[2], p, row[3], site))
            labels.append(str(n.get("label", n["id"])))
            scores.append(float(n.get("score") or 0.0))
        table = np.array(rows, dtype=np.int64).reshape(-1, 6)
        have = {(h.split(".")[1], s.get("site", "")) for s in saes if (h := str(s["hook"]))}
        for row, node_id in zip(table, ids, strict=True):
            if row[5] >= 0 and (str(row[1]), SITE_CODES[row[5]]) not in have:
                raise InputError(
                    f"Feature graph: node {node_id!r} belongs to no SAE of 'saes' (they read "
                    f"{[s['hook'] for s in saes]})."
                )
        src, dst, inp, w = [], [], [], []
        for e in data["edges"]:
            a, b = index.get(e["source"]), index.get(e["target"])
            if a is None or b is None or e.get("input") not in INPUTS:
                raise InputError(
                    f"Feature graph: edge {e.get('source')!r:.40}→{e.get('target')!r:.40} "
                    "joins unlisted nodes or has an unknown input."
                )
            src.append(a)
            dst.append(b)
            inp.append(INPUTS.index(e["input"]))
            w.append(float(e["weight"]))
        return cls(
            model=data["model"],
            n_layers=int(data["n_layers"]),
            n_heads=int(data["n_heads"]),
            n_kv_heads=int(data.get("n_kv_heads", data["n_heads"])),
            prompts=data["prompts"],
            tokens=list(data["tokens"]),
            method=data["method"],
            metric=data["metric"],
            clean=float(data["clean"]),
            corrupted=float(data["corrupted"]),
            steps=int(data.get("steps", 1)),
            saes=[dict(s) for s in saes],
            columns=Columns.from_dict(data["columns"]) if data.get("columns") else None,
            ids=ids,
            type=table[:, 0],
            layer=table[:, 1],
            head=table[:, 2],
            pos=table[:, 3],
            feature=table[:, 4],
            site=table[:, 5],
            labels=labels,
            node_scores=np.array(scores, dtype=np.float64),
            node_mask=np.ones(len(ids), dtype=bool),
            src=np.array(src, dtype=np.int64),
            dst=np.array(dst, dtype=np.int64),
            input=np.array(inp, dtype=np.int64),
            weight=np.array(w, dtype=np.float32),
            kept=np.ones(len(src), dtype=bool),
        )

    def __repr__(self) -> str:
        n_feat = int((self.node_mask & (self.type == TYPES.index("feature"))).sum())
        return (
            f"FeatureGraph({self.model}, {self.method}, metric={self.metric}, "
            f"{int(self.node_mask.sum())} nodes ({n_feat} features), "
            f"{len(self._listed())} edges, SAEs at {[s['hook'] for s in self.saes]})"
        )

    # evaluation --------------------------------------------------------------------------
    def faithfulness(
        self,
        model: TransformerBridge,
        pairs: PromptPairs,
        *,
        nodes: Iterable[str] | None = None,
        ablated: Iterable[str] = (),
        ablation: str = "corrupted",
        errors: str = "kept",
        complement: bool = False,
        saes: Any = None,
        metric: str | MetricFn | None = None,
    ) -> Any:
        """Exact faithfulness of this graph's nodes (or ``nodes``) as a circuit, node by node
        (Marks et al. 2024): every head, MLP, SAE latent and error term outside the circuit
        gets its corrupted value (``ablation="corrupted"``) or its clean batch mean
        (``"mean"``) at each position, in one spliced forward pass; latents no node lists
        count as outside. ``errors="kept"`` keeps every error term in the circuit (but those
        in ``ablated``, e.g. ``"L11ERR:P5"``), ``"ablated"`` takes them all out, ``"graph"``
        follows the circuit's error nodes.
        ``ablated``: nodes taken out besides (``"L11F1234"`` at every position, or
        ``":P5"``). ``complement=True`` evaluates everything *but* the circuit: its
        ``recovered`` near 0 means the circuit is complete. ``recovered`` is
        ``(metric − reference) / (clean − reference)``."""
        from .. import backends
        from ._faithfulness import Faithfulness
        from ._feature_faith import FeatureContext

        options = {"nodes": nodes, "ablated": ablated, "ablation": ablation, "errors": errors}
        options |= {"complement": complement, "saes": saes, "metric": metric}
        if (seam := backends.route(model, "feature_faithfulness")) is not None:  # nnsight
            return seam(model, self, pairs, **options)
        saes, inside, removed = self._evaluation(model, pairs, **options)
        ctx = FeatureContext.of(self, model, pairs, saes, ablation, metric)
        value = ctx.metric_of(model, self, saes, inside, errors, complement, removed)
        n_edges = len(self._listed())
        return Faithfulness(
            ctx.recovered(value), value, ctx.clean, ctx.reference, n_edges, ablation
        )

    def _evaluation(
        self, model: Any, pairs: PromptPairs, *, nodes, ablated, ablation, errors, saes, **_: Any
    ) -> tuple[SAESet, np.ndarray, np.ndarray]:
        """:meth:`faithfulness`'s inputs checked, on every backend: its SAEs, the circuit's
        nodes and the nodes ablated by name (out even with ``errors="kept"``)."""
        from ._faithfulness import check_model, check_pairs

        check_model(self, model)  # type: ignore[arg-type]
        check_pairs(self, pairs)  # type: ignore[arg-type]
        if ablation not in ("corrupted", "mean"):
            raise InputError(f"Unknown ablation={ablation!r}: use 'corrupted' or 'mean'.")
        if errors not in ("kept", "ablated", "graph"):
            raise InputError(f"Unknown errors={errors!r}: use 'kept', 'ablated' or 'graph'.")
        saes = self._saes(saes)
        inside = self._circuit_nodes(nodes, ablated)
        removed = ~self._circuit_nodes(self.ids, ablated)
        return saes, inside, removed

    def _saes(self, saes: Any) -> SAESet:
        saes = self._cache.get("saes") if saes is None else as_sae_set(saes)
        if saes is None:
            raise InputError("This feature graph was loaded from JSON: pass its SAEs (saes=…).")
        wanted = {s["hook"]: s["d_sae"] for s in self.saes}
        have = {h: s.d_sae for h, s in saes.items()}
        if any(have.get(h) != d for h, d in wanted.items()):
            raise InputError(
                f"These SAEs ({have}) are not the graph's ({wanted}): pass the SAEs it was "
                "built with."
            )
        return saes

    def _circuit_nodes(self, nodes: Iterable[str] | None, ablated: Iterable[str]) -> np.ndarray:
        """[N] bool: the circuit's nodes, less the ablated ones."""
        index = {n: i for i, n in enumerate(self.ids)}
        if nodes is None:
            inside = self.node_mask.copy()
        else:
            inside = np.zeros(len(self.ids), dtype=bool)
            for n in listed(nodes, "nodes", "['L11F1234:P5', 'L3H5:P5']"):
                if n not in index:
                    raise InputError(f"{n!r} is not a node of this graph.")
                inside[index[n]] = True
        for spec in listed(ablated, "ablated", "['L11F1234:P5']"):
            comp = parse_id(spec)
            hit = self.layer == comp.layer
            hit &= self.type == TYPES.index(comp.kind)
            if comp.head is not None:
                hit &= self.head == comp.head
            if comp.feature is not None:
                hit &= (self.feature == comp.feature) & (self.site == SITE_CODES.index(comp.site))
            if comp.pos is not None:
                if not 0 <= comp.pos < self.n_pos:
                    raise InputError(f"{spec}: the prompts have positions 0–{self.n_pos - 1}.")
                hit &= self.pos == comp.pos
            inside &= ~hit
        return inside

    # figures -----------------------------------------------------------------------------
    def figure(self, **options: Any):
        from ...export import graph_figure

        return graph_figure(self, **options)

    def save(self, path: str | os.PathLike, **options: Any) -> Path:
        from ...export import save

        return save(self, path, **options)


def _labels(scores: FeatureScores, saes: SAESet, tokens: list[str], n_layers: int) -> list[str]:
    out = []
    for i, node_id in enumerate(scores.ids):
        t = TYPES[int(scores.type[i])]
        layer, p = int(scores.layer[i]), int(scores.pos[i])
        site = SITE_CODES[int(scores.site[i])] if t in ("feature", "error") else ""
        hook = next((h for h, s in saes.items() if s.layer == layer and site_code(s) == site), "")
        if t == "feature":
            out.append(feature_label(saes.stats, hook, layer, int(scores.feature[i]), site))
        elif t == "error":
            out.append(f"L{layer} {site + ' ' if site else ''}error")
        else:
            out.append(f"{node_id.split(':')[0]} @ {p}:{tokens[p]}")
    return out
