"""Feature circuits (circuit(..., saes=...)) on the tiny llama with tiny TopK SAEs on
blocks.{0,1}.hook_resid_post: the splice invariant, node attributions against autograd on a
hand-spliced model, exact feature ablation and faithfulness against hand-written latent hooks,
the node contract, pruning, JSON and bad input."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks, hooks
from circuitviz.engine._pairs import tokenize
from circuitviz.engine.features import SAE, SAESet, splice_hooks
from circuitviz.engine.graph import FeatureGraph, Graph
from tests._tiny_sae import feature_pairs, tiny_saes

TOL = 1e-4


@pytest.fixture(scope="module")
def saes(tiny_llama):
    return tiny_saes(tiny_llama)


@pytest.fixture(scope="module")
def pairs():
    return feature_pairs()


@pytest.fixture(scope="module")
def graph(tiny_llama, pairs, saes) -> FeatureGraph:
    return cv.circuit(tiny_llama, pairs, saes=saes, progress=False)


def logit_diff(model, tokens, logits: torch.Tensor) -> torch.Tensor:
    last = logits[:, -1]
    rows = torch.arange(len(last))
    return (last[rows, tokens.answers] - last[rows, tokens.wrong_answers]).mean()


def hand_hook(sae: SAE, edit=None, leaf: dict | None = None):
    """The splice written out by hand: encode, optionally edit the latents, decode, add the
    error back. ``leaf`` receives the latents as a tensor that requires grad."""

    def fn(x, hook):
        f = sae.encode(x)
        err = x - sae.decode(f)
        if leaf is not None:
            f = f.detach().requires_grad_(True)
            leaf["f"] = f
            leaf["err"] = err
        if edit is not None:
            f = edit(f.clone())
        return sae.decode(f) + err

    return fn


def run(model, tokens, fwd, *, corrupted=False, grad=False):
    with torch.set_grad_enabled(grad), hooks(model, fwd):
        return model(tokens.corrupted if corrupted else tokens.clean, return_type="logits")


# --------------------------------------------------------------------------- invariant
def test_splicing_every_sae_with_its_error_keeps_the_logits(tiny_llama, pairs, saes):
    tokens = tokenize(tiny_llama, pairs)
    plain = run(tiny_llama, tokens, [])
    spliced = run(tiny_llama, tokens, splice_hooks(saes))
    recon = run(tiny_llama, tokens, splice_hooks(saes, keep_error=False))
    assert (spliced - plain).abs().max() <= TOL
    assert (recon - plain).abs().max() > 10 * TOL  # the error term carries something


# --------------------------------------------------------------------------- node contract
def test_node_contract(graph, saes, tiny_llama):
    nodes = {n.id: n for n in graph.nodes}
    feats = [n for n in nodes.values() if n.type == "feature"]
    errs = [n for n in nodes.values() if n.type == "error"]
    assert feats and len(errs) == len(saes) * graph.n_pos
    f = feats[0]
    assert f.id == f"L{f.layer}F{f.feature}:P{f.pos}"
    assert f.hook == f"blocks.{f.layer}.hook_resid_post" and f.label == f"L{f.layer} F{f.feature}"
    assert f.to_dict()["feature"] == f.feature and f.to_dict()["hook"] == f.hook
    e = errs[0]
    assert e.id == f"L{e.layer}ERR:P{e.pos}" and "feature" not in e.to_dict()
    # every latent active on some clean or corrupted prompt at a position is a node there
    tokens = tokenize(tiny_llama, pairs_of(graph))
    store = {}

    def rec(h):
        def fn(x, hook):
            store.setdefault(h, []).append(saes[h].encode(x))

        return fn

    for which in (False, True):
        run(tiny_llama, tokens, [(h, rec(h)) for h in saes], corrupted=which)
    for h, (a, b) in store.items():
        layer = saes[h].layer
        active = ((a != 0) | (b != 0)).any(0)  # [pos, d_sae]
        expected = {f"L{layer}F{i}:P{p}" for p, i in active.nonzero().tolist()}
        got = {n.id for n in feats if n.layer == layer}
        assert got == expected


def pairs_of(graph):
    return cv.PromptPairs.from_dict(graph.prompts)


def test_labels_come_from_the_sets_stats(tiny_llama, pairs, saes):
    hook = saes.hooks[1]
    labelled = SAESet(saes.values(), name="tiny", stats={hook: {"labels": {3: "says t3"}}})
    g = cv.circuit(tiny_llama, pairs, saes=labelled, progress=False)
    for n in g.nodes:
        if n.type == "feature" and n.hook == hook and n.feature == 3:
            assert n.label == "says t3"
        elif n.type == "feature":
            assert n.label == f"L{n.layer} F{n.feature}"

    from types import SimpleNamespace

    from circuitviz.engine.graph._feature_graph import feature_label

    stats = SimpleNamespace(labels=[f"auto {i}" for i in range(64)])  # as FeatureStats
    assert feature_label({hook: stats}, hook, 1, 5) == "auto 5"
    assert feature_label({}, hook, 1, 5) == "L1 F5"


# --------------------------------------------------------------------------- attributions
@pytest.mark.parametrize("site", [0, 1])
def test_feature_and_error_scores_equal_autograd_on_a_hand_spliced_model(
    tiny_llama, pairs, saes, graph, site
):
    """EAP node score of latent i at p = Σ_b Δf[b,p,i] · ∂M/∂f[b,p,i] (Δ = corrupted − clean),
    and of the error node Δerr · ∂M/∂err, with the gradient taken by autograd through a
    hand-written splice (the reference)."""
    tokens = tokenize(tiny_llama, pairs)
    hook = saes.hooks[site]
    leaf: dict = {}
    fwd = [(h, hand_hook(saes[h], leaf=leaf if h == hook else None)) for h in saes]
    logits = run(tiny_llama, tokens, fwd, grad=True)
    gf, gerr = torch.autograd.grad(logit_diff(tiny_llama, tokens, logits), [leaf["f"], leaf["err"]])
    clean_f, clean_err = leaf["f"].detach(), leaf["err"].detach()
    run(tiny_llama, tokens, fwd, corrupted=True)
    corr_f, corr_err = leaf["f"].detach(), leaf["err"].detach()
    ref_f = ((corr_f - clean_f) * gf).sum(0)  # [pos, d_sae]
    ref_err = ((corr_err - clean_err) * gerr).sum((0, 2))  # [pos]
    layer = saes[hook].layer
    scale = float(ref_f.abs().max())
    checked = 0
    for n in graph.nodes:
        if n.layer != layer:
            continue
        if n.type == "feature":
            assert abs(n.score - float(ref_f[n.pos, n.feature])) <= TOL * max(1.0, scale)
            checked += 1
        elif n.type == "error":
            assert abs(n.score - float(ref_err[n.pos])) <= TOL * max(1.0, scale)
    assert checked > 10


def test_edges_into_a_site_sum_to_the_plain_residual_edge(tiny_llama, pairs, saes, graph):
    """Completeness: a sender's edges into one site's latents and error node sum to its
    plain EAP edge into the residual there, Δa · ∂M/∂resid_post (autograd reference)."""
    tokens = tokenize(tiny_llama, pairs)
    hook = saes.hooks[0]
    kept = {}

    def keep(x, hook):
        kept["x"] = x.detach().requires_grad_(True)
        return kept["x"]

    mlp = {}

    def save_mlp(x, hook):
        mlp.setdefault("v", []).append(x.detach())

    fwd = [(h, hand_hook(saes[h])) for h in saes]
    logits = run(
        tiny_llama, tokens, [("blocks.0.hook_mlp_out", save_mlp), *fwd, (hook, keep)], grad=True
    )
    (g,) = torch.autograd.grad(logit_diff(tiny_llama, tokens, logits), [kept["x"]])
    run(tiny_llama, tokens, [("blocks.0.hook_mlp_out", save_mlp)], corrupted=True)
    clean, corr = mlp["v"]
    ref = ((corr - clean) * g).sum((0, 2))  # [pos]
    got = np.zeros(graph.n_pos)
    for e in graph.edges:
        if e["source"].startswith("MLP0:") and e["input"] in ("feature", "error"):
            got[int(e["source"].split(":P")[1])] += e["weight"]
    np.testing.assert_allclose(got, ref.numpy(), atol=TOL * max(1.0, float(ref.abs().max())))


def test_eap_ig_feature_scores_equal_averaged_autograd(tiny_llama, pairs, saes):
    """EAP-IG (3 steps): a latent's score = Δf · the mean over α ∈ {1, 2/3, 1/3} of ∂M/∂f on
    the clean run with embeddings corrupted + α (clean − corrupted), by autograd."""
    steps = 3
    graph = cv.circuit(tiny_llama, pairs, saes=saes, method="eap-ig", steps=steps, progress=False)
    tokens = tokenize(tiny_llama, pairs)
    emb = {}

    def keep(name):
        def fn(x, hook):
            emb[name] = x.detach().clone()

        return fn

    run(tiny_llama, tokens, [("hook_embed", keep("clean"))])
    run(tiny_llama, tokens, [("hook_embed", keep("corrupted"))], corrupted=True)
    hook = saes.hooks[0]
    grads, leaf = [], {}
    for k in range(steps, 0, -1):
        mixed = emb["corrupted"] + k / steps * (emb["clean"] - emb["corrupted"])
        fwd = [("hook_embed", lambda x, hook, m=mixed: m)]
        fwd += [(h, hand_hook(saes[h], leaf=leaf if h == hook else None)) for h in saes]
        logits = run(tiny_llama, tokens, fwd, grad=True)
        (g,) = torch.autograd.grad(logit_diff(tiny_llama, tokens, logits), [leaf["f"]])
        grads.append(g)
    lat = []
    for which in (False, True):
        run(
            tiny_llama,
            tokens,
            [(h, hand_hook(saes[h], leaf=leaf if h == hook else None)) for h in saes],
            corrupted=which,
        )
        lat.append(leaf["f"].detach())
    ref = ((lat[1] - lat[0]) * torch.stack(grads).mean(0)).sum(0)  # [pos, d_sae]
    scale = max(1.0, float(ref.abs().max()))
    layer = saes[hook].layer
    feats = [n for n in graph.nodes if n.type == "feature" and n.layer == layer]
    assert feats
    for n in feats:
        assert abs(n.score - float(ref[n.pos, n.feature])) <= TOL * scale


def test_eap_ig_with_one_step_is_eap(tiny_llama, pairs, saes, graph):
    ig = cv.circuit(tiny_llama, pairs, saes=saes, method="eap-ig", steps=1, progress=False)
    assert ig.ids == graph.ids
    np.testing.assert_allclose(ig.node_scores, graph.node_scores, atol=1e-6)
    g5 = cv.circuit(tiny_llama, pairs, saes=saes, method="eap-ig", progress=False)
    assert g5.steps == 5 and len(g5.edges) > 0


# --------------------------------------------------------------------------- ablation
@pytest.mark.parametrize("mode", ["zero", "resample"])
def test_feature_ablation_equals_a_hand_written_latent_hook(tiny_llama, pairs, saes, graph, mode):
    feat = max(
        (n for n in graph.nodes if n.type == "feature"), key=lambda n: abs(n.score)
    )  # the strongest latent, at its position
    tokens = tokenize(tiny_llama, pairs)
    sae = saes[feat.hook]
    corr = {}

    def rec(x, hook):
        corr["f"] = sae.encode(x)

    run(tiny_llama, tokens, [(feat.hook, rec)], corrupted=True)

    def edit(f):
        f[:, feat.pos, feat.feature] = (
            0.0 if mode == "zero" else corr["f"][:, feat.pos, feat.feature]
        )
        return f

    ref = float(
        logit_diff(tiny_llama, tokens, run(tiny_llama, tokens, [(feat.hook, hand_hook(sae, edit))]))
    )
    comp = f"L{feat.layer}F{feat.feature}:P{feat.pos}"
    res = cv.ablate(tiny_llama, pairs, features=[comp], saes=saes, mode=mode)
    assert res.components == [comp]
    assert abs(res.ablated - ref) <= TOL
    assert not has_hooks(tiny_llama)


def test_feature_ablation_everywhere_and_with_heads(tiny_llama, pairs, saes):
    tokens = tokenize(tiny_llama, pairs)
    sae = saes[saes.hooks[1]]

    def edit(f):
        f[:, :, 5] = 0.0
        return f

    def z(x, hook):
        x[:, :, 1] = 0.0
        return x

    fwd = [("blocks.0.attn.hook_z", z), (sae.hook_name, hand_hook(sae, edit))]
    ref = float(logit_diff(tiny_llama, tokens, run(tiny_llama, tokens, fwd)))
    res = cv.ablate(tiny_llama, pairs, heads=["L0H1"], features=["L1F5"], saes=saes)
    assert res.components == ["L0H1", "L1F5"]
    assert abs(res.ablated - ref) <= TOL


# --------------------------------------------------------------------------- faithfulness
def test_faithfulness_of_everything_and_nothing(tiny_llama, pairs, graph):
    full = graph.faithfulness(tiny_llama, pairs)
    assert abs(full.metric - full.clean) <= TOL and abs(full.recovered - 1) <= 1e-3
    io = [n.id for n in graph.nodes if n.type in ("embed", "logits")]
    none = graph.faithfulness(tiny_llama, pairs, nodes=io, errors="graph")
    assert abs(none.metric - none.corrupted) <= TOL  # every node patched: the corrupted run
    comp = graph.faithfulness(tiny_llama, pairs, complement=True, errors="graph")
    assert abs(comp.metric - comp.corrupted) <= TOL


def test_faithfulness_without_one_latent_equals_patching_it(tiny_llama, pairs, saes, graph):
    """Reference by hand: at every site, latents that are no node of the graph (inactive on
    every clean and corrupted prompt there) take their corrupted value, and so does the one
    latent left out; everything else runs clean."""
    feat = max((n for n in graph.nodes if n.type == "feature"), key=lambda n: abs(n.score))
    tokens = tokenize(tiny_llama, pairs)
    latents: dict = {}

    def rec(h):
        def fn(x, hook):
            latents.setdefault(h, []).append(saes[h].encode(x))

        return fn

    for which in (False, True):
        run(tiny_llama, tokens, [(h, rec(h)) for h in saes], corrupted=which)

    def edit(h):
        clean, corr = latents[h]
        listed = ((clean != 0) | (corr != 0)).any(0)  # [pos, d_sae]
        if h == feat.hook:
            listed[feat.pos, feat.feature] = False
        return lambda f: torch.where(listed, f, corr)

    fwd = [(h, hand_hook(saes[h], edit(h))) for h in saes]
    ref = float(logit_diff(tiny_llama, tokens, run(tiny_llama, tokens, fwd)))
    got = graph.faithfulness(tiny_llama, pairs, ablated=[feat.id])
    assert abs(got.metric - ref) <= TOL
    assert abs(got.metric - got.clean) > 10 * TOL  # the strongest latent matters


def test_pruned_circuit_with_errors_kept_and_ablated(tiny_llama, pairs, graph):
    small = graph.prune(top_nodes=20)
    kept = small.faithfulness(tiny_llama, pairs, errors="kept")
    gone = small.faithfulness(tiny_llama, pairs, errors="ablated")
    assert np.isfinite([kept.recovered, gone.recovered]).all()
    assert kept.metric != gone.metric
    assert kept.n_edges == len(small.edges)


# --------------------------------------------------------------------------- pruning
def on_paths(nodes: list, edges: list[dict]) -> set[str]:
    """An independent check of the path rule: nodes on an EMBED→LOGITS path of the edges,
    where a k/v edge into a head at s reaches that head's outputs at every q ≥ s."""
    succ: dict[str, set[str]] = {}
    for e in edges:
        for t in e.get("targets", [e["target"]]):
            if e["input"] in ("k", "v"):
                base, p = t.split(":P")
                for n in nodes:
                    if n.id.split(":P")[0] == base and n.pos >= int(p):
                        succ.setdefault(e["source"], set()).add(n.id)
            else:
                succ.setdefault(e["source"], set()).add(t)
    fwd = {n.id for n in nodes if n.type == "embed"}
    for _ in range(len(nodes)):
        fwd |= {t for s in fwd for t in succ.get(s, ())}
    bwd = {n.id for n in nodes if n.type == "logits"}
    for _ in range(len(nodes)):
        bwd |= {s for s, ts in succ.items() if ts & bwd}
    return fwd & bwd


