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
from tests._tiny_sae import tiny_saes

TOL = 1e-4


@pytest.fixture(scope="module")
def saes(tiny_llama):
    return tiny_saes(tiny_llama)


@pytest.fixture(scope="module")
def pairs():
    return cv.PromptPairs(
        ["t1 t2 t3 t4 t1 t2", "t3 t9 t1 t4 t3 t9"],
        ["t5 t6 t7 t8 t5 t6", "t5 t6 t7 t8 t5 t6"],
        [" t3", " t1"],
        [" t7", " t7"],
    )


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
    with pytest.raises(cv.InputError, match=r"No SAE reads 'blocks\.1\.hook_resid_post'"):
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
