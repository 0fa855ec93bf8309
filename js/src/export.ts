// SVG/PNG export. Canvas views rebuild a vector SVG from their data; PNG rasterises that SVG.
import { download, el } from "./dom";

const SVG_NS = "http://www.w3.org/2000/svg";

export function svgEl<K extends keyof SVGElementTagNameMap>(
  tag: K,
  attrs: Record<string, string | number> = {},
  text?: string,
): SVGElementTagNameMap[K] {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text; // text node: markup in tokens stays literal
  return node;
}

export function svgRoot(width: number, height: number): SVGSVGElement {
  const svg = svgEl("svg", {
    xmlns: SVG_NS,
    width,
    height,
    viewBox: `0 0 ${width} ${height}`,
    "font-family": "system-ui, sans-serif",
    "font-size": 11,
  });
  svg.append(svgEl("rect", { x: 0, y: 0, width, height, fill: "#fff" }));
  return svg;
}

export function serialize(svg: SVGSVGElement): string {
  return '<?xml version="1.0" encoding="UTF-8"?>\n' + new XMLSerializer().serializeToString(svg);
}

export function svgBlob(svg: SVGSVGElement): Blob {
  return new Blob([serialize(svg)], { type: "image/svg+xml" });
}

/** SVG → <img> → canvas → PNG at 2× for crisp figures. */
export async function svgToPng(svg: SVGSVGElement, scale = 2): Promise<Blob> {
  const w = Number(svg.getAttribute("width"));
  const h = Number(svg.getAttribute("height"));
  const url = URL.createObjectURL(svgBlob(svg));
  try {
    const img = new Image();
    await new Promise<void>((resolve, reject) => {
      img.onload = () => resolve();
      img.onerror = () => reject(new Error("could not rasterise the SVG"));
      img.src = url;
    });
    const canvas = el("canvas", { width: Math.ceil(w * scale), height: Math.ceil(h * scale) });
    const ctx = canvas.getContext("2d")!;
    ctx.scale(scale, scale);
    ctx.drawImage(img, 0, 0, w, h);
    return await new Promise<Blob>((resolve, reject) =>
      canvas.toBlob((b) => (b ? resolve(b) : reject(new Error("toBlob failed"))), "image/png"),
    );
  } finally {
    URL.revokeObjectURL(url);
  }
}

/** Wire the two export buttons of a view to a function that builds its SVG. */
export function exportButtons(
  name: string,
  build: () => SVGSVGElement,
  onError: (e: unknown) => void,
): HTMLElement[] {
  const svgBtn = el("button", { class: "cv-button", "data-role": "export-svg", type: "button", title: "Download as SVG (vector)" }, "SVG");
  const pngBtn = el("button", { class: "cv-button", "data-role": "export-png", type: "button", title: "Download as PNG" }, "PNG");
  svgBtn.addEventListener("click", () => {
    try {
      download(svgBlob(build()), `${name}.svg`);
    } catch (e) {
      onError(e);
    }
  });
  pngBtn.addEventListener("click", async () => {
    try {
      download(await svgToPng(build()), `${name}.png`);
    } catch (e) {
      onError(e);
    }
  });
  return [svgBtn, pngBtn];
}
