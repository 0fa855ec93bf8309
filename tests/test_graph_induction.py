"""Known answer: a 2-layer attention-only model trained on repeated random tokens has a
previous-token head in layer 0 composing through its K input with induction heads in
layer 1; the head-role scores and the attribution graph must both find it."""

from __future__ import annotations

import pytest
import torch

import circuitviz
from circuitviz.engine._pairs import PromptPairs
from circuitviz.engine.graph import circuit
from circuitviz.engine.graph._induction import induction_model


@pytest.fixture(scope="module")
def toy():
    return induction_model()  # the shipped checkpoint (retrain: python _induction.py)


def words(tokens: list[int]) -> str:
    return " ".join(f"t{t}" for t in tokens)


def induction_pairs(n: int = 8, seed: int = 1) -> PromptPairs:
    """Clean: ``A B C D E F G H I J  A B C D E`` → ``F`` (induction copies the token after
    the earlier E). Corrupted: the earlier E becomes X, so no earlier token matches and the
    previous-token information the induction head's key needs is gone."""
    g = torch.Generator().manual_seed(seed)
    clean, corrupted, answers, wrong = [], [], [], []
    for _ in range(n):
        seq = torch.randperm(63, generator=g)[:12].tolist()
        first, x, other = seq[:10], seq[10], seq[11]
        broken = [*first[:4], x, *first[5:]]
        clean.append(words(first + first[:5]))
        corrupted.append(words(broken + first[:5]))
        answers.append(f"t{first[5]}")
        wrong.append(f"t{other}")
    return PromptPairs(clean, corrupted, answers, wrong)


def test_head_roles_find_previous_token_and_induction_heads(toy):
    g = torch.Generator().manual_seed(0)
    prompt = words(torch.randperm(63, generator=g)[:10].tolist() * 2)
    scores = circuitviz.attention(toy, prompt).scores
    prev, ind = scores["previous_token"], scores["induction"]
    assert int(prev[0].argmax()) == 2 and float(prev[0, 2]) > 0.9  # L0H2: previous token
    assert float(prev[1].max()) < 0.2
    assert float(ind[1].min()) > 0.7  # every layer-1 head is an induction head
    assert float(ind[0].max()) < 0.2


def test_graph_finds_k_composition_of_previous_token_and_induction_heads(toy):
    pairs = induction_pairs()
    graph = circuit(toy, pairs, method="eap-ig", steps=10, progress=False)
    assert graph.clean > graph.corrupted + 5  # induction works, and the corruption breaks it
    top = graph.prune(top_edges=3)
    named = {f"{e.source} → {e.target} via {e.input}" for e in top.edges}
    assert named == {"EMBED → L0H2 via v", "L0H2 → L1H0 via k", "L1H0 → LOGITS via logits"}
    # The layer-0 head reaches every induction head through its key, not its value.
    for head in range(4):
        k = graph.score("L0H2", f"L1H{head}", "k")
        v = graph.score("L0H2", f"L1H{head}", "v")
        assert k < -0.5 and abs(k) > abs(v)
    # Exact check of the composition edge, and the circuit's faithfulness.
    exact = graph.patch_edge(toy, pairs, ("L0H2", "L1H0", "k"))
    assert exact < -1.0
    assert exact == pytest.approx(graph.score("L0H2", "L1H0", "k"), rel=0.5)
    assert graph.prune(top_edges=10).faithfulness(toy, pairs).recovered > 0.9
