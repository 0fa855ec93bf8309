"""A small hand-made feature graph on the tiny llama, for the clamp/supernode view tests:
EMBED → feature nodes of the tiny SAEs (latents that fire on the clean prompt, at the last two
positions) → LOGITS, in the node contract of feature circuits ("L{L}F{i}:P{p}", type
"feature", fields feature and hook)."""

from __future__ import annotations

import torch

from circuitviz.engine import hooks
from circuitviz.engine.features import SAE, SAESet


def random_saes(model, layers, *, d_sae=4096, k=32, seed=0):
    """Throwaway random TopK SAEs (decoder = 3 × encoderᵀ) over ``blocks.L.hook_resid_post``:
    the shapes of real ones, for timing on the demo model; their latents mean nothing."""
    g = torch.Generator().manual_seed(seed)
    d = model.cfg.d_model
    out = []
    for layer in layers:
        W = torch.randn(d, d_sae, generator=g) / d**0.5
        hook = f"blocks.{layer}.hook_resid_post"
        out.append(
            SAE(hook, W, torch.zeros(d_sae), 3 * W.T.contiguous(), torch.zeros(d), "topk", k=k)
        )
    return SAESet(out, name="random")


def active_latents(model, prompt, sae, pos, n):
    got = {}

    def read(x, hook):
        got["f"] = sae.encode(x[0])

    with torch.no_grad(), hooks(model, [(sae.hook_name, read)]):
        model(model.to_tokens(prompt), return_type="logits")
    return [int(i) for i in got["f"][pos].topk(n).indices]


def feature_graph(model, pairs, saes, *, per_layer=3):
    prompt = pairs.clean[0]
    tokens = model.to_str_tokens(prompt)
    last = len(tokens) - 1
    nodes = [{"id": f"EMBED:P{last}", "type": "embed", "layer": -1, "pos": last, "score": None}]
    edges = []
    prev = [nodes[0]["id"]]
    for hook in saes:
        layer = saes[hook].layer
        current = []
        for k, i in enumerate(active_latents(model, prompt, saes[hook], last, per_layer)):
            nid = f"L{layer}F{i}:P{last}"
            score = (0.9 - 0.2 * k) * (1 if k % 2 == 0 else -1)
            nodes.append(
                {
                    "id": nid,
                    "type": "feature",
                    "layer": layer,
                    "pos": last,
                    "feature": i,
                    "head": k,
                    "hook": hook,
                    "score": score,
                    "label": f"L{layer}F{i}",
                }
            )
            for src in prev:
                edges.append({"source": src, "target": nid, "input": "mlp", "weight": score / 2})
            current.append(nid)
        prev = current
    n_layers = model.cfg.n_layers
    nodes.append(
        {"id": f"LOGITS:P{last}", "type": "logits", "layer": n_layers, "pos": last, "score": None}
    )
    for src in prev:
        edges.append({"source": src, "target": nodes[-1]["id"], "input": "logits", "weight": 0.4})
    return {
        "schema": "circuitviz.graph/1",
        "model": "tiny-llama",
        "method": "hand-made",
        "metric": "logit_diff",
        "per_position": True,
        "n_layers": n_layers,
        "n_heads": model.cfg.n_heads,
        "tokens": tokens,
        "nodes": nodes,
        "edges": edges,
    }
