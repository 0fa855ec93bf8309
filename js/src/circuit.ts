// CircuitView: an attribution graph as SVG (≤ a few hundred nodes), pan/zoom, top-n and edge
// threshold controls, click-to-ablate with the shared side panel, and faithfulness readouts.
import { AblationPanel } from "./ablation";
import { decode } from "./codec";
import { NEGATIVE, NODE_COLORS, POSITIVE } from "./colors";
import { clear, el, fmt, root, setText, truncate } from "./dom";
import { exportButtons, svgEl } from "./export";
import { edgePath, layoutGraph, prune, type EdgeList } from "./layout";
import type { AnyModel, CircuitTraits, GraphNode } from "./types";

const ABLATABLE = new Set(["head", "mlp"]);

function render({ model, el: host }: { model: AnyModel<CircuitTraits>; el: HTMLElement }) {
  const rootEl = root(host, "circuit");
  const info = el("div", { class: "cv-muted", "data-role": "hover-info" }, "hover a node or edge");
  const panel = new AblationPanel(model, rootEl, () => draw());
  const faith = el("table", { class: "cv-faith" });
  const faithButton = el("button", { class: "cv-button", "data-role": "faithfulness-run", type: "button", title: "Exact faithfulness of the shown circuit, with and without your ablations (one forward pass each)" }, "Faithfulness");
  faithButton.addEventListener("click", () => requestFaithfulness());
  panel.extra.append(faith);
  const topN = el("input", { type: "range", min: 1, step: 1, "data-role": "top-n" });
  const topNLabel = el("span", { "data-role": "top-n-value" });
  const threshold = el("input", { type: "range", min: 0, max: 1, step: 0.01, "data-role": "threshold" });
  const thresholdLabel = el("span", { "data-role": "threshold-value" });
  const fit = el("button", { class: "cv-button", "data-role": "fit", type: "button" }, "Fit");
  const title = el("span", { class: "cv-title", "data-role": "title" });
  const svg = svgEl("svg", { class: "cv-graph", width: 720, height: 560, style: "border:1px solid #eee;cursor:grab;background:#fff" });
  const viewport = svgEl("g", { class: "cv-viewport" });
  const edgeLayer = svgEl("g", { class: "cv-edges" });
  const nodeLayer = svgEl("g", { class: "cv-nodes" });
  viewport.append(edgeLayer, nodeLayer);
  svg.append(viewport);
  const onError = (e: unknown) => setText(panel.error, String(e));
  rootEl.append(
    el(
      "div",
      { class: "cv-toolbar" },
      title,
      el("label", { title: "Nodes kept, by |score| (embeddings and logits always)" }, "top nodes ", topN, topNLabel),
      el("label", { title: "Hide edges below this fraction of the strongest" }, "edge threshold ", threshold, thresholdLabel),
      fit,
      ...exportButtons("circuit", () => exportSVG(), onError),
    ),
    el("div", { class: "cv-row" }, el("div", { class: "cv-main" }, svg, info, legend()), panel.el),
  );

  let nodes: GraphNode[] = [];
  let edges: (EdgeList & { input: ArrayLike<number>; inputs: string[] }) | null = null;
  let layout = layoutGraph([], { nLayers: 0, nHeads: 0 });
  const view = { k: 1, x: 0, y: 0 };

  function load(): void {
    const g = model.get("graph");
    nodes = g.nodes ?? [];
    edges = g.edges
      ? {
          source: decode(g.edges.source).data,
          target: decode(g.edges.target).data,
          weight: decode(g.edges.weight).data,
          input: decode(g.edges.input).data,
          inputs: g.edges.inputs,
        }
      : null;
    const ranked = nodes.filter((n) => n.type !== "embed" && n.type !== "logits").length;
    topN.max = String(Math.max(1, ranked));
    setText(title, `${g.method ?? "circuit"} graph · ${g.model ?? ""} · ${g.metric ?? ""}`);
    laidOut = "";
    draw();
  }

  /** Lay out the shown nodes only (compact rows) and refit when that set changes — not on
   * ablation or selection, so clicking never moves the picture. */
  let laidOut = "";
  function relayout(shown: GraphNode[]): void {
    const key = shown.map((n) => n.id).join(",");
    if (key === laidOut) return;
    laidOut = key;
    const g = model.get("graph");
    layout = layoutGraph(shown, { nLayers: g.n_layers, nHeads: g.n_heads, perPosition: !!g.per_position, nPos: g.tokens?.length, compact: true });
    fitView();
  }

  function fitView(): void {
    const w = Number(svg.getAttribute("width"));
    const h = Number(svg.getAttribute("height"));
    view.k = Math.min(w / layout.width, h / layout.height, 1.6);
    view.x = (w - layout.width * view.k) / 2;
    view.y = (h - layout.height * view.k) / 2;
    applyView();
  }

  function applyView(): void {
    viewport.setAttribute("transform", `translate(${view.x},${view.y}) scale(${view.k})`);
  }

  function pruned() {
    return prune(nodes, edges, { topN: model.get("top_n"), threshold: model.get("threshold"), pinned: model.get("pinned") });
  }

  function draw(): void {
    topN.value = String(model.get("top_n"));
    setText(topNLabel, String(model.get("top_n")));
    threshold.value = String(model.get("threshold"));
    setText(thresholdLabel, model.get("threshold").toFixed(2));
    const p = pruned();
    relayout([...p.nodes].sort((a, b) => a - b).map((i) => nodes[i]));
    const ablated = new Set(panel.current());
    const pinned = new Set(model.get("pinned"));
    const selected = model.get("selected");
    clear(edgeLayer);
    clear(nodeLayer);
    if (edges) {
      for (const e of [...p.edges].reverse()) {
        const a = layout.positions.get(nodes[edges.source[e]].id)!;
        const b = layout.positions.get(nodes[edges.target[e]].id)!;
        const w = edges.weight[e];
        const rel = Math.abs(w) / (p.maxWeight || 1);
        const path = svgEl("path", { d: edgePath(a, b), fill: "none", stroke: w >= 0 ? POSITIVE : NEGATIVE, "stroke-width": 0.5 + 4 * rel, "stroke-opacity": 0.25 + 0.6 * rel, "data-edge": `${nodes[edges.source[e]].id}->${nodes[edges.target[e]].id}` });
        path.addEventListener("mouseenter", () => setText(info, `${nodes[edges!.source[e]].id} → ${nodes[edges!.target[e]].id} (${edges!.inputs[edges!.input[e]] ?? ""}): weight ${fmt(w, 5)}`));
        edgeLayer.append(path);
      }
    }
    const maxScore = Math.max(1e-12, ...nodes.map((n) => Math.abs(n.score ?? 0)));
    for (const i of p.nodes) {
      const n = nodes[i];
      const pt = layout.positions.get(n.id)!;
      const r = n.type === "embed" || n.type === "logits" ? 8 : 4 + 7 * Math.sqrt(Math.abs(n.score ?? 0) / maxScore);
      const isAbl = ablated.has(n.id.replace(/:P\d+$/, "")); // per-position nodes ablate their whole head/MLP
      const g = svgEl("g", {
        class: "cv-node",
        transform: `translate(${pt.x},${pt.y})`,
        "data-component": n.id,
        "data-type": n.type,
        "data-ablated": String(isAbl),
        "data-selected": String(selected === n.id),
        "data-pinned": String(pinned.has(n.id)),
        style: "cursor:pointer",
        tabindex: 0,
        role: "button",
        "aria-label": `${n.id} (${n.type})`,
      });
      const shape = n.type === "mlp" ? svgEl("rect", { x: -r, y: -r, width: 2 * r, height: 2 * r, rx: 2 }) : svgEl("circle", { r });
      shape.setAttribute("fill", isAbl ? "#fff" : NODE_COLORS[n.type] ?? "#777");
      // The ring shows the score's sign; the fill shows the node type.
      const ring = (n.score ?? 0) >= 0 ? POSITIVE : NEGATIVE;
      shape.setAttribute("stroke", selected === n.id ? "#000" : isAbl ? "#333" : n.score ? ring : "#fff");
      shape.setAttribute("stroke-width", selected === n.id ? "2.5" : "1.2");
      if (isAbl) shape.setAttribute("stroke-dasharray", "2 1.5");
      g.append(shape);
      if (isAbl) g.append(svgEl("path", { d: `M${-r * 0.6},${-r * 0.6}L${r * 0.6},${r * 0.6}M${r * 0.6},${-r * 0.6}L${-r * 0.6},${r * 0.6}`, stroke: "#333", "stroke-width": 1.5 }));
      if (pinned.has(n.id)) g.append(svgEl("circle", { r: 2, cx: r, cy: -r, fill: "#333" }));
      // Per-position nodes name only the component; the token is on the axis below.
      const text = n.pos !== null && n.pos !== undefined ? n.id.replace(/:P\d+$/, "") : (n.label ?? n.id);
      g.append(svgEl("text", { y: r + 9, "text-anchor": "middle", "font-size": n.pos != null ? 6 : 8, fill: "#333", "pointer-events": "none" }, text));
      g.addEventListener("mouseenter", () => spotlight(n.id));
      g.addEventListener("mouseleave", () => spotlight(null));
      g.addEventListener("mouseenter", () => setText(info, `${n.id} · ${n.type}${n.pos !== null && n.pos !== undefined ? ` · pos ${n.pos}` : ""} · score ${fmt(n.score ?? NaN, 5)}${ABLATABLE.has(n.type) ? " · click: ablate only this · shift-click: add/remove · alt-click: pin" : ""}`));
      g.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          g.dispatchEvent(new MouseEvent("click", { shiftKey: ev.shiftKey, altKey: ev.altKey }));
        }
      });
      g.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (ev.altKey) return togglePin(n.id);
        model.set("selected", n.id);
        model.save_changes();
        if (ABLATABLE.has(n.type) && model.get("can_ablate")) panel.click(n.id.replace(/:P\d+$/, ""), ev.shiftKey);
        else draw();
      });
      nodeLayer.append(g);
    }
    const tokens = model.get("graph").tokens ?? [];
    for (const b of layout.bands) {
      nodeLayer.append(svgEl("text", { x: b.x, y: layout.height - 8, "text-anchor": "middle", "font-size": 9, fill: "#555", "data-role": "band-label" }, `${b.pos}: ${truncate(tokens[b.pos] ?? "", 14)}`));
    }
    drawFaithfulness();
  }

  /** Hovering a node dims every edge that does not touch it. */
  function spotlight(id: string | null): void {
    for (const path of edgeLayer.querySelectorAll<SVGPathElement>("path[data-edge]")) {
      const [a, b] = (path.getAttribute("data-edge") ?? "").split("->");
      const on = id === null || a === id || b === id;
      path.style.opacity = on ? "" : "0.08";
    }
  }

  function togglePin(id: string): void {
    const pins = model.get("pinned");
    model.set("pinned", pins.includes(id) ? pins.filter((p) => p !== id) : [...pins, id]);
    model.save_changes();
  }

  function shownIds(): string[] {
    return [...pruned().nodes].map((i) => nodes[i].id);
  }

  /** Faithfulness is live: whenever the shown circuit or the ablation set changes, the last
   * values are marked stale and recomputed after a short pause (one request in flight at a
   * time; a request that failed is not retried until something changes or the button is
   * pressed). */
  let faithInFlight = "";
  let faithFailed = "";
  let faithTimer: ReturnType<typeof setTimeout> | undefined;
  const faithKey = () => JSON.stringify([shownIds(), panel.current()]);

  function drawFaithfulness(): void {
    clear(faith);
    if (!model.get("has_faithfulness")) return;
    const f = model.get("faithfulness") ?? {};
    const same = (a: string[] | undefined, b: string[]) => !!a && a.length === b.length && a.every((x, i) => x === b[i]);
    const shown = shownIds();
    const ablatedShown = shown.filter((id) => panel.current().includes(id.replace(/:P\d+$/, "")) && ABLATABLE.has(nodes.find((n) => n.id === id)?.type ?? ""));
    const stale = f.circuit === undefined || !same(f.nodes, shown) || !same(f.ablated_nodes, ablatedShown);
    const status = faithInFlight ? " (updating…)" : stale && f.circuit !== undefined ? " (stale)" : "";
    faith.setAttribute("data-state", faithInFlight ? "running" : stale ? "stale" : "ready");
    faith.append(
      el("tr", {}, el("td", {}, "faithfulness (shown circuit)"), el("td", { "data-role": "faithfulness-circuit", "data-stale": String(stale) }, fmt(f.circuit ?? NaN, 3))),
      el("tr", {}, el("td", {}, "… after your ablations"), el("td", { "data-role": "faithfulness-ablated", "data-stale": String(stale) }, fmt(f.ablated ?? NaN, 3))),
      el("tr", {}, el("td", { colspan: 2 }, faithButton, el("span", { class: "cv-muted" }, status))),
    );
    if (stale && !faithInFlight && faithKey() !== faithFailed) {
      clearTimeout(faithTimer);
      faithTimer = setTimeout(() => {
        if (!faithInFlight && faithKey() !== faithFailed) requestFaithfulness();
      }, 400);
    }
  }

  function requestFaithfulness(): void {
    if (!model.get("has_faithfulness")) return;
    faithInFlight = faithKey();
    faithFailed = "";
    model.send({ type: "faithfulness", nodes: shownIds(), ablated: panel.current(), request: "faithfulness" });
    drawFaithfulness();
  }

  function exportSVG(): SVGSVGElement {
    const out = svgEl("svg", { xmlns: "http://www.w3.org/2000/svg", width: layout.width, height: layout.height + 24, viewBox: `0 0 ${layout.width} ${layout.height + 24}`, "font-family": "system-ui, sans-serif" });
    out.append(svgEl("rect", { width: layout.width, height: layout.height + 24, fill: "#fff" }));
    out.append(svgEl("text", { x: 6, y: 14, "font-size": 12, "font-weight": 600 }, title.textContent ?? ""));
    const body = svgEl("g", { transform: "translate(0,24)" });
    body.append(edgeLayer.cloneNode(true), nodeLayer.cloneNode(true));
    out.append(body);
    return out;
  }

  // Pan by dragging the background; zoom with the wheel around the cursor.
  let drag: { x: number; y: number; vx: number; vy: number } | null = null;
  svg.addEventListener("mousedown", (e) => {
    if ((e.target as Element).closest(".cv-node")) return;
    drag = { x: e.clientX, y: e.clientY, vx: view.x, vy: view.y };
    svg.style.cursor = "grabbing";
  });
  window.addEventListener("mousemove", (e) => {
    if (!drag) return;
    view.x = drag.vx + e.clientX - drag.x;
    view.y = drag.vy + e.clientY - drag.y;
    applyView();
  });
  window.addEventListener("mouseup", () => {
    drag = null;
    svg.style.cursor = "grab";
  });
  svg.addEventListener(
    "wheel",
    (e) => {
      e.preventDefault();
      const rect = svg.getBoundingClientRect();
      const mx = e.clientX - rect.left;
      const my = e.clientY - rect.top;
      const f = Math.exp(-e.deltaY * 0.0015);
      const k = Math.min(20, Math.max(0.1, view.k * f));
      view.x = mx - ((mx - view.x) * k) / view.k;
      view.y = my - ((my - view.y) * k) / view.k;
      view.k = k;
      applyView();
    },
    { passive: false },
  );
  fit.addEventListener("click", () => fitView());
  topN.addEventListener("input", () => {
    model.set("top_n", Number(topN.value));
    model.save_changes();
  });
  threshold.addEventListener("input", () => {
    model.set("threshold", Number(threshold.value));
    model.save_changes();
  });
  model.on("msg:custom", (msg: { type?: string; request?: unknown }) => {
    if (msg.request !== "faithfulness" || !faithInFlight) return;
    if (msg.type === "error") faithFailed = faithInFlight;
    faithInFlight = "";
    drawFaithfulness();
  });
  for (const name of ["change:top_n", "change:threshold", "change:pinned"]) model.on(name, () => draw());
  for (const name of ["change:selected", "change:ablated"]) model.on(name, () => draw());
  model.on("change:faithfulness", () => drawFaithfulness());
  model.on("change:graph", () => load());
  try {
    load();
  } catch (e) {
    setText(panel.error, `Could not draw this graph: ${e}`);
  }
}

function legend(): HTMLElement {
  const box = el("div", { class: "cv-legend cv-muted", "data-role": "legend" });
  for (const [type, color] of Object.entries(NODE_COLORS)) {
    box.append(el("span", { style: `display:inline-block;width:10px;height:10px;background:${color};margin:0 3px 0 8px;border-radius:2px` }), type);
  }
  box.append(el("span", { style: `color:${POSITIVE};margin-left:12px` }, "— positive edge"), el("span", { style: `color:${NEGATIVE};margin-left:8px` }, "— negative edge"));
  return box;
}

export default { render };
