"""marimo, for real: serve tests/marimo/patching_app.py with ``marimo run`` (app view) and
``marimo edit`` (the editor) on loopback, click a head in Chromium, and read the ablation
back from the notebook's Python side.

The notebook's read-back cell writes what it sees (``view.value``, ``view.widget.ablated``
and the ablation result, via ``mo.state``) to ``$CIRCUITVIZ_MARIMO_OUT``; the test compares
that with ``circuitviz.ablate`` run here on the same model and pairs.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import TimeoutError as PlaywrightTimeout

import circuitviz as cv
from tests.conftest import ROOT, free_port

APP = ROOT / "tests" / "marimo" / "patching_app.py"
EXPLORE_APP = ROOT / "tests" / "marimo" / "explore_app.py"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(
        importlib.util.find_spec("marimo") is None,
        reason="marimo is missing: `pip install marimo` (it is in the test extra)",
    ),
]


class MarimoApp:
    """``marimo run|edit APP`` on a free loopback port, with a random access token."""

    def __init__(self, app: Path, workdir: Path, mode: str):
        self.mode = mode
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.readback = workdir / "readback.json"
        self.log_path = workdir / "marimo.log"
        env = dict(
            os.environ,
            PYTHONPATH=os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH")] if p),
            CIRCUITVIZ_MARIMO_OUT=str(self.readback),
            MARIMO_SKIP_UPDATE_CHECK="1",
        )
        cmd = [sys.executable, "-m", "marimo", "-q", mode, str(app), "--headless",
               "--host", "127.0.0.1", "--port", str(self.port), "--token",
               "--token-password", self.token, "--no-sandbox"]  # fmt: skip
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd, cwd=workdir, env=env, stdout=self._log, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )  # fmt: skip

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/?access_token={self.token}"

    def wait_until_up(self, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"marimo exited early:\n{self.log_tail()}")
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                time.sleep(0.5)
        raise RuntimeError(f"marimo did not answer /health in {timeout}s:\n{self.log_tail()}")

    def read(self, until, timeout: float = 60) -> dict:
        """The read-back cell's latest output, once ``until(output)`` holds."""
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            try:
                seen = json.loads(self.readback.read_text())
                if until(seen):
                    return seen
            except (OSError, json.JSONDecodeError):
                pass  # not written yet, or being rewritten
            time.sleep(0.2)
        raise AssertionError(f"the notebook's read-back never matched; last: {seen}")

    def log_tail(self, n: int = 40) -> str:
        self._log.flush()
        return "\n".join(self.log_path.read_text().splitlines()[-n:])

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        self._log.close()


@contextmanager
def served(app: Path, workdir: Path, mode: str):
    # Serve a copy: `marimo edit` caches outputs in __marimo__/ beside the notebook.
    copy = workdir / app.name
    shutil.copy(app, copy)
    server = MarimoApp(copy, workdir, mode)
    try:
        server.wait_until_up()
        yield server
    finally:
        server.stop()


@pytest.fixture(params=["run", "edit"])
def marimo_app(tmp_path, request):
    with served(APP, tmp_path, request.param) as server:
        yield server


def run_all(page, shown, tries: int = 6) -> None:
    """The editor opens with every cell stale: press its "run all" button (the last
    ``run-button``) until ``shown`` appears; a press before the kernel is connected is lost."""
    for _ in range(tries):
        page.locator('[data-testid="run-button"]').last.click(timeout=60_000)
        try:
            shown.wait_for(state="visible", timeout=30_000)
            return
        except PlaywrightTimeout:
            continue


