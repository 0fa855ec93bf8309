"""Click-to-clamp time on the demo model: ``steer()`` with 20 greedy tokens, SAE features of
block 11 clamped to 4 × their maximum, the unedited side cached per prompt (as in the view).

    python benchmarks/steer.py [--threads 1] [--clamps 7] [--json benchmarks/results/cpu2_steer.json]

Uses ``circuitviz.load_saes("demo")`` when it exists, else throwaway random TopK SAEs of the
same shape (4096 latents, k=32, blocks 5/11/17/23): the timing depends on the shapes, not on
what the latents mean. Reports the bridge-hooked loop (no KV cache, the reference) once, the
first call (which also generates the unedited side), the median of ``--clamps`` clamps of
different features (the continuation: what the view paints first) and of the metric on the
8 IOI pairs (painted second), and the load average (the machine is shared).

Each clamp is also timed the previous way (``F.linear`` on every pass, 6 guessed tokens per
pass: ``_generate.SKINNY_ROWS = 0``, ``LOOKAHEAD = 6``), interleaved with the current one so
that both see the same load; both give the same tokens. Wall and process CPU times are kept
(on a loaded machine the CPU time is the steadier of the two).
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
from circuitviz.engine.features import SAE, SAESet, _generate
from circuitviz.engine.features._generate import greedy_bridge
from circuitviz.engine.features._splice import LatentEdit
from circuitviz.engine.features._steer import edit_metric, feature_edits, parse_features

from _common import add_model_args, load, machine


def throwaway_saes(d_model: int) -> SAESet:
    g = torch.Generator().manual_seed(0)
    out = []
    for layer in (5, 11, 17, 23):
        W = torch.randn(d_model, 4096, generator=g) / d_model**0.5
        out.append(
            SAE(
                f"blocks.{layer}.hook_resid_post",
                W,
                torch.zeros(4096),
                3 * W.T.contiguous(),
                torch.zeros(d_model),
                "topk",
                k=32,
                meta={"format": "throwaway-random"},
            )
        )
    return SAESet(out, name="throwaway")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)
    parser.add_argument("--threads", type=int, default=None, help="torch threads")
    parser.add_argument("--clamps", type=int, default=7)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load(args)
    loader = getattr(cv, "load_saes", None)
    saes = loader("demo") if loader is not None else throwaway_saes(model.cfg.d_model)
    pairs = cv.tasks.ioi(model, n=8, seed=0)
    prompt = pairs.clean[0]
    site = hook_name = "blocks.11.hook_resid_post"
    got = {}

    def read(x, hook):
        got["f"] = saes[site].encode(x[0, -1])

    with torch.no_grad(), hooks(model, [(hook_name, read)]):
        model(model.to_tokens(prompt), return_type="logits")
    latents = [int(i) for i in got["f"].topk(args.clamps + 1).indices]
    load_before = os.getloadavg()

    feats = parse_features([f"L11F{latents[0]}"], saes)
    t0 = time.perf_counter()
    first = cv.steer(model, prompt, features=[f"L11F{latents[0]}"], saes=saes, scale=args.scale)
    t_first = time.perf_counter() - t0
    t0 = time.perf_counter()
    ref = greedy_bridge(
        model,
        model.to_tokens(prompt)[0],
        saes,
        [LatentEdit(site, latents[0], first.values[0])],
        n_tokens=20,
        eos=model.tokenizer.eos_token_id,
    )
    t_bridge = time.perf_counter() - t0
    same = [model.to_string(i) for i in ref.ids] == first.after_tokens

    cont, cont_cpu, old, old_cpu, metric, texts = [], [], [], [], [], []
    same_as_previous: list[bool] = []
    current = (_generate.SKINNY_ROWS, _generate.LOOKAHEAD)

    def timed_steer(latent: int, config: tuple[int, int]) -> tuple[object, float, float]:
        _generate.SKINNY_ROWS, _generate.LOOKAHEAD = config
        try:
            t0, c0 = time.perf_counter(), time.process_time()
            res = cv.steer(model, prompt, features=[f"L11F{latent}"], saes=saes, scale=args.scale)
            return res, time.perf_counter() - t0, time.process_time() - c0
        finally:
            _generate.SKINNY_ROWS, _generate.LOOKAHEAD = current

    for n, i in enumerate(latents[1:]):
        # alternate which goes first, so neither always runs right after the metric
        order = [current, (0, 6)] if n % 2 == 0 else [(0, 6), current]
        got_runs = {config: timed_steer(i, config) for config in order}
        res, wall, cpu = got_runs[current]
        prev, wall_old, cpu_old = got_runs[(0, 6)]
        same_as_previous.append(prev.after_tokens == res.after_tokens)
        cont.append(wall)
        cont_cpu.append(cpu)
        old.append(wall_old)
        old_cpu.append(cpu_old)
        feats = parse_features(res.features, saes)
        t0 = time.perf_counter()
        edit_metric(model, pairs, saes, feature_edits(feats, res.values))
        metric.append(time.perf_counter() - t0)
        texts.append(res.after)
    out = {
        "machine": machine(),
        "saes": saes.name,
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "bridge_loop_s": t_bridge,
        "first_call_s": t_first,
        "kv_cache_equals_bridge_loop": same,
        "continuation_s": cont,
        "continuation_median_s": statistics.median(cont),
        "continuation_cpu_s": cont_cpu,
        "continuation_cpu_median_s": statistics.median(cont_cpu),
        "previous_path_s": old,
        "previous_path_median_s": statistics.median(old),
        "previous_path_cpu_median_s": statistics.median(old_cpu),
        "previous_path_same_tokens": all(same_as_previous),
        "metric_s": metric,
        "metric_median_s": statistics.median(metric),
        "before": first.before,
        "after_examples": texts[:3],
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
