import { describe, expect, it } from "vitest";
import { edgePolyline, layoutGraph, placeLabels, rowLabel, segmentHitsBox, type PlacedLabel } from "../src/layout";
import { arrange, fill, isCovered, isSelected } from "../src/patchmap";
import { nextAblationSet } from "../src/ablation";
import type { GraphNode } from "../src/types";

describe("graph layout", () => {
  // Where nodes go is the kernel's rule (engine/graph/_placement.py, tests/test_circuit_layout.py):
  // this only scales its units (slots across, rows up) to pixels, y growing downwards.
  const nodes: GraphNode[] = [
    { id: "EMBED", type: "embed", layer: -1, x: 1.5, y: 0 },
    { id: "L0H1", type: "head", layer: 0, head: 1, x: 1.5, y: 1 },
    { id: "MLP0", type: "mlp", layer: 0, x: 2.5, y: 1.25 },
  ];
  const layout = { width: 3, height: 2, bands: [], rows: [{ layer: -1, y: 0 }, { layer: 0, y: 1 }], min_gap: 1 };

  it("scales the kernel's slots and rows to pixels, bottom-up", () => {
    const lay = layoutGraph(nodes, layout, { rowHeight: 40, slotWidth: 30, margin: 10 });
    expect(lay.width).toBe(2 * 10 + 3 * 30);
    expect(lay.height).toBe(2 * 10 + 2 * 40);
    expect(lay.positions.get("EMBED")).toEqual({ x: 10 + 1.5 * 30, y: 10 + 2 * 40 });
    expect(lay.positions.get("MLP0")).toEqual({ x: 10 + 2.5 * 30, y: 10 + 0.75 * 40 });
    expect(lay.rows).toEqual([{ layer: -1, y: 90 }, { layer: 0, y: 50 }]);
    expect(lay.maxRadius).toBe(12);
  });

  it("keeps nodes small enough not to overlap in narrow slots and close rows", () => {
    const lay = layoutGraph(nodes, { ...layout, min_gap: 0.5, bands: [{ pos: 0, x: 1.5, w: 3.5 }] }, { rowHeight: 42, slotWidth: 22 });
    expect(2 * lay.maxRadius).toBeLessThanOrEqual(22);
    expect(2.2 * lay.maxRadius).toBeLessThanOrEqual(0.5 * 42);
    expect(lay.bands).toEqual([{ pos: 0, x: 30 + 1.5 * 22, w: 3.5 * 22 }]);
    expect(lay.height).toBe(2 * 30 + 2 * 42 + 16); // room for the token axis
  });
});

describe("label placement", () => {
  const box = { x0: 0, y0: 0, x1: 400, y1: 300 };
  const overlaps = (a: PlacedLabel, b: PlacedLabel) => a.box.x0 < b.box.x1 && b.box.x0 < a.box.x1 && a.box.y0 < b.box.y1 && b.box.y0 < a.box.y1;

  it("puts a free label below its node, clear of the node", () => {
    const [p] = placeLabels([{ id: "A", x: 100, y: 100, r: 6, w: 30, h: 14 }], [{ x: 100, y: 100, r: 6 }], [], box);
    expect(p.x).toBe(100);
    expect(p.box.y0).toBeGreaterThanOrEqual(106);
  });

  it("never overlaps other labels or nodes, and drops labels with no room", () => {
    const nodes = Array.from({ length: 30 }, (_, i) => ({ x: 20 + (i % 10) * 14, y: 40 + Math.floor(i / 10) * 14, r: 4 }));
    const requests = nodes.map((n, i) => ({ id: `N${i}`, ...n, w: 34, h: 14 }));
    const placed = placeLabels(requests, nodes, [], box);
    expect(placed.length).toBeGreaterThan(0);
    expect(placed.length).toBeLessThan(nodes.length);
    for (const a of placed) {
      for (const b of placed) if (a !== b) expect(overlaps(a, b)).toBe(false);
      for (const n of nodes) {
        const hit = n.x + n.r > a.box.x0 && n.x - n.r < a.box.x1 && n.y + n.r > a.box.y0 && n.y - n.r < a.box.y1;
        expect(hit).toBe(false);
      }
    }
  });

  it("avoids edges: a label moves off a line that crosses its first spot", () => {
    const line = edgePolyline({ x: 100, y: 200 }, { x: 100, y: 100 });
    const [p] = placeLabels([{ id: "A", x: 100, y: 100, r: 6, w: 30, h: 14 }], [{ x: 100, y: 100, r: 6 }], [line], box);
    expect(line.some((q, j) => j > 0 && segmentHitsBox(line[j - 1], q, p.box))).toBe(false);
  });

  it("with overEdges, a label with no edge-free spot crosses edges rather than vanish", () => {
    const node = { x: 100, y: 100, r: 6 };
    const lines = [-40, -20, 0, 20, 40].map((dx) => edgePolyline({ x: 60 + dx, y: 200 }, { x: 140 + dx, y: 20 }));
    const req = [{ id: "A", ...node, w: 30, h: 14 }];
    expect(placeLabels(req, [node], lines, box)).toEqual([]);
    const [p] = placeLabels(req, [node], lines, box, { overEdges: true });
    expect(p.overEdge).toBe(true);
  });

  it("names rows by layer, with embed and logits at the ends", () => {
    expect([rowLabel(-1, 30), rowLabel(0, 30), rowLabel(23, 30), rowLabel(30, 30)]).toEqual(["embed", "L0", "L23", "logits"]);
  });
});

