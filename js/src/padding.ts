// Partial position columns of mixed-length prompt batches. The kernel decides which columns
// have padding in some prompts and what the reader is told (circuitviz/engine/_columns.py);
// this file only draws it: a hatched strip on the token axis, the kernel's note as its
// tooltip, and a legend entry — in heatmaps (canvas and SVG export) and circuit graphs.
import { el } from "./dom";
import { svgEl } from "./export";

/** What the kernel sends about a map's position columns (``Columns.to_dict``). */
export interface ColumnInfo {
  n_prompts: number;
  /** Prompts with a real token in each column. */
  present: number[];
  /** The note of each partial column (null where every prompt has a token). */
  notes: (string | null)[];
  legend: string;
  /** Each prompt's clean token per column, null for padding. */
  tokens: (string | null)[][];
}

/** Height of the hatched strip (px), and the gap it adds between labels and the plot. */
export const STRIP_H = 7;
export const STRIP_GAP = STRIP_H + 3;
const HATCH = "#555";
const HATCH_CSS = `repeating-linear-gradient(135deg, ${HATCH} 0 1px, #fff 1px 4px)`;

/** The columns the kernel marked partial (none for a missing or empty payload). */
export function partialColumns(info: ColumnInfo | null | undefined): number[] {
  const notes = info?.notes ?? [];
  return notes.flatMap((note, c) => (note ? [c] : []));
}

/** The kernel's note of column c, or "" (full column, or no payload). */
export function columnNote(info: ColumnInfo | null | undefined, c: number): string {
  return info?.notes?.[c] ?? "";
}

/** A canvas fill of diagonal hatching (the same look as HATCH_CSS and hatchDef). */
function hatchFill(ctx: CanvasRenderingContext2D): CanvasPattern | string {
  const tile = document.createElement("canvas");
  tile.width = tile.height = 4;
  const t = tile.getContext("2d");
  if (!t) return HATCH;
  t.fillStyle = "#fff";
  t.fillRect(0, 0, 4, 4);
  t.strokeStyle = HATCH;
  t.lineWidth = 1;
  t.beginPath();
  t.moveTo(0, 0);
  t.lineTo(4, 4);
  t.stroke();
  return ctx.createPattern(tile, "repeat") ?? HATCH;
}

/** An SVG <pattern> of the same hatching, to fill with `url(#id)`. */
export function hatchDef(id: string): SVGPatternElement {
  const p = svgEl("pattern", { id, width: 4, height: 4, patternUnits: "userSpaceOnUse" });
  p.append(svgEl("rect", { width: 4, height: 4, fill: "#fff" }), svgEl("path", { d: "M0,0L4,4M-1,3L1,5M3,-1L5,1", stroke: HATCH, "stroke-width": 1 }));
  return p;
}

/** The legend entry as page text: a hatched swatch and the kernel's words. */
export function legendEl(info: ColumnInfo): HTMLElement {
  const swatch = el("span", { style: `display:inline-block;width:14px;height:${STRIP_H}px;border:1px solid ${HATCH};background:${HATCH_CSS};margin-right:6px;vertical-align:middle` });
  return el("div", { class: "cv-muted", "data-role": "pad-legend", style: "font-size:11px;margin:2px 0" }, swatch, info.legend);
}

/** The legend entry in an SVG figure at (x, y). */
export function legendSVG(info: ColumnInfo, x: number, y: number, patternId: string): SVGGElement {
  const g = svgEl("g", { "data-role": "pad-legend" });
  g.append(svgEl("rect", { x, y: y - STRIP_H / 2, width: 14, height: STRIP_H, fill: `url(#${patternId})`, stroke: HATCH }), svgEl("text", { x: x + 20, y, "dominant-baseline": "middle", fill: "#555", "font-size": 11 }, info.legend));
  return g;
}

/** One strip box per partial column in view: [column, x, width] in screen px. */
export type StripBox = [number, number, number];

/** Boxes of the partial columns, given each column's screen box (x, y, width, …), cut to
 * the plot's x range [left, right). */
export function stripBoxes(partial: number[], box: (c: number) => number[], left: number, right: number): StripBox[] {
  const out: StripBox[] = [];
  for (const c of partial) {
    const [x, , w] = box(c);
    const x0 = Math.max(x, left);
    const x1 = Math.min(x + w, right);
    if (x1 > x0) out.push([c, x0, x1 - x0]);
  }
  return out;
}

/** The column whose strip (top edge at `top`) holds the point (x, y), or null. */
export function stripAt(boxes: StripBox[], x: number, y: number, top: number): number | null {
  if (y < top || y > top + STRIP_H) return null;
  const hit = boxes.find(([, bx, w]) => x >= bx && x < bx + w);
  return hit ? hit[0] : null;
}

/** Draw the strips (top edge at y) on a canvas. */
export function drawStrips(ctx: CanvasRenderingContext2D, boxes: StripBox[], y: number): void {
  if (!boxes.length) return;
  ctx.save();
  ctx.fillStyle = hatchFill(ctx);
  ctx.strokeStyle = HATCH;
  ctx.lineWidth = 1;
  for (const [, x, w] of boxes) {
    ctx.fillRect(x, y, w, STRIP_H);
    ctx.strokeRect(x + 0.5, y + 0.5, Math.max(1, w - 1), STRIP_H - 1);
  }
  ctx.restore();
}

/** The strips as SVG, each with its note as a native tooltip (<title>). */
export function stripsSVG(info: ColumnInfo, boxes: StripBox[], y: number, patternId: string): SVGGElement {
  const g = svgEl("g", { "data-role": "pad-strips" });
  for (const [c, x, w] of boxes) {
    const r = svgEl("rect", { x, y, width: w, height: STRIP_H, fill: `url(#${patternId})`, stroke: HATCH, "data-role": "pad-strip", "data-pos": c });
    r.append(svgEl("title", {}, columnNote(info, c)));
    g.append(r);
  }
  return g;
}

/** A fresh id for a hatch pattern (several figures may share a page). */
export function hatchId(): string {
  return `cv-hatch-${Math.random().toString(36).slice(2)}`;
}

/** A per-position graph's partial token bands (screen px: x0–x1), behind the nodes: faintly
 * hatched from the top down to the token axis at `axisY`, each with the kernel's note as its
 * tooltip (as graph_figure hatches them). */
export function bandsSVG(info: ColumnInfo, bands: { pos: number; x0: number; x1: number }[], axisY: number, patternId: string): SVGGElement {
  const g = svgEl("g", { "data-role": "pad-bands" });
  for (const b of bands) {
    const note = columnNote(info, b.pos);
    if (!note) continue;
    const band = svgEl("rect", { x: b.x0, y: 0, width: Math.max(1, b.x1 - b.x0), height: axisY, fill: `url(#${patternId})`, "fill-opacity": 0.2, "data-role": "pad-band", "data-pos": b.pos });
    band.append(svgEl("title", {}, note));
    g.append(band);
  }
  return g;
}
