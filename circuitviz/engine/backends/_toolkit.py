"""The toolkit analyses on nnsight: the logit lens, direct logit attribution and path
patching as requests — each one request (one NDIF job) that returns only the result's
numbers, reduced on the server by :mod:`._toolkit_program`.

Input checks and result building are the bridge implementations' own functions; the
numbers equal the bridge's to 1e-4 in float32 (``tests/test_backends_toolkit.py``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from .._metrics import MetricFn, bind_metric, check_metric
from .._pairs import InputError, PromptPairs, tokenize
from .._results import PatchResult
from ._analyses import _logits, _reduced
from ._base import Run, backend_of, ported


def norm_eps(model: Any) -> float:
    """The epsilon of the model's norms (HF config: RMSNorm's or LayerNorm's)."""
    config = model.lm.config
    eps = getattr(config, "rms_norm_eps", None)
    return float(eps if eps is not None else config.layer_norm_epsilon)


def logit_lens(model: Any, prompt: str, *, answer: str | None = None, k: int = 10) -> Any:
    """The logit lens in one request: every layer's input through the final norm and
    unembedding on the server, and back only each cell's top ``k`` tokens and the answer's
    probability and rank (``[rows, pos, k]`` and ``[rows, pos]`` numbers)."""
    from .._logit_lens import check_readout, lens_input, lens_result

    tokens, answer_id = lens_input(model, prompt, answer, k)
    run = Run(tokens, grad={"kind": "lens", "k": k, "answer": answer_id, "eps": norm_eps(model)})
    backend = backend_of(model)
    out = backend.execute([run], desc="logit lens", progress=False)[0].readout
    check_readout(float(out["gap"]))
    return lens_result(
        model, tokens, answer, answer_id, out, extra={"backend": backend.name, "requests": 1}
    )


def logit_attribution(
    model: Any, pairs: PromptPairs, *, by: str = "heads", metric: str = "logit_diff"
) -> PatchResult:
    """Direct logit attribution in one request: the clean run reduces every component's
    final-position write to its contribution on the server (only the map, the MLPs' and
    biases' terms come back), and the corrupted run returns its readout."""
    runs, finish = attribution_plan(model, pairs, by, metric)
    return finish(backend_of(model).execute(runs, desc="logit attribution", progress=False))


def attribution_plan(
    model: Any, pairs: PromptPairs, by: str, metric: str
) -> tuple[list[Run], Callable[[list], PatchResult]]:
    """:func:`logit_attribution`'s runs, and what turns their outputs into its result (so
    another request — head roles' — can carry them)."""
    from .._logit_attribution import check_options, dla_result

    check_options(by, metric)
    with ported():
        tokens = tokenize(model, pairs, pad=True)  # mixed lengths: left-padded and masked
    spec, short = _reduced(metric, tokens)
    mask = tokens.attention_mask
    dla = {
        "kind": "dla",
        "by": by,
        "answers": tokens.answers,
        "wrong": tokens.wrong_answers,
        "eps": norm_eps(model),
    }
    runs = [
        Run(tokens.clean, readout=spec, grad=dla, attention_mask=mask),
        Run(tokens.corrupted, readout=spec, attention_mask=mask),
    ]

    def finish(outs: list) -> PatchResult:
        clean_out, corr_out = outs
        if "no_pattern" in clean_out.readout:
            from .._attention import PATTERN_HELP

            raise InputError(f"by='heads_by_pos' reads the attention pattern. {PATTERN_HELP}")
        bound = bind_metric(metric, short, _logits(clean_out), _logits(corr_out))
        return dla_result(
            model,
            tokens,
            by,
            clean_out.readout,
            metric=bound.name,
            clean=bound(_logits(clean_out)),
            corrupted=bound(_logits(corr_out)),
            kind="LN" if model.arch == "gpt2" else "RMS",
            extra={"backend": backend_of(model).name, "requests": 1},
        )

    return runs, finish


