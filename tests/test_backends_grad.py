"""Gradients on nnsight: ``attribution_patch`` through the backend seam, locally and on the
fake NDIF, against the TransformerLens bridge's own ``attribution_patch`` on the same weights
(1e-4 in float32; for metrics whose values are large — ``normalized_logit_diff`` when the
clean − corrupted gap is small — 1e-4 of the map's scale, as ``tests/test_backends.py`` does).
"""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
from tests.test_backends import OVERS, TOL, close, logits_of
from tests.test_remote import Setup

pytest.importorskip("nnsight")


@pytest.mark.parametrize("over", OVERS)
def test_attribution_equals_the_bridge_on_every_target(both, pairs, over):
    bridge, nn = both
    ref = cv.attribution_patch(bridge, pairs, over=over)
    got = cv.attribution_patch(nn, pairs, over=over)
    assert got.method == "attribution" and got.axes == ref.axes and got.labels == ref.labels
    assert close(got.values, ref.values) <= TOL
    assert abs(got.clean - ref.clean) <= TOL and abs(got.corrupted - ref.corrupted) <= TOL
    assert float((ref.values - ref.baseline).abs().max()) > 1e-6  # a map, not a flat baseline
    assert got.extra["requests"] == 1 and got.extra["backend"] == "nnsight"
    assert got.extra["forward_passes"] == 2  # the metric's gradient taken in the trace


