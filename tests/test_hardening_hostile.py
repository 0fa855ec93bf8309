"""Hostile arguments to every public engine entry point get circuitviz's own error
(InputError or MetricError, naming the problem and the fix), never a bare Python or torch
error, and leave the model exactly as it was (bit-identical logits, no hooks)."""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import InputError

from . import test_bad_input

# The tiny models (gpt2 and llama, 2 layers × 4 heads) and the fixture that checks, after each
# test, that no hook is left and a forward pass gives bit-identical logits.
model = test_bad_input.model
unchanged = test_bad_input.unchanged


GOOD = dict(clean=["t1 t2 t3 t4"], corrupted=["t5 t6 t7 t8"], answers=["t9"], wrong_answers=["t10"])


def pairs(**changes) -> cv.PromptPairs:
    return cv.PromptPairs(**{**GOOD, **changes})


def nan_metric(logits):
    return torch.full((logits.shape[0],), float("nan"))


def inf_metric(logits):
    return torch.full((logits.shape[0],), float("inf"))


def neg_inf_metric(logits):
    return logits[:, 0] * 0 - float("inf")


def text_metric(logits):
    return "high"


def wrong_shape_metric(logits):
    return logits[:, :2]


def on(analysis, **options):
    """A call of ``cv.<analysis>`` on the tiny model and good pairs, with these options."""
    return lambda m: getattr(cv, analysis)(m, pairs(), **options)


