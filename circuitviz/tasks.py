"""Builders of :class:`~circuitviz.PromptPairs` for common behaviours."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from transformer_lens.model_bridge import TransformerBridge

from .engine import backends
from .engine._components import as_int, listed
from .engine._models import tokenizer_model
from .engine._pairs import InputError, PromptPairs, encode, tokenize, uses_bos

NAMES = (
    "John Mary Tom James Dan Sid Martin Amy Lisa Paul Mark Kate Anna Sarah Emma Jack "
    "Michael David Laura Alice Bob Peter George Susan Helen Chris Eric Frank Linda Jane Rose"
).split()
PLACES = "store garden school park restaurant hospital office station house market".split()
OBJECTS = "drink ring kiss bone basketball computer necklace apple book letter".split()
IOI_TEMPLATES = (
    "When {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "After {A} and {B} went to the {PLACE}, {S} gave a {OBJECT} to",
    "When {A} and {B} got a {OBJECT} at the {PLACE}, {S} gave it to",
    "While {A} and {B} were working at the {PLACE}, {S} gave a {OBJECT} to",
    "Then, {A} and {B} went to the {PLACE}. {S} gave a {OBJECT} to",
)


def _count(value: object, name: str, task: str, least: int = 1) -> int:
    n = as_int(value)
    if n is None or n < least:
        raise InputError(f"{task} needs {name} to be an integer ≥ {least}, got {name}={value!r}.")
    return n


def _single_tokens(model: TransformerBridge, words: Sequence[str]) -> list[str]:
    """The words that are one token each, with a leading space, for this tokenizer (the
    unknown-word token is no word: a word-level vocabulary without the name maps it there)."""
    unknown = getattr(model.tokenizer, "unk_token_id", None)
    out = []
    for w in words:
        ids = model.to_tokens(" " + w, prepend_bos=False)[0].tolist()
        if len(ids) == 1 and ids[0] != unknown:
            out.append(w)
    return out


def ioi(
    model: TransformerBridge,
    n: int = 8,
    *,
    seed: int = 0,
    templates: Sequence[str] = IOI_TEMPLATES,
    prepend_bos: bool | None = None,
) -> PromptPairs:
    """Indirect-object identification pairs, half ABBA and half BABA.

    Clean: "When John and Mary went to the store, John gave a drink to" → " Mary".
    Corrupted: the second subject becomes the indirect object ("…, Mary gave a drink to"),
    which flips the answer, so the wrong answer is the subject (" John"). Only templates of
    the most common token length are used, so the batch is rectangular. ``prepend_bos`` is
    passed to :class:`~circuitviz.PromptPairs` (``None``: the model's convention).
    """
    model = tokenizer_model(model)
    n = _count(n, "n", "ioi")
    templates = listed(templates, "templates", "['When {A} and {B} went to the {PLACE}, {S} …']")
    if not templates or not all(isinstance(t, str) for t in templates):
        raise InputError("ioi needs templates: a non-empty list of strings.")
    names = _single_tokens(model, NAMES)
    places = _single_tokens(model, PLACES) or list(PLACES)
    objects = _single_tokens(model, OBJECTS) or list(OBJECTS)
    if len(names) < 2:
        raise InputError(
            "This tokenizer has fewer than two single-token names, so IOI prompts can't be "
            "built; use circuitviz.tasks.factual with your own pairs instead."
        )
    fill = {"A": names[0], "B": names[1], "S": names[0], "PLACE": places[0], "OBJECT": objects[0]}
    for t in templates:
        try:
            t.format(**fill)
        except (KeyError, IndexError, ValueError) as err:
            raise InputError(
                f"ioi template {t!r} can't be filled ({type(err).__name__}: {err}): use only "
                "the fields {A}, {B}, {S}, {PLACE} and {OBJECT}."
            ) from None
    lengths = {t: len(encode(model, t.format(**fill), prepend_bos=False)) for t in templates}
    common = Counter(lengths.values()).most_common(1)[0][0]
    usable = [t for t in templates if lengths[t] == common]
    rng = random.Random(seed)
    clean, corrupted, answers, wrong = [], [], [], []
    for i in range(n):
        template = usable[i % len(usable)]
        io, s = rng.sample(names, 2)
        first, second = (io, s) if i % 2 == 0 else (s, io)  # ABBA, then BABA
        words = {"PLACE": rng.choice(places), "OBJECT": rng.choice(objects)}
        clean.append(template.format(A=first, B=second, S=s, **words))
        corrupted.append(template.format(A=first, B=second, S=io, **words))
        answers.append(" " + io)
        wrong.append(" " + s)
    return PromptPairs(clean, corrupted, answers, wrong, prepend_bos=prepend_bos)


def _word_tokens(model: TransformerBridge) -> tuple[list[int], str]:
    """Token ids that are plain words, and how to join them so they round-trip."""
    vocab = model.tokenizer.get_vocab()
    ids = sorted(vocab.values())
    joiner = ""
    words = []
    for i in ids:
        text = model.to_string([i])
        if text.startswith(" ") and text[1:].isalpha() and len(text) > 2:
            words.append(i)
    if len(words) < 50:  # word-level tokenizers (tiny test models) have no leading spaces
        joiner = " "
        words = [i for i in ids if model.to_string([i]).strip().isalnum()]
    return words, joiner


def induction(
    model: TransformerBridge,
    n: int = 8,
    *,
    seq_len: int = 10,
    seed: int = 0,
    prepend_bos: bool | None = None,
) -> PromptPairs:
    """Repeated random tokens: ``x1..xL x1..x(L-1)`` → ``xL``.

    The corrupted prompt replaces the first half with other random tokens, so nothing can be
    copied; its wrong answer is what induction would copy there. ``prepend_bos`` is passed
    to :class:`~circuitviz.PromptPairs` (``None``: the model's convention).
    """
    model = tokenizer_model(model)
    n = _count(n, "n", "induction")
    seq_len = _count(seq_len, "seq_len", "induction", least=2)
    words, joiner = _word_tokens(model)
    longest = min(len(words) // 2, (int(model.cfg.n_ctx) - 1) // 2)
    if seq_len > longest:
        raise InputError(
            f"induction needs seq_len ≤ {longest} for this model (its context and its "
            f"{len(words)} word tokens), got seq_len={seq_len}."
        )
    rng = random.Random(seed)
    clean, corrupted, answers, wrong = [], [], [], []
    while len(clean) < n:
        xs = rng.sample(words, seq_len)
        ys = rng.sample([w for w in words if w not in xs], seq_len)
        text = lambda ids: joiner.join(model.to_string([i]) for i in ids)  # noqa: E731
        c, k = text(xs + xs[:-1]), text(ys + xs[:-1])
        n_tokens = {len(encode(model, p, prepend_bos=False)) for p in (c, k)}
        if n_tokens != {2 * seq_len - 1}:
            continue  # the tokens merged when joined; draw again
        clean.append(c)
        corrupted.append(k)
        # Word-level tokenizers take bare words; BPE answers keep their leading space.
        answers.append(model.to_string([xs[-1]]).strip() if joiner else model.to_string([xs[-1]]))
        wrong.append(model.to_string([ys[-1]]).strip() if joiner else model.to_string([ys[-1]]))
    return PromptPairs(clean, corrupted, answers, wrong, prepend_bos=prepend_bos)


def factual(
    model: TransformerBridge,
    pairs: Sequence[tuple[str, str]],
    *,
    prepend_bos: bool | None = None,
) -> PromptPairs:
    """Your own ``(prompt, answer)`` pairs. Each prompt's corrupted version is the next
    prompt of the same token length in the list (after the last, the first), and its wrong
    answer is that prompt's answer, so every length needs at least two prompts, and neighbours
    different answers. Prompts of different lengths may be mixed: the analyses left-pad them
    (see :class:`~circuitviz.PromptPairs`). ``prepend_bos`` is passed to
    :class:`~circuitviz.PromptPairs` (``None``: the model's convention)."""
    model = tokenizer_model(model)
    pairs = listed(pairs, "pairs", "[('The Eiffel Tower is in', ' Paris'), …]")
    for item in pairs:
        if (
            isinstance(item, (str, bytes))
            or not isinstance(item, Sequence)
            or len(item) != 2
            or not all(isinstance(x, str) for x in item)
        ):
            raise InputError(
                f"factual takes (prompt, answer) pairs of strings, got {item!r}: e.g. "
                "[('The Eiffel Tower is in', ' Paris'), ('The Colosseum is in', ' Rome')]."
            )
    if len(pairs) < 2:
        raise InputError(
            "factual needs at least two (prompt, answer) pairs: each corrupts the next."
        )
    prompts = [p for p, _ in pairs]
    answers = [a for _, a in pairs]
    if len(set(answers)) < 2:
        raise InputError("factual needs at least two different answers.")
    partner = _same_length_partners(model, prompts, answers, prepend_bos)
    corrupted = [prompts[j] for j in partner]
    wrong = [answers[j] for j in partner]
    out = PromptPairs(prompts, corrupted, answers, wrong, prepend_bos=prepend_bos)
    with backends.ported():  # only the tokenizer: every backend has it
        # fail now, naming the problem, rather than inside an analysis
        tokenize(model, out, pad=True)
    return out


def _same_length_partners(
    model: TransformerBridge, prompts: list[str], answers: list[str], prepend_bos: bool | None
) -> list[int]:
    """For each prompt, the next prompt of its token length (cyclically): a corrupted prompt
    must tokenize to its clean prompt's length, position for position."""
    bos = uses_bos(model, prepend_bos)
    by_length: dict[int, list[int]] = {}
    for i, prompt in enumerate(prompts):
        by_length.setdefault(len(encode(model, prompt, prepend_bos=bos)), []).append(i)
    partner = [0] * len(prompts)
    for n, members in by_length.items():
        if len(members) < 2:
            i = members[0]
            raise InputError(
                f"factual corrupts each prompt with the next prompt of the same token length, "
                f"but prompt {i} ({prompts[i]!r}) is the only one of {n} tokens: add another "
                "prompt of that length, or drop it."
            )
        for i, j in zip(members, members[1:] + members[:1], strict=True):
            if answers[i] == answers[j]:
                raise InputError(
                    f"factual corrupts prompt {i} ({prompts[i]!r}) with prompt {j} "
                    f"({prompts[j]!r}), the next of its {n} tokens, but both answer "
                    f"{answers[i]!r}: reorder the pairs so that neighbours of one length have "
                    "different answers."
                )
            partner[i] = j
    return partner
