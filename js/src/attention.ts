// AttentionView: a layer × head grid of thumbnails; the focused head as a query × key heatmap
// and as the prompt's text. Thumbnails arrive with the widget; a layer's full patterns
// (float16) only when one of its heads is focused: {type: "request_layer", layer} → chunks.
// A standalone HTML page may answer with a downsampled layer: the chunks then carry the token
// bins' `edges` and a `notice` the view shows above the heatmap.
import { badgeLayout, badgeLegendEl, badgesSVG, drawBadgesCanvas, legendMap } from "./badges";
import { decode, type EncodedArray } from "./codec";
import { css, type RGB, sequential, sequentialScale, textOn } from "./colors";
import { el, fmt, root, select, setText, showToken, truncate } from "./dom";
import { exportButtons, svgEl, svgRoot } from "./export";
import { Heatmap } from "./heatmap";
import type { AnyModel, AttentionTraits } from "./types";

export const ROLES = ["", "previous_token", "duplicate_token", "induction"];
const ROLE_LABELS: Record<string, string> = { "": "patterns", previous_token: "previous-token score", duplicate_token: "duplicate-token score", induction: "induction score" };
export const COLOR_SCALES = ["linear", "sqrt", "log"];
const SCALE_LABELS: Record<string, string> = { linear: "linear", sqrt: "√ (sqrt)", log: "log" };
/** Colour-bar ticks of the √ scale: attention values (python: export/_figures.SQRT_TICKS). */
const SQRT_TICKS = [0, 0.01, 0.05, 0.1, 0.25, 0.5, 1];
/** Text highlight colour of "what this token attends to". */
const ATTENDS: RGB = [33, 102, 172];

interface LayerChunk {
  type: "layer";
  layer: number;
  head: number;
  row0: number;
  row1: number;
  /** Rows (and columns) of the pattern sent: tokens, or token bins when downsampled. */
  n_pos: number;
  n_tokens?: number;
  chunks: number;
  dtype: "float16" | "float32";
  /** Downsampled only: bin b holds tokens edges[b] … edges[b + 1] - 1. */
  edges?: number[];
  notice?: string;
}

/** How a layer's pattern maps to tokens: n × n cells, token i in cell row/column bin[i]. */
export interface LayerInfo {
  n: number;
  edges: number[] | null;
  bin: Int32Array;
  notice: string;
}

/** Reassembles one layer's [head, dest, src] patterns from row chunks. */
export class LayerStore {
  private heads = new Map<number, Float32Array[]>();
  private infos = new Map<number, LayerInfo>();
  private received = new Map<number, number>();
  private done = new Set<number>();

  constructor(
    readonly nHeads: number,
    readonly nPos: number,
  ) {}

  add(msg: LayerChunk, buffer: DataView | ArrayBuffer | ArrayBufferView): boolean {
    let heads = this.heads.get(msg.layer);
    if (!heads) {
      const n = msg.n_pos;
      heads = Array.from({ length: this.nHeads }, () => new Float32Array(n * n));
      this.heads.set(msg.layer, heads);
      this.infos.set(msg.layer, layerInfo(this.nPos, n, msg.edges ?? null, msg.notice ?? ""));
    }
    const rows = msg.row1 - msg.row0;
    const { data } = decode({ view: buffer, dtype: msg.dtype, shape: [rows, msg.n_pos] } as EncodedArray);
    heads[msg.head].set(data as Float32Array, msg.row0 * msg.n_pos);
    const n = (this.received.get(msg.layer) ?? 0) + 1;
    this.received.set(msg.layer, n);
    if (n >= msg.chunks) this.done.add(msg.layer);
    return this.done.has(msg.layer);
  }

  has(layer: number): boolean {
    return this.done.has(layer);
  }

  info(layer: number): LayerInfo | null {
    return this.done.has(layer) ? this.infos.get(layer)! : null;
  }

  pattern(layer: number, head: number): Float32Array | null {
    return this.done.has(layer) ? this.heads.get(layer)![head] : null;
  }
}

