// Head-role badges ("NM", "SI", …): the kernel decides which head has which role and sends
// the badge text, colour and label of each (python: circuitviz/engine/_badges.py); this file
// only lays the badges out inside a box and draws them (canvas for the attention grid, SVG
// for the circuit and the exports).
import { el } from "./dom";
import { svgEl } from "./export";

/** One legend entry as sent by the kernel. */
export interface Badge {
  role: string;
  text: string;
  color: string;
  label: string;
}

export interface BadgeBox {
  x: number;
  y: number;
  w: number;
  h: number;
  text: string;
  color: string;
}

/** Width of a badge's text: bold capitals are at most ~0.7 em each. */
export function badgeWidth(text: string, fontPx: number): number {
  return Math.ceil(text.length * fontPx * 0.7) + 3;
}

/** Font size of the badges in a `cell`-pixel square: 7 px (the 18 px cells of a 30-layer
 * model) to 11 px; smaller cells shrink it until a badge fits (see badgeLayout). */
export function badgeFont(cell: number): number {
  return Math.max(7, Math.min(11, Math.floor(cell * 0.4)));
}

/** Badges placed in rows from the top-left corner of a `cell` × `cell` square, 1 px inside
 * its border; when they don't all fit, the last slot says "+k" (k roles not drawn; the
 * tooltip names them all). Every box lies inside the square. */
export function badgeLayout(cell: number, roles: string[], legend: Map<string, Badge>): { font: number; boxes: BadgeBox[] } {
  const inner = cell - 2;
  let font = badgeFont(cell);
  while (font > 5 && badgeWidth("MM", font) > inner) font--; // cells under 18 px (> 31 layers)
  const h = font + 1;
  const w = badgeWidth("MM", font);
  const cols = Math.max(0, Math.floor((inner + 1) / (w + 1)));
  const rows = Math.max(0, Math.floor(inner / h));
  const slots = cols * rows;
  const known = roles.filter((r) => legend.has(r));
  if (!slots || !known.length) return { font, boxes: [] };
  const drawn = known.length <= slots ? known : known.slice(0, slots - 1);
  const boxes: BadgeBox[] = drawn.map((r, i) => {
    const b = legend.get(r)!;
    return { x: 1 + (i % cols) * (w + 1), y: 1 + Math.floor(i / cols) * h, w, h, text: b.text, color: b.color };
  });
  if (drawn.length < known.length) {
    const i = drawn.length;
    boxes.push({ x: 1 + (i % cols) * (w + 1), y: 1 + Math.floor(i / cols) * h, w, h, text: `+${known.length - drawn.length}`, color: "#555" });
  }
  return { font, boxes };
}

/** Draw badges laid out for a cell whose top-left corner is (x, y). */
export function drawBadgesCanvas(ctx: CanvasRenderingContext2D, x: number, y: number, font: number, boxes: BadgeBox[]): void {
  ctx.save();
  ctx.font = `bold ${font}px system-ui, sans-serif`;
  ctx.textAlign = "center";
  ctx.textBaseline = "middle";
  for (const b of boxes) {
    ctx.fillStyle = b.color;
    ctx.fillRect(x + b.x, y + b.y, b.w, b.h);
    ctx.fillStyle = "#fff";
    ctx.fillText(b.text, x + b.x + b.w / 2, y + b.y + b.h / 2 + 0.5);
  }
  ctx.restore();
}

/** The same badges as SVG (exports), in a group translated to (x, y). */
export function badgesSVG(x: number, y: number, font: number, boxes: BadgeBox[], head: string): SVGGElement {
  const g = svgEl("g", { transform: `translate(${x},${y})`, "data-role": "role-badges", "data-head": head });
  for (const b of boxes) {
    g.append(
      svgEl("rect", { x: b.x, y: b.y, width: b.w, height: b.h, fill: b.color, "data-role": "role-badge" }),
      svgEl("text", { x: b.x + b.w / 2, y: b.y + b.h / 2 + 0.5, "font-size": font, "font-weight": "bold", fill: "#fff", "text-anchor": "middle", "dominant-baseline": "central" }, b.text),
    );
  }
  return g;
}

/** A legend row per role present: the badge, then what it means. */
export function badgeLegendEl(legend: Badge[]): HTMLElement {
  const box = el("div", { class: "cv-role-legend", "data-role": "role-legend", style: "display:flex;flex-wrap:wrap;gap:4px 10px;font-size:11px;margin:4px 0" });
  for (const b of legend) {
    const mark = el("span", { style: `display:inline-block;background:${b.color};color:#fff;font-weight:bold;font-size:10px;padding:0 3px;margin-right:4px;border-radius:2px` }, b.text);
    box.append(el("span", { "data-legend": `role-${b.role}` }, mark, b.label));
  }
  return box;
}

export function legendMap(legend: Badge[] | undefined | null): Map<string, Badge> {
  return new Map((legend ?? []).map((b) => [b.role, b]));
}

/** Font size (screen px) of the badges beside a circuit node: as readable at any zoom as the
 * node labels. */
export const NODE_BADGE_FONT = 9;

/** Badges in a row to the upper right of a circuit node of radius `r`, relative to its
 * centre (the order and colours of the legend). */
export function nodeBadgeBoxes(r: number, roles: string[], legend: Map<string, Badge>): BadgeBox[] {
  const h = NODE_BADGE_FONT + 2;
  const w = badgeWidth("MM", NODE_BADGE_FONT);
  return roles
    .filter((role) => legend.has(role))
    .map((role, i) => {
      const b = legend.get(role)!;
      return { x: r * 0.7 + i * (w + 1), y: -r * 0.7 - h, w, h, text: b.text, color: b.color };
    });
}
