"""Plotly figures of engine results, in the publication style of ``circuitviz.export``.

Each builder takes its own options (selection, colour range, layer/head…) plus the style
options of :func:`circuitviz.export.make_style`; unknown options are an error, not ignored.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..engine._results import ablation_target
from ._style import (
    DIVERGING,
    PX_PER_INCH,
    SEQUENTIAL,
    ExportError,
    apply_style,
    reject_unknown,
    split_style,
    text_label,
)

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from ..engine._results import AblationResult, AttentionResult, PatchResult

__all__ = ["DIVERGING", "ablation_figure", "attention_figure", "patch_figure", "text_label"]

# Okabe–Ito grey, blue and vermillion (colour-blind safe) for before / after / corrupted.
BEFORE, AFTER, CORRUPTED = "#999999", "#0072B2", "#D55E00"


def _heatmap_height(style, n_rows: int, *, extra_in: float = 0.9) -> float:
    """Natural height (in): one text line per row so every row label can show."""
    rows_in = n_rows * style.font_px * 1.3 / PX_PER_INCH
    return max(style.width_in * 0.55, rows_in + extra_in)


def _flatten_for_heatmap(result: PatchResult):
    """2-D rows × columns for any map: 3-D maps put (layer, head) on the rows.

    Returns values, row labels, column labels, row/column axis titles and the index of
    ``result.values`` for each (row, column) cell.
    """
    v = result.values.float().cpu()
    if v.ndim == 1:
        (a,) = result.axes
        return v[None, :], [""], result.labels[a], "", a, lambda r, c: (c,)
    if v.ndim == 2:
        a, b = result.axes
        return v, result.labels[a], result.labels[b], a, b, lambda r, c: (r, c)
    if set(result.axes) != {"layer", "pos", "head"}:
        raise ExportError(f"Can't draw a map with axes {result.axes}.")
    layer, pos, head = (result.axes.index(x) for x in ("layer", "pos", "head"))
    n_heads = v.shape[head]
    flat = v.permute(layer, head, pos).reshape(-1, v.shape[pos])
    rows = [f"L{i}H{h}" for i in range(v.shape[layer]) for h in range(n_heads)]

    def index(r: int, c: int) -> tuple[int, ...]:
        named = {"layer": r // n_heads, "head": r % n_heads, "pos": c}
        return tuple(named[a] for a in result.axes)

    return flat, rows, result.labels["pos"], "layer·head", "pos", index


AXIS_TITLES = {"layer": "layer", "head": "head", "kv_head": "KV head", "pos": "position"}


def patch_figure(
    result: PatchResult,
    *,
    title: str | None = None,
    colorscale: Any = None,
    zmax: float | None = None,
    selected: str | None = None,
    ablated: Iterable[str] = (),
    **options: Any,
) -> go.Figure:
    """Heatmap of a patching map, coloured around the unpatched run's metric (the corrupted
    run when denoising, the clean run when noising), as in the PatchingView.

    ``selected``: a cell id (``"L3H5"``, ``"L3H5:P4"``) or the head/MLP it stands for, whose
    cells are outlined; ``ablated``: heads/MLPs whose cells are crossed out, as in the view;
    ``zmax``: the colour range's half-width (default: the largest deviation);
    ``colorscale``: default :data:`DIVERGING`.
    """
    import plotly.graph_objects as go

    style, rest = split_style(options)
    reject_unknown(rest, "patch_figure", ("title", "colorscale", "zmax", "selected", "ablated"))
    if result.values.numel() == 0:
        raise ExportError(
            f"This PatchResult is empty (values of shape {tuple(result.values.shape)}); "
            "nothing to draw. Check the prompts and `over=`."
        )
    v, rows, cols, row_axis, col_axis, index = _flatten_for_heatmap(result)
    # Both methods give the metric after the patch: centre on the unpatched run's value.
    centre = result.baseline
    value_name = f"DLA: {result.metric}" if result.direction == "direct" else result.metric
    span = zmax if zmax is not None else (float((v - centre).abs().max()) or 1.0)
    x = [text_label(c) for c in cols]
    y = [text_label(r) for r in rows]
    fig = go.Figure(
        go.Heatmap(
            z=v.numpy(),
            x=x,
            y=y,
            colorscale=colorscale or DIVERGING,
            zmid=centre,
            zmin=centre - span,
            zmax=centre + span,
            colorbar={"title": {"text": value_name}},
            hovertemplate=(
                f"{row_axis} %{{y}}<br>{col_axis} %{{x}}<br>{value_name} %{{z:.4f}}<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        title=title
        if title is not None
        else f"Direct logit attribution by {result.target}"
        if result.direction == "direct"
        else f"{result.method.capitalize()} patching of {result.target} ({result.direction})",
        xaxis={"title": AXIS_TITLES.get(col_axis, col_axis), "type": "category"},
        yaxis={"title": AXIS_TITLES.get(row_axis, row_axis), "type": "category"},
    )
    # Category axes keep their order; reversed puts layer 0 at the top, as in the widgets.
    fig.update_yaxes(autorange="reversed")
    ablated = set(ablated)
    if selected is not None or ablated:
        cells = []  # (row, col, cell id, the head/MLP it stands for)
        for r in range(len(rows)):
            for c in range(len(cols)):
                i = result.component(index(r, c))
                cells.append((r, c, i, ablation_target(i)))
        chosen = [(r, c) for r, c, i, target in cells if selected in (i, target)]
        if selected is not None and not chosen:
            raise ExportError(f"selected={selected!r} is not a cell of this map.")
        for r, c in chosen:
            fig.add_shape(
                type="rect",
                x0=c - 0.5,
                x1=c + 0.5,
                y0=r - 0.5,
                y1=r + 0.5,
                line={"color": "#000000", "width": 1.5},
            )
        for r, c, _, target in cells:
            if target in ablated:
                cross = f"M{c - 0.4},{r - 0.4}L{c + 0.4},{r + 0.4}M{c - 0.4},{r + 0.4}L{c + 0.4},{r - 0.4}"
                # black on a white halo: visible on the darkest and the palest cells alike
                for colour, width in (("#ffffff", 2.6), ("#000000", 1.1)):
                    fig.add_shape(
                        type="path",
                        path=cross,
                        line={"color": colour, "width": width},
                        name="ablated",
                    )
    return apply_style(fig, style, natural_height=_heatmap_height(style, len(rows)))


def attention_figure(
    result: AttentionResult,
    *,
    layer: int | None = None,
    head: int | None = None,
    roles: tuple[str, ...] | None = None,
    title: str | None = None,
    **options: Any,
) -> go.Figure:
    """One head's query × key pattern (``layer`` and ``head`` given), else head-role scores."""
    import plotly.graph_objects as go

    style, rest = split_style(options)
    reject_unknown(rest, "attention_figure", ("layer", "head", "roles", "title"))
    if result.patterns.numel() == 0:
        raise ExportError("This AttentionResult is empty (no layers, heads or tokens).")
    if (layer is None) != (head is None):
        raise ExportError("Give both layer= and head= for one head's pattern, or neither.")
    if layer is not None:
        if not (0 <= layer < result.n_layers and 0 <= head < result.n_heads):
            raise ExportError(
                f"No head L{layer}H{head}: this model has layers 0–{result.n_layers - 1} "
                f"and heads 0–{result.n_heads - 1}."
            )
        labels = [text_label(f"{i}: {t}") for i, t in enumerate(result.tokens)]
        z = result.patterns[layer, head].float().numpy()
        fig = go.Figure(
            go.Heatmap(
                z=z,
                x=labels,
                y=labels,
                colorscale=SEQUENTIAL,
                zmin=0,
                zmax=1,
                colorbar={"title": {"text": "attention"}},
                hovertemplate="query %{y}<br>key %{x}<br>attention %{z:.3f}<extra></extra>",
            )
        )
        fig.update_layout(
            title=title if title is not None else f"Attention of L{layer}H{head}",
            xaxis={"title": "key (source)", "type": "category"},
            yaxis={"title": "query (destination)", "type": "category", "autorange": "reversed"},
        )
        # Square cells: height follows the width (and the token labels need room).
        return apply_style(fig, style, natural_height=style.width_in * 0.95 + 0.3)

    from plotly.subplots import make_subplots

    names = list(roles or result.scores)
    missing = [r for r in names if r not in result.scores]
    if missing:
        raise ExportError(f"Unknown role(s) {missing}: use {sorted(result.scores)}.")
    fig = make_subplots(
        rows=1,
        cols=len(names),
        subplot_titles=[n.replace("_", " ") for n in names],
        shared_yaxes=True,
        horizontal_spacing=0.04,
    )
    heads = [f"H{h}" for h in range(result.n_heads)]
    layers = [f"L{i}" for i in range(result.n_layers)]
    for i, role in enumerate(names, start=1):
        fig.add_trace(
            go.Heatmap(
                z=result.scores[role].float().numpy(),
                x=heads,
                y=layers,
                colorscale=SEQUENTIAL,
                zmin=0,
                zmax=1,
                showscale=i == len(names),
                colorbar={"title": {"text": "score"}},
                hovertemplate=f"{role} %{{y}}%{{x}}: %{{z:.3f}}<extra></extra>",
            ),
            row=1,
            col=i,
        )
        fig.update_xaxes(title_text="head", type="category", row=1, col=i)
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(title=title if title is not None else "Head-role scores")
    return apply_style(fig, style, natural_height=_heatmap_height(style, result.n_layers))


