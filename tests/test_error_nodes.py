"""SAE error nodes ("L1ERR", "L1ERR:P5") as ablation targets, on the tiny llama with tiny TopK
SAEs on blocks.{0,1}.hook_resid_post: ablate() against a hand-written error-term hook in every
mode, the same rule inside FeatureGraph.faithfulness, and bad specs."""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks, hooks
from circuitviz.engine._components import parse_id
from circuitviz.engine._pairs import tokenize
from circuitviz.engine.features import SAE, SAESet
from circuitviz.engine.graph import FeatureGraph
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


def logit_diff(tokens, logits: torch.Tensor) -> float:
    last = logits[:, -1]
    rows = torch.arange(len(last))
    return float((last[rows, tokens.answers] - last[rows, tokens.wrong_answers]).mean())


def run(model, batch, fwd):
    with torch.no_grad(), hooks(model, fwd):
        return model(batch, return_type="logits")


def recorded(model, batch, saes) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each site's latents and error term on ``batch``, computed by hand."""
    out = {}

    def rec(h):
        def fn(x, hook):
            f = saes[h].encode(x)
            out[h] = (f, x - saes[h].decode(f))

        return fn

    run(model, batch, [(h, rec(h)) for h in saes])
    return out


def hand_splice(sae: SAE, latents=None, error=None):
    """The splice by hand: encode, decode, add back the error term; ``latents(f)`` and
    ``error(err)`` replace either."""

    def fn(x, hook):
        f = sae.encode(x)
        err = x - sae.decode(f)
        if latents is not None:
            f = latents(f)
        if error is not None:
            err = error(err.clone())
        return sae.decode(f) + err

    return fn


def untouched(model, tokens, before):
    assert not has_hooks(model)
    assert torch.equal(run(model, tokens.clean, []), before)


def test_error_ids_parse():
    c = parse_id("L11ERR:P5")
    assert (c.kind, c.layer, c.pos, c.hook) == ("error", 11, 5, "blocks.11.hook_resid_post")
    assert (c.id, c.base_id) == ("L11ERR:P5", "L11ERR")
    assert parse_id("L2ERR").pos is None
    with pytest.raises(cv.InputError, match="error term"):
        parse_id("L1Err")


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
@pytest.mark.parametrize("pos", [None, 6])  # layer 1 is the last: only P6 (BOS + 6) counts
def test_error_ablation_equals_a_hand_written_hook(tiny_llama, pairs, saes, mode, pos):
    tokens = tokenize(tiny_llama, pairs)
    hook = "blocks.1.hook_resid_post"
    corr_err = recorded(tiny_llama, tokens.corrupted, saes)[hook][1]  # [batch, pos, d]
    value = {
        "zero": torch.zeros_like(corr_err),
        "mean": corr_err.mean(0, keepdim=True).expand_as(corr_err),
        "resample": corr_err,
    }[mode]
    where = slice(None) if pos is None else pos

    def error(err):
        err[:, where] = value[:, where]
        return err

    ref = logit_diff(
        tokens, run(tiny_llama, tokens.clean, [(hook, hand_splice(saes[hook], None, error))])
    )
    spec = "L1ERR" if pos is None else f"L1ERR:P{pos}"
    res = cv.ablate(tiny_llama, pairs, features=[spec], saes=saes, mode=mode)
    assert res.components == [spec]
    assert abs(res.ablated - ref) <= TOL
    assert abs(res.ablated - res.clean) > 10 * TOL  # the error term matters here
    assert not has_hooks(tiny_llama)


