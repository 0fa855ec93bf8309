"""SAE features on nnsight, locally and through the fake NDIF: the latents FeatureView shows,
feature ablation, and ``steer`` give the bridge's numbers and tokens.

Reference: circuitviz's bridge implementations (``feature_activations``, ``cv.ablate(...,
features=...)`` and ``steer`` on the ``TransformerBridge`` with the same weights), which
``test_feature_explorer.py``, ``test_feature_nodes.py`` and ``test_steer.py`` check on their
own terms. Tolerance 1e-4 in float32; steer's greedy tokens must be identical.
"""

from __future__ import annotations

import pytest
import torch
import zstandard

import circuitviz as cv
from circuitviz.engine import has_hooks
from circuitviz.engine.features import SAE, SAESet, feature_activations, steer
from tests._tiny_sae import tiny_saes

pytest.importorskip("nnsight")

TOL = 1e-4
PROMPT = "t1 t2 t3 t4 t1 t2"


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def both(request):
    """A tiny bridge, the nnsight model over the same weights, and tiny TopK SAEs on
    ``blocks.{0,1}.hook_resid_post`` (block 1 is the last: its output is the final norm's
    input)."""
    bridge = cv.tiny_model(request.param)
    return bridge, cv.load_model(bridge, backend="nnsight"), tiny_saes(bridge)


def firing(bridge, saes, hook_index: int) -> int:
    """The latent of SAE ``hook_index`` that fires most on the prompt's last token (where the
    next token is read)."""
    acts = feature_activations(bridge, PROMPT, saes)
    return int(acts.latents[saes.hooks[hook_index]][-1].argmax())


