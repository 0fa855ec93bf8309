"""A marimo notebook for tests/test_marimo.py: ``explore()`` on the tiny Llama model.

marimo draws anywidgets but not ipywidgets boxes, so the Explorer shows its three views
through marimo's own layout (``Explorer._display_``); they stay linked in the kernel.
"""

import marimo

app = marimo.App(width="full")


@app.cell
def _():
    import circuitviz as cv

    model = cv.tiny_model("llama")
    pairs = cv.PromptPairs(["t1 t2 t3 t4 t1 t2"], ["t5 t6 t7 t8 t5 t6"], [" t3"], [" t7"])
    box = cv.explore(model, pairs, progress=False)
    box  # noqa: B018 (the cell's last expression is what marimo displays)
    return


if __name__ == "__main__":
    app.run()
