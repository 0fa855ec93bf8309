// The click-to-ablate side panel shared by PatchingView and CircuitView.
// Protocol (see circuitviz/views/_ablation.py):
//   view → kernel  {type: "ablate", components, mode, metric, request}
//   kernel → view  {type: "ablation", request, result} | {type: "error", request, message}
//   view → kernel  {type: "cancel", request}        (a remote job: stop waiting for it)
//   kernel → view  {type: "cancelled", request}
// The kernel also sets the synced traits `ablated`, `result`, `error` and `job` (the click's
// state — on NDIF queued → running → done — and its latency).
import { button, clear, el, fmt, select, setText, showToken } from "./dom";
import type { AnyModel, AblationTraits, AblationResultDict, JobInfo, TopTokens } from "./types";

/** Job states during which a remote click can be cancelled. */
const LIVE = ["submitted", "queued", "running"];
/** The request tag of the view's own first job (its baselines, views/_jobs.py
 * FIRST_REQUEST): clicks are numbered from 1, and until the first click the page waits for it. */
export const FIRST_REQUEST = 0;

export const MODES = ["zero", "mean", "resample"];
/** Mirrors engine/_cells.py FLOAT32_NOISE: changes this small (relative to the metric's
 * scale) are float32 noise and print as 0. */
const FLOAT32_NOISE = 8 * 2 ** -23;

/** A change, with float32 noise shown as an exact 0. */
export function snapZero(v: number | null | undefined, scale: number[]): number | null | undefined {
  if (v === null || v === undefined) return v;
  const tol = FLOAT32_NOISE * Math.max(1, ...scale.filter(Number.isFinite).map(Math.abs));
  return Math.abs(v) <= tol ? 0 : v;
}
export const METRICS = ["logit_diff", "normalized_logit_diff", "answer_prob", "kl"];

/** Click semantics: plain click ablates only that component (clicking the sole ablated one
 * clears the set); shift-click adds or removes it from the current set. */
export function nextAblationSet(current: string[], component: string, additive: boolean): string[] {
  if (additive) {
    return current.includes(component) ? current.filter((c) => c !== component) : [...current, component];
  }
  return current.length === 1 && current[0] === component ? [] : [component];
}

/** What the panel says about a click's job, and whether Cancel is offered: only for a remote
 * job that is still live and is the request the page is waiting for (`waitingFor`). */
export function describeJob(job: JobInfo, waitingFor: number | string | null): { text: string; cancellable: boolean } {
  const state = job.state ?? "";
  const cancellable = !!job.remote && LIVE.includes(state) && waitingFor !== null && job.request === waitingFor;
  if (!job.remote || !state) return { text: "", cancellable };
  const took = job.seconds === null || job.seconds === undefined ? "" : ` (${fmt(job.seconds, 3)} s)`;
  const detail = state === "error" && job.detail ? `: ${job.detail}` : "";
  return { text: `NDIF job: ${state}${took}${detail}`, cancellable };
}

export class AblationPanel {
  readonly el: HTMLDivElement;
  readonly error: HTMLDivElement;
  private request = 0;
  private pending: string[] | null = null;
  private watchdog: ReturnType<typeof setTimeout> | undefined;
  private sentAt = 0;
  private readonly job: HTMLDivElement;
  private readonly jobState: HTMLSpanElement;
  private readonly latency: HTMLSpanElement;
  private readonly cancel: HTMLButtonElement;
  private readonly modeSelect: HTMLSelectElement;
  private readonly metricSelect: HTMLSelectElement;
  private readonly table: HTMLTableElement;
  private readonly list: HTMLDivElement;
  private readonly topk: HTMLDivElement;
  private readonly perPrompt: HTMLDivElement;
  readonly extra: HTMLDivElement;

