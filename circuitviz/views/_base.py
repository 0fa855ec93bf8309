"""What every view shares: a JSON-round-tripping ``state``, and the click-to-ablate protocol.

Ablation protocol (mirrors ``js/src/ablation.ts``)::

    view → kernel  {"type": "ablate", "components": ["L3H5", "MLP2"], "mode": "zero",
                    "metric": "logit_diff", "request": 7}
    kernel → view  {"type": "ablation", "request": 7, "result": {...}}
                 | {"type": "error", "request": 7, "message": "..."}

The kernel validates every message; a bad one gets an error reply and changes nothing, and no
exception ever leaves the handler (a comm handler that raises would log a traceback in the
kernel and leave the view waiting).

The kernel owns the state. A page can send trait updates for any synced trait; only those in
the class's ``FRONTEND_TRAITS`` are accepted, each checked by the trait's own validators (the
same ones a Python assignment runs). Any other update is rejected whole: nothing is applied,
the page is sent the kernel's values back, and ``view.error`` says why. Custom messages of the
types the view handles (a ``_msg_<type>`` method: ``ablate``, ``request_layer``,
``faithfulness``) are size-checked before their handler runs; any other message goes to the
callbacks registered with ``view.on_msg``.
"""

from __future__ import annotations

import inspect
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, ClassVar

import anywidget
import traitlets as t

from ..engine import METRICS, MODES, AblationResult, InputError, PromptPairs, ablate
from ..engine._components import COMPONENT_ID, parse_id, parse_ids
from ..engine.backends import JobCancelled, remote_jobs
from ._jobs import (
    FIRST_REQUEST,
    JOB_KEYS,
    JOB_STATES,
    RemoteClicks,
    kernel_post,
    main_thread_post,
)

STATIC = Path(__file__).parent.parent / "static"
COMPONENT = COMPONENT_ID  # the engine's grammar: "L3H5", "MLP7", optionally ":P4"
MAX_COMPONENTS = 1024

#: Limits on anything a page sends (trait updates and the view's own messages): a list holds at
#: most this many items (the most nodes a CircuitView shows, ``_circuit.MAX_NODES``)…
MAX_ITEMS = 20_000
#: …a string at most this many characters (ids, modes, metrics and request tags are short)…
MAX_TEXT = 256
#: …and objects nest at most this deep, with at most this many keys each.
MAX_DEPTH = 4
MAX_KEYS = 32
#: An error message quotes at most this much of the input it complains about.
QUOTE_CHARS = 100
MAX_ERROR_CHARS = 600


def quote(value: Any, limit: int = QUOTE_CHARS) -> str:
    """``repr(value)``, cut to ``limit`` characters: errors name bad input without echoing a
    10 MB string back to the page."""
    if isinstance(value, (str, bytes)) and len(value) > 4 * limit:
        value = value[: 4 * limit]  # never repr a huge string only to cut it
    text = repr(value)
    return text if len(text) <= limit else f"{text[: limit - 1]}…"


def check_size(value: Any, where: str) -> None:
    """Refuse page-sent data over the limits: a list of more than :data:`MAX_ITEMS` items, a
    string over :data:`MAX_TEXT` characters, nesting deeper than :data:`MAX_DEPTH`, an object
    of more than :data:`MAX_KEYS` keys, more than ``2 × MAX_ITEMS`` values in all, or anything
    but JSON data. Raises InputError naming the place, never echoing the data."""
    budget = [2 * MAX_ITEMS]

    def walk(value: Any, where: str, depth: int) -> None:
        budget[0] -= 1
        if budget[0] < 0:
            raise InputError(f"{where}: the data holds over {2 * MAX_ITEMS} values in all.")
        if depth > MAX_DEPTH:
            raise InputError(f"{where} nests deeper than {MAX_DEPTH} levels.")
        if isinstance(value, str):
            if len(value) > MAX_TEXT:
                raise InputError(f"{where} is a {len(value)}-character string; at most {MAX_TEXT}.")
        elif isinstance(value, (list, tuple)):
            if len(value) > MAX_ITEMS:
                raise InputError(f"{where} has {len(value)} items; at most {MAX_ITEMS}.")
            for i, item in enumerate(value):
                walk(item, f"{where}[{i}]", depth + 1)
        elif isinstance(value, Mapping):
            if len(value) > MAX_KEYS:
                raise InputError(f"{where} has {len(value)} keys; at most {MAX_KEYS}.")
            for key, item in value.items():
                walk(key, f"a key of {where}", depth + 1)
                walk(item, f"{where}[{quote(key, 40)}]", depth + 1)
        elif not (value is None or isinstance(value, (bool, int, float))):
            raise InputError(f"{where} is a {type(value).__name__}; expected JSON data.")

    walk(value, where, 0)


