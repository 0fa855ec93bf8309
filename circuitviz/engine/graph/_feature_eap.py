"""Feature circuits: EAP / EAP-IG edge scores through SAE-spliced residual streams (the method
of Marks et al. 2024, "Sparse Feature Circuits", on this package's EAP machinery).

At an SAE site (``blocks.L.hook_resid_post``) the residual stream is replaced by
``Σ_i f_i W_dec[i] + b_dec + err`` (``_splice``: equal to the original up to float rounding).
The site cuts the residual stream: what runs before it reaches what runs after it only through
its latents and its error term. So the graph has, per position,

- **feature nodes** ``L{L}F{i}:P{p}``: a sender writing ``f_i W_dec[i]`` and a receiver whose
  input gradient is ``∂M/∂pre_i · W_enc[:, i]`` (``∂M/∂pre_i = 1[f_i active] · W_dec[i] ·
  ∂M/∂out``: TopK, ReLU and JumpReLU latents pass their pre-activation's gradient where
  active);
- one **error node** ``L{L}ERR:P{p}``: a sender writing ``err`` and a receiver with gradient
  ``∂M/∂out − W_enc ∂M/∂pre`` (over the latents that are nodes): the part of an upstream change that the SAE does not
  reconstruct. The edges into a site therefore sum to the plain residual edge (completeness);
- the heads, MLPs, embeddings and logits as in ``circuit()``; a component edge is kept only
  when no site lies between its ends.

An edge's score is EAP's ``Δa_u · ∂M/∂x_r`` (Δ = corrupted − clean, summed over the batch of
the batch-mean metric's gradients); with EAP-IG the receiver gradients (and the latents'
active masks) are averaged over the interpolation steps. Scores are computed one segment
between consecutive sites and one position at a time, and stored sparsely (non-zero only).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .._pairs import InputError
from ..features._sae import SAE, SAESet, as_sae_set
from ..features._splice import splice_hook
from ._layout import Layout

#: Node type codes of a feature graph's node table.
TYPES = ("embed", "head", "mlp", "logits", "feature", "error")
#: Edge input codes (``_select.EDGE_INPUTS`` order).
INPUTS = ("q", "k", "v", "mlp", "logits", "feature", "error")


def check_saes(model, saes) -> SAESet:
    """The SAEs as a set, each on a ``blocks.L.hook_resid_post`` of this model with its width;
    else an :class:`InputError` naming the problem and the fix."""
    saes = as_sae_set(saes)
    d_model = int(model.cfg.d_model)
    n_layers = int(model.cfg.n_layers)
    for hook, sae in saes.items():
        layer = sae.layer
        if hook != f"blocks.{layer}.hook_resid_post" or sae.is_transcoder:
            raise InputError(
                f"Feature circuits splice SAEs on the residual stream 'blocks.L.hook_resid_post'; "
                f"{hook!r} is not one. Pass SAEs on hook_resid_post only."
            )
        if not 0 <= layer < n_layers:
            raise InputError(
                f"The SAE at {hook!r} reads a block this model lacks (layers 0–{n_layers - 1})."
            )
        bad = [
            n
            for n in ("W_enc", "b_enc", "W_dec", "b_dec")
            if not torch.isfinite(getattr(sae, n)).all()
        ]
        if bad:
            raise InputError(
                f"The SAE at {hook!r} has non-finite values in {bad}: reload its weights."
            )
        if sae.d_in != d_model:
            raise InputError(
                f"The SAE at {hook!r} reads width {sae.d_in}, but the model's d_model is "
                f"{d_model}: pass SAEs trained on this model."
            )
    return saes


def site_stage(layer: int) -> float:
    """Where a resid_post site sits in ``Layout``'s sender/receiver stage order (after
    ``MLP{layer}`` writes, before layer ``layer + 1`` reads)."""
    return 2 * layer + 2.5


def sender_stage(layout: Layout) -> np.ndarray:
    return np.array([layout._sender_stage(i) for i in range(len(layout.senders))], dtype=float)


def receiver_stage(layout: Layout) -> np.ndarray:
    return np.array([layout._receiver_stage(r) for r in layout.receivers], dtype=float)


class SpliceSites:
    """The SAE sites of one ``circuit(..., saes=...)`` call (see ``_eap.ExtraSites``): splice
    hooks that record latents and error terms per pass, and the per-site gradients
    ``∂M/∂out`` and ``∂M/∂pre`` accumulated over EAP-IG's steps."""

    def __init__(self, saes: SAESet, device: torch.device | str = "cpu") -> None:
        self.saes = saes
        self.sae = {h: s.to(device, torch.float32) for h, s in saes.items()}
        self.grad_hooks = list(saes.hooks)
        self.latents: dict[str, dict[str, torch.Tensor]] = {}
        self.errors: dict[str, dict[str, torch.Tensor]] = {}
        self.g_out: dict[str, torch.Tensor] = {}
        self.g_pre: dict[str, torch.Tensor] = {}
        self.diff: torch.Tensor | None = None
        self.grads: torch.Tensor | None = None

    def hooks(self, run: str):
        def record(hook: str):
            def fn(f: torch.Tensor, error: torch.Tensor) -> None:
                self.latents.setdefault(run, {})[hook] = f.detach().float()
                self.errors.setdefault(run, {})[hook] = error.detach().float()

            return fn

        return [(h, splice_hook(self.sae[h], record=record(h))) for h in self.grad_hooks]

    def add_grads(self, run: str, grads: dict[str, torch.Tensor]) -> None:
        for h in self.grad_hooks:
            sae = self.sae[h]
            g_out = grads[h]
            active = (self.latents[run][h] != 0).float()
            g_pre = active * (g_out @ sae.W_dec.T)
            self.g_out[h] = self.g_out[h] + g_out if h in self.g_out else g_out
            self.g_pre[h] = self.g_pre[h] + g_pre if h in self.g_pre else g_pre

    def finish(self, diff: torch.Tensor, grads: torch.Tensor, steps: int) -> None:
        self.diff, self.grads = diff, grads
        for h in self.grad_hooks:
            self.g_out[h] = self.g_out[h] / steps
            self.g_pre[h] = self.g_pre[h] / steps


