"""Greedy generation with SAE latent edits, fast: a KV cache through a plain Hugging Face copy
of the bridge's model that shares its weights.

Why a copy: TransformerLens's bridge swaps its own components into the Hugging Face module
tree, and its KV-cache path gives wrong logits after the first token on the models here
(measured: 24 logits off on the demo model), so the bridge can only generate by re-running
the whole sequence for every token (3.3 s for 20 tokens on the demo model, 2-core CPU).
The copy (:func:`twin`) is the same Hugging Face class built from the same config, whose
parameters and buffers *are* the bridge's tensors (no copy, no extra memory); it runs Hugging
Face's own cached attention. The SAE splice of :mod:`._splice` runs where the bridge's
hook reads the same value: the same hook functions, attached to the module whose input or
output the bridge hook is (:mod:`._twin_sites`: resid_pre/post at a decoder layer, attn_out
and mlp_out at the attention and MLP outputs, resid_mid at the second norm's input, a
transcoder's reads and its MLP-output write). Models the copy cannot be built for, and
hooks it has no place for, use the bridge-hooked loop without a cache
(:func:`greedy_bridge`), which is exact and slow.

``tests/test_steer.py`` and ``tests/test_steer_sites.py`` check the two paths give the same
tokens and first-token logits within 1e-4, at every site kind, on the tiny models and on
the demo model.
"""

from __future__ import annotations

import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from .. import _devices
from .._hooks import hooks, module_hooks
from ._sae import SAESet
from ._splice import ErrorEdit, LatentEdit
from ._twin_sites import bridge_hooks, plain_name, twin_hooks

#: Guessed tokens checked per pass. With :class:`SkinnyLinear` a pass over 1 + 1 tokens costs
#: what a pass over 1 does, 1 + 3 about 1.3 times that and 1 + 6 about 2.8 times; a clamped
#: continuation seldom follows a guess for long. Measured on the demo model (10 clamps, CPU
#: time, 1 thread): median 1.04 s for 20 tokens with 1, 1.15 s with 0, 1.30 s with 2, 1.34 s
#: with 3, 1.74 s with 6 guesses.
LOOKAHEAD = 1
#: Up to this many rows, the twin's linear layers compute ``weight @ x.T`` (see
#: :class:`SkinnyLinear`).
SKINNY_ROWS = 4


_TWINS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass(eq=False)
class Twin:
    """A plain Hugging Face model sharing the bridge's tensors, and its decoder layers;
    ``points``: where each bridge hook runs on it (:func:`._twin_sites.twin_point`)."""

    model: torch.nn.Module
    layers: list[torch.nn.Module]
    points: dict = field(default_factory=dict)


def _build_twin(model: TransformerBridge) -> Twin | None:
    hf = getattr(model, "original_model", None)
    if hf is None or not hasattr(hf, "config"):
        return None
    if _devices.is_dispatched(hf):
        # accelerate's hooks (onloading weights, moving inputs between GPUs) sit on the
        # bridged modules and would not be on the copy: use the bridge loop.
        return None
    # Every tensor of the bridged tree under its plain Hugging Face name (the bridge also lists
    # aliases such as "attn.q"; the plain model never asks for those).
    tensors: dict[str, torch.Tensor] = {}
    for name, p in hf.named_parameters(remove_duplicate=False):
        tensors.setdefault(plain_name(name), p)
    for name, b in hf.named_buffers(remove_duplicate=False):
        tensors.setdefault(plain_name(name), b)
    try:
        with torch.device("meta"):
            twin = type(hf)(hf.config)
    except Exception:  # an architecture whose class can't be rebuilt from its config
        return None
    for name, _ in [
        *twin.named_parameters(remove_duplicate=False),
        *twin.named_buffers(remove_duplicate=False),
    ]:
        owner_name, _, leaf = name.rpartition(".")
        owner = twin.get_submodule(owner_name)
        source = tensors.get(name)
        if source is None and leaf == "weight" and getattr(hf.config, "tie_word_embeddings", 0):
            source = tensors.get(plain_name(_embedding_name(hf)))  # a tied unembedding
        if source is None:
            return None
        if leaf in owner._parameters:
            owner._parameters[leaf] = source  # the very same Parameter: weights stay shared
        else:
            owner._buffers[leaf] = source
    twin.eval()
    for module in twin.modules():
        if type(module) is torch.nn.Linear:
            module.__class__ = SkinnyLinear  # the twin's own modules; the bridge's are untouched
    layers = _decoder_layers(model, hf, twin)
    return None if layers is None else Twin(twin, layers)


