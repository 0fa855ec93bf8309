// CircuitView's side-panel parts: the legend (every mark the graph uses) and the attention
// preview of a hovered head (computed by the kernel on the clean prompt, cached both sides).
import { NEGATIVE, NODE_COLORS, POSITIVE, css, sequential } from "./colors";
import { clear, el, fmt, setText, showToken, truncate } from "./dom";
import { svgEl } from "./export";
import type { AnyModel, CircuitTraits } from "./types";

export const CIRCUIT_STYLE = `
.cv-split{display:flex;gap:10px;align-items:flex-start}
.cv-graph-box{flex:1 1 auto;min-width:0}
.cv-graph{display:block;border:1px solid #eee;cursor:grab;background:#fff}
.cv-side{flex:0 0 280px;max-width:280px;max-height:560px;overflow:auto;border-left:1px solid #ddd;padding-left:10px}
.cv-side .cv-panel{border-left:none;padding-left:0;min-width:0}
.cv-root[data-narrow="true"] .cv-split{flex-direction:column}
.cv-root[data-narrow="true"] .cv-side{flex-basis:auto;max-width:none;border-left:none;padding-left:0}
.cv-root[data-panel="closed"] .cv-side{display:none}
.cv-num{width:4.5em;font:inherit}
.cv-num-label{display:inline-block;width:2.4em}
.cv-filters label{margin-right:4px}
.cv-label{paint-order:stroke;stroke:#fff;stroke-width:3px;stroke-linejoin:round}
.cv-legend{display:grid;grid-template-columns:18px 1fr;gap:2px 6px;align-items:center;margin:6px 0;font-size:11px}
.cv-preview{margin:4px 0}
.cv-preview canvas{border:1px solid #ddd;image-rendering:pixelated}
`;

function swatch(...children: SVGElement[]): SVGSVGElement {
  const s = svgEl("svg", { width: 18, height: 16, viewBox: "-9 -8 18 16" });
  s.append(...children);
  return s;
}

/** One row per mark the graph draws. */
export function legend(): HTMLElement {
  const box = el("div", { class: "cv-legend", "data-role": "legend" });
  const row = (mark: SVGSVGElement, text: string, key: string) => box.append(mark, el("span", { "data-legend": key }, text));
  for (const [type, color] of Object.entries(NODE_COLORS)) {
    const shape = type === "mlp" ? svgEl("rect", { x: -5, y: -5, width: 10, height: 10, rx: 2, fill: color }) : svgEl("circle", { r: 5, fill: color });
    row(swatch(shape), type === "mlp" ? "MLP (square)" : type === "head" ? "attention head" : type === "embed" ? "embeddings" : "logits", `type-${type}`);
  }
  row(swatch(svgEl("circle", { r: 3, fill: "#ccc" }), svgEl("circle", { r: 7, cx: 0, fill: "none", stroke: "#ccc" })), "node size: |score| (its effect on the metric)", "size");
  row(swatch(svgEl("circle", { r: 5, fill: "#eee", stroke: POSITIVE, "stroke-width": 2 })), "blue ring: score > 0 (corrupting it raises the metric)", "ring-positive");
  row(swatch(svgEl("circle", { r: 5, fill: "#eee", stroke: NEGATIVE, "stroke-width": 2 })), "red ring: score < 0 (corrupting it lowers the metric: it carries the behaviour)", "ring-negative");
  row(swatch(svgEl("path", { d: "M-8,4 C-8,0 8,0 8,-4", stroke: POSITIVE, "stroke-width": 2, fill: "none" })), "blue edge: weight > 0", "edge-positive");
  row(swatch(svgEl("path", { d: "M-8,4 C-8,0 8,0 8,-4", stroke: NEGATIVE, "stroke-width": 2, fill: "none" })), "red edge: weight < 0", "edge-negative");
  row(swatch(svgEl("path", { d: "M-8,2 L8,2", stroke: "#888", "stroke-width": 0.8 }), svgEl("path", { d: "M-8,-3 L8,-3", stroke: "#888", "stroke-width": 4 })), "edge width and opacity: |weight|", "edge-width");
  row(swatch(svgEl("circle", { r: 5, fill: "#fff", stroke: "#333", "stroke-dasharray": "2 1.5", "stroke-width": 1.5 }), svgEl("path", { d: "M-3,-3L3,3M3,-3L-3,3", stroke: "#333", "stroke-width": 1.5 })), "ablated (crossed out)", "ablated");
  row(swatch(svgEl("circle", { r: 4, fill: "#eee" }), svgEl("circle", { r: 7, fill: "none", stroke: "#000", "stroke-width": 2 })), "selected (black ring)", "selected");
  row(swatch(svgEl("circle", { r: 5, fill: "#eee" }), svgEl("circle", { r: 2.5, cx: 4, cy: -4, fill: "#222", stroke: "#fff" })), "pinned (dot; alt-click to pin)", "pinned");
  return box;
}

