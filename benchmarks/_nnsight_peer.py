"""nnsight as a patching peer: the same maps as ``circuitviz.patch``, written the way an
nnsight user would, on a plain Hugging Face copy of the model with the same weights.

Two forms: a loop (one trace per condition, every prompt of the batch in it), and a batched
trace (the conditions are rows of one batch, condition-major, chunked to ``max_rows``). Both
keep only the final position's logits (``logits_to_keep=1``), as circuitviz does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

# Hugging Face module paths per architecture: the decoder layers, the head-output
# projection (its input is TransformerLens's hook_z, heads side by side), attention, MLP.
ARCH_PATHS = {
    "llama": ("model.layers", "self_attn.o_proj", "self_attn", "mlp"),
    "gpt2": ("transformer.h", "attn.c_proj", "attn", "mlp"),
}


def _get(obj, path: str):
    for part in path.split("."):
        obj = getattr(obj, part)
    return obj


@dataclass(frozen=True)
class Site:
    """Where a map patches in the HF model, and which slice one cell is."""

    over: str
    d_head: int

    def envoy(self, layer_envoy, paths: tuple[str, str, str, str]):
        _, o_proj, attn, mlp = paths
        if self.over in ("heads", "heads_by_pos"):
            return _get(layer_envoy, o_proj).input
        if self.over == "resid_pre":
            return layer_envoy.input
        if self.over == "attn_out":
            return _get(layer_envoy, attn).output[0]
        if self.over == "mlp_out":
            return _get(layer_envoy, mlp).output
        raise ValueError(f"no nnsight peer for over={self.over!r}")

    def index(self, idx: tuple[int, ...]) -> tuple:
        """The index of one cell (``idx`` excludes the layer) after the row slice."""
        if self.over == "heads":
            (h,) = idx
            return (slice(None), slice(h * self.d_head, (h + 1) * self.d_head))
        if self.over == "heads_by_pos":
            pos, h = idx
            return (pos, slice(h * self.d_head, (h + 1) * self.d_head))
        (pos,) = idx
        return (pos,)


class NnsightPeer:
    """Activation patching with nnsight on ``hf_model`` (Llama- or GPT-2-style)."""

    def __init__(self, hf_model: torch.nn.Module, *, over: str) -> None:
        import nnsight

        self.model = nnsight.NNsight(hf_model)
        arch = "gpt2" if hasattr(hf_model, "transformer") else "llama"
        self.paths = ARCH_PATHS[arch]
        cfg = hf_model.config
        n_heads = cfg.num_attention_heads
        self.n_layers = cfg.num_hidden_layers
        self.site = Site(over, cfg.hidden_size // n_heads)
        self.lm_head = "lm_head"

    def _layers(self):
        return _get(self.model, self.paths[0])

    def _logits(self):
        return _get(self.model, self.lm_head).output[:, -1]

    def source(self, tokens: torch.Tensor) -> list[torch.Tensor]:
        """The site's activation at every layer on ``tokens`` (one trace)."""
        saved: list[torch.Tensor] = []
        with self.model.trace(tokens, logits_to_keep=1):
            layers = self._layers()
            for layer in range(self.n_layers):
                saved.append(self.site.envoy(layers[layer], self.paths).save())
        return [s.detach().clone() for s in saved]

    def loop(
        self,
        run: torch.Tensor,
        src: list[torch.Tensor],
        conds: list[tuple[int, ...]],
        metric: Callable[[torch.Tensor], torch.Tensor],
    ) -> torch.Tensor:
        """One trace per condition ``(layer, *idx)``; the metric of each, ``[len(conds)]``."""
        out = torch.empty(len(conds))
        for i, (layer, *idx) in enumerate(conds):
            cell = (slice(None), *self.site.index(tuple(idx)))
            with self.model.trace(run, logits_to_keep=1):
                act = self.site.envoy(self._layers()[layer], self.paths)
                act[cell] = src[layer][cell]
                logits = self._logits().save()
            out[i] = metric(logits).mean()
        return out

    def batched(
        self,
        run: torch.Tensor,
        src: list[torch.Tensor],
        conds: list[tuple[int, ...]],
        metric: Callable[[torch.Tensor], torch.Tensor],
        *,
        max_rows: int = 1024,
    ) -> torch.Tensor:
        """Every condition a group of rows of one batch (chunked to ``max_rows`` rows)."""
        b = run.shape[0]
        per = max(1, max_rows // b)
        out = torch.empty(len(conds))
        for start in range(0, len(conds), per):
            chunk = conds[start : start + per]
            by_layer: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
            for j, (layer, *idx) in enumerate(chunk):
                by_layer.setdefault(layer, []).append((j, tuple(idx)))
            with self.model.trace(run.repeat(len(chunk), 1), logits_to_keep=1):
                layers = self._layers()
                for layer in sorted(by_layer):  # nnsight needs forward order
                    act = self.site.envoy(layers[layer], self.paths)
                    for j, idx in by_layer[layer]:
                        cell = self.site.index(idx)
                        act[(slice(j * b, (j + 1) * b), *cell)] = src[layer][(slice(None), *cell)]
                logits = self._logits().save()
            values = metric(logits.reshape(len(chunk), b, -1).flatten(0, 1))
            out[start : start + len(chunk)] = values.reshape(len(chunk), b).mean(1)
        return out
