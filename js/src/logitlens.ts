// LogitLensView: layers × positions, the top token written in each cell (as text, never
// markup), coloured by the answer's probability; click a cell to list its top-k tokens.
import { decode } from "./codec";
import { css, sequentialScale, textOn } from "./colors";
import { el, fmt, root, setText, showToken, truncate } from "./dom";
import { exportButtons, svgEl } from "./export";
import { Heatmap, type Mark } from "./heatmap";
import type { AnyModel, LogitLensTraits } from "./types";

const STYLE = `
.cv-lens-cell{display:flex;align-items:center;justify-content:center;overflow:hidden;white-space:pre;font:10px system-ui,sans-serif;pointer-events:auto}
.cv-lens-panel{min-width:200px;max-width:240px;border-left:1px solid #ddd;padding-left:10px}
.cv-lens-panel table{border-collapse:collapse}
.cv-lens-panel td{padding:1px 8px 1px 0;font-variant-numeric:tabular-nums}
.cv-lens-panel tr[data-answer="true"] td{font-weight:600}
`;

/** The text drawn in a cell: whitespace made visible, cut to what the cell can hold. */
function cellText(text: string, width: number): string {
  return truncate(showToken(text), Math.max(1, Math.floor((width - 4) / 6)));
}

function render({ model, el: host }: { model: AnyModel<LogitLensTraits>; el: HTMLElement }) {
  const rootEl = root(host, "logitlens");
  rootEl.append(el("style", {}, STYLE));
  const main = el("div", { class: "cv-main" });
  const error = el("div", { class: "cv-error", role: "alert", "data-role": "error" });
  const title = el("div", { class: "cv-title", "data-role": "topk-title" });
  const rank = el("div", { class: "cv-muted", "data-role": "answer-rank" });
  const table = el("table", { class: "cv-topk", "data-role": "topk" });
  const legend = el("div", { class: "cv-muted", "data-role": "legend" }, "cell text: the top token (␣ = whitespace, ∅ = empty); hover for values");
  const panel = el("div", { class: "cv-lens-panel" }, title, rank, table, legend);
  let heatmap: Heatmap | null = null;
  const onError = (e: unknown) => setText(error, String(e));
  const toolbar = el("div", { class: "cv-toolbar" }, ...exportButtons("logitlens", () => svgWithText(), onError));
  rootEl.append(toolbar, error, el("div", { class: "cv-row" }, main, panel));

  const lens = () => model.get("lens");
  const idOf = (r: number, c: number) => `${lens().row_ids[r]}:P${c}`;
  let colour = new Float32Array(0);
  let topProbs = new Float32Array(0);
  let ranks: Int32Array | null = null;
  let k = 1;
  const scale = sequentialScale(0, 1);

  function svgWithText(): SVGSVGElement {
    const svg = heatmap!.toSVG();
    const g = heatmap!.geom;
    const { cell_text } = lens();
    for (let r = 0; r < cell_text.length; r++) {
      for (let c = 0; c < cell_text[r].length; c++) {
        const fill = textOn(scale(colour[r * cell_text[r].length + c]));
        const attrs = { x: g.left + (c + 0.5) * g.cw, y: g.top + (r + 0.5) * g.ch, "text-anchor": "middle", "dominant-baseline": "middle", "font-size": 10, fill };
        svg.append(svgEl("text", attrs, cellText(cell_text[r][c], g.cw)));
      }
    }
    return svg;
  }

  function build(): void {
    const L = lens();
    const values = decode(L.colour);
    const [rows, cols] = values.shape;
    colour = Float32Array.from(values.data as ArrayLike<number>);
    const probs = decode(L.top_probs);
    topProbs = Float32Array.from(probs.data as ArrayLike<number>);
    k = probs.shape[2];
    ranks = L.answer_rank ? Int32Array.from(decode(L.answer_rank).data as ArrayLike<number>) : null;
    const answer = L.answer === null ? "" : ` · answer ${JSON.stringify(L.answer)}`;
    heatmap = new Heatmap(
      {
        rows,
        cols,
        colorValues: colour,
        scale,
        rowLabels: L.layers,
        colLabels: L.tokens.map((t, i) => `${i}: ${showToken(t)}`),
        rowTitle: "residual stream after",
        colTitle: "position",
        title: `logit lens · top token per cell${answer}`,
        colorbar: { min: 0, max: 1, scale, label: L.colour_label },
        component: idOf,
        tooltip: (r, c) => {
          const i = r * cols + c;
          return [
            `${L.layers[r]} · position ${c}: ${showToken(L.tokens[c])}`,
            `top: ${showToken(L.top_tokens[r][c][0])} (p ${fmt(topProbs[i * k], 4)})`,
            `${L.colour_label}: ${fmt(colour[i], 4)}`,
            ranks ? `answer rank: ${ranks[i]}` : "",
            "click: list the top tokens",
          ]
            .filter(Boolean)
            .join("\n");
        },
      },
      {
        maxCell: 64,
        maxWidth: 840,
        maxHeight: Math.min(760, rows * 22),
        onClick: (r, c) => {
          model.set("selected", idOf(r, c));
          model.save_changes();
          show();
        },
      },
    );
    // The top token goes into each cell's hit element as text, contrasting with its colour.
    const cw = heatmap.geom.cw;
    for (const hit of heatmap.el.querySelectorAll<HTMLElement>(".cv-hit")) {
      const r = Number(hit.dataset.row);
      const c = Number(hit.dataset.col);
      hit.classList.add("cv-lens-cell");
      hit.style.color = textOn(scale(colour[r * cols + c]));
      hit.dataset.token = L.top_tokens[r][c][0];
      setText(hit, cellText(L.cell_text[r][c], cw));
    }
    main.replaceChildren(heatmap.el);
    show();
  }

  /** The selected cell's top-k in the side panel, and its outline. */
  function show(): void {
    if (!heatmap) return;
    const L = lens();
    const cols = L.tokens.length;
    const m = /^(.*):P(\d+)$/.exec(model.get("selected") ?? "");
    const r = m ? L.row_ids.indexOf(m[1]) : -1;
    const c = m ? Number(m[2]) : -1;
    const marks = new Map<number, Mark>();
    for (const hit of heatmap.el.querySelectorAll<HTMLElement>(".cv-hit")) hit.dataset.selected = "false";
    if (r < 0 || c < 0 || c >= cols) {
      setText(title, "Click a cell to see its top tokens.");
      setText(rank, "");
      table.replaceChildren();
      heatmap.setMarks(marks);
      return;
    }
    const i = r * cols + c;
    marks.set(i, "selected");
    heatmap.setMarks(marks);
    const hit = heatmap.el.querySelector<HTMLElement>(`.cv-hit[data-row="${r}"][data-col="${c}"]`);
    if (hit) hit.dataset.selected = "true";
    setText(title, `${L.layers[r]} · position ${c}: ${showToken(L.tokens[c])}`);
    setText(rank, ranks ? `answer ${JSON.stringify(L.answer)}: rank ${ranks[i]}, p ${fmt(colour[i], 4)}` : "");
    const rowsEl = L.top_tokens[r][c].map((token, j) => {
      const p = topProbs[i * k + j];
      const swatch = el("span", { style: `display:inline-block;width:${Math.round(60 * p)}px;height:8px;background:${css(scale(p))};border:1px solid #ccc` });
      return el("tr", { "data-answer": String(token === L.answer) }, el("td", {}, String(j + 1)), el("td", {}, showToken(token)), el("td", {}, fmt(p, 4)), el("td", {}, swatch));
    });
    table.replaceChildren(el("tr", {}, el("td", {}, "#"), el("td", {}, "token"), el("td", {}, "p"), el("td", {})), ...rowsEl);
  }

  try {
    build();
  } catch (e) {
    setText(error, `Could not draw this lens: ${e}`);
  }
  model.on("change:lens", () => build());
  model.on("change:selected", () => show());
}

export default { render };
