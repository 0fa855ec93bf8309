"""Attribution patching, ablation, attention and the task builders."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr

import circuitviz as cv
from circuitviz.engine import has_hooks

from .test_patching_exact import random_pairs


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return cv.tiny_model(request.param, n_layers=2)


# --- attribution patching -------------------------------------------------------------


@pytest.mark.parametrize("over", ["resid_pre", "heads", "heads_by_pos", "k", "pattern"])
def test_attribution_shape_and_baselines_match_exact(model, over):
    pairs = random_pairs()
    exact = cv.patch(model, pairs, over=over, progress=False)
    approx = cv.attribution_patch(model, pairs, over=over)
    assert approx.method == "attribution"
    assert approx.values.shape == exact.values.shape
    assert approx.clean == pytest.approx(exact.clean, abs=1e-5)
    assert approx.corrupted == pytest.approx(exact.corrupted, abs=1e-5)
    assert approx.values.std() > 0, "every estimate equals the baseline: no gradient reached it"


def test_attribution_ranks_heads_like_exact_patching():
    """The gradient estimate orders heads as exact patching does (roughly, on a random model)."""
    model = cv.tiny_model("llama", n_layers=2)
    pairs = random_pairs(n=2)
    exact = cv.patch(model, pairs, over="heads", progress=False)
    approx = cv.attribution_patch(model, pairs, over="heads")
    rho = spearmanr(exact.values.flatten(), approx.values.flatten()).correlation
    assert rho > 0.5, f"attribution and exact patching disagree in rank (Spearman {rho:.2f})"


def test_attribution_is_zero_where_prompts_agree():
    """Where clean and corrupted residuals agree, the estimated effect is exactly zero; where
    they differ it points the same way as the exact patch."""
    model = cv.tiny_model("gpt2", n_layers=1, seed=3)
    pairs = cv.PromptPairs(["t5 t9 t12 t40"], ["t5 t9 t13 t40"], ["t1"], ["t2"])
    approx = cv.attribution_patch(model, pairs, over="resid_pre")
    exact = cv.patch(model, pairs, over="resid_pre", progress=False)
    changed = 3
    assert abs(float(approx.values[0, changed]) - approx.corrupted) > 0
    unchanged = [0, 1, 2, 4]
    assert torch.allclose(approx.values[0, unchanged], torch.tensor(approx.corrupted), atol=1e-6)
    assert torch.sign(approx.values[0, changed] - approx.corrupted) == torch.sign(
        exact.values[0, changed] - exact.corrupted
    )


# --- ablation -----------------------------------------------------------------------------


def test_ablating_nothing_reports_no_ablated_value(model):
    """Nothing ablated: the clean and corrupted baselines, and None for everything after."""
    result = cv.ablate(model, random_pairs())
    assert result.ablated is None and result.top_after is None
    assert result.delta is None and result.gap_fraction is None
    assert result.per_prompt["ablated"] is None
    assert result.per_prompt["clean"] and result.top_before.tokens


def test_resample_ablating_everything_is_the_corrupted_run(model):
    """With the same final token, the final residual is its embedding plus every head's and
    MLP's output: resampling all of them from the corrupted run gives the corrupted run."""
    n_layers, n_heads = model.cfg.n_layers, model.cfg.n_heads
    pairs = cv.PromptPairs(["t5 t9 t12 t40 t7"], ["t5 t30 t33 t41 t7"], ["t1"], ["t2"])
    every_head = [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
    result = cv.ablate(model, pairs, heads=every_head, mlps=range(n_layers), mode="resample")
    assert result.ablated == pytest.approx(result.corrupted, abs=1e-5)


def test_zero_ablation_equals_manual_hook(model):
    pairs = random_pairs()
    result = cv.ablate(model, pairs, heads=[(1, 2)], mode="zero")

    def zero(z, hook):
        z[:, :, 2] = 0
        return z

    tokens = cv.engine.tokenize(model, pairs)
    logits = model.run_with_hooks(tokens.clean, fwd_hooks=[("blocks.1.attn.hook_z", zero)])[:, -1]
    rows = torch.arange(tokens.batch)
    manual = (logits[rows, tokens.answers] - logits[rows, tokens.wrong_answers]).mean()
    assert result.ablated == pytest.approx(float(manual), abs=1e-5)
    assert not has_hooks(model)


def test_mean_ablation_and_ids(model):
    pairs = random_pairs()
    by_ids = cv.ablate(model, pairs, heads=["L1H2"], mlps=["MLP0"], mode="mean")
    by_tuples = cv.ablate(model, pairs, heads=[(1, 2)], mlps=[0], mode="mean")
    assert by_ids.ablated == pytest.approx(by_tuples.ablated)
    assert by_ids.components == ["L1H2", "MLP0"]
    assert list(by_ids.to_dict()) == [
        "components", "mode", "metric", "clean", "corrupted", "ablated", "delta",
        "gap_fraction", "per_prompt", "top_before", "top_after",
    ]  # fmt: skip


def test_repeated_ablation_reuses_work(model, monkeypatch):
    """A second call with the same pairs runs no clean/corrupted pass again, and a repeated
    ablation set runs no forward pass at all."""
    from circuitviz.engine import _ablation

    pairs = random_pairs(seed=7)
    cv.ablate(model, pairs, heads=[(0, 1)])
    calls = []
    real = _ablation.final_logits
    monkeypatch.setattr(_ablation, "final_logits", lambda *a, **k: calls.append(1) or real(*a, **k))
    monkeypatch.setattr(_ablation, "baselines", lambda *a, **k: pytest.fail("baselines recomputed"))
    cv.ablate(model, pairs, heads=[(0, 1), (1, 0)])
    assert len(calls) == 1
    cv.ablate(model, pairs, heads=[(1, 0), (0, 1)])
    assert len(calls) == 1


# --- attention ----------------------------------------------------------------------------


def test_attention_patterns_and_role_masks(model):
    result = cv.attention(model, "t1 t2 t3 t1 t2 t3")
    n = 7
    assert result.patterns.shape == (2, 4, n, n)
    assert result.patterns.dtype == torch.float16
    rows = result.patterns.float().sum(-1)
    assert torch.allclose(rows, torch.ones_like(rows), atol=1e-2)
    for role in cv.engine.ROLES:
        assert result.scores[role].shape == (2, 4)
        assert ((result.scores[role] >= 0) & (result.scores[role] <= 1.0001)).all()


def test_role_scores_on_handmade_patterns():
    from circuitviz.engine._attention import role_scores

    tokens = torch.tensor([0, 5, 6, 7, 5, 6, 7])
    n = len(tokens)
    prev = torch.zeros(n, n)
    prev[0, 0] = 1
    for d in range(1, n):
        prev[d, d - 1] = 1
    induction = torch.eye(n)
    for d in (4, 5, 6):  # token at d appeared at d-3; induction attends to d-3+1
        induction[d] = 0
        induction[d, d - 2] = 1
    scores = role_scores(torch.stack([prev, induction])[None], tokens)
    assert scores["previous_token"][0, 0] == pytest.approx(1.0)
    assert scores["induction"][0, 1] == pytest.approx(1.0)
    assert scores["induction"][0, 0] < 0.5


# --- tasks --------------------------------------------------------------------------------


def test_induction_pairs_on_tiny_model(model):
    pairs = cv.tasks.induction(model, n=4, seq_len=5, seed=0)
    tokens = cv.engine.tokenize(model, pairs)
    assert tokens.clean.shape == (4, 10)
    # clean repeats its first half; the answer is the token that follows
    first, second = tokens.clean[:, 1:6], tokens.clean[:, 6:]
    assert torch.equal(first[:, :4], second)
    assert torch.equal(tokens.answers, first[:, 4])


def test_factual_pairs_rotate_prompts(model):
    pairs = cv.tasks.factual(model, [("t1 t2", "t3"), ("t4 t5", "t6"), ("t7 t8", "t9")])
    assert pairs.corrupted == ("t4 t5", "t7 t8", "t1 t2")
    assert pairs.wrong_answers == ("t6", "t9", "t3")


def test_ioi_needs_names(model):
    with pytest.raises(cv.InputError, match="single-token names"):
        cv.tasks.ioi(model, n=2)


@pytest.mark.demo
def test_ioi_on_demo_model(demo_model):
    pairs = cv.tasks.ioi(demo_model, n=6, seed=0)
    tokens = cv.engine.tokenize(demo_model, pairs)
    assert tokens.clean.shape[0] == 6
    # ABBA then BABA; the corrupted prompt names the indirect object twice
    assert pairs.answers[0] != pairs.wrong_answers[0]
    result = cv.ablate(demo_model, pairs)
    assert 3.0 < result.clean < 8.0 and result.corrupted < 0 < result.clean
