// The click-to-ablate side panel shared by PatchingView and CircuitView.
// Protocol (see circuitviz/views/_ablation.py):
//   view → kernel  {type: "ablate", components, mode, metric, request}
//   kernel → view  {type: "ablation", request, result} | {type: "error", request, message}
// The kernel also sets the synced traits `ablated`, `result` and `error`.
import { button, clear, el, fmt, select, setText, showToken } from "./dom";
import type { AnyModel, AblationTraits, AblationResultDict, TopTokens } from "./types";

export const MODES = ["zero", "mean", "resample"];
export const METRICS = ["logit_diff", "normalized_logit_diff", "answer_prob", "kl"];

/** Click semantics: plain click ablates only that component (clicking the sole ablated one
 * clears the set); shift-click adds or removes it from the current set. */
export function nextAblationSet(current: string[], component: string, additive: boolean): string[] {
  if (additive) {
    return current.includes(component) ? current.filter((c) => c !== component) : [...current, component];
  }
  return current.length === 1 && current[0] === component ? [] : [component];
}

export class AblationPanel {
  readonly el: HTMLDivElement;
  readonly error: HTMLDivElement;
  private request = 0;
  private pending: string[] | null = null;
  private watchdog: ReturnType<typeof setTimeout> | undefined;
  private readonly modeSelect: HTMLSelectElement;
  private readonly metricSelect: HTMLSelectElement;
  private readonly table: HTMLTableElement;
  private readonly list: HTMLDivElement;
  private readonly topk: HTMLDivElement;
  readonly extra: HTMLDivElement;

  constructor(
    private readonly model: AnyModel<AblationTraits>,
    private readonly root: HTMLElement,
    private readonly onChange: () => void,
  ) {
    this.modeSelect = select("mode", MODES, model.get("mode") || "zero");
    this.metricSelect = select("metric", METRICS, model.get("metric") || "logit_diff");
    const reset = button("Reset", "reset", "Clear the ablation set");
    this.modeSelect.title = "How an ablated component's output is replaced";
    this.metricSelect.title = "Metric shown below";
    this.modeSelect.addEventListener("change", () => this.send(this.current()));
    this.metricSelect.addEventListener("change", () => this.send(this.current()));
    reset.addEventListener("click", () => this.send([]));
    this.table = el("table", { class: "cv-metrics" });
    this.list = el("div", { "data-role": "ablated-list", class: "cv-muted" });
    this.topk = el("div", { class: "cv-topk-wrap" });
    this.extra = el("div", { class: "cv-extra" });
    this.error = el("div", { class: "cv-error", "data-role": "error", role: "alert" });
    const canAblate = model.get("can_ablate");
    const controls = el("div", { class: "cv-toolbar" }, el("label", {}, "mode ", this.modeSelect), el("label", {}, "metric ", this.metricSelect), reset);
    const busy = el("span", { class: "cv-busy", "data-role": "busy" }, "running…");
    this.el = el(
      "div",
      { class: "cv-panel", "data-role": "ablation-panel" },
      el("div", { class: "cv-title" }, "Ablation"),
      canAblate ? controls : el("div", { class: "cv-muted", "data-role": "notice" }, "Ablation needs model= and pairs=."),
      busy,
      this.error,
      this.table,
      this.list,
      this.extra,
      this.topk,
    );
    model.on("msg:custom", (msg: { type?: string; request?: number; message?: string }) => {
      if (msg.type !== "ablation" && msg.type !== "error") return;
      if (msg.request !== undefined && msg.request !== this.request) return; // a stale reply
      this.pending = null;
      this.setBusy(false);
      clearTimeout(this.watchdog);
      if (msg.type === "error") setText(this.error, msg.message ?? "error");
      this.onChange();
      this.update();
    });
    for (const name of ["change:result", "change:error", "change:ablated", "change:mode", "change:metric"]) {
      model.on(name, () => this.update());
    }
    this.update();
  }

  /** The set shown: what was just requested while it runs, else what the kernel confirmed. */
  current(): string[] {
    return this.pending ?? [...(this.model.get("ablated") ?? [])];
  }

  click(component: string, additive: boolean): void {
    this.send(nextAblationSet(this.current(), component, additive));
  }

  send(components: string[]): void {
    if (!this.model.get("can_ablate")) {
      setText(this.error, "Ablation needs a live kernel with model= and pairs=.");
      return;
    }
    this.request += 1;
    this.pending = components;
    setText(this.error, "");
    this.setBusy(true);
    this.model.send({ type: "ablate", components, mode: this.modeSelect.value, metric: this.metricSelect.value, request: this.request });
    // A dead or busy kernel never answers: stop looking busy and say so, keep the view usable.
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => {
      this.pending = null;
      this.setBusy(false);
      setText(this.error, "No answer from the kernel after 120 s: is it running? Try again or Reset.");
      this.onChange();
    }, 120_000);
    this.onChange();
  }

  private setBusy(busy: boolean): void {
    this.root.setAttribute("data-busy", String(busy));
  }

  update(): void {
    const m = this.model;
    if (m.get("mode")) this.modeSelect.value = m.get("mode");
    if (m.get("metric")) this.metricSelect.value = m.get("metric");
    const err = m.get("error");
    if (err) setText(this.error, err);
    const r: AblationResultDict = m.get("result") ?? {};
    clear(this.table);
    const row = (label: string, role: string, v: number | undefined) =>
      this.table.append(el("tr", {}, el("td", {}, label), el("td", { "data-role": role, "data-value": v ?? "" }, fmt(v))));
    row("clean", "metric-clean", r.clean);
    row("corrupted", "metric-corrupted", r.corrupted);
    row("ablated", "metric-ablated", r.components && r.components.length ? r.ablated : undefined);
    const set = this.current();
    setText(this.list, set.length ? `ablated (${r.mode ?? m.get("mode")}): ${set.join(", ")}` : "nothing ablated — click a component; shift-click adds");
    clear(this.topk);
    if (r.top_before) this.topk.append(topTable("top tokens before", "top-before", r.top_before));
    if (r.top_after && r.components && r.components.length) this.topk.append(topTable("after ablation", "top-after", r.top_after));
  }
}

function topTable(title: string, role: string, top: TopTokens): HTMLElement {
  const t = el("table", { class: "cv-topk", "data-role": role });
  t.append(el("tr", {}, el("td", { class: "cv-muted", colspan: 2 }, title)));
  top.tokens.forEach((tok, i) => t.append(el("tr", {}, el("td", {}, JSON.stringify(showToken(tok))), el("td", {}, fmt(top.probs[i], 3)))));
  return t;
}
