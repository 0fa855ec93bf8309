"""A marimo notebook for tests/test_marimo.py: a PatchingView on the tiny Llama model,
wrapped with ``mo.ui.anywidget``, and a downstream cell that reads the ablation back.

Run it yourself: ``marimo edit tests/marimo/patching_app.py`` (or ``marimo run``).
``CIRCUITVIZ_MARIMO_OUT`` (optional): a file the read-back cell writes as JSON, so a test
can check the Python side without scraping the page.
"""

import marimo

app = marimo.App(width="full")


@app.cell
def _():
    import html
    import json
    import os

    import marimo as mo

    import circuitviz as cv

    return cv, html, json, mo, os


@app.cell
def _(cv, mo):
    model = cv.tiny_model("llama")
    pairs = cv.PromptPairs(["t1 t2 t3 t4 t1 t2"], ["t5 t6 t7 t8 t5 t6"], [" t3"], [" t7"])
    heads = cv.patch(model, pairs, over="heads", progress=False)
    view = mo.ui.anywidget(cv.PatchingView(heads, model=model, pairs=pairs))
    view  # noqa: B018 (the cell's last expression is what marimo displays)
    return pairs, view


@app.cell
def _(mo, view):
    # A click's ablation is computed in the kernel (a custom message, then the `result`
    # trait), which marimo does not treat as a UI change; a state setter makes it one.
    get_result, set_result = mo.state(dict(view.widget.result))
    view.widget.observe(lambda change: set_result(dict(change["new"])), names="result")
    return (get_result,)


@app.cell
def _(get_result, html, json, mo, os, pairs, view):
    # Reruns whenever the ablation changes (get_result) or the widget's state does (view.value).
    result = get_result()
    readback = {
        "selected": view.value.get("selected"),
        "ablated": list(view.widget.ablated),
        "components": result.get("components"),
        "metric_ablated": result.get("ablated"),
        "metric_clean": result.get("clean"),
        "pairs": pairs.to_dict(),  # so a test can redo the ablation itself
    }
    if os.environ.get("CIRCUITVIZ_MARIMO_OUT"):
        with open(os.environ["CIRCUITVIZ_MARIMO_OUT"], "w") as f:
            json.dump(readback, f)
    shown = json.dumps({k: v for k, v in readback.items() if k != "pairs"})
    mo.Html(
        f'<p data-testid="cv-readback"><b>Python side:</b> <code>{html.escape(shown)}</code></p>'
    )
    return


if __name__ == "__main__":
    app.run()
