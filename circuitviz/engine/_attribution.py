"""Attribution patching: the first-order estimate of every patch from one gradient.

For a target activation ``a`` patched from ``a_src`` into the run ``a_run``, the metric
changes by about ``(a_src - a_run) · ∂M/∂a`` (Nanda, "Attribution patching", 2023). Two
forward passes (the source run, cached; the patched run, with gradients) and one backward
give the whole map. Values are reported as the estimated patched metric, baseline + effect,
so they sit on the same scale as exact patching.
"""

from __future__ import annotations

import torch
from transformer_lens.model_bridge import TransformerBridge

from . import backends
from ._metrics import MetricFn, bind_metric
from ._pairs import PromptPairs
from ._patching import Direction, final_logits, patch_result, source_run
from ._results import PatchResult
from .backends._program import cell_effects


def attribution_patch(
    model: TransformerBridge,
    pairs: PromptPairs,
    *,
    over: str = "heads",
    direction: Direction = "denoise",
    metric: str | MetricFn = "logit_diff",
) -> PatchResult:
    """Attribution patching of every component of one kind (same targets as :func:`patch`).

    Returns a :class:`PatchResult` with ``method="attribution"`` whose values estimate the
    metric after each patch; compare them with exact patching by rank. On an nnsight model
    (local or NDIF) it runs through the backend seam, with the same numbers.
    """
    if (seam := backends.route(model, "attribution_patch")) is not None:
        return seam(model, pairs, over=over, direction=direction, metric=metric)
    target, tokens, names, run_tokens, src_logits, src_acts = source_run(
        model, pairs, over, direction, metric
    )

    run_acts: dict[str, torch.Tensor] = {}

    def start_graph(x: torch.Tensor, hook: object) -> torch.Tensor:
        # Frozen parameters leave nothing to differentiate; a leaf here makes every later
        # activation part of the graph without touching the model's parameters.
        return x if x.requires_grad else x.detach().requires_grad_(True)

    def keep(name: str):
        def hook(x: torch.Tensor, hook: object) -> torch.Tensor:
            run_acts[name] = x
            # The bridge hands hooks a reshaped view (e.g. z as [.., head, d_head]); only a
            # returned tensor is used downstream, so returning it keeps it on the graph.
            return x

        return hook

    fwd = [("hook_embed", start_graph)] + [(n, keep(n)) for n in names]
    with torch.enable_grad():
        run_logits = final_logits(model, run_tokens, fwd, attention_mask=tokens.attention_mask)
        clean_logits, corr_logits = (
            (src_logits, run_logits.detach())
            if direction == "denoise"
            else (run_logits.detach(), src_logits)
        )
        bound = bind_metric(metric, tokens, clean_logits, corr_logits)
        value = bound.per_example(run_logits).mean()
        grads = torch.autograd.grad(value, [run_acts[n] for n in names], allow_unused=True)
    baseline = float(value.detach())
    effects = []
    with torch.no_grad():
        for name, grad in zip(names, grads, strict=True):
            act = run_acts[name].detach()
            grad = torch.zeros_like(act) if grad is None else grad
            effects.append(cell_effects((src_acts[name] - act) * grad, target.cell))
    values = (baseline + torch.stack(effects)).float().cpu()
    return patch_result(
        model,
        tokens,
        over,
        values,
        direction=direction,
        method="attribution",
        metric=bound,
        clean=bound(clean_logits),
        corrupted=bound(corr_logits),
        extra={"forward_passes": 2, "backward_passes": 1},
    )
