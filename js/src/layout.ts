// Graph layout and label placement, pure functions (unit-tested; the kernel decides what is
// shown: js draws what it is sent): layers stacked bottom-up (embeddings
// at the bottom, logits on top), heads then the MLP across each layer, and — for per-position
// graphs — one band per token position.
import type { GraphNode } from "./types";

export interface LayoutOptions {
  nLayers: number;
  nHeads: number;
  perPosition?: boolean;
  nPos?: number;
  rowHeight?: number;
  slotWidth?: number;
  margin?: number;
  /** One row per layer that has a node (pruned circuits span few of 30 layers). */
  compact?: boolean;
}

export interface Point {
  x: number;
  y: number;
}

export interface Layout {
  positions: Map<string, Point>;
  width: number;
  height: number;
  /** Per-position graphs: the x centre and width of each token's band (for axis labels). */
  bands: { pos: number; x: number; w: number }[];
  /** One per drawn row, bottom-up: its layer (-1 embed, nLayers logits) and y. */
  rows: { layer: number; y: number }[];
  /** The largest node radius (layout units) at which no two nodes' shapes overlap. */
  maxRadius: number;
}

/** Feature graphs: how far above its layer's heads (in rows) each SAE site's latents and
 * error node sit, in forward order: resid_pre below the heads, attn_out just above them,
 * resid_mid, a transcoder where the MLP is (a quarter row), mlp_out, resid_post half a row
 * up (the site codes of engine/_sites.py; "" is resid_post). */
export const SITE_LIFT: Record<string, number> = { pre: -0.3, attn: 0.12, mid: 0.19, tc: 0.25, mlp: 0.37, "": 0.5 };

export function siteLift(node: GraphNode): number {
  return SITE_LIFT[node.site ?? ""] ?? 0.5;
}

/** Feature graphs: rows between a crowded cell's wrapped rows of SAE nodes (``tier``). */
export const TIER_ROWS = 0.5;

export interface Cell {
  /** Column in head-slot units (0 … nHeads - 1). */
  slot: number;
  /** Row within the cell, 0 nearest its layer, each further one above. */
  tier: number;
}

/** Feature graphs: where each SAE latent, error node and supernode sits in its cell (layer ×
 * site × token), as the kernel decided it (``slot``/``tier``, engine/graph/_placement.py):
 * the view draws what it is sent. */
export function featureCells(nodes: GraphNode[]): Map<string, Cell> {
  const out = new Map<string, Cell>();
  for (const n of nodes) if (n.slot !== undefined && n.slot !== null) out.set(n.id, { slot: n.slot, tier: n.tier ?? 0 });
  return out;
}

/** Column of a node inside its layer: heads 0…H-1, the MLP after them. */
function slot(node: GraphNode, nHeads: number): number {
  if (node.type === "head") return node.head ?? 0;
  if (node.type === "mlp") return nHeads;
  return nHeads / 2; // embed and logits sit in the middle
}

