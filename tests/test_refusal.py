"""Refusal directions: the difference-in-means direction, ablation and addition, bad input."""

from __future__ import annotations

import math

import pytest
import torch

import circuitviz
from circuitviz.engine import has_hooks, hooks
from circuitviz.engine._refusal import (
    REFUSAL_PHRASES,
    ablation_hooks,
    addition_hooks,
    is_refusal,
    left_pad,
    refusal_scores,
)

TEMPLATE = "t10 {instruction} t11"
HARMFUL = ["t1 t2 t3", "t1 t4", "t2 t5 t6 t7"]
HARMLESS = ["t20 t21", "t22 t23 t24", "t25"]
PROBE = "t1 t2 t3 t4 t5"


def _logits(model, text: str = PROBE) -> torch.Tensor:
    with torch.inference_mode():
        return model(model.to_tokens(text), return_type="logits")


def _resid_projections(model, tokens, direction, fwd=(), mask=None) -> torch.Tensor:
    """|projection on ``direction``| / |x| of every layer's output (the largest over
    positions), with ``fwd`` attached first. Relative: late residual norms reach the
    thousands, where float32 rounds at ~1e-4 absolute."""
    got = []

    def share(x: torch.Tensor, hook: object) -> None:
        got.append(((x @ direction).abs() / x.norm(dim=-1)).max())

    capture = [(f"blocks.{layer}.hook_resid_post", share) for layer in range(model.cfg.n_layers)]
    with torch.inference_mode(), hooks(model, [*fwd, *capture]):
        model(tokens, return_type="logits", attention_mask=mask)
    return torch.stack(got)


# ------------------------------------------------------------------------------- the data


def test_shipped_instruction_sets_are_disjoint_and_balanced():
    train, test = circuitviz.refusal_instructions("train"), circuitviz.refusal_instructions("test")
    for split in (train, test):
        assert len(split["harmful"]) == len(split["harmless"])
    assert len(train["harmful"]) == 32 and len(test["harmful"]) == 16
    everything = [t for split in (train, test) for kind in split.values() for t in kind]
    assert len(set(everything)) == len(everything)  # no prompt in two places
    with pytest.raises(circuitviz.InputError, match="split"):
        circuitviz.refusal_instructions("validation")


@pytest.mark.parametrize("phrase", REFUSAL_PHRASES)
def test_every_refusal_phrase_is_recognised(phrase):
    assert is_refusal(f"  {phrase} help with that.")
    curly = phrase.replace("'", "\u2019")
    assert is_refusal('"' + curly + ' do that."')


@pytest.mark.parametrize(
    "text", ["Sure! Here is a poem.", "Here's how: first", "I'd be glad to help.", ""]
)
def test_compliant_continuations_are_not_refusals(text):
    assert not is_refusal(text)


def test_refusal_score_is_the_log_odds_of_the_refusal_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.3], [0.05, 0.05, 0.9]]))
    scores = refusal_scores(logits, [0, 1])
    expected = [math.log(0.7 / 0.3), math.log(0.1 / 0.9)]
    assert scores.tolist() == pytest.approx(expected, abs=1e-5)


def test_left_padding_keeps_each_prompt_at_the_end():
    tokens, mask = left_pad([torch.tensor([1, 2, 3]), torch.tensor([4])], pad=0)
    assert tokens.tolist() == [[1, 2, 3], [0, 0, 4]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]


# ------------------------------------------------------------------------- tiny llama model


def test_direction_is_unit_and_picks_a_layer(tiny_llama):
    d = circuitviz.refusal_direction(tiny_llama, HARMFUL, HARMLESS, template=TEMPLATE)
    assert d.direction.shape == (tiny_llama.cfg.d_model,)
    assert abs(float(d.direction.norm()) - 1) < 1e-5
    assert torch.allclose(d.direction, d.diff / d.diff.norm(), atol=1e-6)
    assert len(d.separation) == tiny_llama.cfg.n_layers
    assert 0 <= d.layer < tiny_llama.cfg.n_layers
    fixed = circuitviz.refusal_direction(
        tiny_llama, HARMFUL, HARMLESS, template=lambda t: f"t10 {t} t11", layer=0, pos=-2
    )
    assert (fixed.layer, fixed.pos) == (0, -2)
    assert not torch.allclose(fixed.direction, d.direction)


