import { describe, expect, it } from "vitest";
import { layoutGraph, prune } from "../src/layout";
import { ablationTarget, arrange, componentId } from "../src/patchmap";
import { nextAblationSet } from "../src/ablation";
import type { GraphNode } from "../src/types";

const nodes: GraphNode[] = [
  { id: "EMBED", type: "embed", layer: -1, score: null },
  { id: "L0H0", type: "head", layer: 0, head: 0, score: 0.5 },
  { id: "L0H1", type: "head", layer: 0, head: 1, score: -0.9 },
  { id: "MLP0", type: "mlp", layer: 0, score: 0.1 },
  { id: "L1H0", type: "head", layer: 1, head: 0, score: 0.05 },
  { id: "LOGITS", type: "logits", layer: 2, score: null },
];

describe("graph layout", () => {
  it("stacks layers bottom-up: embed lowest, logits highest", () => {
    const { positions } = layoutGraph(nodes, { nLayers: 2, nHeads: 2 });
    const y = (id: string) => positions.get(id)!.y;
    expect(y("EMBED")).toBeGreaterThan(y("L0H0"));
    expect(y("L0H0")).toBeGreaterThan(y("L1H0"));
    expect(y("L1H0")).toBeGreaterThan(y("LOGITS"));
    expect(y("MLP0")).toBeLessThan(y("L0H0")); // MLP above its layer's heads
    expect(y("MLP0")).toBeGreaterThan(y("L1H0"));
  });

  it("orders heads left to right and gives every node its own spot", () => {
    const { positions } = layoutGraph(nodes, { nLayers: 2, nHeads: 2 });
    expect(positions.get("L0H0")!.x).toBeLessThan(positions.get("L0H1")!.x);
    const spots = new Set([...positions.values()].map((p) => `${p.x},${p.y}`));
    expect(spots.size).toBe(nodes.length);
  });

  it("compact layout gives rows only to layers with nodes, keeping their order", () => {
    const sparse: GraphNode[] = [
      { id: "EMBED", type: "embed", layer: -1 },
      { id: "L7H0", type: "head", layer: 7, head: 0 },
      { id: "L20H1", type: "head", layer: 20, head: 1 },
      { id: "LOGITS", type: "logits", layer: 30 },
    ];
    const full = layoutGraph(sparse, { nLayers: 30, nHeads: 2 });
    const compact = layoutGraph(sparse, { nLayers: 30, nHeads: 2, compact: true });
    expect(compact.height).toBeLessThan(full.height / 5);
    const y = (id: string) => compact.positions.get(id)!.y;
    expect(y("EMBED")).toBeGreaterThan(y("L7H0"));
    expect(y("L7H0")).toBeGreaterThan(y("L20H1"));
    expect(y("L20H1")).toBeGreaterThan(y("LOGITS"));
  });

  it("puts per-position nodes in one band per token", () => {
    const pp: GraphNode[] = [
      { id: "L0H0:P0", type: "head", layer: 0, head: 0, pos: 0 },
      { id: "L0H1:P0", type: "head", layer: 0, head: 1, pos: 0 },
      { id: "L0H0:P1", type: "head", layer: 0, head: 0, pos: 1 },
    ];
    const { positions, width } = layoutGraph(pp, { nLayers: 1, nHeads: 2, perPosition: true, nPos: 2 });
    const x = (id: string) => positions.get(id)!.x;
    expect(x("L0H1:P0")).toBeLessThan(x("L0H0:P1"));
    expect(x("L0H0:P1")).toBeLessThan(width);
  });
});

describe("pruning", () => {
  const edges = { source: [0, 1, 2, 4], target: [1, 5, 5, 5], weight: [0.2, 1.0, -0.5, 0.01] };

  it("keeps embed/logits plus the top-n by |score|", () => {
    const p = prune(nodes, null, { topN: 1, threshold: 0 });
    expect([...p.nodes].sort()).toEqual([0, 2, 5]); // L0H1 has the largest |score|
  });

  it("keeps pinned nodes and edges between kept nodes above the threshold", () => {
    const p = prune(nodes, edges, { topN: 2, threshold: 0.3, pinned: ["L1H0"] });
    expect(p.nodes.has(4)).toBe(true);
    expect(p.maxWeight).toBe(1);
    expect(p.edges).toEqual([1, 2]); // strongest first; 0.2 and 0.01 are below 0.3
  });
});

describe("patch maps and ablation sets", () => {
  it("mirrors PatchResult.component ids", () => {
    expect(componentId("heads", { layer: 3, head: 5 })).toBe("L3H5");
    expect(componentId("heads_by_pos", { layer: 3, pos: 4, head: 5 })).toBe("L3H5:P4");
    expect(componentId("mlp_out", { layer: 7 })).toBe("MLP7");
    expect(componentId("resid_pre", { layer: 2, pos: 4 })).toBe("resid_pre:L2:P4");
    expect(componentId("k", { layer: 1, kv_head: 0 })).toBe("L1KV0.k");
    expect(componentId("layers", { layer: 2, sublayer: 0 })).toBe("attn_out:L2"); // DLA by layer
    expect(componentId("layers", { layer: 2, sublayer: 1 })).toBe("MLP2");
  });

  it("arranges a layer × pos × head map as (layer, head) rows", () => {
    const a = arrange({ axes: ["layer", "pos", "head"], shape: [2, 3, 4], labels: { pos: ["0: a", "1: b", "2: c"] }, target: "heads_by_pos" });
    expect([a.rows, a.cols]).toEqual([8, 3]);
    expect(a.component(5, 2)).toBe("L1H1:P2");
    expect(a.index(5, 2)).toBe((1 * 3 + 2) * 4 + 1);
    expect(a.colLabels[1]).toBe("1: b");
  });

  it("maps cells to what engine.ablate can ablate", () => {
    expect(ablationTarget("L3H5:P4")).toBe("L3H5");
    expect(ablationTarget("mlp_out:L2:P4")).toBe("MLP2");
    expect(ablationTarget("MLP7")).toBe("MLP7");
    expect(ablationTarget("resid_pre:L2:P4")).toBeNull();
  });

  it("click replaces the set, shift-click toggles membership", () => {
    expect(nextAblationSet(["L0H0"], "L1H1", false)).toEqual(["L1H1"]);
    expect(nextAblationSet(["L1H1"], "L1H1", false)).toEqual([]);
    expect(nextAblationSet(["L0H0"], "L1H1", true)).toEqual(["L0H0", "L1H1"]);
    expect(nextAblationSet(["L0H0", "L1H1"], "L0H0", true)).toEqual(["L1H1"]);
  });
});
