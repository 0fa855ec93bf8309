"""load_saes over every format it reads (files written here, in tmp dirs), hf:// handling
with the download replaced, every error path, and check_saes against the tiny models."""

from __future__ import annotations

import json
import sys
import types

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import circuitviz
from circuitviz.engine import InputError, has_hooks
from circuitviz.engine.features import (
    SAE,
    SAESet,
    _loaders,
    check_saes,
    load_saes,
    reference_corpus,
    sae_quality,
)

D, F = 32, 16  # the tiny models' d_model, and a small dictionary


def weights(d_in=D, d_sae=F, d_out=None, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    d_out = d_in if d_out is None else d_out
    return {
        "W_enc": torch.randn(d_in, d_sae, generator=g).to(dtype),
        "b_enc": torch.randn(d_sae, generator=g).to(dtype),
        "W_dec": torch.randn(d_sae, d_out, generator=g).to(dtype),
        "b_dec": torch.randn(d_out, generator=g).to(dtype),
    }


def write_saelens(directory, hook="blocks.1.hook_resid_post", *, cfg=None, w=None, **kw):
    directory.mkdir(parents=True, exist_ok=True)
    w = weights(**kw) if w is None else w
    base = {
        "architecture": "topk",
        "d_in": D,
        "d_sae": F,
        "activation_fn": "topk",
        "activation_fn_kwargs": {"k": 4},
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "hook_name": hook,
    }
    base.update(cfg or {})
    (directory / "cfg.json").write_text(json.dumps(base))
    save_file(w, str(directory / "sae_weights.safetensors"))
    return w


def write_npz(path, **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    w = {k: v.numpy() for k, v in weights(**kw).items()}
    w["threshold"] = np.full(F, 0.1, dtype=np.float32)
    np.savez(path, **w)
    return w


def write_circuit_tracer(directory, n_layers=2, *, config=None, extra=None, skip=()):
    directory.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_kind": "transcoder_set",
        "feature_input_hook": "mlp.hook_in",
        "feature_output_hook": "hook_mlp_out",
    }
    cfg.update(config or {})
    (directory / "config.yaml").write_text("\n".join(f"{k}: {v}" for k, v in cfg.items()))
    out = []
    for layer in range(n_layers):
        w = weights(seed=layer)
        w["W_enc"] = w["W_enc"].T.contiguous()  # circuit-tracer: [d_transcoder, d_model]
        w.update(extra or {})
        if layer not in skip:
            save_file(w, str(directory / f"layer_{layer}.safetensors"))
        out.append(w)
    return out


def logits_of(model):
    with torch.no_grad():
        return model(torch.tensor([[1, 2, 3, 4]]), return_type="logits").clone()


# -- SAELens ----------------------------------------------------------------------------


def test_saelens_topk_round_trip(tmp_path):
    w = write_saelens(tmp_path / "sae", dtype=torch.float16)
    saes = load_saes(tmp_path / "sae", device="cpu")
    assert isinstance(saes, SAESet) and saes.hooks == ["blocks.1.hook_resid_post"]
    sae = saes["blocks.1.hook_resid_post"]
    assert (sae.activation, sae.k, sae.apply_b_dec_to_input) == ("topk", 4, True)
    assert sae.W_enc.dtype == torch.float32  # float32 whatever the file stores
    assert torch.equal(sae.W_dec, w["W_dec"].float())
    assert sae.meta["format"] == "saelens"
    x = torch.randn(3, D)
    assert ((sae.encode(x) > 0).sum(-1) <= 4).all()
    half = load_saes(tmp_path / "sae", device="cpu", dtype=torch.float16)
    assert half[1].W_enc.dtype == torch.float16


def test_saelens_standard_and_jumprelu(tmp_path):
    write_saelens(tmp_path / "relu", cfg={"architecture": "standard", "activation_fn": "relu"})
    relu = load_saes(tmp_path / "relu", device="cpu")[1]
    assert relu.activation == "relu" and relu.k is None
    w = weights()
    w["threshold"] = torch.full((F,), 0.5)
    write_saelens(tmp_path / "jump", cfg={"architecture": "jumprelu"}, w=w)
    jump = load_saes(tmp_path / "jump", device="cpu")[1]
    assert jump.activation == "jumprelu" and torch.equal(jump.threshold, w["threshold"])
    w = weights()
    w["log_threshold"] = torch.zeros(F)
    write_saelens(tmp_path / "logt", cfg={"architecture": "jumprelu"}, w=w)
    assert torch.allclose(load_saes(tmp_path / "logt", device="cpu")[1].threshold, torch.ones(F))


def test_a_directory_of_saelens_directories_is_one_set(tmp_path):
    write_saelens(tmp_path / "set" / "b", "blocks.1.hook_resid_post", seed=1)
    write_saelens(tmp_path / "set" / "a", "blocks.0.hook_resid_post", seed=0)
    saes = load_saes(tmp_path / "set", device="cpu")
    assert saes.hooks == ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]
    assert saes.name == str(tmp_path / "set")
    # a file inside the directory also works
    assert load_saes(tmp_path / "set" / "a" / "cfg.json", device="cpu").hooks == [
        "blocks.0.hook_resid_post"
    ]


