// FeatureView: the SAE latents most active on each token (rows: tokens, columns: SAEs), and a
// card per latent. The kernel decides what is shown (latents, colour scale, labels, matches);
// the page sends clicks, label edits and searches as messages and draws the traits it gets
// back. Every token and label reaches the page as text, never markup.
import { decode } from "./codec";
import { css, sequential, textOn } from "./colors";
import { button, el, fmt, root, select, setText, showToken, truncate } from "./dom";
import { exportButtons, svgEl, svgRoot } from "./export";
import type { AnyModel, FeatureCard, FeatureSnippet, FeatureTraits } from "./types";

const STYLE = `
.cv-feat-grid{border-collapse:collapse;font-size:11px}
.cv-feat-grid th{font-weight:600;text-align:left;padding:2px 6px;border-bottom:1px solid #ccc;white-space:nowrap}
.cv-feat-grid td{padding:1px 6px;border-bottom:1px solid #f0f0f0;vertical-align:middle}
.cv-feat-grid tr[data-selected="true"] td{background:#fff6d6}
.cv-feat-tok{font-family:ui-monospace,Menlo,monospace;white-space:pre;cursor:pointer;max-width:140px;overflow:hidden;text-overflow:ellipsis}
.cv-feat-tok:hover{text-decoration:underline}
.cv-chip{font:10px ui-monospace,Menlo,monospace;border:1px solid #c8c8c8;border-radius:3px;padding:0 3px;margin:1px 2px 1px 0;cursor:pointer;min-width:34px}
.cv-chip[data-selected="true"]{outline:2px solid #d55e00;outline-offset:0}
.cv-feat-scroll{max-height:560px;overflow:auto;border:1px solid #eee}
.cv-feat-card{flex:1 1 380px;min-width:340px;max-width:560px;border-left:1px solid #ddd;padding-left:10px}
.cv-feat-card h4{margin:8px 0 2px;font-size:12px}
.cv-feat-card h3{margin:0 0 4px;font-size:13px}
.cv-feat-label{display:flex;gap:6px;align-items:center;flex-wrap:wrap}
.cv-feat-label input{font:inherit;width:260px;padding:1px 4px}
.cv-feat-text{font-family:ui-monospace,Menlo,monospace;white-space:pre-wrap;line-height:1.8;font-size:11px}
.cv-feat-text span,.cv-feat-snip span.cv-feat-t{box-shadow:inset -1px 0 #e4e4e4}
.cv-feat-legend{font-size:11px;color:#555;margin:4px 0;max-width:460px}
.cv-feat-legend .cv-chip{cursor:default}
.cv-feat-snip{font-family:ui-monospace,Menlo,monospace;white-space:pre;overflow:hidden;text-overflow:ellipsis;font-size:11px;border-bottom:1px solid #f2f2f2;padding:1px 0}
.cv-feat-snip mark{background:#fdd49e;font-weight:700;outline:1px solid #d55e00;border-radius:2px;color:#222}
.cv-feat-snip .cv-muted{display:inline-block;width:48px;text-align:right;margin-right:6px}
.cv-feat-logits{display:flex;gap:16px}
.cv-feat-logits table{border-collapse:collapse;font-size:11px}
.cv-feat-logits td{padding:0 4px;font-variant-numeric:tabular-nums}
.cv-feat-logits td:first-child{font-family:ui-monospace,Menlo,monospace;white-space:pre}
.cv-feat-results{max-height:160px;overflow:auto;font-size:11px}
.cv-feat-results li{cursor:pointer}
.cv-feat-results li:hover{text-decoration:underline}
.cv-feat-list td{padding:0 4px;font-size:11px}
.cv-feat-list tr{cursor:pointer}
`;

type Site = FeatureTraits["sites"][number];
interface Top {
  index: Int32Array;
  value: Float32Array;
  k: number;
  max: number;
}

/** The latent ids at one position of one SAE, strongest first, active ones only. */
export function cellFeatures(top: Top, pos: number): { index: number; value: number }[] {
  const out = [];
  for (let j = 0; j < top.k; j++) {
    const value = top.value[pos * top.k + j];
    if (value > 0) out.push({ index: top.index[pos * top.k + j], value });
  }
  return out;
}

/** Fill of an activation relative to its scale's top (white at 0). */
export function fill(value: number, max: number): string {
  return css(sequential(max > 0 ? Math.max(0, Math.min(1, value / max)) : 0));
}

