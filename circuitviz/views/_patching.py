"""PatchingView: any PatchResult (exact or attribution) as a heatmap with click-to-ablate.

Colour is the *effect*: value − baseline, on a diverging scale centred at 0. The baseline is
the metric of the unpatched run: corrupted for denoising, clean for noising. Exact and
attribution maps alike hold (estimated) metric values after patching, so one rule fits both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import traitlets as t

from ..engine import METRICS, InputError, PatchResult, PromptPairs
from ..engine._results import ablation_target
from ._base import STATIC, AblationView
from ._codec import MAX_MESSAGE_BYTES, encode


def baseline(result: PatchResult) -> tuple[float, str]:
    """The value a cell's effect is measured from, and its label for the colour bar."""
    label = {"noise": "clean baseline", "direct": "zero"}
    return result.baseline, label.get(result.direction, "corrupted baseline")


def map_payload(result: PatchResult) -> dict[str, Any]:
    """The ``map`` trait: binary values plus axes, labels and baselines."""
    values = encode(result.values, "float32")
    if len(values["view"]) > MAX_MESSAGE_BYTES // 2:
        values = encode(result.values, "float16")
    base, label = baseline(result)
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
        "model": result.model_name,
    }


class PatchingView(AblationView):
    """A :class:`~circuitviz.PatchResult` as a heatmap.

    Hover a cell for its exact value. With ``model=`` and ``pairs=``, clicking a head or MLP
    cell ablates that component on the clean prompts (plain click: only that one, again to
    clear; shift-click: add/remove) and shows the new metric and top next tokens.
    """

    _esm = STATIC / "patching.js"
    BUNDLE: ClassVar[str] = "patching"
    STATE_KEYS = ("selected", "ablated", "mode", "metric")

    map = t.Dict().tag(sync=True)
    """The patching map: ``values`` (binary), ``axes``, ``labels``, ``target``, ``direction``,
    ``method``, ``metric``, ``clean``, ``corrupted``, ``baseline``, ``baseline_label``."""

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
        """The map as a publication heatmap, with this view's selection outlined and its
        ablated heads/MLPs crossed out (see :func:`circuitviz.export.patch_figure`)."""
        from ..export import patch_figure

        cells = self._patch.cells()
        shown = set(cells) | {ablation_target(c) for c in cells}
        selected = self.selected if self.selected in shown else None  # linked from elsewhere
        return patch_figure(
            self._patch, **{"selected": selected, "ablated": list(self.ablated), **options}
        )