# (call, error class name, message fragment). Every call gets a hostile argument.
HOSTILE_ANALYSES = {
    # which model
    "patch(None)": (lambda m: cv.patch(None, pairs()), "InputError", "TransformerBridge"),
    "patch('demo')": (lambda m: cv.patch("demo", pairs()), "InputError", "load_model"),
    "attribution_patch(3)": (
        lambda m: cv.attribution_patch(3, pairs()),
        "InputError",
        "TransformerBridge",
    ),
    "ablate(None)": (lambda m: cv.ablate(None, pairs()), "InputError", "TransformerBridge"),
    "attention(model=None)": (
        lambda m: cv.attention(None, "t1 t2"),
        "InputError",
        "TransformerBridge",
    ),
    "circuit(None)": (lambda m: cv.circuit(None, pairs()), "InputError", "TransformerBridge"),
    # which pairs
    "patch(pairs=None)": (lambda m: cv.patch(m, None), "InputError", "PromptPairs"),
    "patch(pairs=dict)": (lambda m: cv.patch(m, GOOD), "InputError", "PromptPairs"),
    "ablate(pairs=list)": (lambda m: cv.ablate(m, [GOOD]), "InputError", "PromptPairs"),
    "attribution_patch(pairs=str)": (
        lambda m: cv.attribution_patch(m, "t1 t2"),
        "InputError",
        "PromptPairs",
    ),
    "circuit(pairs=None)": (lambda m: cv.circuit(m, None), "InputError", "PromptPairs"),
    # options of the wrong type or value
    "patch(over=None)": (on("patch", over=None), "InputError", "Unknown over"),
    "patch(over=['heads'])": (
        on("patch", over=["heads"]),
        "InputError",
        "Unknown over",
    ),
    "attribution_patch(over=3)": (
        on("attribution_patch", over=3),
        "InputError",
        "Unknown over",
    ),
    "patch(direction=None)": (
        on("patch", direction=None),
        "InputError",
        "Unknown direction",
    ),
    "patch(direction=['noise'])": (
        on("patch", direction=["noise"]),
        "InputError",
        "Unknown direction",
    ),
    "attribution_patch(direction='Denoise')": (
        on("attribution_patch", direction="Denoise"),
        "InputError",
        "Unknown direction",
    ),
    "patch(metric=None)": (on("patch", metric=None), "InputError", "metric"),
    "patch(metric=3)": (on("patch", metric=3), "InputError", "Unknown metric"),
    "patch(metric=['kl'])": (
        on("patch", metric=["kl"]),
        "InputError",
        "Unknown metric",
    ),
    "ablate(metric={})": (on("ablate", metric={}), "InputError", "metric"),
    "circuit(metric=3)": (on("circuit", metric=3), "InputError", "metric"),
    "patch(memory_budget='1G')": (
        on("patch", memory_budget="1G"),
        "InputError",
        "memory_budget",
    ),
    "patch(memory_budget=-1)": (
        on("patch", memory_budget=-1),
        "InputError",
        "memory_budget",
    ),
    "patch(max_rows=0)": (on("patch", max_rows=0), "InputError", "max_rows"),
    "patch(max_rows=2.5)": (
        on("patch", max_rows=2.5),
        "InputError",
        "max_rows",
    ),
    "ablate(mode=None)": (on("ablate", mode=None), "InputError", "mode"),
    "ablate(mode=['zero'])": (
        on("ablate", mode=["zero"]),
        "InputError",
        "mode",
    ),
    "ablate(k=-1)": (on("ablate", k=-1), "InputError", "positive integer"),
    "ablate(k=0)": (on("ablate", k=0), "InputError", "positive integer"),
    "ablate(k=2.5)": (on("ablate", k=2.5), "InputError", "positive integer"),
    "ablate(k='3')": (on("ablate", k="3"), "InputError", "positive integer"),
    "ablate(k=True)": (on("ablate", k=True), "InputError", "positive integer"),
    "ablate(k=10**6)": (on("ablate", k=10**6), "InputError", "vocabulary"),
    "ablate(heads='L0H1')": (
        on("ablate", heads="L0H1"),
        "InputError",
        "must be a list",
    ),
    "ablate(heads=[(0.7, 1.9)])": (
        on("ablate", heads=[(0.7, 1.9)]),
        "InputError",
        "integer layer and head",
    ),
    "ablate(mlps=['L1H2'])": (
        on("ablate", mlps=["L1H2"]),
        "InputError",
        "pass it in heads=",
    ),
    "ablate(heads=['MLP1'])": (
        on("ablate", heads=["MLP1"]),
        "InputError",
        "pass it in mlps=",
    ),
    "circuit(method=None)": (
        on("circuit", method=None),
        "InputError",
        "Unknown method",
    ),
    "circuit(method=['eap'])": (
        on("circuit", method=["eap"]),
        "InputError",
        "Unknown method",
    ),
    "circuit(steps=0)": (
        on("circuit", method="eap-ig", steps=0),
        "InputError",
        "steps",
    ),
    "circuit(steps=2.0)": (
        on("circuit", method="eap-ig", steps=2.0),
        "InputError",
        "steps",
    ),
    "circuit(per_position='yes')": (
        on("circuit", per_position="yes"),
        "InputError",
        "per_position",
    ),
    # attention's prompt
    "attention(None)": (lambda m: cv.attention(m, None), "InputError", "one prompt"),
    "attention(3)": (lambda m: cv.attention(m, 3), "InputError", "one prompt"),
    "attention('')": (lambda m: cv.attention(m, ""), "InputError", "empty"),
    "attention(['t1', 't2'])": (
        lambda m: cv.attention(m, ["t1 t2", "t3 t4"]),
        "InputError",
        "one prompt",
    ),
    "attention(batch of 2)": (
        lambda m: cv.attention(m, torch.tensor([[1, 2, 3], [4, 5, 6]])),
        "InputError",
        "batch of 2",
    ),
    "attention(float tensor)": (
        lambda m: cv.attention(m, torch.tensor([1.0, 2.0])),
        "InputError",
        "integer token ids",
    ),
    "attention(empty tensor)": (
        lambda m: cv.attention(m, torch.tensor([], dtype=torch.long)),
        "InputError",
        "empty",
    ),
    "attention(id out of vocab)": (
        lambda m: cv.attention(m, torch.tensor([1, 10**6])),
        "InputError",
        "vocabulary",
    ),
    "attention(negative id)": (
        lambda m: cv.attention(m, torch.tensor([1, -3])),
        "InputError",
        "vocabulary",
    ),
    "attention(3-d tensor)": (
        lambda m: cv.attention(m, torch.ones(1, 1, 3, dtype=torch.long)),
        "InputError",
        "one prompt",
    ),
    "attention(lone surrogate)": (
        lambda m: cv.attention(m, "t1 \ud800"),
        "InputError",
        "surrogate",
    ),
    # prompts and answers
    "patch(lone surrogate prompt)": (
        lambda m: cv.patch(m, pairs(clean=["t1 t2 \ud800 t4"])),
        "InputError",
        "surrogate",
    ),
    "ablate(answer == wrong answer)": (
        lambda m: cv.ablate(m, pairs(wrong_answers=["t9"])),
        "InputError",
        "pair 0",
    ),
    "patch(answer == wrong answer, 2nd pair)": (
        lambda m: cv.patch(
            m,
            cv.PromptPairs(["t1 t2", "t3 t4"], ["t5 t6", "t7 t8"], ["t9", "t11"], ["t10", "t11"]),
        ),
        "InputError",
        "pair 1",
    ),
    "ablate(empty answer)": (
        lambda m: cv.ablate(m, pairs(answers=[""])),
        "InputError",
        "empty",
    ),
    # metrics that return what can't be used
    "patch(NaN metric)": (
        on("patch", metric=nan_metric),
        "MetricError",
        "non-finite",
    ),
    "patch(+inf metric)": (
        on("patch", metric=inf_metric),
        "MetricError",
        "non-finite",
    ),
    "attribution_patch(-inf metric)": (
        on("attribution_patch", metric=neg_inf_metric),
        "MetricError",
        "non-finite",
    ),
    "ablate(inf metric)": (
        on("ablate", heads=[(0, 0)], metric=inf_metric),
        "MetricError",
        "non-finite",
    ),
    "circuit(NaN metric)": (
        on("circuit", metric=nan_metric),
        "MetricError",
        "non-finite",
    ),
    "circuit eap-ig(inf metric)": (
        on("circuit", method="eap-ig", steps=2, metric=inf_metric),
        "MetricError",
        "non-finite",
    ),
    "patch(text metric)": (
        on("patch", metric=text_metric),
        "MetricError",
        "returned str",
    ),
    "ablate(wrong-shape metric)": (
        on("ablate", heads=[(0, 0)], metric=wrong_shape_metric),
        "MetricError",
        "shape",
    ),
    # a normalised metric with no clean–corrupted gap
    "patch(normalized, no gap)": (
        lambda m: cv.patch(m, pairs(corrupted=GOOD["clean"]), metric="normalized_logit_diff"),
        "MetricError",
        "clean baseline",
    ),
    "attribution_patch(normalized, no gap)": (
        lambda m: cv.attribution_patch(
            m, pairs(corrupted=GOOD["clean"]), metric="normalized_logit_diff"
        ),
        "MetricError",
        "clean baseline",
    ),
    "ablate(normalized, no gap)": (
        lambda m: cv.ablate(m, pairs(corrupted=GOOD["clean"]), metric="normalized_logit_diff"),
        "MetricError",
        "clean baseline",
    ),
    "circuit(normalized, no gap)": (
        lambda m: cv.circuit(m, pairs(corrupted=GOOD["clean"]), metric="normalized_logit_diff"),
        "MetricError",
        "clean baseline",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_ANALYSES))
