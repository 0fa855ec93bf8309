"""What one request asks of a model, and the torch code that carries it out on any backend.

A request is a list of *runs*: forward passes over a batch of tokens that may write into
named sites, keep a site's activation for later runs of the same request, bring a site back,
and end with a *readout* of the final-position logits. The functions here are the only code
that touches activations; the bridge calls them from its hooks and nnsight from inside a
trace, so both backends compute the same numbers with the same lines.

This module imports nothing but torch: for a remote (NDIF) request it is shipped by value
with the trace, because the server does not have circuitviz installed.

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
    ``mode`` (an int)."""
    if src[0] == "zero":
        return None
    if src[0] == "tensor":  # sent with the request
        return src[1]
    value = saved[(src[1], *key)]
    if src[2] == "mean":
        return value.mean(0, keepdim=True)
    return value if src[2] == "rows" else value[src[2] : src[2] + 1]


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


def nnsight_layer(lm, arch: str, shape: dict, layer: int, run: dict, index: int, saved, back):
    """Visit, in forward order, the modules of one layer that ``run`` touches, inside an
    nnsight trace. Each module is read once; writes land in place, before it moves on."""
    wanted = run["touched"].get(layer, ())
    if not wanted:
        return
    h, kv = shape["n_heads"], shape["n_kv_heads"]
    block = lm.model.layers[layer] if arch == "llama" else lm.transformer.h[layer]
    attn = block.self_attn if arch == "llama" else block.attn

    def visit(site, act):
        if site in wanted:
            touch(act, site, layer, run, index, saved, back)

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
    if "mlp_out" in wanted:
        visit("mlp_out", block.mlp.output)
