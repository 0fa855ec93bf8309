"""Publication style shared by every static figure: fonts, sizes in inches, colours, margins.

Sizes are physical. Chromium (which kaleido drives) lays pages out at 96 CSS px per inch, so
a figure ``width`` inches wide is ``width * 96`` px in plotly's layout and comes out of the
PDF exactly ``width`` inches wide; PNGs are scaled by ``dpi / 96`` to ``width * dpi`` pixels.
Font sizes are points (1/72 in), as journals specify them.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from ..engine._pairs import InputError

PX_PER_INCH = 96
PT_PER_INCH = 72
COLUMN_WIDTHS = {"single": 3.5, "double": 7.0}  # inches; typical journal column widths
MAX_INCHES = 40.0
DEFAULT_FONT = "Arial, Liberation Sans, Helvetica, DejaVu Sans, sans-serif"
TEXT_COLOUR = "#222222"

# Colour-blind-safe diverging map: ColorBrewer RdBu (11 classes), negative red, white at zero,
# positive blue — the same stops as the widgets (js/src/colors.ts), so figures match them.
_RDBU = (
    "#67001f", "#b2182b", "#d6604d", "#f4a582", "#fddbc7", "#f7f7f7",
    "#d1e5f0", "#92c5de", "#4393c3", "#2166ac", "#053061",
)  # fmt: skip
DIVERGING: list[list[Any]] = [[i / (len(_RDBU) - 1), c] for i, c in enumerate(_RDBU)]
NEGATIVE, POSITIVE = "#b2182b", "#2166ac"  # edge colours by weight sign, as in the widgets
# Sequential map for non-negative values such as attention weights (ColorBrewer Blues).
SEQUENTIAL = "Blues"
# Okabe–Ito colours (colour-blind safe) for graph node types, as in the widgets.
CATEGORICAL = {
    "embed": "#999999",
    "head": "#E69F00",
    "mlp": "#009E73",
    "logits": "#CC79A7",
    "supernode": "#56B4E9",  # as drawn in the view (js/src/clamp.ts SUPERNODE_COLOR)
    "other": "#56B4E9",
    "feature": "#56B4E9",  # SAE latents (feature graphs), drawn as tall diamonds
    "error": "#F0E442",  # SAE error terms, drawn as triangles
}


_CONTROL = {"\n": "↵", "\r": "␍", "\t": "⇥"}


def text_label(text: Any) -> str:
    """``text`` shown literally in a plotly figure. Every string a figure takes from data (a
    token, node id or label, metric, model, mode or axis name: anything a user or a shared file
    supplies) goes through here before it becomes a title, axis title, tick label, annotation,
    legend name or hover text. Plotly reads ``<b>``, ``<i>``, ``<br>``, ``<sub>``, ``<a href=…>``
    in text as markup (a link in an exported SVG), so ``& < >`` are escaped: plotly turns the
    entities back into characters and its SVG escapes them. Line breaks show as ↵ ⇥ ␍.
    An explicit ``title=`` option is the caller's own plotly text and is used as given."""
    text = str(text)
    for char, shown in _CONTROL.items():
        text = text.replace(char, shown)
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


class ExportError(InputError):
    """A figure can't be drawn or written: the message says what is wrong and how to fix it."""


