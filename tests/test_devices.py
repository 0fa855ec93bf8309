"""Models placed by accelerate (``device_map=``): every analysis gives the plain model's numbers.

No GPU here, so the CPU stands in for sharding with accelerate's offload, which runs the same
code paths: an offloaded block's weights sit on the ``meta`` device outside its forward and
``AlignDevicesHook`` brings them (and the inputs) in. ``device_map`` offloads whole blocks to
"disk" (hooks on the blocks); ``accelerate.cpu_offload`` puts a hook on every leaf module.
Reference: the same weights loaded plainly, on the CPU (float32, 1e-4).
"""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import _devices, has_hooks
from circuitviz.engine._tiny import tiny_tokenizer
from circuitviz.engine.backends._load import from_bridge

pytest.importorskip("accelerate")

TOL = 1e-4
DEVICE_MAPS = {
    "llama": {
        "model.embed_tokens": "cpu",
        "model.rotary_emb": "cpu",
        "model.layers.0": "disk",
        "model.layers.1": "cpu",
        "model.norm": "disk",
        "lm_head": "disk",
    },
    "gpt2": {  # the unembedding is tied to the embedding: both stay together
        "transformer.wte": "cpu",
        "transformer.wpe": "disk",
        "transformer.drop": "cpu",
        "transformer.h.0": "disk",
        "transformer.h.1": "cpu",
        "transformer.ln_f": "disk",
        "lm_head": "cpu",
    },
}


def save_tiny(kind: str, path) -> str:
    """A tiny model's weights and tokenizer as a Hugging Face directory."""
    from_bridge(cv.tiny_model(kind)).lm._module.save_pretrained(path)
    tiny_tokenizer(128).save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module", params=["llama-disk", "gpt2-disk", "llama-cpu_offload"])
def placed(request, tmp_path_factory):
    """(plain model, the same weights placed by accelerate)."""
    kind, how = request.param.split("-")
    root = tmp_path_factory.mktemp(request.param)
    path = save_tiny(kind, root / "model")
    plain = cv.load_model(path, device="cpu")
    if how == "disk":
        model = cv.load_model(path, device_map=DEVICE_MAPS[kind], offload_folder=root / "off")
    else:
        from accelerate import cpu_offload

        model = cv.load_model(path, device="cpu")
        cpu_offload(model.original_model, execution_device=torch.device("cpu"))
    return plain, model


def diff(a, b) -> float:
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    assert a.shape == b.shape
    return float((a - b).abs().max())


def test_weights_are_offloaded_outside_a_forward(placed):
    _, model = placed

    def devices():
        return {p.device.type for p in model.blocks[0].attn.parameters()}

    # (The GPT-2 bridge keeps its own q/k/v split of c_attn in memory.)
    assert "meta" in devices()  # what the engine must not read directly
    with _devices.onloaded(model, model.blocks[0].attn):
        assert devices() == {"cpu"}
    assert "meta" in devices()
    (W_O,) = _devices.read(model, model.blocks[0].attn, "W_O")
    assert W_O.device.type == "cpu" and W_O.abs().sum() > 0
    assert "meta" in devices()


def test_forward_and_patching(placed, pairs):
    plain, model = placed
    tokens = plain.to_tokens("t1 t2 t3 t4")
    with torch.no_grad():
        assert diff(model(tokens), plain(tokens)) <= TOL
    for over in ("heads", "resid_pre", "mlp_out"):
        ref = cv.patch(plain, pairs, over=over, progress=False)
        got = cv.patch(model, pairs, over=over, progress=False)
        assert diff(got.values, ref.values) <= TOL and abs(got.clean - ref.clean) <= TOL
    ref = cv.ablate(plain, pairs, heads=["L1H0", "L0H2"], mode="mean")
    got = cv.ablate(model, pairs, heads=["L1H0", "L0H2"], mode="mean")
    assert abs(got.ablated - ref.ablated) <= TOL and abs(got.clean - ref.clean) <= TOL
    assert not has_hooks(model)


def test_attention(placed):
    plain, model = placed
    ref, got = cv.attention(plain, "t1 t2 t3 t1 t2 t3"), cv.attention(model, "t1 t2 t3 t1 t2 t3")
    assert max(diff(a, b) for a, b in zip(got.patterns, ref.patterns, strict=True)) <= TOL


def test_eap_graph(placed, pairs):
    plain, model = placed
    ref = cv.circuit(plain, pairs, method="eap", progress=False)
    got = cv.circuit(model, pairs, method="eap", progress=False)
    assert diff(got.scores, ref.scores) <= TOL


