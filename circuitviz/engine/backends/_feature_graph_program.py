"""Feature graphs inside an nnsight trace: the torch code of ``circuit(..., saes=...)`` and of
``FeatureGraph.faithfulness`` on any backend that runs nnsight (this process, or NDIF).

Like :mod:`._program` this module imports nothing but torch (and :mod:`._program`): for a
remote request it is shipped by value with the trace.

Every SAE is spliced whole at its site, as the bridge's ``features._splice`` does:
``x → decode(f') + err`` with ``f = encode(x)``, ``err = x − decode(f)`` and ``f'`` the
latents after any override (faithfulness: latents outside the circuit take the reference's).
The SAE travels as ``{"activation", "k", "W_enc", "b_enc", "W_dec", "b_dec", "threshold",
"b_dec_in"}`` (float16 where that is exact; computed in float32, as the bridge's copies).

Where each splice point sits in a layer is :data:`POINT_MODULES`; every pass visits the
points in forward order (:func:`at_point`). An SAE reads and writes at one point, a
transcoder (key ``("transcoder", L)``) reads at ``resid_mid`` or ``mlp_in`` and writes at
``mlp_out`` (``decode(f') + (MLP output − decode(f))``).
"""

from __future__ import annotations

import torch

from . import _program

#: point -> (which module of the layer, "input" or "output"): where a splice reads and writes
#: (``_feature_program``'s table; the points in forward order).
POINT_MODULES = {
    "resid_pre": ("block", "input"),
    "attn_out": ("attn", "output"),
    "resid_mid": ("ln2", "input"),
    "mlp_in": ("mlp", "input"),
    "mlp_out": ("mlp", "output"),
    "resid_post": ("block", "output"),
}


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


def splice(sae: dict, x: torch.Tensor, y: torch.Tensor, override=None):
    """``(decode(f') + err', f, err)``: the spliced value of ``y`` (``x`` for an SAE, the MLP
    output for a transcoder), the latents ``f = encode(x)`` and the error term ``err = y −
    decode(f)`` (before ``override(f, err) -> (f', err')``)."""
    f = encode(sae, x)
    x_hat = decode(sae, f).to(y.dtype)
    err = y - x_hat
    out_f, out_err = (f, err) if override is None else override(f, err)
    if override is not None:
        x_hat = decode(sae, out_f).to(y.dtype)
    return x_hat + out_err, f, err


def _module(lm, arch: str, layer: int, which: str):
    """The module of ``layer`` that :data:`POINT_MODULES` names."""
    block, attn, _, ln2 = _program._parts(lm, arch, layer)
    return {"block": block, "attn": attn, "ln2": ln2, "mlp": block.mlp}[which]


def at_point(lm, arch: str, layer: int, point: str, sites: dict, visit, value=None, wrote=None):
    """Every site of ``layer`` that reads or writes at ``point`` (SAEs before a transcoder,
    as the bridge's hooks run): read the point's tensor (``value`` if the pass has read it
    already), let ``visit(key, sae, x, y) -> new`` splice each writer (``x`` what it read,
    ``y`` the value it replaces) and write ``new`` back into the pass. Returns the point's
    tensor after (``wrote[key]``: the written one, whose gradient is ``∂M/∂out``).

    ``resid_mid`` has no module of its own: the norm's input is also the skip connection's,
    so its splice is written in place and reaches both (the bridge re-routes the skip)."""
    here = [(k, s) for k, s in sites.items() if k[1] == layer and point in (s["read"], s["write"])]
    which, end = POINT_MODULES[point]
    if not here:
        return value
    module = _module(lm, arch, layer, which)
    raw = getattr(module, end) if value is None else value
    x = raw[0] if isinstance(raw, tuple) else raw
    new = x
    for key, sae in sorted(here, key=lambda item: item[0][0] == "transcoder"):
        if sae["read"] == point:
            sae["_x"] = new  # the read value, for its write point (this pass only)
        if sae["write"] == point:
            new = visit(key, sae, sae.pop("_x"), new)
            if point == "resid_mid":
                x[...] = new
                new = x
            else:
                setattr(module, end, (new, *raw[1:]) if isinstance(raw, tuple) else new)
            if wrote is not None:
                wrote[key] = new
    return new


