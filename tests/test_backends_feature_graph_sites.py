"""Feature graphs on nnsight with SAEs at every site kind — resid_pre, attn_out, resid_mid,
mlp_out, resid_post and transcoders reading the MLP's input after ln2 or before it — and
their faithfulness: the bridge's nodes, edges and metric values, locally and through the
fake NDIF.

Sites: ``SETS`` A and B of ``test_backends_feature_sites`` (A: L0 resid_pre, attn_out,
resid_mid, a transcoder on MLP0 after ln2, L1 mlp_out, resid_post; B: L0 mlp_out,
resid_post, L1 resid_pre, attn_out, resid_mid and a transcoder reading ln2's input).
Reference: ``cv.circuit`` / ``FeatureGraph.faithfulness`` on the TransformerLens bridge with
the same weights. Tolerance 1e-4 in float32.
"""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
from circuitviz.engine._pairs import tokenize
from circuitviz.engine.graph._feature_sites import SITE_CODES
from tests._tiny_sae import feature_pairs, tiny_site_saes
from tests.test_backends_feature_graph import assert_same_faithfulness, assert_same_graph
from tests.test_backends_feature_sites import SETS

pytest.importorskip("nnsight")


@pytest.fixture(scope="module")
def pairs():
    return feature_pairs()


@pytest.fixture(scope="module", params=sorted(SETS))
def sites(request, both):
    bridge, nn = both
    hooks, transcoders = SETS[request.param]
    return bridge, nn, tiny_site_saes(bridge, hooks, transcoders)


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_feature_graph_at_every_site_equals_the_bridge(sites, pairs, method):
    bridge, nn, saes = sites
    steps = 3 if method == "eap-ig" else None
    ref = cv.circuit(bridge, pairs, saes=saes, method=method, steps=steps, progress=False)
    got = cv.circuit(nn, pairs, saes=saes, method=method, steps=steps, progress=False)
    # every site kind (both sets have all six) has nodes in the graph
    assert set(ref.site[ref.site >= 0].tolist()) == set(range(len(SITE_CODES)))
    assert_same_graph(got, ref)
    assert not nn.has_hooks() and all(p.grad is None for p in nn.lm._module.parameters())


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_faithfulness_at_every_site_equals_the_bridge(sites, pairs, ablation):
    """The bridge's graph, pruned, on each backend: errors kept, ablated and as the graph has
    them, the complement, and an error node of each site kind ablated by name."""
    bridge, nn, saes = sites
    small = cv.circuit(bridge, pairs, saes=saes, progress=False).prune(top_edges=30)
    errors = sorted({n.id.split(":")[0] for n in small.nodes if n.type == "error"})
    cases = [
        {},
        {"errors": "ablated"},
        {"errors": "graph"},
        {"complement": True},
        {"ablated": errors},
    ]
    values = set()
    for options in cases:
        ref = small.faithfulness(bridge, pairs, ablation=ablation, **options)
        got = small.faithfulness(nn, pairs, ablation=ablation, **options)
        assert_same_faithfulness(got, ref)
        values.add(round(ref.metric, 6))
    assert len(values) >= 3  # the cases differ
    assert not nn.has_hooks()


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def remote(request):
    """The fake NDIF (its client named as the bridge) with the SAEs of set A."""
    from tests.test_remote import Setup

    setup = Setup(request.param)
    setup.client = setup.make_client(model_name=setup.bridge.cfg.model_name)
    hooks, transcoders = SETS["A"]
    return setup, tiny_site_saes(setup.bridge, hooks, transcoders)


def test_remote_feature_graph_at_every_site_is_one_job_and_equals_the_bridge(remote, pairs):
    setup, saes = remote
    options = {"method": "eap-ig", "steps": 2, "progress": False}
    ref = cv.circuit(setup.bridge, pairs, saes=saes, **options)
    sent = len(setup.fake.requests)
    got = cv.circuit(setup.client, pairs, saes=saes, **options)
    assert len(setup.fake.requests) == sent + 1
    assert_same_graph(got, ref)
    small = ref.prune(top_edges=30)
    sent = len(setup.fake.requests)
    got_f = small.faithfulness(setup.client, pairs, ablation="mean", errors="ablated")
    assert len(setup.fake.requests) == sent + 1
    assert_same_faithfulness(
        got_f, small.faithfulness(setup.bridge, pairs, ablation="mean", errors="ablated")
    )
    assert setup.states[-1] == "done" and not setup.server.has_hooks()


def test_a_failing_feature_graph_request_leaves_the_model_untouched(sites, pairs, monkeypatch):
    """A failure inside the clean gradient pass (its backward, after every splice wrote,
    resid_mid's in place) propagates and leaves no hook and no gradient; the next forward
    pass gives the same logits and the graph then builds as the bridge's."""
    from circuitviz.engine.backends import _feature_graph_program

    bridge, nn, saes = sites
    tokens = nn.to_tokens("t1 t2 t3 t4 t1 t2")
    with torch.no_grad():
        before = nn.lm._module(tokens).logits

    def failing(*args):
        raise RuntimeError("boom in the receivers")

    monkeypatch.setattr(_feature_graph_program._program, "eap_receivers", failing)
    with pytest.raises(RuntimeError, match="boom"):
        cv.circuit(nn, pairs, saes=saes, progress=False)
    monkeypatch.undo()
    assert not nn.has_hooks() and all(p.grad is None for p in nn.lm._module.parameters())
    with torch.no_grad():
        assert torch.equal(nn.lm._module(tokens).logits, before)
    ref = cv.circuit(bridge, pairs, saes=saes, progress=False)
    assert_same_graph(cv.circuit(nn, pairs, saes=saes, progress=False), ref)


