"""Result objects returned by the analyses: values, named axes, labels and baselines."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch


def head_id(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def mlp_id(layer: int) -> str:
    return f"MLP{layer}"


def parse_component(component: str) -> tuple[str, int, int | None]:
    """``"L3H5"`` → ``("head", 3, 5)``; ``"MLP7"`` → ``("mlp", 7, None)``."""
    import re

    if m := re.fullmatch(r"L(\d+)H(\d+)", component):
        return "head", int(m[1]), int(m[2])
    if m := re.fullmatch(r"MLP(\d+)", component):
        return "mlp", int(m[1]), None
    raise ValueError(f"Not a head or MLP id: {component!r} (expected e.g. 'L3H5' or 'MLP7').")


def ablation_target(component: str) -> str | None:
    """The head or MLP a map cell or graph node stands for (``"L3H5:P4"`` → ``"L3H5"``,
    ``"mlp_out:L2:P4"`` → ``"MLP2"``), or None where nothing ablatable is (mirrors
    ``js/src/patchmap.ts``)."""
    import re

    if m := re.fullmatch(r"L(\d+)H(\d+)(?::P\d+)?", component):
        return head_id(int(m[1]), int(m[2]))
    if m := re.fullmatch(r"MLP(\d+)(?::P\d+)?|mlp_out:L(\d+):P\d+", component):
        return mlp_id(int(m[1] or m[2]))
    return None


def pos_label(pos: int, token: str) -> str:
    return f"{pos}: {token}"


@dataclass(eq=False)
class PatchResult:
    """A map of the metric after patching each component.

    ``values`` has one axis per name in ``axes`` (``layer``, ``pos``, ``head``, ``kv_head``);
    ``labels[axis]`` gives a label per index. ``clean`` and ``corrupted`` are the unpatched
    metric on the clean and corrupted prompts.
    """

    values: torch.Tensor
    axes: tuple[str, ...]
    labels: dict[str, list[str]]
    target: str
    direction: str
    method: str  # "activation" or "attribution"
    metric: str
    clean: float
    corrupted: float
    tokens: list[str]
    model_name: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def __repr__(self) -> str:
        shape = " × ".join(f"{a}={n}" for a, n in zip(self.axes, self.values.shape, strict=True))
        return (
            f"PatchResult({self.method} patching of {self.target!r}, {self.direction}, "
            f"{shape}; {self.metric}: clean={self.clean:.4g}, corrupted={self.corrupted:.4g})"
        )

    @property
    def baseline(self) -> float:
        """The value a cell's effect is measured from: the unpatched run (corrupted when
        denoising, clean when noising); 0 for a direct logit attribution map."""
        if self.direction == "direct":
            return 0.0
        return float(self.clean if self.direction == "noise" else self.corrupted)

    def component(self, index: tuple[int, ...]) -> str:
        """The data-component id of one cell: ``"L3H5"``, ``"MLP7"``, ``"resid_pre:L2:P4"``…"""
        named = dict(zip(self.axes, index, strict=True))
        layer = named["layer"]
        if "head" in named:
            base = head_id(layer, named["head"])
            return f"{base}:P{named['pos']}" if "pos" in named else base
        if "sublayer" in named:  # a DLA map of whole layers: attention, MLP
            return mlp_id(layer) if named["sublayer"] == 1 else f"attn_out:L{layer}"
        if "kv_head" in named:
            return f"L{layer}KV{named['kv_head']}.{self.target}"
        if self.target == "mlp_out" and "pos" not in named:
            return mlp_id(layer)
        return f"{self.target}:L{layer}:P{named['pos']}"

    def cells(self) -> list[str]:
        """The id of every cell (see :meth:`component`), in the order of ``values.flatten()``."""
        return [
            self.component(index) for index in itertools.product(*map(range, self.values.shape))
        ]

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` components whose patch moves the metric furthest from the baseline."""
        # Exact and attribution maps both hold the metric after the patch.
        flat = (self.values - self.baseline).abs().flatten()
        idx = flat.argsort(descending=True)[:k]
        shape = self.values.shape
        out = []
        for i in idx.tolist():
            index = tuple(int(x) for x in torch.unravel_index(torch.tensor(i), shape))
            out.append((self.component(index), float(self.values[index])))
        return out

    def figure(self, **style: Any):
        """A plotly heatmap of this map (see :func:`circuitviz.export.patch_figure`)."""
        from ..export import patch_figure

        return patch_figure(self, **style)

    def save(self, path: str | os.PathLike, **style: Any) -> Path:
        """Write this map as SVG, PDF, PNG or standalone HTML (by extension); returns the
        path."""
        from ..export import save

        return save(self, path, **style)


