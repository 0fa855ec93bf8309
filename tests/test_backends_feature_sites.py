"""SAEs and transcoders at every site kind on nnsight, locally and through the fake NDIF: the
latents FeatureView shows, feature and error-term ablation, and ``steer`` give the bridge's
numbers and tokens.

Sites (``engine._sites``): resid_pre, attn_out, resid_mid, mlp_out, resid_post and
transcoders reading the MLP's input after ln2 (``mlp.hook_in``) or before it
(``ln2.hook_in``, the same tensor as resid_mid), in two sets per model:

- ``A``: L0 resid_pre, attn_out, resid_mid, a transcoder on L0's MLP (after ln2); L1
  mlp_out, resid_post;
- ``B``: L0 mlp_out, resid_post; L1 resid_pre (the same tensor as L0's resid_post), attn_out,
  resid_mid and a transcoder reading ln2's input (the resid_mid splice's output, as on the
  bridge).

Reference: the bridge's own implementations on the same weights (``cv.ablate``,
``feature_activations``, ``steer``), which ``test_feature_sites.py`` and
``test_error_nodes.py`` check against hand-written hooks. Tolerance 1e-4 in float32; steer's
greedy tokens must be identical.
"""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks
from circuitviz.engine._sites import site_code
from circuitviz.engine.features import SAE, SAESet, feature_activations, steer
from tests._tiny_sae import tiny_site_saes

pytest.importorskip("nnsight")

TOL = 1e-4
PROMPT = "t1 t2 t3 t4 t1 t2"
SETS = {
    "A": (
        [
            "blocks.0.hook_resid_pre",
            "blocks.0.hook_attn_out",
            "blocks.0.hook_resid_mid",
            "blocks.1.hook_mlp_out",
            "blocks.1.hook_resid_post",
        ],
        [("blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out")],
    ),
    "B": (
        [
            "blocks.0.hook_mlp_out",
            "blocks.0.hook_resid_post",
            "blocks.1.hook_resid_pre",
            "blocks.1.hook_attn_out",
            "blocks.1.hook_resid_mid",
        ],
        [("blocks.1.ln2.hook_in", "blocks.1.hook_mlp_out")],
    ),
}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def models(request):
    """A tiny bridge (Llama: GQA, RMSNorm; GPT-2: LayerNorm, biases) and the nnsight model
    over the same weights."""
    bridge = cv.tiny_model(request.param)
    return bridge, cv.load_model(bridge, backend="nnsight")


@pytest.fixture(scope="module", params=sorted(SETS))
def sites(request, models):
    bridge, nn = models
    hooks, transcoders = SETS[request.param]
    return bridge, nn, tiny_site_saes(bridge, hooks, transcoders)


def code_of(saes, hook: str) -> str:
    sae = saes[hook]
    return f"L{sae.layer}{site_code(sae)}"


def strongest(bridge, saes, hook: str) -> int:
    """The latent of ``hook``'s SAE that fires most anywhere on the prompt."""
    return int(feature_activations(bridge, PROMPT, saes).latents[hook].amax(0).argmax())


def close(a, b) -> float:
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def same_ablation(got, ref) -> None:
    assert abs(got.ablated - ref.ablated) <= TOL and abs(got.clean - ref.clean) <= TOL
    assert close(got.per_prompt["ablated"], ref.per_prompt["ablated"]) <= TOL
    assert got.top_after.tokens == ref.top_after.tokens
    assert close(got.top_after.probs, ref.top_after.probs) <= TOL


def test_feature_activations_at_every_site_equal_the_bridge(sites):
    bridge, nn, saes = sites
    ref = feature_activations(bridge, PROMPT, saes, k=4)
    got = feature_activations(nn, PROMPT, saes, k=4)
    for hook in saes:
        assert float((got.latents[hook] - ref.latents[hook]).abs().max()) <= TOL, hook
        assert torch.equal(got.top_index[hook], ref.top_index[hook]), hook
        assert float(ref.latents[hook].max()) > 0  # each SAE fires somewhere
    assert got.extra == {"backend": "nnsight", "requests": 1}
    assert not has_hooks(bridge) and not nn.has_hooks()


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_latent_and_error_ablation_at_every_site_equal_the_bridge(sites, pairs, mode):
    """Each site on its own — a latent everywhere, a latent at the last position (where a
    last-layer edit reaches the logits), the error term everywhere, the error term at the
    last position with a latent beside it — then every site at once (splices in one pass,
    in the bridge's order: an SAE on resid_mid before a transcoder reading ln2's input)."""
    bridge, nn, saes = sites
    last = bridge.to_tokens(pairs.clean[0]).shape[1] - 1
    everything = []
    for hook in saes:
        site, i = code_of(saes, hook), strongest(bridge, saes, hook)
        cases = [[f"{site}F{i}"], [f"{site}F{i}:P{last}"], [f"{site}ERR"]]
        cases.append([f"{site}ERR:P{last}", f"{site}F{i}"])
        for feats in cases:
            ref = cv.ablate(bridge, pairs, features=feats, saes=saes, mode=mode)
            got = cv.ablate(nn, pairs, features=feats, saes=saes, mode=mode)
            same_ablation(got, ref)
        everything += [f"{site}F{i}", f"{site}ERR"]
    ref = cv.ablate(bridge, pairs, features=everything, saes=saes, mode=mode, heads=["L1H0"])
    got = cv.ablate(nn, pairs, features=everything, saes=saes, mode=mode, heads=["L1H0"])
    same_ablation(got, ref)
    assert abs(ref.ablated - ref.clean) > 1e-4
    assert not has_hooks(bridge) and not nn.has_hooks()


