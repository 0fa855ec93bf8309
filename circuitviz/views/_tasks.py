"""A view's other long work on a remote (NDIF) model — CircuitView's faithfulness, the clamp
panel's steer, SteeringView's generation — run as PatchingView's clicks are (``_jobs``): off
the kernel's message loop, in one worker thread per kind of work ("slot"), with its state
(``submitted`` → ``queued`` → ``running`` → ``done`` / ``error`` / ``cancelled``), its
latency and Cancel, in the view's ``<slot>_job`` trait (the keys of ``AblationView.job``).

The work is a function of ``deliver``: what it hands to ``deliver`` runs on the kernel's main
thread (its IO loop, ``_jobs.kernel_post``), and only while its request is the slot's newest,
so traits are written from one thread and a superseded job's late news is dropped. On a
local model the same work runs in place (the message handler returns when it is done).

Each slot's jobs run in their own ``JobScope``: a newer request of the slot cancels the
slot's job in flight (its result would be dropped anyway), and Cancel stops that job only —
never another slot's or another view's job on the same model.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import traitlets as t

from ..engine.backends import JobCancelled, JobScope
from ._base import MAX_TEXT, error_text
from ._jobs import JOB_KEYS, JOB_STATES

Deliver = Callable[[Callable[[], None]], None]
Work = Callable[[Deliver], None]


class Slot:
    """One kind of work of one view: the newest request, and the worker running it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.pending: tuple | None = None
        self.latest: Any = None
        self.live = False  # a request was submitted and has not finished or been cancelled
        self.worker: threading.Thread | None = None
        self.scope: JobScope | None = None  # the jobs of the request in flight


class RemoteTasks(t.HasTraits):
    """Mixed into a view: :meth:`_run_task` and the ``cancel_job`` message. The view sets
    ``_task_jobs`` (``engine.backends.remote_jobs(model)``) and ``_post`` (``kernel_post()``)."""

    _task_jobs: Any = None

    def _slot(self, name: str) -> Slot:
        slots = self.__dict__.setdefault("_task_slots", {})
        return slots.setdefault(name, Slot())

    def _run_task(self, slot: str, request: Any, work: Work) -> None:
        """Run ``work`` for ``request``: in a worker on a remote model, else here."""
        t0 = time.monotonic()
        if self._task_jobs is None:
            try:
                work(lambda fn: fn())
            except Exception as err:
                self._set_job(slot, request, "error", str(err), time.monotonic() - t0)
                raise
            self._set_job(slot, request, "done", "", time.monotonic() - t0)
            return
        s = self._slot(slot)
        with s.lock:
            s.latest, s.pending, s.live = request, (request, work, t0, JobScope()), True
            if s.worker is not None and s.scope is not None:
                s.scope.cancel()  # superseded: its result would be dropped anyway
            if s.worker is None:
                s.worker = threading.Thread(
                    target=self._task_loop, args=(slot,), daemon=True, name=f"cv-{slot}"
                )
                s.worker.start()
        self._set_job(slot, request, "submitted", "", None)

    def _task_loop(self, slot: str) -> None:
        s = self._slot(slot)
        while True:
            with s.lock:
                item, s.pending = s.pending, None
                if item is None:
                    s.worker = s.scope = None
                    return
                s.scope = item[-1]
            self._task_run(slot, *item)

    def _task_run(self, slot: str, request: Any, work: Work, t0: float, scope: JobScope) -> None:
        post = self._post  # type: ignore[attr-defined]

        def wanted() -> bool:
            with self._slot(slot).lock:
                return self._slot(slot).latest == request and self._slot(slot).live

        def deliver(fn: Callable[[], None]) -> None:
            post(lambda: fn() if wanted() else None)

        def on_state(state: str, detail: str) -> None:
            if state in ("queued", "running"):  # the end is reported below, once
                seconds = time.monotonic() - t0
                deliver(lambda: self._set_job(slot, request, state, detail, seconds))

        err: BaseException | None = None
        try:
            with self._task_jobs.watching(on_state, scope):
                work(deliver)
        except Exception as caught:  # delivered as the page's error reply, never raised here
            err = caught
        seconds = time.monotonic() - t0
        post(lambda: self._task_finished(slot, request, err, seconds))

    def _task_finished(
        self, slot: str, request: Any, err: BaseException | None, seconds: float
    ) -> None:
        s = self._slot(slot)
        with s.lock:
            if s.latest != request:
                return  # superseded: the page waits for the newer request
            live, s.live = s.live, False
        if not live or isinstance(err, JobCancelled):  # the user cancelled it
            self._set_job(slot, request, "cancelled", "stopped waiting", seconds)
            self.send({"type": "cancelled", "request": request, "job": slot})  # type: ignore[attr-defined]
        elif err is None:
            self._set_job(slot, request, "done", "", seconds)
        else:
            self.error = message = error_text(err)  # type: ignore[attr-defined]
            self._set_job(slot, request, "error", message, seconds)
            self.send({"type": "error", "request": request, "message": message})  # type: ignore[attr-defined]

    def _set_job(
        self, slot: str, request: Any, state: str, detail: str, seconds: float | None
    ) -> None:
        job = {
            "state": state,
            "detail": detail[:MAX_TEXT],
            "request": request,
            "seconds": seconds,
            "remote": self._task_jobs is not None,
        }
        assert set(job) <= JOB_KEYS and state in JOB_STATES
        setattr(self, f"{slot}_job", job)

    def _msg_cancel_job(self, content: dict[str, Any]) -> None:
        """Stop waiting for a slot's job in flight (``{"type": "cancel_job", "job": slot}``);
        the page hears ``cancelled`` when the worker lets go (at once when none is live)."""
        slot, request = content.get("job"), content.get("request")
        s = self.__dict__.get("_task_slots", {}).get(slot) if isinstance(slot, str) else None
        if s is not None:
            request = s.latest  # the page waits for the slot's newest request
            with s.lock:
                live, s.live = s.live, False
                queued, s.pending = s.pending, None
                running = s.worker is not None
                if live and running and s.scope is not None:
                    s.scope.cancel()  # this slot's job only
            if live and running and queued is None:
                return  # the worker reports it when it lets go
            if live:
                self._set_job(slot, s.latest, "cancelled", "stopped waiting", None)
        self.send({"type": "cancelled", "request": request, "job": slot})  # type: ignore[attr-defined]
