"""Plotly figures of engine results, in the publication style of ``circuitviz.export``.

Each builder takes its own options (selection, colour range, layer/head…) plus the style
options of :func:`circuitviz.export.make_style`; unknown options are an error, not ignored.
"""

from __future__ import annotations

import itertools
import math
import textwrap
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import torch
from torch.nn import functional as F

from ..engine._cells import (
    FLOAT32_NOISE,
    ablation_targets,
    check_color,
    color_labels,
    is_covered,
    is_selected,
    zero_tolerance,
)
from ..engine._columns import map_columns
from ..engine._pairs import InputError
from ._padding import hover_notes, style_heatmap
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

__all__ = [
    "COLOR_SCALES",
    "DIVERGING",
    "LOG_FLOOR",
    "ablation_figure",
    "attention_colors",
    "attention_figure",
    "patch_figure",
    "text_label",
]

# Okabe–Ito grey, blue and vermillion (colour-blind safe) for before / after / corrupted.
BEFORE, AFTER, CORRUPTED = "#999999", "#0072B2", "#D55E00"


def _heatmap_height(style, n_rows: int, *, extra_in: float = 0.9) -> float:
    """Natural height (in): one text line per row so every row label can show."""
    rows_in = n_rows * style.font_px * 1.3 / PX_PER_INCH
    return max(style.width_in * 0.55, rows_in + extra_in)


def _row_label_step(style, n_rows: int, height_in: float, *, extra_in: float = 0.9) -> int:
    """Label every ``step``-th row so that labels, one text line each, never overlap."""
    line_in = style.font_px * 1.3 / PX_PER_INCH
    return max(1, math.ceil(n_rows * line_in / max(height_in - extra_in, line_in)))


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
    color: str = "effect",
    selected: str | None = None,
    ablated: Iterable[str] = (),
    **options: Any,
) -> go.Figure:
    """Heatmap of a patching map on a diverging scale centred on the unpatched run's metric
    (the corrupted run when denoising, the clean run when noising), as in the PatchingView.

    ``color``: ``"effect"`` (default, as the view) colours and labels each cell by value −
    baseline; ``"value"`` labels the colour bar in the metric's own units, centred on the
    baseline (the colours are the same). The colour bar names the baseline and its value.
    ``selected``: a cell id (``"L3H5"``, ``"L3H5:P4"``) or what a click on cells ablates, whose
    cells are outlined; ``ablated``: components (``"L3H5"``, ``"L3H5:P4"``, ``"MLP2:P4"``)
    whose cells are crossed out, as in the view; ``zmax``: the colour range's half-width
    (default: the largest deviation); ``colorscale``: default :data:`DIVERGING`.
    """
    import plotly.graph_objects as go

    style, rest = split_style(options)
    reject_unknown(
        rest, "patch_figure", ("title", "colorscale", "zmax", "color", "selected", "ablated")
    )
    try:
        check_color(color)
    except InputError as err:
        raise ExportError(str(err)) from None
    if result.values.numel() == 0:
        raise ExportError(
            f"This PatchResult is empty (values of shape {tuple(result.values.shape)}); "
            "nothing to draw. Check the prompts and `over=`."
        )
    v, rows, cols, row_axis, col_axis, index = _flatten_for_heatmap(result)
    centre = result.baseline
    effect = v.double() - centre
    effect[effect.abs() <= zero_tolerance(result)] = 0.0  # float32 noise is no effect
    span = zmax if zmax is not None else (float(effect.abs().max()) or 1.0)
    shift = 0.0 if color == "effect" else centre
    x = [text_label(c) for c in cols]
    y = [text_label(r) for r in rows]
    shown = "effect" if color == "effect" else result.metric
    columns = map_columns(result)  # mixed-length pairs: partial columns, as the view
    fig = go.Figure(
        go.Heatmap(
            z=(effect + shift).numpy(),
            x=x,
            y=y,
            colorscale=colorscale or DIVERGING,
            zmid=shift,
            zmin=shift - span,
            zmax=shift + span,
            colorbar={"title": {"text": _bar_title(color_labels(result)[color], style, len(rows))}},
            hovertemplate=(
                f"{text_label(row_axis)} %{{y}}<br>{text_label(col_axis)} %{{x}}<br>"
                f"{text_label(shown)} %{{z:.4g}}{'%{customdata}' if columns else ''}"
                "<extra></extra>"
            ),
            customdata=hover_notes(columns, len(rows), len(cols)) if columns else None,
        )
    )
    if title is None and "receivers" in result.extra:  # path patching: name the receivers
        into = ", ".join(result.extra["receivers"])
        title = f"Path patching: each head → {into} ({result.extra['receiver_input']}, {result.direction})"
    fig.update_layout(
        title=title
        if title is not None
        else text_label(f"Direct logit attribution by {result.target}")
        if result.direction == "direct"
        else text_label(
            f"{result.method.capitalize()} patching of {result.target} ({result.direction})"
        ),
        xaxis={"title": text_label(AXIS_TITLES.get(col_axis, col_axis)), "type": "category"},
        yaxis={"title": text_label(AXIS_TITLES.get(row_axis, row_axis)), "type": "category"},
    )
    # Category axes keep their order; reversed puts layer 0 at the top, as in the widgets.
    fig.update_yaxes(autorange="reversed")
    natural = _heatmap_height(style, len(rows))
    # Plotly thins category ticks by its own rule (and its rule changed between releases):
    # label every row that has a text line of its own, every k-th when the height is fixed.
    step = _row_label_step(style, len(rows), style.height_in(natural))
    fig.update_yaxes(tickmode="array", tickvals=y[::step], ticktext=y[::step])
    _mark_cells(fig, result, len(rows), len(cols), index, selected, set(ablated))
    return style_heatmap(fig, style, columns, natural)  # partial columns, then the style


