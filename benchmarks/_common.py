"""Shared set-up of the benchmarks: the model, the machine, timing."""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Callable

import torch

import circuitviz as cv

#: Random-weight configurations of real architectures, for timing where weights can't be
#: downloaded (timing does not depend on the weights). Tokenizer: the demo model's.
MODEL_PRESETS: dict[str, dict] = {
    # Llama-3.2-1B's shape (16 layers, d_model 2048, 32 query / 8 KV heads, GQA, RoPE).
    "llama-1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        rope_theta=500000.0,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    ),
    # The same architecture, tiny: a CPU smoke test of the --model path.
    "llama-tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    ),
}


def add_model_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    parser.add_argument(
        "--model",
        default="demo",
        help="'demo' (real SmolLM2-135M weights), or random weights of a real architecture: "
        f"{', '.join(sorted(MODEL_PRESETS))}, or a directory holding a config.json",
    )
    parser.add_argument(
        "--random-init",
        metavar="DIR",
        default=None,
        help="same as --model DIR: build the architecture in DIR (config.json + tokenizer) "
        "with random weights; for machines the 98 MB demo weights cannot reach.",
    )


def _device(args: argparse.Namespace) -> str:
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _random_config(name: str):
    """The config of a preset or a directory; the preset borrows the demo's vocabulary."""
    from transformers import AutoConfig, LlamaConfig

    if name in MODEL_PRESETS:
        from circuitviz.engine._models import _demo_hf_dir

        demo = AutoConfig.from_pretrained(_demo_hf_dir())
        return LlamaConfig(
            vocab_size=demo.vocab_size,
            bos_token_id=demo.bos_token_id,
            eos_token_id=demo.eos_token_id,
            **MODEL_PRESETS[name],
        ), str(_demo_hf_dir())
    return AutoConfig.from_pretrained(name), name


def load_with_peer(args: argparse.Namespace, *, peer: bool = False):
    """The bridge, and (``peer=True``) a plain Hugging Face copy with the same weights for
    peers that wrap an HF model (nnsight). Either may be on ``--device``."""
    import copy
    import tempfile

    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = args.random_init or args.model
    device = _device(args)
    if name == "demo":
        model = cv.load_model("demo", device=args.device)
        if not peer:
            return model, None
        from circuitviz.engine._models import _demo_hf_dir

        hf_peer = AutoModelForCausalLM.from_pretrained(_demo_hf_dir(), dtype=torch.float32)
        return model, hf_peer.to(device).eval()
    config, tokenizer_dir = _random_config(name)
    torch.manual_seed(0)
    hf_model = AutoModelForCausalLM.from_config(config).to(device).eval()
    # The bridge wraps the modules of the model it is given: the peer gets its own copy.
    hf_peer = copy.deepcopy(hf_model) if peer else None
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    with tempfile.TemporaryDirectory() as d:
        config.save_pretrained(d)
        tokenizer.save_pretrained(d)
        model = TransformerBridge.boot_transformers(
            d, hf_model=hf_model, tokenizer=tokenizer, device=device
        )
    model.cfg.model_name = f"{os.path.basename(str(name).rstrip('/'))} (random weights)"
    model.eval()
    return model, hf_peer


def random_weights(args: argparse.Namespace) -> bool:
    """Whether ``--model`` / ``--random-init`` draw the weights at random."""
    return args.random_init is not None or args.model != "demo"


def load(args: argparse.Namespace):
    return load_with_peer(args)[0]


def ioi_batch(args: argparse.Namespace, model=None):
    """The model, ``args.pairs`` IOI pairs, their tokens and TransformerLens's form of the
    logit difference (full logits -> the batch mean at the final position)."""
    from circuitviz.engine import tokenize

    model = load(args) if model is None else model
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
    wall, _, out = cpu_timed(model, fn)
    return wall, out


def cpu_timed(model, fn: Callable[[], object]) -> tuple[float, float, object]:
    """Wall-clock and process CPU seconds of ``fn()``. On a loaded shared CPU the wall time
    mostly measures the other jobs; with one torch thread the CPU time is the work done."""
    sync(model)
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    sync(model)
    return time.perf_counter() - start, time.process_time() - cpu, out


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
