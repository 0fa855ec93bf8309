"""The KV-cache generator at every site kind: SAEs on resid_pre, attn_out, resid_mid, mlp_out,
resid_post, and transcoders reading before or after ln2 (writing the MLP output), on the
tiny Llama and GPT-2, must give the bridge-hooked loop's (:func:`greedy_bridge`) tokens and
first-token logits within 1e-4 — clamped, ablated, several sites at once, error terms set —
and, fed a fixed sequence in cache chunks, the bridge's logits at every position."""

from __future__ import annotations

import itertools

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks, hooks
from circuitviz.engine._hooks import module_hooks
from circuitviz.engine.features import SAE, SAESet
from circuitviz.engine.features._generate import fast_sites, greedy_bridge, greedy_cached, twin
from circuitviz.engine.features._splice import ErrorEdit, LatentEdit
from circuitviz.engine.features._twin_sites import bridge_hooks, twin_hooks, twin_point
from tests._tiny_sae import tiny_site_saes

TOL = 1e-4
SITES = [
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_resid_mid",
    "blocks.1.hook_attn_out",
    "blocks.1.hook_mlp_out",
    "blocks.1.hook_resid_post",
]
#: one transcoder reading after ln2 (MLP 0), one before it (MLP 1)
TRANSCODERS = [
    ("blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out"),
    ("blocks.1.ln2.hook_in", "blocks.1.hook_mlp_out"),
]
HOOKS = [*SITES, *(tc for tc, _ in TRANSCODERS)]
PROMPTS = ["t5 t17 t3 t9 t5", "t40 t8 t33 t8 t40 t12"]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request):
    model = cv.tiny_model(request.param)
    return model, tiny_site_saes(model, SITES, TRANSCODERS)


def prompt_latents(model, tokens, sae):
    """The latents ``[pos, d_sae]`` on the prompt, read with a plain hook (at a transcoder's
    input)."""
    got = {}

    def read(x, hook):
        got["f"] = sae.encode(x[0])

    with torch.no_grad(), hooks(model, [(sae.hook_name, read)]):
        model(tokens[None], return_type="logits")
    return got["f"]


def both(model, tokens, saes, edits, n_tokens=20, **options):
    """The continuations of the KV-cache generator and of the bridge loop."""
    assert fast_sites(model, saes, edits)
    fast = greedy_cached(
        model, twin(model), tokens, saes, edits, n_tokens=n_tokens, eos=None, **options
    )
    slow = greedy_bridge(model, tokens, saes, edits, n_tokens=n_tokens, eos=None, desc=None)
    return fast, slow


def assert_same(fast, slow, base):
    assert fast.ids == slow.ids
    assert (fast.first_logits - slow.first_logits).abs().max() <= TOL
    # not vacuous: the edit moved the logits well beyond the tolerance
    assert (slow.first_logits - base.first_logits).abs().max() > 10 * TOL


@pytest.mark.parametrize("hook", HOOKS)
@pytest.mark.parametrize("mode", ["clamp", "ablate"])
def test_cached_generation_equals_the_bridge_loop_at_every_site(setup, hook, mode):
    model, saes = setup
    for prompt in PROMPTS:
        tokens = model.to_tokens(prompt)[0]
        base = greedy_bridge(model, tokens, saes, [], n_tokens=1, eos=None, desc=None)
        f = prompt_latents(model, tokens, saes[hook])
        if mode == "clamp":
            top = f.amax(0)
            i = int(top.argmax())
            edits = [LatentEdit(hook, i, 3.0 * float(top[i]))]
        else:  # the prompt's two strongest latents, and the last position's (there only)
            i, j = (int(x) for x in f.amax(0).topk(2).indices)
            last = int(f[-1].argmax())
            edits = [
                LatentEdit(hook, i),
                LatentEdit(hook, j),
                LatentEdit(hook, last, pos=len(f) - 1),
            ]
        fast, slow = both(model, tokens, saes, edits)
        assert_same(fast, slow, base)
    assert not has_hooks(model)


def test_several_sites_at_once_with_error_terms_and_guesses(setup):
    """Every SAE and both transcoders edited together (ablations everywhere, clamps at one
    prompt position, error terms dropped at one position), with 0, 1 and 3 guessed tokens
    per pass."""
    model, saes = setup
    tokens = model.to_tokens(PROMPTS[1])[0]
    base = greedy_bridge(model, tokens, saes, [], n_tokens=1, eos=None, desc=None)
    edits: list = []
    for n, hook in enumerate(HOOKS):
        top = prompt_latents(model, tokens, saes[hook]).amax(0)
        i = int(top.argmax())
        # ablated everywhere, or clamped at one prompt position
        edits.append(
            LatentEdit(hook, i, 2.0 * float(top[i]), pos=n % 5) if n % 2 else LatentEdit(hook, i)
        )
    edits += [
        ErrorEdit("blocks.0.hook_attn_out", 0.0, pos=1),
        ErrorEdit("blocks.1.ln2.hook_in", 0.0, pos=4),
    ]
    slow = None
    for lookahead in (0, 1, 3):
        fast, slow = both(model, tokens, saes, edits, lookahead=lookahead, draft=list(range(20)))
        assert_same(fast, slow, base)
    assert len(set(slow.ids)) > 1  # a continuation that is not one token repeated
    assert not has_hooks(model)