@pytest.mark.parametrize("by", ["heads", "layers", "heads_by_pos"])
def test_direct_logit_attribution(placed, pairs, by):
    plain, model = placed
    ref, got = cv.logit_attribution(plain, pairs, by=by), cv.logit_attribution(model, pairs, by=by)
    assert diff(got.values, ref.values) <= TOL
    for name, value in ref.extra["bias_terms"].items():
        assert abs(got.extra["bias_terms"][name] - value) <= TOL


def test_logit_lens(placed):
    plain, model = placed
    ref = cv.logit_lens(plain, "t1 t2 t3 t1 t2", answer=" t3")
    got = cv.logit_lens(model, "t1 t2 t3 t1 t2", answer=" t3")
    assert diff(got.top_probs, ref.top_probs) <= TOL and got.top_tokens == ref.top_tokens
    assert diff(got.answer_prob, ref.answer_prob) <= TOL


def test_path_patching_and_copy_scores(placed, pairs):
    from circuitviz.engine._roles import copy_scores

    plain, model = placed
    ref = cv.path_patch(plain, pairs, senders="heads", receivers="logits", progress=False)
    got = cv.path_patch(model, pairs, senders="heads", receivers="logits", progress=False)
    assert diff(got.values, ref.values) <= TOL
    resid = torch.randn(4, plain.cfg.d_model, generator=torch.Generator().manual_seed(0))
    answers = torch.tensor([1, 5, 9, 3])
    for a, b in zip(
        copy_scores(plain, resid, answers), copy_scores(model, resid, answers), strict=True
    ):
        assert diff(a, b) == 0.0


def test_steer(placed):
    from tests._tiny_sae import tiny_saes

    plain, model = placed
    saes = tiny_saes(plain)
    prompt = "t1 t2 t3 t1 t2"
    _, acts = plain.run_with_cache(plain.to_tokens(prompt), names_filter=saes[1].hook_name)
    feature = "L1F" + str(int(saes[1].encode(acts[saes[1].hook_name][0, -1]).argmax()))  # fires
    kw = dict(features=feature, saes=saes, scale=4.0, n_tokens=4, answer=" t3", wrong_answer=" t7")
    ref, got = cv.steer(plain, prompt, **kw), cv.steer(model, prompt, **kw)
    assert (got.before, got.after) == (ref.before, ref.after) and got.values == ref.values
    assert abs(got.metric_after - ref.metric_after) <= TOL
    assert abs(got.metric_before - ref.metric_before) <= TOL


def test_feature_circuit_and_logit_effects(placed, pairs):
    from circuitviz.engine.features._stats import logit_effects_of, top_promoted
    from circuitviz.engine.features._supernodes import logit_effects
    from tests._tiny_sae import tiny_saes

    plain, model = placed
    saes = tiny_saes(plain)
    hook = saes.hooks[1]
    assert (
        diff(logit_effects(model, saes, hook, [0, 3]), logit_effects(plain, saes, hook, [0, 3]))
        <= TOL
    )
    sae = saes[hook]
    assert diff(logit_effects_of(model, sae, 3), logit_effects_of(plain, sae, 3)) <= TOL
    assert (top_promoted(model, sae, k=5) == top_promoted(plain, sae, k=5)).all()
    ref = cv.circuit(plain, pairs, saes=saes, progress=False)
    got = cv.circuit(model, pairs, saes=saes, progress=False)
    assert got.ids == ref.ids and (got.src == ref.src).all() and (got.dst == ref.dst).all()
    assert diff(got.weight, ref.weight) <= TOL and diff(got.node_scores, ref.node_scores) <= TOL


def test_feature_circuit_with_a_post_norm_transcoder(placed, pairs):
    """A transcoder reading ln2's output: its receiver gradients go back through ln2, called
    on an offloaded block's weights."""
    from tests._tiny_sae import tiny_site_saes

    plain, model = placed
    saes = tiny_site_saes(plain, [], [("blocks.0.ln2.hook_out", "blocks.0.hook_mlp_out")])
    ref = cv.circuit(plain, pairs, saes=saes, progress=False)
    got = cv.circuit(model, pairs, saes=saes, progress=False)
    assert got.ids == ref.ids and (got.src == ref.src).all() and (got.dst == ref.dst).all()
    assert diff(got.weight, ref.weight) <= TOL and diff(got.node_scores, ref.node_scores) <= TOL


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def nnsight_placed(request, tmp_path_factory):
    """(plain nnsight model, the same weights over a disk-offloading ``device_map``)."""
    pytest.importorskip("nnsight")
    kind = request.param
    root = tmp_path_factory.mktemp(f"nnsight-{kind}")
    path = save_tiny(kind, root / "model")
    plain = cv.load_model(path, backend="nnsight", device="cpu")
    model = cv.load_model(
        path, backend="nnsight", device_map=DEVICE_MAPS[kind], offload_folder=root / "off"
    )
    assert "disk" in model.lm._module.hf_device_map.values()
    return plain, model


