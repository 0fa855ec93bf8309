"""The feature explorer's engine: which latents fire on each token of a prompt, one latent's
card (its activations, top snippets, logit effects, histogram, label), and search.

Everything here is plain data (tensors, lists, dicts of numbers and strings); the view
(:class:`circuitviz.FeatureView`) only ships it to the page.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import torch
from transformer_lens.model_bridge import TransformerBridge

from .. import backends
from .._models import model_name
from .._pairs import InputError, check_text, encode, uses_bos
from ._sae import SAE, SAESet, as_sae_set
from ._stats import (
    HIST_EDGES,
    FeatureStats,
    _show,
    check_sites,
    collect,
    logit_effects_of,
    token_strings,
    top_promoted,
)

#: Most characters of a label (automatic or edited).
MAX_LABEL = 80
#: Most search results returned.
MAX_RESULTS = 50


def feature_id(hook: str, index: int) -> str:
    """A latent's id: ``"blocks.11.hook_resid_post:123"``."""
    return f"{hook}:{index}"


def parse_feature(saes: SAESet, fid: Any) -> tuple[str, int]:
    """``(hook, index)`` of a feature id, or an InputError naming what is wrong."""
    if not isinstance(fid, str) or ":" not in fid:
        raise InputError(
            f"A feature is named 'hook:index', e.g. '{feature_id(saes.hooks[0], 0)}'; got "
            f"{str(fid)[:100]!r}."
        )
    hook, _, index = fid.rpartition(":")
    if hook not in saes:
        raise InputError(f"No SAE reads {hook[:100]!r}; the SAEs read {saes.hooks}.")
    if not index.isdigit() or not 0 <= int(index) < saes[hook].d_sae:
        raise InputError(
            f"Feature index {index[:20]!r} is out of range for the SAE at {hook!r} "
            f"(0 … {saes[hook].d_sae - 1})."
        )
    return hook, int(index)


@dataclass(eq=False)
class FeatureActivations:
    """Every SAE's latents on one prompt.

    Attributes:
        tokens: the prompt's tokens as strings (BOS included when prepended).
        ids: ``[pos]`` their ids.
        latents: hook → ``[pos, d_sae]`` float32 latent activations.
        top_index / top_value: hook → ``[pos, k]`` the ``k`` most active latents at each
            position, descending (an inactive slot has value 0).
        model_name: the model's name.
        first: the first position that is text (1 when a BOS was prepended, else 0).
    """

    tokens: list[str]
    ids: torch.Tensor
    latents: dict[str, torch.Tensor]
    top_index: dict[str, torch.Tensor]
    top_value: dict[str, torch.Tensor]
    model_name: str = ""
    first: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def k(self) -> int:
        return next(iter(self.top_index.values())).shape[1]


def feature_activations(
    model: TransformerBridge,
    prompt: str,
    saes: SAE | SAESet | Iterable[SAE],
    *,
    k: int = 5,
    prepend_bos: bool | None = None,
) -> FeatureActivations:
    """Encode the prompt's activations at each SAE's hook: all latents, and the ``k`` most
    active per token (one forward pass, stopped after the last SAE's hook)."""
    return explorer_activations(model, prompt, saes, k=k, prepend_bos=prepend_bos)


def chip_latents(acts: FeatureActivations, hook: str) -> list[int]:
    """The latents a FeatureView shows as chips for the SAE at ``hook``: those among the
    ``k`` most active at some position, with a positive activation (ascending)."""
    values, indices = acts.top_value[hook], acts.top_index[hook]
    return sorted(set(indices[values > 0].tolist()))