/** The bins of a histogram that hold counts, as [lo, hi, count] triples. */
export function usedBins(edges: number[], counts: number[]): [number, number, number][] {
  const used = counts.map((c, i) => (c > 0 ? i : -1)).filter((i) => i >= 0);
  if (!used.length) return [];
  const out: [number, number, number][] = [];
  for (let i = used[0]; i <= used[used.length - 1]; i++) out.push([edges[i], edges[i + 1], counts[i]]);
  return out;
}

function render({ model, el: host }: { model: AnyModel<FeatureTraits>; el: HTMLElement }) {
  const rootEl = root(host, "feature");
  rootEl.append(el("style", {}, STYLE));
  const title = el("span", { class: "cv-title", "data-role": "title" });
  const query = el("input", { type: "text", "data-role": "search-query", placeholder: "search features…", maxlength: 80 });
  const by = select("search-by", ["label", "token"], "label", { label: "by label", token: "by token" });
  const go = button("Search", "search", "Search in the kernel: labels (substring) or a token (snippet peaks, promoted tokens, the prompt)");
  const error = el("div", { class: "cv-error", role: "alert", "data-role": "error" });
  const results = el("div", { class: "cv-feat-results", "data-role": "search-results" });
  const grid = el("div", { class: "cv-feat-scroll", "data-role": "grid" });
  const legend = el("div", { class: "cv-feat-legend", "data-role": "legend" });
  const tokenPanel = el("div", { "data-role": "token-panel" });
  const cardEl = el("div", { class: "cv-feat-card", "data-role": "card" });
  const onError = (e: unknown) => setText(error, String(e));
  const toolbar = el("div", { class: "cv-toolbar" }, title, query, by, go, ...exportButtons("feature", () => cardSvg(), onError));
  rootEl.append(
    toolbar,
    error,
    results,
    el("div", { class: "cv-row" }, el("div", { class: "cv-main" }, grid, legend, tokenPanel), cardEl),
  );

  let request = 0;
  let clickedAt = 0;
  let shown: FeatureCard | null = null;
  const tops = new Map<string, Top>();
  const sites = () => model.get("sites");
  const siteOf = (hook: string) => sites().find((s) => s.hook === hook);
  const labelOf = (id: string) => model.get("chip_labels")[id] ?? "";

  function decodeTops(): void {
    tops.clear();
    const top = model.get("top");
    for (const s of sites()) {
      const t = top[s.hook];
      const index = decode(t.index);
      tops.set(s.hook, {
        index: Int32Array.from(index.data as ArrayLike<number>),
        value: Float32Array.from(decode(t.value).data as ArrayLike<number>),
        k: index.shape[1],
        max: t.max,
      });
    }
  }

  function ask(feature: string): void {
    clickedAt = performance.now();
    rootEl.setAttribute("data-pending", feature);
    model.send({ type: "card", feature, request: ++request });
    setTimeout(() => {
      if (rootEl.getAttribute("data-pending") !== feature) return;
      rootEl.removeAttribute("data-pending");
      setText(error, "No card came back: a standalone page holds only the cards of the latents strongest on its prompt; open the view in Jupyter for the others.");
    }, 8000);
  }

  function chip(site: Site, index: number, value: number, max: number): HTMLButtonElement {
    const id = `${site.hook}:${index}`;
    const b = el("button", { class: "cv-chip", type: "button", "data-feature": id, "data-selected": String(id === model.get("feature")) }, `#${index}`);
    b.style.background = fill(value, max);
    b.style.color = textOn(sequential(max > 0 ? value / max : 0));
    b.title = `${site.name} #${index}\nactivation ${fmt(value, 4)}\n${labelOf(id)}\nclick: show its card`;
    b.addEventListener("click", (e) => {
      e.stopPropagation();
      ask(id);
    });
    return b;
  }

  function drawGrid(): void {
    const tokens = model.get("tokens");
    const head = el("tr", {}, el("th", {}, "token"), ...sites().map((s) => el("th", { title: s.hook }, `${s.name} (top ${tops.get(s.hook)?.k ?? 0})`)));
    const rows = tokens.map((tok, pos) => {
      const cells = sites().map((s) => {
        const top = tops.get(s.hook)!;
        return el("td", { "data-site": s.hook }, ...cellFeatures(top, pos).map((f) => chip(s, f.index, f.value, top.max)));
      });
      const tokCell = el("td", { class: "cv-feat-tok", "data-role": "token", "data-pos": pos, title: "click: list this token's features" }, `${pos}: ${showToken(tok)}`);
      tokCell.addEventListener("click", () => {
        model.set("selected_token", model.get("selected_token") === pos ? -1 : pos);
        model.save_changes();
        drawTokenPanel();
        markSelection();
      });
      return el("tr", { "data-pos": pos }, tokCell, ...cells);
    });
    grid.replaceChildren(el("table", { class: "cv-feat-grid" }, el("thead", {}, head), el("tbody", {}, ...rows)));
    const sample = (v: number) => {
      const c = el("span", { class: "cv-chip", "data-legend": `chip-${v}` }, "#i");
      c.style.background = fill(v, 1);
      c.style.color = textOn(sequential(v));
      return c;
    };
    legend.replaceChildren(
      el("span", {}, "Chip #i: latent i, strongest first; colour: its activation ÷ that SAE's largest on this prompt (BOS left out) "),
      sample(0.1), sample(0.5), sample(1),
      el("span", { "data-legend": "selected" }, "; orange outline: the card shown; shaded row: the picked token."),
    );
    markSelection();
  }

  function markSelection(): void {
    const pos = model.get("selected_token");
    for (const tr of grid.querySelectorAll<HTMLElement>("tbody tr")) tr.dataset.selected = String(Number(tr.dataset.pos) === pos);
    for (const c of rootEl.querySelectorAll<HTMLElement>(".cv-chip")) c.dataset.selected = String(c.dataset.feature === model.get("feature"));
  }

  function drawTokenPanel(): void {
    const pos = model.get("selected_token");
    const tokens = model.get("tokens");
    if (pos < 0 || pos >= tokens.length) {
      tokenPanel.replaceChildren(el("div", { class: "cv-muted" }, "Click a token for its features; click a feature for its card."));
      return;
    }
    const rows: HTMLElement[] = [];
    for (const s of sites()) {
      const top = tops.get(s.hook)!;
      for (const f of cellFeatures(top, pos)) {
        const id = `${s.hook}:${f.index}`;
        const tr = el("tr", { "data-feature": id }, el("td", {}, s.name), el("td", {}, `#${f.index}`), el("td", {}, fmt(f.value, 3)), el("td", {}, truncate(labelOf(id), 60)));
        tr.addEventListener("click", () => ask(id));
        rows.push(tr);
      }
    }
    tokenPanel.replaceChildren(
      el("h4", { "data-role": "token-title" }, `Token ${pos}: ${showToken(tokens[pos])}`),
      rows.length ? el("table", { class: "cv-feat-list" }, ...rows) : el("div", { class: "cv-muted" }, "No SAE latent is active here."),
    );
  }

  function snippetEl(s: FeatureSnippet): HTMLElement {
    // One line per snippet: line breaks and tabs inside it show as ↵ and ⇥.
    const parts = s.tokens.map((t, i) => (i === s.peak ? el("mark", { "data-role": "peak" }, showToken(t)) : el("span", { class: "cv-feat-t" }, showToken(t))));
    return el("div", { class: "cv-feat-snip", "data-role": "snippet", title: `peak ${fmt(s.value, 4)} on ${JSON.stringify(s.tokens[s.peak])}` }, el("span", { class: "cv-muted" }, fmt(s.value, 3)), ...parts);
  }

  function histogram(c: FeatureCard): Node {
    const h = c.hist;
    if (!h) return el("div", { class: "cv-muted" }, "—");
    const bins = usedBins(h.edges, h.counts);
    const W = 320;
    const H = 90;
    const svg = svgEl("svg", { width: W, height: H + 28, "data-role": "histogram" });
    if (!bins.length) {
      svg.append(svgEl("text", { x: 4, y: 20, fill: "#777" }, "never active in the corpus"));
      return svg;
    }
    const peak = Math.max(...bins.map((b) => b[2]));
    const bw = (W - 40) / bins.length;
    bins.forEach(([lo, hi, n], i) => {
      const bh = (H - 10) * (n / peak);
      const r = svgEl("rect", { x: 36 + i * bw, y: H - bh, width: Math.max(1, bw - 1), height: bh, fill: "rgb(33,102,172)" });
      r.append(svgEl("title", {}, `${fmt(lo, 3)} – ${fmt(hi, 3)}: ${n} tokens`));
      svg.append(r);
    });
    svg.append(svgEl("line", { x1: 36, x2: W - 4, y1: H, y2: H, stroke: "#999" }));
    svg.append(svgEl("text", { x: 36, y: H + 12, "font-size": 10, fill: "#444" }, fmt(bins[0][0], 3)));
    svg.append(svgEl("text", { x: W - 4, y: H + 12, "font-size": 10, fill: "#444", "text-anchor": "end" }, fmt(bins[bins.length - 1][1], 3)));
    svg.append(svgEl("text", { x: (W + 36) / 2, y: H + 24, "font-size": 10, fill: "#444", "text-anchor": "middle" }, "activation (log bins)"));
    svg.append(svgEl("text", { x: 32, y: 10, "font-size": 10, fill: "#444", "text-anchor": "end" }, String(peak)));
    svg.append(svgEl("text", { x: 32, y: H, "font-size": 10, fill: "#444", "text-anchor": "end" }, "0"));
    return svg;
  }

  function logitTable(rows: [string, number][], role: string, head: string): HTMLElement {
    const max = Math.max(1e-9, ...rows.map((r) => Math.abs(r[1])));
    return el(
      "table",
      { "data-role": role },
      el("tr", {}, el("th", { colspan: 3 }, head)),
      ...rows.map(([t, v]) => {
        const bar = el("span", { style: `display:inline-block;height:8px;width:${Math.round((50 * Math.abs(v)) / max)}px;background:${v >= 0 ? "rgb(33,102,172)" : "rgb(178,24,43)"}` });
        return el("tr", {}, el("td", {}, showToken(t)), el("td", {}, fmt(v, 3)), el("td", {}, bar));
      }),
    );
  }

  function drawCard(c: FeatureCard | Record<string, never> | null): void {
    shown = c && "id" in c ? (c as FeatureCard) : null;
    if (!shown) {
      cardEl.replaceChildren(el("div", { class: "cv-muted" }, "Click a feature chip for its card."));
      return;
    }
    const card = shown;
    const tokens = model.get("tokens");
    const maxAct = card.acts_max;
    const input = el("input", { type: "text", "data-role": "label-input", maxlength: 80, value: card.label });
    const status = el("span", { class: "cv-muted", "data-role": "label-status" });
    let sent = card.label;
    const commit = () => {
      if (input.value === sent) return;
      sent = input.value;
      setText(status, "saving…");
      model.send({ type: "label", feature: card.id, label: input.value, request: ++request });
      setTimeout(() => {
        if (status.textContent === "saving…") setText(status, "not saved: no kernel answered");
      }, 5000);
    };
    input.addEventListener("change", commit);
    input.addEventListener("keydown", (e) => {
      e.stopPropagation(); // typing here is not a notebook shortcut (JupyterLab listens on document)
      if (e.key === "Enter") commit();
    });
    const text = el(
      "div",
      { class: "cv-feat-text", "data-role": "prompt-acts" },
      ...tokens.map((t, i) => {
        const v = card.acts[i] ?? 0;
        const s = el("span", { "data-pos": i, title: `${i}: ${JSON.stringify(t)} → ${fmt(v, 4)}` }, t);
        s.style.background = fill(v, maxAct);
        s.style.color = textOn(sequential(maxAct > 0 ? v / maxAct : 0));
        return s;
      }),
    );
    const freq = card.frequency === null ? "" : ` · active on ${fmt(100 * card.frequency, 3)}% of corpus tokens`;
    const noStats = "No corpus statistics for this SAE: call view.compute_stats(), or pass stats=feature_stats(model, saes, texts).";
    cardEl.replaceChildren(
      el("h3", { "data-role": "card-title" }, `${card.site} · #${card.index}`),
      el("div", { class: "cv-feat-label" }, "label", input, status),
      el("div", { class: "cv-muted", "data-role": "auto-label" }, `automatic: ${card.auto_label}${freq}`),
      el("h4", {}, `Activation on this prompt (colour: ÷ ${fmt(maxAct, 4)}, its largest after the BOS; hover for values)`),
      text,
      el("h4", {}, "Top snippets in the corpus (peak token marked; one per text)"),
      card.stats ? el("div", {}, ...card.snippets.map(snippetEl)) : el("div", { class: "cv-muted" }, noStats),
      el("h4", {}, "Logit effect per unit activation (W_dec · final-norm weight · W_U)"),
      el("div", { class: "cv-feat-logits" }, logitTable(card.promoted, "promoted", "promotes"), logitTable(card.suppressed, "suppressed", "suppresses")),
      el("h4", {}, card.hist ? `Activation histogram over the corpus (bar: tokens per bin; inactive on ${card.hist.zeros} of ${card.hist.n_tokens})` : "Activation histogram"),
      card.stats ? histogram(card) : el("div", { class: "cv-muted" }, noStats),
    );
    markSelection();
    if (clickedAt && rootEl.getAttribute("data-pending") === card.id) {
      rootEl.setAttribute("data-card-ms", String(performance.now() - clickedAt));
      rootEl.removeAttribute("data-pending");
      clickedAt = 0;
    }
  }

  function drawResults(): void {
    const s = model.get("search_results");
    if (!s || !s.results) {
      results.replaceChildren();
      return;
    }
    const items = s.results.map((r) => {
      const li = el("li", { "data-feature": r.id, title: r.why }, `${r.site} #${r.index} · ${r.label}`);
      li.addEventListener("click", () => ask(r.id));
      return li;
    });
    results.replaceChildren(
      el("div", { class: "cv-muted" }, `${s.results.length} match${s.results.length === 1 ? "" : "es"} for ${JSON.stringify(s.query)} by ${s.by}${s.results.length ? " (click one)" : ""}`),
      el("ol", {}, ...items),
    );
  }

  function cardSvg(): SVGSVGElement {
    if (!shown) throw new Error("No feature card is shown: click a feature first.");
    const c = shown;
    const lines: [string, string][] = [
      ["title", `${c.site} #${c.index} · ${c.label}`],
      ["h", "Activation on the prompt"],
      ...model.get("tokens").map((t, i): [string, string] => ["t", `${i}: ${showToken(t)}  ${fmt(c.acts[i], 4)}`]),
      ["h", "Top snippets (peak in [ ])"],
      ...c.snippets.map((s): [string, string] => ["t", `${fmt(s.value, 3)}  ${showToken(s.tokens.slice(0, s.peak).join(""))}[${showToken(s.tokens[s.peak])}]${showToken(s.tokens.slice(s.peak + 1).join(""))}`]),
      ["h", "Promotes"],
      ...c.promoted.map(([t, v]): [string, string] => ["t", `${showToken(t)}  ${fmt(v, 3)}`]),
      ["h", "Suppresses"],
      ...c.suppressed.map(([t, v]): [string, string] => ["t", `${showToken(t)}  ${fmt(v, 3)}`]),
    ];
    const svg = svgRoot(560, 16 * lines.length + 12);
    lines.forEach(([kind, text], i) => {
      const attrs: Record<string, string | number> = { x: kind === "t" ? 16 : 6, y: 16 * (i + 1), "font-size": kind === "title" ? 13 : 11 };
      if (kind !== "t") attrs["font-weight"] = 600;
      svg.append(svgEl("text", attrs, text));
    });
    return svg;
  }

  function drawAll(): void {
    try {
      decodeTops();
      setText(title, `SAE features · ${model.get("model_name")} · ${model.get("tokens").length} tokens`);
      drawGrid();
      drawTokenPanel();
      drawCard(model.get("card"));
      drawResults();
    } catch (e) {
      setText(error, `Could not draw this view: ${e}`);
    }
  }

  const doSearch = () => model.send({ type: "search", query: query.value, by: by.value, request: ++request });
  go.addEventListener("click", doSearch);
  query.addEventListener("keydown", (e) => {
    e.stopPropagation(); // as for the label: keys typed here stay here
    if (e.key === "Enter") doSearch();
  });
  model.on("msg:custom", (msg: { type?: string; card?: FeatureCard; label?: string; feature?: string }) => {
    if (msg.type === "card" && msg.card) drawCard(msg.card); // standalone page: replayed cards
    if (msg.type === "label_saved") {
      const status = cardEl.querySelector('[data-role="label-status"]');
      if (status && shown && msg.feature === shown.id) setText(status, "saved");
    }
  });
  drawAll();
  model.on("change:top change:tokens change:sites", drawAll);
  model.on("change:card", () => drawCard(model.get("card")));
  model.on("change:chip_labels", () => {
    drawGrid();
    drawTokenPanel();
  });
  model.on("change:feature change:selected_token", () => {
    markSelection();
    drawTokenPanel();
  });
  model.on("change:search_results", drawResults);
  model.on("change:error", () => setText(error, model.get("error") || ""));
  setText(error, model.get("error") || "");
}

export default { render };
