"""Exact, node-level faithfulness of a feature graph's circuits (``FeatureGraph.faithfulness``):
one spliced forward pass in which every head, MLP, SAE latent and error term outside the
circuit takes its reference value (the corrupted run's, or the clean batch mean). Pairs of
mixed lengths run left-padded and masked, and the mean is each position's over the prompts
that have a token there (as ``Graph.faithfulness``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .._metrics import METRICS, bind_metric, check_gap, check_metric
from .._pairs import InputError, tokenize
from .._patching import final_logits
from ..features._splice import replace_error, site_hooks
from ._feature_eap import TYPES
from ._feature_sites import sites_of


@dataclass
class FeatureContext:
    """What every faithfulness evaluation of one feature graph needs, computed once: the
    reference values (corrupted run, or the clean batch mean) of every head, MLP, latent and
    error term, the bound metric and its baselines."""

    tokens: Any
    metric: Any
    clean: float
    reference: float
    ref: dict[str, torch.Tensor]  # hook -> [batch or 1, pos, ...]
    ref_err: dict[str, torch.Tensor]

    @classmethod
    def of(cls, graph, model, pairs, saes, ablation, metric) -> FeatureContext:
        metric = resolve_metric(graph, metric)
        key = (
            "faith",
            id(model),
            id(saes),
            ablation,
            metric if isinstance(metric, str) else id(metric),
        )
        if key in graph._cache:
            return graph._cache[key]
        tokens = tokenize(model, pairs, pad=True)  # mixed lengths: left-padded and masked
        mask = tokens.attention_mask
        runs = {}
        for name in ("clean", "corrupted"):
            acts: dict[str, torch.Tensor] = {}
            errs: dict[str, torch.Tensor] = {}

            def save(h: str, store: dict):
                def fn(x: torch.Tensor, hook: object) -> None:
                    store[h] = x.detach().clone()

                return fn

            def rec(h: str, acts=acts, errs=errs):
                def fn(f: torch.Tensor, err: torch.Tensor) -> None:
                    acts[h] = f.detach().clone()
                    errs[h] = err.detach().clone()

                return fn

            fwd = [pair for h in saes for pair in site_hooks(saes[h], record=rec(h))]
            for layer in range(graph.n_layers):
                for h in (f"blocks.{layer}.attn.hook_z", f"blocks.{layer}.hook_mlp_out"):
                    fwd.append((h, save("out:" + h, acts)))  # apart from latents
            with torch.inference_mode():
                logits = final_logits(model, getattr(tokens, name), fwd, attention_mask=mask)
            runs[name] = (logits, acts, errs)
        bound = bind_metric(metric, tokens, runs["clean"][0], runs["corrupted"][0])
        _, acts, errs = runs["corrupted"]
        if ablation == "mean":
            _, acts, errs = runs["clean"]
            # each position's mean over the prompts that have a token there (mixed lengths)
            acts = {h: tokens.masked_mean(v) for h, v in acts.items()}
            errs = {h: tokens.masked_mean(v) for h, v in errs.items()}
        ctx = cls(tokens, bound, bound(runs["clean"][0]), bound(runs["corrupted"][0]), acts, errs)
        if ablation == "mean":
            ctx.reference = ctx.metric_of(
                model, graph, saes, np.zeros(len(graph.ids), bool), "ablated", False
            )
        graph._cache[key] = ctx
        return ctx

    def metric_of(
        self,
        model,
        graph,
        saes,
        inside: np.ndarray,
        errors: str,
        complement: bool,
        removed: np.ndarray | None = None,
    ) -> float:
        """The metric with everything outside ``inside`` (or, ``complement``, inside it) set to
        its reference value (the masks of :func:`circuit_masks`)."""
        masks = circuit_masks(graph, saes, inside, errors, complement, removed)
        fwd = []
        for layer in range(graph.n_layers):
            z = f"blocks.{layer}.attn.hook_z"
            fwd.append((z, _keep_only(masks.heads[layer][None, :, :, None], self.ref["out:" + z])))
            if layer in masks.replaced:
                continue
            mlp = f"blocks.{layer}.hook_mlp_out"
            fwd.append((mlp, _keep_only(masks.mlp[layer][None, :, None], self.ref["out:" + mlp])))
        # after the component hooks: an attn_out / mlp_out SAE reads the patched output
        for hook, (feats, err) in masks.sites.items():
            fwd += self._splice(saes[hook], hook, feats, err)
        with torch.inference_mode():
            logits = final_logits(
                model, self.tokens.clean, fwd, attention_mask=self.tokens.attention_mask
            )
        return float(self.metric(logits))

    def recovered(self, value: float) -> float:
        gap = check_gap(self.clean, self.reference, "Faithfulness (the share recovered)")
        return (value - self.reference) / gap

    def _splice(self, sae, hook, feats, err):
        ref_f, ref_e = self.ref[hook], self.ref_err[hook]

        def override(f: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = torch.where(feats[None].to(f.device), f, ref_f.to(f.dtype))
            # the rule ablate(features=["L11ERR"]) uses: positions outside take the reference
            return f, replace_error(e, ref_e, ~err)

        return site_hooks(sae, override=override)


@dataclass
class CircuitMasks:
    """What a circuit keeps (True) of each run's values: ``heads [layer, pos, head]``,
    ``mlp [layer, pos]``, and per SAE (hook) ``(latents [pos, d_sae], error term [pos])``;
    ``replaced``: the layers whose MLP a transcoder replaces (no MLP node)."""

    heads: torch.Tensor
    mlp: torch.Tensor
    sites: dict[str, tuple[torch.Tensor, torch.Tensor]]
    replaced: set[int]


def circuit_masks(
    graph,
    saes,
    inside: np.ndarray,
    errors: str,
    complement: bool,
    removed: np.ndarray | None = None,
) -> CircuitMasks:
    """The one rule of which values a circuit keeps, for every backend: the nodes in
    ``inside`` (or, ``complement``, those outside it); ``removed`` (``[N]`` bool, the nodes
    ablated by name) takes error nodes out even with ``errors="kept"``."""
    n_pos = graph.n_pos
    keep = ~inside if complement else inside
    types = graph.type
    sites = sites_of(saes)
    heads = torch.zeros(graph.n_layers, n_pos, graph.n_heads, dtype=torch.bool)
    sel = np.flatnonzero((types == TYPES.index("head")) & keep)
    heads[graph.layer[sel], graph.pos[sel], graph.head[sel]] = True
    mlp = torch.zeros(graph.n_layers, n_pos, dtype=torch.bool)
    sel = np.flatnonzero((types == TYPES.index("mlp")) & keep)
    mlp[graph.layer[sel], graph.pos[sel]] = True
    out = {}
    for s in sites:
        hook = s.hook
        here = (graph.layer == s.layer) & (graph.site == s.index)
        feats = torch.zeros(n_pos, saes[hook].d_sae, dtype=torch.bool)
        sel = np.flatnonzero(here & (types == TYPES.index("feature")) & keep)
        feats[graph.pos[sel], graph.feature[sel]] = True
        err = torch.zeros(n_pos, dtype=torch.bool)
        sel = np.flatnonzero(here & (types == TYPES.index("error")) & keep)
        err[graph.pos[sel]] = True
        if errors == "kept":  # every error node inside the circuit, but those removed
            gone = torch.zeros(n_pos, dtype=torch.bool)
            if removed is not None:
                gone[
                    graph.pos[np.flatnonzero(here & (types == TYPES.index("error")) & removed)]
                ] = True
            err = gone if complement else ~gone
        elif errors == "ablated":
            err[:] = complement
        out[hook] = (feats, err)
    replaced = {s.layer for s in sites if s.code == "tc"}  # a transcoder is the MLP node
    return CircuitMasks(heads, mlp, out, replaced)


def resolve_metric(graph, metric):
    """The metric to evaluate ``graph``'s circuits with: ``metric``, else the graph's own."""
    if metric is not None:
        check_metric(metric)
    metric = metric if metric is not None else graph._cache.get("metric_fn", graph.metric)
    if not callable(metric) and metric not in METRICS:
        raise InputError(
            f"The graph's metric {metric!r} was a custom function: pass it again as metric=…."
        )
    return metric


def _keep_only(mask: torch.Tensor, ref: torch.Tensor):
    """A hook setting every entry outside ``mask`` to ``ref``."""

    def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
        return torch.where(mask.to(x.device), x, ref.to(x.dtype))

    return fn
