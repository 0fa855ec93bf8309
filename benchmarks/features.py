"""Benchmark: the IOI feature circuit of the demo model with SAEs on its residual stream.

    python benchmarks/features.py                      # the demo SAEs: circuitviz.load_saes("demo")
    python benchmarks/features.py --throwaway          # quickly fitted TopK SAEs (nothing saved)
    python benchmarks/features.py --json benchmarks/results/cpu2_features.json

For EAP and EAP-IG (5 steps): wall time and peak process RSS of ``circuit(model, pairs,
saes=...)`` (RSS sampled every 10 ms; the absolute peak and the rise over the RSS before it),
node counts (features, error nodes, all), candidate edges (valid sender → receiver cells per
position) and non-zero edges; then the attribution of the ``--check`` strongest feature nodes
against exact feature patching (``ablate(features=[...], mode="resample")``: each latent at its
position set to its value on the example's own corrupted prompt; Pearson r and sign agreement),
and the faithfulness (and completeness: the faithfulness of everything but the circuit) of
pruned circuits with the error nodes kept and ablated.

``--throwaway`` fits TopK SAEs (``--d-sae`` latents, ``k``) on ``blocks.{5,11,17,23}.
hook_resid_post`` from IOI prompts in a few Adam steps, for runs before the demo SAEs exist;
they are poor SAEs (high error), so their numbers say little about the demo SAEs' circuit.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from contextlib import contextmanager

import numpy as np
import psutil
import torch

import circuitviz as cv
from circuitviz.engine import hooks, tokenize
from circuitviz.engine.features import SAE, SAESet

from _common import add_model_args, load, machine

HOOKS = [f"blocks.{layer}.hook_resid_post" for layer in (5, 11, 17, 23)]


@contextmanager
def measure(name: str, out: dict):
    proc = psutil.Process()
    start = proc.memory_info().rss
    peak = [start]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            peak[0] = max(peak[0], proc.memory_info().rss)
            time.sleep(0.01)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    t0 = time.perf_counter()
    try:
        yield
    finally:
        seconds = time.perf_counter() - t0
        stop.set()
        thread.join()
        out[name] = {
            "seconds": seconds,
            "peak_rss_mib": peak[0] / 2**20,
            "rss_rise_mib": (peak[0] - start) / 2**20,
        }
        print(f"{name}: {seconds:.2f} s, peak RSS {peak[0] / 2**30:.2f} GiB", flush=True)


def throwaway_saes(model, *, d_sae: int, k: int, steps: int, seed: int = 0) -> SAESet:
    """TopK SAEs fitted in a few Adam steps on IOI prompts' residual streams (throwaway)."""
    torch.manual_seed(seed)
    pairs = cv.tasks.ioi(model, n=64, seed=1)
    tokens = tokenize(model, pairs)
    store: dict[str, list[torch.Tensor]] = {h: [] for h in HOOKS}

    def saver(h):
        def fn(x, hook):
            # without the first position: its huge "attention sink" activations would dominate
            store[h].append(x.detach()[:, 1:].reshape(-1, x.shape[-1]).float())

        return fn

    with torch.no_grad(), hooks(model, [(h, saver(h)) for h in HOOKS]):
        for batch in (tokens.clean, tokens.corrupted):
            model(batch, return_type="logits")
    out = []
    for h in HOOKS:
        acts = torch.cat(store[h])
        mean = acts.mean(0)
        # decoder rows start at (centred) activations: every latent starts alive
        pick = torch.randint(0, len(acts), (d_sae,))
        W_dec = acts[pick] - mean + 0.01 * torch.randn(d_sae, acts.shape[1])
        W_dec = W_dec / W_dec.norm(dim=1, keepdim=True)
        p = {
            "W_enc": (W_dec.T / k).clone().requires_grad_(),  # k latents add up to about x
            "b_enc": torch.zeros(d_sae, requires_grad=True),
            "W_dec": W_dec.clone().requires_grad_(),
            "b_dec": mean.clone().requires_grad_(),
        }
        opt = torch.optim.Adam(p.values(), lr=1e-3)
        for _ in range(steps):
            pre = (acts - p["b_dec"]) @ p["W_enc"] + p["b_enc"]
            top = pre.topk(k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            loss = ((f @ p["W_dec"] + p["b_dec"] - acts) ** 2).sum(-1).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():  # unit-norm decoder rows
                p["W_dec"] /= p["W_dec"].norm(dim=1, keepdim=True)
        w = {n: t.detach() for n, t in p.items()}
        with torch.no_grad():
            pre = (acts - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
            top = pre.topk(k, dim=-1)
            f = torch.zeros_like(pre).scatter(-1, top.indices, torch.relu(top.values))
            recon = f @ w["W_dec"] + w["b_dec"]
            fvu = float(((recon - acts) ** 2).sum() / ((acts - mean) ** 2).sum())
        print(f"throwaway SAE {h}: {len(acts)} activations, FVU {fvu:.3f}", flush=True)
        out.append(
            SAE(
                h,
                w["W_enc"],
                w["b_enc"],
                w["W_dec"],
                w["b_dec"],
                activation="topk",
                k=k,
                apply_b_dec_to_input=True,
                meta={"format": "throwaway", "fvu": fvu, "steps": steps},
            )
        )
    return SAESet(out, name="throwaway")


def check_nodes(model, pairs, graph, saes, n: int) -> dict:
    """Node attribution of the n strongest features vs exact feature patching."""
    feats = [x for x in graph.nodes if x.type == "feature"]
    feats.sort(key=lambda x: -abs(x.score))
    top = feats[:n]
    exact = []
    for node in top:
        res = cv.ablate(model, pairs, features=[node.id], saes=saes, mode="resample")
        exact.append(res.ablated - res.clean)
    est = np.array([x.score for x in top])
    exact_a = np.array(exact)
    return {
        "n": len(top),
        "pearson": float(np.corrcoef(est, exact_a)[0, 1]),
        "sign_agreement": float((np.sign(est) == np.sign(exact_a)).mean()),
        "nodes": [x.id for x in top],
        "attribution": est.tolist(),
        "exact": exact_a.tolist(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--n", type=int, default=8, help="IOI pairs")
    parser.add_argument("--steps", type=int, default=5, help="EAP-IG steps")
    parser.add_argument("--check", type=int, default=40, help="feature nodes checked exactly")
    parser.add_argument("--throwaway", action="store_true", help="fit throwaway SAEs")
    parser.add_argument("--d-sae", type=int, default=4096)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--fit-steps", type=int, default=10)
    parser.add_argument("--top-nodes", type=int, nargs="+", default=[30, 100, 300])
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    model = load(args)
    pairs = cv.tasks.ioi(model, n=args.n, seed=0)
    if args.throwaway:
        with torch.enable_grad():
            saes = throwaway_saes(model, d_sae=args.d_sae, k=args.k, steps=args.fit_steps)
    else:
        if not hasattr(cv, "load_saes"):
            raise SystemExit("circuitviz.load_saes is not in this version: run with --throwaway.")
        saes = cv.load_saes("demo")
    results: dict = {
        "machine": machine(),
        "saes": "throwaway" if args.throwaway else "demo",
        "sae_hooks": list(saes.hooks),
        "d_sae": [s.d_sae for s in saes.values()],
        "sae_meta": [
            {k: v for k, v in s.meta.items() if isinstance(v, (int, float, str))}
            for s in saes.values()
        ],
        "pairs": args.n,
        "phases": {},
        "graphs": {},
    }
    model(tokenize(model, pairs).clean[:1])  # warm-up
    for method in ("eap", "eap-ig"):
        steps = args.steps if method == "eap-ig" else None
        with measure(f"circuit {method}", results["phases"]):
            g = cv.circuit(model, pairs, saes=saes, method=method, steps=steps, progress=False)
        types = [g.node(i).type for i in range(len(g.ids))]
        info = {
            "n_nodes": len(g.ids),
            "n_feature_nodes": types.count("feature"),
            "n_error_nodes": types.count("error"),
            "n_candidate_edges": g.n_candidates,
            "n_nonzero_edges": len(g.src),
            "clean": g.clean,
            "corrupted": g.corrupted,
        }
        with measure(f"prune {method} top_nodes=100", results["phases"]):
            g.prune(top_nodes=100)
        with measure(f"check {method}", results["phases"]):
            info["vs_exact_patching"] = check_nodes(model, pairs, g, saes, args.check)
        print(
            f"{method}: {info['n_nodes']} nodes ({info['n_feature_nodes']} features), "
            f"{info['n_candidate_edges']:,} candidate edges; vs exact patching "
            f"r={info['vs_exact_patching']['pearson']:.3f}, "
            f"sign {info['vs_exact_patching']['sign_agreement']:.2f}",
            flush=True,
        )
        faith = []
        for n in args.top_nodes:
            small = g.prune(top_nodes=n)
            row = {
                "top_nodes": n,
                "n_nodes": int(small.node_mask.sum()),
                "n_edges": len(small.edges),
            }
            for errors in ("kept", "ablated"):
                row[f"faithfulness_errors_{errors}"] = small.faithfulness(
                    model, pairs, errors=errors
                ).recovered
                row[f"completeness_errors_{errors}"] = small.faithfulness(
                    model, pairs, errors=errors, complement=True
                ).recovered
            faith.append(row)
            print(row, flush=True)
        info["faithfulness"] = faith
        if method == "eap":  # the view: built once, then one control change
            from circuitviz.views import CircuitView

            with measure("CircuitView(feature graph)", results["phases"]):
                view = CircuitView(model, pairs, graph=g)
            info["view_default_nodes_shown"] = len(view.graph["nodes"])
            with measure("view: top_edges 150 -> 300", results["phases"]):
                view.top_edges = 300
            info["view_nodes_shown"] = len(view.graph["nodes"])
            edges = view.graph["edges"] or {}
            info["view_message_bytes"] = len(json.dumps(view.graph["nodes"])) + sum(
                len(v["view"]) for v in edges.values() if isinstance(v, dict)
            )
        results["graphs"][method] = info
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print(json.dumps({k: v for k, v in results.items() if k != "graphs"}, indent=1))


if __name__ == "__main__":
    main()
