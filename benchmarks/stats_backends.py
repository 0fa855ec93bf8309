"""Feature statistics on the bridge and on nnsight (local), and what a corpus costs on NDIF.

    python benchmarks/stats_backends.py [--texts 64] [--json benchmarks/results/cpu2_stats_backends.json]

On the demo model with its four shipped 4096-latent SAEs (blocks 5/11/17/23), over the first
``--texts`` reference texts (each cut to 128 tokens, 8 a batch): the time of
``feature_stats`` on each backend (interleaved twice, so both see the same load, plus the
process CPU time), whether the snippets, histogram counts, promoted tokens and labels are
identical and the largest snippet-value difference. Then the whole reference corpus's request
plan at the default ``max_request_bytes`` (64 MiB): requests, activations that come back,
and what the ``[pos, d_sae]`` latent maps would have been. The machine is shared: the load
average is printed.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

import circuitviz as cv
from circuitviz.engine.backends._stats import request_plan
from circuitviz.engine.features import feature_stats
from circuitviz.engine.features._corpus import reference_corpus
from circuitviz.engine.features._stats import _tokenize


def timed(call):
    wall, cpu = time.perf_counter(), time.process_time()
    out = call()
    return out, time.perf_counter() - wall, time.process_time() - cpu


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--texts", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    bridge = cv.load_model("demo", device="cpu")
    nn = cv.load_model(bridge, backend="nnsight")
    saes = cv.load_saes("demo")
    corpus = reference_corpus(nn)
    texts = corpus[: args.texts]
    options = {"batch_size": 8, "max_len": 128, "progress": False}
    times: dict[str, list] = {"bridge": [], "nnsight": []}
    got = {}
    for _ in range(2):
        for name, model in (("bridge", bridge), ("nnsight", nn)):
            got[name], wall, cpu = timed(lambda m=model: feature_stats(m, saes, texts, **options))
            times[name].append((round(wall, 2), round(cpu, 2)))
    same, diff = True, 0.0
    for hook in saes:
        r, g = got["bridge"][hook], got["nnsight"][hook]
        diff = max(diff, float(np.abs(r.top_values - g.top_values).max()))
        same &= bool(
            np.array_equal(r.top_doc, g.top_doc)
            and np.array_equal(r.top_pos, g.top_pos)
            and np.array_equal(r.hist_counts, g.hist_counts)
            and np.array_equal(r.promoted, g.promoted)
            and r.labels == g.labels
        )
    # The whole reference corpus on NDIF: the plan feature_stats follows.
    docs = _tokenize(nn, corpus, 128, True)
    lengths = [[len(d) for d in docs[i : i + 8]] for i in range(0, len(docs), 8)]
    plan = request_plan(nn, saes, lengths, 1, 2**26)
    n_tokens = sum(len(d) - 1 for d in docs)
    per_token = len(saes) * nn.cfg.d_model * 4
    d_sae = sum(s.d_sae for s in saes.values())
    out = {
        "texts": len(texts),
        "tokens": got["bridge"][saes.hooks[0]].n_tokens,
        "bridge_s": times["bridge"],
        "nnsight_s": times["nnsight"],
        "identical_snippets_hist_promoted_labels": same,
        "max_abs_diff_top_values": diff,
        "corpus_texts": len(corpus),
        "corpus_tokens": n_tokens,
        "corpus_requests": len(plan),
        "corpus_batches": len(lengths),
        "corpus_back_MB": round(n_tokens * per_token / 2**20, 1),
        "corpus_latent_maps_MB": round(n_tokens * d_sae * 4 / 2**20, 1),
        "loadavg": open("/proc/loadavg").read().split()[:3],
        "threads": args.threads,
        "cpus": os.cpu_count(),
    }
    print(json.dumps(out, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
