"""A fake NDIF for the remote tests: it receives exactly the bytes nnsight would POST, and
does what the server does with them — deserialise the request (with every module that is not
installed hidden, as on a server that has never seen circuitviz), run it on its own copy of
the model, and stream status updates and the pickled, compressed saves back through the
client's own nnsight ``RemoteBackend.handle``. Errors are the server's: an unknown API key,
a model it does not serve, a failing job, a job that never finishes.
"""

from __future__ import annotations

import io
import time
from typing import Any

import torch
from nnsight.intervention.backends.local import LocalSimulationBackend
from nnsight.intervention.backends.remote import RemoteError
from nnsight.schema.request import RequestModel
from nnsight.schema.response import ResponseModel, Status
from nnsight.tracing import tracer as nn_tracer

KEY = "test-key"


class FakeNDIF:
    host = "https://fake-ndif.invalid"

    def __init__(
        self,
        served: dict[str, Any],
        *,
        keys: tuple[str, ...] = (KEY,),
        deployed: dict[str, str] | None = None,
        fail: str | None = None,
        hang: bool = False,
        delay: float = 0.0,
    ):
        self.served = served  # repo id -> the server's own nnsight model (TransformersModel)
        self.keys, self.fail, self.hang = keys, fail, hang
        self.delay = delay  # seconds spent queued, then as long running (a view can watch)
        self.deployed = {repo: "RUNNING" for repo in served} | (deployed or {})
        self.requests: list[bytes] = []  # every payload received
        self.results: list[dict] = []  # every saves dict sent back
        self.result_bytes: list[int] = []

    def model_key(self, model: Any) -> str:
        return f"fake:{model.repo_id}"

    def deployments(self) -> dict[str, str]:
        return dict(self.deployed)

    def _respond(self, backend: Any, status: Status, **kw: Any):
        return backend.handle(ResponseModel(id="job-1", status=status, **kw))

    def run(self, backend: Any, request: RequestModel, blob: bytes):
        self.requests.append(blob)
        if backend.api_key not in self.keys:  # what nnsight's _post raises on a 401
            raise RemoteError("Failed to send request: 401 Unauthorized: invalid API key")
        repo = backend.model_key.split(":", 1)[1]
        self._respond(backend, Status.RECEIVED)
        if repo not in self.served:
            return self._respond(backend, Status.ERROR, description=f"Model {repo} not found")
        self._respond(backend, Status.QUEUED)
        self._wait(backend, self.delay)
        self._respond(backend, Status.RUNNING)
        self._wait(backend, self.delay)
        while self.hang:  # nnsight's wait loop calls display.refresh() on each idle tick
            backend.display.refresh()
            time.sleep(0.01)
        if self.fail:
            return self._respond(backend, Status.ERROR, description=self.fail)
        try:
            saves = self._execute(self.served[repo], blob, backend.compress)
        except Exception as err:  # the server reports a failing body as an ERROR update
            return self._respond(backend, Status.ERROR, description=f"{type(err).__name__}: {err}")
        buffer = io.BytesIO()
        torch.save(saves, buffer)
        data = buffer.getvalue()
        if backend.compress:
            import zstandard

            data = zstandard.ZstdCompressor().compress(data)
        self.results.append(saves)
        self.result_bytes.append(len(data))
        return self._respond(backend, Status.COMPLETED, data=data)

    def _wait(self, backend: Any, seconds: float) -> None:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            backend.display.refresh()  # as nnsight's wait loop does: a cancel lands here
            time.sleep(0.01)

    def _execute(self, server_model: Any, blob: bytes, compress: bool) -> dict:
        hider = LocalSimulationBackend(server_model)
        hidden = hider._hide_local_modules()
        try:
            restored = RequestModel.deserialize(
                blob, server_model._remoteable_persistent_objects(), compress=compress
            )
        finally:
            hider._restore(hidden)
        nn_tracer.inc()
        try:
            restored.execute(restored.info.code)
            saved = nn_tracer._saves()
            return {k: v for k, v in restored.info.frame.f_locals.items() if id(v) in saved}
        finally:
            nn_tracer.dec()
