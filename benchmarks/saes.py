"""Quality of the demo SAEs on held-out text: FVE, L0, dead latents, loss increase.

    python benchmarks/saes.py                     # → results/cpu2_saes.json
    python benchmarks/saes.py --saes DIR --rows 32

Text: ``packed_tokens(model, "reference")`` — the corpus's held-out split, shuffled (seed 0)
and cut into rows of 128 tokens starting with BOS; FVE, L0 and dead latents on the first
``--rows`` rows, the loss on the first ``--loss-rows`` (five forward passes each: the CPU
here is shared, so these are kept small). BOS is left out
of every figure (and keeps its true activation when splicing). The loss increase is the
next-token cross-entropy with one SAE's reconstruction replacing its hook's activation
(``splice_hook(sae, keep_error=False)``), minus the clean loss, in nats per token.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from circuitviz.engine import load_model
from circuitviz.engine.features import check_saes, load_saes, packed_tokens, sae_quality

from _common import machine

TARGETS = {"fve": 0.8, "l0": 64, "dead_share": 0.10}
#: the rows the demo-SAE test re-measures (same text, same order)
TEST_ROWS = 8


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--saes", default="demo")
    p.add_argument("--rows", type=int, default=32, help="rows for FVE, L0 and dead latents")
    p.add_argument("--loss-rows", type=int, default=12, help="rows for the loss increase")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "cpu2_saes.json"))
    args = p.parse_args()
    torch.set_num_threads(1)
    model = load_model("demo", device="cpu")
    saes = check_saes(model, load_saes(args.saes, device="cpu"))
    rows = max(args.rows, args.loss_rows, TEST_ROWS)
    tokens = packed_tokens(model, "reference", max_tokens=rows * 128 + 2000)[:rows]
    t0 = time.time()
    test_rows = sae_quality(model, saes, tokens[:TEST_ROWS], losses=False, progress=False)
    figures = sae_quality(model, saes, tokens[: args.rows], losses=False)
    losses = sae_quality(model, saes, tokens[: args.loss_rows])
    seconds = time.time() - t0
    out = {
        "what": "demo SAEs on held-out reference text (positions ≥ 1)",
        "machine": machine(),
        "rows": args.rows,
        "loss_rows": args.loss_rows,
        "test_rows": TEST_ROWS,
        "seq_len": int(tokens.shape[1]),
        "seconds": round(seconds, 1),
        "targets": TARGETS,
        "saes": {},
    }
    for hook, row in figures.items():
        cfg = saes[hook].meta.get("cfg", {}).get("circuitviz", {})
        row = dict(row)
        row.update({k: v for k, v in losses[hook].items() if k.startswith("loss")})
        row = {k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
        row["fve_test_rows"] = round(test_rows[hook]["fve"], 4)
        row["fve_typical_test_rows"] = round(test_rows[hook]["fve_typical"], 4)
        row["k"] = saes[hook].k
        row["d_sae"] = saes[hook].d_sae
        row["training"] = {
            k: cfg.get(k) for k in ("training_tokens", "epochs", "steps", "final") if k in cfg
        }
        row["meets_targets"] = (
            row["fve_typical"] >= TARGETS["fve"]
            and row["l0"] <= TARGETS["l0"]
            and row["dead_share"] <= TARGETS["dead_share"]
        )
        out["saes"][hook] = row
        print(
            f"{hook:28s} FVE {row['fve']:.3f} (typical {row['fve_typical']:.3f})  L0 {row['l0']:.1f}  dead {row['dead_share']:.3f}"
            f"  loss {row['loss_clean']:.3f} → {row['loss_spliced']:.3f}"
            f" (+{row['loss_increase']:.3f})"
        )
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(f"{seconds:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
