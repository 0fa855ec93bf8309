"""Feature graphs (``circuit(..., saes=...)``) and their faithfulness on prompt pairs of mixed
lengths, on the bridge.

Convention (as every pair analysis, ``test_mixed_lengths``): pairs are left-padded and
masked, position ``p`` is column ``p`` of the longest prompt (aligned from the end). A pad
token's latents and error terms are not the prompt's: padding holds no latent node, no error
term and no edge.

Reference: the same graph built on each same-length group of pairs alone (no padding),
combined as the metric combines pairs (the batch mean: a group of ``n_g`` of ``n`` pairs
weighs ``n_g / n``), its nodes moved to the padded columns. Same-length feature graphs are
checked against hand-spliced autograd in ``test_feature_circuit`` / ``test_feature_sites``,
so this is the chain to those references. Mean ablation, which mixes the groups, is checked
against a hand-written splice. Tolerance 1e-4, float32.
"""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np
import pytest
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks, hooks
from circuitviz.engine._pairs import tokenize
from circuitviz.engine.graph import FeatureGraph
from circuitviz.engine.graph._feature_eap import INPUTS, TYPES
from tests._tiny_sae import feature_pairs, tiny_saes, tiny_site_saes

TOL = 1e-4
#: Every site kind in one set: resid_pre, attn_out, resid_mid, a transcoder reading ln2's
#: output, mlp_out, resid_post (as ``test_feature_sites``).
SITES = [
    "blocks.0.hook_resid_pre",
    "blocks.0.hook_attn_out",
    "blocks.0.hook_resid_mid",
    "blocks.1.hook_mlp_out",
    "blocks.1.hook_resid_post",
]
TRANSCODERS = [("blocks.0.mlp.hook_in", "blocks.0.hook_mlp_out")]
POS = re.compile(r":P(\d+)$")


def mixed_feature_pairs() -> cv.PromptPairs:
    """``feature_pairs()`` (two pairs of 6 words) interleaved with two shorter pairs (3 words;
    the second's answer appears earlier in its prompt): two same-length groups."""
    base = feature_pairs()
    short = cv.PromptPairs(
        ["t2 t7 t2", "t9 t1 t4"], ["t5 t6 t5", "t8 t6 t4"], [" t7", " t1"], [" t3", " t2"]
    )
    order = [(short, 0), (base, 0), (base, 1), (short, 1)]  # the longest is not the first
    return cv.PromptPairs(
        *([getattr(p, f)[i] for p, i in order] for f in ("clean", "corrupted", "answers")),
        [p.wrong_answers[i] for p, i in order],
    )


def subset(pairs: cv.PromptPairs, idx: list[int]) -> cv.PromptPairs:
    return cv.PromptPairs(
        *([getattr(pairs, f)[i] for i in idx] for f in ("clean", "corrupted", "answers")),
        [pairs.wrong_answers[i] for i in idx],
    )


def groups(model, pairs: cv.PromptPairs) -> list[tuple[list[int], int]]:
    """The same-length groups: (pair indices, padding columns on their left)."""
    n_pos = tokenize(model, pairs, pad=True).n_pos
    by_len: dict[int, list[int]] = defaultdict(list)
    for i in range(len(pairs)):
        by_len[tokenize(model, subset(pairs, [i])).n_pos].append(i)
    assert len(by_len) > 1  # really mixed
    return [(idx, n_pos - n) for n, idx in sorted(by_len.items())]


def moved(node_id: str, shift: int) -> str:
    """A node id at position ``p`` of a group moved to padded column ``p + shift``."""
    return POS.sub(lambda m: f":P{int(m[1]) + shift}", node_id)


def column(node_id: str) -> int:
    m = POS.search(node_id)
    assert m is not None
    return int(m[1])


def edge_table(graph: FeatureGraph, shift: int = 0, weight: float = 1.0) -> dict:
    """Every non-zero edge ``(source, target, input) -> weight × score``, moved by ``shift``."""
    out: dict = {}
    for j in range(len(graph.src)):
        key = (
            moved(graph.ids[graph.src[j]], shift),
            moved(graph.ids[graph.dst[j]], shift),
            int(graph.input[j]),
        )
        out[key] = out.get(key, 0.0) + weight * float(graph.weight[j])
    return out


