"""Direct logit attribution (DLA): each component's direct write onto the logit difference.

The final-position logit difference is ``norm(resid) · (W_U[:, answer] − W_U[:, wrong])`` plus
the unembedding bias, and the residual stream is a sum of component outputs (embeddings, every
head's ``z · W_O``, the attention biases ``b_O``, every MLP). Freezing the final norm's
per-token scale at its value in the clean run makes the norm linear, so the logit difference
splits exactly into one term per component plus the norm's and the unembedding's biases. A
LayerNorm also centres its input, so each component is centred first (centring is linear too).

TransformerLens's ``direct_logit_attribution`` computes the same numbers on a compatibility-mode
bridge (final norm folded into ``W_U``); here the raw bridge's own norm weight is applied.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from . import _devices, backends
from ._models import model_name
from ._pairs import InputError, PromptPairs, Tokens
from ._patching import axis_labels, axis_sizes, baselines
from ._results import PatchResult
from .backends._toolkit_program import direct_terms

By = Literal["heads", "layers", "heads_by_pos"]
BY = ("heads", "layers", "heads_by_pos")
DLA_METHOD = "direct"
"""``PatchResult.method`` (and ``direction``) of a DLA map: its baseline is 0, not a run."""
SUBLAYERS = ("attn", "mlp")


def final_norm(model: TransformerBridge) -> tuple[str, torch.Tensor | None, torch.Tensor | None]:
    """The final norm's kind (``"LN"`` centres, ``"RMS"`` does not), weight and bias."""
    module = getattr(model.ln_final, "_original_component", model.ln_final)
    kind = "LN" if isinstance(module, torch.nn.LayerNorm) else "RMS"
    weight, bias = _devices.read(model, module, "weight", "bias")
    return kind, weight, bias


def _unembed_bias(model: TransformerBridge) -> torch.Tensor | None:
    (b_U,) = _devices.read(model, model.unembed, "b_U")
    return b_U


def check_decomposition(model: TransformerBridge, total: float, clean: float) -> None:
    """Refuse to return numbers that do not add up: a readout other than ``norm -> W_U``
    (a logit softcap, a norm with an offset weight) would make every contribution wrong."""
    tolerance = (1e-3 if model.cfg.dtype == torch.float32 else 5e-2) * (1 + abs(clean))
    if not abs(total - clean) <= tolerance:
        raise InputError(
            f"logit_attribution can't decompose this model's output: the contributions add up "
            f"to {total:.6g}, not the logit difference {clean:.6g}. Its readout is not "
            "final norm (LayerNorm or RMSNorm) then W_U; use circuitviz.patch instead."
        )


