"""Feature circuits with SAEs at every site kind (resid_pre, attn_out, resid_mid, a transcoder
that reads ln2's output, mlp_out, resid_post) in ONE graph on the tiny llama, checked against
splices written out by hand: the splice keeps the logits, node and edge scores equal
Δ × gradient by autograd (an edge: d M / d ε with ε · Δa_u added to that one receiver's input),
feature ablation and faithfulness equal hand-written hooks."""

from __future__ import annotations

import itertools
import re

import numpy as np
import pytest
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks, hooks
from circuitviz.engine._pairs import tokenize
from circuitviz.engine.features import SAE, SAESet, splice_hooks
from circuitviz.engine.graph import FeatureGraph
from tests._tiny_sae import feature_pairs, tiny_site_saes

TOL = 1e-4
SITES = [
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_resid_mid",
    "blocks.1.hook_mlp_out",
    "blocks.1.hook_resid_post",
]
TRANSCODERS = [("blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out")]  # after ln2
TC = TRANSCODERS[0][0]


@pytest.fixture(scope="module")
def saes(tiny_llama):
    return tiny_site_saes(tiny_llama, SITES, TRANSCODERS)


@pytest.fixture(scope="module")
def pairs():
    return feature_pairs()


@pytest.fixture(scope="module")
def graph(tiny_llama, pairs, saes) -> FeatureGraph:
    return cv.circuit(tiny_llama, pairs, saes=saes, progress=False)


@pytest.fixture(scope="module")
def tokens(tiny_llama, pairs):
    return tokenize(tiny_llama, pairs)


def metric(tokens, logits):
    last = logits[:, -1]
    rows = torch.arange(len(last))
    return (last[rows, tokens.answers] - last[rows, tokens.wrong_answers]).mean()


def run(model, tokens, fwd, *, corrupted=False, grad=False):
    with torch.set_grad_enabled(grad), hooks(model, fwd):
        return model(tokens.corrupted if corrupted else tokens.clean, return_type="logits")


def ln2(model, layer):
    block = model.blocks[layer]
    return getattr(block.ln2, "_original_component", block.ln2)


def hand_splices(model, saes, *, edit=None, leaf=None, record=None, touch=None):
    """Every SAE spliced by hand: ``f = encode(x)``, ``err = target − decode(f)`` (a
    transcoder's target: the MLP output), output ``decode(edit(f)) + err``.
    ``leaf = (hook, store)``: that site's f and err become leaves requiring grad.
    ``record[hook]`` collects (f, err). ``touch(hook, x, f, err) -> (f, err)`` changes them
    (the ε perturbations; ``x`` is the SAE's input, or ln2's input for the transcoder)."""
    fwd, mids = [], {}

    def finish(h, sae, x, f, err):
        if touch is not None:
            f, err = touch(h, x, f, err)
        if record is not None:
            record.setdefault(h, []).append((f.detach(), err.detach()))
        if leaf is not None and leaf[0] == h:
            f, err = f.detach().requires_grad_(True), err.detach().requires_grad_(True)
            leaf[1]["f"], leaf[1]["err"] = f, err
        if edit is not None:
            f = edit(h, f.clone())
        return sae.decode(f) + err

    for h, sae in saes.items():
        if sae.is_transcoder:
            stash = {}
            layer = sae.layer
            fwd.append(
                (f"blocks.{layer}.ln2.hook_in", lambda x, hook, L=layer: mids.update({L: x}))
            )

            def read(x, hook, sae=sae, stash=stash):
                stash["f"] = sae.encode(x)

            def write(y, hook, sae=sae, stash=stash, h=h, L=layer):
                f = stash["f"]
                return finish(h, sae, mids[L], f, y - sae.decode(f))

            fwd += [(h, read), (sae.output_hook, write)]
        else:
            spliced = {}

            def fn(x, hook, sae=sae, h=h, spliced=spliced):
                f = sae.encode(x)
                spliced["x"], spliced["out"] = x, finish(h, sae, x, f, x - sae.decode(f))
                return spliced["out"]

            fwd.append((h, fn))
            if h.endswith("hook_resid_mid"):  # hook_resid_mid feeds ln2 only: the skip too
                fwd.append(
                    (
                        f"blocks.{sae.layer}.hook_resid_post",
                        lambda y, hook, s=spliced: y - s["x"] + s["out"],
                    )
                )
    return fwd


