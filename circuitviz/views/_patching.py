"""PatchingView: any PatchResult (exact or attribution) as a heatmap with click-to-ablate.

Colour is the *effect*: value − baseline, on a diverging scale centred at 0 (``color="value"``
labels the same colours in the metric's units). The baseline is the metric of the unpatched
run: corrupted for denoising, clean for noising. Exact and attribution maps alike hold
(estimated) metric values after patching, so one rule fits both. What each cell is and what a
click on it ablates comes from :mod:`circuitviz.engine._cells`, sent to the page as templates.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import traitlets as t

from ..engine import METRICS, InputError, PatchResult, PromptPairs
from ..engine._cells import (
    ablation_targets,
    cell_rule,
    check_color,
    color_labels,
    is_selected,
    zero_tolerance,
)
from ..engine._columns import map_columns
from ._base import STATIC, AblationView
from ._codec import MAX_MESSAGE_BYTES, encode


def map_payload(result: PatchResult) -> dict[str, Any]:
    """The ``map`` trait: binary values plus axes, labels and baselines."""
    values = encode(result.values, "float32")
    if len(values["view"]) > MAX_MESSAGE_BYTES // 2:
        values = encode(result.values, "float16")
    base, label = result.baseline, result.baseline_label
    return {
        "values": values,
        "axes": list(result.axes),
        "labels": {k: [str(x) for x in v] for k, v in result.labels.items()},
        "target": result.target,
        "direction": result.direction,
        "method": result.method,
        "metric": result.metric,
        "clean": float(result.clean),
        "corrupted": float(result.corrupted),
        "baseline": base,
        "baseline_label": label,
        "color_labels": color_labels(result),
        "zero_tol": zero_tolerance(result),
        "cells": cell_rule(result).to_dict(),
        "model": result.model_name,
        "columns": map_columns(result),
    }


class PatchingView(AblationView):
    """A :class:`~circuitviz.PatchResult` as a heatmap.

    Hover a cell for its exact value and what a click will do; the wheel zooms at the pointer,
    drag pans, "Reset zoom" shows the whole map. With ``model=`` and ``pairs=``, clicking a
    cell ablates what it stands for on the clean prompts — a head, or on a ``heads_by_pos`` /
    ``mlp_out`` map that head/MLP at that position only (plain click: only that one, again to
    clear; shift-click: add/remove) — and the side panel shows the metric's change (Δ and its
    share of the clean − corrupted gap), each prompt pair's values and the top next tokens.
    Residual-stream and KV-head cells can't be ablated and say so.
    """

    _esm = STATIC / "patching.js"
    BUNDLE: ClassVar[str] = "patching"
    STATE_KEYS = ("selected", "ablated", "mode", "metric", "color")
    FRONTEND_TRAITS: ClassVar[frozenset[str]] = frozenset({"selected", "color"})

    map = t.Dict().tag(sync=True)
    """The patching map: ``values`` (binary), ``axes``, ``labels``, ``target``, ``direction``,
    ``method``, ``metric``, ``clean``, ``corrupted``, ``baseline``, ``baseline_label``,
    ``color_labels`` (colour-bar title per colour mode), ``zero_tol`` (smaller effects are
    shown as 0) and ``cells`` (templates: each cell's id and what a click ablates, or the
    reason it can't) and ``columns`` (mixed-length pairs: which position columns have
    padding in some prompts, with a note each, or None)."""

    color = t.Unicode("effect").tag(sync=True)
    """``"effect"`` (value − baseline, the default) or ``"value"`` (the metric itself, centred
    on the baseline): how the colour bar reads; ``figure()``/``save()`` follow it."""

    @t.validate("color")
    def _check_color(self, proposal: dict[str, Any]) -> str:
        return check_color(proposal["value"])

    def __init__(
        self,
        result: PatchResult,
        *,
        model: Any = None,
        pairs: PromptPairs | None = None,
        state: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(result, PatchResult):
            raise InputError(
                f"PatchingView needs a PatchResult (from circuitviz.patch or "
                f"attribution_patch), got {type(result).__name__}."
            )
        self._patch = result
        metric = result.metric if result.metric in METRICS else "logit_diff"
        super().__init__(model=model, pairs=pairs, map=map_payload(result), metric=metric, **kwargs)
        if not self.can_ablate:  # still show the map's own baselines in the side panel
            self.result = {
                "metric": result.metric,
                "clean": result.clean,
                "corrupted": result.corrupted,
            }
        self._apply_state(state)
        self._baseline()

    @property
    def patch_result(self) -> PatchResult:
        """The :class:`~circuitviz.PatchResult` shown."""
        return self._patch

    def figure(self, **options: Any) -> Any:
        """The map as a publication heatmap coloured as on screen (``color``), with this view's
        selection outlined and its ablated cells crossed out (see
        :func:`circuitviz.export.patch_figure`)."""
        from ..export import patch_figure

        cells, targets = self._patch.cells(), ablation_targets(self._patch)
        # a selection linked from another view may be no cell of this map: nothing to outline
        hit = any(is_selected(self.selected, i, t) for i, t in zip(cells, targets, strict=True))
        selected = self.selected if hit else None
        return patch_figure(
            self._patch,
            **{
                "selected": selected,
                "ablated": list(self.ablated),
                "color": self.color,
                **options,
            },
        )
