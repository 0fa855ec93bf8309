"""Evaluating circuits: what each receiver reads when the edges outside a circuit carry a
reference value — the one implementation, used by the bridge's hooks
(:func:`circuitviz.engine.graph._faithfulness.circuit_logits`) and inside an nnsight trace
(:func:`nnsight_circuits`, locally or on NDIF).

Receiver ``r`` reads ``x_r = resid − Σ_{u: (u→r) ∉ circuit} (a_u − ref_u)``, ``a_u`` being
sender ``u``'s output in this very (patched) pass and ``ref_u`` the reference (the corrupted
run's, or the batch mean of the clean run's). Circuit ``k`` is rows ``k·batch … (k+1)·batch
− 1`` of one pass.

Like :mod:`._program`, this module imports nothing but torch: it is shipped by value with a
remote request.
"""

from __future__ import annotations

import torch

from . import _program


class PatchedEdges:
    """The senders' deviations from the reference in one pass, and each receiver's correction.

    Args:
        masks: ``[circuit, sender, receiver]`` or ``[circuit, sender, receiver, pos]`` bool,
            True where the edge is in the circuit (invalid edges are ignored).
        valid: ``[sender, receiver]`` bool, the layout's valid edges.
        ref: reference sender outputs ``[sender, batch or 1, pos, d_model]``.
    """

    def __init__(
        self, masks: torch.Tensor, valid: torch.Tensor, ref: torch.Tensor, batch: int, n_pos: int
    ):
        device = ref.device
        masks, valid = masks.to(device), valid.to(device)
        self.per_pos = masks.ndim == 4
        valid = valid[:, :, None] if self.per_pos else valid
        self.off = (~masks) & valid  # edges to patch
        self.on = masks & valid
        self.n_circ, self.batch, self.n_pos = masks.shape[0], batch, n_pos
        self.d_model = ref.shape[-1]
        self.ref = ref.float()
        shape = (self.n_circ, batch, n_pos, self.d_model)
        self.delta = torch.zeros(ref.shape[0], *shape, device=device)
        self.running = torch.zeros(shape, device=device)  # Σ delta of the senders so far

    def write(self, i: int, value: torch.Tensor) -> None:
        """Senders ``i … i + n − 1`` wrote ``value [circuit·batch, pos, n, d_model]``."""
        n = value.shape[2]  # (a layer may sit on another device: the bookkeeping stays here)
        cur = (
            value.float().to(self.delta.device).permute(2, 0, 1, 3).reshape(n, *self.running.shape)
        )
        self.delta[i : i + n] = cur - self.ref[i : i + n, None]
        self.running.add_(self.delta[i : i + n].sum(0))

    def _masked_sum(self, mask: torch.Tensor, n_senders: int) -> torch.Tensor:
        """Σ_s mask[k, s, r(, p)] · delta[s, k] -> ``[circuit, batch, pos, receiver, d_model]``,
        over only the senders the mask uses (circuits are sparse, or nearly full)."""
        dims = (0, 2, 3) if self.per_pos else (0, 2)
        used = mask.any(dim=dims).nonzero()[:, 0]
        m, d = mask[:, used].float(), self.delta[:n_senders][used]
        if self.per_pos:
            return torch.einsum("ksrp,skbpd->kbprd", m, d)
        return torch.einsum("ksr,skbpd->kbprd", m, d)

    def correction(self, n_senders: int, receivers: slice) -> torch.Tensor | None:
        """``[circuit·batch, pos, receiver, d_model]`` to subtract from the residual these
        receivers read, or None if none of their edges is patched. Σ over the patched edges'
        senders, or — when fewer senders are in the circuit — all senders so far minus the
        circuit's."""
        o, i = self.off[:, :n_senders, receivers], self.on[:, :n_senders, receivers]
        if not o.any():
            return None
        dims = (0, 2, 3) if self.per_pos else (0, 2)
        if int(i.any(dim=dims).sum()) < int(o.any(dim=dims).sum()):
            c = self.running[:, :, :, None] - self._masked_sum(i, n_senders)
        else:
            c = self._masked_sum(o, n_senders)
        return c.reshape(self.n_circ * self.batch, self.n_pos, -1, self.d_model)


# ----------------------------------------------------------------------------- nnsight

_BITS = 1 << torch.arange(8, dtype=torch.uint8)


def pack(mask: torch.Tensor) -> tuple[torch.Tensor, tuple[int, ...]]:
    """A bool mask as 8 entries a byte (a large model's ``[sender, receiver]`` edges are
    tens of millions), with its shape: what a request carries."""
    flat = mask.flatten().to(torch.uint8)
    flat = torch.cat([flat, flat.new_zeros(-len(flat) % 8)])
    return (flat.view(-1, 8) * _BITS).sum(-1, dtype=torch.uint8), tuple(mask.shape)