def latents(model, tokens, saes):
    """{hook: (clean (f, err), corrupted (f, err))} through the hand splices."""
    store: dict = {}
    for which in (False, True):
        run(model, tokens, hand_splices(model, saes, record=store), corrupted=which)
    return store


# --------------------------------------------------------------------------- invariants
def test_site_kinds_and_node_ids(saes, graph):
    assert {s["site"] for s in graph.saes} == {"", "pre", "mid", "attn", "mlp", "tc"}
    kinds = {n.id.split(":")[0].rstrip("0123456789").split("F")[0] for n in graph.nodes}
    assert {"L0pre", "L0attn", "L0mid", "L0tc", "L1mlp", "L1"} <= kinds
    ids = {n.id.split(":")[0] for n in graph.nodes}
    assert "MLP0" not in ids  # the transcoder replaces it
    assert "MLP1" in ids and "L0H0" in ids  # mlp_out / attn_out SAEs keep their components
    for n in graph.nodes:
        if n.type in ("feature", "error"):
            assert n.hook in saes and n.site in ("", "pre", "mid", "attn", "mlp", "tc")
    err = next(n for n in graph.nodes if n.id.startswith("L0tcERR:"))
    assert err.hook == TC and err.label == "L0 tc error"


def test_splicing_every_site_with_its_error_keeps_the_logits(tiny_llama, tokens, saes):
    before = run(tiny_llama, tokens, [])
    after = run(tiny_llama, tokens, splice_hooks(saes))
    assert float((after - before).abs().max()) <= TOL
    hand = run(tiny_llama, tokens, hand_splices(tiny_llama, saes))
    assert float((hand - before).abs().max()) <= TOL
    assert not has_hooks(tiny_llama)


@pytest.mark.parametrize("hook", [*SITES, TC])
def test_node_scores_equal_autograd_on_a_hand_spliced_model(tiny_llama, tokens, saes, graph, hook):
    """A latent's score = Σ_b Δf · ∂M/∂f, the error node's Δerr · ∂M/∂err (autograd through
    the hand splices, Δ = corrupted − clean)."""
    leaf: dict = {}
    logits = run(tiny_llama, tokens, hand_splices(tiny_llama, saes, leaf=(hook, leaf)), grad=True)
    gf, gerr = torch.autograd.grad(metric(tokens, logits), [leaf["f"], leaf["err"]])
    (fc, ec), (fx, ex) = latents(tiny_llama, tokens, saes)[hook]
    ref_f = ((fx - fc) * gf).sum(0)
    ref_e = ((ex - ec) * gerr).sum((0, 2))
    scale = max(1.0, float(ref_f.abs().max()))
    checked = 0
    for n in graph.nodes:
        if n.hook != hook:
            continue
        ref = ref_f[n.pos, n.feature] if n.type == "feature" else ref_e[n.pos]
        assert abs(n.score - float(ref)) <= TOL * scale, n.id
        checked += n.type == "feature"
    assert checked >= 5


def kind(node_id: str) -> str:
    """``"L0tcF12:P3"`` -> ``"L0tcF"``; ``"L0H3:P1"`` -> ``"L0H"``; ``"MLP1:P2"`` -> ``"MLP1"``."""
    base = node_id.split(":")[0]
    return re.sub(r"^(L\d+(?:pre|mid|attn|mlp|tc)?)(F|H)\d+$", r"\1\2", base)


def _sender_delta(model, tokens, saes, store, node):
    """Δa_u [batch, pos, d_model] of a sender node, zero off its position."""
    p = node.pos
    out = torch.zeros(tokens.clean.shape[0], tokens.clean.shape[1], model.cfg.d_model)
    if node.type == "embed":
        acts = []
        for which in (False, True):
            run(
                model,
                tokens,
                [("blocks.0.hook_resid_pre", lambda x, hook: acts.append(x))],
                corrupted=which,
            )
        out[:, p] = acts[1][:, p] - acts[0][:, p]
    elif node.type == "mlp":
        acts = []
        hook = f"blocks.{node.layer}.hook_mlp_out"
        for which in (False, True):
            run(model, tokens, [(hook, lambda x, hook: acts.append(x.detach()))], corrupted=which)
        out[:, p] = acts[1][:, p] - acts[0][:, p]
    else:
        (fc, ec), (fx, ex) = store[node.hook]
        if node.type == "feature":
            i = node.feature
            out[:, p] = (fx[:, p, i] - fc[:, p, i])[:, None] * saes[node.hook].W_dec[i]
        else:
            out[:, p] = ex[:, p] - ec[:, p]
    return out


