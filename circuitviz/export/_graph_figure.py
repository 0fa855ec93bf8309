"""Static figure of a circuit graph (``circuitviz.graph/1`` JSON or a ``Graph``).

Layers run bottom (embeddings) to top (logits); within a layer, heads then the MLP run left
to right (per position, positions side by side). Only columns that hold a node take space.
Labels are placed greedily, most important node first, in the first of four spots around
the node that overlaps no placed label and no other node; nodes that have no free spot stay
unlabelled (their id is in the hover text), so graphs of hundreds of nodes stay legible.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

from ..engine.graph._schema import check_graph_json
from ._badges import checked_roles, legend_layout, legend_margin, node_badges
from ._padding import column_spans, drawn_partial, legend_px, mark_graph_columns, pad_legend
from ._style import (
    CATEGORICAL,
    NEGATIVE,
    POSITIVE,
    PX_PER_INCH,
    ExportError,
    apply_style,
    reject_unknown,
    split_style,
    text_label,
)

# Width of a text character relative to the font size: generous for digits and capitals in
# Arial/Liberation Sans (≈ 0.56–0.67), so estimated boxes contain the real ones.
CHAR_WIDTH = 0.64
LINE_HEIGHT = 1.25
NODE_SYMBOLS = {
    "embed": "square",
    "head": "circle",
    "mlp": "square",
    "logits": "diamond",
    "supernode": "hexagon",  # a group of feature nodes (CircuitView.supernodes)
    "feature": "diamond-tall",
    "error": "triangle-up",
}
TYPE_ORDER = ("embed", "head", "mlp", "logits", "feature", "error", "supernode")
#: Legend names of node types (the type itself where not listed).
TYPE_NAMES = {"mlp": "MLP", "feature": "SAE feature", "error": "SAE error"}
WIDTH_LEVELS = 4
LABEL_SCALE = 0.9  # node labels and legend, relative to the style's font size
EMPTY_RUN_ROWS = 0.5  # height of a collapsed run of empty layers, in rows
# Beyond this many edges a figure is ink, not information: draw only the strongest.
MAX_DRAWN_EDGES = 2000


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: Box) -> bool:
        return (
            self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1
        )

    def inside(self, outer: Box) -> bool:
        return (
            self.x0 >= outer.x0
            and self.y0 >= outer.y0
            and self.x1 <= outer.x1
            and self.y1 <= outer.y1
        )


def text_box_size(text: str, font_px: float) -> tuple[float, float]:
    """Estimated (width, height) in px of one line of text."""
    return len(text) * font_px * CHAR_WIDTH + 2, font_px * LINE_HEIGHT


def graph_json(graph: Any) -> dict[str, Any]:
    """The JSON dict of a ``Graph``, a JSON string or a dict."""
    if hasattr(graph, "to_dict"):
        graph = graph.to_dict()
    elif hasattr(graph, "to_json"):
        graph = graph.to_json()
    if isinstance(graph, str | bytes):
        graph = json.loads(graph)
    if not isinstance(graph, dict) or not isinstance(graph.get("nodes"), list):
        raise ExportError(
            "Not a circuit graph: expected a Graph or a dict with 'nodes' and 'edges' "
            "(schema circuitviz.graph/1)."
        )
    return graph


def prune(graph: dict[str, Any], **options: Any) -> dict[str, Any]:
    """Graph JSON pruned by the shared rule (``Graph.prune``'s words: ``top_edges``,
    ``top_nodes``, ``min_weight``, ``min_rel_weight``, ``inputs``, ``sign``, ``pinned``). A
    graph without edges is pruned by node score (``top_nodes``, ``min_weight``)."""
    from ..engine import InputError
    from ..engine.graph._select import Pruning, prune_json

    try:
        rule = Pruning.of(where="graph_figure", **options)
    except InputError as err:
        raise ExportError(str(err)) from None
    if rule.empty:
        return graph
    if not graph.get("edges"):
        cut = rule.min_weight or 0.0
        nodes = [n for n in graph["nodes"] if abs(n.get("score") or 0) >= cut]
        nodes.sort(key=lambda n: -abs(n.get("score") or 0))
        return {**graph, "nodes": nodes[: rule.top_nodes] if rule.top_nodes else nodes}
    try:
        return prune_json(graph, rule)
    except InputError as err:
        raise ExportError(str(err)) from None


PRUNE_OPTIONS = ("top_edges", "top_nodes", "min_weight", "min_rel_weight", "inputs", "sign")
DEPRECATED_OPTIONS = ("top_n", "threshold")


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


def _position_ticks(graph: dict[str, Any], pos: dict[str, tuple[float, float]]):
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


class _Geometry:
    """Data coordinates → figure pixels (y down), given fixed margins and axis ranges."""

    def __init__(self, *, width, height, margin, x_range, y_range):
        self.width, self.height, self.margin = width, height, margin
        self.x_range, self.y_range = x_range, y_range
        self.plot_w = width - margin["l"] - margin["r"]
        self.plot_h = height - margin["t"] - margin["b"]

    def px(self, x: float, y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        return (
            self.margin["l"] + (x - x0) / (x1 - x0) * self.plot_w,
            self.margin["t"] + (y1 - y) / (y1 - y0) * self.plot_h,
        )

    def data(self, px_x: float, px_y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        return (
            x0 + (px_x - self.margin["l"]) / self.plot_w * (x1 - x0),
            y1 - (px_y - self.margin["t"]) / self.plot_h * (y1 - y0),
        )


def place_labels(
    items: list[tuple[str, str, float, float, float]],
    obstacles: dict[str, Box],
    *,
    font_px: float,
    bounds: Box,
) -> list[tuple[str, str, str, Box]]:
    """Greedy label placement. ``items``: (node id, text, px x, px y, marker radius) in
    priority order. Returns (id, text, spot, box) for the labels that fit."""
    placed: list[tuple[str, str, str, Box]] = []
    boxes: list[Box] = []
    for node_id, text, cx, cy, r in items:
        w, h = text_box_size(text, font_px)
        gap = r + 1.5
        spots = {
            "top": Box(cx - w / 2, cy - gap - h, cx + w / 2, cy - gap),
            "right": Box(cx + gap, cy - h / 2, cx + gap + w, cy + h / 2),
            "left": Box(cx - gap - w, cy - h / 2, cx - gap, cy + h / 2),
            "bottom": Box(cx - w / 2, cy + gap, cx + w / 2, cy + gap + h),
        }
        for spot, box in spots.items():
            if not box.inside(bounds) or any(box.overlaps(b) for b in boxes):
                continue
            if any(box.overlaps(o) for oid, o in obstacles.items() if oid != node_id):
                continue
            placed.append((node_id, text, spot, box))
            boxes.append(box)
            break
    return placed


def _edge_traces(graph, pos, ablated: set[str]):
    import plotly.graph_objects as go

    edges = [e for e in graph.get("edges") or [] if e["source"] in pos and e["target"] in pos]
    if len(edges) > MAX_DRAWN_EDGES:
        edges = sorted(edges, key=lambda e: -abs(e["weight"]))[:MAX_DRAWN_EDGES]
    biggest = max((abs(e["weight"]) for e in edges), default=0.0) or 1.0
    buckets: dict[tuple[str, int], list[dict]] = {}
    for e in edges:
        if e["source"] in ablated or e["target"] in ablated:
            key = ("ablated", 0)
        else:
            level = min(WIDTH_LEVELS - 1, int(abs(e["weight"]) / biggest * WIDTH_LEVELS))
            key = ("positive" if e["weight"] >= 0 else "negative", level)
        buckets.setdefault(key, []).append(e)
    traces = []
    # Weak edges first, so strong ones are drawn on top.
    for (sign, level), members in sorted(buckets.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        xs: list[float | None] = []
        ys: list[float | None] = []
        for e in members:
            (x0, y0), (x1, y1) = pos[e["source"]], pos[e["target"]]
            xs += [x0, x1, None]
            ys += [y0, y1, None]
        strength = (level + 1) / WIDTH_LEVELS
        line = (
            {"color": "#bbbbbb", "width": 0.6, "dash": "dot"}
            if sign == "ablated"
            else {
                "color": POSITIVE if sign == "positive" else NEGATIVE,
                "width": 0.3 + 2.4 * strength,
            }
        )
        traces.append(
            go.Scatter(
                x=xs,
                y=ys,
                mode="lines",
                line=line,
                opacity=1.0 if sign == "ablated" else 0.3 + 0.6 * strength,
                hoverinfo="skip",
                showlegend=False,
                name=f"{sign} edges",
            )
        )
    return traces


def _ring(node: dict[str, Any]) -> str:
    """A node's outline: blue for a positive score, red for a negative one, white for none."""
    score = node.get("score") or 0.0
    return "white" if not score else POSITIVE if score > 0 else NEGATIVE


