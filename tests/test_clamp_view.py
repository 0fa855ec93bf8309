"""CircuitView's feature controls: Ablate / Clamp × N on a feature node, and supernodes.

Kernel-side tests drive the view from Python and through the page's messages; the browser test
runs the view's bundle in Chromium against this process (the bridge of test_circuit_view.py,
with the steering message run on a thread and the page polling for state, so the
continuation repaints before the metric arrives, as in Jupyter).
"""

from __future__ import annotations

import json
import statistics
import threading
import time

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks, hooks
from circuitviz.engine.features import steer
from circuitviz.engine.features._splice import LatentEdit, splice_hook
from circuitviz.views import CircuitView
from tests._feature_graph import feature_graph
from tests._tiny_sae import tiny_saes


@pytest.fixture(scope="module")
def saes(tiny_llama):
    return tiny_saes(tiny_llama)


@pytest.fixture
def view(tiny_llama, tiny_pairs, saes):
    return CircuitView(
        tiny_llama, tiny_pairs, feature_graph(tiny_llama, tiny_pairs, saes), saes=saes
    )


def feature_ids(view):
    return [n["id"] for n in view.graph["nodes"] if n["type"] == "feature"]


# ----------------------------------------------------------------------------- kernel side


def test_clamp_sends_the_continuation_first_then_the_metric(view, tiny_llama, tiny_pairs, saes):
    from circuitviz.engine.features._steer import _UNEDITED

    assert len(_UNEDITED[tiny_llama]) >= 1  # the view generated the unedited side up front
    node = feature_ids(view)[0]
    stages, sent = [], []
    view.observe(lambda c: stages.append(dict(c["new"])), names=["steering"])
    view.send = lambda content, buffers=None: sent.append(content)
    view._handle_custom_msg(
        {"type": "steer", "node": node, "mode": "clamp", "scale": 6, "request": 1}
    )
    assert [s["stage"] for s in stages] == ["continuation", "done"]
    assert stages[0]["metric_after"] is None and stages[1]["metric_after"] is not None
    assert [m["stage"] for m in sent] == ["continuation", "done"]
    # The same as steer() itself, every position (the node's position is dropped by default).
    ref = steer(
        tiny_llama, tiny_pairs.clean[0], features=[node.split(":")[0]], saes=saes, scale=6.0
    )
    assert stages[1]["after"] == ref.after and stages[1]["before"] == ref.before
    # The metric after: the pairs' logit difference with the latent set by hand.
    hook = "blocks.0.hook_resid_post"
    edit = LatentEdit(hook, int(node[3:].split(":")[0]), ref.values[0])
    with torch.no_grad(), hooks(tiny_llama, [(hook, splice_hook(saes[hook], [edit]))]):
        logits = tiny_llama(tiny_llama.to_tokens(tiny_pairs.clean[0]), return_type="logits")
    a, w = (int(tiny_llama.to_tokens(t, prepend_bos=False)[0, 0]) for t in (" t3", " t7"))
    assert stages[1]["metric_after"] == pytest.approx(
        float(logits[0, -1, a] - logits[0, -1, w]), abs=1e-4
    )
    assert view.clamp_scale == 6.0 and view.steer_result.values == ref.values
    assert not has_hooks(tiny_llama)


def test_ablate_only_at_the_nodes_position(view):
    node = feature_ids(view)[1]
    res = view.ablate_feature(node, everywhere=False)
    assert res.features == [node] and res.values == [0.0] and res.mode == "ablate"
    assert view.steering["node"] == node and view.steering["stage"] == "done"


@pytest.mark.parametrize(
    ("message", "words"),
    [
        ({"type": "steer", "node": "L9F1", "mode": "clamp"}, "No SAE at blocks.9.hook_resid_post"),
        ({"type": "steer", "node": "L0F9999:P1"}, "out of range"),
        ({"type": "steer", "node": 5}, "feature node id"),
        ({"type": "steer", "node": "L0F1", "mode": "boost"}, "Unknown steering mode"),
        ({"type": "steer", "node": "L0F1", "scale": "big"}, "scale must be a number"),
        ({"type": "steer", "node": "L0F1", "scale": 1e9}, "clamp_scale"),
        ({"type": "steer", "node": "L0F1", "everywhere": "yes"}, "true or false"),
    ],
)
def test_bad_steer_messages_get_an_error_reply(view, tiny_llama, message, words):
    sent = []
    view.send = lambda content, buffers=None: sent.append(content)
    before = dict(view.steering)
    view._handle_custom_msg({**message, "request": 9})
    assert sent[-1]["type"] == "error" and words in sent[-1]["message"]
    assert view.steering == before and not has_hooks(tiny_llama)


