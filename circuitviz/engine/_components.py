"""The one grammar of component specs: heads, MLPs, SAE features, and optionally one position.

Every entry point that takes components — :func:`~circuitviz.ablate`, ``Graph.faithfulness(
ablated=…)``, the views' click-to-ablate messages — parses them here, so a spec means the same
thing everywhere and a bad one gets the same error.

- a head: ``(layer, head)`` of real integers (Python, numpy or 0-d torch integers; not floats,
  bools or digit strings), or the id ``"L3H5"``;
- an MLP: an integer layer, or the id ``"MLP7"``;
- an SAE feature (latent): ``"L11F1234"``, latent 1234 of the SAE on
  ``blocks.11.hook_resid_post``; ``"L3attnF12"`` etc. at the other sites (the grammar of
  :mod:`._sites`; ablating one needs ``saes=``);
- an SAE error term: ``"L11ERR"`` (``"L3attnERR"``…), the part of that SAE's activation it
  does not reconstruct (a feature graph's error node; ablating it needs ``saes=``);
- any id may end in ``":P5"``: that component at position 5 only.
"""

from __future__ import annotations

import numbers
import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch

from ._pairs import InputError
from ._sites import SITE_HOOKS, SITE_PATTERN, site_hook

# No leading zeros, so one component has one id.
_NUM = r"(0|[1-9][0-9]*)"
COMPONENT_ID = re.compile(
    rf"(?:L{_NUM}H{_NUM}|L{_NUM}({SITE_PATTERN})?F{_NUM}|MLP{_NUM}|L{_NUM}({SITE_PATTERN})?ERR)"
    rf"(?::P{_NUM})?"
)
HEAD_FORM = "(layer, head) or 'L3H5' (optionally at one position, 'L3H5:P4')"
MLP_FORM = "a layer number or 'MLP7' (optionally at one position, 'MLP7:P4')"


@dataclass(frozen=True)
class Component:
    """A head (``head`` set), an SAE feature (``feature`` set: a latent of the SAE at
    ``site`` of block ``layer``, :mod:`._sites`), that SAE's error term (``error``) or an MLP
    (none of them), everywhere or at one position."""

    layer: int
    head: int | None = None
    pos: int | None = None
    feature: int | None = None
    site: str = ""
    error: bool = False

    @property
    def kind(self) -> str:
        if self.error:
            return "error"
        if self.feature is not None:
            return "feature"
        return "mlp" if self.head is None else "head"

    @property
    def hook(self) -> str | None:
        """The hook of a feature's or error term's SAE by its site code
        (``"blocks.11.hook_resid_post"``); None for other kinds and for a transcoder's (its
        input hook varies: use :meth:`hook_in`)."""
        if (self.feature is None and not self.error) or self.site == "tc":
            return None
        return f"blocks.{self.layer}.{SITE_HOOKS[self.site]}"

    def hook_in(self, saes: Any) -> str | None:
        """The hook (``SAESet`` key) of a feature's or error term's SAE in ``saes``; None for
        other kinds."""
        if self.feature is None and not self.error:
            return None
        return site_hook(saes, self.layer, self.site)

    @property
    def base_id(self) -> str:
        """The id without the position: ``"L3H5"``, ``"MLP7"``, ``"L11F1234"``, ``"L11ERR"``."""
        if self.error:
            return f"L{self.layer}{self.site}ERR"
        if self.feature is not None:
            return f"L{self.layer}{self.site}F{self.feature}"
        return f"MLP{self.layer}" if self.head is None else f"L{self.layer}H{self.head}"

    @property
    def id(self) -> str:
        """``"L3H5"``, ``"MLP7"``, or with a position ``"L3H5:P4"``."""
        return self.base_id if self.pos is None else f"{self.base_id}:P{self.pos}"

    def sort_key(self) -> tuple:
        return (
            self.head is None,
            self.feature is not None or self.error,
            self.error,
            self.layer,
            self.site,
            -1 if self.head is None else self.head,
            -1 if self.feature is None else self.feature,
            -1 if self.pos is None else self.pos,
        )

    def __str__(self) -> str:
        return self.id


def parse_id(spec: Any) -> Component:
    """Parse one component id (``"L3H5"``, ``"MLP7"``, ``"L11F1234"``, ``"L11ERR"``,
    ``"L3H5:P4"``); no range check."""
    m = COMPONENT_ID.fullmatch(spec) if isinstance(spec, str) else None
    if m is None:
        raise InputError(
            f"Unknown component {spec!r}: expected a head 'L3H5', an MLP 'MLP7', an SAE "
            "feature 'L11F1234' or an SAE error term 'L11ERR', optionally at one position "
            "('L3H5:P4', 'MLP7:P4')."
        )
    pos = None if m[9] is None else int(m[9])
    if m[6] is not None:
        return Component(int(m[6]), None, pos)
    if m[7] is not None:
        return Component(int(m[7]), None, pos, site=m[8] or "", error=True)
    if m[3] is not None:
        return Component(int(m[3]), None, pos, int(m[5]), m[4] or "")
    return Component(int(m[1]), int(m[2]), pos)