@pytest.mark.parametrize(
    "rule", [{"top_edges": 40}, {"top_nodes": 12}, {"min_rel_weight": 0.05}, {"top_edges": 200}]
)
def test_prune_is_path_closed(graph, rule):
    small = graph.prune(**rule)
    nodes, edges = small.nodes, small.edges
    assert nodes and edges
    reached = on_paths(nodes, edges)
    kv_heads = {
        t for e in edges if e["input"] in ("k", "v") for t in e.get("targets", [e["target"]])
    }
    for n in nodes:
        assert n.id in reached or n.id in kv_heads, n.id
    if "top_edges" in rule:
        assert len(edges) <= rule["top_edges"]
    if "top_nodes" in rule:
        assert sum(n.type not in ("embed", "logits") for n in nodes) <= rule["top_nodes"]


def test_pinned_feature_is_shown_with_a_path(graph):
    reachable = {n.id for n in graph.prune(min_weight=0.0).nodes}
    weak = min(
        (n for n in graph.nodes if n.type == "feature" and n.id in reachable),
        key=lambda n: abs(n.score),
    )
    small = graph.prune(top_edges=10, pinned=[weak.id])
    assert weak.id in {n.id for n in small.nodes}
    assert weak.id in on_paths(small.nodes, small.edges)


