"""What each cell of a patching map is, and what clicking it ablates: the one place this is
decided. The PatchingView sends the rule to the browser as templates (``"L{layer}H{head}:P{pos}"``)
that the page fills with a cell's indices; ``patch_figure`` uses the same rule for its marks.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._results import PatchResult

# Where a cell cannot be ablated, the reason shown instead (tooltip, click).
NOT_ABLATABLE = {
    "resid_pre": "the residual stream is the sum of every earlier component, not one "
    "component: ablate heads or MLPs (a heads or heads_by_pos map) instead",
    "attn_out": "attn_out is the sum of all heads of a layer: ablate single heads from a "
    "heads or heads_by_pos map instead",
    "k": "a KV head is shared by several query heads: ablate query heads (a heads map) instead",
    "v": "a KV head is shared by several query heads: ablate query heads (a heads map) instead",
}


@dataclass(frozen=True)
class CellRule:
    """How a map's cells are named and what a click on one ablates.

    ``component`` and ``ablates`` are templates over the map's axis names (``{layer}``,
    ``{head}``, ``{pos}``, ``{kv_head}``); ``ablates`` is None where no cell can be ablated,
    and ``reason`` then says why.
    """

    component: str
    ablates: str | None
    reason: str = ""
    #: Axes whose index picks a sub-template (a DLA map by layer: ``{sublayer}`` is
    #: ``"attn_out:L{layer}"`` or ``"MLP{layer}"``).
    choices: tuple[tuple[str, tuple[str, ...]], ...] = ()

    def fill(self, template: str, named: dict[str, int]) -> str:
        for axis, options in self.choices:
            template = template.replace("{" + axis + "}", options[named[axis]])
        return template.format(**named)

    def to_dict(self) -> dict[str, object]:
        out: dict[str, object] = {
            "component": self.component,
            "ablates": self.ablates,
            "reason": self.reason,
        }
        if self.choices:
            out["choices"] = {axis: list(options) for axis, options in self.choices}
        return out


def cell_rule(result: PatchResult) -> CellRule:
    """The :class:`CellRule` of ``result``'s map (see ``PatchResult.component`` for the ids)."""
    axes = set(result.axes)
    if axes == {"layer", "head"}:
        return CellRule("L{layer}H{head}", "L{layer}H{head}")
    if axes == {"layer", "pos", "head"}:  # only that head, only at that position
        return CellRule("L{layer}H{head}:P{pos}", "L{layer}H{head}:P{pos}")
    if axes == {"layer", "sublayer"}:  # DLA by layer: attention output, MLP
        sub = (("sublayer", ("attn_out:L{layer}", "MLP{layer}")),)
        return CellRule("{sublayer}", None, NOT_ABLATABLE["attn_out"], choices=sub)
    if axes == {"layer", "kv_head"}:
        reason = NOT_ABLATABLE.get(result.target, NOT_ABLATABLE["k"])
        return CellRule("L{layer}KV{kv_head}." + result.target, None, reason)
    if axes == {"layer"} and result.target == "mlp_out":
        return CellRule("MLP{layer}", "MLP{layer}")
    if axes == {"layer", "pos"}:
        component = result.target + ":L{layer}:P{pos}"
        if result.target == "mlp_out":  # that MLP, only at that position
            return CellRule(component, "MLP{layer}:P{pos}")
        reason = NOT_ABLATABLE.get(result.target, f"{result.target} is not one component")
        return CellRule(component, None, reason)
    return CellRule("?", None, f"maps over {list(result.axes)} have no ablatable cells")


def ablation_targets(result: PatchResult) -> list[str | None]:
    """What clicking each cell ablates (None: nothing), in ``values.flatten()`` order."""
    rule = cell_rule(result)
    if rule.ablates is None:
        return [None] * result.values.numel()
    return [
        rule.fill(rule.ablates, dict(zip(result.axes, index, strict=True)))
        for index in itertools.product(*map(range, result.values.shape))
    ]


def whole(component: str) -> str:
    """The whole head or MLP of a positioned id: ``"L3H5:P4"`` → ``"L3H5"``."""
    return component.split(":", 1)[0]


def is_covered(target: str | None, ablated: set[str] | frozenset[str]) -> bool:
    """Whether a cell whose click ablates ``target`` is ablated by the set ``ablated``: its own
    target is in it, or the whole head/MLP is (ablating ``L3H5`` covers ``L3H5:P4``)."""
    return target is not None and (target in ablated or whole(target) in ablated)


def is_selected(selected: str | None, cell: str, target: str | None) -> bool:
    """Whether a cell is outlined for ``selected``: its own id, what it ablates, or that whole
    head/MLP (a head selected in another view outlines all its positions)."""
    return bool(selected) and selected in (cell, target, target and whole(target))


# -- colour: one rule for the widget and the static figure --------------------------------------

COLOR_MODES = ("effect", "value")
# float32 keeps ~7 significant digits: a patch whose result differs from the unpatched run by
# less than this (relative to the metric's scale) did nothing, and prints as an exact 0.
FLOAT32_NOISE = 8 * 2.0**-23


def zero_tolerance(result: PatchResult) -> float:
    """Effects at most this big are float32 noise and are shown as exactly 0."""
    return FLOAT32_NOISE * max(1.0, abs(float(result.clean)), abs(float(result.corrupted)))


def check_color(color: str) -> str:
    from ._pairs import InputError

    if color not in COLOR_MODES:
        raise InputError(f"Unknown color={color!r}: use 'effect' (value − baseline) or 'value'.")
    return color


def color_labels(result: PatchResult) -> dict[str, str]:
    """The colour bar's title in each colour mode, naming the baseline and its value."""
    base, label = result.baseline, result.baseline_label
    what = "attribution estimate" if result.method == "attribution" else result.metric
    return {
        "effect": f"effect = {what} − {label} ({base:.4g})",
        "value": f"{what}, centred on the {label} ({base:.4g})",
    }
