import { describe, expect, it } from "vitest";
import { columnNote, partialColumns, STRIP_H, stripAt, stripBoxes, type ColumnInfo } from "../src/padding";

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

  it("cuts strips to the plot and finds the one under the pointer", () => {
    const box = (c: number) => [10 + 20 * c, 0, 20, 20];
    const boxes = stripBoxes([0, 1, 5], box, 15, 50); // column 5 is out of view
    expect(boxes).toEqual([[0, 15, 15], [1, 30, 20]]);
    expect(stripAt(boxes, 35, 102, 100)).toBe(1);
    expect(stripAt(boxes, 12, 102, 100)).toBeNull(); // left of the plot
    expect(stripAt(boxes, 35, 100 + STRIP_H + 1, 100)).toBeNull(); // below the strip
  });
});