def _node_traces(nodes, pos, size, ablated: set[str], selected: str | None):
    """One marker trace per node type (the legend), then ablated crosses and the selection ring."""
    import plotly.graph_objects as go

    traces = []
    by_type: dict[str, list[dict]] = {}
    for n in nodes:
        by_type.setdefault(n.get("type") if n.get("type") in TYPE_ORDER else "other", []).append(n)
    for kind in sorted(by_type, key=lambda k: TYPE_ORDER.index(k) if k in TYPE_ORDER else 9):
        members = by_type[kind]
        traces.append(
            go.Scatter(
                x=[pos[n["id"]][0] for n in members],
                y=[pos[n["id"]][1] for n in members],
                mode="markers",
                name=TYPE_NAMES.get(kind, kind),
                marker={
                    "symbol": NODE_SYMBOLS.get(kind, "circle"),
                    "size": [size[n["id"]] for n in members],
                    "color": CATEGORICAL.get(kind, CATEGORICAL["other"]),
                    "opacity": [0.35 if n["id"] in ablated else 1.0 for n in members],
                    # the ring shows the score's sign, as in the widget
                    "line": {"width": 1.2, "color": [_ring(n) for n in members]},
                },
                customdata=[[text_label(n["id"]), n.get("score") or 0.0] for n in members],
                hovertemplate="%{customdata[0]}<br>score %{customdata[1]:.4f}<extra></extra>",
            )
        )
    marked = [n for n in nodes if n["id"] in ablated]
    if marked:
        traces.append(
            go.Scatter(
                x=[pos[n["id"]][0] for n in marked],
                y=[pos[n["id"]][1] for n in marked],
                mode="markers",
                name="ablated",
                marker={
                    "symbol": "x-thin",
                    "color": "#000000",
                    "size": [size[n["id"]] * 1.3 for n in marked],
                    "line": {"width": 1.2, "color": "#000000"},
                },
                hoverinfo="skip",
            )
        )
    if selected in pos:
        sx, sy = pos[selected]
        traces.append(
            go.Scatter(
                x=[sx],
                y=[sy],
                mode="markers",
                name="selected",
                marker={
                    "symbol": "circle-open",
                    "color": "#000000",
                    "size": size[selected] + 5,
                    "line": {"width": 1.5, "color": "#000000"},
                },
                hoverinfo="skip",
            )
        )

    return traces


