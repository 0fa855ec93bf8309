"""Standalone HTML: a view's bundled JS, its state and binary buffers in one file, no kernel.

A small shim implements the anywidget model interface (``get``, ``set``, ``on``, ``off``,
``send``, ``save_changes``) over the embedded state, so the view's own ``render`` runs
unchanged: hover, thresholds and head selection work; requests the kernel would answer
(a layer's attention patterns) are replayed from embedded replies. Ablation is off: the state
gets ``standalone`` (the notice, shown once above the ablation panel) and ``can_ablate`` false,
so the views leave the ablation controls out and clicks only select.

Everything embedded is JSON inside ``<script type="application/json">`` with ``<``, ``>`` and
``&`` escaped as ``\\u003c``…, so no token (``</script>``, ``<img onerror=…>``) can end the
script block or become markup; the views only ever write data as text nodes.
"""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path
from typing import Any

STATIC = Path(__file__).parent.parent / "static"
KERNEL_NOTICE = (
    "Ablation needs a live Python kernel: this is a standalone HTML export. Open the view in "
    "Jupyter to ablate components; hover, selection and export work here."
)

SHIM = r"""
const KERNEL_NOTICE = %(notice)s;
const read = (id) => JSON.parse(document.getElementById(id).textContent);
function bytes(b64) {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return new DataView(out.buffer);
}
function restore(state, paths, buffers) {
  paths.forEach((path, i) => {
    let obj = state;
    for (const key of path.slice(0, -1)) obj = obj[key];
    obj[path[path.length - 1]] = bytes(buffers[i]);
  });
  return state;
}
function matches(match, msg) {
  return Object.entries(match).every(([k, v]) => msg[k] === v);
}
class ShimModel {
  constructor(spec) {
    this.state = restore(spec.state, spec.buffer_paths, spec.buffers);
    this.replies = spec.replies;
    this.listeners = new Map();
    this.linked = [];
  }
  get(key) { return this.state[key]; }
  set(key, value) {
    if (this.state[key] === value) return;
    this.state[key] = value;
    this.emit("change:" + key, value);
    for (const [other, name] of this.linked) if (name === key) other.set(key, value);
  }
  on(event, cb) {
    for (const name of event.split(" ")) {
      if (!this.listeners.has(name)) this.listeners.set(name, new Set());
      this.listeners.get(name).add(cb);
    }
  }
  off(event, cb) {
    if (!event) { this.listeners.clear(); return; }
    if (!cb) { this.listeners.delete(event); return; }
    this.listeners.get(event)?.delete(cb);
  }
  emit(event, ...args) { for (const cb of [...(this.listeners.get(event) ?? [])]) cb(...args); }
  save_changes() {}
  send(msg) {
    const reply = (content, buffers = []) => setTimeout(() => this.emit("msg:custom", content, buffers), 0);
    if (msg && msg.type === "ablate") {
      reply({ type: "error", request: msg.request, message: KERNEL_NOTICE });
      return;
    }
    for (const r of this.replies) {
      if (!matches(r.match, msg)) continue;
      for (const [content, buffers] of r.messages) reply(content, buffers.map(bytes));
      return;
    }
  }
}
const modules = new Map();
async function load(name) {
  if (!modules.has(name)) {
    const code = read("cv-js-" + name);
    const url = URL.createObjectURL(new Blob([code], { type: "text/javascript" }));
    modules.set(name, import(url).then((m) => m.default));
  }
  return modules.get(name);
}
const specs = read("cv-views");
const models = specs.map((s) => new ShimModel(s));
for (const [a, b, key] of read("cv-links")) {
  models[a].linked.push([models[b], key]);
  models[b].linked.push([models[a], key]);
}
for (let i = 0; i < specs.length; i++) {
  const el = document.getElementById("cv-view-" + i);
  try {
    const widget = await load(specs[i].module);
    await widget.render({ model: models[i], el });
  } catch (err) {
    el.textContent = "circuitviz: could not render this view: " + err;
  }
}
"""


