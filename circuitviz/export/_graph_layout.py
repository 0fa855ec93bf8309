"""Where the static circuit figure puts each node. A feature graph: where CircuitView puts it
(the kernel's layout). Other graphs: layers bottom (embeddings) to top (logits), runs of
empty layers collapsed; within a layer, heads then the MLP left to right, per position side
by side; only columns that hold a node take space.
"""

from __future__ import annotations

from typing import Any

from ..engine.graph._placement import CELL_TYPES, graph_layout
from ._style import ExportError

EMPTY_RUN_ROWS = 0.5  # height of a collapsed run of empty layers, in rows


def _node_layer(node: dict[str, Any], n_layers: int) -> float:
    kind = node.get("type")
    if kind == "embed":
        return -1
    if kind == "logits":
        return n_layers
    if node.get("layer") is None:
        raise ExportError(f"Graph node {node.get('id')!r} has no layer.")
    return node["layer"]


def layer_rows(used: set[int], n_layers: int) -> dict[int, float]:
    """Layer → row height ``y`` (embeddings -1, logits on top). A run of two or more layers
    without nodes shrinks to a half-row gap, so a pruned circuit isn't mostly empty rows."""
    rows: dict[int, float] = {}
    y, layer = -1.0, -1
    while layer <= n_layers:
        end = layer
        while end < n_layers and end not in used and end != -1:
            end += 1
        if end - layer >= 2:
            y += EMPTY_RUN_ROWS
            layer = end
            continue
        rows[layer] = y
        y += 1
        layer += 1
    return rows


def layout_positions(
    graph: dict[str, Any],
) -> tuple[dict[str, tuple[float, float]], dict[int, float], float]:
    """Node id → (x, y), layer → y, and the closest two levels whose nodes can share a
    column (rows). A feature graph is laid out as CircuitView draws it (the kernel's
    ``graph._placement.graph_layout``: SAE nodes in their cells, crowded cells in tiers);
    otherwise x packs the used (position, head/MLP) columns."""
    nodes = graph["nodes"]
    n_layers = graph.get("n_layers") or 1 + max((n.get("layer") or 0) for n in nodes)
    n_heads = graph.get("n_heads") or 1 + max((n.get("head") or 0) for n in nodes)
    if any(n.get("type") in CELL_TYPES for n in nodes):
        laid = graph_layout({**graph, "n_layers": n_layers, "n_heads": n_heads})
        rows = {r["layer"]: r["y"] for r in laid["layout"]["rows"]}
        at = {n["id"]: (n["x"], n["y"]) for n in laid["nodes"]}
        return at, rows, laid["layout"]["min_gap"]

    def slot(node: dict[str, Any]) -> tuple[int, int]:
        column = {"head": node.get("head") or 0, "mlp": n_heads}.get(node.get("type"), n_heads + 1)
        return (node.get("pos") or 0, column)

    body = [n for n in nodes if n.get("type") not in ("embed", "logits")]
    slots = sorted({slot(n) for n in body})
    x_of: dict[tuple[int, int], float] = {}
    x = 0.0
    for i, s in enumerate(slots):
        if i and s[0] != slots[i - 1][0]:
            x += 0.6  # a gap between positions
        x_of[s] = x
        x += 1.0
    centre = (max(x_of.values()) / 2) if x_of else 0.0
    pos_centre: dict[int, list[float]] = {}
    for s, sx in x_of.items():
        pos_centre.setdefault(s[0], []).append(sx)
    rows = layer_rows({_node_layer(n, n_layers) for n in body}, n_layers)
    out = {}
    for n in nodes:
        y = rows[_node_layer(n, n_layers)]
        if n.get("type") in ("embed", "logits"):
            xs = pos_centre.get(n.get("pos")) if n.get("pos") is not None else None
            out[n["id"]] = ((sum(xs) / len(xs)) if xs else centre, y)
        else:
            out[n["id"]] = (x_of[slot(n)], y)
    return out, rows, 1.0


def position_ticks(graph: dict[str, Any], pos: dict[str, tuple[float, float]]):
    """Tick positions and token texts (at most 12 characters) of a per-position graph."""
    tokens = graph.get("tokens") or []
    columns: dict[int, list[float]] = {}
    for n in graph["nodes"]:
        if n.get("pos") is not None and n.get("type") not in ("embed", "logits"):
            columns.setdefault(n["pos"], []).append(pos[n["id"]][0])
    if not graph.get("per_position") or not columns:
        return [], []
    ticks = sorted(columns)
    texts = [f"{p}: {tokens[p]}" if p < len(tokens) else str(p) for p in ticks]
    texts = [t if len(t) <= 12 else t[:11] + "…" for t in texts]
    return [(min(columns[p]) + max(columns[p])) / 2 for p in ticks], texts
