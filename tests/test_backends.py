"""The backend seam: nnsight gives the TransformerLens bridge's numbers, site for site.

Reference for every figure here: circuitviz's bridge analyses (``cv.patch``, ``cv.ablate``,
``cv.attention`` on a ``TransformerBridge``), which ``test_patching_exact.py`` and
``test_analyses.py`` check against TransformerLens itself. The nnsight model has the same
weights (``load_model(bridge, backend="nnsight")``); tolerance 1e-4, float32.
"""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks
from circuitviz.engine.backends import _analyses, _program, backend_of

pytest.importorskip("nnsight")

TOL = 1e-4
OVERS = ("resid_pre", "attn_out", "mlp_out", "heads", "heads_by_pos", "q", "k", "v")


def logits_of(model, tokens):
    with torch.no_grad():
        if hasattr(model, "lm"):
            return model.lm._module(tokens).logits
        return model(tokens)


def close(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return float((a.float() - b.float()).abs().max())


@pytest.mark.parametrize("over", OVERS)
def test_patch_equals_bridge_on_every_target(both, pairs, over):
    bridge, nn = both
    ref = cv.patch(bridge, pairs, over=over, progress=False)
    got = cv.patch(nn, pairs, over=over, progress=False)
    assert got.axes == ref.axes and got.labels == ref.labels and got.tokens == ref.tokens
    assert close(got.values, ref.values) <= TOL
    assert abs(got.clean - ref.clean) <= TOL and abs(got.corrupted - ref.corrupted) <= TOL
    assert got.extra["backend"] == "nnsight" and got.extra["requests"] == 1


def answer_margin(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 3] - logits[:, 7]  # a custom metric: needs the logits themselves


@pytest.mark.parametrize(
    "metric", ["normalized_logit_diff", "answer_prob", "kl", answer_margin], ids=str
)
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_patch_equals_bridge_for_every_metric_and_direction(both, pairs, metric, direction):
    bridge, nn = both
    ref = cv.patch(bridge, pairs, over="heads", metric=metric, direction=direction, progress=False)
    got = cv.patch(nn, pairs, over="heads", metric=metric, direction=direction, progress=False)
    # The random tiny models' clean − corrupted gap is small, and normalising divides by it:
    # relative to the map's size, the tolerance is the same 1e-4.
    assert close(got.values, ref.values) <= TOL * max(1.0, float(ref.values.abs().max()))
    assert got.metric == ref.metric


def test_patch_in_small_passes_equals_one_pass(both, pairs):
    """``max_rows`` splits the conditions over several traces of the same request."""
    _, nn = both
    whole = cv.patch(nn, pairs, over="heads_by_pos", progress=False)
    split = cv.patch(nn, pairs, over="heads_by_pos", max_rows=5, progress=False)
    assert split.extra["forward_passes"] > whole.extra["forward_passes"]
    assert close(split.values, whole.values) <= TOL


def test_the_seam_on_the_bridge_gives_the_bridges_own_numbers(both, pairs):
    """The seam's code, run by the bridge backend, equals the bridge's growing-batch patching:
    the two backends share one implementation of what an analysis asks."""
    bridge, _ = both
    for over in ("heads", "mlp_out", "v"):
        ref = cv.patch(bridge, pairs, over=over, progress=False)
        seam = _analyses.patch(bridge, pairs, over=over, progress=False)
        assert close(seam.values, ref.values) <= TOL
        assert seam.extra["backend"] == "bridge"
    assert not has_hooks(bridge)


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_ablate_equals_bridge(both, pairs, mode):
    bridge, nn = both
    spec = {"heads": ["L1H2", "L0H1:P2"], "mlps": ["MLP0:P4"], "mode": mode}
    ref = cv.ablate(bridge, pairs, **spec)
    got = cv.ablate(nn, pairs, **spec)
    assert got.targets == ref.targets
    assert abs(got.ablated - ref.ablated) <= TOL
    assert abs(got.clean - ref.clean) <= TOL and abs(got.corrupted - ref.corrupted) <= TOL
    for key in ("clean", "corrupted", "ablated"):
        assert (
            max(map(abs, torch.tensor(got.per_prompt[key]) - torch.tensor(ref.per_prompt[key])))
            <= TOL
        )
    assert got.top_after.tokens == ref.top_after.tokens
    assert close(torch.tensor(got.top_after.probs), torch.tensor(ref.top_after.probs)) <= TOL
    assert got.top_before.tokens == ref.top_before.tokens


def test_click_to_ablate_in_a_view_runs_on_nnsight(both, pairs):
    """The views' click path (``_handle_custom_msg`` → ``ablate``) on an nnsight model gives
    what the bridge's view gives."""
    from circuitviz.views import PatchingView

    bridge, nn = both
    results = []
    for model in (bridge, nn):
        view = PatchingView(
            cv.patch(model, pairs, over="heads", progress=False), model=model, pairs=pairs
        )
        view.send = lambda content, buffers=None: None
        view._handle_custom_msg({"type": "ablate", "components": ["L1H2"], "request": 1})
        assert view.ablated == ["L1H2"]
        results.append(view.result)
    assert abs(results[0]["ablated"] - results[1]["ablated"]) <= TOL
    assert abs(results[0]["delta"] - results[1]["delta"]) <= TOL


def test_attention_equals_bridge(both):
    bridge, nn = both
    prompt = "t1 t2 t3 t4 t1 t2 t3"
    ref, got = cv.attention(bridge, prompt), cv.attention(nn, prompt)
    assert got.tokens == ref.tokens and got.patterns.dtype == ref.patterns.dtype
    assert close(got.patterns, ref.patterns) <= TOL
    for role in ref.scores:
        assert close(got.scores[role], ref.scores[role]) <= TOL


def test_sites_have_the_same_names_and_shapes_on_both_backends(both):
    """Every site read through the seam, on both backends, GQA included (k, v per KV head)."""
    from circuitviz.engine.backends import Run

    bridge, nn = both
    tokens = bridge.to_tokens("t1 t2 t3 t4")
    sites = {(s, layer) for s in _program.SITES for layer in range(bridge.cfg.n_layers)}
    outs = [
        backend_of(m).execute([Run(tokens, returns=sites)], progress=False)[0] for m in (bridge, nn)
    ]
    for key in sorted(sites):
        a, b = outs[0].returned[key], outs[1].returned[key]
        assert close(a, b) <= TOL, key
    kv = getattr(bridge.cfg, "n_key_value_heads", None) or bridge.cfg.n_heads
    assert outs[1].returned[("k", 0)].shape[2] == kv


# ----------------------------------------------------------------------------- bad input


def test_a_site_nnsight_cannot_write_is_refused_before_running(both, pairs):
    bridge, nn = both
    tokens = bridge.to_tokens("t1 t2 t3 t4")
    before = logits_of(nn, tokens)
    with pytest.raises(cv.InputError, match=r"pattern.*bridge"):
        cv.patch(nn, pairs, over="pattern", progress=False)
    assert not nn.has_hooks()
    assert torch.equal(logits_of(nn, tokens), before)


@pytest.mark.parametrize(
    "call",
    [
        lambda m, p: cv.engine.features.sae_quality(m, None, torch.zeros(1, 4, dtype=torch.long)),
    ],
    ids=[
        "sae_quality",
    ],
)
def test_analyses_not_ported_name_the_bridge(both, pairs, call):
    _, nn = both
    with pytest.raises(cv.InputError, match=r"bridge only.*load_model\("):
        call(nn, pairs)
    assert not nn.has_hooks()


def test_bad_input_on_nnsight_gets_the_same_errors(both, pairs):
    _, nn = both
    with pytest.raises(cv.InputError, match="Unknown over"):
        cv.patch(nn, pairs, over="nope")
    with pytest.raises(cv.InputError, match="direction"):
        cv.patch(nn, pairs, direction="sideways")
    with pytest.raises(cv.InputError, match="metric"):
        cv.patch(nn, pairs, metric="accuracy")
    with pytest.raises(cv.InputError, match="mode"):
        cv.ablate(nn, pairs, heads=["L0H0"], mode="shuffle")
    with pytest.raises(cv.InputError):
        cv.ablate(nn, pairs, heads=["L9H0"])
    with pytest.raises(cv.InputError, match="one prompt"):
        cv.attention(nn, torch.zeros(2, 3, dtype=torch.long))
    assert not nn.has_hooks()


def test_load_model_refuses_bad_backend_options(tiny_llama):
    with pytest.raises(cv.InputError, match="backend="):
        cv.load_model(tiny_llama, backend="jax")
    with pytest.raises(cv.InputError, match="backend='nnsight'"):
        cv.load_model(tiny_llama, remote=True)
    with pytest.raises(cv.InputError, match="hub id"):
        cv.load_model(tiny_llama, backend="nnsight", remote=True)
    with pytest.raises(cv.InputError, match="hub name"):
        cv.load_model("demo", backend="nnsight", remote=True)


# ----------------------------------------------------------------------------- demo


@pytest.mark.demo
@pytest.mark.slow
def test_demo_model_gives_the_same_numbers_on_nnsight(demo_model):
    """SmolLM2-135M (30 layers, GQA 9 q / 3 kv heads) from its local HF directory through
    nnsight, against the bridge: k patching per KV head (GQA), ablation of heads at all and
    at one position with an MLP, and attention. Head patching (z) is covered on the tiny
    models; on the demo it takes ~55 s on the loaded 2-core CPU."""
    nn = cv.load_model("demo", backend="nnsight", device="cpu")
    pairs = cv.PromptPairs(
        ["When John and Mary went to the store, John gave a drink to"],
        ["When John and Mary went to the store, Mary gave a drink to"],
        [" Mary"],
        [" John"],
    )
    ref = cv.patch(demo_model, pairs, over="k", progress=False)
    got = cv.patch(nn, pairs, over="k", progress=False)
    assert got.tokens == ref.tokens and got.values.shape == (30, 3)
    assert close(got.values, ref.values) <= TOL
    ref = cv.ablate(demo_model, pairs, heads=["L23H3", "L20H0:P14"], mlps=[5], mode="mean")
    got = cv.ablate(nn, pairs, heads=["L23H3", "L20H0:P14"], mlps=[5], mode="mean")
    assert abs(got.ablated - ref.ablated) <= TOL and got.top_after.tokens == ref.top_after.tokens
    a, b = cv.attention(demo_model, pairs.clean[0]), cv.attention(nn, pairs.clean[0])
    assert close(a.patterns, b.patterns) <= 1e-3  # both stored as float16
    assert close(a.scores["induction"], b.scores["induction"]) <= TOL


def test_an_interrupt_inside_a_trace_leaves_nothing_behind(both, pairs, monkeypatch):
    """Ctrl-C while nnsight is mid-forward: the error surfaces, no hook stays, the logits are
    the same and the next analysis runs."""
    bridge, nn = both
    tokens = bridge.to_tokens("t1 t2 t3 t4")
    before = logits_of(nn, tokens)
    real = _program.touch
    calls = []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(_program, "touch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cv.patch(nn, pairs, over="heads", progress=False)
    monkeypatch.setattr(_program, "touch", real)
    assert not nn.has_hooks()
    assert torch.equal(logits_of(nn, tokens), before)
    ref = cv.patch(bridge, pairs, over="heads", progress=False)
    assert close(cv.patch(nn, pairs, over="heads", progress=False).values, ref.values) <= TOL


def test_a_local_click_is_one_forward_pass(both, pairs, monkeypatch):
    """Locally the corrupted activations are kept after the first request, as the bridge
    keeps them: a new ablation set costs one run, a repeated one none."""
    _, nn = both
    nn._memo.clear()
    sizes = []
    real = nn.backend.execute

    def counting(runs, **kwargs):
        sizes.append(len(runs))
        return real(runs, **kwargs)

    monkeypatch.setattr(nn.backend, "execute", counting)
    first = cv.ablate(nn, pairs, heads=["L0H1"], mode="mean")
    second = cv.ablate(nn, pairs, heads=["L1H0"], mode="resample")
    again = cv.ablate(nn, pairs, heads=["L1H0"], mode="resample")
    assert sizes == [3, 1] and again is second
    assert first.ablated is not None


def test_a_local_hf_directory_loads_through_nnsight_with_device_map(tmp_path, pairs, monkeypatch):
    """``load_model(dir, backend="nnsight", device_map=...)`` passes ``device_map`` to
    ``from_pretrained`` (here ``"cpu"``; ``"auto"`` over several GPUs is untested: no GPU)."""
    from transformers import AutoModelForCausalLM

    bridge = cv.tiny_model("llama", seed=3)
    hf = cv.load_model(bridge, backend="nnsight").lm._module
    hf.save_pretrained(tmp_path)
    bridge.tokenizer.save_pretrained(tmp_path)
    seen = []
    real = AutoModelForCausalLM.from_pretrained

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", recording)
    nn = cv.load_model(str(tmp_path), backend="nnsight", device_map="cpu")
    assert seen[-1]["device_map"] == "cpu" and seen[-1]["attn_implementation"] == "eager"
    ref = cv.patch(bridge, pairs, over="heads", progress=False)
    assert close(cv.patch(nn, pairs, over="heads", progress=False).values, ref.values) <= TOL
    with pytest.raises(cv.InputError, match="dtype"):
        cv.load_model(str(tmp_path), backend="nnsight", dtype="float32")


def test_local_requests_show_progress_run_by_run(both, pairs, monkeypatch):
    from tqdm.auto import tqdm

    from circuitviz.engine.backends import _nnsight

    _, nn = both
    bars = []

    class Recording(tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            bars.append(self)

    monkeypatch.setattr(_nnsight, "tqdm", Recording)
    result = cv.patch(nn, pairs, over="heads", max_rows=3, progress=True)
    assert bars[0].total == result.extra["forward_passes"] and bars[0].n == bars[0].total
    assert _program.TICK is None  # nothing left behind for the next (maybe remote) request


def test_an_nnsight_model_object_picks_the_nnsight_backend(both, pairs):
    """``nnsight.TransformersModel`` passed as it is: the analyses wrap it (once) and give the
    bridge's numbers; ``load_model`` returns the same wrapper."""
    bridge, nn = both
    raw = nn.lm
    wrapped = cv.load_model(raw)
    assert wrapped.backend_name == "nnsight" and cv.load_model(raw) is wrapped
    assert cv.load_model(wrapped) is wrapped
    ref = cv.patch(bridge, pairs, over="mlp_out", progress=False)
    assert close(cv.patch(raw, pairs, over="mlp_out", progress=False).values, ref.values) <= TOL
    ablated = cv.ablate(raw, pairs, heads=["L1H1"], mode="mean")
    assert (
        abs(ablated.ablated - cv.ablate(bridge, pairs, heads=["L1H1"], mode="mean").ablated) <= TOL
    )
    assert cv.tasks.induction(raw, n=2) == cv.tasks.induction(bridge, n=2)  # the tokenizer only


def test_sites_an_attention_kernel_hides_are_refused(both, pairs):
    """Under sdpa the pattern is never materialised: ``attention`` says so and names the fix;
    patching, which needs no pattern, still gives the bridge's numbers."""
    from circuitviz.engine.backends._nnsight import NNsightModel

    bridge, _ = both
    fresh = cv.load_model(bridge, backend="nnsight")
    fresh.lm._module.set_attn_implementation("sdpa")
    sdpa = NNsightModel(fresh.lm, model_name="sdpa")
    with pytest.raises(cv.InputError, match="eager"):
        cv.attention(sdpa, "t1 t2 t3")
    assert not sdpa.has_hooks()
    ref = cv.patch(bridge, pairs, over="heads", progress=False)
    assert close(cv.patch(sdpa, pairs, over="heads", progress=False).values, ref.values) <= TOL


def test_an_architecture_without_a_site_map_is_refused():
    from nnsight import TransformersModel
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    from circuitviz.engine._tiny import tiny_tokenizer

    config = GPTNeoXConfig(
        vocab_size=128,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=4,
        intermediate_size=64,
    )
    lm = TransformersModel(
        GPTNeoXForCausalLM(config), tokenizer=tiny_tokenizer(), task="text-generation"
    )
    with pytest.raises(cv.InputError, match=r"gpt_neox.*load_model"):
        cv.load_model(lm)
