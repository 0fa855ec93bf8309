// A canvas heatmap: cells drawn into an offscreen image (one pixel per cell) and scaled, axis
// labels thinned to fit the current zoom, colour bar, hover tooltip with the exact value, click,
// optional wheel zoom / drag pan, and an invisible element per cell carrying data-component so
// tests and screen readers can find it. The title is page text above the canvas (it wraps, so
// it is never cut off); exported SVGs carry it too.
import { css, type RGB, type Scale } from "./colors";
import { button, el, setText, truncate } from "./dom";
import { svgEl, svgRoot } from "./export";
import { columnNote, drawStrips, hatchDef, hatchId, legendEl, legendSVG, partialColumns, STRIP_GAP, STRIP_H, stripAt, stripBoxes, stripsSVG, type ColumnInfo, type StripBox } from "./padding";
import { clampView, colorbarTicks, downsample, FONT, geometry, LABEL_PX, MAX_ZOOM_CELL, measure, steps, wrap, zoomView, type Geometry, type Mark, type View } from "./heatmap_geometry";

export { clampView, downsample, geometry, steps, wrap, zoomView, type Geometry, type Mark, type View } from "./heatmap_geometry";

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
  /** Rows in groups (the heads of one layer): when rows are too thin to label one by one, each
   * group is labelled and separated by a faint line. */
  rowGroups?: { size: number; label: (g: number) => string };
  /** `ticks`: positions, or [position, label] pairs (default: the ends, and 0 when inside the
   * range). */
  colorbar?: { min: number; max: number; label: string; scale: Scale; ticks?: (number | [number, string])[] };
  tooltip: (r: number, c: number) => string;
  component?: (r: number, c: number) => string | null;
  /** Position columns with padding in some prompts (the kernel's), hatched on the axis. */
  columnInfo?: ColumnInfo | null;
}

export interface HeatmapOptions {
  maxWidth?: number;
  maxHeight?: number;
  maxCell?: number;
  /** Above this many cells no per-cell elements are made (hover/click still work). */
  maxHitCells?: number;
  /** Wheel zooms (at the cursor), drag pans, and a reset button appears. */
  zoom?: boolean;
  onClick?: (r: number, c: number, ev: MouseEvent) => void;
  onHover?: (r: number | null, c: number | null) => void;
}

export class Heatmap {
  readonly el: HTMLDivElement;
  readonly geom: Geometry;
  private readonly canvas: HTMLCanvasElement;
  private readonly image: HTMLCanvasElement;
  private full: HTMLCanvasElement | null = null;
  private readonly tooltip: HTMLDivElement;
  private readonly hitsInner: HTMLDivElement;
  private readonly resetButton: HTMLButtonElement | null = null;
  private marks = new Map<number, Mark>();
  private view: View;
  private frame = 0;
  private drag: { x: number; y: number; view: View; moved: boolean } | null = null;
  private suppressClick = false;
  /** Columns hatched as partial (mixed-length prompts), and the gap their strip takes. */
  private readonly partial: number[];
  private readonly stripGap: number;

