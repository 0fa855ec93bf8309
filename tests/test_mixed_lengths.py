"""Prompt batches of mixed lengths beyond ``patch``: ablation, path patching, direct logit
attribution, head roles, EAP / EAP-IG graphs and their faithfulness.

Convention (as ``patch``): pairs are left-padded and masked, so every prompt's final token is
the last position and position ``p`` is column ``p`` of the longest prompt (positions aligned
from the end). Reference for every figure: the same analysis run on each pair alone (no
padding), combined as the metric combines pairs (the mean), positions shifted to the padded
columns; where that analysis is itself checked against TransformerLens elsewhere
(``test_ablation``, ``test_path_patching``, ``test_logit_attribution``, ``test_graph``) it
is the chain to TransformerLens. Tolerance 1e-4, float32.
"""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks, tokenize

TOL = 1e-4
LENGTHS = (4, 7, 5)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def model(request):
    return cv.tiny_model(request.param, n_layers=2)


def mixed_pairs(seed: int = 11, lengths: tuple[int, ...] = LENGTHS) -> cv.PromptPairs:
    g = torch.Generator().manual_seed(seed)

    def prompt(n: int) -> str:
        return " ".join(f"t{i}" for i in torch.randint(0, 100, (n,), generator=g).tolist())

    n = len(lengths)
    return cv.PromptPairs(
        [prompt(k) for k in lengths],
        [prompt(k) for k in lengths],
        [f"t{i}" for i in range(1, n + 1)],
        [f"t{i}" for i in range(101, 101 + n)],
    )


def one(pairs: cv.PromptPairs, i: int) -> cv.PromptPairs:
    return cv.PromptPairs(
        [pairs.clean[i]], [pairs.corrupted[i]], [pairs.answers[i]], [pairs.wrong_answers[i]]
    )


def shifts(model, pairs: cv.PromptPairs) -> list[int]:
    """How many padding columns each pair gets on the left."""
    n_pos = tokenize(model, pairs, pad=True).n_pos
    return [n_pos - tokenize(model, one(pairs, i)).n_pos for i in range(len(pairs))]


def hand_ablated(model, pairs: cv.PromptPairs, i: int, hook_fn) -> float:
    """Pair ``i`` alone, unpadded, with one hand-written hook: its logit difference."""
    tokens = tokenize(model, one(pairs, i))
    with torch.inference_mode():
        logits = model.run_with_hooks(tokens.clean, fwd_hooks=hook_fn(tokens))[0, -1]
    return float(logits[tokens.answers[0]] - logits[tokens.wrong_answers[0]])


# --- ablate --------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["zero", "resample"])
def test_ablate_mixed_lengths_equals_each_pair_alone(model, mode):
    """Heads and an MLP at every position: each pair's ablated metric equals that pair
    ablated alone (unpadded); the batch value is their mean."""
    pairs = mixed_pairs()
    spec = {"heads": ["L1H2", "L0H1"], "mlps": [0], "mode": mode}
    whole = cv.ablate(model, pairs, **spec)
    alone = [cv.ablate(model, one(pairs, i), **spec) for i in range(len(pairs))]
    for i, a in enumerate(alone):
        assert whole.per_prompt["ablated"][i] == pytest.approx(a.ablated, abs=TOL)
        assert whole.per_prompt["clean"][i] == pytest.approx(a.clean, abs=TOL)
        assert whole.per_prompt["corrupted"][i] == pytest.approx(a.corrupted, abs=TOL)
    assert whole.ablated == pytest.approx(sum(a.ablated for a in alone) / 3, abs=TOL)
    assert not has_hooks(model)


def test_ablate_a_position_counts_columns_of_the_longest_prompt(model):
    """``L0H1:P{p}`` ablates padded column ``p``: in pair ``i`` alone that is position
    ``p − shift_i``, and a pair with padding there is not ablated at all (reference: a
    hand-written hook_z hook on each pair alone)."""
    pairs = mixed_pairs()
    shift = shifts(model, pairs)
    col = max(shift) - 1  # padding in the shortest pair, a token in the others
    whole = cv.ablate(model, pairs, heads=[f"L0H1:P{col}"], mode="zero")
    for i in range(len(pairs)):
        p = col - shift[i]

        def hooks(tokens, p=p):
            def zero(z, hook):
                if p >= 0:
                    z[:, p, 1] = 0
                return z

            return [("blocks.0.attn.hook_z", zero)]

        assert whole.per_prompt["ablated"][i] == pytest.approx(
            hand_ablated(model, pairs, i, hooks), abs=TOL
        )
    assert col - max(shift) < 0 <= col  # padding in the shortest pair, a token in the longest


