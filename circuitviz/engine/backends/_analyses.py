"""The analyses ported to the seam: ``patch``, ``ablate``, ``attention`` and
``attribution_patch`` as requests (the graph's, ``circuit`` and circuits' faithfulness, are
in :mod:`._graph`).

Each builds its runs (:class:`._base.Run`) and hands them to the model's backend in one
request, so on NDIF an analysis is one job. They give the same numbers as the bridge's own
implementations (which stay the bridge's fast path) — see ``tests/test_backends.py``.
"""

from __future__ import annotations

import dataclasses
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import torch

from .._components import check_range
from .._metrics import MetricFn, bind_metric, check_metric
from .._pairs import InputError, PromptPairs, Tokens, check_pairs, tokenize
from .._results import AblationResult, AttentionResult, PatchResult, TopTokens
from ._base import Output, Run, backend_of, ported

#: The site each patching target writes.
TARGET_SITES = {
    "resid_pre": "resid_pre",
    "attn_out": "attn_out",
    "mlp_out": "mlp_out",
    "heads": "z",
    "heads_by_pos": "z",
    "q": "q",
    "k": "k",
    "v": "v",
    "pattern": "pattern",
}


def _reduced(metric: str | MetricFn, tokens: Tokens) -> tuple[dict, Tokens]:
    """The readout a metric needs and the tokens to bind it with. Built-in metrics but KL
    need only the answer and wrong-answer logits (plus one log-sum-exp of the rest, so
    probabilities stay exact): the answers are renumbered into that short row."""
    if callable(metric) or metric == "kl":
        return {"full": True}, tokens
    ids = torch.unique(torch.cat([tokens.answers, tokens.wrong_answers]).cpu())
    where = {int(t): i for i, t in enumerate(ids.tolist())}

    def renumber(t: torch.Tensor) -> torch.Tensor:
        return torch.tensor([where[int(x)] for x in t.tolist()])

    short = dataclasses.replace(
        tokens, answers=renumber(tokens.answers), wrong_answers=renumber(tokens.wrong_answers)
    )
    return {"ids": ids}, short


def _logits(out: Output) -> torch.Tensor:
    return out.readout["sel"] if "sel" in out.readout else out.readout["full"]