def test_hostile_analysis_arguments(model, unchanged, case):
    call, error, message = HOSTILE_ANALYSES[case]
    with pytest.raises(getattr(cv, error), match=message):
        call(model)


@pytest.fixture(scope="module")
def graph(model):
    return cv.circuit(model, pairs(), progress=False)


def faith(**options):
    """A call of graph.faithfulness on the tiny model and good pairs, with these options."""
    return lambda g, m: g.faithfulness(m, pairs(), **options)


HOSTILE_GRAPH = {
    "prune()": (lambda g, m: g.prune(), "prune needs"),
    "prune(top_n='5')": (lambda g, m: g.prune(top_n="5"), "top_edges"),
    "prune(top_n=2.5)": (lambda g, m: g.prune(top_n=2.5), "top_edges"),
    "prune(top_n=-1)": (lambda g, m: g.prune(top_n=-1), "top_edges"),
    "prune(top_n=True)": (lambda g, m: g.prune(top_n=True), "top_edges"),
    "prune(threshold='x')": (lambda g, m: g.prune(threshold="x"), "min_weight"),
    "prune(threshold=nan)": (lambda g, m: g.prune(threshold=float("nan")), "min_weight"),
    "prune(threshold=-0.5)": (lambda g, m: g.prune(threshold=-0.5), "min_weight"),
    "faithfulness(None model)": (lambda g, m: g.faithfulness(None, pairs()), "TransformerBridge"),
    "faithfulness(pairs=dict)": (lambda g, m: g.faithfulness(m, GOOD), "PromptPairs"),
    "faithfulness(nodes='L0H1')": (
        faith(nodes="L0H1"),
        "must be a list",
    ),
    "faithfulness(nodes=[3])": (faith(nodes=[3]), "node id"),
    "faithfulness(edges=5)": (faith(edges=5), "must be a list"),
    "faithfulness(ablation=None)": (
        faith(ablation=None),
        "Unknown ablation",
    ),
    "faithfulness(ablation=['mean'])": (
        faith(ablation=["mean"]),
        "Unknown ablation",
    ),
    "faithfulness(ablated='L0H1')": (
        faith(ablated="L0H1"),
        "must be a list",
    ),
    "faithfulness(ablated=[(0, 1)])": (
        faith(ablated=[(0, 1)]),
        "Unknown component",
    ),
    "faithfulness(ablated=['LOGITS'])": (
        faith(ablated=["LOGITS"]),
        "LOGITS can't be ablated",
    ),
    "faithfulness(ablated=['L0H1:P2'], not per position)": (
        faith(ablated=["L0H1:P2"]),
        "not per position",
    ),
    "faithfulness(metric=3)": (
        faith(metric=3),
        "Unknown metric",
    ),
    "faithfulness(NaN metric)": (
        faith(metric=nan_metric),
        "non-finite",
    ),
    "faithfulness_curve(sizes=['a'])": (
        lambda g, m: g.faithfulness_curve(m, pairs(), sizes=["a"]),
        "top_edges",
    ),
    "faithfulness_curve(sizes=5)": (
        lambda g, m: g.faithfulness_curve(m, pairs(), sizes=5),
        "top_edges",
    ),
    "patch_edges(edges=None)": (lambda g, m: g.patch_edges(m, pairs(), None), "must be a list"),
    "patch_edges(edges=[('EMBED', 'X9', 'q')])": (
        lambda g, m: g.patch_edges(m, pairs(), [("EMBED", "X9", "q")]),
        "node id",
    ),
    "patch_edges(edges=[42])": (lambda g, m: g.patch_edges(m, pairs(), [42]), "Can't read edge"),
    "patch_edges(model='demo')": (
        lambda g, m: g.patch_edges("demo", pairs(), g.edges[:1]),
        "load_model",
    ),
}


