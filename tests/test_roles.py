"""Head roles (circuitviz.head_roles): the known answer on the shipped 2-layer induction model,
references for each score, bad input, the badges in the views, figures and graph JSON, and
(demo, slow) the structure of the roles on the demo model's IOI task."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import pytest
import torch

import circuitviz
from circuitviz.engine import has_hooks
from circuitviz.engine._badges import BADGES, HEAD_ROLES, role_map
from circuitviz.engine._roles import THRESHOLDS, HeadRoles, assign_roles, head_roles
from circuitviz.engine.graph import circuit
from circuitviz.engine.graph._induction import induction_model
from circuitviz.export import ExportError, attention_figure, graph_figure
from circuitviz.export._html import write_html
from circuitviz.views import AttentionView, CircuitView

sys.path.insert(0, str(Path(__file__).parent))
from test_graph_induction import induction_pairs, words


@pytest.fixture(scope="module")
def toy():
    return induction_model()  # the shipped checkpoint


@pytest.fixture(scope="module")
def toy_pairs():
    return induction_pairs(n=4)


@pytest.fixture(scope="module")
def toy_roles(toy, toy_pairs):
    return head_roles(toy, toy_pairs, progress=False)


# ----------------------------------------------------------------------------- known answer


def test_induction_model_gets_its_previous_token_and_induction_heads(toy_roles):
    assert toy_roles.heads("previous_token") == ["L0H2"]
    assert toy_roles.heads("induction") == ["L1H0", "L1H1", "L1H2", "L1H3"]
    assert toy_roles.heads("duplicate_token") == []
    # Induction heads move the answer token: the name-mover rule (attend to it, copy it,
    # write it to the logits) finds them; nothing writes against it.
    assert toy_roles.heads("name_mover") == ["L1H0", "L1H1", "L1H2", "L1H3"]
    assert toy_roles.heads("negative_name_mover") == []
    assert toy_roles.roles["L0H2"] == ("previous_token",)
    assert toy_roles.thresholds == THRESHOLDS and not toy_roles.notes


def test_attention_role_scores_equal_the_mean_of_circuitviz_attention(toy, toy_pairs):
    """Reference: circuitviz.attention's per-prompt scores (the existing role scores),
    averaged over the clean prompts (n_random=0: the prompts alone)."""
    roles = head_roles(toy, toy_pairs, n_random=0, progress=False)
    for role in ("previous_token", "induction"):
        ref = torch.stack([circuitviz.attention(toy, p).scores[role] for p in toy_pairs.clean])
        assert torch.allclose(roles.scores[role], ref.mean(0), atol=1e-6), role


def test_name_mover_scores_against_their_references(toy, toy_pairs, toy_roles):
    """io_attention: the final query's attention to the answer's position in the patterns
    of circuitviz.attention; dla: logit_attribution over the clean logit difference."""
    tokens = toy_pairs.tokenize(toy)
    ref = []
    for b, prompt in enumerate(toy_pairs.clean):
        pat = circuitviz.attention(toy, prompt).patterns.float()[:, :, -1]  # [layer, head, src]
        at = (tokens.clean[b, :-1] == tokens.answers[b]).nonzero()[:, 0]
        ref.append(pat[..., at].sum(-1))
    # the view's patterns are float16: the reference is as exact as they are
    assert torch.allclose(toy_roles.scores["io_attention"], torch.stack(ref).mean(0), atol=1e-3)
    dla = circuitviz.logit_attribution(toy, toy_pairs, by="heads")
    assert torch.allclose(toy_roles.scores["dla"], dla.values / dla.clean, atol=1e-6)
    assert toy_roles.clean == pytest.approx(dla.clean)
    assert set(toy_roles.scores["copy"].unique().tolist()) <= {0.0, 0.25, 0.5, 0.75, 1.0}


def test_s_inhibition_scores_equal_direct_path_patching(toy, toy_pairs, toy_roles):
    """Reference: circuitviz.path_patch with one explicit sender into the name movers' q."""
    movers = toy_roles.heads("name_mover")
    for head in range(4):
        direct = circuitviz.path_patch(
            toy, toy_pairs, senders=[f"L0H{head}"], receivers=movers, progress=False
        )
        share = (direct - toy_roles.corrupted) / (toy_roles.clean - toy_roles.corrupted)
        assert float(toy_roles.scores["s_inhibition"][0, head]) == pytest.approx(share, abs=1e-6)
    assert (toy_roles.scores["s_inhibition"][1] == 0).all()  # no later name mover to reach


