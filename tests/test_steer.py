"""steer(): clamping and ablating SAE features, against a hand-written hooked greedy loop.

The reference (:func:`reference_greedy`) is the plainest possible generation: one full
TransformerBridge forward pass per new token with the SAE splice (``splice_hook``) attached
through ``circuitviz.engine.hooks``, appending the argmax each time. ``steer`` generates
through its own KV-cache copy of the model instead; both must give the same tokens and
first-token logits within 1e-4.
"""

from __future__ import annotations

import math

import pytest
import torch

import circuitviz
from circuitviz.engine import has_hooks, hooks
from circuitviz.engine.features import SAESet, steer
from circuitviz.engine.features._generate import greedy_bridge, greedy_cached, twin
from circuitviz.engine.features._splice import LatentEdit, splice_hook
from tests._tiny_sae import collect, tiny_saes, train_topk

PROMPT = "t5 t17 t3 t9 t5"


@pytest.fixture(scope="module")
def saes(tiny_llama):
    return tiny_saes(tiny_llama)


def reference_greedy(model, prompt, saes, edits, n_tokens):
    """Hand-written: full bridge pass per token, splice hooks attached, argmax appended.
    Returns (new token ids, logits of the first new token)."""
    seq = model.to_tokens(prompt)
    by_hook = {}
    for e in edits:
        by_hook.setdefault(e.hook, []).append(e)
    fwd = [(h, splice_hook(saes[h], es)) for h, es in by_hook.items()]
    out, first = [], None
    eos = model.tokenizer.eos_token_id
    with torch.no_grad(), hooks(model, fwd):
        for _ in range(n_tokens):
            logits = model(seq, return_type="logits")[0, -1]
            first = logits if first is None else first
            nxt = int(logits.argmax())
            if nxt == eos:
                break
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], 1)
    return out, first


def prompt_max(model, prompt, sae):
    """Each latent's max over the prompt, read with a plain hook."""
    got = {}

    def read(x, hook):
        got["f"] = sae.encode(x[0]).amax(0)

    with torch.no_grad(), hooks(model, [(sae.hook_name, read)]):
        model(model.to_tokens(prompt), return_type="logits")
    return got["f"]


def ids_of(model, tokens):
    return [int(model.to_tokens(t, prepend_bos=False)[0, 0]) for t in tokens]


def active_latent(model, prompt, sae):
    return int(prompt_max(model, prompt, sae).argmax())


@pytest.mark.parametrize("mode", ["clamp", "ablate"])
def test_steer_equals_hand_written_hooked_greedy_loop(tiny_llama, saes, mode):
    hook = "blocks.0.hook_resid_post"
    i = active_latent(tiny_llama, PROMPT, saes[hook])
    res = steer(tiny_llama, PROMPT, features=[f"L0F{i}"], saes=saes, scale=6.0, mode=mode)
    value = 6.0 * float(prompt_max(tiny_llama, PROMPT, saes[hook])[i]) if mode == "clamp" else 0.0
    assert res.values == pytest.approx([value], rel=1e-6)
    ref_after, _ = reference_greedy(tiny_llama, PROMPT, saes, [LatentEdit(hook, i, value)], 20)
    ref_before, _ = reference_greedy(tiny_llama, PROMPT, saes, [], 20)
    assert ids_of(tiny_llama, res.after_tokens) == ref_after
    # "before" is the plain model: no splice at all.
    assert ids_of(tiny_llama, res.before_tokens) == ref_before
    assert res.features == [f"L0F{i}"] and res.mode == mode and res.cached
    assert not has_hooks(tiny_llama)


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_kv_cache_generator_equals_bridge_loop_and_reference(kind, tiny_llama, tiny_gpt2):
    model = tiny_llama if kind == "llama" else tiny_gpt2
    s = tiny_saes(model)
    edits = [
        LatentEdit("blocks.0.hook_resid_post", 3, 2.5),
        LatentEdit("blocks.1.hook_resid_post", 5, 0.0, pos=2),  # a prompt position only
    ]
    tokens = model.to_tokens(PROMPT)[0]
    ref, ref_first = reference_greedy(model, PROMPT, s, edits, 20)
    fast = greedy_cached(model, twin(model), tokens, s, edits, n_tokens=20, eos=None)
    slow = greedy_bridge(model, tokens, s, edits, n_tokens=20, eos=None)
    eos = model.tokenizer.eos_token_id
    if eos in fast.ids:  # the reference stops at end-of-sequence
        fast.ids = fast.ids[: fast.ids.index(eos)]
        slow.ids = slow.ids[: slow.ids.index(eos)]
    assert fast.ids == ref and slow.ids == ref
    assert (fast.first_logits - ref_first).abs().max() <= 1e-4
    assert (slow.first_logits - ref_first).abs().max() <= 1e-4


