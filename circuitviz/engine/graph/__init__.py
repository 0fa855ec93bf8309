"""Attribution graphs: EAP / EAP-IG edge scores, pruning, exact faithfulness, JSON."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from transformer_lens.model_bridge import TransformerBridge

from .. import backends
from .._metrics import MetricFn
from .._pairs import InputError, PromptPairs, tokenize
from ._eap import eap_scores
from ._faithfulness import ABLATIONS, Faithfulness, FaithfulnessCurve
from ._feature_graph import FeatureGraph, FeatureNode
from ._graph import SCHEMA, Edge, Graph, Node
from ._layout import Layout, all_weights, model_info
from ._mib import MIB_FRACTIONS, MIBScores, exact_node_scores, mib_scores

METHODS = ("eap", "eap-ig")

__all__ = [
    "ABLATIONS",
    "METHODS",
    "MIB_FRACTIONS",
    "SCHEMA",
    "Edge",
    "Faithfulness",
    "FaithfulnessCurve",
    "FeatureGraph",
    "FeatureNode",
    "Graph",
    "MIBScores",
    "Node",
    "circuit",
    "edge_patch",
    "exact_node_scores",
    "mib_scores",
]


def circuit(
    model: TransformerBridge,
    pairs: PromptPairs,
    *,
    method: str = "eap",
    steps: int | None = None,
    per_position: bool = False,
    metric: str | MetricFn = "logit_diff",
    progress: bool = True,
    saes: Any = None,
) -> Graph | FeatureGraph:
    """The attribution graph of ``model`` on ``pairs``.

    Nodes are the embeddings, every attention head, every MLP and the logits (split by
    position when ``per_position``); every sender → receiver path in the residual stream is
    an edge, a head's q, k and v inputs being separate receivers (with grouped-query
    attention, k and v are one receiver per KV head, shared by its query heads). An edge's
    weight is its EAP score ``(a_u(corrupted) − a_u(clean)) · ∂M/∂x_r`` (summed over
    positions, averaged over the batch): ≈ how much patching that edge alone with its
    corrupted value changes the metric.

    Args:
        method: ``"eap"`` (two forwards, one backward) or ``"eap-ig"`` (receiver gradients
            averaged over ``steps`` inputs interpolated from the corrupted to the clean
            embeddings; one forward and backward each).
        steps: EAP-IG steps (default 5); ``steps=1`` is EAP.
        per_position: one node per (component, position); edges join nodes at the same
            position (information moves across positions only inside heads). With pairs of
            mixed lengths (left-padded, as for ``patch``), position ``p`` is column ``p`` of
            the longest prompt, whose tokens label it: positions are aligned from the end, so
            the final position is every prompt's last token; a shorter prompt adds nothing
            at its padding. Without ``per_position`` the scores are the mean of each pair's.
        metric: a metric name or callable of final-position logits (see ``circuitviz.patch``).
        saes: SAEs on ``blocks.L.hook_resid_pre/_mid/_post``, ``hook_attn_out`` or
            ``hook_mlp_out``, or transcoders of one MLP (an ``SAESet``, one SAE or a list): a
            **feature graph** (:class:`FeatureGraph`, always per position) whose nodes also
            include each SAE's latents active on the pairs (``"L11F1234:P5"``;
            ``"L3attnF12:P5"`` at other sites, ``engine._sites``) and its error term
            (``"L11ERR:P5"``), scored through the SAE-spliced model (Marks et al. 2024; see
            ``_feature_eap`` and ``_feature_sites``). Mixed lengths as above: a latent is a
            node at column ``p`` when it fires there on a prompt that has a token there;
            padding holds no latent or error term and sends or receives nothing. On nnsight
            (locally or on NDIF: one request for a built-in metric, two for a callable
            one) the same graph, at every site kind and over mixed lengths.
    """
    if not isinstance(per_position, bool):
        raise InputError(f"per_position must be True or False, got {per_position!r}.")
    if not isinstance(method, str) or method not in METHODS:
        raise InputError(f"Unknown method={method!r}: use one of {METHODS}.")
    if steps is None:
        steps = 5 if method == "eap-ig" else 1
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise InputError(f"steps must be an integer ≥ 1, got {steps!r}.")
    if method == "eap" and steps != 1:
        raise InputError("steps applies to method='eap-ig'; EAP takes one gradient (steps=1).")
    if saes is not None and (seam := backends.route(model, "feature_circuit")) is not None:
        # nnsight: the feature graph as one request (two for a callable metric)
        return seam(
            model, pairs, saes=saes, method=method, steps=steps, metric=metric, progress=progress
        )
    if (seam := backends.route(model, "circuit")) is not None:  # nnsight: EAP on the seam
        return seam(
            model, pairs, method=method, steps=steps, per_position=per_position, metric=metric
        )
    checked = None
    if saes is not None:
        from ._feature_eap import SpliceSites, check_saes

        checked = check_saes(model, saes)
    tokens = tokenize(model, pairs, pad=True)  # mixed lengths: left-padded and masked
    # padding holds no latent or error term (SpliceSites masks what its splices record)
    sites = None if checked is None else SpliceSites(checked, model, tokens=tokens)
    layout = Layout.of(model)
    if layout.n_heads % layout.n_kv_heads:
        raise InputError(
            f"{layout.n_heads} query heads don't split into {layout.n_kv_heads} KV groups."
        )
    scores, bound, clean, corrupted = eap_scores(
        model,
        layout,
        all_weights(model),
        tokens,
        metric,
        steps=steps,
        progress=progress,
        sites=sites,
    )
    if sites is not None and checked is not None:
        from ._feature_eap import feature_scores

        info = model_info(model)
        fgraph = FeatureGraph.build(
            scores=feature_scores(layout, sites, progress=progress),
            saes=checked,
            prompts=pairs.to_dict(),
            tokens=tokens.str_tokens,
            columns=tokens.columns,
            method=method,
            metric=bound.name,
            clean=clean,
            corrupted=corrupted,
            steps=steps,
            **info,
        )
        if callable(metric):
            fgraph._cache["metric_fn"] = metric
        return fgraph
    if not per_position:
        scores = scores.sum(2, keepdim=True)
    info = model_info(model)
    graph = Graph.build(
        layout=layout,
        scores=scores.cpu(),
        model=info["model"],
        prompts=pairs.to_dict(),
        tokens=tokens.str_tokens,
        method=method,
        metric=bound.name,
        per_position=per_position,
        columns=tokens.columns if per_position else None,
        clean=clean,
        corrupted=corrupted,
        steps=steps,
    )
    if callable(metric):
        graph._cache["metric_fn"] = metric
    return graph


def edge_patch(
    model: TransformerBridge,
    pairs: PromptPairs,
    graph: Graph,
    edges: Edge | Sequence | dict | Iterable,
    *,
    ablation: str = "corrupted",
) -> float | torch.Tensor:
    """Exact effect ``M(patched) − M(clean)`` of patching one edge (a float) or of each of a
    list of edges alone (a tensor) — the quantity an edge's weight estimates."""
    single = isinstance(edges, (Edge, dict)) or (
        isinstance(edges, tuple) and len(edges) == 3 and all(isinstance(x, str) for x in edges)
    )
    if single:
        return graph.patch_edge(model, pairs, edges, ablation=ablation)
    return graph.patch_edges(model, pairs, edges, ablation=ablation)
