"""SAE features on nnsight, locally or on NDIF: the latents a FeatureView shows, feature and
error-term ablation, and ``steer`` (greedy continuations with latents clamped or ablated),
for SAEs at every site kind of ``engine._sites`` and transcoders (:func:`splice_site` maps a
bridge hook onto :mod:`._feature_program`'s table of nnsight points).

Splices for other analyses (feature graphs): :func:`splice_site` (where), :func:`keep` /
:func:`returned` (read activations), :func:`add_edits` (set latents or error terms) build a
:class:`._base.Run`'s ``splices``; inside a trace :func:`._feature_program.layer_splices`
(passed to :func:`._program.nnsight_layer`) or :func:`._feature_program.at_point` apply them.

What travels, and why:

- *Reading latents* (:func:`feature_activations`, the clamp scale's prompt maximum) brings
  back the activations at the SAEs' hooks, ``[pos, d_model]`` each, and encodes them here
  with the client's SAE — no SAE weight leaves this machine, and a ``[pos, d_sae]`` latent
  map (16k-65k wide) never crosses the network.
- *Editing latents* (ablation, steering) must happen inside the forward pass, so the edit
  travels with the request — but only what it needs (:func:`sae_payload`): the edited
  latents' decoder rows (``x + (f' − f) @ W_dec[edited]`` is the splice with its error term)
  and the encoder columns that decide ``f`` there: the edited ones for ReLU/JumpReLU SAEs,
  all of them for TopK (whether a latent is among the top k depends on every column).
- *Editing an error term* needs the whole reconstruction ``decode(f)``: the whole SAE at
  that site travels (``sae_payload(sae, None)``).

The torch code that runs in the trace is :mod:`._feature_program` (shipped by value).
"""

from __future__ import annotations

import re
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch

from .._pairs import InputError, encode
from ._base import Output, Run, backend_of, ported

#: Where an SAE splices on nnsight, by the bridge hook it reads (after ``blocks.L.``): the
#: point it reads and writes (:data:`._feature_program.POINTS`, whose table names the module
#: tensor of each). Transcoders read at :data:`TRANSCODER_READS` and write ``mlp_out``.
SAE_POINTS = {
    "hook_resid_pre": "resid_pre",
    "hook_attn_out": "attn_out",
    "hook_resid_mid": "resid_mid",
    "hook_mlp_out": "mlp_out",
    "hook_resid_post": "resid_post",
}
TRANSCODER_READS = {
    "hook_resid_mid": "resid_mid",
    "ln2.hook_in": "resid_mid",
    "mlp.hook_in": "mlp_in",
    "ln2.hook_out": "mlp_in",
}
_HOOK = re.compile(r"blocks\.(\d+)\.(.+)")


def splice_site(model: Any, hook: str, sae: Any) -> tuple[tuple[str, int], str, str]:
    """``(key, read point, write point)`` of the SAE (or transcoder) ``sae`` reading ``hook``
    on the nnsight backend: ``key`` is ``(point, layer)`` for an SAE (it reads and writes
    there), ``("transcoder", layer)`` for a transcoder. An InputError naming the sites nnsight
    splices, and the bridge, for any other."""
    m = _HOOK.fullmatch(hook)
    layer = int(m[1]) if m else -1
    suffix = m[2] if m else ""
    output = getattr(sae, "output_hook", None)
    if 0 <= layer < model.cfg.n_layers:
        if output is None and suffix in SAE_POINTS:
            point = SAE_POINTS[suffix]
            return (point, layer), point, point
        if output == f"blocks.{layer}.hook_mlp_out" and suffix in TRANSCODER_READS:
            return ("transcoder", layer), TRANSCODER_READS[suffix], "mlp_out"
    what = "transcoder" if output is not None else "SAE"
    raise InputError(
        f"The {what} at {hook!r}"
        + (f" (writing {output!r})" if output is not None else "")
        + " cannot be spliced on the nnsight backend: it splices SAEs at 'blocks.L.{"
        + ", ".join(SAE_POINTS)
        + "}' and transcoders that read 'blocks.L.{"
        + ", ".join(TRANSCODER_READS)
        + f"}}' and write 'blocks.L.hook_mlp_out' of the same block (L < "
        f"{model.cfg.n_layers}). Use the TransformerLens bridge for it: "
        f"circuitviz.load_model({model.cfg.model_name!r})."
    )


