import { describe, expect, it } from "vitest";
import { diverging, interpolate, maxAbs, sequential, textOn } from "../src/colors";

describe("colour scales", () => {
  it("diverging is white-ish at 0, red below, blue above, symmetric", () => {
    expect(diverging(0, 5)).toEqual([247, 247, 247]);
    const neg = diverging(-5, 5);
    const pos = diverging(5, 5);
    expect(neg[0]).toBeGreaterThan(neg[2]); // red
    expect(pos[2]).toBeGreaterThan(pos[0]); // blue
    expect(diverging(-2, 5)).not.toEqual(diverging(2, 5));
    // clamped beyond the range
    expect(diverging(100, 5)).toEqual(pos);
  });

  it("diverging survives a zero range and non-finite values", () => {
    expect(diverging(0, 0)).toEqual([247, 247, 247]);
    expect(interpolate([[0, 0, 0], [255, 255, 255]], NaN)).toEqual([200, 200, 200]);
  });

  it("sequential darkens monotonically from white", () => {
    expect(sequential(0)).toEqual([247, 251, 255]);
    let prev = 1e9;
    for (let v = 0; v <= 1; v += 0.1) {
      const c = sequential(v);
      const lum = c[0] + c[1] + c[2];
      expect(lum).toBeLessThanOrEqual(prev);
      prev = lum;
    }
  });

  it("maxAbs ignores NaN and picks text contrast", () => {
    expect(maxAbs([1, -3, NaN, 2])).toBe(3);
    expect(textOn([5, 48, 97])).toBe("#fff");
    expect(textOn([247, 247, 247])).toBe("#000");
  });
});
