"""Ablating heads, MLPs and SAE features on the clean prompts: the metric and top tokens,
before and after.

A click in a widget calls :func:`ablate`, so everything that does not depend on the ablation
set — the clean and corrupted runs, their activations, the metric's baselines, the top
tokens before — is computed once per (model, pairs, metric) and kept. A click then costs one
forward pass, and a repeated ablation set none.
"""

from __future__ import annotations

import numbers
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from . import backends
from ._components import Component, check_range, parse_components
from ._metrics import MetricFn, check_metric
from ._models import check_bridge
from ._pairs import InputError, PromptPairs, check_pairs
from ._patching import Baselines, baselines, final_logits
from ._results import AblationResult, TopTokens

Mode = Literal["zero", "mean", "resample"]
MODES = ("zero", "mean", "resample")
_MEMO_SIZE = 128


@dataclass(eq=False)
class _Prepared:
    base: Baselines
    corrupted_acts: dict[str, torch.Tensor]  # hook_z and hook_mlp_out of every layer
    top_before: TopTokens
    per_prompt: dict[str, list[float]]  # the metric of each pair, clean and corrupted
    memo: OrderedDict = field(default_factory=OrderedDict)
    #: id(SAESet) -> (the set, its latents {hook: [batch, pos, d_sae]} and error terms
    #: {hook: [batch, pos, d_model]} on the corrupted prompts)
    corrupted_latents: dict = field(default_factory=dict)


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
        per_prompt = {
            "clean": [float(v) for v in base.metric.per_example(base.clean_logits)],
            "corrupted": [float(v) for v in base.metric.per_example(base.corrupted_logits)],
        }
        top = top_tokens(model, base.clean_logits[0], k)
        per_model[key] = _Prepared(base, corr_acts, top, per_prompt)
    return per_model[key]


def normalize_components(
    model: TransformerBridge,
    heads: Iterable[Any] = (),
    mlps: Iterable[Any] = (),
    n_pos: int | None = None,
    features: Iterable[Any] = (),
) -> tuple[Component, ...]:
    """Parse, range-check and sort ``heads=``/``mlps=``/``features=`` specs (see
    :mod:`._components`)."""
    return parse_components(
        heads,
        mlps,
        n_layers=model.cfg.n_layers,
        n_heads=model.cfg.n_heads,
        n_pos=n_pos,
        features=features,
    )


SAE_KINDS = ("feature", "error")


def feature_edits(
    targets: Iterable[Component], saes: Any, value: Callable[[str, int | None], Any]
) -> list:
    """One edit per SAE target: a :class:`~circuitviz.engine.features.LatentEdit` setting a
    latent to ``value(hook, index)``, or an :class:`~circuitviz.engine.features.ErrorEdit`
    setting an error term to ``value(hook, None)``; an :class:`InputError` for a target
    without an SAE or a latent out of its range (the model is not run)."""
    from .features import ErrorEdit, LatentEdit
    from .features._splice import check_edits

    feats = [c for c in targets if c.kind in SAE_KINDS]
    if not feats:
        return []
    if saes is None:
        what = "an SAE error term" if feats[0].kind == "error" else "an SAE feature"
        raise InputError(
            f"{feats[0].id} is {what}: pass the SAEs it belongs to (saes=…, e.g. "
            "circuitviz.load_saes('demo'))."
        )
    edits = [
        ErrorEdit(c.hook_in(saes), 0.0, c.pos)
        if c.error
        else LatentEdit(c.hook_in(saes), c.feature, 0.0, c.pos)
        for c in feats
    ]
    check_edits(saes, edits)  # unknown hook, index out of range
    return [
        ErrorEdit(e.hook, value(e.hook, None), e.pos)
        if isinstance(e, ErrorEdit)
        else LatentEdit(e.hook, e.index, value(e.hook, e.index), e.pos)
        for e in edits
    ]


