// CircuitView's edge panel ("patch this path exactly") and MIB curve. The kernel
// (circuitviz/views/_circuit_mib.py) decides which edge a click names, its score, its exact
// value and every point of the curve; this file only draws them and sends the requests.
import { NEGATIVE, POSITIVE } from "./colors";
import { clear, el, fmt, setText } from "./dom";
import { svgEl } from "./export";
import type { AnyModel, CircuitTraits } from "./types";

type Model = AnyModel<CircuitTraits>;

const CURVE = "#1f77b4";
const CURRENT = "#e6550d";

/** Is this drawn edge the selected one? (A GQA k/v edge is drawn into each head of its group;
 * the one clicked is the one selected.) */
export function isSelectedEdge(model: Model, source: string, target: string, input: string): boolean {
  const s = model.get("selected_edge") ?? [];
  return s.length === 3 && s[0] === source && s[1] === target && s[2] === input;
}

/** What a click on an edge asks for: it selected, or nothing if it was (the kernel checks
 * the edge and sends its facts back). */
export function clickedEdge(model: Model, source: string, target: string, input: string): string[] {
  return isSelectedEdge(model, source, target, input) ? [] : [source, target, input];
}

/** Writes ``selected_edge`` (circuit.ts owns the trait writes of its view). */
export type SetEdge = (edge: string[]) => void;

/** The side panel's edge section: the selected edge, its attribution score, and its exact
 * value once the button asked the kernel for it. */
export function edgePanel(model: Model, setEdge: SetEdge): { el: HTMLElement; draw: () => void; reply: (msg: { type?: string; request?: unknown; message?: string }) => boolean } {
  const box = el("div", { class: "cv-edge-panel", "data-role": "edge-panel" });
  let running = false;
  let failed = "";
  const run = el("button", { class: "cv-button", type: "button", "data-role": "patch-edge", title: "Patch only this edge with its corrupted value and measure the metric (one forward pass in the kernel)" }, "Patch this path exactly");
  run.addEventListener("click", () => {
    running = true;
    failed = "";
    model.send({ type: "patch_edge", request: "patch_edge" });
    draw();
  });
  const close = el("button", { class: "cv-button", type: "button", "data-role": "edge-clear", title: "Clear the edge selection" }, "×");
  close.addEventListener("click", () => setEdge([]));

  function draw(): void {
    clear(box);
    const info = model.get("edge_info") ?? {};
    if (!info.source) {
      box.append(el("div", { class: "cv-muted" }, "click an edge: its score, and its exact value on request"));
      return;
    }
    const via = info.input === "logits" ? "logits" : info.input + (info.kv_head !== null && info.kv_head !== undefined ? `, KV head ${info.kv_head}` : "");
    const row = (label: string, role: string, value: number | undefined, title: string) =>
      el("tr", { title }, el("td", {}, label), el("td", { "data-role": role, "data-value": value === undefined ? "" : String(value) }, value === undefined ? "–" : fmt(value, 4)));
    box.append(
      el("div", { class: "cv-edge-title" }, el("b", { "data-role": "edge-name" }, `${info.source} → ${info.target}`), ` (${via}) `, close),
      el("div", { class: "cv-muted", "data-legend": "edge-selected" }, outlineKey(), "outlined in black in the graph"),
      el(
        "table",
        { class: "cv-faith" },
        row(`score (${info.method ?? "attribution"})`, "edge-score", info.weight, "The attribution estimate of the change of the metric when only this edge is patched"),
        row("exact: patched − clean", "edge-exact", info.exact, `${info.metric ?? "metric"} with only this edge patched with its corrupted value, minus the clean run's`),
      ),
    );
    if (info.can_patch) {
      run.disabled = running;
      box.append(el("div", {}, run, el("span", { class: "cv-muted", "data-role": "edge-status" }, running ? " running…" : failed ? ` ${failed}` : "")));
    } else {
      box.append(el("div", { class: "cv-muted" }, "exact patching needs a live kernel with the model, the pairs and a circuitviz Graph"));
    }
  }

  function reply(msg: { type?: string; request?: unknown; message?: string }): boolean {
    if (msg.request !== "patch_edge") return false;
    running = false;
    if (msg.type === "error") failed = msg.message ?? "failed";
    draw();
    return true;
  }
  model.on("change:edge_info", () => {
    running = false;
    draw();
  });
  draw();
  return { el: box, draw, reply };
}

