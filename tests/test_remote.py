"""NDIF remote execution, tested offline the way nnsight tests its own remote path.

nnsight checks ``remote=True`` without a server by serialising a trace exactly as it would
be sent and deserialising it with every non-installed module hidden (its ``remote="local"``
simulation). ``tests/_fake_ndif.py`` goes one step further: the client's own nnsight
``RemoteBackend`` builds the request, and a fake server receives the bytes, deserialises
them with circuitviz hidden, runs them on its own copy of the model, and answers with status
updates and the compressed saves — or with the server's errors. The client model holds no
weights (meta device): every number comes back from the "server".

Reference for the numbers: the bridge analyses (``cv.patch``/``cv.ablate``/``cv.attention``
on the ``TransformerBridge`` with the same weights); tolerance 1e-4, float32.
"""

from __future__ import annotations

import os

import pytest
import torch
import zstandard  # an nnsight dependency

import circuitviz as cv
from circuitviz.engine.backends import _load
from circuitviz.engine.backends._nnsight import JobCancelled, NNsightModel, RemoteJobError
from tests._fake_ndif import KEY, FakeNDIF

TOL = 1e-4


class Setup:
    """A bridge, the fake NDIF's own nnsight copy of it, and a weightless remote client."""

    def __init__(self, kind: str, **fake_options):
        self.bridge = cv.tiny_model(kind)
        self.server = _load.from_bridge(self.bridge)
        self.repo = f"tiny/{kind}"
        self.fake = FakeNDIF({self.repo: self.server.lm}, **fake_options)
        self.states: list[str] = []
        self.client = self.make_client()

    def make_client(self, **options) -> NNsightModel:
        lm = _load.from_bridge(self.bridge).lm
        lm._module.to("meta")  # nothing can run here
        options = {
            "repo_id": self.repo,
            "remote": True,
            "api_key": KEY,
            "transport": self.fake,
            "on_status": lambda state, detail: self.states.append(state),
            "model_name": f"tiny-{self.repo}",
            **options,
        }
        return NNsightModel(lm, **options)

    def server_logits(self, tokens):
        with torch.no_grad():
            return self.server.lm._module(tokens).logits


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def setup(request):
    return Setup(request.param)


def payload(blob: bytes) -> bytes:
    return zstandard.ZstdDecompressor().decompress(blob)


@pytest.mark.parametrize("over", ["heads", "heads_by_pos", "resid_pre", "mlp_out", "k"])
def test_remote_patch_is_one_request_and_equals_the_bridge(setup, pairs, over):
    setup.states.clear()
    sent = len(setup.fake.requests)
    ref = cv.patch(setup.bridge, pairs, over=over, progress=False)
    got = cv.patch(setup.client, pairs, over=over, max_rows=6, progress=False)
    assert len(setup.fake.requests) == sent + 1  # every pass of the map in one job
    assert got.extra["forward_passes"] > 2  # max_rows split the map over several traces
    assert float((got.values - ref.values).abs().max()) <= TOL
    assert setup.states == ["queued", "running", "done"]
    assert setup.client.job_state == "done"


def test_only_the_metric_inputs_come_back(setup, pairs):
    """logit_diff needs two logits per row (+ one log-sum-exp): not the vocabulary."""
    cv.patch(setup.client, pairs, over="heads", progress=False)
    back = setup.fake.results[-1]["results"]
    for run in back:
        assert set(run["out"]) == {"sel"} and run["out"]["sel"].shape[-1] == 3
        assert run["back"] == {}
    assert setup.fake.result_bytes[-1] < 4096
    cv.patch(setup.client, pairs, over="heads", metric="kl", progress=False)
    d_vocab = setup.bridge.cfg.d_vocab
    assert setup.fake.results[-1]["results"][1]["out"]["full"].shape[-1] == d_vocab  # KL does