def test_direction_matches_a_direct_difference_in_means(tiny_llama):
    d = circuitviz.refusal_direction(tiny_llama, HARMFUL, HARMLESS, template=TEMPLATE, layer=1)

    def resid(text: str) -> torch.Tensor:
        got = {}
        with hooks(tiny_llama, [("blocks.1.hook_resid_pre", lambda x, hook: got.update(x=x))]):
            _logits(tiny_llama, TEMPLATE.format(instruction=text))
        return got["x"][0, -1]

    expected = torch.stack([resid(t) for t in HARMFUL]).mean(0) - torch.stack(
        [resid(t) for t in HARMLESS]
    ).mean(0)
    torch.testing.assert_close(d.diff, expected, atol=1e-5, rtol=1e-4)


def test_ablation_removes_the_direction_from_every_layer(tiny_llama):
    d = circuitviz.refusal_direction(tiny_llama, HARMFUL, HARMLESS, template=TEMPLATE)
    tokens = tiny_llama.to_tokens(PROBE)
    unit = d.direction
    assert _resid_projections(tiny_llama, tokens, unit).max() > 1e-2  # it is there before
    after = _resid_projections(tiny_llama, tokens, unit, ablation_hooks(tiny_llama, unit))
    assert after.max() <= 1e-5
    assert not has_hooks(tiny_llama)


def test_addition_adds_the_vector_at_its_layer(tiny_llama):
    d = circuitviz.refusal_direction(tiny_llama, HARMFUL, HARMLESS, template=TEMPLATE, layer=1)
    tokens = tiny_llama.to_tokens(PROBE)
    seen = []
    grab = [("blocks.1.hook_resid_pre", lambda x, hook: seen.append(x.clone()))]
    with torch.inference_mode(), hooks(tiny_llama, grab):
        tiny_llama(tokens, return_type="logits")
    with (
        torch.inference_mode(),
        hooks(tiny_llama, [*addition_hooks(tiny_llama, 3 * d.diff, 1), *grab]),
    ):
        tiny_llama(tokens, return_type="logits")
    torch.testing.assert_close(
        seen[1] - seen[0], (3 * d.diff).expand_as(seen[0]), atol=1e-5, rtol=0
    )


def test_steering_reports_before_and_after(tiny_llama):
    d = circuitviz.refusal_direction(tiny_llama, HARMFUL, HARMLESS, template=TEMPLATE)
    prompts = ["t1 t2", "t30 t31 t32"]
    result = circuitviz.steer_refusal(
        tiny_llama, prompts, d, mode="add", coef=40.0, max_new_tokens=3
    )
    for gen in (result.before, result.after):
        assert len(gen.continuations) == len(gen.scores) == len(gen.refused) == 2
        assert 0.0 <= gen.refusal_rate <= 1.0
    # A large addition changes what the model says; coef 0 changes nothing.
    assert result.after.continuations != result.before.continuations
    same = circuitviz.steer_refusal(tiny_llama, prompts, d, mode="add", coef=0.0, max_new_tokens=3)
    assert same.after.continuations == same.before.continuations
    # No refusal word is one token of the tiny vocabulary: no logit score, and it says so.
    assert same.after.scores == [None, None] and same.after.mean_score is None
    ablated = circuitviz.steer_refusal(
        tiny_llama, prompts, d, mode="ablate", max_new_tokens=3, before=result.before
    )
    assert ablated.before is result.before
    assert set(ablated.to_dict()) == {"prompts", "mode", "coef", "layer", "before", "after"}
    assert not has_hooks(tiny_llama)