def _record(store: dict, back: dict | None, override_of=None):
    """A ``visit`` that splices and keeps each site's latents and error term in ``store``
    (and ``back``, brought to the client); ``override_of(key)`` edits them."""

    def visit(key, sae, x, y):
        override = None if override_of is None else override_of(key)
        new, f, err = splice(sae, x, y, override)
        store[key] = (f.detach(), err.detach().float())
        if back is not None:
            back[("latents", *key)] = f.detach().float()
            back[("errors", *key)] = err.detach().float()
        return new

    return visit


def _real(f: torch.Tensor, run: dict) -> torch.Tensor:
    """Latents ``[batch, pos, d_sae]`` with padding (left-padded mixed lengths) set to 0: a pad
    token's latents are not the prompt's (no node, no edge; ``SpliceSites._real``)."""
    mask = run.get("attention_mask")
    return f if mask is None else f * mask.to(f.device, f.dtype)[:, :, None]


def _run_sites(sites: dict) -> dict:
    """This pass's own copies of the site payloads (:func:`at_point` notes reads on them)."""
    return {key: dict(sae) for key, sae in sites.items()}


# ----------------------------------------------------------------------------- EAP


def feature_senders(lm, arch: str, shape: dict, run: dict, saved: dict, back: dict) -> dict:
    """The corrupted run of a feature graph: every SAE spliced (its latents and error terms
    brought back), every sender's output kept (``saved[("senders",)]``, as
    :func:`._program.nnsight_senders`; EMBED before any splice at ``resid_pre`` 0, as the
    bridge's hooks order them; an MLP's output before its site's) and, for EAP-IG, the
    embeddings."""
    spec = run["grad"]
    sites = _run_sites(spec["sites"])
    if spec.get("embed"):
        saved[("embed",)] = _program.embedding(lm, arch, run, saved).detach().clone()
    store: dict = {}
    visit = _record(store, back)
    out = []
    for layer in range(shape["n_layers"]):
        block, attn, _, _ = _program._parts(lm, arch, layer)
        resid = block.input
        if layer == 0:  # EMBED: before a splice there
            out.append(resid[:, :, None])
        at_point(lm, arch, layer, "resid_pre", sites, visit, resid)
        proj = attn.o_proj if arch == "llama" else attn.c_proj
        out.append(_program._head_out(proj.input, _program._weight(proj), arch, shape["n_heads"]))
        for point in ("attn_out", "resid_mid", "mlp_in"):
            at_point(lm, arch, layer, point, sites, visit)
        mlp = block.mlp.output
        out.append(mlp[:, :, None])
        at_point(lm, arch, layer, "mlp_out", sites, visit, mlp)
        at_point(lm, arch, layer, "resid_post", sites, visit)
    for key, (f, _) in store.items():  # the corrupted latents: which are nodes (post-norm TC)
        saved[("latents_x", *key)] = _real(f, run)
    out = [t.to(out[0].device) for t in out]
    saved[("senders",)] = torch.cat(out, 2).permute(2, 0, 1, 3).detach().float()
    return _program.readout(lm.lm_head.output[:, -1], run["readout"])


def _through_ln2(sae: dict, g_pre, mid, active, ln2, arch: str, eps: float) -> torch.Tensor:
    """A transcoder that reads ln2's output: per position, each node latent's input gradient
    ``g_pre · W_enc[:, i]`` mapped back through ln2 at this pass's residual ``mid`` (a
    vector-Jacobian product, as ``SpliceSites._through_ln2``); ``[Σ_p F_p, batch, d]``."""
    w_enc = _f32(sae["W_enc"]).to(g_pre.device)
    out = []
    for p in range(g_pre.shape[1]):
        feats = active[:, p].any(0).nonzero()[:, 0]
        post = g_pre[:, p, feats].T[:, :, None] * w_enc[:, feats].T[:, None]
        x = mid[:, p].detach().float()[None].expand_as(post).clone().requires_grad_(True)
        (pre,) = torch.autograd.grad(_program.apply_norm(ln2, x, arch, eps), x, post)
        out.append(pre.detach().float())
    return torch.cat(out)


