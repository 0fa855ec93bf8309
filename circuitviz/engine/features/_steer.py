"""Steering with SAE features: clamp or ablate latents and compare greedy continuations.

:func:`steer` sets each named latent (spliced in with its error term, :mod:`._splice`) and
reports, before and after: the greedy continuation, the top next tokens and, given prompt
pairs or answer tokens, a metric. ``mode="ablate"`` sets the latents to 0; ``mode="clamp"``
to ``scale`` × the latent's maximum activation — from the SAE set's shipped statistics
(the corpus peak ``saes.stats[hook].top_values[i, 0]`` of a ``FeatureStats``, or
``saes.stats[hook]["max_act"][i]``) when there are any, otherwise the
latent's maximum over the prompt's own positions (:func:`clamp_values`). A feature without a
position is set at every position, generated ones included; ``"L11F3:P5"`` only at prompt
position 5.

The unedited side (continuation, top tokens, latent maxima) is computed once per prompt and
kept, so a click in a view costs one edited generation.
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import torch
from transformer_lens.model_bridge import TransformerBridge

from .. import backends
from .._ablation import _prepare, top_tokens
from .._metrics import MetricFn, check_metric
from .._models import check_bridge
from .._pairs import InputError, PromptPairs, check_pairs, check_text, encode, single_token
from .._patching import final_logits
from .._results import TopTokens
from .._sites import FEATURE_ID, SITE_HOOKS, feature_id, site_code, site_hook
from ._generate import Greedy, fast_sites, greedy_bridge, greedy_cached, twin
from ._sae import SAESet, as_sae_set, hook_layer
from ._splice import LatentEdit, check_edits, site_hooks

SteerMode = Literal["clamp", "ablate"]
STEER_MODES = ("clamp", "ablate")
#: Keys of ``saes.stats[hook]`` read as each latent's maximum activation (the first present).
MAX_ACT_KEYS = ("max_act", "max_activation", "max_acts")
MAX_NEW_TOKENS = 256
DEFAULT_SCALE = 4.0
TOP_K = 10
_MEMO = 16


@dataclass(frozen=True)
class Feature:
    """One latent of one SAE, everywhere or at one prompt position."""

    hook: str
    index: int
    pos: int | None = None
    site: str | None = None  # its SAE's site code (``.._sites``), set by parse_feature

    @property
    def id(self) -> str:
        """``"L11F1234"``, ``"L3attnF12"`` (``":P5"`` at one position); ``"hook:F1234"``
        where no site code names the hook."""
        layer = hook_layer(self.hook)
        site = self.site
        if site is None and layer is not None:
            codes = [c for c, h in SITE_HOOKS.items() if c != "tc" and self.hook.endswith(h)]
            site = next((c for c in codes if self.hook == f"blocks.{layer}.{SITE_HOOKS[c]}"), None)
        base = f"{self.hook}:F{self.index}" if site is None else feature_id(layer, site, self.index)
        return base if self.pos is None else f"{base}:P{self.pos}"


def parse_feature(spec: Any, saes: SAESet) -> Feature:
    """A feature from ``"L11F1234"`` / ``"L11F1234:P5"`` (the SAE of block 11 in ``saes``),
    ``(hook, index)`` or ``(hook, index, pos)``; checked against ``saes``."""
    if isinstance(spec, Feature):
        feature = spec
    elif isinstance(spec, str) and spec.rpartition(":")[0] in saes:
        # the feature explorer's "hook:index" ids ("blocks.11.hook_resid_post:123")
        index = spec.rpartition(":")[2]
        feature = Feature(spec.rpartition(":")[0], int(index) if index.isdigit() else -1)
    elif isinstance(spec, str):
        m = FEATURE_ID.fullmatch(spec.strip())
        if m is None:
            raise InputError(
                f"Unknown feature {spec[:60]!r}: write 'L11F1234' (latent 1234 of the SAE on "
                "blocks.11.hook_resid_post; 'L3attnF12', 'L3tcF12'… at other sites), "
                "'L11F1234:P5' (at prompt position 5 only) or (hook, index)."
            )
        hook = site_hook(saes, int(m[1]), m[2] or "")
        feature = Feature(hook, int(m[3]), None if m[4] is None else int(m[4]))
    elif isinstance(spec, (tuple, list)) and len(spec) in (2, 3) and isinstance(spec[0], str):
        feature = Feature(spec[0], spec[1], spec[2] if len(spec) == 3 else None)  # type: ignore[arg-type]
    else:
        raise InputError(
            f"A feature must be an id like 'L11F1234' or a (hook, index) pair, got {spec!r:.60}."
        )
    check_edits(saes, [LatentEdit(feature.hook, feature.index, 0.0, feature.pos)])
    if feature.site is None:
        feature = replace(feature, site=site_code(saes[feature.hook]))
    return feature


def parse_features(features: Any, saes: SAESet) -> tuple[Feature, ...]:
    """Parse ``features`` (one spec or a list of them), keeping order, without repeats."""
    if isinstance(features, (str, Feature)) or (
        isinstance(features, tuple) and features and isinstance(features[0], str)
    ):
        features = [features]
    if not isinstance(features, Iterable):
        raise InputError("features must be a feature id like 'L11F1234' or a list of them.")
    out = tuple(dict.fromkeys(parse_feature(f, saes) for f in features))
    if not out:
        raise InputError("features is empty: name at least one, e.g. features=['L11F1234'].")
    return out


@dataclass(eq=False)
class SteerResult:
    """A prompt's greedy continuation and next-token predictions before and after setting
    SAE latents (see :func:`steer`).

    Attributes:
        prompt: the prompt as given; ``tokens`` as fed (with BOS when prepended).
        features: the edited features' ids (``"L11F1234"``, ``":P5"`` at one position).
        mode: ``"clamp"`` or ``"ablate"``; ``scale`` the clamp multiple.
        values: what each feature's latent was set to, in order of ``features``.
        before, after: the continuations (text); ``before_tokens``/``after_tokens`` their
            tokens.
        top_before, top_after: the most likely first generated tokens.
        metric: the metric's name (None without pairs or answers); ``metric_before`` and
            ``metric_after`` its values (mean over the pairs).
        cached: whether the KV-cache generator was used (False: the bridge loop).
    """

    prompt: str
    tokens: list[str]
    features: list[str]
    mode: str
    scale: float
    values: list[float]
    before: str
    after: str
    before_tokens: list[str]
    after_tokens: list[str]
    top_before: TopTokens
    top_after: TopTokens
    metric: str | None = None
    metric_before: float | None = None
    metric_after: float | None = None
    cached: bool = True

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompt": self.prompt,
            "tokens": list(self.tokens),
            "features": list(self.features),
            "mode": self.mode,
            "scale": self.scale,
            "values": list(self.values),
            "before": self.before,
            "after": self.after,
            "before_tokens": list(self.before_tokens),
            "after_tokens": list(self.after_tokens),
            "top_before": self.top_before.to_dict(),
            "top_after": self.top_after.to_dict(),
            "metric": self.metric,
            "metric_before": self.metric_before,
            "metric_after": self.metric_after,
        }


@dataclass(eq=False)
class _Unedited:
    """What does not depend on the edit, per (prompt, n_tokens, SAE set)."""

    continuation: Greedy
    top: TopTokens
    latent_max: dict[str, torch.Tensor]  # hook -> [d_sae], max over the prompt's positions


_UNEDITED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _check_number(name: str, value: Any) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
    ):
        raise InputError(f"{name}={value!r} must be a finite number.")
    return float(value)


def _check_count(name: str, value: Any, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= hi:
        raise InputError(f"{name}={value!r} is out of range: use an integer from 1 to {hi}.")
    return int(value)


def _eos(model: TransformerBridge) -> int | None:
    eos = getattr(model.tokenizer, "eos_token_id", None)
    return None if eos is None else int(eos)


def _latent_max(
    model: TransformerBridge, tokens: torch.Tensor, saes: SAESet
) -> dict[str, torch.Tensor]:
    """Each latent's maximum over the prompt's positions (one unedited bridge pass)."""
    store: dict[str, torch.Tensor] = {}

    def reader(h: str) -> Callable:
        def fn(x: torch.Tensor, hook: object) -> None:
            store[h] = saes[h].encode(x[0]).amax(0).float().cpu()

        return fn

    with torch.inference_mode():
        final_logits(model, tokens[None].to(model.cfg.device), [(h, reader(h)) for h in saes])
    return store


def _unedited(
    model: TransformerBridge,
    tokens: torch.Tensor,
    saes: SAESet,
    n_tokens: int,
    k: int,
    progress: bool = True,
) -> _Unedited:
    memo = _UNEDITED.setdefault(model, OrderedDict())
    key = (tuple(tokens.tolist()), n_tokens, k, id(saes))
    if key in memo and memo[key][0] is saes:
        memo.move_to_end(key)
        return memo[key][1]
    tw = twin(model)
    eos = _eos(model)
    options = {"n_tokens": n_tokens, "eos": eos, "desc": "before" if progress else None}
    if tw is not None:
        cont = greedy_cached(model, tw, tokens, saes, [], **options)
    else:
        cont = greedy_bridge(model, tokens, saes, [], **options)
    value = _Unedited(
        cont, top_tokens(model, cont.first_logits, k), _latent_max(model, tokens, saes)
    )
    memo[key] = (saes, value)
    if len(memo) > _MEMO:
        memo.popitem(last=False)
    return value


def warm(
    model: TransformerBridge,
    prompt: str,
    saes: SAESet,
    *,
    n_tokens: int = 20,
    k: int = TOP_K,
    prepend_bos: bool | None = None,
) -> None:
    """Generate and keep the unedited side of :func:`steer` for ``prompt`` (what a view does
    when it opens, so that its first click costs one edited generation)."""
    tokens = encode(model, prompt, prepend_bos=prepend_bos)
    if backends.is_nnsight(model):
        from ..backends._features import unedited

        unedited(model, tokens, saes, n_tokens)
        return
    _unedited(model, tokens, saes, n_tokens, k)


def shipped_max(saes: SAESet, f: Feature) -> float | None:
    """Latent ``f``'s maximum activation as the set's statistics ship it
    (``saes.stats[hook].top_values[index, 0]`` of a ``FeatureStats``, or
    ``saes.stats[hook]["max_act"][index]`` / another of :data:`MAX_ACT_KEYS`); None without."""
    stats = saes.stats.get(f.hook) if isinstance(saes.stats, dict) else None
    top_values = getattr(stats, "top_values", None)  # a FeatureStats: peaks, descending
    if top_values is not None and len(top_values) > f.index and len(top_values[f.index]):
        return float(top_values[f.index][0])
    if isinstance(stats, dict):
        for key in MAX_ACT_KEYS:
            if key in stats:
                try:
                    return float(torch.as_tensor(stats[key])[f.index])
                except (IndexError, TypeError, ValueError, RuntimeError):
                    raise InputError(
                        f"saes.stats[{f.hook!r}][{key!r}] has no value for latent "
                        f"{f.index}: it must hold one maximum per latent."
                    ) from None
    return None


def clamp_values(
    saes: SAESet,
    features: Sequence[Feature],
    scale: float,
    prompt_max: dict[str, torch.Tensor] | None,
) -> list[float]:
    """``scale`` × each latent's maximum activation: its corpus peak when the set ships
    statistics (:func:`shipped_max`), else its maximum over the prompt (``prompt_max``). A
    latent that never fires on the prompt, with no shipped maximum, has no scale to clamp
    to: an :class:`InputError`."""
    out = []
    for f in features:
        shipped = shipped_max(saes, f)
        top = shipped if shipped is not None else float(prompt_max[f.hook][f.index])  # type: ignore[index]
        if not math.isfinite(top) or top <= 0:
            raise InputError(
                f"Feature {f.id} never fires on this prompt and the SAE set ships no maximum "
                "activation for it, so 'clamp to N × its maximum' has no scale: pick a feature "
                "that fires here (the feature view lists them), or mode='ablate'."
            )
        out.append(scale * top)
    return out


def feature_edits(features: Sequence[Feature], values: Sequence[float]) -> list[LatentEdit]:
    return [LatentEdit(f.hook, f.index, v, f.pos) for f, v in zip(features, values, strict=True)]


def edit_metric(
    model: TransformerBridge,
    pairs: PromptPairs,
    saes: SAESet,
    edits: Sequence[LatentEdit],
    *,
    metric: str | MetricFn = "logit_diff",
) -> tuple[str, float, float]:
    """(metric name, value before, value after) of the edits on the pairs' clean prompts: one
    bridge pass with the SAEs spliced in where they are edited (the unedited baseline is
    shared with :func:`circuitviz.ablate`'s cache)."""
    if (seam := backends.route(model, "edit_metric")) is not None:  # nnsight: one request
        return seam(model, pairs, saes, edits, metric=metric)
    prep = _prepare(model, pairs, metric, 10)
    base = prep.base
    n_pos = base.tokens.n_pos
    for e in edits:
        if e.pos is not None and e.pos >= n_pos:
            raise InputError(f"Position {e.pos} is past the pairs' {n_pos} tokens.")
    hooked = sorted({e.hook for e in edits})
    fwd = [pair for h in hooked for pair in site_hooks(saes[h], [e for e in edits if e.hook == h])]
    with torch.inference_mode():
        logits = final_logits(
            model, base.tokens.clean, fwd, attention_mask=base.tokens.attention_mask
        )
    return base.metric.name, base.clean, float(base.metric.per_example(logits).mean())


def steer(
    model: TransformerBridge,
    prompt: str,
    *,
    features: Any,
    saes: Any,
    scale: float = DEFAULT_SCALE,
    mode: SteerMode = "clamp",
    n_tokens: int = 20,
    pairs: PromptPairs | None = None,
    metric: str | MetricFn = "logit_diff",
    answer: str | None = None,
    wrong_answer: str | None = None,
    k: int = TOP_K,
    prepend_bos: bool | None = None,
    progress: bool = True,
) -> SteerResult:
    """Clamp or ablate SAE features and compare greedy continuations of ``prompt``.

    Args:
        features: ``"L11F1234"`` (the SAE reading block 11), ``"L11F1234:P5"`` (prompt
            position 5 only), ``(hook, index)``, or a list of these.
        saes: the SAE set (``circuitviz.load_saes(...)``), or one SAE or a list of them.
        scale: ``mode="clamp"`` sets each latent to ``scale`` × its maximum activation
            (:func:`clamp_values`: shipped statistics, else the max over the prompt).
        mode: ``"clamp"`` or ``"ablate"`` (latents set to 0; ``scale`` unused).
        n_tokens: greedy tokens generated (fewer when the model emits end-of-sequence).
        pairs: prompt pairs whose metric (``metric``, on their clean prompts, edited alike)
            is reported before and after; or ``answer``/``wrong_answer``: single tokens
            whose logit difference at the prompt's next token is reported.
        k: how many top next tokens to report.
        prepend_bos: None follows the model's convention (as every analysis).
        progress: a progress bar per continuation (the views, which show their own state,
            turn it off: in a notebook each bar is a widget the browser must draw).

    The edits act through the SAEs' splice (reconstruction + error term), so with nothing
    edited the model's output is unchanged. Interrupting stops it with no hook left.
    """
    if not backends.is_nnsight(model):
        check_bridge(model)
    saes = as_sae_set(saes)
    if not isinstance(prompt, str):
        raise InputError(f"prompt must be a string, got {type(prompt).__name__}.")
    check_text(prompt, "prompt")
    if not isinstance(mode, str) or mode not in STEER_MODES:
        raise InputError(f"Unknown mode={mode!r}: use one of {STEER_MODES}.")
    scale = _check_number("scale", scale)
    n_tokens = _check_count("n_tokens", n_tokens, MAX_NEW_TOKENS)
    k = _check_count("k", k, int(model.cfg.d_vocab))
    feats = parse_features(features, saes)
    if pairs is not None:
        check_pairs(pairs)
        check_metric(metric)
    if (answer is None) != (wrong_answer is None):
        raise InputError(
            "Give both answer= and wrong_answer= (their logit difference), or neither."
        )
    answer_ids = None
    if answer is not None:
        answer_ids = (
            single_token(model, answer, "Answer"),
            single_token(model, wrong_answer, "Wrong answer"),  # type: ignore[arg-type]
        )
    tokens = encode(model, prompt, prepend_bos=prepend_bos)
    if tokens.numel() + n_tokens > model.cfg.n_ctx:
        raise InputError(
            f"The prompt's {tokens.numel()} tokens + {n_tokens} new ones exceed the model's "
            f"context of {model.cfg.n_ctx}: shorten the prompt or ask for fewer tokens."
        )
    for f in feats:
        if f.pos is not None and f.pos >= tokens.numel():
            raise InputError(
                f"Feature {f.id}: position {f.pos} is past the prompt's {tokens.numel()} tokens."
            )
    if (seam := backends.route(model, "steer")) is not None:  # nnsight: one request per edit
        return seam(
            model,
            prompt,
            tokens,
            saes,
            feats,
            mode=mode,
            scale=scale,
            n_tokens=n_tokens,
            pairs=pairs,
            metric=metric,
            answer_ids=answer_ids,
            k=k,
        )
    unedited = _unedited(model, tokens, saes, n_tokens, k, progress)
    values = (
        [0.0] * len(feats)
        if mode == "ablate"
        else clamp_values(saes, feats, scale, unedited.latent_max)
    )
    edits = feature_edits(feats, values)
    tw = twin(model) if fast_sites(model, saes, edits) else None
    desc = f"after ({mode})" if progress else None
    options = {"n_tokens": n_tokens, "eos": _eos(model), "desc": desc}
    if tw is not None:
        after = greedy_cached(
            model, tw, tokens, saes, edits, draft=unedited.continuation.ids, **options
        )
    else:
        after = greedy_bridge(model, tokens, saes, edits, **options)
    before = unedited.continuation
    metric_name = metric_before = metric_after = None
    if pairs is not None:
        metric_name, metric_before, metric_after = edit_metric(
            model, pairs, saes, edits, metric=metric
        )
    elif answer_ids is not None:
        a, w = answer_ids
        metric_name = "logit_diff"
        metric_before = float(before.first_logits[a] - before.first_logits[w])
        metric_after = float(after.first_logits[a] - after.first_logits[w])
    return SteerResult(
        prompt=prompt,
        tokens=list(model.to_str_tokens(tokens)),
        features=[f.id for f in feats],
        mode=mode,
        scale=scale,
        values=values,
        before=model.tokenizer.decode(before.ids, skip_special_tokens=True),
        after=model.tokenizer.decode(after.ids, skip_special_tokens=True),
        before_tokens=[model.to_string(i) for i in before.ids],
        after_tokens=[model.to_string(i) for i in after.ids],
        top_before=unedited.top,
        top_after=top_tokens(model, after.first_logits, k),
        metric=metric_name,
        metric_before=metric_before,
        metric_after=metric_after,
        cached=tw is not None,
    )