def as_int(x: Any) -> int | None:
    """``x`` as an int if it is a real integer (Python, numpy or a 0-d torch integer)."""
    if isinstance(x, torch.Tensor):
        if x.ndim != 0 or x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
            return None
        return int(x)
    if isinstance(x, numbers.Integral) and not isinstance(x, bool):
        return int(x)
    return None


def _id_of_kind(spec: str, kind: str) -> Component:
    """Parse an id given as a ``kind`` ("head" in ``heads=``, "mlp" in ``mlps=``)."""
    comp = parse_id(spec)
    if comp.kind != kind:
        what = {
            "head": "an attention head",
            "mlp": "an MLP",
            "feature": "an SAE feature",
            "error": "an SAE error term",
        }
        right = {"head": "heads", "mlp": "mlps", "feature": "features", "error": "features"}
        raise InputError(
            f"{spec!r} is {what[comp.kind]}: pass it in {right[comp.kind]}=, not {right[kind]}=."
        )
    return comp


def parse_head(spec: Any) -> Component:
    """One head spec, ``(layer, head)`` of integers or ``"L3H5"``; no range check."""
    if isinstance(spec, str):
        return _id_of_kind(spec, "head")
    try:
        parts = tuple(spec)
    except TypeError:
        parts = ()
    numbers_ = [as_int(x) for x in parts]
    if len(parts) != 2 or None in numbers_ or isinstance(spec, (bytes, dict)):
        raise InputError(f"Bad head {spec!r}: a head is {HEAD_FORM}, with integer layer and head.")
    return Component(numbers_[0], numbers_[1])  # type: ignore[arg-type]


def parse_feature(spec: Any) -> Component:
    """One feature spec, a latent ``"L11F1234"`` or an error term ``"L11ERR"`` (optionally
    ``":P5"``); the index is checked against its SAE by the analysis."""
    if not isinstance(spec, str):
        raise InputError(
            f"Bad feature {spec!r}: a feature is 'L11F1234' (or 'L11F1234:P5'), an SAE error "
            "term 'L11ERR' (or 'L11ERR:P5')."
        )
    comp = parse_id(spec)
    return comp if comp.kind == "error" else _id_of_kind(spec, "feature")


def parse_mlp(spec: Any) -> Component:
    """One MLP spec, an integer layer or ``"MLP7"``; no range check."""
    if isinstance(spec, str):
        return _id_of_kind(spec, "mlp")
    layer = as_int(spec)
    if layer is None:
        raise InputError(f"Bad MLP {spec!r}: an MLP is {MLP_FORM}.")
    return Component(layer)


def check_range(
    comp: Component, *, n_layers: int, n_heads: int, n_pos: int | None = None
) -> Component:
    """Raise :class:`InputError` unless ``comp`` exists in a model of this size (and, when
    ``n_pos`` is given, its position in prompts of that many tokens)."""
    if not 0 <= comp.layer < n_layers:
        raise InputError(
            f"{comp.id} is out of range: the model has layers 0–{n_layers - 1} "
            f"(heads 'L0H0'–'L{n_layers - 1}H{n_heads - 1}', MLPs 'MLP0'–'MLP{n_layers - 1}')."
        )
    if comp.head is not None and not 0 <= comp.head < n_heads:
        raise InputError(f"{comp.id} is out of range: the model has heads 0–{n_heads - 1}.")
    if comp.pos is not None and n_pos is not None and not 0 <= comp.pos < n_pos:
        raise InputError(
            f"{comp.id} is out of range: the prompts have positions 0–{n_pos - 1} ({n_pos} tokens)."
        )
    return comp


def listed(values: Any, name: str, example: str) -> list:
    """``values`` as a list, if it is a list-like of items (not a string, bytes or a single
    object); else an :class:`InputError` showing ``example``."""
    if isinstance(values, (str, bytes, dict)) or not isinstance(values, Iterable):
        raise InputError(f"{name}= must be a list, e.g. {name}={example}; got {values!r}.")
    return list(values)


def parse_components(
    heads: Iterable[Any] = (),
    mlps: Iterable[Any] = (),
    *,
    n_layers: int,
    n_heads: int,
    n_pos: int | None = None,
    features: Iterable[Any] = (),
) -> tuple[Component, ...]:
    """Parse, range-check, de-duplicate and sort ``heads=``, ``mlps=`` and ``features=``
    specs."""
    comps = [parse_head(h) for h in listed(heads, "heads", "[(3, 5), 'L4H1']")]
    comps += [parse_mlp(m) for m in listed(mlps, "mlps", "[7, 'MLP8']")]
    comps += [parse_feature(f) for f in listed(features, "features", "['L11F1234']")]
    for c in comps:
        check_range(c, n_layers=n_layers, n_heads=n_heads, n_pos=n_pos)
    return tuple(sorted(set(comps), key=Component.sort_key))


def parse_ids(
    ids: Iterable[Any], *, n_layers: int, n_heads: int, n_pos: int | None = None
) -> list[Component]:
    """Parse and range-check a mixed list of ids (``["L3H5", "MLP7:P2"]``), keeping their
    order and dropping repeats."""
    out: list[Component] = []
    for spec in listed(ids, "components", "['L3H5', 'MLP2', 'L4H1:P3']"):
        c = check_range(parse_id(spec), n_layers=n_layers, n_heads=n_heads, n_pos=n_pos)
        if c not in out:
            out.append(c)
    return out
