"""Direct logit attribution: the contributions plus the bias terms are the logit difference,
and the numbers are TransformerLens's ``direct_logit_attribution`` where that applies."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.tools.analysis import direct_logit_attribution

import circuitviz as cv
from circuitviz.engine import InputError, has_hooks, tokenize

from .test_patching_exact import random_pairs

BY = ("heads", "layers", "heads_by_pos")


def perturbed(kind: str, seed: int = 0):
    """A tiny model whose final norm weight/bias and attention output biases are not the
    identity/zero of a fresh initialisation, so the frozen scale and every bias term count."""
    model = cv.tiny_model(kind, n_layers=2, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    norm = model.ln_final._original_component
    with torch.no_grad():
        norm.weight.copy_(1 + 0.5 * torch.randn(norm.weight.shape, generator=g))
        if getattr(norm, "bias", None) is not None:
            norm.bias.copy_(0.3 * torch.randn(norm.bias.shape, generator=g))
        for block in model.blocks:
            o = getattr(block.attn.o, "_original_component", block.attn.o)
            if getattr(o, "bias", None) is not None:
                o.bias.copy_(0.3 * torch.randn(o.bias.shape, generator=g))
    return model


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return perturbed(request.param)


def logit_diff(model, pairs) -> torch.Tensor:
    tokens = tokenize(model, pairs)
    logits = model(tokens.clean)[:, -1]
    rows = torch.arange(tokens.batch)
    return (logits[rows, tokens.answers] - logits[rows, tokens.wrong_answers]).mean()


def total(result) -> float:
    return float(result.values.double().sum()) + sum(result.extra["bias_terms"].values())


@pytest.mark.parametrize("by", BY)
def test_contributions_plus_biases_are_the_logit_difference(model, by):
    pairs = random_pairs()
    result = cv.logit_attribution(model, pairs, by=by)
    expected = float(logit_diff(model, pairs))
    assert result.clean == pytest.approx(expected, abs=1e-5)
    assert abs(total(result) - expected) <= 1e-4
    # The perturbation made every term matter (a zero term would pass the sum vacuously).
    terms = result.extra["bias_terms"]
    assert abs(terms["embed"]) > 0 and result.values.abs().max() > 0
    if model.cfg.model_name == "tiny-gpt2":
        assert abs(terms["ln_final_bias"]) > 0
        assert by == "layers" or abs(terms["b_O"]) > 0
    assert not has_hooks(model)


def test_maps_agree_with_each_other(model):
    pairs = random_pairs()
    heads = cv.logit_attribution(model, pairs, by="heads")
    by_pos = cv.logit_attribution(model, pairs, by="heads_by_pos")
    layers = cv.logit_attribution(model, pairs, by="layers")
    # A head's contribution split by source position sums back to the head's.
    assert torch.allclose(by_pos.values.sum(1), heads.values, atol=1e-5)
    # A layer's attention column is its heads plus its output bias; the MLP column the MLPs.
    b_O = layers.values[:, 0].sum() - heads.values.sum()
    assert float(b_O) == pytest.approx(heads.extra["bias_terms"]["b_O"], abs=1e-5)
    assert float(layers.values[:, 1].sum()) == pytest.approx(
        heads.extra["bias_terms"]["mlp"], abs=1e-5
    )


def tl_dla(reference, pairs, unit: str) -> dict[str, float]:
    """TransformerLens's DLA (batch mean by label), in compatibility mode as it requires."""
    reference.enable_compatibility_mode()
    tokens = tokenize(reference, pairs)
    result = direct_logit_attribution(
        reference,
        tokens.clean,
        answer_tokens=tokens.answers,
        incorrect_tokens=tokens.wrong_answers,
        unit=unit,
    )
    return dict(zip(result.labels, result.attribution.mean(-1).tolist(), strict=True))


@pytest.mark.parametrize("kind", ["gpt2", "llama"])
def test_equal_to_transformer_lens(kind):
    pairs = random_pairs()
    model = perturbed(kind)
    layers = cv.logit_attribution(model, pairs, by="layers")
    ref = tl_dla(perturbed(kind), pairs, "component")
    for layer in range(model.cfg.n_layers):
        assert layers.values[layer, 0] == pytest.approx(ref[f"{layer}_attn_out"], abs=1e-5)
        assert layers.values[layer, 1] == pytest.approx(ref[f"{layer}_mlp_out"], abs=1e-5)
    embed = ref["embed"] + ref.get("pos_embed", 0.0)
    assert layers.extra["bias_terms"]["embed"] == pytest.approx(embed, abs=1e-5)
    if kind == "llama":
        # GPT-2's heads differ by design: compatibility mode folds the value biases b_V
        # into b_O, so TransformerLens moves part of each head into its remainder.
        heads = cv.logit_attribution(model, pairs, by="heads")
        ref = tl_dla(perturbed(kind), pairs, "head")
        for (layer, head), value in zip(
            torch.cartesian_prod(torch.arange(2), torch.arange(4)).tolist(),
            heads.values.flatten().tolist(),
            strict=True,
        ):
            assert value == pytest.approx(ref[f"L{layer}H{head}"], abs=1e-5)


