"""What a second OpenMP thread pool costs click to clamp: ``steer()`` run on the thread that
ran the model before (the kernel's main thread, where cells run) against the same call on
another thread (a kernel subshell's thread, where ipykernel 7 under JupyterLab hands widget
messages), then the main thread again beside that one; same inputs, same tokens.

    python benchmarks/clamp_thread.py [--clamps 7] [--json benchmarks/results/cpu2_clamp_thread.json]

libgomp keeps one thread pool per thread that opens a parallel region; once more threads are
pooled than the machine has cores it stops spin-waiting between regions, and each of the
many small products of a decoding step waits for its workers to wake. ``View._handle_msg``
therefore moves the page's messages to the main thread (``tests/test_main_thread.py``).
"""

from __future__ import annotations

import argparse
import json
import os
import queue
import statistics
import threading
import time

import torch

import circuitviz as cv
from circuitviz.engine import hooks

from _common import add_model_args, load, machine


class Worker:
    """One long-lived thread that runs what it is given, as a kernel subshell does."""

    def __init__(self) -> None:
        self.jobs: queue.Queue = queue.Queue()
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self) -> None:
        while True:
            fn, done = self.jobs.get()
            done.put(fn())

    def run(self, fn):
        done: queue.Queue = queue.Queue()
        self.jobs.put((fn, done))
        return done.get()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_model_args(parser)
    parser.add_argument("--clamps", type=int, default=7)
    parser.add_argument("--scale", type=float, default=4.0)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    model = load(args)
    saes = cv.load_saes("demo")
    prompt = cv.tasks.ioi(model, n=1, seed=0).clean[0]
    site = "blocks.11.hook_resid_post"
    got = {}

    def read(x, hook):
        got["f"] = saes[site].encode(x[0, -1])

    with torch.no_grad(), hooks(model, [(site, read)]):
        model(model.to_tokens(prompt), return_type="logits")
    latents = [int(i) for i in got["f"].topk(args.clamps + 1).indices]

    def clamp(latent: int):
        t0 = time.perf_counter()
        res = cv.steer(
            model, prompt, features=[f"L11F{latent}"], saes=saes, scale=args.scale, progress=False
        )
        return time.perf_counter() - t0, res.after_tokens

    clamp(latents[0])  # the unedited side, cached per prompt
    load_before = os.getloadavg()
    # A pool, once made, lives as long as its thread: first the main thread alone, then a
    # long-lived second thread, then the main thread again beside it.
    main_s = [clamp(latent) for latent in latents[1:]]
    worker = Worker()
    other_s = [worker.run(lambda latent=latent: clamp(latent)) for latent in latents[1:]]
    after_s = [clamp(latent) for latent in latents[1:]]
    same = [a[1] == b[1] == c[1] for a, b, c in zip(main_s, other_s, after_s, strict=True)]
    main_s, other_s, after_s = ([s for s, _ in runs] for runs in (main_s, other_s, after_s))
    out = {
        "machine": machine(),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": load_before,
        "load_average_after": os.getloadavg(),
        "main_thread_s": main_s,
        "other_thread_s": other_s,
        "main_thread_median_s": statistics.median(main_s),
        "other_thread_median_s": statistics.median(other_s),
        "main_thread_beside_it_s": after_s,
        "main_thread_beside_it_median_s": statistics.median(after_s),
        "ratio_other_over_main": statistics.median(other_s) / statistics.median(main_s),
        "same_tokens": all(same),
    }
    print(
        f"steer, 20 tokens, {len(main_s)} clamps, {out['torch_threads']} torch threads, load "
        f"{load_before[0]:.1f}→{out['load_average_after'][0]:.1f}: main thread median "
        f"{out['main_thread_median_s']:.3f} s, another thread {out['other_thread_median_s']:.3f}"
        f" s ({out['ratio_other_over_main']:.2f}×), main thread beside it "
        f"{out['main_thread_beside_it_median_s']:.3f} s; same tokens: {out['same_tokens']}"
    )
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)


if __name__ == "__main__":
    main()