def test_ablate_mean_mode_averages_each_position_over_the_prompts_there(model):
    """Mean ablation: at each position aligned from the end, the mean of the corrupted
    activation over the prompts that have a token there. Reference: those means built from
    each pair's own unpadded corrupted run, written by a hand-written hook."""
    pairs = mixed_pairs()
    shift = shifts(model, pairs)
    n_pos = tokenize(model, pairs, pad=True).n_pos
    total = torch.zeros(n_pos, model.cfg.d_model)
    count = torch.zeros(n_pos, 1)
    for i in range(len(pairs)):
        tokens = tokenize(model, one(pairs, i))
        _, cache = model.run_with_cache(tokens.corrupted)
        total[shift[i] :] += cache["blocks.0.hook_mlp_out"][0]
        count[shift[i] :] += 1
    mean = total / count
    whole = cv.ablate(model, pairs, mlps=["MLP0"], mode="mean")
    for i in range(len(pairs)):

        def hooks(tokens, i=i):
            def put(x, hook):
                x[0] = mean[shift[i] :]
                return x

            return [("blocks.0.hook_mlp_out", put)]

        assert whole.per_prompt["ablated"][i] == pytest.approx(
            hand_ablated(model, pairs, i, hooks), abs=TOL
        )


def test_a_corrupted_prompt_longer_than_its_clean_one_is_named_everywhere(model):
    """As for ``patch``: pairs may differ from each other, but a corrupted prompt must be as
    long as its clean one. The error names the pair; no hook is left, the logits unchanged."""
    pairs = mixed_pairs()
    bad = cv.PromptPairs(
        list(pairs.clean),
        [pairs.corrupted[0], pairs.corrupted[1], pairs.corrupted[2] + " t9"],
        list(pairs.answers),
        list(pairs.wrong_answers),
    )
    tokens = tokenize(model, pairs, pad=True)
    with torch.inference_mode():
        before = model(tokens.clean, attention_mask=tokens.attention_mask)
    calls = {
        "ablate": lambda: cv.ablate(model, bad, heads=["L0H0"]),
        "circuit": lambda: cv.circuit(model, bad, progress=False),
        "path_patch": lambda: cv.path_patch(model, bad, receivers="logits", progress=False),
        "logit_attribution": lambda: cv.logit_attribution(model, bad),
        "head_roles": lambda: cv.head_roles(model, bad, n_random=0, progress=False),
    }
    for name, call in calls.items():
        with pytest.raises(cv.InputError, match=r"\(pair 2\)"):
            call()
        assert not has_hooks(model), name
    with torch.inference_mode():
        after = model(tokens.clean, attention_mask=tokens.attention_mask)
    assert torch.equal(before, after)


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_error_node_ablation_mixed_lengths_equals_each_pair_alone(model, mode):
    """SAE error terms (``"L0ERR"`` everywhere, ``"L1ERR:P<last>"`` at the final column) on
    mixed lengths: each pair's ablated metric equals that pair alone, unpadded, with a hand-written
    splice; ``"mean"`` sets each column to the mean over the pairs that have a token there of
    their corrupted prompts' own error terms (each computed alone, aligned from the end)."""
    from tests._tiny_sae import tiny_saes
    from tests.test_error_nodes import hand_splice, recorded

    saes = tiny_saes(model)
    pairs = mixed_pairs()
    pad = shifts(model, pairs)
    col = tokenize(model, pairs, pad=True).n_pos - 1  # layer 1 is the last: only this counts
    hooks_ = ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post")
    alone = [recorded(model, tokenize(model, one(pairs, i)).corrupted, saes) for i in range(3)]
    errs = {h: [rec[h][1][0] for rec in alone] for h in hooks_}  # [pos of pair i, d_model]

    def value(h: str, i: int, c: int) -> torch.Tensor | float:
        """The error term pair ``i`` gets at padded column ``c``."""
        if mode == "zero":
            return 0.0
        if mode == "resample":
            return errs[h][i][c - pad[i]]
        return torch.stack([e[c - s] for e, s in zip(errs[h], pad, strict=True) if c >= s]).mean(0)

    whole = cv.ablate(model, pairs, features=["L0ERR", f"L1ERR:P{col}"], saes=saes, mode=mode)
    for i in range(len(pairs)):

        def everywhere(err, i=i):
            for p in range(err.shape[1]):
                err[0, p] = value(hooks_[0], i, p + pad[i])
            return err

        def at_col(err, i=i):
            err[0, col - pad[i]] = value(hooks_[1], i, col)
            return err

        ref = hand_ablated(
            model,
            pairs,
            i,
            lambda t: [
                (hooks_[0], hand_splice(saes[hooks_[0]], None, everywhere)),
                (hooks_[1], hand_splice(saes[hooks_[1]], None, at_col)),
            ],
        )
        assert whole.per_prompt["ablated"][i] == pytest.approx(ref, abs=TOL)
    assert abs(whole.ablated - whole.clean) > 10 * TOL  # the error terms matter here
    assert not has_hooks(model)