def check_saes(model: Any, saes: Any) -> None:
    """Every SAE reads (and writes) where nnsight can splice, with the model's width, and no
    two replace the same MLP."""
    seen: dict[tuple[str, int], str] = {}
    for hook, sae in saes.items():
        key, _, _ = splice_site(model, hook, sae)
        if key in seen:  # only transcoders share a key: both would replace MLP L
            raise InputError(
                f"The transcoders at {seen[key]!r} and {hook!r} both replace MLP {key[1]}: "
                "keep one of them (saes=...)."
            )
        seen[key] = hook
        width = model.cfg.d_model
        if sae.d_in != width or sae.d_out != width:
            raise InputError(
                f"The SAE {sae.name!r} maps {sae.d_in}-wide vectors to {sae.d_out}-wide ones "
                f"but {hook!r} gives {width}: pass an SAE trained on this model's hook."
            )


def sae_payload(sae: Any, latents: Sequence[int] | None) -> dict:
    """What an edit of ``latents`` needs of ``sae`` on the server (see the module doc);
    ``latents=None``: the whole SAE (an error term is edited: ``full``)."""
    full = latents is None
    index = torch.arange(sae.d_sae) if full else torch.as_tensor(list(latents), dtype=torch.long)
    every = full or sae.activation == "topk"
    return {
        "activation": sae.activation,
        "k": sae.k,
        "dtype": str(sae.W_enc.dtype).removeprefix("torch."),
        "W_enc": _compact(sae.W_enc if every else sae.W_enc[:, index]),
        "b_enc": _compact(sae.b_enc if every else sae.b_enc[index]),
        "threshold": None if sae.threshold is None else _compact(sae.threshold[index]),
        "b_dec_in": _compact(sae.b_dec) if sae.apply_b_dec_to_input else None,
        "pick": None if full or sae.activation != "topk" else index,
        "W_dec": _compact(sae.W_dec[index]),
        "b_dec": _compact(sae.b_dec) if full else None,
        "full": full,
    }