#: Colour scales of attention patterns (AttentionView.color_scale, attention_figure).
COLOR_SCALES = ("linear", "sqrt", "log")
#: The log scale resolves attention down to this; smaller weights share its colour.
LOG_FLOOR = 1e-4
#: Above this many tokens a pattern figure shows block maxima (as the view's canvas does):
#: one cell per token would be thinner than a pixel and stripes would vanish.
MAX_FIGURE_BINS = 400
#: Colour-bar ticks of the √ scale (attention values; positions are their square roots).
SQRT_TICKS = (0, 0.01, 0.05, 0.1, 0.25, 0.5, 1)


def attention_colors(p: Any, scale: str) -> tuple[Any, float, float, dict[str, Any]]:
    """What a heatmap's colour encodes for attention ``p`` on ``scale``: the transformed
    values, their range, and a colour bar whose ticks read as attention weights (the same
    scale and ticks as ``js/src/attention.ts``)."""
    import numpy as np

    if scale not in COLOR_SCALES:
        raise ExportError(f"Unknown color_scale {scale!r}: use one of {COLOR_SCALES}.")
    if scale == "linear":
        return p, 0.0, 1.0, {"title": {"text": "attention"}}
    if scale == "sqrt":
        ticks = list(SQRT_TICKS)
        colorbar = {
            "title": {"text": "attention (√ scale)"},
            "tickvals": [float(np.sqrt(v)) for v in ticks],
            "ticktext": [f"{v:g}" for v in ticks],
        }
        return np.sqrt(np.clip(p, 0, None)), 0.0, 1.0, colorbar
    low = int(np.log10(LOG_FLOOR))
    exponents = list(range(low, 1))
    colorbar = {
        "title": {"text": "attention (log scale)"},
        "tickvals": exponents,
        "ticktext": [("≤" if e == low else "") + f"{10.0**e:g}" for e in exponents],
    }
    return np.log10(np.clip(p, LOG_FLOOR, None)), float(low), 0.0, colorbar


def bin_edges(n_tokens: int, bins: int) -> list[int]:
    """Token bin boundaries for downsampling to at most ``bins`` bins: the first token (BOS,
    where attention piles up) alone, then equal blocks (the last may be shorter)."""
    block = math.ceil((n_tokens - 1) / max(1, bins - 1))
    return [0, *range(1, n_tokens, block), n_tokens]


def bin_label(tokens: list[str], start: int, stop: int) -> str:
    """A bin's axis label: its token, or its token range (short: a figure has little room)."""
    return f"{start}: {tokens[start]}" if stop - start == 1 else f"{start}–{stop - 1}"


