// CircuitView: the shown part of an attribution graph as SVG. The kernel decides what is shown
// (the pruning rule lives in Python: circuitviz/engine/graph/_select.py) and where each node
// sits (engine/graph/_placement.py), and sends only that; this file scales the layout to the
// box, draws it, places labels where they fit, and sends the controls back.
import { AblationPanel } from "./ablation";
import { FaithfulnessTable } from "./circuit_faith";
import { badgeLegendEl, badgesSVG, legendMap, NODE_BADGE_FONT, nodeBadgeBoxes, type BadgeBox } from "./badges";
import { decode } from "./codec";
import { NEGATIVE, NODE_COLORS, POSITIVE } from "./colors";
import { clear, el, fmt, root, setText, truncate } from "./dom";
import { exportButtons, svgEl } from "./export";
import { edgePath, edgePolyline, layoutGraph, placeLabels, rowLabel, type Point } from "./layout";
import { attentionPreview, legend, CIRCUIT_STYLE } from "./circuit_parts";
import { CLAMP_STYLE, FEATURE_COLOR, FeaturePanel, SUPERNODE_COLOR, pickedRing, supernodeShape, type ClampTraits } from "./clamp";
import { clickedEdge, edgePanel, isSelectedEdge, mibPlot, MIB_STYLE } from "./circuit_mib";
import { FEATURE_COLORS, featureCard, featureLegend, featureShape } from "./feature_card";
import { bandsSVG, hatchDef, hatchId, legendEl, partialColumns } from "./padding";
import { isCovered } from "./patchmap";
import type { AnyModel, CircuitTraits, GraphNode } from "./types";

/** Nodes ranked by |score| (counted); what a click ablates is the kernel's n.ablates. */
const ABLATABLE = new Set(["head", "mlp", "feature", "error"]);
/** Nodes sized by |score| (features and supernodes too). */
const SCORED = new Set(["head", "mlp", "feature", "error", "supernode"]);
const EDGE_INPUTS = ["q", "k", "v", "mlp", "logits", "feature", "error"];
const FEATURE_INPUTS = new Set(["feature", "error"]);
/** On-screen label size in px, whatever the zoom: labels live outside the zoomed layer. */
const LABEL_PX = 12;
const AXIS_W = 46;
const TOKEN_AXIS_H = 18;
const STANDALONE = "This is a standalone export: it shows the circuit as saved. Changing what is shown needs the live kernel.";

interface Edges {
  source: ArrayLike<number>;
  target: ArrayLike<number>;
  weight: ArrayLike<number>;
  input: ArrayLike<number>;
  inputs: string[];
}

const baseId = (id: string) => id.replace(/:P\d+$/, "");