def test_guessed_tokens_never_change_the_continuation(tiny_llama, saes):
    """Checking wrong guesses (a draft that is all wrong, one that is right) changes nothing."""
    edits = [LatentEdit("blocks.0.hook_resid_post", 3, 4.0)]
    tokens = tiny_llama.to_tokens(PROMPT)[0]
    tw = twin(tiny_llama)
    ref, _ = reference_greedy(tiny_llama, PROMPT, saes, edits, 20)
    for draft in ([], [0] * 20, ref, ref[:5] + [0] * 15):
        for lookahead in (0, 1, 3, 6):  # 1-4 rows per pass take the skinny products, 7 do not
            got = greedy_cached(
                tiny_llama,
                tw,
                tokens,
                saes,
                edits,
                n_tokens=20,
                eos=None,
                draft=draft,
                lookahead=lookahead,
            )
            assert got.ids[: len(ref)] == ref


@pytest.mark.parametrize("bias", [False, True])
def test_skinny_linear_equals_linear(bias):
    """The twin's linear layers: weight @ x.T for 1-4 rows, F.linear beyond; same values."""
    from circuitviz.engine.features._generate import SKINNY_ROWS, SkinnyLinear

    g = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(96, 40, bias=bias)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 96, generator=g))
        if bias:
            layer.bias.copy_(torch.randn(40, generator=g))
    skinny = torch.nn.Linear(96, 40, bias=bias)
    skinny.__class__ = SkinnyLinear
    skinny.weight, skinny.bias = layer.weight, layer.bias
    for rows in range(1, SKINNY_ROWS + 3):
        x = torch.randn(1, rows, 96, generator=g)
        got = skinny(x)
        assert got.shape == (1, rows, 40) and got.is_contiguous()
        assert (got - layer(x)).abs().max() <= 1e-4


def test_twin_shares_weights_and_leaves_the_bridge_modules_alone(tiny_llama):
    from circuitviz.engine.features._generate import SkinnyLinear

    tw = twin(tiny_llama)
    skinny = [m for m in tw.model.modules() if isinstance(m, SkinnyLinear)]
    assert skinny and not any(isinstance(m, SkinnyLinear) for m in tiny_llama.modules())
    shared = {id(p) for p in tiny_llama.parameters()}
    assert all(id(m.weight) in shared for m in skinny)


def test_resid_pre_sae_uses_the_layer_input(tiny_llama):
    """An SAE on hook_resid_pre is spliced at the decoder layer's input in the KV-cache copy."""
    hook = "blocks.1.hook_resid_pre"
    sae_set = SAESet([train_topk(collect(tiny_llama, [hook])[hook], hook, steps=50)])
    i = active_latent(tiny_llama, PROMPT, sae_set[hook])
    res = steer(tiny_llama, PROMPT, features=[(hook, i)], saes=sae_set, scale=5.0)
    ref, _ = reference_greedy(tiny_llama, PROMPT, sae_set, [LatentEdit(hook, i, res.values[0])], 20)
    assert ids_of(tiny_llama, res.after_tokens) == ref and res.cached
    assert res.features == [f"L1preF{i}"]  # the site grammar of engine._sites


