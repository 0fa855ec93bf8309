// Colour scales. Diverging: ColorBrewer RdBu (colour-blind safe), centred at 0, negative red.
// Sequential: ColorBrewer Blues for attention weights in [0, 1].

export type RGB = [number, number, number];

const RDBU: RGB[] = [
  [103, 0, 31],
  [178, 24, 43],
  [214, 96, 77],
  [244, 165, 130],
  [253, 219, 199],
  [247, 247, 247],
  [209, 229, 240],
  [146, 197, 222],
  [67, 147, 195],
  [33, 102, 172],
  [5, 48, 97],
];

const BLUES: RGB[] = [
  [247, 251, 255],
  [222, 235, 247],
  [198, 219, 239],
  [158, 202, 225],
  [107, 174, 214],
  [66, 146, 198],
  [33, 113, 181],
  [8, 81, 156],
  [8, 48, 107],
];

/** Node colours by type (Okabe–Ito palette, colour-blind safe). */
export const NODE_COLORS: Record<string, string> = {
  embed: "#999999",
  head: "#E69F00",
  mlp: "#009E73",
  logits: "#CC79A7",
};

export const NEGATIVE = "rgb(178,24,43)";
export const POSITIVE = "rgb(33,102,172)";

/** Piecewise-linear interpolation through evenly spaced stops; t is clamped to [0, 1]. */
export function interpolate(stops: RGB[], t: number): RGB {
  if (!Number.isFinite(t)) return [200, 200, 200];
  const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const i = Math.min(stops.length - 2, Math.floor(x));
  const f = x - i;
  const a = stops[i];
  const b = stops[i + 1];
  return [
    Math.round(a[0] + (b[0] - a[0]) * f),
    Math.round(a[1] + (b[1] - a[1]) * f),
    Math.round(a[2] + (b[2] - a[2]) * f),
  ];
}

/** Diverging colour of v on a scale symmetric about 0: white at 0, red below, blue above. */
export function diverging(v: number, maxAbs: number): RGB {
  const m = maxAbs > 0 ? maxAbs : 1;
  return interpolate(RDBU, 0.5 + v / (2 * m));
}

/** Sequential colour of v in [lo, hi]: white at lo, dark blue at hi. */
export function sequential(v: number, lo = 0, hi = 1): RGB {
  const span = hi - lo || 1;
  return interpolate(BLUES, (v - lo) / span);
}

export function css(c: RGB, alpha = 1): string {
  return alpha >= 1 ? `rgb(${c[0]},${c[1]},${c[2]})` : `rgba(${c[0]},${c[1]},${c[2]},${alpha})`;
}

/** Black or white text, whichever reads better on background c (WCAG relative luminance). */
export function textOn(c: RGB): string {
  const lin = c.map((v) => {
    const s = v / 255;
    return s <= 0.03928 ? s / 12.92 : ((s + 0.055) / 1.055) ** 2.4;
  });
  const lum = 0.2126 * lin[0] + 0.7152 * lin[1] + 0.0722 * lin[2];
  return lum > 0.35 ? "#000" : "#fff";
}

/** The largest |v| over finite values (0 if none): the half-range of a diverging scale. */
export function maxAbs(values: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < values.length; i++) {
    const a = Math.abs(values[i]);
    if (Number.isFinite(a) && a > m) m = a;
  }
  return m;
}

export type Scale = (v: number) => RGB;

export function divergingScale(max: number): Scale {
  return (v) => diverging(v, max);
}

export function sequentialScale(lo = 0, hi = 1): Scale {
  return (v) => sequential(v, lo, hi);
}
