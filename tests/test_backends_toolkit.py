"""The toolkit analyses on nnsight — the logit lens, direct logit attribution, path patching,
head roles, refusal directions and steering — give the TransformerLens bridge's numbers,
locally and through the fake NDIF, in the number of requests each promises.

Reference for every figure: circuitviz's bridge implementations (``cv.logit_lens``,
``cv.logit_attribution``, ``cv.path_patch``, ``cv.head_roles``, ``cv.refusal_direction``,
``cv.steer_refusal`` on a ``TransformerBridge``), which ``test_logit_lens.py``,
``test_logit_attribution.py``, ``test_path_patching.py``, ``test_roles.py`` and
``test_refusal.py`` check against TransformerLens and hand-written hooks. Same weights
(``load_model(bridge, backend="nnsight")``); tolerance 1e-4, float32.
"""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv

pytest.importorskip("nnsight")

from tests.test_remote import Setup

TOL = 1e-4
PROMPT = "t1 t2 t3 t4 t1 t2"
PATHS = [
    {"receivers": ["L1H0"]},
    {"receivers": ["L1H1", "L1H3"], "receiver_input": "k"},
    {"receivers": ["L1H0"], "receiver_input": "v"},
    {"receivers": "logits"},
    {"receivers": ["L1H2"], "direction": "noise", "metric": "normalized_logit_diff"},
    {"receivers": ["L1H2"], "metric": "kl"},
]
PATH_IDS = ["q", "k-two-heads", "v", "logits", "noise-normalized", "kl"]


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.float() - b.float()).abs().max())


