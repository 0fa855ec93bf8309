"""Hardening of the engine: one grammar of component specs, positioned ablation, honest
ablation results and baselines, and hostile input that gets circuitviz's own errors while
leaving the model exactly as it was."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import circuitviz as cv
from circuitviz.engine import InputError, has_hooks
from circuitviz.engine._components import Component, parse_components, parse_id

from . import test_bad_input
from .test_hardening_hostile import pairs

PROBE = test_bad_input.PROBE
PAIRS = cv.PromptPairs(
    ["t1 t2 t3 t4 t1 t2", "t6 t2 t9 t4 t6 t2"],
    ["t5 t6 t7 t8 t5 t6", "t5 t1 t7 t3 t5 t1"],
    [" t3", " t9"],
    [" t7", " t7"],
)


# The tiny models (gpt2 and llama, 2 layers × 4 heads) and the fixture that checks, after each
# test, that no hook is left and a forward pass gives bit-identical logits.
model = test_bad_input.model
unchanged = test_bad_input.unchanged


# --- one grammar of component specs ---------------------------------------------------------


GOOD_HEADS = [
    ((1, 2), "L1H2"),
    ([0, 3], "L0H3"),
    ((np.int64(1), np.int32(0)), "L1H0"),
    ((torch.tensor(0), torch.tensor(1, dtype=torch.int16)), "L0H1"),
    (torch.tensor([1, 3]), "L1H3"),
    ("L1H2", "L1H2"),
    ("L0H3:P5", "L0H3:P5"),
]


@pytest.mark.parametrize("spec, expected", GOOD_HEADS)
def test_head_specs_accepted(spec, expected):
    (comp,) = parse_components([spec], n_layers=2, n_heads=4, n_pos=6)
    assert comp.id == expected


@pytest.mark.parametrize(
    "spec, expected", [(1, "MLP1"), (np.int8(0), "MLP0"), ("MLP1", "MLP1"), ("MLP0:P3", "MLP0:P3")]
)
def test_mlp_specs_accepted(spec, expected):
    (comp,) = parse_components(mlps=[spec], n_layers=2, n_heads=4, n_pos=6)
    assert comp.id == expected


BAD_HEADS = [
    ((0.7, 1.9), "integer layer and head"),
    ((1.0, 2.0), "integer layer and head"),
    ((True, 1), "integer layer and head"),
    (("1", "2"), "integer layer and head"),
    ((1,), "integer layer and head"),
    ((1, 2, 3), "integer layer and head"),
    (None, "integer layer and head"),
    (b"L1H2", "integer layer and head"),
    ({1: 2}, "integer layer and head"),
    ((torch.tensor(1.0), 1), "integer layer and head"),
    ("MLP1", "is an MLP: pass it in mlps="),
    ("L1H2 ", "Unknown component"),
    ("l1h2", "Unknown component"),
    ("L01H2", "Unknown component"),
    ("L1H2:P", "Unknown component"),
    ("L1H2:P-1", "Unknown component"),
    ("L1H2:p3", "Unknown component"),
    ("L-1H2", "Unknown component"),
    ("\ud800", "Unknown component"),
    ("", "Unknown component"),
    ((2, 0), "L2H0 is out of range: the model has layers 0–1"),
    ((0, 4), "L0H4 is out of range: the model has heads 0–3"),
    ((-1, 0), "out of range"),
    ("L1H2:P6", "positions 0–5"),
]


@pytest.mark.parametrize("spec, message", BAD_HEADS)
def test_bad_head_specs(spec, message):
    with pytest.raises(InputError, match=message):
        parse_components([spec], n_layers=2, n_heads=4, n_pos=6)


BAD_MLPS = [
    (1.0, "an MLP is a layer number or 'MLP7'"),
    (False, "an MLP is a layer number"),
    ("1", "Unknown component"),
    ((1,), "an MLP is a layer number"),
    ("L1H2", "is an attention head: pass it in heads="),
    (2, "MLP2 is out of range"),
    ("MLP0:P9", "positions 0–5"),
]


@pytest.mark.parametrize("spec, message", BAD_MLPS)
def test_bad_mlp_specs(spec, message):
    with pytest.raises(InputError, match=message):
        parse_components(mlps=[spec], n_layers=2, n_heads=4, n_pos=6)


@pytest.mark.parametrize("specs", ["L1H2", 3, None, b"x"])
def test_specs_must_be_a_list(specs):
    with pytest.raises(InputError, match="must be a list"):
        parse_components(specs, n_layers=2, n_heads=4)


def test_ids_round_trip_and_sort():
    comps = parse_components(
        ["L1H0:P2", (0, 3), "L1H0"], ["MLP1", 0, "MLP0:P1"], n_layers=2, n_heads=4
    )
    assert [c.id for c in comps] == ["L0H3", "L1H0", "L1H0:P2", "MLP0", "MLP0:P1", "MLP1"]
    assert all(parse_id(c.id) == c for c in comps)
    assert parse_id("L23H3:P5") == Component(23, 3, 5)


def test_every_entry_point_uses_the_grammar(model, unchanged):
    """The engine, Graph.faithfulness and the views reject the same bad spec the same way."""
    from circuitviz.views._base import AblationView

    graph = cv.circuit(model, PAIRS, progress=False)
    view = AblationView(model=model, pairs=PAIRS)
    for bad, message in [("L9H0", "out of range"), ("L0H1:Q2", "Unknown component")]:
        with pytest.raises(InputError, match=message):
            cv.ablate(model, PAIRS, heads=[bad])
        with pytest.raises(InputError, match=message):
            graph.faithfulness(model, PAIRS, ablated=[bad])
        with pytest.raises(InputError, match=message):
            view.validate([bad], "zero", "logit_diff")
    assert view.validate(["L1H2:P3", "MLP0", "L1H2:P3"], "zero", "logit_diff") == [
        "L1H2:P3",
        "MLP0",
    ]


# --- ablation at one position --------------------------------------------------------------


def manual_metric(model, pairs, hook_name, edit):
    """logit_diff of the clean prompts with one hand-written hook."""
    tokens = cv.engine.tokenize(model, pairs)

    def hook(x, hook):
        edit(x)
        return x

    with torch.inference_mode():
        logits = model.run_with_hooks(tokens.clean, fwd_hooks=[(hook_name, hook)])[:, -1]
    rows = torch.arange(tokens.batch)
    per = logits[rows, tokens.answers] - logits[rows, tokens.wrong_answers]
    return per


def ablation_source(model, pairs, hook_name, mode):
    """What ``mode`` writes, by hand: zeros, the corrupted batch mean, or the corrupted run."""
    tokens = cv.engine.tokenize(model, pairs)
    store = {}

    def keep(x, hook):
        store["x"] = x.detach().clone()

    with torch.inference_mode():
        model.run_with_hooks(tokens.corrupted, fwd_hooks=[(hook_name, keep)])
    corr = store["x"]
    if mode == "zero":
        return torch.zeros_like(corr)
    return corr.mean(0, keepdim=True).expand_as(corr) if mode == "mean" else corr


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_head_at_one_position_matches_a_hand_written_hook(model, unchanged, mode):
    name = "blocks.1.attn.hook_z"
    src = ablation_source(model, PAIRS, name, mode)

    def edit(z):
        z[:, 3, 2] = src[:, 3, 2]

    per = manual_metric(model, PAIRS, name, edit)
    result = cv.ablate(model, PAIRS, heads=["L1H2:P3"], mode=mode)
    assert result.components == ["L1H2:P3"]
    assert abs(result.ablated - float(per.mean())) <= 1e-6
    assert np.max(np.abs(np.array(result.per_prompt["ablated"]) - per.numpy())) <= 1e-6
    whole = cv.ablate(model, PAIRS, heads=["L1H2"], mode=mode)
    assert whole.ablated != result.ablated  # the position restricts the ablation


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_mlp_at_one_position_matches_a_hand_written_hook(model, unchanged, mode):
    name = "blocks.0.hook_mlp_out"
    src = ablation_source(model, PAIRS, name, mode)

    def edit(out):
        out[:, 4] = src[:, 4]

    per = manual_metric(model, PAIRS, name, edit)
    result = cv.ablate(model, PAIRS, mlps=["MLP0:P4"], mode=mode)
    assert abs(result.ablated - float(per.mean())) <= 1e-6
    assert result.to_dict()["components"] == ["MLP0:P4"]


def test_position_out_of_range_names_the_prompt_length(model, unchanged):
    with pytest.raises(
        InputError, match=r"L1H2:P7 is out of range: the prompts have positions 0–6"
    ):
        cv.ablate(model, PAIRS, heads=["L1H2:P7"])


@pytest.mark.demo
def test_positioned_head_on_the_demo_model(demo_model):
    pairs = cv.tasks.ioi(demo_model, n=2, seed=0)
    name = "blocks.9.attn.hook_z"
    n_pos = cv.engine.tokenize(demo_model, pairs).n_pos
    pos = n_pos - 1

    def edit(z):
        z[:, pos, 6] = 0

    per = manual_metric(demo_model, pairs, name, edit)
    result = cv.ablate(demo_model, pairs, heads=[f"L9H6:P{pos}"])
    assert abs(result.ablated - float(per.mean())) <= 1e-6  # measured 4.8e-7 on CPU
    assert not has_hooks(demo_model)


# --- AblationResult and PatchResult -----------------------------------------------------------


def test_ablation_result_fields(model, unchanged):
    nothing = cv.ablate(model, PAIRS)
    assert nothing.ablated is None and nothing.top_after is None and nothing.delta is None
    assert "nothing ablated" in repr(nothing)
    res = cv.ablate(model, PAIRS, heads=[(1, 0)], mlps=["MLP1:P5"])
    d = res.to_dict()
    assert list(d) == [
        "components", "mode", "metric", "clean", "corrupted", "ablated", "delta",
        "gap_fraction", "per_prompt", "top_before", "top_after",
    ]  # fmt: skip
    assert d["components"] == ["L1H0", "MLP1:P5"]
    assert d["delta"] == pytest.approx(res.ablated - res.clean)
    assert d["gap_fraction"] == pytest.approx(res.delta / (res.clean - res.corrupted))
    per = d["per_prompt"]
    assert [len(per[k]) for k in ("clean", "corrupted", "ablated")] == [2, 2, 2]
    for key in ("clean", "corrupted", "ablated"):
        assert np.mean(per[key]) == pytest.approx(d[key], abs=1e-6)
    assert "delta" in repr(res) and "L1H0, MLP1:P5" in repr(res)


def test_gap_fraction_is_none_when_the_gap_is_degenerate(model, unchanged):
    same = cv.PromptPairs(["t1 t2 t3"], ["t1 t2 t3"], ["t4"], ["t5"])
    res = cv.ablate(model, same, heads=[(0, 0)])
    assert res.clean == res.corrupted and res.gap_fraction is None and res.delta is not None


@pytest.mark.parametrize("direction, label", [("denoise", "corrupted"), ("noise", "clean")])
def test_patch_result_baseline(model, unchanged, direction, label):
    res = cv.patch(model, PAIRS, over="heads", direction=direction, progress=False)
    assert res.baseline == getattr(res, label) and res.baseline_label == f"{label} baseline"
    assert f"{label} baseline" in repr(res)
    top = res.top(3)
    effects = (res.values - res.baseline).abs().flatten().sort(descending=True).values[:3]
    got = [abs(v - res.baseline) for _, v in top]
    assert got == pytest.approx(effects.tolist())


# --- interrupts while hooks are being installed -------------------------------------------


def test_interrupt_inside_add_hook_leaks_nothing(model, unchanged, monkeypatch):
    """A KeyboardInterrupt inside TransformerLens's add_hook, after it registered the hook
    but before it returned the handle, used to leave that hook on the model."""
    from transformer_lens.hook_points import HookPoint

    real = HookPoint.add_hook
    calls = []

    def add_then_interrupt(self, *args, **kwargs):
        real(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 3:  # mid-installation: two hooks in, the third registered
            raise KeyboardInterrupt

    monkeypatch.setattr(HookPoint, "add_hook", add_then_interrupt)
    for run in (
        lambda: cv.patch(model, pairs(), over="heads", progress=False),
        lambda: cv.attribution_patch(model, pairs(), over="resid_pre"),
        lambda: cv.ablate(model, pairs(answers=["t11"]), heads=[(0, 1)]),
        lambda: cv.attention(model, PROBE),
        lambda: cv.circuit(model, pairs(), progress=False),
    ):
        calls.clear()
        with pytest.raises(KeyboardInterrupt):
            run()
        assert not has_hooks(model)


def test_has_hooks_sees_a_hook_without_its_handle(model):
    point = model.hook_dict["blocks.0.hook_resid_pre"]
    handle = point.register_forward_hook(lambda module, args, out: out)  # no LensHandle
    try:
        assert has_hooks(model)
    finally:
        handle.remove()
    assert not has_hooks(model)


def test_users_own_hooks_survive(model, unchanged):
    """Hooks that were there before an analysis are left in place."""
    point = model.hook_dict["blocks.1.hook_resid_pre"]
    seen = []
    point.add_hook(lambda x, hook: seen.append(1))
    try:
        cv.attention(model, PROBE)
        assert len(point.fwd_hooks) == 1 and len(point._forward_hooks) == 1 and seen
    finally:
        point.remove_hooks("fwd")


# --- property-based: any spec or text gets a result or circuitviz's own error ----------------

_SCALARS = st.one_of(
    st.integers(-3, 40),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
    st.text(max_size=6),
    st.builds(np.int64, st.integers(-2, 9)),
    st.builds(lambda i: torch.tensor(i), st.integers(-2, 9)),
    st.builds(lambda f: torch.tensor(f), st.floats(-2, 9)),
)
_ID_LIKE = st.from_regex(r"(L-?\d{1,2}H\d{1,2}|MLP\d{1,2}|L\d)(:P-?\d{1,2})?\s?", fullmatch=True)
SPECS = st.one_of(_SCALARS, _ID_LIKE, st.tuples(_SCALARS, _SCALARS), st.lists(_SCALARS, max_size=3))


@settings(max_examples=400, deadline=None)
@given(spec=SPECS)
def test_any_head_spec_parses_or_is_an_input_error(spec):
    """A head spec either names a real head (whose id parses back to it) or is an InputError."""
    try:
        (comp,) = parse_components([spec], n_layers=3, n_heads=4, n_pos=8)
    except InputError:
        return
    assert comp.kind == "head" and 0 <= comp.layer < 3 and 0 <= comp.head < 4
    assert parse_id(comp.id) == comp and (comp.pos is None or 0 <= comp.pos < 8)
    assert not isinstance(spec, float)


@settings(max_examples=300, deadline=None)
@given(spec=SPECS)
def test_any_mlp_spec_parses_or_is_an_input_error(spec):
    try:
        (comp,) = parse_components(mlps=[spec], n_layers=3, n_heads=4, n_pos=8)
    except InputError:
        return
    assert comp.kind == "mlp" and 0 <= comp.layer < 3 and parse_id(comp.id) == comp


@settings(max_examples=150, deadline=None)
@given(text=st.text(max_size=12))
def test_any_text_makes_pairs_or_an_input_error(text):
    """Any Unicode (lone surrogates and empty strings included) in any field."""
    for field in ("clean", "corrupted", "answers", "wrong_answers"):
        try:
            pairs(**{field: [text]})
        except InputError:
            assert text == "" or any(0xD800 <= ord(c) <= 0xDFFF for c in text)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(heads=st.lists(SPECS, max_size=3), mlps=st.lists(SPECS, max_size=2))
def test_ablate_with_any_specs(tiny_gpt2, heads, mlps):
    """ablate on arbitrary specs: a result, or an InputError — and the model as it was."""
    before = tiny_gpt2(PROBE)
    try:
        result = cv.ablate(tiny_gpt2, PAIRS, heads=heads, mlps=mlps, mode="mean")
    except InputError:
        pass
    else:
        assert (result.ablated is None) == (not result.components)
    assert not has_hooks(tiny_gpt2)
    assert torch.equal(tiny_gpt2(PROBE), before)


def test_positioned_ablation_in_a_per_position_graph(model, unchanged):
    """'L1H2:P3' in ablated= removes that head's outgoing edges at position 3 only."""
    graph = cv.circuit(model, PAIRS, per_position=True, progress=False)
    base = graph.faithfulness(model, PAIRS)
    at_one = graph.faithfulness(model, PAIRS, ablated=["L1H2:P3"])
    everywhere = graph.faithfulness(model, PAIRS, ablated=["L1H2"])
    assert base.n_edges > at_one.n_edges > everywhere.n_edges
    with pytest.raises(InputError, match="positions 0–6"):
        graph.faithfulness(model, PAIRS, ablated=["L1H2:P7"])
