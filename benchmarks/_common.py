"""Shared set-up of the benchmarks: the model, the machine, timing."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch

import circuitviz as cv


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument(
        "--random-init",
        metavar="DIR",
        default=None,
        help="build the demo architecture from DIR (config.json + tokenizer) with random "
        "weights; for machines the 98 MB demo weights cannot reach. Timing is unaffected.",
    )


def load(args: argparse.Namespace):
    if args.random_init is None:
        return cv.load_model("demo", device=args.device)
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    torch.manual_seed(0)
    config = AutoConfig.from_pretrained(args.random_init)
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    hf_model = AutoModelForCausalLM.from_config(config).to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(args.random_init)
    model = TransformerBridge.boot_transformers(
        args.random_init, hf_model=hf_model, tokenizer=tokenizer, device=device
    )
    model.eval()
    return model


def ioi_batch(args: argparse.Namespace):
    """The model, ``args.pairs`` IOI pairs, their tokens and TransformerLens's form of the
    logit difference (full logits -> the batch mean at the final position)."""
    from circuitviz.engine import tokenize

    model = load(args)
    pairs = cv.tasks.ioi(model, n=args.pairs, seed=0)
    tokens = tokenize(model, pairs)
    rows = torch.arange(tokens.batch)

    def tl_metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        return (last[rows, tokens.answers] - last[rows, tokens.wrong_answers]).mean()

    return model, pairs, tokens, tl_metric


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    text = f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__} ({torch.get_num_threads()} threads)"
    if torch.cuda.is_available():
        text += f", GPU {torch.cuda.get_device_name()}"
    return text


def sync(model) -> None:
    if str(model.cfg.device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(model, fn: Callable[[], object]) -> tuple[float, object]:
    sync(model)
    start = time.perf_counter()
    out = fn()
    sync(model)
    return time.perf_counter() - start, out


class ForwardCounter:
    """Counts forward passes by the embedding module's calls (one per pass)."""

    def __init__(self, model) -> None:
        self.n = 0
        self._handle = model.embed.register_forward_pre_hook(self._count)

    def _count(self, module, args) -> None:
        self.n += 1

    def close(self) -> None:
        self._handle.remove()

    def __enter__(self) -> ForwardCounter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
