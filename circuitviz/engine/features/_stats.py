"""Feature statistics over a reference corpus: top snippets, activation histograms, labels.

:func:`feature_stats` runs a model over texts once, with every SAE of a set reading its hook,
and keeps for each latent:

* its **top documents**: the ``n_top`` texts where it peaks highest, one snippet per text (the
  text's peak position), as ``(doc, pos, value)``; the texts' tokens are stored once, shared
  by every SAE, so a snippet is two integers, not repeated strings;
* a **histogram** of its non-zero activations over shared log-spaced bins, the number of
  tokens it is active on, and the number of tokens seen;
* the ids of the tokens it **promotes** most through the unembedding, and an automatic
  **label** built from its snippets' peak tokens and those promoted tokens.

The BOS position is left out (it carries outsized activations that say nothing about a
latent's meaning). :func:`save_feature_stats` / :func:`load_feature_stats` write and read them
as one compressed ``.npz`` (no pickles; every array is checked on load).
"""

from __future__ import annotations

import os
import zipfile
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from .. import _devices, _hooks
from .._pairs import InputError, check_text, uses_bos
from ..backends._base import is_nnsight
from ._sae import SAE, SAESet, as_sae_set

SCHEMA = "circuitviz.feature_stats/1"
#: Histogram bin edges shared by every latent: 8 bins per decade from 1e-3 to 1e4 (values
#: outside land in the first or last bin). Log bins resolve both rare small and large values.
HIST_EDGES = np.logspace(-3, 4, 57).astype(np.float32)
#: Tokens of context shown before and after a snippet's peak.
CONTEXT = (12, 4)


@dataclass(eq=False)
class SnippetCorpus:
    """The token ids of the texts statistics were computed on, stored once.

    Attributes:
        tokens: ``[n_tokens]`` all texts' ids, concatenated (BOS included where prepended).
        offsets: ``[n_docs + 1]`` text ``d`` is ``tokens[offsets[d]:offsets[d + 1]]``.
        name: where the texts came from (e.g. ``"reference_corpus(split='reference')"``).
    """

    tokens: np.ndarray
    offsets: np.ndarray
    name: str = ""

    @property
    def n_docs(self) -> int:
        return len(self.offsets) - 1

    def doc(self, d: int) -> np.ndarray:
        return self.tokens[self.offsets[d] : self.offsets[d + 1]]

    def window(self, d: int, pos: int, context: tuple[int, int] = CONTEXT) -> tuple[list[int], int]:
        """The ids around position ``pos`` of text ``d`` and the peak's index in them."""
        ids = self.doc(d)
        start = max(0, pos - context[0])
        return [int(i) for i in ids[start : pos + context[1] + 1]], pos - start


@dataclass(eq=False)
class FeatureStats:
    """Statistics of one SAE's latents over a corpus (see the module docstring).

    Attributes:
        hook: the hook of the SAE they describe.
        d_sae: its number of latents.
        n_tokens: tokens seen (BOS excluded).
        top_values: ``[d_sae, n_top]`` float32, each latent's peak value in its top texts,
            descending; 0 where it was active in fewer texts.
        top_doc: ``[d_sae, n_top]`` int32, the text of each snippet (-1: none).
        top_pos: ``[d_sae, n_top]`` int32, the peak's position in that text.
        hist_counts: ``[d_sae, n_bins]`` counts of non-zero activations per :data:`HIST_EDGES`
            bin.
        n_active: ``[d_sae]`` tokens with a non-zero activation.
        promoted: ``[d_sae, n_promoted]`` int32 ids of the tokens each latent's decoder
            direction promotes most (see :func:`~circuitviz.engine.features.logit_effects`).
        labels: ``d_sae`` automatic labels.
        corpus: the shared texts the snippets point into.
    """

    hook: str
    d_sae: int
    n_tokens: int
    top_values: np.ndarray
    top_doc: np.ndarray
    top_pos: np.ndarray
    hist_counts: np.ndarray
    n_active: np.ndarray
    promoted: np.ndarray
    labels: list[str]
    corpus: SnippetCorpus
    hist_edges: np.ndarray = field(default_factory=HIST_EDGES.copy)

    @property
    def n_top(self) -> int:
        return int(self.top_values.shape[1])

    def frequency(self, index: int) -> float:
        """The fraction of corpus tokens on which latent ``index`` is active."""
        return float(self.n_active[index]) / max(1, self.n_tokens)

    def snippets(self, index: int) -> list[dict[str, Any]]:
        """Latent ``index``'s top snippets: ``{"doc", "pos", "value", "ids", "peak"}`` (the
        context's ids and the peak's index in them), strongest first."""
        out = []
        for v, d, p in zip(
            self.top_values[index], self.top_doc[index], self.top_pos[index], strict=True
        ):
            if d < 0 or not v > 0:
                continue
            ids, peak = self.corpus.window(int(d), int(p))
            out.append({"doc": int(d), "pos": int(p), "value": float(v), "ids": ids, "peak": peak})
        return out

    def peak_ids(self, index: int) -> list[int]:
        """The token id at each top snippet's peak."""
        return [s["ids"][s["peak"]] for s in self.snippets(index)]

    def check(self, sae: SAE) -> None:
        if self.d_sae != sae.d_sae:
            raise InputError(
                f"The feature statistics for {self.hook!r} describe {self.d_sae} latents but "
                f"the SAE has {sae.d_sae}: recompute them with feature_stats(model, saes, texts)."
            )


