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


def _hook_point(model: TransformerBridge, name: str):
    try:
        return model.hook_dict[name]
    except KeyError:
        raise KeyError(f"The model has no hook named {name!r}.") from None


@contextmanager
def hooks(model: TransformerBridge, fwd: Hooks = (), bwd: Hooks = ()) -> Iterator[None]:
    """Attach forward (and backward) hooks for the duration of the block, then remove them."""
    added = []  # (hook point, handle list, handle): only ours are removed, never the user's
    try:
        for direction, pairs in (("fwd", fwd), ("bwd", bwd)):
            for name, fn in pairs:
                point = _hook_point(model, name)
                handle = point.add_hook(fn, dir=direction)
                added.append((point.fwd_hooks if direction == "fwd" else point.bwd_hooks, handle))
        yield
    finally:
        for handles, handle in reversed(added):
            handle.hook.remove()
            if handle in handles:
                handles.remove(handle)


def run(model: TransformerBridge, tokens: torch.Tensor, fwd: Hooks = ()) -> torch.Tensor:
    """One forward pass with hooks attached, returning the logits."""
    with hooks(model, fwd):
        return model(tokens, return_type="logits")


def has_hooks(model: TransformerBridge) -> bool:
    """Whether any non-permanent hook is still attached (tests use it to prove cleanliness)."""
    for hp in model.hook_dict.values():
        if len(hp._forward_hooks) or len(hp._backward_hooks):
            return True
    return False


def last_position_only(x: torch.Tensor, hook: object) -> torch.Tensor:
    """Keep only the final position before the unembedding: the metrics read nothing else,
    and the unembedding is a large share of a forward pass."""
    return x[:, -1:]


LAST_POSITION_HOOK = "unembed.hook_in"
