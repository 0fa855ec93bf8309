"""A model sharded over several GPUs (``device_map=``) against the same weights on one device:
every analysis, its numbers and its time.

    # on a machine with >= 2 GPUs: Llama-3.2-1B's shape, random weights, split evenly
    python benchmarks/multigpu.py --model llama-1b --device-map balanced --json OUT.json
    # CPU smoke test of the same code paths: half the blocks offloaded to disk
    python benchmarks/multigpu.py --model llama-tiny --device-map offload

The weights are drawn at random for a real architecture (``--model``: a preset of
``_common.MODEL_PRESETS`` or a directory with a ``config.json``) and saved once; the reference
loads them on one device (``--reference-device``, default ``cuda:0`` or the CPU), the sharded
run with ``load_model(dir, device_map=...)``. ``--device-map offload`` puts every other
decoder block on ``"disk"`` (accelerate keeps its weights on ``meta`` outside its forward,
the proxy for sharding on a CPU: weights must be read through ``engine/_devices``). Each
analysis (patch, ablate, attention, EAP, DLA, logit lens, path patching, steer) must match
the reference to ``--tol`` (max |diff|); the script exits 1 otherwise. ``--backends
bridge,nnsight`` adds nnsight over the same placement (patch, ablate, attention, EAP).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

import circuitviz as cv
from circuitviz.engine.features import SAE, SAESet

from _common import MODEL_PRESETS, _random_config, machine


def save_random_model(name: str, path: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config, tokenizer_dir = _random_config(name)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(path)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(path)


def offload_map(path: Path) -> dict:
    """Every other decoder block on disk, the rest (embeddings, norm, unembedding) on the CPU;
    tied embeddings stay together, as accelerate places a tied weight once."""
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(path)
    placement: dict = {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu"}
    for layer in range(config.num_hidden_layers):
        placement[f"model.layers.{layer}"] = "disk" if layer % 2 == 0 else "cpu"
    placement["model.norm"] = "disk"
    placement["lm_head"] = "cpu" if config.tie_word_embeddings else "disk"
    return placement


def throwaway_saes(model, layer: int) -> SAESet:
    d_model = int(model.cfg.d_model)
    g = torch.Generator().manual_seed(0)
    W = torch.randn(d_model, 256, generator=g) / d_model**0.5
    sae = SAE(
        f"blocks.{layer}.hook_resid_post",
        W,
        torch.zeros(256),
        3 * W.T.contiguous(),
        torch.zeros(d_model),
        "topk",
        k=8,
        meta={"format": "throwaway-random"},
    )
    return SAESet([sae], name="throwaway")


def analyses(model, pairs, saes: SAESet, prompt: str) -> dict[str, Callable]:
    """name -> (model -> tensor): what the sharded run must reproduce."""

    def steer(m):
        # A feature that fires on the prompt, clamped; the edited metric is compared.
        hook = saes.hooks[0]
        _, acts = model.run_with_cache(model.to_tokens(prompt), names_filter=hook)
        index = int(saes[hook].encode(acts[hook][0, -1].float().cpu()).argmax())
        layer = int(hook.split(".")[1])
        out = cv.steer(m, prompt, features=f"L{layer}F{index}", saes=saes, n_tokens=4, pairs=pairs)
        return torch.tensor([out.metric_before, out.metric_after])

    return {
        "patch heads": lambda m: cv.patch(m, pairs, over="heads", progress=False).values,
        "patch resid_pre": lambda m: cv.patch(m, pairs, over="resid_pre", progress=False).values,
        "ablate": lambda m: torch.tensor(
            cv.ablate(m, pairs, heads=["L0H0", "L1H1"], mode="mean").per_prompt["ablated"]
        ),
        "attention": lambda m: torch.stack(
            [p.float().cpu() for p in cv.attention(m, prompt).patterns]
        ),
        "eap": lambda m: cv.circuit(m, pairs, method="eap", progress=False).scores,
        "dla": lambda m: cv.logit_attribution(m, pairs, by="heads").values,
        "logit lens": lambda m: cv.logit_lens(m, prompt).top_probs,
        "path patch": lambda m: (
            cv.path_patch(m, pairs, senders="heads", receivers="logits", progress=False).values
        ),
        "steer": steer,
    }


#: All but steer (SAE steering on nnsight takes its own path): since the toolkit port, DLA,
#: the logit lens and path patching run as nnsight programs too.
NNSIGHT_ANALYSES = (
    "patch heads",
    "patch resid_pre",
    "ablate",
    "attention",
    "eap",
    "dla",
    "logit lens",
    "path patch",
)


def sync() -> None:
    for i in range(torch.cuda.device_count()):
        torch.cuda.synchronize(i)


def run(name: str, fn: Callable, ref_model, model, tol: float) -> dict:
    sync()
    start = time.perf_counter()
    ref = fn(ref_model)
    sync()
    ref_s = time.perf_counter() - start
    start = time.perf_counter()
    try:
        got = fn(model)
    except Exception as e:  # reported, and the run fails
        return {"analysis": name, "ok": False, "error": f"{type(e).__name__}: {e}"[:500]}
    sync()
    got_s = time.perf_counter() - start
    a, b = torch.as_tensor(got).float().cpu(), torch.as_tensor(ref).float().cpu()
    diff = float((a - b).abs().max()) if a.shape == b.shape and a.numel() else float("nan")
    return {
        "analysis": name,
        "ok": diff <= tol,
        "max_abs_diff": diff,
        "seconds": round(got_s, 3),
        "reference_seconds": round(ref_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default="llama-tiny", help=", ".join(sorted(MODEL_PRESETS)))
    parser.add_argument(
        "--device-map",
        default=None,
        help="'auto', 'balanced', 'sequential' (GPUs), 'offload' (the CPU proxy), or JSON. "
        "Default: balanced with >= 2 GPUs, else offload",
    )
    parser.add_argument("--reference-device", default=None)
    parser.add_argument("--pairs", type=int, default=4)
    parser.add_argument("--tol", type=float, default=1e-4)
    parser.add_argument(
        "--backends", default="bridge", help="bridge and/or nnsight, comma-separated"
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args()

    gpus = torch.cuda.device_count()
    device_map = args.device_map or ("balanced" if gpus >= 2 else "offload")
    reference_device = args.reference_device or ("cuda:0" if gpus else "cpu")
    report: dict = {
        "machine": machine(),
        "gpus": gpus,
        "model": args.model,
        "device_map": device_map,
        "reference_device": reference_device,
        "results": [],
    }
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(args.model) if Path(args.model).is_dir() else Path(tmp) / "model"
        if not Path(args.model).is_dir():
            save_random_model(args.model, path)
        placement = (
            offload_map(path)
            if device_map == "offload"
            else json.loads(device_map)
            if device_map.startswith("{")
            else device_map
        )
        for backend in args.backends.split(","):
            ref_model = cv.load_model(str(path), device=reference_device, backend=backend)
            model = cv.load_model(
                str(path),
                device_map=placement,
                offload_folder=Path(tmp) / "offload",
                backend=backend,
            )
            hf = model.original_model if backend == "bridge" else model.lm._module
            report.setdefault("hf_device_map", {})[backend] = {
                k: str(v) for k, v in getattr(hf, "hf_device_map", {}).items()
            }
            bridge_ref = (
                ref_model
                if backend == "bridge"
                else cv.load_model(str(path), device=reference_device)
            )
            pairs = cv.tasks.ioi(bridge_ref, n=args.pairs, seed=0)
            prompt = pairs.clean[0]
            todo = analyses(bridge_ref, pairs, throwaway_saes(bridge_ref, 1), prompt)
            for name, fn in todo.items():
                if backend == "nnsight" and name not in NNSIGHT_ANALYSES:
                    continue
                row = {"backend": backend, **run(name, fn, ref_model, model, args.tol)}
                report["results"].append(row)
                print(json.dumps(row), flush=True)
    if gpus:
        report["max_memory_allocated_gib"] = {
            f"cuda:{i}": round(torch.cuda.max_memory_allocated(i) / 2**30, 3) for i in range(gpus)
        }
    report["ok"] = all(r["ok"] for r in report["results"])
    print(json.dumps({k: v for k, v in report.items() if k != "results"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=1))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
