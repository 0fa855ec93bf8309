"""CircuitView's faithfulness, its clamp panel's steer and SteeringView's generation on an
NDIF model (the fake NDIF of ``tests/_fake_ndif.py``): each is a job off the kernel's message
loop (``views/_tasks.py``) — the handler returns at once, the view's ``<slot>_job`` goes
queued → running → done with its latency, Cancel stops waiting and leaves the view usable,
and the numbers equal the same computation run locally (1e-4, float32): on the
TransformerLens bridge, or — for faithfulness, a share of the clean − corrupted gap that
amplifies float32 noise — on the fake server's own nnsight model run here.
"""

from __future__ import annotations

import time

import pytest

import circuitviz as cv
from circuitviz.engine.features import steer
from circuitviz.views import CircuitView, SteeringView
from tests._tiny_sae import tiny_saes
from tests.test_backends_features import firing
from tests.test_backends_toolkit import HARMFUL, HARMLESS, refusal_words  # noqa: F401
from tests.test_remote import TOL, Setup
from tests.test_remote_view import distinct, settled


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request):
    return Setup(request.param)


@pytest.fixture
def reset_fake(setup):
    yield
    setup.fake.hang, setup.fake.delay, setup.fake.fail = False, 0.0, None


def client(setup: Setup):
    """The remote client, named as the bridge (a graph is evaluated on the model it was built
    on)."""
    return setup.make_client(model_name=setup.bridge.cfg.model_name)


