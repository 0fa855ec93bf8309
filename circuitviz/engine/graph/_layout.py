"""Which nodes send into and receive from the residual stream, and where their weights live.

Senders (outputs written into the residual stream), in forward order::

    EMBED, L0H0 … L0H{n_heads-1}, MLP0, L1H0 …, MLP{n_layers-1}

Receivers (inputs read from the residual stream, before the layer norm), per layer::

    q of every query head, k of every KV head, v of every KV head, the MLP input

and finally the logits (the input of ``ln_final``). With grouped-query attention a KV head's
k and v inputs are computed once and read by its whole group of query heads, so they are one
receiver each, not one per query head: patching that input changes all heads of the group,
and its attribution is the exact gradient of the shared k/v (never split). Without GQA the
KV heads are the query heads.

An edge ``sender → receiver`` is valid when the sender runs before the receiver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, lru_cache

import torch
from transformer_lens.model_bridge import TransformerBridge

from .. import _devices
from .._models import model_name


@dataclass(frozen=True)
class Receiver:
    layer: int  # n_layers for the logits
    input: str  # "q" | "k" | "v" | "mlp" | "logits"
    index: int  # query head for q, KV head for k/v, 0 otherwise
    targets: tuple[str, ...]  # node ids that read this input (a GQA group for k/v)

    @property
    def target(self) -> str:
        return self.targets[0]


@dataclass(frozen=True)
class Layout:
    n_layers: int
    n_heads: int
    n_kv_heads: int

    @classmethod
    def of(cls, model: TransformerBridge) -> Layout:
        cfg = model.cfg
        n_kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
        return shared_layout(int(cfg.n_layers), int(cfg.n_heads), int(n_kv))

    @property
    def group(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    # senders ---------------------------------------------------------------------------
    @cached_property
    def senders(self) -> list[str]:
        ids = ["EMBED"]
        for layer in range(self.n_layers):
            ids += [f"L{layer}H{h}" for h in range(self.n_heads)] + [f"MLP{layer}"]
        return ids

    def head_sender(self, layer: int, head: int = 0) -> int:
        return 1 + layer * (self.n_heads + 1) + head

    def mlp_sender(self, layer: int) -> int:
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def n_senders_before(self, layer: int, mlp: bool = False) -> int:
        """Senders that run before layer ``layer``'s attention (or its MLP when ``mlp``)."""
        return self.mlp_sender(layer) if mlp else self.head_sender(layer)

    # receivers -------------------------------------------------------------------------
    @property
    def per_layer(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + 1

    @cached_property
    def receivers(self) -> list[Receiver]:
        out = []
        for layer in range(self.n_layers):
            heads = [f"L{layer}H{h}" for h in range(self.n_heads)]
            out += [Receiver(layer, "q", h, (heads[h],)) for h in range(self.n_heads)]
            for kind in ("k", "v"):
                for g in range(self.n_kv_heads):
                    group = tuple(heads[g * self.group : (g + 1) * self.group])
                    out.append(Receiver(layer, kind, g, group))
            out.append(Receiver(layer, "mlp", 0, (f"MLP{layer}",)))
        out.append(Receiver(self.n_layers, "logits", 0, ("LOGITS",)))
        return out

    def receiver_slice(self, layer: int, kind: str) -> slice:
        """Receiver indices of one kind ("q", "k", "v", "mlp", "attn" = q+k+v) in a layer."""
        base = layer * self.per_layer
        h, kv = self.n_heads, self.n_kv_heads
        spans = {
            "q": (0, h),
            "k": (h, h + kv),
            "v": (h + kv, h + 2 * kv),
            "attn": (0, h + 2 * kv),
            "mlp": (h + 2 * kv, h + 2 * kv + 1),
        }
        a, b = spans[kind]
        return slice(base + a, base + b)

    @property
    def logits_receiver(self) -> int:
        return self.n_layers * self.per_layer

    @cached_property
    def receiver_index(self) -> dict[tuple[str, str], int]:
        """(target node id, input) -> receiver index; every head of a GQA group maps to its
        group's shared k/v receiver."""
        index = {}
        for i, r in enumerate(self.receivers):
            for t in r.targets:
                index[(t, r.input)] = i
        return index

    @cached_property
    def valid(self) -> torch.Tensor:
        """``[n_senders, n_receivers]`` bool: the sender runs before the receiver. Shared by
        every user of this layout: never modify it in place."""
        s_stage = torch.tensor([self._sender_stage(i) for i in range(len(self.senders))])
        r_stage = torch.tensor([self._receiver_stage(r) for r in self.receivers])
        return s_stage[:, None] < r_stage[None, :]

    @cached_property
    def valid_rows(self) -> list[list[bool]]:
        """:attr:`valid` as nested lists, for checking single edges without tensor indexing."""
        return self.valid.tolist()

    def _sender_stage(self, i: int) -> int:
        if i == 0:
            return 0
        layer, j = divmod(i - 1, self.n_heads + 1)
        return 2 * layer + (1 if j < self.n_heads else 2)

    @staticmethod
    def _receiver_stage(r: Receiver) -> int:
        return 2 * r.layer + (2 if r.input == "mlp" else 1)

    @cached_property
    def nodes(self) -> list[str]:
        return [*self.senders, "LOGITS"]

    @cached_property
    def node_index(self) -> dict[str, int]:
        """Node id (without position) -> index in :attr:`nodes`."""
        return {n: i for i, n in enumerate(self.nodes)}


@lru_cache(maxsize=64)
def shared_layout(n_layers: int, n_heads: int, n_kv_heads: int) -> Layout:
    """The one shared :class:`Layout` of this shape (its node lists, receiver index and
    validity mask are computed once)."""
    return Layout(int(n_layers), int(n_heads), int(n_kv_heads))


def model_info(model: TransformerBridge) -> dict:
    layout = Layout.of(model)
    return {
        "model": model_name(model),
        "n_layers": layout.n_layers,
        "n_heads": layout.n_heads,
        "n_kv_heads": layout.n_kv_heads,
    }


@dataclass(frozen=True)
class Weights:
    """Per-layer weights the graph needs: ``W_Q [head, d_model, d_head]``, ``W_K``/``W_V``
    ``[kv_head, d_model, d_head]``, ``W_O [head, d_head, d_model]``, biases or None, and the
    first layer norm as a function (calling it fires no hook)."""

    W_Q: torch.Tensor
    W_K: torch.Tensor
    W_V: torch.Tensor
    W_O: torch.Tensor
    b_Q: torch.Tensor | None
    b_K: torch.Tensor | None
    b_V: torch.Tensor | None
    ln1: Callable[[torch.Tensor], torch.Tensor]

    @classmethod
    def of(cls, model: TransformerBridge, layer: int) -> Weights:
        block = model.blocks[layer]
        # Read through _devices: an offloaded layer's weights are on `meta` until onloaded.
        names = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V")
        ln1 = getattr(block.ln1, "_original_component", block.ln1)
        return cls(*_devices.read(model, block.attn, *names), _devices.calling(model, ln1))

    def project(self, kind: str, x: torch.Tensor) -> torch.Tensor:
        """``x [batch, pos, n, d_model]`` (post-norm, one row per head of ``kind``) ->
        ``[batch, pos, n, d_head]``: that head's q, k or v."""
        W, b = {"q": (self.W_Q, self.b_Q), "k": (self.W_K, self.b_K), "v": (self.W_V, self.b_V)}[
            kind
        ]
        out = torch.einsum("bpnm,nmd->bpnd", x, W)
        return out if b is None else out + b


def all_weights(model: TransformerBridge) -> list[Weights]:
    return [Weights.of(model, layer) for layer in range(int(model.cfg.n_layers))]