def feature_eap(lm, arch: str, shape: dict, run: dict, saved: dict, back: dict) -> dict:
    """One gradient run of a feature graph (under ``torch.enable_grad``): the clean run (no
    ``alpha``; its latents, error terms and senders kept) or an EAP-IG step, with every SAE
    spliced. Besides :func:`._program.nnsight_eap`'s receiver gradients it takes, per site,
    ``∂M/∂out`` (the gradient at the spliced output) and ``∂M/∂pre = 1[f active] · ∂M/∂out ·
    W_decᵀ`` with this pass's own active latents (and for a transcoder reading ln2's output,
    each node latent's receiver gradient before ln2) — all summed over the steps on the
    server. The last step (``steps_left`` 0) brings back the senders' corrupted − clean
    outputs, the summed receiver gradients and each site's sums; the client divides by
    ``steps`` and scores the edges with the bridge's code (``graph._feature_eap``)."""
    spec = run["grad"]
    sites = _run_sites(spec["sites"])
    n_layers, h = shape["n_layers"], shape["n_heads"]
    embed = lm.model.embed_tokens if arch == "llama" else lm.transformer.wte
    embed.output = _program.embedding(lm, arch, run, saved).detach().requires_grad_(True)
    step = spec.get("alpha") is not None
    here: dict = {}
    spliced: dict = {}
    visit = _record(here, None if step else back)
    senders, layers, mids = [], [], {}
    for layer in range(n_layers):
        block, attn, ln1, ln2 = _program._parts(lm, arch, layer)
        resid = block.input
        if layer == 0 and not step:
            senders.append(resid[:, :, None])
        resid = at_point(lm, arch, layer, "resid_pre", sites, visit, resid, spliced)
        qkv = (
            [attn.q_proj.output, attn.k_proj.output, attn.v_proj.output]
            if arch == "llama"
            else [attn.c_attn.output]
        )
        if not step:
            proj = attn.o_proj if arch == "llama" else attn.c_proj
            senders.append(_program._head_out(proj.input, _program._weight(proj), arch, h))
        at_point(lm, arch, layer, "attn_out", sites, visit, None, spliced)
        mid = at_point(lm, arch, layer, "resid_mid", sites, visit, ln2.input, spliced)
        mids[layer] = mid
        mlp_in = at_point(lm, arch, layer, "mlp_in", sites, visit, block.mlp.input, spliced)
        mlp = block.mlp.output
        if not step:
            senders.append(mlp[:, :, None])
        at_point(lm, arch, layer, "mlp_out", sites, visit, mlp, spliced)
        at_point(lm, arch, layer, "resid_post", sites, visit, None, spliced)
        layers.append((resid, qkv, mid, mlp_in, attn, ln1))
    norm = lm.model.norm if arch == "llama" else lm.transformer.ln_f
    final_in, final_out = norm.input, norm.output
    final = lm.lm_head.output[:, -1]
    out = _program.readout(final, run["readout"])
    sel = _program.grad_readout(final, run["readout"])
    w = _program._metric_program.weights(spec["weights"], out, saved)  # ∂M/∂readout
    loss = (sel * w.to(sel.device)).sum()
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
        for key in keys:
            saved[("latents_c", *key)] = _real(here[key][0], run)
    grad = grad if ("grads",) not in saved else saved.pop(("grads",)) + grad
    sums = {}
    for key in keys:
        sae = sites[key]
        g_out = site_grads[key].detach().float()
        active = (_real(here[key][0], run) != 0).float()
        sums["g_out"] = g_out
        sums["g_pre"] = g_pre = active * (g_out @ _f32(sae["W_dec"]).to(g_out.device).T)
        if sae.get("post_norm"):
            nodes = torch.cat([saved[("latents_x", *key)], saved[("latents_c", *key)]]) != 0
            ln2 = _program._parts(lm, arch, key[1])[3]
            sums["g_recv"] = _through_ln2(sae, g_pre, mids[key[1]], nodes, ln2, arch, spec["eps"])
        for name, value in sums.items():
            old = saved.pop((name, *key), None)
            saved[(name, *key)] = value if old is None else old + value
        sums.clear()
    if spec.get("steps_left", 0):
        saved[("grads",)] = grad
        return out
    out["diff"] = (saved[("senders",)] - saved[("clean",)]).detach()
    out["grads"] = grad
    for key in keys:
        for name in ("g_out", "g_pre", "g_recv"):
            if (name, *key) in saved:
                out[(name, *key)] = saved[(name, *key)]
    return out


