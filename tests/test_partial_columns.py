"""Partial position columns of mixed-length prompt batches (issue #13; every mark has a
legend). Pairs of mixed lengths are left-padded: column ``p`` is position ``p`` of the longest
prompt, and a shorter prompt has padding in the first columns, where it patches and
attributes nothing. The kernel derives from the tokens which columns are partial and what a
reader is told (``engine/_columns.py``); PatchingView, CircuitView and the figures hatch those
columns, say so on hover and in a legend. Reference for the note's claim: each pair patched
alone (``patch`` is checked against TransformerLens in ``test_patching_exact``)."""

from __future__ import annotations

import json

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import InputError, tokenize
from circuitviz.engine._columns import PARTIAL_LEGEND
from circuitviz.export._style import text_label
from circuitviz.views import CircuitView, PatchingView

from .test_mixed_lengths import TOL, mixed_pairs, one

LENGTHS = (4, 7, 5)


@pytest.fixture(scope="module")
def model():
    return cv.tiny_model("gpt2", n_layers=2)


def expected_columns(model, pairs):
    """Each pair tokenized alone, shifted right by its padding: the tokens per column."""
    alone = [
        model.to_str_tokens(tokenize(model, one(pairs, i)).clean[0]) for i in range(len(pairs))
    ]
    width = max(len(t) for t in alone)
    return [[None] * (width - len(t)) + list(t) for t in alone]


def test_columns_are_derived_from_each_prompts_tokens(model):
    """What the kernel records and sends follows from the tokens: the per-prompt tokens per
    column (None = padding), the counts, a note on exactly the partial columns, the same on
    PatchResult, PatchingView's trait, per-position Graph and its JSON and CircuitView's
    trait; same-length pairs, whole-position maps and summed graphs send nothing."""
    pairs = mixed_pairs(lengths=LENGTHS)
    want = expected_columns(model, pairs)
    n = len(want)
    present = [sum(row[p] is not None for row in want) for p in range(len(want[0]))]
    partial = [p for p, k in enumerate(present) if k < n]
    assert partial  # the shorter prompts pad the first columns
    cols = tokenize(model, pairs, pad=True).columns
    assert [list(r) for r in cols.tokens] == want
    assert cols.present == present and cols.partial == partial

    result = cv.patch(model, pairs, over="resid_pre", progress=False)
    sent = PatchingView(result).map["columns"]
    assert sent["present"] == present and sent["tokens"] == want
    assert [p for p, note in enumerate(sent["notes"]) if note] == partial
    for p in partial:
        k = present[p]
        assert sent["notes"][p].startswith(f"pad in {n - k} of {n} prompts: only the {k} ")
        assert all(repr(t) in sent["notes"][p] for t in {r[p] for r in want} - {None})
    assert sent["legend"] == PARTIAL_LEGEND
    heads = cv.patch(model, pairs, over="heads", progress=False)  # no position axis
    assert PatchingView(heads).map["columns"] is None

    graph = cv.circuit(model, pairs, per_position=True, progress=False)
    assert graph.columns == cols
    again = cv.Graph.from_json(graph.to_json())
    assert again.columns == cols and again.to_json() == graph.to_json()
    assert CircuitView(graph=graph).graph["columns"] == sent
    assert CircuitView(graph=graph.to_json()).graph["columns"] == sent
    assert cv.circuit(model, pairs, progress=False).columns is None  # summed over positions

    same = mixed_pairs(lengths=(5, 5))
    assert tokenize(model, same, pad=True).columns is None
    assert (
        PatchingView(cv.patch(model, same, over="resid_pre", progress=False)).map["columns"] is None
    )
    assert "columns" not in cv.circuit(model, same, per_position=True, progress=False).to_dict()


