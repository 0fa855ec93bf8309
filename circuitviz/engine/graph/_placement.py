"""Where a feature graph's SAE nodes sit inside their cell (layer × site × token position):
the one rule, decided here and sent with each node (``slot``, ``tier``) to CircuitView's
layout (``js/src/layout.ts``) and used by the static figure (``export._graph_figure``).

A cell's latents (and supernodes, ranked among them by |score|) come strongest first, its
error node last. They take the head columns ``0 … n_heads - 1`` only (column ``n_heads`` is
the MLP's, which sits a quarter row above the heads, too close to share a column with them).
Up to ``n_heads`` nodes spread evenly over those columns in one row (tier 0); more wrap into
further rows (tiers 1, 2, …, each above the last), ``n_heads`` to a row, so a crowded cell
grows upwards instead of running across the neighbouring tokens' columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from math import ceil
from typing import Any

#: Node types placed by this rule.
CELL_TYPES = ("feature", "error", "supernode")


def cell_columns(n_heads: int) -> int:
    """Columns a cell's SAE nodes may use per row: the head columns (at least one)."""
    return max(1, int(n_heads))


def feature_cells(nodes: Iterable[Mapping[str, Any]], n_heads: int) -> dict[str, tuple[float, int]]:
    """Node id → (slot, tier) for every feature, error and supernode in ``nodes``: the
    column (in head-slot units, possibly fractional when a row is spread) and the row within
    its cell (0 nearest its layer)."""
    groups: dict[tuple[Any, str, Any], list[Mapping[str, Any]]] = {}
    for n in nodes:
        if n.get("type") in CELL_TYPES:
            key = (n.get("layer"), n.get("site") or "", n.get("pos"))
            groups.setdefault(key, []).append(n)
    cols = cell_columns(n_heads)
    out: dict[str, tuple[float, int]] = {}
    for members in groups.values():
        ranked = sorted(
            (n for n in members if n.get("type") != "error"),
            key=lambda n: (-abs(n.get("score") or 0.0), n["id"]),
        )
        ordered = ranked + [n for n in members if n.get("type") == "error"]
        tiers = ceil(len(ordered) / cols)
        for tier in range(tiers):
            row = ordered[tier * cols : (tier + 1) * cols]
            if tiers > 1:  # wrapped rows keep one column per node, aligned under each other
                spots = [float(i) for i in range(len(row))]
            elif len(row) == 1:
                spots = [(cols - 1) / 2]
            else:
                step = (cols - 1) / (len(row) - 1)
                spots = [i * step for i in range(len(row))]
            for n, spot in zip(row, spots, strict=True):
                out[n["id"]] = (round(spot, 4), tier)
    return out


def place_feature_nodes(payload: dict[str, Any]) -> dict[str, Any]:
    """The graph payload with ``slot`` and ``tier`` on each SAE node (copies; the cached
    node dicts stay as they are). Graphs without SAE nodes come back unchanged."""
    nodes = payload.get("nodes") or []
    cells = feature_cells(nodes, int(payload.get("n_heads") or 1))
    if not cells:
        return payload
    placed = [
        {**n, "slot": cells[n["id"]][0], "tier": cells[n["id"]][1]} if n["id"] in cells else n
        for n in nodes
    ]
    return {**payload, "nodes": placed}
