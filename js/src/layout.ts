// Graph layout and pruning, pure functions (unit-tested): layers stacked bottom-up (embeddings
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
  /** Per-position graphs: the x centre of each token's band (for axis labels). */
  bands: { pos: number; x: number }[];
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
  const width = 2 * margin + nPos * bandW;
  const clampLayer = (l: number) => Math.min(Math.max(l, -1), opts.nLayers);
  const layers = opts.compact ? [...new Set(nodes.map((n) => clampLayer(n.layer)))].sort((a, b) => a - b) : Array.from({ length: opts.nLayers + 2 }, (_, i) => i - 1);
  const rowOf = new Map(layers.map((l, i) => [l, i]));
  const rows = Math.max(layers.length, 1);
  const height = 2 * margin + (rows - 1) * rowH;
  const positions = new Map<string, Point>();
  for (const n of nodes) {
    const row = rowOf.get(clampLayer(n.layer)) ?? 0;
    const y = height - margin - row * rowH;
    const band = perPos && n.pos !== null && n.pos !== undefined ? n.pos : null;
    let x: number;
    if (band === null) {
      x = perPos && (n.type === "embed" || n.type === "logits") ? margin + (nPos * bandW) / 2 : margin + (slot(n, opts.nHeads) + 0.5) * slotW + (perPos ? ((nPos - 1) * bandW) / 2 : 0);
    } else {
      x = margin + band * bandW + (slot(n, opts.nHeads) + 0.5) * slotW;
    }
    // MLPs sit half a row above their layer's heads: they read the heads' output.
    positions.set(n.id, { x, y: n.type === "mlp" ? y - rowH / 2.5 : y });
  }
  const bands = perPos ? Array.from({ length: nPos }, (_, pos) => ({ pos, x: margin + pos * bandW + (slots * slotW) / 2 })) : [];
  return { positions, width, height: height + (perPos ? 16 : 0), bands };
}

export interface EdgeList {
  source: ArrayLike<number>;
  target: ArrayLike<number>;
  weight: ArrayLike<number>;
}

export interface Pruned {
  nodes: Set<number>;
  edges: number[];
  maxWeight: number;
}

/** Keep embeddings, logits, pinned nodes and the top-n nodes by |score|; then edges between
 * kept nodes with |weight| ≥ threshold × max|weight|, strongest first, at most maxEdges. */
export function prune(
  nodes: GraphNode[],
  edges: EdgeList | null,
  opts: { topN: number; threshold: number; pinned?: Iterable<string>; maxEdges?: number },
): Pruned {
  const pinned = new Set(opts.pinned ?? []);
  const keep = new Set<number>();
  const ranked: number[] = [];
  nodes.forEach((n, i) => {
    // Embeddings and logits always show, except per-position ones with nothing flowing (score 0).
    const io = (n.type === "embed" || n.type === "logits") && (n.pos === null || n.pos === undefined || (n.score ?? 1) !== 0);
    if (io || pinned.has(n.id)) keep.add(i);
    else ranked.push(i);
  });
  ranked.sort((a, b) => Math.abs(nodes[b].score ?? 0) - Math.abs(nodes[a].score ?? 0));
  for (const i of ranked.slice(0, Math.max(0, opts.topN))) keep.add(i);
  const out: number[] = [];
  let maxWeight = 0;
  if (edges) {
    for (let e = 0; e < edges.weight.length; e++) maxWeight = Math.max(maxWeight, Math.abs(edges.weight[e]));
    const cut = opts.threshold * maxWeight;
    for (let e = 0; e < edges.weight.length; e++) {
      const w = Math.abs(edges.weight[e]);
      if (w >= cut && w > 0 && keep.has(edges.source[e]) && keep.has(edges.target[e])) out.push(e);
    }
    out.sort((a, b) => Math.abs(edges.weight[b]) - Math.abs(edges.weight[a]));
    out.splice(opts.maxEdges ?? 400);
  }
  return { nodes: keep, edges: out, maxWeight };
}

/** A smooth vertical S-curve from a to b (source below target). */
export function edgePath(a: Point, b: Point): string {
  const dy = (b.y - a.y) / 2;
  return `M${a.x.toFixed(1)},${a.y.toFixed(1)} C${a.x.toFixed(1)},${(a.y + dy).toFixed(1)} ${b.x.toFixed(1)},${(b.y - dy).toFixed(1)} ${b.x.toFixed(1)},${b.y.toFixed(1)}`;
}
