"""A batch of prompts patched in one growing pass equals TransformerLens's own patching
functions and the one-prompt-per-pass path, for every target."""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks, tokenize
from circuitviz.engine._metrics import MetricError

from .test_patching_exact import TL_FUNCTIONS, TOL, tl_reference

N_PAIRS = 4


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return cv.tiny_model(request.param, n_layers=2)


def attention_pre_hooks(model) -> int:
    return sum(
        len(block.attn._forward_pre_hooks) + len(block.attn._forward_pre_hooks_with_kwargs)
        for block in model.blocks
    )


@pytest.mark.parametrize("over", sorted(TL_FUNCTIONS))
def test_one_pass_equals_transformer_lens_and_one_prompt_per_pass(model, over):
    """Reference: ``transformer_lens.patching`` (TL_FUNCTIONS[over]) on the whole batch, and
    circuitviz with ``max_rows=2`` (one prompt and one condition per pass)."""
    pairs = _pairs(N_PAIRS)
    batched = cv.patch(model, pairs, over=over, progress=False)
    assert batched.extra["prompts_per_pass"] == N_PAIRS
    per_prompt = cv.patch(model, pairs, over=over, max_rows=2, progress=False)
    assert per_prompt.extra["prompts_per_pass"] == 1
    ref = tl_reference(model, pairs, over)
    assert (batched.values - ref).abs().max() <= TOL
    assert (batched.values - per_prompt.values).abs().max() <= TOL
    assert batched.clean == pytest.approx(per_prompt.clean, abs=TOL)
    assert batched.corrupted == pytest.approx(per_prompt.corrupted, abs=TOL)


def _pairs(n: int, seed: int = 5) -> cv.PromptPairs:
    g = torch.Generator().manual_seed(seed)

    def prompt() -> str:
        return " ".join(f"t{i}" for i in torch.randint(0, 100, (6,), generator=g).tolist())

    answers = [f"t{i}" for i in range(1, n + 1)]
    wrong = [f"t{i}" for i in range(101, 101 + n)]
    return cv.PromptPairs(
        [prompt() for _ in range(n)], [prompt() for _ in range(n)], answers, wrong
    )


def test_all_prompts_share_one_pass_per_chunk(model):
    """With the whole map in one chunk, the map costs the source run and one pass."""
    result = cv.patch(model, _pairs(N_PAIRS), over="heads", progress=False)
    assert result.extra["forward_passes"] == 2


