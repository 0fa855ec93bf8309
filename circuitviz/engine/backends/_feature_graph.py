"""Feature graphs on nnsight, locally or on NDIF: ``circuit(model, pairs, saes=...)`` and
``FeatureGraph.faithfulness`` — the same :class:`~circuitviz.engine.graph.FeatureGraph`, with
the same numbers, as the TransformerLens bridge.

Requests (the torch code inside the trace is :mod:`._feature_graph_program`):

- ``circuit(..., saes=...)``, EAP or EAP-IG, with a built-in metric: **one**, whatever
  ``steps``. It sends the SAEs, keeps the corrupted senders (and embeddings) on the server
  and runs the clean pass and every step with the SAEs spliced; each pass takes the
  metric's gradient at its own readout there (``_metric_program.weights``, its baselines
  the clean and corrupted runs' readouts), and the receiver gradients and each site's
  ``∂M/∂out`` and ``∂M/∂pre`` are summed there; back come the latents and error terms of
  the corrupted and clean runs, the senders' differences and those sums. The edges are then
  scored here by the bridge's own code (``graph._feature_eap.feature_scores``), so the node
  table, the cuts and the sparse edges are one implementation. A callable metric is the
  user's code, which the server does not have: then a first request brings the readouts
  (without the SAEs: spliced with its error term the model gives the same logits up to
  float rounding), the gradients are taken here, and the second runs the graph.
- ``FeatureGraph.faithfulness``: **one** — the reference runs (corrupted, or clean for the
  batch mean, and the empty circuit's for ``"mean"``) and the circuit's run, masks from
  ``graph._feature_faith.circuit_masks`` (the bridge's rule).

What travels: every SAE's weights (float16 where that is exact), since each site encodes and
decodes whole; back come ``[sender | receiver, batch, pos, d_model]`` differences and
gradients and ``[batch, pos, d_sae]`` latents — heavier than the component graph's scores,
fine for the small models this is meant for.

SAEs sit at every site the bridge's feature graphs take (resid_pre/mid/post, attn_out,
mlp_out, transcoders reading the MLP's input before or after ln2), spliced where
``_features.splice_site`` puts them; a transcoder reading ln2's output has its latents'
receiver gradients mapped back through ln2 on the server (per step, at that step's residual).
Pairs of mixed lengths run left-padded and masked, as the bridge's feature graphs
(``graph._feature_eap``: padding holds no latent, error term or edge).
"""

from __future__ import annotations

from typing import Any

import torch

from .._metrics import MetricFn, bind_metric, check_gap, check_metric
from .._pairs import PromptPairs, tokenize
from ..graph._layout import Layout, model_info
from ._analyses import _logits, _reduced, metric_grad, server_metric
from ._base import Run, backend_of, ported
from ._features import _compact, splice_site
from ._features import check_saes as check_nnsight_saes


def _checked(model: Any, saes: Any):
    """The SAEs as a set, each fit for a feature circuit (``graph._feature_sites.check_saes``,
    as on the bridge) and where nnsight splices it (``_features.check_saes``)."""
    from ..features._sae import as_sae_set
    from ..graph._feature_sites import check_saes

    saes = check_saes(model, as_sae_set(saes))  # the bridge's refusals first
    check_nnsight_saes(model, saes)
    return saes


_PAYLOADS: dict[int, tuple[Any, dict]] = {}  # id(SAE) -> (SAE, payload): built once


def sae_weights(sae: Any) -> dict:
    """Everything a splice needs of ``sae`` on the server (float32 values, as the bridge's
    copies; sent as float16 where that is exact)."""
    held = _PAYLOADS.get(id(sae))
    if held is not None and held[0] is sae:
        return held[1]

    def wire(t):
        return None if t is None else _compact(t.float())

    payload = {
        "activation": sae.activation,
        "k": sae.k,
        "W_enc": wire(sae.W_enc),
        "b_enc": wire(sae.b_enc),
        "W_dec": wire(sae.W_dec),
        "b_dec": wire(sae.b_dec),
        "threshold": wire(sae.threshold),
        "b_dec_in": wire(sae.b_dec) if sae.apply_b_dec_to_input else None,
    }
    if len(_PAYLOADS) > 16:
        _PAYLOADS.clear()
    _PAYLOADS[id(sae)] = (sae, payload)
    return payload


