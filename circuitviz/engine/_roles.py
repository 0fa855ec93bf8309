"""Head roles: which heads act as previous-token, duplicate-token, induction, name-mover,
negative name-mover and S-inhibition heads on a task (the IOI vocabulary of Wang et al. 2022).

Every role is a score per head and a threshold (:data:`THRESHOLDS`, the one place they are
set); a head gets a role when its scores pass. Scores:

- ``previous_token``, ``duplicate_token``, ``induction``: mean attention on the positions the
  role looks at (:func:`circuitviz.engine._attention.role_masks`), averaged over the clean
  prompts and ``n_random`` sequences of random tokens repeated twice (so induction and
  duplicate-token heads have something to do even when the prompts repeat little).
- ``io_attention`` / ``s_attention``: attention from the final position to every earlier
  occurrence of the answer token (IO) / the wrong-answer token (S) in the clean prompt,
  summed over those positions and averaged over the pairs. ``PromptPairs`` carry no
  positions, so they are found from the answer tokens; when some clean prompt does not
  contain its answer token, the name-mover roles (and S-inhibition) are not scored (NaN) and
  ``notes`` says why.
- ``copy`` / ``negative_copy``: the OV copy score — the fraction of pairs whose answer token
  is in the top 5 logits of ``±(ln1 → W_V W_O) → ln_final → W_U`` applied to the residual
  stream at the answer token's first occurrence **after layer 0** (``blocks.0.hook_resid_post``:
  the embedding plus layer 0's attention and MLP, as Wang et al.'s "after the first MLP").
  Under grouped-query attention a head reads its KV head's ``W_V``.
- ``dla``: direct logit attribution of each head (:func:`logit_attribution`) divided by the
  clean logit difference (its absolute value: positive is towards the answer).
- ``s_inhibition``: path patching (:func:`path_patch`, denoise) from each head into the name
  movers' queries, as a share of the clean − corrupted gap: ``(value − corrupted) / (clean −
  corrupted)``. Heads in or after the last name mover's layer reach none of them and score 0.

Name mover: ``io_attention ≥ t``, ``io_attention > s_attention``, ``copy ≥ t``, ``dla ≥ t``.
Negative name mover: the same with ``negative_copy`` and ``dla ≤ −t``. S-inhibition:
``s_inhibition ≥ t`` (only when some name mover was found).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from . import _devices, backends
from ._attention import _RoleScorer
from ._badges import HEAD_ROLES
from ._logit_attribution import logit_attribution
from ._models import check_bridge, model_name
from ._pairs import InputError, PromptPairs, Tokens, check_pairs, tokenize
from ._patching import cache_acts
from ._path_patching import path_patch
from ._results import head_id
from .backends._base import ported
from .graph._layout import Weights

#: The thresholds (see the module docstring for each score); override with ``thresholds=``.
THRESHOLDS: dict[str, float] = {
    "previous_token": 0.4,  # mean attention on the previous token
    "duplicate_token": 0.3,  # mean attention on earlier copies of the current token
    "induction": 0.3,  # mean attention on the token after an earlier copy
    "io_attention": 0.2,  # attention from the final position to the answer (IO) token
    "copy": 0.5,  # OV copy score: top-5 hit rate of the answer token (±OV for negative)
    "dla": 0.03,  # |direct logit attribution| as a share of the clean logit difference
    "s_inhibition": 0.03,  # path patching into the name movers' queries, share of the gap
}
TOP_K = 5
#: Random repeated sequences added to the attention-role prompts.
N_RANDOM = 4
RANDOM_LEN = 10


@dataclass(eq=False)
class HeadRoles:
    """Role scores of every head, the roles assigned, and the thresholds used.

    ``scores[name]``: ``[layer, head]`` float tensors (see :mod:`circuitviz.engine._roles`
    for each); ``roles``: head id → its roles (in :data:`HEAD_ROLES` order), only heads that
    have some; ``clean``/``corrupted``: the logit difference of each run.
    """

    scores: dict[str, torch.Tensor]
    roles: dict[str, tuple[str, ...]]
    thresholds: dict[str, float]
    clean: float
    corrupted: float
    model_name: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def n_layers(self) -> int:
        return int(self.scores["previous_token"].shape[0])

    @property
    def n_heads(self) -> int:
        return int(self.scores["previous_token"].shape[1])

    def heads(self, role: str) -> list[str]:
        """Heads with ``role``, in layer then head order."""
        if role not in HEAD_ROLES:
            raise InputError(f"Unknown role {role!r}: use one of {HEAD_ROLES}.")
        return [h for h, rs in self.roles.items() if role in rs]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: roles, thresholds and every score as nested lists (NaN as None)."""

        def plain(t: torch.Tensor) -> list:
            return [[None if math.isnan(v) else v for v in row] for row in t.tolist()]

        return {
            "model": self.model_name,
            "roles": {h: list(r) for h, r in self.roles.items()},
            "thresholds": dict(self.thresholds),
            "clean": self.clean,
            "corrupted": self.corrupted,
            "scores": {k: plain(v) for k, v in self.scores.items()},
            "notes": list(self.notes),
        }

    def __repr__(self) -> str:
        found = ", ".join(f"{r}: {len(self.heads(r))}" for r in HEAD_ROLES)
        return f"HeadRoles({self.model_name}, {self.n_layers}×{self.n_heads} heads; {found})"

    def figure(self, **style: Any):
        """The layer × head grid with every assigned role as a badge (see
        :func:`circuitviz.export.roles_figure`)."""
        from ..export._badges import roles_figure

        return roles_figure(self, **style)

    def save(self, path: str | os.PathLike, **style: Any) -> Path:
        """Write :meth:`figure` as SVG, PDF or PNG (by extension); returns the path. For an
        interactive page, save a view that shows the roles, e.g.
        ``AttentionView(model, prompt, roles=roles).save("roles.html")``."""
        from ..export import ExportError, save

        if str(path).lower().endswith((".html", ".htm")):
            raise ExportError(
                "HeadRoles saves as .svg, .pdf or .png. For an interactive page save a view "
                "that shows the roles: AttentionView(model, prompt, roles=roles).save('x.html')."
            )
        return save(self, path, **style)