def test_batched_generation_matches_one_prompt_at_a_time(tiny_llama):
    d = circuitviz.refusal_direction(tiny_llama, HARMFUL, HARMLESS, template=TEMPLATE)
    prompts = ["t1 t2", "t30 t31 t32 t33 t34"]
    together = circuitviz.steer_refusal(tiny_llama, prompts, d, mode="ablate", max_new_tokens=4)
    for i, p in enumerate(prompts):
        alone = circuitviz.steer_refusal(tiny_llama, [p], d, mode="ablate", max_new_tokens=4)
        assert alone.after.continuations[0] == together.after.continuations[i]
        assert alone.before.continuations[0] == together.before.continuations[i]


# ---------------------------------------------------------------------------- bad input


def _bad_calls(model, d):
    return [
        (lambda: circuitviz.refusal_direction(model, HARMFUL, HARMLESS), "chat template"),
        (
            lambda: circuitviz.refusal_direction(model, [], HARMLESS, template=TEMPLATE),
            "harmful is empty",
        ),
        (
            lambda: circuitviz.refusal_direction(model, HARMFUL, [], template=TEMPLATE),
            "harmless is empty",
        ),
        (
            lambda: circuitviz.refusal_direction(model, "t1 t2", HARMLESS, template=TEMPLATE),
            "one string",
        ),
        (
            lambda: circuitviz.refusal_direction(model, HARMFUL, [3], template=TEMPLATE),
            r"harmless\[0\]",
        ),
        (
            lambda: circuitviz.refusal_direction(
                model, HARMFUL, HARMLESS, template=TEMPLATE, layer=99
            ),
            "layer=99",
        ),
        (
            lambda: circuitviz.refusal_direction(
                model, HARMFUL, HARMLESS, template=TEMPLATE, layer=-1
            ),
            "layer=-1",
        ),
        (
            lambda: circuitviz.refusal_direction(
                model, HARMFUL, HARMLESS, template=TEMPLATE, pos=0
            ),
            "pos=0",
        ),
        (
            lambda: circuitviz.refusal_direction(model, HARMFUL, HARMLESS, template="t1 t2"),
            "placeholder",
        ),
        (lambda: circuitviz.steer_refusal(model, ["t1"], d, mode="erase"), "mode"),
        (lambda: circuitviz.steer_refusal(model, ["t1"], d, mode="add", coef=float("nan")), "coef"),
        (lambda: circuitviz.steer_refusal(model, [], d), "prompts is empty"),
        (lambda: circuitviz.steer_refusal(model, ["t1"], "direction"), "RefusalDirection"),
        (lambda: circuitviz.steer_refusal(model, ["t1"], d, max_new_tokens=0), "max_new_tokens"),
    ]


def test_bad_input_is_a_clear_error_and_leaves_the_model_as_it_was(tiny_llama):
    d = circuitviz.refusal_direction(tiny_llama, HARMFUL, HARMLESS, template=TEMPLATE)
    reference = _logits(tiny_llama)
    for call, message in _bad_calls(tiny_llama, d):
        with pytest.raises(circuitviz.InputError, match=message):
            call()
        assert not has_hooks(tiny_llama)
        assert torch.equal(_logits(tiny_llama), reference)


def test_an_error_mid_generation_removes_the_hooks(tiny_llama):
    d = circuitviz.refusal_direction(tiny_llama, HARMFUL, HARMLESS, template=TEMPLATE)
    reference = _logits(tiny_llama)
    d.format = lambda t: "t1 " * 200 + t  # longer than the context: fails when encoding
    with pytest.raises(circuitviz.InputError, match="context"):
        circuitviz.steer_refusal(tiny_llama, ["t2"], d, max_new_tokens=2)
    assert not has_hooks(tiny_llama)
    assert torch.equal(_logits(tiny_llama), reference)


# ------------------------------------------------------------------------------ demo model


