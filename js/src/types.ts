// TypeScript mirrors of each view's synced traits (Python: circuitviz/views/_*.py).
import type { Badge } from "./badges";
import type { EncodedArray } from "./codec";
import type { ColumnInfo } from "./padding";
import type { CellRule } from "./patchmap";

/** The part of anywidget's model interface the views use (the standalone shim implements it). */
export interface AnyModel<T> {
  get<K extends keyof T>(key: K): T[K];
  set<K extends keyof T>(key: K, value: T[K]): void;
  on(event: string, callback: (...args: any[]) => void): void;
  off(event?: string | null, callback?: ((...args: any[]) => void) | null): void;
  send(content: unknown, callbacks?: unknown, buffers?: ArrayBuffer[] | ArrayBufferView[]): void;
  save_changes(): void;
}

export interface TopTokens {
  tokens: string[];
  probs: number[];
}

export interface AblationResultDict {
  components?: string[];
  mode?: string;
  metric?: string;
  clean?: number;
  corrupted?: number;
  /** null when nothing is ablated. */
  ablated?: number | null;
  /** ablated − clean (null when nothing is ablated). */
  delta?: number | null;
  /** delta / (clean − corrupted); null when nothing is ablated or the gap is degenerate. */
  gap_fraction?: number | null;
  per_prompt?: { clean: number[]; corrupted: number[]; ablated: number[] | null };
  top_before?: TopTokens;
  top_after?: TopTokens | null;
}

/** The last click's job (views/_base.py AblationView.job). */
export interface JobInfo {
  /** "" | "submitted" | "queued" | "running" | "done" | "error" | "cancelled" */
  state?: string;
  detail?: string;
  request?: number | string | null;
  /** Kernel-side seconds since the click reached it. */
  seconds?: number | null;
  /** An NDIF job (which the page can cancel). */
  remote?: boolean;
}

export interface AblationTraits {
  job?: JobInfo;
  can_ablate: boolean;
  ablated: string[];
  mode: string;
  metric: string;
  result: AblationResultDict;
  error: string;
  selected: string;
  /** Set only in a standalone HTML page (no kernel): the notice saying ablation needs a
   * kernel; ablation controls are left out. */
  standalone?: string;
}

export interface AttentionTraits {
  tokens: string[];
  n_layers: number;
  n_heads: number;
  model_name: string;
  /** uint8 [layer, head, s, s]: max-pooled patterns × 255. */
  thumbnails: EncodedArray;
  /** float32 [layer, head] per role. */
  scores: Record<string, EncodedArray>;
  show_scores: string;
  /** Hide the first key column (BOS) of the focused head's pattern. */
  hide_bos: boolean;
  /** "linear" | "sqrt" | "log": colour scale of the focused head's pattern. */
  color_scale: string;
  /** The log scale's smallest resolved attention (kernel constant). */
  log_floor: number;
  /** Head id → its roles (circuitviz.head_roles), decided in the kernel. */
  roles: Record<string, string[]>;
  /** Badge text, colour and legend label of each role present. */
  role_badges: Badge[];
  selected: string;
  error: string;
}

export interface PatchMap {
  values: EncodedArray;
  axes: string[];
  labels: Record<string, string[]>;
  target: string;
  direction: string;
  method: string;
  metric: string;
  clean: number;
  corrupted: number;
  baseline: number;
  baseline_label: string;
  /** Colour-bar title per colour mode ("effect", "value"), naming the baseline and its value. */
  color_labels: Record<string, string>;
  /** Effects at most this big are float32 noise, shown as 0. */
  zero_tol: number;
  /** Each cell's id and what a click on it ablates (templates, from the kernel). */
  cells: CellRule;
  model: string;
  /** Mixed-length prompts: the position columns with padding in some prompts (engine/_columns.py). */
  columns?: ColumnInfo | null;
}