# --------------------------------------------------------------------------- JSON
def test_json_round_trip(graph):
    for g in (graph, graph.prune(top_edges=50)):
        data = json.loads(g.to_json())
        back = Graph.from_json(data)
        assert isinstance(back, FeatureGraph)
        assert [n.to_dict() for n in back.nodes] == data["nodes"]
        assert back.edges == data["edges"]
        assert back.to_dict() == data


def test_schema_bounds_for_feature_nodes(graph):
    data = json.loads(graph.prune(top_edges=20).to_json())
    node = next(n for n in data["nodes"] if n["type"] == "feature")
    node["feature"] = data["saes"][0]["d_sae"] + 5
    node["hook"] = data["saes"][0]["hook"]
    with pytest.raises(cv.InputError, match="d_sae"):
        Graph.from_json(data)
    data = json.loads(graph.prune(top_edges=20).to_json())
    data["saes"][0]["d_sae"] = 2**40
    with pytest.raises(cv.InputError, match="d_sae"):
        Graph.from_json(data)
    data = json.loads(graph.prune(top_edges=20).to_json())
    data["nodes"][0]["id"] = "L1Q3:P0"
    with pytest.raises(cv.InputError, match="unknown node id"):
        Graph.from_json(data)


# --------------------------------------------------------------------------- bad input
def untouched(model, pairs, before):
    assert not has_hooks(model)
    tokens = tokenize(model, pairs)
    assert torch.equal(run(model, tokens, []), before)