  constructor(
    readonly data: HeatmapData,
    readonly opts: HeatmapOptions = {},
  ) {
    const rowW = measure(data.rowLabels, 160) + (data.rowTitle ? 16 : 0);
    this.partial = partialColumns(data.columnInfo);
    this.stripGap = this.partial.length ? STRIP_GAP : 0;
    const colH = measure(data.colLabels, 110) + (data.colTitle ? 16 : 0) + this.stripGap;
    this.geom = geometry(data.rows, data.cols, rowW, colH, {
      maxWidth: opts.maxWidth ?? 640,
      maxHeight: opts.maxHeight ?? 640,
      maxCell: opts.maxCell ?? 28,
      colorbar: !!data.colorbar,
      title: false, // page text above the canvas
      // the caption starts under the plot, after the row labels: it must fit from there
      minWidth: rowW + 8 + measure([`colour: ${data.colorbar?.label ?? ""}`], 600, 200) + 16,
    });
    this.view = { r0: 0, c0: 0, nr: data.rows, nc: data.cols };
    this.image = this.paintCells();
    this.canvas = el("canvas", { class: "cv-heatmap-canvas" });
    this.tooltip = el("div", { class: "cv-tooltip", "data-role": "tooltip" });
    const g = this.geom;
    this.hitsInner = this.hitLayer();
    const hits = el("div", { class: "cv-hits", style: `left:${g.left}px;top:${g.top}px;width:${g.plotW}px;height:${g.plotH}px;overflow:hidden` }, this.hitsInner);
    const head = el("div", { class: "cv-hm-head", style: `max-width:${g.width}px` });
    if (data.title) head.append(el("div", { class: "cv-hm-title", "data-role": "heatmap-title" }, data.title));
    if (opts.zoom) {
      const reset = button("Reset zoom", "zoom-reset", "Show the whole map again");
      reset.disabled = true;
      reset.addEventListener("click", () => this.setView({ r0: 0, c0: 0, nr: data.rows, nc: data.cols }));
      head.append(reset, el("span", { class: "cv-muted", "data-role": "zoom-hint" }, "wheel: zoom · drag: pan"));
      this.resetButton = reset;
    }
    const plot = el("div", { class: "cv-hm-plot" }, this.canvas, hits, this.tooltip);
    this.el = el("div", { class: "cv-hm" }, head, plot);
    if (this.partial.length) this.el.append(legendEl(data.columnInfo!));
    this.el.dataset.partialColumns = this.partial.join(",");
    plot.addEventListener("mousemove", (e) => this.hover(e));
    plot.addEventListener("mouseleave", () => {
      this.tooltip.style.display = "none";
      opts.onHover?.(null, null);
    });
    plot.addEventListener("click", (e) => {
      if (this.suppressClick) {
        this.suppressClick = false;
        return;
      }
      const cell = this.cellAt(e);
      if (cell) opts.onClick?.(cell[0], cell[1], e);
    });
    if (opts.zoom) this.enableZoom(plot);
    this.draw();
  }

  /** The part of the grid in view. */
  get zoomView(): View {
    return { ...this.view };
  }

  setView(v: View): void {
    const d = this.data;
    this.view = clampView(v, d.rows, d.cols);
    const zoomed = this.view.nr < d.rows || this.view.nc < d.cols;
    if (this.resetButton) this.resetButton.disabled = !zoomed;
    this.el.dataset.zoomed = String(zoomed);
    const g = this.geom;
    const sx = g.plotW / this.view.nc / g.cw;
    const sy = g.plotH / this.view.nr / g.ch;
    this.hitsInner.style.transform = `scale(${sx},${sy}) translate(${-this.view.c0 * g.cw}px,${-this.view.r0 * g.ch}px)`;
    cancelAnimationFrame(this.frame);
    this.frame = requestAnimationFrame(() => this.draw());
  }

  private enableZoom(plot: HTMLElement): void {
    const g = this.geom;
    const d = this.data;
    plot.addEventListener(
      "wheel",
      (e) => {
        const p = this.plotPoint(e);
        if (!p) return; // outside the cells: let the page scroll
        e.preventDefault();
        const v = this.view;
        const factor = Math.exp(Math.max(-1, Math.min(1, e.deltaY * 0.002)));
        this.setView(zoomView(v, d.rows, d.cols, factor, v.r0 + (p[1] / g.plotH) * v.nr, v.c0 + (p[0] / g.plotW) * v.nc, g.plotH / MAX_ZOOM_CELL, g.plotW / MAX_ZOOM_CELL));
      },
      { passive: false },
    );
    // Window listeners only while a button is down: a rebuilt heatmap leaves none behind.
    const move = (e: MouseEvent) => {
      const drag = this.drag;
      if (!drag) return;
      const dx = e.clientX - drag.x;
      const dy = e.clientY - drag.y;
      if (!drag.moved && Math.hypot(dx, dy) < 4) return; // a click, not a drag
      drag.moved = true;
      const v = drag.view;
      this.setView({ ...v, r0: v.r0 - (dy / g.plotH) * v.nr, c0: v.c0 - (dx / g.plotW) * v.nc });
    };
    const up = () => {
      if (this.drag?.moved) this.suppressClick = true;
      this.drag = null;
      window.removeEventListener("mousemove", move);
      window.removeEventListener("mouseup", up);
    };
    plot.addEventListener("mousedown", (e) => {
      if (e.button !== 0 || !this.plotPoint(e)) return;
      this.drag = { x: e.clientX, y: e.clientY, view: { ...this.view }, moved: false };
      window.addEventListener("mousemove", move);
      window.addEventListener("mouseup", up);
    });
  }