@pytest.mark.parametrize("case", list(HOSTILE_GRAPH))
def test_hostile_graph_arguments(model, graph, unchanged, case):
    call, message = HOSTILE_GRAPH[case]
    with pytest.raises((InputError, cv.MetricError), match=message):
        call(graph, model)


def test_faithfulness_refuses_a_degenerate_gap(model, unchanged):
    """Clean and corrupted runs agree: 'recovered' has nothing to divide by."""
    same = pairs(corrupted=GOOD["clean"])
    graph = cv.circuit(model, same, progress=False)
    with pytest.raises(cv.MetricError, match=r"clean baseline \(.*\) and the corrupted baseline"):
        graph.faithfulness(model, same)


HOSTILE_PAIRS = {
    "clean=None": (dict(clean=None), "must be a string or a list"),
    "clean=3": (dict(clean=3), "must be a string or a list"),
    "clean=[1, 2]": (dict(clean=[1, 2]), "must be strings"),
    "clean={'a'}": (dict(clean={"t1"}), "must be a string or a list"),
    "clean=['']": (dict(clean=[""]), r"clean\[0\] is empty"),
    "corrupted=[None]": (dict(corrupted=[None]), "must be strings"),
    "answers=b't9'": (dict(answers=b"t9"), "must be strings"),
    "answers=['']": (dict(answers=[""]), r"answers\[0\] is empty"),
    "wrong_answers=['\\ud800']": (dict(wrong_answers=["\ud800"]), "lone surrogate"),
    "clean=['t1 \\udfff']": (dict(clean=["t1 \udfff"]), r"clean\[0\].*lone surrogate"),
    "corrupted has 2, clean 1": (dict(corrupted=["t1", "t2"]), "1 clean prompts but 2"),
}