def close(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_feature_activations_equal_the_bridge(both):
    bridge, nn, saes = both
    ref = feature_activations(bridge, PROMPT, saes, k=4)
    got = feature_activations(nn, PROMPT, saes, k=4)
    assert got.tokens == ref.tokens and got.first == ref.first
    for hook in saes:
        assert float((got.latents[hook] - ref.latents[hook]).abs().max()) <= TOL
        assert torch.equal(got.top_index[hook], ref.top_index[hook])
    assert got.extra == {"backend": "nnsight", "requests": 1}
    assert not has_hooks(bridge) and not nn.has_hooks()


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_feature_ablation_equals_the_bridge(both, pairs, mode):
    bridge, nn, saes = both
    feats = [f"L1F{firing(bridge, saes, 1)}", f"L0F{firing(bridge, saes, 0)}:P2"]
    ref = cv.ablate(bridge, pairs, features=feats, heads=["L1H0"], saes=saes, mode=mode)
    got = cv.ablate(nn, pairs, features=feats, heads=["L1H0"], saes=saes, mode=mode)
    assert abs(got.ablated - ref.ablated) <= TOL and abs(got.clean - ref.clean) <= TOL
    assert close(got.per_prompt["ablated"], ref.per_prompt["ablated"]) <= TOL
    assert got.top_after.tokens == ref.top_after.tokens
    assert close(got.top_after.probs, ref.top_after.probs) <= TOL
    # the edit does something: the feature alone moves the metric (the random tiny models'
    # logit differences are ~0.1; the backends agree to ~1e-7)
    alone = cv.ablate(nn, pairs, features=feats[:1], saes=saes, mode=mode)
    assert abs(alone.ablated - alone.clean) > 1e-5
    assert not nn.has_hooks()


@pytest.mark.parametrize(
    "case",
    [
        {"mode": "clamp"},
        {"mode": "clamp", "scale": 10.0, "answer": " t3", "wrong_answer": " t7"},
        {"mode": "ablate", "pairs": True, "at": 2},
    ],
    ids=["clamp", "clamp-answer", "ablate-pairs-pos"],
)
def test_steer_equals_the_bridge(both, pairs, case):
    bridge, nn, saes = both
    case = dict(case)
    feats = [f"L1F{firing(bridge, saes, 1)}"]
    if "at" in case:
        feats.append(f"L0F{firing(bridge, saes, 0)}:P{case.pop('at')}")
    if case.pop("pairs", False):
        case["pairs"] = pairs
    ref = steer(bridge, PROMPT, features=feats, saes=saes, n_tokens=12, **case)
    got = steer(nn, PROMPT, features=feats, saes=saes, n_tokens=12, **case)
    assert got.before_tokens == ref.before_tokens and got.after_tokens == ref.after_tokens
    assert got.before == ref.before and got.after == ref.after
    assert close(got.values, ref.values) <= TOL * max(1.0, max(abs(v) for v in ref.values))
    assert got.top_after.tokens == ref.top_after.tokens
    assert close(got.top_after.probs, ref.top_after.probs) <= TOL
    assert close(got.top_before.probs, ref.top_before.probs) <= TOL
    if ref.metric is not None:
        assert got.metric == ref.metric
        assert abs(got.metric_before - ref.metric_before) <= TOL
        assert abs(got.metric_after - ref.metric_after) <= TOL
    assert not nn.has_hooks() and not has_hooks(bridge)


@pytest.mark.parametrize("mode", ["clamp", "ablate"])
def test_a_first_steer_is_one_request_and_equals_the_bridge(both, pairs, mode):
    """Nothing kept yet: the unedited continuation, the edited one (clamped to the prompt's
    maximum read on the server, at every position and at one) and the pairs' metric runs go
    in one request, with the bridge's tokens and numbers; the next click reuses the unedited
    side (one request)."""
    bridge, _, saes = both
    nn = cv.load_model(bridge, backend="nnsight")  # a fresh model: nothing kept
    runs = recording(nn)
    calls = []
    execute = nn.backend.execute
    nn.backend.execute = lambda r, **o: calls.append(len(r)) or execute(r, **o)
    feats = [f"L1F{firing(bridge, saes, 1)}", f"L0F{firing(bridge, saes, 0)}:P2"]
    options = {"mode": mode, "scale": 7.0, "n_tokens": 10, "pairs": pairs}
    ref = steer(bridge, PROMPT, features=feats, saes=saes, **options)
    got = steer(nn, PROMPT, features=feats, saes=saes, **options)
    assert calls == [5]  # unedited, edited, the pairs' corrupted, clean, clean edited
    assert got.before_tokens == ref.before_tokens and got.after_tokens == ref.after_tokens
    assert abs(got.metric_after - got.metric_before) > 1e-5  # the edit does something
    assert close(got.values, ref.values) <= TOL * max(1.0, max(abs(v) for v in ref.values))
    assert close(got.top_before.probs, ref.top_before.probs) <= TOL
    assert close(got.top_after.probs, ref.top_after.probs) <= TOL
    assert abs(got.metric_before - ref.metric_before) <= TOL
    assert abs(got.metric_after - ref.metric_after) <= TOL
    sources = [src for _, _, src in runs[1].splices[("resid_post", 1)]["edits"]]
    assert sources == ([("run", 0, "max", 7.0)] if mode == "clamp" else [("const", 0.0)])
    again = steer(nn, PROMPT, features=feats, saes=saes, **options)
    assert calls == [5, 4]  # the unedited side was kept
    assert again.after_tokens == got.after_tokens and again.values == got.values
    assert abs(again.metric_after - got.metric_after) <= TOL
    assert not nn.has_hooks()


def test_a_first_clamp_of_a_silent_latent_is_refused_and_keeps_the_unedited_side(both):
    bridge, _, saes = both
    nn = cv.load_model(bridge, backend="nnsight")
    hook = saes.hooks[1]
    silent = int(feature_activations(bridge, PROMPT, saes).latents[hook].amax(0).argmin())
    calls = []
    execute = nn.backend.execute
    nn.backend.execute = lambda r, **o: calls.append(len(r)) or execute(r, **o)
    with pytest.raises(cv.InputError, match="never fires on this prompt"):
        steer(nn, PROMPT, features=[(hook, silent)], saes=saes, n_tokens=6)
    assert not nn.has_hooks()
    ref = steer(bridge, PROMPT, features=[(hook, silent)], saes=saes, n_tokens=6, mode="ablate")
    got = steer(nn, PROMPT, features=[(hook, silent)], saes=saes, n_tokens=6, mode="ablate")
    assert calls == [2, 1] and got.before_tokens == ref.before_tokens
    assert got.after_tokens == ref.after_tokens


def linear_bodies(nn) -> list:
    """The forward nnsight's controller runs for each of the model's linear layers."""
    states = [getattr(m.__dict__.get("forward"), "state", None) for m in nn.lm._module.modules()]
    return [s.body for s in states if s is not None and hasattr(s, "body")]


def test_a_local_generation_runs_skinny_linears_and_puts_them_back(both, monkeypatch):
    """Locally a steer's generation computes its few-row linear layers as the bridge's twin
    does (``SkinnyLinear``), and the model's own forward is back after — also after a
    failure mid-generation."""
    import circuitviz.engine.features._generate as generate
    from circuitviz.engine.backends import _feature_program

    bridge, nn, saes = both
    feature = f"L1F{firing(bridge, saes, 1)}"
    steer(nn, PROMPT, features=feature, saes=saes, n_tokens=3)  # nnsight's controllers exist
    before = linear_bodies(nn)
    assert torch.nn.Linear.forward in before
    calls = []
    real = generate.SkinnyLinear.forward
    monkeypatch.setattr(
        generate.SkinnyLinear, "forward", lambda m, x: calls.append(1) or real(m, x)
    )
    ref = steer(bridge, PROMPT, features=feature, saes=saes, scale=9.0, n_tokens=8)
    got = steer(nn, PROMPT, features=feature, saes=saes, scale=9.0, n_tokens=8)
    assert calls and got.after_tokens == ref.after_tokens
    assert linear_bodies(nn) == before
    n = len(calls)
    cv.ablate(nn, cv.PromptPairs([PROMPT], [PROMPT], [" t3"], [" t7"]), heads=["L0H0"])
    assert len(calls) == n  # no generation: untouched

    def failing(*args):
        raise RuntimeError("boom")

    monkeypatch.setattr(_feature_program, "splice", failing)
    with pytest.raises(RuntimeError, match="boom"):
        steer(nn, PROMPT, features=feature, saes=saes, scale=3.0, mode="ablate", n_tokens=4)
    assert linear_bodies(nn) == before and not nn.has_hooks()


def test_steer_changes_the_continuation(both):
    """The clamp acts at every generated position: the tokens differ from the unedited ones
    (on both backends alike, see above)."""
    bridge, nn, saes = both
    got = steer(nn, PROMPT, features=[f"L1F{firing(bridge, saes, 1)}"], saes=saes, scale=10.0)
    assert got.after_tokens != got.before_tokens


def test_edit_metric_equals_the_bridge(both, pairs):
    """What the clamp panel runs after a steer's continuation: the metric on the pairs."""
    from circuitviz.engine.features import LatentEdit
    from circuitviz.engine.features._steer import edit_metric

    bridge, nn, saes = both
    edits = [LatentEdit("blocks.1.hook_resid_post", firing(bridge, saes, 1), 3.0)]
    edits.append(LatentEdit("blocks.0.hook_resid_post", firing(bridge, saes, 0), 0.0, 4))
    ref = edit_metric(bridge, pairs, saes, edits, metric="logit_diff")
    got = edit_metric(nn, pairs, saes, edits, metric="logit_diff")
    assert got[0] == ref[0] and abs(got[1] - ref[1]) <= TOL and abs(got[2] - ref[2]) <= TOL
    assert abs(got[2] - got[1]) > 1e-5  # the edit moves it


def card_of(model, saes, feature):
    return cv.FeatureView(model, PROMPT, saes=saes, feature=feature)


def same_view(got, ref) -> None:
    assert got.tokens == ref.tokens and got.chip_labels == ref.chip_labels
    for key in ("id", "label", "acts_max"):
        assert got.card[key] == ref.card[key]
    assert close(got.card["acts"], ref.card["acts"]) <= TOL
    for key in ("promoted", "suppressed"):
        assert [t for t, _ in got.card[key]] == [t for t, _ in ref.card[key]]
        assert close([v for _, v in got.card[key]], [v for _, v in ref.card[key]]) <= TOL


def test_feature_view_accepts_an_nnsight_model(both):
    bridge, nn, saes = both
    feature = f"blocks.1.hook_resid_post:{firing(bridge, saes, 1)}"
    same_view(card_of(nn, saes, feature), card_of(bridge, saes, feature))
    assert not nn.has_hooks()


def test_the_clamp_panel_accepts_an_nnsight_model(both, pairs):
    """CircuitView over an nnsight model (its EAP graph) steers a feature node as on the
    bridge (where faithfulness is not ported, the view opens with it switched off)."""
    bridge, nn, saes = both
    node = f"L1F{firing(bridge, saes, 1)}"
    results = []
    for model in (bridge, nn):
        view = cv.CircuitView(model, pairs, graph=cv.circuit(model, pairs), saes=saes)
        assert view.can_steer and view.error == ""
        results.append(view.steer_node(node, mode="clamp", scale=6.0))
        assert view.steering["stage"] == "done"
    ref, got = results
    assert got.after_tokens == ref.after_tokens and got.before_tokens == ref.before_tokens
    assert abs(got.metric_after - ref.metric_after) <= TOL
    assert abs(got.metric_before - ref.metric_before) <= TOL
    # the nnsight view scores circuits where faithfulness is ported, else says so on request
    from circuitviz.engine import backends

    assert view.has_faithfulness == ("faithfulness" in backends.PORTED)
    if not view.has_faithfulness:
        view._handle_custom_msg({"type": "faithfulness", "ablated": []})
        assert "TransformerLens bridge" in view.error and not view.faithfulness
    assert not nn.has_hooks()


def test_hooks_nnsight_cannot_splice_are_refused_up_front(both, pairs):
    _, nn, saes = both
    s = saes[saes.hooks[0]]
    # the norm's output: no site of the bridge's feature tools, and none nnsight splices
    hook = "blocks.0.ln1.hook_normalized"
    odd = SAESet([SAE(hook, s.W_enc, s.b_enc, s.W_dec, s.b_dec, k=s.k)])
    with pytest.raises(cv.InputError, match=r"hook_normalized.*nnsight.*load_model"):
        feature_activations(nn, PROMPT, odd)
    with pytest.raises(cv.InputError, match=r"hook_normalized.*nnsight.*load_model"):
        steer(nn, PROMPT, features=[(hook, 1)], saes=odd)
    with pytest.raises(cv.InputError, match="pass the SAEs"):
        cv.ablate(nn, pairs, features=["L1F1"])
    # the bridge's own rule for feature circuits' sites, word for word on both backends
    with pytest.raises(cv.InputError, match=r"Feature circuits splice.*hook_normalized"):
        cv.circuit(nn, pairs, saes=odd)  # not a component graph with the SAEs dropped
    with pytest.raises(cv.InputError, match=r"hook_normalized.*nnsight.*load_model"):
        cv.engine.features.feature_stats(nn, odd, texts=["t1 t2 t3"])
    assert not nn.has_hooks()


# ----------------------------------------------------------------------------- remote


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def remote(request):
    from tests.test_remote import Setup

    setup = Setup(request.param)
    return setup, tiny_saes(setup.bridge)


def payload(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(blob)


def recording(client) -> list:
    """Every run the client's backend is asked to execute, from now on."""
    seen: list = []
    execute = client.backend.execute

    def record(runs, **options):
        seen.extend(runs)
        return execute(runs, **options)

    client.backend.execute = record
    return seen


def test_remote_feature_activations_bring_back_activations_not_latents(remote):
    setup, saes = remote
    client = setup.make_client()
    runs = recording(client)
    sent = len(setup.fake.requests)
    ref = feature_activations(setup.bridge, PROMPT, saes)
    got = feature_activations(client, PROMPT, saes)
    assert len(setup.fake.requests) == sent + 1
    for hook in saes:
        assert float((got.latents[hook] - ref.latents[hook]).abs().max()) <= TOL
    back = setup.fake.results[-1]["results"][0]["back"]
    d_model = setup.bridge.cfg.d_model
    assert {tuple(v.shape) for v in back.values()} == {(1, len(ref.tokens), d_model)}
    # no SAE weight is sent to read latents: the run only asks for the activations back
    specs = [spec for run in runs for spec in run.splices.values()]
    assert len(specs) == 2 and all(spec.get("back") and "sae" not in spec for spec in specs)


def test_remote_feature_ablation_is_one_request_per_click(remote, pairs):
    setup, saes = remote
    client = setup.make_client()
    feats = [f"L1F{firing(setup.bridge, saes, 1)}", f"L0F{firing(setup.bridge, saes, 0)}:P3"]
    sent = len(setup.fake.requests)
    for mode in ("mean", "resample", "zero"):
        ref = cv.ablate(setup.bridge, pairs, features=feats, saes=saes, mode=mode)
        got = cv.ablate(client, pairs, features=feats, saes=saes, mode=mode)
        assert abs(got.ablated - ref.ablated) <= TOL
        assert close(got.per_prompt["ablated"], ref.per_prompt["ablated"]) <= TOL
    assert len(setup.fake.requests) == sent + 3  # the baselines rode with the first click


def test_remote_steer_is_one_request_for_the_whole_continuation(remote, pairs):
    setup, saes = remote
    client = setup.make_client()
    runs = recording(client)
    latent = firing(setup.bridge, saes, 1)
    feats = [f"L1F{latent}"]
    sent = len(setup.fake.requests)
    ref = steer(setup.bridge, PROMPT, features=feats, saes=saes, n_tokens=12, pairs=pairs)
    got = steer(client, PROMPT, features=feats, saes=saes, n_tokens=12, pairs=pairs)
    # one request: the unedited side (then kept) and the edit, whose clamp reads the
    # prompt's maximum on the server
    assert len(setup.fake.requests) == sent + 1
    assert got.before_tokens == ref.before_tokens and got.after_tokens == ref.after_tokens
    assert close(got.top_after.probs, ref.top_after.probs) <= TOL
    assert abs(got.metric_after - ref.metric_after) <= TOL
    again = steer(client, PROMPT, features=feats, saes=saes, n_tokens=12, mode="ablate")
    assert len(setup.fake.requests) == sent + 2  # a second click: one request
    assert again.before_tokens == ref.before_tokens
    back = setup.fake.results[-1]["results"][0]["out"]  # the edited first token: its top k
    assert "full" not in back and back["top_p"].shape == (10,) and len(back["ids"]) == 12
    # what the edit sent: the edited latent's decoder row, and (a TopK SAE) every encoder
    # column, since whether a latent is among the top k depends on all of them
    sae = saes["blocks.1.hook_resid_post"]
    sent_sae = runs[-1].splices[("resid_post", 1)]["sae"]
    # the pairs' edited run carries the very same payload: pickled once in the request
    assert runs[1].splices[("resid_post", 1)]["sae"] is runs[4].splices[("resid_post", 1)]["sae"]
    assert torch.equal(sent_sae["W_dec"].float(), sae.W_dec[[latent]])
    assert torch.equal(sent_sae["W_enc"].float(), sae.W_enc)
    assert sent_sae["pick"].tolist() == [latent]
    # before: reads both SAEs; after: the generation, the pairs (corrupted, clean, edited)
    assert [len(run.splices) for run in runs] == [2, 1, 0, 0, 1, 1]
    body = payload(setup.fake.requests[-1])
    assert b"def nnsight_generate" in body and b"def splice" in body  # shipped by value


def test_a_relu_sae_sends_only_the_edited_latents_encoder_columns(remote, pairs):
    from circuitviz.engine.backends._features import sae_payload

    _, saes = remote
    s = saes["blocks.0.hook_resid_post"]
    relu = SAE(s.hook_name, s.W_enc, s.b_enc, s.W_dec, s.b_dec, apply_b_dec_to_input=True)
    sent = sae_payload(relu, [5, 2])
    assert torch.equal(sent["W_enc"], s.W_enc[:, [5, 2]]) and sent["pick"] is None
    assert torch.equal(sent["W_dec"], s.W_dec[[5, 2]]) and torch.equal(sent["b_dec_in"], s.b_dec)
    assert sent["W_enc"].dtype == torch.float32  # trained in float32: sent as it is
    half = relu.to(dtype=torch.float16).to(dtype=torch.float32)  # stored in half precision
    sent = sae_payload(half, [5, 2])
    assert sent["W_enc"].dtype == torch.float16 and sent["dtype"] == "float32"
    assert torch.equal(sent["W_enc"].float(), half.W_enc[:, [5, 2]])  # nothing lost


@pytest.mark.parametrize("bundled", [True, False], ids=["one-request", "large-saes"])
def test_remote_feature_view_opens_in_one_request_and_a_card_is_one(remote, bundled, monkeypatch):
    """Opening: the latents and every SAE's chip labels (SAEs without statistics) in one
    request — the SAEs travel whole, the server picks the chips — or, for SAEs above
    ``ONE_REQUEST_BYTES``, two (the second: the chips' decoder rows of every SAE). A card of
    a chip sends nothing more; a card of a new latent is one request."""
    from circuitviz.engine.backends import _feature_view
    from circuitviz.engine.features._explorer import chip_latents

    setup, saes = remote
    if not bundled:
        monkeypatch.setattr(_feature_view, "ONE_REQUEST_BYTES", 0)
    client = setup.make_client()
    runs = recording(client)
    hook = "blocks.1.hook_resid_post"
    feature = f"{hook}:{firing(setup.bridge, saes, 1)}"
    sent = len(setup.fake.requests)
    got = card_of(client, saes, feature)
    same_view(got, card_of(setup.bridge, saes, feature))  # chip labels and the card
    assert len(setup.fake.requests) - sent == (1 if bundled else 2)
    assert got.activations.extra["requests"] == (1 if bundled else 2)
    chips = {h: chip_latents(got.activations, h) for h in saes}
    outs = [r["out"] for r in setup.fake.results[-1]["results"] if "up_i" in r["out"]]
    back = outs[-1]
    rows = sum(len(out["up_i"]) for out in outs)
    assert rows == sum(map(len, chips.values())) and back["up_i"].shape[1] == 10  # not d_vocab
    if bundled:  # the server picked the client's chips
        assert back["chip_index"].tolist() == chips[saes.hooks[0]] + chips[hook]
        whole = runs[1].grad["chips"][1][1]
        assert whole["full"] and torch.equal(whole["W_dec"].float(), saes[hook].W_dec)
    else:  # the latents' request sends no SAE weight; then only the chips' decoder rows
        assert all("sae" not in spec for spec in runs[0].splices.values())
        assert [tuple(r.grad["dirs"].shape) for r in runs[1:]] == [
            (len(chips[h]), setup.bridge.cfg.d_model) for h in saes
        ]
    sent = len(setup.fake.requests)
    other = next(i for i in range(saes[hook].d_sae) if i not in chips[hook])
    got.show_feature(f"{hook}:{other}")
    same_view(got, card_of(setup.bridge, saes, f"{hook}:{other}"))
    assert len(setup.fake.requests) - sent == 1  # a new latent: one request
    got.show_feature(feature)
    assert len(setup.fake.requests) - sent == 1  # kept


def test_remote_static_cards_are_one_request(remote):
    """A standalone page embeds the grid's cards: their logit effects in one request for
    all of them (not a job per card), equal to the bridge's cards."""
    setup, saes = remote
    client = setup.make_client()
    view = cv.FeatureView(client, PROMPT, saes=saes)
    sent = len(setup.fake.requests)
    got = view.static_replies()
    assert len(setup.fake.requests) - sent <= 1  # the chips' latents are kept already
    ref = cv.FeatureView(setup.bridge, PROMPT, saes=saes).static_replies()
    assert [r["match"] for r in got] == [r["match"] for r in ref] and len(got) > 2
    for g, r in zip(got, ref, strict=True):
        g, r = g["messages"][0][0]["card"], r["messages"][0][0]["card"]
        assert [t for t, _ in g["promoted"]] == [t for t, _ in r["promoted"]]
        assert close([v for _, v in g["suppressed"]], [v for _, v in r["suppressed"]]) <= TOL
    setup.fake.requests.clear()
    view._model._memo.clear()  # nothing kept: still one request for every card
    view.static_replies()
    assert len(setup.fake.requests) == 1


def test_resid_pre_saes_splice_the_layer_input(both):
    """An SAE on ``blocks.1.hook_resid_pre`` (block 0's output, read as block 1's input):
    its latents and a steer equal the bridge's."""
    bridge, nn, saes = both
    s = saes["blocks.0.hook_resid_post"]
    pre = SAESet([SAE("blocks.1.hook_resid_pre", s.W_enc, s.b_enc, s.W_dec, s.b_dec, k=s.k)])
    ref, got = feature_activations(bridge, PROMPT, pre), feature_activations(nn, PROMPT, pre)
    hook = "blocks.1.hook_resid_pre"
    assert float((got.latents[hook] - ref.latents[hook]).abs().max()) <= TOL
    feature = (hook, int(ref.latents[hook][-1].argmax()))
    ref = steer(bridge, PROMPT, features=feature, saes=pre, scale=8.0, n_tokens=10)
    got = steer(nn, PROMPT, features=feature, saes=pre, scale=8.0, n_tokens=10)
    assert got.after_tokens == ref.after_tokens and got.before_tokens == ref.before_tokens
    assert close(got.top_after.probs, ref.top_after.probs) <= TOL


@pytest.mark.demo
@pytest.mark.slow
def test_demo_features_on_nnsight_equal_the_bridge(demo_model):
    """The demo model (SmolLM2-135M, 30 layers, GQA) with its shipped SAEs: latents, a
    feature ablation on IOI pairs and a clamped continuation."""
    nn = cv.load_model(demo_model, backend="nnsight")
    saes = cv.load_saes("demo")
    prompt = "When John and Mary went to the store, John gave a drink to"
    ref = feature_activations(demo_model, prompt, saes)
    got = feature_activations(nn, prompt, saes)
    for hook in saes:
        assert float((got.latents[hook] - ref.latents[hook]).abs().max()) <= TOL
    hook = "blocks.11.hook_resid_post"
    latent = int(ref.latents[hook][-1].argmax())
    pairs = cv.PromptPairs(
        [prompt, "When Tom and Anna went to the park, Tom gave a ball to"],
        [
            "When John and Mary went to the store, Mary gave a drink to",
            "When Tom and Anna went to the park, Anna gave a ball to",
        ],
        [" Mary", " Anna"],
        [" John", " Tom"],
    )
    a = cv.ablate(demo_model, pairs, features=[f"L11F{latent}"], saes=saes, mode="mean")
    b = cv.ablate(nn, pairs, features=[f"L11F{latent}"], saes=saes, mode="mean")
    assert abs(a.ablated - b.ablated) <= TOL and abs(a.clean - b.clean) <= TOL
    a = steer(demo_model, prompt, features=f"L11F{latent}", saes=saes, n_tokens=10)
    b = steer(nn, prompt, features=f"L11F{latent}", saes=saes, n_tokens=10)
    assert a.after_tokens == b.after_tokens and a.before_tokens == b.before_tokens
    assert close(a.top_after.probs, b.top_after.probs) <= TOL
    assert a.after_tokens != a.before_tokens


def test_a_continuation_that_ends_early_equals_the_bridge(remote):
    """The end-of-sequence token comes a few tokens in: the bridge's loop stops there, and
    so does HF's generate on nnsight (locally and on the server), with no warning shown."""
    import warnings

    setup, saes = remote
    client = setup.make_client()
    nn = cv.load_model(setup.bridge, backend="nnsight")
    prompt = "t9 t8 t7 t6 t9"
    full = steer(setup.bridge, prompt, features="L1F3", saes=saes, mode="ablate", n_tokens=12)
    words = full.before_tokens
    cut = max(i for i in range(1, 6) if words[i] not in words[:i])  # a token new there
    eos = int(setup.bridge.to_tokens(words[cut], prepend_bos=False)[0, 0])
    tokenizers = {id(m.tokenizer): m.tokenizer for m in (setup.bridge, nn, client)}.values()
    kept = [(t, t.eos_token) for t in tokenizers]
    try:
        for tokenizer in tokenizers:
            tokenizer.eos_token_id = eos
        ref = steer(setup.bridge, prompt, features="L1F3", saes=saes, mode="ablate", n_tokens=11)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            for model in (nn, client):
                got = steer(model, prompt, features="L1F3", saes=saes, mode="ablate", n_tokens=11)
                assert got.before_tokens == ref.before_tokens == words[:cut]
                assert got.after_tokens == ref.after_tokens
    finally:
        for tokenizer, token in kept:
            tokenizer.eos_token = token
        assert all(t.eos_token == token for t, token in kept)


def test_an_error_mid_generation_leaves_the_model_untouched(both, monkeypatch):
    """A failure inside the trace (here: the splice raising on the second pass) propagates,
    and leaves no hook: the next forward pass gives the same logits."""
    from circuitviz.engine.backends import _feature_program

    bridge, nn, saes = both
    tokens = nn.to_tokens(PROMPT)
    with torch.no_grad():
        before = nn.lm._module(tokens).logits
    real = _feature_program.splice

    def failing(x, spec, key, index, saved, back, step):
        if step == 1:
            raise RuntimeError("boom on the second pass")
        return real(x, spec, key, index, saved, back, step)

    monkeypatch.setattr(_feature_program, "splice", failing)
    feature = f"L1F{firing(bridge, saes, 1)}"
    with pytest.raises(RuntimeError, match="boom"):
        steer(nn, "t4 t3 t2 t1", features=feature, saes=saes, mode="ablate", n_tokens=5)
    monkeypatch.undo()
    assert not nn.has_hooks()
    with torch.no_grad():
        assert torch.equal(nn.lm._module(tokens).logits, before)
    ref = steer(bridge, "t4 t3 t2 t1", features=feature, saes=saes, mode="ablate", n_tokens=5)
    got = steer(nn, "t4 t3 t2 t1", features=feature, saes=saes, mode="ablate", n_tokens=5)
    assert got.after_tokens == ref.after_tokens  # and it still runs