def test_position_feature_and_shipped_max_activation(tiny_llama, saes):
    hook = "blocks.0.hook_resid_post"
    i = active_latent(tiny_llama, PROMPT, saes[hook])
    shipped = SAESet(saes.values(), stats={hook: {"max_act": torch.full((64,), 0.75)}})
    res = steer(tiny_llama, PROMPT, features=f"L0F{i}:P2", saes=shipped, scale=3.0)
    assert res.values == [pytest.approx(2.25)]  # 3 × the shipped maximum, not the prompt's
    ref, _ = reference_greedy(tiny_llama, PROMPT, saes, [LatentEdit(hook, i, 2.25, pos=2)], 20)
    assert ids_of(tiny_llama, res.after_tokens) == ref
    assert res.features == [f"L0F{i}:P2"]


def test_feature_stats_peaks_and_explorer_ids(tiny_llama, saes):
    """Shipped FeatureStats-like statistics (``top_values``, peaks descending) give the clamp
    scale; the feature explorer's ``"hook:index"`` ids name features too."""
    import numpy as np

    hook = "blocks.0.hook_resid_post"
    i = active_latent(tiny_llama, PROMPT, saes[hook])

    class Peaks:  # the attribute steer reads from circuitviz's FeatureStats
        top_values = np.tile(np.array([[1.5, 0.5]], dtype=np.float32), (64, 1))

    shipped = SAESet(saes.values(), stats={hook: Peaks()})
    res = steer(tiny_llama, PROMPT, features=f"{hook}:{i}", saes=shipped, scale=2.0)
    assert res.values == [pytest.approx(3.0)] and res.features == [f"L0F{i}"]
    with pytest.raises(circuitviz.InputError, match="out of range"):
        steer(tiny_llama, PROMPT, features=f"{hook}:x", saes=shipped)


def test_shipped_stats_too_short_is_an_error(tiny_llama, saes):
    hook = "blocks.0.hook_resid_post"
    short = SAESet(saes.values(), stats={hook: {"max_act": [1.0, 2.0]}})
    with pytest.raises(circuitviz.InputError, match="one maximum per latent"):
        steer(tiny_llama, PROMPT, features=["L0F5"], saes=short)
    assert not has_hooks(tiny_llama)


def test_metric_on_pairs_and_on_answers(tiny_llama, saes, tiny_pairs):
    hook = "blocks.1.hook_resid_post"
    prompt = tiny_pairs.clean[0]
    i = active_latent(tiny_llama, prompt, saes[hook])
    res = steer(tiny_llama, prompt, features=[f"L1F{i}"], saes=saes, pairs=tiny_pairs)
    base = circuitviz.ablate(tiny_llama, tiny_pairs)
    assert res.metric == "logit_diff" and res.metric_before == base.clean
    edit = LatentEdit(hook, i, res.values[0])
    a, w = ids_of(tiny_llama, [" t3", " t7"])
    with torch.no_grad(), hooks(tiny_llama, [(hook, splice_hook(saes[hook], [edit]))]):
        logits = tiny_llama(tiny_llama.to_tokens(prompt), return_type="logits")[0, -1]
    assert res.metric_after == pytest.approx(float(logits[a] - logits[w]), abs=1e-4)
    by_answer = steer(
        tiny_llama, prompt, features=[f"L1F{i}"], saes=saes, answer=" t3", wrong_answer=" t7"
    )
    assert by_answer.metric_after == pytest.approx(res.metric_after, abs=1e-4)
    assert by_answer.metric_before == pytest.approx(res.metric_before, abs=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"scale": math.nan}, "scale=nan"),
        ({"scale": math.inf}, "finite"),
        ({"features": ["L7F1"]}, "No SAE at blocks.7.hook_resid_post"),
        ({"features": ["banana"]}, "Unknown feature"),
        ({"features": ["L0F64"]}, "out of range"),
        ({"features": [("blocks.0.hook_resid_post", -1)]}, "out of range"),
        ({"features": [("blocks.0.hook_mlp_out", 1)]}, "No SAE reads"),
        ({"features": ["L0F1:P99"]}, "past the prompt"),
        ({"features": []}, "features is empty"),
        ({"mode": "boost"}, "Unknown mode"),
        ({"n_tokens": 0}, "n_tokens=0"),
        ({"answer": " t3"}, "both answer"),
        ({"saes": "demo"}, "load_saes"),
    ],
)
def test_bad_input_raises_and_leaves_the_model_untouched(tiny_llama, saes, kwargs, words):
    tokens = tiny_llama.to_tokens(PROMPT)
    with torch.no_grad():
        before = tiny_llama(tokens, return_type="logits")
    args = {"features": ["L0F1"], "saes": saes, **kwargs}
    with pytest.raises(circuitviz.InputError, match=words.replace("(", r"\(")):
        steer(tiny_llama, PROMPT, **args)
    assert not has_hooks(tiny_llama)
    with torch.no_grad():
        assert torch.equal(tiny_llama(tokens, return_type="logits"), before)