  /** One pixel per cell, or — when there are more cells than screen pixels — one pixel per
   * block holding the block's strongest value (|max|), so a one-cell stripe in a 1,000-token
   * pattern stays visible instead of being averaged away. */
  private paintCells(r0 = 0, r1 = this.data.rows, c0 = 0, c1 = this.data.cols): HTMLCanvasElement {
    const { cols, colorValues, scale } = this.data;
    const rows = r1 - r0;
    const n = c1 - c0;
    const w = Math.min(n, Math.max(1, Math.ceil(this.geom.plotW)));
    const h = Math.min(rows, Math.max(1, Math.ceil(this.geom.plotH)));
    const img = el("canvas", { width: w, height: h });
    const ctx = img.getContext("2d");
    if (!ctx) return img;
    let region: ArrayLike<number> = colorValues;
    if (rows !== this.data.rows || n !== cols) {
      const sub = new Float32Array(rows * n);
      for (let r = 0; r < rows; r++) for (let c = 0; c < n; c++) sub[r * n + c] = colorValues[(r0 + r) * cols + c0 + c];
      region = sub;
    }
    const block = downsample(region, rows, n, h, w);
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

  private hitLayer(): HTMLDivElement {
    const { rows, cols, component } = this.data;
    const g = this.geom;
    const layer = el("div", { class: "cv-hits-inner", style: `width:${g.plotW}px;height:${g.plotH}px;transform-origin:0 0` });
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

  /** Pointer position inside the plot area (px), or null outside it. */
  private plotPoint(e: MouseEvent): [number, number] | null {
    const rect = this.canvas.getBoundingClientRect();
    const g = this.geom;
    const x = e.clientX - rect.left - g.left;
    const y = e.clientY - rect.top - g.top;
    return x < 0 || y < 0 || x >= g.plotW || y >= g.plotH ? null : [x, y];
  }

  cellAt(e: MouseEvent): [number, number] | null {
    const p = this.plotPoint(e);
    if (!p) return null;
    const g = this.geom;
    const v = this.view;
    const r = Math.floor(v.r0 + (p[1] / g.plotH) * v.nr);
    const c = Math.floor(v.c0 + (p[0] / g.plotW) * v.nc);
    return [Math.min(this.data.rows - 1, r), Math.min(this.data.cols - 1, c)];
  }

  private hover(e: MouseEvent): void {
    const cell = this.drag?.moved ? null : this.cellAt(e);
    const strip = cell ? null : this.stripAt(e);
    if (!cell && strip === null) {
      this.tooltip.style.display = "none";
      return;
    }
    setText(this.tooltip, cell ? this.data.tooltip(cell[0], cell[1]) : columnNote(this.data.columnInfo, strip!));
    const rect = this.canvas.getBoundingClientRect();
    const x = e.clientX - rect.left;
    const y = e.clientY - rect.top;
    this.tooltip.style.display = "block";
    const flip = x > this.geom.width * 0.6;
    this.tooltip.style.left = flip ? "" : `${x + 14}px`;
    this.tooltip.style.right = flip ? `${rect.width - x + 14}px` : "";
    this.tooltip.style.top = `${y + 14}px`;
    if (cell) this.opts.onHover?.(cell[0], cell[1]);
  }

  /** The partial column whose hatched strip is under the pointer, or null. */
  private stripAt(e: MouseEvent): number | null {
    const rect = this.canvas.getBoundingClientRect();
    return stripAt(this.stripBoxes(), e.clientX - rect.left, e.clientY - rect.top, this.geom.top - STRIP_H - 2);
  }

  /** Screen boxes of the partial columns in view, cut to the plot's width. */
  private stripBoxes(): StripBox[] {
    const g = this.geom;
    return stripBoxes(this.partial, (c) => this.box(0, c), g.left, g.left + g.plotW);
  }

  /** Outline cells: index = r * cols + c. */
  setMarks(marks: Map<number, Mark>): void {
    this.marks = marks;
    this.draw();
  }

  /** Screen box of cell (r, c) at the current zoom: x, y, width, height. */
  private box(r: number, c: number): [number, number, number, number] {
    const g = this.geom;
    const v = this.view;
    const cw = g.plotW / v.nc;
    const ch = g.plotH / v.nr;
    return [g.left + (c - v.c0) * cw, g.top + (r - v.r0) * ch, cw, ch];
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
    this.drawCells(ctx);
    this.drawLabels(ctx);
    drawStrips(ctx, this.stripBoxes(), g.top - STRIP_H - 2);
    ctx.save();
    ctx.beginPath();
    ctx.rect(g.left, g.top, g.plotW, g.plotH);
    ctx.clip();
    this.drawMarks(ctx);
    ctx.restore();
    if (this.data.colorbar) this.drawColorbar(ctx);
  }

  private drawCells(ctx: CanvasRenderingContext2D): void {
    const g = this.geom;
    const d = this.data;
    const v = this.view;
    if (v.nr === d.rows && v.nc === d.cols) {
      ctx.drawImage(this.image, g.left, g.top, g.plotW, g.plotH);
      return;
    }
    // Zoomed: whole cells in view, pooled again when they are still smaller than a pixel.
    const r0 = Math.floor(v.r0);
    const c0 = Math.floor(v.c0);
    const r1 = Math.min(d.rows, Math.ceil(v.r0 + v.nr));
    const c1 = Math.min(d.cols, Math.ceil(v.c0 + v.nc));
    const [x, y] = this.box(r0, c0);
    const [x1, y1] = this.box(r1, c1);
    ctx.save();
    ctx.beginPath();
    ctx.rect(g.left, g.top, g.plotW, g.plotH);
    ctx.clip();
    if (r1 - r0 <= g.plotH && c1 - c0 <= g.plotW && d.rows * d.cols <= 4_000_000) {
      this.full ??= this.fullImage();
      ctx.drawImage(this.full, c0, r0, c1 - c0, r1 - r0, x, y, x1 - x, y1 - y);
    } else {
      ctx.drawImage(this.paintCells(r0, r1, c0, c1), x, y, x1 - x, y1 - y);
    }
    ctx.restore();
  }

  /** One pixel per cell, for zoomed views (made on the first zoom). */
  private fullImage(): HTMLCanvasElement {
    const { rows, cols, colorValues, scale } = this.data;
    const img = el("canvas", { width: cols, height: rows });
    const ctx = img.getContext("2d");
    if (!ctx) return img;
    const pixels = ctx.createImageData(cols, rows);
    const p = pixels.data;
    for (let i = 0; i < rows * cols; i++) {
      const c: RGB = scale(colorValues[i]);
      p.set([c[0], c[1], c[2], 255], 4 * i);
    }
    ctx.putImageData(pixels, 0, 0);
    return img;
  }

  /** Row/column labels of what is in view, as dense as fits (≥ 12 px apart); when rows are too
   * thin, their groups (layers) are labelled instead. */
  labelsInView(): { rows: number[]; cols: number[]; groups: number[] } {
    const d = this.data;
    const g = this.geom;
    const v = this.view;
    const ch = g.plotH / v.nr;
    const cw = g.plotW / v.nc;
    const rowStep = Math.ceil(LABEL_PX / ch);
    const cols = steps(v.c0 - 1e-9, v.c0 + v.nc, Math.ceil(LABEL_PX / cw)).filter((c) => c + 0.5 >= v.c0 && c + 0.5 <= v.c0 + v.nc);
    const grp = d.rowGroups;
    if (rowStep > 1 && grp && grp.size * ch >= LABEL_PX) {
      const first = Math.floor(v.r0 / grp.size);
      const groups = steps(first, Math.ceil((v.r0 + v.nr) / grp.size), 1).filter((k) => {
        const mid = (k + 0.5) * grp.size;
        return mid >= v.r0 && mid <= v.r0 + v.nr;
      });
      return { rows: [], cols, groups };
    }
    const rows = steps(v.r0 - 1e-9, v.r0 + v.nr, rowStep).filter((r) => r + 0.5 >= v.r0 && r + 0.5 <= v.r0 + v.nr);
    return { rows, cols, groups: [] };
  }

  private drawLabels(ctx: CanvasRenderingContext2D): void {
    const { rowLabels, colLabels, rowTitle, colTitle, rowGroups } = this.data;
    const g = this.geom;
    const shown = this.labelsInView();
    // How many labels are drawn, and their spacing (px), for tests and screen readers.
    const v = this.view;
    Object.assign(this.el.dataset, {
      rowLabels: String(shown.rows.length),
      groupLabels: String(shown.groups.length),
      colLabels: String(shown.cols.length),
      rowLabelGap: String(shown.rows.length > 1 ? ((shown.rows[1] - shown.rows[0]) * g.plotH) / v.nr : ""),
      colLabelGap: String(shown.cols.length > 1 ? ((shown.cols[1] - shown.cols[0]) * g.plotW) / v.nc : ""),
    });
    ctx.fillStyle = "#222";
    ctx.font = FONT;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (const r of shown.rows) {
      const [, y, , h] = this.box(r, 0);
      ctx.fillText(truncate(rowLabels[r] ?? "", 24), g.left - 4, y + h / 2);
    }
    if (rowGroups && shown.groups.length) {
      ctx.strokeStyle = "rgba(0,0,0,.25)";
      ctx.lineWidth = 1;
      for (const k of shown.groups) {
        const [, y0] = this.box(k * rowGroups.size, 0);
        const [, y1] = this.box((k + 1) * rowGroups.size, 0);
        ctx.fillText(rowGroups.label(k), g.left - 4, (Math.max(y0, g.top) + Math.min(y1, g.top + g.plotH)) / 2);
        if (y0 > g.top + 0.5) {
          ctx.beginPath();
          ctx.moveTo(g.left, y0);
          ctx.lineTo(g.left + g.plotW, y0);
          ctx.stroke();
        }
      }
    }
    for (const c of shown.cols) {
      const [x, , w] = this.box(0, c);
      ctx.save();
      ctx.translate(x + w / 2, g.top - 4 - this.stripGap);
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
      ctx.fillText(colTitle, g.left, 8);
    }
  }

  private drawMarks(ctx: CanvasRenderingContext2D): void {
    const cols = this.data.cols;
    for (const [i, mark] of this.marks) {
      const [x, y, cw, ch] = this.box(Math.floor(i / cols), i % cols);
      const w = Math.max(cw, 3);
      const h = Math.max(ch, 3);
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

  /** The picture in view as vector SVG: a rect per cell (a raster image beyond 40k cells). */
  toSVG(): SVGSVGElement {
    const d = this.data;
    const g = this.geom;
    const v = this.view;
    const titleLines = d.title ? wrap(d.title, Math.max(40, Math.floor(g.width / 7))) : [];
    const dy = titleLines.length * 16;
    const legendH = this.partial.length ? 18 : 0;
    const svg = svgRoot(g.width, g.height + dy + legendH);
    titleLines.forEach((line, i) => svg.append(svgEl("text", { x: 2, y: 13 + 16 * i, "font-weight": 600, "font-size": 12 }, line)));
    const body = svgEl("g", { transform: `translate(0 ${dy})` });
    svg.append(body);
    const clipId = `cv-clip-${Math.random().toString(36).slice(2)}`;
    const defs = svgEl("defs");
    const clip = svgEl("clipPath", { id: clipId });
    clip.append(svgEl("rect", { x: g.left, y: g.top, width: g.plotW, height: g.plotH }));
    defs.append(clip);
    body.append(defs);
    const cells = svgEl("g", { "shape-rendering": "crispEdges", "clip-path": `url(#${clipId})` });
    const r0 = Math.floor(v.r0);
    const c0 = Math.floor(v.c0);
    const r1 = Math.min(d.rows, Math.ceil(v.r0 + v.nr));
    const c1 = Math.min(d.cols, Math.ceil(v.c0 + v.nc));
    if ((r1 - r0) * (c1 - c0) <= 40000) {
      for (let r = r0; r < r1; r++) {
        for (let c = c0; c < c1; c++) {
          const [x, y, w, h] = this.box(r, c);
          const attrs: Record<string, string | number> = { x, y, width: w, height: h, fill: css(d.scale(d.colorValues[r * d.cols + c])) };
          const id = d.component?.(r, c);
          if (id) attrs["data-component"] = id;
          cells.append(svgEl("rect", attrs));
        }
      }
    } else {
      const img = r1 - r0 === d.rows && c1 - c0 === d.cols ? this.image : this.paintCells(r0, r1, c0, c1);
      const [x, y] = this.box(r0, c0);
      const [x1, y1] = this.box(r1, c1);
      cells.append(svgEl("image", { x, y, width: x1 - x, height: y1 - y, href: img.toDataURL("image/png"), preserveAspectRatio: "none" }));
    }
    body.append(cells);
    const shown = this.labelsInView();
    for (const r of shown.rows) {
      const [, y, , h] = this.box(r, 0);
      body.append(svgEl("text", { x: g.left - 4, y: y + h / 2, "text-anchor": "end", "dominant-baseline": "middle" }, truncate(d.rowLabels[r] ?? "", 24)));
    }
    for (const k of shown.groups) {
      const size = d.rowGroups!.size;
      const [, y0] = this.box(k * size, 0);
      const [, y1] = this.box((k + 1) * size, 0);
      body.append(svgEl("text", { x: g.left - 4, y: (Math.max(y0, g.top) + Math.min(y1, g.top + g.plotH)) / 2, "text-anchor": "end", "dominant-baseline": "middle" }, d.rowGroups!.label(k)));
      if (y0 > g.top + 0.5) body.append(svgEl("line", { x1: g.left, x2: g.left + g.plotW, y1: y0, y2: y0, stroke: "rgba(0,0,0,.25)" }));
    }
    for (const c of shown.cols) {
      const [x0, , w] = this.box(0, c);
      const x = x0 + w / 2;
      const y = g.top - 4 - this.stripGap;
      body.append(svgEl("text", { x, y, transform: `rotate(-90 ${x} ${y})`, "dominant-baseline": "middle" }, truncate(d.colLabels[c] ?? "", 24)));
    }
    if (d.rowTitle) body.append(svgEl("text", { x: 8, y: g.top + g.plotH / 2, transform: `rotate(-90 8 ${g.top + g.plotH / 2})`, "text-anchor": "middle", fill: "#666" }, d.rowTitle));
    if (d.colTitle) body.append(svgEl("text", { x: g.left, y: 12, fill: "#666" }, d.colTitle));
    const marks = svgEl("g", { "clip-path": `url(#${clipId})` });
    for (const [i, mark] of this.marks) {
      const [x, y, w, h] = this.box(Math.floor(i / d.cols), i % d.cols);
      const stroke = mark === "ablated" ? "#111" : "#000";
      marks.append(svgEl("rect", { x: x + 1, y: y + 1, width: Math.max(w - 2, 1), height: Math.max(h - 2, 1), fill: "none", stroke, "stroke-width": 2, "stroke-dasharray": mark === "ablated" ? "3 2" : "none" }));
    }
    body.append(marks);
    if (d.colorbar) body.append(this.colorbarSVG());
    if (this.partial.length) {
      const id = hatchId();
      defs.append(hatchDef(id));
      body.append(stripsSVG(d.columnInfo!, this.stripBoxes(), g.top - STRIP_H - 2, id), legendSVG(d.columnInfo!, g.left, g.height + 6, id));
    }
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
