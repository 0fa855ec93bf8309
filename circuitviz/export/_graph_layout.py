"""Where the static circuit figure puts each node: layers bottom (embeddings) to top
(logits), runs of empty layers collapsed; within a layer, heads then the MLP left to right,
per position side by side; only columns that hold a node take space.
"""

from __future__ import annotations

from typing import Any

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
) -> tuple[dict[str, tuple[float, float]], dict[int, float]]:
    """Node id → (x, y), and layer → y. x packs the used (position, head/MLP) columns."""
    nodes = graph["nodes"]
    n_layers = graph.get("n_layers") or 1 + max((n.get("layer") or 0) for n in nodes)
    n_heads = graph.get("n_heads") or 1 + max((n.get("head") or 0) for n in nodes)

    feature_column = _feature_columns(nodes, n_heads)

    def slot(node: dict[str, Any]) -> tuple[int, int]:
        column = {"head": node.get("head") or 0, "mlp": n_heads}.get(node.get("type"), n_heads + 1)
        return (node.get("pos") or 0, feature_column.get(node["id"], column))

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
    return out, rows


#: SAE sites of one block in forward order (the codes of ``engine._sites``; "" resid_post).
_SITE_ORDER = {"pre": 0, "attn": 1, "mid": 2, "tc": 3, "mlp": 4, "": 5}


def _feature_columns(nodes: list[dict[str, Any]], n_heads: int) -> dict[str, int]:
    """Feature graphs: columns right of the MLP for each (layer, position)'s SAE sites in
    forward order (``_SITE_ORDER``), each its error node then its latents, strongest first
    (so none share a spot)."""
    groups: dict[tuple[Any, Any], list[dict[str, Any]]] = {}
    for n in nodes:
        if n.get("type") in ("feature", "error", "supernode"):  # a supernode: features grouped
            groups.setdefault((n.get("layer"), n.get("pos")), []).append(n)
    out = {}
    for members in groups.values():
        members.sort(
            key=lambda n: (
                _SITE_ORDER.get(n.get("site") or "", len(_SITE_ORDER)),
                n.get("type") != "error",
                -abs(n.get("score") or 0),
                n["id"],
            )
        )
        for k, n in enumerate(members):
            out[n["id"]] = n_heads + 1 + k
    return out


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