export interface PatchingTraits extends AblationTraits {
  map: PatchMap;
  /** "effect" (value − baseline) or "value". */
  color: string;
}

export interface GraphNode {
  id: string;
  type: "embed" | "head" | "mlp" | "logits" | string;
  layer: number;
  head?: number | null;
  pos?: number | null;
  label?: string;
  score?: number | null;
  /** What a click ablates (decided in the kernel: the node's head/MLP, at its position on
   * per-position graphs), or null for embeddings and logits. */
  ablates?: string | null;
  /** Feature graphs: a feature node's SAE latent index, and its SAE's hook (error nodes too). */
  feature?: number;
  hook?: string;
  /** Feature graphs: its SAE's site in its block ("" resid_post, "pre", "mid", "attn",
   * "mlp", "tc": engine/_sites.py); absent on other nodes. */
  site?: string;
  /** Feature graphs: an SAE node's column and row within its cell, decided by the kernel
   * (engine/graph/_placement.py); absent on other nodes. */
  slot?: number;
  tier?: number;
  /** Where the kernel's layout puts it: head slots from the left, rows from the bottom. */
  x?: number;
  y?: number;
}

export interface GraphEdges {
  /** uint16/uint32 node indices, float32 weights, uint8 index into `inputs`. */
  source: EncodedArray;
  target: EncodedArray;
  weight: EncodedArray;
  input: EncodedArray;
  inputs: string[];
}

export interface GraphPayload {
  model?: string;
  method?: string;
  metric?: string;
  per_position?: boolean;
  n_layers: number;
  n_heads: number;
  tokens?: string[];
  /** Per-position graphs of mixed-length prompts: columns with padding in some prompts. */
  columns?: ColumnInfo | null;
  clean?: number | null;
  corrupted?: number | null;
  nodes: GraphNode[];
  edges: GraphEdges | null;
  /** Head/MLP nodes and nonzero edges of the whole graph (the kernel keeps it). */
  totals?: { nodes: number; edges: number };
  /** Edges shown (a GQA k/v edge is drawn into each shown head of its group, so there can
   * be more drawn lines). */
  n_edges?: number;
  /** Why nothing is shown, when nothing is. */
  notice?: string;
  /** Head id (no ":P") → its roles (circuitviz.head_roles), drawn as badges on its nodes. */
  roles?: Record<string, string[]>;
  /** Badge text, colour and legend label of each role in `roles`. */
  role_badges?: Badge[];
  /** Feature graphs: the SAEs whose latents and error terms are nodes. */
  saes?: { hook: string; d_sae: number; name?: string }[];
  /** Where things go, decided by the kernel (engine/graph/_placement.py): units of head slots
   * across and rows up; each node carries its own x and y. */
  layout?: GraphLayout;
}

export interface GraphLayout {
  width: number;
  height: number;
  /** Per-position graphs: each token band's centre x and width. */
  bands: { pos: number; x: number; w: number }[];
  /** One per drawn row, bottom-up: its layer (-1 embed, n_layers logits) and y. */
  rows: { layer: number; y: number }[];
  /** The closest two levels whose nodes can share a column, in rows. */
  min_gap: number;
}

export interface CircuitTraits extends AblationTraits {
  /** The shown subgraph only: the kernel prunes (circuitviz/engine/graph/_select.py). */
  graph: GraphPayload;
  searchable: string[];
  top_nodes: number;
  top_edges: number;
  min_rel_weight: number;
  edge_inputs: string[];
  edge_sign: string;
  pinned: string[];
  /** Feature graphs add errors_ablated, complement, complement_errors_ablated (views/_feature_nodes.py). */
  faithfulness: { circuit?: number | null; ablated?: number | null; nodes?: string[]; ablated_nodes?: string[]; errors_ablated?: number; complement?: number; complement_errors_ablated?: number };
  has_faithfulness: boolean;
  /** [source, target, input] of the clicked edge, or []. */
  selected_edge: string[];
  /** The kernel's facts about the selected edge (views/_circuit_mib.py). */
  edge_info: EdgeInfo;
  /** The MIB faithfulness curve, once asked (views/_circuit_mib.py). */
  mib: MIBCurve;
}