def _edge_reference(model, tokens, saes, delta, target):
    """d M / d ε at ε = 0, with ε · Δ added to the input of ``target`` alone."""
    eps = torch.zeros((), requires_grad=True)
    fwd: list = []
    touch = None
    if target.type == "logits":
        fwd.append(("ln_final.hook_in", lambda x, hook: x + eps * delta))
    elif target.type == "mlp":
        fwd.append((f"blocks.{target.layer}.ln2.hook_in", lambda x, hook: x + eps * delta))
    else:
        sae = saes[target.hook]

        def encoder_input(x):
            post_norm = target.hook.endswith(("mlp.hook_in", "ln2.hook_out"))
            return ln2(model, sae.layer)(x) if post_norm else x

        def touch(h, x, f, err):
            if h != target.hook:
                return f, err
            moved = sae.encode(encoder_input(x + eps * delta))
            if target.type == "feature":
                i = target.feature
                bump = torch.zeros_like(f)
                bump[..., i] = (moved - f)[..., i] * (f[..., i] != 0)
                return f + bump, err
            assert not sae.is_transcoder  # its error node's input runs through the MLP
            return f, err + eps * delta - (sae.decode(moved) - sae.decode(f))

    logits = run(model, tokens, hand_splices(model, saes, touch=touch) + fwd, grad=True)
    (g,) = torch.autograd.grad(metric(tokens, logits), [eps])
    return float(g)


@pytest.mark.parametrize(
    "source, target",
    [
        ("EMBED", "L0preF"),
        ("EMBED", "L0preERR"),
        ("L0attnF", "L0midF"),
        ("L0midF", "L0tcF"),  # a transcoder latent reading after ln2
        ("L0midERR", "L0tcF"),
        ("L0tcF", "MLP1"),
        ("L0tcERR", "L1F"),
        ("MLP1", "L1mlpF"),  # a component into the SAE on its output
        ("MLP1", "L1mlpERR"),
        ("L1mlpF", "L1F"),
        ("L1F", "LOGITS"),
    ],
)
def test_edge_scores_equal_gradient_times_delta(tiny_llama, tokens, saes, graph, source, target):
    """The strongest edge of each kind equals Δa_u · ∂M/∂x_r, the gradient taken by autograd
    of the metric with ε · Δa_u added to that receiver's input only."""
    nodes = {n.id: n for n in graph.nodes}
    edges = [e for e in graph.edges if (kind(e["source"]), kind(e["target"])) == (source, target)]
    assert edges, (source, target)
    store = latents(tiny_llama, tokens, saes)
    for e in edges[:2]:  # the strongest two
        delta = _sender_delta(tiny_llama, tokens, saes, store, nodes[e["source"]])
        ref = _edge_reference(tiny_llama, tokens, saes, delta, nodes[e["target"]])
        assert abs(e["weight"] - ref) <= TOL * max(1.0, abs(ref)), (e, ref)
    assert not has_hooks(tiny_llama)


def test_edges_into_the_transcoder_sum_to_the_mlp_input_edge(tiny_llama, tokens, saes, graph):
    """Completeness: a sender's edges into the transcoder's latents and error node sum to its
    plain edge into the MLP's input (d M / d ε with ε · Δ added at ln2's input)."""
    nodes = {n.id: n for n in graph.nodes}
    sums: dict[str, float] = {}
    for e in graph.edges:
        if e["target"].startswith("L0tc"):
            sums[e["source"]] = sums.get(e["source"], 0.0) + e["weight"]
    top = sorted(sums, key=lambda s: -abs(sums[s]))[:3]
    store = latents(tiny_llama, tokens, saes)
    mlp0 = type(nodes[top[0]])(
        id="MLP0:P0", type="mlp", layer=0, head=None, pos=0, label="", score=0.0
    )
    for s in top:
        delta = _sender_delta(tiny_llama, tokens, saes, store, nodes[s])
        ref = _edge_reference(tiny_llama, tokens, saes, delta, mlp0)
        assert abs(sums[s] - ref) <= TOL * max(1.0, abs(ref)), (s, sums[s], ref)