def test_click_a_head_in_marimo_and_read_the_ablation_in_python(marimo_app, page, artifacts):
    page.goto(marimo_app.url)
    root = page.locator('.cv-root[data-view="patching"]')
    cell = root.locator('[data-component="L1H0"]')
    if marimo_app.mode == "edit":
        run_all(page, cell)
    cell.wait_for(state="visible", timeout=180_000)
    # The baseline has run once its clean metric is shown; nothing is ablated yet (None).
    before = marimo_app.read(lambda out: out.get("metric_clean") is not None)
    assert before["ablated"] == [] and before["components"] == []
    assert before["metric_ablated"] is None

    cell.click()
    # Two updates reach Python separately, each rerunning the read-back cell: the selection
    # (a UI change, `view.value`) and the ablation (kernel-side, through `mo.state`).
    after = marimo_app.read(lambda out: out["components"] == ["L1H0"] and out["selected"] == "L1H0")
    assert after["ablated"] == ["L1H0"]
    model = cv.tiny_model("llama")  # the notebook's model: same seed, same weights
    pairs = cv.PromptPairs.from_dict(after["pairs"])
    expected = cv.ablate(model, pairs, heads=["L1H0"])
    assert after["metric_ablated"] == pytest.approx(expected.ablated, abs=1e-5)
    assert after["metric_ablated"] != pytest.approx(before["metric_clean"], abs=1e-6)
    shown = root.locator('[data-role="metric-ablated"]')
    assert float(shown.get_attribute("data-value")) == pytest.approx(expected.ablated, abs=1e-5)
    assert cell.get_attribute("data-ablated") == "true"
    readback = page.locator('[data-testid="cv-readback"]')
    readback.filter(has_text='"components": ["L1H0"]').wait_for(timeout=30_000)

    root.locator('[data-component="L0H1"]').click(modifiers=["Shift"])
    both = marimo_app.read(lambda out: out["components"] == ["L0H1", "L1H0"])
    expected = cv.ablate(model, pairs, heads=["L0H1", "L1H0"])
    assert both["metric_ablated"] == pytest.approx(expected.ablated, abs=1e-5)
    page.mouse.move(5, 5)  # no tooltip over the screenshot
    page.wait_for_timeout(300)
    page.screenshot(path=str(artifacts / f"marimo_{marimo_app.mode}.png"), full_page=True)

    root.locator('[data-role="reset"]').click()
    marimo_app.read(lambda out: out["components"] == [])
    assert page.console_errors == [], page.console_errors
    assert page.dialogs == []


def test_explore_shows_its_three_linked_views_in_marimo(tmp_path, page, artifacts):
    """marimo has no ipywidgets boxes: ``Explorer._display_`` lays the views out with marimo's
    stacks, and a click in the patching map still ablates in the circuit view too."""
    with served(EXPLORE_APP, tmp_path, "run") as server:
        page.goto(server.url)
        patching = page.locator('.cv-root[data-view="patching"]')
        circuit = page.locator('.cv-root[data-view="circuit"]')
        patching.locator('[data-component="L1H0"]').wait_for(state="visible", timeout=180_000)
        page.locator('.cv-root[data-view="attention"]').wait_for(state="visible")
        circuit.locator('[data-component="L1H0"]').wait_for(state="visible")
        patching.locator('[data-component="L1H0"]').click()
        # The circuit redraws its nodes on an update: wait on a selector, not an element.
        circuit.locator('[data-component="L1H0"][data-ablated="true"]').wait_for(timeout=60_000)
        value = circuit.locator('[data-role="metric-ablated"]').get_attribute("data-value")
        model = cv.tiny_model("llama")
        pairs = cv.PromptPairs(["t1 t2 t3 t4 t1 t2"], ["t5 t6 t7 t8 t5 t6"], [" t3"], [" t7"])
        assert float(value) == pytest.approx(cv.ablate(model, pairs, heads=["L1H0"]).ablated)
        assert "Jupyter widgets are not supported" not in page.locator("body").inner_text()
        page.mouse.move(5, 5)
        page.screenshot(path=str(artifacts / "marimo_explore.png"), full_page=True)
        circuit.screenshot(path=str(artifacts / "marimo_explore_circuit.png"))  # below the fold
        assert page.console_errors == [], page.console_errors
