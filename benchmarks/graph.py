"""Benchmark: the IOI attribution graph on the demo model, next to exact node patching.

    python benchmarks/graph.py [--device cpu|cuda] [--n 8] [--steps 5] [--sizes 10 30 100 300 1000]
    python benchmarks/graph.py --device cuda --random-init DIR --json benchmarks/results/h100_graph.json

Reports wall time and peak memory (CPU: process RSS sampled every 10 ms via psutil, as a rise
over the RSS before the phase; GPU: torch.cuda.max_memory_allocated) for EAP, EAP-IG, listing
the graph's edges and its JSON, the faithfulness curve, one circuit, exact patching of the
top ``--check-edges`` edges (with their correlation to EAP), and
``circuitviz.patch(model, pairs, over="heads")`` on the same pairs. One warm-up forward runs
before the timed phases.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from contextlib import contextmanager

import psutil
import torch

import circuitviz
from circuitviz.engine import tokenize
from circuitviz.engine.graph import Graph
from circuitviz.tasks import ioi

from _common import add_model_args, load, machine, random_weights


@contextmanager
def measure(name: str, device: torch.device, results: dict):
    proc = psutil.Process()
    start_rss = proc.memory_info().rss
    peak = [start_rss]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - t0
        stop.set()
        thread.join()
        if device.type == "cuda":
            mem, what = torch.cuda.max_memory_allocated() / 2**20, "gpu_peak_allocated_mib"
        else:
            mem, what = (peak[0] - start_rss) / 2**20, "rss_rise_mib"
        results[name] = {"seconds": seconds, what: mem}
        label = "GPU peak allocated" if device.type == "cuda" else "RSS rise"
        print(f"{name:<36} {seconds:8.2f} s   {mem:9.1f} MiB ({label})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)
    parser.add_argument("--n", type=int, default=8, help="IOI prompt pairs")
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100, 300, 1000])
    parser.add_argument("--skip-patch", action="store_true", help="skip exact node patching")
    parser.add_argument(
        "--check-edges",
        type=int,
        default=64,
        help="patch this many top-|score| edges exactly and correlate them with EAP (0: skip)",
    )
    parser.add_argument("--json", default=None, help="also write the figures here")
    args = parser.parse_args()

    print(f"machine: {machine()}, RAM {psutil.virtual_memory().total / 2**30:.0f} GiB")
    phases: dict = {}
    cpu = torch.device("cpu")  # the model's device is known only once it is loaded
    with measure("load model", cpu, phases):
        model = load(args)
    device = torch.device(model.cfg.device)
    pairs = ioi(model, n=args.n, seed=0)
    tokens = tokenize(model, pairs)
    print(
        f"model: {circuitviz.engine._models.model_name(model)} on {device}"
        f"{' (random weights)' if random_weights(args) else ''}; "
        f"{tokens.batch} IOI pair(s) of {tokens.n_pos} tokens"
    )
    with torch.inference_mode():  # warm up kernels and allocator
        model(tokens.clean)

    with measure("graph: EAP (2 fwd + 1 bwd)", device, phases):
        graph = circuitviz.circuit(model, pairs, progress=False)
    with measure(f"graph: EAP-IG ({args.steps} steps)", device, phases):
        graph_ig = circuitviz.circuit(
            model, pairs, method="eap-ig", steps=args.steps, progress=False
        )
    with measure("graph: list edges", device, phases):
        edges = graph.edges
    with measure("graph: to_json", device, phases):
        text = graph.to_json()
    with measure("graph: from_json", device, phases):
        Graph.from_json(text)
    with measure("faithfulness: baselines (2 fwd)", device, phases):
        graph.faithfulness(model, pairs)
    with measure(f"faithfulness curve ({len(args.sizes)} sizes)", device, phases):
        curve = graph.faithfulness_curve(model, pairs, top_edges=args.sizes)
    pruned = graph.prune(top_edges=max(args.sizes))
    heads = [n.id for n in pruned.nodes if n.type == "head"][:1]  # one live ablation
    with measure("faithfulness: one circuit (1 fwd)", device, phases):
        pruned.faithfulness(model, pairs, ablated=heads)
    check = None
    if args.check_edges:
        top = edges[: args.check_edges]
        with measure(f"exact patching of {len(top)} edges", device, phases):
            exact = graph.patch_edges(model, pairs, top, progress=False)
        eap = torch.tensor([e.weight for e in top])
        eap_ig = torch.tensor([graph_ig.score(e.source, e.target, e.input) for e in top])

        def pearson(x: torch.Tensor) -> float:
            return float(torch.corrcoef(torch.stack([x, exact.float()]))[0, 1])

        check = {
            "edges": len(top),
            "pearson_eap": pearson(eap),
            "pearson_eap_ig": pearson(eap_ig),
            "same_sign_eap": float(((eap > 0) == (exact > 0)).float().mean()),
            "same_sign_eap_ig": float(((eap_ig > 0) == (exact > 0)).float().mean()),
        }
    if not args.skip_patch:
        with measure('exact patch(over="heads")', device, phases):
            circuitviz.patch(model, pairs, over="heads", progress=False)

    print(
        f"\n{len(graph.nodes)} nodes, {len(edges)} edges ({len(text) / 2**20:.1f} MiB of JSON); "
        f"clean {graph.clean:.3f}, corrupted {graph.corrupted:.3f} (logit diff)"
    )
    print("faithfulness curve (EAP, top-n edges pruned to EMBED→LOGITS paths, corrupted patching):")
    for size, n, nodes, rec in zip(
        curve.top_edges, curve.n_edges, curve.n_nodes, curve.recovered, strict=True
    ):
        print(f"  top {size:>5}: {n:>5} edges, {nodes:>4} nodes, recovered {rec:6.3f}")
    if check:
        print(
            f"exact edge patching of the top {check['edges']} edges by |EAP|: Pearson with EAP "
            f"{check['pearson_eap']:.3f} (same sign {check['same_sign_eap']:.0%}), with EAP-IG "
            f"{check['pearson_eap_ig']:.3f} (same sign {check['same_sign_eap_ig']:.0%})"
        )
    if args.json:
        figures = {
            "machine": machine(),
            "device": str(device),
            "random_weights": random_weights(args),
            "pairs": tokens.batch,
            "n_pos": tokens.n_pos,
            "eap_ig_steps": args.steps,
            "n_nodes": len(graph.nodes),
            "n_edges": len(edges),
            "clean": graph.clean,
            "corrupted": graph.corrupted,
            "phases": phases,
            "curve": {
                k: getattr(curve, k) for k in ("top_edges", "n_edges", "n_nodes", "recovered")
            },
            "edge_check": check,
        }
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
