"""Progress where people wait, and clean interrupts: ``explore()`` and the CLI's ``figure``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from ipywidgets.widgets import widget as widget_module

from circuitviz import explore
from circuitviz.cli import main
from circuitviz.engine import has_hooks
from circuitviz.views import _explore

ROOT = Path(__file__).resolve().parents[1]


def logits(model, pairs) -> torch.Tensor:
    with torch.inference_mode():
        return model(model.to_tokens(pairs.clean[0]))


def open_widgets() -> set[str]:
    return set(widget_module._instances)


# ----------------------------------------------------------------------------- explore()


def test_explore_names_each_step_on_its_progress_bar(tiny_llama, tiny_pairs, capfd):
    box = explore(tiny_llama, tiny_pairs, progress=True)
    err = capfd.readouterr().err
    for step in _explore.EXPLORE_STEPS:
        assert f"explore: {step}" in err, (step, err[-500:])
    assert "patching heads" in err  # the long step's own bar, passed through
    assert all(view.comm is not None for view in box.views)  # all three built and open
    box.close()
    explore(tiny_llama, tiny_pairs, progress=False).close()
    assert "explore" not in capfd.readouterr().err


@pytest.mark.slow
def test_explore_shows_a_widget_bar_in_a_notebook_kernel():
    """In a real kernel ``tqdm.auto`` is the notebook bar: a progress widget is displayed
    before the explorer, and its label names the steps."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    source = """import circuitviz as cv
model = cv.tiny_model("llama")
pairs = cv.PromptPairs(["t1 t2 t3 t4 t1 t2"], ["t5 t6 t7 t8 t5 t6"], [" t3"], [" t7"])
cv.explore(model, pairs)"""
    nb.cells = [nbformat.v4.new_code_cell(source)]
    NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=True).execute()
    views = [
        o
        for o in nb.cells[0].outputs
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    texts = [o["data"]["text/plain"] for o in views]
    assert texts[0].startswith("explore: 0/4 steps"), texts
    assert any(t.startswith("patching heads") for t in texts[1:-1]), texts  # the inner bar
    assert texts[-1].startswith("Explorer("), texts
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]["state"]
    labels = [m["state"].get("value", "") for m in state.values() if m["model_name"] == "HTMLModel"]
    # the label names the step (tqdm may close the bar before its last refresh is stored)
    assert any("explore:\u2007views:" in label for label in labels), labels


class Interrupt:
    """A raw torch forward hook (not circuitviz's) that raises KeyboardInterrupt on its n-th
    call, as Ctrl-C would in the middle of a forward pass with circuitviz's hooks attached."""

    def __init__(self, module: torch.nn.Module, at_call: int):
        self.calls, self.at_call = 0, at_call
        self.handle = module.register_forward_hook(self)

    def __call__(self, *_: object) -> None:
        self.calls += 1
        if self.calls == self.at_call:
            raise KeyboardInterrupt

    def remove(self) -> None:
        self.handle.remove()


@pytest.mark.parametrize("step", ["patch", "circuit"])  # exact patching; the EAP graph
def test_interrupting_explore_mid_forward_pass_leaves_no_hooks(
    tiny_llama, tiny_pairs, monkeypatch, step
):
    """Ctrl-C inside a step's second forward pass (its hooks attached)."""
    before = logits(tiny_llama, tiny_pairs)
    widgets_before = open_widgets()
    real, interrupts = getattr(_explore, step), []

    def interrupted_inside(*args, **kwargs):
        interrupts.append(Interrupt(tiny_llama.blocks[1], at_call=2))
        return real(*args, **kwargs)

    monkeypatch.setattr(_explore, step, interrupted_inside)
    try:
        with pytest.raises(KeyboardInterrupt):
            explore(tiny_llama, tiny_pairs, progress=False)
    finally:
        for interrupt in interrupts:
            interrupt.remove()
    assert [i.calls for i in interrupts] == [2]
    assert not has_hooks(tiny_llama)
    assert torch.equal(logits(tiny_llama, tiny_pairs), before)
    assert open_widgets() == widgets_before


def test_interrupting_the_views_step_closes_the_views_already_built(
    tiny_llama, tiny_pairs, monkeypatch
):
    built = []

    def recording(cls):
        def make(*args, **kwargs):
            built.append(cls(*args, **kwargs))
            return built[-1]

        return make

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_explore, "PatchingView", recording(_explore.PatchingView))
    monkeypatch.setattr(_explore, "AttentionView", recording(_explore.AttentionView))
    monkeypatch.setattr(_explore, "CircuitView", interrupted)
    widgets_before = open_widgets()
    with pytest.raises(KeyboardInterrupt):
        explore(tiny_llama, tiny_pairs, progress=True)
    assert len(built) == 2 and all(view.comm is None for view in built)  # closed, not dead
    assert open_widgets() == widgets_before
    assert not has_hooks(tiny_llama)