def logit_diff(model, one, fwd=()) -> float:
    """One pair alone (unpadded), with hand-written hooks: its logit difference."""
    with torch.no_grad(), hooks(model, list(fwd)):
        logits = model(one.clean)[0, -1]
    return float(logits[one.answers[0]] - logits[one.wrong_answers[0]])


def max_diff(a: dict, b: dict) -> float:
    return max(abs(a.get(k, 0.0) - b.get(k, 0.0)) for k in a.keys() | b.keys())


def of_type(graph: FeatureGraph, kind: str) -> set[str]:
    return {graph.ids[i] for i in np.flatnonzero(graph.type == TYPES.index(kind))}


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def model(request):
    """Llama (GQA, RMSNorm, rotary); GPT-2 (LayerNorm, learned positions: left padding must
    keep each prompt's own positions)."""
    return cv.tiny_model(request.param)


@pytest.fixture(scope="module")
def site_saes(model):
    return tiny_site_saes(model, SITES, TRANSCODERS)


@pytest.fixture(scope="module")
def pairs():
    return mixed_feature_pairs()


def combined(model, pairs, saes, **opts):
    """The mixed graph, and each group's graph alone with its shift and weight."""
    whole = cv.circuit(model, pairs, saes=saes, progress=False, **opts)
    parts = []
    for idx, shift in groups(model, pairs):
        g = cv.circuit(model, subset(pairs, idx), saes=saes, progress=False, **opts)
        parts.append((g, idx, shift, len(idx) / len(pairs)))
    return whole, parts


def strangers(whole: FeatureGraph, parts) -> set[str]:
    """Latent nodes of the mixed graph that some group with a token at their column lacks:
    they fire on none of that group's clean or corrupted prompts there."""
    own = [(set(g.ids), shift) for g, _, shift, _ in parts]
    return {
        i
        for i in of_type(whole, "feature")
        if any(column(i) >= shift and moved(i, -shift) not in ids for ids, shift in own)
    }


def into_error(table: dict, merged: set[str]) -> dict:
    """``table`` with each edge into a latent of ``merged`` moved onto the error node of its
    site and column (the receiver that takes what no node latent takes)."""
    out: dict = {}
    for (src, dst, inp), w in table.items():
        if dst in merged:
            dst, inp = re.sub(r"F\d+:", "ERR:", dst), INPUTS.index("error")
        out[src, dst, inp] = out.get((src, dst, inp), 0.0) + w
    return out