def _key(model: Any, hook: str, sae: Any) -> tuple[str, int]:
    """``(site, layer)`` where ``sae``, reading ``hook``, splices (``_features.splice_site``)."""
    return splice_site(model, hook, sae)[0]


def _sites(model: Any, saes: Any) -> dict:
    """Per splice key, the SAE's weights and where it reads and writes (a transcoder that
    reads ln2's output: ``post_norm``, its receivers mapped back through ln2 there)."""
    out = {}
    for hook, sae in saes.items():
        key, read, write = splice_site(model, hook, sae)
        post_norm = key[0] == "transcoder" and read == "mlp_in"
        out[key] = {**sae_weights(sae), "read": read, "write": write, "post_norm": post_norm}
    return out


def _norm_eps(model: Any) -> float:
    config = model.lm.config
    return float(getattr(config, "rms_norm_eps", None) or config.layer_norm_epsilon)


def _client_weights(backend, tokens, spec, short, metric, alphas, method) -> tuple:
    """A callable metric's gradient at the clean run's and each step's readout, taken here
    after a first request brings those readouts (the server cannot run the user's code), and
    the bound metric. The readouts need no SAE: spliced with its error term, the model
    computes the same logits up to float rounding (the splice invariant)."""
    mask = tokens.attention_mask
    embed = {"kind": "senders", "embed": True} if alphas else {}
    first = [
        Run(tokens.corrupted, readout=spec, grad=embed, attention_mask=mask),
        Run(tokens.clean, readout=spec, attention_mask=mask),
    ]
    for alpha in alphas:
        step = {"kind": "interpolated", "alpha": alpha}
        first.append(Run(tokens.clean, readout=spec, grad=step, attention_mask=mask))
    outs = backend.execute(first, desc=method.upper(), progress=False)
    bound = bind_metric(metric, short, _logits(outs[1]), _logits(outs[0]))
    return [metric_grad(bound, _logits(out)) for out in outs[1:]], bound


def feature_circuit(
    model: Any,
    pairs: PromptPairs,
    *,
    saes: Any,
    method: str = "eap",
    steps: int = 1,
    metric: str | MetricFn = "logit_diff",
    progress: bool = True,
) -> Any:
    """``circuit(model, pairs, saes=...)`` on nnsight: one request for a built-in metric, two
    for a callable one (see the module doc)."""
    from ..graph._feature_eap import SpliceSites, feature_scores
    from ..graph._feature_graph import FeatureGraph

    check_metric(metric)
    checked = _checked(model, saes)
    with ported():
        tokens = tokenize(model, pairs, pad=True)  # mixed lengths: left-padded and masked
    mask = tokens.attention_mask  # every run carries it (None: one length)
    layout = Layout.of(model)
    backend = backend_of(model)
    sites = _sites(model, checked)
    spec, short = _reduced(metric, tokens)
    alphas = [k / steps for k in range(steps - 1, 0, -1)]  # after the clean run, α = 1
    if callable(metric):  # the readouts first, to take the user's metric's gradient here
        weights, bound = _client_weights(backend, tokens, spec, short, metric, alphas, method)
    else:  # each run's own readout, against the clean run's (1) and the corrupted run's (0)
        weights = [server_metric(metric, short, "own" if k == 0 else 1, 0) for k in range(steps)]
    corrupted = {"kind": "feature_senders", "sites": sites, "embed": bool(alphas)}
    runs = [Run(tokens.corrupted, readout=spec, grad=corrupted, attention_mask=mask)]
    for k in range(steps):
        grad = {
            "kind": "feature_eap",
            "sites": sites,
            "weights": weights[k],
            "eps": _norm_eps(model),
            "steps_left": steps - 1 - k,
        }
        if k:
            grad["alpha"] = alphas[k - 1]
        runs.append(Run(tokens.clean, readout=spec, grad=grad, attention_mask=mask))
    outs = backend.execute(runs, desc=method.upper(), progress=False)
    if not callable(metric):  # the spliced runs' readouts (the bridge's baselines)
        corr_l, clean_l = _logits(outs[0]), _logits(outs[1])
        bound = bind_metric(metric, short, clean_l, corr_l)
        for out in outs[2:]:  # each step's metric passes the client's checks (finite, shaped)
            bound.per_example(_logits(out))
    hook_of = {_key(model, h, sae): h for h, sae in checked.items()}
    splice = SpliceSites(checked, None, device=torch.device("cpu"), tokens=tokens)
    for name, out in (("corrupted", outs[0]), ("clean", outs[1])):
        for (what, *key), value in out.returned.items():
            store = splice.latents if what == "latents" else splice.errors
            # a pad token's latents and error term are not the prompt's: 0 (as the bridge)
            store.setdefault(name, {})[hook_of[tuple(key)]] = splice._real(value)
    last = outs[-1].readout
    for key, hook in hook_of.items():
        splice.g_out[hook] = last[("g_out", *key)].float()
        splice.g_pre[hook] = last[("g_pre", *key)].float()
        if ("g_recv", *key) in last:  # per position: the node latents' rows, in order
            sizes = [len(a) for a in splice._active()[hook]]
            splice.g_recv[hook] = list(last[("g_recv", *key)].float().split(sizes))
    diff = tokens.real(last["diff"].float(), batch_dim=1)  # padding sends nothing
    splice.finish(diff, last["grads"].float() / steps, steps)
    graph = FeatureGraph.build(
        scores=feature_scores(layout, splice, progress=progress),
        saes=checked,
        prompts=pairs.to_dict(),
        tokens=tokens.str_tokens,
        method=method,
        metric=bound.name,
        clean=float(bound(_logits(outs[1]))),
        corrupted=float(bound(_logits(outs[0]))),
        steps=steps,
        **model_info(model),
    )
    if callable(metric):
        graph._cache["metric_fn"] = metric
    return graph


