// CircuitView's feature panel: Ablate / Clamp × N for a selected feature node (or supernode),
// and grouping feature nodes into supernodes. Protocol: circuitviz/views/_clamp.py. The kernel
// runs the generations, validates every group and draws groups as one node in what it sends;
// this file shows the results and sends the clicks.
import { button, clear, el, fmt, setText, showToken } from "./dom";
import { svgEl } from "./export";
import { JobLine } from "./jobline";
import type { AnyModel, GraphNode, TopTokens } from "./types";

export interface Supernode {
  id: string;
  label: string;
  members: string[];
  reason?: string;
}

export interface SteeringDict {
  node?: string;
  request?: number | string | null;
  stage?: "continuation" | "done";
  features?: string[];
  mode?: string;
  scale?: number;
  values?: number[];
  before?: string;
  after?: string;
  top_before?: TopTokens;
  top_after?: TopTokens;
  metric?: string | null;
  metric_before?: number | null;
  metric_after?: number | null;
}

export interface ClampTraits {
  selected: string;
  error: string;
  can_steer: boolean;
  clamp_scale: number;
  steering: SteeringDict;
  supernodes: Supernode[];
  suggested_supernodes: Supernode[];
}

export const SUPERNODE_COLOR = "#56B4E9";
export const FEATURE_COLOR = "#0072B2";
export const PICKED = "#D55E00";

/** Feature nodes can be clamped and grouped; a supernode can be clamped (all its members). */
export const steerable = (n: GraphNode | null | undefined) => !!n && (n.type === "feature" || n.type === "supernode");

/** A supernode's mark: a hexagon of radius r. */
export function supernodeShape(r: number): SVGElement {
  const pts = Array.from({ length: 6 }, (_, i) => {
    const a = (Math.PI / 3) * i;
    return `${(r * Math.cos(a)).toFixed(2)},${(r * Math.sin(a)).toFixed(2)}`;
  });
  return svgEl("polygon", { points: pts.join(" "), "data-role": "supernode-shape" });
}

/** Where a node picked for grouping gets its mark (a dashed orange ring). */
export function pickedRing(r: number): SVGElement {
  return svgEl("circle", { r: r + 3, fill: "none", stroke: PICKED, "stroke-width": 2, "stroke-dasharray": "3 2", "data-role": "group-pick" });
}

function swatch(...children: SVGElement[]): SVGSVGElement {
  const s = svgEl("svg", { width: 18, height: 16, viewBox: "-9 -8 18 16" });
  s.append(...children);
  return s;
}

export class FeaturePanel {
  readonly el: HTMLDivElement;
  private readonly picked = new Set<string>();
  private request = 0;
  private readonly scale: HTMLInputElement;
  private readonly onlyHere: HTMLInputElement;
  private readonly head: HTMLDivElement;
  private readonly controls: HTMLDivElement;
  private readonly result: HTMLDivElement;
  private readonly groups: HTMLDivElement;
  private readonly status: HTMLSpanElement;
  private node: GraphNode | null = null;
  private live = true;

  constructor(
    private readonly model: AnyModel<ClampTraits>,
    private readonly root: HTMLElement,
    private readonly redraw: () => void,
  ) {
    this.scale = el("input", { type: "number", step: 0.5, class: "cv-num", "data-role": "clamp-scale", title: "N: the latent is set to N × its maximum activation" });
    this.onlyHere = el("input", { type: "checkbox", "data-role": "clamp-only-here" });
    const ablate = button("Ablate", "feature-ablate", "Set this feature's latent to 0 and generate");
    const clamp = button("Clamp ×", "feature-clamp", "Set this feature's latent to N × its maximum activation and generate");
    ablate.addEventListener("click", () => this.send("ablate"));
    clamp.addEventListener("click", () => this.send("clamp"));
    this.scale.addEventListener("keydown", (e) => {
      if (e.key === "Enter") this.send("clamp");
    });
    this.head = el("div", { class: "cv-muted", "data-role": "feature-selected" });
    this.status = el("span", { class: "cv-muted", "data-role": "steer-status" });
    this.controls = el(
      "div",
      { class: "cv-toolbar", "data-role": "feature-controls" },
      ablate,
      clamp,
      this.scale,
      el("label", { title: "Only at the node's position (otherwise at every position, generated ones too)" }, this.onlyHere, " only here"),
    );
    this.result = el("div", { "data-role": "steer-result" });
    this.groups = el("div", { "data-role": "supernodes" });
    const legend = el("div", { class: "cv-legend" });
    legend.append(swatch(supernodeShape(6) as SVGElement), el("span", {}, "supernode: features grouped (hover lists them)"));
    legend.append(swatch(svgEl("circle", { r: 4, fill: FEATURE_COLOR }), pickedRing(3)), el("span", {}, "picked for grouping (shift-click)"));
    (legend.firstChild as SVGSVGElement).querySelector("polygon")!.setAttribute("fill", SUPERNODE_COLOR);
    const job = new JobLine(model, "steer");  // a remote model's steer: state, Cancel, latency
    this.el = el("div", { class: "cv-panel", "data-role": "feature-panel" }, el("div", { class: "cv-title" }, "Features"), this.head, this.controls, this.status, job.el, this.result, this.groups, legend);
    for (const name of ["change:steering", "change:supernodes", "change:suggested_supernodes", "change:can_steer", "change:clamp_scale"]) {
      model.on(name, () => this.update(this.node));
    }
    model.on("msg:custom", (msg: { type?: string; request?: number; stage?: string; message?: string }) => {
      if ((msg.type === "error" || msg.type === "cancelled") && msg.request !== undefined && msg.request === this.request) {
        this.root.setAttribute("data-steer-busy", "false");
        setText(this.status, msg.type === "error" ? msg.message ?? "error" : "cancelled");
      }
    });
  }

