"""AttentionView: every head of one prompt as a thumbnail grid, one head in detail.

Patterns are sent lazily: the widget carries max-pooled ``uint8`` thumbnails (a few hundred KB
for any prompt length); a layer's full float16 patterns go only when one of its heads is
focused, as row chunks of at most 4 MiB each (``{"type": "request_layer", "layer": L}``).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
import traitlets as t
from torch.nn import functional as F

from ..engine import AttentionResult, InputError, attention
from ..engine._results import head_id
from ._base import STATIC, View
from ._codec import encode, row_chunks

ROLES = ("previous_token", "duplicate_token", "induction")


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
    STATE_KEYS = ("selected", "show_scores")
    FRONTEND_TRAITS = frozenset({"selected", "show_scores"})

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

    def __init__(
        self,
        model: Any,
        prompt: str | None = None,
        *,
        state: Mapping[str, Any] | None = None,
        thumbnail_size: int = 32,
        **kwargs: Any,
    ) -> None:
        if isinstance(model, AttentionResult):
            res = model
        elif prompt is None:
            raise InputError("AttentionView(model, prompt) needs a prompt string.")
        else:
            res = attention(model, prompt)
        self._result = res
        super().__init__(
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
        """The focused head's pattern, or the head-role scores when the grid shows a role's
        scores (see :func:`circuitviz.export.attention_figure`)."""
        from ..export import attention_figure

        if self.show_scores and not {"layer", "head"} & set(options):
            return attention_figure(self._result, **{"roles": (self.show_scores,), **options})
        head = r"L(\d+)H(\d+)"
        m = re.fullmatch(head, self.selected) or re.fullmatch(
            head, self._default_head(self._result)
        )
        return attention_figure(self._result, **{"layer": int(m[1]), "head": int(m[2]), **options})

    @t.validate("show_scores")
    def _check_role(self, proposal: Any) -> str:
        if proposal["value"] not in ("", *ROLES):
            raise t.TraitError(f"show_scores must be '' or one of {ROLES}.")
        return proposal["value"]

    def layer_messages(self, layer: int) -> list[tuple[dict[str, Any], list[bytes]]]:
        """The messages that carry one layer's full patterns: float16 row chunks per head."""
        if not isinstance(layer, int) or isinstance(layer, bool) or not 0 <= layer < self.n_layers:
            raise InputError(f"Layer {layer!r} is out of range 0–{self.n_layers - 1}.")
        pats = self._result.patterns[layer].to(torch.float16)
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
                    "chunks": total,
                    "dtype": "float16",
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

    def static_replies(self, budget: int = 48 * 2**20) -> list[dict[str, Any]]:
        """Replies the standalone HTML page replays without a kernel: the focused head's layer
        first, then the others in order while they fit in ``budget`` bytes (the rest say they
        need a kernel)."""
        m = re.fullmatch(r"L(\d+)H\d+", self.selected)
        first = int(m[1]) if m and int(m[1]) < self.n_layers else 0
        order = [first, *(layer for layer in range(self.n_layers) if layer != first)]
        replies, used = [], 0
        for layer in order:
            msgs = self.layer_messages(layer)
            size = sum(len(b) for _, bufs in msgs for b in bufs)
            if used + size > budget:
                notice = (
                    f"Layer {layer} is not embedded in this page (over the size budget); "
                    "open the view in Jupyter, or export a shorter prompt."
                )
                msgs = [({"type": "error", "layer": layer, "message": notice}, [])]
            else:
                used += size
            replies.append({"match": {"type": "request_layer", "layer": layer}, "messages": msgs})
        return replies