def test_error_ablation_with_a_latent_and_a_head_at_once(tiny_llama, pairs, saes):
    """A latent and the error term of the same site, and a head, in one forward pass."""
    tokens = tokenize(tiny_llama, pairs)
    hook = "blocks.0.hook_resid_post"

    def latents(f):
        f = f.clone()
        f[:, :, 5] = 0.0
        return f

    def error(err):
        err[:, 2] = 0.0
        return err

    def z(x, hook):
        x[:, :, 1] = 0.0
        return x

    fwd = [("blocks.0.attn.hook_z", z), (hook, hand_splice(saes[hook], latents, error))]
    ref = logit_diff(tokens, run(tiny_llama, tokens.clean, fwd))
    res = cv.ablate(tiny_llama, pairs, heads=["L0H1"], features=["L0ERR:P2", "L0F5"], saes=saes)
    assert res.components == ["L0H1", "L0F5", "L0ERR:P2"]
    assert abs(res.ablated - ref) <= TOL


def test_zero_error_everywhere_is_the_reconstruction(tiny_llama, pairs, saes):
    """Mode "zero" at every position: the site outputs the SAE's reconstruction."""
    tokens = tokenize(tiny_llama, pairs)
    hook = "blocks.1.hook_resid_post"
    sae = saes[hook]
    ref = logit_diff(
        tokens, run(tiny_llama, tokens.clean, [(hook, lambda x, hook: sae.decode(sae.encode(x)))])
    )
    res = cv.ablate(tiny_llama, pairs, features=["L1ERR"], saes=saes)
    assert abs(res.ablated - ref) <= TOL


def test_faithfulness_takes_error_nodes_out_by_the_same_rule(tiny_llama, pairs, saes, graph):
    """FeatureGraph.faithfulness(ablated=["L0ERR:P3"]) sets that error term to its corrupted
    value (what ablate(mode="resample") does), beside the latents no node lists; and
    errors="ablated" is every error node taken out."""
    tokens = tokenize(tiny_llama, pairs)
    clean = recorded(tiny_llama, tokens.clean, saes)
    corr = recorded(tiny_llama, tokens.corrupted, saes)

    def latents(h):
        listed = ((clean[h][0] != 0) | (corr[h][0] != 0)).any(0)  # the graph's latent nodes
        return lambda f: torch.where(listed, f, corr[h][0])

    def error(h, where):
        def fn(err):
            err[:, where] = corr[h][1][:, where]
            return err

        return fn

    hook = "blocks.0.hook_resid_post"
    fwd = [(h, hand_splice(saes[h], latents(h), error(h, 3) if h == hook else None)) for h in saes]
    ref = logit_diff(tokens, run(tiny_llama, tokens.clean, fwd))
    got = graph.faithfulness(tiny_llama, pairs, ablated=["L0ERR:P3"], errors="graph")
    assert abs(got.metric - ref) <= TOL
    kept = graph.faithfulness(tiny_llama, pairs, ablated=["L0ERR:P3"])  # errors="kept"
    assert abs(kept.metric - ref) <= TOL  # a named error node is out even then
    assert abs(got.metric - got.clean) > 10 * TOL

    every = graph.faithfulness(tiny_llama, pairs, ablated=["L0ERR", "L1ERR"], errors="graph")
    ablated = graph.faithfulness(tiny_llama, pairs, errors="ablated")
    assert abs(every.metric - ablated.metric) <= TOL
    fwd = [(h, hand_splice(saes[h], latents(h), error(h, slice(None)))) for h in saes]
    assert abs(ablated.metric - logit_diff(tokens, run(tiny_llama, tokens.clean, fwd))) <= TOL


