"""Path patching: a full sender map (every head → the name movers' queries) in circuitviz vs
one condition at a time, and TransformerLens's direct path patching, in one process.

Three measurements on the same model and IOI pairs:

* circuitviz ``path_patch(senders="heads", receivers=name movers, receiver_input="q")``;
* a hand-written loop over every sender with explicit hooks, the three runs of Wang et al.
  (cache clean/corrupted once; run 2 with every head and MLP frozen but the sender,
  recording the receivers' q; run 3 with only those replaced): the same map, one sender at a
  time. TransformerLens has no function for a *set* of receivers;
* ``transformer_lens.patching.get_act_patch_direct_path`` for one sender into every later
  head's q (it patches one edge per forward pass); its values at the name movers are compared
  with circuitviz's single-path values, and its time per edge with circuitviz's time per
  sender of the map.

The name movers are read off the data: the heads of the last third of the layers whose exact
activation patching (``patch(over="heads")``, not timed) raises the logit difference most.

    python benchmarks/path_patching.py                   # demo model, 1 IOI pair
    python benchmarks/path_patching.py --pairs 2 --receivers L27H4,L28H1
"""

from __future__ import annotations

import argparse
import json

import torch
from transformer_lens.patching import get_act_patch_direct_path

import circuitviz as cv
from circuitviz.engine import hooks

from _common import ForwardCounter, add_model_args, ioi_batch, machine, timed


def name_movers(model, pairs, k: int) -> list[str]:
    """The ``k`` heads of the last third of the layers whose denoising patch helps most."""
    heads = cv.patch(model, pairs, over="heads", progress=False)
    start = 2 * model.cfg.n_layers // 3
    gain = heads.values[start:] - heads.corrupted
    top = gain.flatten().argsort(descending=True)[:k].tolist()
    n = model.cfg.n_heads
    return [f"L{start + i // n}H{i % n}" for i in top]


def parse_head(head: str) -> tuple[int, int]:
    layer, h = head[1:].split("H")
    return int(layer), int(h)


def one_path(model, tokens, metric, clean, corr, sender, receivers) -> float:
    """Wang et al.'s runs 2 and 3 for one sender head into the receivers after it."""
    s_layer, s_head = sender
    sender_z = f"blocks.{s_layer}.attn.hook_z"

    def frozen(name):
        def fn(x, hook):
            out = corr[name].clone()
            if name == sender_z:
                out[:, :, s_head] = clean[name][:, :, s_head]
            return out

        return fn

    reached: dict[str, list[int]] = {}
    for layer, head in receivers:
        if layer > s_layer:
            reached.setdefault(f"blocks.{layer}.attn.hook_q", []).append(head)
    recorded = {}

    def record(name):
        def fn(x, hook):
            recorded[name] = x.clone()

        return fn

    def replace(name, heads):
        def fn(x, hook):
            x = x.clone()
            x[:, :, heads] = recorded[name][:, :, heads]
            return x

        return fn

    with torch.inference_mode():
        run2 = [(n, frozen(n)) for n in corr] + [(n, record(n)) for n in reached]
        with hooks(model, run2):
            model(tokens.corrupted)
        with hooks(model, [(n, replace(n, h)) for n, h in reached.items()]):
            return float(metric(model(tokens.corrupted)))


