"""The toolkit analyses' server-side code: the logit lens, direct logit attribution and path
patching, reduced inside an nnsight trace so only the result's numbers come back.

Like :mod:`._program` this imports nothing but torch and :mod:`._program` (both are shipped
by value to NDIF), reads modules in forward order, and never calls a module (that would fire nnsight's hooks again):
norms and projections are computed from the modules' weights, as HF computes them.

The pure reductions here (:func:`final_scale`, :func:`direct_terms`) are also what the
bridge's own implementations call, so both backends share them line for line.
"""

from __future__ import annotations

import torch

from . import _program

#: The run kinds (``Run.grad["kind"]``) this module carries out.
KINDS = ("lens", "dla", "path", "copy", "resid_at", "roles")


# ----------------------------------------------------------------------------- modules


def _block(lm, arch: str, layer: int):
    return lm.model.layers[layer] if arch == "llama" else lm.transformer.h[layer]


def _final_norm(lm, arch: str):
    return lm.model.norm if arch == "llama" else lm.transformer.ln_f


def _ln1(lm, arch: str, layer: int):
    block = _block(lm, arch, layer)
    return block.input_layernorm if arch == "llama" else block.ln_1


#: a parameter, from accelerate's offload store when offloaded (shipped with this module)
param = _program.param


def _heads(x: torch.Tensor, n: int) -> torch.Tensor:
    return x.view(*x.shape[:-1], n, x.shape[-1] // n)


def norm(x: torch.Tensor, module, arch: str, eps: float) -> torch.Tensor:
    """``module``'s output for ``x``, computed as HF does: RMSNorm (in float32, then the
    input's dtype, times the weight) for Llama-style models, LayerNorm for GPT-2. On the
    norm's device (over several GPUs ``x`` may come from another layer's)."""
    weight = param(module, "weight")
    x = x.to(weight.device)
    if arch == "llama":
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + eps)
        return weight * h.to(x.dtype)
    return torch.nn.functional.layer_norm(x, x.shape[-1:], weight, param(module, "bias"), eps)


def final_scale(x: torch.Tensor, centre: bool, eps: float) -> torch.Tensor:
    """The final norm's per-vector scale (TransformerLens's ``ln_final.hook_scale``):
    ``sqrt(var + eps)`` of the centred vector for a LayerNorm, ``sqrt(mean(x²) + eps)``
    for an RMSNorm; ``x [..., d_model]`` -> ``[..., 1]``."""
    x = x.float()
    if centre:
        x = x - x.mean(-1, keepdim=True)
    return (x.pow(2).mean(-1, keepdim=True) + eps).sqrt()


def unembed(lm, x: torch.Tensor) -> torch.Tensor:
    head = lm.lm_head
    weight = param(head)
    logits = x.to(weight.device) @ weight.T
    bias = param(head, "bias")
    return logits if bias is None else logits + bias