# --------------------------------------------------------------------------- ablation
@pytest.mark.parametrize("hook", [TC, "blocks.0.hook_attn_out", "blocks.1.hook_mlp_out"])
@pytest.mark.parametrize("mode", ["zero", "resample"])
def test_feature_ablation_equals_a_hand_written_hook(
    tiny_llama, pairs, tokens, saes, graph, hook, mode
):
    feat = max(
        (n for n in graph.nodes if n.hook == hook and n.type == "feature"),
        key=lambda n: abs(n.score),
    )
    store = latents(tiny_llama, tokens, saes)
    corr = store[hook][1][0]

    def edit(h, f):
        if h == hook:
            f[:, feat.pos, feat.feature] = (
                0.0 if mode == "zero" else corr[:, feat.pos, feat.feature]
            )
        return f

    ref = float(metric(tokens, run(tiny_llama, tokens, hand_splices(tiny_llama, saes, edit=edit))))
    comp = f"{feat.id}"
    res = cv.ablate(tiny_llama, pairs, features=[comp], saes=saes, mode=mode)
    assert res.components == [comp]
    assert abs(res.ablated - ref) <= TOL
    assert abs(res.ablated - res.clean) > 10 * TOL or mode == "zero"
    assert not has_hooks(tiny_llama)


@pytest.mark.parametrize(
    "hook", [TC, "blocks.0.hook_attn_out", "blocks.1.hook_mlp_out", "blocks.0.hook_resid_mid"]
)
@pytest.mark.parametrize("mode", ["zero", "resample"])
def test_error_node_ablation_at_any_site_equals_a_hand_written_hook(
    tiny_llama, pairs, tokens, saes, graph, hook, mode
):
    err_node = max(
        (n for n in graph.nodes if n.hook == hook and n.type == "error" and n.pos > 0),
        key=lambda n: abs(n.score),
    )
    corr_err = latents(tiny_llama, tokens, saes)[hook][1][1]

    def touch(h, x, f, err):
        if h == hook:
            err = err.clone()
            err[:, err_node.pos] = 0.0 if mode == "zero" else corr_err[:, err_node.pos]
        return f, err

    ref = float(
        metric(tokens, run(tiny_llama, tokens, hand_splices(tiny_llama, saes, touch=touch)))
    )
    res = cv.ablate(tiny_llama, pairs, features=[err_node.id], saes=saes, mode=mode)
    assert res.components == [err_node.id]
    assert abs(res.ablated - ref) <= TOL
    assert abs(res.ablated - res.clean) > TOL  # the term is small on tiny SAEs, not nothing
    assert not has_hooks(tiny_llama)


def test_site_ids_parse_in_one_place(saes):
    from circuitviz.engine._components import parse_id
    from circuitviz.engine.features._steer import parse_feature

    comp = parse_id("L0tcF12:P3")
    assert (comp.layer, comp.site, comp.feature, comp.pos) == (0, "tc", 12, 3)
    assert comp.hook_in(saes) == TC and comp.id == "L0tcF12:P3"
    assert parse_id("L1F5").hook_in(saes) == "blocks.1.hook_resid_post"
    assert parse_id("L1F5").hook == "blocks.1.hook_resid_post"  # by the code alone
    assert parse_id("L0attnF2").hook == "blocks.0.hook_attn_out" and comp.hook is None
    assert parse_feature("L0attnF3", saes).hook == "blocks.0.hook_attn_out"
    assert parse_feature((TC, 3), saes).id == "L0tcF3"
    with pytest.raises(cv.InputError, match="L1mlpF"):
        parse_feature("L1attnF3", saes)  # no attn_out SAE in block 1: the error names those there


