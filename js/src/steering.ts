// SteeringView: a prompt's continuation before and after steering with a refusal direction.
// The page only writes prompt / coef / mode; the kernel generates and sends both continuations.
import { el, fmt, root, select, setText } from "./dom";
import { JobLine } from "./jobline";
import type { AnyModel, SteeringSide, SteeringTraits } from "./types";

const MODE_LABELS: Record<string, string> = {
  add: "add coef × direction",
  ablate: "ablate direction (every layer)",
};

const STEERING_STYLE = `
.cv-steer-side{flex:1 1 260px;border:1px solid #ddd;border-radius:4px;padding:6px;min-width:220px}
.cv-steer-side h4{margin:0 0 4px;font-size:12px}
.cv-steer-text{white-space:pre-wrap;font-family:ui-monospace,Menlo,monospace;min-height:2.8em}
.cv-steer-badge{display:inline-block;border-radius:3px;padding:0 5px;font-size:11px;margin-right:6px}
.cv-steer-badge[data-refused="true"]{background:#fde2d8;color:#8a2a0a}
.cv-steer-badge[data-refused="false"]{background:#dff0e4;color:#1d5a2f}
.cv-steer-prompt{font:inherit;width:520px;max-width:80vw;padding:2px 4px}
.cv-steer-label{display:flex;gap:6px;align-items:center}
`;

function side(title: string, role: string) {
  const badge = el("span", { class: "cv-steer-badge", "data-role": `${role}-verdict` });
  const score = el("span", { class: "cv-muted", "data-role": `${role}-score` });
  const text = el("div", { class: "cv-steer-text", "data-role": role });
  const box = el("div", { class: "cv-steer-side" }, el("h4", {}, title), el("div", {}, badge, score), text);
  return {
    box,
    show(s: SteeringSide | Record<string, never>) {
      const known = "text" in s;
      setText(text, known ? s.text || "(empty continuation)" : "…");
      badge.setAttribute("data-refused", known ? String(s.refused) : "");
      setText(badge, known ? (s.refused ? "refuses" : "complies") : "");
      badge.title = "refuses: the continuation starts with a refusal phrase (circuitviz.engine.REFUSAL_PHRASES)";
      setText(score, known ? `refusal score ${fmt(s.score, 2)}` : "");
      score.title = "Log-odds that the first generated token starts a refusal (I, Sorry, Unfortunately, As)";
    },
  };
}

function render({ model, el: host }: { model: AnyModel<SteeringTraits>; el: HTMLElement }) {
  const rootEl = root(host, "steering");
  const style = document.createElement("style");
  style.textContent = STEERING_STYLE;
  const prompt = el("input", { class: "cv-steer-prompt", "data-role": "prompt", type: "text", maxlength: 256 });
  const modeSelect = select("mode", ["add", "ablate"], model.get("mode"), MODE_LABELS);
  const slider = el("input", { type: "range", "data-role": "coef", step: 0.1 });
  const coefText = el("span", { "data-role": "coef-value" });
  const busy = el("span", { class: "cv-busy" }, "generating…");
  const job = new JobLine(model, "generate"); // a remote model's generation: state, Cancel, latency
  const error = el("div", { class: "cv-error", "data-role": "error", role: "alert" });
  const notice = el("div", { class: "cv-muted", "data-role": "standalone-notice" });
  const before = side("Before (no intervention)", "before");
  const after = side("After", "after");
  const afterTitle = after.box.querySelector("h4")!;
  rootEl.append(
    style,
    el("div", { class: "cv-toolbar" }, el("span", { class: "cv-title", "data-role": "title" }), busy, job.el),
    el("div", { class: "cv-toolbar" }, el("label", { class: "cv-steer-label" }, "prompt", prompt)),
    el("div", { class: "cv-toolbar" }, modeSelect, el("label", { class: "cv-steer-label" }, "coef", slider), coefText),
    notice,
    error,
    el("div", { class: "cv-row" }, before.box, after.box),
  );
  // A standalone export answers "hello" with live: false (SteeringView.static_replies): the
  // continuations are as saved, and generating needs the kernel, so the controls go off.
  let live = true;
  const onMsg = (msg: { type?: string; live?: boolean }) => {
    if (msg.type !== "hello" || msg.live !== false) return;
    live = false;
    update();
  };
  model.on("msg:custom", onMsg);

  prompt.addEventListener("change", () => {
    model.set("prompt", prompt.value);
    model.save_changes();
  });
  modeSelect.addEventListener("change", () => {
    model.set("mode", modeSelect.value);
    model.save_changes();
  });
  slider.addEventListener("input", () => setText(coefText, fmt(Number(slider.value), 2)));
  slider.addEventListener("change", () => {
    model.set("coef", Number(slider.value));
    model.save_changes();
  });

  function update(): void {
    const max = model.get("coef_max");
    const mode = model.get("mode");
    slider.min = String(-max);
    slider.max = String(max);
    slider.value = String(model.get("coef"));
    slider.disabled = mode !== "add" || !live;
    prompt.disabled = modeSelect.disabled = !live;
    setText(notice, live ? "" : "This is a standalone export: it shows the continuations as saved. Steering with another prompt, coef or mode needs the live kernel.");
    setText(coefText, mode === "add" ? fmt(model.get("coef"), 2) : "(unused when ablating)");
    if (document.activeElement !== prompt) prompt.value = model.get("prompt");
    modeSelect.value = mode;
    setText(rootEl.querySelector('[data-role="title"]')!, `Refusal steering · layer ${model.get("layer")}`);
    setText(afterTitle, mode === "add" ? `After (add ${fmt(model.get("coef"), 2)} × direction at layer ${model.get("layer")})` : "After (direction ablated at every layer)");
    before.show(model.get("before"));
    after.show(model.get("after"));
    setText(error, model.get("error") || "");
    rootEl.setAttribute("data-busy", String(!!model.get("busy")));
  }
  update();
  const events = "change:prompt change:coef change:mode change:coef_max change:layer change:before change:after change:busy change:error";
  model.on(events, update);
  model.send({ type: "hello" });
  return () => {
    model.off(events, update);
    model.off("msg:custom", onMsg);
  };
}

export default { render };