def test_a_partial_column_holds_only_the_prompts_with_a_token_there(model):
    """The note's claim, exactly: a column's effect (value − corrupted baseline) is the sum
    of the effects of the pairs that have a token there (each patched alone, at its own
    position), divided by all pairs — padding adds 0."""
    pairs = mixed_pairs(lengths=LENGTHS)
    batch = cv.patch(model, pairs, over="resid_pre", progress=False)
    n, n_pos = len(pairs), batch.values.shape[1]
    total = torch.zeros_like(batch.values, dtype=torch.float64)
    for i in range(n):
        alone = cv.patch(model, one(pairs, i), over="resid_pre", progress=False)
        shift = n_pos - alone.values.shape[1]
        total[:, shift:] += alone.values.double() - alone.corrupted
    effect = batch.values.double() - batch.corrupted
    assert torch.allclose(effect, total / n, atol=TOL)
    for p in batch.columns.partial:  # and where a pair has padding, it adds nothing
        assert batch.columns.present[p] < n


def test_graph_json_columns_are_checked_and_notes_recomputed(model):
    """A file's ``columns`` must fit its tokens; the notes a view sends are the kernel's,
    recomputed from the tokens, whatever the file says."""
    pairs = mixed_pairs(lengths=LENGTHS)
    data = cv.circuit(model, pairs, per_position=True, progress=False).to_dict()
    bad = json.loads(json.dumps(data))
    bad["columns"]["tokens"][0] = bad["columns"]["tokens"][0][:-1]
    with pytest.raises(InputError, match=r"columns.tokens\[0\] must list one token"):
        cv.Graph.from_json(bad)
    with pytest.raises(InputError, match="columns"):
        CircuitView(graph=bad)
    forged = json.loads(json.dumps(data))
    forged["columns"]["notes"] = ["forged"] * len(forged["tokens"])
    assert CircuitView(graph=forged).graph["columns"]["notes"] == data["columns"]["notes"]


def test_figures_mark_the_columns_the_views_send(model):
    """Export equality: patch_figure hatches exactly the columns PatchingView marks, with
    the same note on hover and the same legend text; graph_figure (CircuitView.figure)
    hatches the band of each partial column it draws, its note on hover."""
    pairs = mixed_pairs(lengths=LENGTHS)
    for over in ("resid_pre", "heads_by_pos"):
        result = cv.patch(model, pairs, over=over, progress=False)
        sent = PatchingView(result).map["columns"]
        partial = [p for p, note in enumerate(sent["notes"]) if note]
        fig = result.figure()
        (strip,) = [s for s in fig.layout.shapes if s.name == "pad-strip"]
        starts = [float(seg.split(",")[0]) for seg in strip.path.split("M")[1:]]
        assert [round(x + 0.5) for x in starts] == partial
        hover = fig.data[0].customdata
        for c in range(len(sent["notes"])):
            note = sent["notes"][c]
            assert all(row[c] == ("<br>" + text_label(note) if note else "") for row in hover)
        (entry,) = [t for t in fig.data if t.legend == "legend3"]
        assert entry.name.replace("<br>", " ") == text_label(PARTIAL_LEGEND)

    graph = cv.circuit(model, pairs, per_position=True, progress=False)
    view = CircuitView(graph=graph, top_nodes=40, top_edges=120)
    sent = view.graph["columns"]
    fig = view.figure()
    bands = {
        int(t.name.split("P")[1]): t.text for t in fig.data if (t.name or "").startswith("pad-band")
    }
    drawn = {n["pos"] for n in view.shown_graph()["nodes"] if n["type"] not in ("embed", "logits")}
    want = {p for p, note in enumerate(sent["notes"]) if note and p in drawn}
    assert want and set(bands) == want
    assert all(bands[p] == text_label(sent["notes"][p]) for p in want)
    assert any(t.legend == "legend3" for t in fig.data)


