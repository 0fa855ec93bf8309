"""Exact activation patching: circuitviz vs TransformerLens and nnsight, one process.

Runs, on the same model weights and the same IOI prompts:
- circuitviz ``patch`` (and ``attribution_patch``);
- TransformerLens's own ``transformer_lens.patching`` function for the map;
- nnsight on a plain Hugging Face copy of the model, as a loop (one trace per condition)
  and as a batched trace (every condition a group of rows of one batch);
and prints each time, the ratios peer / circuitviz, the max |difference| of each map from
circuitviz's, and the forward passes.

    python benchmarks/patching.py                       # demo model, 1 IOI pair, all heads
    python benchmarks/patching.py --pairs 8 --loop-subset 30
    python benchmarks/patching.py --device cuda --model llama-1b   # random weights
    python benchmarks/patching.py --model llama-tiny --pairs 2     # CPU smoke test

``--loop-subset N`` / ``--tl-subset N`` run the nnsight loop / TransformerLens (its own
``generic_activation_patch`` with an ``index_df``) on N cells spread over the map and
extrapolate the time to the whole map (reported as such); the difference is over those N.
Times are wall-clock and process CPU seconds (on a loaded CPU, the CPU ratios are the work).
"""

from __future__ import annotations

import argparse
import json

import pandas as pd
import torch
from scipy.stats import spearmanr
from transformer_lens import patching as tlp

import circuitviz as cv

from _common import (
    ForwardCounter,
    add_model_args,
    cpu_timed,
    ioi_batch,
    load_with_peer,
    machine,
)

TL_FUNCTIONS = {
    "heads": tlp.get_act_patch_attn_head_out_all_pos,
    "resid_pre": tlp.get_act_patch_resid_pre,
    "attn_out": tlp.get_act_patch_attn_out,
    "mlp_out": tlp.get_act_patch_mlp_out,
    "heads_by_pos": tlp.get_act_patch_attn_head_out_by_pos,
}
PEERS = ("tl", "nnsight-loop", "nnsight-batched")


def cells(shape) -> list[tuple[int, ...]]:
    """Every cell of a map, in row-major order: the conditions each peer patches."""
    grid = torch.cartesian_prod(*[torch.arange(n) for n in shape]).reshape(-1, len(shape))
    return [tuple(int(i) for i in c) for c in grid.tolist()]


def spread(n: int, k: int) -> list[int]:
    """``k`` indices spread evenly over ``range(n)`` (all of them when ``k <= 0``)."""
    if k <= 0 or k >= n:
        return list(range(n))
    return torch.linspace(0, n - 1, k).round().long().unique().tolist()


