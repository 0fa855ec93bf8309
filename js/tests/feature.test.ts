import { describe, expect, it } from "vitest";
import { cellFeatures, fill, usedBins } from "../src/feature";

describe("feature view helpers", () => {
  it("lists a cell's active latents in the kernel's order, dropping inactive slots", () => {
    const top = { index: Int32Array.from([4, 9, 2, 7, 1, 3]), value: Float32Array.from([0.9, 0.2, 0, 0.5, 0.4, 0]), k: 3, max: 1 };
    expect(cellFeatures(top, 0)).toEqual([
      { index: 4, value: expect.closeTo(0.9, 6) },
      { index: 9, value: expect.closeTo(0.2, 6) },
    ]);
    expect(cellFeatures(top, 1).map((f) => f.index)).toEqual([7, 1]);
  });

  it("colours relative to the scale's top, clamped, white at zero", () => {
    expect(fill(0, 2)).toBe(fill(-1, 2));
    expect(fill(2, 2)).toBe(fill(5, 2));
    expect(fill(1, 2)).not.toBe(fill(2, 2));
    expect(fill(1, 0)).toBe(fill(0, 1)); // a zero scale draws nothing active
  });

  it("keeps the histogram's bins from the first to the last non-empty one", () => {
    const edges = [1, 2, 4, 8, 16, 32];
    expect(usedBins(edges, [0, 3, 0, 5, 0])).toEqual([
      [2, 4, 3],
      [4, 8, 0],
      [8, 16, 5],
    ]);
    expect(usedBins(edges, [0, 0, 0, 0, 0])).toEqual([]);
  });
});
