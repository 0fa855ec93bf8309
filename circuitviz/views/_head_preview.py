"""CircuitView's head preview: one head's attention pattern and role scores, on the clean
prompt whose positions are the graph's columns.

Protocol (mirrors ``js/src/circuit_parts.ts``)::

    view → kernel  {"type": "head_pattern", "head": "L3H5", "request": "head:L3H5"}
    kernel → view  {"type": "head_pattern", "head": "L3H5", "tokens": [...], "roles": {...},
                    "request": "head:L3H5"} with the pattern ``[pos, pos]`` as uint8 (×255)
"""

from __future__ import annotations

import re
from typing import Any

import torch

from ..engine import InputError, PromptPairs, backends
from ..engine._pairs import tokenize


def column_prompt(model: Any, pairs: PromptPairs) -> str:
    """The clean prompt whose positions are a graph's columns over ``pairs``: the first, or
    with mixed lengths the (first) longest, as the pairs are left-padded
    (:attr:`circuitviz.engine._pairs.Tokens.longest`)."""
    with backends.ported():  # tokenizing only: as for the bridge, on nnsight too
        return pairs.clean[tokenize(model, pairs, pad=True).longest]


class HeadPreview:
    """The ``head_pattern`` message: the side panel's hover preview of a head. The patterns
    are computed once per view (one ``attention`` pass over :func:`column_prompt`)."""

    _model: Any
    _pairs: PromptPairs | None
    _attention: Any

    def _msg_head_pattern(self, content: dict[str, Any]) -> None:
        """The attention pattern of one head on the graph's column prompt (uint8, ×255) and
        its role scores."""
        head = content.get("head")
        m = re.fullmatch(r"L(\d+)H(\d+)(?::P\d+)?", head) if isinstance(head, str) else None
        if m is None:
            raise InputError(f"head_pattern: {head!r} is not a head id like 'L3H5'.")
        if self._model is None or self._pairs is None:
            raise InputError("The attention preview needs a live kernel with model= and pairs=.")
        if self._attention is None:
            from ..engine import attention

            prompt = column_prompt(self._model, self._pairs)
            self._attention = attention(self._model, prompt, prepend_bos=self._pairs.prepend_bos)
        res = self._attention
        layer, index = int(m[1]), int(m[2])
        if layer >= res.n_layers or index >= res.n_heads:
            raise InputError(f"head_pattern: {head} is not in this model.")
        pattern = res.patterns[layer, index].float().clamp(0, 1)
        data = (pattern * 255).round().to(torch.uint8).numpy().tobytes()
        roles = {r: float(s[layer, index]) for r, s in res.scores.items()}
        self.send(  # type: ignore[attr-defined]
            {
                "type": "head_pattern",
                "head": m[0].split(":")[0],
                "tokens": list(res.tokens),
                "roles": roles,
                "request": content.get("request"),
            },
            [data],
        )
