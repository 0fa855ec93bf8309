import { describe, expect, it } from "vitest";
import { layoutGraph } from "../src/layout";
import { steerable } from "../src/clamp";
import type { GraphNode } from "../src/types";

describe("feature nodes and supernodes", () => {
  it("features and supernodes of one site get slots of their own, strongest first, so none overlap", () => {
    const nodes: GraphNode[] = [
      { id: "L0F3:P2", type: "feature", layer: 0, head: 0, pos: 2, score: 1 },
      { id: "L0F9:P2", type: "feature", layer: 0, head: 1, pos: 2, score: 1 },
      { id: "S1", type: "supernode", layer: 0, head: 2, pos: 2, score: 1 },
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