  /** A standalone export has no kernel: the controls go, and the panel says why. */
  standalone(): void {
    this.live = false;
    this.update(this.node);
  }

  /** Shift-click on a feature node: pick it for a group, or unpick it. */
  togglePick(id: string): void {
    if (this.picked.has(id)) this.picked.delete(id);
    else this.picked.add(id);
    this.update(this.node);
  }

  isPicked(id: string): boolean {
    return this.picked.has(id);
  }

  private send(mode: "clamp" | "ablate"): void {
    const n = this.node;
    if (!steerable(n) || !this.model.get("can_steer")) return;
    this.request += 1;
    const scale = Number(this.scale.value);
    this.root.setAttribute("data-steer-requested", String(performance.now()));
    this.root.removeAttribute("data-steer-painted-continuation");
    this.root.removeAttribute("data-steer-painted-done");
    this.root.setAttribute("data-steer-busy", "true");
    setText(this.status, mode === "clamp" ? `clamping ${n!.id} × ${fmt(scale, 3)}…` : `ablating ${n!.id}…`);
    this.model.send({ type: "steer", node: n!.id, mode, scale, everywhere: !this.onlyHere.checked, request: this.request });
  }

  private setGroups(groups: Supernode[]): void {
    this.model.set("supernodes", groups);
    this.model.save_changes();
  }

  update(node: GraphNode | null): void {
    this.node = node;
    const m = this.model;
    if (document.activeElement !== this.scale) this.scale.value = String(m.get("clamp_scale"));
    const can = !!m.get("can_steer") && this.live;
    const ok = can && steerable(node);
    this.controls.style.display = ok ? "" : "none";
    if (!this.live) setText(this.head, "Clamping features needs the live kernel (this is a standalone export).");
    else if (!can) setText(this.head, "Clamping features needs model=, pairs= and saes=.");
    else if (node?.type === "error") setText(this.head, `${node.id}: an SAE error term (what the SAE misses). A click ablates it like any node; clamping is for latents.`);
    else if (!steerable(node)) setText(this.head, "select a feature node to ablate or clamp it; shift-click features to pick them for a group");
    else if (node!.type === "supernode") setText(this.head, `${node!.id} ${node!.label ?? ""}: ${(node as GraphNode & { members?: string[] }).members?.join(", ") ?? ""}`);
    else setText(this.head, `${node!.id}${node!.pos != null ? ` (position ${node!.pos})` : ""}`);
    this.drawResult();
    this.drawGroups();
  }