@pytest.mark.demo
def test_demo_direction_ablation_and_errors(demo_model):
    model = demo_model
    probe = "<|im_start|>user\nHello there<|im_end|>\n<|im_start|>assistant\n"
    reference = _logits(model, probe)
    train = circuitviz.refusal_instructions("train")
    d = circuitviz.refusal_direction(model, train["harmful"][:3], train["harmless"][:3], layer=12)
    assert abs(float(d.direction.norm()) - 1) < 1e-5
    assert d.format("Hi").startswith(
        "<|im_start|>system"
    )  # the chat template, with its system turn
    assert d.format("Hi").endswith("<|im_start|>assistant\n")
    tokens = model.to_tokens(probe, prepend_bos=False)
    after = _resid_projections(model, tokens, d.direction, ablation_hooks(model, d.direction))
    assert after.max() <= 1e-5
    assert not has_hooks(model)
    for call, message in [
        (lambda: circuitviz.refusal_direction(model, [], train["harmless"]), "harmful is empty"),
        (lambda: circuitviz.refusal_direction(model, ["a"], ["b"], layer=30), "layer=30"),
        (lambda: circuitviz.steer_refusal(model, ["a"], d, mode="add", coef="big"), "coef"),
    ]:
        with pytest.raises(circuitviz.InputError, match=message):
            call()
        assert not has_hooks(model)
    assert torch.equal(_logits(model, probe), reference)


# ------------------------------------------------------------------------------ the view


@pytest.fixture
def steering(tiny_llama):
    from circuitviz.views import SteeringView

    d = circuitviz.refusal_direction(tiny_llama, HARMFUL, HARMLESS, template=TEMPLATE)
    return SteeringView(tiny_llama, d, "t1 t2", coef=0.0, coef_max=60.0, max_new_tokens=3)


def test_steering_view_regenerates_when_the_page_moves_the_slider(steering, tiny_llama):
    assert steering.before["text"] == steering.after["text"]  # coef 0: nothing added
    assert set(steering.before) == {"text", "refused", "score"}
    steering.set_state({"coef": 50.0})  # as the page's slider sends it
    assert steering.coef == 50.0 and steering.error == ""
    assert steering.result.after.continuations[0] == steering.after["text"]
    assert steering.after["text"] != steering.before["text"]
    steering.set_state({"mode": "ablate"})
    assert steering.result.mode == "ablate"
    assert not steering.busy and not has_hooks(tiny_llama)


@pytest.mark.parametrize(
    "update, message",
    [
        ({"coef": 99.0}, "out of range"),
        ({"coef": float("nan")}, "out of range"),
        ({"mode": "erase"}, "Unknown mode"),
        ({"prompt": ""}, "non-empty"),
        ({"layer": 0}, "may not set"),
        ({"after": {"text": "x"}}, "may not set"),
    ],
)
def test_steering_view_refuses_bad_updates_and_keeps_its_state(steering, update, message):
    kept = steering.state, dict(steering.after)
    steering.set_state(update)
    assert message in steering.error
    assert (steering.state, steering.after) == kept


def test_steering_view_needs_a_direction(tiny_llama):
    from circuitviz.views import SteeringView

    with pytest.raises(circuitviz.InputError, match="RefusalDirection"):
        SteeringView(tiny_llama, None, "t1")
    d = circuitviz.refusal_direction(tiny_llama, HARMFUL, HARMLESS, template=TEMPLATE)
    for kwargs, message in [({"coef": 9.0}, "out of range"), ({"mode": "x"}, "Unknown mode")]:
        with pytest.raises(circuitviz.InputError, match=message):
            SteeringView(tiny_llama, d, "t1", **kwargs)
    with pytest.raises(circuitviz.InputError, match="non-empty"):
        SteeringView(tiny_llama, d, " ")
    assert not has_hooks(tiny_llama)