def check_thresholds(thresholds: Mapping[str, float] | None) -> dict[str, float]:
    """:data:`THRESHOLDS` with ``thresholds`` applied; unknown names or non-finite values are
    an :class:`InputError`."""
    out = dict(THRESHOLDS)
    if thresholds is None:
        return out
    if not isinstance(thresholds, Mapping):
        raise InputError(f"thresholds must be a dict like {{'copy': 0.6}}, not {thresholds!r}.")
    for key, value in thresholds.items():
        if key not in THRESHOLDS:
            raise InputError(f"Unknown threshold {key!r}: the thresholds are {list(THRESHOLDS)}.")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
            raise InputError(f"Threshold {key!r} must be a number in [0, 1], got {value!r}.")
        out[key] = float(value)
    return out


def _random_repeats(model: TransformerBridge, bos: int | None, n: int, length: int, seed: int):
    """``[n, (bos) + 2·length]`` token ids: random non-special tokens, repeated twice."""
    special = set(getattr(model.tokenizer, "all_special_ids", None) or [])
    usable = torch.tensor([i for i in range(int(model.cfg.d_vocab)) if i not in special])
    g = torch.Generator().manual_seed(seed)
    seq = usable[torch.randint(len(usable), (n, length), generator=g)]
    out = torch.cat([seq, seq], dim=1)
    if bos is not None:
        out = torch.cat([torch.full((n, 1), bos), out], dim=1)
    return out.to(model.cfg.device)


