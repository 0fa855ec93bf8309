"""Feature statistics and the task builders on nnsight, locally and through the fake NDIF:
the same top snippets, histogram counts, promoted tokens and labels as the bridge, and the
same prompt pairs.

Reference: circuitviz's bridge implementation of ``feature_stats`` (checked on its own terms
against TransformerLens's activation cache in ``test_feature_explorer.py``) and the task
builders on the ``TransformerBridge`` with the same weights. Tolerance 1e-4 in float32;
snippets (text, position), histogram counts, labels and pairs must be identical.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks
from circuitviz.engine._pairs import tokenize
from circuitviz.engine.features import SAE, SAESet, feature_stats
from circuitviz.engine.features._corpus import reference_corpus
from tests._tiny_sae import tiny_saes, tiny_site_saes
from tests.test_backends_feature_sites import SETS as SITE_SETS

pytest.importorskip("nnsight")

TOL = 1e-4
#: Texts of varied lengths (2 … 24 words), so batches are padded; 37 texts, 8 batches of 5.
TEXTS = [
    " ".join(f"t{(7 * i + 3 * j + i * j) % 120}" for j in range(2 + i % 23)) for i in range(37)
]
N_BATCHES = 8


def with_resid_pre(saes: SAESet) -> SAESet:
    """The tiny SAEs plus one on ``blocks.1.hook_resid_pre`` (a decoder layer's input)."""
    s = saes["blocks.0.hook_resid_post"]
    pre = SAE("blocks.1.hook_resid_pre", s.W_enc, s.b_enc, s.W_dec, s.b_dec, k=s.k)
    return SAESet([*saes.values(), pre])


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def both(request):
    """A tiny bridge, the nnsight model over the same weights, and tiny TopK SAEs on
    ``blocks.{0,1}.hook_resid_post`` and ``blocks.1.hook_resid_pre``."""
    bridge = cv.tiny_model(request.param)
    return bridge, cv.load_model(bridge, backend="nnsight"), with_resid_pre(tiny_saes(bridge))


def same_stats(got: dict, ref: dict) -> None:
    assert list(got) == list(ref)
    for hook in ref:
        g, r = got[hook], ref[hook]
        assert g.n_tokens == r.n_tokens and g.d_sae == r.d_sae
        assert float(np.abs(g.top_values - r.top_values).max()) <= TOL
        assert np.array_equal(g.top_doc, r.top_doc) and np.array_equal(g.top_pos, r.top_pos)
        assert np.array_equal(g.hist_counts, r.hist_counts)
        assert np.array_equal(g.n_active, r.n_active)
        assert np.array_equal(g.promoted, r.promoted)
        assert g.labels == r.labels
        assert np.array_equal(g.corpus.tokens, r.corpus.tokens)
        assert np.array_equal(g.corpus.offsets, r.corpus.offsets)


def logits_of(nn, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return nn.lm._module(tokens).logits


@pytest.mark.parametrize("prepend_bos", [None, False], ids=["bos", "no-bos"])
def test_feature_stats_equal_the_bridge(both, prepend_bos):
    bridge, nn, saes = both
    options = {"n_top": 4, "batch_size": 5, "prepend_bos": prepend_bos, "progress": False}
    ref = feature_stats(bridge, saes, TEXTS, **options)
    got = feature_stats(nn, saes, TEXTS, **options)
    same_stats(got, ref)
    # not vacuous: latents fire, on many texts, with spread-out values
    r = ref["blocks.1.hook_resid_post"]
    assert (r.n_active > 0).sum() > 10 and len(set(r.top_doc[r.top_doc >= 0].tolist())) > 10
    assert (r.hist_counts.sum(1) == r.n_active).all() and (r.hist_counts > 0).sum(1).max() > 3
    assert r.n_tokens == sum(len(t.split()) for t in TEXTS)  # the BOS is never counted
    assert not nn.has_hooks() and not has_hooks(bridge)


@pytest.mark.parametrize("name", sorted(SITE_SETS))
def test_feature_stats_at_every_site_kind_equal_the_bridge(both, name):
    """SAEs on resid_pre/mid/post, attn_out, mlp_out and transcoders (read at their MLP's
    input side): nnsight reads each where the SAE reads, as the bridge's hooks do."""
    bridge, nn, _ = both
    saes = tiny_site_saes(bridge, *SITE_SETS[name])
    options = {"n_top": 4, "batch_size": 5, "progress": False}
    ref = feature_stats(bridge, saes, TEXTS, **options)
    same_stats(feature_stats(nn, saes, TEXTS, **options), ref)
    assert all((r.n_active > 0).sum() > 3 for r in ref.values())  # every site's latents fire
    assert not nn.has_hooks() and not has_hooks(bridge)


def test_nnsight_model_objects_and_small_requests_give_the_same_stats(both):
    """nnsight's own model object is wrapped; a request budget of one batch changes how
    many requests run, not what they compute."""
    bridge, nn, saes = both
    ref = feature_stats(bridge, saes, TEXTS, batch_size=5, progress=False)
    same_stats(feature_stats(nn.lm, saes, TEXTS, batch_size=5, progress=False), ref)
    small = feature_stats(nn, saes, TEXTS, batch_size=5, max_request_bytes=1, progress=False)
    same_stats(small, ref)


def test_the_forward_pass_stops_after_the_last_sae_hook(both):
    bridge, nn, saes = both
    early = SAESet([saes["blocks.0.hook_resid_post"]])
    blocks = nn.lm._module.model.layers if nn.arch == "llama" else nn.lm._module.transformer.h
    calls = {"first": 0, "last": 0}

    def counter(name):
        return lambda *_: calls.__setitem__(name, calls[name] + 1)

    # pre-hooks: a block's own forward hook would run after nnsight read (and stopped) there
    handles = [
        blocks[0].register_forward_pre_hook(counter("first")),
        blocks[-1].register_forward_pre_hook(counter("last")),
    ]
    try:
        got = feature_stats(nn, early, TEXTS, batch_size=5, progress=False)
    finally:
        for handle in handles:
            handle.remove()
    assert calls == {"first": N_BATCHES, "last": 0}
    same_stats(got, feature_stats(bridge, early, TEXTS, batch_size=5, progress=False))
    assert not nn.has_hooks()


def test_feature_view_computes_stats_on_nnsight(both):
    bridge, nn, saes = both
    views = [cv.FeatureView(m, TEXTS[5], saes=saes) for m in (bridge, nn)]
    hook = "blocks.1.hook_resid_post"
    for view in views:
        assert not view.card and not any(s["stats"] for s in view.sites)
        view.compute_stats(TEXTS, batch_size=5, progress=False)
    busiest = int(views[0].stats[hook].n_active.argmax())
    for view in views:
        view.show_feature(f"{hook}:{busiest}")
    ref, got = (v.card for v in views)
    assert got["stats"] and all(s["stats"] for s in views[1].sites)
    assert got["hist"] == ref["hist"] and got["label"] == ref["label"]
    assert [s["tokens"] for s in got["snippets"]] == [s["tokens"] for s in ref["snippets"]]
    assert [s["peak"] for s in got["snippets"]] == [s["peak"] for s in ref["snippets"]]
    pairs = zip(got["snippets"], ref["snippets"], strict=True)
    values = [(s["value"], t["value"]) for s, t in pairs]
    assert values and max(abs(a - b) for a, b in values) <= TOL
    assert views[1].chip_labels == views[0].chip_labels
    assert not nn.has_hooks()


def test_reference_corpus_accepts_an_nnsight_model(both):
    bridge, nn, _ = both
    assert reference_corpus(nn) == reference_corpus(bridge) == reference_corpus(nn.lm)
    with pytest.raises(cv.InputError, match="Expected a model"):
        reference_corpus("gpt2")


def test_bad_input_on_nnsight_is_refused_before_running(both):
    bridge, nn, saes = both
    s = saes["blocks.0.hook_resid_post"]
    tokens = bridge.to_tokens("t1 t2 t3 t4")
    before = logits_of(nn, tokens)
    hook = "blocks.0.ln1.hook_normalized"  # the norm's output: no site nnsight splices
    odd = SAESet([SAE(hook, s.W_enc, s.b_enc, s.W_dec, s.b_dec, k=s.k)])
    with pytest.raises(cv.InputError, match=r"hook_normalized.*nnsight.*load_model"):
        feature_stats(nn, odd, TEXTS, progress=False)
    narrow = SAE("blocks.0.hook_resid_post", s.W_enc[:-1], s.b_enc, s.W_dec[:, :-1], s.b_dec[:-1])
    with pytest.raises(cv.InputError, match="wide"):
        feature_stats(nn, narrow, TEXTS, progress=False)
    with pytest.raises(cv.InputError, match="max_request_bytes"):
        feature_stats(nn, saes, TEXTS, max_request_bytes=0)
    with pytest.raises(cv.InputError, match=r"texts\[1\]"):
        feature_stats(nn, saes, ["t1 t2", 3])
    assert not nn.has_hooks() and torch.equal(logits_of(nn, tokens), before)


# ----------------------------------------------------------------------------- tasks


def builders(model):
    """Each builder's pairs (or its error's message) for ``model``."""
    out = {}
    calls = {
        "induction": lambda: cv.tasks.induction(model, n=4, seq_len=5, seed=3),
        "induction-no-bos": lambda: cv.tasks.induction(model, n=2, prepend_bos=False),
        "factual": lambda: cv.tasks.factual(model, [("t1 t2 t3", " t4"), ("t5 t6 t7", " t8")]),
        "factual-bad": lambda: cv.tasks.factual(model, [("t1 t2", " t4"), ("t5 t6 t7", " t8")]),
        "ioi": lambda: cv.tasks.ioi(model, n=2),  # the tiny vocabulary has no names
        "n": lambda: cv.tasks.induction(model, n=0),
    }
    for name, call in calls.items():
        try:
            out[name] = call()
        except cv.InputError as err:
            out[name] = f"InputError: {err}"
    return out


def test_tasks_give_the_same_pairs_on_both_backends(both):
    bridge, nn, _ = both
    ref = builders(bridge)
    assert builders(nn) == ref and builders(nn.lm) == ref
    assert len(ref["induction"].clean) == 4 and "is the only one of 3 tokens" in ref["factual-bad"]
    assert "single-token names" in ref["ioi"]
    # ... and the same tokens, so every analysis reads the same batch
    for name in ("induction", "factual"):
        a = ref[name].tokenize(bridge)
        with cv.engine.backends.ported():
            b = ref[name].tokenize(nn)
        assert torch.equal(a.clean, b.clean) and torch.equal(a.corrupted, b.corrupted)
        assert torch.equal(a.answers, b.answers) and a.str_tokens == b.str_tokens
    assert not nn.has_hooks()


def test_factual_mixes_lengths_pairing_prompts_of_one_length(both):
    """Each prompt is corrupted by the next prompt of its token length; the pairs are
    left-padded like any mixed-length batch, and an analysis gives the bridge's numbers."""
    bridge, nn, _ = both
    facts = [("t1 t2", " t3"), ("t4 t5 t6", " t7"), ("t8 t9", " t10"), ("t11 t12 t13", " t14")]
    facts += [("t15 t16", " t17")]
    pairs = cv.tasks.factual(bridge, facts)
    assert pairs == cv.tasks.factual(nn, facts)
    assert pairs.corrupted == ("t8 t9", "t11 t12 t13", "t15 t16", "t4 t5 t6", "t1 t2")
    assert pairs.wrong_answers == (" t10", " t14", " t17", " t7", " t3")
    tokens = tokenize(bridge, pairs, pad=True)
    assert tokens.attention_mask is not None and tokens.clean.shape == (5, 4)
    assert tokens.attention_mask.sum(1).tolist() == [3, 4, 3, 4, 3]
    ref = cv.patch(bridge, pairs, over="resid_pre", progress=False)
    got = cv.patch(nn, pairs, over="resid_pre", progress=False)
    assert float((torch.as_tensor(got.values) - torch.as_tensor(ref.values)).abs().max()) <= TOL
    # each length group alone (same lengths: the old rotation) is unchanged
    assert cv.tasks.factual(bridge, facts[::2]).corrupted == ("t8 t9", "t15 t16", "t1 t2")


def test_factual_names_a_prompt_without_a_partner(both):
    bridge, nn, _ = both
    for model in (bridge, nn):
        with pytest.raises(cv.InputError, match=r"prompt 1 \('t4 t5 t6'\) is the only one of 4"):
            cv.tasks.factual(model, [("t1 t2", " t3"), ("t4 t5 t6", " t7"), ("t8 t9", " t10")])
        with pytest.raises(cv.InputError, match=r"prompt 0 .* prompt 2 .* both answer ' t3'"):
            cv.tasks.factual(
                model,
                [("t1 t2", " t3"), ("t4 t5 t6", " t7"), ("t8 t9", " t3"), ("t9 t8 t7", " t6")],
            )


# ----------------------------------------------------------------------------- remote


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def remote(request):
    from tests.test_remote import Setup

    setup = Setup(request.param)
    return setup, with_resid_pre(tiny_saes(setup.bridge))


def test_remote_stats_are_few_requests_of_activations_not_latents(remote):
    """One request holds every batch when they fit ``max_request_bytes`` (one more for every
    SAE's promoted tokens); what comes back is each hook's real tokens, ``[n, d_model]``."""
    setup, saes = remote
    client = setup.make_client()
    ref = feature_stats(setup.bridge, saes, TEXTS, batch_size=5, progress=False)
    sent = len(setup.fake.requests)
    got = feature_stats(client, saes, TEXTS, batch_size=5, progress=False)
    same_stats(got, ref)
    assert len(setup.fake.requests) == sent + 2
    results = setup.fake.results[-2]["results"]
    assert len(results) == N_BATCHES
    d_model = setup.bridge.cfg.d_model
    sites = {("resid_post", 0), ("resid_post", 1), ("resid_pre", 1)}
    n_tokens = 0
    for result in results:
        assert set(result["out"]) == sites and not result["back"]
        shapes = {tuple(v.shape) for v in result["out"].values()}
        assert len(shapes) == 1 and shapes.pop()[1] == d_model  # no [pos, d_sae] map
        n_tokens += result["out"][("resid_pre", 1)].shape[0]
    assert n_tokens == ref["blocks.1.hook_resid_pre"].n_tokens  # no BOS, no padding
    promoted = setup.fake.results[-1]["results"]
    assert len(promoted) == len(saes)  # one run per SAE: 64 latents each
    assert {tuple(r["out"]["up_i"].shape) for r in promoted} == {(64, 5)}


def test_remote_stats_split_into_requests_by_size(remote):
    setup, saes = remote
    client = setup.make_client()
    ref = feature_stats(setup.bridge, saes, TEXTS, batch_size=5, progress=False)
    sent = len(setup.fake.requests)
    got = feature_stats(client, saes, TEXTS, batch_size=5, max_request_bytes=1, progress=False)
    same_stats(got, ref)
    # at most one batch (or one chunk of decoder rows) per request
    assert len(setup.fake.requests) == sent + N_BATCHES + len(saes)
    assert not setup.server.has_hooks()


def test_a_failing_stats_job_names_the_budget_and_leaves_the_model_untouched(remote):
    from circuitviz.engine.backends import RemoteJobError
    from tests._fake_ndif import FakeNDIF

    setup, saes = remote
    fake = FakeNDIF({setup.repo: setup.server.lm}, fail="CUDA out of memory")
    client = setup.make_client(transport=fake)
    with pytest.raises(RemoteJobError, match=r"out of memory.*max_request_bytes"):
        feature_stats(client, saes, TEXTS, progress=False)
    assert client.job_state == "error" and not setup.server.has_hooks()


def test_an_error_inside_the_trace_leaves_the_model_untouched(both, monkeypatch):
    from circuitviz.engine.backends import _stats_program

    bridge, nn, saes = both
    tokens = bridge.to_tokens("t1 t2 t3 t4")
    before = logits_of(nn, tokens)

    def broken(lm, arch, run):
        raise RuntimeError("broken reader")

    monkeypatch.setattr(_stats_program, "read", broken)
    with pytest.raises(Exception, match="broken reader"):
        feature_stats(nn, saes, TEXTS, progress=False)
    monkeypatch.undo()
    assert not nn.has_hooks() and torch.equal(logits_of(nn, tokens), before)
    same_stats(
        feature_stats(nn, saes, TEXTS[:6], progress=False),
        feature_stats(bridge, saes, TEXTS[:6], progress=False),
    )


def test_remote_tasks_send_nothing(remote):
    """The builders read the tokenizer: a remote model builds the bridge's pairs offline."""
    setup, _ = remote
    client = setup.make_client()
    sent = len(setup.fake.requests)
    assert builders(client) == builders(setup.bridge)
    assert len(setup.fake.requests) == sent


# ----------------------------------------------------------------------------- demo


@pytest.mark.slow
def test_demo_stats_and_tasks_on_nnsight_equal_the_bridge(demo_model):
    """The demo model (SmolLM2-135M, 30 layers, GQA) with its four shipped 4096-latent SAEs
    over 24 reference texts; IOI, induction and factual pairs."""
    nn = cv.load_model(demo_model, backend="nnsight")
    saes = cv.load_saes("demo")
    texts = reference_corpus(nn)[:24]
    options = {"max_len": 64, "batch_size": 8, "progress": False}
    ref = feature_stats(demo_model, saes, texts, **options)
    got = feature_stats(nn, saes, texts, **options)
    same_stats(got, ref)
    r = ref["blocks.11.hook_resid_post"]
    assert (r.n_active > 0).sum() > 1000
    for build in (
        lambda m: cv.tasks.ioi(m, n=8, seed=1),
        lambda m: cv.tasks.induction(m, n=4),
        lambda m: cv.tasks.factual(
            m,
            [
                ("The Eiffel Tower is in the city of", " Paris"),
                ("The Colosseum is in the city of", " Rome"),
            ],
        ),
    ):
        assert build(nn) == build(demo_model)
    assert not nn.has_hooks() and not has_hooks(demo_model)