function layerInfo(nTokens: number, n: number, edges: number[] | null, notice: string): LayerInfo {
  const bin = new Int32Array(nTokens);
  for (let i = 0; i < nTokens; i++) bin[i] = i;
  if (edges) for (let b = 0; b + 1 < edges.length; b++) bin.fill(b, edges[b], edges[b + 1]);
  return { n, edges, bin, notice };
}

/** Where attention p sits on a colour scale, in [0, 1] (python: export/_figures.attention_colors). */
export function colorPosition(scale: string, p: number, logFloor: number): number {
  if (scale === "sqrt") return Math.sqrt(Math.max(0, p));
  if (scale === "log") {
    const low = Math.log10(logFloor);
    return (Math.log10(Math.max(p, logFloor)) - low) / -low;
  }
  return p;
}

/** Colour-bar ticks ([position, label]) that read as attention weights on `scale`. */
export function scaleTicks(scale: string, logFloor: number): [number, string][] {
  if (scale === "sqrt") return SQRT_TICKS.map((v) => [Math.sqrt(v), String(v)]);
  if (scale === "log") {
    const low = Math.round(Math.log10(logFloor));
    const out: [number, string][] = [];
    for (let e = low; e <= 0; e++) out.push([(e - low) / -low, (e === low ? "≤" : "") + String(Number((10 ** e).toPrecision(1)))]);
    return out;
  }
  return [0, 0.25, 0.5, 0.75, 1].map((v) => [v, String(v)]);
}

function scaleLabel(scale: string): string {
  return scale === "linear" ? "attention" : `attention (${scale === "sqrt" ? "√" : "log"} scale)`;
}

/** Everything hovering a token may set, back to the stylesheet's (no inline style left). */
export function clearHover(s: HTMLElement): void {
  s.style.removeProperty("background");
  s.style.removeProperty("color");
  s.style.removeProperty("border-bottom-color");
  s.removeAttribute("data-focus");
  s.removeAttribute("title");
}

export function parseHead(id: string): [number, number] | null {
  const m = /^L(\d+)H(\d+)(?::P\d+)?$/.exec(id || "");
  return m ? [Number(m[1]), Number(m[2])] : null;
}

