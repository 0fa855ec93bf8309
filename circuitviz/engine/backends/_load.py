"""Building nnsight models: from a bridge's weights, a local HF directory, or an NDIF name."""

from __future__ import annotations

from typing import Any

import torch

from .._pairs import InputError
from ._nnsight import NNsightModel


def _wrap(hf_model: Any, tokenizer: Any, **kwargs: Any) -> NNsightModel:
    from nnsight import TransformersModel

    lm = TransformersModel(hf_model, tokenizer=tokenizer, task="text-generation")
    return NNsightModel(lm, **kwargs)


def from_bridge(bridge: Any) -> NNsightModel:
    """An nnsight model with a bridge's exact weights and tokenizer.

    The bridge rewires the HF module it boots from, so a fresh copy of the architecture is
    built (eager attention, so patterns are visible) and given the same tensors.
    """
    from transformers import AutoModelForCausalLM

    original = bridge.original_model
    hf = AutoModelForCausalLM.from_config(original.config, attn_implementation="eager")
    # The bridge nests each HF module as `_original_component`; dropping that names them
    # as HF does.
    weights = {k.replace("._original_component", ""): v for k, v in original.state_dict().items()}
    wanted = hf.state_dict()
    missing = [k for k in wanted if k not in weights]
    if missing:
        raise InputError(
            f"Could not find {len(missing)} HF weights in this bridge (e.g. {missing[0]!r}); "
            "load the nnsight model from its name or directory instead: "
            "circuitviz.load_model(name, backend='nnsight')."
        )
    extra_bias = weights.get("lm_head.bias")
    if "lm_head.bias" not in wanted and extra_bias is not None and bool(extra_bias.any()):
        raise InputError(
            "This bridge's unembedding has a non-zero bias the HF model does not: load the "
            "nnsight model from its name or directory instead."
        )
    hf.load_state_dict({k: weights[k] for k in wanted})
    param = next(bridge.parameters())
    hf.to(param.device, param.dtype).eval()
    return _wrap(
        hf,
        bridge.tokenizer,
        default_prepend_bos=bool(bridge.cfg.default_prepend_bos),
        model_name=str(bridge.cfg.model_name),
    )


def from_pretrained(
    source: str,
    *,
    repo_id: str,
    device: torch.device,
    dtype: torch.dtype,
    placement: dict | None = None,
    remote: bool = False,
) -> NNsightModel:
    """A local HF directory or hub name through nnsight; with ``remote=True`` only the
    architecture is built here (no weights): NDIF holds them."""
    from nnsight import TransformersModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if remote:
        lm = TransformersModel(repo_id, task="text-generation")
        return NNsightModel(lm, repo_id=repo_id, remote=True, model_name=repo_id)
    tokenizer = AutoTokenizer.from_pretrained(source)
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": "eager"}
    hf = AutoModelForCausalLM.from_pretrained(source, **kwargs, **(placement or {}))
    if not placement:  # else accelerate placed the layers (device_map=)
        hf.to(device)
    hf.eval()
    return _wrap(hf, tokenizer, repo_id=repo_id, model_name=repo_id)
