// CircuitView's faithfulness table: the shown circuit's faithfulness with and without the
// user's ablations (and, on feature graphs, with error nodes ablated), computed by the kernel.
// It is live: whenever the shown circuit or the ablation set changes, the last values are
// marked stale and recomputed after a short pause (one request in flight at a time; a request
// that failed is not retried until something changes or the button is pressed).
import { el, clear, fmt } from "./dom";
import { errorFaithRows } from "./feature_card";
import { JobLine } from "./jobline";
import { isCovered } from "./patchmap";
import type { AnyModel, CircuitTraits, GraphNode } from "./types";

export class FaithfulnessTable {
  readonly el = el("table", { class: "cv-faith" });
  private readonly button = el("button", { class: "cv-button", "data-role": "faithfulness-run", type: "button", title: "Exact faithfulness of the shown circuit (its shown edges), with and without your ablations" }, "Faithfulness");
  private readonly job: JobLine;
  private inFlight = "";
  private failed = "";
  private timer: ReturnType<typeof setTimeout> | undefined;

  constructor(
    private readonly model: AnyModel<CircuitTraits>,
    private readonly shown: () => GraphNode[],
    private readonly ablated: () => string[],
  ) {
    this.job = new JobLine(model, "faithfulness"); // a remote model's job: state, Cancel, latency
    this.button.addEventListener("click", () => this.request());
  }

  private key(): string {
    return JSON.stringify([this.shown().map((n) => n.id), this.ablated()]);
  }

  draw(): void {
    const { model } = this;
    clear(this.el);
    if (!model.get("has_faithfulness")) return;
    const f = model.get("faithfulness") ?? {};
    const same = (a: string[] | undefined, b: string[]) => !!a && a.length === b.length && a.every((x, i) => x === b[i]);
    const nodes = this.shown();
    const current = new Set(this.ablated());
    const ablatedShown = nodes.filter((n) => isCovered(n.ablates ?? null, current)).map((n) => n.id);
    const stale = f.circuit === undefined || !same(f.nodes, nodes.map((n) => n.id)) || !same(f.ablated_nodes, ablatedShown);
    const status = this.inFlight ? " (updating…)" : stale && f.circuit !== undefined ? " (stale)" : "";
    this.el.setAttribute("data-state", this.inFlight ? "running" : stale ? "stale" : "ready");
    this.el.append(
      el("tr", {}, el("td", {}, "faithfulness (shown circuit)"), el("td", { "data-role": "faithfulness-circuit", "data-stale": String(stale) }, fmt(f.circuit ?? NaN, 3))),
      el("tr", {}, el("td", {}, "… after your ablations"), el("td", { "data-role": "faithfulness-ablated", "data-stale": String(stale) }, fmt(f.ablated ?? NaN, 3))),
      ...errorFaithRows(f, stale),
      el("tr", {}, el("td", { colspan: 2 }, this.button, el("span", { class: "cv-muted" }, status))),
      el("tr", {}, el("td", { colspan: 2 }, this.job.el)),
    );
    if (stale && !this.inFlight && this.key() !== this.failed) {
      clearTimeout(this.timer);
      this.timer = setTimeout(() => {
        if (!this.inFlight && this.key() !== this.failed) this.request();
      }, 400);
    }
  }

  request(): void {
    if (!this.model.get("has_faithfulness")) return;
    this.inFlight = this.key();
    this.failed = "";
    this.model.send({ type: "faithfulness", nodes: this.shown().map((n) => n.id), ablated: this.ablated(), request: "faithfulness" });
    this.draw();
  }

  /** The kernel's answer to a request of ours: true when it was one. */
  reply(msg: { type?: string; request?: unknown }): boolean {
    if (msg.request !== "faithfulness" || !this.inFlight) return false;
    if (msg.type === "error" || msg.type === "cancelled") this.failed = this.inFlight; // not retried until something changes
    this.inFlight = "";
    this.draw();
    return true;
  }
}