@pytest.mark.parametrize("case", list(HOSTILE_PAIRS))
def test_hostile_prompt_pairs(case):
    changes, message = HOSTILE_PAIRS[case]
    with pytest.raises(InputError, match=message):
        pairs(**changes)


HOSTILE_TASKS = {
    "ioi(None)": (lambda m: cv.tasks.ioi(None), "TransformerBridge"),
    "ioi(n=0)": (lambda m: cv.tasks.ioi(m, n=0), "n"),
    "ioi(n=2.5)": (lambda m: cv.tasks.ioi(m, n=2.5), "n"),
    "ioi(n='4')": (lambda m: cv.tasks.ioi(m, n="4"), "n"),
    "ioi(templates='x')": (lambda m: cv.tasks.ioi(m, templates="When {A}"), "templates"),
    "ioi(templates=[])": (lambda m: cv.tasks.ioi(m, templates=[]), "templates"),
    "induction(n=-1)": (lambda m: cv.tasks.induction(m, n=-1), "n"),
    "induction(seq_len=1)": (lambda m: cv.tasks.induction(m, seq_len=1), "seq_len"),
    "induction(seq_len=10**6)": (lambda m: cv.tasks.induction(m, seq_len=10**6), "seq_len"),
    "induction(seq_len=3.5)": (lambda m: cv.tasks.induction(m, seq_len=3.5), "seq_len"),
    "factual(None)": (lambda m: cv.tasks.factual(m, None), "pairs"),
    "factual([('t1', 't2')])": (lambda m: cv.tasks.factual(m, [("t1", "t2")]), "at least two"),
    "factual([('t1',), ('t2',)])": (
        lambda m: cv.tasks.factual(m, [("t1",), ("t2",)]),
        r"\(prompt, answer\)",
    ),
    "factual(['ab', 'cd'])": (lambda m: cv.tasks.factual(m, ["ab", "cd"]), r"\(prompt, answer\)"),
}


@pytest.mark.parametrize("case", list(HOSTILE_TASKS))
def test_hostile_task_arguments(model, unchanged, case):
    call, message = HOSTILE_TASKS[case]
    with pytest.raises(InputError, match=message):
        call(model)


HOSTILE_LOAD = {
    "name=None": (dict(name=None), "model name"),
    "name=3": (dict(name=3), "model name"),
    "name=''": (dict(name=""), "model name"),
    "device='cuda' without CUDA": (dict(device="cuda"), "CUDA is not available"),
    "device='cuda:7'": (dict(device="cuda:7"), "CUDA"),
    "device='gpu'": (dict(device="gpu"), "not a device"),
    "device=3.5": (dict(device=3.5), "not a device"),
    "dtype='float16'": (dict(dtype="float16"), "dtype"),
    "dtype=torch.int64": (dict(dtype=torch.int64), "dtype"),
}


@pytest.mark.parametrize("case", list(HOSTILE_LOAD))
def test_hostile_load_model(case, monkeypatch):
    if "CUDA" in case or "cuda" in case:  # the same answer on a machine with a GPU
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    kwargs, message = HOSTILE_LOAD[case]
    with pytest.raises(InputError, match=message):
        cv.load_model(**kwargs)
