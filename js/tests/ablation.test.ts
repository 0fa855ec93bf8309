import { describe, expect, it } from "vitest";
import { describeJob, nextAblationSet } from "../src/ablation";

describe("ablation panel helpers", () => {
  it("offers Cancel only for the live remote job the page waits for", () => {
    const running = { state: "running", request: 3, seconds: 1.25, remote: true };
    expect(describeJob(running, 3)).toEqual({ text: "NDIF job: running (1.25 s)", cancellable: true });
    expect(describeJob({ ...running, state: "queued" }, 3).cancellable).toBe(true);
    expect(describeJob(running, 4).cancellable).toBe(false); // a superseded request
    expect(describeJob(running, null).cancellable).toBe(false); // nothing pending
    expect(describeJob({ ...running, state: "done" }, 3)).toEqual({ text: "NDIF job: done (1.25 s)", cancellable: false });
  });

  it("says nothing about local clicks and shows a remote error's reason", () => {
    expect(describeJob({ state: "done", seconds: 0.2, remote: false }, null)).toEqual({ text: "", cancellable: false });
    expect(describeJob({}, 1)).toEqual({ text: "", cancellable: false });
    const failed = describeJob({ state: "error", detail: "out of memory", request: 1, seconds: null, remote: true }, 1);
    expect(failed).toEqual({ text: "NDIF job: error: out of memory", cancellable: false });
  });

  it("keeps the click semantics", () => {
    expect(nextAblationSet(["L0H1"], "L0H1", false)).toEqual([]);
    expect(nextAblationSet(["L0H1"], "L1H0", true)).toEqual(["L0H1", "L1H0"]);
  });
});
