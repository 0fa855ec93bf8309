// PatchingView: a PatchResult as a heatmap coloured by effect = value − baseline (diverging,
// centred at 0; "value" mode labels the same colours in the metric's units), with zoom/pan and
// click-to-ablate. What a cell is and what a click ablates come from the kernel (map.cells).
import { AblationPanel } from "./ablation";
import { decode } from "./codec";
import { diverging, divergingScale, maxAbs } from "./colors";
import { el, fmt, root, select, setText } from "./dom";
import { exportButtons } from "./export";
import { Heatmap, type Mark, type View } from "./heatmap";
import { columnNote } from "./padding";
import { arrange, isCovered, isSelected, type Arrangement } from "./patchmap";
import type { AnyModel, PatchMap, PatchingTraits } from "./types";

const COLOR_LABELS: Record<string, string> = { effect: "colour: effect (value − baseline)", value: "colour: value" };

/** Effect of each cell (value − baseline), float32 noise below the kernel's zero_tol set to 0. */
export function effects(raw: ArrayLike<number>, map: Pick<PatchMap, "baseline" | "zero_tol">): Float64Array {
  const out = new Float64Array(raw.length);
  const tol = map.zero_tol ?? 0;
  for (let i = 0; i < raw.length; i++) {
    const e = raw[i] - map.baseline;
    out[i] = Math.abs(e) <= tol ? 0 : e;
  }
  return out;
}

