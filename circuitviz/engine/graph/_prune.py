"""Keeping only edges on some path from the embeddings to the logits.

Inside a head, information moves across positions: its output at position ``p`` reads its q
input at ``p`` and its k/v inputs at every position ``s ≤ p``. Everything else stays at its
position. Without per-position nodes there is one position and these rules reduce to plain
graph reachability.

A head's node at position ``s`` is on a path when its output at ``s`` is, or when its k/v
input at ``s`` is: a path may enter the head at ``s`` and leave it at a later position, and
the node is kept so that the kept edge into that k/v input has a node to point at.
"""

from __future__ import annotations

import torch

from ._layout import Layout


def _cummax(x: torch.Tensor, reverse: bool = False) -> torch.Tensor:
    """Running OR along positions (the last axis); ``reverse`` runs from the end."""
    if reverse:
        return x.flip(-1).cummax(-1).values.flip(-1)
    return x.cummax(-1).values


def on_paths(layout: Layout, edges: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges ``[sender, receiver, pos]`` (bool) -> (edges on an EMBED→LOGITS path, nodes on
    such a path ``[node, pos]``, node order ``layout.nodes``)."""
    edges = edges & layout.valid[:, :, None]
    n_send, n_pos = edges.shape[0], edges.shape[2]
    fwd = torch.zeros(n_send + 1, n_pos, dtype=torch.bool)
    fwd[0] = True
    fed = torch.zeros(edges.shape[1], n_pos, dtype=torch.bool)

    def feed(rs: slice) -> None:
        fed[rs] = (edges[:, rs] & fwd[:n_send, None]).any(0)

    G = layout.group
    kv_fed = []  # per layer, [head, pos]: the k or v input its KV head reads there is fed
    for layer in range(layout.n_layers):
        feed(layout.receiver_slice(layer, "attn"))
        q, k, v = (layout.receiver_slice(layer, x) for x in "qkv")
        kv_fed.append((fed[k] | fed[v]).repeat_interleave(G, dim=0))
        h0 = layout.head_sender(layer)
        fwd[h0 : h0 + layout.n_heads] = fed[q] | _cummax(kv_fed[-1])
        feed(layout.receiver_slice(layer, "mlp"))
        fwd[layout.mlp_sender(layer)] = fed[layout.receiver_slice(layer, "mlp")][0]
    last = layout.logits_receiver
    feed(slice(last, last + 1))
    fwd[n_send] = fed[last]

    bwd = torch.zeros_like(fwd)
    bwd[n_send] = True
    useful = torch.zeros_like(fed)
    useful[last] = True

    def reaches(s: int) -> torch.Tensor:
        return (edges[s] & useful).any(0)

    for layer in reversed(range(layout.n_layers)):
        m = layout.mlp_sender(layer)
        bwd[m] = reaches(m)
        useful[layout.receiver_slice(layer, "mlp")] = bwd[m]
        h0 = layout.head_sender(layer)
        heads = torch.stack([reaches(h0 + h) for h in range(layout.n_heads)])
        bwd[h0 : h0 + layout.n_heads] = heads
        useful[layout.receiver_slice(layer, "q")] = heads
        group = _cummax(heads, reverse=True).reshape(layout.n_kv_heads, G, n_pos).any(1)
        useful[layout.receiver_slice(layer, "k")] = group
        useful[layout.receiver_slice(layer, "v")] = group
    bwd[0] = reaches(0)

    nodes = fwd & bwd
    for layer in range(layout.n_layers):
        h0 = layout.head_sender(layer)
        heads = slice(h0, h0 + layout.n_heads)
        # fed k/v at s reaches every later output, so a used later output closes the path
        nodes[heads] |= kv_fed[layer] & _cummax(bwd[heads], reverse=True)
    kept = edges & fwd[:n_send, None] & useful[None]
    return kept, nodes