def test_roles_follow_the_thresholds(toy, toy_pairs, toy_roles):
    strict = assign_roles(toy_roles.scores, {**THRESHOLDS, "previous_token": 0.99})
    assert "L0H2" not in strict
    loose = head_roles(toy, toy_pairs, thresholds={"induction": 0.0}, progress=False)
    assert set(loose.heads("induction")) == {f"L{la}H{h}" for la in range(2) for h in range(4)}
    assert loose.thresholds["induction"] == 0.0


def test_without_the_answer_in_the_prompt_name_movers_are_not_scored(toy):
    pairs = circuitviz.PromptPairs([words([1, 2, 3, 4])], [words([5, 6, 7, 8])], "t9", "t10")
    roles = head_roles(toy, pairs, progress=False)
    assert "answer token" in roles.notes[0]
    for key in ("io_attention", "copy", "s_inhibition"):
        assert torch.isnan(roles.scores[key]).all()
    assert not roles.heads("name_mover") and not roles.heads("s_inhibition")
    assert torch.isfinite(roles.scores["previous_token"]).all()


def test_result_serialises(toy_roles):
    data = json.loads(json.dumps(toy_roles.to_dict()))
    assert data["roles"]["L0H2"] == ["previous_token"]
    assert data["thresholds"] == THRESHOLDS
    assert len(data["scores"]["copy"]) == 2 and len(data["scores"]["copy"][0]) == 4
    assert "induction: 4" in repr(toy_roles)
    with pytest.raises(ExportError, match="AttentionView"):
        toy_roles.save("roles.html")
    with pytest.raises(circuitviz.InputError, match="Unknown role"):
        toy_roles.heads("mover")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"thresholds": {"copyy": 0.5}}, "Unknown threshold 'copyy'"),
        ({"thresholds": {"copy": 2}}, r"number in \[0, 1\]"),
        ({"thresholds": [("copy", 0.5)]}, "must be a dict"),
        ({"n_random": -1}, "n_random"),
        ({"random_len": 1}, "random_len"),
    ],
)
def test_bad_input_is_refused_and_leaves_the_model_untouched(toy, toy_pairs, kwargs, match):
    tokens = toy_pairs.tokenize(toy).clean
    before = toy(tokens)
    with pytest.raises(circuitviz.InputError, match=match):
        head_roles(toy, toy_pairs, progress=False, **kwargs)
    assert not has_hooks(toy)
    assert torch.equal(toy(tokens), before)


def test_bad_model_or_pairs(toy, toy_pairs):
    with pytest.raises(circuitviz.InputError, match="Expected a model"):
        head_roles("demo", toy_pairs)
    with pytest.raises(circuitviz.InputError, match="PromptPairs"):
        head_roles(toy, ["t1 t2"])


def test_works_under_grouped_query_attention_and_layernorm(tiny, tiny_pairs):
    """The tiny Llama has 2 KV heads for 4 query heads (copy scores read each head's KV
    head's W_V); the tiny GPT-2 has LayerNorms with biases. Every score keeps the
    query-head shape and is finite."""
    cfg = tiny.cfg
    kv = getattr(cfg, "n_key_value_heads", None) or cfg.n_heads
    assert kv < cfg.n_heads or cfg.normalization_type == "LN"  # GQA, or LayerNorm
    roles = head_roles(tiny, tiny_pairs, progress=False)
    for key in ("previous_token", "io_attention", "copy", "dla"):
        assert roles.scores[key].shape == (cfg.n_layers, cfg.n_heads)
        assert torch.isfinite(roles.scores[key]).all()


