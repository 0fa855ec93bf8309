import { describe, expect, it } from "vitest";
import { decode, encode, floatToHalf, fromBase64, halfToFloat } from "../src/codec";

describe("binary codec", () => {
  it("round-trips float32 with its shape", () => {
    const enc = encode([1.5, -2, 3.25, 0], "float32", [2, 2]);
    const out = decode(enc);
    expect(out.shape).toEqual([2, 2]);
    expect(Array.from(out.data)).toEqual([1.5, -2, 3.25, 0]);
  });

  it("decodes float16 bit patterns exactly", () => {
    expect(halfToFloat(0x3c00)).toBe(1);
    expect(halfToFloat(0xc000)).toBe(-2);
    expect(halfToFloat(0x3555)).toBeCloseTo(0.33325, 5);
    expect(halfToFloat(0x0001)).toBeCloseTo(5.96e-8, 10); // subnormal
    expect(halfToFloat(0x7c00)).toBe(Infinity);
    expect(Number.isNaN(halfToFloat(0x7e00))).toBe(true);
  });

  it("round-trips float16 within half precision", () => {
    const values = [0, 1, -1, 0.5, 0.1, 0.999, 65504, 1e-5];
    for (const v of values) expect(halfToFloat(floatToHalf(v))).toBeCloseTo(v, Math.abs(v) > 1000 ? -1 : 3);
    const out = decode(encode(values, "float16", [values.length]));
    expect(out.data).toBeInstanceOf(Float32Array);
    expect(out.data[3]).toBe(0.5);
  });

  it("reads little-endian bytes at an unaligned offset (DataView into a shared buffer)", () => {
    const raw = new Uint8Array(1 + 8);
    new DataView(raw.buffer).setFloat32(1, 7.5, true);
    new DataView(raw.buffer).setFloat32(5, -1, true);
    const out = decode({ view: new DataView(raw.buffer, 1, 8), dtype: "float32", shape: [2] });
    expect(Array.from(out.data)).toEqual([7.5, -1]);
  });

  it("keeps integer dtypes and rejects a wrong byte count", () => {
    const out = decode(encode([0, 255, 7], "uint8", [3]));
    expect(out.data).toBeInstanceOf(Uint8Array);
    expect(Array.from(out.data)).toEqual([0, 255, 7]);
    expect(() => decode({ view: new Uint8Array(5), dtype: "float32", shape: [2] })).toThrow(/needs 8/);
  });

  it("decodes base64 as embedded by the standalone HTML", () => {
    expect(Array.from(fromBase64("AAEC/w=="))).toEqual([0, 1, 2, 255]);
  });
});