@pytest.mark.browser
def test_views_hatch_partial_columns_in_the_browser(model, page, tmp_path, artifacts):
    """PatchingView: the heatmap hatches exactly the kernel's partial columns above the plot,
    hovering a strip or a cell there shows the kernel's note, the legend says what hatching
    means, and the SVG export carries strips and legend. CircuitView (per position): each
    partial column's band is hatched with the note as its tooltip, and the side panel has the
    legend. Screenshots: tests/artifacts/partial_columns_{patching,circuit}.png."""
    from circuitviz.export._html import write_html

    pairs = mixed_pairs(lengths=(4, 7, 5, 7))
    result = cv.patch(model, pairs, over="heads_by_pos", progress=False)
    view = PatchingView(result)
    notes = view.map["columns"]["notes"]
    partial = [p for p, note in enumerate(notes) if note]
    write_html(view, tmp_path / "patching.html")
    page.goto((tmp_path / "patching.html").as_uri())
    hm = page.locator(".cv-patching .cv-hm")
    hm.wait_for()
    assert hm.get_attribute("data-partial-columns") == ",".join(map(str, partial))
    legend = page.locator('.cv-patching [data-role="pad-legend"]')
    assert legend.inner_text().strip() == PARTIAL_LEGEND
    tip = page.locator('.cv-patching [data-role="tooltip"]')
    cell = page.locator(f'.cv-patching [data-component="L1H2:P{partial[0]}"]').bounding_box()
    page.mouse.move(cell["x"] + cell["width"] / 2, cell["y"] + cell["height"] / 2)
    assert notes[partial[0]] in tip.inner_text()
    top = page.locator(".cv-patching .cv-hits").bounding_box()["y"]
    for p in partial:  # the strip just above the plot, over column p
        box = page.locator(f'.cv-patching [data-component="L0H0:P{p}"]').bounding_box()
        page.mouse.move(box["x"] + box["width"] / 2, top - 5)
        assert tip.inner_text() == notes[p]
    full = page.locator(f'.cv-patching [data-component="L0H0:P{len(notes) - 1}"]').bounding_box()
    page.mouse.move(full["x"] + full["width"] / 2, top - 5)
    assert not tip.is_visible()  # a full column has no strip
    page.locator(".cv-patching").screenshot(path=str(artifacts / "partial_columns_patching.png"))
    with page.expect_download() as download:
        page.locator('.cv-patching [data-role="export-svg"]').click()
    svg = open(download.value.path(), encoding="utf-8").read()
    assert svg.count('data-role="pad-strip"') == len(partial)
    assert all(
        text_label(notes[p]).replace("&lt;", "<") in svg.replace("&lt;", "<") for p in partial
    )
    assert 'data-role="pad-legend"' in svg

    graph = cv.circuit(model, pairs, per_position=True, progress=False)
    circuit = CircuitView(graph=graph, top_nodes=20, top_edges=60)
    write_html(circuit, tmp_path / "circuit.html")
    page.goto((tmp_path / "circuit.html").as_uri())
    page.locator(".cv-circuit g.cv-node").first.wait_for()
    bands = page.evaluate(
        "() => [...document.querySelectorAll('.cv-circuit [data-role=pad-band]')]"
        ".map(e => [Number(e.dataset.pos), e.querySelector('title').textContent])"
    )
    assert sorted(bands) == [[p, notes[p]] for p in partial]
    side = page.locator('.cv-circuit [data-role="pad-legend"]')
    assert side.inner_text().strip() == PARTIAL_LEGEND
    assert not page.console_errors
    page.locator(".cv-circuit").screenshot(path=str(artifacts / "partial_columns_circuit.png"))


def test_nnsight_results_carry_the_same_columns(model):
    """On the nnsight backend the maps and per-position graphs record the same columns, so
    its views and figures hatch the same columns as the bridge's."""
    pairs = mixed_pairs(lengths=LENGTHS)
    on_nnsight = cv.load_model(model, backend="nnsight")
    want = tokenize(model, pairs, pad=True).columns
    assert cv.patch(on_nnsight, pairs, over="resid_pre", progress=False).columns == want
    assert cv.attribution_patch(on_nnsight, pairs, over="heads_by_pos").columns == want
    assert cv.logit_attribution(on_nnsight, pairs, by="heads_by_pos").columns == want
    graph = cv.circuit(on_nnsight, pairs, per_position=True, progress=False)
    assert graph.columns == want