# ----------------------------------------------------------------------------- badges


def test_role_map_checks_ids_shape_and_names(toy_roles):
    assert role_map(toy_roles) == {h: list(r) for h, r in toy_roles.roles.items()}
    assert role_map({"L0H1": ["name_mover", "previous_token"], "L1H0": []}) == {
        "L0H1": ["previous_token", "name_mover"]
    }
    for bad, match in [
        ({"MLP3": ["name_mover"]}, "not a head id"),
        ({"L9H0": ["name_mover"]}, "outside this model"),
        ({"L0H0": ["boss"]}, "unknown role"),
        ({"L0H0": "name_mover"}, "list of role names"),
        (["L0H0"], "HeadRoles or a dict"),
    ]:
        with pytest.raises(circuitviz.InputError, match=match):
            role_map(bad, n_layers=2, n_heads=4)
    assert all(len(BADGES[r][0]) == 2 for r in HEAD_ROLES)  # fits an 18 px cell


@pytest.fixture(scope="module")
def toy_graph(toy, toy_pairs):
    return circuit(toy, toy_pairs, method="eap", progress=False)


def test_graph_json_carries_roles_checked_by_the_schema(toy_graph, toy_roles):
    data = json.loads(toy_graph.to_json(with_roles=toy_roles))
    assert data["roles"] == role_map(toy_roles)
    assert "roles" not in json.loads(toy_graph.to_json())
    again = circuitviz.Graph.from_json(data)  # read back; roles are not part of the Graph
    assert again.to_json() == toy_graph.to_json()
    for bad in ({"L5H0": ["induction"]}, {"L0H0": ["wizard"]}, "L0H0"):
        with pytest.raises(circuitviz.InputError, match="roles"):
            circuitviz.Graph.from_json({**data, "roles": bad})
    with pytest.raises(circuitviz.InputError, match="outside this model"):
        toy_graph.to_json(with_roles={"L2H0": ["induction"]})


def test_graph_figure_draws_a_badge_per_role_with_a_legend_entry(toy_graph, toy_roles):
    small = toy_graph.prune(top_edges=12)
    data = json.loads(small.to_json(with_roles=toy_roles))
    fig = graph_figure(data)
    badges = {t.name: t for t in fig.data if t.name and " = " in t.name}
    shown = {n["id"].split(":")[0] for n in data["nodes"] if n["type"] == "head"}
    present = {r for h in shown for r in toy_roles.roles.get(h, ())}
    assert set(badges) == {f"{BADGES[r][0]} = {BADGES[r][2]}" for r in present}
    assert all(t.showlegend is not False for t in badges.values())
    nm = badges["NM = name mover"]
    assert len(nm.x) == len([h for h in shown if "name_mover" in toy_roles.roles.get(h, ())])
    # The same from the roles= option; and bad roles are an ExportError.
    assert {t.name for t in graph_figure(small, roles=toy_roles).data} >= set(badges)
    with pytest.raises(ExportError, match="outside this model"):
        graph_figure(small, roles={"L7H0": ["induction"]})


def test_attention_figures_show_roles(toy, toy_roles):
    res = circuitviz.attention(toy, words([1, 2, 3, 4, 1, 2, 3]))
    grid = attention_figure(res, head_roles=toy_roles)
    heat = next(t for t in grid.data if t.type == "heatmap")
    assert heat.text[0][2] == "PT" and heat.text[1][0] == "IN+"
    assert "PT = previous-token head" in {t.name for t in grid.data}
    one = attention_figure(res, layer=1, head=0, head_roles=toy_roles)
    assert one.layout.title.text.endswith("(induction head, name mover)")
    view = AttentionView(res, roles=toy_roles, state={"selected": "L0H2"})
    assert view.roles["L0H2"] == ["previous_token"]
    assert [b["text"] for b in view.role_badges] == ["PT", "IN", "NM"]
    assert view.figure().layout.title.text.endswith("(previous-token head)")


