import { describe, expect, it } from "vitest";
import { LayerStore, parseHead } from "../src/attention";
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
});
