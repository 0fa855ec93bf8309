"""Offline text for training SAEs and for finding a feature's top-activating snippets.

Three sources, all available without a network:

- **Python standard-library docstrings** (PSF licence), read with :mod:`inspect` from a fixed
  list of modules in a fixed order. They vary a little between Python versions.
- **Template stories** over the IOI vocabulary of :mod:`circuitviz.tasks` (names, places,
  objects), drawn from a seeded generator, so they are the same everywhere.
- **Text the demo model wrote itself** from seeded prompts, generated once by
  ``scripts/train_demo_saes.py --generate`` and shipped as ``circuitviz/data/demo_generations.json``.

Each text goes to the ``"train"`` or the ``"reference"`` (held-out) split by a hash of its
content, so the split of a text never depends on what else is in the corpus.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import inspect
import json
import random
import warnings
from importlib import resources
from typing import Literal

from .._pairs import InputError

Split = Literal["train", "reference"]

#: Standard-library modules whose docstrings are used, in this order.
STDLIB_MODULES: tuple[str, ...] = tuple(
    """
    abc argparse array ast asyncio base64 bisect bz2 calendar cmath codecs collections
    colorsys configparser contextlib copy csv dataclasses datetime decimal difflib dis
    email enum filecmp fnmatch fractions ftplib functools getopt gettext glob graphlib gzip
    hashlib heapq hmac html html.parser http.client http.server imaplib inspect io
    ipaddress itertools json keyword linecache locale logging lzma mailbox math mimetypes
    numbers operator optparse os pathlib pickle pkgutil platform plistlib poplib pprint
    queue quopri random re reprlib sched secrets select selectors shelve shlex shutil signal
    smtplib socket socketserver sqlite3 ssl stat statistics string struct subprocess
    sysconfig tarfile tempfile textwrap threading timeit tokenize trace traceback types
    typing unittest urllib.parse urllib.request uuid warnings wave weakref xml.dom.minidom
    xml.etree.ElementTree zipfile zlib builtins sys time gc marshal binascii unicodedata
    concurrent.futures multiprocessing multiprocessing.pool contextvars doctest pdb profile
    pstats cProfile zoneinfo importlib importlib.metadata importlib.resources
    xml.sax email.message email.utils email.headerregistry http.cookies http.cookiejar
    urllib.error urllib.robotparser wsgiref.simple_server xmlrpc.client xmlrpc.server
    asyncio.tasks asyncio.events asyncio.streams asyncio.queues asyncio.locks
    collections.abc codeop code compileall py_compile symtable pyclbr tracemalloc
    faulthandler netrc mmap fileinput stringprep rlcompleter sqlite3.dbapi2
    """.split()
)

#: Held-out share: a text is in the reference split when its hash falls in this many of 100.
REFERENCE_PERCENT = 8
GENERATIONS_FILE = "demo_generations.json"
_MAX_CHARS = 1200  # long docstrings are cut into paragraphs of at most about this length

_STORY_SENTENCES = (
    "{A} and {B} went to the {PLACE}.",
    "At the {PLACE}, {A} found a {OBJECT}.",
    "{A} gave the {OBJECT} to {B}.",
    "{B} thanked {A} for the {OBJECT}.",
    "Later, {B} took the {OBJECT} to the {PLACE}.",
    "{A} asked {B} where the {OBJECT} was.",
    "{B} said that the {OBJECT} was at the {PLACE}.",
    "When {A} and {B} left the {PLACE}, {B} carried the {OBJECT}.",
    "The next day {A} met {C} at the {PLACE}.",
    "{C} wanted a {OBJECT}, so {A} gave one to {C}.",
    "{A} told {C} about {B}.",
    "In the evening {B} and {C} walked home from the {PLACE}.",
    "{C} had never seen a {OBJECT} like that before.",
    "{B} laughed, and {A} laughed too.",
)


def _bucket(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:4], "big") % 100


def _paragraphs(doc: str) -> list[str]:
    """A docstring as pieces of at most about ``_MAX_CHARS`` characters, cut at blank lines."""
    doc = inspect.cleandoc(doc)
    pieces, current = [], ""
    for para in doc.split("\n\n"):
        if current and len(current) + len(para) > _MAX_CHARS:
            pieces.append(current)
            current = ""
        current = f"{current}\n\n{para}" if current else para
    if current:
        pieces.append(current)
    return [p[: 2 * _MAX_CHARS] for p in pieces if len(p) >= 40]


@functools.lru_cache(maxsize=1)
def stdlib_docstrings() -> tuple[str, ...]:
    """Docstrings of :data:`STDLIB_MODULES`, their public classes, functions and methods."""
    out: list[str] = []
    seen: set[str] = set()

    def add(name: str, doc: str | None) -> None:
        if not doc or doc in seen:
            return
        seen.add(doc)
        for piece in _paragraphs(doc):
            out.append(f"{name}\n\n{piece}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for mod_name in STDLIB_MODULES:
            try:
                mod = importlib.import_module(mod_name)
            except ImportError:  # a module a build of Python lacks (e.g. no _ssl)
                continue
            add(mod_name, inspect.getdoc(mod))
            for attr in sorted(vars(mod)):
                if attr.startswith("_"):
                    continue
                obj = vars(mod)[attr]
                # C-implemented objects report their accelerator module (`_json`…)
                home = (getattr(obj, "__module__", None) or "").lstrip("_")
                if home.split(".")[0] != mod_name.split(".")[0]:
                    continue
                if inspect.isclass(obj):
                    add(f"{mod_name}.{attr}", inspect.getdoc(obj))
                    for meth in sorted(vars(obj)):
                        fn = vars(obj)[meth]
                        if not meth.startswith("_") and inspect.isroutine(fn):
                            add(f"{mod_name}.{attr}.{meth}", inspect.getdoc(fn))
                elif inspect.isroutine(obj):
                    add(f"{mod_name}.{attr}", inspect.getdoc(obj))
    return tuple(out)


@functools.lru_cache(maxsize=4)
def template_stories(n: int = 2000, *, seed: int = 0) -> tuple[str, ...]:
    """``n`` short stories of 3–7 sentences over the IOI names, places and objects."""
    from ...tasks import NAMES, OBJECTS, PLACES  # the engine may read the task vocabulary

    rng = random.Random(seed)
    stories = []
    for _ in range(n):
        a, b, c = rng.sample(NAMES, 3)
        fill = {"A": a, "B": b, "C": c, "PLACE": rng.choice(PLACES), "OBJECT": rng.choice(OBJECTS)}
        sentences = rng.sample(_STORY_SENTENCES, rng.randint(3, 7))
        stories.append(" ".join(s.format(**fill) for s in sentences))
    return tuple(stories)


@functools.lru_cache(maxsize=1)
def model_generations() -> tuple[str, ...]:
    """The demo model's own texts shipped in ``circuitviz/data`` (empty if not there)."""
    path = resources.files("circuitviz.data").joinpath(GENERATIONS_FILE)
    if not path.is_file():
        return ()
    data = json.loads(path.read_text(encoding="utf-8"))
    return tuple(item["text"] for item in data["generations"])


