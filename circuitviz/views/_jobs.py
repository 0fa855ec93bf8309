"""A view's clicks on a remote (NDIF) model: run off the kernel's message loop, watchable and
cancellable.

A click's ablation on NDIF waits on a queue and a server for seconds or minutes. Run in the
comm handler, it would block the kernel's message loop, so the page's "cancel" could only be
read once the job was over. Here the job runs in one worker thread per view; its state
(``queued`` → ``running`` → ``done`` / ``error`` / ``cancelled``) and its result are handed
back to the kernel's main thread (its IO loop) before any trait changes, so traits are only
ever written from one thread. A newer click supersedes the job in flight (it is cancelled);
the cancel message stops waiting for it. Both cancel this view's click job only (its
``JobScope``): another view's job on the same model, or this view's faithfulness, runs on. Only the newest request's result reaches the view.
The view's first job (its baselines, when it is built) runs the same way, as request
``FIRST_REQUEST``, so the cell that builds the view returns at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..engine import ablate
from ..engine.backends import JobScope

if TYPE_CHECKING:
    from ._base import AblationView

#: The request tag of a view's own first job (its baselines): the page numbers its clicks
#: from 1, and waits for this one until its first click.
FIRST_REQUEST = 0
#: The states a view's ``job`` trait may hold ("" before the first job).
JOB_STATES = ("", "submitted", "queued", "running", "done", "error", "cancelled")
JOB_KEYS = frozenset({"state", "detail", "request", "seconds", "remote"})


def kernel_post() -> Callable[[Callable[[], None]], None]:
    """How a worker hands work to the kernel's main thread: its IO loop's ``add_callback``
    (thread-safe) inside a running kernel, else a plain call (scripts and tests)."""
    loop = _kernel_loop()
    return (lambda fn: fn()) if loop is None else loop.add_callback


def main_thread_post() -> Callable[[Callable[[], None]], None] | None:
    """``add_callback`` of the kernel's main-thread loop when called from another thread of a
    running kernel (ipykernel 7 hands widget messages to a subshell's thread), else ``None``."""
    if threading.current_thread() is threading.main_thread():
        return None
    loop = _kernel_loop()
    return None if loop is None else loop.add_callback


def _kernel_loop() -> Any:
    try:
        from ipykernel.kernelbase import Kernel

        if Kernel.initialized():
            return Kernel.instance().io_loop
    except Exception:  # no ipykernel, or one without an IO loop
        pass
    return None


class RemoteClicks:
    """Runs one view's click ablations on a remote model in a worker thread."""

    def __init__(self, view: AblationView, jobs: Any):
        self.view, self.jobs = view, jobs  # jobs: engine.backends.remote_jobs(model)
        self.lock = threading.Lock()
        self.pending: tuple | None = None  # the newest click not started yet
        self.latest: Any = None  # the request whose result the view wants
        self.worker: threading.Thread | None = None
        self.scope: JobScope | None = None  # the jobs of the click in flight, and only them

    def submit(self, request: Any, comps: list[str], mode: str, metric: str) -> None:
        """Queue a (validated) click; the newest one wins, the job in flight is cancelled
        (this view's: another view's, or this one's faithfulness, runs on)."""
        with self.lock:
            self.latest = request
            self.pending = (request, comps, mode, metric, time.monotonic(), JobScope())
            if self.worker is not None:
                if self.scope is not None:
                    self.scope.cancel()  # its result would be dropped anyway
            else:
                self.worker = threading.Thread(target=self._work, daemon=True, name="cv-ablate")
                self.worker.start()
        self.view._job_update(request, "submitted", "", None)

    def cancel(self, request: Any) -> bool:
        """Stop waiting for the job in flight; ``False`` when there is none."""
        with self.lock:
            if self.worker is None:
                return False
            self.pending = None
            self.latest = None  # whatever still arrives is dropped
            if self.scope is not None:
                self.scope.cancel()
        return True

    def _work(self) -> None:
        while True:
            with self.lock:
                item, self.pending = self.pending, None
                if item is None:
                    self.worker = self.scope = None
                    return
                self.scope = item[-1]
            self._run(*item)

    def _run(
        self, request: Any, comps: list[str], mode: str, metric: str, t0: float, scope: JobScope
    ) -> None:
        view, post = self.view, self.view._post

        def on_state(state: str, detail: str) -> None:
            post(lambda: view._job_update(request, state, detail, time.monotonic() - t0))

        heads = [c for c in comps if c.startswith("L")]
        mlps = [c for c in comps if c.startswith("MLP")]
        res = err = None
        try:
            with self.jobs.watching(on_state, scope):
                res = ablate(
                    view._model, view._pairs, heads=heads, mlps=mlps, mode=mode, metric=metric
                )
        except Exception as caught:  # delivered as the page's error reply, never raised here
            err = caught
        seconds = time.monotonic() - t0
        post(lambda: view._job_finished(request, res, err, mode, metric, seconds))

    def wanted(self, request: Any) -> tuple[bool, bool]:
        """``(wanted, cancelled)``: whether ``request`` is the newest click, and whether the
        user cancelled without clicking again since."""
        with self.lock:
            return request == self.latest, self.latest is None