@pytest.mark.parametrize("edit", ["latent", "error"])
def test_chunked_cache_passes_give_the_bridge_logits_at_every_position(setup, edit):
    """A fixed sequence fed through the twin in cache chunks (the prompt, then 1, 2 and 3
    tokens), every site spliced and edited: each position's logits equal the bridge's full
    hooked pass within 1e-4 (greedy tokens alone could agree by chance)."""
    model, saes = setup
    tokens = model.to_tokens(PROMPTS[0] + " t1 t2 t3 t4 t5 t6")[0]
    n_prompt = len(model.to_tokens(PROMPTS[0])[0])
    if edit == "latent":
        edits = [LatentEdit(h, 5, 2.0) for h in HOOKS] + [LatentEdit(HOOKS[0], 7, 3.0, pos=2)]
    else:
        edits = [ErrorEdit(h, 0.0) for h in HOOKS] + [ErrorEdit(HOOKS[1], 1.0, pos=n_prompt)]
    with torch.inference_mode():
        with hooks(model, bridge_hooks(saes, edits)):
            ref = model(tokens[None], return_type="logits")[0]
        plain = model(tokens[None], return_type="logits")[0]
    assert (ref - plain).abs().max() > 10 * TOL

    from transformers import DynamicCache

    tw = twin(model)
    state = {"offset": 0}
    attached = twin_hooks(
        model, tw.model, bridge_hooks(saes, edits, offset=lambda: state["offset"]), tw.points
    )
    assert attached is not None
    cache, got = DynamicCache(), []
    bounds = [0, n_prompt, n_prompt + 1, n_prompt + 3, len(tokens)]
    with torch.inference_mode(), module_hooks(*attached):
        for a, b in itertools.pairwise(bounds):
            out = tw.model(input_ids=tokens[None, a:b], cache=cache, use_cache=True)
            got.append(out.logits[0])
            state["offset"] = b
    assert (torch.cat(got) - ref).abs().max() <= TOL
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tw.model.modules())


def test_each_hook_runs_where_the_bridge_reads_the_same_value(setup):
    """The twin's module input/output that each bridge hook maps to holds the bridge hook's
    value on the same tokens."""
    model, _ = setup
    tw = twin(model)
    names = [
        "hook_resid_pre",
        "hook_attn_out",
        "hook_resid_mid",
        "ln2.hook_in",
        "ln2.hook_out",
        "mlp.hook_in",
        "hook_mlp_out",
        "hook_resid_post",
    ]
    hook_names = [f"blocks.1.{n}" for n in names]
    tokens = torch.arange(8)[None]
    ref, got = {}, {}

    def keep(store, name):
        def fn(x, hook):
            store[name] = x.clone()

        return fn

    with torch.inference_mode():
        with hooks(model, [(h, keep(ref, h)) for h in hook_names]):
            model(tokens, return_type="logits")
        with module_hooks(
            *twin_hooks(model, tw.model, [(h, keep(got, h)) for h in hook_names], tw.points)
        ):
            tw.model(input_ids=tokens)
    for h in hook_names:
        assert (got[h] - ref[h]).abs().max() <= 1e-5, h
    assert twin_point(model, tw.model, "blocks.1.attn.hook_q", tw.points) is None
    assert twin_point(model, tw.model, "blocks.9.hook_attn_out", tw.points) is None


def test_steer_takes_the_cached_path_at_every_site(setup):
    """``steer`` at attn_out, resid_mid, mlp_out and a transcoder: cached, and the tokens of
    the bridge loop; a hook the twin has no place for still takes the bridge loop."""
    model, saes = setup
    tokens = model.to_tokens(PROMPTS[0])[0]
    for feature, hook in [
        ("L0attnF", SITES[1]),
        ("L0midF", SITES[2]),
        ("L1mlpF", SITES[4]),
        ("L0tcF", HOOKS[-2]),
    ]:
        i = int(prompt_latents(model, tokens, saes[hook]).amax(0).argmax())
        res = cv.steer(
            model, PROMPTS[0], features=f"{feature}{i}", saes=saes, scale=3.0, progress=False
        )
        ref = greedy_bridge(
            model,
            tokens,
            saes,
            [LatentEdit(hook, i, res.values[0])],
            n_tokens=20,
            eos=model.tokenizer.eos_token_id,
            desc=None,
        )
        assert res.cached
        assert res.after_tokens == [model.to_string(t) for t in ref.ids]
    other = tiny_site_saes(model, ["blocks.0.ln1.hook_out"])  # no place on the twin
    edits = [LatentEdit("blocks.0.ln1.hook_out", 0, 0.0)]
    assert not fast_sites(model, other, edits)
    res = cv.steer(
        model,
        PROMPTS[0],
        features=("blocks.0.ln1.hook_out", 0),
        saes=other,
        mode="ablate",
        progress=False,
    )
    ref = greedy_bridge(
        model, tokens, other, edits, n_tokens=20, eos=model.tokenizer.eos_token_id, desc=None
    )
    assert not res.cached and res.after_tokens == [model.to_string(t) for t in ref.ids]
    assert not has_hooks(model)


