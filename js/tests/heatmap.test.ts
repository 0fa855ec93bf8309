import { describe, expect, it } from "vitest";
import { downsample, geometry } from "../src/heatmap";

describe("heatmap", () => {
  it("downsampling keeps the strongest value of each block, sign included", () => {
    // 4×4 → 2×2: one sharp cell per block must survive
    const v = [0, 0, 0, 0.9, 0, 0.1, 0, 0, 0, 0, 0, 0, -0.7, 0, 0, 0.2];
    expect(Array.from(downsample(v, 4, 4, 2, 2))).toEqual([0.1, 0.9, -0.7, 0.2].map(Math.fround));
    // identity when the grid already fits
    expect(Array.from(downsample([1, 2, 3], 1, 3, 1, 3))).toEqual([1, 2, 3]);
  });

  it("geometry caps cell size, leaves room for labels and thins dense labels", () => {
    const small = geometry(2, 4, 30, 20, { maxWidth: 640, maxHeight: 640, maxCell: 28, colorbar: true, title: false });
    expect(small.cw).toBe(28);
    expect(small.left).toBeGreaterThan(30);
    expect(small.rowStep).toBe(1);
    const big = geometry(1000, 1000, 80, 80, { maxWidth: 560, maxHeight: 560, maxCell: 28, colorbar: false, title: true });
    expect(big.plotW).toBe(560);
    expect(big.cw).toBeCloseTo(0.56);
    expect(big.colStep).toBe(Math.ceil(14 / 0.56));
  });
});
