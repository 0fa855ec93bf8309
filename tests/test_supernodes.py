"""Supernodes: the validator every write goes through, and the suggestion rule (same site and
position; logit-effect cosine of W_dec @ W_U rows, or co-activation on the pairs)."""

from __future__ import annotations

import pytest
import torch

import circuitviz
from circuitviz.engine import has_hooks
from circuitviz.engine.features import SAE, SAESet, check_supernodes, suggest_supernodes
from circuitviz.engine.features._supernodes import COACTIVATION, LOGIT_COSINE

NODES = [
    {"id": "L0F0:P3", "type": "feature", "feature": 0, "hook": "blocks.0.hook_resid_post"},
    {"id": "L0F1:P3", "type": "feature", "feature": 1, "hook": "blocks.0.hook_resid_post"},
    {"id": "L0F2:P3", "type": "feature", "feature": 2, "hook": "blocks.0.hook_resid_post"},
    {"id": "L0F3:P3", "type": "feature", "feature": 3, "hook": "blocks.0.hook_resid_post"},
    {"id": "L0F4:P3", "type": "feature", "feature": 4, "hook": "blocks.0.hook_resid_post"},
    {"id": "L0F1:P4", "type": "feature", "feature": 1, "hook": "blocks.0.hook_resid_post"},
    {"id": "L1F1:P3", "type": "feature", "feature": 1, "hook": "blocks.1.hook_resid_post"},
    {"id": "L0ERR:P3", "type": "error"},
    {"id": "L1H0:P3", "type": "head"},
]


@pytest.fixture(scope="module")
def saes(tiny_llama):
    """Hand-made SAEs: latents 0 and 1 decode to nearly the same direction (logit effects
    alike); 3 and 4 read the same direction (always co-active) but decode to opposite ones."""
    g = torch.Generator().manual_seed(0)
    d = tiny_llama.cfg.d_model
    W_dec = torch.randn(8, d, generator=g)
    W_dec[1] = W_dec[0] + 0.05 * torch.randn(d, generator=g)
    W_dec[4] = -W_dec[3]
    W_enc = torch.randn(d, 8, generator=g)
    W_enc[:, 4] = W_enc[:, 3]

    def sae(hook):
        return SAE(hook, W_enc.clone(), torch.ones(8), W_dec.clone(), torch.zeros(d), "relu")

    return SAESet([sae("blocks.0.hook_resid_post"), sae("blocks.1.hook_resid_post")])


def test_suggestion_follows_the_logit_cosine_rule(tiny_llama, saes):
    # The reference: cosines of W_dec[i] @ W_U computed here, thresholded by hand.
    eff = saes["blocks.0.hook_resid_post"].W_dec[:5] @ tiny_llama.W_U
    unit = eff / eff.norm(dim=-1, keepdim=True)
    cos = unit @ unit.T
    assert cos[0, 1] >= LOGIT_COSINE and cos[3, 4] < 0
    linked = {(a, b) for a in range(5) for b in range(a + 1, 5) if cos[a, b] >= LOGIT_COSINE}
    got = suggest_supernodes(tiny_llama, saes, NODES)
    assert linked == {(0, 1)}
    assert [g["members"] for g in got] == [["L0F0:P3", "L0F1:P3"]]
    # Same latent at another position or another site is never grouped with these.
    assert got[0]["id"] == "S1" and "logit cosine" in got[0]["reason"]
    assert got[0]["label"] == "L0 resid_post ×2"  # names the SAE site, not only the layer


def test_coactivation_on_pairs_links_what_logits_do_not(tiny_llama, saes, tiny_pairs):
    got = suggest_supernodes(tiny_llama, saes, NODES, pairs=tiny_pairs)
    groups = {tuple(g["members"]): g["reason"] for g in got}
    assert ("L0F3:P3", "L0F4:P3") in groups  # identical encoders: co-activation 1
    assert "co-activation 1.00" in groups[("L0F3:P3", "L0F4:P3")]
    assert COACTIVATION <= 1
    assert not has_hooks(tiny_llama)


