"""Feature circuits: EAP / EAP-IG edge scores through SAE-spliced models (the method of
Marks et al. 2024, "Sparse Feature Circuits", on this package's EAP machinery).

At an SAE site the activation is replaced by ``Σ_i f_i W_dec[i] + b_dec + err``
(``_splice``: equal to the original up to float rounding; a transcoder's ``err`` is the MLP
output minus its reconstruction). Where each kind of site sits and what it replaces (resid
sites cut the residual stream, attn_out/mlp_out sites take over their component's output, a
transcoder replaces the MLP) is in ``_feature_sites``. Per position the graph has

- **feature nodes** ``L{L}{site}F{i}:P{p}`` (ids: ``engine._sites``): a sender writing
  ``f_i W_dec[i]`` and a receiver whose input gradient is ``∂M/∂pre_i · W_enc[:, i]``
  (``∂M/∂pre_i = 1[f_i active] · W_dec[i] · ∂M/∂out``: TopK, ReLU and JumpReLU latents pass
  their pre-activation's gradient where active), mapped back through ln2 for a transcoder
  that reads ln2's output;
- one **error node** ``L{L}{site}ERR:P{p}``: a sender writing ``err`` and a receiver with
  the gradient of the site's whole input less what the latents that are nodes take (for a
  transcoder: the MLP's input gradient). The edges into a site therefore sum to the plain
  edge into what it replaces (completeness);
- the heads, MLPs, embeddings and logits as in ``circuit()``. A residual edge is kept only
  when no resid site lies between its ends; a component whose output an attn_out/mlp_out
  SAE reads sends only into that site's latents and error node.

An edge's score is EAP's ``Δa_u · ∂M/∂x_r`` (Δ = corrupted − clean, summed over the batch of
the batch-mean metric's gradients); with EAP-IG the receiver gradients (and the latents'
active masks) are averaged over the interpolation steps. Scores are computed one position at
a time and stored sparsely (non-zero only). Pairs of mixed lengths run left-padded and
masked; a pad token's latents and error term are recorded as 0, so padding adds no node and
no edge (``SpliceSites``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from .. import _devices
from .._pairs import Tokens
from .._sites import error_id, feature_id
from ..features._sae import SAESet
from ..features._splice import site_hooks
from ._feature_sites import Site, check_saes, ln2_module, sites_of
from ._layout import Layout

#: Node type codes of a feature graph's node table.
TYPES = ("embed", "head", "mlp", "logits", "feature", "error")
#: Edge input codes (``_select.EDGE_INPUTS`` order).
INPUTS = ("q", "k", "v", "mlp", "logits", "feature", "error")


__all__ = ["INPUTS", "TYPES", "FeatureScores", "SpliceSites", "check_saes", "feature_scores"]


def sender_stage(layout: Layout) -> np.ndarray:
    return np.array([layout._sender_stage(i) for i in range(len(layout.senders))], dtype=float)


def receiver_stage(layout: Layout) -> np.ndarray:
    return np.array([layout._receiver_stage(r) for r in layout.receivers], dtype=float)


class SpliceSites:
    """The SAE sites of one ``circuit(..., saes=...)`` call (see ``_eap.ExtraSites``): splice
    hooks that record latents and error terms per pass, and the per-site gradients
    ``∂M/∂out`` and ``∂M/∂pre`` accumulated over EAP-IG's steps (for a transcoder that reads
    ln2's output, also each active latent's receiver gradient before ln2)."""

    def __init__(
        self,
        saes: SAESet,
        model,
        device: torch.device | None = None,
        *,
        tokens: Tokens | None = None,
    ) -> None:
        # an offloaded parameter is on `meta`; nnsight (model None) scores here, on `device`
        device = device or _devices.compute_device(model)
        self.saes = saes
        # Left-padded pairs (mixed lengths): what a splice records at a padding position is
        # the SAE of a pad token's activation, not the prompt's, so it is set to 0 there: no
        # latent is active there (no node), and no latent or error term changes (no edge).
        self.tokens = tokens
        self.sae = {h: s.to(device, torch.float32) for h, s in saes.items()}
        self.sites: list[Site] = sites_of(saes)
        self.grad_hooks = list(dict.fromkeys(h for s in self.sites for h in s.grad_hooks))
        # nnsight (model None) maps post-norm transcoders through ln2 on the server
        post = [s for s in self.sites if s.post_norm and model is not None]
        self.ln2 = {s.hook: ln2_module(model, s.layer) for s in post}
        # Called through _devices: an offloaded ln2's weight is read in for the call.
        self.ln2_call = {h: _devices.calling(model, m) for h, m in self.ln2.items()}
        self.latents: dict[str, dict[str, torch.Tensor]] = {}
        self.errors: dict[str, dict[str, torch.Tensor]] = {}
        self.resid_mid: dict[str, torch.Tensor] = {}  # post-norm transcoders: ln2's input
        self.active: dict[str, list[torch.Tensor]] = {}
        self.g_out: dict[str, torch.Tensor] = {}
        self.g_pre: dict[str, torch.Tensor] = {}
        self.g_recv: dict[str, list[torch.Tensor]] = {}  # post-norm transcoders, per position
        self.diff: torch.Tensor | None = None
        self.grads: torch.Tensor | None = None

    def hooks(self, run: str):
        def record(hook: str):
            def fn(f: torch.Tensor, error: torch.Tensor) -> None:
                self.latents.setdefault(run, {})[hook] = self._real(f.detach().float())
                self.errors.setdefault(run, {})[hook] = self._real(error.detach().float())

            return fn

        def keep_mid(name: str):
            def fn(x: torch.Tensor, hook: object) -> None:
                self.resid_mid[name] = x.detach().float()

            return fn

        out = []
        for s in self.sites:
            if s.post_norm:
                out.append((f"blocks.{s.layer}.ln2.hook_in", keep_mid(s.hook)))
            out += site_hooks(self.sae[s.hook], record=record(s.hook))
        return out

    def _real(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.tokens is None else self.tokens.real(x)

    def _active(self) -> dict[str, list[torch.Tensor]]:
        """Per site and position, the latents active on some clean or corrupted prompt (the
        nodes; known once the corrupted and clean runs are done)."""
        if not self.active:
            lat_c, lat_x = self.latents["clean"], self.latents["corrupted"]
            for h in self.sae:
                n_pos = lat_c[h].shape[1]
                self.active[h] = [
                    ((lat_c[h][:, p] != 0) | (lat_x[h][:, p] != 0)).any(0).nonzero()[:, 0]
                    for p in range(n_pos)
                ]
        return self.active

    def add_grads(self, run: str, grads: dict[str, torch.Tensor]) -> None:
        for s in self.sites:
            h, sae = s.hook, self.sae[s.hook]
            g_out = sum(grads[g] for g in s.grad_hooks)
            active = (self.latents[run][h] != 0).float()
            g_pre = active * (g_out @ sae.W_dec.T)
            self.g_out[h] = self.g_out[h] + g_out if h in self.g_out else g_out
            self.g_pre[h] = self.g_pre[h] + g_pre if h in self.g_pre else g_pre
            if s.post_norm:
                recv = self._through_ln2(s, g_pre)
                old = self.g_recv.get(h)
                self.g_recv[h] = (
                    recv if old is None else [a + b for a, b in zip(old, recv, strict=True)]
                )

    def _through_ln2(self, site: Site, g_pre: torch.Tensor) -> list[torch.Tensor]:
        """Per position, ``[F, batch, d_model]``: each active latent's input gradient mapped
        back through ln2 at this pass's residual (a vector-Jacobian product)."""
        sae, ln2 = self.sae[site.hook], self.ln2[site.hook]
        x_all = self.resid_mid[site.hook]
        out = []
        for p, feats in enumerate(self._active()[site.hook]):
            post = g_pre[:, p, feats].T[:, :, None] * sae.W_enc[:, feats].T[:, None]
            x = x_all[:, p][None].expand_as(post).clone().requires_grad_(True)
            with torch.enable_grad():
                y = self.ln2_call[site.hook](x.to(next(ln2.parameters()).dtype))
                (pre,) = torch.autograd.grad(y, x, post.to(y.dtype))
            out.append(pre.detach().float())
        return out

    def finish(self, diff: torch.Tensor, grads: torch.Tensor, steps: int) -> None:
        self.diff, self.grads = diff, grads
        for h in self.sae:
            self.g_out[h] = self.g_out[h] / steps
            self.g_pre[h] = self.g_pre[h] / steps
            if h in self.g_recv:
                self.g_recv[h] = [g / steps for g in self.g_recv[h]]

    def latent_receivers(self, site: Site, p: int, feats: torch.Tensor) -> torch.Tensor:
        """``[F, batch, d]``: the receiver gradients of a site's active latents at ``p``, on
        the site's input (a transcoder's: the residual stream before ln2)."""
        if site.post_norm:
            return self.g_recv[site.hook][p]
        g_pre = self.g_pre[site.hook][:, p]
        return g_pre[:, feats].T[:, :, None] * self.sae[site.hook].W_enc[:, feats].T[:, None]


