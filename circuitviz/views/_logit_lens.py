"""LogitLensView: layers × positions, the top token written in each cell, coloured by the
answer's probability; click a cell for its top-k."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import traitlets as t

from ..engine import InputError, LogitLensResult
from ..export._logit_lens_figure import cell_text
from ._base import STATIC, View
from ._codec import encode


def row_ids(result: LogitLensResult) -> list[str]:
    """The component id of each row (a cell adds ``":P{pos}"``): the embeddings are the
    stream before layer 0, every other row the stream after its layer."""
    return ["resid_pre:L0"] + [f"resid_post:L{i}" for i in range(len(result.layers) - 1)]


def lens_payload(result: LogitLensResult) -> dict[str, Any]:
    """The ``lens`` trait: what the view draws, colour values decided here."""
    tracked = result.answer_prob is not None
    return {
        "colour": encode(result.answer_prob if tracked else result.top_probs[..., 0], "float32"),
        "colour_label": f"p({result.answer!r})" if tracked else "top-token probability",
        "top_tokens": result.top_tokens,
        "cell_text": [[cell_text(cell[0]) for cell in row] for row in result.top_tokens],
        "top_probs": encode(result.top_probs, "float32"),
        "answer": result.answer,
        "answer_rank": encode(result.answer_rank, "int32") if tracked else None,
        "layers": list(result.layers),
        "row_ids": row_ids(result),
        "tokens": list(result.tokens),
        "model": result.model_name,
    }


class LogitLensView(View):
    """A :class:`~circuitviz.LogitLensResult` as a heatmap: one row per layer (embeddings
    first), one column per position, the top token in each cell, coloured by the answer's
    probability (the top token's without an answer). Click a cell to list its top-k tokens.
    """

    _esm = STATIC / "logitlens.js"
    BUNDLE: ClassVar[str] = "logitlens"
    STATE_KEYS = ("selected",)
    #: Traits logitlens.ts writes (a clicked cell); everything else is the kernel's.
    FRONTEND_TRAITS: ClassVar[frozenset[str]] = frozenset({"selected"})

    lens = t.Dict().tag(sync=True)
    """The lens: ``colour`` ``[row, pos]`` (binary), ``colour_label``, ``top_tokens``
    ``[row][pos][k]``, ``cell_text`` ``[row][pos]`` (the top token as written in the cell), ``top_probs`` ``[row, pos, k]`` (binary), ``answer``, ``answer_rank``
    ``[row, pos]`` (binary or None), ``layers``, ``row_ids``, ``tokens``, ``model``."""

    def __init__(
        self,
        result: LogitLensResult,
        *,
        state: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(result, LogitLensResult):
            raise InputError(
                f"LogitLensView needs a LogitLensResult (from circuitviz.logit_lens), got "
                f"{type(result).__name__}."
            )
        self._lens = result
        super().__init__(lens=lens_payload(result), **kwargs)
        self._apply_state(state)

    @property
    def lens_result(self) -> LogitLensResult:
        """The :class:`~circuitviz.LogitLensResult` shown."""
        return self._lens

    def figure(self, **options: Any) -> Any:
        """The lens as a publication heatmap (see :meth:`LogitLensResult.figure`)."""
        return self._lens.figure(**options)