def test_error_ablation_moves_the_metric_at_every_site(sites, pairs):
    """Dropping the error term (the site outputs its reconstruction) changes the output at
    every site kind, on both backends alike — the comparisons above compare real edits."""
    _, nn, saes = sites
    for hook in saes:
        got = cv.ablate(nn, pairs, features=[f"{code_of(saes, hook)}ERR"], saes=saes)
        assert abs(got.ablated - got.clean) > 1e-4, hook


def test_error_ablation_with_mixed_lengths_equals_the_bridge(sites):
    """Left-padded pairs: the mean error term at a position is over the prompts that have a
    token there (``Tokens.mean_weights``), as on the bridge."""
    bridge, nn, saes = sites
    pairs = cv.PromptPairs(
        ["t1 t2 t3 t4 t1 t2", "t9 t8 t9 t8"],
        ["t5 t6 t7 t8 t5 t6", "t1 t2 t1 t2"],
        [" t3", " t9"],
        [" t7", " t1"],
    )
    feats = [f"{code_of(saes, hook)}ERR" for hook in list(saes)[::2]]
    feats.append(f"{code_of(saes, saes.hooks[1])}ERR:P1")  # padding in the short prompt
    for mode in ("mean", "resample", "zero"):
        ref = cv.ablate(bridge, pairs, features=feats, saes=saes, mode=mode)
        got = cv.ablate(nn, pairs, features=feats, saes=saes, mode=mode)
        same_ablation(got, ref)


@pytest.mark.parametrize("mode", ["clamp", "ablate"])
def test_steer_at_every_site_equals_the_bridge(sites, pairs, mode):
    """Click-to-clamp at each site: the greedy tokens (KV-cached generation on nnsight, the
    bridge's loop) are identical, the first token's probabilities and the pairs' metric
    equal."""
    bridge, _, saes = sites
    changed = 0
    for hook in saes:
        # a fresh model: the unedited side and the edit (a clamp to the latent's prompt
        # maximum, read on the server) in one request, at every site
        nn = cv.load_model(bridge, backend="nnsight")
        feats = [f"{code_of(saes, hook)}F{strongest(bridge, saes, hook)}"]
        options = {"features": feats, "saes": saes, "mode": mode, "n_tokens": 8}
        options |= {"scale": 8.0, "progress": False}
        if hook == saes.hooks[0]:
            options["pairs"] = pairs
        ref = steer(bridge, PROMPT, **options)
        options.pop("progress")
        got = steer(nn, PROMPT, **options)
        assert got.before_tokens == ref.before_tokens and got.after_tokens == ref.after_tokens
        assert close(got.values, ref.values) <= TOL * max(1.0, max(abs(v) for v in ref.values))
        assert got.top_after.tokens == ref.top_after.tokens
        assert close(got.top_after.probs, ref.top_after.probs) <= TOL
        if ref.metric is not None:
            assert abs(got.metric_after - ref.metric_after) <= TOL
        changed += got.after_tokens != got.before_tokens
    if mode == "clamp":
        assert changed >= len(saes) // 2  # most clamps change the continuation
    assert not nn.has_hooks() and not has_hooks(bridge)


def test_steer_at_two_sites_at_once_equals_the_bridge(sites):
    """A latent at the first site and another at a position of the last, in one edit."""
    bridge, nn, saes = sites
    first, last = saes.hooks[0], saes.hooks[-1]
    feats = [
        f"{code_of(saes, first)}F{strongest(bridge, saes, first)}",
        f"{code_of(saes, last)}F{strongest(bridge, saes, last)}:P2",
    ]
    ref = steer(bridge, PROMPT, features=feats, saes=saes, scale=6.0, n_tokens=8, progress=False)
    got = steer(nn, PROMPT, features=feats, saes=saes, scale=6.0, n_tokens=8)
    assert got.after_tokens == ref.after_tokens
    assert close(got.top_after.probs, ref.top_after.probs) <= TOL