@dataclass
class FeatureScores:
    """A feature graph's nodes (a table) and its non-zero edges (sparse arrays)."""

    ids: list[str]
    type: np.ndarray  # [N] index into TYPES
    layer: np.ndarray  # [N]
    head: np.ndarray  # [N] -1 where none
    pos: np.ndarray  # [N]
    feature: np.ndarray  # [N] -1 where none
    site: np.ndarray  # [N] index into _feature_sites.SITE_CODES (-1: not a site's node)
    src: np.ndarray  # [E] node index
    dst: np.ndarray  # [E] node index (a k/v edge: the first query head of its KV group)
    input: np.ndarray  # [E] index into INPUTS
    weight: np.ndarray  # [E] float32
    n_candidates: int  # valid (sender, receiver, position) cells, zero scores included


def node_table(
    layout: Layout, n_pos: int, sites: list[Site], active: dict[str, list[np.ndarray]]
) -> tuple[list[str], np.ndarray, dict]:
    """Node ids and their [type, layer, head, pos, feature, site] rows: every component at
    every position (less the MLPs transcoders replace), each site's active latents and error
    node at every position. ``active[hook][p]`` lists the latents active at ``p``. Returns
    (ids, rows, index of (kind, key, pos))."""
    ids: list[str] = []
    rows: list[tuple[int, ...]] = []
    index: dict = {}

    def add(key, node_id: str, t: str, layer: int, head: int, p: int, feature=-1, site=-1):
        index[key] = len(ids)
        ids.append(node_id)
        rows.append((TYPES.index(t), layer, head, p, feature, site))

    def add_site(s: Site) -> None:
        for p in range(n_pos):
            for i in active[s.hook][p].tolist():
                node = feature_id(s.layer, s.code, i, p)
                add(("f", s.hook, i, p), node, "feature", s.layer, -1, p, i, s.index)
            add(
                ("e", s.hook, p), error_id(s.layer, s.code, p), "error", s.layer, -1, p, -1, s.index
            )

    def add_components(layer: int, *, heads: bool, mlp: bool) -> None:
        for p in range(n_pos):
            for h in range(layout.n_heads if heads else 0):
                add(
                    ("s", layout.head_sender(layer, h), p),
                    f"L{layer}H{h}:P{p}",
                    "head",
                    layer,
                    h,
                    p,
                )
            if mlp:
                add(("s", layout.mlp_sender(layer), p), f"MLP{layer}:P{p}", "mlp", layer, -1, p)

    for p in range(n_pos):
        add(("s", 0, p), f"EMBED:P{p}", "embed", -1, -1, p)
    order = {"pre": 0, "attn": 1, "mid": 2, "tc": 3, "mlp": 4, "": 5}
    for layer in range(layout.n_layers):
        here = sorted((s for s in sites if s.layer == layer), key=lambda s: order[s.code])
        for s in here:
            if s.code == "pre":
                add_site(s)
        split = any(s.code in ("attn", "mid") for s in here)  # sites between heads and MLP
        mlp = not any(s.code == "tc" for s in here)  # a transcoder replaces the MLP
        add_components(layer, heads=True, mlp=mlp and not split)
        for s in here:
            if s.code in ("attn", "mid"):
                add_site(s)
        if split and mlp:
            add_components(layer, heads=False, mlp=True)
        for s in here:
            if s.code in ("tc", "mlp", ""):
                add_site(s)
    for p in range(n_pos):
        add(("logits", p), f"LOGITS:P{p}", "logits", layout.n_layers, -1, p)
    return ids, np.array(rows, dtype=np.int64).reshape(-1, 6), index