def test_interrupt_at_a_transcoder_and_resid_mid_leaves_no_hook(setup, monkeypatch):
    """A Ctrl-C while generating with a transcoder and a resid_mid SAE edited (hooks on the
    twin's norm, MLP and layer output): no hook stays on the model or its twin, and the next
    call gives the same continuation."""
    import circuitviz.engine.features._generate as gen

    model, saes = setup
    tokens = model.to_tokens(PROMPTS[0])[0]
    edits = [LatentEdit(HOOKS[-2], 1, 2.0), LatentEdit(SITES[2], 3, 0.0)]
    first = greedy_cached(model, twin(model), tokens, saes, edits, n_tokens=20, eos=None)
    calls = []
    real = gen.propose

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(gen, "propose", interrupted)
    with pytest.raises(KeyboardInterrupt):
        greedy_cached(model, twin(model), tokens, saes, edits, n_tokens=20, eos=None)
    monkeypatch.setattr(gen, "propose", real)
    assert not has_hooks(model)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in twin(model).model.modules())
    again = greedy_cached(model, twin(model), tokens, saes, edits, n_tokens=20, eos=None)
    assert again.ids == first.ids


@pytest.mark.demo
@pytest.mark.slow
def test_demo_cached_generation_at_every_site_equals_the_bridge_loop(demo_model):
    """The demo model (SmolLM2-135M, 30 layers, GQA), with one shipped SAE's weights placed at
    attn_out, mlp_out and resid_mid and as a transcoder on MLP 5 (a stand-in: the demo ships
    resid_post SAEs only): ``steer`` clamps an attn_out latent through the KV cache with the
    bridge loop's tokens; all four sites edited at once give the bridge loop's tokens and
    first-token logits within 1e-4."""
    shipped = cv.load_saes("demo")
    s = shipped[shipped.hooks[0]]
    weights = (s.W_enc, s.b_enc, s.W_dec, s.b_dec)
    kind = {"activation": s.activation, "k": s.k, "threshold": s.threshold}
    kind["apply_b_dec_to_input"] = s.apply_b_dec_to_input
    moved = SAESet(
        [
            SAE("blocks.4.hook_attn_out", *weights, **kind),
            SAE("blocks.6.hook_mlp_out", *weights, **kind),
            SAE("blocks.8.hook_resid_mid", *weights, **kind),
            SAE("blocks.5.mlp.hook_in", *weights, **kind, output_hook="blocks.5.hook_mlp_out"),
        ]
    )
    prompt = "When John and Mary went to the store, John gave a drink to"
    tokens = demo_model.to_tokens(prompt)[0]
    eos = demo_model.tokenizer.eos_token_id
    top = {h: prompt_latents(demo_model, tokens, moved[h]).amax(0) for h in moved}
    latent = int(top["blocks.4.hook_attn_out"].argmax())
    res = cv.steer(demo_model, prompt, features=f"L4attnF{latent}", saes=moved, n_tokens=8)
    ref = greedy_bridge(
        demo_model,
        tokens,
        moved,
        [LatentEdit("blocks.4.hook_attn_out", latent, res.values[0])],
        n_tokens=8,
        eos=eos,
        desc=None,
    )
    assert res.cached and res.after_tokens == [demo_model.to_string(t) for t in ref.ids]
    edits = [
        LatentEdit(h, int(top[h].argmax()), 4.0 * float(top[h].max()) if n % 2 else 0.0)
        for n, h in enumerate(moved)
    ]
    base = greedy_bridge(demo_model, tokens, moved, [], n_tokens=1, eos=eos, desc=None)
    assert fast_sites(demo_model, moved, edits)
    fast = greedy_cached(demo_model, twin(demo_model), tokens, moved, edits, n_tokens=8, eos=eos)
    slow = greedy_bridge(demo_model, tokens, moved, edits, n_tokens=8, eos=eos, desc=None)
    assert_same(fast, slow, base)
    assert not has_hooks(demo_model)
