"""Feature graphs inside an nnsight trace: the torch code of ``circuit(..., saes=...)`` and of
``FeatureGraph.faithfulness`` on any backend that runs nnsight (this process, or NDIF).

Like :mod:`._program` this module imports nothing but torch (and :mod:`._program`): for a
remote request it is shipped by value with the trace.

Every SAE is spliced whole at its site, as the bridge's ``features._splice`` does:
``x → decode(f') + err`` with ``f = encode(x)``, ``err = x − decode(f)`` and ``f'`` the
latents after any override (faithfulness: latents outside the circuit take the reference's).
The SAE travels as ``{"activation", "k", "W_enc", "b_enc", "W_dec", "b_dec", "threshold",
"b_dec_in"}`` (float16 where that is exact; computed in float32, as the bridge's copies).

Where each site sits in a layer is the table :data:`SPLICE_POINTS` (the module and whether
its input or output is spliced) and the order the passes visit them (:data:`BEFORE_HEADS`,
:data:`AFTER_MLP`); more sites drop in there.
"""

from __future__ import annotations

import torch

from . import _program

#: site -> (which module of the layer, "input" or "output"): where its activation is read and
#: its splice written back.
SPLICE_POINTS = {"resid_pre": ("block", "input"), "resid_post": ("block", "output")}
#: The sites each pass visits before a layer's attention, and after its MLP, in that order.
BEFORE_HEADS = ("resid_pre",)
AFTER_MLP = ("resid_post",)


#: The request kinds this module carries out (see :func:`carry_out`).
KINDS = ("feature_senders", "feature_eap", "feature_circuit")


def carry_out(lm, arch: str, shape: dict, run: dict, saved: dict, back: dict) -> dict:
    """Run ``run`` (one of :data:`KINDS`) inside its trace; returns its readout."""
    kind = run["grad"]["kind"]
    if kind == "feature_senders":
        return feature_senders(lm, arch, shape, run, saved, back)
    if kind == "feature_eap":
        return feature_eap(lm, arch, shape, run, saved, back)
    return feature_circuit(lm, arch, shape, run, saved)


def _f32(t):
    return None if t is None else t.float()


def encode(sae: dict, x: torch.Tensor) -> torch.Tensor:
    """Every latent ``[..., d_sae]`` of ``x``, as ``SAE.encode`` (SAELens's conventions)."""
    w = _f32(sae["W_enc"]).to(x.device)
    x = x.float()
    if sae["b_dec_in"] is not None:
        x = x - _f32(sae["b_dec_in"]).to(x.device)
    pre = x @ w + _f32(sae["b_enc"]).to(x.device)
    if sae["activation"] == "topk":
        top = pre.topk(sae["k"], dim=-1)
        return torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
    if sae["activation"] == "jumprelu":
        return pre * (pre > _f32(sae["threshold"]).to(x.device))
    return torch.relu(pre)


def decode(sae: dict, f: torch.Tensor) -> torch.Tensor:
    return f.float() @ _f32(sae["W_dec"]).to(f.device) + _f32(sae["b_dec"]).to(f.device)


def splice(sae: dict, x: torch.Tensor, override=None):
    """``(decode(f') + err, f, err)``: the spliced activation, the latents and the error term
    (before ``override(f, err) -> (f', err')``)."""
    f = encode(sae, x)
    x_hat = decode(sae, f).to(x.dtype)
    err = x - x_hat
    out_f, out_err = (f, err) if override is None else override(f, err)
    if override is not None:
        x_hat = decode(sae, out_f).to(x.dtype)
    return x_hat + out_err, f, err


def _module(lm, arch: str, layer: int, which: str):
    """The module of ``layer`` that :data:`SPLICE_POINTS` names."""
    block, attn, _, _ = _program._parts(lm, arch, layer)
    return {"block": block, "attn": attn, "mlp": block.mlp}[which]


def at_site(lm, arch: str, layer: int, site: str, sites: dict, visit, value=None):
    """If ``sites`` splices ``site`` of ``layer``: read its activation (in forward order;
    ``value`` if the pass has read it already), let ``visit(key, sae, x) -> new`` splice it,
    and write ``new`` back into the pass. Returns ``new`` (None where no SAE sits)."""
    key = (site, layer)
    sae = sites.get(key)
    if sae is None:
        return None
    which, end = SPLICE_POINTS[site]
    module = _module(lm, arch, layer, which)
    value = getattr(module, end) if value is None else value
    x = value[0] if isinstance(value, tuple) else value
    new = visit(key, sae, x)
    setattr(module, end, (new, *value[1:]) if isinstance(value, tuple) else new)
    return new


