"""Where an SAE sits, and the one id grammar of its latents (used by the feature graph,
``ablate(features=…)``, ``steer`` and the views).

A latent is ``"L{layer}{site}F{index}"`` and an SAE's error term ``"L{layer}{site}ERR"``,
where ``site`` names the SAE's place in block ``layer``:

==========  ==================================================  ============================
site        the SAE                                             example
==========  ==================================================  ============================
(none)      on ``blocks.L.hook_resid_post``                     ``"L11F1234"``
``pre``     on ``blocks.L.hook_resid_pre``                      ``"L3preF12"``
``mid``     on ``blocks.L.hook_resid_mid``                      ``"L3midF12"``
``attn``    on ``blocks.L.hook_attn_out``                       ``"L3attnF12"``
``mlp``     on ``blocks.L.hook_mlp_out``                        ``"L3mlpF12"``
``tc``      a transcoder writing ``blocks.L.hook_mlp_out``      ``"L3tcF12"``
==========  ==================================================  ============================

So ``"L11F1234"`` keeps its old meaning (resid_post). Any id may end in ``":P5"``.
"""

from __future__ import annotations

import re
from typing import Any

from ._pairs import InputError

#: site code -> the hook an SAE there reads (a transcoder: the hook it writes).
SITE_HOOKS = {
    "": "hook_resid_post",
    "pre": "hook_resid_pre",
    "mid": "hook_resid_mid",
    "attn": "hook_attn_out",
    "mlp": "hook_mlp_out",
    "tc": "hook_mlp_out",
}
SITE_PATTERN = "pre|mid|attn|mlp|tc"
#: How labels name each site ("L11 attn_out"): the hook without its "hook_" prefix.
SITE_NAMES = {
    "": "resid_post",
    "pre": "resid_pre",
    "mid": "resid_mid",
    "attn": "attn_out",
    "mlp": "mlp_out",
    "tc": "transcoder",
}
#: ``"L3attnF12"`` / ``"L3attnF12:P4"``: groups layer, site (None for resid_post), index, pos.
FEATURE_ID = re.compile(rf"L(\d+)({SITE_PATTERN})?F(\d+)(?::P(\d+))?")


def site_code(sae: Any) -> str | None:
    """The site code of an SAE (or transcoder), or None where no code names its place."""
    layer = sae.layer
    if layer is None:
        return None
    if sae.is_transcoder:
        return "tc" if sae.output_hook == f"blocks.{layer}.hook_mlp_out" else None
    for code, suffix in SITE_HOOKS.items():
        if code != "tc" and sae.hook_name == f"blocks.{layer}.{suffix}":
            return code
    return None


def site_name(layer: int, site: str | None) -> str:
    """A site as labels show it: ``"L11 resid_post"``, ``"L3 attn_out"``."""
    return f"L{layer} {SITE_NAMES.get(site or '', site)}"


def feature_id(layer: int, site: str, index: int, pos: int | None = None) -> str:
    base = f"L{layer}{site}F{index}"
    return base if pos is None else f"{base}:P{pos}"


def error_id(layer: int, site: str, pos: int) -> str:
    return f"L{layer}{site}ERR:P{pos}"


def site_hook(saes: Any, layer: int, site: str) -> str:
    """The hook (``SAESet`` key) of the SAE at ``site`` of block ``layer``; an
    :class:`InputError` naming the ids that would work when ``saes`` has none there."""
    for hook, sae in saes.items():
        if sae.layer == layer and site_code(sae) == site:
            return hook
    here = [
        feature_id(layer, c, 0)
        for s in saes.values()
        if s.layer == layer and (c := site_code(s)) is not None
    ]
    where = SITE_HOOKS[site] if site != "tc" else "a transcoder into hook_mlp_out"
    hint = f" The SAEs of block {layer} are named like {here}." if here else ""
    raise InputError(
        f"No SAE at blocks.{layer}.{where} (feature 'L{layer}{site}F…'); the SAEs read "
        f"{list(saes)}.{hint} Pass the SAE set that has it (saes=...)."
    )
