"""The graph analyses on nnsight — EAP-IG, circuits' exact faithfulness (one circuit, a curve,
single edges), MIB scores and CircuitView's click-to-ablate — locally and on the fake NDIF.

Reference for every number: the same analysis on the TransformerLens bridge with the same
weights (``cv.circuit``, ``Graph.faithfulness``/``faithfulness_curve``/``patch_edges``,
``mib_scores``, which ``test_graph*.py`` and ``test_mib.py`` check against hand-written hooks).
Tolerance 1e-4 in float32 on metric values; a share recovered divides by the clean − corrupted
gap (small on the random tiny models), so it is compared at 1e-4 of that scale.
"""

from __future__ import annotations

import pytest
import torch

import circuitviz as cv
from circuitviz.engine.graph import exact_node_scores, mib_scores
from tests.test_backends import TOL, close, logits_of
from tests.test_remote import Setup

pytest.importorskip("nnsight")

SIZES = [3, 10, 40, 10_000]


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def remote(request):
    """The fake NDIF, its client named as the bridge (so one graph is evaluated on both)."""
    setup = Setup(request.param)
    setup.client = setup.make_client(model_name=setup.bridge.cfg.model_name)
    return setup


def answer_margin(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, 3] - logits[:, 7]  # a custom metric: the full logits come back


def same_share(got: float, ref: float, clean: float, corrupted: float) -> bool:
    """Two shares recovered agree to 1e-4 of the metric (they are divided by its gap)."""
    return abs(got - ref) * abs(clean - corrupted) <= TOL


# ----------------------------------------------------------------------------- EAP-IG


@pytest.mark.parametrize("per_position", [False, True])
@pytest.mark.parametrize("metric", ["logit_diff", "answer_prob", "kl", answer_margin], ids=str)
def test_eap_ig_graph_equals_the_bridge(both, pairs, metric, per_position):
    """Every edge score, with each step's metric gradient at that step's own logits (exact for
    non-linear metrics too), and the graph's baselines."""
    bridge, nn = both
    options = {"method": "eap-ig", "steps": 3, "metric": metric, "per_position": per_position}
    ref = cv.circuit(bridge, pairs, progress=False, **options)
    got = cv.circuit(nn, pairs, **options)
    assert got.scores.shape == ref.scores.shape and got.steps == ref.steps == 3
    assert close(got.scores, ref.scores) <= TOL * max(1.0, float(ref.scores.abs().max()))
    assert float(ref.scores.abs().max()) > 1e-8  # scores, not an empty graph
    assert abs(got.clean - ref.clean) <= TOL and abs(got.corrupted - ref.corrupted) <= TOL
    assert got.method == "eap-ig" and got.metric == ref.metric
    eap = cv.circuit(nn, pairs, metric=metric, per_position=per_position)
    assert close(got.scores, eap.scores) > 0  # the steps change the scores
    assert not nn.has_hooks() and all(p.grad is None for p in nn.lm._module.parameters())


def test_eap_ig_with_one_step_is_eap(both, pairs):
    _, nn = both
    one = cv.circuit(nn, pairs, method="eap-ig", steps=1)
    eap = cv.circuit(nn, pairs)
    assert close(one.scores, eap.scores) == 0


# ----------------------------------------------------------------------------- faithfulness


@pytest.mark.parametrize("ablation", ["corrupted", "mean"])
@pytest.mark.parametrize("per_position", [False, True])
def test_faithfulness_equals_the_bridge(both, pairs, ablation, per_position):
    """One graph, evaluated on each backend: its own edges, given nodes, given edges, with
    nodes ablated, a curve of sizes and single edges patched."""
    bridge, nn = both
    graph = cv.circuit(bridge, pairs, per_position=per_position, progress=False)
    small = graph.prune(top_edges=12)
    suffix = ":P5" if per_position else ""
    for kwargs in (
        {},
        {"nodes": [f"L0H1{suffix}", f"MLP0{suffix}", f"L1H2{suffix}"]},
        {"edges": small.edges[:6]},
        {"ablated": [f"L0H1{suffix}", "MLP1"] if not per_position else [f"L0H1{suffix}"]},
    ):
        ref = small.faithfulness(bridge, pairs, ablation=ablation, **kwargs)
        got = small.faithfulness(nn, pairs, ablation=ablation, **kwargs)
        assert abs(got.metric - ref.metric) <= TOL, kwargs
        assert abs(got.clean - ref.clean) <= TOL and abs(got.corrupted - ref.corrupted) <= TOL
        assert same_share(got.recovered, ref.recovered, ref.clean, ref.corrupted)
        assert got.n_edges == ref.n_edges
    ref = graph.faithfulness_curve(bridge, pairs, top_edges=SIZES, ablation=ablation)
    got = graph.faithfulness_curve(nn, pairs, top_edges=SIZES, ablation=ablation)
    assert got.n_edges == ref.n_edges and got.n_nodes == ref.n_nodes
    assert close(torch.tensor(got.metric), torch.tensor(ref.metric)) <= TOL
    assert abs(got.metric[-1] - got.clean) <= TOL  # every edge in: the clean run
    edges = graph.edges[:5]
    ref = graph.patch_edges(bridge, pairs, edges, ablation=ablation, progress=False)
    got = graph.patch_edges(nn, pairs, edges, ablation=ablation, progress=False)
    assert close(got, ref) <= TOL
    assert not nn.has_hooks()