# ---------------------------------------------------------------------------- computing


class _Stop(Exception):
    """Raised by the last SAE's hook: nothing after it is needed."""


def _check_texts(texts: Any) -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, Iterable):
        raise InputError("texts must be a list of strings (e.g. reference_corpus()).")
    texts = list(texts)
    if not texts:
        raise InputError("texts is empty: give at least one text.")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InputError(f"texts[{i}] is a {type(text).__name__}, not a string.")
        check_text(text, f"texts[{i}]")
    return texts


def check_sites(model: TransformerBridge, saes: SAESet) -> None:
    """Every SAE reads a hook the model has."""
    for hook, sae in saes.items():
        if hook not in model.hook_dict:
            raise InputError(
                f"The model has no hook {hook!r} for the SAE {sae.name!r}: pass SAEs trained "
                f"on this model (its residual hooks are named like 'blocks.0.hook_resid_post')."
            )


def width_checked(sae: SAE, record):
    """A hook that refuses activations of the wrong width, then calls ``record``."""

    def fn(x: torch.Tensor, hook: object):
        if x.shape[-1] != sae.d_in:
            raise InputError(
                f"The SAE {sae.name!r} reads {sae.d_in}-wide vectors but {sae.hook_name!r} "
                f"gives {x.shape[-1]}: pass an SAE trained on this model's hook."
            )
        record(x)

    return fn


def collect(
    model: TransformerBridge, saes: SAESet, tokens: torch.Tensor
) -> dict[str, torch.Tensor]:
    """The activations at every SAE's hook for ``tokens`` ``[batch, pos]`` (float32), running
    the model only up to the last of them."""
    store: dict[str, torch.Tensor] = {}
    last = list(saes)[-1]

    def recorder(hook: str):
        def record(x: torch.Tensor) -> None:
            store[hook] = x.detach().float()
            if hook == last and len(store) == len(saes):
                raise _Stop

        return record

    fwd = [(h, width_checked(s, recorder(h))) for h, s in saes.items()]
    try:
        with torch.no_grad(), _hooks.hooks(model, fwd):
            model(tokens, return_type=None)
    except _Stop:
        pass
    missing = [h for h in saes if h not in store]
    if missing:
        raise InputError(f"The forward pass never reached {missing}: is it a hook of this model?")
    return store


def _tokenize(model, texts: list[str], max_len: int, bos: bool) -> list[np.ndarray]:
    out = []
    for text in texts:
        ids = model.to_tokens(text, prepend_bos=bos, truncate=False)[0][:max_len]
        out.append(ids.cpu().numpy().astype(np.int64))
    return out