def test_hook_name_overrides_one_sae_and_is_refused_for_several(tmp_path):
    write_saelens(tmp_path / "one")
    assert load_saes(tmp_path / "one", hook_name="blocks.0.hook_resid_pre", device="cpu").hooks == [
        "blocks.0.hook_resid_pre"
    ]
    write_saelens(tmp_path / "two" / "a", "blocks.0.hook_resid_post")
    write_saelens(tmp_path / "two" / "b", "blocks.1.hook_resid_post")
    with pytest.raises(InputError, match="holds several"):
        load_saes(tmp_path / "two", hook_name="blocks.0.hook_resid_post")


# -- Gemma Scope ------------------------------------------------------------------------


def test_gemma_scope_hook_from_the_path(tmp_path):
    path = tmp_path / "gemma-scope-2b-pt-res" / "layer_1" / "width_16k" / "average_l0_82"
    w = write_npz(path / "params.npz")
    saes = load_saes(path / "params.npz", device="cpu")
    sae = saes["blocks.1.hook_resid_post"]
    assert sae.activation == "jumprelu" and sae.output_hook is None
    assert np.array_equal(sae.threshold.numpy(), w["threshold"])
    assert torch.equal(sae.W_enc, torch.from_numpy(w["W_enc"]))
    # the directory holding it, and the release directory above, load the same
    assert load_saes(path, device="cpu").hooks == ["blocks.1.hook_resid_post"]
    assert load_saes(tmp_path / "gemma-scope-2b-pt-res", device="cpu").hooks == [
        "blocks.1.hook_resid_post"
    ]


def test_gemma_scope_releases_and_ambiguity(tmp_path):
    mlp = tmp_path / "gemma-scope-2b-pt-mlp" / "layer_0" / "width_16k" / "l0_10" / "params.npz"
    write_npz(mlp)
    assert load_saes(mlp, device="cpu").hooks == ["blocks.0.hook_mlp_out"]
    tc = tmp_path / "gemma-scope-2b-pt-transcoders" / "layer_1" / "w" / "params.npz"
    write_npz(tc)
    sae = load_saes(tc, device="cpu")[1]
    assert (sae.hook_name, sae.output_hook) == ("blocks.1.mlp.hook_in", "blocks.1.hook_mlp_out")
    att = tmp_path / "gemma-scope-2b-pt-att" / "layer_1" / "params.npz"
    write_npz(att)
    with pytest.raises(InputError, match="attention-output"):
        load_saes(att)
    bare = tmp_path / "somewhere" / "params.npz"
    write_npz(bare)
    with pytest.raises(InputError, match=r"no layer_<L>.*hook_name="):
        load_saes(bare)
    assert load_saes(bare, hook_name="blocks.0.hook_resid_post", device="cpu").hooks == [
        "blocks.0.hook_resid_post"
    ]
    two = tmp_path / "layer_1" / "layer_2" / "params.npz"
    write_npz(two)
    with pytest.raises(InputError, match="several"):
        load_saes(two)