def logits_of(nn, tokens: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return nn.lm._module(tokens).logits


def same_lens(got, ref) -> None:
    assert got.layers == ref.layers and got.tokens == ref.tokens
    assert torch.equal(got.top_ids, ref.top_ids) and got.top_tokens == ref.top_tokens
    assert close(got.top_probs, ref.top_probs) <= TOL
    if ref.answer_prob is not None:
        assert close(got.answer_prob, ref.answer_prob) <= TOL
        assert torch.equal(got.answer_rank, ref.answer_rank)


def same_dla(got, ref) -> None:
    assert got.axes == ref.axes and got.labels == ref.labels and got.target == ref.target
    assert close(got.values, ref.values) <= TOL
    assert abs(got.clean - ref.clean) <= TOL and abs(got.corrupted - ref.corrupted) <= TOL
    assert got.extra["final_norm"] == ref.extra["final_norm"]
    terms, ref_terms = got.extra["bias_terms"], ref.extra["bias_terms"]
    assert terms.keys() == ref_terms.keys()
    assert max(abs(terms[k] - ref_terms[k]) for k in terms) <= TOL


def same_path(got, ref) -> None:
    if isinstance(ref, float):
        assert isinstance(got, float) and abs(got - ref) <= TOL
        return
    scale = max(1.0, float(ref.values.abs().max()))
    assert got.axes == ref.axes and got.target == ref.target == "path_heads"
    assert close(got.values, ref.values) <= TOL * scale
    assert abs(got.clean - ref.clean) <= TOL * scale
    assert got.extra["no_path"] == ref.extra["no_path"]
    assert got.extra["receivers"] == ref.extra["receivers"]


# ----------------------------------------------------------------------------- local


@pytest.mark.parametrize("answer", [" t3", None])
def test_logit_lens_equals_bridge(both, answer):
    bridge, nn = both
    ref = cv.logit_lens(bridge, PROMPT, answer=answer, k=5)
    got = cv.logit_lens(nn, PROMPT, answer=answer, k=5)
    same_lens(got, ref)
    assert got.extra["backend"] == "nnsight" and got.extra["requests"] == 1
    assert not nn.has_hooks()


@pytest.mark.parametrize("by", ["heads", "layers", "heads_by_pos"])
def test_logit_attribution_equals_bridge(both, pairs, by):
    bridge, nn = both
    ref = cv.logit_attribution(bridge, pairs, by=by)
    got = cv.logit_attribution(nn, pairs, by=by)
    same_dla(got, ref)
    assert got.extra["requests"] == 1
    # The map and the bias terms add up to the clean logit difference on nnsight too.
    total = float(got.values.double().sum()) + sum(got.extra["bias_terms"].values())
    assert abs(total - got.clean) <= 1e-3 * (1 + abs(got.clean))


@pytest.mark.parametrize("options", PATHS, ids=PATH_IDS)
def test_path_patch_map_equals_bridge(both, pairs, options):
    bridge, nn = both
    ref = cv.path_patch(bridge, pairs, progress=False, **options)
    got = cv.path_patch(nn, pairs, progress=False, **options)
    same_path(got, ref)
    assert got.extra["requests"] == 1
    # The random tiny models' paths into a head move the metric by ~1e-5, under the 1e-4
    # bar; into the logits by ~4e-2: there the backends must agree to 0.1 % of the effect,
    # so a path that did nothing on one side would fail.
    unpatched = ref.corrupted if options.get("direction", "denoise") == "denoise" else ref.clean
    moved = float((ref.values - unpatched).abs().max())
    if options["receivers"] == "logits":
        assert moved > 1e-2 and close(got.values, ref.values) <= 1e-3 * moved


def test_path_patch_explicit_senders_equal_bridge(both, pairs):
    bridge, nn = both
    options = {"senders": ["L0H1", "MLP0", (0, 3)], "receivers": ["L1H0", "L1H2"]}
    ref = cv.path_patch(bridge, pairs, progress=False, **options)
    got = cv.path_patch(nn, pairs, progress=False, **options)
    same_path(got, ref)
    corrupted = cv.patch(bridge, pairs, over="mlp_out", progress=False).corrupted
    assert abs(got - ref) <= 0.01 * abs(ref - corrupted)  # to 1 % of what the path moved
    options = {"senders": ["L0H1", "MLP0"], "receivers": "logits"}
    ref = cv.path_patch(bridge, pairs, progress=False, **options)
    got = cv.path_patch(nn, pairs, progress=False, **options)
    assert abs(got - ref) <= 1e-3 * abs(ref - corrupted) and abs(ref - corrupted) > 1e-3


def test_path_patch_in_small_passes_equals_one_pass(both, pairs):
    _, nn = both
    whole = cv.path_patch(nn, pairs, receivers="logits", progress=False)
    split = cv.path_patch(nn, pairs, receivers="logits", max_rows=3, progress=False)
    assert split.extra["forward_passes"] > whole.extra["forward_passes"]
    assert close(split.values, whole.values) <= TOL


def test_bad_toolkit_input_on_nnsight_gets_the_bridges_errors(both, pairs):
    bridge, nn = both
    tokens = bridge.to_tokens(PROMPT)
    before = logits_of(nn, tokens)
    calls = [
        (lambda m: cv.logit_lens(m, "", k=3), "non-empty prompt"),
        (lambda m: cv.logit_lens(m, PROMPT, k=0), "k must be"),
        (lambda m: cv.logit_lens(m, PROMPT, answer=" t3 t4"), "not one"),
        (lambda m: cv.logit_attribution(m, pairs, by="neurons"), "Unknown by"),
        (lambda m: cv.logit_attribution(m, pairs, metric="kl"), "logit_diff"),
        (lambda m: cv.path_patch(m, pairs, receivers=["L0H0"], senders=["L1H0"]), "runs after"),
        (lambda m: cv.path_patch(m, pairs, receivers=["L9H0"]), "out of range"),
        (lambda m: cv.path_patch(m, pairs, receivers=["L1H0"], receiver_input="z"), "Unknown"),
        (lambda m: cv.path_patch(m, pairs, receivers=["L1H0"], direction="up"), "direction"),
    ]
    for call, message in calls:
        with pytest.raises(cv.InputError, match=message):
            call(bridge)
        with pytest.raises(cv.InputError, match=message):
            call(nn)
    assert not nn.has_hooks()
    assert torch.equal(logits_of(nn, tokens), before)


#: Low enough that the tiny models have name movers, so S-inhibition (path patching into
#: their queries) is scored too.
LOW = {"io_attention": 0.0, "copy": 0.0, "dla": 0.0}


def same_roles(got, ref) -> None:
    assert got.scores.keys() == ref.scores.keys() and got.notes == ref.notes
    for key, value in ref.scores.items():
        assert torch.equal(got.scores[key].isnan(), value.isnan()), key
        assert close(got.scores[key].nan_to_num(0), value.nan_to_num(0)) <= TOL, key
    assert got.roles == ref.roles and abs(got.clean - ref.clean) <= TOL


def test_head_roles_equal_bridge(both, pairs):
    bridge, nn = both
    ref = cv.head_roles(bridge, pairs, thresholds=LOW, progress=False)
    got = cv.head_roles(nn, pairs, thresholds=LOW, progress=False)
    same_roles(got, ref)
    assert not ref.scores["s_inhibition"].isnan().all()  # name movers found: path patched
    assert ref.heads("name_mover")
    assert not nn.has_hooks()


def test_head_roles_without_random_prompts_or_io_equal_bridge(both, pairs):
    bridge, nn = both
    options = {"n_random": 0, "progress": False}
    same_roles(cv.head_roles(nn, pairs, **options), cv.head_roles(bridge, pairs, **options))
    no_io = cv.PromptPairs(["t1 t2 t4 t5"], ["t5 t6 t7 t8"], [" t3"], [" t7"])
    got, ref = cv.head_roles(nn, no_io, **options), cv.head_roles(bridge, no_io, **options)
    same_roles(got, ref)
    assert got.scores["copy"].isnan().all() and "not scored" in got.notes[0]


HARMFUL = ["t1 t2 t3", "t4 t5", "t6 t7 t8 t9", "t1 t9", "t2 t4 t6"]
HARMLESS = ["t10 t11", "t12 t13 t14", "t15", "t16 t17 t18 t19", "t20 t21"]
STEER = ["t1 t2", "t30 t31 t32", "t5"]


def same_direction(got, ref) -> None:
    assert (got.layer, got.pos) == (ref.layer, ref.pos)
    assert close(got.all_diffs, ref.all_diffs) <= TOL
    assert close(got.direction, ref.direction) <= TOL
    assert max(abs(a - b) for a, b in zip(got.separation, ref.separation, strict=True)) <= TOL


@pytest.mark.parametrize("options", [{}, {"layer": 1, "pos": -2, "batch_size": 3}], ids=str)
def test_refusal_direction_equals_bridge(both, options):
    """Several left-padded, masked batches (prompts of 2–5 tokens), every layer."""
    bridge, nn = both
    ref = cv.refusal_direction(bridge, HARMFUL, HARMLESS, template="{instruction}", **options)
    got = cv.refusal_direction(nn, HARMFUL, HARMLESS, template="{instruction}", **options)
    same_direction(got, ref)
    assert not nn.has_hooks()


@pytest.fixture
def refusal_words(monkeypatch):
    """The tiny tokenizers have none of the refusal words: score tokens they have, so the
    step-0 refusal scores (log-odds from the logits) are compared too."""
    from circuitviz.engine import _refusal

    monkeypatch.setattr(_refusal, "REFUSAL_TOKENS", ("t3", "t7", "t47"))


@pytest.mark.parametrize(("mode", "coef"), [("ablate", 1.0), ("add", 8.0)])
def test_steering_equals_bridge(both, refusal_words, mode, coef):
    bridge, nn = both
    d = cv.refusal_direction(bridge, HARMFUL, HARMLESS, template="{instruction}")
    options = {"mode": mode, "coef": coef, "max_new_tokens": 5, "batch_size": 2}
    ref = cv.steer_refusal(bridge, STEER, d, **options)
    got = cv.steer_refusal(nn, STEER, d, **options)
    for side in ("before", "after"):
        a, b = getattr(got, side), getattr(ref, side)
        assert a.continuations == b.continuations and a.refused == b.refused
        assert close(torch.tensor(a.scores), torch.tensor(b.scores)) <= TOL
    # The intervention acted (the continuations or the scores moved), on both sides alike.
    moved = float((torch.tensor(ref.after.scores) - torch.tensor(ref.before.scores)).abs().max())
    assert ref.after.continuations != ref.before.continuations or moved > 1e-3
    assert not nn.has_hooks()


def test_views_over_nnsight_show_the_bridges_results(both, pairs):
    """The steering view regenerates through nnsight, and the attention view takes roles
    computed on nnsight: the same texts and badges as over the bridge."""
    from circuitviz.views import AttentionView, SteeringView

    bridge, nn = both
    d = cv.refusal_direction(nn, HARMFUL, HARMLESS, template="{instruction}")
    views = [SteeringView(m, d, "t1 t2", coef=0.0, coef_max=60.0, max_new_tokens=3) for m in both]
    for view in views:
        view.coef = 40.0  # what the page's slider sends
    assert views[0].error == views[1].error == ""
    assert views[0].after == views[1].after and views[0].before == views[1].before
    roles = cv.head_roles(nn, pairs, thresholds=LOW, progress=False)
    got = AttentionView(nn, PROMPT, roles=roles)
    ref = AttentionView(bridge, PROMPT, roles=cv.head_roles(bridge, pairs, thresholds=LOW))
    assert got.roles == ref.roles and got.roles
    assert not nn.has_hooks()


def test_analyses_that_read_patterns_say_so_under_sdpa(both, pairs):
    """Under sdpa the pattern is never materialised: DLA by position and head roles name
    the fix; the lens, DLA by head and path patching still give the bridge's numbers."""
    from circuitviz.engine.backends._nnsight import NNsightModel

    bridge, _ = both
    fresh = cv.load_model(bridge, backend="nnsight")
    fresh.lm._module.set_attn_implementation("sdpa")
    sdpa = NNsightModel(fresh.lm, model_name="sdpa")
    with pytest.raises(cv.InputError, match="eager"):
        cv.logit_attribution(sdpa, pairs, by="heads_by_pos")
    with pytest.raises(cv.InputError, match="eager"):
        cv.head_roles(sdpa, pairs, progress=False)
    assert not sdpa.has_hooks()
    same_dla(cv.logit_attribution(sdpa, pairs), cv.logit_attribution(bridge, pairs))
    same_lens(cv.logit_lens(sdpa, PROMPT, k=3), cv.logit_lens(bridge, PROMPT, k=3))
    options = {"receivers": "logits", "progress": False}
    same_path(cv.path_patch(sdpa, pairs, **options), cv.path_patch(bridge, pairs, **options))


def test_an_nnsight_model_object_runs_the_toolkit_as_it_is(both, pairs):
    """``cv.logit_attribution(nnsight_model, ...)`` on nnsight's own object (wrapped once)."""
    bridge, nn = both
    same_dla(cv.logit_attribution(nn.lm, pairs), cv.logit_attribution(bridge, pairs))
    options = {"receivers": "logits", "progress": False}
    same_path(cv.path_patch(nn.lm, pairs, **options), cv.path_patch(bridge, pairs, **options))


# ----------------------------------------------------------------------------- NDIF


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def remote(request):
    return Setup(request.param)


def test_remote_logit_lens_is_one_request_of_top_k_only(remote):
    sent = len(remote.fake.requests)
    ref = cv.logit_lens(remote.bridge, PROMPT, answer=" t3", k=4)
    got = cv.logit_lens(remote.client, PROMPT, answer=" t3", k=4)
    same_lens(got, ref)
    assert len(remote.fake.requests) == sent + 1
    (run,) = remote.fake.results[-1]["results"]
    n_rows, n_pos = remote.bridge.cfg.n_layers + 1, len(ref.tokens)
    assert set(run["out"]) == {"top_ids", "top_probs", "answer_prob", "answer_rank", "gap"}
    assert run["out"]["top_probs"].shape == (n_rows, n_pos, 4)  # never [rows, pos, vocab]
    assert remote.states[-1] == "done" and not remote.server.has_hooks()


def test_remote_logit_attribution_is_one_request(remote, pairs):
    sent = len(remote.fake.requests)
    for by in ("heads", "heads_by_pos"):
        same_dla(
            cv.logit_attribution(remote.client, pairs, by=by),
            cv.logit_attribution(remote.bridge, pairs, by=by),
        )
    assert len(remote.fake.requests) == sent + 2
    assert remote.fake.result_bytes[-1] < 4096  # the map and a few terms, no activations


@pytest.mark.parametrize("options", PATHS[:4], ids=PATH_IDS[:4])
def test_remote_path_patch_is_one_request(remote, pairs, options):
    sent = len(remote.fake.requests)
    ref = cv.path_patch(remote.bridge, pairs, progress=False, **options)
    got = cv.path_patch(remote.client, pairs, max_rows=3, progress=False, **options)
    same_path(got, ref)
    assert len(remote.fake.requests) == sent + 1
    for run in remote.fake.results[-1]["results"]:  # readouts only: 3 numbers per row
        assert set(run["out"]) == {"sel"} and run["out"]["sel"].shape[-1] == 3
        assert run["back"] == {}
    assert remote.fake.result_bytes[-1] < 8192
    assert not remote.server.has_hooks()


def test_remote_toolkit_code_travels_by_value(remote, pairs):
    cv.logit_lens(remote.client, PROMPT, k=2)
    from tests.test_remote import payload

    body = payload(remote.fake.requests[-1])
    assert b"def carry_out" in body and b"def direct_terms" in body


def test_remote_head_roles_are_two_requests(remote, pairs):
    """Patterns, copy scores and DLA in one job; path patching into the name movers (whose
    receivers the first job's scores decide) in a second."""
    sent = len(remote.fake.requests)
    ref = cv.head_roles(remote.bridge, pairs, thresholds=LOW, progress=False)
    got = cv.head_roles(remote.client, pairs, thresholds=LOW, progress=False)
    same_roles(got, ref)
    assert ref.heads("name_mover")  # so the second request ran
    assert len(remote.fake.requests) == sent + 2
    # The patterns stay on the server: role scores and final-position rows come back.
    assert all(
        k.startswith("score_") or k == "final" for k in remote.fake.results[-2]["results"][0]["out"]
    )
    assert remote.fake.result_bytes[-2] < 8192
    assert not remote.server.has_hooks()


def test_remote_refusal_is_one_request_per_direction_and_per_steering(remote, refusal_words):
    sent = len(remote.fake.requests)
    options = {"template": "{instruction}", "batch_size": 3}
    ref = cv.refusal_direction(remote.bridge, HARMFUL, HARMLESS, **options)
    got = cv.refusal_direction(remote.client, HARMFUL, HARMLESS, **options)
    same_direction(got, ref)
    assert len(remote.fake.requests) == sent + 1  # every batch in one job
    steer = {"mode": "add", "coef": 8.0, "max_new_tokens": 4, "batch_size": 2}
    want = cv.steer_refusal(remote.bridge, STEER, ref, **steer)
    have = cv.steer_refusal(remote.client, STEER, got, **steer)
    for side in ("before", "after"):
        a, b = getattr(have, side), getattr(want, side)
        assert a.continuations == b.continuations
        assert close(torch.tensor(a.scores), torch.tensor(b.scores)) <= TOL
    assert len(remote.fake.requests) == sent + 2  # before and after: one job together
    again = cv.steer_refusal(remote.client, STEER, got, before=have.before, **steer)
    assert again.after.continuations == want.after.continuations
    assert len(remote.fake.requests) == sent + 3  # before= given: the after side alone
    assert not remote.server.has_hooks()


# ----------------------------------------------------------------------------- demo


@pytest.mark.demo
@pytest.mark.slow
def test_demo_model_toolkit_on_nnsight(demo_model):
    """SmolLM2-135M (30 layers, GQA 9 q / 3 kv heads) from its own HF directory through
    nnsight: the logit lens, DLA by head and path patching into a name mover's query (the
    map over every earlier head) equal the bridge's."""
    nn = cv.load_model("demo", backend="nnsight", device="cpu")
    pairs = cv.PromptPairs(
        ["When John and Mary went to the store, John gave a drink to"],
        ["When John and Mary went to the store, Mary gave a drink to"],
        [" Mary"],
        [" John"],
    )
    same_lens(
        cv.logit_lens(nn, pairs.clean[0], answer=" Mary"),
        cv.logit_lens(demo_model, pairs.clean[0], answer=" Mary"),
    )
    same_dla(cv.logit_attribution(nn, pairs), cv.logit_attribution(demo_model, pairs))
    options = {"receivers": ["L25H6"], "progress": False}
    same_path(cv.path_patch(nn, pairs, **options), cv.path_patch(demo_model, pairs, **options))
    assert not nn.has_hooks()


@pytest.mark.demo
@pytest.mark.slow
def test_demo_model_roles_and_refusal_on_nnsight(demo_model):
    """SmolLM2-135M-Instruct through nnsight: head roles on IOI pairs (patterns, copy
    scores, DLA and path patching into the name movers' queries), the refusal direction
    from its chat template and an ablation's greedy continuations equal the bridge's."""
    nn = cv.load_model("demo", backend="nnsight", device="cpu")
    pairs = cv.PromptPairs(
        [
            "When John and Mary went to the store, John gave a drink to",
            "When Tom and Anna went to the park, Tom gave a ball to",
        ],
        [
            "When John and Mary went to the store, Mary gave a drink to",
            "When Tom and Anna went to the park, Anna gave a ball to",
        ],
        [" Mary", " Anna"],
        [" John", " Tom"],
    )
    same_roles(
        cv.head_roles(nn, pairs, n_random=2, progress=False),
        cv.head_roles(demo_model, pairs, n_random=2, progress=False),
    )
    sets = cv.refusal_instructions("train")
    harmful, harmless = sets["harmful"][:4], sets["harmless"][:4]
    ref = cv.refusal_direction(demo_model, harmful, harmless)
    got = cv.refusal_direction(nn, harmful, harmless)
    same_direction(got, ref)
    prompts = sets["harmful"][4:6]
    want = cv.steer_refusal(demo_model, prompts, ref, max_new_tokens=4)
    have = cv.steer_refusal(nn, prompts, got, max_new_tokens=4)
    for side in ("before", "after"):
        a, b = getattr(have, side), getattr(want, side)
        assert a.continuations == b.continuations
        assert close(torch.tensor(a.scores), torch.tensor(b.scores)) <= TOL
    assert not nn.has_hooks()