def feature_stats(
    model: TransformerBridge,
    saes: SAE | SAESet | Iterable[SAE],
    texts: Sequence[str],
    *,
    n_top: int = 5,
    max_len: int = 128,
    batch_size: int = 8,
    n_promoted: int = 5,
    prepend_bos: bool | None = None,
    corpus_name: str = "",
    progress: bool = True,
    max_request_bytes: int = 2**26,
) -> dict[str, FeatureStats]:
    """Top snippets, activation histograms, promoted tokens and labels of every latent of
    ``saes`` over ``texts`` (each cut to ``max_len`` tokens), keyed by hook name; put them in
    ``saes.stats`` or pass them to :class:`~circuitviz.FeatureView` (``stats=``).

    One forward pass per ``batch_size`` texts, stopped after the last SAE's hook, with a
    progress bar; Ctrl-C stops it and leaves no hook. Top snippets are one per text: the
    ``n_top`` texts with the highest peak, each shown around its peak position.

    On an nnsight model (locally or on NDIF) the SAEs must read a hook nnsight splices
    (``backends._features.splice_site``); a request runs as many whole batches as bring back at most
    ``max_request_bytes`` of activations (the SAE hooks' real tokens; the latents are
    encoded here), so a corpus costs about ``⌈its tokens' activations / max_request_bytes⌉``
    requests, plus one per ``max_request_bytes`` of decoder rows for the promoted tokens.
    """
    from .. import backends

    if backends.is_raw_nnsight(model):
        model = backends.wrap(model)
    saes = as_sae_set(saes)
    texts = _check_texts(texts)
    options = (
        ("n_top", n_top),
        ("max_len", max_len),
        ("batch_size", batch_size),
        ("max_request_bytes", max_request_bytes),
    )
    for name, value in options:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise InputError(f"{name}={value!r} must be a positive integer.")
    seam = backends.route(model, "feature_stats")
    if seam is None:
        check_sites(model, saes)
    else:
        from ..backends._features import check_saes

        check_saes(model, saes)  # before tokenizing: a hook nnsight cannot read names the bridge
    bos = uses_bos(model, prepend_bos)
    docs = _tokenize(model, texts, max_len, bos)
    first = 1 if bos else 0  # the BOS position is left out of every statistic
    batches = []
    for start in range(0, len(docs), batch_size):
        chunk = docs[start : start + batch_size]
        lengths = torch.tensor([len(d) for d in chunk])
        # Right padding: a causal model's real positions never see the pad tokens.
        batch = torch.zeros(len(chunk), int(lengths.max()), dtype=torch.int64)
        for i, d in enumerate(chunk):
            batch[i, : len(d)] = torch.from_numpy(d)
        batches.append((batch, lengths))
    if seam is None:
        device = next(iter(model.parameters())).device
        activations = (collect(model, saes, batch.to(device)) for batch, _ in batches)
    else:
        activations = seam(model, saes, batches, first=first, max_request_bytes=max_request_bytes)
    edges = torch.from_numpy(HIST_EDGES[1:-1].copy())
    n_bins = len(HIST_EDGES) - 1
    run: dict[str, dict[str, torch.Tensor]] = {}
    for hook, sae in saes.items():
        run[hook] = {
            "values": torch.zeros(sae.d_sae, n_top),
            "doc": torch.full((sae.d_sae, n_top), -1, dtype=torch.int64),
            "pos": torch.zeros(sae.d_sae, n_top, dtype=torch.int64),
            "hist": torch.zeros(sae.d_sae * n_bins, dtype=torch.int64),
            "active": torch.zeros(sae.d_sae, dtype=torch.int64),
        }
    n_tokens = 0
    bar = tqdm(total=len(docs), desc="feature stats", unit="text", disable=not progress)
    try:
        start = 0
        for (batch, lengths), acts in zip(batches, activations, strict=True):
            valid = torch.arange(batch.shape[1])[None, :] < lengths[:, None]
            valid[:, :first] = False
            n_tokens += int(valid.sum())
            with torch.no_grad():
                for hook, sae in saes.items():
                    f = sae.encode(acts[hook].to(sae.W_enc.device)).float().cpu()
                    _update(run[hook], f * valid[..., None], valid, start, n_top, edges, n_bins)
            start += len(batch)
            bar.update(len(batch))
    finally:
        bar.close()
    corpus = SnippetCorpus(
        tokens=np.concatenate(docs).astype(_id_dtype(model.cfg.d_vocab)),
        offsets=np.cumsum([0] + [len(d) for d in docs]).astype(np.int64),
        name=corpus_name,
    )
    out = {}
    total = sum(s.d_sae for s in saes.values())
    with tqdm(total=total, desc="promoted tokens", unit="latent", disable=not progress) as bar:
        if seam is None:
            promoted_of = {
                h: top_promoted(model, s, k=n_promoted, bar=bar) for h, s in saes.items()
            }
        else:  # on the server, every SAE's latents in as few requests as fit
            from ..backends._stats import promoted_tokens

            promoted_of = promoted_tokens(
                model, saes, k=n_promoted, max_request_bytes=max_request_bytes, bar=bar
            )
    for hook, sae in saes.items():
        r = run[hook]
        promoted = promoted_of[hook]
        stats = FeatureStats(
            hook=hook,
            d_sae=sae.d_sae,
            n_tokens=n_tokens,
            top_values=r["values"].numpy().astype(np.float32),
            top_doc=r["doc"].numpy().astype(np.int32),
            top_pos=r["pos"].numpy().astype(np.int32),
            hist_counts=r["hist"].view(sae.d_sae, n_bins).numpy().astype(np.uint32),
            n_active=r["active"].numpy(),
            promoted=promoted.numpy().astype(np.int32),
            labels=[],
            corpus=corpus,
        )
        strings = token_strings(model)
        stats.labels = [
            auto_label(stats.peak_ids(i), stats.promoted[i].tolist(), strings)
            for i in range(sae.d_sae)
        ]
        out[hook] = stats
    return out