# -- circuit-tracer ---------------------------------------------------------------------


def test_circuit_tracer_transcoders(tmp_path, tiny_llama):
    files = write_circuit_tracer(tmp_path / "tc")
    saes = load_saes(tmp_path / "tc", device="cpu")
    assert saes.hooks == ["blocks.0.mlp.hook_in", "blocks.1.mlp.hook_in"]
    for layer, sae in enumerate(saes.values()):
        assert sae.is_transcoder and sae.output_hook == f"blocks.{layer}.hook_mlp_out"
        assert torch.equal(sae.W_enc, files[layer]["W_enc"].T)  # back to [d_model, d]
        assert sae.activation == "relu"
    assert check_saes(tiny_llama, saes) is saes
    assert not has_hooks(tiny_llama)


def test_circuit_tracer_jumprelu_topk_and_listed_files(tmp_path):
    write_circuit_tracer(tmp_path / "j", extra={"activation_function.threshold": torch.ones(F)})
    assert {s.activation for s in load_saes(tmp_path / "j", device="cpu").values()} == {"jumprelu"}
    write_circuit_tracer(tmp_path / "k", config={"activation": "topk", "k": 3})
    assert {s.k for s in load_saes(tmp_path / "k", device="cpu").values()} == {3}
    d = tmp_path / "listed"
    write_circuit_tracer(d)
    (d / "layer_0.safetensors").rename(d / "first.safetensors")
    (d / "layer_1.safetensors").rename(d / "second.safetensors")
    (d / "config.yaml").write_text(
        "model_kind: transcoder_set\nfeature_input_hook: hook_resid_mid\n"
        "feature_output_hook: hook_mlp_out\ntranscoders:\n"
        "  - first.safetensors\n  - second.safetensors\n"
    )
    assert load_saes(d, device="cpu").hooks == [
        "blocks.0.hook_resid_mid",
        "blocks.1.hook_resid_mid",
    ]


def test_circuit_tracer_refusals(tmp_path):
    write_circuit_tracer(tmp_path / "gap", n_layers=3, skip=(1,))
    with pytest.raises(InputError, match=r"layer_1\.safetensors"):
        load_saes(tmp_path / "gap")
    write_circuit_tracer(tmp_path / "skip", extra={"W_skip": torch.zeros(D, D)})
    with pytest.raises(InputError, match="skip connection"):
        load_saes(tmp_path / "skip")
    write_circuit_tracer(tmp_path / "clt", config={"model_kind": "cross_layer_transcoder"})
    with pytest.raises(InputError, match="cross-layer"):
        load_saes(tmp_path / "clt")
    write_circuit_tracer(tmp_path / "nohook", config={"feature_input_hook": "''"})
    with pytest.raises(InputError, match="feature_input_hook"):
        load_saes(tmp_path / "nohook")


# -- hf:// ------------------------------------------------------------------------------


@pytest.fixture
def fake_hub(monkeypatch, tmp_path):
    """huggingface_hub.snapshot_download replaced by a local directory; records calls."""
    calls = []
    root = tmp_path / "hub"

    def snapshot_download(repo_id, allow_patterns=None, **kw):
        calls.append((repo_id, allow_patterns))
        if repo_id == "offline/repo":
            raise OSError("We couldn't connect to 'https://huggingface.co'")
        return str(root / repo_id.replace("/", "--"))

    monkeypatch.setitem(
        sys.modules, "huggingface_hub", types.SimpleNamespace(snapshot_download=snapshot_download)
    )
    return root, calls