def test_circuit_view_sends_roles_and_their_legend(toy_graph, toy_roles):
    view = CircuitView(graph=toy_graph, roles=toy_roles)
    assert view.graph["roles"] == role_map(toy_roles)
    assert {b["role"] for b in view.graph["role_badges"]} == {
        "previous_token",
        "induction",
        "name_mover",
    }
    assert view.shown_graph()["roles"] == role_map(toy_roles)  # the figure gets them
    from_json = CircuitView(graph=toy_graph.to_json(with_roles=toy_roles))
    assert from_json.graph["roles"] == view.graph["roles"]
    assert "roles" not in CircuitView(graph=toy_graph).graph
    with pytest.raises(circuitviz.InputError, match="unknown role"):
        CircuitView(graph=toy_graph, roles={"L0H0": ["boss"]})


def test_roles_figure_has_a_badge_per_assigned_role(toy_roles):
    fig = toy_roles.figure()
    names = {t.name: len(t.x) for t in fig.data if t.type == "scatter"}
    assert names == {"PT = previous-token head": 1, "IN = induction head": 4, "NM = name mover": 4}


# ----------------------------------------------------------------------------- browser


def demo_scale_roles() -> dict[str, list[str]]:
    """Every role, and heads with two and three roles, on a 30-layer × 9-head grid."""
    return {
        "L1H2": ["previous_token"],
        "L2H4": ["duplicate_token"],
        "L17H4": ["induction"],
        "L23H0": ["name_mover"],
        "L24H4": ["negative_name_mover"],
        "L20H0": ["s_inhibition"],
        "L8H1": ["previous_token", "duplicate_token"],
        "L29H8": ["previous_token", "induction", "name_mover"],
    }


@pytest.mark.browser
def test_attention_badges_fit_the_demo_models_18px_cells(page, tmp_path, artifacts):
    from test_attention_view import sink_attention

    res = sink_attention(12, n_layers=30, n_heads=9)
    view = AttentionView(res, roles=demo_scale_roles())
    view.selected = ""  # no head focused: the export is the grid
    write_html(view, tmp_path / "a.html")
    page.goto((tmp_path / "a.html").as_uri())
    page.locator('.cv-attention [data-role="role-legend"]').wait_for()
    cell = page.locator('.cv-attention [data-component="L23H0"]').bounding_box()
    assert cell["width"] == 18  # the demo model's 30 layers
    legend = page.locator('.cv-attention [data-role="role-legend"]')
    text = legend.inner_text()
    assert all(BADGES[r][2] in text and BADGES[r][0] in text for r in HEAD_ROLES), text
    # The exported grid holds the same badges as SVG: each inside its cell.
    with page.expect_download() as download:
        page.locator('.cv-attention [data-role="export-svg"]').click()
    svg = Path(download.value.path()).read_text(encoding="utf-8")
    measured = page.evaluate(
        """(text) => {
          const doc = new DOMParser().parseFromString(text, "image/svg+xml");
          const host = document.body.appendChild(document.importNode(doc.documentElement, true));
          const out = [];
          for (const g of host.querySelectorAll('[data-role="role-badges"]')) {
            const head = g.getAttribute("data-head");
            const cell = host.querySelector(`[data-component="${head}"]`);
            if (!cell) continue;
            const c = cell.getBBox();
            for (const r of g.querySelectorAll('[data-role="role-badge"]')) {
              const m = r.getCTM(), b = r.getBBox();
              const x = m.e + b.x, y = m.f + b.y;
              out.push({head, inside: x >= c.x && y >= c.y && x + b.width <= c.x + c.width
                        && y + b.height <= c.y + c.height});
            }
            for (const t of g.querySelectorAll('text')) {
              const b = t.getBBox(), m = t.getCTM();
              out.push({head, text: t.textContent, inside: m.e + b.x >= c.x - 0.5
                        && m.e + b.x + b.width <= c.x + c.width + 0.5});
            }
          }
          host.remove();
          return out;
        }""",
        svg,
    )
    heads = {m["head"] for m in measured}
    assert heads == set(demo_scale_roles()), heads
    assert all(m["inside"] for m in measured), [m for m in measured if not m["inside"]]
    texts = [m["text"] for m in measured if "text" in m]
    assert "+2" in texts  # L29H8: one badge, then "+2" in an 18 px cell (the tooltip names all)
    page.locator(".cv-attention").screenshot(path=str(artifacts / "roles_attention_18px.png"))
    assert not page.console_errors


