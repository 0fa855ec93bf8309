// How a PatchResult's n-d values become a 2-d grid. What each cell is called and what a click
// on it ablates is decided in the kernel (circuitviz/engine/_cells.py) and arrives as templates
// ("L{layer}H{head}:P{pos}") that are only filled in here.

export interface CellRule {
  /** Template of each cell's data-component id. */
  component: string;
  /** Template of what a click ablates, or null when no cell of this map can be ablated. */
  ablates: string | null;
  /** Why cells can't be ablated ("" when they can). */
  reason: string;
  /** Axes whose index picks a sub-template: {sublayer} with ["attn_out:L{layer}", "MLP{layer}"]. */
  choices?: Record<string, string[]>;
}

export interface MapShape {
  axes: string[];
  shape: number[];
  labels: Record<string, string[]>;
  cells: CellRule;
}

export interface Arrangement {
  rows: number;
  cols: number;
  rowLabels: string[];
  colLabels: string[];
  rowTitle: string;
  colTitle: string;
  /** Rows come in groups (the heads of one layer): size and label of each group. */
  rowGroups?: { size: number; label: (g: number) => string };
  /** Flat index into the row-major values of cell (r, c). */
  index: (r: number, c: number) => number;
  component: (r: number, c: number) => string;
  /** What clicking cell (r, c) ablates, or null. */
  ablates: (r: number, c: number) => string | null;
}

const TITLES: Record<string, string> = { layer: "layer", head: "head", kv_head: "KV head", pos: "position", sublayer: "sublayer" };

/** Fill a kernel template: "L{layer}H{head}" with {layer: 3, head: 5} → "L3H5". */
export function fill(template: string, named: Record<string, number>, choices: Record<string, string[]> = {}): string {
  for (const [axis, options] of Object.entries(choices)) template = template.replace(`{${axis}}`, options[named[axis]] ?? "?");
  return template.replace(/\{(\w+)\}/g, (_, k: string) => String(named[k]));
}

/** The whole head or MLP of a positioned id ("L3H5:P4" → "L3H5"). */
export function whole(id: string): string {
  return id.split(":", 1)[0];
}

/** Mirrors engine/_cells.py is_covered: the cell's own target or its whole head/MLP is ablated. */
export function isCovered(target: string | null, ablated: Set<string>): boolean {
  return target !== null && (ablated.has(target) || ablated.has(whole(target)));
}

/** Mirrors engine/_cells.py is_selected: its id, what it ablates, or that whole head/MLP. */
export function isSelected(selected: string, id: string, target: string | null): boolean {
  return !!selected && (selected === id || (target !== null && (selected === target || selected === whole(target))));
}

/** Layers down the side; a layer × pos × head map gets one row per (layer, head). */
export function arrange(m: MapShape): Arrangement {
  const { axes, shape, labels, cells } = m;
  const lab = (axis: string, i: number) => labels[axis]?.[i] ?? `${axis} ${i}`;
  let named: (r: number, c: number) => Record<string, number>;
  let base: Omit<Arrangement, "component" | "ablates">;
  if (axes.length === 3 && axes[0] === "layer" && axes[1] === "pos" && axes[2] === "head") {
    const [L, P, H] = shape;
    named = (r, c) => ({ layer: Math.floor(r / H), head: r % H, pos: c });
    base = {
      rows: L * H,
      cols: P,
      rowLabels: Array.from({ length: L * H }, (_, r) => `L${Math.floor(r / H)}H${r % H}`),
      colLabels: Array.from({ length: P }, (_, c) => lab("pos", c)),
      rowTitle: "layer × head",
      colTitle: "position",
      rowGroups: { size: H, label: (g) => `L${g}` },
      index: (r, c) => (Math.floor(r / H) * P + c) * H + (r % H),
    };
  } else {
    const rowsAxis = axes[0];
    const colsAxis = axes[1];
    const rows = shape[0] ?? 1;
    const cols = axes.length > 1 ? shape[1] : 1;
    named = (r, c) => (colsAxis ? { [rowsAxis]: r, [colsAxis]: c } : { [rowsAxis]: r });
    base = {
      rows,
      cols,
      rowLabels: Array.from({ length: rows }, (_, r) => lab(rowsAxis, r)),
      colLabels: Array.from({ length: cols }, (_, c) => (colsAxis ? lab(colsAxis, c) : "")),
      rowTitle: TITLES[rowsAxis] ?? rowsAxis,
      colTitle: colsAxis ? (TITLES[colsAxis] ?? colsAxis) : "",
      index: (r, c) => r * cols + c,
    };
  }
  const ablates = cells.ablates;
  return {
    ...base,
    component: (r, c) => fill(cells.component, named(r, c), cells.choices),
    ablates: ablates === null ? () => null : (r, c) => fill(ablates, named(r, c), cells.choices),
  };
}