def test_the_request_carries_the_session_code_by_value(setup, pairs):
    """The payload is the local code path's session body plus circuitviz's request helpers
    shipped by value (the fake server has circuitviz hidden when it deserialises)."""
    cv.patch(setup.client, pairs, over="mlp_out", progress=False)
    body = payload(setup.fake.requests[-1])
    assert b"_program.nnsight_layer(lm, arch, shape, layer, run, index, saved, back, at)" in body
    assert b"def nnsight_layer" in body and b"def readout" in body  # by value
    assert b"_original_component" not in body  # no weights, no bridge


def test_remote_ablate_is_one_request_per_click_and_equals_the_bridge(setup, pairs):
    client = setup.make_client()
    sent = len(setup.fake.requests)
    for heads, mode in ((["L1H2"], "mean"), (["L1H2", "L0H1:P3"], "resample"), (["L0H0"], "zero")):
        ref = cv.ablate(setup.bridge, pairs, heads=heads, mlps=[1], mode=mode)
        got = cv.ablate(client, pairs, heads=heads, mlps=[1], mode=mode)
        assert abs(got.ablated - ref.ablated) <= TOL and abs(got.clean - ref.clean) <= TOL
        assert got.top_after.tokens == ref.top_after.tokens
    assert len(setup.fake.requests) == sent + 3  # baselines rode with the first click
    cv.ablate(client, pairs, heads=["L1H2"], mlps=[1], mode="mean")  # seen before: no request
    assert len(setup.fake.requests) == sent + 3


def test_remote_attention(setup):
    prompt = "t1 t2 t3 t1 t2 t3"
    ref, got = cv.attention(setup.bridge, prompt), cv.attention(setup.client, prompt)
    assert float((ref.patterns.float() - got.patterns.float()).abs().max()) <= TOL
    assert float((ref.scores["induction"] - got.scores["induction"]).abs().max()) <= TOL


# ----------------------------------------------------------------------------- errors


def assert_untouched(setup: Setup, before: torch.Tensor, tokens: torch.Tensor) -> None:
    assert not setup.server.has_hooks() and not setup.client.has_hooks()
    assert torch.equal(setup.server_logits(tokens), before)


@pytest.fixture
def untouched(setup):
    tokens = setup.bridge.to_tokens("t1 t2 t3 t4")
    before = setup.server_logits(tokens)
    yield
    assert_untouched(setup, before, tokens)


def test_missing_api_key_is_refused_before_sending(setup, pairs, monkeypatch, untouched):
    from nnsight import CONFIG

    monkeypatch.setattr(CONFIG.API, "APIKEY", None)
    client = setup.make_client(api_key=None)
    sent = len(setup.fake.requests)
    with pytest.raises(cv.InputError, match=r"API key.*NDIF_API_KEY"):
        cv.patch(client, pairs, progress=False)
    assert len(setup.fake.requests) == sent


def test_a_wrong_api_key_names_the_key(setup, pairs, untouched):
    client = setup.make_client(api_key="not-a-key")
    with pytest.raises(RemoteJobError, match=r"401.*check the API key"):
        cv.ablate(client, pairs, heads=["L0H0"])


@pytest.mark.parametrize("state", [None, "DEPLOYING"])
def test_a_model_ndif_does_not_serve_is_refused_before_sending(setup, pairs, state, untouched):
    fake = FakeNDIF({setup.repo: setup.server.lm}, deployed={"meta-llama/Llama-3.1-70B": "RUNNING"})
    repo = "nobody/serves-this" if state is None else "meta-llama/Llama-3.1-405B"
    if state is not None:
        fake.deployed[repo] = state
    client = setup.make_client(transport=fake, repo_id=repo)
    with pytest.raises(cv.InputError, match=r"cannot run on NDIF.*Llama-3\.1-70B"):
        cv.patch(client, pairs, progress=False)
    assert fake.requests == []


