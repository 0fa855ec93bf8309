"""Partial position columns (mixed-length prompts) in the figures, drawn as the views draw
them: a hatched strip over each such column of a heatmap, a faintly hatched band with a
hatched strip on the token axis in a per-position graph, the kernel's note on hover and one
legend entry. Which columns and what is said come from :mod:`circuitviz.engine._columns`.
"""

from __future__ import annotations

import textwrap
from typing import Any

from ..engine._columns import PARTIAL_LEGEND, notes_of
from ._badges import bottom_legend
from ._style import PX_PER_INCH, apply_style, text_label

#: Hatch colour and strip height (px), as ``js/src/padding.ts``.
HATCH = "#555555"
STRIP_PX = 7
STRIP_GAP_PX = 3
#: Diagonal strokes per column in a heatmap's strip.
STROKES = 4
#: The entry's own legend, under everything else (the role badges' is "legend2").
PAD_LEGEND = "legend3"
WRAP_CHARS = 60


def partial_notes(info: dict[str, Any] | None) -> dict[int, str]:
    """``{column: note}`` of the partial columns (see :func:`engine._columns.notes_of`)."""
    return notes_of(info)


def column_spans(graph: dict[str, Any], pos: dict[str, tuple[float, float]]):
    """``{position: (x0, x1)}``: the data-x extent of each token column of a per-position
    graph's drawn nodes (as ``_graph_figure._position_ticks`` finds their centres)."""
    xs: dict[int, list[float]] = {}
    for n in graph["nodes"]:
        if n.get("pos") is not None and n.get("type") not in ("embed", "logits"):
            xs.setdefault(n["pos"], []).append(pos[n["id"]][0])
    return {p: (min(v) - 0.5, max(v) + 0.5) for p, v in xs.items()}


def hover_notes(info: dict[str, Any] | None, n_rows: int, n_cols: int) -> list[list[str]]:
    """Per heatmap cell, ``"<br>" + note`` in a partial column and ``""`` elsewhere."""
    notes = partial_notes(info)
    row = ["<br>" + text_label(notes[c]) if c in notes else "" for c in range(n_cols)]
    return [row] * n_rows


def legend_lines() -> list[str]:
    return textwrap.wrap(PARTIAL_LEGEND, WRAP_CHARS)


def legend_px(font_px: float) -> float:
    """Height (px) of the entry's legend at the figure's bottom."""
    return len(legend_lines()) * font_px * 1.3 + 8


def legend_layout(font_px: float) -> dict[str, Any]:
    """The entry's legend, at the very bottom of the figure (in a margin of its own)."""
    return bottom_legend(PAD_LEGEND, font_px)


def legend_entry() -> Any:
    """The one legend entry: a hatched swatch and the kernel's legend text (wrapped)."""
    import plotly.graph_objects as go

    return go.Bar(
        x=[None],
        y=[None],
        name="<br>".join(text_label(line) for line in legend_lines()),
        legend=PAD_LEGEND,
        marker={
            "color": "#ffffff",
            "line": {"color": HATCH, "width": 1},
            "pattern": {"shape": "/", "fgcolor": HATCH, "size": 5, "solidity": 0.25},
        },
        showlegend=True,
        hoverinfo="skip",
    )


def mark_heatmap_columns(fig: Any, info: dict[str, Any] | None) -> float:
    """Hatch a strip above each partial column of a category-axis heatmap and add the legend
    entry; returns the top margin (px) the strip needs (0 when no column is partial)."""
    notes = partial_notes(info)
    if not notes:
        return 0.0
    outline, strokes = [], []
    y0, y1 = STRIP_GAP_PX, STRIP_GAP_PX + STRIP_PX
    for c in sorted(notes):
        outline.append(f"M{c - 0.5},{y0}H{c + 0.5}V{y1}H{c - 0.5}Z")
        for i in range(STROKES):
            a = c - 0.5 + i / STROKES
            strokes.append(f"M{a},{y0}L{a + 1 / STROKES},{y1}")
    for path, name in (("".join(outline), "pad-strip"), ("".join(strokes), "pad-hatch")):
        fig.add_shape(
            type="path",
            path=path,
            xref="x",
            yref="paper",
            ysizemode="pixel",
            yanchor=1,
            line={"color": HATCH, "width": 0.8},
            fillcolor="#ffffff" if name == "pad-strip" else "rgba(0,0,0,0)",
            opacity=1,
            layer="above",
            name=name,
        )
    fig.add_trace(legend_entry())
    return float(STRIP_GAP_PX + STRIP_PX + 2)


def drawn_partial(info: dict[str, Any] | None, bands: dict[int, Any]) -> list[int]:
    """The partial columns that have drawn nodes (``bands``: ``column_spans``)."""
    return [p for p in sorted(partial_notes(info)) if p in bands]


def mark_graph_columns(
    fig: Any, info: dict[str, Any] | None, bands: dict[int, tuple[float, float]], y_range
) -> None:
    """A per-position graph: each partial column's band (``{pos: (x0, x1)}`` in data
    coordinates) faintly hatched over the plot's height, its note on hover, and the legend
    entry."""
    import plotly.graph_objects as go

    notes = partial_notes(info)
    drawn = drawn_partial(info, bands)
    if not drawn:
        return
    lo, hi = y_range
    for p in drawn:
        x0, x1 = bands[p]
        fig.add_trace(
            go.Scatter(
                x=[x0, x1, x1, x0, x0],
                y=[lo, lo, hi, hi, lo],
                mode="lines",
                fill="toself",
                fillcolor="rgba(255,255,255,0)",
                fillpattern={"shape": "/", "fgcolor": HATCH, "fgopacity": 0.3, "size": 6},
                line={"width": 0},
                hoveron="fills",
                hoverinfo="text",
                text=text_label(notes[p]),
                name=f"pad-band P{p}",
                showlegend=False,
            )
        )
    fig.add_trace(legend_entry())


def pad_legend(fig: Any, pad_px: float, font_px: float) -> None:
    """Place the entry's legend at the figure's bottom (``pad_px`` reserved there), lifting
    the role badges' legend, also at the bottom, above it."""
    if not pad_px:
        return
    fig.update_layout(**legend_layout(font_px))
    role_legend = fig.layout["legend2"]
    if role_legend.y is not None and fig.layout.height:
        fig.update_layout(legend2={"y": pad_px / fig.layout.height})


def style_heatmap(fig: Any, style: Any, info: dict[str, Any] | None, natural: float) -> Any:
    """``apply_style`` for a heatmap, with its partial columns' strip (room above the plot,
    under the title) and their legend at the bottom, the figure that much taller."""
    strip_px = mark_heatmap_columns(fig, info)
    font = style.font_px * 0.8
    pad_px = strip_px + legend_px(font) if strip_px else 0.0
    apply_style(fig, style, natural_height=natural + pad_px / PX_PER_INCH)
    if strip_px:
        title_px = style.font_px * 1.6 if fig.layout.title.text else 0
        fig.update_layout(
            margin={"t": 4 + title_px + strip_px, "b": 4 + legend_px(font)},
            showlegend=True,
            **legend_layout(font),
        )
    return fig