# --- path patching and direct logit attribution --------------------------------------------


def test_path_patch_mixed_lengths_is_the_mean_of_each_pair_alone(model):
    """The path-patching map and one explicit path (``test_path_patching`` checks the
    one-pair path against ``transformer_lens.patching``)."""
    pairs = mixed_pairs()
    for kwargs in (
        {"receivers": ["L1H2"], "receiver_input": "q"},
        {"receivers": "logits"},
    ):
        whole = cv.path_patch(model, pairs, progress=False, **kwargs)
        alone = torch.stack(
            [cv.path_patch(model, one(pairs, i), progress=False, **kwargs).values for i in range(3)]
        )
        assert (whole.values - alone.mean(0)).abs().max() <= TOL
        split = cv.path_patch(model, pairs, max_rows=2, progress=False, **kwargs)
        assert (split.values - whole.values).abs().max() <= TOL
    single = cv.path_patch(model, pairs, senders=["L0H1"], receivers=["L1H0"])
    ref = [
        cv.path_patch(model, one(pairs, i), senders=["L0H1"], receivers=["L1H0"]) for i in range(3)
    ]
    assert single == pytest.approx(sum(ref) / 3, abs=TOL)
    assert not has_hooks(model)


@pytest.mark.parametrize("by", ["heads", "heads_by_pos", "layers"])
def test_logit_attribution_mixed_lengths_is_the_mean_of_each_pair_alone(model, by):
    """Direct logit attribution reads the final position, every prompt's own last token; by
    position, pair ``i``'s map sits at its padded columns (zeros on its padding)."""
    pairs = mixed_pairs()
    shift = shifts(model, pairs)
    whole = cv.logit_attribution(model, pairs, by=by)
    maps = []
    for i in range(3):
        ref = cv.logit_attribution(model, one(pairs, i), by=by).values
        if by == "heads_by_pos":
            full = torch.zeros(ref.shape[0], whole.values.shape[1], ref.shape[2])
            full[:, shift[i] :] = ref
            ref = full
        maps.append(ref)
    assert (whole.values - torch.stack(maps).mean(0)).abs().max() <= TOL
    if "pos" in whole.labels:  # labelled by the longest prompt, as patch labels them
        assert whole.labels["pos"][-1].endswith(pairs.clean[1].split()[-1])


def test_head_roles_on_mixed_lengths_are_the_mean_of_each_pair_alone(model):
    """Attention-role and name-mover scores average over prompts; padding is never a token
    a head could attend to as a repeat or a name. Each prompt repeats tokens and holds its
    answer and wrong answer, so every role has destinations in every prompt (``n_random=0``:
    the prompts alone). DLA and S-inhibition are shares of batch totals (their parts are
    checked above: logit_attribution, path_patch)."""
    pairs = cv.PromptPairs(
        ["t1 t5 t6 t1 t5", "t7 t8 t9 t10 t7 t8 t9 t10", "t11 t12 t11 t12 t13 t11"],
        ["t2 t5 t6 t2 t5", "t7 t8 t9 t3 t7 t8 t9 t3", "t14 t12 t14 t12 t13 t14"],
        ["t6", "t9", "t12"],
        ["t5", "t8", "t11"],
    )
    assert tokenize(model, pairs, pad=True).attention_mask is not None
    whole = cv.head_roles(model, pairs, n_random=0, progress=False)
    alone = [cv.head_roles(model, one(pairs, i), n_random=0, progress=False) for i in range(3)]
    roles = ("previous_token", "duplicate_token", "induction", "io_attention", "s_attention")
    for role in (*roles, "copy", "negative_copy"):
        ref = torch.stack([a.scores[role] for a in alone]).mean(0)
        assert (whole.scores[role] - ref).abs().max() <= TOL, role
    assert not has_hooks(model)


# --- EAP / EAP-IG graphs and their faithfulness ---------------------------------------------