export interface EdgeInfo {
  source?: string;
  target?: string;
  input?: string;
  kv_head?: number | null;
  weight?: number;
  method?: string | null;
  metric?: string | null;
  can_patch?: boolean;
  exact?: number;
}

export interface MIBCurve {
  fraction?: number[];
  faithfulness?: number[];
  n_edges?: number[];
  cpr?: number;
  cmd?: number;
  total?: number;
  method?: string;
  current?: { fraction: number | null; n_edges: number; faithfulness: number | null };
}

export interface LogitLensPayload {
  /** float32 [row, pos]: the answer's probability (the top token's without an answer). */
  colour: EncodedArray;
  colour_label: string;
  /** [row][pos][k] token strings (drawn as text only). */
  top_tokens: string[][][];
  /** [row][pos]: the top token as written in its cell (whitespace made visible in Python). */
  cell_text: string[][];
  /** float32 [row, pos, k]. */
  top_probs: EncodedArray;
  answer: string | null;
  /** int32 [row, pos] (0 = top token), or null without an answer. */
  answer_rank: EncodedArray | null;
  layers: string[];
  /** Component id of each row; a cell's id adds ":P{pos}". */
  row_ids: string[];
  tokens: string[];
  model: string;
}

export interface LogitLensTraits {
  lens: LogitLensPayload;
  selected: string;
  error: string;
}

/** One continuation of SteeringView (circuitviz/views/_steering.py). */
export interface SteeringSide {
  text: string;
  refused: boolean;
  /** Refusal log-odds at the first generated token; null when no refusal word is one token. */
  score: number | null;
}

export interface SteeringTraits {
  prompt: string;
  coef: number;
  mode: string;
  coef_max: number;
  layer: number;
  before: SteeringSide | Record<string, never>;
  after: SteeringSide | Record<string, never>;
  busy: boolean;
  error: string;
}

/** One top snippet of a feature card (circuitviz/engine/features/_explorer.py: card). */
export interface FeatureSnippet {
  tokens: string[];
  /** Index of the peak token in ``tokens``. */
  peak: number;
  value: number;
}

/** FeatureView.card: everything one latent's card shows, decided in the kernel. */
export interface FeatureCard {
  id: string;
  hook: string;
  index: number;
  site: string;
  label: string;
  auto_label: string;
  /** Its activation on each prompt token. */
  acts: number[];
  /** The colour scale's top: the largest activation on the text, BOS left out. */
  acts_max: number;
  promoted: [string, number][];
  suppressed: [string, number][];
  snippets: FeatureSnippet[];
  /** Over the corpus: log-spaced bin edges, non-zero counts per bin, inactive tokens. */
  hist: { edges: number[]; counts: number[]; zeros: number; n_tokens: number } | null;
  frequency: number | null;
  /** Whether corpus statistics exist for its SAE. */
  stats: boolean;
}

export interface FeatureSearchResult {
  id: string;
  hook: string;
  index: number;
  site: string;
  label: string;
  score: number;
  why: string;
}

export interface FeatureTraits {
  tokens: string[];
  sites: { hook: string; name: string; d_sae: number; stats: boolean }[];
  /** Per hook: int32/float32 [pos, k] top latents and values; max = colour scale's top. */
  top: Record<string, { index: EncodedArray; value: EncodedArray; max: number }>;
  chip_labels: Record<string, string>;
  selected_token: number;
  feature: string;
  card: FeatureCard | Record<string, never>;
  label_edits: [string, string][];
  search_results: { query: string; by: string; results: FeatureSearchResult[] } | Record<string, never>;
  model_name: string;
  selected: string;
  error: string;
}