class SkinnyLinear(torch.nn.Linear):
    """A linear layer for decoding a few tokens at a time on a CPU.

    ``F.linear`` on 1 row goes to MKL's matrix-vector product and on 2–7 rows to a general
    product that repacks the weight, both slow on this CPU; ``weight @ x.T`` (the weight read
    as the left factor, streamed once) is 1.65 times faster for 1–4 rows on the demo's shapes
    (1 thread, CPU time: 15.9 ms instead of 26.3 ms for 1 row over 318 MB of weights, 21 ms
    instead of 34 ms for 4). One row is doubled because a one-column right factor goes back to
    the slow matrix-vector path. Same weights, same sums in another order: float rounding
    only (the twin's logits are checked against the bridge's).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // x.shape[-1] if x.shape[-1] else 0
        if not 1 <= rows <= SKINNY_ROWS or x.device.type != "cpu" or x.dtype != self.weight.dtype:
            return torch.nn.functional.linear(x, self.weight, self.bias)
        flat = x.reshape(rows, x.shape[-1])
        if rows == 1:
            flat = torch.cat([flat, flat])
        y = (self.weight @ flat.T)[:, :rows].T
        if self.bias is not None:
            y = y + self.bias
        return y.contiguous().reshape(*x.shape[:-1], self.out_features)


def _embedding_name(hf: torch.nn.Module) -> str:
    emb = hf.get_input_embeddings()
    for name, module in hf.named_modules():
        if module is emb:
            return f"{name}.weight"
    return ""


def _decoder_layers(
    model: TransformerBridge, hf: torch.nn.Module, twin: torch.nn.Module
) -> list[torch.nn.Module] | None:
    """The twin's module for each bridge block, found by where the block sits in the bridged
    Hugging Face tree."""
    where = {id(m): name for name, m in hf.named_modules()}
    out = []
    for block in model.blocks:
        name = where.get(id(block))
        if name is None:
            return None
        try:
            out.append(twin.get_submodule(plain_name(name)))
        except AttributeError:
            return None
    return out


def twin(model: TransformerBridge) -> Twin | None:
    """The model's plain Hugging Face copy (built once per model), or None where it can't be
    built; its logits are checked against the bridge's once, on a short input."""
    if model not in _TWINS:
        built = _build_twin(model)
        if built is not None and not _agrees(model, built):
            built = None
        _TWINS[model] = built
    return _TWINS[model]


def _agrees(model: TransformerBridge, tw: Twin) -> bool:
    tokens = torch.arange(min(8, model.cfg.d_vocab), device=model.cfg.device)[None]
    with torch.inference_mode():
        ref = model(tokens, return_type="logits")
        got = tw.model(input_ids=tokens).logits
    return bool(ref.shape == got.shape and (ref - got).abs().max() <= 1e-4 * (1 + ref.abs().max()))


def fast_sites(
    model: TransformerBridge, saes: SAESet, edits: Sequence[LatentEdit | ErrorEdit]
) -> bool:
    """Whether :func:`greedy_cached` can run these edits: the twin exists and has a place for
    every hook their splices attach to."""
    tw = twin(model)
    return (
        tw is not None
        and twin_hooks(model, tw.model, bridge_hooks(saes, edits), tw.points) is not None
    )


@dataclass(eq=False)
class Greedy:
    """A greedy continuation: its token ids and the logits of its first token ``[d_vocab]``."""

    ids: list[int]
    first_logits: torch.Tensor


def greedy_bridge(
    model: TransformerBridge,
    tokens: torch.Tensor,
    saes: SAESet,
    edits: Sequence[LatentEdit | ErrorEdit],
    *,
    n_tokens: int,
    eos: int | None,
    desc: str | None = "generating",  # None: no progress bar
) -> Greedy:
    """The reference loop: one full bridge forward pass per new token, splice hooks attached
    (edits at positions past the prompt never apply; pos edits are checked by the caller)."""
    fwd = bridge_hooks(saes, edits)
    ids: list[int] = []
    first = None
    seq = tokens[None].to(model.cfg.device)
    with torch.inference_mode(), hooks(model, fwd):
        for _ in tqdm(range(n_tokens), desc=desc, leave=False, disable=desc is None):
            logits = model(seq, return_type="logits")[0, -1].float()
            first = logits.cpu() if first is None else first
            nxt = int(logits.argmax())
            if nxt == eos:
                break
            ids.append(nxt)
            seq = torch.cat([seq, seq.new_tensor([[nxt]])], 1)
    assert first is not None
    return Greedy(ids, first)


