"""Static figure of a circuit graph (``circuitviz.graph/1`` JSON or a ``Graph``).

Where nodes go is ``_graph_layout``'s rule, where labels go ``_graph_labels``' (no label
covers another or a node's marker; a node with no free spot stays unlabelled, its id in the
hover text, so graphs of hundreds of nodes stay legible). This module prunes, draws edges
and nodes by type with a legend, and sizes the figure.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from itertools import pairwise
from typing import Any

from ..engine.graph._schema import check_graph_json
from ._badges import checked_roles, legend_layout, legend_margin, node_badges
from ._graph_labels import (
    CHAR_WIDTH,
    LABEL_SCALE,
    LINE_HEIGHT,
    Geometry,
    label_trace,
    text_box_size,
)
from ._graph_layout import layout_positions, position_ticks
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
# Beyond this many edges a figure is ink, not information: draw only the strongest.
MAX_DRAWN_EDGES = 2000


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
    pos, rows, min_gap = layout_positions({**data, "n_layers": n_layers})
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
    ticks_of_positions = position_ticks(data, pos)
    tick_angle = 0
    if ticks_of_positions[0]:  # per-position graphs: tokens under their columns
        widest = max(text_box_size(t, font_px)[0] for t in ticks_of_positions[1])
        unit_px = (style.width_in * PX_PER_INCH - margin["l"] - margin["r"]) / (
            x_range[1] - x_range[0]
        )
        ticks = ticks_of_positions[0]
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
    geo = Geometry(
        width=fig.layout.width,
        height=fig.layout.height,
        margin=margin,
        x_range=x_range,
        y_range=y_range,
    )

    # Node size by |score|, kept inside one column and row.
    col_px = geo.plot_w / max(1e-9, x_range[1] - x_range[0])
    lay_px = geo.plot_h / (y_range[1] - y_range[0])
    # (min_gap: rows between the closest levels that share a column, e.g. heads and latents)
    cap = max(3.0, min(0.7 * col_px, 0.7 * min_gap * lay_px, 12.0))
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
        ticks_of_positions[0]
    )  # the column's token is on the axis: "L3H5", not "L3H5 @ 4:Mary"
    fig.add_trace(
        label_trace(nodes, pos, size, geo, selected, short=short, style=style, avoid=avoid)
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
            "visible": bool(ticks_of_positions[0]),
            "tickvals": ticks_of_positions[0],
            "ticktext": [text_label(t) for t in ticks_of_positions[1]],
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