def test_a_model_the_server_cannot_find_is_a_clear_error(setup, pairs, untouched):
    """Listed as running, but gone when the job arrives: the server's ERROR, in our words."""
    fake = FakeNDIF({}, deployed={setup.repo: "RUNNING"})
    client = setup.make_client(transport=fake)
    with pytest.raises(RemoteJobError, match=r"not found.*nnsight.status"):
        cv.attention(client, "t1 t2")


def test_a_failing_job(setup, pairs, untouched):
    fake = FakeNDIF({setup.repo: setup.server.lm}, fail="CUDA out of memory")
    client = setup.make_client(transport=fake)
    setup.states.clear()
    with pytest.raises(RemoteJobError, match=r"out of memory.*max_rows"):
        cv.patch(client, pairs, progress=False)
    assert setup.states[-1] == "error" and client.job_state == "error"


def test_a_job_whose_code_fails_on_the_server(setup, pairs, untouched):
    """The server holds another architecture under this name: the body fails there."""
    other = _load.from_bridge(cv.tiny_model("gpt2" if "llama" in setup.repo else "llama"))
    fake = FakeNDIF({setup.repo: other.lm})
    client = setup.make_client(transport=fake)
    with pytest.raises(RemoteJobError, match="failed"):
        cv.ablate(client, pairs, heads=["L0H0"])


def test_a_job_that_never_finishes_times_out(setup, pairs, untouched):
    fake = FakeNDIF({setup.repo: setup.server.lm}, hang=True)
    client = setup.make_client(transport=fake, timeout_s=0.3)
    with pytest.raises(RemoteJobError, match=r"timeout_s=0\.3"):
        cv.patch(client, pairs, progress=False)
    assert client.job_state == "error"


def test_cancel_stops_waiting(setup, pairs, untouched):
    fake = FakeNDIF({setup.repo: setup.server.lm}, hang=True)
    client = setup.make_client(transport=fake)
    clicks = ["cancel"]  # the user presses cancel once, while the job runs

    def on_status(state: str, detail: str) -> None:
        if state == "running" and clicks:
            clicks.pop()
            client.cancel()

    client.on_status = on_status
    with pytest.raises(JobCancelled, match=r"Stopped waiting.*model\.cancel\(\)"):
        cv.ablate(client, pairs, heads=["L0H0"])
    assert client.job_state == "cancelled"
    fake.hang = False  # the next request is a fresh job: cancel does not stick
    assert cv.ablate(client, pairs, heads=["L0H0"]).ablated is not None


# ----------------------------------------------------------------------------- real NDIF


@pytest.mark.skipif(
    not os.environ.get("NDIF_API_KEY"),
    reason="NDIF_API_KEY is not set: the real-NDIF test needs an API key "
    "(https://login.ndif.us) and network access to api.ndif.us and the Hugging Face hub",
)
def test_real_ndif():  # pragma: no cover - needs the network
    name = os.environ.get("CIRCUITVIZ_NDIF_MODEL", "openai-community/gpt2")
    states: list[str] = []
    model = cv.load_model(name, backend="nnsight", remote=True)
    model.on_status = lambda state, detail: states.append(state)
    pairs = cv.PromptPairs(
        ["When John and Mary went to the store, John gave a drink to"],
        ["When John and Mary went to the store, Mary gave a drink to"],
        [" Mary"],
        [" John"],
    )
    result = cv.ablate(model, pairs, heads=["L9H6"], mode="mean")
    assert result.ablated is not None and result.clean > result.corrupted
    assert states[-1] == "done"
    grid = cv.patch(model, pairs, over="attn_out", progress=False)
    assert grid.values.shape == (model.cfg.n_layers, len(grid.tokens))


def test_an_unreachable_ndif_is_a_clear_error(setup, pairs, untouched):
    class Down(FakeNDIF):
        def run(self, backend, request, blob):
            raise ConnectionRefusedError("[Errno 111] Connection refused")

    client = setup.make_client(transport=Down({setup.repo: setup.server.lm}))
    with pytest.raises(RemoteJobError, match="could not be reached"):
        cv.patch(client, pairs, progress=False)
    assert client.job_state == "error"