def unpack(packed: tuple[torch.Tensor, tuple[int, ...]], device=None) -> torch.Tensor:
    """:func:`pack`'s mask again (on ``device``)."""
    data, shape = packed
    data = data.to(device)
    n = 1
    for size in shape:
        n *= size
    bits = (data[:, None] & _BITS.to(data.device)) != 0
    return bits.flatten()[:n].view(shape)


def _project(attn, arch: str, kind: str, x: torch.Tensor) -> torch.Tensor:
    """``x [rows, pos, n, d_model]`` (post-norm, one row per head of ``kind``) -> each head's
    own q, k or v ``[rows, pos, n, d_head]``."""
    n = x.shape[2]
    out = torch.einsum("bpnm,ndm->bpnd", x, _program.head_weight(attn, arch, kind, n))
    bias = _program.head_bias(attn, arch, kind, n)
    return out if bias is None else out + bias


def nnsight_circuits(lm, arch: str, shape: dict, run: dict, saved: dict) -> dict:
    r"""The readout of one pass of circuits inside an nnsight trace: every sender's output
    goes into :class:`PatchedEdges`; each receiver that has a patched edge reads its
    corrected input — a head's q, k and v recomputed from its own corrected residual through
    ``ln1`` and its own projection, the MLP's and the logits' norm inputs replaced.

    ``run["grad"]``: ``masks`` and ``valid`` (:func:`pack`\ ed), ``eps``, ``layers`` (per
    layer: its first head sender, its MLP sender, and its q, k, v and MLP receivers as
    ``(start, stop)``), ``logits`` (the logits receiver) and ``ref``: ``"rows"`` (the senders
    kept by this request's senders run), ``"mean"`` (their batch mean; with ``mean_weights
    [batch, pos]``, mixed lengths, each position's mean over the prompts there) or a tensor
    sent with it (kept on the client, on the CPU: it moves to the embeddings' device here)."""
    spec = run["grad"]
    ref = spec["ref"]
    if isinstance(ref, str):
        ref = saved[("senders",)]
        if spec["ref"] == "mean":  # weights: each position's mean over its prompts
            w = spec.get("mean_weights")
            if w is None:
                ref = ref.mean(1, keepdim=True)
            else:
                ref = (ref * w.to(ref.device, ref.dtype)[None, :, :, None]).sum(1, keepdim=True)
    n_heads, n_pos = shape["n_heads"], run["tokens"].shape[1]
    n_senders = ref.shape[0]
    for layer, (head_sender, mlp_sender, *rs) in enumerate(spec["layers"]):
        block, attn, ln1, ln2 = _program._parts(lm, arch, layer)
        resid = block.input
        if layer == 0:
            where = resid.device
            masks, valid = unpack(spec["masks"], where), unpack(spec["valid"], where)
            batch = resid.shape[0] // masks.shape[0]
            edges = PatchedEdges(masks, valid, ref.to(where), batch, n_pos)
            edges.write(0, resid[:, :, None])
        fixes = {
            kind: edges.correction(head_sender, slice(*r))
            for kind, r in zip(("q", "k", "v"), rs[:3], strict=True)
        }
        outs = {}
        if arch == "gpt2" and any(c is not None for c in fixes.values()):
            qkv = attn.c_attn.output
            d = qkv.shape[-1] // 3
            outs = {k: qkv[..., i * d : (i + 1) * d] for i, k in enumerate(("q", "k", "v"))}
        for kind, c in fixes.items():  # forward order: q, k, v
            if c is None:
                continue
            rows = resid[:, :, None] - c.to(resid.device, resid.dtype)
            value = _project(attn, arch, kind, _program.apply_norm(ln1, rows, arch, spec["eps"]))
            out = outs[kind] if arch == "gpt2" else getattr(attn, f"{kind}_proj").output
            out[...] = value.reshape(out.shape).to(out.dtype)
        proj = attn.o_proj if arch == "llama" else attn.c_proj
        edges.write(
            head_sender, _program._head_out(proj.input, _program._weight(proj), arch, n_heads)
        )
        c = edges.correction(mlp_sender, slice(*rs[3]))
        if c is not None:  # a new tensor: the residual stream itself stays as it is
            x = ln2.input
            ln2.input = x - c[:, :, 0].to(x.device, x.dtype)
        edges.write(mlp_sender, block.mlp.output[:, :, None])
    norm = lm.model.norm if arch == "llama" else lm.transformer.ln_f
    c = edges.correction(n_senders, slice(spec["logits"], spec["logits"] + 1))
    if c is not None:
        x = norm.input
        norm.input = x - c[:, :, 0].to(x.device, x.dtype)
    return _program.readout(lm.lm_head.output[:, -1], run["readout"])