def corrupted_latents(
    model: TransformerBridge, prep: _Prepared, saes: Any, *, errors: bool = False
) -> dict:
    """The SAEs' latents (or, ``errors``, error terms) on the corrupted prompts (one spliced
    forward, cached per set)."""
    from .features import site_hooks

    key = id(saes)
    if key not in prep.corrupted_latents or prep.corrupted_latents[key][0] is not saes:
        latents: dict[str, torch.Tensor] = {}
        error_terms: dict[str, torch.Tensor] = {}

        def rec(h: str):
            def fn(f: torch.Tensor, err: torch.Tensor) -> None:
                latents[h] = f.detach()
                error_terms[h] = err.detach()

            return fn

        # site_hooks: a transcoder's error term is its MLP output's, read where it writes
        hooks_ = [pair for h in saes for pair in site_hooks(saes[h], record=rec(h))]
        tokens = prep.base.tokens
        with torch.inference_mode():
            final_logits(model, tokens.corrupted, hooks_, attention_mask=tokens.attention_mask)
        prep.corrupted_latents[key] = (saes, latents, error_terms)
    return prep.corrupted_latents[key][2 if errors else 1]


def _check_options(model: TransformerBridge, mode: Any, k: Any) -> int:
    if not isinstance(mode, str) or mode not in MODES:
        raise InputError(f"Unknown ablation mode={mode!r}: use one of {MODES}.")
    if isinstance(k, bool) or not isinstance(k, numbers.Integral) or k < 1:
        raise InputError(f"k={k!r} must be a positive integer: how many top tokens to show.")
    if k > model.cfg.d_vocab:
        raise InputError(
            f"k={k} is more top tokens than the model's vocabulary has ({model.cfg.d_vocab})."
        )
    return int(k)


def replacement(prep: _Prepared, name: str, mode: str) -> torch.Tensor:
    """What an ablated activation is set to: zeros, the corrupted batch mean, or each
    example's own corrupted value (``[1 or batch, pos, ...]``). With mixed lengths the mean
    at a position is over the prompts that have a token there."""
    corr = prep.corrupted_acts[name]
    if mode == "zero":
        return torch.zeros_like(corr[:1])
    if mode == "mean":
        return prep.base.tokens.masked_mean(corr)
    return corr


def ablation_hooks(
    targets: Iterable[Component], source: Callable[[str], torch.Tensor]
) -> list[tuple[str, Callable]]:
    """Forward hooks that overwrite each target with ``source(hook name)``, at every position
    or at the target's one position. Heads write ``hook_z [batch, pos, head, d_head]``, MLPs
    ``hook_mlp_out [batch, pos, d_model]``."""
    by_hook: dict[str, list[tuple[int | None, int | None]]] = {}
    for c in targets:
        if c.kind in SAE_KINDS:  # latents and error terms: the SAE splice (feature_edits)
            continue
        name = _mlp(c.layer) if c.head is None else _z(c.layer)
        by_hook.setdefault(name, []).append((c.head, c.pos))

    def make(name: str, cells: list[tuple[int | None, int | None]]):
        src = source(name)

        def hook(x: torch.Tensor, hook: object) -> torch.Tensor:
            full = src.expand(x.shape[0], *src.shape[1:])
            for head, pos in cells:
                index = (slice(None), slice(None) if pos is None else pos)
                if head is not None:
                    index += (head,)
                x[index] = full[index]
            return x

        return hook

    return [(name, make(name, cells)) for name, cells in by_hook.items()]


