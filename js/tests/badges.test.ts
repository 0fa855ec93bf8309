import { describe, expect, it } from "vitest";
import { badgeLayout, legendMap, nodeBadgeBoxes } from "../src/badges";

const legend = legendMap(
  ["previous_token", "duplicate_token", "induction", "name_mover", "negative_name_mover", "s_inhibition"].map((role, i) => ({ role, text: ["PT", "DT", "IN", "NM", "NN", "SI"][i], color: "#123456", label: role })),
);
const ALL = [...legend.keys()];

describe("badgeLayout", () => {
  it("keeps every badge inside its cell, from 14 px to 44 px, for 1 to 6 roles", () => {
    for (let cell = 14; cell <= 44; cell++) {
      for (let n = 1; n <= ALL.length; n++) {
        const { boxes } = badgeLayout(cell, ALL.slice(0, n), legend);
        expect(boxes.length).toBeGreaterThan(0);
        for (const b of boxes) {
          expect(b.x).toBeGreaterThanOrEqual(1);
          expect(b.y).toBeGreaterThanOrEqual(1);
          expect(b.x + b.w).toBeLessThanOrEqual(cell - 1);
          expect(b.y + b.h).toBeLessThanOrEqual(cell - 1);
        }
        for (let i = 0; i < boxes.length; i++)
          for (let j = i + 1; j < boxes.length; j++) {
            const [a, c] = [boxes[i], boxes[j]];
            expect(a.x < c.x + c.w && c.x < a.x + a.w && a.y < c.y + c.h && c.y < a.y + a.h).toBe(false);
          }
      }
    }
  });

  it("says how many roles it could not draw", () => {
    const { boxes, font } = badgeLayout(18, ALL.slice(0, 3), legend); // the demo model's cells
    expect(font).toBe(7);
    expect(boxes.map((b) => b.text)).toEqual(["PT", "+2"]);
    expect(badgeLayout(18, ["name_mover", "s_inhibition"], legend).boxes.map((b) => b.text)).toEqual(["NM", "SI"]);
    expect(badgeLayout(44, ALL, legend).boxes.map((b) => b.text)).toEqual(["PT", "DT", "IN", "NM", "NN", "SI"]);
  });

  it("draws only roles the kernel described", () => {
    expect(badgeLayout(30, ["unknown"], legend).boxes).toEqual([]);
    expect(nodeBadgeBoxes(8, ["induction", "unknown", "name_mover"], legend).map((b) => b.text)).toEqual(["IN", "NM"]);
  });
});
