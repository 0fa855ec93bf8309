"""What each position column of a left-padded prompt batch holds.

Pairs of mixed lengths are left-padded (:func:`._pairs.tokenize`): column ``p`` is position
``p`` of the longest prompt, and a shorter prompt has padding in its first columns. Padding
patches, ablates and attributes nothing, so such a column's value comes from fewer prompts
than the map's other columns, while the batch mean still divides by every prompt. This module
decides, once, which columns are partial and what a reader is told about them; the views and
the figures only draw it.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ._pairs import InputError

#: The legend entry of a partial column, in the views and in the figures.
PARTIAL_LEGEND = (
    "hatched column: padding in some prompts; only those with a token there add to it "
    "(the mean still counts all)"
)
#: At most this many distinct tokens are listed in a column's note.
NOTE_TOKENS = 4


@dataclass(frozen=True)
class Columns:
    """Each prompt's clean token in each column: ``tokens[prompt][column]``, None where that
    prompt has padding. Built by :func:`columns_of` from the token ids, never by hand."""

    tokens: tuple[tuple[str | None, ...], ...]

    @property
    def n_prompts(self) -> int:
        return len(self.tokens)

    @property
    def n_columns(self) -> int:
        return len(self.tokens[0]) if self.tokens else 0

    @property
    def present(self) -> list[int]:
        """How many prompts have a real token in each column."""
        return [sum(row[p] is not None for row in self.tokens) for p in range(self.n_columns)]

    @property
    def partial(self) -> list[int]:
        """The columns where some prompt has padding."""
        return [p for p, k in enumerate(self.present) if k < self.n_prompts]

    def note(self, p: int) -> str | None:
        """What a reader is told about column ``p`` (None for a column every prompt fills):
        how many prompts have padding there, and which tokens the others have."""
        k, n = self.present[p], self.n_prompts
        if k == n:
            return None
        counts = Counter(row[p] for row in self.tokens if row[p] is not None)
        listed = [f"{tok!r}×{c}" if c > 1 else repr(tok) for tok, c in counts.most_common()]
        more = len(listed) - NOTE_TOKENS
        shown = ", ".join(listed[:NOTE_TOKENS]) + (f", +{more} more" if more > 0 else "")
        who = "1 prompt with a token here adds" if k == 1 else f"{k} prompts with a token here add"
        return f"pad in {n - k} of {n} prompts: only the {who} to this column ({shown})"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: the per-prompt tokens, and what the views draw — ``present`` counts,
        ``notes`` (None for full columns) and the ``legend`` text."""
        return {
            "n_prompts": self.n_prompts,
            "present": self.present,
            "notes": [self.note(p) for p in range(self.n_columns)],
            "legend": PARTIAL_LEGEND,
            "tokens": [list(row) for row in self.tokens],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Columns:
        """The inverse of :meth:`to_dict` (only ``tokens`` is read: the rest follows)."""
        rows = data.get("tokens") if isinstance(data, Mapping) else None
        if not isinstance(rows, list) or not rows or not all(isinstance(r, list) for r in rows):
            raise InputError("'columns' needs 'tokens': one list per prompt (null = padding).")
        if len({len(r) for r in rows}) != 1:
            raise InputError("'columns.tokens' rows must all have one entry per column.")
        if not all(t is None or isinstance(t, str) for r in rows for t in r):
            raise InputError("'columns.tokens' entries must be token strings or null.")
        return cls(tuple(tuple(r) for r in rows))


def columns_of(rows: Sequence[Sequence[str]]) -> Columns | None:
    """The columns of a left-padded batch of prompts given as their string tokens, or None
    when every prompt has the same length (no column is partial)."""
    width = max(len(r) for r in rows)
    if all(len(r) == width for r in rows):
        return None
    return Columns(tuple((None,) * (width - len(r)) + tuple(r) for r in rows))


def map_columns(result: Any) -> dict[str, Any] | None:
    """What the PatchingView sends and ``patch_figure`` draws about a map's position columns
    (a :class:`~circuitviz.PatchResult`; maps put positions on the heatmap's columns): None
    when the map has no ``pos`` axis or no column is partial."""
    columns = result.columns
    if "pos" not in result.axes or columns is None or not columns.partial:
        return None
    if columns.n_columns != len(result.labels["pos"]):  # not this batch's positions
        return None
    return columns.to_dict()


def notes_of(info: Mapping[str, Any] | None) -> dict[int, str]:
    """``{column: note}`` of the partial columns of a ``Columns.to_dict()`` payload (graph
    JSON read from a file included), the notes recomputed from its tokens."""
    if not info:
        return {}
    columns = Columns.from_dict(info)
    return {p: note for p in columns.partial if (note := columns.note(p))}
