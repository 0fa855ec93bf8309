import { describe, expect, it } from "vitest";
import { layoutGraph } from "../src/layout";
import { steerable } from "../src/clamp";
import type { GraphNode } from "../src/types";

describe("feature nodes and supernodes", () => {
  // Which slot is the kernel's rule (engine/graph/_placement.py, tests/test_circuit_layout.py).
  it("features and supernodes of one site are drawn at the kernel's slots, so none overlap", () => {
    const nodes: GraphNode[] = [
      { id: "L0F3:P2", type: "feature", layer: 0, head: 0, pos: 2, score: 1, slot: 0, tier: 0 },
      { id: "L0F9:P2", type: "feature", layer: 0, head: 1, pos: 2, score: 1, slot: 1.5, tier: 0 },
      { id: "S1", type: "supernode", layer: 0, head: 2, pos: 2, score: 1, slot: 3, tier: 0 },
    ];
    const { positions } = layoutGraph(nodes, { nLayers: 1, nHeads: 4, perPosition: true, nPos: 3 });
    const xs = nodes.map((n) => positions.get(n.id)!.x);
    expect(new Set(xs).size).toBe(3);
    expect(xs[0]).toBeLessThan(xs[1]);
    expect(xs[1]).toBeLessThan(xs[2]);
  });

  it("only features and supernodes offer Ablate / Clamp × N", () => {
    expect(steerable({ id: "L0F3", type: "feature", layer: 0 })).toBe(true);
    expect(steerable({ id: "S1", type: "supernode", layer: 0 })).toBe(true);
    expect(steerable({ id: "L0H1", type: "head", layer: 0, head: 1 })).toBe(false);
    expect(steerable({ id: "L0ERR:P1", type: "error", layer: 0 })).toBe(false);
    expect(steerable(null)).toBe(false);
  });
});