def ablation_figure(
    result: AblationResult, *, k: int | None = None, title: str | None = None, **options: Any
) -> go.Figure:
    """Top-``k`` next tokens before and after the ablation, beside the metric's three values."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    style, rest = split_style(options)
    reject_unknown(rest, "ablation_figure", ("k", "title"))
    before = dict(zip(result.top_before.tokens, result.top_before.probs, strict=True))
    after = dict(zip(result.top_after.tokens, result.top_after.probs, strict=True))
    tokens = list(dict.fromkeys([*result.top_before.tokens, *result.top_after.tokens]))
    tokens = tokens[: k or len(tokens)]
    if not tokens:
        raise ExportError("This AblationResult has no top tokens to draw.")
    fig = make_subplots(
        rows=1,
        cols=2,
        column_widths=[0.62, 0.38],
        horizontal_spacing=0.16,
    )
    labels = [text_label(repr(t)[1:-1] if t.strip() != t else t) for t in tokens]
    for name, probs, colour in (
        ("before", before, BEFORE),
        ("after", after, AFTER),
    ):
        fig.add_trace(
            go.Bar(
                x=[probs.get(t, 0.0) for t in tokens],
                y=labels,
                orientation="h",
                name=name,
                marker_color=colour,
                hovertemplate=f"{name}: %{{y}} %{{x:.3f}}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    fig.add_trace(
        go.Bar(
            x=["clean", "ablated", "corrupted"],
            y=[result.clean, result.ablated, result.corrupted],
            marker_color=[BEFORE, AFTER, CORRUPTED],
            showlegend=False,
            hovertemplate="%{x}: %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    what = ", ".join(result.components) or "nothing"
    fig.update_layout(
        title=title if title is not None else f"{result.mode.capitalize()}-ablating {what}",
        barmode="group",
        bargap=0.25,
        legend={"orientation": "h", "x": 0, "y": -0.12, "yanchor": "top"},
    )
    fig.update_yaxes(type="category", autorange="reversed", row=1, col=1)
    fig.update_xaxes(title_text="next-token probability", row=1, col=1)
    fig.update_xaxes(type="category", row=1, col=2)
    fig.update_yaxes(title_text=result.metric, row=1, col=2)
    natural = max(style.width_in * 0.5, len(tokens) * style.font_px * 2.2 / PX_PER_INCH + 0.9)
    return apply_style(fig, style, natural_height=natural)