@dataclass
class FeatureScores:
    """A feature graph's nodes (a table) and its non-zero edges (sparse arrays)."""

    ids: list[str]
    type: np.ndarray  # [N] index into TYPES
    layer: np.ndarray  # [N]
    head: np.ndarray  # [N] -1 where none
    pos: np.ndarray  # [N]
    feature: np.ndarray  # [N] -1 where none
    src: np.ndarray  # [E] node index
    dst: np.ndarray  # [E] node index (a k/v edge: the first query head of its KV group)
    input: np.ndarray  # [E] index into INPUTS
    weight: np.ndarray  # [E] float32
    n_candidates: int  # valid (sender, receiver, position) cells, zero scores included


def node_table(
    layout: Layout, n_pos: int, active: dict[str, list[np.ndarray]]
) -> tuple[list[str], np.ndarray, dict]:
    """Node ids and their [type, layer, head, pos, feature] rows: every component at every
    position, each site's active latents and error node at every position. ``active[hook][p]``
    lists the latents active at position ``p``. Returns (ids, rows, index of (kind, key, pos))."""
    ids: list[str] = []
    rows: list[tuple[int, int, int, int, int]] = []
    index: dict = {}

    def add(key, node_id: str, t: str, layer: int, head: int, p: int, feature: int) -> None:
        index[key] = len(ids)
        ids.append(node_id)
        rows.append((TYPES.index(t), layer, head, p, feature))

    site_layers = {int(h.split(".")[1]): h for h in active}
    for p in range(n_pos):
        add(("s", 0, p), f"EMBED:P{p}", "embed", -1, -1, p, -1)
    for layer in range(layout.n_layers):
        for p in range(n_pos):
            for h in range(layout.n_heads):
                add(
                    ("s", layout.head_sender(layer, h), p),
                    f"L{layer}H{h}:P{p}",
                    "head",
                    layer,
                    h,
                    p,
                    -1,
                )
            add(("s", layout.mlp_sender(layer), p), f"MLP{layer}:P{p}", "mlp", layer, -1, p, -1)
        hook = site_layers.get(layer)
        if hook is None:
            continue
        for p in range(n_pos):
            for i in active[hook][p].tolist():
                add(("f", hook, i, p), f"L{layer}F{i}:P{p}", "feature", layer, -1, p, i)
            add(("e", hook, p), f"L{layer}ERR:P{p}", "error", layer, -1, p, -1)
    for p in range(n_pos):
        add(("logits", p), f"LOGITS:P{p}", "logits", layout.n_layers, -1, p, -1)
    return ids, np.array(rows, dtype=np.int64).reshape(-1, 5), index


