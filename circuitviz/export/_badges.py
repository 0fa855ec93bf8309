"""Head-role badges in the static figures: the circuit figure (a badge beside each head
node), the attention figures (badge text in the role-score cells, roles in a head's title)
and the layer × head grid of :meth:`circuitviz.HeadRoles.figure`.

Badge text, colour and label come from :data:`circuitviz.engine._badges.BADGES`, as in the
views; every role drawn gets a legend entry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..engine._badges import BADGES, HEAD_ROLES, role_map
from ..engine._pairs import InputError
from ._style import (
    PX_PER_INCH,
    ExportError,
    apply_style,
    reject_unknown,
    split_style,
    text_label,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go

#: Badge width / height relative to their font size (two bold capitals and padding).
BADGE_W = 1.7
BADGE_H = 1.3


def checked_roles(value: Any, *, n_layers: int | None, n_heads: int | None) -> dict[str, list]:
    """``{head: [roles]}`` of a HeadRoles or mapping, or an ExportError naming the problem."""
    try:
        return role_map(value, n_layers=n_layers, n_heads=n_heads, where="head_roles")
    except InputError as err:
        raise ExportError(str(err)) from None


#: Where the roles' legend goes: a second legend, in a bottom margin of its own
#: (:func:`legend_margin` high), so that it never pushes into the plot or the first legend.
ROLE_LEGEND = "legend2"


def legend_layout(font_px: float) -> dict[str, Any]:
    return bottom_legend(ROLE_LEGEND, font_px)


def bottom_legend(name: str, font_px: float) -> dict[str, Any]:
    """Layout of legend ``name``: one horizontal row at the very bottom of the figure, in a
    margin of its own (the roles' and the partial columns' legends)."""
    return {
        name: {
            "orientation": "h",
            "x": 0,
            "xanchor": "left",
            "yref": "container",
            "y": 0,
            "yanchor": "bottom",
            "font": {"size": font_px},
            "itemsizing": "constant",
        }
    }


def legend_margin(roles: dict[str, list[str]], font_px: float, width_px: float) -> float:
    """Pixels the roles' legend needs below the plot: its entries laid in rows of the
    figure's width (estimated text widths), each row 1.9 font sizes high."""
    present = [r for r in HEAD_ROLES if any(r in rs for rs in roles.values())]
    if not present:
        return 0.0
    rows, used = 1, 0.0
    for r in present:
        w = (len(BADGES[r][0]) + 3 + len(BADGES[r][2])) * 0.64 * font_px + 3 * font_px
        if used and used + w > width_px:
            rows, used = rows + 1, 0.0
        used += w
    return rows * 1.9 * font_px + 6


def cell_text(roles: dict[str, list[str]], n_layers: int, n_heads: int) -> list[list[str]]:
    """``[layer][head]`` badge text for a heatmap's ``text``: the first role's badge, with
    ``+`` when the head has more (every role is in the legend and the head's title)."""
    out = [["" for _ in range(n_heads)] for _ in range(n_layers)]
    for head, rs in roles.items():
        layer, index = (int(x) for x in head[1:].split("H"))
        out[layer][index] = BADGES[rs[0]][0] + ("+" if len(rs) > 1 else "")
    return out


def cell_font(style: Any, n_cols: int) -> float:
    """Font size (px) at which three characters fit a heatmap cell of a figure ``n_cols``
    cells wide (margins and colour bar take about 30 % of the width)."""
    cell = style.width_in * PX_PER_INCH * 0.7 / max(1, n_cols)
    return max(4.0, min(style.font_px * 0.75, cell / (3 * 0.62)))


def cell_frames(roles: dict[str, list[str]], size: float, *, showlegend: bool) -> list[go.Scatter]:
    """A frame in its first role's colour around each head's cell of a layer × head
    heatmap on category axes (``"H3"``, ``"L23"``), one trace (and legend entry) per role:
    the score stays visible inside, the badge text is the heatmap's own cell text."""
    import plotly.graph_objects as go

    traces = []
    for role in HEAD_ROLES:
        heads = [h for h, rs in roles.items() if rs[0] == role]
        if not heads:
            continue
        text, color, label = BADGES[role]
        traces.append(
            go.Scatter(
                x=[f"H{h.split('H')[1]}" for h in heads],
                y=[h.split("H")[0] for h in heads],
                mode="markers",
                marker={
                    "symbol": "square-open",
                    "size": size,
                    "color": color,
                    "line": {"width": max(1.0, size / 10), "color": color},
                },
                name=f"{text} = {label}",
                legend=ROLE_LEGEND,
                showlegend=showlegend,
                hoverinfo="skip",
            )
        )
    return traces


def head_suffix(roles: dict[str, list[str]], head: str) -> str:
    """``" (name mover, S-inhibition head)"`` for a head with roles, else ``""``."""
    rs = roles.get(head)
    return f" ({', '.join(BADGES[r][2] for r in rs)})" if rs else ""