class Kernel:
    """A view wired as a kernel would: messages in through the comm handler, the worker's
    results queued for the main thread (``drain`` plays the IO loop), messages out recorded,
    and the states of ``<slot>_job`` recorded."""

    def __init__(self, view, slot: str):
        self.view, self.slot = view, slot
        self.queue: list = []
        self.sent: list[dict] = []
        self.states: list[str] = []
        view._post = self.queue.append
        view.send = lambda content, buffers=None: self.sent.append(content)
        view.observe(lambda change: self.states.append(change["new"].get("state")), f"{slot}_job")

    @property
    def job(self) -> dict:
        return getattr(self.view, f"{self.slot}_job")

    def message(self, content: dict) -> float:
        """Seconds the comm handler took."""
        t0 = time.perf_counter()
        self.view._handle_custom_msg(content, [])
        return time.perf_counter() - t0

    def wait(self, until, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            while self.queue:
                self.queue.pop(0)()
            if until():
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out; states {self.states}, sent {self.sent}")

    def reply(self, type_: str, request) -> dict | None:
        return next(
            (m for m in self.sent if m.get("type") == type_ and m.get("request") == request), None
        )


# ----------------------------------------------------------------------------- faithfulness


def circuit_view(setup: Setup, pairs, **options):
    """The same graph over the local computation (the fake server's own nnsight model, run
    here; its faithfulness equals the bridge's: tests/test_backends_graph.py) and over the
    remote client."""
    graph = cv.circuit(setup.bridge, pairs, progress=False)
    ref = CircuitView(setup.server, pairs, graph=graph, top_nodes=6, top_edges=12, **options)
    got = CircuitView(client(setup), pairs, graph=graph, top_nodes=6, top_edges=12, **options)
    settled(got)  # its baselines are the view's first job, off the cell: count from here
    return ref, got


def test_faithfulness_is_a_job_with_states_and_equals_the_bridge(setup, pairs, reset_fake):
    ref, view = circuit_view(setup, pairs)
    assert view.has_faithfulness
    ablated = [n["ablates"] for n in view.graph["nodes"] if n.get("ablates")][:1]
    ref._handle_custom_msg({"type": "faithfulness", "ablated": ablated, "request": "f"}, [])
    assert ref.faithfulness_job["state"] == "done" and ref.faithfulness_job["remote"] is False
    setup.fake.delay = 0.3
    kernel = Kernel(view, "faithfulness")
    sent = len(setup.fake.requests)
    took = kernel.message({"type": "faithfulness", "ablated": ablated, "request": "f"})
    assert took < 0.25  # the handler hands the job to a worker: the message loop is free
    assert view.faithfulness_job["state"] == "submitted" and view.faithfulness_job["remote"]
    kernel.wait(lambda: kernel.reply("faithfulness", "f") is not None)
    # one NDIF request: the circuit and it with the ablated node are rows of one pass
    assert len(setup.fake.requests) == sent + 1
    assert distinct(kernel.states) == ["submitted", "queued", "running", "done"]
    assert view.faithfulness_job["seconds"] >= 0.6  # queued 0.3 s + running 0.3 s
    for key in ("circuit", "ablated"):
        assert abs(view.faithfulness[key] - ref.faithfulness[key]) <= TOL
    assert view.faithfulness["ablated_nodes"] == ref.faithfulness["ablated_nodes"]
    assert view.faithfulness["circuit"] != view.faithfulness["ablated"]  # the ablation counted


def test_cancelling_faithfulness_leaves_the_view_usable(setup, pairs, reset_fake):
    ref, view = circuit_view(setup, pairs)
    ref._handle_custom_msg({"type": "faithfulness", "ablated": [], "request": "f"}, [])
    kernel = Kernel(view, "faithfulness")
    setup.fake.hang = True
    kernel.message({"type": "faithfulness", "ablated": [], "request": "f"})
    kernel.wait(lambda: view.faithfulness_job.get("state") == "running")
    assert kernel.message({"type": "cancel_job", "job": "faithfulness"}) < 0.25
    kernel.wait(lambda: kernel.reply("cancelled", "f") is not None)
    assert view.faithfulness_job["state"] == "cancelled" and view.error == ""
    assert view.faithfulness == {} and not view._model.has_hooks()
    assert not setup.server.has_hooks()
    setup.fake.hang = False  # usable: the same request runs to the end
    kernel.message({"type": "faithfulness", "ablated": [], "request": "g"})
    kernel.wait(lambda: kernel.reply("faithfulness", "g") is not None)
    assert abs(view.faithfulness["circuit"] - ref.faithfulness["circuit"]) <= TOL
    assert view.faithfulness_job["state"] == "done"
    # an ablation click still goes through its own job meanwhile
    clicks = Kernel(view, "")
    view._handle_custom_msg({"type": "ablate", "components": ["L0H0"], "request": 5}, [])
    clicks.wait(lambda: clicks.reply("ablation", 5) is not None)
    assert (
        abs(view.result["ablated"] - cv.ablate(setup.bridge, pairs, heads=["L0H0"]).ablated) <= TOL
    )


def test_a_failing_faithfulness_job_is_the_views_error(setup, pairs, reset_fake):
    _ref, view = circuit_view(setup, pairs)
    kernel = Kernel(view, "faithfulness")
    setup.fake.fail = "CUDA out of memory"
    kernel.message({"type": "faithfulness", "ablated": [], "request": "f"})
    kernel.wait(lambda: kernel.reply("error", "f") is not None)
    assert view.faithfulness_job["state"] == "error" and view.error
    assert view.faithfulness == {}


# ----------------------------------------------------------------------------- clamp panel


def test_the_clamp_panels_steer_is_a_job_and_equals_the_bridge(setup, pairs, reset_fake):
    saes = tiny_saes(setup.bridge)
    node = f"L1F{firing(setup.bridge, saes, 1)}"
    graph = cv.circuit(setup.bridge, pairs, progress=False)
    view = CircuitView(client(setup), pairs, graph=graph, saes=saes)
    settled(view)
    assert view.can_steer
    kernel = Kernel(view, "steer")
    setup.fake.delay = 0.2
    msg = {"type": "steer", "node": node, "mode": "clamp", "scale": 6.0, "request": 3}
    assert kernel.message(msg) < 0.25
    kernel.wait(lambda: view.steering.get("stage") == "continuation")
    kernel.wait(lambda: view.steer_job.get("state") == "done")
    assert distinct(kernel.states)[0] == "submitted" and "running" in kernel.states
    assert [m["stage"] for m in kernel.sent if m["type"] == "steering"] == ["continuation", "done"]
    ref = steer(setup.bridge, pairs.clean[0], features=[node], saes=saes, scale=6.0, n_tokens=20)
    got = view.steer_result
    assert got.after_tokens == ref.after_tokens and got.before_tokens == ref.before_tokens
    local = CircuitView(setup.bridge, pairs, graph=graph, saes=saes).steer_node(node, scale=6.0)
    assert abs(got.metric_after - local.metric_after) <= TOL
    assert abs(got.metric_before - local.metric_before) <= TOL
    assert view.steering["stage"] == "done" and view.steer_job["seconds"] > 0

    setup.fake.hang = True  # cancel the next one: the view keeps the last result
    kernel.message({**msg, "mode": "ablate", "request": 4})
    kernel.wait(lambda: view.steer_job.get("state") == "running")
    kernel.message({"type": "cancel_job", "job": "steer"})
    kernel.wait(lambda: kernel.reply("cancelled", 4) is not None)
    assert view.steer_job["state"] == "cancelled" and view.steering["request"] == 3
    assert view.error == "" and not view._model.has_hooks()
    setup.fake.hang = False
    kernel.message({**msg, "request": 5})
    kernel.wait(lambda: view.steer_job.get("state") == "done" and view.steer_job["request"] == 5)
    assert view.steer_result.after_tokens == ref.after_tokens


# ----------------------------------------------------------------------------- SteeringView


@pytest.fixture
def direction(setup):
    return cv.refusal_direction(setup.bridge, HARMFUL, HARMLESS, template="{instruction}")


@pytest.mark.usefixtures("refusal_words")
def test_steering_view_generates_as_a_job_and_equals_the_bridge(setup, direction, reset_fake):
    options = {"coef": 0.0, "coef_max": 60.0, "max_new_tokens": 3}
    ref = SteeringView(setup.bridge, direction, "t1 t2", **options)
    view = SteeringView(client(setup), direction, "t1 t2", **options)
    assert view.before == ref.before and view.after == ref.after  # the first: in place
    kernel = Kernel(view, "generate")
    setup.fake.delay = 0.3
    t0 = time.perf_counter()
    with view.hold_sync():
        view.set_state({"coef": 40.0})  # what the page's slider sends
    assert time.perf_counter() - t0 < 0.25 and view.busy
    kernel.wait(lambda: not view.busy)
    assert distinct(kernel.states) == ["submitted", "queued", "running", "done"]
    assert view.generate_job["seconds"] >= 0.6
    ref.coef = 40.0
    assert view.after["text"] == ref.after["text"] and view.after["refused"] == ref.after["refused"]
    assert abs(view.after["score"] - ref.after["score"]) <= TOL
    assert view.result.after.continuations == ref.result.after.continuations

    setup.fake.hang = True
    view.set_state({"coef": -40.0})
    kernel.wait(lambda: view.generate_job.get("state") == "running")
    kernel.message({"type": "cancel_job", "job": "generate"})
    kernel.wait(lambda: view.generate_job.get("state") == "cancelled")
    assert not view.busy and view.error == "" and view.after["text"] == ref.after["text"]
    assert view.result is not None and not view._model.has_hooks()
    setup.fake.hang = False
    view.set_state({"mode": "ablate"})
    kernel.wait(lambda: view.generate_job.get("state") == "done" and not view.busy)
    ref.mode = "ablate"
    assert view.after["text"] == ref.after["text"]
    assert abs(view.after["score"] - ref.after["score"]) <= TOL


# ----------------------------------------------------------------------------- browser


@pytest.mark.browser
def test_the_circuit_page_shows_the_faithfulness_job_and_cancels_it(
    setup, pairs, page, tmp_path, artifacts, monkeypatch, reset_fake
):
    """CircuitView's own bundle in Chromium against this process (tests/test_remote_view.py's
    Bridge): the faithfulness the page asks for on load is an NDIF job whose state, Cancel
    and latency the panel shows."""
    from tests import test_remote_view

    traits = ("faithfulness", "faithfulness_job", "ablated", "result", "error", "job")
    monkeypatch.setattr(test_remote_view, "KERNEL_TRAITS", traits)
    ref, view = circuit_view(setup, pairs)
    ref._handle_custom_msg({"type": "faithfulness", "ablated": [], "request": "f"}, [])
    setup.fake.delay = 0.6
    test_remote_view.Bridge(view, page, tmp_path / "circuit.html", monkeypatch)
    page.goto((tmp_path / "circuit.html").as_uri())
    job = page.locator('.cv-circuit [data-role="faithfulness-job"]')
    faith = page.locator(".cv-circuit .cv-faith")
    page.locator('.cv-circuit [data-role="faithfulness-job"][data-state="running"]').wait_for()
    assert "NDIF job: running" in job.inner_text()
    assert page.locator('.cv-circuit [data-role="faithfulness-cancel"]').is_visible()
    faith.screenshot(path=str(artifacts / f"remote_faith_running_{setup.repo[5:]}.png"))
    page.locator('.cv-circuit [data-role="faithfulness-job"][data-state="done"]').wait_for()
    latency = page.locator('.cv-circuit [data-role="faithfulness-latency"]')
    assert float(latency.get_attribute("data-ms")) >= 1200  # queued 0.6 s + running 0.6 s
    assert "request → result in" in latency.inner_text()
    assert not page.locator('.cv-circuit [data-role="faithfulness-cancel"]').is_visible()
    shown = float(page.locator('[data-role="faithfulness-circuit"]').inner_text())
    assert abs(shown - ref.faithfulness["circuit"]) <= 1e-3  # printed to 3 digits
    assert abs(view.faithfulness["circuit"] - ref.faithfulness["circuit"]) <= TOL
    faith.screenshot(path=str(artifacts / f"remote_faith_done_{setup.repo[5:]}.png"))

    view._faith_cache.clear()  # the button asks again: a fresh job, which never finishes
    setup.fake.hang = True
    page.locator('.cv-circuit [data-role="faithfulness-run"]').click()
    page.locator('.cv-circuit [data-role="faithfulness-job"][data-state="running"]').wait_for()
    page.locator('.cv-circuit [data-role="faithfulness-cancel"]').click()
    page.locator('.cv-circuit [data-role="faithfulness-job"][data-state="cancelled"]').wait_for()
    assert page.locator('[data-role="error"]').first.inner_text() == ""
    assert not setup.server.has_hooks() and not view._model.has_hooks()
    faith.screenshot(path=str(artifacts / f"remote_faith_cancelled_{setup.repo[5:]}.png"))
    setup.fake.hang = False  # still usable: the button runs it to the end
    page.locator('.cv-circuit [data-role="faithfulness-run"]').click()
    page.locator('.cv-circuit [data-role="faithfulness-job"][data-state="done"]').wait_for()
    assert abs(view.faithfulness["circuit"] - ref.faithfulness["circuit"]) <= TOL
    assert not page.console_errors


def test_a_newer_request_supersedes_and_cancel_stops_a_queued_one(setup, pairs, reset_fake):
    """Faithfulness asked twice: only the second's result lands. Asked again while a job is
    in flight, then cancelled: the queued request is dropped at once, and the page hears it."""
    ref, view = circuit_view(setup, pairs)
    nodes = [n["ablates"] for n in view.graph["nodes"] if n.get("ablates")]
    ref._handle_custom_msg({"type": "faithfulness", "ablated": nodes[:1], "request": "r"}, [])
    kernel = Kernel(view, "faithfulness")
    setup.fake.delay = 0.2
    kernel.message({"type": "faithfulness", "ablated": [], "request": 1})
    kernel.message({"type": "faithfulness", "ablated": nodes[:1], "request": 2})
    kernel.wait(lambda: kernel.reply("faithfulness", 2) is not None)
    assert kernel.reply("faithfulness", 1) is None and view.faithfulness_job["request"] == 2
    assert abs(view.faithfulness["ablated"] - ref.faithfulness["ablated"]) <= TOL
    setup.fake.hang = True
    view._faith_cache.clear()
    kernel.message({"type": "faithfulness", "ablated": [], "request": 3})
    kernel.wait(lambda: view.faithfulness_job.get("state") == "running")
    kernel.message({"type": "faithfulness", "ablated": nodes[:2], "request": 4})  # queued
    kernel.message({"type": "cancel_job", "job": "faithfulness"})
    assert kernel.reply("cancelled", 4) is not None  # at once: it never started
    assert view.faithfulness_job["state"] == "cancelled"
    setup.fake.hang = False
    kernel.wait(lambda: view._slot("faithfulness").worker is None)
    assert kernel.reply("faithfulness", 3) is None and kernel.reply("faithfulness", 4) is None
    assert not view._model.has_hooks() and not setup.server.has_hooks()


@pytest.mark.browser
@pytest.mark.usefixtures("refusal_words")
def test_the_steering_page_shows_the_generation_job(
    setup, direction, page, tmp_path, artifacts, monkeypatch, reset_fake
):
    """SteeringView's bundle against this process: a regeneration on NDIF shows its state,
    then its latency; Cancel leaves the last continuation."""
    from tests import test_remote_view

    traits = ("before", "after", "busy", "error", "generate_job", "coef")
    monkeypatch.setattr(test_remote_view, "KERNEL_TRAITS", traits)
    options = {"coef": 0.0, "coef_max": 60.0, "max_new_tokens": 3}
    view = SteeringView(client(setup), direction, "t1 t2", **options)
    test_remote_view.Bridge(view, page, tmp_path / "steer.html", monkeypatch)
    page.goto((tmp_path / "steer.html").as_uri())
    page.wait_for_timeout(200)  # the page's hello starts the polling
    setup.fake.delay = 0.5
    view.coef = 40.0  # as the slider would (the page's trait writes do not reach this kernel)
    page.locator('.cv-steering [data-role="generate-job"][data-state="running"]').wait_for()
    assert page.locator('.cv-steering [data-role="generate-cancel"]').is_visible()
    root = page.locator(".cv-steering")
    root.screenshot(path=str(artifacts / f"remote_steering_running_{setup.repo[5:]}.png"))
    page.locator('.cv-steering [data-role="generate-job"][data-state="done"]').wait_for()
    latency = page.locator('.cv-steering [data-role="generate-latency"]')
    assert float(latency.get_attribute("data-ms")) >= 1000  # queued 0.5 s + running 0.5 s
    assert page.get_attribute(".cv-steering", "data-busy") == "false"
    root.screenshot(path=str(artifacts / f"remote_steering_done_{setup.repo[5:]}.png"))
    setup.fake.hang = True
    view.coef = -40.0
    page.locator('.cv-steering [data-role="generate-job"][data-state="running"]').wait_for()
    page.locator('.cv-steering [data-role="generate-cancel"]').click()
    page.locator('.cv-steering [data-role="generate-job"][data-state="cancelled"]').wait_for()
    assert view.error == "" and not view.busy and not page.console_errors
