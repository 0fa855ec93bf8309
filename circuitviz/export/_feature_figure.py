"""A feature card as a publication figure: the latent's activation on each prompt token, the
tokens it promotes and suppresses, its activation histogram over the corpus, its top snippets."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._style import NEGATIVE, POSITIVE, apply_style, reject_unknown, split_style, text_label

if TYPE_CHECKING:
    import plotly.graph_objects as go


def _tok(token: str) -> str:
    return text_label(token if token.strip() else token.replace(" ", "␣") or "∅")


def snippet_line(snippet: dict[str, Any], *, before: int = 40, after: int = 20) -> str:
    """One snippet as figure text, cut to ``before``/``after`` characters around the peak,
    the peak token in bold (the only markup, added here after every token was escaped)."""
    tokens, peak = snippet["tokens"], snippet["peak"]
    left = "".join(tokens[:peak])
    right = "".join(tokens[peak + 1 :])
    left = left if len(left) <= before else "…" + left[-before:]
    right = right if len(right) <= after else right[:after] + "…"
    return (
        f"{snippet['value']:.3g}: {text_label(left)}<b>[{_tok(tokens[peak])}]</b>"
        f"{text_label(right)}"
    )


def _hist_title(frequency: float | None) -> str:
    if frequency is None:
        return "histogram (corpus)"
    return f"histogram ({100 * frequency:.2g}% active)"


def feature_figure(
    card: dict[str, Any], *, tokens: list[str], title: str | None = None, **options: Any
) -> go.Figure:
    """The card ``card`` (``FeatureView.card``) of a prompt with ``tokens``: (a) activation
    per prompt token (across the top), (b) logit effects and (c) histogram side by side,
    (d) top snippets (across the bottom)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    style, rest = split_style(options)
    reject_unknown(rest, "feature_figure", ("title",))
    # The prompt's bars and the snippets' text need the width: each gets a whole row.
    fig = make_subplots(
        rows=3,
        cols=2,
        specs=[[{"colspan": 2}, None], [{}, {}], [{"colspan": 2}, None]],
        row_heights=[0.34, 0.42, 0.24],
        vertical_spacing=0.2,
        horizontal_spacing=0.2,
        subplot_titles=(
            "activation on the prompt",
            "logit effect (per unit)",
            _hist_title(card.get("frequency")),
            "top snippets (peak in bold)",
        ),
    )
    x = [f"{i}: {_tok(t)}" for i, t in enumerate(tokens)]
    fig.add_trace(
        go.Bar(x=x, y=card["acts"], marker_color=POSITIVE, showlegend=False), row=1, col=1
    )
    top = card.get("acts_max") or 0.0
    if top > 0 and max(card["acts"]) > 1.2 * top:  # the BOS, off scale: clip and say so
        fig.update_yaxes(range=[0, 1.15 * top], row=1, col=1)
        fig.add_annotation(
            text=f"BOS: {card['acts'][0]:.3g} (off scale)", showarrow=False, xref="x domain",
            yref="y domain", x=1, y=1, xanchor="right", yanchor="top",
        )  # fmt: skip
    effects = list(reversed(card["promoted"][:5])) + list(reversed(card["suppressed"][:5]))
    fig.add_trace(
        go.Bar(
            y=[f"{_tok(t)} " for t, _ in effects],
            x=[v for _, v in effects],
            orientation="h",
            marker_color=[POSITIVE if v >= 0 else NEGATIVE for _, v in effects],
            showlegend=False,
        ),
        row=2,
        col=1,
    )
    ticks = [f"{_tok(t)} " for t, _ in effects]
    fig.update_yaxes(tickmode="array", tickvals=ticks, ticktext=ticks, row=2, col=1)
    hist = card.get("hist")
    if hist and sum(hist["counts"]):
        edges, counts = hist["edges"], hist["counts"]
        used = [i for i, c in enumerate(counts) if c]
        lo, hi = used[0], used[-1] + 1
        fig.add_trace(
            go.Bar(
                x=[(edges[i] * edges[i + 1]) ** 0.5 for i in range(lo, hi)],
                y=counts[lo:hi],
                width=[edges[i + 1] - edges[i] for i in range(lo, hi)],
                marker_color=POSITIVE,
                showlegend=False,
            ),
            row=2,
            col=2,
        )
        fig.update_xaxes(type="log", title_text="activation", row=2, col=2)
        fig.update_yaxes(title_text="tokens", row=2, col=2)
    else:
        fig.add_annotation(
            text="no corpus statistics", showarrow=False, xref="x3 domain", yref="y3 domain",
            x=0.5, y=0.5,
        )  # fmt: skip
    lines = [snippet_line(s) for s in card.get("snippets", [])] or ["no corpus statistics"]
    fig.add_trace(
        go.Scatter(x=[0], y=[0], mode="markers", opacity=0, showlegend=False), row=3, col=1
    )
    fig.update_xaxes(visible=False, row=3, col=1)
    fig.update_yaxes(visible=False, row=3, col=1)
    fig.add_annotation(
        text="<br>".join(lines), showarrow=False, align="left", xref="x4 domain",
        yref="y4 domain", x=0, y=1, xanchor="left", yanchor="top",
        font={"size": style.font_px * 0.85},
    )  # fmt: skip
    fig.update_xaxes(tickangle=-60, row=1, col=1)
    fig.update_yaxes(title_text="activation", row=1, col=1)
    label = card["label"] if len(card["label"]) <= 40 else card["label"][:39] + "…"
    head = f"{text_label(card['site'])} #{card['index']} · {text_label(label)}"
    fig.update_layout(title=title if title is not None else head, bargap=0.05)
    apply_style(fig, style, natural_height=max(5.0, style.width_in * 0.95))
    # The title sits above the panels' own titles.
    fig.update_layout(margin={"t": 3.6 * style.font_px})
    return fig