def _update(r, f, valid, start, n_top, edges, n_bins) -> None:
    """Fold one batch's latents ``f`` ``[batch, pos, d_sae]`` into the running statistics."""
    peak, where = f.max(dim=1)  # [batch, d_sae]: each text's peak, one snippet per text
    batch = f.shape[0]
    docs = (start + torch.arange(batch))[:, None].expand_as(peak)
    values = torch.cat([r["values"], peak.T], dim=1)
    doc = torch.cat([r["doc"], docs.T], dim=1)
    pos = torch.cat([r["pos"], where.T], dim=1)
    # Ties keep the earlier text: a stable sort on descending values.
    order = torch.sort(-values, dim=1, stable=True).indices[:, :n_top]
    r["values"] = values.gather(1, order)
    r["doc"] = torch.where(r["values"] > 0, doc.gather(1, order), -1)
    r["pos"] = torch.where(r["values"] > 0, pos.gather(1, order), 0)
    nz = (f > 0).nonzero(as_tuple=True)
    v = f[nz]
    bins = torch.bucketize(v, edges)  # bin i holds (edges[i], edges[i + 1]]
    r["hist"] += torch.bincount(nz[2] * n_bins + bins, minlength=r["hist"].numel())
    r["active"] += torch.bincount(nz[2], minlength=r["active"].numel())


def _id_dtype(d_vocab: int):
    return np.uint16 if d_vocab <= 2**16 else np.uint32


# ------------------------------------------------------------------ logit effects, labels


def unembed_direction(model: TransformerBridge) -> tuple[torch.Tensor, torch.Tensor]:
    """``(W_U, w)``: a residual direction ``d``'s logit effect is ``(c(d) ⊙ w) @ W_U`` where
    ``c`` centres ``d`` for a LayerNorm (identity for RMSNorm) and ``w`` is the final norm's
    weight (ones without one). The norm's per-token ``1/scale`` is left out: it is positive
    and the same for every vocabulary entry, so it changes no ranking."""
    from .._logit_attribution import final_norm

    _, weight, _ = final_norm(model)
    (W_U,) = _devices.read(model, model.unembed, "W_U")  # offloaded: read while onloaded
    W_U = W_U.float()
    w = torch.ones(W_U.shape[0]) if weight is None else weight.float().cpu()
    return W_U, w.to(W_U.device)


