// AttentionView: a layer × head grid of thumbnails; the focused head as a query × key heatmap
// and as the prompt's text. Thumbnails arrive with the widget; a layer's full patterns
// (float16) only when one of its heads is focused: {type: "request_layer", layer} → chunks.
import { decode, type EncodedArray } from "./codec";
import { css, sequential, sequentialScale } from "./colors";
import { el, fmt, root, select, setText, showToken, truncate } from "./dom";
import { exportButtons, svgEl, svgRoot } from "./export";
import { Heatmap } from "./heatmap";
import type { AnyModel, AttentionTraits } from "./types";

export const ROLES = ["", "previous_token", "duplicate_token", "induction"];
const ROLE_LABELS: Record<string, string> = { "": "patterns", previous_token: "previous-token score", duplicate_token: "duplicate-token score", induction: "induction score" };

interface LayerChunk {
  type: "layer";
  layer: number;
  head: number;
  row0: number;
  row1: number;
  n_pos: number;
  chunks: number;
  dtype: "float16" | "float32";
}

/** Reassembles one layer's [head, dest, src] patterns from row chunks. */
export class LayerStore {
  private heads = new Map<number, Float32Array[]>();
  private received = new Map<number, number>();
  private done = new Set<number>();

  constructor(
    readonly nHeads: number,
    readonly nPos: number,
  ) {}

  add(msg: LayerChunk, buffer: DataView | ArrayBuffer | ArrayBufferView): boolean {
    let heads = this.heads.get(msg.layer);
    if (!heads) {
      heads = Array.from({ length: this.nHeads }, () => new Float32Array(this.nPos * this.nPos));
      this.heads.set(msg.layer, heads);
    }
    const rows = msg.row1 - msg.row0;
    const { data } = decode({ view: buffer, dtype: msg.dtype, shape: [rows, msg.n_pos] } as EncodedArray);
    heads[msg.head].set(data as Float32Array, msg.row0 * msg.n_pos);
    const n = (this.received.get(msg.layer) ?? 0) + 1;
    this.received.set(msg.layer, n);
    if (n >= msg.chunks) this.done.add(msg.layer);
    return this.done.has(msg.layer);
  }

  has(layer: number): boolean {
    return this.done.has(layer);
  }

  pattern(layer: number, head: number): Float32Array | null {
    return this.done.has(layer) ? this.heads.get(layer)![head] : null;
  }
}

export function parseHead(id: string): [number, number] | null {
  const m = /^L(\d+)H(\d+)(?::P\d+)?$/.exec(id || "");
  return m ? [Number(m[1]), Number(m[2])] : null;
}