  /** `metricScope`: says what the metric dropdown changes (the view's own picture does not). */
  constructor(
    private readonly model: AnyModel<AblationTraits>,
    private readonly root: HTMLElement,
    private readonly onChange: () => void,
    metricScope = "",
  ) {
    this.modeSelect = select("mode", MODES, model.get("mode") || "zero");
    this.metricSelect = select("metric", METRICS, model.get("metric") || "logit_diff");
    const reset = button("Reset", "reset", "Clear the ablation set");
    this.modeSelect.title = "How an ablated component's output is replaced";
    this.metricSelect.title = `Metric of the ablation readout below. ${metricScope}`.trim();
    this.modeSelect.addEventListener("change", () => this.send(this.current()));
    this.metricSelect.addEventListener("change", () => this.send(this.current()));
    reset.addEventListener("click", () => this.send([]));
    this.table = el("table", { class: "cv-metrics" });
    this.list = el("div", { "data-role": "ablated-list", class: "cv-muted" });
    this.topk = el("div", { class: "cv-topk-wrap" });
    this.perPrompt = el("div", { class: "cv-per-prompt" });
    this.extra = el("div", { class: "cv-extra" });
    this.error = el("div", { class: "cv-error", "data-role": "error", role: "alert" });
    const controls = el("div", { class: "cv-toolbar" }, el("label", {}, "mode ", this.modeSelect), el("label", { title: this.metricSelect.title }, "ablation metric ", this.metricSelect), reset);
    const busy = el("span", { class: "cv-busy", "data-role": "busy" }, "running…");
    // The click's job: its state on NDIF (with Cancel while it waits) and its latency.
    this.jobState = el("span", { "data-role": "job-state" });
    this.latency = el("span", { class: "cv-muted", "data-role": "latency" });
    this.cancel = button("Cancel", "cancel", "Stop waiting for this NDIF job (the view stays as it was)");
    this.cancel.hidden = true;
    this.cancel.addEventListener("click", () => {
      this.cancel.disabled = true;
      setText(this.jobState, "cancelling…");
      this.model.send({ type: "cancel", request: this.request });
    });
    this.job = el("div", { class: "cv-job", "data-role": "job", "data-state": "" }, this.jobState, " ", this.cancel, " ", this.latency);
    // Without a kernel (standalone HTML) or without model/pairs the controls are left out and
    // one notice says why, up front; clicks then only select.
    const notice = model.get("standalone")
      ? el("div", { class: "cv-notice", "data-role": "standalone-notice" }, model.get("standalone")!)
      : model.get("can_ablate")
        ? controls
        : el("div", { class: "cv-muted", "data-role": "notice" }, "Ablation needs model= and pairs=.");
    this.el = el(
      "div",
      { class: "cv-panel", "data-role": "ablation-panel" },
      el("div", { class: "cv-title" }, "Ablation"),
      notice,
      busy,
      this.job,
      this.error,
      this.table,
      this.list,
      this.extra,
      this.topk,
      this.perPrompt,
    );
    model.on("msg:custom", (msg: { type?: string; request?: number; message?: string }) => {
      if (msg.type !== "ablation" && msg.type !== "error" && msg.type !== "cancelled") return;
      if (msg.request !== undefined && msg.request !== this.request) return; // a stale reply
      this.pending = null;
      this.setBusy(false);
      clearTimeout(this.watchdog);
      if (this.sentAt) {
        const ms = performance.now() - this.sentAt;
        this.latency.dataset.ms = String(Math.round(ms));
        setText(this.latency, `click → ${msg.type === "ablation" ? "result" : msg.type} in ${fmt(ms / 1000, 3)} s`);
        this.sentAt = 0;
      }
      if (msg.type === "error") setText(this.error, msg.message ?? "error");
      this.showJob();
      this.onChange();
      this.update();
    });
    for (const name of ["change:result", "change:error", "change:ablated", "change:mode", "change:metric"]) {
      model.on(name, () => this.update());
    }
    model.on("change:job", () => {
      // The kernel answered: a remote job may wait on NDIF's queue for minutes, with Cancel
      // offered, so no watchdog while it is live; otherwise restart it.
      const job: JobInfo = this.model.get("job") ?? {};
      if (job.remote && LIVE.includes(job.state ?? "")) clearTimeout(this.watchdog);
      else if (this.pending) this.arm();
      this.showFirstJob();
      this.showJob();
    });
    this.showFirstJob();
    this.showJob();
    this.update();
  }

  /** Before the first click, the view's own first job (a remote model's baselines, run
   * while the view is already shown): busy while it is live, its time once done. */
  private showFirstJob(): void {
    const job: JobInfo = this.model.get("job") ?? {};
    if (this.request !== FIRST_REQUEST || job.request !== FIRST_REQUEST || !job.remote) return;
    this.setBusy(LIVE.includes(job.state ?? ""));
    if (job.state === "done" && typeof job.seconds === "number") {
      this.latency.dataset.ms = String(Math.round(job.seconds * 1000));
      setText(this.latency, `first result in ${fmt(job.seconds, 3)} s`);
    }
  }

  /** The page waits for its newest click, or before any click for the view's first job. */
  private waitingFor(): number | null {
    if (this.pending !== null) return this.request;
    return this.request === FIRST_REQUEST ? FIRST_REQUEST : null;
  }

  /** The click's job: "NDIF job: running (3.2 s)" with Cancel while it can be cancelled. */
  private showJob(): void {
    const job: JobInfo = this.model.get("job") ?? {};
    const { text, cancellable } = describeJob(job, this.waitingFor());
    this.job.dataset.state = job.state ?? "";
    this.cancel.hidden = !cancellable;
    if (!cancellable) this.cancel.disabled = false;
    setText(this.jobState, text);
  }

