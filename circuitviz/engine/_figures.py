"""Plotly figures of engine results. Publication styling lives in ``circuitviz.export``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ._results import AttentionResult, PatchResult

# Colour-blind-safe diverging map (ColorBrewer RdBu reversed: blue negative, red positive).
DIVERGING = [
    [0.0, "#2166ac"],
    [0.25, "#92c5de"],
    [0.5, "#f7f7f7"],
    [0.75, "#f4a582"],
    [1.0, "#b2182b"],
]


def _flatten_for_heatmap(result: PatchResult):
    """2-D rows × columns for any map: 3-D maps put (layer, head) on the rows."""
    v = result.values.float().cpu()
    if v.ndim == 2:
        a, b = result.axes
        return v, result.labels[a], result.labels[b], a, b
    # heads_by_pos: [layer, pos, head] -> rows L{l}H{h}, columns pos
    layer, pos, head = (result.axes.index(x) for x in ("layer", "pos", "head"))
    v = v.permute(layer, head, pos).reshape(-1, v.shape[pos])
    rows = [
        f"L{l}H{h}"
        for l in range(result.values.shape[layer])
        for h in range(result.values.shape[head])
    ]
    return v, rows, result.labels["pos"], "head", "pos"


def patch_figure(result: PatchResult, *, title: str | None = None, **_: Any):
    import plotly.graph_objects as go

    v, rows, cols, row_axis, col_axis = _flatten_for_heatmap(result)
    centre = (
        0.0
        if result.method == "attribution"
        else (result.corrupted if result.direction == "denoise" else result.clean)
    )
    span = float((v - centre).abs().max()) or 1.0
    fig = go.Figure(
        go.Heatmap(
            z=v.numpy(),
            x=cols,
            y=rows,
            colorscale=DIVERGING,
            zmid=centre,
            zmin=centre - span,
            zmax=centre + span,
            colorbar={"title": {"text": result.metric}},
            hovertemplate=f"{row_axis} %{{y}}<br>{col_axis} %{{x}}<br>{result.metric} %{{z:.4f}}<extra></extra>",
        )
    )
    fig.update_layout(
        title=title
        or f"{result.method.capitalize()} patching: {result.target} ({result.direction})",
        xaxis={"title": col_axis, "type": "category"},
        yaxis={"title": row_axis, "type": "category", "autorange": "reversed"},
    )
    return fig


def attention_figure(result: AttentionResult, *, layer=None, head=None, title=None, **_: Any):
    import plotly.graph_objects as go

    labels = [f"{i}: {t}" for i, t in enumerate(result.tokens)]
    if layer is not None and head is not None:
        z = result.patterns[layer, head].float().numpy()
        fig = go.Figure(go.Heatmap(z=z, x=labels, y=labels, colorscale="Blues", zmin=0, zmax=1))
        fig.update_layout(
            title=title or f"Attention L{layer}H{head}",
            xaxis={"title": "source (key)", "type": "category"},
            yaxis={"title": "destination (query)", "type": "category", "autorange": "reversed"},
        )
        return fig
    from plotly.subplots import make_subplots

    roles = list(result.scores)
    fig = make_subplots(rows=1, cols=len(roles), subplot_titles=roles)
    for i, role in enumerate(roles, start=1):
        s = result.scores[role].float().numpy()
        fig.add_trace(
            go.Heatmap(z=s, colorscale="Blues", zmin=0, zmax=1, showscale=i == len(roles)),
            row=1,
            col=i,
        )
        fig.update_xaxes(title_text="head", row=1, col=i)
        fig.update_yaxes(title_text="layer", autorange="reversed", row=1, col=i)
    fig.update_layout(title=title or "Head-role scores")
    return fig
