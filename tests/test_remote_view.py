"""PatchingView on an NDIF model (the fake NDIF of ``tests/_fake_ndif.py``): a click's job runs
off the kernel's message loop, the view shows its state (queued → running → done) and latency,
Cancel stops waiting for it and leaves the view usable, and only the newest click's result
lands. The view's first job (its baselines) runs the same way: building the view returns at
once. The kernel tests drive the view's message handler as a comm would; the browser test
runs the view's own bundle in Chromium against this process (trait changes and messages are
polled back, as a kernel's IO loop would deliver them).

Reference for the numbers: ``cv.ablate`` on the TransformerLens bridge with the same weights
(1e-4, float32).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

import circuitviz as cv
from circuitviz.export import _html
from circuitviz.export._html import write_html
from circuitviz.views import PatchingView
from tests.test_remote import TOL, Setup

#: Traits the kernel changes in reply to the page.
KERNEL_TRAITS = ("ablated", "result", "error", "job", "mode", "metric", "selected")


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request):
    return Setup(request.param)


class Kernel:
    """A view wired as a kernel would: messages in through the comm handler, the worker's
    results queued for the main thread (``drain`` plays the IO loop), messages out recorded."""

    def __init__(self, view: PatchingView):
        self.view = view
        self.queue: list = []
        self.sent: list[dict] = []
        self.states: list[str] = []
        view._post = self.queue.append
        view.send = lambda content, buffers=None: self.sent.append(content)
        view.observe(lambda change: self.states.append(change["new"].get("state")), "job")

    def click(self, components: list[str], request: int, mode: str = "zero") -> float:
        t0 = time.perf_counter()
        self.view._handle_custom_msg(
            {"type": "ablate", "components": components, "mode": mode, "request": request}, []
        )
        return time.perf_counter() - t0

    def drain(self) -> None:
        while self.queue:
            self.queue.pop(0)()

    def wait(self, until, timeout: float = 60) -> None:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            self.drain()
            if until():
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out; states {self.states}, sent {self.sent}")

    def reply(self, request: int) -> dict | None:
        return next((m for m in self.sent if m.get("request") == request), None)


def distinct(states: list[str]) -> list[str]:
    """The states in order, a repeat (the same state with a later time) counted once."""
    return [s for i, s in enumerate(states) if i == 0 or s != states[i - 1]]


def settled(view: PatchingView, timeout: float = 60) -> None:
    """Wait for the view's job to end and its worker to let go (in tests the worker sets
    the traits itself)."""
    end = time.monotonic() + timeout
    while view.job.get("state") not in ("done", "error", "cancelled") or view._clicks.worker:
        assert time.monotonic() < end, f"job still {view.job}"
        time.sleep(0.01)


def remote_view(setup: Setup, pairs, **fake_options) -> tuple[PatchingView, Kernel]:
    grid = cv.patch(setup.bridge, pairs, over="heads", progress=False)
    view = PatchingView(grid, model=setup.make_client(), pairs=pairs)  # baselines: one job
    settled(view)  # it runs off the calling cell; these tests start after it
    for key, value in fake_options.items():
        setattr(setup.fake, key, value)
    return view, Kernel(view)


@pytest.fixture
def reset_fake(setup):
    yield
    setup.fake.hang, setup.fake.delay, setup.fake.fail = False, 0.0, None


def test_a_click_returns_at_once_and_its_job_reports_each_state(setup, pairs, reset_fake):
    view, kernel = remote_view(setup, pairs, delay=0.3)
    took = kernel.click(["L1H2"], request=1, mode="mean")
    assert took < 0.25  # the handler hands the job to a worker: the message loop is free
    assert view.job["state"] == "submitted" and view.job["remote"] is True
    kernel.wait(lambda: kernel.reply(1) is not None)
    assert kernel.reply(1)["type"] == "ablation"
    assert distinct(kernel.states) == ["submitted", "queued", "running", "done"]
    assert view.job["seconds"] >= 0.6  # queued 0.3 s, then running 0.3 s on the fake server
    ref = cv.ablate(setup.bridge, pairs, heads=["L1H2"], mode="mean")
    assert view.ablated == ["L1H2"] and abs(view.result["ablated"] - ref.ablated) <= TOL
    assert abs(view.result["clean"] - ref.clean) <= TOL


def test_cancel_mid_job_leaves_the_view_usable_and_the_model_unhooked(setup, pairs, reset_fake):
    view, kernel = remote_view(setup, pairs, hang=True)
    before = dict(view.result)
    kernel.click(["L0H1"], request=1)
    kernel.wait(lambda: view.job.get("state") == "running")
    view._handle_custom_msg({"type": "cancel", "request": 1}, [])
    kernel.wait(lambda: kernel.reply(1) is not None)
    assert kernel.reply(1) == {"type": "cancelled", "request": 1}
    assert view.job["state"] == "cancelled" and view.error == ""
    assert view.ablated == [] and view.result == before  # nothing half-applied
    assert not setup.server.has_hooks() and not view._model.has_hooks()
    setup.fake.hang = False
    kernel.click(["L0H1"], request=2)  # the view is usable: a fresh job
    kernel.wait(lambda: kernel.reply(2) is not None)
    ref = cv.ablate(setup.bridge, pairs, heads=["L0H1"])
    assert kernel.reply(2)["type"] == "ablation" and view.ablated == ["L0H1"]
    assert abs(view.result["ablated"] - ref.ablated) <= TOL


def test_a_newer_click_supersedes_the_job_in_flight(setup, pairs, reset_fake):
    view, kernel = remote_view(setup, pairs, delay=0.3)
    kernel.click(["L0H0"], request=1)
    kernel.wait(lambda: view.job.get("state") == "queued")
    kernel.click(["MLP1"], request=2)
    kernel.wait(lambda: kernel.reply(2) is not None)
    assert kernel.reply(1) is None  # the page waits only for its newest request
    assert kernel.reply(2)["type"] == "ablation" and view.ablated == ["MLP1"]
    assert view.job == {**view.job, "state": "done", "request": 2}


def test_a_bad_click_is_refused_before_any_job(setup, pairs, reset_fake):
    view, kernel = remote_view(setup, pairs)
    sent = len(setup.fake.requests)
    kernel.click(["L99H0"], request=1)
    assert kernel.reply(1)["type"] == "error" and "L99H0" in kernel.reply(1)["message"]
    view._handle_custom_msg({"type": "cancel", "request": 9}, [])  # nothing running: harmless
    assert kernel.reply(9) == {"type": "cancelled", "request": 9}
    assert len(setup.fake.requests) == sent and view.job["request"] == 0  # the first job's


def test_a_failing_job_is_the_views_error(setup, pairs, reset_fake):
    view, kernel = remote_view(setup, pairs, fail="CUDA out of memory")
    kernel.click(["L0H0"], request=1)
    kernel.wait(lambda: kernel.reply(1) is not None)
    assert kernel.reply(1)["type"] == "error" and "max_rows" in view.error
    assert view.job["state"] == "error" and view.ablated == []


def test_the_first_job_runs_off_the_cell_and_reports_each_state(setup, pairs, reset_fake):
    grid = cv.patch(setup.bridge, pairs, over="heads", progress=False)
    setup.fake.delay = 0.3
    client = setup.make_client()
    t0 = time.perf_counter()
    view = PatchingView(grid, model=client, pairs=pairs)
    took = time.perf_counter() - t0
    assert took < 0.3  # the cell returns before the job has even left the queue (0.3 s)
    assert view.job["request"] == 0 and view.job["remote"] is True
    assert view.job["state"] in ("submitted", "queued")
    states = [view.job["state"]]
    view.observe(lambda change: states.append(change["new"].get("state")), "job")
    settled(view)
    assert distinct(states)[-3:] == ["queued", "running", "done"] and view.error == ""
    assert view.job["seconds"] >= 0.6  # queued 0.3 s, then running 0.3 s on the fake server
    ref = cv.ablate(setup.bridge, pairs)
    assert abs(view.result["clean"] - ref.clean) <= TOL
    assert abs(view.result["corrupted"] - ref.corrupted) <= TOL
    top, ref_top = view.result["top_before"], ref.to_dict()["top_before"]
    assert view.ablated == [] and top["tokens"] == ref_top["tokens"]
    assert max(abs(a - b) for a, b in zip(top["probs"], ref_top["probs"], strict=True)) <= TOL


def test_cancelling_the_first_job_leaves_the_view_usable(setup, pairs, reset_fake):
    grid = cv.patch(setup.bridge, pairs, over="heads", progress=False)
    setup.fake.hang = True
    view = PatchingView(grid, model=setup.make_client(), pairs=pairs)
    kernel = Kernel(view)
    kernel.wait(lambda: view.job.get("state") == "running")
    view._handle_custom_msg({"type": "cancel", "request": 0}, [])
    kernel.wait(lambda: kernel.reply(0) is not None)
    assert kernel.reply(0) == {"type": "cancelled", "request": 0}
    assert view.job["state"] == "cancelled" and view.error == "" and view.result == {}
    assert not setup.server.has_hooks() and not view._model.has_hooks()
    setup.fake.hang = False
    kernel.click(["L1H2"], request=1)  # a click still gets everything, baselines included
    kernel.wait(lambda: kernel.reply(1) is not None)
    ref = cv.ablate(setup.bridge, pairs, heads=["L1H2"])
    assert kernel.reply(1)["type"] == "ablation" and view.ablated == ["L1H2"]
    assert abs(view.result["clean"] - ref.clean) <= TOL
    assert abs(view.result["ablated"] - ref.ablated) <= TOL


def test_a_restored_ablation_is_the_first_job(setup, pairs, reset_fake):
    grid = cv.patch(setup.bridge, pairs, over="heads", progress=False)
    view = PatchingView(
        grid, model=setup.make_client(), pairs=pairs, state={"ablated": ["L0H1"], "mode": "mean"}
    )
    assert view.job["request"] == 0  # the restored set is the first job, off the cell
    settled(view)
    ref = cv.ablate(setup.bridge, pairs, heads=["L0H1"], mode="mean")
    assert view.ablated == ["L0H1"] and abs(view.result["ablated"] - ref.ablated) <= TOL
    assert abs(view.result["clean"] - ref.clean) <= TOL
    sent = len(setup.fake.requests)
    with pytest.raises(cv.InputError, match="L99H0"):  # refused up front, no job sent
        PatchingView(grid, model=setup.make_client(), pairs=pairs, state={"ablated": ["L99H0"]})
    assert len(setup.fake.requests) == sent


def test_a_local_click_reports_its_latency(tiny_llama, tiny_pairs):
    grid = cv.patch(tiny_llama, tiny_pairs, over="heads", progress=False)
    view = PatchingView(grid, model=tiny_llama, pairs=tiny_pairs)
    view.send = lambda content, buffers=None: None
    view._handle_custom_msg({"type": "ablate", "components": ["L0H0"], "request": 3}, [])
    assert view.job["state"] == "done" and view.job["remote"] is False
    assert view.job["request"] == 3 and 0 < view.job["seconds"] < 30


# ----------------------------------------------------------------------------- browser

POLL = """
<script>
(() => {
  const bytes = (b64) => {
    const bin = atob(b64);
    const out = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
    return new DataView(out.buffer);
  };
  const models = [];
  function apply(model, reply) {
    const update = JSON.parse(reply);
    for (const [key, value, paths, buffers] of update.state) {
      paths.forEach((path, i) => {
        let obj = value;
        for (const k of path.slice(0, -1)) obj = obj[k];
        obj[path[path.length - 1]] = bytes(buffers[i]);
      });
      model.state[key] = value;
      model.emit("change:" + key, value);
    }
    for (const content of update.messages) model.emit("msg:custom", content, []);
  }
  window.cvSeen = [];
  window.cvBridge = {
    save(model) {},
    attach(model) {
      if (models.includes(model)) return;
      models.push(model);  // from now on the kernel's news is polled, as an IO loop sends it
      setInterval(() => window.pyKernel("poll", "").then((r) => apply(model, r)), 40);
      model.on("change:job", (job) => window.cvSeen.push(job.state));
    },
    send(model, msg) {
      this.attach(model);
      window.pyKernel("msg", JSON.stringify(msg)).then((r) => apply(model, r));
      return true;
    },
  };
})();
</script>
"""


class Bridge:
    """Serves one PatchingView to a page: ``pyKernel("msg", json)`` goes to the comm handler;
    ``pyKernel("poll")`` runs what the worker handed to the main thread and returns the
    changed traits and the messages sent."""

    def __init__(self, view: PatchingView, page, path: Path, monkeypatch):
        self.view, self.queue, self.sent = view, [], []
        view._post = self.queue.append
        view.send = lambda content, buffers=None: self.sent.append(content)
        self.last = {key: self.blob(key) for key in KERNEL_TRAITS}
        page.expose_function("pyKernel", self.call)
        spec = _html.view_spec

        def live(v):  # the standalone page, but with a kernel behind it
            out = spec(v)
            out["state"]["can_ablate"] = True
            out["state"].pop("standalone", None)
            return out

        monkeypatch.setattr(_html, "view_spec", live)
        write_html(view, path)
        text = path.read_text(encoding="utf-8")
        text = text.replace(
            "send(msg) {", "send(msg) { if (window.cvBridge.send(this, msg)) return;"
        )
        shims = "const models = specs.map((s) => new ShimModel(s));"
        assert shims in text
        text = text.replace(shims, shims + " models.forEach((m) => window.cvBridge.attach(m));")
        path.write_text(text.replace("<head>", "<head>" + POLL, 1), encoding="utf-8")

    def blob(self, key: str) -> str:
        return json.dumps(getattr(self.view, key), sort_keys=True)

    def call(self, kind: str, payload: str) -> str:
        if kind == "msg":
            self.view._handle_custom_msg(json.loads(payload), [])
        while self.queue:
            self.queue.pop(0)()
        state = []
        for key in KERNEL_TRAITS:
            blob = self.blob(key)
            if self.last[key] != blob:
                self.last[key] = blob
                state.append([key, getattr(self.view, key), [], []])
        messages, self.sent = self.sent, []
        return json.dumps({"state": state, "messages": messages})


@pytest.mark.browser
def test_the_page_shows_the_job_cancels_it_and_shows_latency(
    setup, pairs, page, tmp_path, artifacts, monkeypatch, reset_fake
):
    view, _kernel = remote_view(setup, pairs, delay=0.6)
    Bridge(view, page, tmp_path / "remote.html", monkeypatch)
    page.goto((tmp_path / "remote.html").as_uri())
    panel = page.locator('.cv-patching [data-role="ablation-panel"]')
    page.locator('.cv-patching [data-component="L1H2"]').click()
    job = page.locator('.cv-patching [data-role="job"]')
    page.locator('.cv-patching [data-role="job"][data-state="running"]').wait_for()
    assert page.locator('.cv-patching [data-role="cancel"]').is_visible()
    assert "NDIF job: running" in job.inner_text()
    panel.screenshot(path=str(artifacts / f"remote_job_running_{setup.repo[5:]}.png"))
    page.locator('.cv-patching [data-role="job"][data-state="done"]').wait_for()
    page.wait_for_function("document.querySelector('[data-role=latency]').dataset.ms > 0")
    assert distinct(page.evaluate("window.cvSeen")) == ["submitted", "queued", "running", "done"]
    latency_ms = float(page.locator('[data-role="latency"]').get_attribute("data-ms"))
    assert latency_ms >= 1200  # queued 0.6 s + running 0.6 s on the fake server
    assert "click → result in" in page.locator('[data-role="latency"]').inner_text()
    assert not page.locator('.cv-patching [data-role="cancel"]').is_visible()
    ref = cv.ablate(setup.bridge, pairs, heads=["L1H2"])
    shown = float(page.locator('[data-role="metric-ablated"]').get_attribute("data-value"))
    assert abs(shown - ref.ablated) <= TOL and view.ablated == ["L1H2"]
    panel.screenshot(path=str(artifacts / f"remote_job_done_{setup.repo[5:]}.png"))

    setup.fake.hang = True  # the next job never finishes on its own: cancel it
    page.locator('.cv-patching [data-component="L0H1"]').click()
    page.locator('.cv-patching [data-role="job"][data-state="running"]').wait_for()
    page.locator('.cv-patching [data-role="cancel"]').click()
    page.locator('.cv-patching [data-role="job"][data-state="cancelled"]').wait_for()
    assert view.ablated == ["L1H2"] and page.locator('[data-role="error"]').inner_text() == ""
    assert page.get_attribute(".cv-patching", "data-busy") == "false"
    assert not setup.server.has_hooks() and not view._model.has_hooks()
    panel.screenshot(path=str(artifacts / f"remote_job_cancelled_{setup.repo[5:]}.png"))
    setup.fake.hang = False  # still usable: another click runs to the end
    page.locator('.cv-patching [data-component="L0H1"]').click()
    page.locator('.cv-patching [data-role="job"][data-state="done"]').wait_for()
    page.wait_for_function("document.querySelector('[data-role=latency]').dataset.ms > 0")
    assert view.ablated == ["L0H1"] and not page.console_errors


@pytest.mark.browser
def test_the_page_shows_the_first_job_and_cancels_it(
    setup, pairs, page, tmp_path, artifacts, monkeypatch, reset_fake
):
    grid = cv.patch(setup.bridge, pairs, over="heads", progress=False)
    setup.fake.delay = 0.6
    view = PatchingView(grid, model=setup.make_client(), pairs=pairs)  # returns at once
    Bridge(view, page, tmp_path / "first.html", monkeypatch)
    page.goto((tmp_path / "first.html").as_uri())
    panel = page.locator('.cv-patching [data-role="ablation-panel"]')
    page.locator('.cv-patching [data-role="job"][data-state="running"]').wait_for()
    assert page.locator('.cv-patching [data-role="cancel"]').is_visible()
    assert page.get_attribute(".cv-patching", "data-busy") == "true"
    assert "NDIF job: running" in page.locator('[data-role="job"]').inner_text()
    panel.screenshot(path=str(artifacts / f"remote_first_job_running_{setup.repo[5:]}.png"))
    page.locator('.cv-patching [data-role="job"][data-state="done"]').wait_for()
    page.wait_for_function("document.querySelector('[data-role=latency]').dataset.ms > 0")
    assert float(page.locator('[data-role="latency"]').get_attribute("data-ms")) >= 1200
    assert "first result in" in page.locator('[data-role="latency"]').inner_text()
    assert page.get_attribute(".cv-patching", "data-busy") == "false"
    ref = cv.ablate(setup.bridge, pairs)
    shown = float(page.locator('[data-role="metric-clean"]').get_attribute("data-value"))
    assert abs(shown - ref.clean) <= TOL
    assert not page.locator('.cv-patching [data-role="cancel"]').is_visible()
    panel.screenshot(path=str(artifacts / f"remote_first_job_done_{setup.repo[5:]}.png"))

    # Another view whose first job never ends on its own: Cancel stops waiting for it.
    setup.fake.delay, setup.fake.hang = 0.0, True
    view = PatchingView(grid, model=setup.make_client(), pairs=pairs)
    page2 = page.context.new_page()
    Bridge(view, page2, tmp_path / "first2.html", monkeypatch)
    page2.goto((tmp_path / "first2.html").as_uri())
    page2.locator('.cv-patching [data-role="job"][data-state="running"]').wait_for()
    page2.locator('.cv-patching [data-role="cancel"]').click()
    page2.locator('.cv-patching [data-role="job"][data-state="cancelled"]').wait_for()
    assert page2.get_attribute(".cv-patching", "data-busy") == "false"
    assert page2.locator('[data-role="error"]').inner_text() == ""
    assert not setup.server.has_hooks() and not view._model.has_hooks()
    page2.locator('.cv-patching [data-role="ablation-panel"]').screenshot(
        path=str(artifacts / f"remote_first_job_cancelled_{setup.repo[5:]}.png")
    )
    setup.fake.hang = False  # still usable: a click runs to the end
    page2.locator('.cv-patching [data-component="L1H2"]').click()
    page2.locator('.cv-patching [data-role="job"][data-state="done"]').wait_for()
    page2.wait_for_function("document.querySelector('[data-role=latency]').dataset.ms > 0")
    assert view.ablated == ["L1H2"] and not page.console_errors