@pytest.mark.parametrize(("method", "steps"), [("eap", 1), ("eap-ig", 2), ("eap-ig", 3)])
def test_feature_graph_is_each_group_alone_combined(model, site_saes, pairs, method, steps):
    """Every site kind, error nodes included: the mixed graph's edges equal each group's
    (moved to its padded columns, weighted by its share of the pairs) summed; its latent
    nodes at a column are exactly those active there in some group that has a token there
    (none from a pad token); every column has each site's error node; the metric baselines
    are the weighted means; the tokens are the longest prompt's.

    EAP-IG: a latent that is a node only because another group fires it can fire on an
    interpolated input of this group; its receiver gradient there then goes to that latent
    in the mixed graph, but to the error node (which takes what no node latent takes) in the
    group's own graph. The same holds in any batch, padded or not; so for EAP-IG the edges
    into such latents are compared together with their error node's (their sum is what
    completeness fixes), and every other edge exactly."""
    whole, parts = combined(model, pairs, site_saes, method=method, steps=steps)
    want: dict = {}
    for g, _, shift, w in parts:
        for k, v in edge_table(g, shift, w).items():
            want[k] = want.get(k, 0.0) + v
    got = edge_table(whole)
    assert len(got) > 100
    if method == "eap":
        assert max_diff(got, want) <= TOL
    else:
        merged = strangers(whole, parts)
        assert merged and max_diff(into_error(got, merged), into_error(want, merged)) <= TOL
        touched = {k for k in got.keys() | want.keys() if k[1] in merged or "ERR" in k[1]}
        rest = {k: v for k, v in got.items() if k not in touched}
        assert max_diff(rest, {k: v for k, v in want.items() if k not in touched}) <= TOL
    assert {k[2] for k in got} >= {INPUTS.index("feature"), INPUTS.index("error")}
    feats = {moved(i, shift) for g, _, shift, _ in parts for i in of_type(g, "feature")}
    assert of_type(whole, "feature") == feats
    shortest = max(shift for _, _, shift, _ in parts)
    assert any(column(i) < shortest for i in feats)  # columns only the long group has
    errors = of_type(whole, "error")
    assert len(errors) == len(site_saes) * whole.n_pos
    assert {column(i) for i in errors} == set(range(whole.n_pos))
    node_scores = dict(zip(whole.ids, whole.node_scores, strict=True))
    ref_scores: dict = defaultdict(float)
    for g, _, shift, w in parts:
        for i, s in zip(g.ids, g.node_scores, strict=True):
            ref_scores[moved(i, shift)] += w * float(s)
    assert max(abs(node_scores.get(k, 0.0) - v) for k, v in ref_scores.items()) <= TOL
    for field in ("clean", "corrupted"):
        ref = sum(w * getattr(g, field) for g, _, _, w in parts)
        assert getattr(whole, field) == pytest.approx(ref, abs=TOL), field
    assert whole.tokens == tokenize(model, pairs, pad=True).str_tokens
    assert whole.tokens == model.to_str_tokens(pairs.clean[1])  # the longest prompt
    assert not has_hooks(model)


def _circuit_for(whole: FeatureGraph, parts, nodes: list[str], *, complement: bool):
    """``nodes`` made comparable across groups. A latent that is a node of the mixed graph at
    a column but not of a group's own graph there fires on neither of that group's prompts
    there: for those rows it is a latent no node lists, outside the circuit either way. So
    such latents are left out of the circuit (or, for ``complement``, put in it, so that they
    are outside what is kept). Returns the mixed circuit and each group's (its own nodes)."""
    own = [set(g.ids) for g, *_ in parts]
    others = strangers(whole, parts)
    mixed = set(nodes) | others if complement else set(nodes) - others
    per_group = [
        sorted(m for i in mixed if column(i) >= shift and (m := moved(i, -shift)) in ids)
        for (_, _, shift, _), ids in zip(parts, own, strict=True)
    ]
    return sorted(mixed), per_group


@pytest.mark.parametrize(
    ("errors", "complement"),
    [("kept", False), ("ablated", False), ("graph", False), ("kept", True), ("ablated", True)],
)
def test_faithfulness_is_each_group_alone_combined(model, site_saes, pairs, errors, complement):
    """``ablation="corrupted"``: a pruned circuit's exact metric (errors kept, ablated or as
    the circuit has them; or its complement) on the mixed batch equals the weighted mean of
    the same circuit, at each group's own positions, on each group alone; so do the clean and
    corrupted baselines."""
    whole, parts = combined(model, pairs, site_saes)
    pruned = whole.prune(top_nodes=40)
    nodes = [n.id for n in pruned.nodes]
    assert any(n.type == "feature" for n in pruned.nodes)
    mixed, per_group = _circuit_for(whole, parts, nodes, complement=complement)
    opts = {"errors": errors, "complement": complement}
    got = whole.faithfulness(model, pairs, nodes=mixed, **opts)
    refs = [
        g.faithfulness(model, subset(pairs, idx), nodes=ours, **opts)
        for (g, idx, _, _), ours in zip(parts, per_group, strict=True)
    ]
    for field in ("metric", "clean", "corrupted"):
        want = sum(w * getattr(r, field) for (_, _, _, w), r in zip(parts, refs, strict=True))
        assert getattr(got, field) == pytest.approx(want, abs=TOL), field
    assert abs(got.metric - got.clean) > 10 * TOL or errors == "kept"  # the circuit matters
    assert not has_hooks(model)


