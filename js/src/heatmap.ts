// A canvas heatmap: cells drawn once into an offscreen image (one pixel per cell) and scaled,
// axis labels thinned to fit, colour bar, hover tooltip with the exact value, click, and an
// invisible element per cell carrying data-component so tests and screen readers can find it.
import { css, type RGB, type Scale } from "./colors";
import { el, setText, truncate } from "./dom";
import { svgEl, svgRoot } from "./export";

export interface HeatmapData {
  rows: number;
  cols: number;
  /** The number the colour encodes (row-major, rows × cols). */
  colorValues: ArrayLike<number>;
  scale: Scale;
  rowLabels: string[];
  colLabels: string[];
  rowTitle?: string;
  colTitle?: string;
  title?: string;
  /** `ticks`: [position, label] pairs (default: the ends, and 0 when inside the range). */
  colorbar?: { min: number; max: number; label: string; scale: Scale; ticks?: [number, string][] };
  tooltip: (r: number, c: number) => string;
  component?: (r: number, c: number) => string | null;
}

export interface HeatmapOptions {
  maxWidth?: number;
  maxHeight?: number;
  maxCell?: number;
  /** Above this many cells no per-cell elements are made (hover/click still work). */
  maxHitCells?: number;
  onClick?: (r: number, c: number, ev: MouseEvent) => void;
  onHover?: (r: number | null, c: number | null) => void;
}

export type Mark = "selected" | "ablated" | "pinned" | "ablated-selected";

const FONT = "11px system-ui, sans-serif";

export interface Geometry {
  left: number;
  top: number;
  plotW: number;
  plotH: number;
  cw: number;
  ch: number;
  width: number;
  height: number;
  rowStep: number;
  colStep: number;
}

/** Where everything goes. Label steps keep labels ≥ 14 px apart on dense axes (an 11 px
 * label's box is 13 px tall, so 12 px steps made neighbours overlap). */
export function geometry(
  rows: number,
  cols: number,
  rowLabelW: number,
  colLabelH: number,
  opts: { maxWidth: number; maxHeight: number; maxCell: number; colorbar: boolean; title: boolean; minWidth?: number },
): Geometry {
  const plotW = Math.max(Math.min(opts.maxWidth, cols * opts.maxCell), Math.min(cols * 4, opts.maxWidth));
  const plotH = Math.max(Math.min(opts.maxHeight, rows * opts.maxCell), Math.min(rows * 4, opts.maxHeight));
  const cw = plotW / cols;
  const ch = plotH / rows;
  const left = rowLabelW + 8;
  const top = colLabelH + 8 + (opts.title ? 18 : 0);
  const width = Math.max(opts.minWidth ?? 0, left + plotW + (opts.colorbar ? 72 : 10));
  const height = top + Math.max(plotH, opts.colorbar ? 120 : 0) + (opts.colorbar ? 24 : 10);
  return { left, top, plotW, plotH, cw, ch, width, height, rowStep: Math.ceil(14 / ch), colStep: Math.ceil(14 / cw) };
}

function measure(labels: string[], limit: number, chars = 24): number {
  const ctx = document.createElement("canvas").getContext("2d");
  if (!ctx) return Math.min(limit, 7 * Math.max(0, ...labels.map((l) => Math.min(chars, l.length))));
  ctx.font = FONT;
  let w = 0;
  for (const l of labels) w = Math.max(w, ctx.measureText(truncate(l, chars)).width);
  return Math.min(limit, Math.ceil(w));
}

export class Heatmap {
  readonly el: HTMLDivElement;
  readonly geom: Geometry;
  private readonly canvas: HTMLCanvasElement;
  private readonly image: HTMLCanvasElement;
  private readonly tooltip: HTMLDivElement;
  private marks = new Map<number, Mark>();

  constructor(
    readonly data: HeatmapData,
    readonly opts: HeatmapOptions = {},
  ) {
    const rowW = measure(data.rowLabels, 160) + (data.rowTitle ? 16 : 0);
    const colH = measure(data.colLabels, 110) + (data.colTitle ? 16 : 0);
    this.geom = geometry(data.rows, data.cols, rowW, colH, {
      maxWidth: opts.maxWidth ?? 640,
      maxHeight: opts.maxHeight ?? 640,
      maxCell: opts.maxCell ?? 28,
      colorbar: !!data.colorbar,
      title: !!data.title,
      minWidth: Math.max(Math.ceil(measure([data.title ?? ""], 700, 200) * 1.2) + 8, measure([`colour: ${data.colorbar?.label ?? ""}`], 600, 200) + rowW + 16),
    });
    this.image = this.paintCells();
    this.canvas = el("canvas", { class: "cv-heatmap-canvas" });
    this.tooltip = el("div", { class: "cv-tooltip", "data-role": "tooltip" });
    this.el = el("div", { class: "cv-hm" }, this.canvas, this.hitLayer(), this.tooltip);
    this.el.addEventListener("mousemove", (e) => this.hover(e));
    this.el.addEventListener("mouseleave", () => {
      this.tooltip.style.display = "none";
      opts.onHover?.(null, null);
    });
    this.el.addEventListener("click", (e) => {
      const cell = this.cellAt(e);
      if (cell) opts.onClick?.(cell[0], cell[1], e);
    });
    this.draw();
  }

