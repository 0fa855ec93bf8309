"""Does a mixed-length batch cost more than a same-length one of the same padded size?

Two batches of ``--pairs`` IOI pairs on one model, both ``n_pos`` tokens wide: "same" puts a
short prefix (``--prefix``) on every prompt; "mixed" on the first half only, so the second
half is left-padded and masked. Each analysis runs on both, interleaved ``--repeat`` times
(caches cleared), and the CPU-time ratio mixed / same is printed (with one torch thread the
CPU time is the work done; wall time on a shared machine mostly measures the other jobs).

    python benchmarks/mixed_lengths.py --pairs 8 --repeat 3 --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from functools import partial

import circuitviz as cv
from circuitviz.engine import _ablation, tokenize

from _common import add_model_args, cpu_timed, load, machine


def prefixed(pairs: cv.PromptPairs, prefix: str, n: int) -> cv.PromptPairs:
    """The pairs with ``prefix`` before the first ``n`` clean and corrupted prompts."""

    def add(texts):
        return [prefix + t if i < n else t for i, t in enumerate(texts)]

    return cv.PromptPairs(
        add(pairs.clean), add(pairs.corrupted), pairs.answers, pairs.wrong_answers
    )


def analyses(model):
    def ablate(pairs):
        _ablation._PREPARED.pop(model, None)  # the baselines are part of a first click
        return cv.ablate(model, pairs, heads=["L3H3", "L8H4"], mlps=[7])

    def faithfulness(pairs):
        graph = cv.circuit(model, pairs, progress=False)
        cpu = cpu_timed(
            model, partial(graph.faithfulness_curve, model, pairs, top_edges=[30, 300])
        )[1]
        return cpu

    return {  # cheapest first
        "ablate (first click)": ablate,
        "attribution_patch heads": lambda p: cv.attribution_patch(model, p, over="heads"),
        "circuit EAP": lambda p: cv.circuit(model, p, progress=False),
        "faithfulness_curve (2 sizes)": faithfulness,
        "circuit EAP-IG (5 steps)": lambda p: cv.circuit(model, p, method="eap-ig", progress=False),
        "path_patch heads map → logits": lambda p: cv.path_patch(
            model, p, receivers="logits", progress=False
        ),
        "patch heads": lambda p: cv.patch(model, p, over="heads", progress=False),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--prefix", default="Then, ")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--only", nargs="*", default=None, help="analysis names to run")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    model = load(args)
    print(f"machine: {machine()}")
    base = cv.tasks.ioi(model, n=args.pairs, seed=0)
    batches = {
        "same": prefixed(base, args.prefix, args.pairs),
        "mixed": prefixed(base, args.prefix, args.pairs // 2),
    }
    shapes = {k: tokenize(model, p, pad=True) for k, p in batches.items()}
    assert shapes["same"].n_pos == shapes["mixed"].n_pos
    assert shapes["same"].attention_mask is None and shapes["mixed"].attention_mask is not None
    print(f"{args.pairs} pairs, {shapes['same'].n_pos} positions; prefix {args.prefix!r}")
    rows = []
    for name, fn in analyses(model).items():
        if args.only and name not in args.only:
            continue
        fn(batches["mixed"])  # warm-up
        cpu = {"same": [], "mixed": []}
        wall = {"same": [], "mixed": []}
        for _ in range(args.repeat):
            for kind in ("same", "mixed"):
                w, c, out = cpu_timed(model, partial(fn, batches[kind]))
                if isinstance(out, float):  # the function timed its own part
                    c = w = out
                cpu[kind].append(c)
                wall[kind].append(w)
        row = {
            "analysis": name,
            "same_cpu_s": statistics.median(cpu["same"]),
            "mixed_cpu_s": statistics.median(cpu["mixed"]),
            "same_wall_s": statistics.median(wall["same"]),
            "mixed_wall_s": statistics.median(wall["mixed"]),
        }
        row["mixed_over_same_cpu"] = row["mixed_cpu_s"] / row["same_cpu_s"]
        rows.append(row)
        print(
            f"{name:32s} same {row['same_cpu_s']:7.2f} CPU s  mixed {row['mixed_cpu_s']:7.2f} "
            f"CPU s  mixed/same {row['mixed_over_same_cpu']:.2f}x"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine(), "pairs": args.pairs, "runs": rows}, f, indent=2)


if __name__ == "__main__":
    main()
