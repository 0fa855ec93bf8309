"""Prepending BOS is an explicit choice that every analysis honours (issue 9)."""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
from circuitviz import PromptPairs, tasks
from circuitviz.engine import InputError, has_hooks, tokenize

PAIR = (["t1 t2 t3 t4 t1 t2"], ["t5 t6 t7 t8 t5 t6"], [" t3"], [" t7"])


def pairs(prepend_bos: bool | None) -> PromptPairs:
    return PromptPairs(*PAIR, prepend_bos=prepend_bos)


def logit_diff_by_hand(model, prompt: str, answer: str, wrong: str, *, bos: bool) -> float:
    """The clean logit difference from a plain forward pass, tokenized by TransformerLens."""
    tokens = model.to_tokens(prompt, prepend_bos=bos)
    with torch.inference_mode():
        logits = model(tokens)[0, -1]
    a, w = (int(model.to_tokens(x, prepend_bos=False)[0, 0]) for x in (answer, wrong))
    return float(logits[a] - logits[w])


# ----------------------------------------------------------------------------- PromptPairs


def test_prepend_bos_is_keyword_only_and_validated():
    with pytest.raises(TypeError):
        PromptPairs(*PAIR, False)  # type: ignore[misc]
    with pytest.raises(InputError, match="prepend_bos"):
        PromptPairs(*PAIR, prepend_bos="no")  # type: ignore[arg-type]
    assert pairs(None).prepend_bos is None and pairs(False).prepend_bos is False


def test_prepend_bos_is_part_of_the_pairs_identity_and_dict():
    assert pairs(None) != pairs(False) != pairs(True)
    assert len({pairs(None), pairs(False), pairs(True), pairs(False)}) == 3
    for bos in (None, True, False):
        d = pairs(bos).to_dict()
        assert d["prepend_bos"] is bos
        assert PromptPairs.from_dict(d) == pairs(bos)
    old = {k: v for k, v in pairs(None).to_dict().items() if k != "prepend_bos"}
    assert PromptPairs.from_dict(old) == pairs(None)  # graph JSON from before the option
    with pytest.raises(InputError, match="missing"):
        PromptPairs.from_dict({"clean": ["t1"]})


def test_tokenize_follows_the_choice(tiny_llama):
    assert tiny_llama.cfg.default_prepend_bos
    with_bos, without = tokenize(tiny_llama, pairs(None)), tokenize(tiny_llama, pairs(False))
    assert with_bos.prepend_bos and not without.prepend_bos
    assert with_bos.str_tokens[0] == "<bos>" and without.str_tokens[0] == "t1"
    assert with_bos.str_tokens[1:] == without.str_tokens
    assert torch.equal(with_bos.clean[:, 1:], without.clean)
    assert torch.equal(tokenize(tiny_llama, pairs(True)).clean, with_bos.clean)


# ----------------------------------------------------------------------------- analyses


@pytest.mark.parametrize("bos", [True, False])
def test_every_analysis_feeds_what_the_pairs_say(tiny_llama, bos):
    model, p = tiny_llama, pairs(bos)
    expected = logit_diff_by_hand(model, PAIR[0][0], PAIR[2][0], PAIR[3][0], bos=bos)
    first = "<bos>" if bos else "t1"

    exact = cv.patch(model, p, over="heads", progress=False)
    assert exact.tokens[0] == first
    assert exact.clean == pytest.approx(expected, abs=1e-4)

    approx = cv.attribution_patch(model, p, over="heads")
    assert approx.tokens[0] == first
    assert approx.clean == pytest.approx(expected, abs=1e-4)

    ablated = cv.ablate(model, p, heads=[(1, 0)])
    assert ablated.clean == pytest.approx(expected, abs=1e-4)

    graph = cv.circuit(model, p, progress=False)
    assert graph.tokens[0] == first
    assert graph.prompts["prepend_bos"] is bos
    assert graph.clean == pytest.approx(expected, abs=1e-4)
    again = cv.Graph.from_json(graph.to_json())
    assert again.prompts["prepend_bos"] is bos
    faith = again.faithfulness(model, p)
    assert faith.clean == pytest.approx(expected, abs=1e-4)

    att = cv.attention(model, PAIR[0][0], prepend_bos=bos)
    assert att.tokens[0] == first
    assert att.patterns.shape[-1] == len(PAIR[0][0].split()) + bos
    assert not has_hooks(model)


