"""Mixed-length pairs on nnsight's circuits, features and toolkit: EAP-IG graphs,
faithfulness (corrupted and mean), curves, MIB, SAE-feature ablation, direct logit
attribution, path patching and head roles equal the TransformerLens bridge, locally and
through the fake NDIF.

Reference for every figure: the bridge's own mixed-length results, which
``tests/test_mixed_lengths.py`` checks against each pair run alone (unpadded) and against
hand-written hooks. Same weights (``load_model(bridge, backend="nnsight")``); tolerance
1e-4, float32. The runs carry the attention mask and the positions it implies; a mean is
each position's over the prompts that have a token there (weights applied on the server).
"""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks, tokenize
from circuitviz.engine.features import feature_activations
from circuitviz.engine.graph import exact_node_scores, mib_scores
from tests._tiny_sae import tiny_saes

pytest.importorskip("nnsight")

from tests.test_remote import Setup

TOL = 1e-4
LOW = {"io_attention": 0.0, "copy": 0.0, "dla": 0.0}


@pytest.fixture(scope="module")
def pairs():
    """Three pairs of 6, 3 and 4 words, each clean prompt holding its answer (head roles'
    name movers), each corrupted prompt as long as its clean one."""
    return cv.PromptPairs(
        ["t1 t2 t3 t4 t1 t2", "t9 t8 t9", "t4 t6 t5 t4"],
        ["t5 t6 t7 t8 t5 t6", "t1 t2 t1", "t7 t2 t3 t7"],
        [" t3", " t8", " t6"],
        [" t7", " t2", " t2"],
    )


def close(a, b) -> float:
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    assert a.shape == b.shape
    return float((a - b).abs().max())


def test_the_pairs_are_of_mixed_lengths(both, pairs):
    bridge, _ = both
    assert tokenize(bridge, pairs, pad=True).attention_mask is not None


# ----------------------------------------------------------------------------- circuits


@pytest.mark.parametrize("per_position", [False, True])
@pytest.mark.parametrize("metric", ["logit_diff", "kl"])
def test_eap_ig_graph_on_mixed_lengths_equals_the_bridge(both, pairs, metric, per_position):
    bridge, nn = both
    options = {"method": "eap-ig", "steps": 3, "metric": metric, "per_position": per_position}
    ref = cv.circuit(bridge, pairs, progress=False, **options)
    got = cv.circuit(nn, pairs, **options)
    assert got.tokens == ref.tokens
    assert close(got.scores, ref.scores) <= TOL * max(1.0, float(ref.scores.abs().max()))
    assert float(ref.scores.abs().max()) > 1e-8
    assert abs(got.clean - ref.clean) <= TOL and abs(got.corrupted - ref.corrupted) <= TOL
    assert not nn.has_hooks()


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
@pytest.mark.parametrize("per_position", [False, True])
def test_faithfulness_on_mixed_lengths_equals_the_bridge(both, pairs, ablation, per_position):
    """One graph, evaluated on each backend: its own edges, given nodes, a curve of sizes
    and single edges patched (``"mean"``: each position's mean over the prompts there)."""
    bridge, nn = both
    graph = cv.circuit(bridge, pairs, per_position=per_position, progress=False)
    small = graph.prune(top_edges=12)
    last = graph.n_pos - 1
    suffix = f":P{last}" if per_position else ""
    for kwargs in ({}, {"nodes": [f"L0H1{suffix}", f"MLP0{suffix}", f"L1H2{suffix}"]}):
        ref = small.faithfulness(bridge, pairs, ablation=ablation, **kwargs)
        got = small.faithfulness(nn, pairs, ablation=ablation, **kwargs)
        assert abs(got.metric - ref.metric) <= TOL, kwargs
        assert abs(got.clean - ref.clean) <= TOL and abs(got.corrupted - ref.corrupted) <= TOL
    sizes = [3, 10, 40, 10_000]
    ref = graph.faithfulness_curve(bridge, pairs, top_edges=sizes, ablation=ablation)
    got = graph.faithfulness_curve(nn, pairs, top_edges=sizes, ablation=ablation)
    assert close(got.metric, ref.metric) <= TOL
    assert abs(got.metric[-1] - got.clean) <= TOL
    edges = graph.edges[:5]
    ref = graph.patch_edges(bridge, pairs, edges, ablation=ablation, progress=False)
    got = graph.patch_edges(nn, pairs, edges, ablation=ablation, progress=False)
    assert close(got, ref) <= TOL
    assert not nn.has_hooks()