def patch(
    model: Any,
    pairs: PromptPairs,
    *,
    over: str = "heads",
    direction: str = "denoise",
    metric: str | MetricFn = "logit_diff",
    memory_budget: float = 2**30,
    max_rows: int = 1024,
    progress: bool = True,
) -> PatchResult:
    """Exact activation patching as one request: the source run keeps the target site at
    every layer, and every condition is a block of rows of the patched runs (``max_rows``
    rows per pass)."""
    from .._patching import _row_bytes, axis_sizes, check_budget, get_target, patch_result

    check_budget(memory_budget, max_rows)
    target = get_target(over)
    if not isinstance(direction, str) or direction not in ("denoise", "noise"):
        raise InputError(f"Unknown direction={direction!r}: use 'denoise' or 'noise'.")
    check_metric(metric)
    backend = backend_of(model)
    site = TARGET_SITES[over]
    if site not in backend.sites():
        raise InputError(
            f"over={over!r} writes the attention {site}, which the {backend.name} backend "
            f"cannot patch; patchable there: {sorted(k for k, s in TARGET_SITES.items() if s in backend.sites())}. "
            "For this map use the TransformerLens bridge: circuitviz.load_model(name)."
        )
    with ported():
        tokens = tokenize(model, pairs, pad=True)
    spec, short = _reduced(metric, tokens)
    n_layers, batch = model.cfg.n_layers, tokens.batch
    sizes = axis_sizes(model, tokens.n_pos)
    shape = tuple(sizes[a] for a in target.axes)
    conds = [
        tuple(int(i) for i in c)
        for c in torch.cartesian_prod(*[torch.arange(n) for n in shape])
        .reshape(-1, len(shape))
        .tolist()
    ]
    src_tokens, run_tokens = (
        (tokens.clean, tokens.corrupted)
        if direction == "denoise"
        else (tokens.corrupted, tokens.clean)
    )
    # As the bridge's own patching does: each pass is one prompt, and a condition's row
    # joins the batch at the layer it patches (conditions sorted by layer).
    rows_fit = int(memory_budget // _row_bytes(model, tokens.n_pos)) - 1
    per_pass = max(1, min(max_rows, rows_fit))
    order = sorted(range(len(conds)), key=lambda i: conds[i][0])
    chunks = [order[s : s + per_pass] for s in range(0, len(order), per_pass)]
    mask = tokens.attention_mask
    runs = [
        Run(
            src_tokens,
            saves={(site, layer) for layer in range(n_layers)},
            readout=spec,
            attention_mask=mask,
        )
    ]
    for chunk in chunks:
        for b in range(batch):
            row = None if mask is None else mask[b : b + 1]
            run = Run(run_tokens[b : b + 1], readout=spec, attention_mask=row)
            for j, i in enumerate(chunk):
                layer, *idx = conds[i]
                pos, head = _cell(target.cell, idx)
                run.grow[layer] = run.grow.get(layer, 0) + 1
                rows = slice(1 + j, 2 + j)
                run.writes.setdefault((site, layer), []).append((rows, pos, head, ("run", 0, b)))
            runs.append(run)
    outs = backend.execute(runs, desc=f"patching {over}", progress=progress)
    src_logits = _logits(outs[0])
    run_logits = torch.cat([_logits(outs[1 + b])[:1] for b in range(batch)])
    clean_l, corr_l = (
        (src_logits, run_logits) if direction == "denoise" else (run_logits, src_logits)
    )
    bound = bind_metric(metric, short, clean_l, corr_l)
    values = torch.empty(len(conds))
    for c, chunk in enumerate(chunks):
        per_prompt = [_logits(outs[1 + c * batch + b]) for b in range(batch)]
        for j, i in enumerate(chunk):
            values[i] = bound(torch.stack([p[1 + j] for p in per_prompt]))
    return patch_result(
        model,
        tokens,
        over,
        values.reshape(shape),
        direction=direction,  # type: ignore[arg-type]
        method="activation",
        metric=bound,
        clean=bound(clean_l),
        corrupted=bound(corr_l),
        extra={"forward_passes": len(runs), "requests": 1, "backend": backend.name},
    )


def _cell(cell: str, idx: Sequence[int]) -> tuple[int | None, int | None]:
    """``(pos, head)`` of one condition's cell (see :func:`.._patching.write_cell`)."""
    if cell == "pos":
        return idx[0], None
    if cell == "head_pos":
        return idx[0], idx[1]
    return None, idx[0]  # "head", "pattern"


_MEMO_SIZE = 128


def ablate(
    model: Any,
    pairs: PromptPairs,
    *,
    heads: Iterable[Any] = (),
    mlps: Iterable[Any] = (),
    features: Iterable[Any] = (),
    saes: Any = None,
    mode: str = "zero",
    metric: str | MetricFn = "logit_diff",
    k: int = 10,
) -> AblationResult:
    """Ablation as requests: the baselines once per (pairs, metric, k), then one request per
    new ablation set (the corrupted run it copies from rides in the same request). SAE
    features are spliced in on the server (:mod:`._features`)."""
    from .._ablation import _check_options, feature_edits, normalize_components
    from ._features import feature_ablation

    k = _check_options(model, mode, k)
    check_pairs(pairs)
    check_metric(metric)
    targets = normalize_components(model, heads, mlps, features=features)
    unported = [c for c in targets if c.kind not in ("head", "mlp", "feature", "error")]
    if unported:  # not silently taken for an MLP
        from ._nnsight import BridgeOnly

        raise BridgeOnly(
            f"ablate({unported[0].id!r}) ({unported[0].kind}) runs on the TransformerLens "
            "bridge only: load it with circuitviz.load_model(name)."
        )
    feats = [c for c in targets if c.kind in ("feature", "error")]  # spliced SAEs
    if feats:
        from ..features import as_sae_set

        saes = as_sae_set(saes) if saes is not None else None
        feature_edits(targets, saes, lambda h, i: 0.0)  # checked before any request
    backend = backend_of(model)
    memo = model._memo if hasattr(model, "_memo") else {}
    key = ("ablate", pairs, metric, k)
    prepared = memo.get(key)
    if prepared is None:
        with ported():
            tokens = tokenize(model, pairs, pad=True)
    else:
        tokens = prepared["tokens"]
    for c in targets:
        check_range(c, n_layers=model.cfg.n_layers, n_heads=model.cfg.n_heads, n_pos=tokens.n_pos)
    done_key = (targets, mode, id(saes) if feats else None)
    if prepared is not None and done_key in prepared["done"]:
        prepared["done"].move_to_end(done_key)
        return prepared["done"][done_key]
    spec, short = _reduced(metric, tokens)
    top_spec = {**spec, "topk": (k, 0)}
    # One request: the corrupted run (a baseline, and what mean/resample copy from), the
    # clean baseline while it is not known yet, and the ablated run. Locally the corrupted
    # activations are kept here after the first request, so a click is one forward pass;
    # on NDIF they stay on the server (a 70B model's are too big to ship), and the
    # corrupted run rides along again.
    local = not getattr(backend, "remote", False)
    cached = None if prepared is None else prepared["corrupted_acts"]
    mask = tokens.attention_mask
    corrupted_run = Run(
        tokens.corrupted, readout=spec if prepared is None else {}, attention_mask=mask
    )
    if prepared is None and local:
        n_layers = model.cfg.n_layers
        corrupted_run.returns = {(s, layer) for s in ("z", "mlp_out") for layer in range(n_layers)}
    copy = mode != "zero" and cached is None
    ablated_run = Run(tokens.clean, readout=top_spec, attention_mask=mask)
    copy_features = feature_ablation(
        model, ablated_run, corrupted_run, feats, saes, mode, tokens.mean_weights()
    )
    runs = [corrupted_run] if prepared is None or (targets and copy) or copy_features else []
    if prepared is None:
        runs.append(Run(tokens.clean, readout=top_spec, attention_mask=mask))
    if targets:
        for c in (c for c in targets if c.kind in ("head", "mlp")):
            site = "mlp_out" if c.head is None else "z"
            src = _ablation_source(mode, cached, (site, c.layer), tokens)
            ablated_run.writes.setdefault((site, c.layer), []).append((None, c.pos, c.head, src))
            if copy:
                corrupted_run.saves.add((site, c.layer))
        runs.append(ablated_run)
    outs = backend.execute(runs, desc="ablating", progress=False) if runs else []
    if prepared is None:
        clean_l, corr_l = _logits(outs[1]), _logits(outs[0])
        bound = bind_metric(metric, short, clean_l, corr_l)
        prepared = memo[key] = {
            "tokens": tokens,
            "bound": bound,
            "clean": bound(clean_l),
            "corrupted": bound(corr_l),
            "top": _top(model, outs[1]),
            "per_prompt": {
                "clean": [float(v) for v in bound.per_example(clean_l)],
                "corrupted": [float(v) for v in bound.per_example(corr_l)],
            },
            "corrupted_acts": outs[0].returned if local else None,
            "done": OrderedDict(),
        }
    bound, done = prepared["bound"], prepared["done"]
    ablated = values = top_after = None
    if targets:
        per = bound.per_example(_logits(outs[-1]))
        ablated, values = float(per.mean()), [float(v) for v in per]
        top_after = _top(model, outs[-1])
    result = AblationResult(
        targets=targets,
        mode=mode,
        metric=bound.name,
        clean=prepared["clean"],
        corrupted=prepared["corrupted"],
        ablated=ablated,
        per_prompt={**prepared["per_prompt"], "ablated": values},
        top_before=prepared["top"],
        top_after=top_after,
    )
    done[done_key] = result
    if len(done) > _MEMO_SIZE:
        done.popitem(last=False)
    return result


def _ablation_source(mode: str, cached: dict | None, key: tuple[str, int], tokens: Tokens) -> tuple:
    """Where an ablated activation comes from: zeros, or the corrupted run's — kept here
    (``cached``) or in run 0 of the same request. A mean is each position's over the
    prompts that have a token there (mixed lengths), as on the bridge."""
    if mode == "zero":
        return ("zero",)
    if cached is None:
        return ("run", 0, "mean", tokens.mean_weights()) if mode == "mean" else ("run", 0, "rows")
    corr = cached[key]
    return ("tensor", tokens.masked_mean(corr) if mode == "mean" else corr)


def server_metric(metric: str, short: Tokens, clean: int | str, corrupted: int | str) -> dict:
    """A built-in metric's gradient taken in the request itself (see
    :func:`._metric_program.weights`): its name, the renumbered answers, and which runs'
    readouts are its clean and corrupted baselines (an index, or ``"own"``)."""
    return {
        "metric": metric,
        "answers": short.answers,
        "wrong": short.wrong_answers,
        "clean": clean,
        "corrupted": corrupted,
    }


def metric_grad(bound: Any, logits: torch.Tensor) -> torch.Tensor:
    """The gradient of the batch-mean metric at ``logits`` (a readout), taken here: for a
    callable metric, which only the client can run."""
    with torch.enable_grad():
        x = logits.detach().clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(bound.per_example(x).mean(), x)
    return grad


def _top(model: Any, out: Output) -> TopTokens:
    p, i = out.readout["top_p"], out.readout["top_i"]
    return TopTokens([model.to_string(int(t)) for t in i], [float(x) for x in p])


def attention(model: Any, prompt: Any, *, prepend_bos: bool | None = None) -> AttentionResult:
    """Every layer's pattern in one request; role scores from the float32 patterns."""
    from .._attention import PATTERN_HELP, ROLES, _RoleScorer, prompt_tokens
    from .._models import check_bridge, model_name

    with ported():
        tokens = prompt_tokens(check_bridge(model), prompt, prepend_bos)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise InputError(
            f"The prompt has {tokens.shape[1]} tokens but the model's context is "
            f"{model.cfg.n_ctx}: shorten it."
        )
    n_layers = model.cfg.n_layers
    run = Run(tokens, returns={("pattern", layer) for layer in range(n_layers)})
    back = backend_of(model).execute([run], desc="attention", progress=False)[0].returned
    if any(back[("pattern", layer)] is None for layer in range(n_layers)):
        raise InputError(PATTERN_HELP)
    scorer = _RoleScorer(tokens[0].cpu())
    patterns = [back[("pattern", layer)][0] for layer in range(n_layers)]
    scores = [scorer(p) for p in patterns]
    return AttentionResult(
        patterns=torch.stack([p.to(torch.float16) for p in patterns]),
        tokens=list(model.to_str_tokens(tokens[0])),
        scores={role: torch.stack([s[role] for s in scores]) for role in ROLES},
        model_name=model_name(model),
    )


def attribution_patch(
    model: Any,
    pairs: PromptPairs,
    *,
    over: str = "heads",
    direction: str = "denoise",
    metric: str | MetricFn = "logit_diff",
) -> PatchResult:
    """Attribution patching as one request: the source run keeps the target site at every
    layer, and the patched run, with a graph, takes the gradient of ``readout ·
    (∂metric/∂readout)`` — the metric's own — at its own readout, in the same trace
    (:func:`._metric_program.weights`); it meets the source activations on the server and
    only the map's cells come back. A callable metric is the user's code, which the server
    does not have: then a first request brings the readouts, its gradient is taken here,
    and a second runs the graph."""
    from .._patching import get_target, patch_result

    target = get_target(over)
    if not isinstance(direction, str) or direction not in ("denoise", "noise"):
        raise InputError(f"Unknown direction={direction!r}: use 'denoise' or 'noise'.")
    check_metric(metric)
    site = TARGET_SITES[over]
    if site == "pattern":
        raise InputError(
            "over='pattern' needs the attention pattern's gradient, which nnsight cannot reach "
            "(the pattern is not a module output in HF): attribute it on the TransformerLens "
            "bridge (circuitviz.load_model(name)), or use over='heads'."
        )
    backend = backend_of(model)
    with ported():
        tokens = tokenize(model, pairs, pad=True)
    spec, short = _reduced(metric, tokens)
    src, run = (
        (tokens.clean, tokens.corrupted)
        if direction == "denoise"
        else (tokens.corrupted, tokens.clean)
    )
    mask = tokens.attention_mask
    n_layers = model.cfg.n_layers
    runs = [
        Run(
            src,
            saves={(site, layer) for layer in range(n_layers)},
            readout=spec,
            attention_mask=mask,
        )
    ]
    grad = {"kind": "attribution", "site": site, "cell": target.cell}
    if callable(metric):
        first = backend.execute(
            [
                Run(src, readout=spec, attention_mask=mask),
                Run(run, readout=spec, attention_mask=mask),
            ],
            desc="attribution",
            progress=False,
        )
        src_l, run_l = _logits(first[0]), _logits(first[1])
        clean_l, corr_l = (src_l, run_l) if direction == "denoise" else (run_l, src_l)
        grad["weights"] = metric_grad(bind_metric(metric, short, clean_l, corr_l), run_l)
    else:  # the source run is run 0; the patched run reads its own readout
        ends = (0, "own") if direction == "denoise" else ("own", 0)
        grad["weights"] = server_metric(metric, short, *ends)
    runs.append(Run(run, readout=spec, grad=grad, attention_mask=mask))
    outs = backend.execute(runs, desc="attribution", progress=False)
    src_l, run_l = _logits(outs[0]), _logits(outs[1])
    clean_l, corr_l = (src_l, run_l) if direction == "denoise" else (run_l, src_l)
    bound = bind_metric(metric, short, clean_l, corr_l)
    value = float(bound.per_example(run_l).mean())
    values = (value + outs[1].readout["effects"]).float().cpu()
    requests = 2 if callable(metric) else 1
    return patch_result(
        model,
        tokens,
        over,
        values,
        direction=direction,  # type: ignore[arg-type]
        method="attribution",
        metric=bound,
        clean=bound(clean_l),
        corrupted=bound(corr_l),
        extra={
            "forward_passes": 2 * requests,
            "backward_passes": 1,
            "requests": requests,
            "backend": backend.name,
        },
    )
