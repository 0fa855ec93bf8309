"""The logit lens as a publication heatmap: rows × positions, the top token in each cell."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._style import SEQUENTIAL, apply_style, reject_unknown, split_style, text_label

if TYPE_CHECKING:
    import plotly.graph_objects as go

    from ..engine._logit_lens import LogitLensResult


def cell_text(token: str) -> str:
    """How a top token is written in a cell: a token of only whitespace would be blank, so
    its characters show as ``␣`` (``∅`` for an empty token); the figure and the view share it."""
    if token.strip():
        return token
    return "".join("↵" if c == "\n" else "␣" for c in token) or "∅"


def logit_lens_figure(
    result: LogitLensResult, *, title: str | None = None, colorscale: Any = None, **options: Any
) -> go.Figure:
    """Heatmap of ``result``: one row per layer (the embeddings first), one column per
    position, coloured by the answer's probability (the top token's without an answer) on
    0–1, with each cell's top token written in it."""
    import plotly.graph_objects as go

    style, rest = split_style(options)
    reject_unknown(rest, "logit_lens_figure", ("title", "colorscale"))
    tracked = result.answer_prob is not None
    z = result.answer_prob if tracked else result.top_probs[..., 0]
    what = f"p({result.answer!r})" if tracked else "top-token probability"
    text = [[text_label(cell_text(cell[0])) for cell in row] for row in result.top_tokens]
    cols = [text_label(f"{i}: {t}") for i, t in enumerate(result.tokens)]
    fig = go.Figure(
        go.Heatmap(
            z=z.numpy(),
            x=cols,
            y=result.layers,
            text=text,
            texttemplate="%{text}",
            textfont={"size": style.font_px * 0.8},
            colorscale=colorscale or SEQUENTIAL,
            zmin=0.0,
            zmax=1.0,
            colorbar={"title": {"text": what}},
            hovertemplate=(
                f"%{{y}} · position %{{x}}<br>top token %{{text}}<br>{what} %{{z:.4f}}"
                "<extra></extra>"
            ),
        )
    )
    fig.update_layout(
        title=title
        if title is not None
        else f"Logit lens · text: top token (␣ whitespace) · colour: {what}",
        xaxis={"title": "position", "type": "category"},
        yaxis={"title": "residual stream after", "type": "category", "autorange": "reversed"},
    )
    rows_in = len(result.layers) * style.font_px * 1.6 / 96
    return apply_style(fig, style, natural_height=max(style.width_in * 0.55, rows_in + 0.9))