@pytest.mark.browser
def test_circuit_badges_and_legend(page, tmp_path, artifacts, toy_graph, toy_roles):
    view = CircuitView(graph=toy_graph.prune(top_edges=20), roles=toy_roles)
    write_html(view, tmp_path / "c.html")
    page.goto((tmp_path / "c.html").as_uri())
    page.locator('.cv-circuit [data-role="role-badges"]').first.wait_for()
    shown = page.locator('.cv-circuit [data-role="role-badges"]')
    heads = {shown.nth(i).get_attribute("data-head") for i in range(shown.count())}
    assert heads and all(h.split(":")[0] in toy_roles.roles for h in heads)
    legend = page.locator('.cv-circuit [data-role="role-legend"]').inner_text()
    assert "name mover" in legend and "induction head" in legend
    # No node label lies on a badge.
    overlaps = page.evaluate(
        """() => {
          const boxes = [...document.querySelectorAll('.cv-circuit [data-role="role-badge"]')]
            .map((r) => r.getBoundingClientRect());
          const labels = [...document.querySelectorAll('.cv-circuit [data-role="node-label"]')]
            .map((t) => t.getBoundingClientRect());
          const hit = (a, b) => a.left < b.right && b.left < a.right && a.top < b.bottom
            && b.top < a.bottom;
          return labels.filter((l) => boxes.some((b) => hit(l, b))).length;
        }"""
    )
    assert overlaps == 0
    page.locator(".cv-circuit").screenshot(path=str(artifacts / "roles_circuit.png"))
    assert not page.console_errors


# ----------------------------------------------------------------------------- demo


@pytest.mark.demo
@pytest.mark.slow
def test_demo_ioi_roles_are_structurally_sound(demo_model):
    """On 4 IOI pairs: finite scores; S-inhibition equals direct path_patch calls (≤ 1e-6,
    reference: circuitviz.path_patch with one explicit sender into the name movers' q);
    name movers write the answer (positive DLA), negative name movers against it."""
    pairs = circuitviz.tasks.ioi(demo_model, n=4, seed=0)
    roles = head_roles(demo_model, pairs, progress=False)
    assert isinstance(roles, HeadRoles) and not roles.notes
    for key, value in roles.scores.items():
        assert torch.isfinite(value).all(), key
    movers = roles.heads("name_mover")
    assert movers
    assert all(float(roles.scores["dla"][_lh(h)]) > 0 for h in movers)
    assert all(float(roles.scores["dla"][_lh(h)]) < 0 for h in roles.heads("negative_name_mover"))
    first = min(_lh(h)[0] for h in movers)
    si = roles.scores["s_inhibition"][:first]
    for i in si.flatten().argsort(descending=True)[:2].tolist():
        sender = f"L{i // si.shape[1]}H{i % si.shape[1]}"
        direct = circuitviz.path_patch(
            demo_model, pairs, senders=[sender], receivers=movers, progress=False
        )
        share = (direct - roles.corrupted) / (roles.clean - roles.corrupted)
        assert math.isclose(float(si.flatten()[i]), share, abs_tol=1e-6)


def _lh(head: str) -> tuple[int, int]:
    layer, index = head[1:].split("H")
    return int(layer), int(index)