def test_hf_addresses(fake_hub):
    root, calls = fake_hub
    write_saelens(root / "org--repo" / "layer_1_res", "blocks.1.hook_resid_post")
    write_saelens(root / "org--repo" / "layer_0_res", "blocks.0.hook_resid_post")
    whole = load_saes("hf://org/repo", device="cpu")
    assert whole.name == "hf://org/repo" and len(whole) == 2
    one = load_saes("hf://org/repo/layer_1_res/", device="cpu")
    assert one.hooks == ["blocks.1.hook_resid_post"]
    assert calls == [("org/repo", None), ("org/repo", ["layer_1_res", "layer_1_res/**"])]


def test_hf_errors(fake_hub):
    with pytest.raises(InputError, match=r"offline/repo.*huggingface-cli download offline/repo"):
        load_saes("hf://offline/repo")
    for bad in ("hf://org", "hf:///repo", "hf://org/repo/../x"):
        with pytest.raises(InputError, match="not a Hugging Face address"):
            load_saes(bad)
    with pytest.raises(InputError, match="has no 'missing'"):
        load_saes("hf://org/repo/missing")


# -- bad files --------------------------------------------------------------------------


def test_truncated_and_corrupt_files(tmp_path):
    write_saelens(tmp_path / "trunc")
    f = tmp_path / "trunc" / "sae_weights.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(InputError, match=r"sae_weights\.safetensors.*truncated or corrupt"):
        load_saes(tmp_path / "trunc")
    write_saelens(tmp_path / "junk")
    (tmp_path / "junk" / "sae_weights.safetensors").write_bytes(b"\x00" * 7)
    with pytest.raises(InputError, match="truncated or corrupt"):
        load_saes(tmp_path / "junk")
    write_saelens(tmp_path / "json")
    (tmp_path / "json" / "cfg.json").write_text("{not json")
    with pytest.raises(InputError, match=r"cfg\.json is not valid JSON"):
        load_saes(tmp_path / "json")
    npz = tmp_path / "layer_1" / "params.npz"
    write_npz(npz)
    npz.write_bytes(npz.read_bytes()[:100])
    with pytest.raises(InputError, match=r"params\.npz is not a readable"):
        load_saes(npz)
    write_saelens(tmp_path / "noweights")
    (tmp_path / "noweights" / "sae_weights.safetensors").unlink()
    with pytest.raises(InputError, match="is missing"):
        load_saes(tmp_path / "noweights")


def test_missing_keys_wrong_shapes_and_non_finite(tmp_path):
    w = weights()
    del w["b_enc"]
    write_saelens(tmp_path / "keys", w=w)
    with pytest.raises(InputError, match=r"sae_weights\.safetensors lacks b_enc"):
        load_saes(tmp_path / "keys")
    w = weights()
    w["W_dec"] = torch.randn(F + 1, D)
    write_saelens(tmp_path / "shape", w=w)
    with pytest.raises(InputError, match=r"sae_weights\.safetensors.*W_dec has shape \(17, 32\)"):
        load_saes(tmp_path / "shape")
    w = weights()
    w["W_enc"][3, 2] = float("nan")
    write_saelens(tmp_path / "nan", w=w)
    with pytest.raises(InputError, match=r"sae_weights\.safetensors.*non-finite"):
        load_saes(tmp_path / "nan")
    write_saelens(tmp_path / "cfgshape", cfg={"d_sae": 99})
    with pytest.raises(InputError, match=r"d_sae=99.*don't belong together"):
        load_saes(tmp_path / "cfgshape")
    npz = tmp_path / "layer_2" / "params.npz"
    path = write_npz(npz)
    del path["threshold"]
    np.savez(npz, **path)
    with pytest.raises(InputError, match=r"params\.npz lacks threshold"):
        load_saes(npz)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"architecture": "gated"}, "architecture 'gated' is not supported"),
        ({"architecture": "standard", "activation_fn": "tanh-relu"}, "only 'relu'"),
        ({"normalize_activations": "expected_average_only_in"}, "normalize_activations"),
        ({"hook_head_index": 3}, "one attention head"),
        ({"rescale_acts_by_decoder_norm": True}, "rescale_acts_by_decoder_norm"),
        ({"activation_fn_kwargs": {}}, "needs k"),
        ({"hook_name": None}, "names no hook_name"),
    ],
)
def test_unsupported_saelens_options(tmp_path, cfg, message):
    write_saelens(tmp_path / "s", cfg=cfg)
    with pytest.raises(InputError, match=message):
        load_saes(tmp_path / "s")


