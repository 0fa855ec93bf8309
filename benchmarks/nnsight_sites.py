"""Benchmark: SAE feature clicks at every site kind on nnsight against the bridge (demo model).

    python benchmarks/nnsight_sites.py --json benchmarks/results/cpu2_nnsight_sites.json

On the demo model (SmolLM2-135M) with its shipped resid_post SAEs, and — as stand-ins, since
the demo ships resid_post SAEs only — the weights of one of them placed on ``hook_attn_out``
and as a transcoder of MLP 5 (reading after the norm): the wall time of one click (a new
ablation set: a latent, an error term; a steer click) on the bridge, nnsight locally and
nnsight through the fake NDIF (the test suite's, in this process), each click's max |diff|
against the bridge, and the bytes each remote click sends and gets back. Each click is timed
``--repeat`` times with new ablation sets (so nothing is cached) and the median reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import circuitviz as cv
from circuitviz.engine.features import SAE, SAESet, steer

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from _common import machine

PROMPT = "When John and Mary went to the store, John gave a drink to"
PAIRS = cv.PromptPairs(
    [PROMPT, "When Tom and Anna went to the park, Tom gave a ball to"],
    [
        "When John and Mary went to the store, Mary gave a drink to",
        "When Tom and Anna went to the park, Anna gave a ball to",
    ],
    [" Mary", " Anna"],
    [" John", " Tom"],
)


def site_saes(shipped: SAESet) -> SAESet:
    s = shipped[shipped.hooks[0]]
    weights = (s.W_enc, s.b_enc, s.W_dec, s.b_dec)
    kind = {"activation": s.activation, "k": s.k, "threshold": s.threshold}
    kind["apply_b_dec_to_input"] = s.apply_b_dec_to_input
    return SAESet(
        [
            SAE("blocks.4.hook_attn_out", *weights, **kind),
            SAE("blocks.5.mlp.hook_in", *weights, **kind, output_hook="blocks.5.hook_mlp_out"),
        ]
    )


def remote_client(bridge):
    from circuitviz.engine.backends import _load
    from circuitviz.engine.backends._nnsight import NNsightModel
    from tests._fake_ndif import KEY, FakeNDIF

    server = _load.from_bridge(bridge)
    fake = FakeNDIF({"demo/smollm2": server.lm})
    lm = _load.from_bridge(bridge).lm
    lm._module.to("meta")
    client = NNsightModel(
        lm, repo_id="demo/smollm2", remote=True, api_key=KEY, transport=fake, model_name="demo"
    )
    return client, fake


def timed(fn) -> tuple[float, object]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    bridge = cv.load_model("demo", device="cpu")
    nn = cv.load_model(bridge, backend="nnsight")
    client, fake = remote_client(bridge)
    shipped = cv.load_saes("demo")
    moved = site_saes(shipped)
    clicks = {
        # name: (saes, a function of the repeat index giving the features)
        "latent L11 resid_post (mean)": (shipped, lambda r: [f"L11F{100 + r}"]),
        "error term L11 resid_post at P10 (mean)": (shipped, lambda r: [f"L11ERR:P{8 + r}"]),
        "latent L4 attn_out (mean)": (moved, lambda r: [f"L4attnF{200 + r}"]),
        "error term L5 transcoder at P12 (mean)": (moved, lambda r: [f"L5tcERR:P{10 + r}"]),
    }
    results: dict = {"machine": machine(), "loadavg_before": os.getloadavg(), "clicks": {}}
    for model in (bridge, nn, client):  # the baselines, so every timed click is one new set
        for saes in (shipped, moved):
            cv.ablate(
                model, PAIRS, features=["L11F1" if saes is shipped else "L4attnF1"], saes=saes
            )
    for name, (saes, feats) in clicks.items():
        row: dict = {}
        for label, model in (("bridge", bridge), ("nnsight", nn), ("nnsight_fake_ndif", client)):
            times, diffs = [], []
            for r in range(args.repeat):
                sent = len(fake.requests)
                names = feats(r)  # a new set each time: nothing cached
                seconds, got = timed(
                    lambda m=model, f=names, s=saes: cv.ablate(
                        m, PAIRS, features=f, saes=s, mode="mean"
                    )
                )
                ref = cv.ablate(bridge, PAIRS, features=names, saes=saes, mode="mean")
                times.append(seconds)
                diffs.append(abs(got.ablated - ref.ablated))
                if model is client:
                    row["requests_per_click"] = len(fake.requests) - sent
                    row["bytes_sent"] = len(fake.requests[-1])
                    row["bytes_back"] = fake.result_bytes[-1]
            row[label] = {"median_s": statistics.median(times), "max_abs_diff": max(diffs)}
        results["clicks"][name] = row
        print(name, json.dumps(row))
    from circuitviz.engine.features import feature_activations

    acts = feature_activations(bridge, PROMPT, moved).latents["blocks.4.hook_attn_out"]
    first, second = (f"L4attnF{int(i)}" for i in acts.amax(0).topk(2).indices)
    steer_row: dict = {}
    steer(bridge, PROMPT, features=first, saes=moved, n_tokens=20, progress=False)
    for label, model in (("nnsight", nn), ("nnsight_fake_ndif", client)):
        steer(model, PROMPT, features=first, saes=moved, n_tokens=20)  # the unedited side
        seconds, got = timed(
            lambda m=model: steer(m, PROMPT, features=second, saes=moved, n_tokens=20)
        )
        steer_row[label] = {"click_s": seconds, "tokens": got.after_tokens}
    seconds, ref = timed(
        lambda: steer(bridge, PROMPT, features=second, saes=moved, n_tokens=20, progress=False)
    )
    steer_row["bridge"] = {"click_s": seconds}
    steer_row["same_tokens"] = got.after_tokens == ref.after_tokens
    steer_row["bytes_sent"] = len(fake.requests[-1])
    results["steer L4 attn_out, 20 tokens"] = steer_row
    print("steer", json.dumps(steer_row))
    results["loadavg_after"] = os.getloadavg()
    print("load average", results["loadavg_before"], results["loadavg_after"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
