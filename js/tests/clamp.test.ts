import { describe, expect, it } from "vitest";
import { steerable } from "../src/clamp";
import type { GraphNode } from "../src/types";

describe("feature nodes and supernodes", () => {
  it("only features and supernodes offer Ablate / Clamp × N", () => {
    expect(steerable({ id: "L0F3", type: "feature", layer: 0 })).toBe(true);
    expect(steerable({ id: "S1", type: "supernode", layer: 0 })).toBe(true);
    expect(steerable({ id: "L0H1", type: "head", layer: 0, head: 1 })).toBe(false);
    expect(steerable({ id: "L0ERR:P1", type: "error", layer: 0 })).toBe(false);
    expect(steerable(null)).toBe(false);
  });
});