def test_feature_view_card_of_a_transcoder_latent(sites):
    """FeatureView over nnsight at a transcoder: the card (activations, logit effects) and
    chip labels equal the bridge's."""
    bridge, nn, saes = sites
    hook = next(h for h, s in saes.items() if s.is_transcoder)
    feature = f"{hook}:{strongest(bridge, saes, hook)}"
    ref = cv.FeatureView(bridge, PROMPT, saes=saes, feature=feature)
    got = cv.FeatureView(nn, PROMPT, saes=saes, feature=feature)
    assert got.tokens == ref.tokens and got.chip_labels == ref.chip_labels
    assert got.card["id"] == ref.card["id"] and got.card["label"] == ref.card["label"]
    assert close(got.card["acts"], ref.card["acts"]) <= TOL
    assert [t for t, _ in got.card["promoted"]] == [t for t, _ in ref.card["promoted"]]


@pytest.mark.parametrize("activation", ["relu", "jumprelu"])
def test_relu_and_jumprelu_saes_at_branch_sites_equal_the_bridge(models, pairs, activation):
    """ReLU and JumpReLU SAEs (encoder columns sent per latent; the whole SAE for an error
    term) on attn_out and as a transcoder: latent and error-term ablation, and a steer."""
    bridge, nn = models
    topk = tiny_site_saes(
        bridge, ["blocks.1.hook_attn_out"], [("blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out")]
    )

    def made(s, threshold=None, kind="relu"):
        return SAE(
            s.hook_name,
            s.W_enc,
            s.b_enc,
            s.W_dec,
            s.b_dec,
            activation=kind,
            threshold=threshold,
            output_hook=s.output_hook,
            apply_b_dec_to_input=s.apply_b_dec_to_input,
        )

    saes = [made(s) for s in topk.values()]
    if activation == "jumprelu":  # thresholds at 30% of each latent's peak on the prompt
        peaks = feature_activations(bridge, PROMPT, SAESet(saes)).latents
        saes = [made(s, 0.3 * peaks[s.hook_name].amax(0), "jumprelu") for s in saes]
    saes = SAESet(saes)
    last = bridge.to_tokens(pairs.clean[0]).shape[1] - 1
    for hook in saes:
        site, i = code_of(saes, hook), strongest(bridge, saes, hook)
        feats = [f"{site}F{i}", f"{site}ERR:P{last}"]
        for mode in ("zero", "mean"):
            ref = cv.ablate(bridge, pairs, features=feats, saes=saes, mode=mode)
            same_ablation(cv.ablate(nn, pairs, features=feats, saes=saes, mode=mode), ref)
            assert abs(ref.ablated - ref.clean) > 1e-5
        ref = steer(bridge, PROMPT, features=f"{site}F{i}", saes=saes, n_tokens=6, progress=False)
        got = steer(nn, PROMPT, features=f"{site}F{i}", saes=saes, n_tokens=6)
        assert got.after_tokens == ref.after_tokens
        assert close(got.top_after.probs, ref.top_after.probs) <= TOL


# ----------------------------------------------------------------------------- refusals


def test_sites_nnsight_cannot_splice_are_refused_up_front(models, pairs):
    """An SAE on the norm's output, a transcoder writing another block's MLP: an InputError
    naming the sites nnsight splices and the bridge, before any request; no hook is left and
    the logits are unchanged."""
    bridge, nn = models
    saes = tiny_site_saes(bridge, [], [("blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out")])
    tc = saes[saes.hooks[0]]
    tokens = nn.to_tokens(PROMPT)
    with torch.no_grad():
        before = nn.lm._module(tokens).logits
    elsewhere = SAE(
        tc.hook_name,
        tc.W_enc,
        tc.b_enc,
        tc.W_dec,
        tc.b_dec,
        k=tc.k,
        activation="topk",
        output_hook="blocks.1.hook_mlp_out",
    )
    with pytest.raises(cv.InputError, match=r"transcoder.*blocks\.1\.hook_mlp_out.*same block"):
        feature_activations(nn, PROMPT, SAESet([elsewhere]))
    early = SAE(
        "blocks.0.attn.hook_z",
        tc.W_enc,
        tc.b_enc,
        tc.W_dec,
        tc.b_dec,
        k=tc.k,
        activation="topk",
        output_hook="blocks.0.hook_mlp_out",
    )
    with pytest.raises(cv.InputError, match=r"hook_z.*hook_resid_mid.*load_model"):
        cv.ablate(nn, pairs, features=["L0tcERR"], saes=SAESet([early]))
    twin = SAE(
        "blocks.0.ln2.hook_in",
        tc.W_enc,
        tc.b_enc,
        tc.W_dec,
        tc.b_dec,
        k=tc.k,
        activation="topk",
        output_hook="blocks.0.hook_mlp_out",
    )
    with pytest.raises(cv.InputError, match=r"both replace MLP 0.*keep one"):
        feature_activations(nn, PROMPT, SAESet([tc, twin]))
    assert not nn.has_hooks()
    with torch.no_grad():
        assert torch.equal(nn.lm._module(tokens).logits, before)


