"""SAE splices inside an nnsight trace: the torch code a feature request runs on any backend
that runs nnsight (this process, or NDIF).

Like :mod:`._program` this module imports nothing but torch (and :mod:`._program`), because
for a remote request it is shipped by value with the trace (NDIF does not have circuitviz).

**Where an SAE splices** (the one table; the client maps a bridge hook onto it in
:func:`circuitviz.engine.backends._features.splice_site`). A splice reads at one *point* of a
decoder layer and writes at one (the same, for an SAE), both nnsight module boundaries of an
HF Llama-style or GPT-2 layer, listed in forward order in :data:`POINTS`:

============== ============================================ ===============================
point          the module tensor (Llama / GPT-2)            bridge hook(s)
============== ============================================ ===============================
``resid_pre``  ``layers[L].input`` / ``h[L].input``         ``blocks.L.hook_resid_pre``
``attn_out``   ``self_attn.output[0]`` / ``attn.output[0]`` ``blocks.L.hook_attn_out``
``resid_mid``  ``post_attention_layernorm.input`` /         ``blocks.L.hook_resid_mid``,
               ``ln_2.input``                               ``blocks.L.ln2.hook_in``
``mlp_in``     ``mlp.input`` (the norm's output)            ``blocks.L.mlp.hook_in``,
                                                            ``blocks.L.ln2.hook_out``
``mlp_out``    ``mlp.output``                               ``blocks.L.hook_mlp_out``
``resid_post`` ``layers[L].output`` / ``h[L].output``       ``blocks.L.hook_resid_post``
============== ============================================ ===============================

``resid_mid`` has no module of its own: the layer computes ``residual = resid_pre +
attn_out`` and hands that one tensor to the norm *and* keeps it for the skip connection, so
an in-place splice of the norm's input reaches both — what the bridge's splice does by
re-routing the skip (``features._splice.site_hooks``). A *transcoder* (keyed
``("transcoder", L)``) reads its latents at ``resid_mid`` or ``mlp_in`` and writes at
``mlp_out``: ``decode(f') + (MLP output − decode(f))``, as the bridge's.

A splice may keep its input for later runs (``save``; a transcoder's output too), bring it
back (``back``), and set latents and error terms there. Setting latents ``e`` of
``f = encode(x)`` to ``f'`` replaces ``y`` (``x`` for an SAE) by ``decode(f') + (y -
decode(f))``, which is ``y + (f'_e - f_e) @ W_dec[e]``: only the edited latents' decoder
rows are needed, and only the encoder columns that decide them — the edited ones for ReLU and
JumpReLU SAEs, every column for TopK (whether a latent is among the top k depends on all of
them). Setting an error term needs the whole reconstruction ``decode(f)``, so the whole SAE
travels for it (``sae["full"]``). :func:`circuitviz.engine.backends._features.sae_payload`
builds the payload on the client.
"""

from __future__ import annotations

import torch

from . import _program

#: The points an SAE reads or writes in a decoder layer, in forward order (see the table).
POINTS = ("resid_pre", "attn_out", "resid_mid", "mlp_in", "mlp_out", "resid_post")


def latents(sae: dict, x: torch.Tensor) -> torch.Tensor:
    """The sent latents' activations ``[..., n]`` of activations ``x`` (every latent for a
    full payload), as the SAE's ``encode`` gives them (SAELens's conventions)."""
    dtype = getattr(torch, sae["dtype"])  # the SAE's own (weights may travel as float16)
    w = sae["W_enc"].to(x.device, dtype)
    x = x.to(dtype)
    if sae["b_dec_in"] is not None:
        x = x - sae["b_dec_in"].to(x.device, dtype)
    pre = x @ w + sae["b_enc"].to(x.device, dtype)
    if sae["activation"] == "topk":  # every latent was sent: pick the edited ones after
        top = pre.topk(sae["k"], dim=-1)
        f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
        return f if sae["pick"] is None else f[..., sae["pick"].to(x.device)]
    if sae["activation"] == "jumprelu":
        return pre * (pre > sae["threshold"].to(x.device, dtype))
    return torch.relu(pre)


def decode(sae: dict, f: torch.Tensor) -> torch.Tensor:
    """``f @ W_dec + b_dec`` of a full payload (the SAE's ``decode``)."""
    dtype = getattr(torch, sae["dtype"])
    w = sae["W_dec"].to(f.device, dtype)
    return f.to(dtype) @ w + sae["b_dec"].to(f.device, dtype)