@pytest.mark.parametrize(("method", "steps"), [("eap", 1), ("eap-ig", 3)])
def test_graph_scores_are_the_mean_of_each_pair_alone(model, method, steps):
    """``per_position=False``: every edge score equals the mean of each pair's own graph
    (built alone, unpadded). ``per_position=True``: pair ``i``'s per-position scores sit at
    its padded columns, zero on its padding, and the batch graph is their mean."""
    pairs = mixed_pairs()
    shift = shifts(model, pairs)
    opts = {"method": method, "steps": steps, "progress": False}
    whole = cv.circuit(model, pairs, **opts)
    alone = [cv.circuit(model, one(pairs, i), **opts) for i in range(3)]
    ref = torch.stack([g.scores for g in alone]).mean(0)
    assert whole.scores.shape == ref.shape
    assert (whole.scores - ref).abs().max() <= TOL
    assert whole.clean == pytest.approx(sum(g.clean for g in alone) / 3, abs=TOL)
    assert whole.corrupted == pytest.approx(sum(g.corrupted for g in alone) / 3, abs=TOL)

    by_pos = cv.circuit(model, pairs, per_position=True, **opts)
    n_pos = by_pos.scores.shape[2]
    placed = []
    for i in range(3):
        own = cv.circuit(model, one(pairs, i), per_position=True, **opts).scores
        full = torch.zeros(*own.shape[:2], n_pos)
        full[:, :, shift[i] :] = own
        placed.append(full)
    assert (by_pos.scores - torch.stack(placed).mean(0)).abs().max() <= TOL
    assert by_pos.tokens == tokenize(model, pairs, pad=True).str_tokens  # the longest prompt's
    assert len(by_pos.tokens) == n_pos
    assert not has_hooks(model)


@pytest.mark.parametrize("per_position", [False, True])
def test_faithfulness_is_the_mean_of_each_pair_alone(model, per_position):
    """A fixed circuit (the same nodes) evaluated exactly on the mixed batch: its metric,
    and the clean and corrupted ones, equal the mean over each pair evaluated alone on its
    own graph (``ablation="corrupted"``). Per position, the circuit keeps every position."""
    pairs = mixed_pairs()
    nodes = ["L0H1", "L1H2", "MLP0"]
    whole = cv.circuit(model, pairs, per_position=per_position, progress=False)

    def pick(g):
        if not per_position:
            return nodes
        return [f"{n}:P{p}" for n in nodes for p in range(g.n_pos)]

    got = whole.faithfulness(model, pairs, nodes=pick(whole))
    refs = []
    for i in range(3):
        g = cv.circuit(model, one(pairs, i), per_position=per_position, progress=False)
        refs.append(g.faithfulness(model, one(pairs, i), nodes=pick(g)))
    for field in ("metric", "clean", "corrupted"):
        want = sum(getattr(r, field) for r in refs) / 3
        assert getattr(got, field) == pytest.approx(want, abs=TOL), field
    assert not has_hooks(model)


def test_mean_ablated_faithfulness_uses_each_positions_mean_over_the_prompts_there(model):
    """``ablation="mean"`` with MLP0's outgoing edges cut: every reader sees MLP0's output
    replaced by the clean run's mean at that position over the prompts that have a token
    there. Reference: those means built from each pair's own unpadded clean run, written into
    ``hook_mlp_out`` of each pair alone by a hand-written hook, averaged over the pairs."""
    pairs = mixed_pairs()
    shift = shifts(model, pairs)
    n_pos = tokenize(model, pairs, pad=True).n_pos
    total = torch.zeros(n_pos, model.cfg.d_model)
    count = torch.zeros(n_pos, 1)
    for i in range(len(pairs)):
        _, cache = model.run_with_cache(tokenize(model, one(pairs, i)).clean)
        total[shift[i] :] += cache["blocks.0.hook_mlp_out"][0]
        count[shift[i] :] += 1
    mean = total / count
    graph = cv.circuit(model, pairs, progress=False)
    got = graph.faithfulness(model, pairs, ablation="mean", ablated=["MLP0"])
    want = []
    for i in range(len(pairs)):

        def hooks(tokens, i=i):
            def put(x, hook):
                x[0] = mean[shift[i] :]
                return x

            return [("blocks.0.hook_mlp_out", put)]

        want.append(hand_ablated(model, pairs, i, hooks))
    assert got.metric == pytest.approx(sum(want) / len(want), abs=TOL)


