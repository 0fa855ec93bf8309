// PatchingView: a PatchResult as a heatmap coloured by effect = value − baseline (diverging,
// centred at 0), with click-to-ablate on head and MLP cells.
import { AblationPanel } from "./ablation";
import { decode } from "./codec";
import { divergingScale, maxAbs } from "./colors";
import { el, fmt, root, setText } from "./dom";
import { exportButtons } from "./export";
import { Heatmap, type Mark } from "./heatmap";
import { ablationTarget, arrange } from "./patchmap";
import type { AnyModel, PatchingTraits } from "./types";

function render({ model, el: host }: { model: AnyModel<PatchingTraits>; el: HTMLElement }) {
  const rootEl = root(host, "patching");
  const main = el("div", { class: "cv-main" });
  const info = el("div", { class: "cv-muted", "data-role": "hover-info" });
  const panel = new AblationPanel(model, rootEl, () => mark());
  let heatmap: Heatmap | null = null;
  let arrangement: ReturnType<typeof arrange> | null = null;
  const onError = (e: unknown) => setText(panel.error, String(e));
  // The heatmap draws its own title (so exported SVGs carry it); the toolbar holds only actions.
  const toolbar = el("div", { class: "cv-toolbar" }, ...exportButtons("patching", () => heatmap!.toSVG(), onError));
  rootEl.append(toolbar, el("div", { class: "cv-row" }, el("div", {}, main, info), panel.el));

  function build(): void {
    const map = model.get("map");
    const values = decode(map.values);
    const arr = arrange({ axes: map.axes, shape: values.shape, labels: map.labels, target: map.target });
    arrangement = arr;
    const n = arr.rows * arr.cols;
    const effect = new Float32Array(n);
    const raw = new Float32Array(n);
    for (let r = 0; r < arr.rows; r++) {
      for (let c = 0; c < arr.cols; c++) {
        const v = Number(values.data[arr.index(r, c)]);
        raw[r * arr.cols + c] = v;
        effect[r * arr.cols + c] = v - map.baseline;
      }
    }
    const max = maxAbs(effect) || 1;
    const scale = divergingScale(max);
    // Denoising moves corrupted → clean, noising clean → corrupted: both as a share of the gap.
    // A direct logit attribution map holds contributions (baseline 0), a share of the clean value.
    const direct = map.direction === "direct";
    const gap = direct ? map.clean : map.direction === "noise" ? map.corrupted - map.clean : map.clean - map.corrupted;
    const what = direct ? `direct contribution to ${map.metric}` : map.method === "attribution" ? "attribution estimate" : `${map.metric} after patching`;
    const title = direct ? `direct logit attribution · ${map.target}` : `${map.method} patching of ${map.target} (${map.direction}) · ${map.metric}`;
    heatmap = new Heatmap(
      {
        rows: arr.rows,
        cols: arr.cols,
        colorValues: effect,
        scale,
        rowLabels: arr.rowLabels,
        colLabels: arr.colLabels,
        rowTitle: arr.rowTitle,
        colTitle: arr.colTitle,
        title,
        colorbar: { min: -max, max, scale, label: `effect = value − ${map.baseline_label}` },
        component: (r, c) => arr.component(r, c),
        tooltip: (r, c) => {
          const id = arr.component(r, c);
          const target = ablationTarget(id);
          const i = r * arr.cols + c;
          return [
            `${id}   (${arr.rowLabels[r]}, ${arr.colLabels[c]})`,
            `${what}: ${fmt(raw[i], 5)}`,
            direct ? "" : `effect vs ${map.baseline_label}: ${fmt(effect[i], 5)}`,
            gap ? `= ${fmt((100 * effect[i]) / gap, 3)}% of the ${direct ? "clean value" : "clean − corrupted gap"}` : "",
            `clean ${fmt(map.clean)} · corrupted ${fmt(map.corrupted)}`,
            target && model.get("can_ablate") ? `click: ablate ${target} · shift-click: add to set` : "",
          ]
            .filter(Boolean)
            .join("\n");
        },
      },
      {
        onClick: (r, c, ev) => {
          const id = arr.component(r, c);
          const target = ablationTarget(id);
          model.set("selected", target ?? id);
          model.save_changes();
          if (target && model.get("can_ablate")) panel.click(target, ev.shiftKey);
          else mark();
        },
        onHover: (r, c) => setText(info, r === null || c === null ? "" : arr.component(r, c)),
      },
    );
    main.replaceChildren(heatmap.el);
    mark();
  }

  function mark(): void {
    if (!heatmap || !arrangement) return;
    const arr = arrangement;
    const ablated = new Set(panel.current());
    const selected = model.get("selected");
    const marks = new Map<number, Mark>();
    for (let r = 0; r < arr.rows; r++) {
      for (let c = 0; c < arr.cols; c++) {
        const id = arr.component(r, c);
        const base = ablationTarget(id) ?? id;
        const isSel = !!selected && (id === selected || base === selected);
        const isAbl = ablated.has(base);
        if (isSel || isAbl) marks.set(r * arr.cols + c, isAbl ? (isSel ? "ablated-selected" : "ablated") : "selected");
      }
    }
    heatmap.setMarks(marks);
    for (const hit of main.querySelectorAll<HTMLElement>("[data-component]")) {
      const base = ablationTarget(hit.dataset.component!) ?? hit.dataset.component!;
      hit.dataset.ablated = String(ablated.has(base));
      hit.dataset.selected = String(!!selected && (hit.dataset.component === selected || base === selected));
    }
  }

  try {
    build();
  } catch (e) {
    setText(panel.error, `Could not draw this map: ${e}`);
  }
  model.on("change:map", () => build());
  model.on("change:selected", () => mark());
  model.on("change:ablated", () => mark());
}

export default { render };
