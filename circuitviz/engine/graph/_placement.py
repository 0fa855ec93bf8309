"""Where CircuitView draws each node of the shown circuit, decided here (one rule) and sent
with the nodes: :func:`graph_layout` gives every node ``x`` (head slots) and ``y`` (rows),
which the page only scales to pixels (``js/src/layout.ts``) and the static figure of a
feature graph draws as they are (``export._graph_layout``).

SAE nodes sit in their cell (layer × site × token position; :func:`feature_cells`, sent as
``slot`` and ``tier``). A cell's latents (and supernodes, ranked among them by |score|) come
strongest first, its error node last. They take the head columns ``0 … n_heads - 1`` only
(column ``n_heads`` is the MLP's, which sits a quarter row above the heads, too close to share
a column with them). Up to ``n_heads`` nodes spread evenly over those columns in one row
(tier 0); more wrap into further rows (tiers 1, 2, …, each above the last), ``n_heads`` to a
row, so a crowded cell grows upwards instead of running across the neighbouring tokens'
columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from math import ceil
from typing import Any

#: Node types placed by this rule.
CELL_TYPES = ("feature", "error", "supernode")
#: Node fields this module adds (the page's, not the graph's).
LAYOUT_FIELDS = ("slot", "tier", "x", "y")


def cell_columns(n_heads: int) -> int:
    """Columns a cell's SAE nodes may use per row: the head columns (at least one)."""
    return max(1, int(n_heads))


def feature_cells(nodes: Iterable[Mapping[str, Any]], n_heads: int) -> dict[str, tuple[float, int]]:
    """Node id → (slot, tier) for every feature, error and supernode in ``nodes``: the
    column (in head-slot units, possibly fractional when a row is spread) and the row within
    its cell (0 lowest, each further tier above the last)."""
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


# -- node positions ---------------------------------------------------------------------------
#: How far above its layer's heads (in rows) each SAE site's nodes sit, in forward order:
#: resid_pre below the heads, attn_out just above them, resid_mid, a transcoder where the MLP
#: is, mlp_out, resid_post half a row up (site codes of ``engine._sites``; "" is resid_post).
SITE_LIFT = {"pre": -0.3, "attn": 0.12, "mid": 0.19, "tc": 0.25, "mlp": 0.37, "": 0.5}
#: MLPs sit a quarter row above their layer's heads (they read the heads' output).
MLP_LIFT = 0.25
#: Rows between a crowded cell's tiers.
TIER_ROWS = 0.5
#: Slots between neighbouring token bands.
BAND_GAP = 0.5


def _column(node: Mapping[str, Any], n_heads: int) -> float:
    """Column of a head or MLP inside its layer (heads 0 … H-1, the MLP after them); embed
    and logits in the middle."""
    if node.get("type") == "head":
        return float(node.get("head") or 0)
    return float(n_heads) if node.get("type") == "mlp" else n_heads / 2


def graph_layout(payload: dict[str, Any]) -> dict[str, Any]:
    """The payload with each node's ``x`` (in head slots from the left) and ``y`` (in rows
    from the bottom), and ``layout``: ``width``/``height`` in those units, ``bands`` (per
    position: its centre ``x`` and width ``w``), ``rows`` (per drawn layer: its ``y``) and
    ``min_gap`` (the closest two levels whose nodes can share a column, in rows: how large
    nodes may be drawn without overlapping). CircuitView scales these to pixels; the static
    figure of a feature graph draws them as they are.

    Layers with a node each get a row, bottom-up (embeddings, layers, logits); heads then the
    MLP across a layer; per-position graphs one band per token, as wide as its fullest row
    (a token without nodes two slots). SAE nodes sit in their cell (:func:`feature_cells`) at
    their site's lift; a crowded cell's further tiers :data:`TIER_ROWS` apart above, moving
    everything higher up. SAEs at several sites of one block: each level gets at least half a
    row of its own, so forward order reads bottom-up unmixed."""
    payload = place_feature_nodes(payload)
    nodes = payload.get("nodes") or []
    n_layers = int(payload.get("n_layers") or 0)
    n_heads = int(payload.get("n_heads") or 1)
    per_pos = bool(payload.get("per_position"))
    cells = {n["id"]: (n["slot"], n["tier"]) for n in nodes if "slot" in n}
    slots = n_heads + 1
    max_pos = max((n.get("pos") or 0 for n in nodes), default=0)
    n_pos = max(len(payload.get("tokens") or []), max_pos + 1) if per_pos else 1
    band_w = slots + (BAND_GAP if per_pos else 0.0)
    widths = [band_w] * n_pos
    if per_pos and cells:
        used = {n.get("pos") for n in nodes}
        need: dict[int, float] = {}
        for n in nodes:
            if n["id"] in cells:
                p = n.get("pos") or 0
                need[p] = max(need.get(p, 0.0), cells[n["id"]][0] + 1)
        widths = [
            (max(slots, need.get(p, 0.0)) if p in used else 2) + BAND_GAP for p in range(n_pos)
        ]
    starts = [sum(widths[:p]) for p in range(n_pos)]
    total = sum(widths)

    def clamp(layer: int) -> int:
        return min(max(int(layer), -1), n_layers)

    layers = sorted({clamp(n["layer"]) for n in nodes})
    multi_site = any(n["id"] in cells and (n.get("site") or "") != "" for n in nodes)
    row_index = {layer: i for i, layer in enumerate(layers)}

    def level(layer: int, lift: float = 0.0, tier: int = 0) -> tuple[float, int]:
        return round((layer if multi_site else row_index[layer]) + lift, 4), tier

    def level_of(n: Mapping[str, Any]) -> tuple[float, int]:
        if n["id"] in cells:
            lift, tier = SITE_LIFT.get(n.get("site") or "", 0.5), cells[n["id"]][1]
        else:
            lift, tier = (MLP_LIFT if n.get("type") == "mlp" else 0.0), 0
        return level(clamp(n["layer"]), lift, tier)

    levels = sorted({level(layer) for layer in layers} | {level_of(n) for n in nodes})
    height: dict[tuple[float, int], float] = {}
    for i, lv in enumerate(levels):
        if i == 0:
            height[lv] = 0.0
            continue
        prev = levels[i - 1]
        d = lv[0] - prev[0]
        gap = TIER_ROWS if d < 1e-6 else max(0.5, min(1.0, d)) if multi_site else d
        height[lv] = height[prev] + gap
    placed = []
    for n in nodes:
        pos = n.get("pos") if per_pos else None
        if pos is None and per_pos:  # a node of no position: the middle of all bands
            centred = n.get("type") in ("embed", "logits")
            x = total / 2 if centred else _column(n, n_heads) + 0.5 + (total - band_w) / 2
        elif pos is None:
            x = _column(n, n_heads) + 0.5
        elif cells and n.get("type") in ("embed", "logits"):
            x = starts[pos] + (widths[pos] - BAND_GAP) / 2
        else:
            x = starts[pos] + cells.get(n["id"], (_column(n, n_heads), 0))[0] + 0.5
        placed.append({**n, "x": round(x, 4), "y": round(height[level_of(n)], 4)})
    layout = {
        "width": total if per_pos else band_w,
        "height": max(height.values(), default=0.0),
        "bands": [
            {"pos": p, "x": starts[p] + (widths[p] - BAND_GAP) / 2, "w": widths[p]}
            for p in range(n_pos)
        ]
        if per_pos
        else [],
        "rows": [{"layer": layer, "y": height[level(layer)]} for layer in layers],
        "min_gap": TIER_ROWS if cells else 1.0,
    }
    return {**payload, "nodes": placed, "layout": layout}
