"""FeatureView: the SAE latents most active on each token of a prompt, and a card per latent
(its activations, top snippets, logit effects, histogram and an editable label); search.

Protocol (mirrors ``js/src/feature.ts``)::

    view → kernel  {"type": "card", "feature": "blocks.1.hook_resid_post:17", "request": 3}
                   {"type": "label", "feature": "…:17", "label": "names", "request": 4}
                   {"type": "search", "query": " Mary", "by": "token", "request": 5}
    kernel → view  the ``feature`` / ``card`` / ``label_edits`` / ``search`` traits, and
                   {"type": "label_saved", "request": 4, "feature": "…:17", "label": "names"}

The kernel decides everything (which latents are shown, their colours' scale, labels,
matches); the page draws what it is sent and writes only ``selected_token``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import traitlets as t
from tqdm.auto import tqdm

from ..engine import InputError
from ..engine.features import (
    SAE,
    FeatureStats,
    SAESet,
    as_sae_set,
    card,
    feature_id,
    parse_feature,
    search,
)
from ..engine.features._explorer import (
    MAX_LABEL,
    chip_latents,
    explorer_activations,
    prefetch_logit_effects,
)
from ._base import STATIC, View, error_text, quote
from ._codec import encode

#: Most cards a standalone HTML export embeds (the latents strongest on the prompt): each
#: costs a logit-effect product and a few KiB.
MAX_STATIC_CARDS = 300

#: Control characters a label may not hold (it is one line of text).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def check_label(value: Any) -> str:
    """A label as stored: stripped, one line, at most :data:`MAX_LABEL` characters ('' clears
    an edit, back to the automatic label)."""
    if not isinstance(value, str):
        raise InputError(f"A label is text, got {type(value).__name__}.")
    value = value.strip()
    if len(value) > MAX_LABEL:
        raise InputError(f"A label has at most {MAX_LABEL} characters; got {len(value)}.")
    if _CONTROL.search(value):
        raise InputError("A label is one line of text: remove line breaks and control characters.")
    return value


class FeatureView(View):
    """A prompt's SAE latents: for each token (rows) and each SAE (columns) the ``k`` most
    active latents, coloured by activation relative to that SAE's largest on the prompt.
    Click a token to list its latents; click a latent for its card: its activation on every
    token, its top snippets from the reference corpus (peak marked), the tokens it promotes
    and suppresses through the unembedding, its activation histogram over the corpus, and its
    label, which you can edit (``view.labels`` reads the edits back). Search latents by label or
    by token.

    Snippets and histograms come from ``stats`` (``feature_stats(model, saes, texts)``) or
    ``saes.stats`` (shipped with the demo SAEs); without them the card shows the rest.
    """

    _esm = STATIC / "feature.js"
    BUNDLE: ClassVar[str] = "feature"
    STATE_KEYS = ("selected_token", "feature", "label_edits")
    #: The only trait feature.ts writes (a clicked token); cards, labels and searches are
    #: messages the kernel validates and answers through the kernel-owned traits.
    FRONTEND_TRAITS: ClassVar[frozenset[str]] = frozenset({"selected_token"})

    tokens = t.List(t.Unicode()).tag(sync=True)
    """The prompt's tokens (BOS included when prepended)."""

    sites = t.List(t.Dict()).tag(sync=True)
    """One entry per SAE, in model order: ``{"hook", "name", "d_sae", "stats"}`` (``stats``:
    whether snippets and histograms exist for it)."""

    top = t.Dict().tag(sync=True)
    """Per hook: ``{"index": int32 [pos, k], "value": float32 [pos, k]`` (binary), ``"max"``
    (the largest activation of that SAE on the prompt's text, BOS left out: the colour
    scale's top)}."""

    chip_labels = t.Dict().tag(sync=True)
    """The label of every latent in ``top`` (edited, else automatic), keyed by feature id."""

    selected_token = t.Int(-1).tag(sync=True)
    """The clicked token's position (-1: none); written by the page."""

    feature = t.Unicode("").tag(sync=True)
    """The latent whose card is shown, ``"hook:index"`` ('' for none)."""

    card = t.Dict().tag(sync=True)
    """The card of ``feature`` (see :func:`circuitviz.engine.features.card`)."""

    label_edits = t.List(t.List()).tag(sync=True)
    """Your edited labels as ``[feature id, label]`` pairs (``view.labels`` as a dict)."""

    search_results = t.Dict().tag(sync=True)
    """The last search: ``{"query", "by", "results": [{"id", "site", "label", "score",
    "why"}, …]}``."""

    model_name = t.Unicode("").tag(sync=True)
    """The model's name, for the title."""

    def __init__(
        self,
        model: Any,
        prompt: str,
        *,
        saes: SAE | SAESet | Iterable[SAE],
        stats: Mapping[str, FeatureStats] | None = None,
        k: int = 5,
        feature: str | None = None,
        prepend_bos: bool | None = None,
        state: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        saes = as_sae_set(saes)
        stats = dict(saes.stats if stats is None else stats)
        for hook, st in stats.items():
            if not isinstance(st, FeatureStats):
                raise InputError(
                    f"stats[{hook!r}] is a {type(st).__name__}; pass feature_stats(...) or "
                    "load_feature_stats(path)."
                )
            if hook in saes:
                st.check(saes[hook])
        self._model, self._saes = model, saes
        self._stats = {h: s for h, s in stats.items() if h in saes}
        # On nnsight the chips' label data rides with the latents (one request where it can).
        unlabelled = [h for h in saes if h not in self._stats]
        self._acts = explorer_activations(
            model, prompt, saes, k=k, prepend_bos=prepend_bos, label=unlabelled
        )
        super().__init__(**kwargs)
        with self.hold_trait_notifications():
            self.model_name = self._acts.model_name
            self.tokens = self._acts.tokens
            self.sites = [
                {"hook": h, "name": s.name, "d_sae": s.d_sae, "stats": h in self._stats}
                for h, s in saes.items()
            ]
            self.top = self._top_payload()
            self.chip_labels = self._chip_labels()
        self.observe(self._on_feature, names=["feature"])
        if feature is not None:
            self.show_feature(feature)
        self._apply_state(state)

    # -- payloads ----------------------------------------------------------------------------
    def _top_payload(self) -> dict[str, Any]:
        a = self._acts
        # The colour scale's top leaves the BOS out (as the corpus statistics do): its
        # outsized activations would wash out every other token.
        text = slice(a.first, None) if len(a.tokens) > a.first else slice(None)
        return {
            h: {
                "index": encode(a.top_index[h], "int32"),
                "value": encode(a.top_value[h], "float32"),
                "max": float(a.latents[h][text].max()),
            }
            for h in self._saes
        }

    def _chip_labels(self) -> dict[str, str]:
        from ..engine.features._explorer import labels_for

        out, edited = {}, self.labels
        for h, sae in self._saes.items():
            shown = chip_latents(self._acts, h)
            auto = labels_for(self._model, sae, shown, self._stats.get(h))
            for i, label in zip(shown, auto, strict=True):
                out[feature_id(h, i)] = edited.get(feature_id(h, i)) or label
        return out

    # -- Python API --------------------------------------------------------------------------
    @property
    def activations(self):
        """The :class:`~circuitviz.engine.features.FeatureActivations` shown."""
        return self._acts

    @property
    def stats(self) -> dict[str, FeatureStats]:
        """The feature statistics in use, by hook."""
        return dict(self._stats)

    @property
    def labels(self) -> dict[str, str]:
        """Your edited labels, by feature id (``"hook:index"``)."""
        return dict((fid, label) for fid, label in self.label_edits)

    def label_of(self, feature: str) -> str:
        """The label shown for ``feature``: your edit, else the automatic one."""
        hook, index = parse_feature(self._saes, feature)
        edited = self.labels.get(feature_id(hook, index))
        if edited:
            return edited
        from ..engine.features._explorer import label_for

        return label_for(self._model, self._saes[hook], index, self._stats.get(hook))

    def show_feature(self, feature: str, index: int | None = None) -> dict[str, Any]:
        """Show the card of ``feature`` (``"hook:index"``, or a hook and ``index``); returns
        it. Raises InputError for an unknown hook or an index out of range."""
        fid = feature if index is None else feature_id(feature, index)
        hook, i = parse_feature(self._saes, fid)
        fid = feature_id(hook, i)
        if fid == self.feature:
            self._on_feature({"new": fid})
        else:
            self.feature = fid
        return self.card

    def set_label(self, feature: str, label: str) -> None:
        """Set the label of ``feature`` ('' restores the automatic one)."""
        hook, index = parse_feature(self._saes, feature)
        fid = feature_id(hook, index)
        label = check_label(label)
        edits = [[f, text] for f, text in self.label_edits if f != fid]
        if label:
            edits.append([fid, label])
        self.label_edits = edits

    def find(self, query: str, *, by: str = "label") -> list[dict[str, Any]]:
        """Latents matching ``query`` by label (substring) or by token (see
        :func:`circuitviz.engine.features.search`); also shown in the view."""
        results = search(
            self._model,
            self._saes,
            query,
            by=by,
            acts=self._acts,
            stats=self._stats,
            labels=self.labels,
        )
        self.search_results = {"query": query, "by": by, "results": results}
        return results

    def compute_stats(self, texts: Iterable[str] | None = None, **options: Any) -> None:
        """Compute snippets, histograms and labels for the SAEs without statistics, over
        ``texts`` (default: the reference corpus), with a progress bar; options as
        :func:`~circuitviz.engine.features.feature_stats`."""
        from ..engine.features import feature_stats

        if texts is None:
            from ..engine.features._corpus import reference_corpus

            texts = reference_corpus(self._model, split="reference")
        missing = [s for h, s in self._saes.items() if h not in self._stats]
        if not missing:
            return
        self._stats.update(feature_stats(self._model, missing, texts, **options))
        with self.hold_trait_notifications():
            self.sites = [{**s, "stats": s["hook"] in self._stats} for s in self.sites]
            self.chip_labels = self._chip_labels()
        if self.feature:
            self._on_feature({"new": self.feature})

    # -- validation and updates ----------------------------------------------------------------
    @t.validate("feature")
    def _check_feature(self, proposal: Any) -> str:
        value = proposal["value"]
        if value == "":
            return value
        try:
            hook, index = parse_feature(self._saes, value)
        except InputError as err:
            raise t.TraitError(str(err)) from None
        return feature_id(hook, index)

    @t.validate("selected_token")
    def _check_token(self, proposal: Any) -> int:
        value = proposal["value"]
        if not -1 <= value < len(self.tokens):
            raise t.TraitError(
                f"selected_token={quote(value)} is out of range: the prompt has "
                f"{len(self.tokens)} tokens (-1: none)."
            )
        return value

    @t.validate("label_edits")
    def _check_edits(self, proposal: Any) -> list[list[str]]:
        out: dict[str, str] = {}
        try:
            for pair in proposal["value"]:
                if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                    raise InputError("label_edits holds [feature id, label] pairs.")
                hook, index = parse_feature(self._saes, pair[0])
                label = check_label(pair[1])
                if label:
                    out[feature_id(hook, index)] = label
        except InputError as err:
            raise t.TraitError(str(err)) from None
        return [[f, text] for f, text in out.items()]

    @t.observe("label_edits")
    def _on_labels(self, change: Any) -> None:
        self.chip_labels = self._chip_labels()
        if self.feature and self.card:
            self.card = {**self.card, "label": self.label_of(self.feature)}
        if self.search_results:
            for r in self.search_results["results"]:
                r["label"] = self.label_of(r["id"])
            self.search_results = dict(self.search_results)

    def _on_feature(self, change: Any) -> None:
        fid = change["new"]
        if not fid:
            self.card = {}
            return
        hook, index = parse_feature(self._saes, fid)
        self.card = card(
            self._model,
            self._saes,
            self._acts,
            hook,
            index,
            stats=self._stats.get(hook),
            label=self.label_of(fid),
        )
        self.error = ""

    # -- messages ------------------------------------------------------------------------------
    def _msg_card(self, content: dict[str, Any]) -> None:
        try:
            self.show_feature(content.get("feature"))
        except t.TraitError as err:
            raise InputError(error_text(err)) from None

    def _msg_label(self, content: dict[str, Any]) -> None:
        fid, label = content.get("feature"), content.get("label")
        self.set_label(fid, label)
        self.error = ""
        self.send(
            {
                "type": "label_saved",
                "request": content.get("request"),
                "feature": fid,
                "label": self.label_of(fid),
            }
        )

    def _msg_search(self, content: dict[str, Any]) -> None:
        self.find(content.get("query"), by=content.get("by", "label"))
        self.error = ""

    # -- export --------------------------------------------------------------------------------
    def static_replies(self) -> list[dict[str, Any]]:
        """For a standalone page: the cards of the grid's latents (the
        :data:`MAX_STATIC_CARDS` strongest on the prompt), so clicks work without a kernel."""
        from ..engine.features._explorer import card as build

        peak: dict[str, float] = {}
        for h in self._saes:
            values, indices = self._acts.top_value[h], self._acts.top_index[h]
            for i, v in zip(indices.flatten().tolist(), values.flatten().tolist(), strict=True):
                fid = feature_id(h, i)
                if v > 0 and v > peak.get(fid, 0.0):
                    peak[fid] = v
        chosen = sorted(peak, key=lambda f: -peak[f])[:MAX_STATIC_CARDS]
        # on nnsight: every card's logit effects in one request, not one per card
        prefetch_logit_effects(
            self._model, self._saes, [parse_feature(self._saes, f) for f in chosen]
        )
        out = []
        bar = tqdm(chosen, desc="feature cards", unit="card", leave=False, disable=len(chosen) < 50)
        for fid in bar:
            hook, index = parse_feature(self._saes, fid)
            c = build(
                self._model,
                self._saes,
                self._acts,
                hook,
                index,
                stats=self._stats.get(hook),
                label=self.label_of(fid),
            )
            out.append(
                {
                    "match": {"type": "card", "feature": fid},
                    "messages": [[{"type": "card", "card": c}, []]],
                }
            )
        return out

    def figure(self, **options: Any) -> Any:
        """The shown card as a publication figure: activation on each prompt token, logit
        effects, activation histogram and top snippets."""
        from ..export._feature_figure import feature_figure

        if not self.card:
            raise InputError("No feature is shown: pick one (view.show_feature('hook:index')).")
        return feature_figure(self.card, tokens=self.tokens, **options)
