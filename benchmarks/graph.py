"""Benchmark: the IOI attribution graph on the demo model, next to exact node patching.

    python benchmarks/graph.py [--device cpu|cuda] [--n 8] [--steps 5] [--sizes 10 30 100 300 1000]

Reports wall time and peak memory (CPU: process RSS sampled every 10 ms via psutil, as a rise
over the RSS before the phase; GPU: torch.cuda.max_memory_allocated) for EAP, EAP-IG, the
faithfulness curve, and ``circuitviz.patch(model, pairs, over="heads")`` on the same pairs.
"""

from __future__ import annotations

import argparse
import os
import platform
import threading
import time
from contextlib import contextmanager

import psutil
import torch

import circuitviz
from circuitviz.tasks import ioi


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
            mem = torch.cuda.max_memory_allocated() / 2**20
            what = "GPU peak allocated"
        else:
            mem = (peak[0] - start_rss) / 2**20
            what = "RSS rise"
        results[name] = (seconds, mem)
        print(f"{name:<34} {seconds:8.2f} s   {mem:9.1f} MiB ({what})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if available)")
    parser.add_argument("--n", type=int, default=8, help="IOI prompt pairs")
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 30, 100, 300, 1000])
    parser.add_argument("--skip-patch", action="store_true", help="skip exact node patching")
    args = parser.parse_args()
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))

    print(f"python {platform.python_version()}, torch {torch.__version__}, {platform.machine()}")
    print(
        f"CPU: {os.cpu_count()} cores, torch threads {torch.get_num_threads()}, "
        f"RAM {psutil.virtual_memory().total / 2**30:.0f} GiB"
    )
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    results: dict = {}
    with measure("load demo model", device, results):
        model = circuitviz.load_model("demo", device=device)
    pairs = ioi(model, n=args.n, seed=0)
    print(f"{len(pairs)} IOI pairs, {model.to_tokens(pairs.clean[0]).shape[1]} tokens each")
    with measure("graph: EAP (2 fwd + 1 bwd)", device, results):
        graph = circuitviz.circuit(model, pairs, progress=False)
    with measure(f"graph: EAP-IG ({args.steps} steps)", device, results):
        circuitviz.circuit(model, pairs, method="eap-ig", steps=args.steps, progress=False)
    with measure("faithfulness: baselines (2 fwd)", device, results):
        graph.faithfulness(model, pairs)
    with measure(f"faithfulness curve ({len(args.sizes)} sizes)", device, results):
        curve = graph.faithfulness_curve(model, pairs, sizes=args.sizes)
    pruned = graph.prune(top_n=args.sizes[len(args.sizes) // 2])
    with measure("faithfulness: one circuit (1 fwd)", device, results):
        pruned.faithfulness(model, pairs, ablated=[pruned.nodes[1].id])
    if not args.skip_patch:
        with measure('exact patch(over="heads")', device, results):
            circuitviz.patch(model, pairs, over="heads", progress=False)
    n_edges = int(graph.kept.sum())
    print(
        f"\n{len(graph.nodes)} nodes, {n_edges} edges; clean {graph.clean:.3f}, "
        f"corrupted {graph.corrupted:.3f} (logit diff)"
    )
    print("faithfulness curve (EAP, top-n edges pruned to EMBED→LOGITS paths, corrupted patching):")
    for size, n, nodes, rec in zip(
        curve.sizes, curve.n_edges, curve.n_nodes, curve.recovered, strict=True
    ):
        print(f"  top {size:>5}: {n:>5} edges, {nodes:>4} nodes, recovered {rec:6.3f}")


if __name__ == "__main__":
    main()
