"""The backend seam: analyses run on a TransformerLens bridge or through nnsight (locally, or
on NDIF with ``remote=True``), with the same site names and the same numbers.

``route(model, "patch")`` is the one switch the analyses consult: it returns the seam
implementation for an nnsight model and ``None`` for a bridge, whose own (faster, growing-
batch) implementations stay in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._base import PORTED, Backend, Output, Run, StatusCallback, backend_of, is_nnsight, ported
from ._program import SITES

__all__ = [
    "PORTED",
    "SITES",
    "Backend",
    "Output",
    "Run",
    "StatusCallback",
    "backend_of",
    "is_nnsight",
    "ported",
    "route",
]


def route(model: Any, analysis: str) -> Callable[..., Any] | None:
    """The implementation of ``analysis`` to run on ``model`` instead of the bridge's own:
    the seam's for an nnsight model, ``None`` for a bridge."""
    if not is_nnsight(model):
        return None
    from . import _analyses

    return getattr(_analyses, analysis)