function render({ model, el: host }: { model: AnyModel<AttentionTraits>; el: HTMLElement }) {
  const rootEl = root(host, "attention");
  const L = model.get("n_layers");
  const H = model.get("n_heads");
  const tokens = model.get("tokens");
  const T = tokens.length;
  const logFloor = model.get("log_floor") || 1e-4;
  const store = new LayerStore(H, T);
  const requested = new Set<number>();
  const layerErrors = new Map<number, string>();
  const error = el("div", { class: "cv-error", "data-role": "error", role: "alert" });
  const roleSelect = select("role", ROLES, model.get("show_scores") || "", ROLE_LABELS);
  roleSelect.title = "Show head-role scores on the grid";
  const scaleSelect = select("color-scale", COLOR_SCALES, model.get("color_scale") || "linear", SCALE_LABELS);
  scaleSelect.title = "Colour scale of the focused head's pattern (√ and log show faint attention)";
  const hideBos = el("input", { type: "checkbox", "data-role": "hide-bos" });
  hideBos.checked = !!model.get("hide_bos");
  const focusTitle = el("div", { class: "cv-title", "data-role": "focus-title" });
  const focusBox = el("div", { class: "cv-focus", "data-role": "focus" });
  const tokenBox = el("div", { class: "cv-tokens", "data-role": "tokens", style: "overflow-wrap:anywhere" });
  const busy = el("span", { class: "cv-busy", "data-role": "busy" }, "loading layer…");
  let heatmap: Heatmap | null = null;
  const onError = (e: unknown) => setText(error, String(e));
  const buildSVG = () => (heatmap ? heatmap.toSVG() : gridSVG());
  const toolbar = el(
    "div",
    { class: "cv-toolbar" },
    el("span", { class: "cv-title" }, `Attention · ${model.get("model_name") || "model"} · ${T} tokens`),
    el("label", {}, "grid shows ", roleSelect),
    el("label", {}, "colour ", scaleSelect),
    el("label", { title: "Hide the first key column: most heads park attention on BOS (the attention sink)" }, hideBos, " hide BOS column"),
    ...exportButtons("attention", buildSVG, onError),
    busy,
  );
  const thumbs = decode(model.get("thumbnails"));
  const t = thumbs.shape[2] ?? 1;
  const cell = Math.max(14, Math.min(44, Math.floor(560 / Math.max(L, 1))));
  const gap = 2;
  const labelW = 34;
  const cellsW = H * (cell + gap) - gap;
  const gridW = labelW + cellsW + 8;
  const gridH = 16 + L * (cell + gap);
  const barTop = gridH + 6; // the exported SVG's colour bar
  const gridCanvas = el("canvas", { "data-role": "grid-canvas" });
  const hits = el("div", { class: "cv-hits", style: `left:${labelW}px;top:16px` });
  const gridTip = el("div", { class: "cv-tooltip", "data-role": "grid-tooltip" });
  const grid = el("div", { class: "cv-hm cv-grid", "data-role": "grid" }, gridCanvas, hits, gridTip);
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const id = `L${l}H${h}`;
      const hit = el("div", { class: "cv-hit", "data-component": id, role: "button", tabindex: 0, "aria-label": id, style: `left:${h * (cell + gap)}px;top:${l * (cell + gap)}px;width:${cell}px;height:${cell}px` });
      hit.addEventListener("mouseenter", () => {
        const lines = [id, ...roleLines(id), ...["previous_token", "duplicate_token", "induction"].map((r) => `${r}: ${fmt(score(r, l, h), 3)}`)];
        setText(gridTip, lines.join("\n"));
        gridTip.style.display = "block";
        gridTip.style.left = `${labelW + (h + 1) * (cell + gap)}px`;
        gridTip.style.top = `${16 + l * (cell + gap)}px`;
      });
      hit.addEventListener("mouseleave", () => (gridTip.style.display = "none"));
      hit.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          hit.click();
        }
      });
      hit.addEventListener("click", () => {
        model.set("selected", id);
        model.save_changes();
        focus();
      });
      hits.append(hit);
    }
  }
  // The focus column takes the rest of the row (basis 0) so a long prompt's text wraps
  // inside it instead of pushing the heatmap below the grid.
  const focusCol = el("div", { class: "cv-focus-col", style: "flex:1 1 0" }, focusTitle, focusBox, tokenBox);
  rootEl.append(toolbar, error, el("div", { class: "cv-row cv-main" }, grid, focusCol));

  const scoreArrays: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(model.get("scores") ?? {})) scoreArrays[k] = decode(v).data as Float32Array;
  function score(role: string, l: number, h: number): number {
    return scoreArrays[role]?.[l * H + h] ?? NaN;
  }

  // Thumbnails are painted once into one image; the grid redraw only scales it.
  const sheet = el("canvas", { width: H * t, height: L * t });
  {
    const ctx = sheet.getContext("2d");
    if (ctx) {
      const img = ctx.createImageData(H * t, L * t);
      for (let l = 0; l < L; l++)
        for (let h = 0; h < H; h++)
          for (let y = 0; y < t; y++)
            for (let x = 0; x < t; x++) {
              const v = Math.sqrt(thumbs.data[((l * H + h) * t + y) * t + x] / 255); // √p: faint patterns stay visible
              const c = sequential(v);
              const o = 4 * ((l * t + y) * H * t + h * t + x);
              img.data.set([c[0], c[1], c[2], 255], o);
            }
      ctx.putImageData(img, 0, 0);
    }
  }

  /** The grid's colour bar: role scores (linear 0–1) or the thumbnails' √ scale. */
  function gridLegend(): { ticks: [number, string][]; caption: string } {
    const role = model.get("show_scores");
    if (role) return { ticks: [0, 0.25, 0.5, 0.75, 1].map((v) => [v, String(v)]), caption: ROLE_LABELS[role] ?? role };
    return { ticks: [0, 0.05, 0.25, 0.5, 1].map((v) => [Math.sqrt(v), String(v)]), caption: "thumbnails: max attention (√ scale)" };
  }

  // The grid's colour bar is DOM (text ticks), under the canvas: readable and testable.
  const legendW = Math.max(cellsW, 180); // a grid of few heads still gets readable ticks
  const legend = el("div", { class: "cv-grid-legend", "data-role": "grid-legend", style: `position:relative;margin:0 8px 0 ${labelW}px;width:${legendW}px;height:42px` });
  grid.append(legend);
  // Head-role badges (head_roles): which head has which role is the kernel's; drawn in each cell.
  const roleBadges = model.get("role_badges") ?? [];
  const badgeKey = legendMap(roleBadges);
  const headRoles = model.get("roles") ?? {};
  if (roleBadges.length) grid.append(badgeLegendEl(roleBadges));
  function roleLines(id: string): string[] {
    const rs = headRoles[id] ?? [];
    return rs.length ? [`roles: ${rs.map((r) => badgeKey.get(r)?.label ?? r).join(", ")}`] : [];
  }
  function drawGridLegend(): void {
    const { ticks, caption } = gridLegend();
    const bar = el("canvas", { width: legendW, height: 1, style: `display:block;width:${legendW}px;height:10px;border:1px solid #999;box-sizing:border-box` });
    const ctx = bar.getContext("2d");
    if (ctx) for (let i = 0; i < legendW; i++) {
      ctx.fillStyle = css(sequential(i / (legendW - 1)));
      ctx.fillRect(i, 0, 1, 1);
    }
    const tickEls = ticks.map(([pos, label]) => el("span", { "data-role": "legend-tick", style: `position:absolute;top:11px;left:${pos * legendW}px;transform:translateX(-50%);font-size:11px` }, label));
    const captionEl = el("span", { "data-role": "legend-caption", style: "position:absolute;top:25px;left:0;font-size:11px;color:#555;white-space:nowrap" }, caption);
    legend.replaceChildren(bar, ...tickEls, captionEl);
  }

  function drawGrid(): void {
    const dpr = window.devicePixelRatio || 1;
    gridCanvas.width = gridW * dpr;
    gridCanvas.height = gridH * dpr;
    gridCanvas.style.width = `${gridW}px`;
    gridCanvas.style.height = `${gridH}px`;
    const ctx = gridCanvas.getContext("2d");
    if (!ctx) return;
    ctx.scale(dpr, dpr);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, gridW, gridH);
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = "#444";
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    for (let h = 0; h < H; h++) ctx.fillText(`H${h}`, labelW + h * (cell + gap) + cell / 2, 14);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const role = model.get("show_scores");
    const sel = focused;
    ctx.imageSmoothingEnabled = t > cell;
    for (let l = 0; l < L; l++) {
      ctx.fillStyle = "#444";
      ctx.fillText(`L${l}`, labelW - 4, 16 + l * (cell + gap) + cell / 2);
      for (let h = 0; h < H; h++) {
        const x = labelW + h * (cell + gap);
        const y = 16 + l * (cell + gap);
        if (role) {
          const s = score(role, l, h);
          const c = sequential(s);
          ctx.fillStyle = css(c);
          ctx.fillRect(x, y, cell, cell);
          if (cell >= 24) {
            ctx.fillStyle = textOn(c);
            ctx.textAlign = "center";
            ctx.fillText(s.toFixed(2), x + cell / 2, y + cell / 2);
            ctx.textAlign = "right";
          }
        } else {
          ctx.drawImage(sheet, h * t, l * t, t, t, x, y, cell, cell);
        }
        ctx.strokeStyle = "#ddd";
        ctx.lineWidth = 1;
        ctx.strokeRect(x + 0.5, y + 0.5, cell - 1, cell - 1);
        const badges = badgeLayout(cell, headRoles[`L${l}H${h}`] ?? [], badgeKey);
        drawBadgesCanvas(ctx, x, y, badges.font, badges.boxes);
        ctx.font = "10px system-ui, sans-serif"; // the cell labels' font again
        if (sel && sel[0] === l && sel[1] === h) {
          ctx.strokeStyle = "#000";
          ctx.lineWidth = 2;
          ctx.strokeRect(x - 1, y - 1, cell + 2, cell + 2);
        }
      }
    }
    drawGridLegend();
    for (const hit of hits.children) {
      (hit as HTMLElement).dataset.selected = String(!!sel && (hit as HTMLElement).dataset.component === `L${sel[0]}H${sel[1]}`);
    }
  }

  function gridSVG(): SVGSVGElement {
    const svg = svgRoot(Math.max(gridW, labelW + legendW + 60), barTop + 46);
    const role = model.get("show_scores");
    for (let h = 0; h < H; h++) svg.append(svgEl("text", { x: labelW + h * (cell + gap) + cell / 2, y: 12, "text-anchor": "middle" }, `H${h}`));
    for (let l = 0; l < L; l++) {
      svg.append(svgEl("text", { x: labelW - 4, y: 16 + l * (cell + gap) + cell / 2, "text-anchor": "end", "dominant-baseline": "middle" }, `L${l}`));
      for (let h = 0; h < H; h++) {
        const x = labelW + h * (cell + gap);
        const y = 16 + l * (cell + gap);
        if (role) svg.append(svgEl("rect", { x, y, width: cell, height: cell, fill: css(sequential(score(role, l, h))), "data-component": `L${l}H${h}` }));
        else {
          const one = el("canvas", { width: t, height: t });
          one.getContext("2d")?.drawImage(sheet, h * t, l * t, t, t, 0, 0, t, t);
          svg.append(svgEl("image", { x, y, width: cell, height: cell, href: one.toDataURL(), "data-component": `L${l}H${h}` }));
        }
        const badges = badgeLayout(cell, headRoles[`L${l}H${h}`] ?? [], badgeKey);
        if (badges.boxes.length) svg.append(badgesSVG(x, y, badges.font, badges.boxes, `L${l}H${h}`));
      }
    }
    const { ticks, caption } = gridLegend();
    const grad = svgEl("linearGradient", { id: "cv-grid-colorbar", x1: 0, y1: 0, x2: 1, y2: 0 });
    for (let i = 0; i <= 10; i++) grad.append(svgEl("stop", { offset: i / 10, "stop-color": css(sequential(i / 10)) }));
    const defs = svgEl("defs");
    defs.append(grad);
    svg.append(defs, svgEl("rect", { x: labelW, y: barTop, width: legendW, height: 10, fill: "url(#cv-grid-colorbar)", stroke: "#999" }));
    for (const [pos, label] of ticks) svg.append(svgEl("text", { x: labelW + pos * legendW, y: barTop + 22, "text-anchor": "middle" }, label));
    svg.append(svgEl("text", { x: labelW, y: barTop + 38, fill: "#555" }, caption));
    roleLegendSVG(svg, barTop + 46);
    return svg;
  }

  /** The badges' legend under the exported grid's colour bar (the SVG grows to hold it). */
  function roleLegendSVG(svg: SVGSVGElement, top: number): void {
    if (!roleBadges.length) return;
    let x = labelW;
    let y = top + 4;
    const width = Number(svg.getAttribute("width"));
    for (const b of roleBadges) {
      const w = 26 + b.label.length * 6.2;
      if (x + w > width && x > labelW) {
        x = labelW;
        y += 16;
      }
      svg.append(badgesSVG(x, y, 10, [{ x: 0, y: 0, w: 20, h: 12, text: b.text, color: b.color }], b.role), svgEl("text", { x: x + 24, y: y + 10 }, b.label));
      x += w + 10;
    }
    const height = y + 18;
    svg.setAttribute("height", String(height));
    svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
    svg.querySelector("rect")?.setAttribute("height", String(height));
  }

  // Token text: hover a token to see what it attends to (background) and what attends to it (underline).
  const spans: HTMLSpanElement[] = tokens.map((tok, i) => el("span", { class: "cv-token", "data-pos": i }, showToken(tok)));
  tokenBox.append(...spans);
  let hoverPos: number | null = null;
  tokenBox.addEventListener("mouseover", (e) => {
    const pos = (e.target as HTMLElement).dataset?.pos;
    if (pos !== undefined) highlight(Number(pos));
  });
  tokenBox.addEventListener("mouseleave", () => highlight(null));

  function highlight(i: number | null): void {
    hoverPos = i;
    const sel = focused;
    const p = sel ? store.pattern(sel[0], sel[1]) : null;
    const info = sel ? store.info(sel[0]) : null;
    if (i === null || !p || !info) {
      for (const s of spans) clearHover(s);
      return;
    }
    const { n, bin } = info;
    const scale = model.get("color_scale") || "linear";
    for (let j = 0; j < T; j++) {
      const s = spans[j];
      const to = p[bin[i] * n + bin[j]]; // i (query) attends to j (key); a block's max when downsampled
      const from = p[bin[j] * n + bin[i]]; // j attends to i
      if (j <= i) {
        const alpha = Math.min(1, colorPosition(scale, to, logFloor)) * 0.85;
        s.style.background = css(ATTENDS, alpha);
        s.style.color = textOn(ATTENDS.map((c) => Math.round(255 + (c - 255) * alpha)) as RGB);
      } else {
        s.style.removeProperty("background");
        s.style.removeProperty("color");
      }
      if (j >= i) s.style.borderBottomColor = css([230, 159, 0], Math.min(1, colorPosition(scale, from, logFloor)));
      else s.style.removeProperty("border-bottom-color");
      const approx = info.edges ? " (block max)" : "";
      s.title = `attention from ${i} → ${j}: ${fmt(to, 4)}${approx}\nfrom ${j} → ${i}: ${fmt(from, 4)}${approx}`;
      if (j === i) s.setAttribute("data-focus", "true");
      else s.removeAttribute("data-focus");
    }
  }

  // The focused head: the selection when it names one of this model's heads (another view may
  // select an MLP or a node of another graph; the focus then stays where it was).
  let focused: [number, number] | null = null;
  function currentHead(): [number, number] | null {
    const sel = parseHead(model.get("selected"));
    if (sel && sel[0] < L && sel[1] < H) focused = sel;
    return focused;
  }

  /** Token range and first token of a row/column of the shown pattern. */
  function binLabel(info: LayerInfo, b: number): string {
    if (!info.edges) return `${b}: ${truncate(showToken(tokens[b]), 16)}`;
    const [a, z] = [info.edges[b], info.edges[b + 1] - 1];
    return a === z ? `${a}: ${truncate(showToken(tokens[a]), 12)}` : `${a}–${z}: ${truncate(`${showToken(tokens[a])}…`, 10)}`;
  }

  function binRange(info: LayerInfo, b: number): string {
    if (!info.edges) return `${b} ${JSON.stringify(tokens[b])}`;
    const [a, z] = [info.edges[b], info.edges[b + 1] - 1];
    return a === z ? `${a} ${JSON.stringify(tokens[a])}` : `${a}–${z}`;
  }

  function focus(): void {
    const sel = currentHead();
    drawGrid();
    if (!sel) {
      setText(focusTitle, "Click a head to see its pattern");
      return;
    }
    const [l, h] = sel;
    setText(focusTitle, `L${l}H${h} · query (rows) × key (columns) · hover tokens below`);
    const p = store.pattern(l, h);
    const info = store.info(l);
    if (!p || !info) {
      heatmap = null;
      const failed = layerErrors.get(l);
      if (failed) {
        focusBox.replaceChildren(el("div", { class: "cv-error", "data-role": "layer-notice" }, failed));
        return;
      }
      focusBox.replaceChildren(el("div", { class: "cv-muted", "data-role": "loading" }, `loading layer ${l}…`));
      if (!requested.has(l)) {
        requested.add(l);
        rootEl.setAttribute("data-busy", "true");
        model.send({ type: "request_layer", layer: l });
      }
      return;
    }
    const scale = model.get("color_scale") || "linear";
    const n = info.n;
    const first = model.get("hide_bos") && n > 1 ? 1 : 0; // bin 0 is the first token alone
    const cols = n - first;
    const values = new Float32Array(n * cols);
    for (let r = 0; r < n; r++) for (let c = 0; c < cols; c++) values[r * cols + c] = colorPosition(scale, p[r * n + c + first], logFloor);
    const labels = Array.from({ length: n }, (_, b) => binLabel(info, b));
    const what = info.edges ? "largest attention in block" : "attention";
    heatmap = new Heatmap(
      {
        rows: n,
        cols,
        colorValues: values,
        scale: sequentialScale(0, 1),
        rowLabels: labels,
        colLabels: labels.slice(first),
        rowTitle: "query",
        colTitle: "key",
        title: first ? `L${l}H${h} (BOS column hidden)` : `L${l}H${h}`,
        colorbar: { min: 0, max: 1, label: scaleLabel(scale), scale: sequentialScale(0, 1), ticks: scaleTicks(scale, logFloor) },
        tooltip: (r, c) => `query ${binRange(info, r)} → key ${binRange(info, c + first)}\n${what} ${fmt(p[r * n + c + first], 5)}`,
      },
      { maxWidth: 560, maxHeight: 560, onHover: (r) => highlight(r === null ? null : info.edges ? info.edges[r] : r) },
    );
    const notice = info.notice ? [el("div", { class: "cv-muted", "data-role": "layer-notice", style: "max-width:640px;margin:2px 0 6px" }, info.notice)] : [];
    focusBox.replaceChildren(...notice, heatmap.el);
    if (hoverPos !== null) highlight(hoverPos);
  }

  model.on("msg:custom", (msg: { type?: string; message?: string; layer?: number }, buffers: (DataView | ArrayBuffer)[]) => {
    if (msg.type === "layer") {
      if (store.add(msg as LayerChunk, buffers[0] ?? new DataView(new ArrayBuffer(0)))) {
        rootEl.setAttribute("data-busy", "false");
        if (focused && focused[0] === msg.layer) focus();
      }
    } else if (msg.type === "error") {
      rootEl.setAttribute("data-busy", "false");
      if (msg.layer !== undefined && msg.layer !== null) {
        // A layer that can't come (out of range, or not embedded in a standalone page): say
        // so where its pattern would be, instead of "loading" forever.
        requested.delete(msg.layer);
        layerErrors.set(msg.layer, msg.message ?? "error");
        if (focused && focused[0] === msg.layer) focus();
        else setText(error, msg.message ?? "error");
      } else setText(error, msg.message ?? "error");
    }
  });
  // Each write names its trait literally: a test checks them against FRONTEND_TRAITS.
  roleSelect.addEventListener("change", () => {
    model.set("show_scores", roleSelect.value);
    model.save_changes();
    drawGrid();
  });
  scaleSelect.addEventListener("change", () => {
    model.set("color_scale", scaleSelect.value);
    model.save_changes();
    focus();
  });
  hideBos.addEventListener("change", () => {
    model.set("hide_bos", hideBos.checked);
    model.save_changes();
    focus();
  });
  model.on("change:show_scores", () => {
    roleSelect.value = model.get("show_scores") || "";
    drawGrid();
  });
  model.on("change:color_scale", () => {
    scaleSelect.value = model.get("color_scale") || "linear";
    focus();
  });
  model.on("change:hide_bos", () => {
    hideBos.checked = !!model.get("hide_bos");
    focus();
  });
  model.on("change:selected", () => focus());
  model.on("change:error", () => setText(error, model.get("error")));
  focus();
}

export default { render };
