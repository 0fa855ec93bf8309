import { describe, expect, it } from "vitest";
import { featureSlots, layoutGraph } from "../src/layout";
import type { GraphNode } from "../src/types";

const node = (id: string, type: string, layer: number, pos: number, score = 0): GraphNode => ({ id, type, layer, pos, score, head: null });

describe("feature nodes in the layout", () => {
  const nodes = [
    node("L0H1:P2", "head", 0, 2, 1),
    node("MLP0:P2", "mlp", 0, 2, 1),
    node("L0F7:P2", "feature", 0, 2, 0.1),
    node("L0F3:P2", "feature", 0, 2, -0.5),
    node("L0ERR:P2", "error", 0, 2, 0.2),
    node("L0F3:P1", "feature", 0, 1, 0.3),
  ];

  it("spreads a band's latents strongest first, the error node last", () => {
    const slots = featureSlots(nodes, 4);
    expect(slots.get("L0F3:P2")).toBe(0);
    expect(slots.get("L0F7:P2")).toBe(2);
    expect(slots.get("L0ERR:P2")).toBe(4);
    expect(slots.get("L0F3:P1")).toBe(2); // alone in its band: centred
    expect(slots.has("L0H1:P2")).toBe(false);
  });

  it("puts them half a row above their layer, inside their token's band, apart", () => {
    const lay = layoutGraph(nodes, { nLayers: 2, nHeads: 4, perPosition: true, nPos: 3, rowHeight: 40, slotWidth: 20 });
    const head = lay.positions.get("L0H1:P2")!;
    const mlp = lay.positions.get("MLP0:P2")!;
    const f = lay.positions.get("L0F3:P2")!;
    expect(f.y).toBeCloseTo(head.y - 20);
    expect(f.y).toBeLessThan(mlp.y);
    const xs = ["L0F3:P2", "L0F7:P2", "L0ERR:P2"].map((id) => lay.positions.get(id)!.x);
    expect(new Set(xs).size).toBe(3);
    expect(lay.positions.get("L0F3:P1")!.x).toBeLessThan(Math.min(...xs));
  });
});

describe("feature nodes at several SAE sites of one block", () => {
  const at = (id: string, type: string, site: string, score = 0.1): GraphNode => ({ ...node(id, type, 0, 1, score), site });
  const nodes = [
    node("L0H0:P1", "head", 0, 1, 1),
    node("MLP0:P1", "mlp", 0, 1, 1),
    at("L0preF1:P1", "feature", "pre"),
    at("L0attnF2:P1", "feature", "attn"),
    at("L0attnERR:P1", "error", "attn"),
    at("L0midF3:P1", "feature", "mid"),
    at("L0mlpF4:P1", "feature", "mlp"),
    at("L0F5:P1", "feature", ""),
  ];

  it("gives each site its own row in forward order, each spread on its own", () => {
    const lay = layoutGraph(nodes, { nLayers: 2, nHeads: 4, perPosition: true, nPos: 2, rowHeight: 60, slotWidth: 20 });
    const y = (id: string) => lay.positions.get(id)!.y;
    // screen y grows downwards: later in the forward pass = higher up = smaller y
    const order = ["L0preF1:P1", "L0H0:P1", "L0attnF2:P1", "L0midF3:P1", "MLP0:P1", "L0mlpF4:P1", "L0F5:P1"];
    for (let i = 1; i < order.length; i++) expect(y(order[i])).toBeLessThan(y(order[i - 1]));
    const slots = featureSlots(nodes, 4);
    expect(slots.get("L0attnF2:P1")).toBe(0);
    expect(slots.get("L0attnERR:P1")).toBe(4); // its own site's error node, not the others'
    expect(slots.get("L0midF3:P1")).toBe(2); // alone at its site: centred
  });
});
