"""SAE splices inside an nnsight trace: the torch code a feature request runs on any backend
that runs nnsight (this process, or NDIF).

Like :mod:`._program` this module imports nothing but torch (and :mod:`._program`), because for a remote request it
is shipped by value with the trace (NDIF does not have circuitviz).

A *splice* reads one SAE hook of a run (``("resid_pre" | "resid_post", layer)``) and may
keep its activation for later runs (``save``), bring it back (``back``), and set latents
there. Setting latents ``e`` of ``f = encode(x)`` to ``f'`` replaces ``x`` by
``decode(f') + (x - decode(f))``, which is ``x + (f'_e - f_e) @ W_dec[e]``: only the edited
latents' decoder rows are needed, and only the encoder columns that decide them — the edited
ones for ReLU and JumpReLU SAEs, every column for TopK (whether a latent is among the top k
depends on all of them). :func:`circuitviz.engine.backends._features.sae_payload` builds
that payload on the client.
"""

from __future__ import annotations

import torch

from . import _program

SPLICE_SITES = ("resid_pre", "resid_post")


def latents(sae: dict, x: torch.Tensor) -> torch.Tensor:
    """The edited latents' activations ``[..., n_edited]`` of activations ``x``, as the
    SAE's ``encode`` gives them (SAELens's conventions)."""
    dtype = getattr(torch, sae["dtype"])  # the SAE's own (weights may travel as float16)
    w = sae["W_enc"].to(x.device, dtype)
    x = x.to(dtype)
    if sae["b_dec_in"] is not None:
        x = x - sae["b_dec_in"].to(x.device, dtype)
    pre = x @ w + sae["b_enc"].to(x.device, dtype)
    if sae["activation"] == "topk":  # every latent was sent: pick the edited ones after
        top = pre.topk(sae["k"], dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        return f[..., sae["pick"].to(x.device)]
    if sae["activation"] == "jumprelu":
        return pre * (pre > sae["threshold"].to(x.device, dtype))
    return torch.relu(pre)


def _value(src: tuple, sae: dict, saved: dict, key: tuple, column: int):
    """What an edit sets its latent to: ``("const", v)``, ``("tensor", [batch|1, pos])``, or
    ``("run", i, "mean" | "rows")`` — the latent on run ``i``'s kept activation here;
    ``("run", i, "mean", weights [batch, pos])``: mixed lengths, each position's mean over
    the prompts that have a token there."""
    if src[0] == "const":
        return src[1]
    if src[0] == "tensor":
        return src[1]
    f = latents(sae, saved[(src[1], "splice", *key)])[..., column]  # [batch, pos]
    if src[2] != "mean":
        return f
    if len(src) > 3 and src[3] is not None:
        return (f * src[3].to(f.device, f.dtype)).sum(0, keepdim=True)
    return f.mean(0, keepdim=True)


def splice(x: torch.Tensor, spec: dict, key: tuple, index: int, saved: dict, back: dict, step: int):
    """Apply one run's splice at one hook to ``x`` ``[batch, pos, d]`` in place.

    ``step`` counts generation passes: past the first (the prompt) a pass holds one new
    position, where an edit at a prompt position does not act (as the bridge's loop)."""
    if spec.get("save"):
        saved[(index, "splice", *key)] = x.detach().clone()
    if spec.get("back") and step == 0:
        back[("splice", *key)] = x.detach().float().clone()
    edits = spec.get("edits") or []
    if not edits:
        return
    sae = spec["sae"]
    f = latents(sae, x)
    new = f.clone()
    for column, pos, src in edits:
        if pos is not None and step > 0:
            continue
        value = _value(src, sae, saved, key, column)
        if isinstance(value, torch.Tensor):
            value = value.to(new.device, new.dtype)
            if pos is not None and value.ndim == 2:
                value = value[:, pos]
        if pos is None:
            new[:, :, column] = value
        else:
            new[:, pos, column] = value
    delta = (new - f) @ sae["W_dec"].to(x.device, new.dtype)
    x += delta.to(x.dtype)


def _block(lm, arch: str, layer: int):
    return lm.model.layers[layer] if arch == "llama" else lm.transformer.h[layer]


def at_layer(lm, arch: str, layer: int, where: str, run: dict, index: int, saved, back, step=0):
    """The splice of ``run`` at ``layer``'s input (``where="pre"``: ``resid_pre``) or output
    (``"post"``: ``resid_post``), inside an nnsight trace, read in forward order."""
    site = "resid_pre" if where == "pre" else "resid_post"
    spec = run["splices"].get((site, layer))
    if spec is None:
        return
    block = _block(lm, arch, layer)
    out = block.input if where == "pre" else block.output
    x = out[0] if isinstance(out, tuple) else out
    splice(x, spec, (site, layer), index, saved, back, step)


def nnsight_generate(lm, arch: str, shape: dict, gen, run: dict, index: int, saved, back):
    """Greedy generation inside ``lm.generate(...)``: every pass (the prompt's, then one per
    new token, with the KV cache) splices the SAEs. ``back["generated"]`` gets the first
    pass's final-position logits (``"first"``) and each pass's greedy token (``"ids"``, 0-d
    tensors) as they come: a generation that stops early (end of sequence) unwinds the loop
    (nnsight's open step is left parked), and what it filled in stays."""
    out = back["generated"] = {"ids": []}
    for step in gen.iter[: run["generate"]["options"]["max_new_tokens"]]:
        for layer in range(shape["n_layers"]):
            at_layer(lm, arch, layer, "pre", run, index, saved, back, step)
            at_layer(lm, arch, layer, "post", run, index, saved, back, step)
        logits = lm.lm_head.output[:, -1]
        if step == 0:
            out["first"] = logits.detach()
        out["ids"].append(logits[0].argmax().detach().cpu())


def unembed(lm, arch: str, spec: dict) -> dict:
    """The logit effects of residual directions ``spec["dirs"]`` ``[n, d_model]`` read off the
    model's weights (no forward pass): ``(c(d) ⊙ w) @ W_U`` — ``w`` the final norm's weight,
    ``c`` centring for GPT-2's LayerNorm — and only each row's ``k`` largest and smallest
    come back (``[n, k]`` ids and values), not ``[n, d_vocab]``."""
    norm = lm.model.norm if arch == "llama" else lm.transformer.ln_f
    # Offloaded (device_map with CPU or disk) weights are read from their offload store.
    W_U = _program.param(lm.lm_head)
    d = spec["dirs"].to(W_U.device, torch.float32)
    if arch == "gpt2":
        d = d - d.mean(dim=-1, keepdim=True)
    weight = _program.param(norm).detach().float().to(W_U.device)
    effect = (d * weight) @ W_U.detach().float().T
    up, down = effect.topk(spec["k"], dim=-1), (-effect).topk(spec["k"], dim=-1)
    return {"up_i": up.indices, "up_v": up.values, "down_i": down.indices, "down_v": -down.values}
