// DOM helpers. Data (tokens, labels, messages) only ever reaches the page as text nodes:
// nothing here writes innerHTML, so a token like "<img onerror=…>" shows literally.

type Attrs = Record<string, string | number | boolean | undefined>;

export function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  attrs: Attrs = {},
  ...children: (Node | string)[]
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === false) continue;
    if (k === "class") node.className = String(v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) node.append(typeof c === "string" ? document.createTextNode(c) : c);
  return node;
}

export function setText(node: Element, text: string): void {
  node.textContent = text;
}

export function clear(node: Element): void {
  while (node.firstChild) node.removeChild(node.firstChild);
}

export function button(label: string, role: string, title = ""): HTMLButtonElement {
  return el("button", { class: "cv-button", "data-role": role, title, type: "button" }, label);
}

export function select(role: string, options: string[], value: string, labels?: Record<string, string>): HTMLSelectElement {
  const s = el("select", { class: "cv-select", "data-role": role });
  for (const o of options) s.append(el("option", { value: o }, labels?.[o] ?? o));
  s.value = value;
  return s;
}

/** Tokens show their whitespace: a leading space as "·"-free but visible, newlines as "↵". */
export function showToken(t: string): string {
  return t.replace(/\n/g, "↵").replace(/\t/g, "⇥");
}

export function fmt(v: number | null | undefined, digits = 4): string {
  if (v === null || v === undefined || !Number.isFinite(v)) return "–";
  const a = Math.abs(v);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return v.toExponential(2);
  return v.toFixed(digits).replace(/\.?0+$/, "") || "0";
}

export function truncate(s: string, n: number): string {
  return s.length > n ? s.slice(0, n - 1) + "…" : s;
}

export const STYLE = `
.cv-root{font:12px/1.4 system-ui,-apple-system,"Segoe UI",sans-serif;color:#222;background:#fff;position:relative;padding:4px}
.cv-toolbar{display:flex;flex-wrap:wrap;gap:6px;align-items:center;margin:4px 0}
.cv-title{font-weight:600;margin-right:8px}
.cv-button,.cv-select{font:inherit;padding:2px 8px;border:1px solid #bbb;border-radius:4px;background:#fafafa;cursor:pointer}
.cv-button:hover{background:#eee}
.cv-tooltip{position:absolute;pointer-events:none;background:rgba(20,20,20,.92);color:#fff;padding:4px 6px;border-radius:4px;white-space:pre-wrap;z-index:10;display:none;font-size:11px;width:max-content;max-width:420px;overflow:hidden}
.cv-error{color:#a40000;background:#fff0f0;border:1px solid #f3b0b0;border-radius:4px;padding:4px 6px;margin:4px 0;white-space:pre-wrap}
.cv-error:empty{display:none}
.cv-hm{position:relative;display:inline-block;user-select:none}
.cv-hm canvas{display:block}
.cv-hm-plot{position:relative}
.cv-hm-head{display:flex;flex-wrap:wrap;gap:4px 8px;align-items:center;margin-bottom:2px}
.cv-hm-title{font-weight:600;overflow-wrap:anywhere;flex:1 1 100%}
.cv-hm-head .cv-button{padding:0 6px}
.cv-hm-head .cv-button:disabled{opacity:.45;cursor:default}
.cv-hits{position:absolute;left:0;top:0}
.cv-hit{position:absolute;cursor:pointer;background:transparent}
.cv-hit:focus-visible,.cv-node:focus-visible{outline:2px solid #0072B2;outline-offset:1px}
.cv-panel{min-width:220px;max-width:360px;border-left:1px solid #ddd;padding-left:10px}
.cv-panel table{border-collapse:collapse}
.cv-panel td{padding:1px 6px 1px 0}
.cv-row{display:flex;gap:12px;align-items:flex-start;flex-wrap:wrap}
.cv-busy{color:#666;font-style:italic;visibility:hidden}
.cv-root[data-busy="true"] .cv-busy{visibility:visible}
.cv-root[data-busy="true"] .cv-main{opacity:.7}
.cv-tokens{white-space:pre-wrap;line-height:1.9;max-height:260px;overflow:auto;border:1px solid #eee;padding:4px;font-family:ui-monospace,Menlo,monospace}
.cv-token{padding:1px 0;box-shadow:inset -1px 0 #e4e4e4;border-bottom:3px solid transparent;cursor:default}
.cv-token[data-focus="true"]{outline:2px solid #333}
.cv-muted{color:#777}
.cv-topk td:last-child{text-align:right;font-variant-numeric:tabular-nums}
.cv-topk-wrap{display:flex;gap:14px;align-items:flex-start;margin-top:4px}
.cv-notice{background:#f4f7fb;border:1px solid #c9d6e6;border-radius:4px;padding:4px 6px;margin:4px 0}
.cv-per-prompt{margin-top:6px;max-height:240px;overflow:auto}
.cv-per-prompt td{text-align:right;font-variant-numeric:tabular-nums}
`;

export function root(el_: HTMLElement, kind: string): HTMLDivElement {
  clear(el_);
  const style = document.createElement("style");
  style.textContent = STYLE;
  const div = el("div", { class: `cv-root cv-${kind}`, "data-view": kind, "data-busy": "false" });
  el_.append(style, div);
  return div;
}

/** Start a browser download of a Blob. */
export function download(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const a = el("a", { href: url, download: filename });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
