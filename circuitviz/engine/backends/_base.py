"""The backend seam: one interface to run a request on a model, whatever runs it.

Analyses describe their forward passes as a request (see :mod:`._program`) and hand it to
the model's :class:`Backend`; the TransformerLens bridge and nnsight (locally or on NDIF)
implement it. Nothing outside ``circuitviz.engine.backends`` knows which one runs.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch

from ._program import SITES

#: Set while a ported analysis runs on an nnsight model, so the shared input checks
#: (``check_bridge``, reached through ``tokenize``) accept it there and nowhere else.
_PORTED: ContextVar[bool] = ContextVar("circuitviz_ported", default=False)

#: The analyses that run on an nnsight model; every other one names the bridge instead.
PORTED = (
    "patch",
    "ablate",
    "attention",
    "attribution_patch",
    "circuit",
    "feature_activations",
    "steer",
)
PORTED += ("faithfulness", "mib_scores")  # Graph.faithfulness(_curve), patch_edges; MIB
PORTED += ("feature_circuit", "feature_faithfulness")  # circuit(saes=...), its faithfulness
PORTED += (
    "logit_lens",
    "logit_attribution",
    "path_patch",
    "head_roles",
    "refusal_direction",
    "steer_refusal",
)  # the toolkit: backends/_toolkit.py
PORTED += ("feature_stats", "tasks.*")  # backends/_stats.py; the task builders need the tokenizer


def is_nnsight(model: object) -> bool:
    """Whether ``model`` is a circuitviz nnsight model (without importing nnsight)."""
    return getattr(model, "backend_name", None) == "nnsight"


def is_raw_nnsight(model: object) -> bool:
    """Whether ``model`` is an nnsight model object itself (``nnsight.TransformersModel``,
    ``LanguageModel``) rather than circuitviz's wrapper of one."""
    return type(model).__module__.split(".")[0] == "nnsight" and hasattr(model, "_module")


def ported_call_allowed() -> bool:
    return _PORTED.get()


@contextmanager
def ported() -> Iterator[None]:
    """Inside: the shared checks accept an nnsight model (a ported analysis is running)."""
    token = _PORTED.set(True)
    try:
        yield
    finally:
        _PORTED.reset(token)


@dataclass
class Run:
    """One forward pass of a request (plain data: it travels to NDIF as it is).

    ``writes[(site, layer)]``: ``[(rows, pos, head, src)]`` (see :func:`._program.write`);
    ``saves``: sites kept for later runs; ``returns``: sites brought back to the client;
    ``readout``: what comes back from the final-position logits (:func:`._program.readout`);
    ``grow[layer]``: rows (copies of row 0) that join the batch at that layer's input;
    ``grad``: an attribution run — ``{"site", "cell", "weights"}``, see
    :func:`._program.nnsight_attribution` (its readout then holds ``effects``);
    ``splices[(site, layer)]``: an SAE (or a transcoder, ``("transcoder", layer)``) spliced
    in where :mod:`._feature_program`'s table puts it; ``generate``: ``{"n_tokens", "eos"}`` for a greedy
    continuation instead of one forward pass;
    ``attention_mask``: ``[batch, pos]``, 1 = token, for left-padded prompts of mixed lengths
    (None: unpadded). A run of one padded prompt may grow: its mask row broadcasts.
    """

    tokens: torch.Tensor
    writes: dict[tuple[str, int], list[tuple]] = field(default_factory=dict)
    saves: set[tuple[str, int]] = field(default_factory=set)
    returns: set[tuple[str, int]] = field(default_factory=set)
    readout: dict[str, Any] = field(default_factory=dict)
    grow: dict[int, int] = field(default_factory=dict)
    grad: dict[str, Any] = field(default_factory=dict)
    splices: dict[tuple[str, int], dict] = field(default_factory=dict)
    generate: dict[str, Any] = field(default_factory=dict)
    attention_mask: torch.Tensor | None = None

    def as_plain(self) -> dict:
        """The run as builtins and tensors, with the layers and sites it touches."""
        touched: dict[int, set[str]] = {}
        grown = [("resid_pre", layer) for layer, n in self.grow.items() if n]
        for site, layer in [*self.writes, *self.saves, *self.returns, *grown]:
            if site not in SITES:
                raise ValueError(f"unknown site {site!r}")  # analyses build only known sites
            touched.setdefault(layer, set()).add(site)
        return {
            "tokens": self.tokens,
            "writes": dict(self.writes),
            "saves": set(self.saves),
            "returns": set(self.returns),
            "readout": dict(self.readout),
            "grow": dict(self.grow),
            "grad": dict(self.grad),
            "splices": dict(self.splices),
            "generate": dict(self.generate),
            "attention_mask": self.attention_mask,
            "touched": {layer: tuple(sorted(s)) for layer, s in touched.items()},
        }


@dataclass
class Output:
    """What came back from one run: its readout and the sites it returned."""

    readout: dict[str, torch.Tensor]
    returned: dict[tuple[str, int], torch.Tensor | None]


class Backend(Protocol):
    """Runs requests on one model. ``name`` is ``"bridge"`` or ``"nnsight"``; ``remote``:
    whether a request leaves this machine (then the analyses keep data on the server)."""

    name: str
    remote: bool
    model: Any

    def sites(self) -> tuple[str, ...]:
        """The sites this model exposes to writes (reads may be more: ``pattern``)."""
        ...

    def execute(
        self, runs: Sequence[Run], *, desc: str = "", progress: bool = True
    ) -> list[Output]:
        """Run every run of one request, in order, and return their outputs."""
        ...


def backend_of(model: object) -> Backend:
    """The backend that runs ``model``: nnsight for a circuitviz nnsight model, else the
    TransformerLens bridge."""
    if is_nnsight(model):
        return model.backend  # type: ignore[attr-defined]
    from ._bridge import BridgeBackend

    return BridgeBackend(model)


StatusCallback = Callable[[str, str], None]
"""``callback(state, detail)``: a remote job's state (``"queued"``, ``"running"``, ``"done"``,
``"error"``, ``"cancelled"``) and the server's words about it."""
