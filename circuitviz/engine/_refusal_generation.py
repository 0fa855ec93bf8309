"""Greedy generation for :func:`circuitviz.engine._refusal.steer_refusal`: the bridge's hooked
loop, or nnsight requests whose sessions run the same step function on the server."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from . import backends
from ._hooks import hooks
from ._refusal import (
    Generation,
    _encode,
    _forward,
    _pad_id,
    is_refusal,
    left_pad,
    refusal_token_ids,
)
from .backends._toolkit_program import generation_result, generation_start, generation_step


def generate(
    model: TransformerBridge,
    prompts: Sequence[str],
    *,
    fwd: Sequence[tuple[str, Callable]] = (),
    intervention: dict | None = None,
    chat: bool = True,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    desc: str = "generating",
) -> Generation:
    """Greedy continuations of already formatted ``prompts`` with hooks ``fwd`` attached to
    every forward pass (so an intervention acts on the generated tokens too); on an nnsight
    model ``intervention`` (:func:`intervention_spec`) says the same, and every batch's
    generation runs in one request.

    A plain loop, one full forward pass per new token: the bridge's KV-cache path
    (``model.generate(use_past_kv_cache=True)``) derails after the first token on the demo
    model (greedy text turns into "-----"), so the cache is not used. Stops a batch when every
    row has emitted EOS.
    """
    plan = generation_plan(model, prompts, intervention, chat, max_new_tokens, batch_size)
    if backends.is_nnsight(model):
        from .backends._toolkit import generate_batches

        (outs,) = generate_batches(model, [plan], desc)
    else:
        outs = _generate_batches(model, *plan, fwd, desc)
    return generation_of(model, outs)


def generation_plan(
    model: Any, prompts: Sequence[str], intervention: dict | None, chat: bool, n: int, size: int
) -> tuple[list, dict]:
    """``(batches, spec)`` of one generation: the left-padded batches and what each step does."""
    pad = _pad_id(model)
    rows = [_encode(model, p, chat) for p in prompts]
    batches = [left_pad(rows[s : s + size], pad) for s in range(0, len(rows), size)]
    spec = {
        "max_new_tokens": n,
        "pad": pad,
        "eos": getattr(model.tokenizer, "eos_token_id", None),
        "ids": refusal_token_ids(model),
        "intervention": intervention,
    }
    return batches, spec


def generation_of(model: Any, outs: list[dict]) -> Generation:
    """The :class:`Generation` of every batch's generated tokens and step-0 scores."""
    eos = getattr(model.tokenizer, "eos_token_id", None)
    texts: list[str] = []
    scores: list[float | None] = []
    for out in outs:
        for row, finished in zip(out["new"], out["done"], strict=True):
            ids = row.tolist()
            if finished and eos in ids:
                ids = ids[: ids.index(eos)]
            texts.append(model.tokenizer.decode(ids, skip_special_tokens=True))
        # None where no refusal word is one token here: no score
        score = out["scores"]
        scores += [None] * len(out["done"]) if score is None else [float(x) for x in score]
    return Generation(texts, [is_refusal(t) for t in texts], scores)


def _generate_batches(
    model: TransformerBridge, batches: list, spec: dict, fwd: Sequence, desc: str
) -> list[dict]:
    """The bridge's generation of each batch: hooked forward passes, one per new token,
    stepped by :func:`.backends._toolkit_program.generation_step` (the nnsight one's too)."""
    steps = tqdm(
        total=sum(len(t) for t, _ in batches) * spec["max_new_tokens"], desc=desc, leave=False
    )
    outs = []
    try:
        for tokens, mask in batches:
            state = generation_start(spec, tokens, mask)
            with torch.inference_mode(), hooks(model, fwd):
                for step in range(spec["max_new_tokens"]):
                    logits = _forward(model, state["tokens"], state["mask"])[:, -1]
                    steps.update(tokens.shape[0])
                    if generation_step(state, logits, step):
                        break
            outs.append(generation_result(state))
    finally:
        steps.close()
    return outs


def generate_sides(
    model: Any,
    prompts: Sequence[str],
    interventions: list[dict | None],
    *,
    chat: bool,
    max_new_tokens: int,
    batch_size: int,
) -> list[Generation]:
    """One generation of ``prompts`` per intervention (None: unedited), all in one nnsight
    request: nothing between them depends on the client."""
    from .backends._toolkit import generate_batches

    plans = [
        generation_plan(model, prompts, spec, chat, max_new_tokens, batch_size)
        for spec in interventions
    ]
    return [generation_of(model, outs) for outs in generate_batches(model, plans, "steering")]