def node_badges(nodes, pos, size, geo, roles: dict[str, list[str]], font_px: float):
    """Badges to the upper right of each head node with roles, as one marker+text trace per
    role, and the badges' pixel boxes (for the label placer to avoid). ``geo`` maps data to
    pixels (``_graph_labels.Geometry``); boxes are ``(x0, y0, x1, y1)`` pixels."""
    import plotly.graph_objects as go

    w, h = font_px * BADGE_W, font_px * BADGE_H
    per_role: dict[str, list[tuple[float, float, str]]] = {}
    boxes: dict[str, tuple[float, float, float, float]] = {}
    for n in nodes:
        rs = roles.get(str(n["id"]).split(":")[0]) if n.get("type") == "head" else None
        if not rs:
            continue
        cx, cy = geo.px(*pos[n["id"]])
        r = size[n["id"]] / 2
        x0, y1 = cx + r * 0.7, cy - r * 0.7
        for i, role in enumerate(rs):
            bx = x0 + i * (w + 1)
            per_role.setdefault(role, []).append((*geo.data(bx + w / 2, y1 - h / 2), n["id"]))
            boxes[f"badge:{n['id']}:{role}"] = (bx, y1 - h, bx + w, y1)
    traces = []
    for role in HEAD_ROLES:
        if role not in per_role:
            continue
        text, color, label = BADGES[role]
        points = per_role[role]
        traces.append(
            go.Scatter(
                x=[p[0] for p in points],
                y=[p[1] for p in points],
                mode="markers+text",
                cliponaxis=False,
                marker={"symbol": "square", "size": w, "color": color, "line": {"width": 0}},
                text=[text] * len(points),
                textposition="middle center",
                textfont={"size": font_px, "color": "#ffffff"},
                customdata=[text_label(p[2]) for p in points],
                hovertemplate=f"%{{customdata}}: {label}<extra></extra>",
                name=f"{text} = {label}",
                legend=ROLE_LEGEND,
            )
        )
    return traces, boxes


def roles_figure(result: Any, *, title: str | None = None, **options: Any) -> go.Figure:
    """Every head of the model as a cell of a layer × head grid, its roles as badges side by
    side (a legend entry per role); hover shows the head's scores."""
    import plotly.graph_objects as go

    style, rest = split_style(options)
    reject_unknown(rest, "roles_figure", ("title",))
    n_layers, n_heads = result.n_layers, result.n_heads
    roles = checked_roles(result, n_layers=n_layers, n_heads=n_heads)
    # Rows tall enough for a badge at 0.8 of the font; k badges share a cell's width.
    row_px = style.font_px * 0.8 * BADGE_W + 3
    most = max((len(rs) for rs in roles.values()), default=1)
    cell_w = (style.width_in * PX_PER_INCH - 6 * style.font_px) / n_heads
    size = min(style.font_px * 0.8 * BADGE_W, cell_w / most - 2, row_px - 3)
    font = size / BADGE_W
    fig = go.Figure()
    # The grid itself: a faint cell per head, with its scores on hover.
    names = [k for k in result.scores if k != "previous_token"]
    hover = [
        [
            "<br>".join(
                [f"L{la}H{he}"]
                + [
                    f"{k}: {float(result.scores[k][la, he]):.3f}"
                    for k in ("previous_token", *names)
                ]
            )
            for he in range(n_heads)
        ]
        for la in range(n_layers)
    ]
    fig.add_trace(
        go.Heatmap(
            z=[[0] * n_heads for _ in range(n_layers)],
            x=list(range(n_heads)),
            y=list(range(n_layers)),
            colorscale=[[0, "#f4f4f4"], [1, "#f4f4f4"]],
            showscale=False,
            xgap=1,
            ygap=1,
            text=hover,
            hovertemplate="%{text}<extra></extra>",
        )
    )
    for role in HEAD_ROLES:
        heads = [h for h, rs in roles.items() if role in rs]
        if not heads:
            continue
        xs, ys = [], []
        for head in heads:
            layer, index = (int(x) for x in head[1:].split("H"))
            rs = roles[head]
            slot = rs.index(role)
            # side by side inside the cell: k badges share its width
            xs.append(index - 0.5 + (slot + 0.5) / len(rs))
            ys.append(layer)
        text, color, label = BADGES[role]
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers+text",
                marker={"symbol": "square", "size": size, "color": color},
                text=[text] * len(xs),
                textfont={"size": font, "color": "#ffffff"},
                name=f"{text} = {label}",
                hoverinfo="skip",
                legend=ROLE_LEGEND,
            )
        )
    fig.update_layout(
        title=title if title is not None else text_label(f"Head roles · {result.model_name}"),
        showlegend=True,
        **legend_layout(style.font_px),
        xaxis={
            "side": "top",
            "tickvals": list(range(n_heads)),
            "ticktext": [f"H{h}" for h in range(n_heads)],
            "range": [-0.5, n_heads - 0.5],
            "showgrid": False,
            "zeroline": False,
        },
        yaxis={
            "title": "layer",
            "tickvals": list(range(n_layers)),
            "ticktext": [f"L{la}" for la in range(n_layers)],
            "range": [n_layers - 0.5, -0.5],
            "showgrid": False,
            "zeroline": False,
        },
    )
    below = legend_margin(roles, style.font_px, style.width_in * PX_PER_INCH)
    natural = (n_layers * row_px + 5 * style.font_px + below) / PX_PER_INCH
    apply_style(fig, style, natural_height=natural)
    fig.update_layout(margin={"b": 4 + below})
    return fig
