import { describe, expect, it } from "vitest";
import { featureCells, layoutGraph, TIER_ROWS } from "../src/layout";
import type { GraphNode } from "../src/types";

const node = (id: string, type: string, layer: number, pos: number, score = 0): GraphNode => ({ id, type, layer, pos, score, head: null });
// SAE nodes carry the kernel's cell placement (engine/graph/_placement.py)
const sae = (id: string, type: string, layer: number, pos: number, slot: number, tier = 0, score = 0): GraphNode => ({ ...node(id, type, layer, pos, score), slot, tier });

describe("feature nodes in the layout", () => {
  const nodes = [
    node("L0H1:P2", "head", 0, 2, 1),
    node("MLP0:P2", "mlp", 0, 2, 1),
    sae("L0F3:P2", "feature", 0, 2, 0, 0, -0.5),
    sae("L0F7:P2", "feature", 0, 2, 1.5, 0, 0.1),
    sae("L0ERR:P2", "error", 0, 2, 3, 0, 0.2),
    sae("L0F3:P1", "feature", 0, 1, 1.5, 0, 0.3),
  ];

  it("reads each SAE node's cell from the kernel, nothing for other nodes", () => {
    const cells = featureCells(nodes);
    expect(cells.get("L0F7:P2")).toEqual({ slot: 1.5, tier: 0 });
    expect(cells.has("L0H1:P2")).toBe(false);
  });

  it("puts them half a row above their layer, inside their token's band, at their slot", () => {
    const lay = layoutGraph(nodes, { nLayers: 2, nHeads: 4, perPosition: true, nPos: 3, rowHeight: 40, slotWidth: 20 });
    const head = lay.positions.get("L0H1:P2")!;
    const mlp = lay.positions.get("MLP0:P2")!;
    const f = lay.positions.get("L0F3:P2")!;
    expect(f.y).toBeCloseTo(head.y - 20);
    expect(f.y).toBeLessThan(mlp.y);
    const xs = ["L0F3:P2", "L0F7:P2", "L0ERR:P2"].map((id) => lay.positions.get(id)!.x);
    expect(xs[1] - xs[0]).toBeCloseTo(1.5 * 20);
    expect(xs[2] - xs[0]).toBeCloseTo(3 * 20);
    expect(lay.positions.get("L0F3:P1")!.x).toBeLessThan(Math.min(...xs));
    // never in the MLP's column (it sits a quarter row lower, too close)
    expect(Math.max(...xs)).toBeLessThan(mlp.x - 10);
  });

  it("stacks a crowded cell's tiers above each other and moves the layers above up", () => {
    const crowd = [node("L0H0:P0", "head", 0, 0, 1), node("L1H0:P0", "head", 1, 0, 1), sae("L0F1:P0", "feature", 0, 0, 0, 0), sae("L0F2:P0", "feature", 0, 0, 0, 1), sae("L0F3:P0", "feature", 0, 0, 0, 2)];
    const opts = { nLayers: 2, nHeads: 2, perPosition: true, nPos: 1, rowHeight: 40, slotWidth: 20, compact: true };
    const lay = layoutGraph(crowd, opts);
    const y = (id: string) => lay.positions.get(id)!.y;
    expect(y("L0F1:P0") - y("L0F2:P0")).toBeCloseTo(TIER_ROWS * 40);
    expect(y("L0F2:P0") - y("L0F3:P0")).toBeCloseTo(TIER_ROWS * 40);
    expect(y("L0F3:P0") - y("L1H0:P0")).toBeCloseTo(20); // the next layer keeps its half row
    const flat = layoutGraph(crowd.slice(0, 3), opts);
    expect(lay.height - flat.height).toBeCloseTo(2 * TIER_ROWS * 40);
    // nodes no larger than fits between a tier and the heads above it
    expect(2.2 * lay.maxRadius).toBeLessThanOrEqual(TIER_ROWS * 40);
    expect(2 * lay.maxRadius).toBeLessThan(20);
  });
});

describe("feature nodes at several SAE sites of one block", () => {
  const at = (id: string, type: string, site: string, slot: number, score = 0.1): GraphNode => ({ ...sae(id, type, 0, 1, slot, 0, score), site });
  const nodes = [
    node("L0H0:P1", "head", 0, 1, 1),
    node("MLP0:P1", "mlp", 0, 1, 1),
    at("L0preF1:P1", "feature", "pre", 1.5),
    at("L0attnF2:P1", "feature", "attn", 0),
    at("L0attnERR:P1", "error", "attn", 3),
    at("L0midF3:P1", "feature", "mid", 1.5),
    at("L0mlpF4:P1", "feature", "mlp", 1.5),
    at("L0F5:P1", "feature", "", 1.5),
  ];

  it("gives each site its own row in forward order", () => {
    const lay = layoutGraph(nodes, { nLayers: 2, nHeads: 4, perPosition: true, nPos: 2, rowHeight: 60, slotWidth: 20 });
    const y = (id: string) => lay.positions.get(id)!.y;
    // screen y grows downwards: later in the forward pass = higher up = smaller y
    const order = ["L0preF1:P1", "L0H0:P1", "L0attnF2:P1", "L0midF3:P1", "MLP0:P1", "L0mlpF4:P1", "L0F5:P1"];
    for (let i = 1; i < order.length; i++) expect(y(order[i])).toBeLessThan(y(order[i - 1]));
    expect(y("L0attnERR:P1")).toBe(y("L0attnF2:P1"));
  });
});
