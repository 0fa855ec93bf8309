"""End to end: a real JupyterLab / Notebook 7 server, driven by Playwright in Chromium.

Each test opens a notebook (copied from ``tests/e2e/`` into a temporary server root), runs all
of its cells through the front end, waits for the widgets to render and then acts as a person
would: clicks heads, reads the kernel's state back and checks what the view shows.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import time
from pathlib import Path

import nbformat
import pytest

try:  # tests/ may or may not be a package
    from tests.conftest import ARTIFACTS, DEMO_MISSING, ROOT, demo_available, kernel_eval
except ImportError:
    from conftest import ARTIFACTS, DEMO_MISSING, ROOT, demo_available, kernel_eval

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DOCS_IMG = ROOT / "docs" / "img"
KERNEL_TIMEOUT = 600_000  # ms: generous, the first demo-model cell loads weights on 2 cores


# ----------------------------------------------------------------------------- UI helpers


def open_notebook(page, url: str) -> None:
    """Open a notebook in JupyterLab or Notebook 7 and wait until it is the current widget
    and its kernel is idle."""
    notebook = url.split("?")[0].rsplit("/", 1)[-1]
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", state="visible", timeout=120_000)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        # A kernel chooser appears when the notebook names no (known) kernel: accept the default.
        dialog = page.locator(".jp-Dialog .jp-mod-accept")
        if dialog.count() and dialog.first.is_visible():
            dialog.first.click()
        status = page.evaluate(
            """(notebook) => {
                const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                if (!w || !w.context || !w.context.path.endsWith(notebook)) return null;
                const k = w.sessionContext && w.sessionContext.session
                    && w.sessionContext.session.kernel;
                return k ? k.status : null;
            }""",
            notebook,
        )
        if status == "idle":
            return
        page.wait_for_timeout(250)
    raise TimeoutError(f"{notebook} never became the current notebook with an idle kernel")


def run_command(page, command: str) -> None:
    page.evaluate(f"window.jupyterapp.commands.execute({json.dumps(command)})")


def run_all_cells(page, done_marker: str) -> None:
    """Run → Run All Cells, then wait until the output ``done_marker`` appears."""
    run_command(page, "notebook:run-all-cells")
    output_with(page, done_marker, timeout=KERNEL_TIMEOUT)
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
    tracebacks = page.locator(".jp-RenderedText[data-mime-type='application/vnd.jupyter.error']")
    assert tracebacks.count() == 0, tracebacks.first.inner_text()
    del errors  # warnings on stderr are fine


def output_with(page, text: str, timeout: float = 120_000):
    loc = page.locator(".jp-OutputArea-output", has_text=text).last
    loc.wait_for(state="attached", timeout=timeout)
    return loc


def run_new_cell(page, code: str, marker: str, timeout: float = 120_000) -> str:
    """Append a code cell at the end, type ``code`` into it, run it; return its output text."""
    page.locator(".jp-Notebook .jp-Cell").last.click()
    page.keyboard.press("Escape")
    run_command(page, "notebook:move-cursor-down")  # no-op at the end; keeps focus in notebook
    run_command(page, "notebook:insert-cell-below")
    run_command(page, "notebook:enter-edit-mode")
    editor = page.locator(".jp-Notebook .jp-Cell").last.locator(".cm-content")
    editor.wait_for(state="visible")
    editor.click()
    page.keyboard.insert_text(code)
    page.keyboard.press("Shift+Enter")
    return output_with(page, marker, timeout=timeout).inner_text()


def write_notebook(path: Path, cells: list[str]) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nb.cells = [nbformat.v4.new_code_cell(c) for c in cells]
    nbformat.write(nb, str(path))


def screenshot(page, name: str, locator=None, docs: bool = False) -> Path:
    """Save to tests/artifacts; README screenshots (``docs``) are refreshed in docs/img only
    when CIRCUITVIZ_UPDATE_DOCS=1, so a test run leaves the tracked tree alone."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    (locator or page).screenshot(path=str(path))
    if docs and os.environ.get("CIRCUITVIZ_UPDATE_DOCS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, DOCS_IMG / f"{name}.png")
    return path


# ----------------------------------------------------------------------------- harness probe

PROBE_WIDGET = '''
import anywidget, traitlets

class Probe(anywidget.AnyWidget):
    """A stand-in view: a head to click and a metric the kernel recomputes."""
    _esm = """
    function render({ model, el }) {
      const head = document.createElement("button");
      head.dataset.component = "L0H1";
      head.textContent = "L0H1";
      const metric = document.createElement("span");
      metric.dataset.role = "metric-ablated";
      metric.textContent = model.get("metric");
      head.addEventListener("click", () => {
        model.set("ablated", [...model.get("ablated"), "L0H1"]);
        model.save_changes();
      });
      model.on("change:metric", () => { metric.textContent = model.get("metric"); });
      el.append(head, metric);
    }
    export default { render };
    """
    ablated = traitlets.List(traitlets.Unicode()).tag(sync=True)
    metric = traitlets.Unicode("1.000").tag(sync=True)

    @traitlets.observe("ablated")
    def _recompute(self, change):
        self.metric = f"{1.0 - 0.25 * len(change.new):.3f}"

probe = Probe()
display(probe)
print("PROBE_READY")
'''


@pytest.mark.parametrize("ui", ["lab", "notebook"])
def test_probe_widget_roundtrip(jupyter_server, page, ui):
    """The harness itself: the front end renders an anywidget, a click reaches the kernel,
    the kernel's answer reaches the DOM. Independent of circuitviz's views."""
    name = f"probe_{ui}.ipynb"
    write_notebook(jupyter_server.root_dir / name, [PROBE_WIDGET])
    url = jupyter_server.lab_url(name) if ui == "lab" else jupyter_server.notebook_url(name)
    open_notebook(page, url)
    run_all_cells(page, "PROBE_READY")
    head = page.locator('[data-component="L0H1"]')
    metric = page.locator('[data-role="metric-ablated"]')
    head.wait_for(state="visible")
    assert metric.inner_text() == "1.000"
    head.click()
    page.wait_for_function(
        "() => document.querySelector('[data-role=\"metric-ablated\"]').textContent === '0.750'"
    )
    text = run_new_cell(page, "print('ABL', probe.ablated, probe.metric)", "ABL")
    assert "ABL ['L0H1'] 0.750" in text
    client = jupyter_server.kernel_client(name)
    try:
        assert kernel_eval(client, "print(probe.ablated)").strip() == "['L0H1']"
    finally:
        client.stop_channels()
    assert page.dialogs == []


# ----------------------------------------------------------------------------- circuitviz views

# The target is a 500 ms median on a quiet machine (README); CI machines are shared, so the
# test only fails on a clear regression. Set the variable to 500 to hold the target itself.
LATENCY_BUDGET_MS = float(os.environ.get("CIRCUITVIZ_LATENCY_BUDGET_MS", "5000"))


def js_fmt(v: float) -> str:
    """Python twin of ``fmt`` in js/src/dom.ts (what the views print for a metric)."""
    a = abs(v)
    if a != 0 and (a < 1e-3 or a >= 1e5):
        mant, exp = f"{v:.2e}".split("e")
        return f"{mant}e{'+' if int(exp) >= 0 else '-'}{abs(int(exp))}"
    return re.sub(r"\.?0+$", "", f"{v:.4f}") or "0"


def view(page, kind: str):
    return page.locator(f'[data-view="{kind}"]').first


INSTALL_CLICK_CLOCK = """(sel) => {
    // Click time (capture phase, before any view handler) and the moment the view's panel
    // has the kernel's answer: data-busy back to "false" with a metric-ablated value.
    // Only clicks that land on a component count (a click the page's layout moved off its
    // target is not a click on the view). Installing again (tests share one page) replaces
    // the previous clock, not adds to it.
    const old = window.__cvClock;
    if (old) {
        document.removeEventListener("click", old.onClick, true);
        old.observer.disconnect();
    }
    const root = document.querySelector(sel);
    const c = { clicks: [], done: [], missed: [] };
    let scheduled = false;
    const onClick = (ev) => {
        const hit = ev.target.closest && ev.target.closest("[data-component]");
        if (hit && root.contains(hit)) c.clicks.push(performance.now());
        else c.missed.push(ev.target.tagName + "." + (ev.target.getAttribute("class") || ""));
    };
    const observer = new MutationObserver(() => {
        if (scheduled || c.done.length >= c.clicks.length) return;
        if (root.getAttribute("data-busy") !== "false") return;
        const m = root.querySelector('[data-role="metric-ablated"]');
        if (!m) return;
        const value = m.dataset.value;  // "" when the click cleared the ablation set
        const shown = m.textContent;
        const error = root.querySelector('[data-role="error"]')?.textContent ?? "";
        scheduled = true;  // one answer per click, stamped at the next paint
        requestAnimationFrame(() => {
            c.done.push({ t: performance.now(), value, shown, error });
            scheduled = false;
        });
    });
    document.addEventListener("click", onClick, true);
    observer.observe(root, { subtree: true, childList: true, attributes: true, characterData: true });
    window.__cv = c;
    window.__cvClock = { onClick, observer };
}"""


def click_and_wait(page, target, timeout: float = 120_000) -> dict:
    """Click ``target`` (a head); wait until its view shows the kernel's new metric.
    Returns ``{"ms": click→painted latency, "value": data-value, "shown": text}``."""
    n = page.evaluate("window.__cv.clicks.length")
    for _attempt in range(3):
        target.click()
        if page.evaluate("window.__cv.clicks.length") > n:
            break
        # The click landed beside the component (the notebook's layout moved under it).
        page.wait_for_timeout(500)
    else:
        missed = page.evaluate("window.__cv.missed")
        raise AssertionError(f"three clicks on {target} missed it; they hit {missed}")
    try:
        page.wait_for_function(f"window.__cv.done.length >= {n + 1}", timeout=timeout)
    except Exception as e:
        state = page.evaluate(
            """(n) => ({ clock: window.__cv, busy: [...document.querySelectorAll('[data-busy]')]
                .map((v) => v.getAttribute('data-view') + ':' + v.getAttribute('data-busy')),
                errors: [...document.querySelectorAll('[data-role="error"]')].map((e) => e.textContent),
                lists: [...document.querySelectorAll('[data-role="ablated-list"]')].map((e) => e.textContent) })""",
            n,
        )
        raise AssertionError(f"click {n} on {target} got no updated view: {state}") from e
    click = page.evaluate(f"window.__cv.clicks[{n}]")
    done = page.evaluate(f"window.__cv.done[{n}]")
    value = float(done["value"]) if done["value"] else None
    assert not done["error"], f"the view shows an error after the click: {done['error']}"
    return {"ms": done["t"] - click, "value": value, "shown": done["shown"]}


@pytest.fixture(scope="module")
def lab_ioi(jupyter_server, browser, summary):
    """JupyterLab with tests/e2e/e2e_ioi.ipynb run: circuit, patching and attention views."""
    if not demo_available():
        pytest.skip(DEMO_MISSING)
    # Tall enough that each view fits on screen whole, for its screenshot.
    context = browser.new_context(viewport={"width": 1500, "height": 1900})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.dialogs = []
    page.on("dialog", lambda d: (page.dialogs.append(f"{d.type}: {d.message}"), d.dismiss()))
    t0 = time.monotonic()
    open_notebook(page, jupyter_server.lab_url("e2e_ioi.ipynb"))
    run_all_cells(page, "E2E_READY True True")
    for kind in ("circuit", "patching", "attention"):
        view(page, kind).wait_for(state="visible", timeout=120_000)
    # The circuit scores its shown circuit by itself once drawn; let that settle first.
    view(page, "circuit").locator('.cv-faith[data-state="ready"]').wait_for(timeout=120_000)
    summary.append(f"e2e_ioi.ipynb ran in JupyterLab in {time.monotonic() - t0:.1f}s")
    yield page
    context.close()


def kernel_readback(page, jupyter_server, var: str) -> tuple[list[str], float]:
    """Read ``var``'s ablation back from Python: once in a new notebook cell (as a person
    would), once over the kernel protocol; both must agree."""
    marker = f"READBACK_{var}"
    text = run_new_cell(
        page,
        f"import json; print({marker!r}, json.dumps({var}.ablated), repr({var}.result['ablated']))",
        marker,
    )
    m = re.search(rf"{marker} (\[.*?\]) (\S+)", text)
    assert m, text
    ablated, value = json.loads(m[1]), float(m[2])
    client = jupyter_server.kernel_client("e2e_ioi.ipynb")
    try:
        out = kernel_eval(client, f"print(json.dumps([{var}.ablated, {var}.ablation.ablated]))")
    finally:
        client.stop_channels()
    k_ablated, k_value = json.loads(out)
    assert k_ablated == ablated and k_value == pytest.approx(value)
    return ablated, value


def first_heads(page, kind: str, n: int) -> list[str]:
    sel = (
        f'[data-view="{kind}"] [data-component][data-type="head"]'
        if kind == "circuit"
        else f'[data-view="{kind}"] [data-component^="L"]'
    )
    ids = page.eval_on_selector_all(sel, "els => els.map(e => e.dataset.component)")
    heads = [i for i in dict.fromkeys(ids) if re.fullmatch(r"L\d+H\d+", i)]
    assert len(heads) >= n, f"{kind} view shows only {heads}"
    return heads[:n]


@pytest.mark.demo
@pytest.mark.parametrize("kind,var", [("circuit", "cv_view"), ("patching", "pv")])
def test_click_head_ablates_in_kernel(lab_ioi, jupyter_server, kind, var):
    page = lab_ioi
    root = view(page, kind)
    root.scroll_into_view_if_needed()
    page.evaluate(INSTALL_CLICK_CLOCK, f'[data-view="{kind}"]')
    head = first_heads(page, kind, 1)[0]
    metric = root.locator('[data-role="metric-ablated"]')
    assert metric.inner_text().strip() == "–"  # nothing ablated yet
    got = click_and_wait(page, root.locator(f'[data-component="{head}"]').first)
    ablated, value = kernel_readback(page, jupyter_server, var)
    assert ablated == [head]
    assert got["value"] == pytest.approx(value, rel=1e-5)
    assert metric.inner_text().strip() == js_fmt(value)
    assert root.locator('[data-role="error"]').inner_text().strip() == ""
    if kind == "circuit":
        assert (
            root.locator(f'[data-component="{head}"]').first.get_attribute("data-ablated") == "true"
        )
        # Faithfulness follows the click by itself: the shown circuit, then without the head.
        root.locator('.cv-faith[data-state="ready"]').wait_for(timeout=60_000)
        shown = root.locator('[data-role="faithfulness-ablated"]').inner_text().strip()
        client = jupyter_server.kernel_client("e2e_ioi.ipynb")
        try:
            f = json.loads(kernel_eval(client, "print(json.dumps(cv_view.faithfulness))"))
        finally:
            client.stop_channels()
        assert f["ablated_nodes"] == [head] and f["circuit"] != f["ablated"]
        assert float(shown) == pytest.approx(f["ablated"], abs=6e-4)  # shown to 3 decimals
    assert page.dialogs == []
    screenshot(page, f"{kind}_view", root, docs=True)


@pytest.mark.demo
def test_attention_view_renders(lab_ioi):
    page = lab_ioi
    root = view(page, "attention")
    root.scroll_into_view_if_needed()
    canvas = root.locator('[data-role="grid-canvas"]')
    canvas.wait_for(state="visible")
    inked = page.evaluate(
        """(c) => { const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
                   let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i+1] < 250) n++;
                   return n; }""",
        canvas.element_handle(),
    )
    assert inked > 100, "the thumbnail grid canvas is blank"
    tokens = root.locator('[data-role="tokens"]').inner_text()
    assert "gave" in tokens
    # Focusing another head loads its layer's full pattern from the kernel.
    root.locator('[data-component="L2H3"]').first.click()
    page.wait_for_function(
        "() => document.querySelector('[data-view=\"attention\"]').getAttribute('data-busy') === 'false'"
        " && document.querySelector('[data-view=\"attention\"] [data-role=\"focus-title\"]').textContent.includes('L2H3')",
        timeout=60_000,
    )
    screenshot(page, "attention_view", root, docs=True)


@pytest.mark.demo
def test_prompt_is_shown_literally(lab_ioi):
    """Hostile text in a prompt is data: shown as text, never parsed as HTML or templates."""
    page = lab_ioi
    root = page.locator('[data-view="attention"]').nth(1)
    root.scroll_into_view_if_needed()
    text = root.locator('[data-role="tokens"]').inner_text()
    for literal in (
        "<img src=x onerror=alert(1)>",
        "</script><script>alert(2)</script>",
        "{{ 7*7 }}",
    ):
        assert literal.replace(" ", "") in text.replace(" ", ""), text
    assert "49" not in text
    assert root.locator("img, script").count() == 0
    assert page.locator(".jp-OutputArea img[src='x']").count() == 0
    page.wait_for_timeout(500)  # give a would-be onerror handler time to fire
    assert page.dialogs == []
    screenshot(page, "attention_xss", root)


@pytest.mark.demo
def test_click_latency(lab_ioi, artifacts, summary):
    """Click → the view shows the kernel's new metric, measured in the browser: ten clicks on
    heads not ablated before (each a real forward pass in the kernel), then five repeats
    (answered from the ablation cache)."""
    page = lab_ioi
    root = view(page, "patching")
    root.scroll_into_view_if_needed()
    page.evaluate(INSTALL_CLICK_CLOCK, '[data-view="patching"]')
    # Consecutive clicks on different heads: each ablates only the clicked head.
    current = root.locator('[data-role="ablated-list"]').inner_text()
    heads = [h for h in first_heads(page, "patching", 12) if h not in current][:10]
    assert len(heads) == 10
    samples = []
    for head in heads + heads[:5]:
        got = click_and_wait(page, root.locator(f'[data-component="{head}"]').first)
        assert got["value"] is not None, f"clicking {head} showed no ablated metric"
        samples.append(got["ms"])
    first, repeats = samples[:10], samples[10:]
    n_tokens = (
        page.locator('[data-view="attention"]')
        .first.locator('[data-role="tokens"] .cv-token')
        .count()
    )
    median = statistics.median(first)
    report = {
        "view": "PatchingView",
        "model": "demo (SmolLM2-135M-Instruct), CPU",
        "prompt_tokens": n_tokens,
        "prompts": 2,
        "samples_ms": [round(s, 1) for s in first],
        "median_ms": round(median, 1),
        "repeat_samples_ms": [round(s, 1) for s in repeats],
        "repeat_median_ms": round(statistics.median(repeats), 1),
        "target_ms": 500,
    }
    (artifacts / "latency.json").write_text(json.dumps(report, indent=2))
    line = (
        f"click→updated view latency (PatchingView, demo model): median {median:.0f} ms over "
        f"{len(first)} new heads, {report['repeat_median_ms']:.0f} ms for repeated ones"
    )
    print("\n[e2e] " + line)
    summary.append(line)
    assert median <= LATENCY_BUDGET_MS, report


@pytest.mark.demo
def test_notebook7_click_ablates(jupyter_server, page):
    if not demo_available():
        pytest.skip(DEMO_MISSING)
    open_notebook(page, jupyter_server.notebook_url("e2e_nb7.ipynb"))
    assert (
        "/notebooks/" in page.url and page.locator("#jp-NotebookPanel, .jp-NotebookPanel").count()
    )
    run_all_cells(page, "NB7_READY True")
    root = view(page, "patching")
    root.wait_for(state="visible")
    page.evaluate(INSTALL_CLICK_CLOCK, '[data-view="patching"]')
    head = first_heads(page, "patching", 1)[0]
    got = click_and_wait(page, root.locator(f'[data-component="{head}"]').first)
    text = run_new_cell(page, "print('NB7', pv.ablated, pv.result['ablated'])", "NB7 [")
    m = re.search(r"NB7 \[(.*?)\] (\S+)", text)
    assert m and m[1] == repr(head)
    assert got["value"] == pytest.approx(float(m[2]), rel=1e-5)
    assert page.dialogs == []
    screenshot(page, "notebook7_patching", root)


FEATURE_CELL = """\
saes = circuitviz.load_saes("demo")
pairs8 = circuitviz.tasks.ioi(model, n=8, seed=0)
fv = CircuitView(model, pairs8, circuit(model, pairs8, saes=saes, progress=False), saes=saes)
display(fv)
print("FEATURES_READY", fv.can_steer)
"""


@pytest.mark.demo
@pytest.mark.slow
def test_clamp_latency_in_jupyterlab(lab_ioi, artifacts, summary):
    """Click-to-clamp as a user meets it: the IOI feature circuit with the shipped demo SAEs
    in JupyterLab; Clamp × N on one latent → the new 20-token continuation painted (clamp.ts
    stamps the click and the paint), then the metric. Target: median ≤ 1 s."""
    import os

    page = lab_ioi
    run_new_cell(page, FEATURE_CELL, "FEATURES_READY True", timeout=300_000)
    root = page.locator(".cv-circuit").last
    node = root.locator('g.cv-node[data-type="feature"]').first
    node.wait_for(state="visible", timeout=120_000)
    node.scroll_into_view_if_needed()
    node_id = node.get_attribute("data-component")
    node.click()
    root.locator('[data-role="feature-selected"]').filter(has_text=node_id).wait_for()
    load = os.getloadavg()
    samples = []
    for scale in (1, 2, 3, 4, 5, 6, 7):
        root.locator('[data-role="clamp-scale"]').fill(str(scale))
        root.locator('[data-role="feature-clamp"]').click()
        page.wait_for_function(
            "(el) => el.hasAttribute('data-steer-painted-done')",
            arg=root.element_handle(),
            timeout=120_000,
            polling=100,
        )
        samples.append(
            root.evaluate(
                """(r) => { const at = (k) => Number(r.getAttribute(k));
                  return { continuation: at('data-steer-painted-continuation') - at('data-steer-requested'),
                           done: at('data-steer-painted-done') - at('data-steer-requested') }; }"""
            )
        )
        assert root.locator('[data-role="continuation-after"]').inner_text().strip()
    median = statistics.median(s["continuation"] for s in samples)
    report = {
        "view": "CircuitView (feature circuit, shipped demo SAEs), Clamp × 1..7 on " + node_id,
        "samples_ms": samples,
        "continuation_median_ms": round(median, 1),
        "metric_median_ms": round(statistics.median(s["done"] for s in samples), 1),
        "load_average": [load, os.getloadavg()],
        "target_ms": 1000,
    }
    (artifacts / "clamp_latency_jupyterlab.json").write_text(json.dumps(report, indent=2))
    line = (
        f"click→clamped continuation painted (JupyterLab, demo SAEs): median {median:.0f} ms, "
        f"→ metric {report['metric_median_ms']:.0f} ms"
    )
    print("\n[e2e] " + line)
    summary.append(line)
    screenshot(page, "jupyterlab_clamp", root)
    assert page.dialogs == []
