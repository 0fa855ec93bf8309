"""What one request asks of a model, and the torch code that carries it out on any backend.

A request is a list of *runs*: forward passes over a batch of tokens that may write into
named sites, keep a site's activation for later runs of the same request, bring a site back,
and end with a *readout* of the final-position logits. The functions here are the only code
that touches activations; the bridge calls them from its hooks and nnsight from inside a
trace, so both backends compute the same numbers with the same lines.

This module imports nothing but torch (and :mod:`._metric_program`, torch only too): for a
remote (NDIF) request both are shipped by value with the trace, because the server does not
have circuitviz installed.

Sites, in the order a forward pass reaches them within a layer, and their canonical shapes
(TransformerLens's hook shapes):

- ``resid_pre`` ``[batch, pos, d_model]`` — the block's input;
- ``q`` ``[batch, pos, n_heads, d_head]``, ``k``/``v`` ``[batch, pos, n_kv_heads, d_head]`` —
  the projections, before rotary embeddings;
- ``z`` ``[batch, pos, n_heads, d_head]`` — each head's output, the o-projection's input;
- ``pattern`` ``[batch, n_heads, dest, src]`` — where the attention implementation
  exposes it (eager); read-only on nnsight;
- ``attn_out`` ``[batch, pos, d_model]`` — the attention block's output;
- ``mlp_out`` ``[batch, pos, d_model]``.
"""

from __future__ import annotations

import torch

from . import _metric_program

SITES = ("resid_pre", "q", "k", "v", "z", "pattern", "attn_out", "mlp_out")

#: Called after each run of a local request (a progress bar's ``update``); None on a server.
TICK = None


def tick() -> None:
    if TICK is not None:
        TICK()


def source(saved: dict, key: tuple, src: tuple) -> torch.Tensor | None:
    """The value a write copies from. ``src`` is ``("zero",)``, ``("tensor", value)`` or
    ``("run", run_index, mode)``: the same site's activation kept by an earlier run, as is
    (``"rows"``, one row per written row), averaged over its batch (``"mean"``), or its row
    ``mode`` (an int). ``("run", run_index, "mean", weights)``: a weighted sum over the batch
    with ``weights [batch, pos]`` (left-padded prompts: each position's mean over the prompts
    that have a token there, see ``Tokens.mean_weights``)."""
    if src[0] == "zero":
        return None
    if src[0] == "tensor":  # sent with the request
        return src[1]
    value = saved[(src[1], *key)]
    if src[2] == "mean":
        weights = src[3] if len(src) > 3 else None
        if weights is None:
            return value.mean(0, keepdim=True)
        w = weights.to(value.device, value.dtype)
        return (value * w.reshape(*w.shape, *([1] * (value.ndim - 2)))).sum(0, keepdim=True)
    return value if src[2] == "rows" else value[src[2] : src[2] + 1]


def trace_kwargs(run: dict) -> dict:
    """What a trace passes the model besides the tokens: for left-padded prompts, the
    attention mask and the positions it implies (each prompt counts from its first token, as
    TransformerLens's bridge derives them), so a padded prompt runs as it does alone."""
    mask = run.get("attention_mask")
    if mask is None:
        return {}
    positions = mask.long().cumsum(-1) - 1
    positions.masked_fill_(mask == 0, 1)
    return {"attention_mask": mask, "position_ids": positions}


def grow(x: torch.Tensor, run: dict, layer: int) -> torch.Tensor:
    """The block input of ``layer`` with the rows that join the batch there: copies of row 0.

    A patching condition cannot differ from the unpatched run before the layer it patches,
    so its row starts there ("growing the batch"); earlier layers run once, for row 0."""
    n = run["grow"].get(layer, 0)
    return torch.cat([x, x[:1].expand(n, *x.shape[1:])]) if n else x


