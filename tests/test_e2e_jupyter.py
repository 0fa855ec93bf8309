"""End to end: a real JupyterLab / Notebook 7 server, driven by Playwright in Chromium.

Each test opens a notebook (copied from ``tests/e2e/`` into a temporary server root), runs all
of its cells through the front end, waits for the widgets to render and then acts as a person
would: clicks heads, reads the kernel's state back and checks what the view shows.
"""

from __future__ import annotations

import json
import re
import shutil
import statistics
import time
from pathlib import Path

import nbformat
import pytest
from conftest import ARTIFACTS, DEMO_MISSING, ROOT, demo_available, kernel_eval

pytestmark = [pytest.mark.browser, pytest.mark.slow]

DOCS_IMG = ROOT / "docs" / "img"
KERNEL_TIMEOUT = 600_000  # ms: generous, the first demo-model cell loads weights on 2 cores


# ----------------------------------------------------------------------------- UI helpers


def open_notebook(page, url: str) -> None:
    """Open a notebook in JupyterLab or Notebook 7 and wait until its kernel is idle."""
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_selector(".jp-Notebook .jp-Cell", state="visible", timeout=120_000)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        # A kernel chooser appears when the notebook names no (known) kernel: accept the default.
        dialog = page.locator(".jp-Dialog .jp-mod-accept")
        if dialog.count() and dialog.first.is_visible():
            dialog.first.click()
        status = page.evaluate(
            """() => {
                const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
                const k = w && w.sessionContext && w.sessionContext.session
                    && w.sessionContext.session.kernel;
                return k ? k.status : null;
            }"""
        )
        if status == "idle":
            return
        page.wait_for_timeout(250)
    raise TimeoutError(f"kernel never became idle for {url}")


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
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    (locator or page).screenshot(path=str(path))
    if docs:
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
