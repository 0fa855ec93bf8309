// One line showing a view's remote (NDIF) job other than a click's ablation — CircuitView's
// faithfulness, the clamp panel's steer, SteeringView's generation (views/_tasks.py):
//   kernel → view  trait `<slot>_job` ({state, detail, request, seconds, remote})
//   view → kernel  {type: "cancel_job", job: slot}
//   kernel → view  {type: "cancelled", request, job: slot}
// The text and when Cancel is offered are describeJob's, as in the ablation panel.
import { describeJob } from "./ablation";
import { button, el, fmt, setText } from "./dom";
import type { AnyModel, JobInfo } from "./types";

export class JobLine {
  readonly el: HTMLDivElement;
  private readonly state: HTMLSpanElement;
  private readonly latency: HTMLSpanElement;
  private readonly cancel: HTMLButtonElement;

  constructor(private readonly model: AnyModel<any>, private readonly slot: string) {
    this.state = el("span", { "data-role": `${slot}-job-state` });
    this.latency = el("span", { class: "cv-muted", "data-role": `${slot}-latency` });
    this.cancel = button("Cancel", `${slot}-cancel`, "Stop waiting for this NDIF job (the view stays as it was)");
    this.cancel.hidden = true;
    this.cancel.addEventListener("click", () => {
      this.cancel.disabled = true;
      setText(this.state, "cancelling…");
      this.model.send({ type: "cancel_job", job: this.slot });
    });
    this.el = el("div", { class: "cv-job", "data-role": `${slot}-job`, "data-state": "" }, this.state, " ", this.cancel, " ", this.latency);
    model.on(`change:${slot}_job`, () => this.draw());
    this.draw();
  }

  /** "NDIF job: running (3.2 s)" with Cancel while it waits; when done, its latency. */
  draw(): void {
    const job: JobInfo = this.model.get(`${this.slot}_job`) ?? {};
    const { text, cancellable } = describeJob(job, job.request ?? null);
    this.el.dataset.state = job.state ?? "";
    this.el.hidden = !job.remote;
    this.cancel.hidden = !cancellable;
    if (!cancellable) this.cancel.disabled = false;
    setText(this.state, text);
    const done = job.remote && job.state === "done" && typeof job.seconds === "number";
    if (done) this.latency.dataset.ms = String(Math.round((job.seconds as number) * 1000));
    else delete this.latency.dataset.ms;
    setText(this.latency, done ? `request → result in ${fmt(job.seconds as number, 3)} s` : "");
  }
}
