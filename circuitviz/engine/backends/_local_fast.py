"""Faster greedy generation on a local (CPU) nnsight model: while a request with a
generation runs, the model's linear layers compute a few rows as the bridge's twin does
(:class:`circuitviz.engine.features._generate.SkinnyLinear`, ``weight @ x.T``: MKL's
one-row product is slow on this CPU). Same weights, the sums in another order: float
rounding only, as on the bridge.

nnsight runs a module's forward through the controller it installs on the module, which
calls ``controller.state.body`` (the class's forward, unbound); that body is swapped for the
request and put back after, whatever happens. Where nnsight's controllers are not there (no
trace ran yet, another nnsight version) nothing is swapped: the request runs as it was.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


@contextmanager
def skinny_linears(lm: Any, runs: list[dict]) -> Iterator[None]:
    """Inside: ``lm``'s CPU ``nn.Linear`` layers run :class:`SkinnyLinear`'s forward, when
    one of ``runs`` generates; restored on exit."""
    swapped = []
    if any(run.get("generate") for run in runs):
        from ..features._generate import SkinnyLinear

        for module in lm._module.modules():
            state = getattr(module.__dict__.get("forward"), "state", None)
            if (
                type(module) is torch.nn.Linear
                and module.weight.device.type == "cpu"
                and getattr(state, "body", None) is torch.nn.Linear.forward
            ):
                state.body = SkinnyLinear.forward
                swapped.append(state)
    try:
        yield
    finally:
        for state in swapped:
            state.body = torch.nn.Linear.forward