def write(act: torch.Tensor, site: str, rows, pos, head, value) -> None:
    """``act[rows, pos, head] = value[:, pos, head]`` in place (``pattern``: ``[rows, head]``);
    a ``None`` index means all; a ``None`` value writes zeros."""
    rows = slice(None) if rows is None else rows
    if site == "pattern":
        index = (rows, slice(None) if head is None else head)
        sub = (slice(None), index[1])
    else:
        index = (rows, slice(None) if pos is None else pos)
        if head is not None:
            index += (head,)
        sub = (slice(None), *index[1:])
    if value is None:
        act[index] = 0
    else:  # a value kept on the client lives on the CPU; a layer may sit on any device
        act[index] = value[sub].to(act.device, act.dtype)


def touch(act, site: str, layer: int, run: dict, index: int, saved: dict, back: dict) -> None:
    """Everything run ``index`` does at one site of one layer: its writes, then keeping the
    (written) activation for later runs or for the client."""
    key = (site, layer)
    if act is None:  # an attention implementation that does not expose its pattern
        if key in run["returns"]:
            back[key] = None
        return
    for rows, pos, head, src in run["writes"].get(key, ()):
        write(act, site, rows, pos, head, source(saved, key, src))
    if key in run["saves"]:
        saved[(index, *key)] = act.detach().clone()
    if key in run["returns"]:
        back[key] = act.detach().float().clone()


def readout(logits: torch.Tensor, spec: dict) -> dict:
    """Only what the result needs from final-position logits ``[rows, d_vocab]``.

    ``ids``: those tokens' logits, plus the log-sum-exp of all the others as one extra
    column, so any softmax over the reduced row equals the full one at those tokens;
    ``full``: all logits (a custom metric, KL); ``topk``: ``(k, row)``, the k most likely
    tokens of one row and their probabilities.
    """
    logits = logits.detach().float()
    out = {}
    if spec.get("ids") is not None:
        ids = spec["ids"].to(logits.device)
        rest = logits.clone()
        rest[:, ids] = float("-inf")
        out["sel"] = torch.cat([logits[:, ids], rest.logsumexp(-1, keepdim=True)], -1)
    if spec.get("full"):
        out["full"] = logits.clone()
    if spec.get("topk") is not None:
        k, row = spec["topk"]
        p, i = logits[row].softmax(-1).topk(k)
        out["top_p"], out["top_i"] = p, i
    return out