def decoder_directions(model: TransformerBridge, sae: SAE, index: torch.Tensor | slice):
    """The residual directions ``W_dec[index]`` as the final norm sees them (centred for a
    LayerNorm) and scaled by its weight."""
    from .._logit_attribution import final_norm

    kind, _, _ = final_norm(model)
    W_U, w = unembed_direction(model)
    d = sae.W_dec[index].float().to(W_U.device)
    if kind == "LN":
        d = d - d.mean(dim=-1, keepdim=True)
    return d * w, W_U


def logit_effects_of(model: TransformerBridge, sae: SAE, index: int) -> torch.Tensor:
    """``[d_vocab]`` the logit effect of latent ``index``'s decoder direction (unit
    activation): ``(c(W_dec[index]) ⊙ w) @ W_U`` (see :func:`unembed_direction`)."""
    d, W_U = decoder_directions(model, sae, index)
    return (d @ W_U).cpu()


def top_promoted(
    model: TransformerBridge,
    sae: SAE,
    *,
    k: int = 5,
    latents: Sequence[int] | None = None,
    chunk: int = 256,
    bar: Any = None,
) -> torch.Tensor:
    """``[n, k]`` the ids of the tokens each latent (all, or ``latents``) promotes most, in
    chunks of latents (the full ``[d_sae, d_vocab]`` matrix would not fit in memory for a large
    vocabulary); ``bar`` is advanced by each chunk's size."""
    index = torch.arange(sae.d_sae) if latents is None else torch.as_tensor(list(latents))
    out = []
    with torch.no_grad():
        for start in range(0, len(index), chunk):
            part = index[start : start + chunk]
            if is_nnsight(model):  # where the weights are (on NDIF: only the top k come back)
                from ..backends._features import unembedded

                out.append(unembedded(model, sae, part.tolist(), k)["up_i"].cpu())
            else:
                d, W_U = decoder_directions(model, sae, part)
                out.append((d @ W_U).topk(k, dim=-1).indices.cpu())
            if bar is not None:
                bar.update(len(part))
    return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.int64)


_STRINGS: dict[tuple[int, int, str], list[str]] = {}


def token_strings(model: TransformerBridge) -> list[str]:
    """Every vocabulary entry as the model writes it (cached per model)."""
    tok = model.tokenizer
    # id() alone could be reused by another tokenizer after this one is freed.
    key = (id(tok), model.cfg.d_vocab, str(getattr(tok, "name_or_path", "")))
    if key not in _STRINGS:
        _STRINGS[key] = [tok.decode([i]) for i in range(model.cfg.d_vocab)]
    return _STRINGS[key]


def _show(token: str) -> str:
    text = token.replace("\n", "↵").replace("\t", "⇥")
    return text if text.strip() else text.replace(" ", "␣") or "∅"


def auto_label(peaks: Sequence[int], promoted: Sequence[int], strings: Sequence[str]) -> str:
    """A short label: the commonest peak tokens of the top snippets, then ``→`` the tokens
    the latent promotes (``Mary/John →  said |  told``); "dead" when it never fired."""
    peak_part = ""
    if peaks:
        common = [t for t, _ in Counter(peaks).most_common(2)]
        peak_part = "/".join(repr(_show(strings[t]))[1:-1] for t in common)
    promo_part = " | ".join(_show(strings[t]) for t in list(promoted)[:2])
    if not peak_part:
        return f"(dead in corpus) → {promo_part}" if promo_part else "(dead in corpus)"
    return f"{peak_part} → {promo_part}" if promo_part else peak_part


# ---------------------------------------------------------------------------- file format