@pytest.mark.parametrize("metric", ["logit_diff", "normalized_logit_diff", "answer_prob", "kl"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_attribution_equals_the_bridge_for_every_metric_and_direction(
    both, pairs, metric, direction
):
    bridge, nn = both
    ref = cv.attribution_patch(bridge, pairs, over="heads", metric=metric, direction=direction)
    got = cv.attribution_patch(nn, pairs, over="heads", metric=metric, direction=direction)
    assert close(got.values, ref.values) <= TOL * max(1.0, float(ref.values.abs().max()))


def test_attribution_leaves_the_model_as_it_was(both, pairs):
    """No hook left, no parameter gradient written, identical logits afterwards."""
    bridge, nn = both
    tokens = bridge.to_tokens("t1 t2 t3 t4")
    before = logits_of(nn, tokens)
    cv.attribution_patch(nn, pairs, over="heads_by_pos")
    assert not nn.has_hooks()
    assert all(p.grad is None for p in nn.lm._module.parameters())
    assert torch.equal(logits_of(nn, tokens), before)


def test_bad_attribution_requests_are_refused_and_change_nothing(both, pairs):
    bridge, nn = both
    tokens = bridge.to_tokens("t1 t2 t3 t4")
    before = logits_of(nn, tokens)
    with pytest.raises(cv.InputError, match=r"pattern.*bridge"):
        cv.attribution_patch(nn, pairs, over="pattern")
    with pytest.raises(cv.InputError, match="Unknown over"):
        cv.attribution_patch(nn, pairs, over="nope")
    with pytest.raises(cv.InputError, match="direction"):
        cv.attribution_patch(nn, pairs, direction="sideways")
    with pytest.raises(cv.InputError, match="metric"):
        cv.attribution_patch(nn, pairs, metric="accuracy")
    assert not nn.has_hooks()
    assert torch.equal(logits_of(nn, tokens), before)


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def remote(request):
    return Setup(request.param)


def answer_margin(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 3] - logits[:, 7]  # a callable metric: the user's code, run here


@pytest.mark.parametrize("over", ["heads", "k", "resid_pre"])
def test_remote_attribution_is_one_job_and_equals_the_bridge(remote, pairs, over):
    """On NDIF the metric's gradient and the map's are taken on the server, in one job;
    only the readouts and the map's cells come back."""
    sent = len(remote.fake.requests)
    ref = cv.attribution_patch(remote.bridge, pairs, over=over)
    got = cv.attribution_patch(remote.client, pairs, over=over)
    assert close(got.values, ref.values) <= TOL
    assert len(remote.fake.requests) == sent + 1 and got.extra["requests"] == 1
    assert remote.fake.result_bytes[-1] < 4096
    assert remote.states[-1] == "done"
    assert not remote.server.has_hooks()
    assert all(p.grad is None for p in remote.server.lm._module.parameters())


@pytest.mark.parametrize("metric", ["normalized_logit_diff", "kl"])
def test_remote_attribution_takes_a_built_in_metrics_gradient_on_the_server(remote, pairs, metric):
    for direction in ("denoise", "noise"):
        sent = len(remote.fake.requests)
        options = {"over": "heads", "metric": metric, "direction": direction}
        ref = cv.attribution_patch(remote.bridge, pairs, **options)
        got = cv.attribution_patch(remote.client, pairs, **options)
        assert close(got.values, ref.values) <= TOL * max(1.0, float(ref.values.abs().max()))
        assert len(remote.fake.requests) == sent + 1


def test_remote_attribution_with_a_callable_metric_is_two_jobs(remote, pairs):
    """A callable metric is code the server does not have: its gradient is taken here,
    between a readout job and the gradient job."""
    sent = len(remote.fake.requests)
    ref = cv.attribution_patch(remote.bridge, pairs, over="heads", metric=answer_margin)
    got = cv.attribution_patch(remote.client, pairs, over="heads", metric=answer_margin)
    assert close(got.values, ref.values) <= TOL
    assert len(remote.fake.requests) == sent + 2 and got.extra["requests"] == 2


# ----------------------------------------------------------------------------- EAP graph


@pytest.mark.parametrize("per_position", [False, True])
@pytest.mark.parametrize("metric", ["logit_diff", "answer_prob", "normalized_logit_diff"])
def test_eap_graph_equals_the_bridge(both, pairs, per_position, metric):
    """Every edge score (GQA: one k and one v receiver per KV head) within 1e-4."""
    bridge, nn = both
    ref = cv.circuit(bridge, pairs, per_position=per_position, metric=metric, progress=False)
    got = cv.circuit(nn, pairs, per_position=per_position, metric=metric)
    assert got.scores.shape == ref.scores.shape
    assert close(got.scores, ref.scores) <= TOL * max(1.0, float(ref.scores.abs().max()))
    assert float(ref.scores.abs().max()) > 1e-6  # scores, not an empty graph

    def ends(graph):
        return {(e.source, e.target, e.input) for e in graph.edges}

    assert ends(got) == ends(ref)
    assert abs(got.clean - ref.clean) <= TOL and abs(got.corrupted - ref.corrupted) <= TOL
    assert not nn.has_hooks() and all(p.grad is None for p in nn.lm._module.parameters())


def test_remote_eap_is_one_job_and_equals_the_bridge(remote, pairs):
    sent = len(remote.fake.requests)
    ref = cv.circuit(remote.bridge, pairs, progress=False)
    got = cv.circuit(remote.client, pairs)
    assert close(got.scores, ref.scores) <= TOL
    assert len(remote.fake.requests) == sent + 1
    assert remote.states[-1] == "done" and not remote.server.has_hooks()
    assert all(p.grad is None for p in remote.server.lm._module.parameters())


@pytest.mark.demo
@pytest.mark.slow
def test_demo_model_gradients_on_nnsight(demo_model):
    """SmolLM2-135M (30 layers, GQA 9 q / 3 kv heads) loaded from its own HF directory through
    nnsight (not from the bridge's weights): attribution per KV head and the EAP graph equal
    the bridge's."""
    nn = cv.load_model("demo", backend="nnsight", device="cpu")
    pairs = cv.PromptPairs(
        ["When John and Mary went to the store, John gave a drink to"],
        ["When John and Mary went to the store, Mary gave a drink to"],
        [" Mary"],
        [" John"],
    )
    ref = cv.attribution_patch(demo_model, pairs, over="k")
    got = cv.attribution_patch(nn, pairs, over="k")
    assert got.values.shape == (30, 3) and close(got.values, ref.values) <= TOL
    ref = cv.circuit(demo_model, pairs, progress=False)
    got = cv.circuit(nn, pairs)
    assert close(got.scores, ref.scores) <= TOL * max(1.0, float(ref.scores.abs().max()))
    assert not nn.has_hooks()