def test_prompts_split_over_passes_when_rows_run_out(model):
    """Prompts share a pass while the whole map fits beside them (``max_rows=20``: 2 prompts
    × 9 groups); when it fits for no prompt (``max_rows=4``), one prompt per pass with the
    conditions chunked. The map is unchanged. Reference: TransformerLens."""
    pairs = _pairs(N_PAIRS)
    n_heads = model.cfg.n_layers * model.cfg.n_heads
    ref = tl_reference(model, pairs, "heads")
    two = cv.patch(model, pairs, over="heads", max_rows=20, progress=False)
    assert (two.extra["prompts_per_pass"], two.extra["chunk_size"]) == (2, n_heads)
    assert two.extra["forward_passes"] == 1 + N_PAIRS // 2
    chunked = cv.patch(model, pairs, over="heads", max_rows=4, progress=False)
    assert (chunked.extra["prompts_per_pass"], chunked.extra["chunk_size"]) == (1, 3)
    assert chunked.extra["forward_passes"] == 1 + N_PAIRS * -(-n_heads // 3)
    for result in (two, chunked):
        assert (result.values - ref).abs().max() <= TOL


@pytest.mark.parametrize("over", ["resid_pre", "heads", "k"])
def test_noise_direction_batched_equals_transformer_lens(model, over):
    pairs = _pairs(N_PAIRS, seed=7)
    ours = cv.patch(model, pairs, over=over, direction="noise", progress=False)
    ref = tl_reference(model, pairs, over, direction="noise")
    assert (ours.values - ref).abs().max() <= TOL


def test_no_hook_is_left_and_logits_are_unchanged_after_an_error(model):
    """A metric that fails inside the batched pass: the error is circuitviz's, every hook and
    mask pre-hook is gone, and the model's logits are bit-identical."""
    pairs = _pairs(N_PAIRS)
    tokens = torch.randint(0, 100, (N_PAIRS, 6))
    with torch.inference_mode():
        before = model(tokens)

    def bad(logits: torch.Tensor) -> torch.Tensor:
        return torch.full((logits.shape[0],), float("nan"))

    with pytest.raises(MetricError, match="non-finite"):
        cv.patch(model, pairs, over="heads", metric=bad, progress=False)
    assert not has_hooks(model)
    assert attention_pre_hooks(model) == 0
    with torch.inference_mode():
        assert torch.equal(model(tokens), before)


def test_interrupt_inside_the_pass_leaves_no_hook(model, monkeypatch):
    """A KeyboardInterrupt from inside a hook (a Ctrl-C mid-pass) leaves nothing behind."""
    from circuitviz.engine import _patching

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(_patching, "write_cell", interrupt)
    with pytest.raises(KeyboardInterrupt):
        cv.patch(model, _pairs(N_PAIRS), over="heads", progress=False)
    assert not has_hooks(model)
    assert attention_pre_hooks(model) == 0


# --- the analyses that already run the whole batch in one pass ---------------------------


def test_ablate_batch_equals_each_pair_alone(model):
    """``ablate`` runs every prompt in one pass; each pair's value equals that pair ablated on
    its own (reference: the one-prompt-per-pass path), for zero and resample modes."""
    pairs = _pairs(N_PAIRS)
    for mode in ("zero", "resample"):
        whole = cv.ablate(model, pairs, heads=["L1H2", "L0H1"], mlps=[0], mode=mode)
        for i in range(N_PAIRS):
            one = cv.PromptPairs(
                [pairs.clean[i]], [pairs.corrupted[i]], [pairs.answers[i]], [pairs.wrong_answers[i]]
            )
            alone = cv.ablate(model, one, heads=["L1H2", "L0H1"], mlps=[0], mode=mode)
            assert whole.per_prompt["ablated"][i] == pytest.approx(alone.ablated, abs=TOL)


def test_attribution_batch_is_the_mean_of_each_pair_alone(model):
    """Attribution patching is linear in the batch mean: the batch map equals the mean of the
    per-pair maps (reference: one prompt per pass)."""
    pairs = _pairs(3)
    whole = cv.attribution_patch(model, pairs, over="heads")
    maps = []
    for i in range(3):
        one = cv.PromptPairs(
            [pairs.clean[i]], [pairs.corrupted[i]], [pairs.answers[i]], [pairs.wrong_answers[i]]
        )
        maps.append(cv.attribution_patch(model, one, over="heads").values)
    assert (whole.values - torch.stack(maps).mean(0)).abs().max() <= TOL


# --- prompts of mixed lengths: left-padded and masked ------------------------------------

LENGTHS = (4, 7, 5)


def mixed_pairs(seed: int = 11) -> cv.PromptPairs:
    g = torch.Generator().manual_seed(seed)

    def prompt(n: int) -> str:
        return " ".join(f"t{i}" for i in torch.randint(0, 100, (n,), generator=g).tolist())

    clean = [prompt(n) for n in LENGTHS]
    corrupted = [prompt(n) for n in LENGTHS]
    return cv.PromptPairs(clean, corrupted, ["t1", "t2", "t3"], ["t4", "t5", "t6"])


def one(pairs: cv.PromptPairs, i: int) -> cv.PromptPairs:
    return cv.PromptPairs(
        [pairs.clean[i]], [pairs.corrupted[i]], [pairs.answers[i]], [pairs.wrong_answers[i]]
    )


def padded_reference(model, pairs: cv.PromptPairs, over: str) -> torch.Tensor:
    """TransformerLens's own patching function on each pair alone (no padding), placed at
    the pair's positions in the left-padded batch (a padding position keeps the pair's
    unpatched metric), averaged over the pairs."""
    n_pos = tokenize(model, pairs, pad=True).n_pos
    maps = []
    for i in range(len(pairs)):
        ref = tl_reference(model, one(pairs, i), over)
        if "pos" in cv.engine._patching.TARGETS[over].axes:
            tokens = tokenize(model, one(pairs, i))
            with torch.inference_mode():
                last = model(tokens.corrupted)[0, -1]
            unpatched = float(last[tokens.answers[0]] - last[tokens.wrong_answers[0]])
            shift = n_pos - tokens.n_pos
            full = torch.full((ref.shape[0], n_pos, *ref.shape[2:]), unpatched)
            full[:, shift:] = ref
            ref = full
        maps.append(ref)
    return torch.stack(maps).mean(0)


@pytest.mark.parametrize("over", sorted(TL_FUNCTIONS))
def test_mixed_lengths_equal_each_pair_alone_in_transformer_lens(model, over):
    """Reference: ``transformer_lens.patching`` (TL_FUNCTIONS[over]) on each pair alone,
    unpadded, shifted to its padded positions and averaged; and circuitviz's
    one-prompt-per-pass path on the same padded batch."""
    pairs = mixed_pairs()
    batched = cv.patch(model, pairs, over=over, progress=False)
    assert batched.extra["prompts_per_pass"] == len(LENGTHS)
    per_prompt = cv.patch(model, pairs, over=over, max_rows=2, progress=False)
    ref = padded_reference(model, pairs, over)
    assert batched.values.shape == ref.shape
    assert (batched.values - ref).abs().max() <= TOL
    assert (batched.values - per_prompt.values).abs().max() <= TOL


def test_mixed_lengths_label_positions_by_the_longest_prompt(model):
    pairs = mixed_pairs()
    result = cv.patch(model, pairs, over="resid_pre", progress=False)
    tokens = tokenize(model, pairs, pad=True)
    assert tokens.attention_mask is not None
    assert tokens.attention_mask.sum(1).tolist() == [
        tokens.n_pos - 3,
        tokens.n_pos,
        tokens.n_pos - 2,
    ]
    assert result.labels["pos"][-1].endswith(pairs.clean[1].split()[-1])


def test_mixed_lengths_attribution_is_the_mean_of_each_pair_alone(model):
    """Attribution patching on the padded batch: the heads map equals the mean of each pair's
    own (unpadded) map; padding positions add nothing."""
    pairs = mixed_pairs()
    whole = cv.attribution_patch(model, pairs, over="heads")
    alone = [cv.attribution_patch(model, one(pairs, i), over="heads").values for i in range(3)]
    assert (whole.values - torch.stack(alone).mean(0)).abs().max() <= TOL


def test_a_corrupted_prompt_longer_than_its_clean_one_is_named(model):
    pairs = mixed_pairs()
    bad = cv.PromptPairs(
        list(pairs.clean),
        [pairs.corrupted[0], pairs.corrupted[1] + " t9", pairs.corrupted[2]],
        list(pairs.answers),
        list(pairs.wrong_answers),
    )
    with pytest.raises(cv.InputError, match=r"\(pair 1\)"):
        cv.patch(model, bad, over="heads", progress=False)
    assert not has_hooks(model)


def test_path_patch_map_in_one_pass_equals_one_prompt_per_pass(model):
    """Path patching grows the batch the same way: every prompt in one pass gives the map of
    one prompt per pass (``max_rows=2``). tests/test_path_patching.py checks both against
    ``get_act_patch_direct_path_all_sources`` and a hand-written three-run reference."""
    pairs = _pairs(N_PAIRS)
    for receivers, kind in ((["L1H2"], "q"), ("logits", "resid")):
        whole = cv.path_patch(
            model, pairs, receivers=receivers, receiver_input=kind, progress=False
        )
        split = cv.path_patch(
            model, pairs, receivers=receivers, receiver_input=kind, max_rows=2, progress=False
        )
        assert whole.extra["forward_passes"] == 3
        assert split.extra["forward_passes"] > 3 + N_PAIRS
        assert (whole.values - split.values).abs().max() <= TOL
    assert not has_hooks(model)
    assert attention_pre_hooks(model) == 0


@pytest.mark.parametrize("steps", [1, 3])
def test_eap_scores_of_a_batch_are_the_mean_of_each_pair_alone(model, steps):
    """EAP and EAP-IG run the whole batch in each pass; their edge scores (averaged over the
    batch) equal the mean of each pair's own scores (reference: one prompt per pass)."""
    from circuitviz.engine.graph._eap import eap_scores
    from circuitviz.engine.graph._layout import Layout, all_weights

    pairs = _pairs(3)
    layout, weights = Layout.of(model), all_weights(model)

    def scores(p: cv.PromptPairs) -> torch.Tensor:
        tokens = tokenize(model, p)
        return eap_scores(
            model, layout, weights, tokens, "logit_diff", steps=steps, progress=False
        )[0]

    whole = scores(pairs)
    alone = torch.stack([scores(one(pairs, i)) for i in range(3)]).mean(0)
    assert (whole - alone).abs().max() <= TOL