def test_mean_ablated_faithfulness_averages_each_column_over_the_prompts_there(model):
    """``ablation="mean"`` takes each column's clean mean over the prompts that have a token
    there. Ablated: head L1H0 everywhere, one latent of the last SAE everywhere and that
    SAE's error term at the last column. Reference: the means built from each pair's own
    unpadded clean run (aligned from the end), written into each pair alone by hand-written
    hooks (hook_z, and a hand splice that also sets latents no node lists to their mean, 0),
    averaged over the pairs."""
    saes = tiny_saes(model)
    pairs = mixed_feature_pairs()
    graph = cv.circuit(model, pairs, saes=saes, progress=False)
    n_pos = graph.n_pos
    last = "blocks.1.hook_resid_post"
    sae = saes[last]
    feats = [graph.node(i) for i in np.flatnonzero(graph.type == TYPES.index("feature"))]
    at_last = [n for n in feats if n.hook == last]
    latent = max({n.feature for n in at_last}, key=lambda f: sum(n.feature == f for n in at_last))
    allowed = torch.zeros(n_pos, sae.d_sae, dtype=torch.bool)
    for n in at_last:
        allowed[n.pos, n.feature] = True
    shift = [n_pos - tokenize(model, subset(pairs, [i])).n_pos for i in range(len(pairs))]
    sums = {k: 0.0 for k in ("z", "f", "err")}
    count = torch.zeros(n_pos)
    for i in range(len(pairs)):
        store = {}

        def keep_z(z, hook, store=store):
            store["z"] = z[0].detach().clone()

        def keep_f(x, hook, store=store):
            f = sae.encode(x)
            store["f"], store["err"] = f[0].detach(), (x - sae.decode(f))[0].detach()

        with torch.no_grad(), hooks(model, [("blocks.1.attn.hook_z", keep_z), (last, keep_f)]):
            model(tokenize(model, subset(pairs, [i])).clean)
        for k in sums:
            pad = torch.zeros(n_pos, *store[k].shape[1:])
            pad[shift[i] :] = store[k]
            sums[k] = sums[k] + pad
        count[shift[i] :] += 1
    mean = {k: v / count.reshape(-1, *[1] * (v.ndim - 1)) for k, v in sums.items()}
    got = graph.faithfulness(
        model, pairs, ablation="mean", ablated=["L1H0", f"L1F{latent}", f"L1ERR:P{n_pos - 1}"]
    )
    want = []
    for i in range(len(pairs)):
        s = shift[i]

        def put_z(z, hook, s=s):
            z[0, :, 0] = mean["z"][s:, 0]
            return z

        def splice(x, hook, s=s):
            f = sae.encode(x)
            err = x - sae.decode(f)
            f = torch.where(allowed[s:][None], f, mean["f"][s:][None])
            f[0, :, latent] = mean["f"][s:, latent]
            err[0, -1] = mean["err"][-1]
            return sae.decode(f) + err

        fwd = [("blocks.1.attn.hook_z", put_z), (last, splice)]
        want.append(logit_diff(model, tokenize(model, subset(pairs, [i])), fwd))
    assert got.metric == pytest.approx(sum(want) / len(want), abs=TOL)
    assert abs(got.metric - got.clean) > 10 * TOL
    whole = graph.faithfulness(model, pairs, ablation="mean")  # nothing out: the clean run
    assert whole.metric == pytest.approx(graph.clean, abs=TOL)
    assert not has_hooks(model)


def test_a_mixed_length_feature_graph_marks_its_partial_columns(model, site_saes, pairs):
    """As a per-position component graph: the columns the tokens give, kept through JSON and
    sent by CircuitView, so its padded columns are hatched (``tests/test_partial_columns``)."""
    from circuitviz import CircuitView
    from circuitviz.engine._pairs import tokenize

    graph = cv.circuit(model, pairs, saes=site_saes, progress=False)
    cols = tokenize(model, pairs, pad=True).columns
    assert cols is not None and graph.columns == cols
    assert any(cols.to_dict()["tokens"][i][0] is None for i in range(len(pairs.clean)))
    again = FeatureGraph.from_json(graph.to_json())
    assert again.columns == cols and again.to_json() == graph.to_json()
    assert CircuitView(graph=graph).graph["columns"] == CircuitView(graph=again).graph["columns"]
    assert CircuitView(graph=graph).graph["columns"]["tokens"] == cols.to_dict()["tokens"]