interface Preview {
  head: string;
  tokens: string[];
  size: number;
  pattern: Uint8Array;
  roles: Record<string, number>;
}

const previews = new WeakMap<object, Map<string, Preview | "pending" | string>>();

/** Show the attention pattern of ``head`` on the clean prompt in ``box``: asked of the
 * kernel once per head (reply ``head_pattern`` with one uint8 buffer), then from the cache. */
export function attentionPreview(model: AnyModel<CircuitTraits>, box: HTMLElement, head: string): void {
  let cache = previews.get(model);
  if (!cache) {
    const fresh = new Map<string, Preview | "pending" | string>();
    previews.set(model, fresh);
    cache = fresh;
    model.on("msg:custom", (msg: { type?: string; head?: string; tokens?: string[]; roles?: Record<string, number>; request?: string; message?: string }, buffers?: (DataView | ArrayBuffer)[]) => {
      if (msg.type === "head_pattern" && msg.head && buffers?.length) {
        const b = buffers[0];
        const bytes = b instanceof DataView ? new Uint8Array(b.buffer, b.byteOffset, b.byteLength) : new Uint8Array(b);
        const tokens = msg.tokens ?? [];
        fresh.set(msg.head, { head: msg.head, tokens, size: tokens.length, pattern: bytes.slice(), roles: msg.roles ?? {} });
        if (box.getAttribute("data-head") === msg.head) drawPreview(box, fresh.get(msg.head) as Preview);
      } else if (msg.type === "error" && typeof msg.request === "string" && msg.request.startsWith("head:")) {
        const id = msg.request.slice(5);
        fresh.set(id, msg.message ?? "no preview");
        if (box.getAttribute("data-head") === id) setText(box, `${id}: ${msg.message ?? "no preview"}`);
      }
    });
  }
  box.setAttribute("data-head", head);
  const known = cache.get(head);
  if (known === undefined) {
    cache.set(head, "pending");
    setText(box, `${head}: loading attention…`);
    model.send({ type: "head_pattern", head, request: `head:${head}` });
  } else if (known === "pending") setText(box, `${head}: loading attention…`);
  else if (typeof known === "string") setText(box, `${head}: ${known}`);
  else drawPreview(box, known);
}

function drawPreview(box: HTMLElement, p: Preview): void {
  clear(box);
  box.setAttribute("data-state", "ready");
  const n = p.size;
  const px = Math.max(2, Math.floor(132 / Math.max(1, n)));
  const canvas = el("canvas", { width: n * px, height: n * px, "data-role": "head-preview-canvas", title: "query (rows) × key (columns) on the clean prompt" });
  const ctx = canvas.getContext("2d");
  if (ctx) {
    for (let q = 0; q < n; q++) {
      for (let k = 0; k < n; k++) {
        ctx.fillStyle = css(sequential(p.pattern[q * n + k] / 255));
        ctx.fillRect(k * px, q * px, px, px);
      }
    }
  }
  // Where the last token (the one predicting the answer) looks most.
  const last = p.pattern.subarray((n - 1) * n, n * n);
  let best = 0;
  for (let k = 1; k < n; k++) if (last[k] > last[best]) best = k;
  const roles = Object.entries(p.roles).map(([r, v]) => `${r.replace("_", " ")} ${fmt(v, 2)}`).join(" · ");
  box.append(
    el("div", { class: "cv-title" }, `${p.head} attention (clean prompt)`),
    canvas,
    el("div", { class: "cv-muted", "data-role": "head-preview-summary" }, `last token looks at ${best}: “${truncate(showToken(p.tokens[best] ?? ""), 16)}” (${fmt(last[best] / 255, 2)})`),
    el("div", { class: "cv-muted" }, roles),
  );
}