def block_max(patterns: torch.Tensor, edges: list[int]) -> torch.Tensor:
    """``[head, dest, src]`` patterns → ``[head, bins, bins]``: the largest weight in each
    block of :func:`bin_edges` (max, not mean: a one-token stripe stays visible)."""
    block = edges[2] - edges[1]
    x = patterns.float()
    n = len(edges) - 1
    out = x.new_empty(x.shape[0], n, n)
    out[:, 0, 0] = x[:, 0, 0]
    out[:, 0, 1:] = F.max_pool1d(x[:, 0:1, 1:], block, ceil_mode=True)[:, 0]
    out[:, 1:, 0] = F.max_pool1d(x[:, 1:, 0][:, None], block, ceil_mode=True)[:, 0]
    out[:, 1:, 1:] = F.max_pool2d(x[:, None, 1:, 1:], block, ceil_mode=True)[:, 0]
    return out


def _bar_title(label: str, style, n_rows: int) -> str:
    """The colour bar's title, wrapped into lines that fit beside the bar (plotly cuts off a
    vertical title longer than the figure is tall)."""
    height_px = style.height_in(_heatmap_height(style, n_rows)) * PX_PER_INCH
    chars = max(12, int((height_px - 90) / (style.font_px * 0.6)))
    return "<br>".join(text_label(line) for line in textwrap.wrap(label, chars))


def _mark_cells(fig, result, n_rows, n_cols, index, selected, ablated) -> None:
    """Outline the selected cells and cross out the ablated ones, each kind as one path with
    one legend entry, so drawing time grows linearly with the number of cells."""
    import plotly.graph_objects as go

    if selected is None and not ablated:
        return
    ids = result.cells()
    targets = ablation_targets(result)
    strides = [1] * len(result.values.shape)
    for d in range(len(strides) - 2, -1, -1):
        strides[d] = strides[d + 1] * result.values.shape[d + 1]
    outline, cross = [], []
    for r in range(n_rows):
        for c in range(n_cols):
            i = sum(k * s for k, s in zip(index(r, c), strides, strict=True))  # flat index
            if is_selected(selected, ids[i], targets[i]):
                outline.append(f"M{c - 0.5},{r - 0.5}H{c + 0.5}V{r + 0.5}H{c - 0.5}Z")
            if is_covered(targets[i], ablated):
                cross.append(
                    f"M{c - 0.4},{r - 0.4}L{c + 0.4},{r + 0.4}M{c - 0.4},{r + 0.4}L{c + 0.4},{r - 0.4}"
                )
    if selected is not None and not outline:
        raise ExportError(f"selected={selected!r} is not a cell of this map.")
    if outline:
        fig.add_shape(
            type="path",
            path="".join(outline),
            line={"color": "#000000", "width": 1.5},
            fillcolor="rgba(0,0,0,0)",
            opacity=1,  # the simple_white template draws shapes at 30 %
            name="selected",
        )
    if cross:
        # black on a white halo: visible on the darkest and the palest cells alike
        for colour, width in (("#ffffff", 2.6), ("#000000", 1.1)):
            fig.add_shape(
                type="path",
                path="".join(cross),
                line={"color": colour, "width": width},
                fillcolor="rgba(0,0,0,0)",
                opacity=1,
                name="ablated",
            )
    # Legend entries for the marks (shapes have none of their own that look like them).
    for name, symbol, used in (("selected", "square-open", outline), ("ablated", "x-thin", cross)):
        if used:
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    name=name,
                    marker={
                        "symbol": symbol,
                        "size": 9,
                        "color": "#000000",
                        "line": {"width": 1.5},
                    },
                )
            )
    if outline or cross:
        fig.update_layout(
            showlegend=True, legend={"orientation": "h", "x": 0, "y": -0.15, "yanchor": "top"}
        )


