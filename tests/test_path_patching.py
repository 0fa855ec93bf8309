"""Path patching: equal to TransformerLens's direct path patching where it applies, and to a
hand-written three-run reference (explicit hooks, one condition at a time) on GQA models."""

from __future__ import annotations

import pytest
import torch
from transformer_lens.patching import get_act_patch_direct_path_all_sources

import circuitviz as cv
from circuitviz.engine import has_hooks, hooks, tokenize

TOL = 1e-6  # float32 on the tiny models (errors are ~2e-8); the issue asks <= 1e-4
DEMO_TOL = 1e-4
PAIRS = cv.PromptPairs(
    ["t1 t2 t3 t4 t1 t2", "t9 t3 t4 t9 t3 t4"],
    ["t5 t6 t7 t8 t5 t6", "t10 t11 t12 t10 t11 t12"],
    [" t3", " t9"],
    [" t7", " t10"],
)


def sharp_model(kind: str):
    """A 3-layer tiny model whose attention depends on its input: random tiny models attend
    almost uniformly, so a path into q or k would move the metric by ~1e-6, too little to
    tell a right answer from a wrong one. Scaling the Q/K/V weights makes it ~1e-4."""
    model = cv.tiny_model(kind, n_layers=3)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if any(k in name for k in ("q_proj", "k_proj", "attn.qkv.")) and param.ndim == 2:
                param.mul_(4)
    return model


def logit_diff(model, pairs):
    tokens = tokenize(model, pairs)
    rows = torch.arange(tokens.batch)

    def metric(logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]
        return (last[rows, tokens.answers] - last[rows, tokens.wrong_answers]).mean()

    return metric


def reference(model, pairs, senders, receivers, kind, direction="denoise") -> float:
    """The three runs of Wang et al., written out: cache both runs; run the base prompts with
    every head's z and MLP's output frozen to the base run's except the senders' (source
    run's), recording the receivers' input; run the base prompts again with only that input
    replaced."""
    tokens = tokenize(model, pairs)
    src_tokens, base_tokens = (
        (tokens.clean, tokens.corrupted)
        if direction == "denoise"
        else (tokens.corrupted, tokens.clean)
    )
    with torch.inference_mode():
        _, src = model.run_with_cache(src_tokens)
        _, base = model.run_with_cache(base_tokens)
    group = model.cfg.n_heads // (
        getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads
    )

    def freeze(name, heads=None):
        def fn(x, hook):
            out = base[name].clone()
            for h in heads or []:
                out[:, :, h] = src[name][:, :, h]
            return out

        return fn

    def freeze_mlp(name, from_source):
        return lambda x, hook: (src if from_source else base)[name].clone()

    run2 = []
    for layer in range(model.cfg.n_layers):
        z = f"blocks.{layer}.attn.hook_z"
        run2.append((z, freeze(z, [h for (l, h) in senders if l == layer])))
        mlp = f"blocks.{layer}.hook_mlp_out"
        run2.append((mlp, freeze_mlp(mlp, ("MLP", layer) in senders)))
    if kind == "resid":
        targets = {"ln_final.hook_in": None}
    else:
        targets = {}
        for layer, head in receivers:
            idx = head if kind == "q" else head // group
            targets.setdefault(f"blocks.{layer}.attn.hook_{kind}", set()).add(idx)
    recorded = {}

    def record(name):
        def fn(x, hook):
            recorded[name] = x.clone()

        return fn

    with torch.inference_mode(), hooks(model, run2 + [(n, record(n)) for n in targets]):
        model(base_tokens)

    def replace(name, idx):
        def fn(x, hook):
            x = x.clone()
            if idx is None:
                return recorded[name]
            for i in idx:
                x[:, :, i] = recorded[name][:, :, i]
            return x

        return fn

    with torch.inference_mode(), hooks(model, [(n, replace(n, i)) for n, i in targets.items()]):
        logits = model(base_tokens)
    return float(logit_diff(model, pairs)(logits))


# ------------------------------------------------------------------ TransformerLens


@pytest.mark.parametrize(
    ("kind", "component"), [("gpt2", "q"), ("gpt2", "k"), ("gpt2", "v"), ("llama", "q")]
)
def test_equals_transformer_lens(kind, component):
    model = sharp_model(kind)
    tokens = tokenize(model, PAIRS)
    with torch.inference_mode():
        _, clean = model.run_with_cache(tokens.clean)
        _, corrupted = model.run_with_cache(tokens.corrupted)
        tl = get_act_patch_direct_path_all_sources(
            model, tokens.corrupted, clean, corrupted, logit_diff(model, PAIRS), component, False
        )  # [src layer, src head, dst layer, dst head]
    n_heads = model.cfg.n_heads
    for dst_layer, dst_head in [(1, 2), (2, 0), (2, 3)]:
        result = cv.path_patch(
            model,
            PAIRS,
            receivers=[(dst_layer, dst_head)],
            receiver_input=component,
            progress=False,
        )
        expected = tl[:dst_layer, :, dst_layer, dst_head]
        assert (expected - result.corrupted).abs().max() > 30 * TOL  # the paths matter
        assert (result.values[:dst_layer] - expected).abs().max() <= TOL
        # Heads at or after the receiver have no path: the map keeps the unpatched metric.
        assert torch.all(result.values[dst_layer:] == result.corrupted)
        assert len(result.extra["no_path"]) == (3 - dst_layer) * n_heads
    single = cv.path_patch(
        model, PAIRS, senders=["L0H1"], receivers="L2H3", receiver_input=component, progress=False
    )
    assert abs(single - float(tl[0, 1, 2, 3])) <= TOL
    assert not has_hooks(model)