def test_page_writes_are_validated(view):
    feats = feature_ids(view)
    view.set_state({"supernodes": [{"id": "S1", "members": [feats[0], "L0H1"]}]})
    assert view.supernodes == [] and "not a feature node" in view.error
    view.set_state({"clamp_scale": float("nan")})
    assert view.clamp_scale == 4.0 and "clamp_scale" in view.error
    for kernel_owned in ("steering", "suggested_supernodes", "can_steer"):
        view.set_state({kernel_owned: {} if kernel_owned == "steering" else []})
        assert "may not set" in view.error
    view.set_state({"supernodes": [{"id": "S1", "members": feats[:2]}]})
    assert view.supernodes[0]["members"] == feats[:2]


def test_groups_are_drawn_as_one_node_and_exported(view):
    feats = feature_ids(view)
    n_before = len(view.graph["nodes"])
    edges_before = view.shown_graph()["edges"]
    group = view.group(feats[3:5], label="two late ones")
    nodes = {n["id"]: n for n in view.graph["nodes"]}
    assert group["id"] == "S1" and "S1" in nodes and not set(feats[3:5]) & set(nodes)
    assert nodes["S1"]["type"] == "supernode" and nodes["S1"]["members"] == feats[3:5]
    sites = " + ".join(sorted({f"{f.split('F')[0]} resid_post" for f in feats[3:5]}))
    assert nodes["S1"]["label"] == f"{sites}: two late ones"  # names its SAE site
    assert len(nodes) == n_before - 1
    # Edges into and out of members go to the group, parallel ones summed.
    shown = view.shown_graph()
    into = sum(e["weight"] for e in edges_before if e["target"] in feats[3:5])
    got = sum(e["weight"] for e in shown["edges"] if e["target"] == "S1")
    assert got == pytest.approx(into, abs=1e-5)
    fig = view.figure()
    ids = [c[0] for tr in fig.data if tr.customdata is not None for c in tr.customdata]
    assert "S1" in ids and not set(feats[3:5]) & set(ids)
    assert "supernode" in {tr.name for tr in fig.data}  # its own legend entry
    res = view.clamp("S1", scale=2)  # a supernode clamps all its members
    assert res.features == [f.split(":")[0] for f in feats[3:5]]
    view.ungroup("S1")
    assert len(view.graph["nodes"]) == n_before and view.shown_graph()["edges"] == edges_before


def test_python_api_bad_input_is_an_input_error(view, tiny_llama):
    feats = feature_ids(view)
    with pytest.raises(cv.InputError, match="clamp_scale"):
        view.clamp(feats[0], scale=float("nan"))
    with pytest.raises(cv.InputError, match="needs two"):
        view.group(feats[:1])
    with pytest.raises(cv.InputError, match="not a feature node"):
        view.group([feats[0], "EMBED:P6"])
    with pytest.raises(cv.InputError, match="No supernode"):
        view.ungroup("S9")
    assert view.supernodes == [] and not has_hooks(tiny_llama)


def test_suggestions_by_message_and_accepting_one(view):
    sent = []
    view.send = lambda content, buffers=None: sent.append(content)
    view._handle_custom_msg({"type": "suggest_supernodes", "request": "s"})
    assert sent[-1] == {"type": "suggested", "request": "s"}
    found = view.suggested_supernodes
    assert found and all(len(g["members"]) >= 2 and g["reason"] for g in found)
    new = view.accept_suggestion(found[0]["id"])
    assert view.supernodes == [new] and new["members"] == found[0]["members"]
    assert found[0]["id"] not in {g["id"] for g in view.suggested_supernodes}


def test_without_saes_the_controls_say_why(tiny_llama, tiny_pairs, saes):
    graph = feature_graph(tiny_llama, tiny_pairs, saes)
    view = CircuitView(tiny_llama, tiny_pairs, graph)
    assert not view.can_steer
    with pytest.raises(cv.InputError, match="saes="):
        view.clamp(feature_ids(view)[0])


# ----------------------------------------------------------------------------- browser

