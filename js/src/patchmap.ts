// How a PatchResult's n-d values become a 2-d grid, and the component id of each cell
// (mirrors PatchResult.component in circuitviz/engine/_results.py).

export interface MapShape {
  axes: string[];
  shape: number[];
  labels: Record<string, string[]>;
  target: string;
}

export interface Arrangement {
  rows: number;
  cols: number;
  rowLabels: string[];
  colLabels: string[];
  rowTitle: string;
  colTitle: string;
  /** Flat index into the row-major values of cell (r, c). */
  index: (r: number, c: number) => number;
  component: (r: number, c: number) => string;
}

const TITLES: Record<string, string> = { layer: "layer", head: "head", kv_head: "KV head", pos: "position", sublayer: "sublayer" };

export function componentId(target: string, named: Record<string, number>): string {
  const l = named.layer;
  if (named.head !== undefined) return `L${l}H${named.head}` + (named.pos !== undefined ? `:P${named.pos}` : "");
  if (named.sublayer !== undefined) return named.sublayer === 1 ? `MLP${l}` : `attn_out:L${l}`; // DLA by layer
  if (named.kv_head !== undefined) return `L${l}KV${named.kv_head}.${target}`;
  if (target === "mlp_out" && named.pos === undefined) return `MLP${l}`;
  return `${target}:L${l}:P${named.pos}`;
}

/** Layers down the side; a layer × pos × head map gets one row per (layer, head). */
export function arrange(m: MapShape): Arrangement {
  const { axes, shape, labels, target } = m;
  const lab = (axis: string, i: number) => labels[axis]?.[i] ?? `${axis} ${i}`;
  if (axes.length === 3 && axes[0] === "layer" && axes[1] === "pos" && axes[2] === "head") {
    const [L, P, H] = shape;
    return {
      rows: L * H,
      cols: P,
      rowLabels: Array.from({ length: L * H }, (_, r) => `L${Math.floor(r / H)}H${r % H}`),
      colLabels: Array.from({ length: P }, (_, c) => lab("pos", c)),
      rowTitle: "layer × head",
      colTitle: "position",
      index: (r, c) => (Math.floor(r / H) * P + c) * H + (r % H),
      component: (r, c) => componentId(target, { layer: Math.floor(r / H), head: r % H, pos: c }),
    };
  }
  const rowsAxis = axes[0];
  const colsAxis = axes[1];
  const rows = shape[0] ?? 1;
  const cols = axes.length > 1 ? shape[1] : 1;
  return {
    rows,
    cols,
    rowLabels: Array.from({ length: rows }, (_, r) => lab(rowsAxis, r)),
    colLabels: Array.from({ length: cols }, (_, c) => (colsAxis ? lab(colsAxis, c) : "")),
    rowTitle: TITLES[rowsAxis] ?? rowsAxis,
    colTitle: colsAxis ? (TITLES[colsAxis] ?? colsAxis) : "",
    index: (r, c) => r * cols + c,
    component: (r, c) => componentId(target, colsAxis ? { [rowsAxis]: r, [colsAxis]: c } : { [rowsAxis]: r }),
  };
}

/** The head or MLP that clicking a cell ablates ("L3H5:P4" → "L3H5"; "mlp_out:L2:P4" → "MLP2"),
 * or null where engine.ablate has no such component (residual stream, KV heads). */
export function ablationTarget(component: string): string | null {
  let m = /^L(\d+)H(\d+)(?::P\d+)?$/.exec(component);
  if (m) return `L${m[1]}H${m[2]}`;
  m = /^(?:MLP(\d+)|mlp_out:L(\d+):P\d+)$/.exec(component);
  if (m) return `MLP${m[1] ?? m[2]}`;
  return null;
}