function render({ model, el: host }: { model: AnyModel<PatchingTraits>; el: HTMLElement }) {
  const rootEl = root(host, "patching");
  const main = el("div", { class: "cv-main" });
  const info = el("div", { class: "cv-muted", "data-role": "hover-info" });
  const clickInfo = el("div", { class: "cv-muted", "data-role": "click-info" });
  const panel = new AblationPanel(model, rootEl, () => mark(), "The map was computed once with its own metric; this one is for ablations only.");
  let heatmap: Heatmap | null = null;
  let arrangement: Arrangement | null = null;
  const onError = (e: unknown) => setText(panel.error, String(e));
  const colorSelect = select("color", ["effect", "value"], model.get("color") || "effect", COLOR_LABELS);
  colorSelect.title = "Colour bar in effect (value − baseline) or in the metric's own units; same colours";
  colorSelect.addEventListener("change", () => {
    model.set("color", colorSelect.value);
    model.save_changes();
  });
  const toolbar = el("div", { class: "cv-toolbar" }, colorSelect, ...exportButtons("patching", () => heatmap!.toSVG(), onError));
  rootEl.append(toolbar, el("div", { class: "cv-row" }, el("div", {}, main, info, clickInfo), panel.el));

  const canAblate = () => !!model.get("can_ablate") && !model.get("standalone");

  function build(): void {
    const map = model.get("map");
    const values = decode(map.values);
    const arr = arrange({ axes: map.axes, shape: values.shape, labels: map.labels, cells: map.cells });
    const keep: View | null = heatmap && arrangement && arrangement.rows === arr.rows && arrangement.cols === arr.cols ? heatmap.zoomView : null;
    arrangement = arr;
    const n = arr.rows * arr.cols;
    const raw = new Float64Array(n);
    for (let r = 0; r < arr.rows; r++) for (let c = 0; c < arr.cols; c++) raw[r * arr.cols + c] = Number(values.data[arr.index(r, c)]);
    const effect = effects(raw, map);
    const max = maxAbs(effect) || 1;
    const byValue = model.get("color") === "value";
    const base = map.baseline;
    // Denoising moves corrupted → clean, noising clean → corrupted: both as a share of the gap.
    // A direct logit attribution map holds contributions (baseline 0), a share of the clean value.
    const direct = map.direction === "direct";
    const gap = direct ? map.clean : map.direction === "noise" ? map.corrupted - map.clean : map.clean - map.corrupted;
    const what = direct ? `direct contribution to ${map.metric}` : map.method === "attribution" ? "attribution estimate" : `${map.metric} after patching`;
    const title = direct ? `direct logit attribution · ${map.target}` : `${map.method} patching of ${map.target} (${map.direction}) · map metric: ${map.metric}`;
    const labels = map.color_labels ?? { effect: `effect = value − ${map.baseline_label}`, value: map.metric };
    heatmap = new Heatmap(
      {
        rows: arr.rows,
        cols: arr.cols,
        colorValues: byValue ? raw : effect,
        scale: byValue ? (v) => diverging(v - base, max) : divergingScale(max),
        rowLabels: arr.rowLabels,
        colLabels: arr.colLabels,
        rowTitle: arr.rowTitle,
        colTitle: arr.colTitle,
        rowGroups: arr.rowGroups,
        title,
        colorbar: byValue
          ? { min: base - max, max: base + max, scale: (v) => diverging(v - base, max), label: labels.value, ticks: [base + max, base, base - max] }
          : { min: -max, max, scale: divergingScale(max), label: labels.effect },
        component: (r, c) => arr.component(r, c),
        columnInfo: map.columns,
        tooltip: (r, c) => {
          const i = r * arr.cols + c;
          return [
            `${arr.component(r, c)}   (${arr.rowLabels[r]}, ${arr.colLabels[c]})`,
            `${what}: ${fmt(raw[i], 5)}`,
            direct ? "" : `effect vs ${map.baseline_label}: ${fmt(effect[i], 5)}`,
            gap ? `= ${fmt((100 * effect[i]) / gap, 3)}% of the ${direct ? "clean value" : "clean − corrupted gap"}` : "",
            `clean ${fmt(map.clean)} · corrupted ${fmt(map.corrupted)}`,
            columnNote(map.columns, c),
            clickAction(r, c),
          ]
            .filter(Boolean)
            .join("\n");
        },
      },
      {
        zoom: true,
        onClick: (r, c, ev) => {
          const id = arr.component(r, c);
          const target = arr.ablates(r, c);
          model.set("selected", target ?? id);
          model.save_changes();
          if (target && canAblate()) {
            setText(clickInfo, "");
            panel.click(target, ev.shiftKey);
          } else {
            setText(clickInfo, `selected ${id}; ${notAblated(r, c)}`);
            mark();
          }
        },
        onHover: (r, c) => setText(info, r === null || c === null ? "" : arr.component(r, c)),
      },
    );
    if (keep) heatmap.setView(keep);
    main.replaceChildren(heatmap.el);
    // Notes under the map wrap at its width, so the side panel stays beside it.
    for (const note of [info, clickInfo]) note.style.maxWidth = `${heatmap.geom.width}px`;
    mark();
  }

  /** What a click on (r, c) will do, for the tooltip. */
  function clickAction(r: number, c: number): string {
    const target = arrangement!.ablates(r, c);
    if (!target || !canAblate()) return `click: select only (${notAblated(r, c)})`;
    return `click: ${model.get("mode") || "zero"}-ablate ${target} only · shift-click: add to the set`;
  }

  function notAblated(r: number, c: number): string {
    const target = arrangement!.ablates(r, c);
    if (!target) return `not ablatable: ${model.get("map").cells.reason}`;
    if (model.get("standalone")) return "ablation needs a live kernel";
    return "ablation needs model= and pairs=";
  }

  function mark(): void {
    if (!heatmap || !arrangement) return;
    const arr = arrangement;
    const ablated = new Set(panel.current());
    const selected = model.get("selected");
    const marks = new Map<number, Mark>();
    for (let r = 0; r < arr.rows; r++) {
      for (let c = 0; c < arr.cols; c++) {
        const target = arr.ablates(r, c);
        const isSel = isSelected(selected, arr.component(r, c), target);
        const isAbl = isCovered(target, ablated);
        if (isSel || isAbl) marks.set(r * arr.cols + c, isAbl ? (isSel ? "ablated-selected" : "ablated") : "selected");
      }
    }
    heatmap.setMarks(marks);
    for (const hit of main.querySelectorAll<HTMLElement>("[data-component]")) {
      const r = Number(hit.dataset.row);
      const c = Number(hit.dataset.col);
      const target = arr.ablates(r, c);
      hit.dataset.ablated = String(isCovered(target, ablated));
      hit.dataset.selected = String(isSelected(selected, hit.dataset.component!, target));
      hit.dataset.ablates = target ?? "";
    }
  }

  function safeBuild(): void {
    try {
      build();
    } catch (e) {
      setText(panel.error, `Could not draw this map: ${e}`);
    }
  }
  safeBuild();
  model.on("change:map", safeBuild);
  model.on("change:color", () => {
    colorSelect.value = model.get("color") || "effect";
    safeBuild();
  });
  model.on("change:selected", () => mark());
  model.on("change:ablated", () => mark());
}

export default { render };