def script_json(data: Any) -> str:
    """JSON safe inside a <script> element: no '<', '>' or '&' survive literally."""
    text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    return (
        text.replace("<", "\\u003c")
        .replace(">", "\\u003e")
        .replace("&", "\\u0026")
        .replace("\u2028", "\\u2028")
        .replace("\u2029", "\\u2029")
    )


def as_views(obj: Any) -> tuple[list[Any], list[tuple[int, int, str]]]:
    """The widget(s) to embed for ``obj``, and the traits linked between them."""
    from ..engine import AttentionResult, LogitLensResult, PatchResult
    from ..views import (
        AttentionView,
        CircuitView,
        Explorer,
        FeatureView,
        LogitLensView,
        PatchingView,
        SteeringView,
    )

    if isinstance(obj, Explorer):
        return [obj.patching, obj.attention, obj.circuit], [(0, 1, "selected"), (0, 2, "selected")]
    if isinstance(
        obj, (AttentionView, PatchingView, CircuitView, LogitLensView, FeatureView, SteeringView)
    ):
        return [obj], []
    if isinstance(obj, LogitLensResult):
        return [LogitLensView(obj)], []
    if isinstance(obj, PatchResult):
        return [PatchingView(obj)], []
    if isinstance(obj, AttentionResult):
        return [AttentionView(obj)], []
    if hasattr(obj, "to_json") or isinstance(obj, (dict, str, Path)):
        return [CircuitView(graph=obj)], []
    raise TypeError(
        f"write_html cannot show a {type(obj).__name__}: pass a view, PatchResult, "
        "AttentionResult, LogitLensResult, Graph or graph JSON."
    )


def view_spec(view: Any) -> dict[str, Any]:
    """The view's synced state with buffers pulled out (base64), and its static replies."""
    from ipywidgets.widgets.widget import _remove_buffers

    base = {"layout", "tabbable", "tooltip", "comm", "keys", "log"}
    names = [n for n in view.trait_names(sync=True) if not n.startswith("_") and n not in base]
    state, paths, buffers = _remove_buffers(view.get_state(names))
    if "can_ablate" in state:
        state["can_ablate"] = False
        state["standalone"] = KERNEL_NOTICE
    replies = []
    if hasattr(view, "static_replies"):
        for r in view.static_replies():
            msgs = [
                [c, [base64.b64encode(bytes(b)).decode() for b in bufs]]
                for c, bufs in r["messages"]
            ]
            replies.append({"match": r["match"], "messages": msgs})
    return {
        "module": view.BUNDLE,
        "state": state,
        "buffer_paths": paths,
        "buffers": [base64.b64encode(bytes(b)).decode() for b in buffers],
        "replies": replies,
    }


def render_html(obj: Any, *, title: str = "circuitviz") -> str:
    """The standalone page for ``obj`` as a string (see :func:`write_html`)."""
    views, links = as_views(obj)
    specs = [view_spec(v) for v in views]
    modules = sorted({s["module"] for s in specs})
    js = [
        f'<script type="application/json" id="cv-js-{m}">'
        f"{script_json((STATIC / f'{m}.js').read_text(encoding='utf-8'))}</script>"
        for m in modules
    ]
    divs = "\n".join(
        f'<div id="cv-view-{i}" class="cv-standalone"></div>' for i in range(len(views))
    )
    shim = SHIM % {"notice": json.dumps(KERNEL_NOTICE)}
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="circuitviz">
<title>{html.escape(title)}</title>
<style>body{{margin:16px;background:#fff}} .cv-standalone{{margin-bottom:24px}}</style>
</head>
<body>
{divs}
{"".join(js)}
<script type="application/json" id="cv-views">{script_json(specs)}</script>
<script type="application/json" id="cv-links">{script_json(links)}</script>
<script type="module">{shim}</script>
</body>
</html>
"""


def write_html(obj: Any, path: str | Path, *, title: str = "circuitviz") -> Path:
    """Write ``obj`` (a view, ``explore(...)``, PatchResult, AttentionResult, Graph or graph
    JSON) as one self-contained HTML file that works offline, without a kernel."""
    path = Path(path)
    path.write_text(render_html(obj, title=title), encoding="utf-8")
    return path


__all__ = ["render_html", "write_html"]
