"""Head roles on the demo model's IOI task: the roles assigned, their scores, and the time.

Runs ``circuitviz.head_roles`` on ``tasks.ioi(model, n=8, seed=0)`` and writes every assigned
head with the scores that decided it, the thresholds, and the wall time, to
``benchmarks/results/cpu2_roles.json`` (or ``--out``). Also checks the S-inhibition scores of
the three strongest senders against direct ``path_patch`` calls (their difference is
reported; it should be float32 noise).

    python benchmarks/roles.py                  # demo model, 8 IOI pairs
    python benchmarks/roles.py --pairs 4 --out /tmp/roles.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch

import circuitviz as cv
from circuitviz.engine._roles import HEAD_ROLES

from _common import add_model_args, load, machine, timed

RESULTS = Path(__file__).with_name("results")
SHOWN = ("previous_token", "duplicate_token", "induction", "io_attention", "s_attention")
SHOWN += ("copy", "negative_copy", "dla", "s_inhibition")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_model_args(parser)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--out", default=str(RESULTS / "cpu2_roles.json"))
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load(args)
    pairs = cv.tasks.ioi(model, n=args.pairs, seed=0)
    cpu0 = time.process_time()
    seconds, roles = timed(model, lambda: cv.head_roles(model, pairs, progress=False))
    cpu_seconds = time.process_time() - cpu0  # the wall time on a shared machine is mostly waiting

    def scores(head: str) -> dict[str, float | None]:
        layer, h = (int(x) for x in head[1:].split("H"))
        out = {}
        for k in SHOWN:
            v = float(roles.scores[k][layer, h])
            out[k] = None if math.isnan(v) else round(v, 4)
        return out

    movers = roles.heads("name_mover")
    check = {}
    if movers:
        first = min(int(m[1:].split("H")[0]) for m in movers)
        si = roles.scores["s_inhibition"][:first]
        top = si.flatten().argsort(descending=True)[:3].tolist()
        for i in top:
            head = f"L{i // si.shape[1]}H{i % si.shape[1]}"
            direct = cv.path_patch(
                model, pairs, senders=[head], receivers=movers, receiver_input="q", progress=False
            )
            share = (direct - roles.corrupted) / (roles.clean - roles.corrupted)
            check[head] = abs(share - float(si.flatten()[i]))
    dla = roles.scores["dla"].abs().flatten().argsort(descending=True).tolist()
    n_heads = roles.n_heads
    named = [f"L{i // n_heads}H{i % n_heads}" for i in dla]
    unassigned = [h for h in named if h not in roles.roles][:3]
    out = {
        "machine": machine(),
        "device": str(model.cfg.device),
        "model": roles.model_name,
        "pairs": args.pairs,
        "seconds": round(seconds, 2),
        "cpu_seconds": round(cpu_seconds, 2),
        "load_average_1min": round(os.getloadavg()[0], 2),
        "clean_logit_diff": roles.clean,
        "corrupted_logit_diff": roles.corrupted,
        "thresholds": roles.thresholds,
        "counts": {r: len(roles.heads(r)) for r in HEAD_ROLES},
        "roles": {r: {h: scores(h) for h in roles.heads(r)} for r in HEAD_ROLES},
        # Heads that matter but fit no role: the strongest direct writers without one.
        "top_dla_without_a_role": {h: scores(h) for h in unassigned},
        "s_inhibition_vs_direct_path_patch_max_abs_diff": max(check.values(), default=None),
        "notes": roles.notes,
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("seconds", "cpu_seconds", "counts")}, indent=2))
    for r in HEAD_ROLES:
        print(r, list(out["roles"][r]))


if __name__ == "__main__":
    main()
