"""``explore(model, pairs)``: attention, patching and circuit views with a linked selection."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import traitlets

from .._progress import Steps
from ..engine import PromptPairs, attention, circuit, patch
from ._attention import AttentionView
from ._circuit import CircuitView
from ._patching import PatchingView


class Explorer(widgets.VBox):
    """The three views in one box; selecting a head in any of them selects it in all."""

    def __init__(self, attention: AttentionView, patching: PatchingView, circuit: CircuitView):
        self.attention = attention
        self.patching = patching
        self.circuit = circuit
        # Kernel-side links: they also keep view.selected right for Python readers.
        self._links = [
            traitlets.link((patching, "selected"), (attention, "selected")),
            traitlets.link((patching, "selected"), (circuit, "selected")),
        ]
        # One ablation set for the whole explorer: a click in either view shows in both.
        self._sharing = False
        for view in (patching, circuit):
            view.observe(self._share_ablation, names="result")
        row = widgets.HBox([patching, attention], layout=widgets.Layout(flex_flow="row wrap"))
        super().__init__([row, circuit])

    def _share_ablation(self, change: Any) -> None:
        source = change.owner
        if self._sharing or source.ablation is None:
            return
        self._sharing = True
        try:
            for view in (self.patching, self.circuit):
                if view is not source and view.can_ablate:
                    view.show_ablation(source.ablation, mode=source.mode, metric=source.metric)
        finally:
            self._sharing = False

    def _display_(self) -> Any:
        """marimo's display hook (Jupyter ignores it): marimo draws anywidgets but not
        ipywidgets boxes, so show the three views, still linked in the kernel, in its layout."""
        import marimo as mo

        top = mo.hstack(
            [mo.ui.anywidget(self.patching), mo.ui.anywidget(self.attention)], wrap=True
        )
        return mo.vstack([top, mo.ui.anywidget(self.circuit)])

    @property
    def views(self) -> list[Any]:
        return [self.attention, self.patching, self.circuit]

    def save(self, path: str | os.PathLike) -> Path:
        """Write the three views, still linked, as one standalone ``.html`` page (no kernel).
        For a figure, save one view: ``box.circuit.save("circuit.svg")``."""
        from ..export import ExportError, save
        from ..export._static import export_format

        if export_format(path) != "html":
            raise ExportError(
                f"explore() saves as one .html page, not {Path(path).suffix}: for a figure, "
                "save one of its views, e.g. box.patching.save('map.svg')."
            )
        return save(self, path)


EXPLORE_STEPS = ("exact head patching", "attention", "attribution graph", "views")


def explore(
    model: Any,
    pairs: PromptPairs,
    *,
    graph: Any = None,
    metric: str = "logit_diff",
    prompt: str | None = None,
    progress: bool = True,
) -> Explorer:
    """Attention (on ``prompt``, default ``pairs.clean[0]``), exact head patching, and the circuit
    graph (``graph``, else ``circuitviz.circuit``'s EAP graph), linked by the selected component.

    The selection (``.selected``) and the ablation set (``.ablated``, ``.result``) are shared:
    a click in the patching map or the circuit shows its ablation in both.

    ``progress`` shows one bar naming the running step (a widget in a notebook), with the
    long steps' own bars under it. Interrupting (Ctrl-C, the notebook's stop button) leaves
    no hooks on the model and no half-built widgets: the views made so far are closed."""
    built: list[widgets.Widget] = []
    try:
        with Steps("explore", EXPLORE_STEPS, enabled=progress) as steps:
            steps.start("exact head patching")
            heads = patch(model, pairs, over="heads", metric=metric, progress=progress)
            steps.start("attention")
            shown = prompt if prompt is not None else pairs.clean[0]
            patterns = attention(model, shown, prepend_bos=pairs.prepend_bos)
            steps.start("attribution graph")
            if graph is None:
                graph = circuit(model, pairs, metric=metric, progress=progress)
            steps.start("views")
            patching = PatchingView(heads, model=model, pairs=pairs)
            built.append(patching)
            attention_view = AttentionView(patterns)
            built.append(attention_view)
            circuit_view = CircuitView(model, pairs, graph, metric=metric)
            built.append(circuit_view)
            patching.selected = attention_view.selected
            return Explorer(attention_view, patching, circuit_view)
    except BaseException:
        for view in built:  # no widget outlives a failed or interrupted explore()
            view.layout.close()  # each DOMWidget owns a Layout widget, which close() keeps
            view.close()
        raise