  /** One pixel per cell, or — when there are more cells than screen pixels — one pixel per
   * block holding the block's strongest value (|max|), so a one-cell stripe in a 1,000-token
   * pattern stays visible instead of being averaged away. */
  private paintCells(): HTMLCanvasElement {
    const { rows, cols, colorValues, scale } = this.data;
    const w = Math.min(cols, Math.max(1, Math.ceil(this.geom.plotW)));
    const h = Math.min(rows, Math.max(1, Math.ceil(this.geom.plotH)));
    const img = el("canvas", { width: w, height: h });
    const ctx = img.getContext("2d");
    if (!ctx) return img;
    const block = downsample(colorValues, rows, cols, h, w);
    const pixels = ctx.createImageData(w, h);
    const p = pixels.data;
    for (let i = 0; i < w * h; i++) {
      const c: RGB = scale(block[i]);
      p[4 * i] = c[0];
      p[4 * i + 1] = c[1];
      p[4 * i + 2] = c[2];
      p[4 * i + 3] = 255;
    }
    ctx.putImageData(pixels, 0, 0);
    return img;
  }

  private hitLayer(): HTMLElement {
    const { rows, cols, component } = this.data;
    const g = this.geom;
    const layer = el("div", { class: "cv-hits", style: `left:${g.left}px;top:${g.top}px;width:${g.plotW}px;height:${g.plotH}px` });
    if (!component || rows * cols > (this.opts.maxHitCells ?? 20000)) return layer;
    const focusable = rows * cols <= 600; // keyboard: Tab to a cell, Enter (Shift+Enter adds)
    layer.addEventListener("keydown", (e) => {
      const t = e.target as HTMLElement;
      if ((e.key === "Enter" || e.key === " ") && t.dataset.row !== undefined) {
        e.preventDefault();
        this.opts.onClick?.(Number(t.dataset.row), Number(t.dataset.col), e as unknown as MouseEvent);
      }
    });
    for (let r = 0; r < rows; r++) {
      for (let c = 0; c < cols; c++) {
        const id = component(r, c);
        if (!id) continue;
        const style = `left:${c * g.cw}px;top:${r * g.ch}px;width:${Math.max(1, g.cw)}px;height:${Math.max(1, g.ch)}px`;
        layer.append(el("div", { class: "cv-hit", "data-component": id, "data-row": r, "data-col": c, role: "gridcell", "aria-label": id, tabindex: focusable ? 0 : undefined, style }));
      }
    }
    return layer;
  }

  cellAt(e: MouseEvent): [number, number] | null {
    const rect = this.canvas.getBoundingClientRect();
    const g = this.geom;
    const x = e.clientX - rect.left - g.left;
    const y = e.clientY - rect.top - g.top;
    if (x < 0 || y < 0 || x >= g.plotW || y >= g.plotH) return null;
    return [Math.min(this.data.rows - 1, Math.floor(y / g.ch)), Math.min(this.data.cols - 1, Math.floor(x / g.cw))];
  }

  private hover(e: MouseEvent): void {
    const cell = this.cellAt(e);
    if (!cell) {
      this.tooltip.style.display = "none";
      return;
    }
    setText(this.tooltip, this.data.tooltip(cell[0], cell[1]));
    const rect = this.el.getBoundingClientRect();
    const x = e.clientX - rect.left;
    const y = e.clientY - rect.top;
    this.tooltip.style.display = "block";
    const flip = x > this.geom.width * 0.6;
    this.tooltip.style.left = flip ? "" : `${x + 14}px`;
    this.tooltip.style.right = flip ? `${rect.width - x + 14}px` : "";
    this.tooltip.style.top = `${y + 14}px`;
    this.opts.onHover?.(cell[0], cell[1]);
  }

  /** Outline cells: index = r * cols + c. */
  setMarks(marks: Map<number, Mark>): void {
    this.marks = marks;
    this.draw();
  }

