"""A 2-layer attention-only toy model that learns induction, for the known-answer test.

Llama architecture (the bridge boots it) with its MLPs zeroed and frozen, trained on BOS +
a random token sequence of random length repeated twice (then random filler), with the loss
on the repeat only: the second copy is predictable only by induction (a previous-token head
in layer 0 whose output an induction head in layer 1 reads through its key). The random
length matters: with a fixed one, a layer-0 head learns to attend a fixed distance back and
no induction circuit forms. Rotary attention matters too: with learned absolute positions the
model can instead copy positions with a duplicate-token head (Q-composition), and the K-composed
circuit is not the one it learns.

The shipped ``induction_2l.pt`` (seed 0, 6000 steps of 64 sequences, final loss 0.017) was
trained with ``python circuitviz/engine/graph/_induction.py 6000`` (83 s on an H100 machine;
the script needs only torch and transformers, and uses CUDA when available). Running this
file retrains the shipped checkpoint.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:  # imported lazily: training needs only torch and transformers
    from transformer_lens.model_bridge import TransformerBridge

CHECKPOINT = Path(__file__).with_name("induction_2l.pt")
CONFIG = {"d_vocab": 64, "d_model": 64, "n_heads": 4, "n_ctx": 32, "length": 27}


def _hf_model(seed: int = 0):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=CONFIG["d_vocab"],
        hidden_size=CONFIG["d_model"],
        intermediate_size=CONFIG["d_model"],
        num_hidden_layers=2,
        num_attention_heads=CONFIG["n_heads"],
        num_key_value_heads=CONFIG["n_heads"],
        max_position_embeddings=CONFIG["n_ctx"],
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    for layer in model.model.layers:  # attention-only: the MLPs write exactly zero
        layer.mlp.down_proj.weight.data.zero_()
        for p in layer.mlp.parameters():
            p.requires_grad_(False)
    return model


def repeated_tokens(batch: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``[batch, length]`` tokens: BOS, a random sequence (never BOS) of 4…12 tokens, the same
    again, random filler; and ``[batch, length]`` bool: the positions whose next token is
    the repeat's (where the loss is taken)."""
    length, bos = CONFIG["length"], CONFIG["d_vocab"] - 1
    toks = torch.randint(0, bos, (batch, length), generator=generator)
    toks[:, 0] = bos
    target = torch.zeros(batch, length, dtype=torch.bool)
    halves = torch.randint(4, 13, (batch,), generator=generator).tolist()
    for row, h in enumerate(halves):
        toks[row, 1 + h : 1 + 2 * h] = toks[row, 1 : 1 + h]
        target[row, 1 + h : 2 * h] = True  # predicting tokens 2 … h of the repeat
    return toks, target


def train(
    steps: int = 6000, batch: int = 64, seed: int = 0, log: bool = False, device: str = "cpu"
):
    """Train the HF model; returns it (on the CPU) and the final loss on the repeats."""
    model = _hf_model(seed).to(device)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in range(steps):
        toks, target = repeated_tokens(batch, gen)
        toks, target = toks.to(device), target.to(device)
        logits = model(toks).logits[:, :-1]
        mask = target[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits[mask], toks[:, 1:][mask])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if log and step % 100 == 0:
            print(f"step {step} loss {loss.item():.3f}")
    model.eval()
    return model.cpu(), float(loss.detach())


def _boot(hf_model) -> TransformerBridge:
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import AutoTokenizer

    from .._tiny import tiny_tokenizer

    with tempfile.TemporaryDirectory() as d:
        hf_model.config.save_pretrained(d)
        tiny_tokenizer(CONFIG["d_vocab"]).save_pretrained(d)
        tokenizer = AutoTokenizer.from_pretrained(d)
        model = TransformerBridge.boot_transformers(d, hf_model=hf_model, tokenizer=tokenizer)
    model.cfg.model_name = "toy-induction-2l"
    model.eval()
    return model


def induction_model(
    *, retrain: bool = False, steps: int = 6000, seed: int = 0
) -> TransformerBridge:
    """The toy induction model as a bridge: from the shipped checkpoint, or trained now."""
    if retrain or not CHECKPOINT.exists():
        hf_model, _ = train(steps=steps, seed=seed)
    else:
        hf_model = _hf_model(seed)
        hf_model.load_state_dict(torch.load(CHECKPOINT, weights_only=True))
        hf_model.eval()
    return _boot(hf_model)


if __name__ == "__main__":  # pragma: no cover - retrains the shipped checkpoint
    import sys

    t0 = time.perf_counter()
    steps = int(sys.argv[1]) if len(sys.argv) > 1 else 6000
    trained, final = train(
        steps=steps, log=True, device="cuda" if torch.cuda.is_available() else "cpu"
    )
    torch.save(trained.state_dict(), CHECKPOINT)
    print(f"final loss {final:.3f} in {time.perf_counter() - t0:.1f}s -> {CHECKPOINT}")