def _w_o(lm, arch: str, layer: int, n_heads: int) -> torch.Tensor:
    """``W_O [head, d_head, d_model]`` from the o-projection's weight (HF Linear keeps
    ``[out, in]``, GPT-2's Conv1D ``[in, out]``)."""
    attn = _block(lm, arch, layer)
    proj = attn.self_attn.o_proj if arch == "llama" else attn.attn.c_proj
    w = param(proj).T if arch == "llama" else param(proj)
    return w.reshape(n_heads, w.shape[0] // n_heads, w.shape[1])


def _b_o(lm, arch: str, layer: int):
    attn = _block(lm, arch, layer)
    proj = attn.self_attn.o_proj if arch == "llama" else attn.attn.c_proj
    return param(proj, "bias")


# ----------------------------------------------------------------------------- logit lens


def lens(lm, arch: str, shape: dict, run: dict) -> dict:
    """The logit lens of one prompt: every layer's input (then the final norm's input)
    through the final norm and the unembedding, reduced to each cell's top ``k`` tokens and
    the answer's probability and rank. ``gap``: how far the last row's probabilities are
    from the model's own output (a readout other than norm → W_U makes it large)."""
    spec = run["grad"]
    rows = [_block(lm, arch, layer).input[0] for layer in range(shape["n_layers"])]
    module = _final_norm(lm, arch)
    rows.append(module.input[0])
    k, answer = spec["k"], spec["answer"]
    out: dict = {"top_ids": [], "top_probs": [], "answer_prob": [], "answer_rank": []}
    for x in rows:  # one row at a time: [pos, d_vocab] logits, never [rows, pos, vocab]
        logits = unembed(lm, norm(x, module, arch, spec["eps"])).float()
        probs = logits.softmax(-1)
        p, i = probs.topk(k, dim=-1)
        out["top_ids"].append(i)
        out["top_probs"].append(p)
        if answer is not None:
            out["answer_prob"].append(probs[:, answer])
            out["answer_rank"].append((logits > logits[:, answer, None]).sum(-1))
    result = {key: torch.stack(v).detach() for key, v in out.items() if v}
    result["last_probs"] = probs.detach()  # compared with the output in :func:`finish`
    return result


def finish(out: dict, logits: torch.Tensor) -> dict:
    """After the model's output ``logits [batch, pos, vocab]``: the logit lens's ``gap``, how
    far its last row is from the model's own probabilities (a readout other than norm →
    W_U, a softcap say, makes it large)."""
    last = out.pop("last_probs", None)
    if last is not None:
        out["gap"] = (last - logits[0].float().softmax(-1)).abs().max().detach()
    return out


def carry_out(lm, arch: str, shape: dict, run: dict, saved: dict) -> dict:
    """Carry out one toolkit run inside its trace, up to (not including) the logits."""
    kind = run["grad"]["kind"]
    if kind == "lens":
        return lens(lm, arch, shape, run)
    if kind == "dla":
        return dla(lm, arch, shape, run)
    if kind == "copy":
        return copy_scores(lm, arch, shape, run)
    if kind == "resid_at":
        return resid_at(lm, arch, shape, run)
    if kind == "roles":
        return attention_roles(lm, arch, shape, run)
    path(lm, arch, shape, run, saved)
    return {}


# ----------------------------------------------------------------------------- DLA


def direct_terms(
    embed: torch.Tensor,
    heads: list[torch.Tensor],
    mlps: list[torch.Tensor],
    b_O: list[torch.Tensor | None],
    read: torch.Tensor,
    centre: bool,
) -> dict:
    """Each component's direct contribution to the logit difference, batch-averaged.

    Every input is a component's write at the final position: ``embed [batch, d_model]``,
    ``heads[layer] [batch, ..., head, d_model]`` (``...``: source positions for heads by
    position), ``mlps[layer] [batch, d_model]``, ``b_O[layer] [d_model]`` or None. ``read
    [batch, d_model]`` is the unembedding direction times the norm's weight over its frozen
    scale; ``centre``: the final norm is a LayerNorm (centring is linear, so each part is
    centred on its own). Returns ``heads [layer, ..., head]``, ``mlp [layer]``, ``b_O
    [layer]`` and ``embed`` (a 0-d tensor), all on ``read``'s device: on a model spread over
    devices each part comes from its own layer's and they meet on the unembedding's."""

    def dla(x: torch.Tensor) -> torch.Tensor:
        x = x.to(read.device)
        if centre:
            x = x - x.mean(-1, keepdim=True)
        shape = (x.shape[0],) + (1,) * (x.ndim - 2) + (x.shape[-1],)
        return (x * read.reshape(shape)).sum(-1).mean(0)

    batch = embed.shape[0]
    zero = torch.zeros((), dtype=read.dtype, device=read.device)
    return {
        "embed": dla(embed),
        "heads": torch.stack([dla(h) for h in heads]),
        "mlp": torch.stack([dla(m) for m in mlps]),
        "b_O": torch.stack([zero if b is None else dla(b.expand(batch, -1)) for b in b_O]),
    }


def dla(lm, arch: str, shape: dict, run: dict) -> dict:
    """Direct logit attribution of one clean run (see :func:`direct_terms`), reading each
    layer's head inputs to the o-projection (or, by position, the pattern and the values)
    and MLP output at the final position, and the final norm's input for its scale."""
    spec = run["grad"]
    n_heads, kv = shape["n_heads"], shape["n_kv_heads"]
    by_pos = spec["by"] == "heads_by_pos"
    embed = _block(lm, arch, 0).input[:, -1]
    heads, mlps, b_O = [], [], []
    for layer in range(shape["n_layers"]):
        block = _block(lm, arch, layer)
        attn = block.self_attn if arch == "llama" else block.attn
        W_O = _w_o(lm, arch, layer, n_heads)
        if by_pos:
            if arch == "llama":
                v = _heads(attn.v_proj.output, kv)
            else:
                qkv = attn.c_attn.output
                d = qkv.shape[-1] // 3
                v = _heads(qkv[..., 2 * d :], n_heads)
            pattern = attn.output[1]
            if pattern is None:  # sdpa / flash attention: the client says what to do
                return {"no_pattern": torch.ones(())}
            pattern = pattern[:, :, -1]  # [batch, head, src]
            v = v.repeat_interleave(n_heads // v.shape[2], dim=2)  # GQA: each head's KV head
            heads.append(torch.einsum("bhs,bshd,hdm->bshm", pattern, v, W_O))
        else:
            proj = attn.o_proj if arch == "llama" else attn.c_proj
            z = _heads(proj.input[:, -1], n_heads)
            heads.append(torch.einsum("bhd,hdm->bhm", z, W_O))
        mlps.append(block.mlp.output[:, -1])
        b_O.append(_b_o(lm, arch, layer))
    module = _final_norm(lm, arch)
    final_in = module.input[:, -1]
    centre = arch == "gpt2"
    scale = final_scale(final_in, centre, spec["eps"])
    W_U = param(lm.lm_head)  # [vocab, d_model]; everything meets on its device
    answers, wrong = spec["answers"].to(W_U.device), spec["wrong"].to(W_U.device)
    direction = W_U[answers] - W_U[wrong]  # [batch, d_model]
    read = direction * param(module).to(W_U.device) / scale.to(W_U.device)
    terms = direct_terms(embed, heads, mlps, b_O, read.float(), centre)
    bias = param(module, "bias")
    terms["ln_final_bias"] = (
        torch.zeros(()) if bias is None else (direction @ bias.to(W_U.device)).mean().detach()
    )
    b_U = param(lm.lm_head, "bias")
    terms["b_U"] = torch.zeros(()) if b_U is None else (b_U[answers] - b_U[wrong]).mean().detach()
    return {k: v.detach().float() for k, v in terms.items()}


# ----------------------------------------------------------------------------- path patching


def _deltas(lm, arch: str, shape: dict, spec: dict, saved: dict) -> torch.Tensor:
    """``[row, pos, d_model]`` for prompt ``spec["prompt"]``: row ``r`` is Σ over its
    senders of what each writes into the residual stream in the source run (run
    ``spec["src"]``) minus in the base run (``spec["base"]``)."""
    b, src, base = spec["prompt"], spec["src"], spec["base"]
    W_O: dict = {}  # layer -> [head, d_head, d_model], read once per request row
    out = []
    for row in spec["rows"]:
        total = None
        for kind, layer, head in row:
            if kind == "head":
                if layer not in W_O:
                    W_O[layer] = _w_o(lm, arch, layer, shape["n_heads"])
                z = saved[(src, "z", layer)][b, :, head] - saved[(base, "z", layer)][b, :, head]
                delta = z @ W_O[layer][head]
            else:
                delta = saved[(src, "mlp_out", layer)][b] - saved[(base, "mlp_out", layer)][b]
            # Over several GPUs each layer's delta is on its own device: they meet on the first's.
            total = delta if total is None else total + delta.to(total.device)
        out.append(total)
    return torch.stack(out)


def _projection(lm, arch: str, layer: int, site: str, shape: dict):
    """``(W [n, d_model, d_head], b [n, d_head] or None)`` of the q, k or v heads."""
    attn = _block(lm, arch, layer)
    attn = attn.self_attn if arch == "llama" else attn.attn
    n = shape["n_heads"] if site == "q" or arch == "gpt2" else shape["n_kv_heads"]
    if arch == "llama":
        proj = getattr(attn, f"{site}_proj")
        w, bias = param(proj).T, param(proj, "bias")  # [d_model, n * d_head]
    else:
        i = ("q", "k", "v").index(site)
        weight = param(attn.c_attn)
        d = weight.shape[1] // 3
        w = weight[:, i * d : (i + 1) * d]
        bias = param(attn.c_attn, "bias")[i * d : (i + 1) * d]
    W = w.reshape(w.shape[0], n, -1).transpose(0, 1)
    return W, None if bias is None else bias.reshape(n, -1)


def _site(lm, arch: str, layer: int, site: str, shape: dict) -> torch.Tensor:
    """The q, k or v activation ``[batch, pos, n, d_head]`` (a view: writes go through)."""
    block = _block(lm, arch, layer)
    if arch == "llama":
        n = shape["n_heads"] if site == "q" else shape["n_kv_heads"]
        return _heads(getattr(block.self_attn, f"{site}_proj").output, n)
    qkv = block.attn.c_attn.output
    d = qkv.shape[-1] // 3
    i = ("q", "k", "v").index(site)
    return _heads(qkv[..., i * d : (i + 1) * d], shape["n_heads"])


def path(lm, arch: str, shape: dict, run: dict, saved: dict) -> None:
    """One prompt's path-patching pass (Wang et al.'s run 3): row 0 is the base run; row
    ``1 + r`` joins at the first receiver its senders reach, and each receiver's q, k or v
    input there is ``ln1(base stream + delta_r)`` projected by its own weights (or, for the
    logits, the final norm's input is ``base + delta_r``). ``saved`` holds the source and
    base runs' sender outputs."""
    spec = run["grad"]
    deltas = _deltas(lm, arch, shape, spec, saved)
    if spec["input"] == "resid":
        module = _final_norm(lm, arch)
        x = module.input
        grown = x[:1] + deltas.to(x.device, x.dtype)
        module.input = torch.cat([x, grown])
        _last_position_only(lm, arch)
        return
    reach = spec["reach"]  # per row: the receiver layers it reaches
    for layer, heads in spec["receivers"]:
        block = _block(lm, arch, layer)
        x = block.input
        base = x[:1].clone()
        joining = spec["joins"].get(layer, 0)
        if joining:
            block.input = torch.cat([x, x[:1].expand(joining, *x.shape[1:])])
        rows = [r for r, layers in enumerate(reach) if layer in layers]
        W, bias = _projection(lm, arch, layer, spec["input"], shape)
        act = _site(lm, arch, layer, spec["input"], shape)
        if not rows:
            continue
        idx = torch.tensor(heads)
        stream = base + deltas[rows].to(base.device, base.dtype)  # [rows, pos, d_model]
        normed = norm(stream, _ln1(lm, arch, layer), arch, spec["eps"])
        new = torch.einsum("rpm,nmd->rpnd", normed, W[idx])
        if bias is not None:
            new = new + bias[idx]
        batch_rows = 1 + torch.tensor(rows)
        act[batch_rows[:, None], :, idx[None, :]] = new.to(act.device, act.dtype).transpose(1, 2)
    _last_position_only(lm, arch)


def _last_position_only(lm, arch: str) -> None:
    """Unembed the final position alone (the readout's): with hundreds of rows, the
    vocabulary projection of every position would cost more than the layers (as the
    bridge's ``last_position_only`` hook avoids too)."""
    lm.lm_head.input = lm.lm_head.input[:, -1:]


# ----------------------------------------------------------------------------- head roles


def role_mass(patterns: torch.Tensor, dest, src, rows) -> torch.Tensor:
    """Mean attention mass on a role's ``(dest, src)`` pairs over the destinations ``rows``
    where it applies: ``patterns [..., head, dest, src]`` -> ``[..., head]``. The pairs are
    sparse (a diagonal, a few repeats), so only they are gathered."""
    dest, src, rows = (i.to(patterns.device) for i in (dest, src, rows))
    picked = patterns[..., dest, src].float()  # [..., pairs]
    mass = picked.new_zeros(patterns.shape[:-1]).index_add_(-1, dest, picked)  # [..., dest]
    return mass[..., rows].mean(-1)


def attention_roles(lm, arch: str, shape: dict, run: dict) -> dict:
    """Head roles' attention scores of one batch: ``scores[role]`` ``[prompt, layer, head]``
    from each prompt's role pairs (``spec["pairs"][b][role] = (dest, src, rows)``; NaN
    where ``rows`` is empty) and, with ``spec["final"]``, the attention from the final
    position ``[prompt, layer, head, src]``; ``no_pattern`` if the attention implementation
    hides its pattern."""
    spec = run["grad"]
    patterns = []
    for layer in range(shape["n_layers"]):
        block = _block(lm, arch, layer)
        pattern = (block.self_attn if arch == "llama" else block.attn).output[1]
        if pattern is None:
            return {"no_pattern": torch.ones(())}
        patterns.append(pattern.detach())
    # Over several GPUs each layer's pattern is on its own device: they meet on the first's.
    stacked = torch.stack([p.to(patterns[0].device) for p in patterns], 1)  # [b, L, h, d, s]
    scores: dict = {}
    for b, pairs in enumerate(spec["pairs"]):
        for role, (dest, src, rows) in pairs.items():
            score = role_mass(stacked[b], dest, src, rows) if rows.numel() else None
            if score is None:
                score = torch.full(stacked.shape[1:3], float("nan"), device=stacked.device)
            scores.setdefault(role, []).append(score.float())
    out = {f"score_{role}": torch.stack(v).cpu() for role, v in scores.items()}
    if spec["final"]:
        out["final"] = stacked[:, :, :, -1].float().cpu()
    return out


def copy_scores(lm, arch: str, shape: dict, run: dict) -> dict:
    """The OV copy scores of head roles (see :func:`circuitviz.engine._roles.copy_scores`):
    the residual stream after layer 0 at each prompt's ``positions[b]`` through each head's
    ``±(ln1 → W_V W_O) → final norm → W_U``; the share of prompts whose ``answers[b]`` is
    in the top ``top_k`` logits, ``[layer, head]`` for each sign."""
    spec = run["grad"]
    n_layers, n_heads = shape["n_layers"], shape["n_heads"]
    after = _block(lm, arch, 1).input if n_layers > 1 else _final_norm(lm, arch).input
    resid = after[torch.arange(after.shape[0]), spec["positions"]]  # [batch, d_model]
    answers, eps, final = spec["answers"], spec["eps"], _final_norm(lm, arch)
    copy = torch.zeros(n_layers, n_heads)
    negative = torch.zeros(n_layers, n_heads)
    for layer in range(n_layers):
        W_V, b_V = _projection(lm, arch, layer, "v", shape)  # [kv_head, d_model, d_head]
        v = torch.einsum("bm,kmd->bkd", norm(resid, _ln1(lm, arch, layer), arch, eps), W_V)
        if b_V is not None:
            v = v + b_V
        v = v.repeat_interleave(n_heads // v.shape[1], dim=1)  # GQA: each head's KV head
        out = torch.einsum("bhd,hdm->bhm", v, _w_o(lm, arch, layer, n_heads))
        for sign, dest in ((1, copy), (-1, negative)):
            logits = unembed(lm, norm(sign * out, final, arch, eps))
            top = logits.topk(spec["top_k"], dim=-1).indices  # [batch, head, k]
            hit = (top == answers.to(top.device)[:, None, None]).any(-1).float()
            dest[layer] = hit.mean(0).detach().cpu()
    return {"copy": copy, "negative_copy": negative}


# ----------------------------------------------------------------------------- refusal


def resid_at(lm, arch: str, shape: dict, run: dict) -> dict:
    """Every layer's input at one position (counted from the end): ``[batch, layer,
    d_model]`` in float32 — a refusal direction's difference in means reads these."""
    pos = run["grad"]["pos"]
    rows = [_block(lm, arch, layer).input[:, pos] for layer in range(shape["n_layers"])]
    return {"resid": torch.stack(rows, 1).detach().float()}


def refusal_scores(logits: torch.Tensor, token_ids) -> torch.Tensor:
    """Log-odds that the next token starts a refusal, from final-position logits
    ``[batch, d_vocab]``: ``log p − log(1 − p)``, ``p`` the summed probability of
    ``token_ids``."""
    logp = logits.float().log_softmax(-1)
    log_p = logp[:, list(token_ids)].logsumexp(-1)
    return log_p - torch.log1p(-log_p.exp().clamp(max=1 - 1e-7))


def generation_start(spec: dict, tokens: torch.Tensor, mask: torch.Tensor) -> dict:
    """The state of one batch's greedy generation (``tokens``/``mask`` left-padded)."""
    return {
        "spec": spec,
        "tokens": tokens,
        "mask": mask,
        "new": torch.empty((tokens.shape[0], 0), dtype=torch.long),
        "done": torch.zeros(tokens.shape[0], dtype=torch.bool),
        "scores": None,
    }


def generation_step(state: dict, logits: torch.Tensor, step: int) -> bool:
    """Take one greedy token from final-position ``logits [batch, vocab]`` (the refusal
    scores at step 0); rows already finished get pads. True when every row has ended."""
    spec = state["spec"]
    logits = logits.detach().float().cpu()
    if step == 0 and spec["ids"]:
        state["scores"] = refusal_scores(logits, spec["ids"])
    nxt = logits.argmax(-1)
    nxt[state["done"]] = spec["pad"]
    state["new"] = torch.cat([state["new"], nxt[:, None]], 1)
    if spec["eos"] is not None:
        state["done"] |= nxt == spec["eos"]
    state["tokens"] = torch.cat([state["tokens"], nxt[:, None]], 1)
    # Rows already finished get pads; what they attend to is never read.
    state["mask"] = torch.cat([state["mask"], torch.ones_like(nxt)[:, None]], 1)
    return bool(state["done"].all())


def generation_result(state: dict) -> dict:
    return {"new": state["new"], "done": state["done"], "scores": state["scores"]}


def intervene(lm, arch: str, shape: dict, spec: dict) -> None:
    """A refusal intervention inside one trace, as the bridge's hooks do it: ``ablate``
    projects the unit direction out of the embeddings and every attention and MLP output;
    ``add`` adds the vector to one layer's input, at every position."""
    if spec is None:
        return
    if spec["mode"] == "add":
        block = _block(lm, arch, spec["layer"])
        x = block.input
        block.input = x + spec["vector"].to(x.device, x.dtype)
        return

    def project_out(x: torch.Tensor) -> None:
        d = spec["unit"].to(x.device, x.dtype)
        x.sub_((x @ d)[..., None] * d)

    for layer in range(shape["n_layers"]):
        block = _block(lm, arch, layer)
        if layer == 0:
            project_out(block.input)
        attn = block.self_attn if arch == "llama" else block.attn
        project_out(attn.output[0])
        project_out(block.mlp.output)