def test_threshold_one_suggests_nothing_and_graph_inputs(tiny_llama, saes):
    assert suggest_supernodes(tiny_llama, saes, NODES, logit_threshold=1.0) == []
    # Node ids alone parse to the same nodes (id grammar "L{L}F{i}:P{p}").
    ids = [n["id"] for n in NODES[:7]]
    assert suggest_supernodes(tiny_llama, saes, ids) == suggest_supernodes(tiny_llama, saes, NODES)
    with pytest.raises(circuitviz.InputError, match="cosine"):
        suggest_supernodes(tiny_llama, saes, NODES, logit_threshold=float("nan"))
    with pytest.raises(circuitviz.InputError, match="no SAE in saes"):
        suggest_supernodes(tiny_llama, saes, [{"id": "L1F0:P2", "type": "feature", "hook": "x"}])


def test_check_supernodes_normalises_and_refuses():
    ok = check_supernodes([{"id": "S1", "members": ["L0F0:P3", "L0F1:P3"]}], NODES)
    assert ok == [{"id": "S1", "label": "L0F0 + L0F1", "members": ["L0F0:P3", "L0F1:P3"]}]
    bad = [
        ("not a list", "must be a list"),
        ([{"id": "S1", "members": ["L0F0:P3"]}], "needs two"),
        ([{"id": "S1", "members": ["L0F0:P3", "L1H0:P3"]}], "not a feature node"),
        ([{"id": "S1", "members": ["L0F0:P3", "L0ERR:P3"]}], "not a feature node"),
        ([{"id": "S1", "members": ["L0F0:P3", "nope"]}], "not a feature node"),
        ([{"id": "X", "members": ["L0F0:P3", "L0F1:P3"]}], "must look like 'S1'"),
        (
            [
                {"id": "S1", "members": ["L0F0:P3", "L0F1:P3"]},
                {"id": "S2", "members": ["L0F1:P3", "L0F2:P3"]},
            ],
            "ungroup it first",
        ),
        (
            [
                {"id": "S1", "members": ["L0F0:P3", "L0F1:P3"]},
                {"id": "S1", "members": ["L0F2:P3", "L0F3:P3"]},
            ],
            "Two supernodes",
        ),
        ([{"id": "S1", "members": "L0F0:P3"}], "members must be a list"),
        ([{"id": "S1", "members": ["L0F0:P3", "L0F1:P3"], "label": 5}], "label must be text"),
    ]
    for groups, words in bad:
        with pytest.raises(circuitviz.InputError, match=words):
            check_supernodes(groups, NODES)


def test_supernode_labels_name_their_site_in_the_view_and_the_export():
    """Two groups with one label at two SAE sites of one block are told apart by the site
    their drawn label names (in the view's payload and in the static figure)."""
    from circuitviz.export import graph_figure
    from circuitviz.views._clamp import collapse

    def latent(site, i):
        return {
            "id": f"L3{site}F{i}:P2",
            "type": "feature",
            "layer": 3,
            "pos": 2,
            "site": site,
            "score": 1.0 + i,
        }

    ends = [
        {"id": "EMBED:P2", "type": "embed", "layer": -1, "pos": 2, "score": None},
        {"id": "LOGITS:P2", "type": "logits", "layer": 4, "pos": 2, "score": None},
    ]
    nodes = [*ends, latent("attn", 1), latent("attn", 2), latent("", 1), latent("", 2)]
    groups = [
        {"id": "S1", "label": "names", "members": ["L3attnF1:P2", "L3attnF2:P2"]},
        {"id": "S2", "label": "names", "members": ["L3F1:P2", "L3F2:P2"]},
        {"id": "S3", "label": "L3 resid_post ×2", "members": []},  # nothing shown: not drawn
    ]
    out = collapse({"n_layers": 4, "n_heads": 2, "nodes": nodes, "edges": None}, groups)
    drawn = {n["id"]: n["label"] for n in out["nodes"] if n["type"] == "supernode"}
    assert drawn == {"S1": "L3 attn_out: names", "S2": "L3 resid_post: names"}
    suggested = {**groups[2], "members": ["L3F1:P2", "L3F2:P2"]}  # already names its site
    again = collapse({"n_layers": 4, "nodes": nodes, "edges": None}, [suggested])
    assert [n["label"] for n in again["nodes"] if n["id"] == "S3"] == ["L3 resid_post ×2"]
    fig = graph_figure({**out, "edges": []})
    (labels,) = [tr for tr in fig.data if tr.name == "labels"]
    assert {"L3 attn_out: names", "L3 resid_post: names"} <= set(labels.text)