def _read(site: str, resid):
    """What a pass that has read the block's input already hands :func:`at_site`."""
    return resid if SPLICE_POINTS[site] == ("block", "input") else None


def _record(store: dict, back: dict | None):
    """A ``visit`` that splices and keeps each site's latents and error term in ``store``
    (and ``back``, brought to the client)."""

    def visit(key, sae, x):
        new, f, err = splice(sae, x)
        store[key] = (f.detach(), err.detach().float())
        if back is not None:
            back[("latents", *key)] = f.detach().float()
            back[("errors", *key)] = err.detach().float()
        return new

    return visit


# ----------------------------------------------------------------------------- EAP


def feature_senders(lm, arch: str, shape: dict, run: dict, saved: dict, back: dict) -> dict:
    """The corrupted run of a feature graph: every SAE spliced (its latents and error terms
    brought back), every sender's output kept (``saved[("senders",)]``, as
    :func:`._program.nnsight_senders`; EMBED before any splice at ``resid_pre`` 0, as the
    bridge's hooks order them) and, for EAP-IG, the embeddings."""
    spec = run["grad"]
    sites = spec["sites"]
    if spec.get("embed"):
        saved[("embed",)] = _program.embedding(lm, arch, run, saved).detach().clone()
    visit = _record({}, back)
    out = []
    for layer in range(shape["n_layers"]):
        block, attn, _, _ = _program._parts(lm, arch, layer)
        resid = block.input
        if layer == 0:  # EMBED: before a splice there
            out.append(resid[:, :, None])
        for site in BEFORE_HEADS:
            at_site(lm, arch, layer, site, sites, visit, _read(site, resid))
        proj = attn.o_proj if arch == "llama" else attn.c_proj
        out.append(_program._head_out(proj.input, _program._weight(proj), arch, shape["n_heads"]))
        out.append(block.mlp.output[:, :, None])
        for site in AFTER_MLP:
            at_site(lm, arch, layer, site, sites, visit)
    out = [t.to(out[0].device) for t in out]
    saved[("senders",)] = torch.cat(out, 2).permute(2, 0, 1, 3).detach().float()
    return _program.readout(lm.lm_head.output[:, -1], run["readout"])


def feature_eap(lm, arch: str, shape: dict, run: dict, saved: dict, back: dict) -> dict:
    """One gradient run of a feature graph (under ``torch.enable_grad``): the clean run (no
    ``alpha``; its latents, error terms and senders kept) or an EAP-IG step, with every SAE
    spliced. Besides :func:`._program.nnsight_eap`'s receiver gradients it takes, per site,
    ``∂M/∂out`` (the gradient at the spliced output) and ``∂M/∂pre = 1[f active] · ∂M/∂out ·
    W_decᵀ`` with this pass's own active latents — both summed over the steps on the server.
    The last step (``steps_left`` 0) brings back the senders' corrupted − clean outputs, the
    summed receiver gradients and each site's sums; the client divides by ``steps`` and
    scores the edges with the bridge's code (``graph._feature_eap.feature_scores``)."""
    spec = run["grad"]
    sites = spec["sites"]
    n_layers, h = shape["n_layers"], shape["n_heads"]
    embed = lm.model.embed_tokens if arch == "llama" else lm.transformer.wte
    embed.output = _program.embedding(lm, arch, run, saved).detach().requires_grad_(True)
    step = spec.get("alpha") is not None
    here: dict = {}
    spliced: dict = {}
    record = _record(here, None if step else back)

    def visit(key, sae, x):
        new = record(key, sae, x)
        spliced[key] = new
        return new

    senders, layers = [], []
    for layer in range(n_layers):
        block, attn, ln1, ln2 = _program._parts(lm, arch, layer)
        resid = block.input
        if layer == 0 and not step:
            senders.append(resid[:, :, None])
        for site in BEFORE_HEADS:
            new = at_site(lm, arch, layer, site, sites, visit, _read(site, resid))
            resid = resid if new is None else new
        qkv = (
            [attn.q_proj.output, attn.k_proj.output, attn.v_proj.output]
            if arch == "llama"
            else [attn.c_attn.output]
        )
        if not step:
            proj = attn.o_proj if arch == "llama" else attn.c_proj
            senders.append(_program._head_out(proj.input, _program._weight(proj), arch, h))
        mid, mlp_in = ln2.input, block.mlp.input
        if not step:
            senders.append(block.mlp.output[:, :, None])
        for site in AFTER_MLP:
            at_site(lm, arch, layer, site, sites, visit)
        layers.append((resid, qkv, mid, mlp_in, attn, ln1))
    norm = lm.model.norm if arch == "llama" else lm.transformer.ln_f
    final_in, final_out = norm.input, norm.output
    final = lm.lm_head.output[:, -1]
    out = _program.readout(final, run["readout"])
    sel = _program.grad_readout(final, run["readout"])
    loss = (sel * spec["weights"].to(sel.device)).sum()
    keys = list(spliced)
    wrt = [t for _, qkv, _, mlp_in, *_ in layers for t in (*qkv, mlp_in)] + [final_out]
    grads = list(torch.autograd.grad(loss, wrt + [spliced[k] for k in keys], retain_graph=True))
    site_grads = dict(zip(keys, grads[len(wrt) :], strict=True))
    receivers = _program.eap_receivers(
        layers, grads[: len(wrt)], (final_in, final_out), arch, shape, spec["eps"]
    )
    where = saved[("senders",)].device
    grad = torch.stack([r.to(where) for r in receivers]).float().detach()
    if not step:
        clean = torch.cat([t.to(where) for t in senders], 2)
        saved[("clean",)] = clean.permute(2, 0, 1, 3).detach().float()
    grad = grad if ("grads",) not in saved else saved.pop(("grads",)) + grad
    for key in keys:
        g_out = site_grads[key].detach().float()
        active = (here[key][0] != 0).float()
        g_pre = active * (g_out @ _f32(sites[key]["W_dec"]).to(g_out.device).T)
        for name, value in (("g_out", g_out), ("g_pre", g_pre)):
            old = saved.pop((name, *key), None)
            saved[(name, *key)] = value if old is None else old + value
    if spec.get("steps_left", 0):
        saved[("grads",)] = grad
        return out
    out["diff"] = (saved[("senders",)] - saved[("clean",)]).detach()
    out["grads"] = grad
    for key in keys:
        out[("g_out", *key)] = saved[("g_out", *key)]
        out[("g_pre", *key)] = saved[("g_pre", *key)]
    return out