# --------------------------------------------------------------------------- faithfulness
def test_faithfulness_keeps_and_ablates_errors(tiny_llama, pairs, tokens, saes, graph):
    full = graph.faithfulness(tiny_llama, pairs)
    assert abs(full.metric - full.clean) <= TOL
    io = [n.id for n in graph.nodes if n.type in ("embed", "logits")]
    none = graph.faithfulness(tiny_llama, pairs, nodes=io, errors="graph")
    assert abs(none.metric - none.corrupted) <= TOL  # every node patched: the corrupted run
    # every error term corrupted, every node clean: the hand splices with err := corrupted
    store = latents(tiny_llama, tokens, saes)

    def touch(h, x, f, err):
        return f, store[h][1][1]

    def edit(h, f):  # latents that are no node (inactive on every prompt) stay corrupted
        (clean, _), (corr, _) = store[h]
        return torch.where(((clean != 0) | (corr != 0)).any(0), f, corr)

    fwd = hand_splices(tiny_llama, saes, touch=touch, edit=edit)
    ref = float(metric(tokens, run(tiny_llama, tokens, fwd)))
    got = graph.faithfulness(tiny_llama, pairs, errors="ablated")
    assert abs(got.metric - ref) <= TOL


@pytest.mark.parametrize("hook", [TC, "blocks.0.hook_attn_out", "blocks.1.hook_mlp_out"])
def test_faithfulness_without_one_latent_equals_patching_it(
    tiny_llama, pairs, tokens, saes, graph, hook
):
    feat = max(
        (n for n in graph.nodes if n.hook == hook and n.type == "feature"),
        key=lambda n: abs(n.score),
    )
    store = latents(tiny_llama, tokens, saes)

    def edit(h, f):
        (clean, _), (corr, _) = store[h]
        listed = ((clean != 0) | (corr != 0)).any(0)
        if h == hook:
            listed[feat.pos, feat.feature] = False
        return torch.where(listed, f, corr)

    ref = float(metric(tokens, run(tiny_llama, tokens, hand_splices(tiny_llama, saes, edit=edit))))
    got = graph.faithfulness(tiny_llama, pairs, ablated=[feat.id])
    assert abs(got.metric - ref) <= TOL


def test_mixed_graph_prunes_and_round_trips(tiny_llama, pairs, saes, graph):
    small = graph.prune(top_edges=150)
    kinds = {n.site for n in small.nodes if n.site is not None}
    assert len(kinds) >= 3
    back = FeatureGraph.from_json(small.to_json())
    assert [n.id for n in back.nodes] == [n.id for n in small.nodes]
    assert [n.hook for n in back.nodes] == [n.hook for n in small.nodes]
    assert back.faithfulness(tiny_llama, pairs, saes=saes).metric == pytest.approx(
        small.faithfulness(tiny_llama, pairs).metric, abs=TOL
    )


def test_eap_ig_transcoder_scores_equal_averaged_autograd(tiny_llama, pairs, tokens, saes):
    """EAP-IG (2 steps) through the post-ln2 transcoder: a latent's score = Δf · the mean over
    α ∈ {1, 1/2} of ∂M/∂f by autograd (the per-step ln2 products inside match)."""
    g = cv.circuit(tiny_llama, pairs, saes=saes, method="eap-ig", steps=2, progress=False)
    emb = {}
    for name, which in (("clean", False), ("corrupted", True)):
        run(
            tiny_llama,
            tokens,
            [("hook_embed", lambda x, hook, n=name: emb.update({n: x}))],
            corrupted=which,
        )
    for hook in (TC, "blocks.0.hook_resid_mid"):
        grads = []
        for alpha in (1.0, 0.5):
            mixed = emb["corrupted"] + alpha * (emb["clean"] - emb["corrupted"])
            leaf: dict = {}
            fwd = [("hook_embed", lambda x, hook, m=mixed: m)]
            fwd += hand_splices(tiny_llama, saes, leaf=(hook, leaf))
            logits = run(tiny_llama, tokens, fwd, grad=True)
            grads.append(torch.autograd.grad(metric(tokens, logits), [leaf["f"]])[0])
        (fc, _), (fx, _) = latents(tiny_llama, tokens, saes)[hook]
        ref = ((fx - fc) * torch.stack(grads).mean(0)).sum(0)
        feats = [n for n in g.nodes if n.hook == hook and n.type == "feature"]
        assert feats
        for n in feats:
            assert abs(n.score - float(ref[n.pos, n.feature])) <= TOL * max(
                1.0, float(ref.abs().max())
            )