export function layoutGraph(nodes: GraphNode[], opts: LayoutOptions): Layout {
  const perPos = !!opts.perPosition;
  const rowH = opts.rowHeight ?? 44;
  const margin = opts.margin ?? 30;
  const slots = opts.nHeads + 1;
  const maxPos = Math.max(0, ...nodes.map((n) => n.pos ?? 0));
  const nPos = perPos ? Math.max(opts.nPos ?? 0, maxPos + 1) : 1;
  const slotW = opts.slotWidth ?? (perPos ? 24 : 56);
  const bandW = slots * slotW + (perPos ? 12 : 0);
  const cells = featureCells(nodes);
  // Feature graphs: a band is as wide as its fullest row, a token without nodes 2 slots.
  const bandWidths = Array.from({ length: nPos }, () => bandW);
  if (perPos && cells.size) {
    const used = new Set(nodes.map((n) => n.pos ?? -1));
    const need = new Map<number, number>();
    for (const n of nodes) if (cells.has(n.id)) need.set(n.pos ?? 0, Math.max(need.get(n.pos ?? 0) ?? 0, cells.get(n.id)!.slot + 1));
    for (let p = 0; p < nPos; p++) bandWidths[p] = used.has(p) ? Math.max(slots, need.get(p) ?? 0) * slotW + 12 : 2 * slotW + 12;
  }
  const bandStart: number[] = [];
  let acc = 0;
  for (const w of bandWidths) {
    bandStart.push(acc);
    acc += w;
  }
  const width = 2 * margin + (perPos ? acc : bandW);
  const clampLayer = (l: number) => Math.min(Math.max(l, -1), opts.nLayers);
  const layers = opts.compact ? [...new Set(nodes.map((n) => clampLayer(n.layer)))].sort((a, b) => a - b) : Array.from({ length: opts.nLayers + 2 }, (_, i) => i - 1);
  // Vertical levels, bottom-up: a layer's heads, its MLP a quarter row up, SAE nodes at
  // their site's lift (SITE_LIFT), a crowded cell's further tiers TIER_ROWS apart above
  // that (everything higher moves up to make room). SAEs at several sites of one block: each
  // site level gets at least half a row of its own, so forward order reads bottom-up unmixed.
  const multiSite = nodes.some((n) => cells.has(n.id) && (n.site ?? "") !== "");
  const rowIndex = new Map(layers.map((l, i) => [l, i]));
  const rowBase = (layer: number) => (multiSite ? layer : rowIndex.get(layer) ?? 0);
  const lift = (n: GraphNode) => (n.type === "mlp" ? 0.25 : cells.has(n.id) ? siteLift(n) : 0);
  const levelOf = (n: GraphNode): [number, number] => [rowBase(clampLayer(n.layer)) + lift(n), cells.get(n.id)?.tier ?? 0];
  const key = ([base, tier]: [number, number]) => `${base.toFixed(4)}|${tier}`;
  const levels = new Map<string, [number, number]>(layers.map((l) => [key([rowBase(l), 0]), [rowBase(l), 0]]));
  for (const n of nodes) levels.set(key(levelOf(n)), levelOf(n));
  const sorted = [...levels.values()].sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  const offset = new Map<string, number>();
  sorted.forEach((lv, i) => {
    if (i === 0) return offset.set(key(lv), 0);
    const prev = sorted[i - 1];
    const d = lv[0] - prev[0];
    const gap = d < 1e-6 ? TIER_ROWS : multiSite ? Math.max(0.5, Math.min(1, d)) : d;
    offset.set(key(lv), offset.get(key(prev))! + rowH * gap);
  });
  const span = Math.max(0, ...offset.values());
  const height = 2 * margin + span;
  const positions = new Map<string, Point>();
  for (const n of nodes) {
    const y = height - margin - (offset.get(key(levelOf(n))) ?? 0);
    const band = perPos && n.pos !== null && n.pos !== undefined ? n.pos : null;
    let x: number;
    if (band === null) {
      x = perPos && (n.type === "embed" || n.type === "logits") ? margin + acc / 2 : margin + (slot(n, opts.nHeads) + 0.5) * slotW + (perPos ? (acc - bandW) / 2 : 0);
    } else {
      x = margin + bandStart[band] + ((cells.get(n.id)?.slot ?? slot(n, opts.nHeads)) + 0.5) * slotW;
      if (cells.size && (n.type === "embed" || n.type === "logits")) x = margin + bandStart[band] + (bandWidths[band] - 12) / 2;
    }
    positions.set(n.id, { x, y });
  }
  const bands = perPos ? Array.from({ length: nPos }, (_, pos) => ({ pos, x: margin + bandStart[pos] + (bandWidths[pos] - 12) / 2, w: bandWidths[pos] })) : [];
  const rowYs = layers.map((layer) => ({ layer, y: height - margin - (offset.get(key([rowBase(layer), 0])) ?? 0) }));
  // Nodes as large as fit: half a slot across, and half the closest vertical gap between
  // levels whose nodes can share a column (a layer's heads and the SAE row above them; a
  // latent's diamond is 1.1 r tall).
  const maxRadius = Math.min(12, slotW / 2 - 1, ((cells.size ? TIER_ROWS : 1) * rowH) / 2.2 - 0.5);
  return { positions, width, height: height + (perPos ? 16 : 0), bands, rows: rowYs, maxRadius };
}

export interface Box {
  x0: number;
  y0: number;
  x1: number;
  y1: number;
}

export interface LabelRequest {
  id: string;
  /** Node centre and radius, in screen pixels. */
  x: number;
  y: number;
  r: number;
  /** Text width and height in screen pixels (measured). */
  w: number;
  h: number;
}

export interface PlacedLabel {
  id: string;
  /** Text anchor point (text-anchor middle, dominant-baseline central), screen pixels. */
  x: number;
  y: number;
  box: Box;
  /** Placed across edges (no edge-free spot): drawn above them on a white halo. */
  overEdge?: boolean;
}

const overlaps = (a: Box, b: Box) => a.x0 < b.x1 && b.x0 < a.x1 && a.y0 < b.y1 && b.y0 < a.y1;

/** Does the segment p–q cross (or lie inside) box b? (Liang–Barsky clipping.) */
export function segmentHitsBox(p: Point, q: Point, b: Box): boolean {
  let t0 = 0;
  let t1 = 1;
  const dx = q.x - p.x;
  const dy = q.y - p.y;
  const checks: [number, number][] = [
    [-dx, p.x - b.x0],
    [dx, b.x1 - p.x],
    [-dy, p.y - b.y0],
    [dy, b.y1 - p.y],
  ];
  for (const [pp, qq] of checks) {
    if (pp === 0) {
      if (qq < 0) return false;
      continue;
    }
    const t = qq / pp;
    if (pp < 0) t0 = Math.max(t0, t);
    else t1 = Math.min(t1, t);
    if (t0 > t1) return false;
  }
  return true;
}