  draw(): void {
    const g = this.geom;
    const dpr = window.devicePixelRatio || 1;
    const canvas = this.canvas;
    canvas.width = Math.ceil(g.width * dpr);
    canvas.height = Math.ceil(g.height * dpr);
    canvas.style.width = `${g.width}px`;
    canvas.style.height = `${g.height}px`;
    const ctx = canvas.getContext("2d");
    if (!ctx) return;
    ctx.scale(dpr, dpr);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, g.width, g.height);
    ctx.imageSmoothingEnabled = false;
    ctx.drawImage(this.image, g.left, g.top, g.plotW, g.plotH);
    this.drawLabels(ctx);
    this.drawMarks(ctx);
    if (this.data.colorbar) this.drawColorbar(ctx);
  }

  private drawLabels(ctx: CanvasRenderingContext2D): void {
    const { rowLabels, colLabels, rows, cols, title, rowTitle, colTitle } = this.data;
    const g = this.geom;
    ctx.fillStyle = "#222";
    ctx.font = FONT;
    if (title) {
      ctx.textAlign = "left";
      ctx.textBaseline = "top";
      ctx.font = "600 12px system-ui, sans-serif";
      ctx.fillText(title, 2, 2);
      ctx.font = FONT;
    }
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let r = 0; r < rows; r += g.rowStep) ctx.fillText(truncate(rowLabels[r] ?? "", 24), g.left - 4, g.top + (r + 0.5) * g.ch);
    for (let c = 0; c < cols; c += g.colStep) {
      ctx.save();
      ctx.translate(g.left + (c + 0.5) * g.cw, g.top - 4);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "left";
      ctx.fillText(truncate(colLabels[c] ?? "", 24), 0, 0);
      ctx.restore();
    }
    ctx.fillStyle = "#666";
    if (rowTitle) {
      ctx.save();
      ctx.translate(8, g.top + g.plotH / 2);
      ctx.rotate(-Math.PI / 2);
      ctx.textAlign = "center";
      ctx.fillText(rowTitle, 0, 0);
      ctx.restore();
    }
    if (colTitle) {
      ctx.textAlign = "left";
      ctx.fillText(colTitle, g.left, (title ? 18 : 0) + 8);
    }
  }

  private drawMarks(ctx: CanvasRenderingContext2D): void {
    const g = this.geom;
    const cols = this.data.cols;
    for (const [i, mark] of this.marks) {
      const r = Math.floor(i / cols);
      const c = i % cols;
      const x = g.left + c * g.cw;
      const y = g.top + r * g.ch;
      const w = Math.max(g.cw, 3);
      const h = Math.max(g.ch, 3);
      if (mark === "ablated" || mark === "ablated-selected") {
        ctx.strokeStyle = "#111";
        ctx.lineWidth = 1.5;
        ctx.beginPath();
        ctx.moveTo(x + 2, y + 2);
        ctx.lineTo(x + w - 2, y + h - 2);
        ctx.moveTo(x + w - 2, y + 2);
        ctx.lineTo(x + 2, y + h - 2);
        ctx.stroke();
      }
      if (mark !== "ablated") {
        ctx.strokeStyle = mark === "pinned" ? "#7a3" : "#000";
        ctx.lineWidth = 2;
        ctx.strokeRect(x + 1, y + 1, w - 2, h - 2);
      }
    }
  }

  private drawColorbar(ctx: CanvasRenderingContext2D): void {
    const bar = this.data.colorbar!;
    const g = this.geom;
    const x = g.left + g.plotW + 14;
    const h = Math.max(g.plotH, 120);
    for (let i = 0; i < h; i++) {
      ctx.fillStyle = css(bar.scale(bar.max - ((bar.max - bar.min) * i) / (h - 1)));
      ctx.fillRect(x, g.top + i, 12, 1);
    }
    ctx.strokeStyle = "#999";
    ctx.lineWidth = 1;
    ctx.strokeRect(x, g.top, 12, h);
    ctx.fillStyle = "#222";
    ctx.textAlign = "left";
    ctx.textBaseline = "middle";
    for (const [t, label] of colorbarTicks(bar)) ctx.fillText(label, x + 16, g.top + ((bar.max - t) / (bar.max - bar.min || 1)) * h);
    ctx.textAlign = "left";
    ctx.textBaseline = "top";
    ctx.fillStyle = "#555";
    ctx.fillText(`colour: ${bar.label}`, g.left, g.top + h + 6);
  }

  /** The same picture as vector SVG: a rect per cell (a raster image beyond 40k cells). */
  toSVG(): SVGSVGElement {
    const d = this.data;
    const g = this.geom;
    const svg = svgRoot(g.width, g.height);
    if (d.title) svg.append(svgEl("text", { x: 2, y: 13, "font-weight": 600, "font-size": 12 }, d.title));
    const cells = svgEl("g", { "shape-rendering": "crispEdges" });
    if (d.rows * d.cols <= 40000) {
      for (let r = 0; r < d.rows; r++) {
        for (let c = 0; c < d.cols; c++) {
          const attrs: Record<string, string | number> = { x: g.left + c * g.cw, y: g.top + r * g.ch, width: g.cw, height: g.ch, fill: css(d.scale(d.colorValues[r * d.cols + c])) };
          const id = d.component?.(r, c);
          if (id) attrs["data-component"] = id;
          cells.append(svgEl("rect", attrs));
        }
      }
    } else {
      cells.append(svgEl("image", { x: g.left, y: g.top, width: g.plotW, height: g.plotH, href: this.image.toDataURL("image/png"), preserveAspectRatio: "none" }));
    }
    svg.append(cells);
    for (let r = 0; r < d.rows; r += g.rowStep) {
      svg.append(svgEl("text", { x: g.left - 4, y: g.top + (r + 0.5) * g.ch, "text-anchor": "end", "dominant-baseline": "middle" }, truncate(d.rowLabels[r] ?? "", 24)));
    }
    for (let c = 0; c < d.cols; c += g.colStep) {
      const x = g.left + (c + 0.5) * g.cw;
      const y = g.top - 4;
      svg.append(svgEl("text", { x, y, transform: `rotate(-90 ${x} ${y})`, "dominant-baseline": "middle" }, truncate(d.colLabels[c] ?? "", 24)));
    }
    for (const [i, mark] of this.marks) {
      const r = Math.floor(i / d.cols);
      const c = i % d.cols;
      const stroke = mark === "ablated" ? "#111" : "#000";
      svg.append(svgEl("rect", { x: g.left + c * g.cw + 1, y: g.top + r * g.ch + 1, width: Math.max(g.cw - 2, 1), height: Math.max(g.ch - 2, 1), fill: "none", stroke, "stroke-width": 2, "stroke-dasharray": mark === "ablated" ? "3 2" : "none" }));
    }
    if (d.colorbar) svg.append(this.colorbarSVG());
    return svg;
  }

  private colorbarSVG(): SVGGElement {
    const bar = this.data.colorbar!;
    const g = this.geom;
    const x = g.left + g.plotW + 14;
    const h = Math.max(g.plotH, 120);
    const group = svgEl("g");
    const grad = svgEl("linearGradient", { id: "cv-colorbar", x1: 0, y1: 0, x2: 0, y2: 1 });
    for (let i = 0; i <= 10; i++) {
      grad.append(svgEl("stop", { offset: i / 10, "stop-color": css(bar.scale(bar.max - ((bar.max - bar.min) * i) / 10)) }));
    }
    const defs = svgEl("defs");
    defs.append(grad);
    group.append(defs, svgEl("rect", { x, y: g.top, width: 12, height: h, fill: "url(#cv-colorbar)", stroke: "#999" }));
    for (const [t, label] of colorbarTicks(bar)) {
      group.append(svgEl("text", { x: x + 16, y: g.top + ((bar.max - t) / (bar.max - bar.min || 1)) * h, "dominant-baseline": "middle" }, label));
    }
    group.append(svgEl("text", { x: g.left, y: g.top + h + 16, fill: "#555" }, `colour: ${bar.label}`));
    return group;
  }
}

/** Max-|v| pooling of a rows × cols grid to h × w (h ≤ rows, w ≤ cols); NaN-safe. */
export function downsample(values: ArrayLike<number>, rows: number, cols: number, h: number, w: number): Float32Array {
  const out = new Float32Array(h * w).fill(NaN);
  for (let r = 0; r < rows; r++) {
    const y = Math.floor((r * h) / rows);
    for (let c = 0; c < cols; c++) {
      const v = values[r * cols + c];
      const i = y * w + Math.floor((c * w) / cols);
      const cur = out[i];
      if (Number.isNaN(cur) || Math.abs(v) > Math.abs(cur)) out[i] = v;
    }
  }
  return out;
}

function colorbarTicks(bar: NonNullable<HeatmapData["colorbar"]>): [number, string][] {
  if (bar.ticks) return bar.ticks;
  const ticks = bar.min < 0 && bar.max > 0 ? [bar.max, 0, bar.min] : [bar.max, bar.min];
  return ticks.map((t) => [t, fmtTick(t)]);
}

function fmtTick(v: number): string {
  const a = Math.abs(v);
  if (a !== 0 && (a < 0.01 || a >= 1e4)) return v.toExponential(1);
  return String(Number(v.toPrecision(3)));
}