@pytest.mark.browser
def test_steering_view_in_the_browser(steering, tmp_path, page, artifacts, monkeypatch):
    """The page shows both continuations as text, the slider at the kernel's coefficient and
    range, and the verdicts; hostile text stays text."""
    from circuitviz.export import _html

    steering.set_state({"coef": 50.0})
    hostile = "<img src=x onerror=alert(1)>"
    steering.before = {**steering.before, "text": hostile}
    monkeypatch.setattr(_html, "as_views", lambda obj: ([obj], []))
    # The page as in a live kernel: no "not live" reply, so its controls stay on (the
    # standalone export's turn them off: tests/test_steering_export.py).
    monkeypatch.setattr(steering, "static_replies", lambda: [])
    _html.write_html(steering, tmp_path / "steering.html")
    page.goto((tmp_path / "steering.html").as_uri())
    root = page.locator('.cv-root[data-view="steering"]')
    root.wait_for()
    assert page.locator('[data-role="before"]').inner_text() == hostile
    assert page.locator(".cv-root img").count() == 0 and not page.dialogs
    assert page.locator('[data-role="after"]').inner_text() == steering.after["text"]
    slider = page.locator('input[data-role="coef"]')
    assert (slider.get_attribute("min"), slider.get_attribute("max")) == ("-60", "60")
    assert float(slider.input_value()) == 50.0
    assert page.locator('[data-role="coef-value"]').inner_text() == "50"
    verdict = page.locator('[data-role="after-verdict"]')
    assert verdict.get_attribute("data-refused") == str(steering.after["refused"]).lower()
    assert (
        page.locator('[data-role="title"]').inner_text()
        == f"Refusal steering · layer {steering.layer}"
    )
    page.locator('select[data-role="mode"]').select_option("ablate")
    assert slider.is_disabled()
    page.locator('select[data-role="mode"]').select_option("add")
    root.screenshot(path=str(artifacts / "steering_view.png"))
    assert not page.console_errors


STEERING_NOTEBOOK = """
import circuitviz
from circuitviz.views import SteeringView
model = circuitviz.tiny_model("llama")
d = circuitviz.refusal_direction(model, {harmful!r}, {harmless!r}, template={template!r})
sv = SteeringView(model, d, "t1 t2", coef=0.0, coef_max=60.0, max_new_tokens=3)
display(sv)
print("STEER_READY", sv.after["text"])
"""


@pytest.mark.browser
@pytest.mark.slow
def test_steering_slider_regenerates_in_a_real_kernel(jupyter_server, page, artifacts):
    """JupyterLab: moving the slider sends coef to the kernel, which generates again; the
    page shows the kernel's new continuation."""
    from tests.test_e2e_jupyter import open_notebook, run_all_cells, run_new_cell, write_notebook

    code = STEERING_NOTEBOOK.format(harmful=HARMFUL, harmless=HARMLESS, template=TEMPLATE)
    write_notebook(jupyter_server.root_dir / "steering.ipynb", [code])
    open_notebook(page, jupyter_server.lab_url("steering.ipynb"))
    run_all_cells(page, "STEER_READY")
    root = page.locator('.cv-root[data-view="steering"]')
    root.wait_for(state="visible")
    after = root.locator('[data-role="after"]')
    first = after.inner_text()
    assert first == root.locator('[data-role="before"]').inner_text()  # coef 0
    root.locator('input[data-role="coef"]').evaluate(
        "(s) => { s.value = '50'; s.dispatchEvent(new Event('change')); }"
    )
    page.wait_for_function(
        '(t) => document.querySelector(\'.cv-root[data-view="steering"] [data-role="after"]\')'
        ".textContent !== t",
        arg=first,
        timeout=120_000,
    )
    text = run_new_cell(page, "print('STEER', sv.coef, repr(sv.after['text']))", "STEER ")
    assert f"STEER 50.0 {after.inner_text()!r}" in text
    assert root.get_attribute("data-busy") == "false"
    root.screenshot(path=str(artifacts / "steering_view_jupyterlab.png"))
    assert page.dialogs == []
