"""Compute the feature statistics shipped with the demo SAEs (top snippets, histograms,
promoted tokens, labels) and write them beside the SAEs.

    python scripts/feature_stats_demo.py                 # load_saes("demo") on the reference split
    python scripts/feature_stats_demo.py --throwaway     # time it on random SAEs of the demo's
                                                         # shape; writes nothing into the package

The output, ``circuitviz/data/saes/demo/feature_stats.npz``, is what
``circuitviz.load_feature_stats`` reads (``load_saes("demo")`` puts it in ``SAESet.stats``).
Prints the time, the tokens per second and the file's size.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "circuitviz" / "data" / "saes" / "demo" / "feature_stats.npz"
#: The demo SAEs' shape, for --throwaway: TopK over these hooks, this many latents.
DEMO_HOOKS = [f"blocks.{layer}.hook_resid_post" for layer in (5, 11, 17, 23)]
DEMO_LATENTS, DEMO_K = 4096, 64


def throwaway_saes(model):
    """Random TopK SAEs of the demo SAEs' shape (timing only: their labels mean nothing)."""
    from circuitviz.engine.features import SAE, SAESet

    g = torch.Generator().manual_seed(0)
    d = model.cfg.d_model
    saes = []
    for hook in DEMO_HOOKS:
        W = torch.randn(d, DEMO_LATENTS, generator=g) / d**0.5
        saes.append(
            SAE(
                hook,
                W,
                torch.zeros(DEMO_LATENTS),
                W.T.clone(),
                torch.zeros(d),
                activation="topk",
                k=DEMO_K,
            )
        )
    return SAESet(saes, name="throwaway")


def throwaway_texts() -> list[str]:
    """Offline texts for timing when the reference corpus is not installed: the shipped
    instruction sets, each repeated into a longer text."""
    import json

    data = json.loads((ROOT / "circuitviz" / "data" / "refusal_instructions.json").read_text())
    lines = [s for split in ("harmful", "harmless") for part in data[split].values() for s in part]
    return [" ".join(lines[i : i + 6]) for i in range(0, len(lines), 6)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--max-texts", type=int, default=None, help="use only the first N texts")
    parser.add_argument("--max-len", type=int, default=128, help="tokens per text (default 128)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (default 2)")
    parser.add_argument("--throwaway", action="store_true", help="random SAEs of the demo shape")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    import circuitviz
    from circuitviz.engine.features import feature_stats, save_feature_stats

    model = circuitviz.load_model("demo", device="cpu")
    if args.throwaway:
        saes = throwaway_saes(model)
        try:
            from circuitviz.engine.features._corpus import reference_corpus

            texts, source = reference_corpus(model, split="reference"), "reference_corpus"
        except ImportError:
            texts, source = throwaway_texts(), "refusal instructions (no reference corpus yet)"
        out = args.out if args.out != OUT else Path("/tmp/feature_stats_throwaway.npz")
    else:
        from circuitviz.engine.features._corpus import reference_corpus

        saes = circuitviz.load_saes("demo")
        texts, source = reference_corpus(model, split="reference"), "reference_corpus"
        out = args.out
    if args.max_texts:
        texts = texts[: args.max_texts]
    print(
        f"{len(saes)} SAEs × {next(iter(saes.values())).d_sae} latents; {len(texts)} texts ({source})"
    )
    t0, cpu0 = time.perf_counter(), time.process_time()
    stats = feature_stats(
        model,
        saes,
        texts,
        max_len=args.max_len,
        batch_size=args.batch_size,
        corpus_name="reference_corpus(split='reference')"
        if source == "reference_corpus"
        else source,
    )
    seconds, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    out.parent.mkdir(parents=True, exist_ok=True)
    save_feature_stats(stats, out)
    n_tokens = next(iter(stats.values())).n_tokens
    print(
        f"{seconds:.1f} s wall ({cpu:.1f} s CPU) for {n_tokens} tokens "
        f"({n_tokens / seconds:.0f} tokens/s); "
        f"{out} is {out.stat().st_size / 2**20:.2f} MiB"
    )


if __name__ == "__main__":
    main()
