import { describe, expect, it } from "vitest";
import { snapZero } from "../src/ablation";
import { clampView, downsample, geometry, steps, wrap, zoomView } from "../src/heatmap";
import { effects } from "../src/patching";

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

describe("zoom", () => {
  const full = { r0: 0, c0: 0, nr: 270, nc: 16 };

  it("zooming about a point keeps that point where it was, within the grid", () => {
    const z = zoomView(full, 270, 16, 0.5, 135, 8, 10, 4);
    expect(z.nr).toBe(135);
    expect(z.nc).toBe(8);
    expect((135 - z.r0) / z.nr).toBeCloseTo((135 - full.r0) / full.nr);
    const edge = zoomView(full, 270, 16, 0.5, 0, 0, 10, 4);
    expect([edge.r0, edge.c0]).toEqual([0, 0]);
  });

  it("never zooms past the minimum or out past the whole grid", () => {
    const tiny = zoomView(full, 270, 16, 1e-6, 100, 5, 13, 9);
    expect([tiny.nr, tiny.nc]).toEqual([13, 9]);
    expect(zoomView(tiny, 270, 16, 1e6, 100, 5, 13, 9)).toEqual(full);
    expect(clampView({ r0: 300, c0: -4, nr: 10, nc: 4 }, 270, 16)).toEqual({ r0: 260, c0: 0, nr: 10, nc: 4 });
  });

  it("labels sit on multiples of the step, so they stay put while panning", () => {
    expect(steps(3.2, 20, 5)).toEqual([5, 10, 15]);
    expect(steps(0, 3, 1)).toEqual([0, 1, 2]);
  });

  it("wraps long titles at spaces", () => {
    expect(wrap("attribution patching of heads_by_pos (denoise)", 20)).toEqual(["attribution patching", "of heads_by_pos", "(denoise)"]);
  });
});

describe("exact zeros", () => {
  it("effects within the kernel's tolerance of the baseline are 0", () => {
    const e = effects([2 + 7.45e-9, 2, 2.5], { baseline: 2, zero_tol: 1e-6 });
    expect(Array.from(e)).toEqual([0, 0, 0.5]);
  });

  it("ablation changes at float32 noise print as 0", () => {
    expect(snapZero(7.45e-9, [4.4, -4.1])).toBe(0);
    expect(snapZero(0.02, [4.4, -4.1])).toBe(0.02);
    expect(snapZero(null, [1])).toBeNull();
  });
});