def explorer_activations(
    model: TransformerBridge,
    prompt: str,
    saes: SAE | SAESet | Iterable[SAE],
    *,
    k: int = 5,
    prepend_bos: bool | None = None,
    label: Sequence[str] = (),
) -> FeatureActivations:
    """:func:`feature_activations`, and for the SAEs at ``label`` (a FeatureView's, without
    statistics) what their chips' automatic labels need: on nnsight their logit effects,
    kept, in the same request where the SAEs are small enough
    (:mod:`circuitviz.engine.backends._feature_view`); the bridge computes them locally when
    asked."""
    saes = as_sae_set(saes)
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, got {type(prompt).__name__}.")
    check_text(prompt, "prompt")
    if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k <= 64:
        raise InputError(f"k={k!r} must be an integer from 1 to 64.")
    if (seam := backends.route(model, "feature_activations")) is not None:  # nnsight
        return seam(model, prompt, saes, k=k, prepend_bos=prepend_bos, label=tuple(label))
    check_sites(model, saes)
    ids = encode(model, prompt, prepend_bos=prepend_bos)
    device = next(iter(model.parameters())).device
    acts = collect(model, saes, ids[None].to(device))
    return encoded(model, ids, {h: a[0] for h, a in acts.items()}, saes, k, prepend_bos)


def encoded(
    model: Any,
    ids: torch.Tensor,
    acts: dict[str, torch.Tensor],
    saes: SAESet,
    k: int,
    prepend_bos: bool | None,
    extra: dict[str, Any] | None = None,
) -> FeatureActivations:
    """The result from each SAE hook's activations ``[pos, d_model]``, encoded here (both
    backends: nnsight brings the activations back and encodes them on the client)."""
    latents, top_index, top_value = {}, {}, {}
    with torch.no_grad():
        for hook, sae in saes.items():
            f = sae.encode(acts[hook].to(sae.W_enc.device)).float().cpu()
            top = f.topk(min(k, sae.d_sae), dim=-1)
            latents[hook], top_index[hook], top_value[hook] = f, top.indices, top.values
    return FeatureActivations(
        tokens=[str(t) for t in model.to_str_tokens(ids)],
        ids=ids.cpu(),
        latents=latents,
        top_index=top_index,
        top_value=top_value,
        model_name=model_name(model),
        first=int(uses_bos(model, prepend_bos)),
        extra=extra or {},
    )


def logit_effects(
    model: TransformerBridge, sae: SAE, index: int, *, k: int = 10
) -> dict[str, list[tuple[str, float]]]:
    """The tokens latent ``index`` promotes and suppresses most: ``{"promoted": [(token,
    effect), …], "suppressed": […]}``, ``k`` each. The effect is the decoder direction's
    direct logit effect per unit activation, ``(c(W_dec[index]) ⊙ w) @ W_U``: through the final
    norm's weight ``w`` (and its centring ``c`` for a LayerNorm) but not its per-token
    ``1/scale``, which is positive and the same for every token (rankings are exact; values are
    per unit of normalised residual)."""
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < sae.d_sae:
        raise InputError(
            f"Feature index {index!r} is out of range for the SAE at {sae.hook_name!r} "
            f"(0 … {sae.d_sae - 1})."
        )
    with torch.no_grad():
        if backends.is_nnsight(model):  # where the weights are (on NDIF: only the top k)
            from ..backends._features import unembedded

            got = unembedded(model, sae, [index], k)
            up_i, up_v, down_i, down_v = (got[n][0] for n in ("up_i", "up_v", "down_i", "down_v"))
        else:
            effect = logit_effects_of(model, sae, index)
            (up_v, up_i), (down_v, down_i) = effect.topk(k), (-effect).topk(k)
            down_v = -down_v
    strings = token_strings(model)
    return {
        "promoted": [(strings[i], float(v)) for v, i in zip(up_v, up_i.tolist(), strict=True)],
        "suppressed": [
            (strings[i], float(v)) for v, i in zip(down_v, down_i.tolist(), strict=True)
        ],
    }