function render({ model, el: host }: { model: AnyModel<AttentionTraits>; el: HTMLElement }) {
  const rootEl = root(host, "attention");
  const L = model.get("n_layers");
  const H = model.get("n_heads");
  const tokens = model.get("tokens");
  const T = tokens.length;
  const store = new LayerStore(H, T);
  const requested = new Set<number>();
  const error = el("div", { class: "cv-error", "data-role": "error", role: "alert" });
  const roleSelect = select("role", ROLES, model.get("show_scores") || "", ROLE_LABELS);
  roleSelect.title = "Show head-role scores on the grid";
  const focusTitle = el("div", { class: "cv-title", "data-role": "focus-title" });
  const focusBox = el("div", { class: "cv-focus", "data-role": "focus" });
  const tokenBox = el("div", { class: "cv-tokens", "data-role": "tokens" });
  const busy = el("span", { class: "cv-busy", "data-role": "busy" }, "loading layer…");
  let heatmap: Heatmap | null = null;
  const onError = (e: unknown) => setText(error, String(e));
  const buildSVG = () => (heatmap ? heatmap.toSVG() : gridSVG());
  const toolbar = el(
    "div",
    { class: "cv-toolbar" },
    el("span", { class: "cv-title" }, `Attention · ${model.get("model_name") || "model"} · ${T} tokens`),
    el("label", {}, "grid shows ", roleSelect),
    ...exportButtons("attention", buildSVG, onError),
    busy,
  );
  const thumbs = decode(model.get("thumbnails"));
  const t = thumbs.shape[2] ?? 1;
  const cell = Math.max(14, Math.min(44, Math.floor(560 / Math.max(L, 1))));
  const gap = 2;
  const labelW = 34;
  const gridW = labelW + H * (cell + gap);
  const gridH = 16 + L * (cell + gap);
  const gridCanvas = el("canvas", { "data-role": "grid-canvas" });
  const hits = el("div", { class: "cv-hits", style: `left:${labelW}px;top:16px` });
  const gridTip = el("div", { class: "cv-tooltip", "data-role": "grid-tooltip" });
  const grid = el("div", { class: "cv-hm cv-grid", "data-role": "grid" }, gridCanvas, hits, gridTip);
  for (let l = 0; l < L; l++) {
    for (let h = 0; h < H; h++) {
      const id = `L${l}H${h}`;
      const hit = el("div", { class: "cv-hit", "data-component": id, role: "button", tabindex: 0, "aria-label": id, style: `left:${h * (cell + gap)}px;top:${l * (cell + gap)}px;width:${cell}px;height:${cell}px` });
      hit.addEventListener("mouseenter", () => {
        const lines = [id, ...["previous_token", "duplicate_token", "induction"].map((r) => `${r}: ${fmt(score(r, l, h), 3)}`)];
        setText(gridTip, lines.join("\n"));
        gridTip.style.display = "block";
        gridTip.style.left = `${labelW + (h + 1) * (cell + gap)}px`;
        gridTip.style.top = `${16 + l * (cell + gap)}px`;
      });
      hit.addEventListener("mouseleave", () => (gridTip.style.display = "none"));
      hit.addEventListener("keydown", (e) => {
        if (e.key === "Enter" || e.key === " ") {
          e.preventDefault();
          hit.click();
        }
      });
      hit.addEventListener("click", () => {
        model.set("selected", id);
        model.save_changes();
        focus();
      });
      hits.append(hit);
    }
  }
  rootEl.append(toolbar, error, el("div", { class: "cv-row cv-main" }, grid, el("div", {}, focusTitle, focusBox, tokenBox)));

  const scoreArrays: Record<string, Float32Array> = {};
  for (const [k, v] of Object.entries(model.get("scores") ?? {})) scoreArrays[k] = decode(v).data as Float32Array;
  function score(role: string, l: number, h: number): number {
    return scoreArrays[role]?.[l * H + h] ?? NaN;
  }

  // Thumbnails are painted once into one image; the grid redraw only scales it.
  const sheet = el("canvas", { width: H * t, height: L * t });
  {
    const ctx = sheet.getContext("2d");
    if (ctx) {
      const img = ctx.createImageData(H * t, L * t);
      for (let l = 0; l < L; l++)
        for (let h = 0; h < H; h++)
          for (let y = 0; y < t; y++)
            for (let x = 0; x < t; x++) {
              const v = Math.sqrt(thumbs.data[((l * H + h) * t + y) * t + x] / 255); // √p: faint patterns stay visible
              const c = sequential(v);
              const o = 4 * ((l * t + y) * H * t + h * t + x);
              img.data.set([c[0], c[1], c[2], 255], o);
            }
      ctx.putImageData(img, 0, 0);
    }
  }

  function drawGrid(): void {
    const dpr = window.devicePixelRatio || 1;
    gridCanvas.width = gridW * dpr;
    gridCanvas.height = gridH * dpr;
    gridCanvas.style.width = `${gridW}px`;
    gridCanvas.style.height = `${gridH}px`;
    const ctx = gridCanvas.getContext("2d");
    if (!ctx) return;
    ctx.scale(dpr, dpr);
    ctx.fillStyle = "#fff";
    ctx.fillRect(0, 0, gridW, gridH);
    ctx.font = "10px system-ui, sans-serif";
    ctx.fillStyle = "#444";
    ctx.textAlign = "center";
    ctx.textBaseline = "bottom";
    for (let h = 0; h < H; h++) ctx.fillText(`H${h}`, labelW + h * (cell + gap) + cell / 2, 14);
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    const role = model.get("show_scores");
    const sel = focused;
    ctx.imageSmoothingEnabled = t > cell;
    for (let l = 0; l < L; l++) {
      ctx.fillStyle = "#444";
      ctx.fillText(`L${l}`, labelW - 4, 16 + l * (cell + gap) + cell / 2);
      for (let h = 0; h < H; h++) {
        const x = labelW + h * (cell + gap);
        const y = 16 + l * (cell + gap);
        if (role) {
          const s = score(role, l, h);
          const c = sequential(s);
          ctx.fillStyle = css(c);
          ctx.fillRect(x, y, cell, cell);
          if (cell >= 24) {
            ctx.fillStyle = s > 0.5 ? "#fff" : "#000";
            ctx.textAlign = "center";
            ctx.fillText(s.toFixed(2), x + cell / 2, y + cell / 2);
            ctx.textAlign = "right";
          }
        } else {
          ctx.drawImage(sheet, h * t, l * t, t, t, x, y, cell, cell);
        }
        ctx.strokeStyle = "#ddd";
        ctx.lineWidth = 1;
        ctx.strokeRect(x + 0.5, y + 0.5, cell - 1, cell - 1);
        if (sel && sel[0] === l && sel[1] === h) {
          ctx.strokeStyle = "#000";
          ctx.lineWidth = 2;
          ctx.strokeRect(x - 1, y - 1, cell + 2, cell + 2);
        }
      }
    }
    for (const hit of hits.children) {
      (hit as HTMLElement).dataset.selected = String(!!sel && (hit as HTMLElement).dataset.component === `L${sel[0]}H${sel[1]}`);
    }
  }

  function gridSVG(): SVGSVGElement {
    const svg = svgRoot(gridW, gridH);
    const role = model.get("show_scores");
    for (let h = 0; h < H; h++) svg.append(svgEl("text", { x: labelW + h * (cell + gap) + cell / 2, y: 12, "text-anchor": "middle" }, `H${h}`));
    for (let l = 0; l < L; l++) {
      svg.append(svgEl("text", { x: labelW - 4, y: 16 + l * (cell + gap) + cell / 2, "text-anchor": "end", "dominant-baseline": "middle" }, `L${l}`));
      for (let h = 0; h < H; h++) {
        const x = labelW + h * (cell + gap);
        const y = 16 + l * (cell + gap);
        if (role) svg.append(svgEl("rect", { x, y, width: cell, height: cell, fill: css(sequential(score(role, l, h))), "data-component": `L${l}H${h}` }));
        else {
          const one = el("canvas", { width: t, height: t });
          one.getContext("2d")?.drawImage(sheet, h * t, l * t, t, t, 0, 0, t, t);
          svg.append(svgEl("image", { x, y, width: cell, height: cell, href: one.toDataURL(), "data-component": `L${l}H${h}` }));
        }
      }
    }
    return svg;
  }

  // Token text: hover a token to see what it attends to (background) and what attends to it (underline).
  const spans: HTMLSpanElement[] = tokens.map((tok, i) => el("span", { class: "cv-token", "data-pos": i }, showToken(tok)));
  tokenBox.append(...spans);
  let hoverPos: number | null = null;
  tokenBox.addEventListener("mouseover", (e) => {
    const pos = (e.target as HTMLElement).dataset?.pos;
    if (pos !== undefined) highlight(Number(pos));
  });
  tokenBox.addEventListener("mouseleave", () => highlight(null));

  function highlight(i: number | null): void {
    hoverPos = i;
    const sel = focused;
    const p = sel ? store.pattern(sel[0], sel[1]) : null;
    for (let j = 0; j < T; j++) {
      const s = spans[j];
      if (i === null || !p) {
        s.style.background = "";
        s.style.borderBottomColor = "transparent";
        s.removeAttribute("data-focus");
        s.removeAttribute("title");
        continue;
      }
      const to = p[i * T + j]; // i (query) attends to j (key)
      const from = p[j * T + i]; // j attends to i
      s.style.background = j <= i ? css([33, 102, 172], Math.min(1, to) * 0.85) : "";
      s.style.color = j <= i && to > 0.5 ? "#fff" : "";
      s.style.borderBottomColor = j >= i ? css([230, 159, 0], Math.min(1, from)) : "transparent";
      s.title = `attention from ${i} → ${j}: ${fmt(to, 4)}\nfrom ${j} → ${i}: ${fmt(from, 4)}`;
      if (j === i) s.setAttribute("data-focus", "true");
      else s.removeAttribute("data-focus");
    }
  }

  // The focused head: the selection when it names one of this model's heads (another view may
  // select an MLP or a node of another graph; the focus then stays where it was).
  let focused: [number, number] | null = null;
  function currentHead(): [number, number] | null {
    const sel = parseHead(model.get("selected"));
    if (sel && sel[0] < L && sel[1] < H) focused = sel;
    return focused;
  }

  function focus(): void {
    const sel = currentHead();
    drawGrid();
    if (!sel) {
      setText(focusTitle, "Click a head to see its pattern");
      return;
    }
    const [l, h] = sel;
    setText(focusTitle, `L${l}H${h} · query (rows) × key (columns) · hover tokens below`);
    const p = store.pattern(l, h);
    if (!p) {
      focusBox.replaceChildren(el("div", { class: "cv-muted", "data-role": "loading" }, `loading layer ${l}…`));
      if (!requested.has(l)) {
        requested.add(l);
        rootEl.setAttribute("data-busy", "true");
        model.send({ type: "request_layer", layer: l });
      }
      return;
    }
    const labels = tokens.map((tok, i) => `${i}: ${truncate(showToken(tok), 16)}`);
    heatmap = new Heatmap(
      {
        rows: T,
        cols: T,
        colorValues: p,
        scale: sequentialScale(0, 1),
        rowLabels: labels,
        colLabels: labels,
        rowTitle: "query",
        colTitle: "key",
        title: `L${l}H${h}`,
        colorbar: { min: 0, max: 1, label: "attention", scale: sequentialScale(0, 1) },
        tooltip: (r, c) => `query ${r} ${JSON.stringify(tokens[r])} → key ${c} ${JSON.stringify(tokens[c])}\nattention ${fmt(p[r * T + c], 5)}`,
      },
      { maxWidth: 560, maxHeight: 560, onHover: (r) => highlight(r) },
    );
    focusBox.replaceChildren(heatmap.el);
    if (hoverPos !== null) highlight(hoverPos);
  }

  model.on("msg:custom", (msg: { type?: string; message?: string; layer?: number }, buffers: (DataView | ArrayBuffer)[]) => {
    if (msg.type === "layer") {
      if (store.add(msg as LayerChunk, buffers[0] ?? new DataView(new ArrayBuffer(0)))) {
        rootEl.setAttribute("data-busy", "false");
        if (focused && focused[0] === msg.layer) focus();
      }
    } else if (msg.type === "error") {
      rootEl.setAttribute("data-busy", "false");
      if (msg.layer !== undefined) requested.delete(msg.layer);
      setText(error, msg.message ?? "error");
    }
  });
  roleSelect.addEventListener("change", () => {
    model.set("show_scores", roleSelect.value);
    model.save_changes();
    drawGrid();
  });
  model.on("change:show_scores", () => {
    roleSelect.value = model.get("show_scores") || "";
    drawGrid();
  });
  model.on("change:selected", () => focus());
  model.on("change:error", () => setText(error, model.get("error")));
  focus();
}

export default { render };