# ----------------------------------------------------------------------------- circuits


def _where(keep: torch.Tensor, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    return torch.where(keep.to(x.device), x, ref.to(x.device, x.dtype))


def feature_circuit(lm, arch: str, shape: dict, run: dict, saved: dict) -> dict:
    """One pass of ``FeatureGraph.faithfulness`` with every SAE spliced: a reference run
    (``keep``: its heads' ``z``, MLP outputs, latents and error terms kept under that name,
    ``"mean"`` also as their batch mean) or a circuit run, where every head, MLP, latent and
    error term outside the circuit (``masks``, True = kept) takes the reference ``ref``'s
    value — the rule of the bridge's ``graph._feature_faith``, there as hooks (components
    first: an attn_out / mlp_out site reads the patched output)."""
    spec = run["grad"]
    sites, h = _run_sites(spec["sites"]), shape["n_heads"]
    keep, masks = spec.get("keep"), spec.get("masks")
    ref = None if masks is None else spec["ref"]

    def get(*name):
        return saved[(ref, *name)]

    def put(value, *name):
        saved[(keep, *name)] = value.detach().clone()

    def override_of(key):
        if masks is None:
            return None
        feats, err_keep = masks["sites"][key]
        ref_f, ref_e = get("f", *key), get("err", *key)

        def override(f, err):
            f = _where(feats[None], f, ref_f)
            return f, _where(err_keep[None, :, None], err, ref_e)

        return override

    store: dict = {}
    visit = _record(store, None, override_of)
    for layer in range(shape["n_layers"]):
        block, attn, _, _ = _program._parts(lm, arch, layer)
        at_point(lm, arch, layer, "resid_pre", sites, visit)
        proj = attn.o_proj if arch == "llama" else attn.c_proj
        z = _program._heads(proj.input, h)
        if keep is not None:
            put(z, "z", layer)
        if masks is not None and layer in masks["heads"]:
            z[...] = _where(masks["heads"][layer][None, :, :, None], z, get("z", layer))
        for point in ("attn_out", "resid_mid", "mlp_in"):
            at_point(lm, arch, layer, point, sites, visit)
        patch = masks is not None and layer in masks["mlp"]
        mlp = None
        if keep is not None or patch:
            mlp = block.mlp.output
            if keep is not None:
                put(mlp, "mlp", layer)
            if patch:
                mlp[...] = _where(masks["mlp"][layer][None, :, None], mlp, get("mlp", layer))
        at_point(lm, arch, layer, "mlp_out", sites, visit, mlp)
        at_point(lm, arch, layer, "resid_post", sites, visit)
    if keep is not None:
        for key, (f, err) in store.items():
            put(f, "f", *key)
            put(err, "err", *key)
        if spec.get("mean"):
            w = spec.get("weights")  # mixed lengths: over the prompts with a token there
            for name in [k for k in saved if k[0] == keep]:
                value = saved[name]
                if w is None:
                    saved[("mean", *name[1:])] = value.mean(0, keepdim=True)
                else:
                    w_ = w.to(value.device, value.dtype)
                    w_ = w_.reshape(*w_.shape, *([1] * (value.ndim - 2)))
                    saved[("mean", *name[1:])] = (value * w_).sum(0, keepdim=True)
    return _program.readout(lm.lm_head.output[:, -1], run["readout"])
