"""Bad input gets an error naming the problem, and leaves the model exactly as it was."""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import InputError, MetricError, has_hooks

PROBE = "t3 t8 t1 t9 t4"


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return cv.tiny_model(request.param, n_layers=2)


@pytest.fixture
def unchanged(model):
    """Assert after the test that no hook is left and a forward pass is bit-identical."""
    before = model(PROBE).detach().clone()
    yield
    assert not has_hooks(model)
    assert torch.equal(model(PROBE), before)


GOOD = dict(clean=["t1 t2 t3 t4"], corrupted=["t5 t6 t7 t8"], answers=["t9"], wrong_answers=["t10"])


def pairs(**changes) -> cv.PromptPairs:
    return cv.PromptPairs(**{**GOOD, **changes})


def test_different_token_lengths(model, unchanged):
    with pytest.raises(InputError, match="same length"):
        cv.patch(model, pairs(corrupted=["t5 t6 t7"]), progress=False)


def test_different_lengths_within_batch(model, unchanged):
    bad = pairs(
        clean=["t1 t2 t3 t4", "t1 t2"],
        corrupted=["t5 t6 t7 t8"] * 2,
        answers="t9",
        wrong_answers="t10",
    )
    # patch and ablate pad pairs of mixed lengths, but a corrupted prompt must match its
    # clean one, and the error names the pair.
    with pytest.raises(InputError, match=r"same length as its clean prompt.*|\(pair 1\)"):
        cv.patch(model, bad, progress=False)
    with pytest.raises(InputError, match=r"\(pair 1\)"):
        cv.ablate(model, bad, heads=["L0H0"])


def test_multi_token_answer(model, unchanged):
    with pytest.raises(InputError, match="single tokens"):
        cv.patch(model, pairs(answers=["t9 t10"]), progress=False)


def test_empty_batch(model, unchanged):
    with pytest.raises(InputError, match="empty"):
        cv.patch(model, pairs(clean=[], corrupted=[], answers=[], wrong_answers=[]), progress=False)


@pytest.mark.parametrize("call", ["patch", "attribution_patch"])
def test_unknown_over(model, unchanged, call):
    with pytest.raises(InputError, match="Unknown over='neurons'"):
        getattr(cv, call)(model, pairs(), over="neurons")


def test_unknown_metric(model, unchanged):
    with pytest.raises(InputError, match="Unknown metric 'accuracy'"):
        cv.patch(model, pairs(), metric="accuracy", progress=False)


def test_unknown_mode(model, unchanged):
    with pytest.raises(InputError, match="Unknown ablation mode='random'"):
        cv.ablate(model, pairs(), heads=[(0, 0)], mode="random")


@pytest.mark.parametrize(
    "heads, mlps, message",
    [
        ([(5, 0)], [], "L5H0 is out of range"),
        ([(0, 9)], [], "L0H9 is out of range"),
        ([], [7], "MLP7 is out of range"),
    ],
)
def test_layer_or_head_out_of_range(model, unchanged, heads, mlps, message):
    with pytest.raises(InputError, match=message):
        cv.ablate(model, pairs(), heads=heads, mlps=mlps)


def test_prompt_longer_than_context(model, unchanged):
    long = " ".join(["t1"] * (model.cfg.n_ctx + 5))
    with pytest.raises(InputError, match="context"):
        cv.patch(model, pairs(clean=[long], corrupted=[long]), progress=False)
    with pytest.raises(InputError, match="context"):
        cv.attention(model, long)


def test_metric_returning_nan(model, unchanged):
    def broken(logits: torch.Tensor) -> torch.Tensor:
        return torch.full((logits.shape[0],), float("nan"))

    with pytest.raises(MetricError, match="non-finite value \\(nan\\)"):
        cv.patch(model, pairs(), metric=broken, progress=False)


def test_metric_raising_midway_leaves_no_hooks(model, unchanged):
    """An error inside a hooked pass (here, the third metric call) still removes every hook."""
    calls = []

    def flaky(logits: torch.Tensor) -> torch.Tensor:
        calls.append(1)
        if len(calls) == 3:
            raise RuntimeError("boom")
        return logits[:, 0]

    with pytest.raises(RuntimeError, match="boom"):
        cv.patch(model, pairs(), over="heads", metric=flaky, progress=False)


def test_interrupt_inside_a_hook_leaves_no_hooks(model, unchanged):
    """Ctrl-C / a kernel interrupt arrives as KeyboardInterrupt, often inside a hook."""
    from circuitviz.engine import _hooks

    def interrupt(x, hook):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _hooks.run(model, model.to_tokens(PROBE), [("blocks.1.attn.hook_z", interrupt)])


def test_not_prompt_pairs(model, unchanged):
    with pytest.raises(InputError, match="PromptPairs"):
        cv.patch(model, {"clean": ["t1"]}, progress=False)


# ------------------------------------------------------------------------ path patching


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (dict(senders=["L1H0"], receivers=["L1H2"]), "runs after receiver layer"),
        (dict(senders=["MLP1"], receivers=["L1H2"]), "runs after receiver layer"),
        (dict(receivers=["L1H2"], receiver_input="mlp"), "Unknown receiver_input"),
        (dict(receivers=["L1H2"], receiver_input="resid"), "receivers='logits'"),
        (dict(receivers="logits", receiver_input="q"), "receivers='logits'"),
        (dict(receivers=["L2H0"]), "layer 2 is out of range"),
        (dict(receivers=["L1H9"]), "head 9 is out of range"),
        (dict(senders=["MLP7"], receivers="logits"), "layer 7 is out of range"),
        (dict(senders=["attn0"], receivers="logits"), "is not a head or an MLP"),
        (dict(senders=[(0, 1, 2)], receivers="logits"), "is not a head"),
        (dict(receivers=[]), "receivers is empty"),
        (dict(receivers=["L1H0"], direction="sideways"), "Unknown direction"),
        (dict(receivers=["L1H0"], metric="nope"), "Unknown metric"),
    ],
)
def test_path_patch_bad_input(model, unchanged, options, message):
    with pytest.raises(InputError, match=message):
        cv.path_patch(model, pairs(), progress=False, **options)


def test_path_patch_missing_receiver_hook(model, unchanged, monkeypatch):
    """A receiver input the model does not expose is refused before anything runs."""
    full = type(model).hook_dict.fget
    monkeypatch.setattr(
        type(model),
        "hook_dict",
        property(lambda self: {k: v for k, v in full(self).items() if not k.endswith("hook_k")}),
    )
    with pytest.raises(InputError, match=r"exposes no 'blocks\.1\.attn\.hook_k' hook"):
        cv.path_patch(model, pairs(), receivers=["L1H0"], receiver_input="k", progress=False)
