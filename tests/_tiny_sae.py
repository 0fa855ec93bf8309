"""A tiny TopK SAE trained in seconds on a tiny model's residual stream, for the tests.

from tests._tiny_sae import tiny_saes
saes = tiny_saes(tiny_llama)   # SAESet over blocks.{0,1}.hook_resid_post
"""

from __future__ import annotations

import torch

from circuitviz.engine import hooks
from circuitviz.engine.features import SAE, SAESet


def collect(model, hook_names, *, n_seq: int = 64, seq_len: int = 16, seed: int = 0):
    """Activations at ``hook_names`` on random token sequences: {hook: [n_seq*seq_len, d]}."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model.cfg.d_vocab - 1, (n_seq, seq_len), generator=g)
    store: dict[str, torch.Tensor] = {}

    def saver(name):
        def fn(x, hook):
            store[name] = x.detach().reshape(-1, x.shape[-1]).clone()

        return fn

    with torch.no_grad(), hooks(model, [(h, saver(h)) for h in hook_names]):
        model(tokens, return_type="logits")
    return store


def train_topk(
    acts: torch.Tensor,
    hook_name: str,
    *,
    d_sae: int = 64,
    k: int = 8,
    steps: int = 300,
    seed: int = 0,
) -> SAE:
    torch.manual_seed(seed)
    d_in = acts.shape[1]
    W_dec = torch.randn(d_sae, d_in)
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    params = {
        "W_enc": W_dec.T.clone().requires_grad_(),
        "b_enc": torch.zeros(d_sae, requires_grad=True),
        "W_dec": W_dec.clone().requires_grad_(),
        "b_dec": acts.mean(0).clone().requires_grad_(),
    }
    opt = torch.optim.Adam(params.values(), lr=3e-3)
    for _ in range(steps):
        pre = (acts - params["b_dec"]) @ params["W_enc"] + params["b_enc"]
        top = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        loss = ((f @ params["W_dec"] + params["b_dec"] - acts) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = {n: t.detach() for n, t in params.items()}
    return SAE(
        hook_name,
        p["W_enc"],
        p["b_enc"],
        p["W_dec"],
        p["b_dec"],
        activation="topk",
        k=k,
        apply_b_dec_to_input=True,
        meta={"format": "tiny-test"},
    )


def tiny_saes(model, layers=None, *, d_sae: int = 64, k: int = 8) -> SAESet:
    layers = range(model.cfg.n_layers) if layers is None else layers
    names = [f"blocks.{L}.hook_resid_post" for L in layers]
    acts = collect(model, names)
    return SAESet((train_topk(acts[h], h, d_sae=d_sae, k=k) for h in names), name="tiny")