@dataclass(eq=False)
class TopTokens:
    tokens: list[str]
    probs: list[float]

    def to_dict(self) -> dict[str, list]:
        return {"tokens": self.tokens, "probs": self.probs}


@dataclass(eq=False)
class AblationResult:
    """The metric and next-token predictions of the clean prompts before and after ablating."""

    heads: list[tuple[int, int]]
    mlps: list[int]
    mode: str
    metric: str
    clean: float
    corrupted: float
    ablated: float
    top_before: TopTokens  # of clean prompt 0
    top_after: TopTokens

    @property
    def components(self) -> list[str]:
        return [head_id(l, h) for l, h in self.heads] + [mlp_id(l) for l in self.mlps]

    def to_dict(self) -> dict[str, Any]:
        return {
            "components": self.components,
            "mode": self.mode,
            "metric": self.metric,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "ablated": self.ablated,
            "top_before": self.top_before.to_dict(),
            "top_after": self.top_after.to_dict(),
        }

    def figure(self, **style: Any):
        """Top tokens before and after, beside the clean, ablated and corrupted metric."""
        from ..export import ablation_figure

        return ablation_figure(self, **style)

    def save(self, path: str | os.PathLike, **style: Any) -> Path:
        """Write this as SVG, PDF, PNG or standalone HTML (by extension); returns the path."""
        from ..export import save

        return save(self, path, **style)

    def __repr__(self) -> str:
        what = ", ".join(self.components) or "nothing"
        return (
            f"AblationResult({self.mode}-ablating {what}: {self.metric} "
            f"{self.clean:.4g} → {self.ablated:.4g} (corrupted {self.corrupted:.4g}))"
        )


@dataclass(eq=False)
class AttentionResult:
    """Attention patterns of every layer and head for one prompt, with head-role scores.

    ``patterns``: ``[layer, head, dest_pos, src_pos]`` (float16 to keep long prompts small).
    ``scores[name]``: ``[layer, head]`` for ``previous_token``, ``duplicate_token`` and
    ``induction`` — the mean attention each head puts where that role would look.
    """

    patterns: torch.Tensor
    tokens: list[str]
    scores: dict[str, torch.Tensor]
    model_name: str = ""

    @property
    def n_layers(self) -> int:
        return self.patterns.shape[0]

    @property
    def n_heads(self) -> int:
        return self.patterns.shape[1]

    def top_heads(self, role: str, k: int = 5) -> list[tuple[str, float]]:
        s = self.scores[role]
        idx = s.flatten().argsort(descending=True)[:k].tolist()
        return [(head_id(i // s.shape[1], i % s.shape[1]), float(s.flatten()[i])) for i in idx]

    def figure(self, *, layer: int | None = None, head: int | None = None, **style: Any):
        """One head's pattern, or (no head given) the head-role scores as a heatmap."""
        from ..export import attention_figure

        return attention_figure(self, layer=layer, head=head, **style)

    def save(self, path: str | os.PathLike, **style: Any) -> Path:
        """Write this as SVG, PDF, PNG or standalone HTML (by extension); returns the path."""
        from ..export import save

        return save(self, path, **style)