def _attention_scores(
    patterns: list[dict[int, torch.Tensor]],
    tokens: torch.Tensor,
    mask: torch.Tensor | None = None,
):
    """Per-prompt role scores ``{role: [prompt, layer, head]}`` (NaN where a prompt has no
    destination for the role). Left-padded prompts (``mask``) are scored on their own tokens
    only, so padding never counts as a repeated or previous token."""
    out: dict[str, list[torch.Tensor]] = {}
    n_pos = tokens.shape[1]
    for b in range(tokens.shape[0]):
        start = 0 if mask is None else n_pos - int(mask[b].sum())
        scorer = _RoleScorer(tokens[b, start:])
        layers = torch.stack([patterns[b][layer] for layer in sorted(patterns[b])])
        layers = layers[..., start:, start:]
        for role, score in scorer(layers).items():
            rows = scorer.pairs[role][2]
            out.setdefault(role, []).append(score if rows.numel() else score * math.nan)
    return {role: torch.stack(v) for role, v in out.items()}


def _patterns(
    model: TransformerBridge,
    tokens: torch.Tensor,
    extra: tuple[str, ...] = (),
    mask: torch.Tensor | None = None,
):
    names = [f"blocks.{layer}.attn.hook_pattern" for layer in range(model.cfg.n_layers)]
    _, acts = cache_acts(model, tokens, [*names, *extra], mask)
    # Over several GPUs each layer's pattern is on its own device: they meet on the tokens'.
    per_prompt = [
        {layer: acts[name][b].to(tokens.device) for layer, name in enumerate(names)}
        for b in range(tokens.shape[0])
    ]
    return per_prompt, acts


def _final_norm(model: TransformerBridge) -> Callable[[torch.Tensor], torch.Tensor]:
    return _devices.calling(model, getattr(model.ln_final, "_original_component", model.ln_final))