def test_faithfulness_with_a_custom_metric_equals_the_bridge(both, pairs):
    bridge, nn = both
    graph = cv.circuit(bridge, pairs, metric=answer_margin, progress=False).prune(top_edges=15)
    ref = graph.faithfulness(bridge, pairs)
    got = graph.faithfulness(nn, pairs)
    assert abs(got.metric - ref.metric) <= TOL and got.metric != got.clean


def test_an_nnsight_model_object_as_it_is(both, pairs):
    """``nnsight``'s own model object (wrapped once by circuitviz) builds and scores graphs."""
    _, nn = both
    graph = cv.circuit(nn.lm, pairs, method="eap-ig", steps=2)
    wrapped = cv.circuit(nn, pairs, method="eap-ig", steps=2)
    assert close(graph.scores, wrapped.scores) == 0
    got = graph.faithfulness_curve(nn.lm, pairs, top_edges=SIZES)
    ref = wrapped.faithfulness_curve(nn, pairs, top_edges=SIZES)
    assert got.metric == ref.metric and abs(got.metric[-1] - got.clean) <= TOL


def test_mib_scores_equal_the_bridge(both, pairs):
    """Edge level, and node level ranked by exact node scores (themselves computed on each
    backend: head patching and MLP ablation)."""
    bridge, nn = both
    graph = cv.circuit(bridge, pairs, progress=False)
    ref = mib_scores(graph, bridge, pairs, progress=False)
    got = mib_scores(graph, nn, pairs, progress=False)
    assert got.n_edges == ref.n_edges
    assert close(torch.tensor(got.metric), torch.tensor(ref.metric)) <= TOL
    assert abs(got.cpr - ref.cpr) * abs(ref.clean - ref.corrupted) <= TOL
    assert abs(got.cmd - ref.cmd) * abs(ref.clean - ref.corrupted) <= TOL
    scores_ref = exact_node_scores(bridge, pairs, progress=False)
    scores_got = exact_node_scores(nn, pairs, progress=False)
    assert scores_got.keys() == scores_ref.keys()
    assert max(abs(scores_got[k] - scores_ref[k]) for k in scores_ref) <= TOL
    ref = mib_scores(graph, bridge, pairs, level="node", node_scores=scores_ref, progress=False)
    got = mib_scores(graph, nn, pairs, level="node", node_scores=scores_got, progress=False)
    assert got.n_nodes == ref.n_nodes
    assert close(torch.tensor(got.metric), torch.tensor(ref.metric)) <= TOL


def test_bad_graph_input_on_nnsight_is_refused_and_changes_nothing(both, pairs):
    bridge, nn = both
    graph = cv.circuit(nn, pairs)
    tokens = bridge.to_tokens("t1 t2 t3 t4")
    before = logits_of(nn, tokens)
    with pytest.raises(cv.InputError, match="ablation"):
        graph.faithfulness(nn, pairs, ablation="zero")
    other = cv.PromptPairs(["t1 t2 t3 t4 t1 t2"], ["t5 t6 t7 t8 t5 t6"], [" t3"], [" t7"])
    with pytest.raises(cv.InputError, match="not the ones the graph was built on"):
        graph.faithfulness(nn, other)
    with pytest.raises(cv.InputError, match="L9H0"):
        graph.faithfulness(nn, pairs, ablated=["L9H0"])
    with pytest.raises(cv.InputError, match="steps"):
        cv.circuit(nn, pairs, method="eap-ig", steps=0)
    with pytest.raises(cv.InputError, match="method"):
        cv.circuit(nn, pairs, method="acdc")
    assert not nn.has_hooks()
    assert torch.equal(logits_of(nn, tokens), before)