def reference_map(model, tokens, metric, receivers: list[tuple[int, int]]) -> torch.Tensor:
    """The sender map, one sender at a time, with explicit hooks (see the module docstring)."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    names += [f"blocks.{layer}.hook_mlp_out" for layer in range(n_layers)]
    with torch.inference_mode():
        _, clean = model.run_with_cache(tokens.clean, names_filter=lambda n: n in names)
        _, corr = model.run_with_cache(tokens.corrupted, names_filter=lambda n: n in names)
        unpatched = float(metric(model(tokens.corrupted)))
    values = torch.full((n_layers, n_heads), unpatched)
    clean = {n: clean[n] for n in names}
    corr = {n: corr[n] for n in names}
    last = max(layer for layer, _ in receivers)
    for s_layer in range(last):
        for s_head in range(n_heads):
            values[s_layer, s_head] = one_path(
                model, tokens, metric, clean, corr, (s_layer, s_head), receivers
            )
    return values


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)
    parser.add_argument("--pairs", type=int, default=1, help="IOI pairs in the batch")
    parser.add_argument("--receivers", default=None, help="e.g. L27H4,L28H1 (default: from data)")
    parser.add_argument("--n-receivers", type=int, default=3, help="name movers read off data")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-tl", action="store_true")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    model, pairs, tokens, metric = ioi_batch(args)

    receivers = (
        args.receivers.split(",") if args.receivers else name_movers(model, pairs, args.n_receivers)
    )
    heads = [parse_head(r) for r in receivers]
    with torch.inference_mode():  # warm up kernels and allocator for all
        model(tokens.clean)
    print(f"machine: {machine()}")
    print(
        f"model: {cv.engine._models.model_name(model)} on {model.cfg.device}; "
        f"{tokens.batch} IOI pair(s) of {tokens.n_pos} tokens; every head → {receivers} (q)"
    )

    with ForwardCounter(model) as count:
        t_ours, ours = timed(
            model,
            lambda: cv.path_patch(
                model, pairs, receivers=receivers, receiver_input="q", progress=False
            ),
        )
    n_senders = ours.values.numel() - len(ours.extra["no_path"])
    figures: dict = {
        "machine": machine(),
        "pairs": tokens.batch,
        "n_pos": tokens.n_pos,
        "receivers": receivers,
        "receiver_input": "q",
        "senders": n_senders,
        "circuitviz_s": t_ours,
        "circuitviz_forwards": count.n,
        "clean": ours.clean,
        "corrupted": ours.corrupted,
        "top_senders": ours.top(5),
    }
    print(f"circuitviz map      {t_ours:9.2f} s  {count.n:5d} forward passes ({n_senders} senders)")

    if not args.skip_reference:
        with ForwardCounter(model) as count:
            t_ref, ref = timed(model, lambda: reference_map(model, tokens, metric, heads))
        diff = float((ref - ours.values).abs().max())
        figures.update(
            reference_s=t_ref,
            reference_forwards=count.n,
            reference_max_abs_diff=diff,
            reference_ratio=t_ref / t_ours,
        )
        print(f"reference loop      {t_ref:9.2f} s  {count.n:5d} forward passes")
        print(f"ratio: {t_ref / t_ours:.1f}x   max |difference|: {diff:.2e}")

    if not args.skip_tl:
        # One sender into every later head's q: the best sender a few layers before the
        # first name mover keeps TransformerLens's sweep (one pass per edge) short.
        first = min(layer for layer, _ in heads)
        window = ours.values[max(0, first - 4) : first] - ours.corrupted
        i = int(window.abs().flatten().argmax())
        src = (max(0, first - 4) + i // model.cfg.n_heads, i % model.cfg.n_heads)

        def run_tl():
            names = [f"blocks.{src[0]}.attn.hook_z"]
            _, clean = model.run_with_cache(tokens.clean, names_filter=names)
            _, corr = model.run_with_cache(tokens.corrupted, names_filter=names)
            return get_act_patch_direct_path(
                model, tokens.corrupted, clean, corr, metric, *src, component="q", verbose=False
            )

        with ForwardCounter(model) as count, torch.inference_mode():
            t_tl, tl = timed(model, run_tl)
        n_edges = (model.cfg.n_layers - src[0] - 1) * model.cfg.n_heads
        single = [
            cv.path_patch(model, pairs, senders=[src], receivers=[h], progress=False)
            for h in heads
            if h[0] > src[0]
        ]
        diff_tl = max(abs(v - float(tl[h])) for v, h in zip(single, heads, strict=True))
        per_edge_tl = t_tl / n_edges
        per_sender_ours = t_ours / n_senders
        figures.update(
            tl_source=f"L{src[0]}H{src[1]}",
            tl_s=t_tl,
            tl_forwards=count.n,
            tl_edges=n_edges,
            tl_s_per_edge=per_edge_tl,
            circuitviz_s_per_sender=per_sender_ours,
            tl_per_edge_ratio=per_edge_tl / per_sender_ours,
            # TL's method for this map if it could patch a receiver set: a pass per sender.
            tl_method_map_estimate_s=per_edge_tl * n_senders,
            tl_max_abs_diff=diff_tl,
        )
        print(
            f"TransformerLens     {t_tl:9.2f} s  {count.n:5d} forward passes "
            f"(L{src[0]}H{src[1]} → {n_edges} later heads' q, one edge per pass)"
        )
        print(
            f"per edge: TL {per_edge_tl:.3f} s, circuitviz map {per_sender_ours:.4f} s per "
            f"sender → {per_edge_tl / per_sender_ours:.1f}x; max |difference| at the name "
            f"movers: {diff_tl:.2e}"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