def save_feature_stats(stats: Mapping[str, FeatureStats], path: str | os.PathLike) -> Path:
    """Write ``stats`` (from :func:`feature_stats`, all over one corpus) to a compressed
    ``.npz``; returns the path."""
    if not stats:
        raise InputError("No statistics to save.")
    items = list(stats.values())
    corpus = items[0].corpus
    if any(s.corpus is not corpus for s in items):
        raise InputError("Statistics saved together must share one corpus (one feature_stats run).")
    arrays: dict[str, np.ndarray] = {
        "schema": np.array(SCHEMA),
        "hooks": np.array([s.hook for s in items]),
        "corpus_tokens": corpus.tokens,
        "corpus_offsets": corpus.offsets,
        "corpus_name": np.array(corpus.name),
        "hist_edges": HIST_EDGES,
    }
    for i, s in enumerate(items):
        arrays[f"{i}/n_tokens"] = np.array(s.n_tokens, dtype=np.int64)
        arrays[f"{i}/top_values"] = s.top_values.astype(np.float32)
        arrays[f"{i}/top_doc"] = s.top_doc.astype(np.int32)
        arrays[f"{i}/top_pos"] = s.top_pos.astype(np.int32)
        small = s.hist_counts.max(initial=0) < 2**16  # most corpora: half the bytes
        arrays[f"{i}/hist_counts"] = s.hist_counts.astype(np.uint16 if small else np.uint32)
        arrays[f"{i}/n_active"] = s.n_active.astype(np.int64)
        arrays[f"{i}/promoted"] = s.promoted.astype(np.int32)
        arrays[f"{i}/labels"] = np.array(s.labels)
    path = Path(path)
    with open(path, "wb") as f:
        np.savez_compressed(f, **arrays)
    return path


def load_feature_stats(path: str | os.PathLike) -> dict[str, FeatureStats]:
    """Read statistics written by :func:`save_feature_stats`, keyed by hook (for
    ``SAESet.stats``). Raises InputError for a file that is not one, or is inconsistent."""
    path = Path(path)
    try:
        data = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise InputError(f"Can't read feature statistics from {str(path)!r}: {err}") from None
    with data:
        if "schema" not in data or str(data["schema"]) != SCHEMA:
            raise InputError(
                f"{str(path)!r} is not a circuitviz feature-statistics file ({SCHEMA}); "
                "write one with save_feature_stats()."
            )
        try:
            return _read(data)
        except (KeyError, ValueError, IndexError) as err:
            raise InputError(f"{str(path)!r} is a damaged feature-statistics file: {err}") from None


def _read(data) -> dict[str, FeatureStats]:
    tokens, offsets = data["corpus_tokens"], data["corpus_offsets"]
    if (
        offsets.ndim != 1
        or offsets[0] != 0
        or offsets[-1] != len(tokens)
        or (np.diff(offsets) < 0).any()
    ):
        raise ValueError("corpus offsets do not index its tokens")
    corpus = SnippetCorpus(tokens, offsets, str(data["corpus_name"]))
    lengths = np.diff(offsets)
    out = {}
    for i, hook in enumerate(str(h) for h in data["hooks"]):
        top_values = data[f"{i}/top_values"].astype(np.float32)
        d_sae, n_top = top_values.shape
        top_doc, top_pos = data[f"{i}/top_doc"], data[f"{i}/top_pos"].astype(np.int32)
        hist = data[f"{i}/hist_counts"]
        if hist.dtype.kind != "u":
            raise ValueError(f"histogram counts of {hook!r} are not unsigned integers")
        labels = [str(x) for x in data[f"{i}/labels"]]
        shapes_ok = (
            top_doc.shape == top_pos.shape == (d_sae, n_top)
            and hist.shape == (d_sae, len(HIST_EDGES) - 1)
            and data[f"{i}/n_active"].shape == (d_sae,)
            and data[f"{i}/promoted"].shape[0] == d_sae
            and len(labels) == d_sae
        )
        if not shapes_ok:
            raise ValueError(f"arrays of {hook!r} disagree in shape")
        used = top_doc >= 0
        if (top_doc >= corpus.n_docs).any() or (top_pos[used] >= lengths[top_doc[used]]).any():
            raise ValueError(f"snippets of {hook!r} point outside the corpus")
        if not np.isfinite(top_values).all():
            raise ValueError(f"non-finite snippet values for {hook!r}")
        out[hook] = FeatureStats(
            hook=hook,
            d_sae=int(d_sae),
            n_tokens=int(data[f"{i}/n_tokens"]),
            top_values=top_values,
            top_doc=top_doc.astype(np.int32),
            top_pos=top_pos,
            hist_counts=hist.astype(np.uint32),
            n_active=data[f"{i}/n_active"],
            promoted=data[f"{i}/promoted"].astype(np.int32),
            labels=labels,
            corpus=corpus,
        )
    return out