POLL = r"""
<script>
// The steering reply comes in two steps (continuation, then metric): poll the kernel for
// state while a request runs, as Jupyter would push each trait change.
// Only while a request runs, and not so often that the polls slow the kernel down.
setInterval(() => {
  const busy = document.querySelector(".cv-circuit")?.getAttribute("data-steer-busy") === "true";
  if (window.cvPoll && busy) window.cvPoll();
}, 50);
</script>
"""
POLLED_TRAITS = ("steering", "error")
CLAMP_TRAITS = (
    "graph",
    "pinned",
    "selected",
    "error",
    "faithfulness",
    "searchable",
    "steering",
    "supernodes",
    "suggested_supernodes",
    "clamp_scale",
)


def serve(view, page, path):
    """Serve ``view`` to ``page`` (threaded bridge, the page polling); returns the bridge."""
    from tests.test_circuit_view import Bridge

    class ThreadedBridge(Bridge):
        """The steer message runs on a thread; the page's polls return state as it changes."""

        def __init__(self, view, page, path):
            import tests.test_circuit_view as tcv

            self.lock = threading.Lock()
            self.kernel_ms: list[dict] = []  # per steer message: stage -> ms in the kernel
            old, tcv.KERNEL_TRAITS = tcv.KERNEL_TRAITS, CLAMP_TRAITS
            try:
                super().__init__(view, page, path)
            finally:
                tcv.KERNEL_TRAITS = old
            text = path.read_text(encoding="utf-8").replace("<head>", "<head>" + POLL, 1)
            text = text.replace(
                "async function apply(model, reply) {",
                "window.cvApply = (m, r) => apply(m, r);\n  async function apply(model, reply) {",
                1,
            )
            text = text.replace(
                "send(model, msg) {", "send(model, msg) { window.cvLastModel = model;", 1
            )
            path.write_text(text, encoding="utf-8")

        def call(self, kind, payload):
            import tests.test_circuit_view as tcv

            content = json.loads(payload)
            traits = CLAMP_TRAITS
            if kind == "msg" and content.get("type") == "steer":
                threading.Thread(target=self._run, args=(content,)).start()
                kind, payload = "state", "{}"
            elif kind == "state" and not content:
                # A poll while a steer runs: what it changes. Serialising every trait (the
                # graph included) 20 times a second would hold the GIL the steer needs;
                # Jupyter pushes changed traits instead of being polled.
                traits = POLLED_TRAITS
            old, tcv.KERNEL_TRAITS = tcv.KERNEL_TRAITS, traits
            try:
                with self.lock:
                    return super().call(kind, payload)
            finally:
                tcv.KERNEL_TRAITS = old

        def _run(self, content):
            t0, stamps = time.perf_counter(), {}

            def stamp(change):
                stamps[change["new"].get("stage")] = 1000 * (time.perf_counter() - t0)

            self.view.observe(stamp, names=["steering"])
            try:
                self.view._handle_custom_msg(content, [])
            finally:
                self.view.unobserve(stamp, names=["steering"])
                self.kernel_ms.append(stamps)

    bridge = ThreadedBridge(view, page, path)
    page.goto(path.as_uri())
    page.locator(".cv-circuit g.cv-node").first.wait_for()
    page.evaluate(
        """() => { window.cvPoll = () => {
            const m = window.cvLastModel; if (m && !window.cvPolling) {
              window.cvPolling = true;
              window.pyKernel('state', '{}').then(r => window.cvApply(m, r)).finally(() => { window.cvPolling = false; });
            } }; }"""
    )
    return bridge


@pytest.fixture
def bridged(page, tmp_path, view):
    return view, serve(view, page, tmp_path / "clamp.html")


def shot(page, name):
    from tests.conftest import ARTIFACTS

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(".cv-circuit").screenshot(path=str(ARTIFACTS / f"{name}.png"))


