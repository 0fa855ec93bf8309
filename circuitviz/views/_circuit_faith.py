"""CircuitView's faithfulness panel: the shown circuit's exact faithfulness, with and without
the ablated nodes (and a feature graph's error-node variants). On a remote (NDIF) model it is
a job (``_tasks``): the message handler returns at once and ``faithfulness_job`` shows its
state, latency and Cancel, as PatchingView's clicks do.

Protocol::

    view → kernel  {"type": "faithfulness", "ablated": [...], "request": "faithfulness"}
    kernel → view  trait ``faithfulness`` (the circuit's, then a feature graph's variants),
                   {"type": "faithfulness", "request": ...} when all are in;
                   on a remote model trait ``faithfulness_job`` along the way
    view → kernel  {"type": "cancel_job", "job": "faithfulness"}
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import traitlets as t

from ..engine import InputError
from ..engine._cells import is_covered
from ..engine.backends import is_nnsight
from ._tasks import RemoteTasks


class CircuitFaithfulness(RemoteTasks):
    """Mixed into CircuitView (which keeps ``_shown``, ``_faith_cache`` and the graph)."""

    faithfulness_job = t.Dict().tag(sync=True)
    """The last faithfulness request's job (keys as ``AblationView.job``; ``remote``: an NDIF
    job, which the page can cancel)."""

    def _msg_faithfulness(self, content: dict[str, Any]) -> None:
        if not self.has_faithfulness:
            raise InputError(
                "This graph cannot compute faithfulness (needs a Graph with model and pairs, "
                "on the TransformerLens bridge: circuitviz.load_model(name))."
            )
        ablated = content.get("ablated", [])
        if not isinstance(ablated, list) or not all(isinstance(n, str) for n in ablated):
            raise InputError("faithfulness: 'ablated' must be a list of component ids.")
        shown = self.shown_circuit()
        assert shown is not None and self._shown is not None
        edges = np.packbits(self._shown[0]).tobytes()  # what is shown now, not when it runs
        gone = set(ablated)
        nodes = [n["id"] for n in self.graph["nodes"]]
        dropped = [n["id"] for n in self.graph["nodes"] if is_covered(n.get("ablates"), gone)]
        request = content.get("request")

        def of(graph: Any, drop: list[str], **options: Any) -> float:
            return self._faithfulness_of(graph, drop, edges=edges, **options)

        def work(deliver: Any) -> None:
            circuit_f, after = self._faithfulness_both(shown, dropped, edges)
            first = {
                "circuit": float(circuit_f),
                "ablated": float(after),
                "nodes": nodes,
                "ablated_nodes": dropped,
            }
            deliver(lambda: setattr(self, "faithfulness", first))
            # a feature circuit's error-node variants (three more passes) arrive second
            if extra := self._error_faithfulness(shown, of):
                deliver(lambda: setattr(self, "faithfulness", {**first, **extra}))
            deliver(lambda: self.send({"type": "faithfulness", "request": request}))

        self._run_task("faithfulness", request, work)

    def _faithfulness_both(
        self, shown: Any, dropped: list[str], edges: bytes
    ) -> tuple[float, float]:
        """The shown circuit's faithfulness without and with the ablated nodes. On an
        nnsight model, when neither is remembered, both circuits are rows of one pass — one
        NDIF job, as a faithfulness curve's sizes are (a feature graph's go one by one)."""
        keys = [(edges, tuple(d), ()) for d in ([], dropped)]
        fresh = not any(key in self._faith_cache for key in keys)
        if dropped and fresh and is_nnsight(self._model) and not self._feature_kwargs(shown):
            from ..engine.graph import _faithfulness as _f

            ctx = _f.context(shown, self._model, self._pairs)
            masks = torch.stack([_f.circuit_mask(shown, ablated=d) for d in ([], dropped)])
            for key, value in zip(keys, ctx.metrics(self._model, masks), strict=True):
                self._faith_cache[key] = float(ctx.recovered(value))
        circuit = self._faithfulness_of(shown, [], edges=edges)
        return circuit, (self._faithfulness_of(shown, dropped, edges=edges) if dropped else circuit)

    def _faithfulness_of(
        self, shown: Any, dropped: list[str], *, edges: bytes | None = None, **options: Any
    ) -> float:
        """One forward pass per new (shown edges, ablated, options) triple; the view asks
        again on every change, so answers are remembered (the model and pairs are fixed for
        this view)."""
        if edges is None:
            assert self._shown is not None
            edges = np.packbits(self._shown[0]).tobytes()
        key = (edges, tuple(dropped), tuple(sorted(options.items())))
        if key not in self._faith_cache:
            value = shown.faithfulness(
                self._model, self._pairs, ablated=dropped, **options, **self._feature_kwargs(shown)
            )
            if len(self._faith_cache) > 256:
                self._faith_cache.clear()
            self._faith_cache[key] = float(value)
        return self._faith_cache[key]
