"""Where the KV-cache twin (:mod:`._generate`) runs the bridge's SAE splice hooks.

The twin is a plain Hugging Face copy of the bridge's model, so it has no hook points. Each
bridge hook an SAE or transcoder splices at is, in the bridge, the ``hook_in`` or
``hook_out`` of a bridge component wrapping one Hugging Face module; the twin has that module
under the same name. So a hook runs on the twin as a forward-pre hook on the module's input
(``hook_in``) or a forward hook on its output (``hook_out``; a tuple's first element), found
from where the bridge's own hook point sits in its module tree:

===========================  =========================================  =====================
bridge hook (``blocks.L.``)  twin module (Llama / GPT-2)                side
===========================  =========================================  =====================
``hook_resid_pre``           ``layers[L]`` / ``h[L]``                   input
``hook_attn_out``            ``self_attn`` / ``attn``                   output (``[0]``)
``hook_resid_mid``,          ``post_attention_layernorm`` / ``ln_2``    input
``ln2.hook_in``
``ln2.hook_out``             ``post_attention_layernorm`` / ``ln_2``    output
``mlp.hook_in``              ``mlp``                                    input
``hook_mlp_out``             ``mlp``                                    output
``hook_resid_post``          ``layers[L]`` / ``h[L]``                   output
===========================  =========================================  =====================

These are the hooks the nnsight backend splices at (``backends._features.SAE_POINTS`` and
``TRANSCODER_READS``); others go to the bridge loop. The *same* hook functions the bridge
loop attaches (:func:`._splice.site_hooks`) run here, in the same order, so every site rule
— a transcoder reading one point and writing the MLP output; an SAE on ``hook_resid_mid``,
whose bridge hook feeds the norm alone, also re-routing the skip connection through
``hook_resid_post`` — carries over as it is: the twin's norm input is, as the bridge's, not
the tensor the layer keeps for its skip connection.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable, Sequence
from typing import Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from ..backends._features import SAE_POINTS, TRANSCODER_READS
from ._sae import SAESet
from ._splice import ErrorEdit, LatentEdit, site_hooks

#: Bridge hooks (after ``blocks.L.``) the twin runs: those nnsight splices at.
TWIN_HOOKS = frozenset(SAE_POINTS) | frozenset(TRANSCODER_READS)
_BLOCK_HOOK = re.compile(r"blocks\.(\d+)\.(.+)")

Side = Literal["input", "output"]
TwinPoint = tuple[torch.nn.Module, Side]
ModuleHooks = list[tuple[torch.nn.Module, Callable]]


def plain_name(name: str) -> str:
    """A module's name in the bridged Hugging Face tree, as the plain model (the twin) has
    it: without the bridge's ``_original_component`` levels."""
    return name.replace("._original_component", "").replace("_original_component.", "")


def bridge_hooks(
    saes: SAESet,
    edits: Sequence[LatentEdit | ErrorEdit],
    *,
    offset: Callable[[], int] | None = None,
) -> list[tuple[str, Callable]]:
    """The splice hooks of the edited SAEs, in the order both generators attach them (the
    edited hooks sorted by name, each SAE's hooks as :func:`._splice.site_hooks` lists them)."""
    return [
        pair
        for h in sorted({e.hook for e in edits})
        for pair in site_hooks(saes[h], [e for e in edits if e.hook == h], offset=offset)
    ]


def twin_point(
    model: TransformerBridge, tw_model: torch.nn.Module, hook: str, cache: dict
) -> TwinPoint | None:
    """The twin's module and side that carry the value of the bridge's ``hook`` (None where
    the twin does not run it). ``cache`` keeps the answers (one per twin)."""
    if hook not in cache:
        cache[hook] = _find_point(model, tw_model, hook)
    return cache[hook]


def _find_point(model: TransformerBridge, tw_model: torch.nn.Module, hook: str) -> TwinPoint | None:
    m = _BLOCK_HOOK.fullmatch(hook)
    if m is None or m[2] not in TWIN_HOOKS:
        return None
    point = getattr(model, "hook_dict", {}).get(hook)
    hf = getattr(model, "original_model", None)
    if point is None or hf is None:
        return None
    name = next((n for n, module in hf.named_modules() if module is point), None)
    if name is None:
        return None
    owner, _, end = name.rpartition(".")
    if end not in ("hook_in", "hook_out"):
        return None
    try:
        module = tw_model.get_submodule(plain_name(owner))
    except AttributeError:
        return None
    return module, "input" if end == "hook_in" else "output"


def twin_hooks(
    model: TransformerBridge,
    tw_model: torch.nn.Module,
    hook_fns: Sequence[tuple[str, Callable]],
    cache: dict,
) -> tuple[ModuleHooks, ModuleHooks] | None:
    """``(forward hooks, forward-pre hooks)`` running the bridge hook functions ``hook_fns``
    (``fn(x, hook) -> new x or None``) on the twin, in their order; None when one of them
    has no place there."""
    post: ModuleHooks = []
    pre: ModuleHooks = []
    for hook, fn in hook_fns:
        point = twin_point(model, tw_model, hook, cache)
        if point is None:
            return None
        module, side = point
        if side == "output":
            post.append((module, _on_output(fn)))
        else:
            pre.append((module, _on_input(fn, _first_parameter(module))))
    return post, pre


def _first_parameter(module: torch.nn.Module) -> str:
    """The name the module's forward gives its first input (for a call that passes it by
    keyword, as Llama's layers get ``hidden_states``)."""
    params = list(inspect.signature(module.forward).parameters)
    return params[0] if params else "hidden_states"


def _on_output(fn: Callable) -> Callable:
    def hook(module: torch.nn.Module, args: object, output: object) -> object:
        x = output[0] if isinstance(output, tuple) else output
        y = fn(x, None)
        if y is None:  # a reading hook (a transcoder's input)
            return None
        return (y, *output[1:]) if isinstance(output, tuple) else y

    return hook


def _on_input(fn: Callable, name: str) -> Callable:
    def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        if args:
            y = fn(args[0], None)
            return None if y is None else ((y, *args[1:]), kwargs)
        y = fn(kwargs[name], None)
        return None if y is None else (args, {**kwargs, name: y})

    return hook