# --------------------------------------------------------------------------- bad input
def test_bad_site_combinations_leave_the_model_untouched(tiny_llama, pairs, tokens, saes):
    before = run(tiny_llama, tokens, [])
    tc = saes[TC]
    on_out = SAE("blocks.0.hook_mlp_out", tc.W_enc, tc.b_enc, tc.W_dec, tc.b_dec)
    with pytest.raises(cv.InputError, match="keep one"):
        cv.circuit(tiny_llama, pairs, saes=SAESet([tc, on_out]), progress=False)
    early = SAE(
        "blocks.0.hook_resid_pre",
        tc.W_enc,
        tc.b_enc,
        tc.W_dec,
        tc.b_dec,
        output_hook="blocks.0.hook_mlp_out",
    )
    with pytest.raises(cv.InputError, match="MLP's input"):
        cv.circuit(tiny_llama, pairs, saes=early, progress=False)
    elsewhere = SAE(TC, tc.W_enc, tc.b_enc, tc.W_dec, tc.b_dec, output_hook="blocks.1.hook_mlp_out")
    with pytest.raises(cv.InputError, match="transcoders that write"):
        cv.circuit(tiny_llama, pairs, saes=elsewhere, progress=False)
    after = run(tiny_llama, tokens, [])
    assert torch.equal(before, after) and not has_hooks(tiny_llama)
    np.testing.assert_array_equal(before.numpy(), after.numpy())


@pytest.mark.parametrize(
    "model_name, tc_input",
    [
        ("tiny_llama", "blocks.0.hook_resid_mid"),
        ("tiny_llama", "blocks.0.ln2.hook_in"),
        ("tiny_gpt2", "blocks.0.mlp.hook_in"),  # LayerNorm with a bias
        ("tiny_gpt2", "blocks.0.ln2.hook_out"),
    ],
)
def test_transcoder_inputs_before_and_after_ln2(request, pairs, model_name, tc_input):
    """A transcoder read before ln2 or after it: its latents' scores equal autograd, and a
    sender's edges into it sum to that sender's edge into the MLP input."""
    model = request.getfixturevalue(model_name)
    tokens = tokenize(model, pairs)
    saes = tiny_site_saes(
        model, ["blocks.1.hook_resid_post"], [(tc_input, "blocks.0.hook_mlp_out")]
    )
    graph = cv.circuit(model, pairs, saes=saes, progress=False)
    assert not any(n.id.startswith("MLP0:") for n in graph.nodes)
    leaf: dict = {}
    logits = run(model, tokens, hand_splices(model, saes, leaf=(tc_input, leaf)), grad=True)
    (gf,) = torch.autograd.grad(metric(tokens, logits), [leaf["f"]])
    store = latents(model, tokens, saes)
    (fc, _), (fx, _) = store[tc_input]
    ref = ((fx - fc) * gf).sum(0)
    feats = [n for n in graph.nodes if n.hook == tc_input and n.type == "feature"]
    assert len(feats) >= 5
    for n in feats:
        assert abs(n.score - float(ref[n.pos, n.feature])) <= TOL * max(1.0, float(ref.abs().max()))
    nodes = {n.id: n for n in graph.nodes}
    into = [
        e
        for e in graph.edges
        if e["target"].startswith("L0tcF") and e["source"].startswith("EMBED")
    ]
    top = max(into, key=lambda e: abs(e["weight"]))
    delta = _sender_delta(model, tokens, saes, store, nodes[top["source"]])
    got = _edge_reference(model, tokens, saes, delta, nodes[top["target"]])
    assert abs(top["weight"] - got) <= TOL * max(1.0, abs(got))
    total = sum(
        e["weight"]
        for e in graph.edges
        if e["source"] == top["source"] and e["target"].startswith("L0tc")
    )
    mlp = nodes[top["source"]].__class__(
        id="MLP0", type="mlp", layer=0, head=None, pos=0, label="", score=0.0
    )
    got = _edge_reference(model, tokens, saes, delta, mlp)
    assert abs(total - got) <= TOL * max(1.0, abs(got))


