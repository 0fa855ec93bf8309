"""Role names and their badges, and the one check of a ``{head id: [roles]}`` map.

Dependency-free so that the graph schema, the views and the figures can all import it; the
scores and the rule that assigns roles are in :mod:`circuitviz.engine._roles`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ._pairs import InputError

#: Every role, in the order badges are drawn.
HEAD_ROLES = (
    "previous_token",
    "duplicate_token",
    "induction",
    "name_mover",
    "negative_name_mover",
    "s_inhibition",
)
#: Badge text (two characters, so that it fits an 18 px attention cell), colour and legend
#: label of each role: every view and figure draws these.
BADGES: dict[str, tuple[str, str, str]] = {
    "previous_token": ("PT", "#4c72b0", "previous-token head"),
    "duplicate_token": ("DT", "#8172b3", "duplicate-token head"),
    "induction": ("IN", "#2e7d32", "induction head"),
    "name_mover": ("NM", "#c44e52", "name mover"),
    "negative_name_mover": ("NN", "#7b3f00", "negative name mover"),
    "s_inhibition": ("SI", "#b35806", "S-inhibition head"),
}
_HEAD = re.compile(r"L(\d+)H(\d+)")


def badge_legend(roles: Mapping[str, Any]) -> list[dict[str, str]]:
    """Legend entries (``role``, ``text``, ``color``, ``label``) of the roles present in a
    ``{head: [roles]}`` map, in :data:`HEAD_ROLES` order."""
    present = {r for rs in roles.values() for r in rs}
    return [
        {"role": r, "text": BADGES[r][0], "color": BADGES[r][1], "label": BADGES[r][2]}
        for r in HEAD_ROLES
        if r in present
    ]


def role_map(
    value: Any, *, n_layers: int | None = None, n_heads: int | None = None, where: str = "roles"
) -> dict[str, list[str]]:
    """``{head id: [roles]}`` from a :class:`~circuitviz.HeadRoles` or such a mapping,
    checked: ids ``L{layer}H{head}`` inside the model's shape (when given), known role names,
    no repeats. Heads with no role are dropped; roles come in :data:`HEAD_ROLES` order."""
    if value is None:
        return {}
    if hasattr(value, "roles") and not isinstance(value, Mapping):
        value = value.roles
    if not isinstance(value, Mapping):
        raise InputError(
            f"{where} must be a circuitviz.HeadRoles or a dict like {{'L9H6': ['name_mover']}}, "
            f"not {type(value).__name__}."
        )
    out: dict[str, list[str]] = {}
    for head, roles in value.items():
        m = _HEAD.fullmatch(head) if isinstance(head, str) else None
        if m is None:
            raise InputError(f"{where}: {str(head)[:40]!r} is not a head id like 'L9H6'.")
        layer, index = int(m[1]), int(m[2])
        if (n_layers is not None and layer >= n_layers) or (
            n_heads is not None and index >= n_heads
        ):
            raise InputError(
                f"{where}: {head} is outside this model ({n_layers} layers, {n_heads} heads)."
            )
        if isinstance(roles, str) or not isinstance(roles, (list, tuple)):
            raise InputError(f"{where}[{head!r}] must be a list of role names.")
        bad = [r for r in roles if r not in HEAD_ROLES]
        if bad:
            raise InputError(f"{where}[{head!r}]: unknown role(s) {bad[:3]}; use {HEAD_ROLES}.")
        if roles:
            out[head] = [r for r in HEAD_ROLES if r in roles]
    return out