/** The mark of the selected edge (a black outline), for the panel's key. */
function outlineKey(): SVGSVGElement {
  const s = svgEl("svg", { width: 18, height: 10, style: "vertical-align:middle;margin-right:4px" });
  s.append(svgEl("path", { d: "M1,5L17,5", stroke: "#000", "stroke-width": 5 }), svgEl("path", { d: "M1,5L17,5", stroke: NEGATIVE, "stroke-width": 2 }));
  return s;
}

const W = 262;
const H = 176;
const M = { left: 58, right: 8, top: 8, bottom: 34 };

/** The MIB curve: faithfulness against the share of the graph's edges (log axis), the
 * shown circuit's point, and CPR / CMD. */
export function mibPlot(model: Model, live: () => boolean): { el: HTMLElement; draw: () => void; reply: (msg: { type?: string; request?: unknown; message?: string }) => boolean } {
  const box = el("div", { class: "cv-mib", "data-role": "mib" });
  let running = false;
  let failed = "";
  const run = el("button", { class: "cv-button", type: "button", "data-role": "mib-run", title: "Exact faithfulness of the strongest-edge circuits at MIB's sizes (0.1 % … 100 % of edges): 10 circuits in the kernel" }, "MIB curve");
  run.addEventListener("click", () => {
    running = true;
    failed = "";
    model.send({ type: "mib", request: "mib" });
    draw();
  });

  function draw(): void {
    clear(box);
    const mib = model.get("mib") ?? {};
    const status = running ? " computing…" : failed ? ` ${failed}` : "";
    if (!mib.fraction || !mib.faithfulness) {
      if (model.get("has_faithfulness") && live()) box.append(el("div", {}, run, el("span", { class: "cv-muted", "data-role": "mib-status" }, status)));
      return;
    }
    const xs = mib.fraction;
    const ys = mib.faithfulness;
    const cur = mib.current;
    const curF = cur && cur.fraction !== null && cur.fraction > 0 ? cur.fraction : null;
    const x0 = Math.log10(Math.min(xs[0], curF ?? 1) / 1.3);
    const x1 = 0;
    const allY = [...ys, 0, 1, ...(cur && cur.faithfulness !== null ? [cur.faithfulness] : [])];
    const y0 = Math.min(...allY);
    const y1 = Math.max(...allY);
    const pad = (y1 - y0) * 0.06 || 0.1;
    const sx = (f: number) => M.left + ((Math.log10(f) - x0) / (x1 - x0)) * (W - M.left - M.right);
    const sy = (v: number) => H - M.bottom - ((v - (y0 - pad)) / (y1 + pad - (y0 - pad))) * (H - M.top - M.bottom);
    const svg = svgEl("svg", { width: W, height: H, "font-family": "system-ui, sans-serif", "font-size": 10, "data-role": "mib-plot" });
    const left = M.left;
    const right = W - M.right;
    for (const v of [0, 1]) {
      svg.append(svgEl("line", { x1: left, x2: right, y1: sy(v), y2: sy(v), stroke: "#bbb", "stroke-dasharray": "3 2" }));
      svg.append(svgEl("text", { x: left - 4, y: sy(v), "text-anchor": "end", "dominant-baseline": "central", fill: "#555", "data-role": "mib-y-tick" }, v === 1 ? "1 clean" : "0 corr."));
    }
    // Values past 0…1 (a circuit can overshoot the clean model): their extreme gets a tick.
    for (const v of [y0, y1]) {
      if (v > 1.25 || v < -0.25) {
        svg.append(svgEl("line", { x1: left - 3, x2: left, y1: sy(v), y2: sy(v), stroke: "#888" }));
        svg.append(svgEl("text", { x: left - 4, y: sy(v), "text-anchor": "end", "dominant-baseline": "central", fill: "#555", "data-role": "mib-y-tick" }, fmt(v, 2)));
      }
    }
    svg.append(svgEl("line", { x1: left, x2: left, y1: M.top, y2: H - M.bottom, stroke: "#888" }));
    svg.append(svgEl("line", { x1: left, x2: right, y1: H - M.bottom, y2: H - M.bottom, stroke: "#888" }));
    for (const t of [0.001, 0.01, 0.1, 1]) {
      if (Math.log10(t) < x0) continue;
      svg.append(svgEl("line", { x1: sx(t), x2: sx(t), y1: H - M.bottom, y2: H - M.bottom + 3, stroke: "#888" }));
      svg.append(svgEl("text", { x: sx(t), y: H - M.bottom + 12, "text-anchor": t === 1 ? "end" : "middle", fill: "#555", "data-role": "mib-tick" }, `${t * 100}%`));
    }
    svg.append(svgEl("text", { x: (left + right) / 2, y: H - 4, "text-anchor": "middle", fill: "#333", "data-role": "mib-x-label" }, "edges in circuit (share, log axis)"));
    svg.append(svgEl("text", { x: 9, y: (M.top + H - M.bottom) / 2, "text-anchor": "middle", fill: "#333", transform: `rotate(-90 9 ${(M.top + H - M.bottom) / 2})`, "data-role": "mib-y-label" }, "faithfulness"));
    const pts = xs.map((x, i) => `${sx(x).toFixed(1)},${sy(ys[i]).toFixed(1)}`);
    svg.append(svgEl("polyline", { points: pts.join(" "), fill: "none", stroke: CURVE, "stroke-width": 1.5 }));
    xs.forEach((x, i) => {
      const dot = svgEl("circle", { cx: sx(x), cy: sy(ys[i]), r: 2.5, fill: CURVE, "data-role": "mib-point", "data-fraction": String(x), "data-value": String(ys[i]) });
      dot.append(svgEl("title", {}, `${(x * 100).toPrecision(2)}% of edges (${mib.n_edges?.[i] ?? "?"} kept): faithfulness ${fmt(ys[i], 3)}`));
      svg.append(dot);
    });
    if (curF !== null && cur && cur.faithfulness !== null) {
      const cx = sx(curF);
      const cy = sy(cur.faithfulness);
      const mark = svgEl("path", { d: `M${cx},${cy - 5}L${cx + 5},${cy}L${cx},${cy + 5}L${cx - 5},${cy}Z`, fill: CURRENT, stroke: "#fff", "stroke-width": 1, "data-role": "mib-current", "data-fraction": String(curF), "data-value": String(cur.faithfulness) });
      mark.append(svgEl("title", {}, `shown circuit: ${cur.n_edges} edges, faithfulness ${fmt(cur.faithfulness, 3)}`));
      svg.append(mark);
    }
    const key = (mark: SVGElement, text: string, role: string) => {
      const s = svgEl("svg", { width: 16, height: 10 });
      s.append(mark);
      return el("span", { class: "cv-mib-key", "data-legend": role }, s, text);
    };
    const shown = cur && cur.faithfulness !== null ? `shown circuit (${cur.n_edges} edges): ${fmt(cur.faithfulness, 3)}` : "shown circuit: faithfulness pending";
    box.append(
      el("div", { class: "cv-edge-title" }, el("b", {}, "MIB faithfulness"), el("span", { class: "cv-muted" }, ` · ${mib.method ?? ""}, ${mib.total ?? "?"} edges`)),
      svg,
      el(
        "div",
        { class: "cv-mib-legend", "data-role": "mib-legend" },
        key(svgEl("path", { d: "M1,5L15,5", stroke: CURVE, "stroke-width": 1.5 }), "strongest edges at MIB's sizes", "curve"),
        key(svgEl("path", { d: "M8,0L13,5L8,10L3,5Z", fill: CURRENT }), shown, "current"),
      ),
      el(
        "div",
        { "data-role": "mib-areas" },
        el("span", { title: "Area under the curve on a linear axis (higher is better)", style: `color:${POSITIVE}` }, `CPR ${fmt(mib.cpr ?? NaN, 3)} ↑`),
        " · ",
        el("span", { title: "Area between the curve and 1 on a linear axis (lower is better)", style: `color:${NEGATIVE}` }, `CMD ${fmt(mib.cmd ?? NaN, 3)} ↓`),
      ),
    );
  }

  function reply(msg: { type?: string; request?: unknown; message?: string }): boolean {
    if (msg.request !== "mib") return false;
    running = false;
    if (msg.type === "error") failed = msg.message ?? "failed";
    draw();
    return true;
  }
  model.on("change:mib", () => {
    running = false;
    draw();
  });
  return { el: box, draw, reply };
}

export const MIB_STYLE = `
.cv-edge-panel,.cv-mib{margin:8px 0;padding-top:6px;border-top:1px solid #eee;font-size:12px}
.cv-edge-title{margin-bottom:4px;overflow-wrap:anywhere}
.cv-mib-legend{display:flex;flex-direction:column;gap:2px;font-size:11px}
.cv-mib-key svg{vertical-align:middle;margin-right:4px}
`;