# ----------------------------------------------------------------------------- nnsight


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    """``[batch, pos, n * d_head]`` as a view ``[batch, pos, n, d_head]`` (writes go through)."""
    return x.view(*x.shape[:-1], n, x.shape[-1] // n)


def nnsight_layer(
    lm, arch: str, shape: dict, layer: int, run: dict, index: int, saved, back, at=None
):
    """Visit, in forward order, the modules of one layer that ``run`` touches, inside an
    nnsight trace. Each module is read once; writes land in place, before it moves on.

    ``at(point)``, when given, is called at each SAE splice point of the layer in forward
    order (``_feature_program.POINTS``): at ``resid_pre`` before this layer's writes there,
    at ``attn_out`` and ``mlp_out`` after them (as the bridge runs ablation hooks before
    splices), so nnsight sees every module in order."""
    wanted = run["touched"].get(layer, ())
    if at is None:
        if not wanted:
            return
        at = _nowhere
    h, kv = shape["n_heads"], shape["n_kv_heads"]
    block = lm.model.layers[layer] if arch == "llama" else lm.transformer.h[layer]
    attn = block.self_attn if arch == "llama" else block.attn

    def visit(site, act):
        if site in wanted:
            touch(act, site, layer, run, index, saved, back)

    at("resid_pre")
    if "resid_pre" in wanted:
        x = block.input
        if run["grow"].get(layer):
            x = grow(x, run, layer)
            block.input = x
        visit("resid_pre", x)
    if arch == "llama":
        if "q" in wanted:
            visit("q", _heads(attn.q_proj.output, h))
        if "k" in wanted:
            visit("k", _heads(attn.k_proj.output, kv))
        if "v" in wanted:
            visit("v", _heads(attn.v_proj.output, kv))
    elif {"q", "k", "v"} & set(wanted):
        qkv = attn.c_attn.output
        d = qkv.shape[-1] // 3
        for i, site in enumerate(("q", "k", "v")):
            visit(site, _heads(qkv[..., i * d : (i + 1) * d], h))
    if "z" in wanted:
        visit("z", _heads((attn.o_proj if arch == "llama" else attn.c_proj).input, h))
    if "pattern" in wanted or "attn_out" in wanted:
        out = attn.output
        visit("pattern", out[1])
        visit("attn_out", out[0])
    at("attn_out")
    at("resid_mid")
    at("mlp_in")
    if "mlp_out" in wanted:
        visit("mlp_out", block.mlp.output)
    at("mlp_out")
    at("resid_post")


def _nowhere(point: str) -> None:
    """No SAE splices in this layer."""


# ----------------------------------------------------------------------------- gradients


def cell_effects(delta_grad: torch.Tensor, cell: str) -> torch.Tensor:
    """Sum ``(a_src - a_run) * grad`` of one layer into a map's cells (batch summed):
    ``pos`` ``[b, pos, d]`` → ``[pos]``; ``head`` ``[b, pos, head, d_head]`` → ``[head]``;
    ``head_pos`` → ``[pos, head]``; ``pattern`` ``[b, head, dest, src]`` → ``[head]``."""
    if cell == "pos":
        return delta_grad.sum(dim=(0, 2))
    if cell == "head":
        return delta_grad.sum(dim=(0, 1, 3))
    if cell == "head_pos":
        return delta_grad.sum(dim=(0, 3))
    if cell == "pattern":
        return delta_grad.sum(dim=(0, 2, 3))
    raise ValueError(f"unknown cell {cell!r}")


def grad_readout(logits: torch.Tensor, spec: dict) -> torch.Tensor:
    """:func:`readout`'s ``sel`` (or ``full``) row, kept on the autograd graph."""
    logits = logits.float()
    if spec.get("ids") is None:
        return logits
    ids = spec["ids"].to(logits.device)
    rest = logits.clone()
    rest[:, ids] = float("-inf")
    return torch.cat([logits[:, ids], rest.logsumexp(-1, keepdim=True)], -1)


def _site_tensor(lm, arch: str, layer: int, site: str):
    """The module tensor a site is a view of (what autograd sees), read in forward order."""
    block = lm.model.layers[layer] if arch == "llama" else lm.transformer.h[layer]
    attn = block.self_attn if arch == "llama" else block.attn
    if site == "resid_pre":
        return block.input
    if site in ("q", "k", "v"):
        if arch == "gpt2":
            return attn.c_attn.output
        return getattr(attn, f"{site}_proj").output
    if site == "z":
        return (attn.o_proj if arch == "llama" else attn.c_proj).input
    if site == "attn_out":
        return attn.output[0]
    return block.mlp.output  # mlp_out


def _site_view(x: torch.Tensor, arch: str, site: str, shape: dict) -> torch.Tensor:
    """A module tensor (or its gradient) in the site's canonical shape."""
    if site in ("q", "k", "v") and arch == "gpt2":
        d = x.shape[-1] // 3
        i = ("q", "k", "v").index(site)
        return _heads(x[..., i * d : (i + 1) * d], shape["n_heads"])
    if site in ("q", "z"):
        return _heads(x, shape["n_heads"])
    if site in ("k", "v"):
        return _heads(x, shape["n_kv_heads"])
    return x


def nnsight_attribution(lm, arch: str, shape: dict, run: dict, saved: dict) -> dict:
    """One attribution-patching run inside an nnsight trace (under ``torch.enable_grad``):
    the forward pass keeps the target site at every layer, the gradient of
    ``(readout · weights).sum()`` — ``weights`` being ∂metric/∂readout at this run's readout
    (:func:`._metric_program.weights`: taken here for a built-in metric, sent by the client
    for a callable) — equals the metric's own, and each layer's ``(a_src - a_run) · grad`` is summed
    into the map's cells here, so only ``[n_layers, *cells]`` numbers come back.

    Gradients come from ``torch.autograd.grad`` on the activations, so no parameter's
    ``.grad`` is touched; the embedding output is made a leaf, so frozen weights still
    leave a graph to differentiate (as the bridge's ``hook_embed`` does)."""
    spec, site = run["grad"], run["grad"]["site"]
    embed = lm.model.embed_tokens if arch == "llama" else lm.transformer.wte
    embed.output = embed.output.detach().requires_grad_(True)
    acts = [_site_tensor(lm, arch, layer, site) for layer in range(shape["n_layers"])]
    final = lm.lm_head.output[:, -1]
    out = readout(final, run["readout"])
    sel = grad_readout(final, run["readout"])
    w = _metric_program.weights(spec["weights"], out, saved)
    loss = (sel * w.to(sel.device)).sum()
    grads = torch.autograd.grad(loss, acts, allow_unused=True)
    effects = []
    for layer, (act, grad) in enumerate(zip(acts, grads, strict=True)):
        act = _site_view(act.detach(), arch, site, shape).float()
        grad = torch.zeros_like(act) if grad is None else _site_view(grad, arch, site, shape)
        delta = saved[(0, site, layer)].float() - act
        effects.append(cell_effects(delta * grad.float(), spec["cell"]))
    out["effects"] = torch.stack(effects).detach()
    return out


# ----------------------------------------------------------------------------- EAP edges


def _parts(lm, arch: str, layer: int):
    """``(block, attn, ln1, ln2)`` modules of one layer."""
    if arch == "llama":
        block = lm.model.layers[layer]
        return block, block.self_attn, block.input_layernorm, block.post_attention_layernorm
    block = lm.transformer.h[layer]
    return block, block.attn, block.ln_1, block.ln_2


def param(module, name: str = "weight") -> torch.Tensor | None:
    """``module``'s parameter ``name`` (None if it has none). One that accelerate offloaded
    (``device_map`` with CPU/disk offload: ``meta`` outside its module's forward) is read
    from the offload store of its hook."""
    value = getattr(module, name, None)
    if value is None or value.device.type != "meta":
        return value
    hook = getattr(module, "_module", module).__dict__.get("_hf_hook")
    for h in getattr(hook, "hooks", None) or [hook]:
        store = getattr(h, "weights_map", None)
        if store is not None and name in store:
            return store[name].to(h.execution_device)
    raise RuntimeError(f"A parameter {name!r} is on the meta device and has no offload store.")


def _weight(proj) -> torch.Tensor:
    """A projection's weight, read from its offload store if accelerate offloaded it."""
    weight = param(proj)
    assert weight is not None
    return weight


def _head_out(z: torch.Tensor, weight: torch.Tensor, arch: str, n_heads: int) -> torch.Tensor:
    """Each head's write into the residual stream, ``z_h · W_O[h]`` (no bias):
    ``z [b, p, h * d_head]`` → ``[b, p, h, d_model]``."""
    d_head = z.shape[-1] // n_heads
    # HF Linear keeps [out, in]; GPT-2's Conv1D keeps [in, out].
    w = weight.t() if arch == "llama" else weight
    return torch.einsum("bphd,hdm->bphm", _heads(z, n_heads), w.reshape(n_heads, d_head, -1))


def embedding(lm, arch: str, run: dict, saved: dict) -> torch.Tensor:
    """The token embeddings of this run, inside an nnsight trace; for an EAP-IG step
    (``run["grad"]["alpha"]``) replaced by ``corrupted + α · (clean − corrupted)`` (the
    corrupted ones kept by this request's senders run), as the bridge's ``hook_embed``."""
    embed = lm.model.embed_tokens if arch == "llama" else lm.transformer.wte
    alpha = run["grad"].get("alpha")
    if alpha is None:
        return embed.output
    corr = saved[("embed",)]
    embed.output = corr + alpha * (embed.output - corr)
    return embed.output


def apply_norm(ln, x: torch.Tensor, arch: str, eps: float) -> torch.Tensor:
    """A layer's pre-attention norm applied to ``x``, as HF computes it (RMSNorm in float32
    for Llama-style models, LayerNorm for GPT-2); from its weights, so no module is called a
    second time inside the trace."""
    if arch == "gpt2":
        return torch.nn.functional.layer_norm(
            x, x.shape[-1:], param(ln, "weight"), param(ln, "bias"), eps
        )
    h = x.float()
    h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
    return param(ln, "weight") * h.to(x.dtype)


def head_weight(attn, arch: str, kind: str, n: int) -> torch.Tensor:
    """The q, k or v projection's weight per head, ``[n, d_head, d_model]``."""
    if arch == "gpt2":  # Conv1D: weight [d_model, 3·d], q | k | v
        w = _weight(attn.c_attn)
        d, i = w.shape[1] // 3, ("q", "k", "v").index(kind)
        return w[:, i * d : (i + 1) * d].reshape(w.shape[0], n, -1).permute(1, 2, 0)
    w = _weight(getattr(attn, f"{kind}_proj"))  # Linear: [n·d_head, d_model]
    return w.reshape(n, -1, w.shape[-1])


def head_bias(attn, arch: str, kind: str, n: int) -> torch.Tensor | None:
    """The q, k or v projection's bias per head, ``[n, d_head]``, or None."""
    if arch == "gpt2":
        b = param(attn.c_attn, "bias")
        d, i = b.shape[0] // 3, ("q", "k", "v").index(kind)
        return b[i * d : (i + 1) * d].reshape(n, -1)
    b = param(getattr(attn, f"{kind}_proj"), "bias")
    return None if b is None else b.reshape(n, -1)


def nnsight_senders(lm, arch: str, shape: dict) -> torch.Tensor:
    """Every EAP sender's output ``[sender, batch, pos, d_model]`` in the graph's order
    (EMBED, L0H0 …, MLP0, L1H0 …), read inside an nnsight trace in forward order."""
    out = [lm.model.layers[0].input if arch == "llama" else lm.transformer.h[0].input]
    out = [out[0][:, :, None]]
    for layer in range(shape["n_layers"]):
        block, attn, _, _ = _parts(lm, arch, layer)
        proj = attn.o_proj if arch == "llama" else attn.c_proj
        out.append(_head_out(proj.input, _weight(proj), arch, shape["n_heads"]))
        out.append(block.mlp.output[:, :, None])
    # Over several GPUs each layer's senders are on its own device: meet on the first's.
    out = [t.to(out[0].device) for t in out]
    return torch.cat(out, 2).permute(2, 0, 1, 3).detach().float()


def nnsight_eap(lm, arch: str, shape: dict, run: dict, saved: dict) -> dict:
    """EAP scores ``[sender, receiver, pos]`` of one clean run inside an nnsight trace (under
    ``torch.enable_grad``): ``(a_u(corrupted) − a_u(clean)) · ∂M/∂x_r``, with ``∂M/∂x_r`` the
    gradient reaching receiver ``r``'s pre-norm input through its own path only — a head's
    q, k or v projection (a KV head's k/v once for its GQA group) and ``ln1``, the MLP's
    ``ln2``, the final norm — as the bridge's graph takes it. ``saved[("senders",)]`` holds
    the corrupted run's senders; ``run["grad"]["weights"]`` gives ∂M/∂readout at this run's
    readout (:func:`._metric_program.weights`).

    EAP-IG: the clean run (no ``alpha``) keeps the clean senders; each later step (``alpha``:
    interpolated embeddings) adds its receiver gradients to theirs, and the last
    (``steps_left`` 0) turns their mean over ``steps`` into the scores."""
    spec = run["grad"]
    n_layers, h = shape["n_layers"], shape["n_heads"]
    embed = lm.model.embed_tokens if arch == "llama" else lm.transformer.wte
    embed.output = embedding(lm, arch, run, saved).detach().requires_grad_(True)
    step = spec.get("alpha") is not None  # an EAP-IG step: the clean senders are known
    senders, layers = [], []
    for layer in range(n_layers):
        block, attn, ln1, ln2 = _parts(lm, arch, layer)
        resid = block.input
        if layer == 0 and not step:
            senders.append(resid[:, :, None])
        if arch == "llama":
            qkv = [attn.q_proj.output, attn.k_proj.output, attn.v_proj.output]
        else:
            qkv = [attn.c_attn.output]
        if not step:
            proj = attn.o_proj if arch == "llama" else attn.c_proj
            senders.append(_head_out(proj.input, _weight(proj), arch, h))
        mid, mlp_in = ln2.input, block.mlp.input
        if not step:
            senders.append(block.mlp.output[:, :, None])
        layers.append((resid, qkv, mid, mlp_in, attn, ln1))
    norm = lm.model.norm if arch == "llama" else lm.transformer.ln_f
    final_in, final_out = norm.input, norm.output
    final = lm.lm_head.output[:, -1]
    out = readout(final, run["readout"])
    sel = grad_readout(final, run["readout"])
    w = _metric_program.weights(spec["weights"], out, saved)
    loss = (sel * w.to(sel.device)).sum()
    wrt = [t for _, qkv, _, mlp_in, *_ in layers for t in (*qkv, mlp_in)] + [final_out]
    grads = torch.autograd.grad(loss, wrt, retain_graph=True)
    receivers = eap_receivers(layers, grads, (final_in, final_out), arch, shape, spec["eps"])
    # Over several GPUs each layer's receivers and senders are on its own device: they meet
    # on the corrupted senders' (nnsight_senders').
    here = saved[("senders",)].device
    grad = torch.stack([r.to(here) for r in receivers]).float().detach()  # [recv, b, pos, d]
    if not step:
        clean = torch.cat([t.to(here) for t in senders], 2)
        saved[("clean",)] = clean.permute(2, 0, 1, 3).detach().float()
    # EAP-IG: the receiver gradients summed over the steps, kept here until the last one.
    grad = grad if ("grads",) not in saved else saved.pop(("grads",)) + grad
    if spec.get("steps_left", 0):
        saved[("grads",)] = grad
        return out
    diff = saved[("senders",)] - saved[("clean",)]
    mask = run.get("attention_mask")
    if mask is not None:  # padding scores 0 (nothing there reaches a final token)
        diff = diff * mask.to(diff)[None, :, :, None]
    scores = torch.einsum("sbpd,rbpd->srp", diff, grad / spec.get("steps", 1))
    out["scores"] = (scores * spec["valid"].to(scores)[:, :, None]).detach()
    return out


def eap_receivers(layers: list, grads, final: tuple, arch: str, shape: dict, eps: float) -> list:
    """Every receiver's ``∂M/∂x_r`` ``[batch, pos, d_model]`` in the layout's order, from the
    gradients at each layer's q/k/v projections and MLP input and at the final norm's output
    (``grads``, in that order): each through its own path only (see :func:`nnsight_eap`).
    ``layers``: per layer ``(resid, qkv, ln2 input, mlp input, attn, ln1)``; ``final``: the
    final norm's ``(input, output)``."""
    grads = list(grads)
    h, kv = shape["n_heads"], shape["n_kv_heads"]
    receivers = []
    for resid, qkv, mid, mlp_in, attn, ln1 in layers:
        g_qkv = [grads.pop(0) for _ in qkv]
        g_mlp = grads.pop(0)
        if arch == "gpt2":  # one fused projection: q | k | v
            d = g_qkv[0].shape[-1] // 3
            g_qkv = [g_qkv[0][..., i * d : (i + 1) * d] for i in range(3)]
        # Each head's own path only: its rows of the projection, then ln1 (one
        # vector-Jacobian product for all heads, on a copy of the residual per head).
        post = torch.cat(
            [
                torch.einsum("bpnd,ndm->bpnm", _heads(g, n), head_weight(attn, arch, kind, n))
                for g, kind, n in zip(g_qkv, ("q", "k", "v"), (h, kv, kv), strict=True)
            ],
            dim=2,
        )
        x = resid.detach()[:, :, None].expand_as(post).clone().requires_grad_(True)
        (pre,) = torch.autograd.grad(apply_norm(ln1, x, arch, eps), x, post)
        receivers += list(pre.permute(2, 0, 1, 3))
        (pre,) = torch.autograd.grad(mlp_in, mid, g_mlp, retain_graph=True)
        receivers.append(pre)
    final_in, final_out = final
    (pre,) = torch.autograd.grad(final_out, final_in, grads.pop(0), retain_graph=True)
    receivers.append(pre)
    return receivers