def path_patch(
    model: Any,
    pairs: PromptPairs,
    *,
    senders: str | Sequence = "heads",
    receivers: str | Sequence,
    receiver_input: str | None = None,
    direction: str = "denoise",
    metric: str | MetricFn = "logit_diff",
    memory_budget: float = 2**30,
    max_rows: int = 1024,
    progress: bool = True,
) -> PatchResult | float:
    """Path patching in one request: the source and base runs keep the senders' outputs on
    the server; each later pass (one prompt, ``max_rows`` rows) computes the rows' sender
    deltas there and writes each receiver's recomputed input; only readouts come back."""
    from .._patching import _row_bytes, check_budget
    from .._path_patching import check_direction, parse_receivers, path_result, sender_rows

    check_direction(direction)
    spec = parse_receivers(model, receivers, receiver_input)
    is_map, rows = sender_rows(model, senders, spec)
    check_budget(memory_budget, max_rows)
    check_metric(metric)
    with ported():
        tokens = tokenize(model, pairs, pad=True)  # mixed lengths: left-padded and masked
    readout, short = _reduced(metric, tokens)
    mask = tokens.attention_mask
    src_tokens, run_tokens = (
        (tokens.clean, tokens.corrupted)
        if direction == "denoise"
        else (tokens.corrupted, tokens.clean)
    )
    keep = {("z" if s.kind == "head" else "mlp_out", s.layer) for row in rows for s in row}
    runs = [
        Run(src_tokens, saves=keep, readout=readout, attention_mask=mask),
        Run(run_tokens, saves=keep, readout=readout, attention_mask=mask),
    ]
    n_layers = model.cfg.n_layers
    # Rows come in sender-layer order, so each joins the batch at the first receiver it
    # reaches and the rows already there are the earlier ones (as on the bridge).
    last = [max(s.layer for s in row) for row in rows]
    layers = list(spec.by_layer) if spec.input != "resid" else [n_layers]
    reach = [[layer for layer in layers if end < layer] for end in last]
    rows_fit = int(memory_budget // _row_bytes(model, tokens.n_pos)) - 1
    per_pass = max(1, min(max_rows, rows_fit))
    chunks = [range(s, min(s + per_pass, len(rows))) for s in range(0, len(rows), per_pass)]
    eps = norm_eps(model)
    for chunk in chunks:
        joins: dict[int, int] = {}
        for r in chunk:
            joins[reach[r][0]] = joins.get(reach[r][0], 0) + 1
        for b in range(tokens.batch):
            grad = {
                "kind": "path",
                "input": spec.input,
                "receivers": list(spec.by_layer.items()),
                "rows": [[(s.kind, s.layer, s.head) for s in rows[r]] for r in chunk],
                "reach": [reach[r] for r in chunk],
                "joins": joins,
                "prompt": b,
                "src": 0,
                "base": 1,
                "eps": eps,
            }
            row = None if mask is None else mask[b : b + 1]  # broadcasts over the rows
            runs.append(Run(run_tokens[b : b + 1], readout=readout, grad=grad, attention_mask=row))
    outs = backend_of(model).execute(runs, desc="path patching", progress=progress)
    src_l, run_l = _logits(outs[0]), _logits(outs[1])
    clean_l, corr_l = (src_l, run_l) if direction == "denoise" else (run_l, src_l)
    bound = bind_metric(metric, short, clean_l, corr_l)
    values = torch.empty(len(rows))
    for c, chunk in enumerate(chunks):
        per_prompt = [_logits(outs[2 + c * tokens.batch + b]) for b in range(tokens.batch)]
        for j, r in enumerate(chunk):
            values[r] = bound(torch.stack([p[1 + j] for p in per_prompt]))
    if not is_map:
        return float(values[0])
    return path_result(
        model,
        tokens,
        spec,
        rows,
        values,
        direction=direction,  # type: ignore[arg-type]
        metric=bound,
        clean=bound(clean_l),
        corrupted=bound(corr_l),
        extra={"forward_passes": len(runs), "requests": 1, "backend": backend_of(model).name},
    )


def head_roles(
    model: Any,
    pairs: PromptPairs,
    *,
    thresholds: Any = None,
    n_random: int = 4,
    random_len: int = 10,
    seed: int = 0,
    progress: bool = True,
) -> Any:
    """Head roles on nnsight: the patterns' role scores, the OV copy scores and direct logit
    attribution in one request (reduced on the server), then, when some head is a name
    mover, :func:`path_patch` into the name movers — two requests, scored by the bridge's own
    code. Which heads are name movers (path patching's receivers, so the shape of its every
    pass) is decided here from the first request's scores."""
    from .._roles import score_roles

    return score_roles(
        model,
        pairs,
        read_patterns,
        thresholds=thresholds,
        n_random=n_random,
        random_len=random_len,
        seed=seed,
        progress=progress,
    )


def read_patterns(
    model: Any,
    clean: torch.Tensor,
    rand: torch.Tensor | None,
    first_io: torch.Tensor | None,
    answers: torch.Tensor,
    mask: torch.Tensor | None = None,
    pairs: PromptPairs | None = None,
) -> tuple[dict, torch.Tensor, tuple | None, PatchResult | None]:
    """Head roles' :data:`circuitviz.engine._roles.PatternReader` as one request: the
    attention-role scores of the clean prompts and of the random repeats and the clean
    prompts' final-position attention, reduced from the patterns on the server (the
    patterns themselves stay there), the copy scores and (given ``pairs``) the heads' direct
    logit attribution, all in one request. Left-padded prompts (``mask``,
    mixed lengths) run masked and are scored on their own tokens, as on the bridge: each
    prompt's role pairs are found in its tokens and shifted past its padding."""
    from .._attention import PATTERN_HELP, _RoleScorer
    from .._roles import TOP_K

    def role_pairs(row: torch.Tensor, start: int) -> dict:
        pairs = _RoleScorer(row[start:].cpu()).pairs
        return {role: tuple(i + start for i in p) for role, p in pairs.items()}

    def roles_run(tokens: torch.Tensor, final: bool, mask: torch.Tensor | None = None) -> Run:
        n_pos = tokens.shape[1]
        starts = [0] * len(tokens) if mask is None else (n_pos - mask.sum(1)).tolist()
        pairs = [role_pairs(row, int(start)) for row, start in zip(tokens, starts, strict=True)]
        grad = {"kind": "roles", "pairs": pairs, "final": final}
        return Run(tokens.cpu(), grad=grad, attention_mask=None if mask is None else mask.cpu())

    runs = [roles_run(clean, True, mask)]
    if rand is not None:
        runs.append(roles_run(rand, False))
    if first_io is not None:
        copy = {
            "kind": "copy",
            "positions": first_io.cpu(),
            "answers": answers.cpu(),
            "top_k": TOP_K,
            "eps": norm_eps(model),
        }
        runs.append(Run(clean, grad=copy, attention_mask=mask))
    dla_runs, dla_finish = (
        attribution_plan(model, pairs, "heads", "logit_diff") if pairs else ([], None)
    )
    got = backend_of(model).execute([*runs, *dla_runs], desc="head roles")
    dla = dla_finish(got[len(runs) :]) if dla_finish else None
    outs = [out.readout for out in got[: len(runs)]]
    if "no_pattern" in outs[0]:
        raise InputError(PATTERN_HELP)
    roles = [key[len("score_") :] for key in outs[0] if key.startswith("score_")]
    n = 2 if rand is not None else 1
    per_prompt = {r: torch.cat([out[f"score_{r}"] for out in outs[:n]]) for r in roles}
    scores = None
    if first_io is not None:
        scores = (outs[-1]["copy"], outs[-1]["negative_copy"])
    return per_prompt, outs[0]["final"], scores, dla


def refusal_direction(
    model: Any,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    layer: int | None = None,
    pos: int = -1,
    template: Any = None,
    batch_size: int = 16,
) -> Any:
    """The difference-in-means refusal direction, its residual streams read in one request
    (one run per batch of ``batch_size`` left-padded prompts, each returning only every
    layer's vector at ``pos``); the means and separations are the bridge's own code."""
    from .._refusal import find_direction

    return find_direction(model, harmful, harmless, layer, pos, template, batch_size, resid_at)


def resid_at(
    model: Any, prompts: Sequence[torch.Tensor], pos: int, batch_size: int, desc: str
) -> torch.Tensor:
    """``[n, layers, d_model]``: every layer's input at ``pos`` (from the end) of each
    prompt, batches left-padded and masked as on the bridge."""
    from .._refusal import _pad_id, left_pad

    runs = []
    for start in range(0, len(prompts), batch_size):
        tokens, mask = left_pad(prompts[start : start + batch_size], _pad_id(model))
        inputs = {"input_ids": tokens, "attention_mask": mask}
        runs.append(Run(inputs, grad={"kind": "resid_at", "pos": pos}))  # type: ignore[arg-type]
    outs = backend_of(model).execute(runs, desc=desc)
    return torch.cat([out.readout["resid"] for out in outs])


def generate_batches(model: Any, plans: list[tuple[list, dict]], desc: str) -> list[list[dict]]:
    """Every generation of ``plans`` (``(batches, spec)`` each: ``steer_refusal``'s before
    and after) in one request: on the server each new token is one trace (with that side's
    intervention), stepped by the bridge's own step function; back come each batch's new
    tokens and step-0 refusal scores, per plan."""
    runs = [
        Run(tokens, grad={"kind": "generate", **spec, "mask": mask})
        for batches, spec in plans
        for tokens, mask in batches
    ]
    outs = [out.readout for out in backend_of(model).execute(runs, desc=desc)]
    sizes = [len(batches) for batches, _ in plans]
    return [outs[sum(sizes[:i]) : sum(sizes[: i + 1])] for i in range(len(plans))]


def steer_refusal(
    model: Any,
    prompts: Sequence[str],
    direction: Any,
    *,
    mode: str = "ablate",
    coef: float = 1.0,
    max_new_tokens: int = 24,
    batch_size: int = 16,
    before: Any = None,
) -> Any:
    """Greedy continuations without and with a refusal intervention in one request (one, the
    after side, when ``before`` is given), every batch generated token by token on the
    server."""
    from .._refusal import steer

    return steer(model, prompts, direction, mode, coef, max_new_tokens, batch_size, before)