def error_text(err: BaseException) -> str:
    """What the page is told about ``err``: its message (our errors name problem and fix; others
    their type too), never longer than :data:`MAX_ERROR_CHARS`."""
    ours = isinstance(err, (ValueError, t.TraitError))  # InputError is a ValueError
    text = str(err) if ours else repr(err)
    return text if len(text) <= MAX_ERROR_CHARS else f"{text[: MAX_ERROR_CHARS - 1]}…"


class View(anywidget.AnyWidget):
    """Base of the circuitviz views: ``state`` save/restore, kernel-owned traits (the page may
    write only ``FRONTEND_TRAITS``) and a custom-message router."""

    #: Synced traits that make up ``view.state``, in order.
    STATE_KEYS: ClassVar[tuple[str, ...]] = ()

    #: Synced traits the page may write (``model.set`` in js/src); updates to any other trait
    #: are rejected and reverted (:meth:`set_state`).
    FRONTEND_TRAITS: ClassVar[frozenset[str]] = frozenset({"selected"})

    selected = t.Unicode("").tag(sync=True)
    """Selected component id (``"L3H5"``, ``"MLP7"``…); linked across views by ``explore``."""

    error = t.Unicode("").tag(sync=True)
    """The last error shown in the view ('' when none)."""

    @t.validate("selected")
    def _check_selected(self, proposal: Any) -> str:
        value = proposal["value"]
        if len(value) > MAX_TEXT:
            raise t.TraitError(f"selected must be a component id of at most {MAX_TEXT} characters.")
        return value

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
        """Restore ``state`` (from :attr:`state`); raises InputError, naming the key, for
        anything the view would refuse from Python."""
        if state is None:
            return
        if not isinstance(state, Mapping):
            raise InputError(f"state must be a dict (from view.state), got {type(state).__name__}.")
        check_size(dict(state), "state")  # it may come from a file someone sent
        unknown = sorted(set(state) - set(self.STATE_KEYS))
        if unknown:
            raise InputError(
                f"Unknown state keys {quote(unknown)} for {type(self).__name__}; "
                f"expected some of {list(self.STATE_KEYS)}."
            )
        try:
            with self.hold_trait_notifications():  # all or nothing: a TraitError rolls back
                for key, value in state.items():
                    if key != "ablated":
                        setattr(self, key, value)
        except t.TraitError as err:
            raise InputError(f"Bad state: {error_text(err)}") from None
        if "ablated" in state:
            self._restore_ablation(state["ablated"])

    def _restore_ablation(self, components: Any) -> None:
        self.ablated = components

    # -- kernel-owned traits -----------------------------------------------------------------
    def set_state(self, sync_data: dict[str, Any]) -> None:
        """Apply a trait update from the page (ipywidgets routes comm ``update`` messages here).

        Only :attr:`FRONTEND_TRAITS` may change, each through its trait's validators; an update
        that names any other trait, or a value a validator refuses, is rejected whole: nothing
        changes, the page is sent the kernel's values back and ``error`` says why."""
        names = list(sync_data) if isinstance(sync_data, Mapping) else []
        try:
            if not isinstance(sync_data, Mapping):
                raise InputError("Malformed trait update: expected an object.")
            refused = sorted(set(names) - self.FRONTEND_TRAITS)
            if refused:
                raise InputError(
                    f"The page may not set {quote(refused)}: the kernel owns them "
                    f"(the page may set {sorted(self.FRONTEND_TRAITS)})."
                )
            for name in names:
                check_size(sync_data[name], name)
                trait = self.traits()[name]
                from_json = self.trait_metadata(name, "from_json", self._trait_from_json)
                trait._validate(self, from_json(sync_data[name], self))  # refuse before the echo
        except Exception as err:
            self._revert(names, err)
            return
        before = {name: getattr(self, name) for name in names}
        try:
            super().set_state(sync_data)
        except Exception as err:  # a validator that depends on another trait: undo, then revert
            with self.hold_trait_notifications():
                for name, value in before.items():
                    self.set_trait(name, value)
            self._revert(names, err)

    def _revert(self, names: list[str], err: BaseException) -> None:
        self.error = f"Update refused: {error_text(err)}"
        known = [name for name in names if isinstance(name, str) and name in self.keys]
        if known:
            self.send_state(known)  # the page's copy goes back to the kernel's values

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
    @classmethod
    def message_types(cls) -> list[str]:
        """The custom message types this view handles itself (its ``_msg_<type>`` methods);
        they are reserved: any other message goes to the callbacks of ``view.on_msg``."""
        names = (name for name in dir(cls) if name.startswith("_msg_"))
        return sorted(name[5:] for name in names if inspect.isfunction(getattr(cls, name)))

    def _handle_msg(self, msg: Any) -> None:
        """Every message from the page (trait updates and custom messages) is handled on the
        kernel's main thread, where cells run.

        ipykernel 7 under JupyterLab hands widget messages to a subshell's thread. A click's
        torch work run there uses a second OpenMP thread pool beside the one the cells' work
        made, and with more pooled threads than cores libgomp stops spin-waiting between
        parallel regions: every small matmul then waits on a wake-up. Click to clamp took
        1.6× as long on the 2-core CPU (0.73 s vs 0.45 s, benchmarks/README.md). Messages keep
        their order; a click sent while a cell runs waits for it, as before subshells."""
        post = main_thread_post()
        if post is None:
            super()._handle_msg(msg)
        else:
            post(lambda: super(View, self)._handle_msg(msg))

    def _handle_custom_msg(self, content: Any, buffers: list[Any] | None = None) -> None:
        """Route one message from the page; never raises. The view's own types are size-checked
        and answered (a result or an error reply); any other message goes to the user's
        ``on_msg`` callbacks, or, when there are none, gets an error reply."""
        kind = content.get("type") if isinstance(content, dict) else None
        handler = getattr(self, f"_msg_{kind}") if kind in self.message_types() else None
        if handler is None and self._msg_callbacks.callbacks:
            self._msg_callbacks(self, content, buffers or [])
            return
        request = content.get("request") if isinstance(content, dict) else None
        try:
            check_size(request, "'request'")
            if handler is None:
                if not isinstance(kind, str):
                    raise InputError("Malformed message: expected an object with a 'type'.")
                # a type name is short: quoting 40 characters leaves room to list the types
                raise InputError(
                    f"Unknown message type {quote(kind, 40)}: this view handles "
                    f"{self.message_types()}."
                )
            check_size(content, f"The {kind!r} message")
            handler(content)
        except Exception as err:  # the kernel must survive anything a page sends
            message = error_text(err)
            self.error = message
            short = isinstance(request, (int, float)) or (
                isinstance(request, str) and len(request) <= MAX_TEXT
            )
            self.send({"type": "error", "request": request if short else None, "message": message})


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

    job = t.Dict().tag(sync=True)
    """The last click's job: ``state`` (one of ``_jobs.JOB_STATES``), ``detail`` (the
    server's words), ``request`` (the page's tag), ``seconds`` (kernel-side latency so far)
    and ``remote`` (whether it is an NDIF job, which the page can cancel)."""

    def __init__(self, *, model: Any = None, pairs: PromptPairs | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        self._model = model
        self._pairs = pairs
        #: SAEs whose latents ("L11F1234") a click may ablate (a CircuitView of a feature graph)
        self._saes: Any = None
        self._last: AblationResult | None = None
        self.can_ablate = model is not None and pairs is not None
        jobs = remote_jobs(model) if self.can_ablate else None
        # A remote click runs in a worker thread (see _jobs); _post hands its results back.
        self._clicks = RemoteClicks(self, jobs) if jobs is not None else None
        self._post = kernel_post()

    @t.validate("job")
    def _check_job(self, proposal: Any) -> dict[str, Any]:
        job = proposal["value"]
        if set(job) - JOB_KEYS or job.get("state", "") not in JOB_STATES:
            raise t.TraitError(f"job must hold {sorted(JOB_KEYS)} with a state in {JOB_STATES}.")
        return job

    @t.validate("mode", "metric")
    def _check_choice(self, proposal: Any) -> str:
        name, value = proposal["trait"].name, proposal["value"]
        what, allowed = {"mode": ("ablation mode", MODES), "metric": ("metric", METRICS)}[name]
        if value not in allowed:
            raise t.TraitError(f"Unknown {what} {quote(value)}: use one of {list(allowed)}.")
        return value

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
        kinds = {c: parse_id(c).kind for c in comps}
        heads = [c for c in comps if kinds[c] == "head"]
        mlps = [c for c in comps if kinds[c] == "mlp"]
        features = [c for c in comps if kinds[c] in ("feature", "error")]
        extra = {"features": features, "saes": self._saes} if features else {}
        res = ablate(
            self._model, self._pairs, heads=heads, mlps=mlps, mode=mode, metric=metric, **extra
        )
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

    def _restore_ablation(self, components: Any) -> None:
        if self.can_ablate and self._clicks is not None:
            # Remote: checked now, run as the view's first job, off the calling cell.
            comps = self.validate(components, self.mode, self.metric)
            self._clicks.submit(FIRST_REQUEST, comps, self.mode, self.metric)
            return
        if self.can_ablate:  # checked against the model, as a click would be
            self.ablate(components)
            return
        if isinstance(components, (str, bytes)) or not isinstance(components, Iterable):
            raise InputError("state['ablated'] must be a list of ids like ['L3H5', 'MLP2'].")
        comps = list(components)
        if len(comps) > MAX_COMPONENTS:
            raise InputError(f"Too many components ({len(comps)}); at most {MAX_COMPONENTS}.")
        for c in comps:
            if not (isinstance(c, str) and COMPONENT.fullmatch(c)):
                raise InputError(
                    f"Unknown component {quote(c)} in state['ablated']: expected a head 'L3H5' "
                    "or an MLP 'MLP7'."
                )
        self.ablated = comps

    def _baseline(self) -> None:
        """Fill clean/corrupted metrics and top tokens before the first click (warms the
        engine's cache, so the first click costs one forward pass). On a remote model this
        is the view's first job (request ``FIRST_REQUEST``), run like a click: the view
        appears at once and shows the job's state, with Cancel."""
        if not self.can_ablate:
            return
        try:
            if self._clicks is None:
                self.ablate(list(self.ablated))
            elif self.job.get("request") != FIRST_REQUEST:  # not yet sent by a restored state
                self._clicks.submit(FIRST_REQUEST, list(self.ablated), self.mode, self.metric)
        except Exception as err:
            self.error = str(err)

    def _msg_ablate(self, content: dict[str, Any]) -> None:
        request = content.get("request")
        mode, metric = content.get("mode", self.mode), content.get("metric", self.metric)
        if self._clicks is not None and self.can_ablate:  # remote: checked here, run off-loop
            comps = self.validate(content.get("components", []), mode, metric)
            self._clicks.submit(request, comps, mode, metric)
            return
        t0 = time.monotonic()
        res = self.ablate(content.get("components", []), mode=mode, metric=metric)
        self._job_update(request, "done", "", time.monotonic() - t0)
        self.send({"type": "ablation", "request": request, "result": res.to_dict()})

    def _msg_cancel(self, content: dict[str, Any]) -> None:
        """Stop waiting for the remote job in flight; the page hears ``cancelled`` once the
        worker has let go of it (at once when there is none)."""
        if self._clicks is None or not self._clicks.cancel(content.get("request")):
            self.send({"type": "cancelled", "request": content.get("request")})

    # -- remote jobs (called on the kernel's main thread; see _jobs) -------------------------
    def _job_update(self, request: Any, state: str, detail: str, seconds: float | None) -> None:
        if self._clicks is not None:
            wanted, cancelled = self._clicks.wanted(request)
            if not (wanted or (cancelled and state == "cancelled")):
                return  # a superseded job's late news
        remote = self._clicks is not None
        detail = detail[:MAX_TEXT]
        self.job = {
            "state": state,
            "detail": detail,
            "request": request,
            "seconds": seconds,
            "remote": remote,
        }

    def _job_finished(
        self,
        request: Any,
        res: AblationResult | None,
        err: BaseException | None,
        mode: str,
        metric: str,
        seconds: float,
    ) -> None:
        if self._clicks is None:  # only a remote view's worker calls this
            return
        wanted, cancelled = self._clicks.wanted(request)
        if not wanted and not cancelled:
            return  # superseded: the page waits for the newer click
        if res is not None and wanted:
            self.show_ablation(res, mode=mode, metric=metric)
            self._job_update(request, "done", "", seconds)
            self.send({"type": "ablation", "request": request, "result": res.to_dict()})
        elif cancelled or isinstance(err, JobCancelled):
            self._job_update(request, "cancelled", "stopped waiting", seconds)
            self.send({"type": "cancelled", "request": request})
        else:
            self.error = message = error_text(err)
            self._job_update(request, "error", message, seconds)
            self.send({"type": "error", "request": request, "message": message})
