"""The logit lens: what the model would predict if it stopped after each layer.

Each layer's residual stream (``blocks.{L}.hook_resid_post``; row 0 is the embeddings,
``blocks.0.hook_resid_pre``) goes through the model's own final norm, with statistics
recomputed for that layer's vector, and the unembedding — as TransformerLens's ``logit_lens``
does; its last row is the model's output.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from . import _devices, _hooks, backends
from ._models import model_name
from ._pairs import InputError, single_token


@dataclass(eq=False)
class LogitLensResult:
    """The logit lens of one prompt: rows are the embeddings and the output of each layer.

    ``top_tokens [row, pos, k]`` (strings) and ``top_ids``/``top_probs`` (same shape): the
    ``k`` most probable next tokens read at each row and position. ``answer_prob`` and
    ``answer_rank`` ``[row, pos]`` (rank 0 = the top token; ties count only strictly larger
    logits): the answer's probability and rank at each cell, or None without an answer.
    ``layers``: the row labels (``"embed"``, ``"L0"``, …); ``tokens``: the prompt's tokens.
    """

    top_ids: torch.Tensor
    top_tokens: list[list[list[str]]]
    top_probs: torch.Tensor
    answer: str | None
    answer_id: int | None
    answer_prob: torch.Tensor | None
    answer_rank: torch.Tensor | None
    layers: list[str]
    tokens: list[str]
    model_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return self.top_probs.shape[-1]

    def __repr__(self) -> str:
        rows, n_pos = self.top_probs.shape[:2]
        final = ", ".join(
            f"{t!r} {p:.3f}"
            for t, p in zip(
                self.top_tokens[-1][-1][:3], self.top_probs[-1, -1, :3].tolist(), strict=True
            )
        )
        head = f"LogitLensResult({rows} rows × {n_pos} positions, top-{self.k}; output: {final}"
        if self.answer_prob is None:
            return head + ")"
        first = self.first_top_layer()
        return (
            f"{head}; answer {self.answer!r}: p={float(self.answer_prob[-1, -1]):.3f}, "
            f"rank {int(self.answer_rank[-1, -1])}, top from {first or 'never'})"
        )

    def first_top_layer(self, pos: int = -1) -> str | None:
        """The first row at which the answer is the top token at ``pos`` (None if never)."""
        if self.answer_rank is None:
            raise InputError("This logit lens has no answer: pass answer=' token'.")
        hits = (self.answer_rank[:, pos] == 0).nonzero()
        return self.layers[int(hits[0])] if len(hits) else None

    def figure(self, **style: Any):
        """A heatmap: rows × positions, coloured by the answer's probability (by the top
        token's without an answer), the top token written in each cell."""
        from ..export import logit_lens_figure

        return logit_lens_figure(self, **style)

    def save(self, path: str | os.PathLike, **style: Any) -> Path:
        """Write this as SVG, PDF, PNG or standalone HTML (by extension); returns the path."""
        from ..export import save

        return save(self, path, **style)


def _final_norm_module(model: TransformerBridge) -> Callable[[torch.Tensor], torch.Tensor]:
    # The wrapped torch module: calling it fires none of the bridge's hooks. Through
    # _devices, so an offloaded or other-device norm works.
    return _devices.calling(model, getattr(model.ln_final, "_original_component", model.ln_final))