# ----------------------------------------------------------------------------- CLI


def test_cli_figure_shows_progress_on_stderr_only(tmp_path, capfd):
    out = tmp_path / "patch.html"
    argv = ["figure", "--model", "tiny-llama", "--analysis", "patch", "-o", str(out)]
    assert main([*argv, "--progress"]) == 0
    captured = capfd.readouterr()
    assert captured.out.strip() == str(out)  # stdout stays the list of written files
    for step in ("loading the model", "building the prompts", "patch", "writing"):
        assert f"figure: {step}" in captured.err, step
    assert "patching heads" in captured.err
    assert main([*argv, "--no-progress"]) == 0
    assert capfd.readouterr().err == ""
    assert main(argv) == 0  # default: progress only when stderr is a terminal (not here)
    assert capfd.readouterr().err == ""


@pytest.mark.parametrize("where", ["run_analysis", "save_many"])
def test_cli_interrupt_exits_130_with_one_line_and_no_partial_file(
    where, tmp_path, capfd, monkeypatch
):
    from circuitviz import cli
    from circuitviz.export import _static

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(cli if where == "run_analysis" else _static, where, interrupted)
    outputs = [tmp_path / "a.svg", tmp_path / "b.html"]
    argv = ["figure", "--model", "tiny-llama", "--progress", *(f"-o{p}" for p in outputs)]
    assert main(argv) == 130
    captured = capfd.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("circuitviz:")]
    assert lines == ["circuitviz: interrupted; no file written."]
    assert "Traceback" not in captured.err and captured.out == ""
    assert list(tmp_path.iterdir()) == []  # not even a temp file


def test_cli_interrupt_after_one_of_several_outputs_names_what_was_written(
    tmp_path, capfd, monkeypatch
):
    from circuitviz.export import _static

    real = _static.write_atomically
    calls = []

    def second_interrupted(target, write):
        calls.append(target)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real(target, write)

    monkeypatch.setattr(_static, "write_atomically", second_interrupted)
    first, second = tmp_path / "a.html", tmp_path / "b.html"
    assert main(["figure", "--model", "tiny-llama", "-o", str(first), "-o", str(second)]) == 130
    err = capfd.readouterr().err
    assert f"circuitviz: interrupted; only {first} written, the other outputs not." in err
    assert sorted(tmp_path.iterdir()) == [first]


@pytest.mark.demo
@pytest.mark.slow
def test_ctrl_c_on_a_real_cli_run(tmp_path):
    """SIGINT to ``python -m circuitviz figure`` on the demo model while the circuit is being
    computed: status 130, one line on stderr, no traceback, no output or temp file."""
    out = tmp_path / "circuit.svg"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "circuitviz", "figure", "--analysis", "circuit", "--progress"]
    # 64 pairs: the circuit takes many seconds even on a quiet machine (with the default 8 it
    # once finished inside the second this test waits before interrupting it)
    cmd += ["--n", "64", "-o", str(out)]
    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    seen = ""
    deadline = time.monotonic() + 300
    while "figure: circuit" not in seen and time.monotonic() < deadline:
        char = proc.stderr.read(1)
        if not char:
            break
        seen += char
    assert "figure: circuit" in seen, seen
    time.sleep(1.0)  # inside the analysis now
    proc.send_signal(signal.SIGINT)
    stdout, rest = proc.communicate(timeout=120)
    err = seen + rest
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err
    assert err.rstrip().splitlines()[-1].endswith("circuitviz: interrupted; no file written.")
    assert stdout == "" and list(tmp_path.iterdir()) == []