  private arm(): void {
    // A dead or busy kernel never answers: stop looking busy and say so, keep the view usable.
    clearTimeout(this.watchdog);
    this.watchdog = setTimeout(() => {
      this.pending = null;
      this.setBusy(false);
      this.showJob();
      setText(this.error, "No answer from the kernel after 120 s: is it running? Try again or Reset.");
      this.onChange();
    }, 120_000);
  }

  /** The set shown: what was just requested while it runs, else what the kernel confirmed. */
  current(): string[] {
    return this.pending ?? [...(this.model.get("ablated") ?? [])];
  }

  click(component: string, additive: boolean): void {
    this.send(nextAblationSet(this.current(), component, additive));
  }

  send(components: string[]): void {
    if (!this.model.get("can_ablate") || this.model.get("standalone")) return; // the notice says why
    this.request += 1;
    this.pending = components;
    setText(this.error, "");
    this.setBusy(true);
    this.sentAt = performance.now();
    setText(this.latency, "");
    delete this.latency.dataset.ms;
    this.model.send({ type: "ablate", components, mode: this.modeSelect.value, metric: this.metricSelect.value, request: this.request });
    this.arm();
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
    const any = !!(r.components && r.components.length);
    const scale = [r.clean ?? 0, r.corrupted ?? 0];
    clear(this.table);
    const row = (label: string, role: string, v: number | null | undefined, text = fmt(v), title = "") =>
      this.table.append(el("tr", { title }, el("td", {}, label), el("td", { "data-role": role, "data-value": v ?? "" }, text)));
    row("clean", "metric-clean", r.clean);
    row("corrupted", "metric-corrupted", r.corrupted);
    row("ablated", "metric-ablated", any ? r.ablated : null);
    const delta = any ? snapZero(r.delta, scale) : null;
    row("Δ (ablated − clean)", "metric-delta", delta, delta === null || delta === undefined ? "–" : signed(delta));
    const gap = any && delta !== 0 ? r.gap_fraction : delta === 0 ? 0 : null;
    const gapText = gap === null || gap === undefined ? (any && r.delta !== undefined ? "– (clean ≈ corrupted)" : "–") : `${signed(100 * gap, 3)} %`;
    row("Δ / (clean − corrupted)", "metric-gap", gap, gapText, "The change as a share of the clean − corrupted gap: −100 % = ablation undoes the whole clean advantage");
    const set = this.current();
    setText(this.list, set.length ? `ablated (${r.mode ?? m.get("mode")}): ${set.join(", ")}` : "nothing ablated — click a component; shift-click adds");
    clear(this.topk);
    if (r.top_before) this.topk.append(topTable("top tokens before", "top-before", r.top_before));
    if (r.top_after && any) this.topk.append(topTable("after ablation", "top-after", r.top_after));
    clear(this.perPrompt);
    if (r.per_prompt?.clean?.length) this.perPrompt.append(perPromptTable(r.per_prompt, r.metric ?? m.get("metric"), scale));
  }
}

function signed(v: number, digits = 4): string {
  return v > 0 ? `+${fmt(v, digits)}` : fmt(v, digits);
}

/** One row per prompt pair: clean, corrupted, ablated and Δ of that pair. */
function perPromptTable(p: NonNullable<AblationResultDict["per_prompt"]>, metric: string, scale: number[]): HTMLElement {
  const t = el("table", { class: "cv-topk", "data-role": "per-prompt" });
  t.append(el("tr", {}, el("td", { class: "cv-muted", colspan: 5 }, `per prompt pair (${metric})`)));
  t.append(el("tr", { class: "cv-muted" }, ...["#", "clean", "corrupted", "ablated", "Δ"].map((h) => el("td", {}, h))));
  p.clean.forEach((clean, i) => {
    const ablated = p.ablated ? p.ablated[i] : null;
    const delta = ablated === null ? null : snapZero(ablated - clean, scale);
    t.append(
      el(
        "tr",
        { "data-prompt": i },
        el("td", {}, String(i)),
        el("td", {}, fmt(clean, 3)),
        el("td", {}, fmt(p.corrupted[i], 3)),
        el("td", {}, ablated === null ? "–" : fmt(ablated, 3)),
        el("td", {}, delta === null || delta === undefined ? "–" : signed(delta, 3)),
      ),
    );
  });
  return t;
}

function topTable(title: string, role: string, top: TopTokens): HTMLElement {
  const t = el("table", { class: "cv-topk", "data-role": role });
  t.append(el("tr", {}, el("td", { class: "cv-muted", colspan: 2 }, title)));
  top.tokens.forEach((tok, i) => t.append(el("tr", {}, el("td", {}, JSON.stringify(showToken(tok))), el("td", {}, fmt(top.probs[i], 3)))));
  return t;
}