def ablate(
    model: TransformerBridge,
    pairs: PromptPairs,
    *,
    heads: Iterable[Sequence[int] | str] = (),
    mlps: Iterable[int | str] = (),
    features: Iterable[str] = (),
    saes: Any = None,
    mode: Mode = "zero",
    metric: str | MetricFn = "logit_diff",
    k: int = 10,
) -> AblationResult:
    """Ablate attention heads, MLPs and SAE features on the clean prompts.

    Args:
        heads: ``[(layer, head), ...]`` or ids like ``"L9H6"``; ``"L9H6:P4"`` ablates the
            head at position 4 only.
        mlps: MLP layers ``[layer, ...]`` or ids like ``"MLP7"`` (``"MLP7:P4"``: position 4
            only).
        features: SAE latents ``"L11F1234"`` (``"L11F1234:P4"``: position 4 only): the SAE
            on ``blocks.11.hook_resid_post`` is spliced in with its error term and the latent
            set; ``"L3attnF12"``, ``"L3tcF12"``… at the other sites (``engine._sites``); SAE
            error terms ``"L11ERR"`` (``"L11ERR:P4"``, ``"L3tcERR"``…): the SAE is spliced in
            and its error term (the part of the activation it does not reconstruct) set.
            Needs ``saes=``.
        saes: the SAEs (``SAESet``) the features belong to.
        mode: ``"zero"`` sets the output to 0 (an ablated error term: the site outputs the
            SAE's reconstruction); ``"mean"`` to its mean over the corrupted prompts at each
            position; ``"resample"`` to its value on each example's own corrupted prompt.
        k: how many top next tokens (of clean prompt 0) to report.

    Pairs may differ in length (each corrupted prompt as long as its clean one): they are
    left-padded and masked, as :func:`~circuitviz.engine.patch` does, so each pair's value is
    the one it has ablated on its own (zero and resample modes). A position ``:P4`` is column
    4 of the longest prompt (positions aligned from the end); where a shorter prompt has
    padding there, nothing of it is ablated. ``"mean"`` averages each position over the
    prompts that have a token there.

    With nothing to ablate, ``ablated``, ``delta``, ``gap_fraction`` and ``top_after`` of the
    result are None.
    """
    if (seam := backends.route(model, "ablate")) is not None:
        return seam(
            model,
            pairs,
            heads=heads,
            mlps=mlps,
            features=features,
            saes=saes,
            mode=mode,
            metric=metric,
            k=k,
        )
    check_bridge(model)
    k = _check_options(model, mode, k)
    check_pairs(pairs)
    check_metric(metric)
    targets = normalize_components(model, heads, mlps, features=features)  # before any forward
    uses_saes = any(c.kind in SAE_KINDS for c in targets)
    if uses_saes:
        from .features import as_sae_set

        saes = as_sae_set(saes) if saes is not None else None
        feature_edits(targets, saes, lambda h, i: 0.0)  # checked before any forward pass
    prep = _prepare(model, pairs, metric, k)
    base = prep.base
    for c in targets:  # positions, now that the prompts' length is known
        check_range(
            c, n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads, n_pos=base.tokens.n_pos
        )
    key = (targets, mode, id(saes) if uses_saes else None)
    if key in prep.memo:
        prep.memo.move_to_end(key)
        return prep.memo[key]
    fwd = ablation_hooks(targets, lambda name: replacement(prep, name, mode))
    if key[2] is not None:
        from .features import splice_hooks

        def value(hook: str, index: int | None) -> Any:
            """A latent's ablation value [1 or batch, pos], or an error term's (index None,
            [1 or batch, pos, d_model]): the same rule as heads and MLPs."""
            if mode == "zero":
                return 0.0
            if index is None:
                corr = corrupted_latents(model, prep, saes, errors=True)[hook]
            else:
                corr = corrupted_latents(model, prep, saes)[hook][:, :, index]  # [batch, pos]
            return base.tokens.masked_mean(corr) if mode == "mean" else corr

        fwd += splice_hooks(saes, feature_edits(targets, saes, value))
    ablated = per_prompt = top_after = None
    if fwd:
        with torch.inference_mode():
            logits = final_logits(
                model, base.tokens.clean, fwd, attention_mask=base.tokens.attention_mask
            )
        values = base.metric.per_example(logits)
        ablated, per_prompt = float(values.mean()), [float(v) for v in values]
        top_after = top_tokens(model, logits[0], k)
    result = AblationResult(
        targets=targets,
        mode=mode,
        metric=base.metric.name,
        clean=base.clean,
        corrupted=base.corrupted,
        ablated=ablated,
        per_prompt={**prep.per_prompt, "ablated": per_prompt},
        top_before=prep.top_before,
        top_after=top_after,
    )
    prep.memo[key] = result
    if len(prep.memo) > _MEMO_SIZE:
        prep.memo.popitem(last=False)
    return result
