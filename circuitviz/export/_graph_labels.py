"""Node labels of the static circuit figure: text boxes estimated from the font size, the
figure's data → pixel geometry, and greedy collision-free placement (most important node
first, in the first of four spots around its node that overlaps no placed label and no
other node's marker; nodes with no free spot stay unlabelled, their id in the hover text).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ._style import text_label

# Width of a text character relative to the font size: generous for digits and capitals in
# Arial/Liberation Sans (≈ 0.56–0.67), so estimated boxes contain the real ones.
CHAR_WIDTH = 0.64
LINE_HEIGHT = 1.25
LABEL_SCALE = 0.9  # node labels and legend, relative to the style's font size


@dataclass(frozen=True)
class Box:
    x0: float
    y0: float
    x1: float
    y1: float

    def overlaps(self, other: Box) -> bool:
        return (
            self.x0 < other.x1 and other.x0 < self.x1 and self.y0 < other.y1 and other.y0 < self.y1
        )

    def inside(self, outer: Box) -> bool:
        return (
            self.x0 >= outer.x0
            and self.y0 >= outer.y0
            and self.x1 <= outer.x1
            and self.y1 <= outer.y1
        )


def text_box_size(text: str, font_px: float) -> tuple[float, float]:
    """Estimated (width, height) in px of one line of text."""
    return len(text) * font_px * CHAR_WIDTH + 2, font_px * LINE_HEIGHT


class Geometry:
    """Data coordinates → figure pixels (y down), given fixed margins and axis ranges."""

    def __init__(self, *, width, height, margin, x_range, y_range):
        self.width, self.height, self.margin = width, height, margin
        self.x_range, self.y_range = x_range, y_range
        self.plot_w = width - margin["l"] - margin["r"]
        self.plot_h = height - margin["t"] - margin["b"]

    def px(self, x: float, y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        return (
            self.margin["l"] + (x - x0) / (x1 - x0) * self.plot_w,
            self.margin["t"] + (y1 - y) / (y1 - y0) * self.plot_h,
        )

    def data(self, px_x: float, px_y: float) -> tuple[float, float]:
        (x0, x1), (y0, y1) = self.x_range, self.y_range
        return (
            x0 + (px_x - self.margin["l"]) / self.plot_w * (x1 - x0),
            y1 - (px_y - self.margin["t"]) / self.plot_h * (y1 - y0),
        )


def place_labels(
    items: list[tuple[str, str, float, float, float]],
    obstacles: dict[str, Box],
    *,
    font_px: float,
    bounds: Box,
) -> list[tuple[str, str, str, Box]]:
    """Greedy label placement. ``items``: (node id, text, px x, px y, marker radius) in
    priority order. Returns (id, text, spot, box) for the labels that fit."""
    placed: list[tuple[str, str, str, Box]] = []
    boxes: list[Box] = []
    for node_id, text, cx, cy, r in items:
        w, h = text_box_size(text, font_px)
        gap = r + 1.5
        spots = {
            "top": Box(cx - w / 2, cy - gap - h, cx + w / 2, cy - gap),
            "right": Box(cx + gap, cy - h / 2, cx + gap + w, cy + h / 2),
            "left": Box(cx - gap - w, cy - h / 2, cx - gap, cy + h / 2),
            "bottom": Box(cx - w / 2, cy + gap, cx + w / 2, cy + gap + h),
        }
        for spot, box in spots.items():
            if not box.inside(bounds) or any(box.overlaps(b) for b in boxes):
                continue
            if any(box.overlaps(o) for oid, o in obstacles.items() if oid != node_id):
                continue
            placed.append((node_id, text, spot, box))
            boxes.append(box)
            break
    return placed


def _truncate(text: str, n: int) -> str:
    return text if len(text) <= n else text[: n - 1] + "…"


def node_caption(node: dict[str, Any], *, short: bool) -> str:
    """A node's label text, as CircuitView writes it (``labelText`` in js/src/circuit.ts): an
    SAE latent's or error node's label in 18 characters, a supernode's (which names its SAE
    site) in 32; on per-position graphs (``short``) other nodes by id without the position."""
    kind, label = node.get("type"), node.get("label")
    if kind in ("feature", "error"):
        return _truncate(str(label or node["id"].split(":")[0]), 18)
    if kind == "supernode":
        return _truncate(str(label or node["id"]), 32)
    return node["id"].split(":")[0] if short else str(label or node["id"])


def label_trace(nodes, pos, size, geo: Geometry, selected, *, short: bool, style, avoid=None):
    """Node labels placed by :func:`place_labels`, as one text trace (hundreds of
    annotations would be slow to build and render)."""
    import plotly.graph_objects as go

    # Most important first; a label may not cover another node's marker.
    obstacles = {}
    for n in nodes:
        cx, cy = geo.px(*pos[n["id"]])
        r = size[n["id"]] / 2 + (3 if n["id"] == selected else 0)
        obstacles[n["id"]] = Box(cx - r, cy - r, cx + r, cy + r)
    obstacles.update({k: Box(*b) for k, b in (avoid or {}).items()})  # e.g. role badges

    def priority(n: dict[str, Any]):
        return (
            n["id"] != selected,
            n.get("type") not in ("embed", "logits"),
            -abs(n.get("score") or 0),
        )

    items = []
    for n in sorted(nodes, key=priority):
        cx, cy = geo.px(*pos[n["id"]])
        text = node_caption(n, short=short)
        items.append((n["id"], text, cx, cy, obstacles[n["id"]].x1 - cx))
    plot_area = Box(geo.margin["l"] - 2, geo.margin["t"], geo.width - 1, geo.height - 1)
    labels = place_labels(items, obstacles, font_px=style.font_px * LABEL_SCALE, bounds=plot_area)
    centres = [geo.data((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2) for _, _, _, b in labels]
    return go.Scatter(
        x=[x for x, _ in centres],
        y=[y for _, y in centres],
        mode="text",
        cliponaxis=False,  # labels may reach into the right margin; bounds keep them on the paper
        text=[text_label(text) for _, text, _, _ in labels],
        textposition="middle center",
        # A white halo keeps labels readable over edges.
        textfont={
            "size": style.font_px * LABEL_SCALE,
            "family": style.font_family,
            "color": "#222222",
            "shadow": "1px 1px 1px white, -1px -1px 1px white, 1px -1px 1px white, -1px 1px 1px white",
        },
        customdata=[text_label(node_id) for node_id, _, _, _ in labels],
        hoverinfo="skip",
        showlegend=False,
        name="labels",
    )