def test_faithfulness_curve_and_mib_run_on_mixed_lengths(model):
    """On a padded batch the whole graph recovers the clean run exactly (f = 1, metric =
    the clean metric) under corrupted and mean ablation; the curve and MIB's areas use the
    same passes, ending at f = 1 with the full graph."""
    pairs = mixed_pairs()
    graph = cv.circuit(model, pairs, progress=False)
    total = int(graph.kept.sum())
    curve = graph.faithfulness_curve(model, pairs, top_edges=[1, total])
    assert curve.metric[-1] == pytest.approx(graph.clean, abs=TOL)
    assert curve.corrupted == pytest.approx(graph.corrupted, abs=TOL)
    mib = cv.engine.graph.mib_scores(graph, model, pairs, progress=False)
    assert mib.metric[-1] == pytest.approx(graph.clean, abs=TOL)
    mean = graph.faithfulness(model, pairs, ablation="mean")
    assert mean.metric == pytest.approx(graph.clean, abs=TOL)


# --- the nnsight backend: the same numbers as the bridge ------------------------------------


@pytest.fixture(scope="module")
def on_nnsight(model):
    """The nnsight model over the bridge's weights (``test_backends`` checks the seam on
    same-length batches); reference here: the bridge's own mixed-length results above."""
    pytest.importorskip("nnsight")
    return cv.load_model(model, backend="nnsight")


@pytest.mark.parametrize("mode", ["zero", "mean", "resample"])
def test_nnsight_ablate_mixed_lengths_equals_the_bridge(model, on_nnsight, mode):
    pairs = mixed_pairs()
    col = max(shifts(model, pairs)) - 1
    spec = {"heads": ["L1H2", f"L0H1:P{col}"], "mlps": ["MLP0"], "mode": mode}
    ref = cv.ablate(model, pairs, **spec)
    for _ in range(2):  # the first request, then a click on the kept corrupted activations
        got = cv.ablate(on_nnsight, pairs, **spec)
        for key in ("clean", "corrupted", "ablated"):
            diff = torch.tensor(got.per_prompt[key]) - torch.tensor(ref.per_prompt[key])
            assert diff.abs().max() <= TOL, key
        spec["heads"] = list(reversed(spec["heads"]))  # a new set: not the memo
    assert got.top_after.tokens == ref.top_after.tokens


@pytest.mark.parametrize("per_position", [False, True])
def test_nnsight_eap_graph_mixed_lengths_equals_the_bridge(model, on_nnsight, per_position):
    pairs = mixed_pairs()
    ref = cv.circuit(model, pairs, per_position=per_position, progress=False)
    got = cv.circuit(on_nnsight, pairs, per_position=per_position)
    assert got.scores.shape == ref.scores.shape
    assert (got.scores - ref.scores).abs().max() <= TOL
    assert got.tokens == ref.tokens


@pytest.mark.parametrize("over", ["resid_pre", "heads", "heads_by_pos"])
def test_nnsight_patch_and_attribution_mixed_lengths_equal_the_bridge(model, on_nnsight, over):
    """``test_batching`` checks the bridge's mixed-length maps against TransformerLens."""
    pairs = mixed_pairs()
    for fn in (cv.patch, cv.attribution_patch):
        opts = {"progress": False} if fn is cv.patch else {}
        ref = fn(model, pairs, over=over, **opts)
        got = fn(on_nnsight, pairs, over=over, **opts)
        assert (got.values - ref.values).abs().max() <= TOL


# --- views ------------------------------------------------------------------------------------