def test_a_bad_mixed_batch_names_the_pair_and_leaves_no_hook(model, site_saes, pairs):
    """A corrupted prompt longer than its clean one is still an error, naming the pair."""
    bad = cv.PromptPairs(
        list(pairs.clean),
        [*pairs.corrupted[:3], pairs.corrupted[3] + " t9"],
        list(pairs.answers),
        list(pairs.wrong_answers),
    )
    with pytest.raises(cv.InputError, match=r"\(pair 3\)"):
        cv.circuit(model, bad, saes=site_saes, progress=False)
    assert not has_hooks(model)


# --- CircuitView (kernel side) ---------------------------------------------------------------


def test_circuit_view_of_a_mixed_length_feature_graph(tiny_llama):
    """CircuitView of a feature graph built on mixed-length pairs: nodes at the padded columns,
    labelled by the longest prompt; a click ablating a latent at a column equals ablating it
    in each pair alone at that pair's own position (no ablation where the pair has padding);
    faithfulness (and its error variants) is ``FeatureGraph.faithfulness``'s, checked above;
    the hover card's max activation and the supernode co-activations read real tokens only;
    Clamp × N at a column steers the longest prompt at that position, and its metric equals
    the pairs alone with the latent clamped by hand at their own positions."""
    from circuitviz.engine.features import LatentEdit, splice_hooks, steer
    from circuitviz.engine.features._supernodes import _activations
    from circuitviz.views import CircuitView

    model, saes = tiny_llama, tiny_saes(tiny_llama)
    pairs = mixed_feature_pairs()
    tokens = tokenize(model, pairs, pad=True)
    shift = [tokens.n_pos - tokenize(model, subset(pairs, [i])).n_pos for i in range(len(pairs))]
    early = max(shift) - 1  # a column only the long prompts have
    graph = cv.circuit(model, pairs, saes=saes, progress=False)
    view = CircuitView(model, pairs, graph=graph)
    sent: list[dict] = []
    view.send = lambda content, buffers=None: sent.append(content)
    assert view.graph["tokens"] == tokens.str_tokens == model.to_str_tokens(pairs.clean[1])
    shown = [n for n in view.graph["nodes"] if n["type"] == "feature"]
    assert shown and {n["id"] for n in shown} <= set(graph.ids)
    last = tokens.n_pos - 1
    labels = {n["id"]: n["label"] for n in view.graph["nodes"]}
    assert labels[f"LOGITS:P{last}"].endswith(tokens.str_tokens[last])

    feats = of_type(graph, "feature")
    targets = [shown[0]["ablates"], min(i for i in feats if column(i) == early)]
    for k, target in enumerate(targets):
        view._handle_custom_msg({"type": "ablate", "components": [target], "request": k}, [])
        alone = []
        for i in range(len(pairs)):
            one = subset(pairs, [i])
            if column(target) < shift[i]:  # padding there: nothing to ablate
                alone.append(logit_diff(model, tokenize(model, one)))
            else:
                res = cv.ablate(model, one, features=[moved(target, -shift[i])], saes=saes)
                alone.append(res.ablated)
        assert view.result["ablated"] == pytest.approx(sum(alone) / len(alone), abs=TOL)

    view._handle_custom_msg({"type": "faithfulness", "ablated": [targets[0]], "request": 9}, [])
    circuit = view.shown_circuit()
    assert view.faithfulness["circuit"] == pytest.approx(
        float(circuit.faithfulness(model, pairs)), abs=TOL
    )
    assert view.faithfulness["errors_ablated"] == pytest.approx(
        float(circuit.faithfulness(model, pairs, errors="ablated")), abs=TOL
    )

    node = shown[0]
    site, index = node["hook"], node["feature"]
    view._handle_custom_msg({"type": "feature_card", "node": node["id"], "request": "c"}, [])
    hand = []
    for i in range(len(pairs)):
        one = tokenize(model, subset(pairs, [i]))

        def rec(x, hook, index=index):
            hand.append(float(saes[site].encode(x)[..., index].max()))

        with torch.no_grad(), hooks(model, [(site, rec)]):
            model(one.clean)
            model(one.corrupted)
    assert sent[-1]["max_act"] == pytest.approx(max(hand), abs=TOL)

    acts = _activations(model, saes, pairs, [site])[site]
    rows = []
    for i in range(len(pairs)):

        def keep(x, hook):
            rows.append(saes[site].encode(x)[0])

        with torch.no_grad(), hooks(model, [(site, keep)]):
            model(tokenize(model, subset(pairs, [i])).clean)
    assert acts.shape[0] == int(tokens.attention_mask.sum())
    assert (acts - torch.cat(rows)).abs().max() <= TOL
    view.suggest_supernodes()  # co-activation over the real tokens

    target = targets[1]  # a column the short prompts lack
    res = view.steer_node(target, scale=4.0, everywhere=False)
    ref = steer(model, pairs.clean[1], features=[target], saes=saes, scale=4.0)
    assert res.after == ref.after and res.values == pytest.approx(ref.values, abs=TOL)
    hook_t = graph.site_hook(int(target[1 : target.index("F")]), "")
    latent = int(target.split("F")[1].split(":")[0])
    alone = []
    for i in range(len(pairs)):
        one = tokenize(model, subset(pairs, [i]))
        p = column(target) - shift[i]
        edits = [LatentEdit(hook_t, latent, res.values[0], p)] if p >= 0 else []
        alone.append(logit_diff(model, one, splice_hooks(saes, edits, only=[hook_t])))
    assert res.metric_after == pytest.approx(sum(alone) / len(alone), abs=TOL)
    assert not has_hooks(model)