def _unembed(W_U: torch.Tensor, b_U: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    logits = x.to(W_U.device) @ W_U
    return logits if b_U is None else logits + b_U


def _resid_names(n_layers: int) -> list[str]:
    return ["blocks.0.hook_resid_pre"] + [f"blocks.{i}.hook_resid_post" for i in range(n_layers)]


def lens_input(model: Any, prompt: str, answer: str | None, k: int):
    """Checked ``(tokens [1, pos], answer_id)`` of a logit lens request (either backend)."""
    if not isinstance(prompt, str) or not prompt.strip():
        raise InputError(f"logit_lens needs one non-empty prompt string, got {prompt!r}.")
    if not isinstance(k, int) or not 1 <= k <= model.cfg.d_vocab:
        raise InputError(f"k must be an integer between 1 and {model.cfg.d_vocab}, got {k!r}.")
    answer_id = None if answer is None else single_token(model, answer, "answer")
    tokens = model.to_tokens(prompt, truncate=False)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise InputError(
            f"The prompt has {tokens.shape[1]} tokens but the model's context is "
            f"{model.cfg.n_ctx}: shorten it."
        )
    return tokens, answer_id


def check_readout(gap: float) -> None:
    """The last row must be the model's own prediction, else the readout is not norm ->
    unembed (a softcap, say) and no row can be trusted; ``gap``: the largest difference of
    their probabilities."""
    if not gap <= 1e-3:
        raise InputError(
            "logit_lens can't read this model: its output is not final norm then W_U "
            "(e.g. a logit softcap or scale), so the lens would not end at its prediction."
        )


def lens_result(
    model: Any,
    tokens: torch.Tensor,
    answer: str | None,
    answer_id: int | None,
    rows: dict[str, torch.Tensor],
    extra: dict[str, Any] | None = None,
) -> LogitLensResult:
    """The result from ``rows``: ``top_ids``/``top_probs`` ``[row, pos, k]`` and, with an
    answer, ``answer_prob``/``answer_rank`` ``[row, pos]``."""
    top_ids = rows["top_ids"].cpu()
    return LogitLensResult(
        top_ids=top_ids,
        top_tokens=[
            [[model.tokenizer.decode([i]) for i in cell] for cell in row]
            for row in top_ids.tolist()
        ],
        top_probs=rows["top_probs"].cpu(),
        answer=answer,
        answer_id=answer_id,
        answer_prob=rows["answer_prob"].cpu() if answer_id is not None else None,
        answer_rank=rows["answer_rank"].cpu() if answer_id is not None else None,
        layers=["embed"] + [f"L{i}" for i in range(model.cfg.n_layers)],
        tokens=[str(t) for t in model.to_str_tokens(tokens[0])],
        model_name=model_name(model),
        extra=dict(extra or {}),
    )


def logit_lens(
    model: TransformerBridge,
    prompt: str,
    *,
    answer: str | None = None,
    k: int = 10,
) -> LogitLensResult:
    """Read the residual stream after every layer through the final norm and unembedding.

    Args:
        prompt: one prompt (BOS is prepended as for every analysis).
        answer: a single-token answer (e.g. ``" Mary"``) whose probability and rank are
            tracked at every row and position; None tracks nothing.
        k: how many top tokens to keep per cell.

    On an nnsight model (locally or on NDIF) the same numbers come from one request that
    returns only each cell's top ``k`` and the answer's probability and rank.
    """
    if (seam := backends.route(model, "logit_lens")) is not None:
        return seam(model, prompt, answer=answer, k=k)
    tokens, answer_id = lens_input(model, prompt, answer, k)
    names = _resid_names(model.cfg.n_layers)
    store: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(x: torch.Tensor, hook: object) -> None:
            store[name] = x.detach()[0]

        return hook

    with torch.inference_mode():
        output = _hooks.run(model, tokens, [(n, keep(n)) for n in names])[0].float()
        norm = _final_norm_module(model)
        W_U, b_U = _devices.read(model, model.unembed, "W_U", "b_U")
        rows: dict[str, list[torch.Tensor]] = {
            "top_ids": [],
            "top_probs": [],
            "answer_prob": [],
            "answer_rank": [],
        }
        for name in names:  # one row at a time: [pos, d_vocab] logits, never [rows, pos, vocab]
            logits = _unembed(W_U, b_U, norm(store.pop(name))).float()
            probs = logits.softmax(-1)
            p, i = probs.topk(k, dim=-1)
            rows["top_ids"].append(i)
            rows["top_probs"].append(p)
            if answer_id is not None:
                rows["answer_prob"].append(probs[:, answer_id])
                rows["answer_rank"].append((logits > logits[:, answer_id, None]).sum(-1))
        # On several devices the lens rows sit on W_U's, the output on the last block's.
        check_readout(float((probs - output.to(probs.device).softmax(-1)).abs().max()))
    stacked = {key: torch.stack(v) for key, v in rows.items() if v}
    return lens_result(model, tokens, answer, answer_id, stacked)