def test_a_failing_error_splice_leaves_the_model_untouched(sites, pairs, monkeypatch):
    """A failure inside the trace (the error-term rule raising) propagates and leaves no
    hook; the next forward pass gives the same logits and the ablation then runs."""
    from circuitviz.engine.backends import _feature_program

    bridge, nn, saes = sites
    tokens = nn.to_tokens(PROMPT)
    with torch.no_grad():
        before = nn.lm._module(tokens).logits

    def failing(*args):
        raise RuntimeError("boom in the error term")

    monkeypatch.setattr(_feature_program, "replace_error", failing)
    feats = [f"{code_of(saes, saes.hooks[2])}ERR:P3"]
    with pytest.raises(RuntimeError, match="boom"):
        cv.ablate(nn, pairs, features=feats, saes=saes, mode="resample")
    monkeypatch.undo()
    assert not nn.has_hooks()
    with torch.no_grad():
        assert torch.equal(nn.lm._module(tokens).logits, before)
    ref = cv.ablate(bridge, pairs, features=feats, saes=saes, mode="resample")
    same_ablation(cv.ablate(nn, pairs, features=feats, saes=saes, mode="resample"), ref)


# ----------------------------------------------------------------------------- remote


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def remote(request):
    from tests.test_remote import Setup

    setup = Setup(request.param)
    hooks, transcoders = SETS["A"]
    return setup, tiny_site_saes(setup.bridge, hooks, transcoders)


def recording(client) -> list:
    """Every run the client's backend is asked to execute, from now on."""
    seen: list = []
    execute = client.backend.execute

    def record(runs, **options):
        seen.extend(runs)
        return execute(runs, **options)

    client.backend.execute = record
    return seen


def test_remote_latents_at_every_site_are_one_request_of_activations(remote):
    setup, saes = remote
    client = setup.make_client()
    runs = recording(client)
    sent = len(setup.fake.requests)
    ref = feature_activations(setup.bridge, PROMPT, saes)
    got = feature_activations(client, PROMPT, saes)
    assert len(setup.fake.requests) == sent + 1
    for hook in saes:
        assert float((got.latents[hook] - ref.latents[hook]).abs().max()) <= TOL, hook
    specs = [spec for run in runs for spec in run.splices.values()]
    assert len(specs) == len(saes) and all("sae" not in s for s in specs)  # no SAE weight sent
    back = setup.fake.results[-1]["results"][0]["back"]
    d_model = setup.bridge.cfg.d_model
    assert {tuple(v.shape) for v in back.values()} == {(1, len(ref.tokens), d_model)}


def test_remote_error_ablation_is_one_request_per_click(remote, pairs):
    """Error terms and latents at every site, through the fake NDIF: one request per click
    (the baselines ride with the first); an error term sends its whole SAE (the
    reconstruction needs every latent), a latent only its own decoder row."""
    setup, saes = remote
    client = setup.make_client()
    runs = recording(client)
    tc = next(h for h, s in saes.items() if s.is_transcoder)
    attn = "blocks.0.hook_attn_out"
    feats = [
        f"{code_of(saes, tc)}ERR:P3",
        f"{code_of(saes, attn)}F{strongest(setup.bridge, saes, attn)}",
    ]
    feats.append(f"{code_of(saes, 'blocks.0.hook_resid_mid')}ERR")
    sent = len(setup.fake.requests)
    for mode in ("mean", "resample", "zero"):
        ref = cv.ablate(setup.bridge, pairs, features=feats, saes=saes, mode=mode)
        got = cv.ablate(client, pairs, features=feats, saes=saes, mode=mode)
        same_ablation(got, ref)
    assert len(setup.fake.requests) == sent + 3
    edited = runs[-1].splices
    whole = edited[("transcoder", 0)]["sae"]
    assert whole["full"] and torch.equal(whole["W_dec"].float(), saes[tc].W_dec)
    assert torch.equal(whole["b_dec"].float(), saes[tc].b_dec)
    row = edited[("attn_out", 0)]["sae"]
    assert not row["full"] and row["W_dec"].shape == (1, setup.bridge.cfg.d_model)
    assert edited[("resid_mid", 0)]["sae"]["full"]
    assert {k: (s["read"], s["write"]) for k, s in edited.items()}[("transcoder", 0)] == (
        "mlp_in",
        "mlp_out",
    )