def copy_scores(model: TransformerBridge, resid: torch.Tensor, answers: torch.Tensor):
    """OV copy scores ``(copy, negative_copy)``, each ``[layer, head]``: the fraction of rows
    whose ``answers[b]`` is in the top :data:`TOP_K` logits of ``±(ln1 → W_V W_O) → ln_final
    → W_U`` applied to ``resid [batch, d_model]``."""
    cfg = model.cfg
    W_U, b_U = _devices.read(model, model.unembed, "W_U", "b_U")
    norm = _final_norm(model)
    copy = torch.zeros(cfg.n_layers, cfg.n_heads)
    negative = torch.zeros(cfg.n_layers, cfg.n_heads)
    for layer in range(cfg.n_layers):
        w = Weights.of(model, layer)
        # On several devices each layer computes on its own, the logits on W_U's.
        v = torch.einsum("bm,kmd->bkd", w.ln1(resid).to(w.W_V.device), w.W_V)
        if w.b_V is not None:
            v = v + w.b_V
        v = v.repeat_interleave(cfg.n_heads // v.shape[1], dim=1)  # GQA: each head's KV head
        out = torch.einsum("bhd,hdm->bhm", v, w.W_O)
        for sign, dest in ((1, copy), (-1, negative)):
            logits = norm(sign * out).to(W_U.device) @ W_U
            if b_U is not None:
                logits = logits + b_U
            top = logits.topk(TOP_K, dim=-1).indices  # [batch, head, k]
            hit = (top == answers.to(top.device)[:, None, None]).any(-1).float()
            dest[layer] = hit.mean(0).cpu()
    return copy, negative


def _positions(tokens: Tokens, ids: torch.Tensor) -> torch.Tensor:
    """``[batch, pos]`` bool: where each clean prompt (final position and padding excluded)
    holds ``ids[b]``."""
    found = tokens.clean == ids[:, None]
    if tokens.attention_mask is not None:
        found &= tokens.attention_mask.bool()
    found[:, -1] = False
    return found


def head_roles(
    model: TransformerBridge,
    pairs: PromptPairs,
    *,
    thresholds: Mapping[str, float] | None = None,
    n_random: int = N_RANDOM,
    random_len: int = RANDOM_LEN,
    seed: int = 0,
    progress: bool = True,
) -> HeadRoles:
    """Score every head for each role of :data:`HEAD_ROLES` on ``pairs`` and assign roles.

    Args:
        thresholds: overrides of :data:`THRESHOLDS` (same keys).
        n_random, random_len: random token sequences of ``random_len`` tokens repeated twice
            (after BOS when the pairs use it) that join the clean prompts for the
            previous-token, duplicate-token and induction scores; ``n_random=0`` uses the
            prompts alone. ``random_len`` is capped by the model's context.
        seed: of those sequences.

    The metric is the logit difference (direct logit attribution needs it). Name-mover roles
    need each clean prompt to contain its answer token (IO); see the module docstring.
    """
    if (seam := backends.route(model, "head_roles")) is not None:
        return seam(
            model,
            pairs,
            thresholds=thresholds,
            n_random=n_random,
            random_len=random_len,
            seed=seed,
            progress=progress,
        )
    check_bridge(model)
    return score_roles(
        model,
        pairs,
        read_bridge,
        thresholds=thresholds,
        n_random=n_random,
        random_len=random_len,
        seed=seed,
        progress=progress,
    )


PatternReader = Callable[..., tuple[dict, torch.Tensor, tuple | None, Any]]
"""``read(model, clean, rand, first_io, answers, mask, pairs=) -> (per_prompt, final, copy,
dla)``: the
attention-role scores ``{role: [prompt, layer, head]}`` of the clean prompts then the random
repeats (``rand``, or None), NaN where a prompt has no destination for the role; the clean
prompts' attention from the final position ``[batch, layer, head, src]``; and the OV copy
scores ``(copy, negative_copy)`` read at each clean prompt's ``first_io`` position (None
when ``first_io`` is None)."""


def read_bridge(
    model: TransformerBridge,
    clean: torch.Tensor,
    rand: torch.Tensor | None,
    first_io: torch.Tensor | None,
    answers: torch.Tensor,
    mask: torch.Tensor | None = None,
    pairs: PromptPairs | None = None,
) -> tuple[dict, torch.Tensor, tuple | None, None]:
    """The bridge's :data:`PatternReader`: cached forward passes, then the weights here
    (DLA is left to :func:`logit_attribution`)."""
    patterns, acts = _patterns(model, clean, ("blocks.0.hook_resid_post",), mask)
    per_prompt = _attention_scores(patterns, clean.cpu(), None if mask is None else mask.cpu())
    if rand is not None:
        more = _attention_scores(_patterns(model, rand)[0], rand.cpu())
        per_prompt = {r: torch.cat([per_prompt[r], more[r]]) for r in per_prompt}
    layers = range(model.cfg.n_layers)
    final = torch.stack([torch.stack([p[la][:, -1] for la in layers]) for p in patterns]).float()
    copy = None
    if first_io is not None:
        resid = acts["blocks.0.hook_resid_post"][torch.arange(clean.shape[0]), first_io]
        copy = copy_scores(model, resid, answers)
    return per_prompt, final, copy, None


def score_roles(
    model: TransformerBridge,
    pairs: PromptPairs,
    read: PatternReader,
    *,
    thresholds: Mapping[str, float] | None,
    n_random: int,
    random_len: int,
    seed: int,
    progress: bool,
) -> HeadRoles:
    """:func:`head_roles` with its patterns and copy scores from ``read`` (the bridge's, or
    one nnsight request); DLA and path patching route to the model's backend themselves."""
    check_pairs(pairs)
    limits = check_thresholds(thresholds)
    for name, value, least in (("n_random", n_random, 0), ("random_len", random_len, 2)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise InputError(f"head_roles needs {name} to be an integer ≥ {least}, got {value!r}.")
    with ported():
        tokens = tokenize(model, pairs, pad=True)  # mixed lengths: left-padded, as for patch
    cfg = model.cfg
    notes: list[str] = []
    bar = tqdm(total=4, desc="head roles", disable=not progress, leave=False)
    try:
        with torch.inference_mode():
            length = min(random_len, (int(cfg.n_ctx) - int(tokens.prepend_bos)) // 2)
            rand = None
            if n_random and length >= 2:
                bos = int(tokens.clean[0, 0]) if tokens.prepend_bos else None
                rand = _random_repeats(model, bos, n_random, length, seed)
            io = _positions(tokens, tokens.answers)
            s = _positions(tokens, tokens.wrong_answers)
            have_io = bool(io.any(1).all())
            first_io = io.float().argmax(1) if have_io else None
            per_prompt, final, copy, dla = read(
                model, tokens.clean, rand, first_io, tokens.answers, tokens.attention_mask, pairs
            )
            scores = {r: per_prompt[r].nanmean(0).nan_to_num(0.0) for r in per_prompt}
            bar.update()

            nan = torch.full((cfg.n_layers, cfg.n_heads), math.nan)
            if have_io:
                io, s = io.to(final.device), s.to(final.device)
                scores["io_attention"] = (final * io[:, None, None].to(final)).sum(-1).mean(0).cpu()
                scores["s_attention"] = (final * s[:, None, None].to(final)).sum(-1).mean(0).cpu()
                scores["copy"], scores["negative_copy"] = copy
            else:
                notes.append(
                    "Name-mover roles not scored: some clean prompt does not contain its answer "
                    "token before the final position, so there is no IO position to attend to."
                )
                for key in ("io_attention", "s_attention", "copy", "negative_copy"):
                    scores[key] = nan.clone()
            bar.update()
        if dla is None:  # the bridge: its own DLA (nnsight brought it with the patterns)
            dla = logit_attribution(model, pairs, by="heads")
        clean, corrupted = dla.clean, dla.corrupted
        # A share of |clean|: positive always means "writes towards the answer".
        scores["dla"] = dla.values / abs(clean) if clean else nan.clone()
        if clean <= 0:
            notes.append(
                f"The clean logit difference is {clean:.3g} ≤ 0: the model does not prefer the "
                "answer, so name-mover shares are of |clean| and may mean little."
            )
        bar.update()
        movers = _name_movers(scores, limits) if have_io else []
        if movers:
            pp = path_patch(model, pairs, receivers=movers, receiver_input="q", progress=progress)
            scores["s_inhibition"] = (pp.values - pp.corrupted) / (pp.clean - pp.corrupted)
        else:
            scores["s_inhibition"] = nan.clone()
            if have_io:
                notes.append("No name mover passed the thresholds, so S-inhibition is not scored.")
        bar.update()
    finally:
        bar.close()
    return HeadRoles(
        scores={k: v.float().cpu() for k, v in scores.items()},
        roles=assign_roles(scores, limits),
        thresholds=limits,
        clean=float(clean),
        corrupted=float(corrupted),
        model_name=model_name(model),
        notes=notes,
    )


def _name_movers(scores: dict[str, torch.Tensor], t: dict[str, float]) -> list[str]:
    return [h for h, rs in assign_roles(scores, t).items() if "name_mover" in rs]


def _passes(scores: dict[str, torch.Tensor], t: dict[str, float]) -> dict[str, torch.Tensor]:
    """``{role: [layer, head] bool}`` — the rule of each role (NaN scores never pass)."""
    out = {r: scores[r] >= t[r] for r in ("previous_token", "duplicate_token", "induction")}
    if "io_attention" in scores:
        attends = (scores["io_attention"] >= t["io_attention"]) & (
            scores["io_attention"] > scores["s_attention"]
        )
        out["name_mover"] = attends & (scores["copy"] >= t["copy"]) & (scores["dla"] >= t["dla"])
        out["negative_name_mover"] = (
            attends & (scores["negative_copy"] >= t["copy"]) & (scores["dla"] <= -t["dla"])
        )
    if "s_inhibition" in scores:
        out["s_inhibition"] = scores["s_inhibition"] >= t["s_inhibition"]
    return out


def assign_roles(
    scores: dict[str, torch.Tensor], thresholds: dict[str, float]
) -> dict[str, tuple[str, ...]]:
    """Head id → its roles (in :data:`HEAD_ROLES` order), for heads that have any."""
    passes = _passes(scores, thresholds)
    n_layers, n_heads = scores["previous_token"].shape
    out = {}
    for layer in range(n_layers):
        for head in range(n_heads):
            got = tuple(r for r in HEAD_ROLES if r in passes and bool(passes[r][layer, head]))
            if got:
                out[head_id(layer, head)] = got
    return out