def _label_trace(nodes, pos, size, geo: _Geometry, selected, *, short: bool, style, avoid=None):
    """Node labels placed by :func:`place_labels`, as one text trace (hundreds of
    annotations would be slow to build and render)."""
    import plotly.graph_objects as go

    # Most important first; a label may not cover another node's marker.
    obstacles = {}
    for n in nodes:
        cx, cy = geo.px(*pos[n["id"]])
        r = size[n["id"]] / 2 + (3 if n["id"] == selected else 0)
        obstacles[n["id"]] = Box(cx - r, cy - r, cx + r, cy + r)
    obstacles.update({k: Box(*b) for k, b in (avoid or {}).items()})  # e.g. role badges

    def priority(n: dict[str, Any]):
        return (
            n["id"] != selected,
            n.get("type") not in ("embed", "logits"),
            -abs(n.get("score") or 0),
        )

    items = []
    for n in sorted(nodes, key=priority):
        cx, cy = geo.px(*pos[n["id"]])
        text = str(n.get("label") or n["id"])
        if short:
            text = n["id"].split(":")[0]
        items.append((n["id"], text, cx, cy, obstacles[n["id"]].x1 - cx))
    plot_area = Box(geo.margin["l"] - 2, geo.margin["t"], geo.width - 1, geo.height - 1)
    labels = place_labels(items, obstacles, font_px=style.font_px * LABEL_SCALE, bounds=plot_area)
    centres = [geo.data((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2) for _, _, _, b in labels]
    return go.Scatter(
        x=[x for x, _ in centres],
        y=[y for _, y in centres],
        mode="text",
        cliponaxis=False,  # labels may reach into the right margin; bounds keep them on the paper
        text=[text_label(text) for _, text, _, _ in labels],
        textposition="middle center",
        # A white halo keeps labels readable over edges.
        textfont={
            "size": style.font_px * LABEL_SCALE,
            "family": style.font_family,
            "color": "#222222",
            "shadow": "1px 1px 1px white, -1px -1px 1px white, 1px -1px 1px white, -1px 1px 1px white",
        },
        customdata=[text_label(node_id) for node_id, _, _, _ in labels],
        hoverinfo="skip",
        showlegend=False,
        name="labels",
    )


def graph_figure(
    graph: Any,
    *,
    ablated: Iterable[str] = (),
    selected: str | None = None,
    title: str | None = None,
    roles: Any = None,
    **options: Any,
):
    """A publication figure of a circuit graph.

    ``graph``: a ``Graph``, its ``to_json()`` dict/string. ``top_edges``, ``top_nodes``,
    ``min_weight`` (absolute), ``min_rel_weight`` (relative), ``inputs``, ``sign``: prune it
    by ``Graph.prune``'s rule (``top_n``/``threshold`` are deprecated names of ``top_edges``/
    ``min_weight``); at most the :data:`MAX_DRAWN_EDGES` strongest edges are drawn. ``ablated``:
    node ids drawn crossed out with dotted edges; ``selected``: a node id to ring. ``roles``:
    a :class:`~circuitviz.HeadRoles` (or ``{head: [roles]}``; default: the graph JSON's
    ``roles``), drawn as badges beside the head nodes, each role in the legend. Style options as :func:`circuitviz.export.make_style`.
    """
    import plotly.graph_objects as go

    style, rest = split_style(options)
    pruning = {k: rest.pop(k) for k in (*PRUNE_OPTIONS, *DEPRECATED_OPTIONS) if k in rest}
    reject_unknown(rest, "graph_figure", (*PRUNE_OPTIONS, "ablated", "selected", "title", "roles"))
    if hasattr(graph, "prune") and any(v is not None for v in pruning.values()):
        from ..engine import InputError

        try:
            graph = graph.prune(**pruning)
        except InputError as err:
            raise ExportError(str(err)) from None
        data = graph_json(graph)
    else:
        data = prune(graph_json(graph), **pruning)
    nodes = data["nodes"]
    if not nodes:
        raise ExportError("This graph has no nodes to draw (prune less, or check the circuit).")
    check_graph_json(data)  # a shared file's shapes, before they size anything
    ablated = set(ablated)
    n_layers = data.get("n_layers") or 1 + max((n.get("layer") or 0) for n in nodes)
    pos, rows = layout_positions({**data, "n_layers": n_layers})
    font_px = style.font_px
    label_px = font_px * LABEL_SCALE

    # Fixed margins (no automargin) so data→pixel geometry is exact for label placement.
    layer_names = {-1: "embed", n_layers: "logits", **{i: f"L{i}" for i in range(n_layers)}}
    longest = max(len(s) for s in layer_names.values())
    title_text = (
        title
        if title is not None
        else text_label(f"Circuit ({data.get('method', '?')}, {data.get('metric', '?')})")
    )
    margin = {
        "l": longest * font_px * CHAR_WIDTH + 10,
        "r": 6,
        "t": (font_px * 1.8 if title_text else 0) + font_px * 1.7 + 4,
        "b": 6,
        "pad": 0,
    }
    head_roles = checked_roles(
        data.get("roles") if roles is None else roles,
        n_layers=n_layers,
        n_heads=data.get("n_heads"),
    )
    margin["b"] += legend_margin(head_roles, label_px, style.width_in * PX_PER_INCH)
    spans = column_spans(data, pos)  # mixed-length pairs: partial columns are hatched
    pad_px = legend_px(label_px) if drawn_partial(data.get("columns"), spans) else 0.0
    margin["b"] += pad_px
    xs = [x for x, _ in pos.values()]
    x_range = (min(xs) - 0.7, max(xs) + 0.7)
    position_ticks = _position_ticks(data, pos)
    tick_angle = 0
    if position_ticks[0]:  # per-position graphs: tokens under their columns
        widest = max(text_box_size(t, font_px)[0] for t in position_ticks[1])
        unit_px = (style.width_in * PX_PER_INCH - margin["l"] - margin["r"]) / (
            x_range[1] - x_range[0]
        )
        ticks = position_ticks[0]
        gap = min((b - a for a, b in pairwise(ticks)), default=x_range[1] - x_range[0])
        if widest < gap * unit_px * 0.95:
            margin["b"] += font_px * LINE_HEIGHT + 4
        else:  # too tight side by side: rotate, and make room below for the longest
            tick_angle = -60
            margin["b"] += widest * 0.87 + 4
    y_range = (min(rows.values()) - 0.6, max(rows.values()) + 0.6)
    row_px = max(font_px * 2.4, 16.0)
    natural = (margin["t"] + margin["b"] + (y_range[1] - y_range[0]) * row_px) / PX_PER_INCH

    fig = go.Figure()
    mark_graph_columns(fig, data.get("columns"), spans, y_range)
    for trace in _edge_traces(data, pos, ablated):
        fig.add_trace(trace)
    fig.update_layout(title=title_text)
    apply_style(fig, style, natural_height=natural)
    geo = _Geometry(
        width=fig.layout.width,
        height=fig.layout.height,
        margin=margin,
        x_range=x_range,
        y_range=y_range,
    )

    # Node size by |score|, kept inside one column and row.
    col_px = geo.plot_w / max(1e-9, x_range[1] - x_range[0])
    lay_px = geo.plot_h / (y_range[1] - y_range[0])
    cap = max(3.0, min(0.7 * col_px, 0.7 * lay_px, 12.0))
    top_score = max((abs(n.get("score") or 0) for n in nodes), default=0.0) or 1.0
    size = {n["id"]: min(cap, 4.0 + 6.0 * abs(n.get("score") or 0) / top_score) for n in nodes}
    for n in nodes:
        if n.get("type") in ("embed", "logits"):
            size[n["id"]] = cap

    for trace in _node_traces(nodes, pos, size, ablated, selected):
        fig.add_trace(trace)
    badges, avoid = node_badges(nodes, pos, size, geo, head_roles, label_px * 0.8)
    fig.add_traces(badges)

    short = bool(
        position_ticks[0]
    )  # the column's token is on the axis: "L3H5", not "L3H5 @ 4:Mary"
    fig.add_trace(
        _label_trace(nodes, pos, size, geo, selected, short=short, style=style, avoid=avoid)
    )

    every = max(1, int(font_px * 1.2 // lay_px) + 1)
    shown = [i for i in sorted(rows) if (i + 1) % every == 0 or i in (-1, n_layers)]
    fig.update_layout(
        margin=margin,
        showlegend=True,
        legend={
            "orientation": "h",
            "x": 0,
            "xanchor": "left",
            "y": 1,
            "yanchor": "bottom",
            "font": {"size": label_px},
            "itemsizing": "constant",
            "tracegroupgap": 0,
        },
        xaxis={
            "range": list(x_range),
            "visible": bool(position_ticks[0]),
            "tickvals": position_ticks[0],
            "ticktext": [text_label(t) for t in position_ticks[1]],
            "tickangle": tick_angle,
            "ticks": "",
            "showline": False,
            "showgrid": False,
            "zeroline": False,
            "fixedrange": True,
            "automargin": False,
        },
        yaxis={
            "range": list(y_range),
            "tickvals": [rows[i] for i in shown],
            "ticktext": [layer_names[i] for i in shown],
            "showgrid": False,
            "zeroline": False,
            "showline": False,
            "ticks": "",
            "automargin": False,
            "fixedrange": True,
        },
        meta={**fig.layout.meta, "layer_rows": {str(k): v for k, v in rows.items()}},
        **legend_layout(label_px),
    )
    pad_legend(fig, pad_px, label_px)  # partial columns' entry, under the roles' legend
    return fig
