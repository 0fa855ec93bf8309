import { describe, expect, it } from "vitest";
import { colorPosition, LayerStore, parseHead, scaleTicks } from "../src/attention";
import { encode } from "../src/codec";

describe("lazy layer patterns", () => {
  it("reassembles a layer from float16 row chunks sent in any order", () => {
    const T = 4;
    const store = new LayerStore(2, T);
    const rows = (head: number, r0: number, r1: number) =>
      Array.from({ length: (r1 - r0) * T }, (_, i) => (head + 1) * 0.125 + ((r0 * T + i) % 8) / 16);
    const chunks = [
      [1, 2, 4],
      [0, 0, 2],
      [1, 0, 2],
      [0, 2, 4],
    ];
    chunks.forEach(([head, r0, r1], k) => {
      const done = store.add(
        { type: "layer", layer: 3, head, row0: r0, row1: r1, n_pos: T, chunks: 4, dtype: "float16" },
        encode(rows(head, r0, r1), "float16", [r1 - r0, T]).view as DataView,
      );
      expect(done).toBe(k === 3);
      expect(store.has(3)).toBe(k === 3);
    });
    expect(Array.from(store.pattern(3, 0)!)).toEqual(rows(0, 0, 4));
    expect(Array.from(store.pattern(3, 1)!)).toEqual(rows(1, 0, 4));
    expect(store.pattern(2, 0)).toBeNull();
  });

  it("parses head ids and ignores everything else", () => {
    expect(parseHead("L3H5")).toEqual([3, 5]);
    expect(parseHead("L3H5:P2")).toEqual([3, 5]);
    expect(parseHead("MLP3")).toBeNull();
    expect(parseHead("<img src=x>")).toBeNull();
  });

  it("maps tokens to the bins of a downsampled layer and keeps its notice", () => {
    const store = new LayerStore(1, 8);
    const edges = [0, 1, 4, 7, 8]; // BOS alone, then blocks of 3 (the last shorter)
    const values = Array.from({ length: 16 }, (_, i) => i / 16);
    store.add(
      { type: "layer", layer: 0, head: 0, row0: 0, row1: 4, n_pos: 4, n_tokens: 8, chunks: 1, dtype: "float16", edges, notice: "Downsampled" },
      encode(values, "float16", [4, 4]).view as DataView,
    );
    const info = store.info(0)!;
    expect(info.n).toBe(4);
    expect(info.notice).toBe("Downsampled");
    expect(Array.from(info.bin)).toEqual([0, 1, 1, 1, 2, 2, 2, 3]);
    expect(store.pattern(0, 0)![info.bin[5] * 4 + info.bin[2]]).toBe(values[2 * 4 + 1]);
  });
});

describe("colour scales", () => {
  it("put attention at the same place as the python figure's scales", () => {
    expect(colorPosition("linear", 0.25, 1e-4)).toBe(0.25);
    expect(colorPosition("sqrt", 0.25, 1e-4)).toBe(0.5);
    expect(colorPosition("log", 1, 1e-4)).toBe(1);
    expect(colorPosition("log", 0.01, 1e-4)).toBeCloseTo(0.5);
    expect(colorPosition("log", 0, 1e-4)).toBe(0); // below the floor: the floor's colour
  });

  it("label colour-bar ticks with attention weights, not positions", () => {
    expect(scaleTicks("sqrt", 1e-4)).toContainEqual([0.5, "0.25"]);
    expect(scaleTicks("log", 1e-4).map(([, label]) => label)).toEqual(["≤0.0001", "0.001", "0.01", "0.1", "1"]);
    expect(scaleTicks("log", 1e-4).map(([pos]) => pos)).toEqual([0, 0.25, 0.5, 0.75, 1]);
  });
});