# --------------------------------------------------------------------------- drawing
def test_static_figure_places_each_site_on_its_own_level(graph, tmp_path):
    small = graph.prune(top_edges=150)
    fig = small.figure()
    points = {
        (x, y) for t in fig.data if t.mode == "markers" for x, y in zip(t.x, t.y, strict=True)
    }
    n_nodes = sum(
        len(t.x) for t in fig.data if t.mode == "markers" and t.name not in ("ablated", "selected")
    )
    assert len(points) == n_nodes  # no two nodes on one spot
    from circuitviz.export._graph_layout import layout_positions

    nodes = [n.to_dict() for n in small.nodes]
    at, _, _ = layout_positions(
        {"n_layers": small.n_layers, "n_heads": small.n_heads, "per_position": True, "nodes": nodes}
    )
    order = ["pre", "attn", "mid", "tc", "mlp", ""]  # forward order within a block
    by_site: dict = {}
    for n in nodes:
        if n["type"] in ("feature", "error"):
            by_site.setdefault((n["layer"], n["pos"], n["site"]), []).append(at[n["id"]][1])
    for (layer, pos, site), ys in by_site.items():  # sites in forward order, bottom-up
        for (layer2, pos2, site2), ys2 in by_site.items():
            if (layer, pos) == (layer2, pos2) and order.index(site) < order.index(site2):
                assert max(ys) < min(ys2)
    assert small.save(tmp_path / "sites.svg").exists()


@pytest.mark.browser
def test_browser_mixed_site_feature_graph(page, tmp_path, tiny_llama, pairs, graph, saes):
    from circuitviz.views import CircuitView
    from tests.conftest import ARTIFACTS
    from tests.test_circuit_view import Bridge

    view = CircuitView(tiny_llama, pairs, graph=graph, saes=saes)
    view.top_nodes, view.top_edges = 70, 160
    sent = view.graph["nodes"]
    assert len({n.get("site") for n in sent if n["type"] in ("feature", "error")}) >= 3
    for n in sent:
        if n["type"] == "feature":
            assert n["ablates"] == n["id"]  # a click ablates that latent at that position
    Bridge(view, page, tmp_path / "sites.html")
    page.set_viewport_size({"width": 1400, "height": 900})
    page.goto((tmp_path / "sites.html").as_uri())
    feat = page.locator('.cv-circuit g.cv-node[data-type="feature"]')
    feat.first.wait_for()
    assert feat.count() == sum(n["type"] == "feature" for n in sent)

    def y_of(node_id):
        box = page.locator(f'.cv-circuit g.cv-node[data-component="{node_id}"]').bounding_box()
        return box["y"] + box["height"] / 2

    # within one block, later sites are drawn higher up (forward order bottom-up)
    order = {"pre": 0, "attn": 1, "mid": 2, "tc": 3, "mlp": 4, "": 5}
    shown = [n for n in sent if n["type"] in ("feature", "error") and n["layer"] == 0]
    ys = {}
    for n in shown:
        ys.setdefault(order[n["site"]], y_of(n["id"]))
    keys = sorted(ys)
    assert len(keys) >= 2
    for a, b in itertools.pairwise(keys):
        assert ys[b] < ys[a]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(".cv-circuit").screenshot(path=str(ARTIFACTS / "feature_sites.png"))
    assert not page.console_errors


@pytest.mark.parametrize("site", ["tc", "mid", "attn"])
def test_steering_a_latent_at_any_site_equals_a_hand_spliced_greedy_loop(tiny_llama, saes, site):
    """``steer`` clamps the latent through the site's splice (a transcoder's at the MLP
    output, resid_mid's on both of its readers), as the hand splices do."""
    from circuitviz.engine._sites import site_hook

    prompt = "t5 t17 t3 t9 t5"
    hook = site_hook(saes, 0, site)
    store: dict = {}
    run_tokens = tiny_llama.to_tokens(prompt)
    with torch.no_grad(), hooks(tiny_llama, hand_splices(tiny_llama, saes, record=store)):
        tiny_llama(run_tokens, return_type="logits")
    i = int(store[hook][0][0][0].amax(0).argmax())
    res = cv.steer(tiny_llama, prompt, features=f"L0{site}F{i}", saes=saes, scale=8.0)
    assert res.features == [f"L0{site}F{i}"]
    value = res.values[0]

    def edit(h, f):
        if h == hook:
            f[..., i] = value
        return f

    seq, out = run_tokens, []
    with torch.no_grad(), hooks(tiny_llama, hand_splices(tiny_llama, saes, edit=edit)):
        for _ in range(len(res.after_tokens)):
            nxt = int(tiny_llama(seq, return_type="logits")[0, -1].argmax())
            out.append(nxt)
            seq = torch.cat([seq, torch.tensor([[nxt]])], 1)
    got = [int(tiny_llama.to_tokens(t, prepend_bos=False)[0, 0]) for t in res.after_tokens]
    assert got == out
    assert not has_hooks(tiny_llama)
