"""SteeringView: one prompt's greedy continuation before and after steering with a refusal
direction; the page's slider sets the coefficient, the kernel generates."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import traitlets as t

from ..engine import InputError, RefusalDirection, steer_refusal
from ..engine._refusal import MODES, Generation
from ..engine.backends import remote_jobs
from ._base import MAX_TEXT, STATIC, View, error_text, quote
from ._jobs import kernel_post
from ._tasks import RemoteTasks


def _side(gen: Generation) -> dict[str, Any]:
    return {"text": gen.continuations[0], "refused": gen.refused[0], "score": gen.scores[0]}


class SteeringView(RemoteTasks, View):
    """A prompt's continuation without and with a refusal-direction intervention.

    ``mode="add"`` adds ``coef`` × the direction's harmful − harmless mean difference at its
    layer (slider from ``-coef_max`` to ``coef_max``: > 0 pushes towards refusing, < 0 away);
    ``mode="ablate"`` projects the direction out of every layer (the slider is unused). Each
    change of ``prompt``, ``coef`` or ``mode`` — from Python or from the page — regenerates the
    "after" continuation in the kernel (the "before" one is kept per prompt). On a remote
    (NDIF) model a change after the first generation is a job off the kernel's message loop
    (``generate_job``: its state, latency and Cancel); only the newest change's result lands.
    """

    _esm = STATIC / "steering.js"
    BUNDLE: ClassVar[str] = "steering"
    STATE_KEYS = ("prompt", "coef", "mode")
    FRONTEND_TRAITS: ClassVar[frozenset[str]] = frozenset({"prompt", "coef", "mode"})

    prompt = t.Unicode("").tag(sync=True)
    """The instruction (formatted with the direction's chat template before generating)."""

    coef = t.Float(1.0).tag(sync=True)
    """Coefficient of the added mean-difference vector (``mode="add"``), within ±``coef_max``."""

    mode = t.Unicode("add").tag(sync=True)
    """``"add"`` (activation addition) or ``"ablate"`` (directional ablation)."""

    coef_max = t.Float(4.0).tag(sync=True)
    """The slider's range is ``[-coef_max, coef_max]`` (kernel-owned)."""

    layer = t.Int(0).tag(sync=True)
    """The direction's layer (read-only: where addition acts)."""

    before = t.Dict().tag(sync=True)
    """The continuation without intervention: ``{"text", "refused", "score"}`` (score: the
    refusal log-odds at the first generated token)."""

    after = t.Dict().tag(sync=True)
    """The continuation with the intervention, same keys as ``before``."""

    busy = t.Bool(False).tag(sync=True)
    """True while the kernel generates."""

    generate_job = t.Dict().tag(sync=True)
    """The last generation's job (keys as ``AblationView.job``; ``remote``: an NDIF job,
    which the page can cancel)."""

    def __init__(
        self,
        model: Any,
        direction: RefusalDirection,
        prompt: str,
        *,
        coef: float = 1.0,
        mode: str = "add",
        coef_max: float = 4.0,
        max_new_tokens: int = 16,
        **kwargs: Any,
    ) -> None:
        if not isinstance(direction, RefusalDirection):
            raise InputError(
                "direction must be a RefusalDirection from circuitviz.refusal_direction(), got "
                f"{type(direction).__name__}."
            )
        if not (isinstance(coef_max, (int, float)) and math.isfinite(coef_max) and coef_max > 0):
            raise InputError(f"coef_max={quote(coef_max)} must be a positive finite number.")
        super().__init__(**kwargs)
        self._model, self._direction = model, direction
        self._max_new_tokens = max_new_tokens
        self._before: dict[str, Generation] = {}
        self.coef_max = float(coef_max)
        self.layer = direction.layer
        try:
            with self.hold_trait_notifications():
                self.prompt, self.coef, self.mode = prompt, coef, mode
        except t.TraitError as err:
            raise InputError(error_text(err)) from None
        self._generation = 0  # tags each regeneration's job
        self._result = None
        self._regenerate()  # the first: here, so the view is whole when made
        self._task_jobs, self._post = remote_jobs(model), kernel_post()
        self.observe(lambda change: self._regenerate(), names=["prompt", "coef", "mode"])

    @t.validate("prompt")
    def _check_prompt(self, proposal: Any) -> str:
        value = proposal["value"]
        if not value.strip() or len(value) > MAX_TEXT:
            raise t.TraitError(f"prompt must be non-empty and at most {MAX_TEXT} characters.")
        return value

    @t.validate("coef")
    def _check_coef(self, proposal: Any) -> float:
        value = proposal["value"]
        if not math.isfinite(value) or abs(value) > self.coef_max:
            raise t.TraitError(
                f"coef={quote(value)} is out of range: use a number in "
                f"[{-self.coef_max}, {self.coef_max}]."
            )
        return value

    @t.validate("mode")
    def _check_mode(self, proposal: Any) -> str:
        value = proposal["value"]
        if value not in MODES:
            raise t.TraitError(f"Unknown mode {quote(value)}: use one of {list(MODES)}.")
        return value

    # -- export ------------------------------------------------------------------------------
    def figure(self, **options: Any) -> Any:
        """The shown prompt's continuation before and after, verdicts and refusal scores, as a
        publication figure (:func:`circuitviz.export.steering_figure`; style options and
        ``title=``). ``.save("x.html")`` writes the view itself, standalone."""
        from ..export import ExportError, steering_figure

        if self._result is None:
            raise ExportError(
                "Nothing to draw: the last generation failed"
                + (f" ({self.error})" if self.error else "")
                + ". Change the prompt, coef or mode, then save again."
            )
        return steering_figure(self._result, **options)

    def _msg_hello(self, content: dict[str, Any]) -> None:
        """The page asks whether a kernel answers (a standalone export replays ``live:
        False`` from :meth:`static_replies`, and the page then disables its controls)."""
        self.send({"type": "hello", "live": True})

    def static_replies(self) -> list[dict[str, Any]]:
        """Replies a standalone HTML export replays: no kernel, so the controls are off."""
        return [{"match": {"type": "hello"}, "messages": [({"type": "hello", "live": False}, [])]}]

    @property
    def result(self):
        """The last :class:`~circuitviz.SteeringResult` (None before the first, or after an
        error)."""
        return self._result

    def _regenerate(self) -> None:
        """Generate for the current prompt, coef and mode (the work runs where ``_tasks``
        puts it: here, or in a worker on a remote model)."""
        self.busy = True
        self._generation += 1
        prompt, mode, coef = self.prompt, self.mode, self.coef
        before = self._before.get(prompt)

        def show(res: Any) -> None:
            self._before[prompt] = res.before
            self._result = res
            with self.hold_trait_notifications():
                self.before, self.after, self.error = _side(res.before), _side(res.after), ""
                self.busy = False

        def work(deliver: Any) -> None:
            res = steer_refusal(
                self._model,
                [prompt],
                self._direction,
                mode=mode,
                coef=coef,
                max_new_tokens=self._max_new_tokens,
                before=before,
            )
            deliver(lambda: show(res))

        try:
            self._run_task("generate", self._generation, work)
        except Exception as err:  # a failed generation leaves the view usable
            self._result = None
            self.error = error_text(err)
            self.busy = False

    def _task_finished(self, slot: str, request: Any, err: Any, seconds: float) -> None:
        super()._task_finished(slot, request, err, seconds)
        if request == self._generation:  # the newest generation ended (done, failed, cancelled)
            self.busy = False
            if self.generate_job.get("state") == "error":
                self._result = None  # what figure() says: the last generation failed