def test_nnsight_with_an_offloading_device_map(nnsight_placed, pairs):
    """nnsight over a ``device_map`` with offloaded blocks: the ported analyses (EAP reads
    ``o_proj``'s and the q/k/v weights inside the trace, from the offload store) equal plain
    nnsight's."""
    plain, model = nnsight_placed
    for over in ("heads", "mlp_out"):
        ref = cv.patch(plain, pairs, over=over, progress=False)
        assert diff(cv.patch(model, pairs, over=over, progress=False).values, ref.values) <= TOL
    ref, got = (cv.ablate(m, pairs, heads=["L1H0"], mode="mean") for m in (plain, model))
    assert abs(got.ablated - ref.ablated) <= TOL
    ref, got = (cv.attention(m, "t1 t2 t3 t1 t2") for m in (plain, model))
    assert max(diff(a, b) for a, b in zip(got.patterns, ref.patterns, strict=True)) <= TOL
    for method in ("eap", "eap-ig"):
        ref, got = (cv.circuit(m, pairs, method=method, progress=False) for m in (plain, model))
        assert diff(got.scores, ref.scores) <= TOL


def test_nnsight_toolkit_with_an_offloading_device_map(nnsight_placed, pairs):
    """The toolkit programs read the final norm, ``lm_head``, ``o_proj`` and q/k/v weights
    inside the trace: offloaded ones come from the offload store (read directly they are
    ``meta``, and path patching silently lost a layer's senders)."""
    plain, model = nnsight_placed
    for by in ("heads", "layers", "heads_by_pos"):
        ref, got = (cv.logit_attribution(m, pairs, by=by) for m in (plain, model))
        assert diff(got.values, ref.values) <= TOL
        for name, value in ref.extra["bias_terms"].items():
            assert abs(got.extra["bias_terms"][name] - value) <= TOL
    ref, got = (cv.logit_lens(m, "t1 t2 t3 t1 t2", answer=" t3") for m in (plain, model))
    assert diff(got.top_probs, ref.top_probs) <= TOL and got.top_tokens == ref.top_tokens
    assert diff(got.answer_prob, ref.answer_prob) <= TOL
    for receivers, receiver_input in (("logits", "resid"), (["L1H0", "L1H2"], "q")):
        ref, got = (
            cv.path_patch(
                m, pairs, receivers=receivers, receiver_input=receiver_input, progress=False
            )
            for m in (plain, model)
        )
        assert diff(got.values, ref.values) <= TOL
    ref, got = (cv.head_roles(m, pairs, progress=False) for m in (plain, model))
    assert got.roles == ref.roles and ref.scores.keys() == got.scores.keys()
    for name, value in ref.scores.items():
        assert diff(got.scores[name].nan_to_num(7.0), value.nan_to_num(7.0)) <= TOL


def test_nnsight_logit_effects_with_an_offloading_device_map(nnsight_placed, request):
    """SAE latents' logit effects read ``lm_head`` and the final norm off the weights (no
    forward pass): offloaded ones from the offload store."""
    from circuitviz.engine.backends._features import unembedded
    from tests._tiny_sae import tiny_saes

    plain, model = nnsight_placed
    kind = request.node.callspec.params["nnsight_placed"]
    sae = tiny_saes(cv.tiny_model(kind))[1]  # the weights save_tiny saved
    ref, got = (unembedded(m, sae, [0, 3, 5], 5) for m in (plain, model))
    assert all((got[k] == ref[k]).all() for k in ("up_i", "down_i"))
    assert diff(got["up_v"], ref["up_v"]) <= TOL and diff(got["down_v"], ref["down_v"]) <= TOL


def test_bad_placements_are_refused(tmp_path):
    path = save_tiny("llama", tmp_path / "model")
    with pytest.raises(cv.InputError, match="offload_folder"):
        cv.load_model(path, device_map={"": "disk"})
    with pytest.raises(cv.InputError, match="device_map"):
        cv.load_model(path, device_map=3)
    with pytest.raises(cv.InputError, match="goes with device_map"):
        cv.load_model(path, offload_folder=tmp_path)
    with pytest.raises(cv.InputError, match="loaded bridge"):
        cv.load_model(cv.tiny_model("llama"), device_map="auto")
    with pytest.raises(cv.InputError, match="drop device_map"):
        cv.load_model("org/model", backend="nnsight", remote=True, device_map="auto")