def feature_scores(layout: Layout, sites: SpliceSites, *, progress: bool = True) -> FeatureScores:
    """Every non-zero edge of the feature graph, position by position (see the module
    docstring)."""
    from tqdm.auto import tqdm

    diff, grads = sites.diff, sites.grads
    assert diff is not None and grads is not None
    n_pos = diff.shape[2]
    lat_c, lat_x = sites.latents["clean"], sites.latents["corrupted"]
    err_c, err_x = sites.errors["clean"], sites.errors["corrupted"]
    active = sites._active()
    ids, table, index = node_table(
        layout, n_pos, sites.sites, {h: [a.cpu().numpy() for a in v] for h, v in active.items()}
    )
    # components: which send into the residual stream, which into a branch site, which are gone
    branch_of: dict[int, Site] = {}
    gone_s: set[int] = set()
    gone_r: set[int] = set()
    for s in sites.sites:
        if s.code == "attn":
            for h in range(layout.n_heads):
                branch_of[layout.head_sender(s.layer, h)] = s
        elif s.code == "mlp":
            branch_of[layout.mlp_sender(s.layer)] = s
        elif s.code == "tc":
            gone_s.add(layout.mlp_sender(s.layer))
            gone_r.add(layout.receiver_slice(s.layer, "mlp").start)
    s_comp = np.array(
        [i for i in range(len(layout.senders)) if i not in gone_s and i not in branch_of]
    )
    r_comp = np.array([i for i in range(len(layout.receivers)) if i not in gone_r])
    s_stage, r_stage = sender_stage(layout)[s_comp], receiver_stage(layout)[r_comp]
    recv_dst = [layout.node_index[r.target] for r in layout.receivers]
    recv_input = np.array([INPUTS.index(r.input) for r in layout.receivers])
    cuts = np.sort([s.read_stage for s in sites.sites if s.kind == "resid"])
    F, E = INPUTS.index("feature"), INPUTS.index("error")
    srcs, dsts, inps, ws = [], [], [], []
    n_candidates = 0

    def site_senders(s: Site, p: int):
        feats = active[s.hook][p]
        dfeat = (lat_x[s.hook][:, p, feats] - lat_c[s.hook][:, p, feats]).T  # [F, batch]
        vecs = [dfeat[:, :, None] * sites.sae[s.hook].W_dec[feats][:, None]]
        vecs.append((err_x[s.hook][:, p] - err_c[s.hook][:, p])[None])
        node_ids = [index["f", s.hook, int(i), p] for i in feats] + [index["e", s.hook, p]]
        return vecs, node_ids

    def site_receivers(s: Site, p: int, total: torch.Tensor):
        """``total``: the gradient of the whole input the site takes over."""
        feats = active[s.hook][p]
        lat = sites.latent_receivers(s, p, feats)
        vecs = [lat, (total - lat.sum(0))[None]]
        node_ids = [index["f", s.hook, int(i), p] for i in feats] + [index["e", s.hook, p]]
        return vecs, node_ids, [F] * len(feats) + [E]

    def emit(S, R, send_ids, recv_ids, recv_codes, ok):
        nonlocal n_candidates
        block = torch.einsum("sbd,rbd->sr", torch.cat(S), torch.cat(R)).cpu().numpy()
        n_candidates += int(ok.sum())
        a, b = np.nonzero(ok & (block != 0))
        srcs.append(np.asarray(send_ids, dtype=np.int64)[a])
        dsts.append(np.asarray(recv_ids, dtype=np.int64)[b])
        inps.append(np.asarray(recv_codes, dtype=np.int64)[b])
        ws.append(block[a, b].astype(np.float32))

    for p in tqdm(range(n_pos), desc="feature edges", disable=not progress, leave=False):
        # the residual stream: components and every site's latents and error terms
        send, send_ids, send_st = (
            [diff[s_comp, :, p]],
            [index["s", int(i), p] for i in s_comp],
            [s_stage],
        )
        recv = [grads[r_comp, :, p]]
        recv_ids = [
            index["s", recv_dst[r], p] if r != layout.logits_receiver else index["logits", p]
            for r in r_comp
        ]
        recv_codes, recv_st = list(recv_input[r_comp]), [r_stage]
        for s in sites.sites:
            vecs, node_ids = site_senders(s, p)
            send += vecs
            send_ids += node_ids
            send_st.append(np.full(len(node_ids), s.write_stage))
            if s.kind == "branch":
                continue
            total = (
                grads[layout.receiver_slice(s.layer, "mlp").start, :, p]
                if s.kind == "transcoder"
                else sites.g_out[s.hook][:, p]
            )
            vecs, node_ids, codes = site_receivers(s, p, total)
            recv += vecs
            recv_ids += node_ids
            recv_codes += codes
            recv_st.append(np.full(len(node_ids), s.read_stage))
        su, sr = np.concatenate(send_st), np.concatenate(recv_st)
        S, R = torch.cat(send), torch.cat(recv)
        send_ids, recv_ids, recv_codes = map(np.asarray, (send_ids, recv_ids, recv_codes))
        # valid: the sender runs first and no resid site cuts the stream between them, i.e.
        # both lie in one segment between cuts (a site's own latents: the segment after it)
        seg_s, seg_r = np.searchsorted(cuts, su, "right"), np.searchsorted(cuts, sr, "left")
        for j in range(len(cuts) + 1):
            a, b = np.flatnonzero(seg_s == j), np.flatnonzero(seg_r == j)
            if len(a) and len(b):
                ok = su[a][:, None] < sr[b][None]
                emit([S[a]], [R[b]], send_ids[a], recv_ids[b], recv_codes[b], ok)
        # attn_out / mlp_out sites: their components write only into them
        for s in sites.sites:
            if s.kind != "branch":
                continue
            comps = [i for i, b in branch_of.items() if b is s]
            vecs, node_ids, codes = site_receivers(s, p, sites.g_out[s.hook][:, p])
            ids_in = [index["s", i, p] for i in comps]
            ok = np.ones((len(comps), len(node_ids)), dtype=bool)
            emit([diff[comps, :, p]], vecs, ids_in, node_ids, codes, ok)
    return FeatureScores(
        ids=ids,
        type=table[:, 0],
        layer=table[:, 1],
        head=table[:, 2],
        pos=table[:, 3],
        feature=table[:, 4],
        site=table[:, 5],
        src=np.concatenate(srcs).astype(np.int64),
        dst=np.concatenate(dsts).astype(np.int64),
        input=np.concatenate(inps).astype(np.int64),
        weight=np.concatenate(ws),
        n_candidates=n_candidates,
    )