def _compact(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float16 when that loses nothing (SAEs stored in half precision and loaded
    as float32, as the demo's): half the bytes on the wire, the same numbers."""
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.float32:
        half = t.half()
        if torch.equal(half.float(), t):
            return half
    return t


def _spec(model: Any, run: Run, saes: Any, hook: str) -> dict:
    """The splice of ``saes[hook]`` in ``run`` (made on first use)."""
    key, read, write = splice_site(model, hook, saes[hook])
    return run.splices.setdefault(key, {"read": read, "write": write})


def add_edits(model: Any, run: Run, saes: Any, edits: Iterable[tuple[str, Any, Any, Any]]):
    """Splice the SAEs into ``run`` with ``edits``: ``(hook, latent, pos, src)`` each —
    ``latent`` None edits the error term — where ``src`` is a number, a ``[batch | 1, pos]``
    tensor, or ``("run", i, "mean" | "rows")`` (the latent or error term on run ``i``'s
    activation, kept with :func:`keep`)."""
    by_hook: dict[str, list] = {}
    for hook, latent, pos, src in edits:
        by_hook.setdefault(hook, []).append((latent, pos, src))
    for hook, items in by_hook.items():
        spec = _spec(model, run, saes, hook)
        if any(latent is None for latent, _, _ in items):  # an error term: the whole SAE
            spec["sae"] = _payload(saes[hook], None)
            spec["edits"] = [(latent, pos, _source(src)) for latent, pos, src in items]
            continue
        columns = list(dict.fromkeys(latent for latent, _, _ in items))
        spec["sae"] = _payload(saes[hook], columns)
        spec["edits"] = [(columns.index(latent), pos, _source(src)) for latent, pos, src in items]


_PAYLOADS: OrderedDict = OrderedDict()  # (id(sae), latents) -> (sae, payload), the last few


def _payload(sae: Any, latents: list[int] | None) -> dict:
    """:func:`sae_payload`, the same object for the same edit: runs of one request that edit
    alike (a steer and its pairs' metric) send it once, and a repeated click builds it once."""
    key = (id(sae), None if latents is None else tuple(latents))
    held = _PAYLOADS.get(key)
    if held is None or held[0] is not sae:
        held = _PAYLOADS[key] = (sae, sae_payload(sae, latents))
        while len(_PAYLOADS) > 4:
            _PAYLOADS.popitem(last=False)
    _PAYLOADS.move_to_end(key)
    return held[1]


def _source(src: Any) -> tuple:
    if isinstance(src, tuple):
        return src
    if isinstance(src, torch.Tensor):
        return ("tensor", src.detach().float().cpu())
    return ("const", float(src))


def keep(model: Any, run: Run, saes: Any, hooks: Iterable[str], *, back: bool = False) -> None:
    """Make ``run`` keep (for later runs of the request: the input, and a transcoder's MLP
    output) or bring back (the input) at the SAEs of ``hooks`` (unedited by this run)."""
    for hook in hooks:
        _spec(model, run, saes, hook)["back" if back else "save"] = True


def returned(model: Any, out: Output, saes: Any, hook: str) -> torch.Tensor:
    """The activation a run brought back at ``hook``'s SAE (its input, see :func:`keep`)."""
    key, _, _ = splice_site(model, hook, saes[hook])
    return out.returned[("splice", *key)]


# ----------------------------------------------------------------------------- explorer


def feature_activations(
    model: Any, prompt: str, saes: Any, *, k: int, prepend_bos: Any, label: Sequence[str] = ()
):
    """:func:`circuitviz.engine.features.feature_activations` on nnsight: one request brings
    back the activations at the SAEs' hooks; the latents are encoded here. With ``label``
    (a FeatureView's SAEs without statistics): their chips' logit effects too, kept
    (:func:`._feature_view.feature_view_activations`)."""
    from ..features._explorer import encoded

    if label:
        from ._feature_view import feature_view_activations

        return feature_view_activations(
            model, prompt, saes, k=k, prepend_bos=prepend_bos, label=label
        )
    check_saes(model, saes)
    with ported():
        ids = encode(model, prompt, prepend_bos=prepend_bos)
    run = Run(ids[None])
    keep(model, run, saes, saes, back=True)
    out = backend_of(model).execute([run], desc="feature activations", progress=False)[0]
    acts = {hook: returned(model, out, saes, hook)[0] for hook in saes}
    extra = {"backend": backend_of(model).name, "requests": 1}
    return encoded(model, ids, acts, saes, k, prepend_bos, extra)


def feature_ablation(
    model: Any,
    ablated: Run,
    corrupted: Run,
    feats: Sequence[Any],
    saes: Any,
    mode: str,
    weights: torch.Tensor | None = None,
) -> bool:
    """Add ``feats`` (latent and error-term components) to ``ablated``: zero, or the
    corrupted prompts' latent or error term (``mode="mean"``: its mean over them; with
    ``weights [batch, pos]``, mixed lengths, each position's over the prompts there) kept by
    ``corrupted``, run 0 of the same request. Returns whether ``corrupted`` must run."""
    if not feats:
        return False
    hooks = [c.hook_in(saes) for c in feats]  # an InputError where saes has none there
    check_saes(model, {h: saes[h] for h in hooks})
    src = 0.0 if mode == "zero" else ("run", 0, "rows")
    if mode == "mean":
        src = ("run", 0, "mean", weights)
    edits = [
        (h, None if c.error else c.feature, c.pos, src) for h, c in zip(hooks, feats, strict=True)
    ]
    add_edits(model, ablated, saes, edits)
    if mode != "zero":
        keep(model, corrupted, saes, set(hooks))
    return mode != "zero"


# ----------------------------------------------------------------------------- steering


def _eos(model: Any) -> int | None:
    eos = getattr(model.tokenizer, "eos_token_id", None)
    return None if eos is None else int(eos)


def _generation(model: Any, tokens: torch.Tensor, n_tokens: int, readout: dict) -> Run:
    """A greedy continuation of ``tokens`` as one run: HF ``generate`` with its KV cache,
    greedy, stopping at the tokenizer's end of sequence as the bridge's loop does, with
    ``readout`` of the first token's logits (see :func:`._program.readout`)."""
    options: dict[str, Any] = {"max_new_tokens": n_tokens, "do_sample": False, "num_beams": 1}
    eos = _eos(model)
    if eos is not None:
        options |= {"eos_token_id": eos, "pad_token_id": eos}
    return Run(tokens[None], readout=readout, generate={"options": options})


@contextmanager
def _early_stop_expected() -> Iterator[None]:
    """Quiet nnsight's note that a generation loop was cut short: a continuation that ends
    at the end of sequence before ``n_tokens`` does that by design."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*was never reached: the loop asked")
        yield


def _continuation(model: Any, out: Output) -> list[int]:
    """The greedy ids, up to the end of sequence (not included)."""
    ids, eos = [int(t) for t in out.readout["ids"]], _eos(model)
    return ids[: ids.index(eos)] if eos in ids else ids


def _unedited_key(tokens: torch.Tensor, saes: Any, n_tokens: int) -> tuple:
    return ("steer", tuple(tokens.tolist()), n_tokens, id(saes))


def _kept_unedited(model: Any, tokens: torch.Tensor, saes: Any, n_tokens: int) -> dict | None:
    held = model._memo.get(_unedited_key(tokens, saes, n_tokens))
    return held[1] if held is not None and held[0] is saes else None


def _unedited_run(model: Any, tokens: torch.Tensor, saes: Any, n_tokens: int) -> Run:
    """The unedited continuation as a run: its prompt's activations at every SAE come back
    (each latent's maximum, encoded here) and stay on the server for the request's later
    runs (a clamp to the prompt's maximum reads them there)."""
    # The first token's logits come back whole here: kept, they answer any k and answer.
    run = _generation(model, tokens, n_tokens, {"full": True})
    keep(model, run, saes, saes, back=True)
    keep(model, run, saes, saes)
    return run


def _read_unedited(model: Any, tokens, saes: Any, n_tokens: int, out: Output) -> dict:
    """The unedited side from its run's output — continuation, first logits, each latent's
    maximum over the prompt — kept per (prompt, n_tokens, SAE set)."""
    ids, first = _continuation(model, out), out.readout["full"][0]
    with torch.no_grad():
        latent_max = {
            hook: sae.encode(returned(model, out, saes, hook)[0]).amax(0).float().cpu()
            for hook, sae in saes.items()
        }
    value = {"ids": ids, "first": first, "latent_max": latent_max}
    model._memo[_unedited_key(tokens, saes, n_tokens)] = (saes, value)
    return value


def unedited(model: Any, tokens: torch.Tensor, saes: Any, n_tokens: int) -> dict:
    """The unedited side of a steer as one request (see :func:`_read_unedited`), kept."""
    held = _kept_unedited(model, tokens, saes, n_tokens)
    if held is not None:
        return held
    check_saes(model, saes)
    run = _unedited_run(model, tokens, saes, n_tokens)
    with _early_stop_expected():
        out = backend_of(model).execute([run], desc="steer: before", progress=False)[0]
    return _read_unedited(model, tokens, saes, n_tokens, out)


def _edit_sources(saes: Any, feats: Sequence[Any], mode: str, scale: float, before) -> list:
    """What each feature is set to in the edited runs: 0 (ablate); ``scale`` × its maximum —
    shipped, or over the prompt (kept: a number; else ``("run", 0, "max", scale)``, read on
    the server from the unedited run 0 of the same request)."""
    from ..features._steer import clamp_values, shipped_max

    if mode == "ablate":
        return [0.0] * len(feats)
    if before is not None:
        return clamp_values(saes, feats, scale, before["latent_max"])
    return [
        ("run", 0, "max", scale)
        if shipped_max(saes, f) is None
        else clamp_values(saes, [f], scale, None)[0]
        for f in feats
    ]


def steer(
    model: Any,
    prompt: str,
    tokens: torch.Tensor,
    saes: Any,
    feats: Sequence[Any],
    *,
    mode: str,
    scale: float,
    n_tokens: int,
    pairs: Any,
    metric: Any,
    answer_ids: tuple[int, int] | None,
    k: int,
) -> Any:
    """:func:`circuitviz.engine.features.steer` on nnsight (inputs already checked there):
    one request — the unedited continuation when it is not kept yet (the first steer of a
    prompt; a clamp to the prompt's maximum reads it on the server), the whole edited
    continuation, and the pairs' metric runs when ``pairs`` are given."""
    from .._ablation import top_tokens
    from ..features._steer import SteerResult, clamp_values
    from ._analyses import _top

    check_saes(model, saes)
    before = _kept_unedited(model, tokens, saes, n_tokens)
    runs = [] if before is not None else [_unedited_run(model, tokens, saes, n_tokens)]
    sources = _edit_sources(saes, feats, mode, scale, before)
    edits = [(f.hook, f.index, f.pos, v) for f, v in zip(feats, sources, strict=True)]
    # Only the top k (and the answers' logits) of the edited first token come back.
    readout: dict[str, Any] = {"topk": (k, 0)}
    if answer_ids is not None:
        readout["ids"] = torch.tensor(answer_ids)
    run = _generation(model, tokens, n_tokens, readout)
    add_edits(model, run, saes, edits)
    runs.append(run)
    edited = len(runs) - 1
    if pairs is not None:
        metric_runs, read_metric = _metric_runs(model, pairs, saes, edits, metric)
        runs += metric_runs
    desc = f"steer: {'after' if before is not None else 'before and after'} ({mode})"
    with _early_stop_expected():
        outs = backend_of(model).execute(runs, desc=desc, progress=False)
    if before is None:
        before = _read_unedited(model, tokens, saes, n_tokens, outs[0])
    # What the edits set, as numbers (a clamp's prompt maximum came back with run 0): an
    # InputError here for a latent that never fires — the unedited side is kept meanwhile.
    values = (
        [0.0] * len(feats)
        if mode == "ablate"
        else clamp_values(saes, feats, scale, before["latent_max"])
    )
    after_ids = _continuation(model, outs[edited])
    metric_name = metric_before = metric_after = None
    if pairs is not None:
        metric_name, metric_before, metric_after = read_metric(outs[edited + 1 :])
    elif answer_ids is not None:
        a, w = answer_ids
        metric_name = "logit_diff"
        metric_before = float(before["first"][a] - before["first"][w])
        sel = outs[edited].readout["sel"][0]  # [a, w, log-sum-exp of the rest]
        metric_after = float(sel[0] - sel[1])
    decode = model.tokenizer.decode
    return SteerResult(
        prompt=prompt,
        tokens=list(model.to_str_tokens(tokens)),
        features=[f.id for f in feats],
        mode=mode,
        scale=scale,
        values=values,
        before=decode(before["ids"], skip_special_tokens=True),
        after=decode(after_ids, skip_special_tokens=True),
        before_tokens=[model.to_string(i) for i in before["ids"]],
        after_tokens=[model.to_string(i) for i in after_ids],
        top_before=top_tokens(model, before["first"], k),
        top_after=_top(model, outs[edited]),
        metric=metric_name,
        metric_before=metric_before,
        metric_after=metric_after,
        cached=True,
    )


#: Top tokens fetched per latent at least (a card shows 10, a chip's label 2): one request
#: serves both, and they are kept per (SAE, latent).
_UNEMBED_K = 10


def unembedded(model: Any, sae: Any, latents: Sequence[int], k: int) -> dict:
    """Each latent's ``k`` most promoted and suppressed tokens (``up_i``/``down_i`` ids
    ``[n, k]``, ``up_v``/``down_v`` effects), computed where the weights are — on NDIF the
    decoder rows go there and ``4·n·k`` numbers come back, not ``[n, d_vocab]`` (see
    :func:`._feature_program.unembed`). Kept per (SAE, latent): a card's click after its chip
    was labelled sends nothing."""
    return unembedded_many(model, [(sae, latents)], k)[0]


def unembedded_many(model: Any, wanted: Sequence[tuple[Any, Sequence[int]]], k: int) -> list:
    """:func:`unembedded` of several ``(sae, latents)``: what is not kept yet, for every SAE,
    in one request (a run per SAE)."""
    runs, todo = [], []
    for sae, latents in wanted:
        rows = unembed_rows(model, sae)
        missing = [i for i in dict.fromkeys(latents) if rows.get(i, {}).get("k", 0) < k]
        if missing:
            dirs = sae.W_dec[torch.as_tensor(missing, dtype=torch.long)].detach().float().cpu()
            spec = {"kind": "unembed", "dirs": dirs, "k": unembed_k(model, k)}
            runs.append(Run(torch.zeros(1, 1, dtype=torch.long), grad=spec))
            todo.append((rows, missing, spec["k"]))
    if runs:
        outs = backend_of(model).execute(runs, desc="logit effects", progress=False)
        for (rows, missing, got_k), out in zip(todo, outs, strict=True):
            remember(rows, missing, out.readout, got_k)
    return [
        {
            name: torch.stack([unembed_rows(model, sae)[i][name][:k] for i in latents])
            for name in _PARTS
        }
        for sae, latents in wanted
    ]


def unembed_k(model: Any, k: int) -> int:
    """How many top tokens a request fetches per latent for ``k`` wanted (at least
    :data:`_UNEMBED_K`: a card's 10 and a chip's 2 in one go)."""
    return min(max(k, _UNEMBED_K), model.cfg.d_vocab)


def unembed_rows(model: Any, sae: Any) -> dict:
    """The kept logit effects of ``sae``'s latents on ``model``, by latent."""
    memo = model._memo.setdefault(("unembed", id(sae)), (sae, {}))
    if memo[0] is not sae:  # another SAE now holds that id
        memo = model._memo[("unembed", id(sae))] = (sae, {})
    return memo[1]


def remember(rows: dict, latents: Sequence[int], got: dict, k: int, start: int = 0) -> None:
    """Keep the logit effects ``got`` (rows ``start …``) of ``latents``, ``k`` tokens each."""
    for j, i in enumerate(latents):
        rows[int(i)] = {"k": k, **{name: got[name][start + j] for name in _PARTS}}


_PARTS = ("up_i", "up_v", "down_i", "down_v")


def _metric_runs(model: Any, pairs: Any, saes: Any, edits: list, metric: Any):
    """The runs that measure ``edits`` on the pairs' clean prompts (corrupted, clean, clean
    edited: the metric's baselines ride along), and the function that reads their outputs
    as ``(name, before, after)``."""
    from .._metrics import bind_metric
    from .._pairs import tokenize
    from ._analyses import _logits, _reduced

    with ported():
        tokens = tokenize(model, pairs, pad=True)  # mixed lengths: left-padded, as the bridge
    mask = tokens.attention_mask
    for _hook, _latent, pos, _value in edits:
        if pos is not None and pos >= tokens.n_pos:
            raise InputError(f"Position {pos} is past the pairs' {tokens.n_pos} tokens.")
    spec, short = _reduced(metric, tokens)
    edited = Run(tokens.clean, readout=spec, attention_mask=mask)
    add_edits(model, edited, saes, edits)
    runs = [
        Run(tokens.corrupted, readout=spec, attention_mask=mask),
        Run(tokens.clean, readout=spec, attention_mask=mask),
        edited,
    ]

    def read(outs: Sequence[Output]) -> tuple[str, float, float]:
        corr_l, clean_l, edited_l = (_logits(o) for o in outs)
        bound = bind_metric(metric, short, clean_l, corr_l)
        return bound.name, bound(clean_l), float(bound.per_example(edited_l).mean())

    return runs, read


def edit_metric(model: Any, pairs: Any, saes: Any, edits: Sequence[Any], *, metric: Any):
    """:func:`circuitviz.engine.features._steer.edit_metric` on nnsight: one request."""
    check_saes(model, {e.hook: saes[e.hook] for e in edits})
    plain = [(e.hook, e.index, e.pos, e.value) for e in edits]
    runs, read = _metric_runs(model, pairs, saes, plain, metric)
    return read(backend_of(model).execute(runs, desc="steer: metric", progress=False))
