// The heatmap's pure parts (unit-tested): the view window and its zoom, where everything
// goes, label measuring and thinning steps, downsampling, colour-bar ticks, text wrapping.
import { truncate } from "./dom";
import type { HeatmapData } from "./heatmap";

/** The part of the grid in view: first row/column (fractional) and how many are shown. */
export interface View {
  r0: number;
  c0: number;
  nr: number;
  nc: number;
}

/** Largest cell size (px) zooming in may reach. */
export const MAX_ZOOM_CELL = 48;
/** Labels closer than this (px) are thinned. */
// 13 px tall label lines need 14 px between centres, or neighbours touch.
export const LABEL_PX = 14;

/** Zoom a view by `factor` (< 1 zooms in) about the grid point (r, c), clamped to the grid. */
export function zoomView(v: View, rows: number, cols: number, factor: number, r: number, c: number, minR: number, minC: number): View {
  const nr = Math.min(rows, Math.max(Math.min(rows, minR), v.nr * factor));
  const nc = Math.min(cols, Math.max(Math.min(cols, minC), v.nc * factor));
  return clampView({ r0: r - ((r - v.r0) * nr) / v.nr, c0: c - ((c - v.c0) * nc) / v.nc, nr, nc }, rows, cols);
}

export function clampView(v: View, rows: number, cols: number): View {
  return { ...v, r0: Math.min(Math.max(0, v.r0), rows - v.nr), c0: Math.min(Math.max(0, v.c0), cols - v.nc) };
}

/** Indices i in [from, to) that are multiples of step (labels stay put while panning). */
export function steps(from: number, to: number, step: number): number[] {
  const out: number[] = [];
  for (let i = Math.ceil(Math.max(0, from) / step) * step; i < to; i += step) out.push(i);
  return out;
}

export type Mark = "selected" | "ablated" | "pinned" | "ablated-selected";

export const FONT = "11px system-ui, sans-serif";

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
  return { left, top, plotW, plotH, cw, ch, width, height, rowStep: Math.ceil(LABEL_PX / ch), colStep: Math.ceil(LABEL_PX / cw) };
}

export function measure(labels: string[], limit: number, chars = 24): number {
  const ctx = document.createElement("canvas").getContext("2d");
  if (!ctx) return Math.min(limit, 7 * Math.max(0, ...labels.map((l) => Math.min(chars, l.length))));
  ctx.font = FONT;
  let w = 0;
  for (const l of labels) w = Math.max(w, ctx.measureText(truncate(l, chars)).width);
  return Math.min(limit, Math.ceil(w));
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

export function colorbarTicks(bar: NonNullable<HeatmapData["colorbar"]>): [number, string][] {
  const ticks = bar.ticks ?? (bar.min < 0 && bar.max > 0 ? [bar.max, 0, bar.min] : [bar.max, bar.min]);
  return ticks.map((t) => (typeof t === "number" ? [t, fmtTick(t)] : t));
}

function fmtTick(v: number): string {
  const a = Math.abs(v);
  if (a !== 0 && (a < 0.01 || a >= 1e4)) return v.toExponential(1);
  return String(Number(v.toPrecision(3)));
}

/** Split text into lines of at most n characters, at spaces where possible. */
export function wrap(text: string, n: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ")) {
    if (line && line.length + 1 + word.length > n) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}