# ----------------------------------------------------------------------------- circuits


def _where(keep: torch.Tensor, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return torch.where(keep.to(x.device), x, ref.to(x.device, x.dtype))


def feature_circuit(lm, arch: str, shape: dict, run: dict, saved: dict) -> dict:
    """One pass of ``FeatureGraph.faithfulness`` with every SAE spliced: a reference run
    (``keep``: its heads' ``z``, MLP outputs, latents and error terms kept under that name,
    ``"mean"`` also as their batch mean) or a circuit run, where every head, MLP, latent and
    error term outside the circuit (``masks``, True = kept) takes the reference ``ref``'s
    value — the rule of the bridge's ``graph._feature_faith``, there as hooks."""
    spec = run["grad"]
    sites, h = spec["sites"], shape["n_heads"]
    keep, masks = spec.get("keep"), spec.get("masks")
    ref = None if masks is None else spec["ref"]

    def get(*name):
        return saved[(ref, *name)]

    def put(value, *name):
        saved[(keep, *name)] = value.detach().clone()

    def visit(key, sae, x):
        override = None
        if masks is not None:
            feats, err_keep = masks["sites"][key]
            ref_f, ref_e = get("f", *key), get("err", *key)

            def override(f, err):
                f = _where(feats[None], f, ref_f)
                return f, _where(err_keep[None, :, None], err, ref_e)

        new, f, err = splice(sae, x, override)
        if keep is not None:
            put(f, "f", *key)
            put(err, "err", *key)
        return new

    for layer in range(shape["n_layers"]):
        block, attn, _, _ = _program._parts(lm, arch, layer)
        for site in BEFORE_HEADS:
            at_site(lm, arch, layer, site, sites, visit)
        proj = attn.o_proj if arch == "llama" else attn.c_proj
        z = _program._heads(proj.input, h)
        if keep is not None:
            put(z, "z", layer)
        if masks is not None and layer in masks["heads"]:
            z[...] = _where(masks["heads"][layer][None, :, :, None], z, get("z", layer))
        if keep is not None or (masks is not None and layer in masks["mlp"]):
            mlp = block.mlp.output
            if keep is not None:
                put(mlp, "mlp", layer)
            if masks is not None and layer in masks["mlp"]:
                mlp[...] = _where(masks["mlp"][layer][None, :, None], mlp, get("mlp", layer))
        for site in AFTER_MLP:
            at_site(lm, arch, layer, site, sites, visit)
    if keep is not None and spec.get("mean"):
        for name in [k for k in saved if k[0] == keep]:
            saved[("mean", *name[1:])] = saved[name].mean(0, keepdim=True)
    return _program.readout(lm.lm_head.output[:, -1], run["readout"])
