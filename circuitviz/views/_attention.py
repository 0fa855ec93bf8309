"""AttentionView: every head of one prompt as a thumbnail grid, one head in detail.

Patterns are sent lazily: the widget carries max-pooled ``uint8`` thumbnails (a few hundred KB
for any prompt length); a layer's full float16 patterns go only when one of its heads is
focused, as row chunks of at most 4 MiB each (``{"type": "request_layer", "layer": L}``).

A standalone HTML page has no kernel to ask, so it embeds the layers' replies up to a size
budget; when full layers don't fit it embeds them downsampled (block maxima over token bins,
the first token kept in a bin of its own) and each reply says so in its ``notice``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import traitlets as t
from torch.nn import functional as F
from tqdm.auto import tqdm

from ..engine import AttentionResult, InputError, attention
from ..engine._badges import badge_legend, role_map
from ..engine._results import head_id
from ..export._figures import COLOR_SCALES, LOG_FLOOR, bin_edges, block_max
from ._base import STATIC, View
from ._codec import encode, row_chunks

ROLES = ("previous_token", "duplicate_token", "induction")
#: Bytes of layer replies a standalone HTML page embeds (before base64).
HTML_BUDGET = 48 * 2**20
#: Fewer bins per axis than this is no longer a picture of the pattern.
MIN_BINS = 16


def thumbnails(patterns: torch.Tensor, size: int) -> torch.Tensor:
    """Max-pool every head's ``[dest, src]`` pattern to at most ``size × size``, as uint8.

    Max (not mean) pooling keeps a single sharp stripe visible in a 1,000-token prompt.
    """
    n_layers, n_heads, n_pos, _ = patterns.shape
    s = min(size, n_pos)
    out = torch.empty(n_layers, n_heads, s, s, dtype=torch.uint8)
    for layer in range(n_layers):  # one layer at a time keeps float32 copies small
        pooled = F.adaptive_max_pool2d(patterns[layer].float()[:, None], s)[:, 0]
        out[layer] = (pooled.clamp(0, 1) * 255).round().to(torch.uint8)
    return out


class AttentionView(View):
    """Attention patterns of every layer and head for one prompt.

    ``AttentionView(model, prompt)`` runs :func:`circuitviz.attention`;
    ``AttentionView(result)`` shows an existing :class:`~circuitviz.AttentionResult`.
    Click a thumbnail to focus a head: its query × key matrix and the prompt's text, where
    hovering a token shows what it attends to (background) and what attends to it (underline).
    """

    _esm = STATIC / "attention.js"
    BUNDLE: ClassVar[str] = "attention"
    STATE_KEYS = ("selected", "show_scores", "hide_bos", "color_scale")
    #: Traits attention.ts writes.
    FRONTEND_TRAITS: ClassVar[frozenset[str]] = frozenset(
        {"selected", "show_scores", "hide_bos", "color_scale"}
    )

    tokens = t.List(t.Unicode()).tag(sync=True)
    """The prompt's tokens, as text (never HTML)."""

    n_layers = t.Int(0).tag(sync=True)
    """Number of layers."""

    n_heads = t.Int(0).tag(sync=True)
    """Number of (query) heads per layer."""

    model_name = t.Unicode("").tag(sync=True)
    """Name of the model, for the title."""

    thumbnails = t.Dict().tag(sync=True)
    """Binary uint8 ``[layer, head, s, s]``: max-pooled patterns × 255."""

    scores = t.Dict().tag(sync=True)
    """Head-role scores, ``{role: binary float32 [layer, head]}``."""

    show_scores = t.Unicode("").tag(sync=True)
    """Role whose scores colour the grid: ``""`` (patterns), ``"previous_token"``,
    ``"duplicate_token"`` or ``"induction"``."""

    hide_bos = t.Bool(False).tag(sync=True)
    """Hide the first key column (the BOS token): most heads park attention there (the
    "attention sink"), which outshines every other key."""

    color_scale = t.Unicode("linear").tag(sync=True)
    """Colour scale of the focused head's pattern: ``"linear"``, ``"sqrt"`` (√p: faint
    attention shows) or ``"log"`` (log10 p, from ``log_floor`` to 1)."""

    log_floor = t.Float(LOG_FLOOR, read_only=True).tag(sync=True)
    """The smallest attention the log scale tells apart (smaller values share its colour)."""

    roles = t.Dict().tag(sync=True)
    """Head id → its roles (from ``roles=``, a :class:`~circuitviz.HeadRoles`), drawn as
    badges in the grid's cells."""

    role_badges = t.List(t.Dict()).tag(sync=True)
    """Legend of the badges drawn: ``{role, text, color, label}`` per role present."""

    def __init__(
        self,
        model: Any,
        prompt: str | None = None,
        *,
        state: Mapping[str, Any] | None = None,
        thumbnail_size: int = 32,
        prepend_bos: bool | None = None,
        roles: Any = None,
        **kwargs: Any,
    ) -> None:
        # prepend_bos: as circuitviz.attention (None: the model's own convention).
        # roles: a HeadRoles (circuitviz.head_roles) or {head: [roles]}, shown as badges.
        if isinstance(model, AttentionResult):
            res = model
        elif prompt is None:
            raise InputError("AttentionView(model, prompt) needs a prompt string.")
        else:
            res = attention(model, prompt, prepend_bos=prepend_bos)
        self._result = res
        role_of = role_map(roles, n_layers=res.n_layers, n_heads=res.n_heads)
        self._roles = role_of
        super().__init__(
            roles=role_of,
            role_badges=badge_legend(role_of),
            tokens=[str(tok) for tok in res.tokens],
            n_layers=res.n_layers,
            n_heads=res.n_heads,
            model_name=res.model_name,
            thumbnails=encode(thumbnails(res.patterns, thumbnail_size), "uint8"),
            scores={r: encode(res.scores[r], "float32") for r in ROLES if r in res.scores},
            selected=self._default_head(res),
            **kwargs,
        )
        self._apply_state(state)

    @staticmethod
    def _default_head(res: AttentionResult) -> str:
        """Open on the strongest induction head if the prompt repeats, else previous-token."""
        for role in ("induction", "previous_token"):
            if role in res.scores and float(res.scores[role].max()) > 0.3:
                return res.top_heads(role, 1)[0][0]
        return head_id(0, 0)

    @property
    def attention(self) -> AttentionResult:
        """The :class:`~circuitviz.AttentionResult` shown."""
        return self._result

    def figure(self, **options: Any) -> Any:
        """The focused head's pattern with the view's ``hide_bos`` and ``color_scale``, or the
        head-role scores when the grid shows a role's scores (see
        :func:`circuitviz.export.attention_figure`)."""
        from ..export import attention_figure

        if self._roles:
            options = {"head_roles": self._roles, **options}
        if self.show_scores and not {"layer", "head"} & set(options):
            return attention_figure(self._result, **{"roles": (self.show_scores,), **options})
        head = r"L(\d+)H(\d+)"
        m = re.fullmatch(head, self.selected) or re.fullmatch(
            head, self._default_head(self._result)
        )
        shown = {
            "layer": int(m[1]),
            "head": int(m[2]),
            "hide_bos": self.hide_bos,
            "color_scale": self.color_scale,
        }
        return attention_figure(self._result, **{**shown, **options})

    @t.validate("show_scores")
    def _check_role(self, proposal: Any) -> str:
        if proposal["value"] not in ("", *ROLES):
            raise t.TraitError(f"show_scores must be '' or one of {ROLES}.")
        return proposal["value"]

    @t.validate("color_scale")
    def _check_color_scale(self, proposal: Any) -> str:
        if proposal["value"] not in COLOR_SCALES:
            raise t.TraitError(f"color_scale must be one of {COLOR_SCALES}.")
        return proposal["value"]

    def layer_messages(
        self, layer: int, *, bins: int | None = None, notice: str = ""
    ) -> list[tuple[dict[str, Any], list[bytes]]]:
        """The messages that carry one layer's patterns: float16 row chunks per head.

        ``bins``: downsample to at most this many token bins per axis (see
        :func:`block_max`); the messages then carry the bins' token ``edges`` and ``notice``.
        """
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.n_layers:
            raise InputError(f"Layer {layer!r} is out of range 0–{self.n_layers - 1}.")
        pats = self._result.patterns[layer]
        n_tokens = pats.shape[-1]
        extra: dict[str, Any] = {}
        if bins is not None and bins < n_tokens:
            edges = bin_edges(n_tokens, bins)
            pats = block_max(pats, edges)
            extra = {"edges": edges, "notice": notice}
        pats = pats.to(torch.float16)
        n_pos = pats.shape[-1]
        ranges = row_chunks(n_pos, n_pos * 2)
        total = len(ranges) * self.n_heads
        out = []
        for head in range(self.n_heads):
            for r0, r1 in ranges:
                content = {
                    "type": "layer",
                    "layer": layer,
                    "head": head,
                    "row0": r0,
                    "row1": r1,
                    "n_pos": n_pos,
                    "n_tokens": n_tokens,
                    "chunks": total,
                    "dtype": "float16",
                    **extra,
                }
                out.append((content, [encode(pats[head, r0:r1], "float16")["view"]]))
        return out

    def _msg_request_layer(self, content: dict[str, Any]) -> None:
        try:
            messages = self.layer_messages(content.get("layer"))
        except InputError as err:
            self.send({"type": "error", "layer": content.get("layer"), "message": str(err)})
            return
        for msg, buffers in messages:
            self.send(msg, buffers=buffers)

    def static_replies(self, budget: int = HTML_BUDGET) -> list[dict[str, Any]]:
        """Replies the standalone HTML page replays without a kernel, within ``budget`` bytes.

        Every layer's full patterns when they all fit. Otherwise the focused head's layer in
        full if it takes at most half the budget, and the other layers downsampled to share
        the rest evenly (block maxima; each reply's ``notice`` says so). A layer that can't
        be shown even at :data:`MIN_BINS` bins per axis gets a notice that it needs a kernel.
        """
        m = re.fullmatch(r"L(\d+)H\d+", self.selected)
        first = int(m[1]) if m and int(m[1]) < self.n_layers else 0
        order = [first, *(layer for layer in range(self.n_layers) if layer != first)]
        n_tokens = len(self.tokens)
        full = self.n_heads * n_tokens * n_tokens * 2  # float16 bytes of one layer
        if full * self.n_layers <= budget:
            return [self._reply(layer, self.layer_messages(layer)) for layer in order]
        first_full = full <= budget // 2
        shared = order[1:] if first_full else order
        room = budget - (full if first_full else 0)
        bins = math.isqrt(room // (2 * self.n_heads * len(shared)))
        replies = [self._reply(first, self.layer_messages(first))] if first_full else []
        # block maxima of 30 layers of a 2,000-token prompt take ~20 s on a laptop CPU
        for layer in tqdm(shared, desc="downsampling layers for the page", leave=False):
            if bins >= MIN_BINS:
                notice = self._downsampled_notice(layer, full, budget, bin_edges(n_tokens, bins))
                msgs = self.layer_messages(layer, bins=bins, notice=notice)
            else:
                notice = (
                    f"Layer {layer} is not embedded in this page: full layers take "
                    f"{full / 2**20:.0f} MiB each, over the page's {budget / 2**20:.0f} MiB "
                    "budget. Open the view in Jupyter, or export a shorter prompt."
                )
                msgs = [({"type": "error", "layer": layer, "message": notice}, [])]
            replies.append(self._reply(layer, msgs))
        return replies

    @staticmethod
    def _reply(layer: int, messages: list[Any]) -> dict[str, Any]:
        return {"match": {"type": "request_layer", "layer": layer}, "messages": messages}

    @staticmethod
    def _downsampled_notice(layer: int, full: int, budget: int, edges: list[int]) -> str:
        block = edges[2] - edges[1]
        n = len(edges) - 1
        return (
            f"Downsampled: a full layer takes {full / 2**20:.0f} MiB, over this page's "
            f"{budget / 2**20:.0f} MiB budget, so layer {layer} is embedded as {n} × {n} "
            f"cells, each the largest attention in a block of up to {block} × {block} tokens "
            "(the first token keeps its own row and column). Open the view in Jupyter to see "
            "every token."
        )
