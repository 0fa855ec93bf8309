"""Activation patching, exact and batched.

TransformerLens runs one full forward pass per patched component. Here every condition of a
map (one per layer × head, say) is a row of one batch, and each row joins the batch only at
the layer it patches: earlier layers cannot differ from the unpatched run, so they run once,
for a single base row. A hook on ``blocks.{L}.hook_resid_pre`` appends copies of the base
row for the conditions of layer ``L`` ("growing the batch"); the target hook then writes the
source activation into those rows. Only the final position reaches the unembedding.

A batch of prompts shares the pass: rows are condition-major (every condition holds one row
per prompt), and the model's per-prompt attention mask and rotary tables — built once for
the prompt batch — are tiled onto the grown batch by a pre-hook on each attention module
(:func:`._hooks.tile_prompt_kwargs`). Prompts share a pass while the whole map fits beside
them (see :func:`pass_shape`: on a CPU, bigger passes cost more and gain nothing).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from . import _hooks, backends
from ._metrics import Metric, MetricFn, bind_metric, check_metric
from ._models import model_name
from ._pairs import InputError, PromptPairs, Tokens, tokenize
from ._results import PatchResult, pos_label

Direction = Literal["denoise", "noise"]


@dataclass(frozen=True)
class Target:
    """Where a map patches: the hook, the axes of the map, and how one cell is written."""

    hook: str  # formatted with the layer
    axes: tuple[str, ...]
    cell: str  # "pos" | "head" | "head_pos" | "pattern"


TARGETS: dict[str, Target] = {
    "resid_pre": Target("blocks.{}.hook_resid_pre", ("layer", "pos"), "pos"),
    "attn_out": Target("blocks.{}.hook_attn_out", ("layer", "pos"), "pos"),
    "mlp_out": Target("blocks.{}.hook_mlp_out", ("layer", "pos"), "pos"),
    "heads": Target("blocks.{}.attn.hook_z", ("layer", "head"), "head"),
    "heads_by_pos": Target("blocks.{}.attn.hook_z", ("layer", "pos", "head"), "head_pos"),
    "q": Target("blocks.{}.attn.hook_q", ("layer", "head"), "head"),
    "k": Target("blocks.{}.attn.hook_k", ("layer", "kv_head"), "head"),
    "v": Target("blocks.{}.attn.hook_v", ("layer", "kv_head"), "head"),
    "pattern": Target("blocks.{}.attn.hook_pattern", ("layer", "head"), "pattern"),
}


def get_target(over: str) -> Target:
    try:
        return TARGETS[over]
    except (KeyError, TypeError):
        raise InputError(f"Unknown over={over!r}: use one of {sorted(TARGETS)}.") from None


def axis_sizes(model: TransformerBridge, n_pos: int) -> dict[str, int]:
    cfg = model.cfg
    return {
        "layer": cfg.n_layers,
        "pos": n_pos,
        "head": cfg.n_heads,
        "kv_head": getattr(cfg, "n_key_value_heads", None) or cfg.n_heads,
    }


def axis_labels(
    model: TransformerBridge, axes: Iterable[str], tokens: Tokens
) -> dict[str, list[str]]:
    sizes = axis_sizes(model, tokens.n_pos)
    make = {
        "layer": lambda i: f"L{i}",
        "head": lambda i: f"H{i}",
        "kv_head": lambda i: f"KV{i}",
        "pos": lambda i: pos_label(i, tokens.str_tokens[i]),
    }
    return {a: [make[a](i) for i in range(sizes[a])] for a in axes}


def write_cell(act: torch.Tensor, rows: slice, cell: str, idx: tuple[int, ...], src: torch.Tensor):
    """Write the source activation of one cell into ``act[rows]``. ``idx`` excludes the layer,
    in the target's axis order; ``src`` has one row per patched row (or broadcasts)."""
    if cell == "pos":
        (pos,) = idx
        act[rows, pos] = src[:, pos]
    elif cell == "head":
        (head,) = idx
        act[rows, :, head] = src[:, :, head]
    elif cell == "head_pos":
        pos, head = idx
        act[rows, pos, head] = src[:, pos, head]
    elif cell == "pattern":
        (head,) = idx
        act[rows, head] = src[:, head]
    else:  # pragma: no cover - TARGETS is closed
        raise AssertionError(cell)


@dataclass
class Baselines:
    """What every analysis of one batch needs first: tokens, unpatched final logits, metric."""

    tokens: Tokens
    clean_logits: torch.Tensor  # [batch, d_vocab]
    corrupted_logits: torch.Tensor
    metric: Metric
    clean: float
    corrupted: float