  private drawResult(): void {
    clear(this.result);
    const s = this.model.get("steering") ?? {};
    if (!s.stage) return;
    const current = s.request === this.request;
    if (current && s.stage === "done") this.root.setAttribute("data-steer-busy", "false");
    if (current) setText(this.status, s.stage === "done" ? "" : "computing the metric on the pairs…");
    const what = s.mode === "clamp" ? `clamped × ${fmt(s.scale ?? NaN, 3)} (= ${(s.values ?? []).map((v) => fmt(v, 3)).join(", ")})` : "ablated (set to 0)";
    this.result.append(el("div", { class: "cv-muted", "data-role": "steer-what" }, `${(s.features ?? []).join(", ")} ${what}`));
    const table = el("table", { class: "cv-metrics", "data-role": "steer-metric" });
    const metric = s.stage === "done" ? s.metric ?? "metric" : "metric (computing…)";
    table.append(
      el("tr", {}, el("td", {}, ""), el("td", {}, "before"), el("td", {}, "after")),
      el("tr", {}, el("td", {}, metric), el("td", { "data-role": "steer-metric-before" }, fmt(s.metric_before ?? NaN, 4)), el("td", { "data-role": "steer-metric-after" }, fmt(s.metric_after ?? NaN, 4))),
    );
    this.result.append(table);
    const tops = el("div", { class: "cv-topk-wrap" });
    if (s.top_before) tops.append(topTable("next token before", "steer-top-before", s.top_before));
    if (s.top_after) tops.append(topTable("after", "steer-top-after", s.top_after));
    this.result.append(tops);
    for (const [label, role, text] of [
      ["continuation before", "continuation-before", s.before ?? ""],
      ["after", "continuation-after", s.after ?? ""],
    ] as const) {
      this.result.append(el("div", { class: "cv-muted" }, label), el("div", { class: "cv-continuation", "data-role": role }, text));
    }
    // For timing tests: when this request's continuation (also in the "done" state, if it came
    // in one step) and its metric were first painted.
    const now = String(performance.now());
    for (const stage of s.stage === "done" ? ["continuation", "done"] : ["continuation"]) {
      if (current && !this.root.hasAttribute(`data-steer-painted-${stage}`)) this.root.setAttribute(`data-steer-painted-${stage}`, now);
    }
  }

  private drawGroups(): void {
    clear(this.groups);
    const groups = this.model.get("supernodes") ?? [];
    const suggested = this.model.get("suggested_supernodes") ?? [];
    const nextId = () => {
      const used = new Set(groups.map((g) => g.id));
      let i = 1;
      while (used.has(`S${i}`)) i += 1;
      return `S${i}`;
    };
    if (!this.live) return;
    const picked = [...this.picked];
    const group = button(`Group picked (${picked.length})`, "group-picked", "Group the picked feature nodes (shift-click to pick) into one supernode");
    group.disabled = picked.length < 2;
    group.addEventListener("click", () => {
      this.setGroups([...groups, { id: nextId(), label: "", members: picked }]);
      this.picked.clear();
      this.redraw();
    });
    const suggest = button("Suggest groups", "suggest-groups", "Features at the same site and position with similar logit effects or co-activation (the kernel's rule)");
    suggest.addEventListener("click", () => this.model.send({ type: "suggest_supernodes", request: "suggest" }));
    this.groups.append(el("div", { class: "cv-toolbar" }, group, suggest));
    for (const g of groups) {
      const undo = button("Ungroup", "ungroup", `Draw ${g.id}'s members on their own again`);
      undo.addEventListener("click", () => this.setGroups(groups.filter((x) => x.id !== g.id)));
      this.groups.append(el("div", { "data-supernode": g.id }, `${g.id} ${g.label}: ${g.members.join(", ")} `, undo));
    }
    const taken = new Set(groups.flatMap((g) => g.members));
    for (const g of suggested.filter((x) => !x.members.some((mm) => taken.has(mm)))) {
      const accept = button("Accept", "accept-group", "Group these as one supernode");
      accept.addEventListener("click", () => this.setGroups([...groups, { id: nextId(), label: g.label, members: g.members }]));
      this.groups.append(el("div", { class: "cv-muted", "data-suggested": g.id }, `suggested: ${g.members.join(", ")} (${g.reason ?? ""}) `, accept));
    }
  }
}

function topTable(title: string, role: string, top: TopTokens): HTMLElement {
  const t = el("table", { class: "cv-topk", "data-role": role });
  t.append(el("tr", {}, el("td", { class: "cv-muted", colspan: 2 }, title)));
  top.tokens.slice(0, 5).forEach((tok, i) => t.append(el("tr", {}, el("td", {}, JSON.stringify(showToken(tok))), el("td", {}, fmt(top.probs[i], 3)))));
  return t;
}

export const CLAMP_STYLE = `
.cv-continuation{font-family:ui-monospace,monospace;font-size:11px;white-space:pre-wrap;word-break:break-word;border:1px solid #eee;padding:3px;margin:2px 0 4px}
[data-role="feature-panel"] .cv-toolbar{flex-wrap:wrap}
`;
