"""Benchmark: MIB faithfulness scores (CPR, CMD) of four ways to choose circuits, on IOI and
induction, on the demo model.

    python benchmarks/faithfulness.py [--pairs 8] [--json benchmarks/results/cpu2_faithfulness.json]
    python benchmarks/faithfulness.py --signed-only   # add the signed-ranking rows to the JSON

Rows: EAP edges, EAP-IG edges (5 steps), EAP node scores (a node's summed outgoing edge
scores) and nodes ranked by exact patching (``exact_node_scores``: ``patch(over="heads")``
and whole-MLP resample ablation), each over MIB's size grid (0.1 % … 100 % of edges or
nodes) with ``circuitviz.mib_scores``, ranked by |score|; and EAP / EAP-IG edges ranked by
the signed score (``absolute=False``, MIB's ranking for CPR). Times: scoring (graph or exact
patching) and the curve (10 circuits, exact). One warm-up forward runs first.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import circuitviz as cv
from circuitviz.engine.graph import exact_node_scores, mib_scores

from _common import add_model_args, load, machine


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def row(task: str, name: str, score_s: float, res) -> dict:
    return {
        "task": task,
        "method": name,
        "level": res.level,
        "absolute": res.absolute,
        "cpr": res.cpr,
        "cmd": res.cmd,
        "score_seconds": score_s,
        "curve_seconds": res_seconds[id(res)],
        "fraction": res.fraction,
        "n_items": res.n_items,
        "n_edges": res.n_edges,
        "n_nodes": res.n_nodes,
        "faithfulness": res.faithfulness,
        "total": res.total,
        "clean": res.clean,
        "corrupted": res.corrupted,
    }


res_seconds: dict[int, float] = {}


def curve(graph, model, pairs, **options):
    seconds, res = timed(lambda: mib_scores(graph, model, pairs, progress=False, **options))
    res_seconds[id(res)] = seconds
    return res


def run_task(task: str, model, pairs, signed_only: bool = False) -> list[dict]:
    rows = []
    eap_s, eap = timed(lambda: cv.circuit(model, pairs, method="eap", progress=False))
    ig_s, ig = timed(lambda: cv.circuit(model, pairs, method="eap-ig", progress=False))
    if not signed_only:
        rows.append(row(task, "EAP edges", eap_s, curve(eap, model, pairs)))
        rows.append(row(task, "EAP-IG edges", ig_s, curve(ig, model, pairs)))
        rows.append(row(task, "EAP node scores", eap_s, curve(eap, model, pairs, level="node")))
        exact_s, exact = timed(lambda: exact_node_scores(model, pairs, progress=False))
        res = curve(eap, model, pairs, level="node", node_scores=exact)
        rows.append(row(task, "exact patching, nodes", exact_s, res))
    for name, seconds, graph in (("EAP edges", eap_s, eap), ("EAP-IG edges", ig_s, ig)):
        res = curve(graph, model, pairs, absolute=False)
        rows.append(row(task, f"{name}, signed ranking", seconds, res))
    for r in rows:
        print(
            f"{task:9s} {r['method']:22s} CPR {r['cpr']:.4f}  CMD {r['cmd']:.4f}  "
            f"score {r['score_seconds']:6.2f} s  curve {r['curve_seconds']:6.2f} s"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    add_model_args(parser)
    parser.add_argument("--pairs", type=int, default=8)
    parser.add_argument("--json", default="benchmarks/results/cpu2_faithfulness.json")
    parser.add_argument(
        "--signed-only",
        action="store_true",
        help="compute only the signed-ranking rows and add them to the existing --json",
    )
    args = parser.parse_args()
    model = load(args)
    tasks = {
        "ioi": cv.tasks.ioi(model, n=args.pairs, seed=0),
        "induction": cv.tasks.induction(model, n=args.pairs, seed=0),
    }
    with torch.inference_mode():  # warm-up
        model(cv.engine.tokenize(model, tasks["ioi"]).clean)
    start = time.perf_counter()
    rows = [
        r for task, pairs in tasks.items() for r in run_task(task, model, pairs, args.signed_only)
    ]
    if args.signed_only:  # the other rows come from an earlier run, kept as they were
        out = json.loads(Path(args.json).read_text())
        out["rows"] = [r for r in out["rows"] if r.get("absolute", True)] + rows
        out["signed_rows_seconds"] = time.perf_counter() - start
        out["signed_rows_machine"] = machine()
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
        print(f"added {len(rows)} rows to {args.json}")
        return
    out = {
        "machine": machine(),
        "device": str(model.cfg.device),
        "model": "demo (SmolLM2-135M-Instruct)",
        "pairs": args.pairs,
        "fractions": rows[0]["fraction"],
        "total_seconds": time.perf_counter() - start,
        "rows": rows,
    }
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json} ({out['total_seconds']:.1f} s)")


if __name__ == "__main__":
    main()