def final_logits(
    model: TransformerBridge,
    tokens: torch.Tensor,
    fwd: _hooks.Hooks = (),
    *,
    attention_mask: torch.Tensor | None = None,
    pre: _hooks.PreHooks = (),
) -> torch.Tensor:
    """Final-position logits ``[batch, d_vocab]`` of one hooked forward pass (with left
    padding, the final position is every prompt's own last token)."""
    hooks = [*fwd, (_hooks.LAST_POSITION_HOOK, _hooks.last_position_only)]
    return _hooks.run(model, tokens, hooks, attention_mask=attention_mask, pre=pre)[:, -1]


def cache_acts(
    model: TransformerBridge,
    tokens: torch.Tensor,
    names: Iterable[str],
    attention_mask: torch.Tensor | None = None,
):
    """Final logits and the named activations of one forward pass."""
    store: dict[str, torch.Tensor] = {}

    def keep(name: str):
        def hook(x: torch.Tensor, hook: object) -> None:
            store[name] = x.detach().clone()

        return hook

    hooks = [(n, keep(n)) for n in dict.fromkeys(names)]
    return final_logits(model, tokens, hooks, attention_mask=attention_mask), store


def baselines(
    model: TransformerBridge,
    pairs: PromptPairs,
    metric: str | MetricFn,
    cache: dict[str, Iterable[str]] | None = None,
) -> tuple[Baselines, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Run clean and corrupted once each, caching the activations named in ``cache``.

    Pairs of mixed lengths are left-padded (``tokens.attention_mask``): every later pass of
    the analysis must pass that mask on."""
    tokens = tokenize(model, pairs, pad=True)
    cache = cache or {}
    mask = tokens.attention_mask
    with torch.inference_mode():
        clean_logits, clean_acts = cache_acts(model, tokens.clean, cache.get("clean", ()), mask)
        corr_logits, corr_acts = cache_acts(
            model, tokens.corrupted, cache.get("corrupted", ()), mask
        )
        bound = bind_metric(metric, tokens, clean_logits, corr_logits)
        clean, corrupted = bound(clean_logits), bound(corr_logits)
    return (
        Baselines(tokens, clean_logits, corr_logits, bound, clean, corrupted),
        clean_acts,
        corr_acts,
    )


def source_run(
    model: TransformerBridge,
    pairs: PromptPairs,
    over: str,
    direction: str,
    metric: str | MetricFn,
):
    """Validate a map request and run the source prompts once, caching the target's
    activations at every layer: clean for "denoise", corrupted for "noise".

    Returns ``(target, tokens, hook names, tokens of the run to patch, source final logits,
    source activations by hook name)``.
    """
    target = get_target(over)
    if not isinstance(direction, str) or direction not in ("denoise", "noise"):
        raise InputError(f"Unknown direction={direction!r}: use 'denoise' or 'noise'.")
    check_metric(metric)
    tokens = tokenize(model, pairs, pad=True)
    names = [target.hook.format(layer) for layer in range(model.cfg.n_layers)]
    src_tokens, run_tokens = (
        (tokens.clean, tokens.corrupted)
        if direction == "denoise"
        else (tokens.corrupted, tokens.clean)
    )
    with torch.inference_mode():
        src_logits, src_acts = cache_acts(model, src_tokens, names, tokens.attention_mask)
    return target, tokens, names, run_tokens, src_logits, src_acts


def _row_bytes(model: TransformerBridge, n_pos: int) -> int:
    """Rough peak bytes one row holds inside a block (activations freed layer by layer)."""
    cfg = model.cfg
    d_mlp = getattr(cfg, "d_mlp", None) or 4 * cfg.d_model
    per_pos = 10 * cfg.d_model + 4 * d_mlp + 4 * cfg.n_heads * n_pos
    elem = torch.finfo(cfg.dtype).bits // 8 if cfg.dtype.is_floating_point else 4
    return n_pos * per_pos * elem + 4 * cfg.d_vocab


def _chunks(
    conds: list[tuple[int, ...]], size: int
) -> list[list[tuple[int, int, tuple[int, ...]]]]:
    """Split conditions (sorted by layer) into chunks of ``size``, keeping their indices."""
    order = sorted(range(len(conds)), key=lambda i: conds[i][0])
    items = [(i, conds[i][0], conds[i][1:]) for i in order]
    return [items[s : s + size] for s in range(0, len(items), size)]


def growing_pass(
    model: TransformerBridge,
    tokens: torch.Tensor,
    chunk: list[tuple[int, int, tuple[int, ...]]],
    hook_name: Callable[[int], str],
    cell: str,
    source: Callable[[int], torch.Tensor],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One forward pass of the prompt batch ``tokens`` ``[b, pos]`` that patches one
    condition per extra group of ``b`` rows. Returns final logits
    ``[1 + len(chunk), b, d_vocab]``: group 0 is the unpatched run and group ``1 + j`` is
    condition ``chunk[j]``. ``source(layer)`` gives the source activation ``[b, ...]``.

    Rows are condition-major (row ``g·b + i`` is prompt ``i`` of group ``g``), so a group is
    a contiguous slice and the model's per-prompt mask and rotary tables tile onto it."""
    b = tokens.shape[0]
    by_layer: dict[int, list[tuple[int, tuple[int, ...]]]] = {}
    for j, (_, layer, idx) in enumerate(chunk):
        by_layer.setdefault(layer, []).append((1 + j, idx))
    fns: dict[str, list] = {}

    def grow(n: int):
        def fn(x: torch.Tensor) -> torch.Tensor:
            return torch.cat([x, x[:b].repeat(n, *([1] * (x.ndim - 1)))])

        return fn

    def patch(layer: int, groups: list[tuple[int, tuple[int, ...]]]):
        src = source(layer)

        def fn(x: torch.Tensor) -> torch.Tensor:
            for group, idx in groups:
                write_cell(x, slice(group * b, (group + 1) * b), cell, idx, src)
            return x

        return fn

    for layer, groups in by_layer.items():
        fns.setdefault(f"blocks.{layer}.hook_resid_pre", []).append(grow(len(groups)))
        fns.setdefault(hook_name(layer), []).append(patch(layer, groups))

    def compose(steps):
        def hook(x: torch.Tensor, hook: object) -> torch.Tensor:
            for step in steps:
                x = step(x)
            return x

        return hook

    fwd = [(name, compose(steps)) for name, steps in fns.items()]
    # A batch of one broadcasts against the model's mask; more prompts need it tiled.
    pre = (
        [] if b == 1 else [(m, _hooks.tile_prompt_kwargs) for m in _hooks.attention_modules(model)]
    )
    logits = final_logits(model, tokens, fwd, attention_mask=attention_mask, pre=pre)
    return logits.reshape(1 + len(chunk), b, -1)


#: Rows a pass may hold on a CPU before prompts stop sharing it. A CPU gains nothing from
#: bigger passes and loses its caches: on a 2-core EPYC the demo's 8-pair heads map took
#: 10 % more CPU time in passes of 813 rows and 25 % more in 1,024-row passes than one
#: prompt (271 rows) per pass. On a GPU, where each pass costs launches, prompts share.
CPU_PASS_ROWS = 300


def pass_shape(
    model: TransformerBridge,
    tokens: Tokens,
    memory_budget: float,
    max_rows: int,
    n_conditions: int,
) -> tuple[int, int]:
    """``(prompts per pass, conditions per pass)`` within ``memory_budget`` and ``max_rows``.

    Prompts share a pass only while the whole map fits beside them: splitting the map's
    conditions into layer chunks to make room for more prompts saves no work (each
    condition's rows run the same layers either way) and on a CPU made the 8-pair demo map
    ~25 % slower than one prompt per pass. When the map does not fit even for one prompt,
    it is one prompt per pass, chunked, as before. On a CPU a pass holds at most
    :data:`CPU_PASS_ROWS` rows (or one prompt's whole map)."""
    rows_fit = max(1, min(max_rows, int(memory_budget // _row_bytes(model, tokens.n_pos))))
    if not str(model.cfg.device).startswith("cuda"):
        rows_fit = min(rows_fit, max(CPU_PASS_ROWS, 1 + n_conditions))
    prompts = min(tokens.batch, rows_fit // (1 + n_conditions))
    if prompts >= 1:
        return prompts, n_conditions
    return 1, max(1, rows_fit - 1)


def check_budget(memory_budget: object, max_rows: object) -> None:
    """Both must be positive: bytes one pass may use, and rows one pass may hold."""
    if isinstance(memory_budget, bool) or not isinstance(memory_budget, numbers.Real):
        ok = False
    else:
        ok = memory_budget > 0 and math.isfinite(memory_budget)
    if not ok:
        raise InputError(
            f"memory_budget={memory_budget!r} must be a positive number of bytes, e.g. 2**30."
        )
    if isinstance(max_rows, bool) or not isinstance(max_rows, numbers.Integral) or max_rows < 1:
        raise InputError(f"max_rows={max_rows!r} must be a positive integer, e.g. 1024.")


def patch(
    model: TransformerBridge,
    pairs: PromptPairs,
    *,
    over: str = "heads",
    direction: Direction = "denoise",
    metric: str | MetricFn = "logit_diff",
    memory_budget: float = 2**30,
    max_rows: int = 1024,
    progress: bool = True,
) -> PatchResult:
    """Exact activation patching of every component of one kind, batched.

    Args:
        over: ``"resid_pre"``, ``"attn_out"``, ``"mlp_out"`` (layer × pos), ``"heads"``
            (layer × head, all positions), ``"heads_by_pos"`` (layer × pos × head), or the
            heads' ``"q"``, ``"k"``, ``"v"`` (layer × kv_head for GQA keys/values) and
            ``"pattern"`` (layer × head).
        direction: ``"denoise"`` runs the corrupted prompts and patches in clean activations
            (TransformerLens's convention); ``"noise"`` runs clean and patches in corrupted.
        metric: ``"logit_diff"``, ``"normalized_logit_diff"``, ``"answer_prob"``, ``"kl"``,
            or a callable of final-position logits ``[batch, d_vocab]``.
        memory_budget: bytes one batched pass may use; bigger maps are chunked to fit.

    Pairs may differ in length (each corrupted prompt as long as its clean one): they are
    left-padded and masked, so the metric reads every prompt's own last token, and a
    position ``p`` of the map counts from the left of the longest prompt (whose tokens label
    it); a shorter prompt's padding there patches nothing.

    Returns a :class:`PatchResult` equal to ``transformer_lens.patching``'s for the same
    target (with the metric averaged over the batch).
    """
    if (seam := backends.route(model, "patch")) is not None:
        return seam(
            model,
            pairs,
            over=over,
            direction=direction,
            metric=metric,
            memory_budget=memory_budget,
            max_rows=max_rows,
            progress=progress,
        )
    check_budget(memory_budget, max_rows)
    target, tokens, _names, run_tokens, src_logits, sources = source_run(
        model, pairs, over, direction, metric
    )
    sizes = axis_sizes(model, tokens.n_pos)
    shape = tuple(sizes[a] for a in target.axes)
    grid = torch.cartesian_prod(*[torch.arange(n) for n in shape]).reshape(-1, len(shape))
    conds = [tuple(int(i) for i in idx) for idx in grid.tolist()]
    per_pass, chunk_size = pass_shape(model, tokens, memory_budget, max_rows, len(conds))
    chunks = _chunks(conds, chunk_size)
    groups = [slice(s, s + per_pass) for s in range(0, tokens.batch, per_pass)]
    mask = tokens.attention_mask
    values = torch.empty(len(conds))
    n_forward = 1
    metric_fn: Metric | None = None
    bar = tqdm(
        total=len(chunks) * len(groups),
        desc=f"patching {over}",
        disable=not progress,
        leave=False,
    )
    try:
        with torch.inference_mode():
            for chunk in chunks:
                logits = []
                for rows in groups:
                    logits.append(
                        growing_pass(
                            model,
                            run_tokens[rows],
                            chunk,
                            lambda layer: target.hook.format(layer),
                            target.cell,
                            lambda layer, rows=rows: sources[target.hook.format(layer)][rows],
                            None if mask is None else mask[rows],
                        )
                    )
                    n_forward += 1
                    bar.update()
                stacked = torch.cat(logits, dim=1)  # [1 + conditions, batch, d_vocab]
                if metric_fn is None:
                    # Group 0 is the unpatched run: the second baseline comes for free.
                    run_logits = stacked[0]
                    clean_logits, corr_logits = (
                        (src_logits, run_logits)
                        if direction == "denoise"
                        else (run_logits, src_logits)
                    )
                    metric_fn = bind_metric(metric, tokens, clean_logits, corr_logits)
                    clean, corrupted = metric_fn(clean_logits), metric_fn(corr_logits)
                for j, (i, _, _) in enumerate(chunk):
                    values[i] = metric_fn(stacked[1 + j])
    finally:
        bar.close()
    assert metric_fn is not None
    return patch_result(
        model,
        tokens,
        over,
        values.reshape(shape),
        direction=direction,
        method="activation",
        metric=metric_fn,
        clean=clean,
        corrupted=corrupted,
        extra={
            "forward_passes": n_forward,
            "chunk_size": chunk_size,
            "prompts_per_pass": per_pass,
        },
    )


def patch_result(
    model: TransformerBridge,
    tokens: Tokens,
    over: str,
    values: torch.Tensor,
    *,
    direction: Direction,
    method: str,
    metric: Metric,
    clean: float,
    corrupted: float,
    extra: dict,
    axes: tuple[str, ...] | None = None,
) -> PatchResult:
    """The map of ``over`` as a :class:`PatchResult`, labelled with its axes and the tokens
    (``axes`` for a target outside :data:`TARGETS`, such as path patching's)."""
    axes = axes or TARGETS[over].axes
    return PatchResult(
        values=values,
        axes=axes,
        labels=axis_labels(model, axes, tokens),
        target=over,
        direction=direction,
        method=method,
        metric=metric.name,
        clean=clean,
        corrupted=corrupted,
        tokens=tokens.str_tokens,
        model_name=model_name(model),
        extra=extra,
        columns=tokens.columns,
    )