@dataclass(frozen=True)
class Style:
    """Resolved publication style. Build it with :func:`make_style` (which validates)."""

    font_family: str = DEFAULT_FONT
    font_size: float = 8.0  # points
    column: str = "single"
    width: float | None = None  # inches; overrides ``column``
    height: float | None = None  # inches; default: the figure's natural height
    dpi: int = 300  # PNG only

    @property
    def width_in(self) -> float:
        return self.width if self.width is not None else COLUMN_WIDTHS[self.column]

    @property
    def font_px(self) -> float:
        return self.font_size * PX_PER_INCH / PT_PER_INCH

    def height_in(self, natural: float) -> float:
        """The requested height, else ``natural`` (inches) kept within sane bounds."""
        if self.height is not None:
            return self.height
        return min(max(natural, 1.0), 9.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


STYLE_KEYS = frozenset(f.name for f in fields(Style))


def make_style(
    *,
    font_family: str = DEFAULT_FONT,
    font_size: float = 8.0,
    column: str = "single",
    width: float | None = None,
    height: float | None = None,
    dpi: int = 300,
) -> Style:
    """Validate style options (``width``/``height`` in inches, ``font_size`` in points)."""
    if column not in COLUMN_WIDTHS:
        raise ExportError(f"column={column!r}: use 'single' (3.5 in) or 'double' (7.0 in).")
    for name, value in (("width", width), ("height", height)):
        if value is not None and not (
            isinstance(value, int | float) and 0.5 <= value <= MAX_INCHES
        ):
            raise ExportError(
                f"{name}={value!r}: give inches between 0.5 and {MAX_INCHES:g} (e.g. 3.5)."
            )
    if not (isinstance(font_size, int | float) and 2 <= font_size <= 72):
        raise ExportError(f"font_size={font_size!r}: give points between 2 and 72 (e.g. 8).")
    if not (isinstance(dpi, int | float) and 30 <= dpi <= 2400):
        raise ExportError(f"dpi={dpi!r}: give dots per inch between 30 and 2400 (e.g. 300).")
    if not isinstance(font_family, str) or not font_family.strip():
        raise ExportError(f"font_family={font_family!r}: give a CSS font list, e.g. 'Arial'.")
    return Style(font_family, float(font_size), column, width, height, int(dpi))


def split_style(options: dict[str, Any]) -> tuple[Style, dict[str, Any]]:
    """Separate style options from figure-specific ones (selection, threshold, layer…)."""
    style = {k: v for k, v in options.items() if k in STYLE_KEYS and v is not None}
    rest = {k: v for k, v in options.items() if k not in STYLE_KEYS}
    return make_style(**style), rest


def reject_unknown(rest: dict[str, Any], figure: str, allowed: tuple[str, ...]) -> None:
    if rest:
        raise TypeError(
            f"{figure} got unknown option(s) {sorted(rest)}; it takes {list(allowed)} and the "
            f"style options {sorted(STYLE_KEYS)}."
        )


def apply_style(fig, style: Style, *, natural_height: float = 2.6) -> Any:
    """Fonts, size (inches → px), white background and tight margins, in place.

    ``natural_height`` (inches) is used unless the style fixes ``height``. Axes use
    automargin, so margins grow only as far as tick labels and titles need.
    """
    font = {"family": style.font_family, "size": style.font_px, "color": TEXT_COLOUR}
    fig.update_layout(
        template="simple_white",
        font=font,
        width=style.width_in * PX_PER_INCH,
        height=style.height_in(natural_height) * PX_PER_INCH,
        margin={"l": 4, "r": 4, "t": 4, "b": 4, "pad": 0, "autoexpand": True},
        paper_bgcolor="white",
        plot_bgcolor="white",
    )
    if fig.layout.title.text:
        fig.update_layout(
            title={
                "font": {**font, "size": style.font_px * 1.1},
                "x": 0.0,
                "xref": "paper",
                "xanchor": "left",
                "y": 1.0,
                "yref": "container",
                "yanchor": "top",
                "pad": {"t": 2, "l": 0},
                "automargin": True,
            }
        )
    fig.update_xaxes(automargin=True, ticks="outside", ticklen=2, title_standoff=2)
    fig.update_yaxes(automargin=True, ticks="outside", ticklen=2, title_standoff=2)
    fig.update_annotations(font={**font, "size": style.font_px})
    fig.update_traces(
        selector={"type": "heatmap"},
        colorbar={
            "thickness": max(6.0, style.font_px * 0.8),
            "outlinewidth": 0,
            "ticklen": 2,
            "tickfont": font,
            "title": {"font": font, "side": "right"},
        },
    )
    meta = dict(fig.layout.meta) if isinstance(fig.layout.meta, dict) else {}
    meta["circuitviz_style"] = style.to_dict()
    fig.update_layout(meta=meta)
    return fig


def is_styled(fig) -> bool:
    return isinstance(fig.layout.meta, dict) and "circuitviz_style" in fig.layout.meta


def png_pixels(inches: float, dpi: int) -> int:
    return max(1, round(inches * dpi))


def css_for_pixels(pixels: int, scale: float) -> float:
    """Layout px that kaleido turns into exactly ``pixels`` after ``scale`` (it floors)."""
    css = pixels / scale
    while css * scale < pixels:  # float rounding below the integer would lose a pixel
        css = math.nextafter(css, math.inf)
    return css