def test_silent_feature_without_shipped_max_is_an_error(tiny_llama, saes):
    hook = "blocks.0.hook_resid_post"
    silent = int((prompt_max(tiny_llama, PROMPT, saes[hook]) == 0).nonzero()[0, 0])
    with pytest.raises(circuitviz.InputError, match="never fires on this prompt"):
        steer(tiny_llama, PROMPT, features=[f"L0F{silent}"], saes=saes)
    res = steer(tiny_llama, PROMPT, features=[f"L0F{silent}"], saes=saes, mode="ablate")
    # Silent on the prompt: the first prediction keeps its order (generated positions may
    # still differ, where the latent fires).
    assert res.top_after.tokens[:3] == res.top_before.tokens[:3]
    assert not has_hooks(tiny_llama)


@pytest.mark.demo
@pytest.mark.slow
def test_demo_kv_cache_generation_is_exact(demo_model):
    """On the demo model (30 layers, GQA), with a throwaway random TopK SAE on block 11: the
    KV-cache generator gives the bridge loop's tokens and first-token logits within 1e-4."""
    from circuitviz.engine.features import SAE

    g = torch.Generator().manual_seed(0)
    W = torch.randn(576, 512, generator=g) / 24
    hook = "blocks.11.hook_resid_post"
    s = SAESet(
        [SAE(hook, W, torch.zeros(512), 3 * W.T.contiguous(), torch.zeros(576), "topk", k=16)]
    )
    tokens = demo_model.to_tokens("When John and Mary went to the store, John gave a drink to")[0]
    eos = demo_model.tokenizer.eos_token_id
    for edits in ([], [LatentEdit(hook, 3, 30.0)]):
        slow = greedy_bridge(demo_model, tokens, s, edits, n_tokens=12, eos=eos)
        for lookahead in (None, 3):
            fast = greedy_cached(
                demo_model,
                twin(demo_model),
                tokens,
                s,
                edits,
                n_tokens=12,
                eos=eos,
                lookahead=lookahead,
            )
            assert fast.ids == slow.ids
            assert (fast.first_logits - slow.first_logits).abs().max() <= 1e-4


def test_interrupt_mid_generation_leaves_no_hook(tiny_llama, saes, monkeypatch):
    """A Ctrl-C while generating: no hook stays on the model or on its KV-cache copy, and the
    next call gives the same continuation as before."""
    import circuitviz.engine.features._generate as gen

    hook = "blocks.0.hook_resid_post"
    i = active_latent(tiny_llama, PROMPT, saes[hook])
    first = steer(tiny_llama, PROMPT, features=[f"L0F{i}"], saes=saes, scale=2.0)
    calls = []
    real = gen.propose

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(gen, "propose", interrupted)
    with pytest.raises(KeyboardInterrupt):
        steer(tiny_llama, PROMPT, features=[f"L0F{i}"], saes=saes, scale=2.0)
    monkeypatch.setattr(gen, "propose", real)
    tw = twin(tiny_llama)
    assert not has_hooks(tiny_llama)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tw.model.modules())
    again = steer(tiny_llama, PROMPT, features=[f"L0F{i}"], saes=saes, scale=2.0)
    assert again.after_tokens == first.after_tokens