def test_bad_saes_leave_the_model_untouched(tiny_llama, pairs, saes):
    tokens = tokenize(tiny_llama, pairs)
    before = run(tiny_llama, tokens, [])
    sae = saes[saes.hooks[0]]
    on_ln1 = SAE("blocks.0.ln1.hook_normalized", sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    with pytest.raises(cv.InputError, match="hook_resid_post"):
        cv.circuit(tiny_llama, pairs, saes=on_ln1, progress=False)
    wide = SAE(
        "blocks.0.hook_resid_post",
        torch.zeros(7, 4),
        torch.zeros(4),
        torch.zeros(4, 7),
        torch.zeros(7),
    )
    with pytest.raises(cv.InputError, match="d_model"):
        cv.circuit(tiny_llama, pairs, saes=wide, progress=False)
    deep = SAE("blocks.9.hook_resid_post", sae.W_enc, sae.b_enc, sae.W_dec, sae.b_dec)
    with pytest.raises(cv.InputError, match="block"):
        cv.circuit(tiny_llama, pairs, saes=deep, progress=False)
    nan = SAE(sae.hook_name, sae.W_enc, sae.b_enc, sae.W_dec.clone(), sae.b_dec)
    nan.W_dec[0, 0] = float("nan")  # corrupted after construction
    with pytest.raises(cv.InputError, match="non-finite"):
        cv.circuit(tiny_llama, pairs, saes=nan, progress=False)
    with pytest.raises(cv.InputError, match="SAE"):
        cv.circuit(tiny_llama, pairs, saes="demo", progress=False)
    untouched(tiny_llama, pairs, before)


def test_bad_feature_ablations_leave_the_model_untouched(tiny_llama, pairs, saes):
    tokens = tokenize(tiny_llama, pairs)
    before = run(tiny_llama, tokens, [])
    with pytest.raises(cv.InputError, match="out of range"):
        cv.ablate(tiny_llama, pairs, features=["L1F64"], saes=saes)
    with pytest.raises(cv.InputError, match="saes="):
        cv.ablate(tiny_llama, pairs, features=["L1F3"])
    with pytest.raises(cv.InputError, match="No SAE"):
        cv.ablate(tiny_llama, pairs, features=["L1F3"], saes=SAESet([saes[saes.hooks[0]]]))
    with pytest.raises(cv.InputError, match="features="):
        cv.ablate(tiny_llama, pairs, heads=["L1F3"], saes=saes)
    with pytest.raises(cv.InputError, match="positions"):
        cv.ablate(tiny_llama, pairs, features=["L1F3:P99"], saes=saes)
    untouched(tiny_llama, pairs, before)


def test_bad_faithfulness_requests(tiny_llama, pairs, graph, saes):
    with pytest.raises(cv.InputError, match="errors="):
        graph.faithfulness(tiny_llama, pairs, errors="some")
    with pytest.raises(cv.InputError, match="not a node"):
        graph.faithfulness(tiny_llama, pairs, nodes=["L0F9999:P0"])
    loaded = Graph.from_json(graph.prune(top_edges=20).to_json())
    with pytest.raises(cv.InputError, match="saes="):
        loaded.faithfulness(tiny_llama, pairs)
    other = SAESet([saes[saes.hooks[0]]])
    with pytest.raises(cv.InputError, match="not the graph's"):
        loaded.faithfulness(tiny_llama, pairs, saes=other)
    assert np.isfinite(loaded.faithfulness(tiny_llama, pairs, saes=saes).recovered)
    plain = cv.circuit(tiny_llama, pairs, progress=False)
    with pytest.raises(cv.InputError, match="no feature nodes"):
        plain.faithfulness(tiny_llama, pairs, ablated=["L1F3"])
    assert not has_hooks(tiny_llama)


def test_an_interrupt_inside_a_splice_leaves_no_hook(tiny_llama, pairs, saes, monkeypatch):
    tokens = tokenize(tiny_llama, pairs)
    before = run(tiny_llama, tokens, [])
    calls = []

    def interrupted(self, x):
        calls.append(1)
        if len(calls) == 3:  # inside the clean run's backward pass set-up
            raise KeyboardInterrupt
        return encode(self, x)

    encode = SAE.encode
    monkeypatch.setattr(SAE, "encode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        cv.circuit(tiny_llama, pairs, saes=saes, progress=False)
    monkeypatch.undo()
    untouched(tiny_llama, pairs, before)