def test_bos_changes_the_numbers_and_caches_apart(tiny_llama):
    """The two inputs really differ on a model, and the ablation cache keeps them apart."""
    on = cv.ablate(tiny_llama, pairs(True), heads=[(1, 0)])
    off = cv.ablate(tiny_llama, pairs(False), heads=[(1, 0)])
    assert on.clean != pytest.approx(off.clean, abs=1e-4)
    assert cv.ablate(tiny_llama, pairs(True), heads=[(1, 0)]).clean == on.clean


def test_a_graph_checks_the_bos_choice_of_its_pairs(tiny_llama):
    graph = cv.circuit(tiny_llama, pairs(False), progress=False)
    with pytest.raises(InputError, match="not the ones the graph was built on"):
        graph.faithfulness(tiny_llama, pairs(None))


# ----------------------------------------------------------------------------- tasks, CLI


@pytest.mark.parametrize("bos", [None, False])
def test_tasks_carry_the_choice(tiny_llama, bos):
    ind = tasks.induction(tiny_llama, n=2, seq_len=5, prepend_bos=bos)
    assert ind.prepend_bos is bos
    n_tokens = tokenize(tiny_llama, ind).n_pos
    assert n_tokens == 2 * 5 - 1 + (bos is None)
    fact = tasks.factual(tiny_llama, [("t1 t2", "t3"), ("t4 t5", "t6")], prepend_bos=bos)
    assert fact.prepend_bos is bos


def test_cli_flag_reaches_the_pairs_and_attention(tiny_llama, tmp_path):
    from circuitviz import cli

    parser = cli.build_parser()
    args = parser.parse_args(["figure", "--model", "tiny-llama", "-o", "x.svg"])
    assert args.prepend_bos is None
    args = parser.parse_args(
        [
            "figure",
            "--model",
            "tiny-llama",
            "--no-prepend-bos",
            "--analysis",
            "attention",
            "-o",
            "x.svg",
        ]
    )
    p = cli.make_pairs(tiny_llama, args)
    assert p.prepend_bos is False
    result, _ = cli.run_analysis(tiny_llama, p, args)
    assert result.tokens[0] != "<bos>"

    file = tmp_path / "pairs.json"
    file.write_text(
        '{"clean": ["t1 t2"], "corrupted": ["t3 t4"], "answers": ["t5"], '
        '"wrong_answers": ["t6"], "prepend_bos": false}'
    )
    from_file = cli.load_pairs_file(file)
    assert from_file.prepend_bos is False
    assert cli.load_pairs_file(file, True).prepend_bos is True  # the flag wins


# ----------------------------------------------------------------------------- demo model

CLASSIC = PromptPairs(
    ["When John and Mary went to the store, John gave a drink to"],
    ["When John and Mary went to the store, Mary gave a drink to"],
    " Mary",
    " John",
)


@pytest.mark.demo
def test_demo_model_default_prepends_im_start_and_false_does_not(demo_model):
    classic_off = PromptPairs.from_dict({**CLASSIC.to_dict(), "prepend_bos": False})
    on, off = tokenize(demo_model, CLASSIC), tokenize(demo_model, classic_off)
    assert on.str_tokens[0] == "<|im_start|>" and on.prepend_bos
    assert off.str_tokens[0] == "When" and not off.prepend_bos
    ioi = tasks.ioi(demo_model, n=8, seed=0, prepend_bos=False)
    assert tokenize(demo_model, ioi).str_tokens[0] != "<|im_start|>"
    # The choice moves the classic prompt's logit difference: measured, not assumed equal.
    a_on = cv.ablate(demo_model, CLASSIC).clean
    a_off = cv.ablate(demo_model, classic_off).clean
    expected_off = logit_diff_by_hand(demo_model, CLASSIC.clean[0], " Mary", " John", bos=False)
    assert a_off == pytest.approx(expected_off, abs=1e-3)
    assert a_on != pytest.approx(a_off, abs=1e-3)


def test_attention_view_takes_prepend_bos(tiny_llama):
    """AttentionView(model, prompt, prepend_bos=...) shows the tokens actually fed."""
    from circuitviz import AttentionView

    with_bos = AttentionView(tiny_llama, "t1 t2 t3", prepend_bos=True)
    without = AttentionView(tiny_llama, "t1 t2 t3", prepend_bos=False)
    assert len(with_bos.tokens) == len(without.tokens) + 1
    assert without.tokens == ["t1", " t2", " t3"] or without.tokens[0] != with_bos.tokens[0]