/** Collision-aware labels: in request order (put the most important first), each label takes
 * the first spot around its node (below, above, right, left, the corners, then further out)
 * that overlaps no node, no label placed before it and nothing outside ``bounds``, preferring
 * spots that cross no edge (polylines in screen pixels). With ``overEdges``, a label that
 * finds no edge-free spot may cross edges (it is drawn above them, on a white halo; such
 * labels are marked ``overEdge``); otherwise, or with no spot at all, it is left out (the view
 * shows it on hover). */
export function placeLabels(requests: LabelRequest[], nodes: { x: number; y: number; r: number }[], edges: Point[][], bounds: Box, opts: { gap?: number; overEdges?: boolean } = {}): PlacedLabel[] {
  const gap = opts.gap ?? 2;
  const placed: PlacedLabel[] = [];
  const nodeBoxes = nodes.map((n) => ({ x0: n.x - n.r - 1, y0: n.y - n.r - 1, x1: n.x + n.r + 1, y1: n.y + n.r + 1 }));
  const edgeBoxes = edges.map((line) => {
    const xs = line.map((p) => p.x);
    const ys = line.map((p) => p.y);
    return { x0: Math.min(...xs), y0: Math.min(...ys), x1: Math.max(...xs), y1: Math.max(...ys) };
  });
  const crossesEdge = (box: Box) => edges.some((line, i) => overlaps(edgeBoxes[i], box) && line.some((p, j) => j > 0 && segmentHitsBox(line[j - 1], p, box)));
  const spotsOf = (q: LabelRequest): Box[] => {
    const d = q.r + gap;
    const centres: Point[] = [
      { x: q.x, y: q.y + d + q.h / 2 },
      { x: q.x, y: q.y - d - q.h / 2 },
      { x: q.x + d + q.w / 2, y: q.y },
      { x: q.x - d - q.w / 2, y: q.y },
      { x: q.x + d + q.w / 2, y: q.y + d + q.h / 2 },
      { x: q.x - d - q.w / 2, y: q.y + d + q.h / 2 },
      { x: q.x + d + q.w / 2, y: q.y - d - q.h / 2 },
      { x: q.x - d - q.w / 2, y: q.y - d - q.h / 2 },
      // further out, still next to the node
      { x: q.x, y: q.y + d + (q.h * 3) / 2 },
      { x: q.x, y: q.y - d - (q.h * 3) / 2 },
      { x: q.x + d + q.w / 2 + q.h, y: q.y },
      { x: q.x - d - q.w / 2 - q.h, y: q.y },
    ];
    return centres
      .map((s) => ({ x0: s.x - q.w / 2, y0: s.y - q.h / 2, x1: s.x + q.w / 2, y1: s.y + q.h / 2 }))
      .filter((box) => box.x0 >= bounds.x0 && box.y0 >= bounds.y0 && box.x1 <= bounds.x1 && box.y1 <= bounds.y1);
  };
  const free = (box: Box) => !nodeBoxes.some((n) => overlaps(n, box)) && !placed.some((p) => overlaps(p.box, box));
  const left: LabelRequest[] = [];
  for (const q of requests) {
    const box = spotsOf(q).find((b) => free(b) && !crossesEdge(b));
    if (box) placed.push({ id: q.id, x: (box.x0 + box.x1) / 2, y: (box.y0 + box.y1) / 2, box });
    else left.push(q);
  }
  if (opts.overEdges) {
    for (const q of left) {
      const box = spotsOf(q).find(free);
      if (box) placed.push({ id: q.id, x: (box.x0 + box.x1) / 2, y: (box.y0 + box.y1) / 2, box, overEdge: true });
    }
  }
  return placed;
}

/** Points along edgePath(a, b) (the same cubic), for collision tests. */
export function edgePolyline(a: Point, b: Point, steps = 12): Point[] {
  const dy = (b.y - a.y) / 2;
  const c1 = { x: a.x, y: a.y + dy };
  const c2 = { x: b.x, y: b.y - dy };
  const out: Point[] = [];
  for (let i = 0; i <= steps; i++) {
    const t = i / steps;
    const u = 1 - t;
    out.push({
      x: u * u * u * a.x + 3 * u * u * t * c1.x + 3 * u * t * t * c2.x + t * t * t * b.x,
      y: u * u * u * a.y + 3 * u * u * t * c1.y + 3 * u * t * t * c2.y + t * t * t * b.y,
    });
  }
  return out;
}

/** The label of a layer row: "embed", "L12", "logits". */
export function rowLabel(layer: number, nLayers: number): string {
  if (layer < 0) return "embed";
  if (layer >= nLayers) return "logits";
  return `L${layer}`;
}

/** A smooth vertical S-curve from a to b (source below target). */
export function edgePath(a: Point, b: Point): string {
  const dy = (b.y - a.y) / 2;
  return `M${a.x.toFixed(1)},${a.y.toFixed(1)} C${a.x.toFixed(1)},${(a.y + dy).toFixed(1)} ${b.x.toFixed(1)},${(b.y - dy).toFixed(1)} ${b.x.toFixed(1)},${b.y.toFixed(1)}`;
}
