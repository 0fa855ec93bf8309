"""Exact activation patching and attribution patching: TransformerLens vs circuitviz.

Runs TransformerLens's own ``transformer_lens.patching`` function and circuitviz on the same
model and inputs, in one process, and prints both times, the ratio, the max difference and
the number of forward passes each made.

    python benchmarks/patching.py                 # demo model, one IOI pair, all heads
    python benchmarks/patching.py --over resid_pre --pairs 4
    python benchmarks/patching.py --device cuda
"""

from __future__ import annotations

import argparse
import json

import torch
from scipy.stats import spearmanr
from transformer_lens import patching as tlp

import circuitviz as cv

from _common import ForwardCounter, add_model_args, ioi_batch, machine, timed

TL_FUNCTIONS = {
    "heads": tlp.get_act_patch_attn_head_out_all_pos,
    "resid_pre": tlp.get_act_patch_resid_pre,
    "attn_out": tlp.get_act_patch_attn_out,
    "mlp_out": tlp.get_act_patch_mlp_out,
    "heads_by_pos": tlp.get_act_patch_attn_head_out_by_pos,
}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)
    parser.add_argument("--over", default="heads", choices=sorted(TL_FUNCTIONS))
    parser.add_argument("--pairs", type=int, default=1, help="IOI pairs in the batch")
    parser.add_argument("--skip-tl", action="store_true", help="time circuitviz only")
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    model, pairs, tokens, tl_metric = ioi_batch(args)

    with torch.inference_mode():  # warm up kernels and allocator for both
        model(tokens.clean)
    print(f"machine: {machine()}")
    print(
        f"model: {cv.engine._models.model_name(model)} on {model.cfg.device}; "
        f"{tokens.batch} IOI pair(s) of {tokens.n_pos} tokens; map over={args.over!r}"
    )

    with ForwardCounter(model) as count:
        t_ours, ours = timed(model, lambda: cv.patch(model, pairs, over=args.over, progress=False))
    n_ours = count.n
    with ForwardCounter(model) as count:
        t_attr, attr = timed(model, lambda: cv.attribution_patch(model, pairs, over=args.over))
    n_attr = count.n
    figures = {
        "machine": machine(),
        "over": args.over,
        "pairs": tokens.batch,
        "n_pos": tokens.n_pos,
        "circuitviz_s": t_ours,
        "circuitviz_forwards": n_ours,
        "attribution_s": t_attr,
        "attribution_forwards": n_attr,
    }
    rho = spearmanr(attr.values.flatten(), ours.values.flatten()).correlation
    figures["attribution_spearman"] = float(rho)

    if not args.skip_tl:

        def run_tl():
            _, cache = model.run_with_cache(tokens.clean)
            return TL_FUNCTIONS[args.over](model, tokens.corrupted, cache, tl_metric)

        with ForwardCounter(model) as count, torch.inference_mode():
            t_tl, ref = timed(model, run_tl)
        diff = float((ref.cpu() - ours.values).abs().max())
        figures.update(
            transformer_lens_s=t_tl,
            transformer_lens_forwards=count.n,
            max_abs_diff=diff,
            ratio=t_tl / t_ours,
            attribution_ratio=t_tl / t_attr,
        )
        print(f"TransformerLens  {t_tl:9.2f} s  {count.n:5d} forward passes")
    print(f"circuitviz exact {t_ours:9.2f} s  {n_ours:5d} forward passes")
    print(f"attribution      {t_attr:9.3f} s  {n_attr:5d} forward passes (+1 backward)")
    if not args.skip_tl:
        print(
            f"ratio exact: {figures['ratio']:.1f}x   max |difference|: {figures['max_abs_diff']:.2e}"
        )
        print(f"ratio attribution: {figures['attribution_ratio']:.1f}x")
    print(f"attribution vs exact Spearman: {rho:.3f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