# ----------------------------------------------------------------------------- mixed lengths


@pytest.fixture(scope="module")
def mixed():
    from tests.test_feature_mixed_lengths import mixed_feature_pairs

    return mixed_feature_pairs()


@pytest.mark.parametrize("method", ["eap", "eap-ig"])
def test_mixed_length_feature_graph_at_every_site_equals_the_bridge(sites, mixed, method):
    """Left-padded and masked, as the bridge (``test_feature_mixed_lengths``): padding holds
    no latent, error term or edge."""
    bridge, nn, saes = sites
    steps = 2 if method == "eap-ig" else None
    ref = cv.circuit(bridge, mixed, saes=saes, method=method, steps=steps, progress=False)
    got = cv.circuit(nn, mixed, saes=saes, method=method, steps=steps, progress=False)
    assert tokenize(bridge, mixed, pad=True).attention_mask is not None  # really padded
    assert_same_graph(got, ref)
    assert not nn.has_hooks()


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
def test_mixed_length_faithfulness_at_every_site_equals_the_bridge(sites, mixed, ablation):
    bridge, nn, saes = sites
    small = cv.circuit(bridge, mixed, saes=saes, progress=False).prune(top_edges=30)
    values = set()
    for options in ({}, {"errors": "ablated"}, {"complement": True}):
        ref = small.faithfulness(bridge, mixed, ablation=ablation, **options)
        got = small.faithfulness(nn, mixed, ablation=ablation, **options)
        assert_same_faithfulness(got, ref)
        values.add(round(ref.metric, 6))
    assert len(values) == 3
    assert not nn.has_hooks()


def test_remote_mixed_length_feature_graph_is_one_job_and_equals_the_bridge(remote, mixed):
    setup, saes = remote
    ref = cv.circuit(setup.bridge, mixed, saes=saes, progress=False)
    sent = len(setup.fake.requests)
    got = cv.circuit(setup.client, mixed, saes=saes, progress=False)
    assert len(setup.fake.requests) == sent + 1
    assert_same_graph(got, ref)
    small = ref.prune(top_edges=30)
    sent = len(setup.fake.requests)
    got_f = small.faithfulness(setup.client, mixed, ablation="mean")
    assert len(setup.fake.requests) == sent + 1
    assert_same_faithfulness(got_f, small.faithfulness(setup.bridge, mixed, ablation="mean"))
    assert not setup.server.has_hooks()


# ----------------------------------------------------------------------------- demo


@pytest.mark.demo
@pytest.mark.slow
def test_demo_mixed_length_feature_graph_at_other_sites_on_nnsight_equals_the_bridge(demo_model):
    """SmolLM2-135M (30 layers, GQA) on IOI pairs of two templates (15 and 11 tokens): its
    shipped resid_post SAEs plus — one shipped SAE's weights placed at other sites, a
    stand-in since the demo ships resid_post SAEs only — an attn_out SAE and a transcoder on
    MLP 5 reading after the norm. The EAP-IG feature graph (one request) and a pruned
    circuit's faithfulness equal the bridge's."""
    from circuitviz.engine.features import SAE, SAESet

    nn = cv.load_model(demo_model, backend="nnsight")
    shipped = cv.load_saes("demo")
    s = shipped[shipped.hooks[0]]
    weights = (s.W_enc, s.b_enc, s.W_dec, s.b_dec)
    kind = {"activation": s.activation, "k": s.k, "threshold": s.threshold}
    kind["apply_b_dec_to_input"] = s.apply_b_dec_to_input
    saes = SAESet(
        [
            *(shipped[h] for h in shipped.hooks),
            SAE("blocks.4.hook_attn_out", *weights, **kind),
            SAE("blocks.5.mlp.hook_in", *weights, **kind, output_hook="blocks.5.hook_mlp_out"),
        ]
    )
    pairs = cv.PromptPairs(
        [
            "When John and Mary went to the store, John gave a drink to",
            "Tom and Anna met. Tom gave a ball to",
        ],
        [
            "When John and Mary went to the store, Mary gave a drink to",
            "Tom and Anna met. Anna gave a ball to",
        ],
        [" Mary", " Anna"],
        [" John", " Tom"],
    )
    options = {"method": "eap-ig", "steps": 2, "progress": False}
    ref = cv.circuit(demo_model, pairs, saes=saes, **options)
    got = cv.circuit(nn, pairs, saes=saes, **options)
    assert_same_graph(got, ref)
    small = ref.prune(top_nodes=40)
    for errors in ("kept", "ablated"):
        assert_same_faithfulness(
            small.faithfulness(nn, pairs, errors=errors),
            small.faithfulness(demo_model, pairs, errors=errors),
        )
    assert not nn.has_hooks()
