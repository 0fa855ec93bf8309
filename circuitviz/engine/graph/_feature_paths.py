"""The path rule of a feature graph (sparse edges, per position), as ``_select.Candidates``, so
that ``_select.select`` prunes it with the same words as every other graph.

The graph is a DAG in forward order. Heads move information across positions: an edge into a
k/v input at position ``s`` reaches the head's outputs at every ``q ≥ s``, so each (layer, KV
head, position) has an internal *k/v input* node linked to the outputs of its query heads at
``q ≥ s``; q, MLP, feature, error and logits edges stay at their position. A head node at
``s`` is on a path when its output there is, or when its k/v input at ``s`` is and one of its
outputs at ``q ≥ s`` is (as in ``_prune.on_paths``). Reachability runs stage by stage (one
vectorised step per stage), so one call costs O(edges + links).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._feature_eap import INPUTS, TYPES
from ._select import EDGE_INPUTS, Candidates

_KV = (INPUTS.index("k"), INPUTS.index("v"))


#: A site's latents and error node, per layer (``SITE_CODES`` order): resid_pre before the
#: k/v inputs, attn_out after the heads, resid_mid, a transcoder where the MLP is, mlp_out
#: after it, resid_post last.
_SITE_STAGE = np.array([10, 1, 6, 5, 9, 8])
_PER_LAYER = 16


def _stage(types: np.ndarray, layer: np.ndarray, site: np.ndarray, n_layers: int) -> np.ndarray:
    """A node's place in forward order: embed 0; per layer kv input 16L+2, head 16L+4, MLP
    16L+8, SAE sites around them (``_SITE_STAGE``); logits last."""
    out = np.zeros(len(types), dtype=np.int64)
    for name, off in (("head", 4), ("mlp", 8)):
        sel = types == TYPES.index(name)
        out[sel] = _PER_LAYER * layer[sel] + off
    sel = np.isin(types, [TYPES.index("feature"), TYPES.index("error")])
    out[sel] = _PER_LAYER * layer[sel] + _SITE_STAGE[site[sel]]
    out[types == TYPES.index("logits")] = _PER_LAYER * n_layers + 2
    return out


def feature_candidates(graph: Any) -> Candidates:
    """Candidates over a FeatureGraph's kept edges between its listed nodes."""
    listed_nodes = np.flatnonzero(graph.node_mask)
    n = len(listed_nodes)
    new = np.full(len(graph.ids), -1, dtype=np.int64)
    new[listed_nodes] = np.arange(n)
    e = graph._listed()
    types = graph.type[listed_nodes]
    layer = graph.layer[listed_nodes]
    head = graph.head[listed_nodes]
    pos = graph.pos[listed_nodes]
    src = new[graph.src[e]]
    kv_t = graph._kv_targets()[e]
    kv_t = np.where(kv_t >= 0, new[np.maximum(kv_t, 0)], -1)
    is_kv = np.isin(graph.input[e], _KV)
    dst = new[graph.dst[e]]
    # a k/v edge whose first head is not listed points at the first listed head of its group
    first = np.where(kv_t >= 0, kv_t, np.iinfo(np.int64).max).min(1)
    dst = np.where(is_kv & (dst < 0), first, dst)
    group = graph.n_heads // graph.n_kv_heads

    # internal k/v input nodes: one per (layer, KV head, position) that some listed edge enters
    kv_key = np.stack([layer[dst], head[dst] // group, pos[dst]], 1)[is_kv]
    keys, kv_of = (
        np.unique(kv_key, axis=0, return_inverse=True)
        if len(kv_key)
        else (np.zeros((0, 3), int), np.zeros(0, int))
    )
    dag_dst = dst.copy()
    dag_dst[is_kv] = n + kv_of.ravel()
    # links: k/v input (L, g, s) -> head output (L, h, q) for h in group g, q ≥ s
    is_head = types == TYPES.index("head")
    hi = np.flatnonzero(is_head)
    link_src, link_dst = [], []
    if len(keys):
        by = {}
        for i in hi.tolist():
            by.setdefault((int(layer[i]), int(head[i]) // group), []).append(i)
        for k, (L, g, s) in enumerate(keys.tolist()):
            outs = [i for i in by.get((L, g), []) if pos[i] >= s]
            link_src += [n + k] * len(outs)
            link_dst += outs
    link_src = np.array(link_src, dtype=np.int64)
    link_dst = np.array(link_dst, dtype=np.int64)
    site = graph.site[listed_nodes]
    stage = np.concatenate(
        [_stage(types, layer, site, graph.n_layers), _PER_LAYER * keys[:, 0] + 2]
    )
    total = n + len(keys)
    is_in = np.zeros(total, dtype=bool)
    is_in[:n] = types == TYPES.index("embed")
    is_out = np.zeros(total, dtype=bool)
    is_out[:n] = types == TYPES.index("logits")

    # edges and links grouped by the stage of their head (forward) and tail (backward)
    fwd_order = np.argsort(stage[dag_dst], kind="stable")
    bwd_order = np.argsort(-stage[src], kind="stable")
    stages = np.unique(stage)

    def runs(keys_: np.ndarray) -> dict[int, tuple[int, int]]:
        """value -> (start, stop) of its run in a sorted (either way) array."""
        starts = np.concatenate([[0], np.flatnonzero(np.diff(keys_)) + 1]).astype(int)
        ends = [*starts[1:], len(keys_)]
        return {int(keys_[a]): (int(a), int(b)) for a, b in zip(starts, ends, strict=True)}

    fwd_runs = runs(stage[dag_dst][fwd_order])
    bwd_runs = runs(stage[src][bwd_order])
    link_stage = stage[link_dst] if len(link_dst) else np.zeros(0, int)

    head_at = _head_index(layer, head, pos, is_head)

    def paths(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        fwd = is_in.copy()
        m_f = mask[fwd_order]
        s_f, d_f = src[fwd_order], dag_dst[fwd_order]
        for st in stages.tolist():
            if st in fwd_runs:
                a, b = fwd_runs[st]
                sel = m_f[a:b] & fwd[s_f[a:b]]
                fwd[d_f[a:b][sel]] = True
            if len(link_src):
                ls = link_stage == st
                if ls.any():
                    fwd[link_dst[ls][fwd[link_src[ls]]]] = True
        bwd = is_out.copy()
        m_b = mask[bwd_order]
        s_b, d_b = src[bwd_order], dag_dst[bwd_order]
        for st in stages[::-1].tolist():
            if st in bwd_runs:
                a, b = bwd_runs[st]
                sel = m_b[a:b] & bwd[d_b[a:b]]
                bwd[s_b[a:b][sel]] = True
            if len(link_src) and st % _PER_LAYER == 2:  # k/v inputs of this layer
                ls = stage[link_src] == st
                bwd[link_src[ls][bwd[link_dst[ls]]]] = True
        on_edges = mask & fwd[src] & bwd[dag_dst]
        nodes = (fwd & bwd)[:n]
        if len(link_src):  # a head at s whose k/v input there feeds a used later output
            used = fwd[link_src] & bwd[link_dst]
            at = link_src[used] - n
            heads = link_dst[used]
            key = zip(
                layer[heads].tolist(), head[heads].tolist(), keys[at, 2].tolist(), strict=True
            )
            found = [head_at.get(k, -1) for k in key]  # the head at the k/v input's position
            nodes[[i for i in found if i >= 0]] = True
        nodes[src[on_edges]] = True
        return on_edges, nodes

    def between(allowed: np.ndarray) -> np.ndarray:
        into = allowed[np.maximum(dst, 0)] & (dst >= 0)
        if is_kv.any():
            any_kv = ((kv_t >= 0) & allowed[np.maximum(kv_t, 0)]).any(1)
            into = np.where(is_kv, any_kv, into)
        return allowed[src] & into

    def drawn_targets(idx: np.ndarray, on: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        rows, nodes = [], []
        for r, j in enumerate(idx.tolist()):
            if is_kv[j]:
                ts = [t for t in kv_t[j].tolist() if t >= 0 and on[t]] or [int(dst[j])]
            else:
                ts = [int(dst[j])]
            rows += [r] * len(ts)
            nodes += ts
        return np.array(rows, dtype=np.int64), np.array(nodes, dtype=np.int64)

    # units for pins' widest-path search: each node alone, except that a GQA group of heads is
    # one unit across positions (a k/v input at s feeds its outputs at later positions)
    unit = np.arange(n)
    if len(hi):
        _, head_unit = np.unique(
            np.stack([layer[hi], head[hi] // group], 1), axis=0, return_inverse=True
        )
        unit[hi] = n + head_unit.ravel()
    ranked = ~np.isin(types, [TYPES.index("embed"), TYPES.index("logits")])
    return Candidates(
        weight=graph.weight[e].astype(np.float64),
        input=np.array([EDGE_INPUTS.index(INPUTS[i]) for i in graph.input[e]], dtype=np.int64),
        inputs=list(EDGE_INPUTS),
        src=src,
        dst=dst,
        node_ids=[graph.ids[i] for i in listed_nodes],
        node_score=graph.node_scores[listed_nodes].astype(np.float64),
        ranked=ranked,
        io=(types == TYPES.index("embed")) + 2 * (types == TYPES.index("logits")),
        node_unit=unit,
        src_unit=unit[src],
        dst_unit=unit[np.maximum(dst, 0)],
        paths=paths,
        between=between,
        drawn_targets=drawn_targets,
    )


def _head_index(layer, head, pos, is_head) -> dict[tuple[int, int, int], int]:
    hi = np.flatnonzero(is_head)
    return {
        (int(a), int(b), int(c)): int(i)
        for a, b, c, i in zip(layer[hi], head[hi], pos[hi], hi, strict=True)
    }
