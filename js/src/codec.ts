// Binary array codec shared with circuitviz/views/_codec.py.
// Python sends {view: bytes, dtype, shape}; ipywidgets turns the bytes into a DataView.

export type DType =
  | "float16"
  | "float32"
  | "float64"
  | "uint8"
  | "int8"
  | "uint16"
  | "int16"
  | "uint32"
  | "int32";

export interface EncodedArray {
  view: DataView | ArrayBuffer | ArrayBufferView;
  dtype: DType;
  shape: number[];
}

export interface NDArray {
  /** Float dtypes (float16 included) decode to Float32Array/Float64Array; ints keep their type. */
  data: Float32Array | Float64Array | Uint8Array | Int8Array | Uint16Array | Int16Array | Uint32Array | Int32Array;
  shape: number[];
}

const BYTES: Record<DType, number> = {
  float16: 2,
  float32: 4,
  float64: 8,
  uint8: 1,
  int8: 1,
  uint16: 2,
  int16: 2,
  uint32: 4,
  int32: 4,
};

export function isEncoded(x: unknown): x is EncodedArray {
  return !!x && typeof x === "object" && "view" in x && "dtype" in x && "shape" in x;
}

export function toBytes(view: DataView | ArrayBuffer | ArrayBufferView): Uint8Array {
  if (view instanceof ArrayBuffer) return new Uint8Array(view);
  return new Uint8Array(view.buffer, view.byteOffset, view.byteLength);
}

export function size(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

let halfTable: Float32Array | null = null;

/** All 65,536 half floats, decoded once: a table lookup beats bit twiddling per value. */
function halfToFloatTable(): Float32Array {
  if (halfTable) return halfTable;
  halfTable = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) halfTable[h] = halfToFloat(h);
  return halfTable;
}

export function halfToFloat(h: number): number {
  const sign = h & 0x8000 ? -1 : 1;
  const exp = (h >> 10) & 0x1f;
  const frac = h & 0x3ff;
  if (exp === 0) return sign * frac * 2 ** -24;
  if (exp === 31) return frac ? NaN : sign * Infinity;
  return sign * (1 + frac / 1024) * 2 ** (exp - 15);
}

export function floatToHalf(value: number): number {
  const f32 = new Float32Array(1);
  const u32 = new Uint32Array(f32.buffer);
  f32[0] = value;
  const x = u32[0];
  const sign = (x >> 16) & 0x8000;
  const exp = ((x >> 23) & 0xff) - 127 + 15;
  const mant = x & 0x7fffff;
  if (((x >> 23) & 0xff) === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  if (exp >= 31) return sign | 0x7c00;
  if (exp <= 0) {
    if (exp < -10) return sign;
    const m = (mant | 0x800000) >> (1 - exp);
    return sign | ((m + 0x1000) >> 13);
  }
  return sign | (exp << 10) | ((mant + 0x1000) >> 13);
}

/** Little-endian bytes (numpy's default) → typed array; copies so alignment never matters. */
export function decode(enc: EncodedArray): NDArray {
  const bytes = toBytes(enc.view);
  const n = size(enc.shape);
  const width = BYTES[enc.dtype];
  if (!width) throw new Error(`Unknown dtype ${enc.dtype}`);
  if (bytes.byteLength !== n * width) {
    throw new Error(`Buffer has ${bytes.byteLength} bytes; shape ${enc.shape} of ${enc.dtype} needs ${n * width}`);
  }
  const copy = bytes.slice().buffer;
  switch (enc.dtype) {
    case "float16": {
      const halves = new Uint16Array(copy);
      const table = halfToFloatTable();
      const out = new Float32Array(n);
      for (let i = 0; i < n; i++) out[i] = table[halves[i]];
      return { data: out, shape: enc.shape };
    }
    case "float32":
      return { data: new Float32Array(copy), shape: enc.shape };
    case "float64":
      return { data: new Float64Array(copy), shape: enc.shape };
    case "uint8":
      return { data: new Uint8Array(copy), shape: enc.shape };
    case "int8":
      return { data: new Int8Array(copy), shape: enc.shape };
    case "uint16":
      return { data: new Uint16Array(copy), shape: enc.shape };
    case "int16":
      return { data: new Int16Array(copy), shape: enc.shape };
    case "uint32":
      return { data: new Uint32Array(copy), shape: enc.shape };
    case "int32":
      return { data: new Int32Array(copy), shape: enc.shape };
  }
}

/** The inverse of decode (used by tests and by the standalone shim). */
export function encode(values: ArrayLike<number>, dtype: DType, shape: number[]): EncodedArray {
  const n = size(shape);
  if (values.length !== n) throw new Error(`${values.length} values do not fill shape ${shape}`);
  let typed: ArrayBufferView;
  if (dtype === "float16") {
    const h = new Uint16Array(n);
    for (let i = 0; i < n; i++) h[i] = floatToHalf(values[i]);
    typed = h;
  } else {
    const Ctor = {
      float32: Float32Array,
      float64: Float64Array,
      uint8: Uint8Array,
      int8: Int8Array,
      uint16: Uint16Array,
      int16: Int16Array,
      uint32: Uint32Array,
      int32: Int32Array,
    }[dtype];
    typed = Ctor.from(values as ArrayLike<number>);
  }
  return { view: new DataView(typed.buffer), dtype, shape };
}

/** Base64 → bytes (standalone HTML embeds buffers as base64). */
export function fromBase64(b64: string): Uint8Array {
  const bin = atob(b64);
  const out = new Uint8Array(bin.length);
  for (let i = 0; i < bin.length; i++) out[i] = bin.charCodeAt(i);
  return out;
}