def attention_figure(
    result: AttentionResult,
    *,
    layer: int | None = None,
    head: int | None = None,
    roles: tuple[str, ...] | None = None,
    title: str | None = None,
    hide_bos: bool = False,
    color_scale: str = "linear",
    head_roles: Any = None,
    **options: Any,
) -> go.Figure:
    """One head's query × key pattern (``layer`` and ``head`` given), else head-role scores.

    ``head_roles``: a :class:`~circuitviz.HeadRoles` (or ``{head: [roles]}``): the score
    grids write each head's badges in its cell (a legend entry per role), and one head's
    title names its roles.

    ``hide_bos``: leave out the first key column (the BOS token, where most heads park
    attention); ``color_scale``: ``"linear"``, ``"sqrt"`` or ``"log"`` (see
    :data:`COLOR_SCALES`), as the AttentionView's options of the same names.
    """
    import plotly.graph_objects as go

    style, rest = split_style(options)
    reject_unknown(
        rest,
        "attention_figure",
        ("layer", "head", "roles", "title", "hide_bos", "color_scale", "head_roles"),
    )
    from ._badges import (
        cell_font,
        cell_frames,
        cell_text,
        checked_roles,
        head_suffix,
        legend_layout,
        legend_margin,
    )

    badges = checked_roles(head_roles, n_layers=result.n_layers, n_heads=result.n_heads)
    if result.patterns.numel() == 0:
        raise ExportError("This AttentionResult is empty (no layers, heads or tokens).")
    if (layer is None) != (head is None):
        raise ExportError("Give both layer= and head= for one head's pattern, or neither.")
    if layer is None and (hide_bos or color_scale != "linear"):
        raise ExportError(
            "hide_bos= and color_scale= apply to one head's pattern: give layer= and head=."
        )
    if layer is not None:
        if not (0 <= layer < result.n_layers and 0 <= head < result.n_heads):
            raise ExportError(
                f"No head L{layer}H{head}: this model has layers 0–{result.n_layers - 1} "
                f"and heads 0–{result.n_heads - 1}."
            )
        pattern = result.patterns[layer, head]
        n_tokens = pattern.shape[-1]
        labels = [text_label(f"{i}: {t}") for i, t in enumerate(result.tokens)]
        axis_note = ""
        if n_tokens > MAX_FIGURE_BINS:
            edges = bin_edges(n_tokens, MAX_FIGURE_BINS)
            pattern = block_max(pattern[None], edges)[0]
            labels = [
                text_label(bin_label(result.tokens, a, z)) for a, z in itertools.pairwise(edges)
            ]
            axis_note = f" · blocks of {edges[2] - edges[1]}, max"
        p = pattern.float().numpy()
        first_key = 1 if hide_bos and p.shape[1] > 1 else 0
        z, zmin, zmax, colorbar = attention_colors(p[:, first_key:], color_scale)
        fig = go.Figure(
            go.Heatmap(
                z=z,
                x=labels[first_key:],
                y=labels,
                colorscale=SEQUENTIAL,
                zmin=zmin,
                zmax=zmax,
                colorbar=colorbar,
                # the exact weight on hover, whatever the colour scale
                customdata=p[:, first_key:],
                hovertemplate="query %{y}<br>key %{x}<br>attention %{customdata:.4f}<extra></extra>",
            )
        )
        hidden = " (BOS hidden)" if first_key else ""
        fig.update_layout(
            title=title
            if title is not None
            else text_label(
                f"Attention of L{layer}H{head}{hidden}{head_suffix(badges, f'L{layer}H{head}')}"
            ),
            xaxis={"title": f"key (source){axis_note}", "type": "category"},
            yaxis={
                "title": f"query (destination){axis_note}",
                "type": "category",
                "autorange": "reversed",
            },
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
        subplot_titles=[text_label(n.replace("_", " ")) for n in names],
        shared_yaxes=True,
        horizontal_spacing=0.04,
    )
    heads = [f"H{h}" for h in range(result.n_heads)]
    layers = [f"L{i}" for i in range(result.n_layers)]
    cell_w = style.width_in * PX_PER_INCH * 0.7 / (len(names) * result.n_heads)
    cell_h = _heatmap_height(style, result.n_layers) * PX_PER_INCH * 0.8 / result.n_layers
    frame = max(3.0, 0.78 * min(cell_w, cell_h))  # inside the cell, line width included
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
                hovertemplate=f"{text_label(role)} %{{y}}%{{x}}: %{{z:.3f}}<extra></extra>",
                text=cell_text(badges, result.n_layers, result.n_heads) if badges else None,
                texttemplate="%{text}" if badges else None,
                textfont={"size": cell_font(style, len(names) * result.n_heads)},
            ),
            row=1,
            col=i,
        )
        # each head's first role as a coloured frame (and legend entry); "+": it has more
        for trace in cell_frames(badges, frame, showlegend=i == 1):
            fig.add_trace(trace, row=1, col=i)
        fig.update_xaxes(title_text="head", type="category", row=1, col=i)
    fig.update_yaxes(type="category", autorange="reversed")
    fig.update_yaxes(title_text="layer", row=1, col=1)
    fig.update_layout(
        title=title if title is not None else "Head-role scores",
        showlegend=bool(badges),
        **legend_layout(style.font_px * 0.8),
    )
    below = legend_margin(badges, style.font_px * 0.8, style.width_in * PX_PER_INCH)
    natural = _heatmap_height(style, result.n_layers) + below / PX_PER_INCH
    apply_style(fig, style, natural_height=natural)
    # The title above the panels' own titles (automargin alone lets them overlap).
    fig.update_layout(margin={"t": style.font_px * 3.4})
    if below:  # the roles' legend under the axis titles, in a margin of its own
        fig.update_layout(margin={"b": 4 + below})
    return fig


