"""The one place that adds and removes hooks on a model.

Every analysis runs its hooked forward passes inside :func:`hooks`, which removes what it
added in a ``finally`` — after an exception, a Ctrl-C or a kernel interrupt alike.
Hook functions are closures: they never read ``hook.name``, which the bridge may report as an
alias of the name they were registered under.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from transformer_lens.model_bridge import TransformerBridge

HookFn = Callable[[torch.Tensor, object], torch.Tensor | None]
Hooks = Sequence[tuple[str, HookFn]]
#: Forward pre-hooks with keyword arguments on plain modules (not hook points), for what a
#: hook point cannot reach: the attention mask and rotary tables a block is called with.
PreHooks = Sequence[tuple[torch.nn.Module, Callable]]


def _hook_point(model: TransformerBridge, name: str):
    try:
        return model.hook_dict[name]
    except KeyError:
        raise KeyError(f"The model has no hook named {name!r}.") from None


# PyTorch's per-module hook registries (dicts keyed by ever-increasing handle ids) and
# TransformerLens's lists of handles on each HookPoint.
_TORCH_REGISTRIES = (
    "_forward_hooks",
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks",
    "_forward_pre_hooks_with_kwargs",
    "_backward_hooks",
    "_backward_pre_hooks",
)
_LENS_LISTS = ("fwd_hooks", "bwd_hooks")


def _snapshot(point: torch.nn.Module) -> dict[str, set[int]]:
    """The hooks registered on ``point`` now: torch's handle ids, and TransformerLens handles'
    object ids."""
    snap = {a: set(getattr(point, a)) for a in _TORCH_REGISTRIES if hasattr(point, a)}
    snap.update({a: {id(h) for h in getattr(point, a)} for a in _LENS_LISTS if hasattr(point, a)})
    return snap


def _restore(point: torch.nn.Module, snap: dict[str, set[int]]) -> None:
    """Remove every hook registered on ``point`` since ``snap``."""
    for attr in _TORCH_REGISTRIES:
        registry = getattr(point, attr, None)
        if registry is not None:
            for key in [k for k in registry if k not in snap.get(attr, ())]:
                del registry[key]
    for attr in _LENS_LISTS:
        handles = getattr(point, attr, None)
        if handles is not None:
            handles[:] = [h for h in handles if id(h) in snap.get(attr, ())]


@contextmanager
def hooks(
    model: TransformerBridge, fwd: Hooks = (), bwd: Hooks = (), pre: PreHooks = ()
) -> Iterator[None]:
    """Attach forward (and backward) hooks for the duration of the block, then remove them.
    ``pre`` are ``(module, fn)`` forward pre-hooks registered ``with_kwargs=True``.

    Interrupt-safe: each hook point's registered hooks are snapshotted *before* anything is
    added to it, and on the way out everything registered since is removed — not only the
    handles we got back. So a Ctrl-C landing inside ``HookPoint.add_hook``, after it
    registered the hook but before it returned the handle, leaks nothing. Hooks that were
    there before (the user's, permanent ones) stay.
    """
    touched: dict[int, tuple[torch.nn.Module, dict[str, set[int]]]] = {}
    try:
        for direction, pairs in (("fwd", fwd), ("bwd", bwd)):
            for name, fn in pairs:
                point = _hook_point(model, name)
                if id(point) not in touched:
                    touched[id(point)] = (point, _snapshot(point))
                point.add_hook(fn, dir=direction)
        for module, fn in pre:
            if id(module) not in touched:
                touched[id(module)] = (module, _snapshot(module))
            module.register_forward_pre_hook(fn, with_kwargs=True)
        yield
    finally:
        for point, snap in touched.values():
            _restore(point, snap)


@contextmanager
def module_hooks(
    fwd: Sequence[tuple[torch.nn.Module, Callable]] = (),
    pre: Sequence[tuple[torch.nn.Module, Callable]] = (),
) -> Iterator[None]:
    """Plain PyTorch forward (``fn(module, args, output)``) and forward-pre hooks
    (``fn(module, args, kwargs)``, with kwargs) on modules that are not hook points (the
    KV-cache generator's own copy of a model), removed like :func:`hooks` removes its own."""
    touched: dict[int, tuple[torch.nn.Module, dict[str, set[int]]]] = {}
    try:
        for kind, pairs in (("fwd", fwd), ("pre", pre)):
            for module, fn in pairs:
                if id(module) not in touched:
                    touched[id(module)] = (module, _snapshot(module))
                if kind == "fwd":
                    module.register_forward_hook(fn)
                else:
                    module.register_forward_pre_hook(fn, with_kwargs=True)
        yield
    finally:
        for module, snap in touched.values():
            _restore(module, snap)


def run(
    model: TransformerBridge,
    tokens: torch.Tensor,
    fwd: Hooks = (),
    *,
    attention_mask: torch.Tensor | None = None,
    pre: PreHooks = (),
) -> torch.Tensor:
    """One forward pass with hooks attached, returning the logits. ``attention_mask``
    ``[batch, pos]`` (1 = token, 0 = padding) is passed on only when given, so unpadded
    batches run exactly as before."""
    kwargs = {} if attention_mask is None else {"attention_mask": attention_mask}
    with hooks(model, fwd, pre=pre):
        return model(tokens, return_type="logits", **kwargs)


# What a block's attention is called with that has one row per *prompt*: the HF 4-D mask
# ``[batch, 1, q, k]``, rotary ``(cos, sin)`` ``[batch, pos, d]`` and ``position_ids``.
_PER_PROMPT_KWARGS = ("attention_mask", "position_embeddings", "position_ids")


def _tile(value: object, rows: int) -> object:
    if isinstance(value, tuple):
        return tuple(_tile(v, rows) for v in value)
    if not isinstance(value, torch.Tensor) or value.ndim == 0:
        return value
    n = value.shape[0]
    if n in (1, rows) or rows % n:
        return value
    return value.repeat(rows // n, *([1] * (value.ndim - 1)))


def tile_prompt_kwargs(module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple:
    """Forward pre-hook for an attention module in a pass whose batch grows mid-model.

    The model builds its mask and rotary tables once, for the prompt batch ``[b, ...]``; a
    batch grown to ``k·b`` rows (condition-major: row ``j·b + i`` is prompt ``i``) needs
    them tiled ``k`` times. A batch of one broadcasts and is left alone."""
    hidden = args[0] if args else kwargs.get("hidden_states")
    if not isinstance(hidden, torch.Tensor):
        return args, kwargs
    rows = hidden.shape[0]
    for key in _PER_PROMPT_KWARGS:
        if key in kwargs:
            kwargs[key] = _tile(kwargs[key], rows)
    return args, kwargs


def attention_modules(model: TransformerBridge) -> list[torch.nn.Module]:
    """Every block's attention module, for :func:`tile_prompt_kwargs`."""
    return [block.attn for block in model.blocks]


def has_hooks(model: TransformerBridge) -> bool:
    """Whether any hook is attached to any hook point, as PyTorch sees it (so a hook whose
    TransformerLens handle was lost still counts) or as TransformerLens lists it."""
    for hp in model.hook_dict.values():
        if any(getattr(hp, a, None) for a in _TORCH_REGISTRIES + _LENS_LISTS):
            return True
    return False


def last_position_only(x: torch.Tensor, hook: object) -> torch.Tensor:
    """Keep only the final position before the unembedding: the metrics read nothing else,
    and the unembedding is a large share of a forward pass."""
    return x[:, -1:]


LAST_POSITION_HOOK = "unembed.hook_in"