def clamp_clicks(view, page, node, scales):
    """Select ``node``, then click Clamp × N for each N: click → painted times (ms) of the
    continuation and of the metric, each checked against the kernel's state read back."""
    page.locator(f'.cv-circuit g.cv-node[data-component="{node}"]').click()
    page.wait_for_function(
        f"() => document.querySelector('[data-role=feature-selected]').textContent.startsWith('{node}')"
    )
    assert view.selected == node
    times = []
    for scale in scales:
        page.fill('[data-role="clamp-scale"]', str(scale))
        page.click('[data-role="feature-clamp"]')
        page.wait_for_function(
            "() => document.querySelector('.cv-circuit').hasAttribute('data-steer-painted-done')",
            timeout=120_000,
            polling=100,  # not every animation frame: the page's polling would take a core
        )
        t = page.evaluate(
            """() => { const r = document.querySelector('.cv-circuit');
              const at = (k) => Number(r.getAttribute(k));
              return { cont: at('data-steer-painted-continuation') - at('data-steer-requested'),
                       done: at('data-steer-painted-done') - at('data-steer-requested') }; }"""
        )
        times.append(t)
        # The kernel's state, read back: what the panel shows is what it computed.
        s = view.steering
        assert s["scale"] == scale and s["stage"] == "done" and s["node"] == node
        assert page.text_content('[data-role="continuation-after"]') == s["after"]
        assert page.text_content('[data-role="continuation-before"]') == s["before"]
        shown = float(page.text_content('[data-role="steer-metric-after"]'))
        assert shown == pytest.approx(s["metric_after"], abs=1e-4, rel=1e-3)
    assert all(0 < t["cont"] <= t["done"] for t in times)
    return times


def record(artifacts, name, times, **extra):
    cont = statistics.median(t["cont"] for t in times)
    done = statistics.median(t["done"] for t in times)
    out = {"times": times, "median_continuation_ms": cont, "median_done_ms": done, **extra}
    (artifacts / f"{name}.json").write_text(json.dumps(out))
    print(f"{name}: click → continuation painted, median {cont:.0f} ms; → metric {done:.0f} ms")


@pytest.mark.browser
def test_click_clamp_repaints_continuation_then_metric(bridged, page, artifacts):
    view, _ = bridged
    times = clamp_clicks(view, page, feature_ids(view)[0], (2, 3, 4, 5, 6))
    record(artifacts, "clamp_view_times", times)
    shot(page, "clamp_view_clamped")
    assert not page.console_errors


@pytest.mark.browser
@pytest.mark.demo
@pytest.mark.slow
def test_demo_click_clamp_time(demo_model, page, tmp_path, artifacts):
    """The same clicks on the demo model with the shipped demo SAEs and the IOI feature
    circuit a user would open: click → continuation painted (target ≤ 1 s; the machine is
    shared, see the JSON's load)."""
    import os

    pairs = cv.tasks.ioi(demo_model, n=8, seed=0)
    demo_saes = cv.load_saes("demo")
    graph = cv.circuit(demo_model, pairs, saes=demo_saes, progress=False)
    view = CircuitView(demo_model, pairs, graph, saes=demo_saes)
    bridge = serve(view, page, tmp_path / "demo_clamp.html")
    node = feature_ids(view)[0]
    load = os.getloadavg()
    times = clamp_clicks(view, page, node, (1, 2, 3, 4, 5))
    kernel = statistics.median(k["continuation"] for k in bridge.kernel_ms)
    print(f"demo: the kernel's part of it, median {kernel:.0f} ms")
    record(
        artifacts,
        "clamp_view_demo_times",
        times,
        kernel_ms=bridge.kernel_ms,
        load_average=[load, os.getloadavg()],
    )
    shot(page, "clamp_view_demo")
    assert not page.console_errors


@pytest.mark.browser
def test_group_and_suggest_in_the_page(bridged, page):
    view, _ = bridged
    feats = feature_ids(view)
    for f in feats[3:5]:
        page.locator(f'.cv-circuit g.cv-node[data-component="{f}"]').click(modifiers=["Shift"])
    assert page.locator('.cv-node [data-role="group-pick"]').count() == 2
    page.click('[data-role="group-picked"]')
    page.wait_for_selector('.cv-circuit g.cv-node[data-type="supernode"]')
    assert view.supernodes[0]["members"] == feats[3:5]
    title = page.text_content('.cv-circuit g.cv-node[data-type="supernode"] title')
    assert all(f in title for f in feats[3:5])
    page.click('[data-role="suggest-groups"]')
    page.wait_for_selector("[data-suggested]")
    shot(page, "clamp_view_supernodes")
    page.click('[data-role="ungroup"]')
    page.wait_for_function(
        "() => !document.querySelector('.cv-circuit g.cv-node[data-type=supernode]')"
    )
    assert view.supernodes == []
    assert not page.console_errors