def greedy_cached(
    model: TransformerBridge,
    tw: Twin,
    tokens: torch.Tensor,
    saes: SAESet,
    edits: Sequence[LatentEdit | ErrorEdit],
    *,
    n_tokens: int,
    eos: int | None,
    draft: Sequence[int] = (),
    lookahead: int | None = None,
    desc: str | None = "generating",  # None: no progress bar
) -> Greedy:
    """The same continuation as :func:`greedy_bridge`, through the twin with a KV cache.

    On a CPU one new token costs about as much as reading every weight once, so each pass also
    *checks* up to ``lookahead`` (default :data:`LOOKAHEAD`) guessed tokens
    (:func:`propose`: ``draft``, e.g. the unedited continuation, where the text so far agrees
    with it, else the continuation of the last n-gram seen earlier). A guess is kept only if it is the pass's own greedy choice, so the
    tokens are those of one-token-at-a-time greedy decoding; a wrong guess costs a little
    compute, never a different token. The cache is cut back to the kept tokens.
    """
    from transformers import DynamicCache

    lookahead = LOOKAHEAD if lookahead is None else lookahead
    state = {"offset": 0}
    fns = bridge_hooks(saes, edits, offset=lambda: state["offset"])
    attached = twin_hooks(model, tw.model, fns, tw.points)
    if attached is None:
        raise RuntimeError("an edited hook has no place on the twin: check fast_sites() first")
    post, pre = attached
    prompt = [int(t) for t in tokens.tolist()]
    ids: list[int] = []
    first = None
    cache = DynamicCache()
    pending = list(prompt)  # tokens whose keys and values are not in the cache yet
    device = model.cfg.device
    bar = tqdm(total=n_tokens, desc=desc, leave=False, disable=desc is None)
    try:
        with torch.inference_mode(), module_hooks(post, pre):
            while len(ids) < n_tokens:
                guess = propose(prompt, ids, draft, min(lookahead, n_tokens - len(ids) - 1))
                feed = torch.tensor([pending + guess], device=device)
                out = tw.model(
                    input_ids=feed, cache=cache, use_cache=True, logits_to_keep=len(guess) + 1
                )
                logits = out.logits[0].float()
                first = logits[0].cpu() if first is None else first
                choice = logits.argmax(-1).tolist()
                kept, stop = [], False
                for j, tok in enumerate(choice):
                    if tok == eos or len(ids) + len(kept) == n_tokens:
                        stop = True
                        break
                    kept.append(tok)
                    if j == len(guess) or guess[j] != tok:
                        break
                ids += kept
                bar.update(len(kept))
                if stop or not kept:
                    break
                # In the cache now: the pending tokens and the guesses; keep those confirmed.
                state["offset"] += len(pending) + len(kept) - 1
                extra = cache.get_seq_length() - state["offset"]
                if extra:  # (transformers' crop takes a negative count to remove)
                    cache.crop(-extra)
                pending = [kept[-1]]
    finally:
        bar.close()
    assert first is not None
    return Greedy(ids, first)


def propose(prompt: Sequence[int], ids: Sequence[int], draft: Sequence[int], k: int) -> list[int]:
    """Up to ``k`` guesses of the next tokens after ``prompt + ids``: the rest of ``draft``
    while ``ids`` still follows it; else what followed the latest earlier occurrence of the
    last 3, 2 or 1 tokens in the text so far (copied on past its end, so a repeating pattern
    is guessed ``k`` tokens ahead), or in ``prompt + draft``; else the draft at this place."""
    if k <= 0:
        return []
    n = len(ids)
    if len(draft) > n and list(draft[:n]) == list(ids):
        return list(draft[n : n + k])
    text = [*prompt, *ids]
    other = [*prompt, *draft]
    for size in (3, 2, 1):
        if len(text) <= size:
            continue
        tail = text[-size:]
        for i in range(len(text) - size - 1, -1, -1):
            if text[i : i + size] == tail:
                ext = list(text)
                for t in range(k):  # copying what it is itself extending: repeats go on
                    ext.append(ext[i + size + t])
                return ext[len(text) :]
        for i in range(len(other) - size - 1, -1, -1):
            if other[i : i + size] == tail:
                return list(other[i + size : i + size + k])
    # Nothing matches: the draft at the same place (an edit often changes a word, not the
    # rest); checking a wrong guess costs little.
    return list(draft[n : n + k])