def prefetch_logit_effects(
    model: TransformerBridge, saes: SAESet, features: Sequence[tuple[str, int]], *, k: int = 10
) -> None:
    """Make :func:`logit_effects` of ``features`` (``(hook, index)`` each) cheap: on nnsight
    fetch every one not kept yet in one request (a run per SAE) — a page of cards, not a job
    per card; the bridge computes them locally anyway."""
    if not backends.is_nnsight(model):
        return
    from ..backends._features import unembedded_many

    by_hook: dict[str, list[int]] = {}
    for hook, index in features:
        by_hook.setdefault(hook, []).append(index)
    with torch.no_grad():
        unembedded_many(model, [(saes[h], ii) for h, ii in by_hook.items()], k)


def labels_for(
    model: TransformerBridge, sae: SAE, indices: Sequence[int], stats: FeatureStats | None
) -> list[str]:
    """The automatic labels of latents: the stored ones, or (without statistics) ones from
    their promoted tokens alone, ``"→ tok, tok"`` (one batched product for all of them)."""
    if stats is not None:
        return [stats.labels[i] for i in indices]
    strings = token_strings(model)
    promoted = top_promoted(model, sae, k=2, latents=indices)
    return ["→ " + " | ".join(_show(strings[t]) for t in row) for row in promoted.tolist()]


def label_for(model: TransformerBridge, sae: SAE, index: int, stats: FeatureStats | None) -> str:
    """The automatic label of one latent (see :func:`labels_for`)."""
    return labels_for(model, sae, [index], stats)[0]


def card(
    model: TransformerBridge,
    saes: SAESet,
    acts: FeatureActivations,
    hook: str,
    index: int,
    *,
    stats: FeatureStats | None = None,
    label: str | None = None,
    n_logits: int = 10,
) -> dict[str, Any]:
    """Everything a feature card shows, as JSON data: ``id``, ``hook``, ``index``, ``site``
    (the SAE's short name), ``label`` (``label`` or the automatic one), ``auto_label``,
    ``acts`` (its activation on each prompt token), ``acts_max`` (their colour scale's top, the
    BOS left out), ``promoted`` / ``suppressed``
    (``[token, effect]``), ``snippets`` (``{"tokens", "peak", "value"}``), ``hist``
    (``{"edges", "counts", "zeros", "n_tokens"}``), ``frequency`` and ``stats`` (whether
    statistics exist; without them the last three are empty)."""
    sae = saes[hook]
    column = acts.latents[hook][:, index]
    effects = logit_effects(model, sae, index, k=n_logits)
    auto = label_for(model, sae, index, stats)
    out: dict[str, Any] = {
        "id": feature_id(hook, index),
        "hook": hook,
        "index": index,
        "site": sae.name,
        "auto_label": auto,
        "label": label if label is not None else auto,
        "acts": [round(float(v), 5) for v in column],
        # The colour scale's top: the text's largest, BOS left out (its outsized activations
        # would wash out every other token); the BOS is drawn clamped to the top.
        "acts_max": round(float(column[acts.first :].max() if len(column) > acts.first else 0), 5),
        "promoted": [[t, round(v, 5)] for t, v in effects["promoted"]],
        "suppressed": [[t, round(v, 5)] for t, v in effects["suppressed"]],
        "snippets": [],
        "hist": None,
        "frequency": None,
        "stats": stats is not None,
    }
    if stats is None:
        return out
    strings = token_strings(model)
    out["snippets"] = [
        {
            "tokens": [strings[i] for i in s["ids"]],
            "peak": s["peak"],
            "value": round(s["value"], 5),
        }
        for s in stats.snippets(index)
    ]
    counts = stats.hist_counts[index].astype(np.int64)
    out["hist"] = {
        "edges": [float(e) for e in HIST_EDGES],
        "counts": counts.tolist(),
        "zeros": int(stats.n_tokens - stats.n_active[index]),
        "n_tokens": int(stats.n_tokens),
    }
    out["frequency"] = stats.frequency(index)
    return out


By = Literal["token", "label"]


