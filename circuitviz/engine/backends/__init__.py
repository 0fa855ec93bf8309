"""The backend seam: analyses run on a TransformerLens bridge or through nnsight (locally, or
on NDIF with ``remote=True``), with the same site names and the same numbers.

``route(model, "patch")`` is the one switch the analyses consult: it returns the seam
implementation for an nnsight model and ``None`` for a bridge, whose own (faster, growing-
batch) implementations stay in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ._base import (
    PORTED,
    Backend,
    Output,
    Run,
    StatusCallback,
    backend_of,
    is_nnsight,
    is_raw_nnsight,
    ported,
)
from ._nnsight import JobCancelled, JobScope, RemoteJobError
from ._program import SITES

__all__ = [
    "PORTED",
    "SITES",
    "Backend",
    "JobCancelled",
    "JobScope",
    "Output",
    "RemoteJobError",
    "Run",
    "StatusCallback",
    "backend_of",
    "is_nnsight",
    "is_raw_nnsight",
    "ported",
    "remote_jobs",
    "require",
    "route",
]


def require(model: Any, analysis: str) -> None:
    """Refuse, up front, an analysis that is not ported to ``model``'s backend (raises
    :class:`._nnsight.BridgeOnly`, naming the bridge); nothing for a bridge."""
    if model is None or not is_nnsight(model) or analysis in PORTED:
        return
    from ._nnsight import BridgeOnly

    raise BridgeOnly(
        f"{analysis} runs on the TransformerLens bridge only; on an nnsight model circuitviz "
        f"runs {', '.join(PORTED)}. Load the bridge for it: "
        f"circuitviz.load_model({model.cfg.model_name!r})."
    )


def remote_jobs(model: Any) -> Any | None:
    """The model itself when its analyses run as remote (NDIF) jobs — then it offers
    ``watching(callback, scope)`` (a :class:`JobScope` a caller cancels its own jobs by),
    ``cancel()`` and ``job_state`` — else ``None`` (a bridge, or
    nnsight on this machine: nothing to watch or cancel)."""
    return model if is_nnsight(model) and model.remote else None


def route(model: Any, analysis: str) -> Callable[..., Any] | None:
    """The implementation of ``analysis`` to run on ``model`` instead of the bridge's own:
    the seam's for an nnsight model (circuitviz's, or nnsight's own object, wrapped once),
    ``None`` for a bridge."""
    if not (is_nnsight(model) or is_raw_nnsight(model)):
        return None
    from . import _analyses, _feature_graph, _features, _graph, _stats, _toolkit

    homes = (_graph, _analyses, _features, _toolkit, _feature_graph, _stats)
    home = next(m for m in homes if hasattr(m, analysis))
    seam = getattr(home, analysis)
    if is_nnsight(model):
        return seam
    return lambda raw, *args, **kwargs: seam(wrap(raw), *args, **kwargs)


_WRAPPED: dict[int, Any] = {}  # id(nnsight model) -> (model, wrapper): one memo per model


def wrap(model: Any, *, remote: bool = False) -> Any:
    """circuitviz's wrapper of an nnsight model object (made once per model and ``remote``)."""
    from ._nnsight import NNsightModel

    key = id(model)
    held = _WRAPPED.get(key)
    if held is None or held[0] is not model or held[1].remote != remote:
        held = _WRAPPED[key] = (model, NNsightModel(model, remote=remote))
    return held[1]
