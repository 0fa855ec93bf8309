"""Refusal directions on the demo model: refusal rate and refusal score on the held-out
instruction sets, before and after directional ablation and activation addition.

    python benchmarks/refusal.py [--device cpu|cuda] [--tokens 8] [--coefs 1 4 8] [--limit N]
        [--json benchmarks/results/cpu2_refusal.json]

The direction is computed on the shipped train split (best layer by separation); each
intervention is run on the held-out harmful and harmless prompts together, reusing one
unsteered generation. Rates and mean scores are reported per set.
"""

from __future__ import annotations

import argparse
import json
import time

import circuitviz
from circuitviz.engine import Generation

from _common import add_model_args, load, machine


def split(gen: Generation, n_harmful: int) -> dict[str, dict[str, float | None]]:
    """Refusal rate and mean refusal score of the harmful and the harmless prompts."""
    out = {}
    for name, part in (("harmful", slice(0, n_harmful)), ("harmless", slice(n_harmful, None))):
        sub = Generation(gen.continuations[part], gen.refused[part], gen.scores[part])
        out[name] = {"refusal_rate": sub.refusal_rate, "mean_score": sub.mean_score}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)
    parser.add_argument("--tokens", type=int, default=8, help="greedy tokens per prompt")
    parser.add_argument("--coefs", type=float, nargs="*", default=[1.0, 4.0])
    parser.add_argument("--limit", type=int, default=None, help="held-out prompts per set")
    parser.add_argument("--json", default=None, help="write the figures here")
    args = parser.parse_args()
    model = load(args)
    train, test = circuitviz.refusal_instructions("train"), circuitviz.refusal_instructions("test")
    start = time.perf_counter()
    direction = circuitviz.refusal_direction(model, train["harmful"], train["harmless"])
    figures = {"machine": machine(), "direction": direction.to_dict(), "tokens": args.tokens}
    figures["seconds_direction"] = time.perf_counter() - start
    harmful, harmless = test["harmful"][: args.limit], test["harmless"][: args.limit]
    prompts = harmful + harmless
    before = None
    for mode, coef in [("ablate", 0.0)] + [("add", c) for c in args.coefs]:
        start = time.perf_counter()
        res = circuitviz.steer_refusal(
            model, prompts, direction, mode=mode, coef=coef, max_new_tokens=args.tokens,
            before=before,
        )  # fmt: skip
        if before is None:
            before = res.before
            figures["before"] = {**split(before, len(harmful)), **before.to_dict()}
        key = "ablate" if mode == "ablate" else f"add {coef:g}"
        figures[key] = {**split(res.after, len(harmful)), **res.after.to_dict()}
        figures[key]["seconds"] = time.perf_counter() - start
        print(f"{key:>8}: {split(res.after, len(harmful))}", flush=True)
    print(f"  before: {split(before, len(harmful))}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
