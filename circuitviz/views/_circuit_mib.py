"""CircuitView's edge panel ("patch this path exactly") and MIB curve, kept apart from the
graph drawing: a mixin of traits, observers and message handlers.

The kernel decides everything: which edge a selection names (``Graph.edge_index``; under
grouped-query attention a k/v edge drawn into one head of a group is its KV head's edge), its
attribution score, its exact value (``Graph.patch_edge``: ``M(edge patched) − M(clean)``, the
quantity the score estimates), and the MIB curve's points and the current circuit's point.
The browser (js/src/circuit_mib.ts) only draws what it is sent.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import traitlets as t

from ..engine import InputError
from ..engine.graph import mib_scores
from ..engine.graph._select import EDGE_INPUTS
from ._base import MAX_TEXT


class CircuitExtras(t.HasTraits):
    """Edge selection with its exact patching value, and the MIB faithfulness curve. Mixed
    into :class:`CircuitView`, whose ``_full`` (the Graph or None), ``_cands``, ``_meta``,
    ``_model``, ``_pairs``, ``graph`` and ``faithfulness`` it reads."""

    selected_edge = t.List(t.Unicode(), default_value=[]).tag(sync=True)
    """The clicked edge as ``[source, target, input]`` (``[]``: none); the page may set it."""

    edge_info = t.Dict().tag(sync=True)
    """What the side panel shows of :attr:`selected_edge` (the kernel's): ``source``,
    ``target``, ``input``, ``kv_head`` (GQA k/v), ``weight`` (the attribution score),
    ``method``, ``can_patch``, and once asked ``exact`` (``Graph.patch_edge``)."""

    mib = t.Dict().tag(sync=True)
    """The MIB curve, once asked (the "MIB curve" button or :meth:`mib_curve`):
    ``fraction``, ``faithfulness``, ``n_edges``, ``cpr``, ``cmd``, ``total``, and
    ``current``: the shown circuit's ``fraction`` of edges and ``faithfulness`` (None until
    it is computed for exactly what is shown)."""

    # -- the edge panel --------------------------------------------------------------------------
    @t.validate("selected_edge")
    def _check_selected_edge(self, proposal: Any) -> list[str]:
        value = list(proposal["value"])
        if not value:
            return []
        if len(value) != 3 or any(len(x) > MAX_TEXT for x in value):
            raise t.TraitError("selected_edge must be [source, target, input] or [].")
        if value[2] not in EDGE_INPUTS:
            raise t.TraitError(f"selected_edge: input must be one of {list(EDGE_INPUTS)}.")
        self._edge_record(value)  # raises for an edge the graph does not have
        return value

    def _edge_record(self, edge: list[str]) -> dict[str, Any]:
        """The panel's facts about one edge; raises TraitError if the graph has no such edge."""
        source, target, kind = edge
        full = getattr(self, "_full", None)
        info: dict[str, Any] = {"source": source, "target": target, "input": kind}
        if full is not None:
            try:
                s, r, p = full.edge_index((source, target, kind))
            except InputError as err:
                raise t.TraitError(f"selected_edge: {err}") from None
            rec = full.layout.receivers[r]
            gqa = full.layout.group > 1 and kind in ("k", "v")
            info["kv_head"] = rec.index if gqa else None
            info["weight"] = float(full.scores[s, r, p])
        else:  # hand-made graph JSON: the edge as listed, by the same candidates the view uses
            c = self._cands
            a, b = c.index.get(source), c.index.get(target)
            hit = np.flatnonzero(
                (c.src == a) & (c.dst == b) & (c.input == c.inputs.index(kind))
                if a is not None and b is not None and kind in c.inputs
                else np.zeros(len(c.src), dtype=bool)
            )
            if not len(hit):
                raise t.TraitError(f"selected_edge: the graph has no edge {source}→{target}.")
            info["kv_head"] = None
            info["weight"] = float(c.weight[hit[0]])
        info["method"] = self._meta.get("method")
        info["metric"] = self._meta.get("metric")
        info["can_patch"] = bool(full is not None and self.can_ablate)
        return info

    @t.observe("selected_edge")
    def _show_edge(self, change: Any) -> None:
        edge = list(change["new"])
        self.edge_info = self._edge_record(edge) if edge else {}

    def patch_selected_edge(self) -> float:
        """Exact ``M(edge patched) − M(clean)`` of :attr:`selected_edge` (``Graph.patch_edge``
        with the graph's metric), also shown in the side panel beside its score."""
        edge = list(self.selected_edge)
        if not edge:
            raise InputError("No edge is selected: click an edge, or set view.selected_edge.")
        info = self._edge_record(edge)
        if not info["can_patch"]:
            raise InputError(
                "Patching an edge needs a circuitviz Graph with model= and pairs= in the kernel."
            )
        cache = self.__dict__.setdefault("_edge_exact", {})
        key = tuple(edge)
        if key not in cache:
            cache[key] = float(self._full.patch_edge(self._model, self._pairs, key))
        if list(self.selected_edge) == edge:
            self.edge_info = {**info, "exact": cache[key]}
        return cache[key]

    def _msg_patch_edge(self, content: dict[str, Any]) -> None:
        self.patch_selected_edge()
        self.send({"type": "patch_edge", "request": content.get("request")})

    # -- the MIB curve ---------------------------------------------------------------------------
    def mib_curve(self, *, progress: bool = False) -> Any:
        """MIB scores of this graph's edges (``circuitviz.mib_scores``, edge level, MIB's
        grid), drawn in the side panel with the shown circuit's point; returns the
        :class:`~circuitviz.engine.graph.MIBScores`."""
        if not self.has_faithfulness:
            raise InputError("The MIB curve needs a circuitviz Graph with model= and pairs=.")
        res = self.__dict__.get("_mib_result")
        if res is None:
            res = mib_scores(self._full, self._model, self._pairs, progress=progress)
            self.__dict__["_mib_result"] = res
        self.mib = {
            "fraction": res.fraction,
            "faithfulness": res.faithfulness,
            "n_edges": res.n_edges,
            "cpr": res.cpr,
            "cmd": res.cmd,
            "total": res.total,
            "method": res.method,
            "current": self._mib_current(),
        }
        return res

    def _msg_mib(self, content: dict[str, Any]) -> None:
        self.mib_curve()
        self.send({"type": "mib", "request": content.get("request")})

    def _mib_current(self) -> dict[str, Any]:
        """The shown circuit's point: its share of the graph's edges, and its faithfulness if
        the last one computed is of exactly the shown nodes (else None: being recomputed)."""
        total = int(self._full.kept.sum()) if self._full is not None else 0
        shown = int(self.graph.get("n_edges", 0)) if self.graph else 0
        f = self.faithfulness or {}
        ids = [n["id"] for n in self.graph.get("nodes", [])] if self.graph else []
        current = f.get("nodes") == ids and f.get("circuit") is not None
        return {
            "fraction": shown / total if total else None,
            "n_edges": shown,
            "faithfulness": float(f["circuit"]) if current else None,
        }

    @t.observe("faithfulness", "graph")
    def _move_mib_point(self, _change: Any) -> None:
        if self.mib:
            self.mib = {**self.mib, "current": self._mib_current()}