def test_masks_travel_packed_eight_edges_a_byte():
    from circuitviz.engine.backends._edges import pack, unpack

    for shape in [(3, 5, 7), (2, 4, 4, 9), (1,)]:
        mask = torch.rand(shape, generator=torch.Generator().manual_seed(0)) > 0.5
        data, kept_shape = pack(mask)
        assert data.dtype == torch.uint8 and data.numel() == -(-mask.numel() // 8)
        assert torch.equal(unpack((data, kept_shape)), mask)


# ----------------------------------------------------------------------------- the view


def click(view, components):
    """The page's click-to-ablate: an ablate message, then the faithfulness it asks for."""
    view._handle_custom_msg({"type": "ablate", "components": components, "request": 1})
    view._handle_custom_msg({"type": "faithfulness", "ablated": components, "request": 2})
    return view.faithfulness


def quiet_view(model, pairs, graph):
    view = cv.CircuitView(model, pairs, graph, max_edges=30)
    view.send = lambda content, buffers=None: None
    if view._clicks is not None:  # remote: the baselines are the view's first job, off the cell
        from tests.test_remote_view import settled

        settled(view)
    return view


def test_circuit_view_clicks_to_ablate_on_nnsight(both, pairs):
    bridge, nn = both
    graph = cv.circuit(bridge, pairs, progress=False)
    ref_view, got_view = quiet_view(bridge, pairs, graph), quiet_view(nn, pairs, graph)
    assert got_view.has_faithfulness and got_view.can_ablate
    ref, got = click(ref_view, ["L1H2"]), click(got_view, ["L1H2"])
    assert got["ablated_nodes"] == ref["ablated_nodes"] == ["L1H2"]
    gap = ref_view.result["clean"] - ref_view.result["corrupted"]
    for key in ("circuit", "ablated"):
        assert abs(got[key] - ref[key]) * abs(gap) <= TOL
    assert abs(got_view.result["ablated"] - ref_view.result["ablated"]) <= TOL
    assert not nn.has_hooks()


# ----------------------------------------------------------------------------- remote


@pytest.mark.parametrize("metric", ["answer_prob", "normalized_logit_diff"])
def test_remote_eap_ig_is_one_job_and_equals_the_bridge(remote, pairs, metric):
    """Every interpolation step takes the metric's gradient at its own readout and its
    receiver gradients in the same job (summed on the server); only readouts and the scores
    come back."""
    sent = len(remote.fake.requests)
    ref = cv.circuit(remote.bridge, pairs, method="eap-ig", steps=4, metric=metric)
    got = cv.circuit(remote.client, pairs, method="eap-ig", steps=4, metric=metric)
    assert close(got.scores, ref.scores) <= TOL * max(1.0, float(ref.scores.abs().max()))
    assert abs(got.clean - ref.clean) <= TOL and abs(got.corrupted - ref.corrupted) <= TOL
    assert len(remote.fake.requests) == sent + 1
    scores = ref.layout.valid.numel() * 4  # the [sender, receiver, 1] float32 scores
    assert remote.fake.result_bytes[-1] < scores + 4096
    assert remote.states[-1] == "done" and not remote.server.has_hooks()
    assert all(p.grad is None for p in remote.server.lm._module.parameters())


def test_remote_eap_ig_with_a_callable_metric_is_two_jobs(remote, pairs):
    """The user's metric runs here: the steps' readouts first, then their gradients."""
    sent = len(remote.fake.requests)
    ref = cv.circuit(remote.bridge, pairs, method="eap-ig", steps=3, metric=answer_margin)
    got = cv.circuit(remote.client, pairs, method="eap-ig", steps=3, metric=answer_margin)
    assert close(got.scores, ref.scores) <= TOL * max(1.0, float(ref.scores.abs().max()))
    assert len(remote.fake.requests) == sent + 2
    assert remote.states[-1] == "done" and not remote.server.has_hooks()
    assert all(p.grad is None for p in remote.server.lm._module.parameters())


def test_remote_curve_is_one_job_and_equals_the_bridge(remote, pairs):
    """A whole curve — every size a block of rows of one pass — MIB's ten sizes, or one
    circuit is one job each (the first also carries the baselines: the metric's inputs),
    and only readouts come back."""
    graph = cv.circuit(remote.bridge, pairs, progress=False)
    sent = len(remote.fake.requests)
    ref = graph.faithfulness_curve(remote.bridge, pairs, top_edges=SIZES)
    got = graph.faithfulness_curve(remote.client, pairs, top_edges=SIZES)
    assert close(torch.tensor(got.metric), torch.tensor(ref.metric)) <= TOL
    assert len(remote.fake.requests) == sent + 1 and remote.fake.result_bytes[-1] < 2048
    got = graph.faithfulness_curve(remote.client, pairs, top_edges=SIZES)
    assert len(remote.fake.requests) == sent + 2
    ref = mib_scores(graph, remote.bridge, pairs, progress=False)
    got = mib_scores(graph, remote.client, pairs, progress=False)
    assert close(torch.tensor(got.metric), torch.tensor(ref.metric)) <= TOL
    assert len(remote.fake.requests) == sent + 3
    for ablation in ("mean", "corrupted"):
        ref = graph.prune(top_edges=8).faithfulness(remote.bridge, pairs, ablation=ablation)
        got = graph.prune(top_edges=8).faithfulness(remote.client, pairs, ablation=ablation)
        assert abs(got.metric - ref.metric) <= TOL
        assert abs(got.corrupted - ref.corrupted) <= TOL
    assert len(remote.fake.requests) == sent + 5
    assert remote.states[-1] == "done" and not remote.server.has_hooks()


def test_remote_circuit_view_clicks_to_ablate(remote, pairs):
    graph = cv.circuit(remote.bridge, pairs, progress=False)
    ref_view = quiet_view(remote.bridge, pairs, graph)
    got_view = quiet_view(remote.client, pairs, graph)
    ref = click(ref_view, ["L0H1"])
    sent = len(remote.fake.requests)
    got_view._handle_custom_msg({"type": "faithfulness", "ablated": ["L0H1"], "request": 3})
    settled(got_view)  # a remote view's faithfulness is a job (views/_tasks.py)
    got = got_view.faithfulness
    assert len(remote.fake.requests) == sent + 1  # the circuit, it ablated (and baselines)
    gap = ref_view.result["clean"] - ref_view.result["corrupted"]
    for key in ("circuit", "ablated"):
        assert abs(got[key] - ref[key]) * abs(gap) <= TOL
    sent = len(remote.fake.requests)
    got_view._handle_custom_msg({"type": "faithfulness", "ablated": ["L0H1"], "request": 4})
    settled(got_view)
    assert len(remote.fake.requests) == sent  # answered from the view's memory


def settled(view, timeout: float = 60) -> None:
    """Wait for a remote view's faithfulness job to end (outside a kernel its results land
    from the worker)."""
    import time

    end = time.monotonic() + timeout
    while view.faithfulness_job.get("state") not in ("done", "error", "cancelled"):
        assert time.monotonic() < end, view.faithfulness_job
        time.sleep(0.01)


def test_remote_click_and_its_faithfulness_at_once(remote, pairs):
    """The page's click on a remote model: its ablation runs in the view's worker thread and
    the faithfulness it then asks for in its own worker, at the same time, on one model —
    the model runs one request at a time, and both answers equal the bridge's."""
    from tests.test_remote_view import Kernel

    graph = cv.circuit(remote.bridge, pairs, progress=False)
    ref_view = quiet_view(remote.bridge, pairs, graph)
    ref = click(ref_view, ["L1H0"])
    view = quiet_view(remote.client, pairs, graph)
    kernel = Kernel(view)
    remote.fake.delay = 0.2
    try:
        kernel.click(["L1H0"], request=1)  # the worker's job, queued on the fake NDIF
        view._handle_custom_msg({"type": "faithfulness", "ablated": ["L1H0"], "request": 2})
        kernel.wait(lambda: kernel.reply(1) is not None and kernel.reply(2) is not None)
    finally:
        remote.fake.delay = 0.0
    assert kernel.reply(1)["type"] == "ablation" and kernel.reply(2)["type"] == "faithfulness"
    assert abs(view.result["ablated"] - ref_view.result["ablated"]) <= TOL
    gap = ref_view.result["clean"] - ref_view.result["corrupted"]
    for key in ("circuit", "ablated"):
        assert abs(view.faithfulness[key] - ref[key]) * abs(gap) <= TOL
    assert not remote.server.has_hooks()


# ----------------------------------------------------------------------------- demo


@pytest.mark.demo
@pytest.mark.slow
def test_demo_model_graph_on_nnsight(demo_model):
    """SmolLM2-135M (30 layers, GQA 9 q / 3 kv heads) from its own HF directory through
    nnsight: the EAP-IG graph and a faithfulness curve equal the bridge's."""
    nn = cv.load_model("demo", backend="nnsight", device="cpu")
    pairs = cv.PromptPairs(
        ["When John and Mary went to the store, John gave a drink to"],
        ["When John and Mary went to the store, Mary gave a drink to"],
        [" Mary"],
        [" John"],
    )
    ref = cv.circuit(demo_model, pairs, method="eap-ig", steps=2, progress=False)
    got = cv.circuit(nn, pairs, method="eap-ig", steps=2)
    assert close(got.scores, ref.scores) <= TOL * max(1.0, float(ref.scores.abs().max()))
    curve_ref = ref.faithfulness_curve(demo_model, pairs, top_edges=[30, 300])
    curve_got = ref.faithfulness_curve(nn, pairs, top_edges=[30, 300])
    assert close(torch.tensor(curve_got.metric), torch.tensor(curve_ref.metric)) <= TOL
    assert not nn.has_hooks()