def test_remote_steer_at_a_transcoder_is_one_request_per_click(remote, pairs):
    setup, saes = remote
    client = setup.make_client()
    tc = next(h for h, s in saes.items() if s.is_transcoder)
    feats = [f"{code_of(saes, tc)}F{strongest(setup.bridge, saes, tc)}"]
    sent = len(setup.fake.requests)
    options = {"features": feats, "saes": saes, "n_tokens": 8, "scale": 8.0}
    ref = steer(setup.bridge, PROMPT, **options, pairs=pairs, progress=False)
    got = steer(client, PROMPT, **options, pairs=pairs)
    # one request: the unedited side (then kept), and the edit clamped to the transcoder
    # latent's prompt maximum, read on the server
    assert len(setup.fake.requests) == sent + 1
    assert got.before_tokens == ref.before_tokens and got.after_tokens == ref.after_tokens
    assert close(got.top_after.probs, ref.top_after.probs) <= TOL
    assert abs(got.metric_after - ref.metric_after) <= TOL
    again = steer(client, PROMPT, **options, mode="ablate")
    assert len(setup.fake.requests) == sent + 2
    ref = steer(setup.bridge, PROMPT, **options, mode="ablate", progress=False)
    assert again.after_tokens == ref.after_tokens


# ----------------------------------------------------------------------------- demo


@pytest.mark.demo
@pytest.mark.slow
def test_demo_error_terms_and_site_saes_on_nnsight_equal_the_bridge(demo_model):
    """The demo model (SmolLM2-135M, 30 layers, GQA): its shipped resid_post SAEs' error
    terms ablated (mean, at a position and everywhere), and — the weights of one shipped SAE
    placed at other sites, a stand-in since the demo ships resid_post SAEs only — an
    attn_out latent steered and a transcoder on MLP 5 (reading after the norm) ablated."""
    nn = cv.load_model(demo_model, backend="nnsight")
    shipped = cv.load_saes("demo")
    s = shipped[shipped.hooks[0]]
    weights = (s.W_enc, s.b_enc, s.W_dec, s.b_dec)
    kind = {"activation": s.activation, "k": s.k, "threshold": s.threshold}
    kind["apply_b_dec_to_input"] = s.apply_b_dec_to_input
    moved = SAESet(
        [
            SAE("blocks.4.hook_attn_out", *weights, **kind),
            SAE("blocks.5.mlp.hook_in", *weights, **kind, output_hook="blocks.5.hook_mlp_out"),
        ]
    )
    prompt = "When John and Mary went to the store, John gave a drink to"
    pairs = cv.PromptPairs(
        [prompt, "When Tom and Anna went to the park, Tom gave a ball to"],
        [
            "When John and Mary went to the store, Mary gave a drink to",
            "When Tom and Anna went to the park, Anna gave a ball to",
        ],
        [" Mary", " Anna"],
        [" John", " Tom"],
    )
    layer = shipped[shipped.hooks[0]].layer
    for feats in ([f"L{layer}ERR:P10"], [f"L{layer}ERR"]):
        a = cv.ablate(demo_model, pairs, features=feats, saes=shipped, mode="mean")
        b = cv.ablate(nn, pairs, features=feats, saes=shipped, mode="mean")
        assert abs(a.ablated - b.ablated) <= TOL and abs(a.clean - b.clean) <= TOL
        assert abs(a.ablated - a.clean) > 1e-3
    a = cv.ablate(demo_model, pairs, features=["L5tcERR:P12"], saes=moved, mode="resample")
    b = cv.ablate(nn, pairs, features=["L5tcERR:P12"], saes=moved, mode="resample")
    assert abs(a.ablated - b.ablated) <= TOL
    latent = int(
        feature_activations(demo_model, prompt, moved).latents[moved.hooks[0]][-1].argmax()
    )
    options = {"features": f"L4attnF{latent}", "saes": moved, "n_tokens": 8}
    a = steer(demo_model, prompt, **options, progress=False)
    b = steer(nn, prompt, **options)
    assert a.after_tokens == b.after_tokens and a.before_tokens == b.before_tokens
    assert close(a.top_after.probs, b.top_after.probs) <= TOL
