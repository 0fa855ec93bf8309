"""CircuitView's SAE feature nodes (a ``FeatureGraph`` from ``circuit(..., saes=...)``): the
hover card of a latent, computed in the kernel and cached, and the SAEs a click ablates with.

Card protocol (mirrors ``js/src/feature_card.ts``)::

    view → kernel  {"type": "feature_card", "node": "L11F1234:P5", "request": "feature:L11F1234"}
    kernel → view  {"type": "feature_card", "node": "L11F1234", "label": "…",
                    "promoted": [[token, value], …], "suppressed": [[token, value], …],
                    "max_act": 3.2, "request": …}

``promoted``/``suppressed``: the tokens whose logits the latent's decoder direction raises and
lowers most directly (``W_dec[i] @ W_U``); ``max_act``: its largest activation on the view's
clean and corrupted prompts. Token text is sent as text (the page never parses it as HTML).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..engine import InputError, _devices
from ..engine._components import parse_id
from ..engine._hooks import run
from ..engine._pairs import tokenize
from ..engine.features import SAESet, as_sae_set, splice_hook
from ..engine.graph import FeatureGraph
from ..engine.graph._feature_graph import feature_label

#: Tokens listed per direction on a card (the payload stays a few hundred bytes).
CARD_TOKENS = 6
#: Cards kept per view.
MAX_CARDS = 512
#: What a new view of a feature graph shows. Every EMBED → LOGITS path crosses every SAE site,
#: so the strongest 30 (or 100) nodes of the demo IOI graph rarely form one path, and with a
#: tight edge limit too one more edge can close paths of hundreds of edges at once: nothing
#: would show. The edge limit binds instead (demo IOI, throwaway SAEs: 62 nodes, 149 edges).
FEATURE_TOP_NODES = 500
FEATURE_TOP_EDGES = 150
#: When no path fits the default edge limit (the shipped demo SAEs on IOI need ~1,000 edges),
#: a new view doubles it, up to this, until one does: a researcher's first look is never empty.
FEATURE_MAX_DEFAULT_EDGES = 4800


#: Faithfulness of a feature circuit beside the plain one (error nodes kept): with every error
#: node taken out, and completeness (everything but the circuit), both ways. Keys of
#: ``CircuitView.faithfulness``; the options of ``FeatureGraph.faithfulness``.
ERROR_VARIANTS: dict[str, dict[str, Any]] = {
    "errors_ablated": {"errors": "ablated"},
    "complement": {"complement": True},
    "complement_errors_ablated": {"complement": True, "errors": "ablated"},
}


class FeatureNodes:
    """Mixin for CircuitView: feature cards and the SAEs behind feature nodes."""

    _saes: Any
    _model: Any
    _pairs: Any
    _cards: dict[str, dict[str, Any]]
    _max_acts: dict[str, torch.Tensor] | None

    def _init_features(self, graph: Any, saes: Any) -> None:
        """Keep the SAEs of a feature graph (given, or those it was built with)."""
        self._cards = {}
        self._max_acts = None
        if saes is not None:
            saes = as_sae_set(saes)
        elif isinstance(graph, FeatureGraph):
            saes = graph._cache.get("saes")
        if isinstance(graph, FeatureGraph) and saes is not None:
            graph._saes(saes)  # the graph's own SAEs, or an InputError
        self._saes = saes

    def _feature_defaults(self, graph: Any, given: Any) -> None:
        """A feature graph's own defaults for the node and edge limits (unless given)."""
        if isinstance(graph, FeatureGraph):
            if "top_nodes" not in given:
                self.top_nodes = FEATURE_TOP_NODES  # type: ignore[attr-defined]
            if "top_edges" not in given:
                self.top_edges = FEATURE_TOP_EDGES  # type: ignore[attr-defined]
                if "top_nodes" not in given:  # a node limit the user chose may bind instead
                    self._widen_until_shown()

    def _widen_until_shown(self) -> None:
        from ..engine.graph import _select

        view: Any = self
        while view.top_edges < FEATURE_MAX_DEFAULT_EDGES:
            rule = view.pruning
            view._selections[rule] = _select.select(view._cands, rule)  # kept for _show
            if view._selections[rule][1].any():
                return
            view.top_edges = 2 * view.top_edges
        if not view._selections.get(view.pruning, _select.select(view._cands, view.pruning))[
            1
        ].any():
            view.top_edges = FEATURE_TOP_EDGES  # nothing fits at all: the notice says so

    def _feature_kwargs(self, graph: Any) -> dict[str, Any]:
        """What ``faithfulness`` of a shown feature circuit needs besides the model and pairs."""
        return {"saes": self._saes} if isinstance(graph, FeatureGraph) else {}

    def _error_faithfulness(
        self, shown: Any, faithfulness_of: Callable[..., float]
    ) -> dict[str, float]:
        """A feature circuit's faithfulness and completeness with error nodes kept and
        ablated (:data:`ERROR_VARIANTS`); nothing for a plain graph."""
        if not isinstance(shown, FeatureGraph):
            return {}
        return {
            key: float(faithfulness_of(shown, [], **opts)) for key, opts in ERROR_VARIANTS.items()
        }

    def _msg_feature_card(self, content: dict[str, Any]) -> None:
        node = content.get("node")
        card = self.feature_card(node)
        self.send({"type": "feature_card", **card, "request": content.get("request")})

    def feature_card(self, node: Any) -> dict[str, Any]:
        """The hover card of a feature node (``"L11F1234"``, with or without ``":P5"``):
        label, the tokens its decoder direction promotes and suppresses, its max activation."""
        comp = parse_id(node) if isinstance(node, str) else None
        if comp is None or comp.kind != "feature":
            raise InputError(
                f"feature_card: {str(node)[:40]!r} is not a feature id like 'L11F1234'."
            )
        saes: SAESet | None = self._saes
        if saes is None or self._model is None:
            raise InputError(
                "Feature cards need a live kernel with the model and the SAEs (saes=…)."
            )
        hook = comp.hook_in(saes)
        sae = saes[hook]
        if not 0 <= comp.feature < sae.d_sae:
            raise InputError(f"feature_card: {comp.base_id} is out of range (0 … {sae.d_sae - 1}).")
        key = comp.base_id
        if key not in self._cards:
            if len(self._cards) >= MAX_CARDS:
                self._cards.clear()
            (W_U,) = _devices.read(self._model, self._model.unembed, "W_U")
            W_U = W_U.float()
            direction = sae.W_dec[comp.feature].float().to(W_U.device) @ W_U  # [d_vocab]
            up = direction.topk(CARD_TOKENS)
            down = (-direction).topk(CARD_TOKENS)
            to_str = self._model.to_string
            max_act = self._latent_max(hook)
            self._cards[key] = {
                "node": key,
                "label": feature_label(saes.stats, hook, comp.layer, comp.feature),
                "promoted": [
                    [to_str(int(i)), round(float(v), 4)] for v, i in zip(*up, strict=True)
                ],
                "suppressed": [
                    [to_str(int(i)), round(-float(v), 4)] for v, i in zip(*down, strict=True)
                ],
                "max_act": None if max_act is None else round(float(max_act[comp.feature]), 4),
            }
            top = getattr(saes.stats.get(hook), "top_values", None)  # shipped statistics
            if top is not None and len(top) == sae.d_sae:
                self._cards[key]["max_act_corpus"] = round(float(top[comp.feature].max()), 4)
        return self._cards[key]

    def _latent_max(self, hook: str) -> torch.Tensor | None:
        """Per latent, its largest activation on the clean and corrupted prompts (one spliced
        forward per prompt set, once per view; mixed lengths: padding left out)."""
        if self._pairs is None:
            return None
        if self._max_acts is None:
            saes, store = self._saes, {}
            tokens = tokenize(self._model, self._pairs, pad=True)

            def rec(h: str):
                def fn(f: torch.Tensor, err: torch.Tensor) -> None:
                    top = tokens.real_rows(f.detach().float()).amax(0).cpu()
                    store[h] = torch.maximum(store[h], top) if h in store else top

                return fn

            fwd = [(h, splice_hook(saes[h], record=rec(h))) for h in saes]
            with torch.inference_mode():
                for batch in (tokens.clean, tokens.corrupted):
                    run(self._model, batch, fwd, attention_mask=tokens.attention_mask)
            self._max_acts = store
        return self._max_acts.get(hook)
