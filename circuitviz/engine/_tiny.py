"""Tiny random-initialised models built locally, for tests and examples that need no hub.

The tokenizer is word-level over ``t0 … t{n-1}``, so prompts are plain strings such as
``"t5 t17 t3"`` and every word is exactly one token.
"""

from __future__ import annotations

import tempfile
from typing import Literal

import torch
from transformer_lens.model_bridge import TransformerBridge


def tiny_tokenizer(d_vocab: int = 128):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"t{i}": i for i in range(d_vocab - 1)}
    vocab["<bos>"] = d_vocab - 1
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<bos>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        unk_token="<bos>",
        bos_token="<bos>",
        eos_token="<bos>",
        pad_token="<bos>",
    )


def tiny_model(
    kind: Literal["gpt2", "llama"] = "llama",
    *,
    n_layers: int = 2,
    d_model: int = 32,
    n_heads: int = 4,
    n_kv_heads: int = 2,
    d_vocab: int = 128,
    n_ctx: int = 64,
    seed: int = 0,
) -> TransformerBridge:
    """A random-initialised model: GPT-2 style (LayerNorm, learned positions, multi-head)
    or Llama style (RMSNorm, rotary, grouped-query attention with ``n_kv_heads``)."""
    from transformers import (
        AutoTokenizer,
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
    )

    torch.manual_seed(seed)
    if kind == "gpt2":
        config = GPT2Config(
            vocab_size=d_vocab, n_positions=n_ctx, n_embd=d_model, n_layer=n_layers, n_head=n_heads
        )
        hf_model = GPT2LMHeadModel(config)
    elif kind == "llama":
        config = LlamaConfig(
            vocab_size=d_vocab,
            hidden_size=d_model,
            intermediate_size=2 * d_model,
            num_hidden_layers=n_layers,
            num_attention_heads=n_heads,
            num_key_value_heads=n_kv_heads,
            max_position_embeddings=n_ctx,
        )
        hf_model = LlamaForCausalLM(config)
    else:
        raise ValueError(f"tiny_model kind must be 'gpt2' or 'llama', got {kind!r}.")
    hf_model.eval()
    # The bridge reads its config from a directory; a temporary one keeps this offline.
    with tempfile.TemporaryDirectory() as d:
        hf_model.config.save_pretrained(d)
        tiny_tokenizer(d_vocab).save_pretrained(d)
        tokenizer = AutoTokenizer.from_pretrained(d)
        model = TransformerBridge.boot_transformers(d, hf_model=hf_model, tokenizer=tokenizer)
    model.cfg.model_name = f"tiny-{kind}"
    model.eval()
    return model
