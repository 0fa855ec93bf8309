"""Refusal steering as a publication figure: one prompt's continuation before and after the
intervention, side by side, with the refusal verdict and score of each."""

from __future__ import annotations

import textwrap
from typing import TYPE_CHECKING, Any

from ._style import ExportError, apply_style, reject_unknown, split_style, text_label

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from ..engine._refusal import SteeringResult

REFUSES, COMPLIES = "#fde2d8", "#dff0e4"  # the view's badge colours (js/src/steering.ts)
HEADER = "#f2f2f2"


def intervention_label(mode: str, coef: float, layer: int) -> str:
    """What was done, in the words the view uses for its "after" column."""
    if mode == "ablate":
        return "After (direction ablated at every layer)"
    return f"After (add {coef:g} × direction at layer {layer})"


def _wrapped(text: str, width: int) -> tuple[str, int]:
    """``text`` escaped for plotly and broken into lines of at most ``width`` characters
    (plotly's own ``<br>`` joins them); returns it and its number of lines."""
    lines = textwrap.wrap(text, width=width, break_long_words=True, replace_whitespace=False)
    lines = lines or [""]
    return "<br>".join(text_label(line) for line in lines), len(lines)


def steering_figure(
    result: SteeringResult, *, prompt: int = 0, title: str | None = None, **options: Any
) -> go.Figure:
    """A table of one prompt (``prompt``: its index in ``result.prompts``): the verdict
    (refuses / complies: the continuation starts with a refusal phrase), the refusal score
    (log-odds that the first generated token starts a refusal) and the greedy continuation,
    before and after the intervention. Text from the model is shown literally."""
    import plotly.graph_objects as go

    from ..engine._refusal import SteeringResult

    style, rest = split_style(options)
    reject_unknown(rest, "steering_figure", ("prompt", "title"))
    if not isinstance(result, SteeringResult):
        raise ExportError(
            f"steering_figure draws a SteeringResult (circuitviz.steer_refusal or "
            f"SteeringView.result), not {type(result).__name__}."
        )
    if isinstance(prompt, bool) or not isinstance(prompt, int):
        raise ExportError(f"prompt must be an index into result.prompts, got {prompt!r:.40}.")
    if not 0 <= prompt < len(result.prompts):
        raise ExportError(
            f"prompt={prompt} is out of range: the result has {len(result.prompts)} prompt(s)."
        )
    width_px = style.width_in * 96
    label_px = max(9 * style.font_px, 0.2 * width_px)
    column_px = (width_px - label_px - 8) / 2
    # Lines are broken here, short enough that plotly never re-wraps them, so the height
    # below is the table's (about 0.62 em per character, less the cell padding).
    chars = max(10, int(column_px / (0.62 * style.font_px)) - 2)
    sides = [result.before, result.after]
    text = [_wrapped(g.continuations[prompt] or "(empty continuation)", chars) for g in sides]
    refused = [g.refused[prompt] for g in sides]
    scores = [g.scores[prompt] for g in sides]
    cells = [
        ["verdict", "refusal score", "continuation"],
        *[
            [
                "refuses" if refused[i] else "complies",
                "–" if scores[i] is None else f"{scores[i]:.2f}",
                text[i][0],
            ]
            for i in range(2)
        ],
    ]
    fills = [
        [HEADER] * 3,
        *[[REFUSES if refused[i] else COMPLIES, "white", "white"] for i in range(2)],
    ]
    heads = [
        _wrapped("Before (no intervention)", chars),
        _wrapped(intervention_label(result.mode, result.coef, result.layer), chars),
    ]
    line_px = style.font_px * 1.35
    pad_px = style.font_px * 0.9
    font = {"size": style.font_px}
    fig = go.Figure(
        go.Table(
            columnwidth=[label_px, column_px, column_px],
            header={
                "values": ["", heads[0][0], heads[1][0]],
                "fill": {"color": HEADER},
                "align": "left",
                "font": font,
                "height": line_px + pad_px,
            },
            cells={
                "values": cells,
                "fill": {"color": fills},
                "align": "left",
                "font": font,
                "height": line_px + pad_px,
            },
        )
    )
    title_chars = int(width_px / (0.62 * style.font_px * 1.1)) - 2
    heading, prompt_lines = (
        _wrapped(f"Refusal steering · prompt: {result.prompts[prompt]}", title_chars)
        if title is None
        else (title, 1 + title.count("<br>"))
    )
    rows = [max(heads[0][1], heads[1][1]), 1, 1, max(text[0][1], text[1][1])]
    table_px = sum(n * line_px + pad_px for n in rows) + 4
    title_px = prompt_lines * line_px * 1.1 + pad_px
    # The title is an annotation at the top and the table sits below it: a multi-line
    # layout title would be placed partly above the page, and tables take no margin for it.
    natural = (table_px + title_px + 8) / 96
    apply_style(fig, style, natural_height=natural)
    plot_px = fig.layout.height - 8
    fig.add_annotation(
        text=heading,
        x=0,
        y=1,
        xref="paper",
        yref="paper",
        xanchor="left",
        yanchor="top",
        align="left",
        showarrow=False,
        font={"family": style.font_family, "size": style.font_px * 1.1},
        name="title",
    )
    fig.data[0].domain = {"x": [0, 1], "y": [0, max(0.2, 1 - title_px / plot_px)]}
    return fig
