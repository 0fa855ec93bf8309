"""What every view shares: a JSON-round-tripping ``state``, and the click-to-ablate protocol.

Ablation protocol (mirrors ``js/src/ablation.ts``)::

    view → kernel  {"type": "ablate", "components": ["L3H5", "MLP2"], "mode": "zero",
                    "metric": "logit_diff", "request": 7}
    kernel → view  {"type": "ablation", "request": 7, "result": {...}}
                 | {"type": "error", "request": 7, "message": "..."}

The kernel validates every message; a bad one gets an error reply and changes nothing, and no
exception ever leaves the handler (a comm handler that raises would log a traceback in the
kernel and leave the view waiting).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import anywidget
import traitlets as t

from ..engine import METRICS, MODES, AblationResult, InputError, PromptPairs, ablate
from ..engine._components import COMPONENT_ID, parse_ids

STATIC = Path(__file__).parent.parent / "static"
COMPONENT = COMPONENT_ID  # the engine's grammar: "L3H5", "MLP7", optionally ":P4"
MAX_COMPONENTS = 1024


class View(anywidget.AnyWidget):
    """Base of the circuitviz views: ``state`` save/restore and a custom-message router."""

    #: Synced traits that make up ``view.state``, in order.
    STATE_KEYS: ClassVar[tuple[str, ...]] = ()

    selected = t.Unicode("").tag(sync=True)
    """Selected component id (``"L3H5"``, ``"MLP7"``…); linked across views by ``explore``."""

    error = t.Unicode("").tag(sync=True)
    """The last error shown in the view ('' when none)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.on_msg(self._on_custom_msg)

    # -- state -----------------------------------------------------------------------------
    @property
    def state(self) -> dict[str, Any]:
        """The view's user state (selection, ablation set, thresholds…) as JSON-able data;
        pass it back as ``View(..., state=view.state)``."""
        out: dict[str, Any] = {}
        for key in self.STATE_KEYS:
            value = getattr(self, key)
            out[key] = list(value) if isinstance(value, (list, tuple)) else value
        return out

    def _apply_state(self, state: Mapping[str, Any] | None) -> None:
        if state is None:
            return
        if not isinstance(state, Mapping):
            raise InputError(f"state must be a dict (from view.state), got {type(state).__name__}.")
        unknown = sorted(set(state) - set(self.STATE_KEYS))
        if unknown:
            raise InputError(
                f"Unknown state keys {unknown} for {type(self).__name__}; "
                f"expected some of {list(self.STATE_KEYS)}."
            )
        with self.hold_trait_notifications():
            for key, value in state.items():
                if key != "ablated":
                    setattr(self, key, value)
        if "ablated" in state:
            self._restore_ablation(list(state["ablated"]))

    def _restore_ablation(self, components: list[str]) -> None:
        self.ablated = components

    # -- export ------------------------------------------------------------------------------
    def figure(self, **options: Any) -> Any:
        """A publication figure (plotly) of what this view shows now."""
        raise NotImplementedError(f"{type(self).__name__} has no static figure.")

    def save(self, path: str | os.PathLike, **options: Any) -> Path:
        """Write what this view shows: ``.svg``, ``.pdf`` or ``.png`` as a publication figure
        of its current selection, ablation set and thresholds (style options as
        :func:`circuitviz.export.make_style`; options of :meth:`figure` override the view's),
        or ``.html`` as this interactive view, standalone (no kernel). Returns the path."""
        from ..export import save

        return save(self, path, **options)

    # -- messages ----------------------------------------------------------------------------
    def _on_custom_msg(self, _widget: Any, content: Any, buffers: list[Any]) -> None:
        self._handle_custom_msg(content, buffers)

    def _handle_custom_msg(self, content: Any, buffers: list[Any] | None = None) -> None:
        """Route one message from the view; never raises."""
        request = content.get("request") if isinstance(content, dict) else None
        try:
            if not isinstance(content, dict) or not isinstance(content.get("type"), str):
                raise InputError("Malformed message: expected an object with a 'type'.")
            handler = getattr(self, f"_msg_{content['type']}", None)
            if handler is None:
                raise InputError(f"Unknown message type {content['type']!r}.")
            handler(content)
        except Exception as err:  # the kernel must survive anything a page sends
            message = str(err) if isinstance(err, (InputError, ValueError)) else repr(err)
            self.error = message
            self.send({"type": "error", "request": request, "message": message})