def feature_faithfulness(model: Any, graph: Any, pairs: PromptPairs, **options: Any) -> Any:
    """``FeatureGraph.faithfulness`` on nnsight, as one request (see the module doc)."""
    from ..graph._faithfulness import Faithfulness
    from ..graph._feature_faith import circuit_masks, resolve_metric

    with ported():
        saes, inside, removed = graph._evaluation(model, pairs, **options)
        tokens = tokenize(model, pairs, pad=True)  # mixed lengths: left-padded and masked
    checked = _checked(model, saes)
    mask = tokens.attention_mask
    metric = resolve_metric(graph, options["metric"])
    ablation, errors = options["ablation"], options["errors"]
    mean = ablation == "mean"
    sites = _sites(model, saes)
    spec, short = _reduced(metric, tokens)

    def wire(masks) -> dict:
        """The masks a circuit run carries: only the layers where something is replaced."""
        return {
            "heads": {i: m for i, m in enumerate(masks.heads) if not bool(m.all())},
            "mlp": {
                i: m
                for i, m in enumerate(masks.mlp)
                if not bool(m.all()) and i not in masks.replaced  # a transcoder's MLP
            },
            "sites": {_key(model, h, checked[h]): fe for h, fe in masks.sites.items()},
        }

    def circuit(masks) -> Run:
        grad = {"kind": "feature_circuit", "sites": sites, "masks": wire(masks)}
        grad["ref"] = "mean" if mean else "corrupted"
        return Run(tokens.clean, readout=spec, grad=grad, attention_mask=mask)

    plain = {"kind": "feature_circuit", "sites": sites}
    # "mean": each position's over the prompts that have a token there (mixed lengths)
    weights = tokens.mean_weights()
    runs = [
        Run(
            tokens.corrupted, readout=spec, grad={**plain, "keep": "corrupted"}, attention_mask=mask
        ),
        Run(
            tokens.clean,
            readout=spec,
            grad={**plain, "keep": "clean", "mean": True, "weights": weights} if mean else plain,
            attention_mask=mask,
        ),
    ]
    if mean:  # the reference: the empty circuit, every value the clean batch mean
        nothing = inside & False
        runs.append(circuit(circuit_masks(graph, saes, nothing, "ablated", False)))
    masks = circuit_masks(graph, saes, inside, errors, options["complement"], removed)
    runs.append(circuit(masks))
    outs = backend_of(model).execute(runs, desc="faithfulness", progress=False)
    corr_l, clean_l = _logits(outs[0]), _logits(outs[1])
    bound = bind_metric(metric, short, clean_l, corr_l)
    clean = float(bound(clean_l))
    reference = float(bound(_logits(outs[2]) if mean else corr_l))
    value = float(bound(_logits(outs[-1])))
    gap = check_gap(clean, reference, "Faithfulness (the share recovered)")
    n_edges = len(graph._listed())
    return Faithfulness((value - reference) / gap, value, clean, reference, n_edges, ablation)