def test_bad_error_specs_leave_the_model_untouched(tiny_llama, pairs, saes, graph):
    tokens = tokenize(tiny_llama, pairs)
    before = run(tiny_llama, tokens.clean, [])
    only_l0 = SAESet([saes["blocks.0.hook_resid_post"]])
    with pytest.raises(cv.InputError, match=r"No SAE at blocks\.1\.hook_resid_post"):
        cv.ablate(tiny_llama, pairs, features=["L1ERR"], saes=only_l0)
    with pytest.raises(cv.InputError, match="positions 0–6"):
        cv.ablate(tiny_llama, pairs, features=["L1ERR:P7"], saes=saes)
    with pytest.raises(cv.InputError, match="out of range"):
        cv.ablate(tiny_llama, pairs, features=["L7ERR"], saes=saes)
    with pytest.raises(cv.InputError, match="SAE error term: pass the SAEs"):
        cv.ablate(tiny_llama, pairs, features=["L1ERR"])
    with pytest.raises(cv.InputError, match="features="):
        cv.ablate(tiny_llama, pairs, heads=["L1ERR"], saes=saes)
    with pytest.raises(cv.InputError, match="positions 0–6"):
        graph.faithfulness(tiny_llama, pairs, ablated=["L1ERR:P9"], errors="graph")
    plain = cv.circuit(tiny_llama, pairs, progress=False)
    with pytest.raises(cv.InputError, match="error term, and this graph has no feature nodes"):
        plain.faithfulness(tiny_llama, pairs, ablated=["L1ERR"])
    untouched(tiny_llama, tokens, before)


# --------------------------------------------------------------------------- view
def shown_errors(view):
    return [n for n in view.graph["nodes"] if n["type"] == "error"]


def test_click_on_an_error_node_ablates_it_as_the_engine_does(tiny_llama, pairs, graph, saes):
    from circuitviz.views import CircuitView

    view = CircuitView(tiny_llama, pairs, graph=graph)
    errors = shown_errors(view)
    assert errors and all(n["ablates"] == n["id"] for n in errors)
    target = max(errors, key=lambda n: abs(n["score"] or 0))["ablates"]
    view._handle_custom_msg({"type": "ablate", "components": [target], "request": 1}, [])
    ref = cv.ablate(tiny_llama, pairs, features=[target], saes=saes)
    assert view.ablated == [target] and view.result["components"] == [target]
    assert abs(view.result["ablated"] - ref.ablated) <= TOL
    view._handle_custom_msg(
        {"type": "ablate", "components": [target, "L1ERR:P99"], "request": 2}, []
    )
    assert view.ablated == [target]  # a bad click changes nothing
    fig = view.figure()  # the static figure crosses the error node out too
    crossed = next(t for t in fig.data if t.name == "ablated")
    errors_drawn = next(t for t in fig.data if t.name == "SAE error")
    assert len(crossed.x) == 1
    assert (crossed.x[0], crossed.y[0]) in set(zip(errors_drawn.x, errors_drawn.y, strict=True))
    assert not has_hooks(tiny_llama)


def test_view_reports_faithfulness_and_completeness_with_error_nodes_kept_and_ablated(
    tiny_llama, pairs, graph
):
    from circuitviz.views import CircuitView
    from circuitviz.views._feature_nodes import ERROR_VARIANTS

    view = CircuitView(tiny_llama, pairs, graph=graph)
    target = shown_errors(view)[0]["ablates"]
    stages: list[dict] = []
    view.observe(lambda change: stages.append(change["new"]), names="faithfulness")
    view._handle_custom_msg({"type": "faithfulness", "ablated": [target], "request": 3}, [])
    # the plain values first (as fast as for a head graph), the error-node variants second
    assert len(stages) == 2 and not set(ERROR_VARIANTS) & set(stages[0])
    f = view.faithfulness
    assert f == stages[1] and set(ERROR_VARIANTS) <= set(f)
    shown = view.shown_circuit()
    assert f["ablated_nodes"] == [target]
    assert f["ablated"] == pytest.approx(
        float(shown.faithfulness(tiny_llama, pairs, ablated=[target]))
    )
    for key, options in ERROR_VARIANTS.items():
        assert f[key] == pytest.approx(float(shown.faithfulness(tiny_llama, pairs, **options)))
    assert f["errors_ablated"] != f["circuit"]
    plain = CircuitView(tiny_llama, pairs, graph=cv.circuit(tiny_llama, pairs, progress=False))
    plain._handle_custom_msg({"type": "faithfulness", "ablated": [], "request": 4}, [])
    assert not set(ERROR_VARIANTS) & set(plain.faithfulness)