class AblationView(View):
    """A view whose clicks ablate components in the kernel (needs ``model`` and ``pairs``)."""

    can_ablate = t.Bool(False).tag(sync=True)
    """Whether a model and prompt pairs are attached, so clicks can ablate."""

    ablated = t.List(t.Unicode()).tag(sync=True)
    """Component ids of the current ablation set, e.g. ``["L9H6", "MLP3"]``."""

    mode = t.Unicode("zero").tag(sync=True)
    """Ablation mode: ``"zero"``, ``"mean"`` or ``"resample"``."""

    metric = t.Unicode("logit_diff").tag(sync=True)
    """Metric reported for ablations (one of ``circuitviz.engine.METRICS``)."""

    result = t.Dict().tag(sync=True)
    """The last ablation as ``AblationResult.to_dict()`` (clean, corrupted, ablated, top tokens)."""

    def __init__(self, *, model: Any = None, pairs: PromptPairs | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._model = model
        self._pairs = pairs
        self._last: AblationResult | None = None
        self.can_ablate = model is not None and pairs is not None

    @property
    def ablation(self) -> AblationResult | None:
        """The last :class:`~circuitviz.AblationResult` (``view.result`` is its dict)."""
        return self._last

    def validate(self, components: Iterable[Any], mode: Any, metric: Any) -> list[str]:
        """Check an ablation request; returns the de-duplicated component ids."""
        if mode not in MODES:
            raise InputError(f"Unknown ablation mode {mode!r}: use one of {list(MODES)}.")
        if metric not in METRICS:
            raise InputError(f"Unknown metric {metric!r}: use one of {list(METRICS)}.")
        if isinstance(components, (str, bytes)) or not isinstance(components, Iterable):
            raise InputError("components must be a list of ids like ['L3H5', 'MLP2'].")
        comps = list(components)
        if len(comps) > MAX_COMPONENTS:
            raise InputError(f"Too many components ({len(comps)}); at most {MAX_COMPONENTS}.")
        cfg = self._model.cfg  # positions are checked by the engine, against the prompts
        return [c.id for c in parse_ids(comps, n_layers=cfg.n_layers, n_heads=cfg.n_heads)]

    def ablate(
        self, components: Iterable[str] = (), *, mode: str | None = None, metric: str | None = None
    ) -> AblationResult:
        """Ablate ``components`` (ids like ``"L9H6"``, ``"MLP3"``) on the clean prompts and show
        the result in the view. Raises :class:`~circuitviz.InputError` on bad input."""
        if not self.can_ablate:
            raise InputError("This view has no model/pairs: pass model= and pairs= to ablate.")
        mode = self.mode if mode is None else mode
        metric = self.metric if metric is None else metric
        comps = self.validate(components, mode, metric)
        heads = [c for c in comps if c.startswith("L")]
        mlps = [c for c in comps if c.startswith("MLP")]
        res = ablate(self._model, self._pairs, heads=heads, mlps=mlps, mode=mode, metric=metric)
        self.show_ablation(res, mode=mode, metric=metric)
        return res

    def show_ablation(self, res: AblationResult, *, mode: str, metric: str) -> None:
        """Show an ablation computed elsewhere (``explore`` shares one set across views)."""
        self._last = res
        with self.hold_trait_notifications():
            self.mode, self.metric, self.error = mode, metric, ""
            self.ablated = list(res.components)
            self.result = res.to_dict()

    def reset(self) -> None:
        """Clear the ablation set."""
        self.ablate([])

    def _restore_ablation(self, components: list[str]) -> None:
        if self.can_ablate:
            self.ablate(components)
        else:
            self.ablated = components

    def _baseline(self) -> None:
        """Fill clean/corrupted metrics and top tokens before the first click (warms the
        engine's cache, so the first click costs one forward pass)."""
        if not self.can_ablate:
            return
        try:
            self.ablate(list(self.ablated))
        except Exception as err:
            self.error = str(err)

    def _msg_ablate(self, content: dict[str, Any]) -> None:
        res = self.ablate(
            content.get("components", []),
            mode=content.get("mode", self.mode),
            metric=content.get("metric", self.metric),
        )
        self.send({"type": "ablation", "request": content.get("request"), "result": res.to_dict()})