function render({ model, el: host }: { model: AnyModel<CircuitTraits>; el: HTMLElement }) {
  const rootEl = root(host, "circuit");
  rootEl.append(el("style", {}, CIRCUIT_STYLE + CLAMP_STYLE), el("style", {}, MIB_STYLE));
  const info = el("div", { class: "cv-muted", "data-role": "hover-info" }, "hover a node or edge");
  const panel = new AblationPanel(model, rootEl, () => draw());
  const faith = new FaithfulnessTable(model, () => nodes, () => panel.current());
  panel.extra.append(faith.el);
  const num = (role: string, title: string) => el("input", { type: "number", min: 0, step: 1, class: "cv-num", "data-role": role, title });
  const topNodes = num("top-nodes", "Show at most this many head/MLP nodes, the strongest by |score|");
  const topEdges = num("top-edges", "Show at most this many edges, the strongest on EMBED→LOGITS paths");
  const minRel = el("input", { type: "range", min: 0, max: 1, step: 0.01, "data-role": "min-rel-weight", title: "Hide edges weaker than this fraction of the strongest edge" });
  const minRelLabel = el("span", { "data-role": "min-rel-weight-value", class: "cv-num-label" });
  const more = el("button", { class: "cv-button", "data-role": "show-more", type: "button", title: "Double the node and edge limits" }, "Show more");
  const less = el("button", { class: "cv-button", "data-role": "show-less", type: "button", title: "Halve the node and edge limits" }, "Less");
  const inputBoxes = EDGE_INPUTS.map((name) => el("input", { type: "checkbox", "data-role": "edge-input", value: name }));
  const sign = el("select", { class: "cv-select", "data-role": "edge-sign", title: "Edges by sign of their weight" }, el("option", { value: "both" }, "± both"), el("option", { value: "positive" }, "+ positive"), el("option", { value: "negative" }, "− negative"));
  const search = el("input", { type: "search", "data-role": "search", placeholder: "find node, e.g. L9H6", list: "", size: 20, title: "Type a node id and press Enter: the view selects and centres it (pinning it if it is not shown)" });
  const datalist = el("datalist", {});
  const fit = el("button", { class: "cv-button", "data-role": "fit", type: "button", title: "Fit the circuit to the view" }, "Fit");
  const toggle = el("button", { class: "cv-button", "data-role": "panel-toggle", type: "button", title: "Show or hide the side panel" }, "Panel");
  const title = el("span", { class: "cv-title", "data-role": "title" });
  const counts = el("span", { class: "cv-muted", "data-role": "counts" });
  const notice = el("div", { class: "cv-muted", "data-role": "controls-notice" });
  const svg = svgEl("svg", { class: "cv-graph", width: 640, height: 520, "font-family": "system-ui, sans-serif" });
  const viewport = svgEl("g", { class: "cv-viewport" });
  const edgeLayer = svgEl("g", { class: "cv-edges" });
  const nodeLayer = svgEl("g", { class: "cv-nodes" });
  const overlay = svgEl("g", { class: "cv-overlay", "pointer-events": "none" });
  const rules = svgEl("g", { class: "cv-rules", "pointer-events": "none" });
  viewport.append(edgeLayer, nodeLayer);
  const pads = svgEl("g", { class: "cv-pads" }); // partial token columns (mixed-length prompts)
  const hatch = hatchId();
  svg.append(svgEl("defs", {}), rules, pads, viewport, overlay);
  svg.firstChild!.appendChild(hatchDef(hatch));
  const padLegend = el("div", { "data-role": "pad-legend-box" });
  const preview = el("div", { class: "cv-preview", "data-role": "head-preview" });
  const onError = (e: unknown) => setText(panel.error, String(e));
  const roleLegend = el("div", { "data-role": "role-legend-box" });
  const features = new FeaturePanel(model as unknown as AnyModel<ClampTraits>, rootEl, () => draw());
  const featLegend = featureLegend();
  const setEdge = (edge: string[]) => {
    model.set("selected_edge", edge);
    model.save_changes();
  };
  const edgeBox = edgePanel(model, setEdge);
  const mibBox = mibPlot(model, () => live);
  const side = el("div", { class: "cv-side", "data-role": "side-panel" }, info, edgeBox.el, mibBox.el, preview, features.el, legend(), padLegend, featLegend, roleLegend, panel.el);
  const main = el("div", { class: "cv-main cv-graph-box" }, svg);
  rootEl.append(
    el("div", { class: "cv-toolbar" }, title, counts),
    el(
      "div",
      { class: "cv-toolbar", "data-role": "controls" },
      el("label", { title: topNodes.title }, "nodes ≤ ", topNodes),
      el("label", { title: topEdges.title }, "edges ≤ ", topEdges),
      more,
      less,
      el("label", { title: minRel.title }, "min weight (rel.) ", minRel, minRelLabel),
      el("span", { class: "cv-filters", title: "Edges into these inputs" }, ...inputBoxes.map((b) => el("label", { "data-input-box": b.value }, b, ` ${b.value}`))),
      sign,
      search,
      datalist,
      fit,
      toggle,
      ...exportButtons("circuit", () => exportSVG(), onError),
    ),
    notice,
    el("div", { class: "cv-split" }, main, side),
  );
  const listId = `cv-nodes-${Math.random().toString(36).slice(2)}`;
  datalist.id = listId;
  search.setAttribute("list", listId);

  let nodes: GraphNode[] = [];
  let edges: Edges | null = null;
  let byId = new Map<string, number>();
  let layout = layoutGraph([], undefined);
  const view = { k: 1, x: 0, y: 0 };
  let pendingFocus: string | null = null;
  let live = true;
  mibBox.draw();

  function load(): void {
    const t0 = performance.now();
    const g = model.get("graph");
    nodes = g.nodes ?? [];
    byId = new Map(nodes.map((n, i) => [n.id, i]));
    edges = g.edges
      ? { source: decode(g.edges.source).data, target: decode(g.edges.target).data, weight: decode(g.edges.weight).data, input: decode(g.edges.input).data, inputs: g.edges.inputs }
      : null;
    setText(title, `${g.method ?? "circuit"} graph · ${g.model ?? ""} · ${g.metric ?? ""}`);
    loadRoles();
    padLegend.replaceChildren(...(partialColumns(g.columns).length ? [legendEl(g.columns!)] : []));
    showFeatureControls(!!g.saes?.length);
    const nEdges = g.n_edges ?? (edges ? edges.weight.length : 0);
    const inner = nodes.filter((n) => ABLATABLE.has(n.type)).length;
    setText(counts, `showing ${inner} of ${g.totals?.nodes ?? inner} nodes · ${nEdges} of ${g.totals?.edges ?? nEdges} edges`);
    if (!live) setText(notice, STANDALONE);
    else setText(notice, g.notice ?? "");
    relayout();
    draw();
    if (pendingFocus && byId.has(pendingFocus)) focusNode(pendingFocus);
    pendingFocus = null;
    rootEl.setAttribute("data-draw-ms", (performance.now() - t0).toFixed(1));
  }

  /** Rows and slots sized to the box, so the default fit is near 1:1 and nodes stay large. */
  function relayout(): void {
    const g = model.get("graph");
    const w = svgWidth() - AXIS_W;
    const h = Number(svg.getAttribute("height")) - (g.per_position ? TOKEN_AXIS_H : 0);
    const rows = new Set(nodes.map((n) => Math.min(Math.max(n.layer, -1), g.n_layers))).size;
    const nPos = g.per_position ? g.tokens?.length ?? 1 : 1;
    const rowHeight = Math.min(72, Math.max(42, (h - 60) / Math.max(1, rows - 1)));
    const slotWidth = g.per_position ? Math.max(22, (w - 60) / nPos / (g.n_heads + 1)) : Math.min(84, Math.max(46, (w - 60) / (g.n_heads + 1)));
    layout = layoutGraph(nodes, g.layout, { rowHeight, slotWidth });
    fitView();
  }

  function svgWidth(): number {
    return Number(svg.getAttribute("width"));
  }

  function fitView(): void {
    const w = svgWidth() - AXIS_W;
    const h = Number(svg.getAttribute("height")) - (model.get("graph").per_position ? TOKEN_AXIS_H : 0);
    view.k = Math.min(w / layout.width, h / layout.height, 1.6);
    view.x = AXIS_W + (w - layout.width * view.k) / 2;
    view.y = (h - layout.height * view.k) / 2;
    applyView();
  }

  const screen = (p: Point): Point => ({ x: view.x + p.x * view.k, y: view.y + p.y * view.k });

  let overlayFrame = 0;
  function applyView(): void {
    viewport.setAttribute("transform", `translate(${view.x},${view.y}) scale(${view.k})`);
    cancelAnimationFrame(overlayFrame);
    overlayFrame = requestAnimationFrame(() => drawOverlay());
  }

  /** Capped by the layout so that no two nodes overlap (a supernode's hexagon is 2 larger). */
  function radius(n: GraphNode, maxScore: number): number {
    if (n.type === "embed" || n.type === "logits") return Math.min(9, layout.maxRadius);
    const cap = layout.maxRadius - (n.type === "supernode" ? 2 : 0);
    return Math.min(cap, 5 + 7 * Math.sqrt(Math.abs(n.score ?? 0) / maxScore));
  }

  function labelText(n: GraphNode): string {
    if (n.type === "feature" || n.type === "error") return truncate(n.label ?? baseId(n.id), 18);
    if (n.type === "supernode") return truncate(n.label ?? n.id, 32); // the kernel's label names its site
    return n.pos !== null && n.pos !== undefined ? baseId(n.id) : truncate(n.label ?? n.id, 18);
  }

  /** Feature graphs: the feature/error edge filters and legend rows. */
  function showFeatureControls(on: boolean): void {
    for (const b of inputBoxes) if (FEATURE_INPUTS.has(b.value)) (b.parentElement as HTMLElement).style.display = on ? "" : "none";
    featLegend.style.display = on ? "" : "none";
    // Clamp and supernodes: only where there are features (a feature graph, or saes= given).
    features.el.style.display = on || (model as unknown as AnyModel<ClampTraits>).get("can_steer") ? "" : "none";
  }

  function draw(): void {
    syncControls();
    const ablated = new Set(panel.current());
    const pinned = new Set(model.get("pinned"));
    const selected = model.get("selected");
    clear(edgeLayer);
    clear(nodeLayer);
    const maxW = edges ? Math.max(1e-12, ...Array.from(edges.weight, Math.abs)) : 1;
    if (edges) {
      for (let e = edges.weight.length - 1; e >= 0; e--) {
        const src = nodes[edges.source[e]];
        const dst = nodes[edges.target[e]];
        const a = layout.positions.get(src.id)!;
        const b = layout.positions.get(dst.id)!;
        const w = edges.weight[e];
        const rel = Math.abs(w) / maxW;
        const kind = edges.inputs[edges.input[e]] ?? "";
        const picked = isSelectedEdge(model, src.id, dst.id, kind);
        if (picked) edgeLayer.append(svgEl("path", { d: edgePath(a, b), fill: "none", stroke: "#000", "stroke-width": 3.5 + 4.5 * rel, "data-role": "edge-selection" }));
        const path = svgEl("path", { d: edgePath(a, b), fill: "none", stroke: w >= 0 ? POSITIVE : NEGATIVE, "stroke-width": 0.6 + 4.5 * rel, "stroke-opacity": picked ? 1 : 0.3 + 0.6 * rel, "data-edge": `${src.id}->${dst.id}`, "data-input": kind, "data-selected": String(picked), style: "cursor:pointer" });
        path.addEventListener("mouseenter", () => setText(info, `${src.id} → ${dst.id} (${kind}): weight ${fmt(w, 5)} · click: select, patch exactly`));
        path.addEventListener("click", (ev) => {
          ev.stopPropagation();
          setEdge(clickedEdge(model, src.id, dst.id, kind));
        });
        edgeLayer.append(path);
      }
    }
    const maxScore = Math.max(1e-12, ...nodes.map((n) => (SCORED.has(n.type) ? Math.abs(n.score ?? 0) : 0)));
    features.update(nodes.find((n) => n.id === selected) ?? null);
    nodes.forEach((n) => {
      const pt = layout.positions.get(n.id)!;
      const r = radius(n, maxScore);
      const isAbl = isCovered(n.ablates ?? null, ablated); // the kernel's rule (engine/_cells.py)
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
      const shape = n.type === "supernode" ? supernodeShape(r + 2) : featureShape(n.type, r) ?? (n.type === "mlp" ? svgEl("rect", { x: -r, y: -r, width: 2 * r, height: 2 * r, rx: 2 }) : svgEl("circle", { r }));
      const fill = n.type === "supernode" ? SUPERNODE_COLOR : NODE_COLORS[n.type] ?? FEATURE_COLORS[n.type] ?? (n.type === "feature" ? FEATURE_COLOR : "#777");
      shape.setAttribute("fill", isAbl ? "#fff" : fill);
      // The ring shows the score's sign; the fill shows the node type.
      const ring = (n.score ?? 0) >= 0 ? POSITIVE : NEGATIVE;
      shape.setAttribute("stroke", isAbl ? "#333" : n.score ? ring : "#fff");
      shape.setAttribute("stroke-width", "1.6");
      if (isAbl) shape.setAttribute("stroke-dasharray", "2 1.5");
      if (selected === n.id) g.append(svgEl("circle", { r: r + 4, fill: "none", stroke: "#000", "stroke-width": 2.5, "data-role": "selection-ring" }));
      g.append(shape);
      if (isAbl) g.append(svgEl("path", { d: `M${-r * 0.6},${-r * 0.6}L${r * 0.6},${r * 0.6}M${r * 0.6},${-r * 0.6}L${-r * 0.6},${r * 0.6}`, stroke: "#333", "stroke-width": 1.5 }));
      if (pinned.has(n.id)) g.append(svgEl("circle", { r: 3, cx: r * 0.8, cy: -r * 0.8, fill: "#222", stroke: "#fff", "stroke-width": 1, "data-role": "pin-mark" }));
      if (features.isPicked(n.id)) g.append(pickedRing(r));
      const members = (n as GraphNode & { members?: string[] }).members;
      g.append(svgEl("title", {}, members ? `${n.id} ${n.label ?? ""}: ${members.join(", ")}` : `${n.label ?? n.id}`));
      g.addEventListener("mouseenter", () => hover(n));
      g.addEventListener("mouseleave", () => hover(null));
      g.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          g.dispatchEvent(new MouseEvent("click", { shiftKey: ev.shiftKey, altKey: ev.altKey }));
        }
      });
      g.addEventListener("click", (ev) => {
        ev.stopPropagation();
        if (ev.altKey) return togglePin(n.id);
        if (ev.shiftKey && n.type === "feature") {
          features.togglePick(n.id);
          return draw();
        }
        model.set("selected", n.id);
        model.save_changes();
        if (n.ablates && model.get("can_ablate")) panel.click(n.ablates, ev.shiftKey);
        else draw();
      });
      nodeLayer.append(g);
    });
    drawOverlay();
    faith.draw();
  }

  /** Screen-space layer: the layer axis, token columns and node labels, re-placed on every
   * pan/zoom so they stay LABEL_PX on screen and never overlap (nodes, labels, edges). */
  function drawOverlay(): void {
    clear(overlay);
    clear(rules);
    clear(pads);
    const g = model.get("graph");
    const height = Number(svg.getAttribute("height"));
    overlay.append(svgEl("rect", { x: 0, y: 0, width: AXIS_W - 4, height, fill: "#fff", opacity: 0.9 }));
    for (const row of layout.rows) {
      const y = view.y + row.y * view.k;
      if (y < 0 || y > height) continue;
      overlay.append(svgEl("text", { x: AXIS_W - 8, y, "text-anchor": "end", "dominant-baseline": "central", "font-size": 11, fill: "#555", "data-role": "layer-label" }, rowLabel(row.layer, g.n_layers)));
      rules.append(svgEl("line", { x1: AXIS_W - 4, x2: svgWidth(), y1: y, y2: y, stroke: "#f0f0f0" }));
    }
    const tokens = g.tokens ?? [];
    if (layout.bands.length) {
      for (const b of layout.bands) {
        const bandPx = layout.bands.length > 1 ? b.w * view.k : svgWidth();
        const chars = Math.max(0, Math.floor(bandPx / 6.5) - 3);
        const x = view.x + b.x * view.k;
        if (x < AXIS_W || x > svgWidth() || chars < 1) continue;
        overlay.append(svgEl("text", { x, y: height - 5, "text-anchor": "middle", "font-size": 11, fill: "#555", "data-role": "band-label" }, `${b.pos}:${truncate(tokens[b.pos] ?? "", chars)}`));
      }
      const half = (b: { w: number }) => ((b.w - 12) / 2 + 4) * view.k;
      const spans = layout.bands.map((b) => ({ pos: b.pos, x0: Math.max(AXIS_W, view.x + b.x * view.k - half(b)), x1: view.x + b.x * view.k + half(b) }));
      if (g.columns) pads.append(bandsSVG(g.columns, spans.filter((s) => s.x1 > s.x0), height - TOKEN_AXIS_H, hatch));
    }
    drawRoleBadges();
    placeNodeLabels(height);
  }

  function placeNodeLabels(height: number): void {
    const maxScore = Math.max(1e-12, ...nodes.map((n) => (SCORED.has(n.type) ? Math.abs(n.score ?? 0) : 0)));
    const selected = model.get("selected");
    const pinned = new Set(model.get("pinned"));
    const importance = (n: GraphNode) => (n.id === selected ? 3 : pinned.has(n.id) ? 2 : SCORED.has(n.type) ? Math.abs(n.score ?? 0) / maxScore : 1.5);
    const circles = nodes.map((n) => ({ ...screen(layout.positions.get(n.id)!), r: (radius(n, maxScore) + (n.id === selected ? 4 : 0)) * view.k }));
    circles.push(...badgeObstacles(maxScore)); // after the nodes: requests index the nodes
    const lines: Point[][] = [];
    if (edges) for (let e = 0; e < edges.weight.length; e++) lines.push(edgePolyline(screen(layout.positions.get(nodes[edges.source[e]].id)!), screen(layout.positions.get(nodes[edges.target[e]].id)!)));
    const order = nodes.map((_, i) => i).sort((a, b) => importance(nodes[b]) - importance(nodes[a]));
    const requests = order.map((i) => ({ id: nodes[i].id, x: circles[i].x, y: circles[i].y, r: circles[i].r, w: textWidth(labelText(nodes[i])) + 4, h: LABEL_PX + 2 }));
    const bottom = height - (layout.bands.length ? TOKEN_AXIS_H : 0);
    const placed = placeLabels(requests, circles, lines, { x0: AXIS_W, y0: 0, x1: svgWidth(), y1: bottom }, { overEdges: true });
    for (const p of placed) {
      const n = nodes[byId.get(p.id)!];
      overlay.append(svgEl("text", { x: p.x, y: p.y, "text-anchor": "middle", "dominant-baseline": "central", "font-size": LABEL_PX, fill: "#222", class: "cv-label", "data-role": "node-label", "data-for": n.id, "data-over-edge": String(!!p.overEdge) }, labelText(n)));
    }
    rootEl.setAttribute("data-labels", `${placed.length}/${nodes.length}`);
  }

  // Head roles (circuitviz.head_roles): the kernel sends which head has which role and each
  // badge's text and colour; badges sit at a node's upper right, with a legend row each.
  let headRoles: Record<string, string[]> = {};
  let badgeKey = legendMap([]);
  function loadRoles(): void {
    const g = model.get("graph");
    headRoles = g.roles ?? {};
    badgeKey = legendMap(g.role_badges);
    roleLegend.replaceChildren(...(g.role_badges?.length ? [badgeLegendEl(g.role_badges)] : []));
  }

  /** A node's badges in screen pixels (relative to its centre): like the labels they keep
   * their size at any zoom, so they live in the overlay. */
  function roleBadges(n: GraphNode, maxScore: number): BadgeBox[] {
    return n.type === "head" ? nodeBadgeBoxes(radius(n, maxScore) * view.k, headRoles[baseId(n.id)] ?? [], badgeKey) : [];
  }

  function drawRoleBadges(): void {
    const maxScore = Math.max(1e-12, ...nodes.map((n) => (ABLATABLE.has(n.type) ? Math.abs(n.score ?? 0) : 0)));
    for (const n of nodes) {
      const badges = roleBadges(n, maxScore);
      const c = screen(layout.positions.get(n.id)!);
      if (c.x < AXIS_W || c.x > svgWidth()) continue; // panned out of view: not over the axis
      if (badges.length) overlay.append(badgesSVG(c.x, c.y, NODE_BADGE_FONT, badges, n.id));
    }
  }

  /** Each badge as a circle the label placer keeps clear of, in screen pixels. */
  function badgeObstacles(maxScore: number): { x: number; y: number; r: number }[] {
    const out: { x: number; y: number; r: number }[] = [];
    for (const n of nodes) {
      const c = screen(layout.positions.get(n.id)!);
      for (const b of roleBadges(n, maxScore)) out.push({ x: c.x + b.x + b.w / 2, y: c.y + b.y + b.h / 2, r: b.w / 2 });
    }
    return out;
  }

  const measureCtx = document.createElement("canvas").getContext("2d");
  function textWidth(text: string): number {
    if (!measureCtx) return text.length * LABEL_PX * 0.6;
    measureCtx.font = `${LABEL_PX}px system-ui, sans-serif`;
    return measureCtx.measureText(text).width;
  }

  /** Hover: dim unrelated edges, name the node (also when its label did not fit), preview it. */
  function hover(n: GraphNode | null): void {
    for (const path of edgeLayer.querySelectorAll<SVGPathElement>("path[data-edge]")) {
      const [a, b] = (path.getAttribute("data-edge") ?? "").split("->");
      path.style.opacity = n === null || a === n.id || b === n.id ? "" : "0.08";
    }
    for (const old of overlay.querySelectorAll('[data-role="hover-label"]')) old.remove();
    if (!n) return;
    const members = (n as GraphNode & { members?: string[] }).members;
    if (members) return setText(info, `${n.id} ${n.label ?? ""} · supernode of ${members.length}: ${members.join(", ")} · click: select (clamp or ablate all)`);
    setText(info, `${n.label ?? n.id} · ${n.type}${n.pos !== null && n.pos !== undefined ? ` · pos ${n.pos}` : ""} · score ${fmt(n.score ?? NaN, 5)}${n.ablates ? ` · click: ablate only ${n.ablates}${n.pos != null ? " (this position)" : ""} · shift-click: add/remove · alt-click: pin` : " · alt-click: pin"}`);
    if (!overlay.querySelector(`[data-role="node-label"][data-for="${CSS.escape(n.id)}"]`)) {
      const p = screen(layout.positions.get(n.id)!);
      overlay.append(svgEl("text", { x: p.x, y: p.y - 14, "text-anchor": "middle", "font-size": LABEL_PX, fill: "#000", class: "cv-label", "data-role": "hover-label" }, labelText(n)));
    }
    if (n.type === "head") {
      preview.removeAttribute("data-feature"); // a late feature card must not replace it
      attentionPreview(model, preview, baseId(n.id));
    } else if (n.type === "feature") featureCard(model, preview, baseId(n.id));
  }

  function togglePin(id: string): void {
    const pins = model.get("pinned");
    model.set("pinned", pins.includes(id) ? pins.filter((p) => p !== id) : [...pins, id]);
    model.save_changes();
  }

  /** Select a node and centre it; one that is not shown is pinned (the kernel adds it with
   * its strongest path) and centred when it arrives. */
  function find(query: string): void {
    const q = query.trim().toUpperCase();
    if (!q) return;
    const all = model.get("searchable") ?? [];
    const id = all.find((x) => x.toUpperCase() === q) ?? all.find((x) => baseId(x).toUpperCase() === q);
    if (!id) {
      setText(info, `no node ${query} in this graph`);
      search.setAttribute("data-found", "false");
      return;
    }
    search.setAttribute("data-found", "true");
    model.set("selected", id);
    if (byId.has(id)) {
      model.save_changes();
      focusNode(id);
      draw();
    } else {
      pendingFocus = id;
      model.set("pinned", [...model.get("pinned"), id]);
      model.save_changes();
    }
  }

  function focusNode(id: string): void {
    const p = layout.positions.get(id);
    if (!p) return;
    const w = svgWidth();
    const h = Number(svg.getAttribute("height"));
    view.x = AXIS_W + (w - AXIS_W) / 2 - p.x * view.k;
    view.y = h / 2 - p.y * view.k;
    applyView();
  }

  function syncControls(): void {
    topNodes.value = String(model.get("top_nodes"));
    topEdges.value = String(model.get("top_edges"));
    minRel.value = String(model.get("min_rel_weight"));
    setText(minRelLabel, model.get("min_rel_weight").toFixed(2));
    const on = new Set(model.get("edge_inputs"));
    for (const b of inputBoxes) b.checked = on.has(b.value);
    sign.value = model.get("edge_sign");
    const all = model.get("searchable") ?? [];
    if (datalist.childElementCount !== Math.min(all.length, 2000)) {
      clear(datalist);
      for (const id of all.slice(0, 2000)) datalist.append(el("option", { value: id }));
    }
  }

  function setControl<K extends keyof CircuitTraits>(key: K, value: CircuitTraits[K]): void {
    rootEl.setAttribute("data-requested", String(performance.now()));
    model.set(key, value);
    model.save_changes();
  }

  function exportSVG(): SVGSVGElement {
    const w = svgWidth();
    const h = Number(svg.getAttribute("height"));
    const out = svgEl("svg", { xmlns: "http://www.w3.org/2000/svg", width: w, height: h + 24, viewBox: `0 0 ${w} ${h + 24}`, "font-family": "system-ui, sans-serif" });
    out.append(svgEl("rect", { width: w, height: h + 24, fill: "#fff" }));
    out.append(svgEl("text", { x: 6, y: 14, "font-size": 12, "font-weight": 600 }, title.textContent ?? ""));
    const body = svgEl("g", { transform: "translate(0,24)" });
    for (const child of svg.childNodes) body.append(child.cloneNode(true));
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
      const k = Math.min(20, Math.max(0.1, view.k * Math.exp(-e.deltaY * 0.0015)));
      view.x = mx - ((mx - view.x) * k) / view.k;
      view.y = my - ((my - view.y) * k) / view.k;
      view.k = k;
      applyView();
    },
    { passive: false },
  );
  fit.addEventListener("click", () => fitView());
  let panelToggled = false; // once the user opens or closes the panel, width no longer does
  toggle.addEventListener("click", () => {
    panelToggled = true;
    rootEl.setAttribute("data-panel", rootEl.getAttribute("data-panel") === "closed" ? "open" : "closed");
  });
  const count = (input: HTMLInputElement) => Math.max(0, Math.round(Number(input.value) || 0));
  topNodes.addEventListener("change", () => setControl("top_nodes", count(topNodes)));
  topEdges.addEventListener("change", () => setControl("top_edges", count(topEdges)));
  const scale = (f: number) => {
    rootEl.setAttribute("data-requested", String(performance.now()));
    model.set("top_nodes", Math.max(1, Math.round(model.get("top_nodes") * f)));
    model.set("top_edges", Math.max(1, Math.round(model.get("top_edges") * f)));
    model.save_changes();
  };
  more.addEventListener("click", () => scale(2));
  less.addEventListener("click", () => scale(0.5));
  minRel.addEventListener("change", () => setControl("min_rel_weight", Number(minRel.value)));
  minRel.addEventListener("input", () => setText(minRelLabel, Number(minRel.value).toFixed(2)));
  for (const b of inputBoxes) b.addEventListener("change", () => setControl("edge_inputs", inputBoxes.filter((x) => x.checked).map((x) => x.value)));
  sign.addEventListener("change", () => setControl("edge_sign", sign.value));
  search.addEventListener("keydown", (e) => {
    if (e.key === "Enter") find(search.value);
  });
  search.addEventListener("change", () => find(search.value));
  model.on("msg:custom", (msg: { type?: string; request?: unknown; live?: boolean }) => {
    if (msg.type === "hello" && msg.live === false) {
      live = false;
      mibBox.draw();
      for (const c of [topNodes, topEdges, minRel, more, less, sign, ...inputBoxes]) c.disabled = true;
      features.standalone();
      setText(notice, STANDALONE);
      return;
    }
    if (edgeBox.reply(msg) || mibBox.reply(msg)) return;
    faith.reply(msg);
  });
  for (const name of ["change:selected", "change:ablated", "change:pinned", "change:selected_edge"]) model.on(name, () => draw());
  model.on("change:faithfulness", () => faith.draw());
  model.on("change:graph", () => load());
  model.on("change:searchable", () => syncControls());
  // Narrow outputs: the side panel goes below the graph and starts closed.
  const resize = () => {
    const width = rootEl.getBoundingClientRect().width || 900;
    const narrow = width < 760;
    rootEl.setAttribute("data-narrow", String(narrow));
    if (!panelToggled) rootEl.setAttribute("data-panel", narrow ? "closed" : "open");
    const graphW = Math.max(320, Math.floor((narrow ? width : width - 300) - 12));
    if (graphW !== svgWidth()) {
      svg.setAttribute("width", String(graphW));
      relayout();
      drawOverlay();
    }
  };
  if (typeof ResizeObserver !== "undefined") new ResizeObserver(() => resize()).observe(rootEl);
  try {
    resize();
    load();
  } catch (e) {
    setText(panel.error, `Could not draw this graph: ${e}`);
  }
  model.send({ type: "hello" });
}

export default { render };