def feature_scores(layout: Layout, sites: SpliceSites, *, progress: bool = True) -> FeatureScores:
    """Every non-zero edge of the feature graph, segment by segment and position by position
    (see the module docstring)."""
    from tqdm.auto import tqdm

    diff, grads = sites.diff, sites.grads
    assert diff is not None and grads is not None
    n_pos = diff.shape[2]
    hooks = sites.grad_hooks
    lat_c, lat_x = sites.latents["clean"], sites.latents["corrupted"]
    # A latent is a node at p when it is active there on some clean or corrupted prompt.
    active = {
        h: [
            ((lat_c[h][:, p] != 0) | (lat_x[h][:, p] != 0)).any(0).nonzero()[:, 0]
            for p in range(n_pos)
        ]
        for h in hooks
    }
    ids, table, index = node_table(
        layout, n_pos, {h: [a.cpu().numpy() for a in v] for h, v in active.items()}
    )
    s_stage, r_stage = sender_stage(layout), receiver_stage(layout)
    valid = layout.valid.numpy()
    cuts = [-np.inf, *(site_stage(sites.sae[h].layer) for h in hooks), np.inf]
    recv_dst = [layout.node_index[r.target] for r in layout.receivers]
    recv_input = np.array([INPUTS.index(r.input) for r in layout.receivers])
    srcs, dsts, inps, ws = [], [], [], []
    n_candidates = 0
    bar = tqdm(
        total=(len(cuts) - 1) * n_pos, desc="feature edges", disable=not progress, leave=False
    )
    for j in range(len(cuts) - 1):
        lo, hi = cuts[j], cuts[j + 1]
        s_comp = np.flatnonzero((s_stage > lo) & (s_stage < hi))
        r_comp = np.flatnonzero((r_stage > lo) & (r_stage < hi))
        prev = hooks[j - 1] if j > 0 else None
        nxt = hooks[j] if j < len(hooks) else None
        comp_valid = valid[np.ix_(s_comp, r_comp)]
        for p in range(n_pos):
            send = [diff[s_comp, :, p]]
            send_ids = [index["s", int(s), p] for s in s_comp]
            if prev is not None:
                sae, feats = sites.sae[prev], active[prev][p]
                dfeat = (lat_x[prev][:, p, feats] - lat_c[prev][:, p, feats]).T  # [F, batch]
                send.append(dfeat[:, :, None] * sae.W_dec[feats][:, None])
                err = sites.errors
                send.append((err["corrupted"][prev][:, p] - err["clean"][prev][:, p])[None])
                send_ids += [index["f", prev, int(i), p] for i in feats] + [index["e", prev, p]]
            recv = [grads[r_comp, :, p]]
            recv_ids = [
                index["s", recv_dst[r], p] if r != layout.logits_receiver else index["logits", p]
                for r in r_comp
            ]
            recv_codes = list(recv_input[r_comp])
            if nxt is not None:
                sae, feats = sites.sae[nxt], active[nxt][p]
                g_pre = sites.g_pre[nxt][:, p]  # [batch, d_sae]
                recv.append(g_pre[:, feats].T[:, :, None] * sae.W_enc[:, feats].T[:, None])
                # what the listed latents do not carry (an IG step may light up others)
                g_err = sites.g_out[nxt][:, p] - g_pre[:, feats] @ sae.W_enc[:, feats].T
                recv.append(g_err[None])
                recv_ids += [index["f", nxt, int(i), p] for i in feats] + [index["e", nxt, p]]
                recv_codes += [INPUTS.index("feature")] * len(feats) + [INPUTS.index("error")]
            S, R = torch.cat(send), torch.cat(recv)
            block = torch.einsum("sbd,rbd->sr", S, R).cpu().numpy()
            ok = np.ones(block.shape, dtype=bool)
            ok[: len(s_comp), : len(r_comp)] = comp_valid
            n_candidates += int(ok.sum())
            ok &= block != 0
            a, b = np.nonzero(ok)
            srcs.append(np.asarray(send_ids)[a])
            dsts.append(np.asarray(recv_ids)[b])
            inps.append(np.asarray(recv_codes)[b])
            ws.append(block[a, b].astype(np.float32))
            bar.update()
    bar.close()
    return FeatureScores(
        ids=ids,
        type=table[:, 0],
        layer=table[:, 1],
        head=table[:, 2],
        pos=table[:, 3],
        feature=table[:, 4],
        src=np.concatenate(srcs).astype(np.int64),
        dst=np.concatenate(dsts).astype(np.int64),
        input=np.concatenate(inps).astype(np.int64),
        weight=np.concatenate(ws),
        n_candidates=n_candidates,
    )


def site_of(saes: SAESet, layer: int) -> SAE:
    """The SAE of ``blocks.{layer}.hook_resid_post``, or an :class:`InputError`."""
    hook = f"blocks.{layer}.hook_resid_post"
    if hook not in saes:
        raise InputError(
            f"No SAE reads {hook!r} (feature L{layer}F…); the SAEs read {saes.hooks}. Pass the "
            "SAE set that has it (saes=...)."
        )
    return saes[hook]
