"""Click-to-clamp time at every site kind on the demo model: ``steer()`` with 20 greedy
tokens and one latent clamped to 4 × its prompt maximum, at attn_out, mlp_out, resid_mid, a
transcoder (reading MLP 11's input, writing its output) and resid_post (the shipped SAE).

    python benchmarks/steer_sites.py [--threads 1] [--clamps 3] [--json benchmarks/results/cpu1_steer_sites.json]

The demo ships resid_post SAEs only, so the weights of the block-11 SAE are placed at the
other sites of block 11 (a stand-in: the time depends on the shapes, not on what the latents
mean). Before this change only resid_pre/resid_post edits took the KV-cache generator; the
others ran the bridge-hooked loop without a cache (``greedy_bridge``, one full pass per new
token). Each clamp is timed both ways, interleaved (which goes first alternates) so that both
see the same load, on ``--clamps`` different latents per site: ``steer()`` as it runs now
(the unedited side generated and kept once per prompt beforehand, as the view does on
opening) and ``greedy_bridge`` with the same edit. Both must give the same tokens. Wall and
process CPU times are kept, with the load average (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch

import circuitviz as cv
from circuitviz.engine import hooks
from circuitviz.engine.features import SAE, SAESet
from circuitviz.engine.features._generate import greedy_bridge
from circuitviz.engine.features._splice import LatentEdit
from circuitviz.engine.features._steer import warm

from _common import add_model_args, load, machine

LAYER = 11
#: feature-id prefix -> the hook of the SAE clamped there
SITES = {
    "attn": f"blocks.{LAYER}.hook_attn_out",
    "mlp": f"blocks.{LAYER}.hook_mlp_out",
    "mid": f"blocks.{LAYER}.hook_resid_mid",
    "tc": f"blocks.{LAYER}.mlp.hook_in",
    "": f"blocks.{LAYER}.hook_resid_post",
}


def site_saes(shipped: SAESet) -> dict[str, SAESet]:
    """One SAE set per site: the shipped block-11 SAE's weights at that site."""
    s = shipped[f"blocks.{LAYER}.hook_resid_post"]
    weights = (s.W_enc, s.b_enc, s.W_dec, s.b_dec)
    kind = {"activation": s.activation, "k": s.k, "threshold": s.threshold}
    kind["apply_b_dec_to_input"] = s.apply_b_dec_to_input
    out = {}
    for code, hook in SITES.items():
        extra = {"output_hook": f"blocks.{LAYER}.hook_mlp_out"} if code == "tc" else {}
        out[code] = SAESet([SAE(hook, *weights, **kind, **extra)], name=f"demo-at-{code or 'post'}")
    return out


def top_latents(model, prompt: str, saes: SAESet, n: int) -> list[int]:
    """The ``n`` latents with the largest maximum over the prompt."""
    (name,) = saes.hooks
    got = {}

    def read(x, hook):
        got["f"] = saes[name].encode(x[0]).amax(0)

    with torch.no_grad(), hooks(model, [(name, read)]):
        model(model.to_tokens(prompt), return_type="logits")
    return [int(i) for i in got["f"].topk(n).indices]


def timed(fn):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t0, time.process_time() - c0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--clamps", type=int, default=3, help="latents clamped per site")
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--sites", default=",".join(c or "post" for c in SITES))
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args)
    sets = site_saes(cv.load_saes("demo"))
    prompt = cv.tasks.ioi(model, n=8, seed=0).clean[0]
    tokens = model.to_tokens(prompt)[0]
    eos = model.tokenizer.eos_token_id
    load_before = os.getloadavg()
    results = {}
    for name in args.sites.split(","):
        code = "" if name == "post" else name
        saes = sets[code]
        hook = SITES[code]
        warm(model, prompt, saes)  # the unedited side, as a view opens
        rows = []
        for n, latent in enumerate(top_latents(model, prompt, saes, args.clamps)):
            feature = f"L{LAYER}{code}F{latent}"

            def now(feature=feature, saes=saes):
                return cv.steer(
                    model, prompt, features=feature, saes=saes, scale=args.scale, progress=False
                )

            # steer's clamp value (4 × the prompt max); this first call is not timed
            edit = [LatentEdit(hook, latent, now().values[0])]

            def before(edit=edit, saes=saes):
                return greedy_bridge(model, tokens, saes, edit, n_tokens=20, eos=eos, desc=None)

            order = (("now", now), ("before", before))
            runs = {which: timed(fn) for which, fn in (order if n % 2 == 0 else order[::-1])}
            res, wall, cpu = runs["now"]
            ref, wall_b, cpu_b = runs["before"]
            rows.append(
                {
                    "feature": feature,
                    "cached": res.cached,
                    "same_tokens": res.after_tokens == [model.to_string(t) for t in ref.ids],
                    "steer_s": wall,
                    "steer_cpu_s": cpu,
                    "bridge_loop_s": wall_b,
                    "bridge_loop_cpu_s": cpu_b,
                    "after": res.after,
                }
            )
        results[name] = {
            "clamps": rows,
            "steer_median_s": statistics.median(r["steer_s"] for r in rows),
            "steer_cpu_median_s": statistics.median(r["steer_cpu_s"] for r in rows),
            "bridge_loop_median_s": statistics.median(r["bridge_loop_s"] for r in rows),
            "bridge_loop_cpu_median_s": statistics.median(r["bridge_loop_cpu_s"] for r in rows),
            "all_cached": all(r["cached"] for r in rows),
            "all_same_tokens": all(r["same_tokens"] for r in rows),
        }
        r = results[name]
        print(
            f"{name:5s} steer {r['steer_median_s']:.2f} s (cpu {r['steer_cpu_median_s']:.2f}) "
            f"bridge loop {r['bridge_loop_median_s']:.2f} s (cpu "
            f"{r['bridge_loop_cpu_median_s']:.2f}) cached={r['all_cached']} "
            f"same={r['all_same_tokens']} load={os.getloadavg()[0]:.2f}",
            flush=True,
        )
    out = {
        "machine": machine(),
        "prompt": prompt,
        "n_tokens": 20,
        "threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "sites": results,
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