def error_term(sae: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """What the SAE does not reconstruct: ``y - decode(encode(x))`` (``y`` is ``x`` for an
    SAE, the MLP output for a transcoder), in ``y``'s dtype as the bridge's splice has it."""
    return y - decode(sae, latents(sae, x)).to(y.dtype)


def replace_error(error: torch.Tensor, value, pos) -> torch.Tensor:
    """``error [batch, pos, d]`` with position ``pos`` (None: all) taken from ``value`` (a
    number or ``[1 or batch, pos, d]``): ``features._splice.replace_error``'s rule."""
    if not isinstance(value, torch.Tensor):
        value = torch.full((1, 1, 1), float(value), dtype=error.dtype, device=error.device)
    value = value.to(error.device, error.dtype).expand_as(error)
    if pos is None:
        return value.clone()
    out = error.clone()
    out[:, pos] = value[:, pos]
    return out


def _kept(saved: dict, run: int, key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
    """Run ``run``'s kept input and output (the same tensor for an SAE) at one splice."""
    x = saved[(run, "splice", *key)]
    return x, saved.get((run, "splice_out", *key), x)


def _mean(value: torch.Tensor, src: tuple) -> torch.Tensor:
    """The batch mean of ``value [batch, pos, ...]``, or with ``src[3]`` (weights ``[batch,
    pos]``, mixed lengths) each position's over the prompts that have a token there."""
    if len(src) > 3 and src[3] is not None:
        w = src[3].to(value.device, value.dtype)
        return (value * w.reshape(*w.shape, *([1] * (value.ndim - 2)))).sum(0, keepdim=True)
    return value.mean(0, keepdim=True)


def _value(src: tuple, sae: dict, saved: dict, key: tuple, column: int | None):
    """What an edit sets its latent (``column``; None: the error term) to: ``("const", v)``,
    ``("tensor", [batch|1, pos])``, or ``("run", i, "mean" | "rows")`` — the latent (error
    term) on run ``i``'s kept activation here; ``("run", i, "mean", weights [batch, pos])``:
    mixed lengths, each position's mean over the prompts that have a token there; ``("run",
    i, "max", scale)``: ``scale`` × the latent's maximum over run ``i``'s prompt (a steer's
    clamp, its unedited side in the same request)."""
    if src[0] in ("const", "tensor"):
        return src[1]
    x, y = _kept(saved, src[1], key)
    if src[2] == "max":  # ("run", i, "max", scale): scale × the latent's maximum on run i
        memo = ("max", src[1], *key, column)  # once per request, not once per generated token
        if memo not in saved:
            saved[memo] = latents(sae, x)[..., column].amax() * src[3]
        return saved[memo]
    if column is None:
        value = error_term(sae, x, y)  # [batch, pos, d]
    else:
        value = latents(sae, x)[..., column]  # [batch, pos]
    return _mean(value, src) if src[2] == "mean" else value


def read(x: torch.Tensor, spec: dict, key: tuple, index: int, saved, back, step: int) -> None:
    """A splice's read point: keep / bring back its input ``x``, and encode the latents its
    edits need (for the write point: the same one for an SAE, ``mlp_out`` for a
    transcoder)."""
    if spec.get("save") and step == 0:  # a generation keeps its prompt's pass
        saved[(index, "splice", *key)] = x.detach().clone()
    if spec.get("back") and step == 0:
        back[("splice", *key)] = x.detach().float().clone()
    if spec.get("edits"):
        saved[(index, "encoded", *key)] = latents(spec["sae"], x)


def splice(y: torch.Tensor, spec: dict, key: tuple, index: int, saved, back, step: int):
    """A splice's write point: apply run ``index``'s edits to ``y`` ``[batch, pos, d]`` in
    place (the latents were encoded at its read point).

    ``step`` counts generation passes: past the first (the prompt) a pass holds one new
    position, where an edit at a prompt position does not act (as the bridge's loop)."""
    transcoder = spec["read"] != spec["write"]
    if spec.get("save") and step == 0 and transcoder:  # keep its MLP output too
        saved[(index, "splice_out", *key)] = y.detach().clone()
    edits = spec.get("edits") or []
    if not edits:
        return
    sae = spec["sae"]
    f = saved.pop((index, "encoded", *key))
    new, errors = f.clone(), []
    for column, pos, src in edits:
        if pos is not None and step > 0:
            continue
        value = _value(src, sae, saved, key, column)
        if column is None:
            errors.append((pos, value))
            continue
        if isinstance(value, torch.Tensor):
            value = value.to(new.device, new.dtype)
            if pos is not None and value.ndim == 2:
                value = value[:, pos]
        if pos is None:
            new[:, :, column] = value
        else:
            new[:, pos, column] = value
    if not sae.get("full"):
        y += ((new - f) @ sae["W_dec"].to(y.device, new.dtype)).to(y.dtype)
        return
    # An error term edited: the reconstruction and the error, as the bridge's splice.
    error = y - decode(sae, f).to(y.dtype)
    for pos, value in errors:
        error = replace_error(error, value, pos)
    y[...] = decode(sae, new).to(y.dtype) + error


def _block(lm, arch: str, layer: int):
    return lm.model.layers[layer] if arch == "llama" else lm.transformer.h[layer]


def point_tensor(lm, arch: str, layer: int, point: str) -> torch.Tensor:
    """The module tensor at ``point`` of ``layer`` (see the table), inside an nnsight trace;
    writes into it in place reach the rest of the forward pass."""
    block = _block(lm, arch, layer)
    if point == "resid_pre":
        out = block.input
    elif point == "attn_out":
        out = (block.self_attn if arch == "llama" else block.attn).output[0]
    elif point == "resid_mid":
        out = (block.post_attention_layernorm if arch == "llama" else block.ln_2).input
    elif point == "mlp_in":
        out = block.mlp.input
    elif point == "mlp_out":
        out = block.mlp.output
    else:
        out = block.output
    return out[0] if isinstance(out, tuple) else out


def at_point(lm, arch: str, layer: int, point: str, run: dict, index: int, saved, back, step=0):
    """Every splice of ``run`` that reads or writes at ``point`` of ``layer``, inside an
    nnsight trace (called in forward order: :data:`POINTS`). SAEs there come before a
    transcoder's read or write, as the bridge's hooks run (the SAE set's order)."""
    here = [
        (key, spec)
        for key, spec in run["splices"].items()
        if key[1] == layer and point in (spec["read"], spec["write"])
    ]
    if not here:
        return
    x = point_tensor(lm, arch, layer, point)
    for key, spec in sorted(here, key=lambda item: item[0][0] == "transcoder"):
        if spec["read"] == point:
            read(x, spec, key, index, saved, back, step)
        if spec["write"] == point:
            splice(x, spec, key, index, saved, back, step)


def layer_splices(lm, arch: str, layer: int, run: dict, index: int, saved, back, step=0):
    """``at(point)`` for :func:`._program.nnsight_layer`: the run's splices of ``layer``;
    None when it has none there."""
    if not any(key[1] == layer for key in run["splices"]):
        return None

    def at(point: str) -> None:
        at_point(lm, arch, layer, point, run, index, saved, back, step)

    return at


def nnsight_generate(lm, arch: str, shape: dict, gen, run: dict, index: int, saved, back):
    """Greedy generation inside ``lm.generate(...)``: every pass (the prompt's, then one per
    new token, with the KV cache) splices the SAEs. ``back["generated"]`` gets the first
    pass's final-position logits (``"first"``) and each pass's greedy token (``"ids"``, 0-d
    tensors) as they come: a generation that stops early (end of sequence) unwinds the loop
    (nnsight's open step is left parked), and what it filled in stays."""
    out = back["generated"] = {"ids": []}
    layers = sorted({key[1] for key in run["splices"]})
    for step in gen.iter[: run["generate"]["options"]["max_new_tokens"]]:
        for layer in layers:
            for point in POINTS:
                at_point(lm, arch, layer, point, run, index, saved, back, step)
        logits = lm.lm_head.output[:, -1]
        if step == 0:
            out["first"] = logits.detach()
        out["ids"].append(logits[0].argmax().detach().cpu())


def chips(spec: dict, saved: dict) -> tuple[torch.Tensor, dict]:
    """The latents a FeatureView's chips show, decided here from run 0's kept activations:
    for each ``(key, sae, top)`` of ``spec["chips"]`` (a full payload), the latents among
    the ``top`` most active at some position with a positive value — the rule of
    :func:`circuitviz.engine.features._explorer.chip_latents`, here because the client has
    not seen the activations yet. Their decoder rows ``[n, d_model]``, and ``chip_index`` /
    ``chip_count`` (which latents, how many per SAE) to send back."""
    dirs, index, count = [], [], []
    for key, sae, top in spec["chips"]:
        f = latents(sae, saved[(0, "splice", *key)][0])  # [pos, d_sae]
        best = f.topk(min(top, f.shape[-1]), dim=-1)
        shown = torch.unique(best.indices[best.values > 0])  # sorted
        w = sae["W_dec"]
        dirs.append(w[shown.to(w.device)].float())
        index.append(shown.cpu())
        count.append(len(shown))
    found = {"chip_index": torch.cat(index), "chip_count": torch.tensor(count)}
    return torch.cat(dirs), found


def unembed(lm, arch: str, spec: dict, saved: dict | None = None) -> dict:
    """The logit effects of residual directions ``spec["dirs"]`` ``[n, d_model]`` read off the
    model's weights (no forward pass): ``(c(d) ⊙ w) @ W_U`` — ``w`` the final norm's weight,
    ``c`` centring for GPT-2's LayerNorm — and only each row's ``k`` largest and smallest
    come back (``[n, k]`` ids and values), not ``[n, d_vocab]``. With ``spec["chips"]``
    the directions are the chips' decoder rows (:func:`chips`), named in what comes back."""
    found: dict = {}
    if "chips" in spec:  # a FeatureView's first request: its chips' rows, picked here
        directions, found = chips(spec, saved or {})
    else:
        directions = spec["dirs"]
    norm = lm.model.norm if arch == "llama" else lm.transformer.ln_f
    # Offloaded (device_map with CPU or disk) weights are read from their offload store.
    W_U = _program.param(lm.lm_head)
    d = directions.to(W_U.device, torch.float32)
    if arch == "gpt2":
        d = d - d.mean(dim=-1, keepdim=True)
    weight = _program.param(norm).detach().float().to(W_U.device)
    effect = (d * weight) @ W_U.detach().float().T
    up, down = effect.topk(spec["k"], dim=-1), (-effect).topk(spec["k"], dim=-1)
    return {
        "up_i": up.indices,
        "up_v": up.values,
        "down_i": down.indices,
        "down_v": -down.values,
        **found,
    }