def _hook_names(model: TransformerBridge, by: str) -> list[str]:
    names = ["hook_embed", "ln_final.hook_in", "ln_final.hook_scale"]
    if "hook_pos_embed" in model.hook_dict:
        names.append("hook_pos_embed")
    for layer in range(model.cfg.n_layers):
        names += [f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"]
        if by == "heads_by_pos":
            names += [f"blocks.{layer}.attn.hook_pattern", f"blocks.{layer}.attn.hook_v"]
    return names


def check_options(by: str, metric: str) -> None:
    """Refuse an unknown ``by`` or a metric other than the logit difference."""
    if by not in BY:
        raise InputError(f"Unknown by={by!r}: use one of {BY}.")
    if metric != "logit_diff":
        raise InputError(
            f"logit_attribution reads the logit difference, the one metric that is linear in "
            f"the residual stream; got metric={metric!r}. Use metric='logit_diff'."
        )


def dla_result(
    model: Any,
    tokens: Tokens,
    by: str,
    parts: dict[str, torch.Tensor],
    *,
    metric: str,
    clean: float,
    corrupted: float,
    kind: str,
    extra: dict[str, Any] | None = None,
) -> PatchResult:
    """The map and bias terms from :func:`.backends._toolkit_program.direct_terms`'s
    ``parts`` (plus ``ln_final_bias`` and ``b_U``), checked to add up to ``clean``."""
    heads, mlp, b_O_terms = parts["heads"].cpu(), parts["mlp"].cpu(), parts["b_O"].cpu()
    terms = {"embed": float(parts["embed"]), "b_O": float(b_O_terms.sum())}
    if by == "layers":
        values = torch.stack([heads.sum(-1) + b_O_terms, mlp], dim=-1)
        terms["b_O"] = 0.0  # inside the attention column
    else:
        values = heads
        terms["mlp"] = float(mlp.sum())
    terms["ln_final_bias"] = float(parts["ln_final_bias"])
    terms["b_U"] = float(parts["b_U"])
    check_decomposition(model, float(values.double().sum()) + sum(terms.values()), clean)
    axes = {"heads": ("layer", "head"), "heads_by_pos": ("layer", "pos", "head")}.get(
        by, ("layer", "sublayer")
    )
    labels = axis_labels(model, [a for a in axes if a != "sublayer"], tokens)
    if by == "layers":
        labels["sublayer"] = list(SUBLAYERS)
    assert values.shape == tuple(
        {**axis_sizes(model, tokens.n_pos), "sublayer": 2}[a] for a in axes
    )
    return PatchResult(
        values=values.float().cpu(),
        axes=axes,
        labels=labels,
        target=by,
        direction=DLA_METHOD,
        method=DLA_METHOD,
        metric=metric,
        clean=clean,
        corrupted=corrupted,
        tokens=tokens.str_tokens,
        model_name=model_name(model),
        extra={"bias_terms": terms, "final_norm": kind, **(extra or {})},
        columns=tokens.columns,
    )


def logit_attribution(
    model: TransformerBridge,
    pairs: PromptPairs,
    *,
    by: By = "heads",
    metric: str = "logit_diff",
) -> PatchResult:
    """Each component's direct contribution to the final-position logit difference.

    The contribution of a component is its output at the final position, centred when the
    final norm is a LayerNorm, divided by the final norm's scale from the clean run, times the
    norm's weight, dotted with ``W_U[:, answer] − W_U[:, wrong]``; averaged over the batch.

    Args:
        by: ``"heads"`` (layer × head), ``"layers"`` (layer × sublayer: attention, MLP) or
            ``"heads_by_pos"`` (layer × pos × head: each head's contribution split by the
            source position its final-position attention read from; summed over positions it
            is the ``"heads"`` map).
        metric: only ``"logit_diff"``, the one metric that is linear in the residual stream.

    Returns a :class:`PatchResult` with ``method == direction == "direct"`` (its baseline is
    0), ``clean``/``corrupted`` the logit difference of each run, and
    ``extra["bias_terms"]``: what no map cell holds — ``embed`` (with positions), ``b_O`` (the
    attention biases, all layers), ``mlp`` (the heads maps only: every MLP), ``ln_final_bias``
    and ``b_U``. ``values.sum() + sum(bias_terms.values()) == clean``.

    Pairs may differ in length: they are left-padded and masked (as for
    :func:`~circuitviz.engine.patch`), so the final position is every prompt's own last token
    and ``"heads_by_pos"`` positions are columns of the longest prompt (aligned from the end;
    a shorter prompt contributes 0 at its padding).
    """
    if (seam := backends.route(model, "logit_attribution")) is not None:
        return seam(model, pairs, by=by, metric=metric)
    check_options(by, metric)
    base, acts, _ = baselines(model, pairs, metric, cache={"clean": _hook_names(model, by)})
    tokens = base.tokens
    cfg = model.cfg
    with torch.inference_mode():
        kind, weight, norm_bias = final_norm(model)
        (W_U,) = _devices.read(model, model.unembed, "W_U")
        # Everything meets on the unembedding's device (on several GPUs, the last one):
        # direct_terms moves each part onto `read`'s device.
        here = W_U.device
        answers, wrong = tokens.answers.to(here), tokens.wrong_answers.to(here)
        direction = (W_U[:, answers] - W_U[:, wrong]).T  # [batch, d_model]
        scale = acts["ln_final.hook_scale"][:, -1].to(here)  # [batch, 1], from the clean run
        read = direction * (weight.to(here) if weight is not None else 1) / scale
        embed = acts["hook_embed"][:, -1]
        if "hook_pos_embed" in acts:
            embed = embed + acts["hook_pos_embed"][:, -1].to(embed.device)
        b_O = [_devices.read(model, block.attn, "b_O")[0] for block in model.blocks]
        mlps = [acts[f"blocks.{layer}.hook_mlp_out"][:, -1] for layer in range(cfg.n_layers)]
        heads = []
        for layer in range(cfg.n_layers):
            # [head, d_head, d_model]
            (W_O,) = _devices.read(model, model.blocks[layer].attn, "W_O")
            if by == "heads_by_pos":
                pattern = acts[f"blocks.{layer}.attn.hook_pattern"][:, :, -1]  # [b, head, src]
                v = acts[f"blocks.{layer}.attn.hook_v"]  # [b, src, kv_head, d_head]
                v = v.repeat_interleave(cfg.n_heads // v.shape[2], dim=2)  # GQA: kv per head
                heads.append(torch.einsum("bhs,bshd,hdm->bshm", pattern, v, W_O))
            else:
                z = acts[f"blocks.{layer}.attn.hook_z"][:, -1]  # [b, head, d_head]
                heads.append(torch.einsum("bhd,hdm->bhm", z, W_O))
        parts = direct_terms(embed, heads, mlps, b_O, read, kind == "LN")
        parts["ln_final_bias"] = (
            torch.zeros(()) if norm_bias is None else (direction @ norm_bias.to(here)).mean()
        )
        b_U = _unembed_bias(model)
        parts["b_U"] = torch.zeros(()) if b_U is None else (b_U[answers] - b_U[wrong]).mean()
    return dla_result(
        model,
        tokens,
        by,
        parts,
        metric=base.metric.name,
        clean=base.clean,
        corrupted=base.corrupted,
        kind=kind,
    )
