"""Cancelling one caller's NDIF job, not the model's: each caller (a view's click, its
faithfulness, its steer) submits its jobs in a ``JobScope`` (``model.watching``), and its
Cancel stops those only — the job in flight if it is its own, or its job still waiting for the
model (then never sent) — while another caller's job on the same model runs on. Tested with
the fake NDIF (``tests/_fake_ndif.py``); ``model.cancel()`` stays model-wide."""

from __future__ import annotations

import threading
import time

import pytest

import circuitviz as cv
from circuitviz.engine.backends import JobCancelled, JobScope
from circuitviz.views import PatchingView
from tests.test_remote import TOL, Setup
from tests.test_remote_view import Kernel, settled

pytest.importorskip("nnsight")


@pytest.fixture(scope="module")
def setup():
    return Setup("llama")


@pytest.fixture
def reset_fake(setup):
    yield
    setup.fake.hang, setup.fake.delay, setup.fake.fail = False, 0.0, None


def until(check, timeout: float = 60) -> None:
    end = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.01)


class Caller(threading.Thread):
    """One caller's ablation in its own thread and scope, recording its job's states."""

    def __init__(self, client, pairs, heads: list[str]):
        super().__init__(daemon=True)
        self.client, self.pairs, self.heads = client, pairs, heads
        self.scope = JobScope()
        self.states: list[str] = []
        self.result = self.error = None

    def run(self) -> None:
        try:
            with self.client.watching(lambda s, d: self.states.append(s), self.scope):
                self.result = cv.ablate(self.client, self.pairs, heads=self.heads)
        except Exception as err:  # what the caller would show
            self.error = err


def test_a_scopes_cancel_stops_its_own_job_and_no_other(setup, pairs, reset_fake):
    client = setup.make_client()
    cv.ablate(client, pairs)  # the baselines, so each click below is one job
    setup.fake.delay = 0.3
    sent = len(setup.fake.requests)
    first, second = Caller(client, pairs, ["L0H1"]), Caller(client, pairs, ["L1H0"])
    first.start()
    until(lambda: "running" in first.states)
    second.start()  # waits for the model: it runs one request at a time
    until(lambda: "queued" in second.states)
    second.scope.cancel()
    second.join(30)
    assert isinstance(second.error, JobCancelled)  # given up while waiting: never sent
    first.join(30)
    assert first.error is None and "cancelled" not in first.states
    ref = cv.ablate(setup.bridge, pairs, heads=["L0H1"])
    assert abs(first.result.ablated - ref.ablated) <= TOL
    assert len(setup.fake.requests) == sent + 1
    # each caller heard its own job only
    assert second.states == ["queued", "cancelled"]
    assert first.states[-1] == "done"


def test_cancelling_the_job_in_flight_lets_the_waiting_one_run(setup, pairs, reset_fake):
    client = setup.make_client()
    cv.ablate(client, pairs)
    setup.fake.delay = 0.3
    first, second = Caller(client, pairs, ["L0H1"]), Caller(client, pairs, ["L1H0"])
    first.start()
    until(lambda: "queued" in first.states)
    second.start()
    until(lambda: "queued" in second.states)
    first.scope.cancel()
    first.join(30)
    second.join(30)
    assert isinstance(first.error, JobCancelled) and first.states[-1] == "cancelled"
    assert second.error is None and second.states[-1] == "done"
    ref = cv.ablate(setup.bridge, pairs, heads=["L1H0"])
    assert abs(second.result.ablated - ref.ablated) <= TOL
    assert not setup.server.has_hooks()


def test_a_views_cancel_leaves_another_views_job_on_the_model(setup, pairs, reset_fake):
    """Two PatchingViews over one remote model: cancelling the second's click (waiting for
    the model) leaves the first's click, in flight, running to its result — before job
    scopes, that Cancel was the model's and stopped the first view's job instead."""
    client = setup.make_client()
    grid = cv.patch(setup.bridge, pairs, over="heads", progress=False)
    views = [PatchingView(grid, model=client, pairs=pairs) for _ in range(2)]
    for view in views:
        settled(view)
    one, two = (Kernel(view) for view in views)
    setup.fake.delay = 0.3
    sent = len(setup.fake.requests)
    one.click(["L0H1"], request=1)
    one.wait(lambda: views[0].job.get("state") == "running")
    two.click(["MLP0"], request=1)
    two.wait(lambda: views[1].job.get("state") == "queued")
    views[1]._handle_custom_msg({"type": "cancel", "request": 1}, [])
    two.wait(lambda: two.reply(1) is not None)
    assert two.reply(1) == {"type": "cancelled", "request": 1}
    one.wait(lambda: one.reply(1) is not None)
    assert one.reply(1)["type"] == "ablation" and views[0].ablated == ["L0H1"]
    ref = cv.ablate(setup.bridge, pairs, heads=["L0H1"])
    assert abs(views[0].result["ablated"] - ref.ablated) <= TOL
    assert "cancelled" not in one.states and views[1].ablated == []
    assert len(setup.fake.requests) == sent + 1  # the cancelled click was never sent


def test_circuit_views_faithfulness_cancel_leaves_its_click_running(setup, pairs, reset_fake):
    """The issue's case: CircuitView's Cancel of its faithfulness job (waiting for the model)
    used to be the model's cancel, which stopped the view's click ablation in flight."""
    from tests.test_backends_graph import quiet_view

    client = setup.make_client(model_name=setup.bridge.cfg.model_name)
    graph = cv.circuit(setup.bridge, pairs, progress=False)
    view = quiet_view(client, pairs, graph)
    kernel = Kernel(view)
    setup.fake.delay = 0.3
    kernel.click(["L1H0"], request=1)
    kernel.wait(lambda: view.job.get("state") == "running")
    view._handle_custom_msg({"type": "faithfulness", "ablated": ["L1H0"], "request": 2})
    kernel.wait(lambda: view.faithfulness_job.get("state") == "queued")
    view._handle_custom_msg({"type": "cancel_job", "job": "faithfulness"})
    kernel.wait(
        lambda: kernel.reply(1) is not None and view.faithfulness_job["state"] == "cancelled"
    )
    assert kernel.reply(1)["type"] == "ablation" and view.ablated == ["L1H0"]
    ref = cv.ablate(setup.bridge, pairs, heads=["L1H0"])
    assert abs(view.result["ablated"] - ref.ablated) <= TOL
    assert "cancelled" not in kernel.states