# ------------------------------------------------------------- hand-written reference

CASES = [  # senders, receivers, receiver input, direction
    ([(0, 1)], [(1, 2)], "q", "denoise"),
    ([(0, 1)], [(1, 0), (2, 3)], "k", "denoise"),  # GQA: KV heads 0 and 1
    ([(0, 3), ("MLP", 0)], [(2, 1), (2, 2)], "v", "noise"),
    ([(1, 0), ("MLP", 1), (0, 2)], [(2, 0), (2, 3)], "q", "denoise"),
    ([(2, 1), ("MLP", 2)], "logits", "resid", "denoise"),
]


def as_id(component) -> str:
    return f"MLP{component[1]}" if component[0] == "MLP" else f"L{component[0]}H{component[1]}"


@pytest.mark.parametrize(("senders", "receivers", "kind", "direction"), CASES)
def test_equals_reference_on_gqa(senders, receivers, kind, direction):
    model = sharp_model("llama")
    ours = cv.path_patch(
        model,
        PAIRS,
        senders=[as_id(s) for s in senders],
        receivers=receivers,
        receiver_input=kind,
        direction=direction,
        progress=False,
    )
    ref = reference(model, PAIRS, senders, receivers, kind, direction)
    unpatched = cv.path_patch(model, PAIRS, receivers="logits", progress=False)
    assert (
        abs(ref - (unpatched.corrupted if direction == "denoise" else unpatched.clean)) > 30 * TOL
    )
    assert abs(ours - ref) <= TOL
    assert not has_hooks(model)


def test_map_rows_equal_reference_across_receiver_layers():
    """Receivers in two layers: each sender reaches only the later ones, and its row is run
    2's input (the frozen corrupted stream plus its own output), not run 3's own stream."""
    model = sharp_model("llama")
    receivers = [(1, 3), (2, 0)]
    result = cv.path_patch(model, PAIRS, receivers=receivers, receiver_input="v", progress=False)
    for layer, head in [(0, 0), (0, 2), (1, 1), (1, 3)]:
        reached = [r for r in receivers if r[0] > layer]
        ref = reference(model, PAIRS, [(layer, head)], reached, "v")
        assert abs(float(result.values[layer, head]) - ref) <= TOL
    assert result.extra["no_path"] == [f"L2H{h}" for h in range(4)]


@pytest.mark.demo
def test_equals_reference_on_demo_model(demo_model):
    pairs = cv.tasks.ioi(demo_model, n=2, seed=0)
    for kind, receivers in [("q", [(27, 4), (28, 1)]), ("k", [(26, 7)])]:
        result = cv.path_patch(
            demo_model, pairs, receivers=receivers, receiver_input=kind, progress=False
        )
        for sender in [(3, 2), (20, 5), (25, 8)]:
            ref = reference(demo_model, pairs, [sender], receivers, kind)
            assert abs(float(result.values[sender]) - ref) <= DEMO_TOL
        assert (result.values - result.corrupted).abs().max() > 30 * DEMO_TOL
    assert not has_hooks(demo_model)


# ---------------------------------------------------------------------------- views


def test_map_in_patching_view(tiny_llama):
    from circuitviz import PatchingView

    result = cv.path_patch(tiny_llama, PAIRS, receivers="logits", progress=False)
    assert result.target == "path_heads" and result.method == "path"
    assert result.axes == ("layer", "head")
    assert result.component((1, 2)) == "L1H2"
    assert result.cells()[:2] == ["L0H0", "L0H1"]
    assert result.extra["receivers"] == ["LOGITS"] and result.extra["no_path"] == []
    view = PatchingView(result)
    assert view.map["target"] == "path_heads"
    assert view.map["labels"]["head"][:2] == ["H0", "H1"]
    figure = result.figure()
    assert figure.data[0].z.shape == (2, 4)
    assert figure.layout.title.text == "Path patching: each head → LOGITS (resid, denoise)"


@pytest.mark.parametrize("sender", ["L1F3", "L1ERR", "L0attnF2", "L0tcERR"])
def test_sae_ids_are_not_senders(tiny_llama, sender):
    """An SAE latent or error term parses as a component id, but path patching has no
    such sender: a clear error, not a head or MLP under another name."""
    with pytest.raises(cv.InputError, match="sends from heads and MLPs"):
        cv.path_patch(tiny_llama, PAIRS, senders=[sender], receivers="logits", progress=False)
    assert not has_hooks(tiny_llama)
