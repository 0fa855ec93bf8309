"""A batch of prompts in one growing pass vs one pass per prompt, in one process.

Times ``patch`` of this checkout against ``patch`` of an older circuitviz package directory
(``--before``, e.g. a worktree of the commit before prompt batching), on the same model
object and the same IOI pairs, interleaved ``--repeat`` times; prints both times, their
ratio and the max |difference| of the maps.

    mkdir -p /tmp/before && git archive 7609376 circuitviz | tar -x -C /tmp/before
    python benchmarks/batching.py --before /tmp/before/circuitviz --pairs 1 8
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
from functools import partial
from pathlib import Path

import circuitviz as cv

from _common import add_model_args, cpu_timed, load, machine


def load_package(path: str, alias: str = "circuitviz_before"):
    """Import the circuitviz package at ``path`` under another name (its imports of itself
    are relative, so the two copies stay apart)."""
    init = Path(path) / "__init__.py"
    spec = importlib.util.spec_from_file_location(
        alias, init, submodule_search_locations=[str(Path(path))]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[alias] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)
    parser.add_argument("--before", required=True, help="an older circuitviz package directory")
    parser.add_argument("--over", default="heads")
    parser.add_argument("--pairs", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    before = load_package(args.before)
    model = load(args)
    print(f"machine: {machine()}")
    rows = []
    for n in args.pairs:
        pairs = cv.tasks.ioi(model, n=n, seed=0)
        old_pairs = before.PromptPairs(
            pairs.clean, pairs.corrupted, pairs.answers, pairs.wrong_answers
        )
        cv.patch(model, pairs, over=args.over, progress=False)  # warm-up
        for rep in range(args.repeat):
            t_old, cpu_old, old = cpu_timed(
                model, partial(before.patch, model, old_pairs, over=args.over, progress=False)
            )
            t_new, cpu_new, new = cpu_timed(
                model, partial(cv.patch, model, pairs, over=args.over, progress=False)
            )
            row = {
                "pairs": n,
                "repeat": rep,
                "before_s": t_old,
                "after_s": t_new,
                "before_forwards": old.extra["forward_passes"],
                "after_forwards": new.extra["forward_passes"],
                "after_prompts_per_pass": new.extra.get("prompts_per_pass"),
                "before_over_after": t_old / t_new,
                "before_cpu_s": cpu_old,
                "after_cpu_s": cpu_new,
                "before_over_after_cpu": cpu_old / cpu_new,
                "max_abs_diff": float((old.values - new.values).abs().max()),
            }
            rows.append(row)
            print(
                f"{n} pair(s), run {rep}: before {t_old:8.2f} s ({row['before_forwards']} passes)"
                f"  after {t_new:8.2f} s ({row['after_forwards']} passes)  "
                f"before/after {row['before_over_after']:.2f}x (CPU s {cpu_old:.1f} / {cpu_new:.1f} = "
                f"{row['before_over_after_cpu']:.2f}x)  max |diff| {row['max_abs_diff']:.1e}"
            )
    if args.json:
        out = {"machine": machine(), "over": args.over, "model": str(args.model), "runs": rows}
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