def test_mib_scores_on_mixed_lengths_equal_the_bridge(both, pairs):
    bridge, nn = both
    graph = cv.circuit(bridge, pairs, progress=False)
    ref = mib_scores(graph, bridge, pairs, progress=False)
    got = mib_scores(graph, nn, pairs, progress=False)
    assert close(got.metric, ref.metric) <= TOL
    scores_ref = exact_node_scores(bridge, pairs, progress=False)
    scores_got = exact_node_scores(nn, pairs, progress=False)
    assert max(abs(scores_got[k] - scores_ref[k]) for k in scores_ref) <= TOL


# ----------------------------------------------------------------------------- features


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_feature_ablation_on_mixed_lengths_equals_the_bridge(both, pairs, mode):
    bridge, nn = both
    saes = tiny_saes(bridge)
    last = tokenize(bridge, pairs, pad=True).n_pos - 1

    def firing(prompt: str, hook: int) -> int:  # most active on the last token
        acts = feature_activations(bridge, prompt, saes).latents[saes.hooks[hook]]
        return int(acts[-1].argmax())

    # The second and third prompts have padding at P1.
    feats = [f"L1F{firing(pairs.corrupted[1], 1)}", f"L0F{firing(pairs.clean[0], 0)}:P{last}"]
    feats.append(f"L0F{firing(pairs.corrupted[0], 0)}:P1")
    spec = {"features": feats, "heads": ["L1H0"], "saes": saes, "mode": mode}
    ref = cv.ablate(bridge, pairs, **spec)
    got = cv.ablate(nn, pairs, **spec)
    assert close(got.per_prompt["ablated"], ref.per_prompt["ablated"]) <= TOL
    assert close(got.per_prompt["clean"], ref.per_prompt["clean"]) <= TOL
    assert got.top_after.tokens == ref.top_after.tokens
    assert not has_hooks(bridge) and not nn.has_hooks()


def test_the_clamp_panels_metric_on_mixed_lengths_equals_the_bridge(both, pairs):
    """``edit_metric`` (the clamp panel's metric after a steer) left-pads as the bridge does:
    a latent clamped everywhere and one at a column only the longest prompt has a token in."""
    from circuitviz.engine.features import LatentEdit
    from circuitviz.engine.features._steer import edit_metric

    bridge, nn = both
    saes = tiny_saes(bridge)
    hook = saes.hooks[1]
    latent = int(feature_activations(bridge, pairs.clean[0], saes).latents[hook][-1].argmax())
    edits = [LatentEdit(hook, latent, 3.0), LatentEdit(saes.hooks[0], latent, 0.0, 1)]
    ref = edit_metric(bridge, pairs, saes, edits, metric="logit_diff")
    got = edit_metric(nn, pairs, saes, edits, metric="logit_diff")
    assert got[0] == ref[0] and abs(got[1] - ref[1]) <= TOL and abs(got[2] - ref[2]) <= TOL
    assert abs(got[2] - got[1]) > 1e-5  # the edit moves it
    assert not has_hooks(bridge) and not nn.has_hooks()


# ----------------------------------------------------------------------------- toolkit


@pytest.mark.parametrize("by", ["heads", "heads_by_pos", "layers"])
def test_logit_attribution_on_mixed_lengths_equals_the_bridge(both, pairs, by):
    bridge, nn = both
    ref = cv.logit_attribution(bridge, pairs, by=by)
    got = cv.logit_attribution(nn, pairs, by=by)
    assert close(got.values, ref.values) <= TOL
    assert abs(got.clean - ref.clean) <= TOL and abs(got.corrupted - ref.corrupted) <= TOL
    assert got.extra["requests"] == 1


@pytest.mark.parametrize(
    "options",
    [
        {"receivers": ["L1H0"]},
        {"receivers": ["L1H1", "L1H3"], "receiver_input": "k"},
        {"receivers": "logits"},
        {"receivers": ["L1H2"], "direction": "noise", "max_rows": 3},
    ],
    ids=["q", "k", "logits", "noise-small-passes"],
)
def test_path_patch_on_mixed_lengths_equals_the_bridge(both, pairs, options):
    bridge, nn = both
    ref = cv.path_patch(bridge, pairs, progress=False, **options)
    got = cv.path_patch(nn, pairs, progress=False, **options)
    assert close(got.values, ref.values) <= TOL
    assert abs(got.clean - ref.clean) <= TOL