def ablation_figure(
    result: AblationResult, *, k: int | None = None, title: str | None = None, **options: Any
) -> go.Figure:
    """Top-``k`` next tokens before and after the ablation, beside the metric's three values."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    style, rest = split_style(options)
    reject_unknown(rest, "ablation_figure", ("k", "title"))
    before = dict(zip(result.top_before.tokens, result.top_before.probs, strict=True))
    top_after = result.top_after  # None when nothing is ablated
    after = dict(zip(top_after.tokens, top_after.probs, strict=True)) if top_after else {}
    tokens = list(dict.fromkeys([*result.top_before.tokens, *after]))
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
    bars = [("before", before, BEFORE)] + ([("after", after, AFTER)] if top_after else [])
    for name, probs, colour in bars:
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
    # The metric: mean bars, and each prompt pair as a dot over its bar.
    runs = [("clean", result.clean, BEFORE), ("ablated", result.ablated, AFTER)]
    runs = [r for r in runs if r[1] is not None] + [("corrupted", result.corrupted, CORRUPTED)]
    fig.add_trace(
        go.Bar(
            x=[name for name, _, _ in runs],
            y=[value for _, value, _ in runs],
            marker_color=[colour for _, _, colour in runs],
            showlegend=False,
            hovertemplate="%{x} (mean): %{y:.4f}<extra></extra>",
        ),
        row=1,
        col=2,
    )
    per_prompt = result.per_prompt
    xs, ys = [], []
    for name, _, _ in runs:
        values = per_prompt.get(name) or []
        xs += [name] * len(values)
        ys += list(values)
    if len(per_prompt.get("clean") or []) > 1:
        fig.add_trace(
            go.Scatter(
                x=xs,
                y=ys,
                mode="markers",
                name="one prompt pair",
                marker={"color": "#000000", "size": 4, "opacity": 0.7},
                hovertemplate="%{x}: %{y:.4f}<extra></extra>",
            ),
            row=1,
            col=2,
        )
    fig.add_hline(y=0, line={"color": "#666666", "width": 0.6}, row=1, col=2)
    if title is None:
        if result.ablated is None:
            title = text_label(f"Nothing ablated ({result.metric} clean {result.clean:.3g})")
        else:
            gap = result.gap_fraction
            share = "" if gap is None else f", {100 * gap:+.3g}% of the clean − corrupted gap"
            title = text_label(
                f"{result.mode.capitalize()}-ablating {', '.join(result.components)}: "
                f"Δ {result.metric} {_signed(result.delta, result)}{share}"
            )
    fig.update_layout(
        title=title,
        barmode="group",
        bargap=0.25,
        legend={"orientation": "h", "x": 0, "y": -0.12, "yanchor": "top"},
    )
    fig.update_yaxes(type="category", autorange="reversed", row=1, col=1)
    fig.update_xaxes(title_text="next-token probability", row=1, col=1)
    fig.update_xaxes(type="category", row=1, col=2)
    fig.update_yaxes(title_text=text_label(result.metric), row=1, col=2)
    natural = max(style.width_in * 0.5, len(tokens) * style.font_px * 2.2 / PX_PER_INCH + 0.9)
    return apply_style(fig, style, natural_height=natural)


def _signed(delta: float, result: AblationResult) -> str:
    """A change with float32 noise printed as an exact 0."""
    tolerance = FLOAT32_NOISE * max(1.0, abs(result.clean), abs(result.corrupted))
    return "0" if abs(delta) <= tolerance else f"{delta:+.4g}"
