"""Models spread over devices by accelerate (``device_map=``, offload): reading their weights
and keeping tensors on one device.

A model loaded with ``device_map="auto"`` has each block on its own GPU; with ``"cpu"`` or
``"disk"`` offload, an offloaded block's parameters sit on the ``meta`` device outside its
forward and accelerate's ``AlignDevicesHook`` brings them in for it. The analyses that read
weights directly (``W_O``, ``W_U``, norms) therefore read them through :func:`read`, which
brings offloaded ones in for the read, and move what they combine onto one device.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

import torch


def _offload_hooks(module: torch.nn.Module) -> list[Any]:
    """The accelerate hooks on ``module`` itself that offload its weights (a
    ``SequentialHook`` holds several). Its own only: the bridge's wrappers forward
    attribute reads to the Hugging Face module they wrap."""
    hook = module.__dict__.get("_hf_hook")
    hooks = getattr(hook, "hooks", None) or ([] if hook is None else [hook])
    return [h for h in hooks if getattr(h, "offload", False)]


def _hf_root(model: Any) -> torch.nn.Module | None:
    """The Hugging Face module accelerate dispatched (a bridge's ``original_model``)."""
    root = getattr(model, "original_model", model)
    return root if isinstance(root, torch.nn.Module) else None


def is_dispatched(model: Any) -> bool:
    """Whether accelerate placed ``model`` (``device_map=``, ``cpu_offload``): its layers may
    sit on several devices, or offloaded, and its hooks move weights and inputs."""
    root = _hf_root(model)
    if root is None:
        return False
    return bool(getattr(root, "hf_device_map", None)) or any(
        "_hf_hook" in m.__dict__ for m in root.modules()
    )


def _offloading_owners(model: Any, modules: tuple[torch.nn.Module, ...]) -> list[tuple[Any, Any]]:
    """``(module, hook)`` for each accelerate hook that offloads the weights of ``modules``: the hook sits on
    each leaf below them (``device_map`` offload in transformers 5, ``cpu_offload``), on a
    module itself or on a block above it (older placements)."""
    root = _hf_root(model)
    if root is None or not is_dispatched(model):
        return []
    wanted = {id(m) for module in modules for m in module.modules()}
    owners = []
    for candidate in root.modules():
        hooks = _offload_hooks(candidate)
        if hooks and {id(m) for m in candidate.modules()} & wanted:
            owners += [(candidate, hook) for hook in hooks]
    return owners


@contextlib.contextmanager
def onloaded(model: Any, *modules: torch.nn.Module) -> Iterator[None]:
    """Within: the offloaded parameters of ``modules`` (parts of ``model``) hold their values
    on their execution device; outside, accelerate offloads them again. Nothing for a model
    on one device."""
    done = []
    try:
        for owner, hook in _offloading_owners(model, modules):
            hook.pre_forward(owner)
            done.append((owner, hook))
        yield
    finally:
        for owner, hook in reversed(done):
            hook.post_forward(owner, None)


def read(
    model: Any, owner: Any, *names: str, within: torch.nn.Module | None = None
) -> tuple[torch.Tensor | None, ...]:
    """``owner``'s attributes ``names`` (``W_O``, ``b_U``, a norm's ``weight``…), detached;
    ``None`` for one it lacks. An offloaded weight is read while onloaded and copied, so it
    outlives the read. ``within``: the module holding them when ``owner`` is not one."""
    module = within if within is not None else owner
    with onloaded(model, module):
        copy = bool(_offloading_owners(model, (module,)))
        out = []
        for name in names:
            value = getattr(owner, name, None)
            if value is None:
                out.append(None)
                continue
            value = value.detach()
            out.append(value.clone() if copy else value)
    return tuple(out)


def calling(model: Any, module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``module`` as a function of one tensor that works offloaded (its weights onloaded for
    the call) and on another device (the input moved to the module's, the output back)."""

    def call(x: torch.Tensor) -> torch.Tensor:
        with onloaded(model, module):
            device = next((p.device for p in module.parameters()), x.device)
            return module(x.to(device)).to(x.device)

    return call


def compute_device(model: Any) -> torch.device:
    """Where work outside the model (an SAE, say) runs: the first parameter not offloaded
    (an offloaded one is on ``meta``), else the model's input device."""
    for p in model.parameters():
        if p.device.type != "meta":
            return p.device
    return torch.device(getattr(model.cfg, "device", None) or "cpu")


def input_device(hf_model: torch.nn.Module, fallback: torch.device) -> torch.device:
    """Where a dispatched model's inputs go: its first placed module's device (an offloaded
    one computes on the CPU)."""
    placed = getattr(hf_model, "hf_device_map", None) or {}
    for where in placed.values():
        if where in ("cpu", "disk"):
            return torch.device("cpu")
        return torch.device(f"cuda:{where}" if isinstance(where, int) else where)
    return fallback
