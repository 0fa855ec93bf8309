"""Result objects returned by the analyses: values, named axes, labels and baselines."""

from __future__ import annotations

import itertools
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ._columns import Columns
from ._components import Component
from ._metrics import gap_is_degenerate


def head_id(layer: int, head: int) -> str:
    return f"L{layer}H{head}"


def mlp_id(layer: int) -> str:
    return f"MLP{layer}"


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
    # Mixed-length pairs: each prompt's token per ``pos`` column (None: no padding).
    columns: Columns | None = None

    def __repr__(self) -> str:
        shape = " × ".join(f"{a}={n}" for a, n in zip(self.axes, self.values.shape, strict=True))
        return (
            f"PatchResult({self.method} patching of {self.target!r}, {self.direction}, "
            f"{shape}; {self.metric}: clean={self.clean:.4g}, corrupted={self.corrupted:.4g}; "
            f"effects and top() measured from the {self.baseline_label})"
        )

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

    @property
    def baseline(self) -> float:
        """The unpatched metric of the run being patched, which every cell's effect is measured
        from: ``corrupted`` for "denoise" (clean activations patched into the corrupted run),
        ``clean`` for "noise". Exact and attribution maps both hold the metric after the patch,
        so a cell's effect is ``value − baseline``. A direct logit attribution map
        (direction ``"direct"``) holds contributions: its baseline is 0."""
        if self.direction == "direct":
            return 0.0
        return float(self.corrupted if self.direction == "denoise" else self.clean)

    @property
    def baseline_label(self) -> str:
        """``"corrupted baseline"`` (denoise), ``"clean baseline"`` (noise) or ``"zero"``
        (direct logit attribution)."""
        labels = {"denoise": "corrupted baseline", "noise": "clean baseline", "direct": "zero"}
        return labels.get(self.direction, "corrupted baseline")

    def top(self, k: int = 10) -> list[tuple[str, float]]:
        """The ``k`` components whose patch moves the metric furthest from :attr:`baseline`
        (the corrupted baseline for "denoise", the clean one for "noise"), ranked by
        ``|value − baseline|``; returns ``[(component id, value after the patch)]``."""
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
    """The metric and next-token predictions of the clean prompts before and after ablating.

    ``ablated``, ``delta``, ``gap_fraction`` and ``top_after`` are None when nothing is
    ablated. ``per_prompt`` holds the metric of each pair: ``{"clean": [...], "corrupted":
    [...], "ablated": [...] | None}``; the scalars are their means.
    """

    targets: tuple[Component, ...]  # what was ablated (heads first), see `components`
    mode: str
    metric: str
    clean: float
    corrupted: float
    ablated: float | None
    per_prompt: dict[str, list[float] | None]
    top_before: TopTokens  # of clean prompt 0
    top_after: TopTokens | None

    @property
    def components(self) -> list[str]:
        """Ids of the ablated components: ``"L3H5"``, ``"MLP7"``, ``"L3H5:P4"``…"""
        return [c.id for c in self.targets]

    @property
    def delta(self) -> float | None:
        """``ablated − clean``: how far the ablation moved the metric (None if nothing ablated)."""
        return None if self.ablated is None else self.ablated - self.clean

    @property
    def gap_fraction(self) -> float | None:
        """``delta / (clean − corrupted)``: the ablation's change as a fraction of the
        clean–corrupted gap (−1 = all the way down to corrupted, 0 = no change). None when
        nothing is ablated or the gap is degenerate
        (:func:`circuitviz.engine._metrics.gap_is_degenerate`)."""
        if self.delta is None or gap_is_degenerate(self.clean, self.corrupted):
            return None
        return self.delta / (self.clean - self.corrupted)

    def to_dict(self) -> dict[str, Any]:
        return {
            "components": self.components,
            "mode": self.mode,
            "metric": self.metric,
            "clean": self.clean,
            "corrupted": self.corrupted,
            "ablated": self.ablated,
            "delta": self.delta,
            "gap_fraction": self.gap_fraction,
            "per_prompt": {k: None if v is None else list(v) for k, v in self.per_prompt.items()},
            "top_before": self.top_before.to_dict(),
            "top_after": None if self.top_after is None else self.top_after.to_dict(),
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
        n = len(self.per_prompt["clean"] or ())
        if self.ablated is None:
            return (
                f"AblationResult(nothing ablated: {self.metric} clean {self.clean:.4g}, "
                f"corrupted {self.corrupted:.4g}; {n} prompts)"
            )
        gap = "n/a" if self.gap_fraction is None else f"{self.gap_fraction:+.1%}"
        return (
            f"AblationResult({self.mode}-ablating {', '.join(self.components)}: {self.metric} "
            f"{self.clean:.4g} → {self.ablated:.4g} (delta {self.delta:+.4g} = {gap} of "
            f"clean − corrupted; corrupted {self.corrupted:.4g}); {n} prompts)"
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