def test_bad_sources_and_options(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_saes(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="No SAE found"):
        load_saes(tmp_path / "empty")
    with pytest.raises(InputError, match="takes 'demo', a path"):
        load_saes(42)
    write_saelens(tmp_path / "ok")
    with pytest.raises(InputError, match="floating torch dtype"):
        load_saes(tmp_path / "ok", dtype=torch.int8)
    with pytest.raises(InputError, match="not a torch device"):
        load_saes(tmp_path / "ok", device="toaster")
    with pytest.raises(InputError, match="hook_name must be"):
        load_saes(tmp_path / "ok", hook_name=3)
    write_saelens(tmp_path / "dup" / "a", "blocks.0.hook_resid_post")
    write_saelens(tmp_path / "dup" / "b", "blocks.0.hook_resid_post")
    with pytest.raises(InputError, match=r"both read 'blocks\.0\.hook_resid_post'"):
        load_saes(tmp_path / "dup")


def test_demo_without_weights_and_with_stats(tmp_path, monkeypatch, tiny_llama):
    from circuitviz.engine.features import feature_stats, save_feature_stats
    from tests._tiny_sae import tiny_saes

    monkeypatch.setattr(_loaders, "DEMO_DIR", tmp_path / "demo")
    write_saelens(tmp_path / "demo" / "blocks.1.hook_resid_post")
    (tmp_path / "demo" / "blocks.1.hook_resid_post" / "sae_weights.safetensors").unlink()
    with pytest.raises(InputError, match="demo SAE weights are not installed"):
        load_saes("demo")
    write_saelens(tmp_path / "demo" / "blocks.1.hook_resid_post")
    assert load_saes("demo", device="cpu").stats == {}
    # The shipped statistics file is the explorer's (scripts/feature_stats_demo.py).
    texts = ["t1 t2 t3 t4 t5", "t9 t8 t7 t6"]
    stats = feature_stats(tiny_llama, tiny_saes(tiny_llama), texts, progress=False)
    save_feature_stats(stats, tmp_path / "demo" / "feature_stats.npz")
    loaded = load_saes("demo", device="cpu")
    assert loaded.name == "demo" and set(loaded.stats) == set(stats)
    for hook, s in stats.items():
        assert (loaded.stats[hook].top_values == s.top_values).all()


# -- check_saes -------------------------------------------------------------------------


def sae_at(hook, d_in=D, d_out=None, output_hook=None):
    w = weights(d_in=d_in, d_out=d_out)
    return SAE(hook, **w, output_hook=output_hook)


def test_check_saes_accepts_what_fits(tiny_llama, tiny_gpt2):
    before = logits_of(tiny_llama)
    saes = [sae_at("blocks.0.hook_resid_post"), sae_at("blocks.1.mlp.hook_post", d_in=64)]
    assert check_saes(tiny_llama, saes).hooks == [
        "blocks.0.hook_resid_post",
        "blocks.1.mlp.hook_post",
    ]
    # a hook of no known kind is measured: z is [batch, pos, head, d_head]
    d_head = tiny_llama.cfg.d_head
    assert len(check_saes(tiny_llama, sae_at("blocks.0.attn.hook_z", d_in=d_head))) == 1
    assert check_saes(tiny_gpt2, circuitviz.engine.features.as_sae_set(saes[0]))
    assert not has_hooks(tiny_llama) and torch.equal(logits_of(tiny_llama), before)


@pytest.mark.parametrize(
    ("sae", "message"),
    [
        (lambda: sae_at("blocks.9.hook_resid_post"), r"no hook for .*Close names"),
        (lambda: sae_at("blocks.0.hook_resid_post", d_in=24), "width 24.*width 32"),
        (lambda: sae_at("blocks.0.mlp.hook_post"), "width 32.*width 64"),
        (lambda: sae_at("blocks.0.attn.hook_z"), "width 32.*width 8"),
        (
            lambda: sae_at("blocks.0.mlp.hook_in", d_out=20, output_hook="blocks.0.hook_mlp_out"),
            "writes 'blocks.0.hook_mlp_out' with width 20",
        ),
        (
            lambda: sae_at("blocks.0.mlp.hook_in", output_hook="blocks.0.hook_nothing"),
            "writes 'blocks.0.hook_nothing'",
        ),
    ],
)
def test_check_saes_refuses_what_does_not_fit(tiny_llama, sae, message):
    before = logits_of(tiny_llama)
    with pytest.raises(InputError, match=message):
        check_saes(tiny_llama, sae())
    assert not has_hooks(tiny_llama) and torch.equal(logits_of(tiny_llama), before)


def test_check_saes_bad_arguments(tiny_llama):
    with pytest.raises(InputError, match="Expected a model"):
        check_saes("demo", sae_at("blocks.0.hook_resid_post"))
    with pytest.raises(InputError, match="saes must be"):
        check_saes(tiny_llama, "demo")
    if torch.cuda.is_available():  # pragma: no cover - only where there is a GPU
        with pytest.raises(InputError, match="move the SAEs"):
            check_saes(tiny_llama, sae_at("blocks.0.hook_resid_post").to("cuda"))


# -- the corpus -------------------------------------------------------------------------


def test_reference_corpus_splits(tiny_llama):
    ref = reference_corpus(split="reference")
    train = reference_corpus(split="train")
    assert len(ref) > 100 and len(train) > 5 * len(ref)
    assert not set(ref) & set(train)
    assert reference_corpus(tiny_llama) == ref  # same texts for every model
    assert any(" gave the " in t for t in train)  # the IOI stories are there
    assert any(t.startswith("json") for t in ref + train)  # and the docstrings
    with pytest.raises(InputError, match="split must be"):
        reference_corpus(split="test")
    with pytest.raises(InputError, match="Expected a model"):
        reference_corpus("demo")


# -- quality figures --------------------------------------------------------------------


def test_sae_quality_of_an_exact_sae(tiny_llama):
    """relu(x) − relu(−x) = x: FVE 1, L0 = d (one of each ± pair), loss unchanged."""
    eye = torch.eye(D)
    exact = SAE(
        "blocks.0.hook_resid_post",
        W_enc=torch.cat([eye, -eye], 1),
        b_enc=torch.zeros(2 * D),
        W_dec=torch.cat([eye, -eye], 0),
        b_dec=torch.zeros(D),
    )
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(0, tiny_llama.cfg.d_vocab, (4, 12), generator=g)
    before = logits_of(tiny_llama)
    q = sae_quality(tiny_llama, SAESet([exact]), tokens, progress=False)["blocks.0.hook_resid_post"]
    assert q["fve"] == pytest.approx(1.0, abs=1e-5)
    assert q["fve_typical"] == pytest.approx(1.0, abs=1e-5) and 0 <= q["outlier_share"] < 0.5
    assert q["l0"] == pytest.approx(D, abs=0.1) and q["dead_share"] == 0.0
    assert q["tokens"] == 4 * 11 and abs(q["loss_increase"]) < 1e-4
    assert not has_hooks(tiny_llama) and torch.equal(logits_of(tiny_llama), before)
    worse = SAE("blocks.0.hook_resid_post", **weights())
    bad = sae_quality(tiny_llama, SAESet([worse]), tokens, progress=False)
    assert bad["blocks.0.hook_resid_post"]["fve"] < 0.5
    with pytest.raises(InputError, match="tokens must be"):
        sae_quality(tiny_llama, SAESet([exact]), tokens[:, :1])
