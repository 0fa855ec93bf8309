// Graph layout and label placement, pure functions (unit-tested). The kernel decides what is
// shown and where each node sits (engine/graph/_placement.py: layers bottom-up, heads then
// the MLP across, one band per token, SAE nodes in their cells); this scales that to pixels
// and places labels, in screen pixels at every zoom, where they overlap nothing.
import type { GraphLayout, GraphNode } from "./types";

export interface LayoutOptions {
  rowHeight?: number;
  slotWidth?: number;
  margin?: number;
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

const NO_LAYOUT: GraphLayout = { width: 0, height: 0, bands: [], rows: [], min_gap: 1 };

/** The kernel's layout (engine/graph/_placement.py: slots across, rows up, each node's x and
 * y) in pixels: ``slotWidth`` per slot, ``rowHeight`` per row, y growing downwards. */
export function layoutGraph(nodes: GraphNode[], layout: GraphLayout | undefined, opts: LayoutOptions = {}): Layout {
  const lay = layout ?? NO_LAYOUT;
  const rowH = opts.rowHeight ?? 44;
  const slotW = opts.slotWidth ?? 24;
  const margin = opts.margin ?? 30;
  const height = 2 * margin + lay.height * rowH;
  const px = (x: number) => margin + x * slotW;
  const py = (y: number) => height - margin - y * rowH;
  const positions = new Map<string, Point>(nodes.map((n) => [n.id, { x: px(n.x ?? 0), y: py(n.y ?? 0) }]));
  // Nodes as large as fit: half a slot across, and half the closest vertical gap between
  // levels whose nodes can share a column (a latent's diamond is 1.1 r tall).
  const maxRadius = Math.min(12, slotW / 2 - 1, (lay.min_gap * rowH) / 2.2 - 0.5);
  return {
    positions,
    width: 2 * margin + lay.width * slotW,
    height: height + (lay.bands.length ? 16 : 0),
    bands: lay.bands.map((b) => ({ pos: b.pos, x: px(b.x), w: b.w * slotW })),
    rows: lay.rows.map((r) => ({ layer: r.layer, y: py(r.y) })),
    maxRadius,
  };
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
