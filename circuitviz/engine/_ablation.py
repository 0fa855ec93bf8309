"""Ablating heads and MLPs on the clean prompts: the metric and top tokens, before and after.

A click in a widget calls :func:`ablate`, so everything that does not depend on the ablation
set — the clean and corrupted runs, their activations, the metric's baselines, the top
tokens before — is computed once per (model, pairs, metric) and kept. A click then costs one
forward pass, and a repeated ablation set none.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from ._metrics import MetricFn
from ._pairs import InputError, PromptPairs
from ._patching import Baselines, baselines, final_logits
from ._results import AblationResult, TopTokens, parse_component

Mode = Literal["zero", "mean", "resample"]
MODES = ("zero", "mean", "resample")
_MEMO_SIZE = 128


@dataclass(eq=False)
class _Prepared:
    base: Baselines
    corrupted_acts: dict[str, torch.Tensor]  # hook_z and hook_mlp_out of every layer
    top_before: TopTokens
    memo: OrderedDict = field(default_factory=OrderedDict)


# model -> {(pairs, metric): _Prepared}; weak so a dropped model frees its cache.
_PREPARED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def top_tokens(model: TransformerBridge, logits: torch.Tensor, k: int) -> TopTokens:
    """The ``k`` most likely next tokens of one final-position logit vector ``[d_vocab]``."""
    probs = logits.float().softmax(-1)
    p, idx = probs.topk(k)
    return TopTokens([model.to_string(int(i)) for i in idx], [float(x) for x in p])


def _z(layer: int) -> str:
    return f"blocks.{layer}.attn.hook_z"


def _mlp(layer: int) -> str:
    return f"blocks.{layer}.hook_mlp_out"


def _prepare(
    model: TransformerBridge, pairs: PromptPairs, metric: str | MetricFn, k: int
) -> _Prepared:
    per_model = _PREPARED.setdefault(model, {})
    key = (pairs, metric, k)
    if key not in per_model:
        names = [f(layer) for layer in range(model.cfg.n_layers) for f in (_z, _mlp)]
        base, _, corr_acts = baselines(model, pairs, metric, {"corrupted": names})
        per_model[key] = _Prepared(base, corr_acts, top_tokens(model, base.clean_logits[0], k))
    return per_model[key]


def normalize_components(
    model: TransformerBridge, heads: Iterable[Sequence[int]] = (), mlps: Iterable[int] = ()
) -> tuple[tuple[tuple[int, int], ...], tuple[int, ...]]:
    """Validate and sort heads ``[(layer, head)]`` and MLP layers; ids like "L3H5" work too."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    out_heads, out_mlps = set(), set()
    for h in heads:
        if isinstance(h, str):
            kind, layer, head = parse_component(h)
            if kind == "mlp":
                out_mlps.add(layer)
                continue
            h = (layer, head)
        try:
            layer, head = (int(x) for x in h)
        except (TypeError, ValueError):
            raise InputError(
                f"A head must be (layer, head) or 'L{{layer}}H{{head}}', got {h!r}."
            ) from None
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise InputError(
                f"Head L{layer}H{head} is out of range: the model has layers 0–{n_layers - 1} "
                f"and heads 0–{n_heads - 1}."
            )
        out_heads.add((layer, head))
    for m in mlps:
        if isinstance(m, str):
            kind, m, _ = parse_component(m)
        if not (isinstance(m, int) and 0 <= m < n_layers):
            raise InputError(
                f"MLP layer {m!r} is out of range: the model has layers 0–{n_layers - 1}."
            )
        out_mlps.add(m)
    return tuple(sorted(out_heads)), tuple(sorted(out_mlps))


def ablate(
    model: TransformerBridge,
    pairs: PromptPairs,
    *,
    heads: Iterable[Sequence[int] | str] = (),
    mlps: Iterable[int | str] = (),
    mode: Mode = "zero",
    metric: str | MetricFn = "logit_diff",
    k: int = 10,
) -> AblationResult:
    """Ablate attention heads and MLPs on the clean prompts.

    Args:
        heads: ``[(layer, head), ...]`` (or ids like ``"L9H6"``).
        mlps: MLP layers ``[layer, ...]`` (or ``"MLP7"``).
        mode: ``"zero"`` sets the output to 0; ``"mean"`` to its mean over the corrupted
            prompts at each position; ``"resample"`` to its value on each example's own
            corrupted prompt.
        k: how many top next tokens (of clean prompt 0) to report.
    """
    if mode not in MODES:
        raise InputError(f"Unknown ablation mode={mode!r}: use one of {MODES}.")
    heads_t, mlps_t = normalize_components(model, heads, mlps)
    prep = _prepare(model, pairs, metric, k)
    key = (heads_t, mlps_t, mode)
    if key in prep.memo:
        prep.memo.move_to_end(key)
        return prep.memo[key]
    base = prep.base

    def replacement(name: str) -> torch.Tensor:
        corr = prep.corrupted_acts[name]
        if mode == "zero":
            return torch.zeros_like(corr[:1])
        if mode == "mean":
            return corr.mean(0, keepdim=True)
        return corr

    by_layer: dict[int, list[int]] = {}
    for layer, head in heads_t:
        by_layer.setdefault(layer, []).append(head)

    def ablate_heads(layer: int, hs: list[int]):
        src = replacement(_z(layer))

        def hook(z: torch.Tensor, hook: object) -> torch.Tensor:
            z[:, :, hs] = src[:, :, hs].expand(z.shape[0], -1, -1, -1)
            return z

        return hook

    def ablate_mlp(layer: int):
        src = replacement(_mlp(layer))

        def hook(out: torch.Tensor, hook: object) -> torch.Tensor:
            return src.expand_as(out).clone()

        return hook

    fwd = [(_z(layer), ablate_heads(layer, hs)) for layer, hs in by_layer.items()]
    fwd += [(_mlp(layer), ablate_mlp(layer)) for layer in mlps_t]
    with torch.inference_mode():
        logits = final_logits(model, base.tokens.clean, fwd) if fwd else base.clean_logits
    result = AblationResult(
        heads=list(heads_t),
        mlps=list(mlps_t),
        mode=mode,
        metric=base.metric.name,
        clean=base.clean,
        corrupted=base.corrupted,
        ablated=base.metric(logits),
        top_before=prep.top_before,
        top_after=top_tokens(model, logits[0], k),
    )
    prep.memo[key] = result
    if len(prep.memo) > _MEMO_SIZE:
        prep.memo.popitem(last=False)
    return result