def test_result_is_a_map_with_zero_baseline(model):
    result = cv.logit_attribution(model, random_pairs(), by="layers")
    assert result.baseline == 0.0
    assert result.axes == ("layer", "sublayer")
    assert result.cells()[:2] == ["attn_out:L0", "MLP0"]
    _, value = result.top(1)[0]
    assert abs(value) == pytest.approx(float(result.values.abs().max()))
    assert "direct" in repr(result)


def test_patching_view_shows_it_around_zero(model):
    from circuitviz.views._patching import map_payload

    payload = map_payload(cv.logit_attribution(model, random_pairs(), by="heads_by_pos"))
    assert payload["baseline"] == 0.0
    assert payload["axes"] == ["layer", "pos", "head"]
    fig = cv.logit_attribution(model, random_pairs(), by="heads").figure()
    assert fig.data[0].zmid == 0.0
    assert "Direct logit attribution" in fig.layout.title.text


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"by": "neurons"}, "Unknown by="), ({"metric": "kl"}, "metric='logit_diff'")],
)
def test_bad_input(model, kwargs, message):
    before = model("t1 t2 t3").detach().clone()
    with pytest.raises(InputError, match=message):
        cv.logit_attribution(model, random_pairs(), **kwargs)
    assert not has_hooks(model)
    assert torch.equal(model("t1 t2 t3"), before)


def test_demo_model_sum_and_transformer_lens(demo_model):
    pairs = cv.tasks.ioi(demo_model, n=4, seed=0)
    heads = cv.logit_attribution(demo_model, pairs, by="heads")
    assert abs(total(heads) - float(logit_diff(demo_model, pairs))) <= 1e-4
    by_pos = cv.logit_attribution(demo_model, pairs, by="heads_by_pos")
    assert abs(total(by_pos) - heads.clean) <= 1e-4
    assert heads.values.shape == (30, 9)
    ref = tl_dla(cv.load_model("demo", device="cpu"), pairs, "head")
    ref_heads = torch.tensor(
        [[ref[f"L{layer}H{head}"] for head in range(9)] for layer in range(30)]
    )
    assert torch.allclose(heads.values, ref_heads, atol=1e-4)


def test_save_svg(model, tmp_path):
    result = cv.logit_attribution(model, random_pairs(), by="layers")
    text = result.save(tmp_path / "dla.svg").read_text()
    assert text.startswith("<svg") and "Direct logit attribution by layers" in text


@pytest.mark.browser
def test_patching_view_draws_dla_maps(demo_model, tmp_path, page, artifacts):
    """PatchingView shows DLA maps around 0 with their own title; the layers map's cells are
    attention and MLP ids."""
    from circuitviz.export._html import write_html
    from circuitviz.views import PatchingView

    pairs = cv.tasks.ioi(demo_model, n=4, seed=0)
    page.set_viewport_size({"width": 1200, "height": 1000})
    for by in ("heads", "layers"):
        result = cv.logit_attribution(demo_model, pairs, by=by)
        path = write_html(PatchingView(result), tmp_path / f"dla_{by}.html")
        page.goto(path.as_uri())
        top_id, _ = result.top(1)[0]
        cell = page.locator(f'.cv-patching [data-component="{top_id}"]')
        cell.hover()
        tip = page.locator('.cv-patching [data-role="tooltip"]').inner_text()
        assert "direct contribution to logit_diff" in tip and "% of the clean value" in tip
        page.locator(".cv-patching").screenshot(path=str(artifacts / f"dla_{by}_demo.png"))
    assert page.locator('.cv-patching [data-component="attn_out:L23"]').count() == 1
    assert not page.console_errors


def test_a_readout_it_cannot_decompose_is_refused():
    """A logit scale after the unembedding (as Gemma's softcap or Cohere's logit scale)
    breaks the decomposition: an error, not wrong numbers; the lens refuses it too."""
    model = cv.tiny_model("llama", n_layers=2)
    handle = model.unembed._original_component.register_forward_hook(lambda m, i, out: 3 * out)
    try:
        with pytest.raises(InputError, match="can't decompose"):
            cv.logit_attribution(model, random_pairs())
        with pytest.raises(InputError, match="can't read this model"):
            cv.logit_lens(model, "t1 t2 t3", answer=" t3")
    finally:
        handle.remove()
    assert not has_hooks(model)
