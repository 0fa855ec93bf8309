// CircuitView's SAE feature nodes (feature graphs from circuit(..., saes=...)): their shapes,
// legend rows, and the hover card of a latent (computed by the kernel:
// circuitviz/views/_feature_nodes.py; cached on both sides). Token text is set as text.
import { clear, el, fmt, setText, showToken, truncate } from "./dom";
import { svgEl } from "./export";
import type { AnyModel, CircuitTraits } from "./types";

/** Fill of feature and error nodes (Okabe–Ito sky blue and yellow, beside the other types). */
export const FEATURE_COLORS: Record<string, string> = { feature: "#56B4E9", error: "#F0E442" };

/** A latent is a diamond, an error node a triangle; null for other node types. */
export function featureShape(type: string, r: number): SVGElement | null {
  if (type === "feature") return svgEl("path", { d: `M0,${-r * 1.1}L${r},0L0,${r * 1.1}L${-r},0Z` });
  if (type === "error") return svgEl("path", { d: `M0,${-r * 1.1}L${r},${r * 0.8}L${-r},${r * 0.8}Z` });
  return null;
}

/** Legend rows for the feature marks, shown only on feature graphs. */
export function featureLegend(): HTMLElement {
  const box = el("div", { class: "cv-legend", "data-role": "feature-legend", style: "display:none" });
  const mark = (type: string) => {
    const s = svgEl("svg", { width: 18, height: 16, viewBox: "-9 -8 18 16" });
    const shape = featureShape(type, 5)!;
    shape.setAttribute("fill", FEATURE_COLORS[type]);
    shape.setAttribute("stroke", "#888");
    s.append(shape);
    return s;
  };
  box.append(mark("feature"), el("span", { "data-legend": "type-feature" }, "SAE feature (diamond; hover: its card; click: ablate it)"));
  box.append(mark("error"), el("span", { "data-legend": "type-error" }, "SAE error term (triangle: what the SAE misses; click: ablate it)"));
  return box;
}

/** A feature circuit's faithfulness rows beside the plain one (error nodes kept): with every
 * error node ablated, and completeness both ways. The kernel computes them
 * (views/_feature_nodes.py ERROR_VARIANTS); nothing for a plain graph. */
export function errorFaithRows(f: CircuitTraits["faithfulness"], stale: boolean): HTMLElement[] {
  const rows: [string, string, string][] = [
    ["errors_ablated", "… error nodes ablated", "The shown circuit with every SAE error term taken out of it"],
    ["complement", "completeness: rest recovers", "Everything but the shown circuit, error nodes counted in the circuit: near 0 means the circuit is complete"],
    ["complement_errors_ablated", "… error nodes ablated", "Everything but the shown circuit, error nodes counted outside it"],
  ];
  return rows
    .filter(([key]) => typeof (f as Record<string, unknown>)[key] === "number")
    .map(([key, label, title]) => el("tr", { title }, el("td", {}, label), el("td", { "data-role": `faithfulness-${key.replace(/_/g, "-")}`, "data-stale": String(stale) }, fmt((f as Record<string, number>)[key], 3))));
}

interface Card {
  node: string;
  label: string;
  promoted: [string, number][];
  suppressed: [string, number][];
  max_act: number | null;
}

const cards = new WeakMap<object, Map<string, Card | "pending" | string>>();

/** Show the card of latent ``node`` ("L11F1234") in ``box``: asked of the kernel once, then
 * from the cache. */
export function featureCard(model: AnyModel<CircuitTraits>, box: HTMLElement, node: string): void {
  let cache = cards.get(model);
  if (!cache) {
    const fresh = new Map<string, Card | "pending" | string>();
    cards.set(model, fresh);
    cache = fresh;
    model.on("msg:custom", (msg: Partial<Card> & { type?: string; request?: string; message?: string }) => {
      if (msg.type === "feature_card" && msg.node) {
        fresh.set(msg.node, msg as Card);
        if (box.getAttribute("data-feature") === msg.node) drawCard(box, msg as Card);
      } else if (msg.type === "error" && typeof msg.request === "string" && msg.request.startsWith("feature:")) {
        const id = msg.request.slice(8);
        fresh.set(id, msg.message ?? "no card");
        if (box.getAttribute("data-feature") === id) setText(box, `${id}: ${msg.message ?? "no card"}`);
      }
    });
  }
  box.setAttribute("data-feature", node);
  box.removeAttribute("data-head");
  const known = cache.get(node);
  if (known === undefined) {
    cache.set(node, "pending");
    setText(box, `${node}: loading…`);
    model.send({ type: "feature_card", node, request: `feature:${node}` });
  } else if (known === "pending") setText(box, `${node}: loading…`);
  else if (typeof known === "string") setText(box, `${node}: ${known}`);
  else drawCard(box, known);
}

function drawCard(box: HTMLElement, c: Card): void {
  clear(box);
  box.setAttribute("data-state", "ready");
  const tokens = (list: [string, number][]) => list.map(([t, v]) => `“${truncate(showToken(t), 14)}” ${fmt(v, 2)}`).join(" · ");
  box.append(
    el("div", { class: "cv-title", "data-role": "feature-card-title" }, `${c.node}: ${truncate(c.label, 60)}`),
    el("div", { class: "cv-muted", "data-role": "feature-card-max" }, `max activation on these prompts: ${c.max_act === null ? "n/a" : fmt(c.max_act, 3)}`),
    el("div", { "data-role": "feature-card-promoted" }, `promotes: ${tokens(c.promoted)}`),
    el("div", { class: "cv-muted", "data-role": "feature-card-suppressed" }, `suppresses: ${tokens(c.suppressed)}`),
  );
}
