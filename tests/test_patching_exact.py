"""Every patching map equals TransformerLens's own ``transformer_lens.patching`` result."""

from __future__ import annotations

import pytest
import torch
from transformer_lens import patching as tlp

import circuitviz as cv
from circuitviz.engine import tokenize

TL_FUNCTIONS = {
    "resid_pre": tlp.get_act_patch_resid_pre,
    "attn_out": tlp.get_act_patch_attn_out,
    "mlp_out": tlp.get_act_patch_mlp_out,
    "heads": tlp.get_act_patch_attn_head_out_all_pos,
    "heads_by_pos": tlp.get_act_patch_attn_head_out_by_pos,
    "q": tlp.get_act_patch_attn_head_q_all_pos,
    "k": tlp.get_act_patch_attn_head_k_all_pos,
    "v": tlp.get_act_patch_attn_head_v_all_pos,
    "pattern": tlp.get_act_patch_attn_head_pattern_all_pos,
}
TOL = 1e-4


def random_pairs(n: int = 3, length: int = 6, seed: int = 1) -> cv.PromptPairs:
    g = torch.Generator().manual_seed(seed)

    def prompt() -> str:
        return " ".join(f"t{i}" for i in torch.randint(0, 100, (length,), generator=g).tolist())

    clean = [prompt() for _ in range(n)]
    corrupted = [prompt() for _ in range(n)]
    return cv.PromptPairs(clean, corrupted, ["t1", "t2", "t3"][:n], ["t4", "t5", "t6"][:n])


def tl_logit_diff(tokens):
    rows = torch.arange(tokens.batch)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        return (last[rows, tokens.answers] - last[rows, tokens.wrong_answers]).mean()

    return metric


def tl_reference(model, pairs, over: str, direction: str = "denoise") -> torch.Tensor:
    """TransformerLens's patching for the same target. It always patches the cache into the
    run it is given, so "noise" runs clean tokens with the corrupted cache."""
    tokens = tokenize(model, pairs)
    source, run = (
        (tokens.clean, tokens.corrupted)
        if direction == "denoise"
        else (tokens.corrupted, tokens.clean)
    )
    _, cache = model.run_with_cache(source)
    return TL_FUNCTIONS[over](model, run, cache, tl_logit_diff(tokens)).cpu()


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return cv.tiny_model(request.param, n_layers=2)


@pytest.mark.parametrize("over", sorted(TL_FUNCTIONS))
def test_denoise_equals_transformer_lens(model, over):
    pairs = random_pairs()
    ours = cv.patch(model, pairs, over=over, progress=False)
    ref = tl_reference(model, pairs, over)
    assert ours.values.shape == ref.shape
    assert (ours.values - ref).abs().max() <= TOL


@pytest.mark.parametrize("over", ["resid_pre", "heads", "k", "heads_by_pos"])
def test_noise_equals_transformer_lens(model, over):
    pairs = random_pairs(seed=2)
    ours = cv.patch(model, pairs, over=over, direction="noise", progress=False)
    ref = tl_reference(model, pairs, over, direction="noise")
    assert (ours.values - ref).abs().max() <= TOL


def test_chunked_equals_unchunked(model):
    """A memory budget small enough to force one row per pass changes nothing."""
    pairs = random_pairs()
    whole = cv.patch(model, pairs, over="heads_by_pos", progress=False)
    tiny = cv.patch(model, pairs, over="heads_by_pos", memory_budget=1, progress=False)
    assert tiny.extra["chunk_size"] == 1
    assert torch.allclose(whole.values, tiny.values, atol=1e-5)


def test_gqa_keys_and_values_are_per_kv_head():
    model = cv.tiny_model("llama", n_layers=2, n_heads=4, n_kv_heads=2)
    result = cv.patch(model, random_pairs(), over="v", progress=False)
    assert result.axes == ("layer", "kv_head")
    assert result.values.shape == (2, 2)
    assert result.labels["kv_head"] == ["KV0", "KV1"]


def test_single_token_difference_localizes_at_layer_0(model):
    """Prompts that differ at one position only: patching the layer-0 residual there gives
    exactly the clean metric, anywhere else exactly the corrupted one."""
    pairs = cv.PromptPairs(["t5 t9 t12 t40 t7"], ["t5 t9 t33 t40 t7"], ["t1"], ["t2"])
    result = cv.patch(model, pairs, over="resid_pre", progress=False)
    layer0 = result.values[0]
    assert layer0[3] == pytest.approx(result.clean, abs=1e-5)  # BOS shifts t12 to pos 3
    others = torch.cat([layer0[:3], layer0[4:]])
    assert torch.allclose(others, torch.full_like(others, result.corrupted), atol=1e-5)


def test_result_carries_labels_and_component_ids(model):
    pairs = random_pairs()
    result = cv.patch(model, pairs, over="resid_pre", progress=False)
    assert result.labels["layer"] == ["L0", "L1"]
    assert result.labels["pos"][1] == "1: " + pairs.clean[0].split()[0]
    assert result.component((1, 3)) == "resid_pre:L1:P3"
    heads = cv.patch(model, pairs, over="heads", progress=False)
    assert heads.component((1, 2)) == "L1H2"
    assert heads.labels["head"] == ["H0", "H1", "H2", "H3"]


@pytest.mark.demo
def test_demo_model_heads_map_equals_transformer_lens(demo_model):
    pairs = cv.tasks.ioi(demo_model, n=1, seed=0)
    ours = cv.patch(demo_model, pairs, over="heads", progress=False)
    ref = tl_reference(demo_model, pairs, "heads")
    assert ours.values.shape == (30, 9)
    assert (ours.values - ref).abs().max() <= TOL
    assert ours.clean > 0 > ours.corrupted  # prefers the indirect object only when it should


@pytest.mark.demo
def test_demo_model_does_ioi_on_the_canonical_prompt(demo_model):
    """The figure quoted in the docs: a clean logit diff of about 5.6 on the classic prompt.
    (Other IOI pairs vary, e.g. 3.6 for the first pair of ``tasks.ioi(seed=0)``.)"""
    pairs = cv.PromptPairs(
        ["When John and Mary went to the store, John gave a drink to"],
        ["When John and Mary went to the store, Mary gave a drink to"],
        [" Mary"],
        [" John"],
    )
    result = cv.patch(demo_model, pairs, over="resid_pre", progress=False)
    assert result.clean == pytest.approx(5.58, abs=0.1)
    assert result.corrupted < -4
