import { describe, expect, it } from "vitest";
import { columnNote, partialColumns, type ColumnInfo } from "../src/padding";

const info: ColumnInfo = {
  n_prompts: 3,
  present: [1, 2, 3],
  notes: ["pad in 2 of 3 prompts: …", "pad in 1 of 3 prompts: …", null],
  legend: "hatched column: …",
  tokens: [["a", "b", "c"], [null, "d", "e"], [null, null, "f"]],
};

describe("partial columns", () => {
  it("marks exactly the columns the kernel gave a note", () => {
    expect(partialColumns(info)).toEqual([0, 1]);
    expect(columnNote(info, 1)).toBe("pad in 1 of 3 prompts: …");
    expect(columnNote(info, 2)).toBe("");
  });

  it("marks nothing without a payload (same-length prompts, or no position axis)", () => {
    expect(partialColumns(null)).toEqual([]);
    expect(partialColumns(undefined)).toEqual([]);
    expect(columnNote(null, 0)).toBe("");
  });
});