def search(
    model: TransformerBridge,
    saes: SAESet,
    query: str,
    *,
    by: By = "label",
    acts: FeatureActivations | None = None,
    stats: Mapping[str, FeatureStats] | None = None,
    labels: Mapping[str, str] | None = None,
    limit: int = MAX_RESULTS,
) -> list[dict[str, Any]]:
    """Features matching ``query``, best first: ``{"id", "hook", "index", "site", "label",
    "score", "why"}``.

    ``by="label"``: the case-insensitive substring ``query`` in the feature's label (the
    edited one in ``labels``, else the automatic one from ``stats``: an SAE without statistics
    is searched by its edited labels only); scored by where the match starts.
    ``by="token"``: ``query`` is tokenized (no BOS) and a feature scores one point per top
    snippet peaking on one of its tokens, one per such token among its promoted tokens, and its
    activation where that token occurs in the prompt (``acts``)."""
    if not isinstance(query, str) or not query.strip():
        raise InputError("The search query is empty: type a token or part of a label.")
    if len(query) > MAX_LABEL:
        raise InputError(f"The search query has {len(query)} characters; at most {MAX_LABEL}.")
    if by not in ("token", "label"):
        raise InputError(f"Search by 'token' or 'label', not {str(by)[:40]!r}.")
    stats = stats or {}
    labels = labels or {}
    scores: dict[tuple[str, int], tuple[float, str]] = {}
    if by == "label":
        needle = query.strip().lower()
        for hook, sae in saes.items():
            st = stats.get(hook)
            names = st.labels if st is not None else []
            for index in range(sae.d_sae):
                text = labels.get(feature_id(hook, index)) or (names[index] if names else "")
                at = text.lower().find(needle)
                if at >= 0:
                    scores[(hook, index)] = (1.0 / (1 + at), "label")
    else:
        ids = set(model.to_tokens(query, prepend_bos=False, truncate=False)[0].tolist())
        for hook in saes:
            hits: dict[int, list[float | str]] = {}
            st = stats.get(hook)
            if st is not None:
                peaks = st.corpus.tokens[
                    st.corpus.offsets[np.maximum(st.top_doc, 0)] + st.top_pos
                ].astype(np.int64)
                peak_hits = (np.isin(peaks, list(ids)) & (st.top_doc >= 0)).sum(1)
                promo_hits = np.isin(st.promoted, list(ids)).sum(1)
                for index in np.flatnonzero(peak_hits + promo_hits):
                    hits[int(index)] = [
                        float(peak_hits[index] + promo_hits[index]),
                        f"{peak_hits[index]} top snippets peak on it, "
                        f"{'promotes it' if promo_hits[index] else 'does not promote it'}",
                    ]
            if acts is not None:
                where = [i for i, t in enumerate(acts.ids.tolist()) if t in ids]
                if where:
                    peak = acts.latents[hook][where].max(dim=0).values
                    for index in torch.nonzero(peak > 0).flatten().tolist():
                        entry = hits.setdefault(index, [0.0, ""])
                        entry[0] = float(entry[0]) + float(peak[index])
                        entry[1] = (
                            f"{entry[1]}; " if entry[1] else ""
                        ) + f"fires {float(peak[index]):.3g} on it in the prompt"
            for index, (score, why) in hits.items():
                scores[(hook, index)] = (float(score), str(why))
    ranked = sorted(scores.items(), key=lambda kv: (-kv[1][0], kv[0][0], kv[0][1]))[:limit]
    out = []
    for (hook, index), (score, why) in ranked:
        fid = feature_id(hook, index)
        st = stats.get(hook)
        auto = st.labels[index] if st is not None else ""
        out.append(
            {
                "id": fid,
                "hook": hook,
                "index": index,
                "site": saes[hook].name,
                "label": labels.get(fid) or auto,
                "score": round(score, 5),
                "why": why,
            }
        )
    return out