def test_circuit_view_on_mixed_lengths_ablates_and_scores_faithfulness(model):
    """Kernel side of CircuitView (an AblationView) built from mixed-length pairs: a click
    to ablate answers with ``ablate``'s own result (checked above against each pair alone),
    faithfulness with ``Graph.faithfulness``'s; a per-position graph's nodes are the padded
    columns, labelled by the longest prompt's tokens as PatchingView labels a patch map."""
    from circuitviz.views import CircuitView, PatchingView

    pairs = mixed_pairs()
    sent: list[dict] = []
    view = CircuitView(model=model, pairs=pairs)
    view.send = lambda content, buffers=None: sent.append(content)
    view._handle_custom_msg({"type": "ablate", "components": ["L1H2", "MLP0"], "request": 1}, [])
    assert sent[-1]["type"] == "ablation"
    ref = cv.ablate(model, pairs, heads=["L1H2"], mlps=["MLP0"])
    assert sent[-1]["result"]["ablated"] == pytest.approx(ref.ablated, abs=TOL)
    assert sent[-1]["result"]["per_prompt"]["ablated"] == pytest.approx(
        ref.per_prompt["ablated"], abs=TOL
    )
    view._handle_custom_msg({"type": "faithfulness", "ablated": ["L0H1"], "request": 2}, [])
    assert sent[-1] == {"type": "faithfulness", "request": 2}
    want = view.shown_circuit().faithfulness(model, pairs, ablated=["L0H1"]).recovered
    assert view.faithfulness["ablated"] == pytest.approx(want, abs=TOL)

    tokens = tokenize(model, pairs, pad=True)
    by_pos = cv.circuit(model, pairs, per_position=True, progress=False)
    shown = CircuitView(graph=by_pos, model=model, pairs=pairs).shown_graph()
    assert view.graph["tokens"] == tokens.str_tokens
    labels = {n["id"]: n["label"] for n in shown["nodes"]}
    last = tokens.n_pos - 1
    assert labels[f"LOGITS:P{last}"].endswith(tokens.str_tokens[last])
    patch_map = cv.patch(model, pairs, over="resid_pre", progress=False)
    patching = PatchingView(patch_map, model=model, pairs=pairs)
    patching.send = lambda content, buffers=None: sent.append(content)
    patching._handle_custom_msg({"type": "ablate", "components": ["L1H2"], "request": 3})
    assert patching.result["ablated"] == pytest.approx(
        cv.ablate(model, pairs, heads=["L1H2"]).ablated, abs=TOL
    )
    assert not has_hooks(model)


@pytest.mark.browser
def test_per_position_circuit_view_of_mixed_lengths_draws_in_the_browser(
    model, page, tmp_path, artifacts
):
    """The standalone page of a per-position CircuitView built on mixed-length pairs draws
    one column per padded position, labelled by the longest prompt's tokens (as the kernel
    sends them); screenshot: tests/artifacts/mixed_lengths_circuit_<arch>.png."""
    from circuitviz.export._html import write_html
    from circuitviz.views import CircuitView

    pairs = mixed_pairs()
    graph = cv.circuit(model, pairs, per_position=True, progress=False)
    view = CircuitView(graph=graph, top_nodes=12, top_edges=40)
    shown = view.shown_graph()
    path = write_html(view, tmp_path / "mixed.html")
    page.goto(path.as_uri())
    page.locator(".cv-circuit g.cv-node").first.wait_for()
    drawn = page.evaluate(
        "() => [...document.querySelectorAll('.cv-circuit g.cv-node')]"
        ".map(e => e.dataset.component)"
    )
    assert sorted(drawn) == sorted(n["id"] for n in shown["nodes"])
    last = graph.n_pos - 1
    assert f"LOGITS:P{last}" in drawn
    text = page.locator(".cv-circuit").inner_text()
    assert graph.tokens[last].strip() in text
    assert not page.console_errors
    name = model.cfg.model_name.replace("/", "_")
    page.screenshot(path=str(artifacts / f"mixed_lengths_circuit_{name}.png"))


@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_remote_mixed_lengths_equal_the_bridge(kind):
    """On NDIF (the offline fake server of ``tests/_fake_ndif.py``: the request serialised,
    run with circuitviz hidden), the mask and mean weights travel with the runs: patch,
    ablate (mean: weights applied on the server) and the EAP graph equal the bridge."""
    pytest.importorskip("nnsight")
    from tests.test_remote import Setup

    setup = Setup(kind)
    pairs = mixed_pairs()
    col = max(shifts(setup.bridge, pairs)) - 1
    spec = {"heads": ["L1H2", f"L0H1:P{col}"], "mlps": ["MLP0"], "mode": "mean"}
    ref, got = cv.ablate(setup.bridge, pairs, **spec), cv.ablate(setup.client, pairs, **spec)
    diff = torch.tensor(got.per_prompt["ablated"]) - torch.tensor(ref.per_prompt["ablated"])
    assert diff.abs().max() <= TOL
    ref_map = cv.patch(setup.bridge, pairs, over="heads_by_pos", progress=False)
    got_map = cv.patch(setup.client, pairs, over="heads_by_pos", progress=False)
    assert (got_map.values - ref_map.values).abs().max() <= TOL
    ref_graph = cv.circuit(setup.bridge, pairs, per_position=True, progress=False)
    got_graph = cv.circuit(setup.client, pairs, per_position=True)
    assert (got_graph.scores - ref_graph.scores).abs().max() <= TOL
    assert not setup.server.has_hooks() and not setup.client.has_hooks()
