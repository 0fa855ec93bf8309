"""The logit lens: each layer's residual stream read through the final norm and unembedding,
checked by hand and against TransformerLens's ``logit_lens``."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.tools.analysis import logit_lens as tl_logit_lens

import circuitviz as cv
from circuitviz.engine import InputError, has_hooks
from circuitviz.export._style import text_label

PROMPT = "t1 t2 t3 t4 t1 t2"


def by_hand(model, prompt: str) -> torch.Tensor:
    """Probabilities ``[row, pos, d_vocab]``: final norm of each resid_post, then unembed."""
    names = ["blocks.0.hook_resid_pre"] + [
        f"blocks.{i}.hook_resid_post" for i in range(model.cfg.n_layers)
    ]
    _, cache = model.run_with_cache(model.to_tokens(prompt))
    rows = torch.stack([cache[n][0] for n in names])
    logits = model.ln_final(rows) @ model.W_U + model.b_U
    return logits.softmax(-1)


def test_matches_hand_computation_and_output(tiny):
    result = cv.logit_lens(tiny, PROMPT, answer=" t3", k=5)
    probs = by_hand(tiny, PROMPT)
    top = probs.topk(5, dim=-1)
    assert torch.equal(result.top_ids, top.indices)
    assert torch.allclose(result.top_probs, top.values, atol=1e-6)
    assert torch.allclose(result.answer_prob, probs[..., result.answer_id], atol=1e-6)
    # The last row is the model's own next-token distribution.
    output = tiny(PROMPT)[0].softmax(-1)
    assert torch.allclose(result.answer_prob[-1], output[:, result.answer_id], atol=1e-6)
    assert result.layers == ["embed", "L0", "L1"]
    assert result.top_tokens[-1][-1][0] == tiny.tokenizer.decode([int(top.indices[-1, -1, 0])])
    assert not has_hooks(tiny)


def test_equal_to_transformer_lens(tiny):
    result = cv.logit_lens(tiny, PROMPT, answer=" t3", k=5)
    tokens = tiny.to_tokens(PROMPT)
    ref = tl_logit_lens(
        tiny, tokens, positions=None, return_type="probs", targets=[result.answer_id]
    )
    assert torch.allclose(result.answer_prob, ref.values[:, 0, :, 0], atol=1e-6)
    assert torch.equal(result.answer_rank, ref.rank_trajectory()[:, 0])
    top = tl_logit_lens(tiny, tokens, positions=None, return_type="probs", top_k=5)
    assert torch.equal(result.top_ids, top.readout.top_ids[:, 0])


def test_rank_counts_strictly_larger_logits(tiny_llama):
    result = cv.logit_lens(tiny_llama, PROMPT, answer=" t3")
    assert result.answer_rank.min() >= 0
    at_top = result.answer_rank == 0
    assert torch.equal(at_top, result.top_ids[..., 0] == result.answer_id)


def test_without_answer_and_repr(tiny_gpt2):
    result = cv.logit_lens(tiny_gpt2, PROMPT, k=3)
    assert result.answer_prob is None and result.answer_rank is None
    assert result.top_probs.shape == (3, 7, 3)
    assert "LogitLensResult(3 rows × 7 positions, top-3" in repr(result)
    with pytest.raises(InputError, match="no answer"):
        result.first_top_layer()


def test_figure_writes_top_tokens_and_colours_by_answer_probability(tiny_gpt2):
    result = cv.logit_lens(tiny_gpt2, PROMPT, answer=" t3", k=3)
    heatmap = result.figure().data[0]
    assert heatmap.zmin == 0 and heatmap.zmax == 1
    assert torch.allclose(torch.tensor(heatmap.z), result.answer_prob)
    assert heatmap.text[-1][-1] == result.top_tokens[-1][-1][0]
    assert list(heatmap.y) == ["embed", "L0", "L1"]


def test_save_svg(tiny_gpt2, tmp_path):
    result = cv.logit_lens(tiny_gpt2, PROMPT, answer=" t3")
    path = result.save(tmp_path / "lens.svg")
    text = path.read_text()
    assert text.startswith("<svg") and "embed" in text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"prompt": ""}, "non-empty prompt"),
        ({"answer": " t3 t4"}, "not one"),
        ({"k": 0}, "k must be"),
        ({"prompt": " ".join(["t1"] * 80)}, "context"),
    ],
)
def test_bad_input(tiny_llama, kwargs, message):
    before = tiny_llama(PROMPT).detach().clone()
    with pytest.raises(InputError, match=message):
        cv.logit_lens(tiny_llama, **{"prompt": PROMPT, **kwargs})
    assert not has_hooks(tiny_llama)
    assert torch.equal(tiny_llama(PROMPT), before)


def test_demo_model(demo_model):
    prompt = "The capital of France is"
    result = cv.logit_lens(demo_model, prompt, answer=" Paris", k=5)
    assert len(result.layers) == 31
    probs = by_hand(demo_model, prompt)
    assert torch.allclose(result.answer_prob, probs[..., result.answer_id], atol=1e-5)
    ref = tl_logit_lens(
        demo_model,
        demo_model.to_tokens(prompt),
        positions=None,
        return_type="probs",
        targets=[result.answer_id],
    )
    assert torch.allclose(result.answer_prob, ref.values[:, 0, :, 0], atol=1e-5)
    assert torch.equal(result.answer_rank, ref.rank_trajectory()[:, 0])
    assert result.answer_rank[-1, -1] == int(
        (demo_model(prompt)[0, -1] > demo_model(prompt)[0, -1, result.answer_id]).sum()
    )


# ----------------------------------------------------------------------------- the view


def synthetic_lens(tokens: list[str]) -> cv.LogitLensResult:
    """A 3-row lens whose top tokens are ``tokens`` (hostile strings must stay text)."""
    n_pos, k = 4, 3
    torch.manual_seed(0)
    probs = torch.rand(3, n_pos, k).sort(-1, descending=True).values
    top = [
        [[tokens[(r + p + j) % len(tokens)] for j in range(k)] for p in range(n_pos)]
        for r in range(3)
    ]
    return cv.LogitLensResult(
        top_ids=torch.zeros(3, n_pos, k, dtype=torch.long),
        top_tokens=top,
        top_probs=probs,
        answer=tokens[0],
        answer_id=0,
        answer_prob=probs[..., 0] / 2,
        answer_rank=torch.ones(3, n_pos, dtype=torch.long),
        layers=["embed", "L0", "L1"],
        tokens=["<bos>", *tokens[:3]],
        model_name="synthetic",
    )


def test_view_payload_and_state(tiny_gpt2):
    from circuitviz.views import LogitLensView

    result = cv.logit_lens(tiny_gpt2, PROMPT, answer=" t3", k=4)
    view = cv.LogitLensView(result)
    lens = view.lens
    assert lens["row_ids"] == ["resid_pre:L0", "resid_post:L0", "resid_post:L1"]
    assert lens["colour"]["shape"] == [3, 7] and lens["top_probs"]["shape"] == [3, 7, 4]
    assert lens["top_tokens"] == result.top_tokens
    view.selected = "resid_post:L1:P6"
    again = LogitLensView(result, state=view.state)
    assert again.selected == "resid_post:L1:P6"
    with pytest.raises(InputError, match="LogitLensResult"):
        LogitLensView(cv.patch(tiny_gpt2, cv.PromptPairs([PROMPT], [PROMPT], [" t3"], [" t7"])))
    # The figure escapes markup in tokens (plotly would read "<bos>" as a tag).
    assert view.figure().data[0].text[0][0] == text_label(result.top_tokens[0][0][0])


HOSTILE = ["<img src=x onerror=alert(1)>", "</script><b>x</b>", " Mary", "&amp;"]


@pytest.mark.browser
def test_view_in_a_browser(demo_model, tmp_path, page, artifacts):
    """The standalone page draws a cell per (layer, position) with its top token as text,
    and clicking a cell lists its top-k; hostile tokens stay text."""
    from circuitviz.export._html import write_html

    prompt = "When Mary and John went to the store, John gave a drink to"
    result = cv.logit_lens(demo_model, prompt, answer=" Mary", k=8)
    path = write_html(cv.LogitLensView(result), tmp_path / "lens.html")
    page.set_viewport_size({"width": 1300, "height": 1000})
    page.goto(path.as_uri())
    cells = page.locator('.cv-logitlens .cv-hit[data-component^="resid_"]')
    cells.first.wait_for()
    assert cells.count() == 31 * len(result.tokens)
    final = len(result.tokens) - 1
    last = page.locator(f'.cv-logitlens [data-component="resid_post:L29:P{final}"]')
    assert last.get_attribute("data-token") == result.top_tokens[-1][-1][0]
    last.click()
    rows = page.locator('.cv-logitlens [data-role="topk"] tr')
    assert rows.count() == 1 + 8
    assert rows.nth(1).locator("td").nth(1).inner_text() == result.top_tokens[-1][-1][0].strip()
    assert "rank" in page.locator('.cv-logitlens [data-role="answer-rank"]').inner_text()
    assert last.get_attribute("data-selected") == "true"
    page.locator(".cv-logitlens").screenshot(path=str(artifacts / "logit_lens_demo.png"))
    assert not page.console_errors

    path = write_html(cv.LogitLensView(synthetic_lens(HOSTILE)), tmp_path / "hostile.html")
    page.goto(path.as_uri())
    page.locator('.cv-logitlens [data-component="resid_pre:L0:P0"]').click()
    shown = page.locator('.cv-logitlens [data-role="topk"] tr td:nth-child(2)').all_inner_texts()
    assert shown[1:] == [t.strip() for t in HOSTILE[:3]]
    assert page.locator(".cv-root img, .cv-root b").count() == 0 and not page.dialogs