# --- the demo model ----------------------------------------------------------------------------


@pytest.mark.demo
@pytest.mark.slow
def test_demo_feature_graph_on_mixed_lengths_is_each_group_alone_combined(demo_model):
    """SmolLM2-135M with its shipped SAEs (4 × 4096 latents on resid_post), IOI pairs of two
    templates (15 and 11 tokens), interleaved: EAP edges (about 700k) and latent nodes equal
    the groups' alone, combined; a pruned circuit's faithfulness with error nodes ablated
    equals the groups' too."""
    saes = cv.load_saes("demo")
    pairs = cv.PromptPairs(
        [
            "When John and Mary went to the store, John gave a drink to",
            "Tom and Anna met. Tom gave a ball to",
            "When Tom and Anna went to the park, Tom gave a ball to",
            "Mary and John met. Mary gave a book to",
        ],
        [
            "When John and Mary went to the store, Mary gave a drink to",
            "Tom and Anna met. Anna gave a ball to",
            "When Tom and Anna went to the park, Anna gave a ball to",
            "Mary and John met. John gave a book to",
        ],
        [" Mary", " Anna", " Anna", " John"],
        [" John", " Tom", " Tom", " Mary"],
    )
    whole, parts = combined(demo_model, pairs, saes)
    assert [shift for *_, shift, _ in parts] == [4, 0]
    want: dict = {}
    for g, _, shift, w in parts:
        for k, v in edge_table(g, shift, w).items():
            want[k] = want.get(k, 0.0) + v
    got = edge_table(whole)
    assert len(got) > 100_000 and max_diff(got, want) <= TOL
    feats = {moved(i, shift) for g, _, shift, _ in parts for i in of_type(g, "feature")}
    assert of_type(whole, "feature") == feats
    nodes = [n.id for n in whole.prune(top_edges=600).nodes]
    mixed, per_group = _circuit_for(whole, parts, nodes, complement=False)
    got_f = whole.faithfulness(demo_model, pairs, nodes=mixed, errors="ablated")
    refs = [
        g.faithfulness(demo_model, subset(pairs, idx), nodes=ours, errors="ablated")
        for (g, idx, _, _), ours in zip(parts, per_group, strict=True)
    ]
    want_f = sum(w * r.metric for (*_, w), r in zip(parts, refs, strict=True))
    assert got_f.metric == pytest.approx(want_f, abs=TOL)
    assert not has_hooks(demo_model)