def run_nnsight(args, model, peer, tokens, ours, forms: set[str]) -> dict:
    """The nnsight ``forms`` on the map's conditions; times and max |diff| from ``ours``.
    (``model``, the bridge, is on the peer's device: ``cpu_timed`` synchronises on it.)"""
    conds = cells(ours.values.shape)
    b = tokens.batch

    def metric(logits: torch.Tensor) -> torch.Tensor:
        k = logits.shape[0] // b
        rows = torch.arange(logits.shape[0], device=logits.device)
        return logits[rows, tokens.answers.repeat(k)] - logits[rows, tokens.wrong_answers.repeat(k)]

    flat = ours.values.flatten()
    out: dict = {}
    with torch.inference_mode():
        peer.source(tokens.clean)  # warm-up
        if "nnsight-batched" in forms:

            def batched():
                src = peer.source(tokens.clean)
                return peer.batched(tokens.corrupted, src, conds, metric, max_rows=args.peer_rows)

            t, cpu, values = cpu_timed(model, batched)
            out.update(
                nnsight_batched_s=t,
                nnsight_batched_cpu_s=cpu,
                nnsight_batched_max_abs_diff=float((values - flat).abs().max()),
                nnsight_batched_rows_per_trace=min(len(conds), max(1, args.peer_rows // b)) * b,
            )
        if "nnsight-loop" in forms:
            pick = spread(len(conds), args.loop_subset)
            sub = [conds[i] for i in pick]

            def loop():
                src = peer.source(tokens.clean)
                return peer.loop(tokens.corrupted, src, sub, metric)

            t, cpu, values = cpu_timed(model, loop)
            out.update(
                nnsight_loop_conditions_run=len(sub),
                nnsight_loop_s_measured=t,
                nnsight_loop_s=t * len(conds) / len(sub),
                nnsight_loop_cpu_s=cpu * len(conds) / len(sub),
                nnsight_loop_extrapolated=len(sub) < len(conds),
                nnsight_loop_max_abs_diff=float((values - flat[pick]).abs().max()),
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)
    parser.add_argument("--over", default="heads", choices=sorted(TL_FUNCTIONS))
    parser.add_argument("--pairs", type=int, default=1, help="IOI pairs in the batch")
    parser.add_argument(
        "--peers",
        default=",".join(PEERS),
        help=f"comma-separated peers to run, of {PEERS} (empty: circuitviz only)",
    )
    parser.add_argument("--loop-subset", type=int, default=0, help="nnsight loop on N conditions")
    parser.add_argument(
        "--tl-subset", type=int, default=0, help="TransformerLens on N cells, extrapolated"
    )
    parser.add_argument("--peer-rows", type=int, default=1024, help="rows per nnsight batch")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="time circuitviz and the nnsight batched trace this many times, interleaved "
        "(the ratio uses each one's fastest run; the slow peers run once)",
    )
    parser.add_argument("--skip-tl", action="store_true", help="same as leaving 'tl' out")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()
    args.peers = {p for p in args.peers.split(",") if p} - ({"tl"} if args.skip_tl else set())
    unknown = args.peers - set(PEERS)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; use {PEERS}")

    want_nnsight = bool(args.peers & {"nnsight-loop", "nnsight-batched"})
    model, hf_peer = load_with_peer(args, peer=want_nnsight)
    model, pairs, tokens, tl_metric = ioi_batch(args, model)

    with torch.inference_mode():  # warm up kernels and allocator for both
        model(tokens.clean)
    print(f"machine: {machine()}")
    print(
        f"model: {cv.engine._models.model_name(model)} on {model.cfg.device}; "
        f"{tokens.batch} IOI pair(s) of {tokens.n_pos} tokens; map over={args.over!r}"
    )

    with ForwardCounter(model) as count:
        t_ours, cpu_ours, ours = cpu_timed(
            model, lambda: cv.patch(model, pairs, over=args.over, progress=False)
        )
    n_ours = count.n
    with ForwardCounter(model) as count:
        t_attr, _, attr = cpu_timed(
            model, lambda: cv.attribution_patch(model, pairs, over=args.over)
        )
    n_attr = count.n
    figures = {
        "machine": machine(),
        "model": cv.engine._models.model_name(model),
        "device": str(model.cfg.device),
        "over": args.over,
        "pairs": tokens.batch,
        "n_pos": tokens.n_pos,
        "circuitviz_s": t_ours,
        "circuitviz_cpu_s": cpu_ours,
        "circuitviz_forwards": n_ours,
        "circuitviz_prompts_per_pass": ours.extra.get("prompts_per_pass"),
        "attribution_s": t_attr,
        "attribution_forwards": n_attr,
        "attribution_spearman": float(
            spearmanr(attr.values.flatten(), ours.values.flatten()).correlation
        ),
    }
    print(f"circuitviz exact {t_ours:9.2f} s  {n_ours:5d} forward passes")
    print(f"attribution      {t_attr:9.3f} s  {n_attr:5d} forward passes (+1 backward)")

    if "tl" in args.peers:
        conds = cells(ours.values.shape)
        pick = spread(len(conds), args.tl_subset)
        tl_fn = TL_FUNCTIONS[args.over]

        def run_tl():
            _, cache = model.run_with_cache(tokens.clean)
            if len(pick) == len(conds):
                return tl_fn(model, tokens.corrupted, cache, tl_metric).flatten()
            # TransformerLens's own generic function on a subset of the same cells.
            index_df = pd.DataFrame(
                [conds[i] for i in pick], columns=list(tl_fn.keywords["index_axis_names"])
            )
            return tlp.generic_activation_patch(
                model,
                tokens.corrupted,
                cache,
                tl_metric,
                patch_setter=tl_fn.keywords["patch_setter"],
                activation_name=tl_fn.keywords["activation_name"],
                index_df=index_df,
            )

        with ForwardCounter(model) as count, torch.inference_mode():
            t_tl, cpu_tl, ref = cpu_timed(model, run_tl)
        scale = len(conds) / len(pick)  # extrapolate a subset to the whole map
        figures.update(
            transformer_lens_conditions_run=len(pick),
            transformer_lens_extrapolated=len(pick) < len(conds),
            transformer_lens_s_measured=t_tl,
            transformer_lens_s=t_tl * scale,
            transformer_lens_cpu_s=cpu_tl * scale,
            transformer_lens_forwards=count.n,
            max_abs_diff=float((ref.cpu() - ours.values.flatten()[pick]).abs().max()),
            attribution_ratio=t_tl * scale / t_attr,
        )
        t_tl = figures["transformer_lens_s"]
        note = f" (extrapolated from {len(pick)} cells)" if len(pick) < len(conds) else ""
        print(
            f"TransformerLens  {t_tl:9.2f} s  {count.n:5d} forward passes{note}   "
            f"max |diff| {figures['max_abs_diff']:.2e}"
        )
    if want_nnsight:
        from _nnsight_peer import NnsightPeer

        peer = NnsightPeer(hf_peer, over=args.over)
        figures.update(run_nnsight(args, model, peer, tokens, ours, args.peers))
        if args.repeat > 1 and "nnsight-batched" in args.peers:
            cv_runs, nn_runs = [t_ours], [figures["nnsight_batched_s"]]
            cv_cpu, nn_cpu = [cpu_ours], [figures["nnsight_batched_cpu_s"]]
            for _ in range(args.repeat - 1):
                t, cpu, _ = cpu_timed(
                    model, lambda: cv.patch(model, pairs, over=args.over, progress=False)
                )
                cv_runs.append(t)
                cv_cpu.append(cpu)
                more = run_nnsight(args, model, peer, tokens, ours, {"nnsight-batched"})
                nn_runs.append(more["nnsight_batched_s"])
                nn_cpu.append(more["nnsight_batched_cpu_s"])
            figures.update(circuitviz_s_runs=cv_runs, nnsight_batched_s_runs=nn_runs)
            figures.update(circuitviz_cpu_s_runs=cv_cpu, nnsight_batched_cpu_s_runs=nn_cpu)
            figures["nnsight_batched_s"] = min(nn_runs)
            figures["nnsight_batched_cpu_s"] = min(nn_cpu)
            t_ours = figures["circuitviz_s"] = min(cv_runs)
            cpu_ours = figures["circuitviz_cpu_s"] = min(cv_cpu)
            print(f"circuitviz runs      {[round(t, 2) for t in cv_runs]}")
            print(f"nnsight batched runs {[round(t, 2) for t in nn_runs]}")
        if "nnsight_batched_s" in figures:
            figures["nnsight_batched_ratio"] = figures["nnsight_batched_s"] / t_ours
            print(
                f"nnsight batched  {figures['nnsight_batched_s']:9.2f} s  "
                f"nnsight-batched/cv {figures['nnsight_batched_ratio']:.2f}x  "
                f"max |diff| {figures['nnsight_batched_max_abs_diff']:.2e}"
            )
        if "nnsight_loop_s" in figures:
            figures["nnsight_loop_ratio"] = figures["nnsight_loop_s"] / t_ours
            note = (
                f" (extrapolated from {figures['nnsight_loop_conditions_run']} conditions, "
                f"{figures['nnsight_loop_s_measured']:.2f} s measured)"
                if figures["nnsight_loop_extrapolated"]
                else ""
            )
            print(
                f"nnsight loop     {figures['nnsight_loop_s']:9.2f} s  "
                f"nnsight-loop/cv {figures['nnsight_loop_ratio']:.2f}x  "
                f"max |diff| {figures['nnsight_loop_max_abs_diff']:.2e}{note}"
            )
    if "transformer_lens_s" in figures:  # against the fastest circuitviz run
        figures["ratio"] = figures["transformer_lens_s"] / t_ours
        print(f"TL/cv {figures['ratio']:.2f}x (circuitviz {t_ours:.2f} s)")
    # The same ratios in CPU seconds: what the loaded machine's wall clock hides.
    for peer_key, name in (
        ("transformer_lens_cpu_s", "TL"),
        ("nnsight_batched_cpu_s", "nnsight-batched"),
        ("nnsight_loop_cpu_s", "nnsight-loop"),
    ):
        if peer_key in figures:
            figures[peer_key[:-2] + "_ratio"] = figures[peer_key] / cpu_ours
            print(
                f"CPU seconds: {name} {figures[peer_key]:.2f} / circuitviz {cpu_ours:.2f} = "
                f"{figures[peer_key] / cpu_ours:.2f}x"
            )
    print(f"attribution vs exact Spearman: {figures['attribution_spearman']:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
