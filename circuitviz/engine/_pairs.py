"""Clean/corrupted prompt pairs and their validated tokens."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from transformer_lens.model_bridge import TransformerBridge

if TYPE_CHECKING:
    from ._columns import Columns


class InputError(ValueError):
    """Bad input to an analysis; the message names the problem and the fix."""


def check_text(text: str, what: str) -> str:
    """``text`` if a tokenizer can take it: non-empty, and valid Unicode (a lone surrogate
    such as ``"\\ud800"``, left by a bad decode, can't be encoded)."""
    if not text:
        raise InputError(f"{what} is empty: give some text.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as err:
        raise InputError(
            f"{what} {text!r} contains a lone surrogate ({text[err.start]!r} at index "
            f"{err.start}), which no tokenizer can encode: remove it, or decode the text's "
            "bytes properly (e.g. data.decode('utf-8'))."
        ) from None
    return text


def _as_tuple(name: str, values: str | Sequence[str], n: int | None = None) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,) * (n or 1)
    elif not isinstance(values, Sequence):
        raise InputError(
            f"PromptPairs.{name} must be a string or a list of strings, got "
            f"{type(values).__name__}."
        )
    values = tuple(values)
    if not all(isinstance(v, str) for v in values):
        raise InputError(f"PromptPairs.{name} must be strings.")
    for i, v in enumerate(values):
        check_text(v, f"PromptPairs.{name}[{i}]")
    return values


PAIR_KEYS = ("clean", "corrupted", "answers", "wrong_answers")


def uses_bos(model: TransformerBridge, prepend_bos: bool | None) -> bool:
    """Whether prompts get a BOS token: ``prepend_bos``, or the model's convention if None."""
    return bool(model.cfg.default_prepend_bos) if prepend_bos is None else prepend_bos


def encode(model: TransformerBridge, text: str, *, prepend_bos: bool | None) -> torch.Tensor:
    """One prompt's token ids ``[pos]``. Every analysis tokenizes prompts here, so the BOS
    choice is honoured everywhere."""
    return model.to_tokens(text, prepend_bos=uses_bos(model, prepend_bos), truncate=False)[0]


@dataclass(frozen=True)
class PromptPairs:
    """A batch of clean and corrupted prompts, with the correct and wrong next tokens.

    ``clean[i]`` and ``corrupted[i]`` must tokenize to the same length; the metric reads the
    final position. Different pairs may differ in length: they are left-padded (see
    :func:`tokenize`), so position ``p`` of a map or graph is column ``p`` of the longest
    prompt — equivalently, positions are aligned from the end. ``answers[i]`` is the correct
    next token for ``clean[i]`` and ``wrong_answers[i]`` the one the corrupted prompt favours
    (a single string is used for every pair). Answers must be single tokens: include a leading space where the tokenizer
    expects one, e.g. ``" Mary"``.

    ``prepend_bos`` says whether every prompt starts with the model's BOS token: ``None``
    (default) follows the model's own convention (``model.cfg.default_prepend_bos``; the demo
    model prepends ``<|im_start|>``), ``True``/``False`` force it. It is part of the pairs'
    identity: the same prompts with and without BOS are different inputs.
    """

    clean: tuple[str, ...]
    corrupted: tuple[str, ...]
    answers: tuple[str, ...]
    wrong_answers: tuple[str, ...]
    prepend_bos: bool | None

    def __init__(
        self,
        clean: Sequence[str] | str,
        corrupted: Sequence[str] | str,
        answers: Sequence[str] | str,
        wrong_answers: Sequence[str] | str,
        *,
        prepend_bos: bool | None = None,
    ) -> None:
        if prepend_bos is not None and not isinstance(prepend_bos, bool):
            raise InputError(
                f"PromptPairs(prepend_bos=...) must be True, False or None (the model's "
                f"convention), got {prepend_bos!r}."
            )
        object.__setattr__(self, "prepend_bos", prepend_bos)
        clean_t = _as_tuple("clean", clean)
        n = len(clean_t)
        object.__setattr__(self, "clean", clean_t)
        object.__setattr__(self, "corrupted", _as_tuple("corrupted", corrupted, n))
        object.__setattr__(self, "answers", _as_tuple("answers", answers, n))
        object.__setattr__(self, "wrong_answers", _as_tuple("wrong_answers", wrong_answers, n))
        if n == 0:
            raise InputError("PromptPairs is empty: give at least one clean/corrupted pair.")
        for field in ("corrupted", "answers", "wrong_answers"):
            if len(getattr(self, field)) != n:
                raise InputError(
                    f"PromptPairs has {n} clean prompts but {len(getattr(self, field))} {field}; "
                    "give one per clean prompt."
                )

    def __len__(self) -> int:
        return len(self.clean)

    def to_dict(self) -> dict[str, Any]:
        """The pairs as JSON-ready lists, with ``prepend_bos`` (``None``: the model's default)."""
        return {
            "clean": list(self.clean),
            "corrupted": list(self.corrupted),
            "answers": list(self.answers),
            "wrong_answers": list(self.wrong_answers),
            "prepend_bos": self.prepend_bos,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PromptPairs:
        """The inverse of :meth:`to_dict`; a missing ``prepend_bos`` (older graph JSON) is
        ``None``, the model's default, which is what those files were built with."""
        missing = [k for k in PAIR_KEYS if k not in data]
        if missing:
            raise InputError(f"Prompt pairs need the lists {list(PAIR_KEYS)}; missing {missing}.")
        return cls(*(data[k] for k in PAIR_KEYS), prepend_bos=data.get("prepend_bos"))

    def tokenize(self, model: TransformerBridge) -> Tokens:
        return tokenize(model, self)


@dataclass(frozen=True, eq=False)
class Tokens:
    """Validated tokens of a :class:`PromptPairs` on one model."""

    clean: torch.Tensor  # [batch, pos]
    corrupted: torch.Tensor  # [batch, pos]
    answers: torch.Tensor  # [batch]
    wrong_answers: torch.Tensor  # [batch]
    str_tokens: list[str]  # of clean[0], exactly as fed (with BOS if it was prepended)
    prepend_bos: bool  # whether a BOS token was prepended
    # [batch, pos], 1 = token, 0 = padding: only for prompts of mixed lengths, left-padded so
    # that every prompt's final token is the last position (None: no padding).
    attention_mask: torch.Tensor | None = None
    # Each prompt's tokens per column, for the maps' partial-column marks (None: no padding).
    columns: Columns | None = None

    @property
    def batch(self) -> int:
        return self.clean.shape[0]

    @property
    def n_pos(self) -> int:
        return self.clean.shape[1]

    @property
    def longest(self) -> int:
        """The index of the (first) longest prompt pair, whose tokens label the columns: its
        position ``p`` is column ``p``."""
        if self.attention_mask is None:
            return 0
        return int(self.attention_mask.all(1).nonzero()[0, 0])

    def mean_weights(self) -> torch.Tensor | None:
        """``[batch, pos]`` weights whose weighted sum over the batch is each position's mean
        over the prompts that have a token there; None when unpadded (a plain mean)."""
        if self.attention_mask is None:
            return None
        m = self.attention_mask.float()
        return m / m.sum(0, keepdim=True).clamp(min=1)

    def masked_mean(self, x: torch.Tensor) -> torch.Tensor:
        """The batch mean of ``x [batch, pos, ...]`` at each position, over the prompts that
        have a token there (padding left out), ``[1, pos, ...]``. Unpadded: ``x.mean(0)``.
        (``backends._program.source`` applies the same weights on a server.)"""
        w = self.mean_weights()
        if w is None:
            return x.mean(0, keepdim=True)
        w = w.to(x.device, x.dtype)
        return (x * w.reshape(*w.shape, *([1] * (x.ndim - 2)))).sum(0, keepdim=True)

    def real_rows(self, x: torch.Tensor) -> torch.Tensor:
        """``x [batch, pos, ...]`` flattened to its real tokens' rows ``[tokens, ...]``
        (padding left out): statistics over every prompt and position."""
        flat = x.reshape(-1, *x.shape[2:])
        if self.attention_mask is None:
            return flat
        return flat[self.attention_mask.reshape(-1).to(x.device).bool()]

    def real(self, x: torch.Tensor, batch_dim: int = 0) -> torch.Tensor:
        """``x`` (``[..., batch, pos, ...]`` with batch at ``batch_dim``) with every padding
        position set to 0."""
        if self.attention_mask is None:
            return x
        m = self.attention_mask.to(x.device, x.dtype)
        shape = [1] * x.ndim
        shape[batch_dim], shape[batch_dim + 1] = m.shape
        return x * m.reshape(shape)


def single_token(model: TransformerBridge, text: str, what: str) -> int:
    ids = model.to_tokens(text, prepend_bos=False)[0]
    if ids.numel() != 1:
        pieces = model.to_str_tokens(text, prepend_bos=False)
        hint = "" if text.startswith(" ") else " (did you mean a leading space, e.g. ' Mary'?)"
        raise InputError(
            f"{what} {text!r} is {ids.numel()} tokens {pieces}, not one{hint}. "
            "Answers must be single tokens for this model's tokenizer."
        )
    return int(ids[0])


def _same_length(rows: list[torch.Tensor], which: str) -> None:
    lengths = {len(r) for r in rows}
    if len(lengths) > 1:
        detail = ", ".join(f"{which}[{i}]: {len(r)}" for i, r in enumerate(rows[:6]))
        raise InputError(
            f"The {which} prompts have different token lengths ({detail}…). Every prompt in a "
            "batch must tokenize to the same length for this analysis: use one template per "
            "batch, or split it (patch, attribution_patch, ablate, path_patch, "
            "logit_attribution, head_roles and circuit, with or without saes=, accept mixed "
            "lengths)."
        )


def _left_pad(rows: list[torch.Tensor], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows padded on the left to the longest, and the 0/1 mask of real tokens. Left, so
    that the final position is every prompt's own last token."""
    n = max(len(r) for r in rows)
    out = torch.full((len(rows), n), pad_id, dtype=rows[0].dtype)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, n - len(r) :] = r
        mask[i, n - len(r) :] = 1
    return out, mask


def check_pairs(pairs: object) -> PromptPairs:
    """``pairs`` if it is a :class:`PromptPairs`, else an :class:`InputError` saying how to
    build one."""
    if not isinstance(pairs, PromptPairs):
        raise InputError(
            f"Expected circuitviz.PromptPairs, got {type(pairs).__name__}; build one with "
            "PromptPairs(clean=[...], corrupted=[...], answers=[...], wrong_answers=[...])."
        )
    return pairs


def tokenize(model: TransformerBridge, pairs: PromptPairs, *, pad: bool = False) -> Tokens:
    """Tokenize and check a batch: equal lengths, single-token answers, within the context.

    With ``pad=True`` (for analyses that pass the mask on) the pairs may differ in length;
    each corrupted prompt must still match its clean one. They are left-padded and
    ``Tokens.attention_mask`` is set; ``str_tokens`` are then the longest clean prompt's."""
    from ._columns import columns_of  # both import InputError from here
    from ._models import check_bridge  # _models imports this module

    check_bridge(model)
    check_pairs(pairs)
    bos = uses_bos(model, pairs.prepend_bos)
    clean_rows = [encode(model, p, prepend_bos=bos) for p in pairs.clean]
    corr_rows = [encode(model, p, prepend_bos=bos) for p in pairs.corrupted]
    if not pad:
        _same_length(clean_rows, "clean")
        _same_length(corr_rows, "corrupted")
    for i, (c, r) in enumerate(zip(clean_rows, corr_rows, strict=True)):
        if len(c) != len(r):
            raise InputError(
                f"Clean prompts have {len(c)} tokens but corrupted prompts have {len(r)}"
                f"{f' (pair {i})' if pad else ''}: each corrupted prompt must tokenize to the "
                "same length as its clean prompt (swap names or words for others of the same "
                "token count)."
            )
    mask = None
    if len({len(c) for c in clean_rows}) > 1:
        pad_id = model.tokenizer.pad_token_id
        pad_id = int(model.tokenizer.bos_token_id or 0) if pad_id is None else int(pad_id)
        clean, mask = _left_pad(clean_rows, pad_id)
        corrupted, _ = _left_pad(corr_rows, pad_id)
        longest = max(range(len(clean_rows)), key=lambda i: len(clean_rows[i]))
    else:
        clean, corrupted, longest = torch.stack(clean_rows), torch.stack(corr_rows), 0
    n_ctx = int(model.cfg.n_ctx)
    if clean.shape[1] > n_ctx:
        raise InputError(
            f"Prompts have {clean.shape[1]} tokens but the model's context is {n_ctx}: "
            "shorten the prompts."
        )
    answers = torch.tensor([single_token(model, a, "Answer") for a in pairs.answers])
    wrong = torch.tensor([single_token(model, a, "Wrong answer") for a in pairs.wrong_answers])
    for i in (answers == wrong).nonzero()[:, 0].tolist():
        raise InputError(
            f"In pair {i}, the answer {pairs.answers[i]!r} and the wrong answer "
            f"{pairs.wrong_answers[i]!r} are the same token, so every logit difference is 0 "
            "and every map would be blank: give a wrong answer that differs from the answer."
        )
    device = model.cfg.device
    return Tokens(
        clean=clean.to(device),
        corrupted=corrupted.to(device),
        answers=answers.to(device),
        wrong_answers=wrong.to(device),
        str_tokens=list(model.to_str_tokens(clean_rows[longest])),
        prepend_bos=bos,
        attention_mask=None if mask is None else mask.to(device),
        columns=None if mask is None else columns_of([model.to_str_tokens(r) for r in clean_rows]),
    )