def test_head_roles_on_mixed_lengths_equal_the_bridge(both, pairs):
    """Each prompt is scored on its own tokens (padding is never a repeated or previous
    token); name movers found, so S-inhibition is path patched on the mixed batch too."""
    bridge, nn = both
    ref = cv.head_roles(bridge, pairs, thresholds=LOW, progress=False)
    got = cv.head_roles(nn, pairs, thresholds=LOW, progress=False)
    assert got.scores.keys() == ref.scores.keys() and got.notes == ref.notes
    for key, value in ref.scores.items():
        assert torch.equal(got.scores[key].isnan(), value.isnan()), key
        assert close(got.scores[key].nan_to_num(0), value.nan_to_num(0)) <= TOL, key
    assert got.roles == ref.roles
    assert not ref.scores["s_inhibition"].isnan().all()


# ----------------------------------------------------------------------------- NDIF


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_remote_mixed_lengths_graphs_and_toolkit_equal_the_bridge(kind, pairs):
    """Through the fake NDIF (the request serialised, run with circuitviz hidden): EAP-IG,
    mean-ablated faithfulness (weights applied on the server), DLA, path patching and head
    roles equal the bridge."""
    setup = Setup(kind)
    client = setup.make_client(model_name=setup.bridge.cfg.model_name)
    bridge = setup.bridge
    options = {"method": "eap-ig", "steps": 2, "per_position": True}
    ref = cv.circuit(bridge, pairs, progress=False, **options)
    got = cv.circuit(client, pairs, **options)
    assert close(got.scores, ref.scores) <= TOL * max(1.0, float(ref.scores.abs().max()))
    sizes = [1, 5, 10_000]
    want = ref.faithfulness_curve(bridge, pairs, top_edges=sizes, ablation="mean").metric
    have = ref.faithfulness_curve(client, pairs, top_edges=sizes, ablation="mean").metric
    assert close(have, want) <= TOL
    dla = cv.logit_attribution(client, pairs, by="heads")
    assert close(dla.values, cv.logit_attribution(bridge, pairs, by="heads").values) <= TOL
    path = cv.path_patch(client, pairs, receivers=["L1H0"], progress=False)
    want_path = cv.path_patch(bridge, pairs, receivers=["L1H0"], progress=False)
    assert close(path.values, want_path.values) <= TOL
    roles = cv.head_roles(client, pairs, thresholds=LOW, progress=False)
    want_roles = cv.head_roles(bridge, pairs, thresholds=LOW, progress=False)
    assert roles.roles == want_roles.roles
    assert close(roles.scores["induction"], want_roles.scores["induction"]) <= TOL
    assert not setup.server.has_hooks() and not client.has_hooks()


@pytest.mark.demo
@pytest.mark.slow
def test_demo_model_mixed_lengths_on_nnsight(demo_model):
    """SmolLM2-135M (30 layers, GQA) through nnsight on two IOI pairs of different lengths:
    the EAP graph, its mean-ablated faithfulness, DLA by head and path patching into a name
    mover's query equal the bridge's."""
    nn = cv.load_model("demo", backend="nnsight", device="cpu")
    pairs = cv.PromptPairs(
        [
            "When John and Mary went to the store, John gave a drink to",
            "After Tom and Anna met, Tom thanked",
        ],
        [
            "When John and Mary went to the store, Mary gave a drink to",
            "After Tom and Anna met, Anna thanked",
        ],
        [" Mary", " Anna"],
        [" John", " Tom"],
    )
    assert tokenize(demo_model, pairs, pad=True).attention_mask is not None
    ref = cv.circuit(demo_model, pairs, progress=False)
    got = cv.circuit(nn, pairs)
    assert close(got.scores, ref.scores) <= TOL * max(1.0, float(ref.scores.abs().max()))
    want = ref.faithfulness_curve(demo_model, pairs, top_edges=[100], ablation="mean").metric
    have = ref.faithfulness_curve(nn, pairs, top_edges=[100], ablation="mean").metric
    assert close(have, want) <= TOL
    dla = cv.logit_attribution(nn, pairs)
    assert close(dla.values, cv.logit_attribution(demo_model, pairs).values) <= TOL
    options = {"receivers": ["L25H6"], "progress": False}
    path = cv.path_patch(nn, pairs, **options)
    assert close(path.values, cv.path_patch(demo_model, pairs, **options).values) <= TOL
    assert not nn.has_hooks() and not has_hooks(demo_model)