@pytest.mark.browser
def test_browser_error_node_click_ablates_it(page, tmp_path, tiny_llama, pairs, graph, monkeypatch):
    from circuitviz.export import _html
    from circuitviz.views import CircuitView
    from tests.conftest import ARTIFACTS
    from tests.test_circuit_view import Bridge

    spec = _html.view_spec

    def live_spec(view):  # the bridge is a live kernel: keep the ablation controls
        out = spec(view)
        out["state"]["can_ablate"], out["state"]["standalone"] = True, ""
        return out

    monkeypatch.setattr(_html, "view_spec", live_spec)
    import tests.test_circuit_view as tcv

    traits = (*tcv.KERNEL_TRAITS, "ablated", "result")
    monkeypatch.setattr(tcv, "KERNEL_TRAITS", traits)
    view = CircuitView(tiny_llama, pairs, graph=graph)
    view.top_nodes, view.top_edges = 24, 60
    Bridge(view, page, tmp_path / "errors.html")
    page.set_viewport_size({"width": 1280, "height": 800})
    page.goto((tmp_path / "errors.html").as_uri())
    legend = page.locator('.cv-circuit [data-legend="type-error"]')
    legend.wait_for()
    assert "click: ablate" in legend.inner_text()
    best = max(shown_errors(view), key=lambda n: abs(n["score"] or 0))
    node = page.locator(f'.cv-circuit g.cv-node[data-component="{best["id"]}"]')
    node.click()
    page.wait_for_function(
        f"""document.querySelector('.cv-circuit g.cv-node[data-component="{best["id"]}"]')
            ?.dataset.ablated === 'true'"""
    )
    assert view.ablated == [best["ablates"]]
    assert view.result["ablated"] is not None and view.result["ablated"] != view.result["clean"]
    panel = page.locator('.cv-circuit [data-role="ablated-list"]')
    assert best["id"] in panel.inner_text()
    assert "SAE error term" in page.locator('.cv-circuit [data-role="feature-panel"]').inner_text()
    # the side panel's faithfulness, with error nodes kept and ablated (the kernel's numbers)
    cell = page.locator('.cv-circuit [data-role="faithfulness-complement-errors-ablated"]')
    cell.wait_for()
    page.wait_for_function(
        "document.querySelector('.cv-circuit .cv-faith')?.dataset.state === 'ready'"
    )
    f = view.faithfulness
    for key in ("circuit", "errors_ablated", "complement", "complement_errors_ablated"):
        role = "faithfulness-" + key.replace("_", "-")
        text = page.locator(f'.cv-circuit [data-role="{role}"]').inner_text()
        assert float(text) == pytest.approx(f[key], abs=2e-3)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(".cv-circuit").screenshot(path=str(ARTIFACTS / "error_node_ablated.png"))
    page.add_style_tag(content=".cv-side{max-height:none !important}")  # the whole panel
    page.locator('.cv-circuit [data-role="side-panel"]').screenshot(
        path=str(ARTIFACTS / "error_node_side_panel.png")
    )
    assert not page.console_errors


def test_nnsight_ablates_error_terms_as_the_bridge(tiny_llama, pairs, saes):
    """Error terms are ported to nnsight (every site kind: tests/test_backends_feature_sites.py),
    not dropped nor taken for an MLP."""
    nn = cv.load_model(tiny_llama, backend="nnsight")
    for mode in ("zero", "resample"):
        ref = cv.ablate(tiny_llama, pairs, features=["L1ERR", "L0ERR:P3"], saes=saes, mode=mode)
        got = cv.ablate(nn, pairs, features=["L1ERR", "L0ERR:P3"], saes=saes, mode=mode)
        assert got.components == ref.components == ["L0ERR:P3", "L1ERR"]
        assert abs(got.ablated - ref.ablated) <= 1e-4 and abs(ref.ablated - ref.clean) > 1e-4
    assert not nn.has_hooks() and not has_hooks(tiny_llama)
