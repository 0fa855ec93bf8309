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
    target: torch.Tensor | None = None,
    output_hook: str | None = None,
) -> SAE:
    """A TopK SAE on ``acts``; with ``target`` (and ``output_hook``) a transcoder from
    ``acts`` to ``target``."""
    torch.manual_seed(seed)
    d_in = acts.shape[1]
    target = acts if target is None else target
    W_dec = torch.randn(d_sae, target.shape[1])
    W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
    W_enc = W_dec.T.clone() if target is acts else torch.randn(d_in, d_sae) / d_in**0.5
    params = {
        "W_enc": W_enc.requires_grad_(),
        "b_enc": torch.zeros(d_sae, requires_grad=True),
        "W_dec": W_dec.clone().requires_grad_(),
        "b_dec": target.mean(0).clone().requires_grad_(),
    }
    transcoder = target is not acts
    scale = float(acts.norm(dim=1).mean()) if transcoder else 1.0  # tiny residuals: O(1) inputs
    acts = acts / scale
    opt = torch.optim.Adam(params.values(), lr=3e-3)
    for _ in range(steps):
        shift = 0.0 if transcoder else params["b_dec"]
        pre = (acts - shift) @ params["W_enc"] + params["b_enc"]
        top = pre.topk(k, dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        loss = ((f @ params["W_dec"] + params["b_dec"] - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    p = {n: t.detach() for n, t in params.items()}
    p["W_enc"] = p["W_enc"] / scale
    return SAE(
        hook_name,
        p["W_enc"],
        p["b_enc"],
        p["W_dec"],
        p["b_dec"],
        activation="topk",
        k=k,
        apply_b_dec_to_input=not transcoder,
        output_hook=output_hook,
        meta={"format": "tiny-test"},
    )


def tiny_saes(model, layers=None, *, d_sae: int = 64, k: int = 8) -> SAESet:
    layers = range(model.cfg.n_layers) if layers is None else layers
    names = [f"blocks.{L}.hook_resid_post" for L in layers]
    acts = collect(model, names)
    return SAESet((train_topk(acts[h], h, d_sae=d_sae, k=k) for h in names), name="tiny")


def tiny_site_saes(model, hooks, transcoders=(), *, d_sae: int = 64, k: int = 8) -> SAESet:
    """Tiny SAEs on ``hooks`` and transcoders ``(input_hook, output_hook)`` (one set)."""
    names = sorted({*hooks, *(h for pair in transcoders for h in pair)})
    acts = collect(model, names)
    out = [train_topk(acts[h], h, d_sae=d_sae, k=k) for h in hooks]
    out += [
        train_topk(acts[a], a, d_sae=d_sae, k=k, target=acts[b], output_hook=b)
        for a, b in transcoders
    ]
    return SAESet(out, name="tiny-sites")


def feature_pairs():
    """The two same-length pairs the feature-circuit tests share (the second answer, " t1",
    appears earlier in its prompt)."""
    import circuitviz as cv

    return cv.PromptPairs(
        ["t1 t2 t3 t4 t1 t2", "t3 t9 t1 t4 t3 t9"],
        ["t5 t6 t7 t8 t5 t6", "t5 t6 t7 t8 t5 t6"],
        [" t3", " t1"],
        [" t7", " t7"],
    )