describe("patch maps and ablation sets", () => {
  const byPos = { component: "L{layer}H{head}:P{pos}", ablates: "L{layer}H{head}:P{pos}", reason: "" };

  it("fills the kernel's templates with a cell's indices", () => {
    expect(fill("L{layer}H{head}:P{pos}", { layer: 3, pos: 4, head: 5 })).toBe("L3H5:P4");
    expect(fill("resid_pre:L{layer}:P{pos}", { layer: 2, pos: 4 })).toBe("resid_pre:L2:P4");
    expect(fill("{sublayer}", { layer: 2, sublayer: 1 }, { sublayer: ["attn_out:L{layer}", "MLP{layer}"] })).toBe("MLP2"); // DLA by layer
  });

  it("arranges a layer × pos × head map as (layer, head) rows", () => {
    const a = arrange({ axes: ["layer", "pos", "head"], shape: [2, 3, 4], labels: { pos: ["0: a", "1: b", "2: c"] }, cells: byPos });
    expect([a.rows, a.cols]).toEqual([8, 3]);
    expect(a.component(5, 2)).toBe("L1H1:P2");
    expect(a.ablates(5, 2)).toBe("L1H1:P2");
    expect(a.index(5, 2)).toBe((1 * 3 + 2) * 4 + 1);
    expect(a.colLabels[1]).toBe("1: b");
    expect(a.rowGroups?.size).toBe(4);
    expect(a.rowGroups?.label(1)).toBe("L1");
  });

  it("cells the kernel marks unablatable ablate nothing", () => {
    const cells = { component: "resid_pre:L{layer}:P{pos}", ablates: null, reason: "not one component" };
    const a = arrange({ axes: ["layer", "pos"], shape: [2, 3], labels: {}, cells });
    expect(a.component(1, 2)).toBe("resid_pre:L1:P2");
    expect(a.ablates(1, 2)).toBeNull();
  });

  it("a cell is covered by its own target or its whole head, and selected likewise", () => {
    expect(isCovered("L3H5:P4", new Set(["L3H5"]))).toBe(true);
    expect(isCovered("L3H5:P4", new Set(["L3H5:P4"]))).toBe(true);
    expect(isCovered("L3H5:P4", new Set(["L3H5:P3"]))).toBe(false);
    expect(isCovered(null, new Set(["L3H5"]))).toBe(false);
    expect(isSelected("L3H5", "L3H5:P4", "L3H5:P4")).toBe(true);
    expect(isSelected("", "resid_pre:L2:P4", null)).toBe(false);
    expect(isSelected("resid_pre:L2:P4", "resid_pre:L2:P4", null)).toBe(true);
  });

  it("click replaces the set, shift-click toggles membership", () => {
    expect(nextAblationSet(["L0H0"], "L1H1", false)).toEqual(["L1H1"]);
    expect(nextAblationSet(["L1H1"], "L1H1", false)).toEqual([]);
    expect(nextAblationSet(["L0H0"], "L1H1", true)).toEqual(["L0H0", "L1H1"]);
    expect(nextAblationSet(["L0H0", "L1H1"], "L0H0", true)).toEqual(["L1H1"]);
  });
});
