"""Error nodes on the demo model's IOI feature circuit (the shipped demo SAEs): a click that
ablates an error node, its exactness, and what the view's faithfulness panel reports.

    python benchmarks/error_nodes.py [--n 8] [--json benchmarks/results/cpu2_error_nodes.json]

Builds ``circuit(model, pairs, saes=load_saes("demo"))`` (EAP), opens it in CircuitView (its
default shown circuit), then: the error nodes' ablation in each mode (``ablate(features=
["L23ERR:P..."])``) against a hand-written hook (max |diff|), the median time of a click on
an error node (each a new one, so nothing is memoised), and the faithfulness request the view
sends after a click (the shown circuit with error nodes kept and ablated, and completeness
both ways; timed with a cold cache). Prints the load average: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import circuitviz as cv
from circuitviz.engine import hooks, tokenize

from _common import add_model_args, load, machine


def hand_error_ablation(model, pairs, saes, site: str, pos: int | None, mode: str) -> float:
    """The metric with the error term at ``site`` (``pos``, or everywhere) replaced by hand."""
    tokens = tokenize(model, pairs)
    sae = saes[site]
    corr = {}

    def rec(x, hook):
        corr["err"] = x - sae.decode(sae.encode(x))

    with torch.no_grad(), hooks(model, [(site, rec)]):
        model(tokens.corrupted, return_type="logits")
    value = {
        "zero": torch.zeros_like(corr["err"]),
        "mean": corr["err"].mean(0, keepdim=True).expand_as(corr["err"]),
        "resample": corr["err"],
    }[mode]
    where = slice(None) if pos is None else pos

    def splice(x, hook):
        f = sae.encode(x)
        err = x - sae.decode(f)
        err[:, where] = value[:, where]
        return sae.decode(f) + err

    with torch.no_grad(), hooks(model, [(site, splice)]):
        logits = model(tokens.clean, return_type="logits")[:, -1]
    rows = torch.arange(len(logits))
    return float((logits[rows, tokens.answers] - logits[rows, tokens.wrong_answers]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_model_args(parser)
    parser.add_argument("--n", type=int, default=8, help="IOI pairs")
    parser.add_argument("--clicks", type=int, default=7)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    from circuitviz.views import CircuitView

    model = load(args)
    pairs = cv.tasks.ioi(model, n=args.n, seed=0)
    saes = cv.load_saes("demo")
    out: dict = {"machine": machine(), "pairs": args.n, "loadavg_start": os.getloadavg()}
    graph = cv.circuit(model, pairs, saes=saes, progress=False)
    view = CircuitView(model, pairs, graph=graph)
    errors = [n for n in view.graph["nodes"] if n["type"] == "error"]
    out["shown_nodes"], out["shown_error_nodes"] = len(view.graph["nodes"]), len(errors)
    n_pos = len(graph.tokens)

    diffs = {}
    for mode in ("zero", "mean", "resample"):
        for spec, pos in (("L23ERR", None), (f"L11ERR:P{n_pos - 1}", n_pos - 1)):
            hook = f"blocks.{spec.split('ERR')[0][1:]}.hook_resid_post"
            got = cv.ablate(model, pairs, features=[spec], saes=saes, mode=mode)
            ref = hand_error_ablation(model, pairs, saes, hook, pos, mode)
            diffs[f"{spec} {mode}"] = {
                "ablated": got.ablated,
                "clean": got.clean,
                "diff": abs(got.ablated - ref),
            }
    out["exactness"] = diffs
    print("max |diff| vs hand-written hook:", max(d["diff"] for d in diffs.values()), flush=True)

    # clicks, each new to the memo: error nodes, then latents of the shown graph (the ratio)
    latents = [n["ablates"] for n in view.graph["nodes"] if n["type"] == "feature"]
    targets = [f"L{layer}ERR:P{p}" for p in range(n_pos - 1, 0, -1) for layer in (5, 17)]
    for kind, specs in (("error", targets), ("latent", latents)):
        times = []
        for spec in specs[: args.clicks]:
            t0 = time.perf_counter()
            view._handle_custom_msg({"type": "ablate", "components": [spec], "request": 1}, [])
            times.append(time.perf_counter() - t0)
            assert view.ablated == [spec], view.error
        out[f"{kind}_click_seconds"] = times
        out[f"{kind}_click_median_s"] = statistics.median(times)
        print(
            f"{kind} click: median {statistics.median(times):.3f} s over {len(times)}", flush=True
        )

    # the faithfulness request after clicking a shown error node: cold (the reference runs
    # are computed once per view), then for a new shown circuit with and without the error
    # variants (the extra forward passes they cost)
    from circuitviz.views import _feature_nodes

    shown_error = max(errors, key=lambda n: abs(n["score"] or 0))["ablates"]
    msg = {"type": "faithfulness", "ablated": [shown_error], "request": "f"}
    t0 = time.perf_counter()
    view._handle_custom_msg(msg, [])
    out["faithfulness_request_cold_s"] = time.perf_counter() - t0
    out["faithfulness"] = {k: v for k, v in view.faithfulness.items() if not isinstance(v, list)}
    out["faithfulness"]["ablated_nodes"] = view.faithfulness["ablated_nodes"]
    print(json.dumps(out["faithfulness"], indent=1), flush=True)
    variants = dict(_feature_nodes.ERROR_VARIANTS)
    out["default_top_edges"] = base = view.top_edges
    for label, extra in (("plain", 100), ("with_error_variants", 200)):
        if label == "plain":
            _feature_nodes.ERROR_VARIANTS.clear()
        else:
            _feature_nodes.ERROR_VARIANTS.update(variants)
        view.top_edges = base + extra  # a new shown circuit: nothing cached
        msg["ablated"] = [n["ablates"] for n in view.graph["nodes"] if n["type"] == "error"][:1]
        stamps: list[float] = []
        view.observe(lambda _, s=stamps: s.append(time.perf_counter()), names="faithfulness")
        t0 = time.perf_counter()
        view._handle_custom_msg(msg, [])
        out[f"faithfulness_request_{label}_s"] = time.perf_counter() - t0
        out[f"faithfulness_first_values_{label}_s"] = stamps[0] - t0  # what the page shows first
        view.unobserve_all("faithfulness")
        assert not view.error, view.error
    print(
        "faithfulness request: cold {:.2f} s; new circuit {:.2f} s, first values at {:.2f} s "
        "(plain {:.2f} s)".format(
            out["faithfulness_request_cold_s"],
            out["faithfulness_request_with_error_variants_s"],
            out["faithfulness_first_values_with_error_variants_s"],
            out["faithfulness_request_plain_s"],
        ),
        flush=True,
    )
    out["loadavg_end"] = os.getloadavg()
    print("load average:", out["loadavg_start"], "→", out["loadavg_end"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