def reference_corpus(model: object = None, *, split: Split = "reference") -> list[str]:
    """Offline texts: the held-out ``"reference"`` split (for top-activating snippets and
    quality figures) or the ``"train"`` split (what the demo SAEs were trained on).

    The same texts for every model; ``model`` is accepted so callers can pass it, and when
    given, only its type is checked. Order: docstrings, stories, then the model's texts.
    """
    if split not in ("train", "reference"):
        raise InputError(f"split must be 'train' or 'reference', got {split!r}.")
    if model is not None:
        from .._models import tokenizer_model

        tokenizer_model(model)
    want_reference = split == "reference"
    texts = [*stdlib_docstrings(), *template_stories(), *model_generations()]
    return [t for t in texts if (_bucket(t) < REFERENCE_PERCENT) == want_reference]


def packed_tokens(
    model: object,
    split: Split = "reference",
    *,
    seq_len: int = 128,
    max_tokens: int | None = None,
    seed: int | None = 0,
):
    """The ``split``'s texts (shuffled by ``seed``; ``None`` keeps the corpus order), joined
    with blank lines and cut into rows ``[n, seq_len]`` that each start with BOS: the form the
    demo SAEs were trained and evaluated on. ``max_tokens`` caps the text read."""
    import torch

    from .._models import tokenizer_model

    model = tokenizer_model(model)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise InputError(f"seq_len must be an integer ≥ 2, got {seq_len!r}.")
    texts = reference_corpus(split=split)
    if seed is not None:
        random.Random(seed).shuffle(texts)
    tok = model.tokenizer
    stream: list[int] = []
    for t in texts:
        stream += tok(t + "\n\n", add_special_tokens=False)["input_ids"]
        if max_tokens is not None and len(stream) >= max_tokens:
            break
    body = seq_len - 1
    n = len(stream) // body
    rows = torch.tensor(stream[: n * body], dtype=torch.long).view(n, body)
    bos = torch.full((n, 1), tok.bos_token_id, dtype=torch.long)
    return torch.cat([bos, rows], 1).to(model.cfg.device)
