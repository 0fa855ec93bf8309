"""The kernel owns the views' state: forged trait updates, state restore, message size limits
and ``on_msg`` routing, driven through the real ipywidgets comm path on the tiny Llama.

After every hostile input the view still answers a normal click, no hook is left and the
model's logits are bit-identical (``healthy``)."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ipywidgets.widgets.widget import _remove_buffers

import circuitviz as cv
from circuitviz.engine import InputError, has_hooks
from circuitviz.views import (
    AttentionView,
    CircuitView,
    FeatureView,
    LogitLensView,
    PatchingView,
    SteeringView,
)
from circuitviz.views._base import MAX_ITEMS, MAX_TEXT, QUOTE_CHARS

PROBE = "t3 t8 t1 t9 t4"
HYPOTHESIS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
CLICK = {"type": "ablate", "components": ["L0H1"], "mode": "zero", "metric": "logit_diff"}


class Wire:
    """Stands in for the comm: records what the kernel sends and fails on logged exceptions
    (ipywidgets' ``_handle_msg`` swallows them into a log warning)."""

    def __init__(self, view):
        self.view = view
        self.sent: list[dict] = []
        view._send = lambda msg, buffers=None: self.sent.append(json.loads(json.dumps(msg)))

    def _deliver(self, data: dict) -> None:
        records: list[logging.LogRecord] = []
        handler = logging.Handler()
        handler.emit = records.append
        self.view.log.addHandler(handler)
        try:
            self.view._handle_msg({"content": {"data": data}, "buffers": []})
        finally:
            self.view.log.removeHandler(handler)
        assert not records, records[0].getMessage()

    def update(self, state: dict) -> None:
        """A comm ``update`` from the page, as ipywidgets receives it."""
        self.sent.clear()
        self._deliver({"method": "update", "state": state, "buffer_paths": []})

    def custom(self, content) -> None:
        """A custom message from the page (``model.send``)."""
        self.sent.clear()
        self._deliver({"method": "custom", "content": content})

    def updates(self) -> dict:
        """Trait values the kernel sent back as plain ``update`` messages (reverts)."""
        out: dict = {}
        for msg in self.sent:
            if msg["method"] == "update":
                out.update(msg["state"])
        return out

    def customs(self) -> list[dict]:
        return [m["content"] for m in self.sent if m["method"] == "custom"]


def synced(view) -> dict:
    """Every synced trait but ``error``, as JSON text (binary buffers compared as bytes)."""
    state = view.get_state()
    state.pop("error")
    return {k: repr(v) for k, v in state.items()}


@pytest.fixture(scope="module")
def logits_before(tiny_llama):
    return tiny_llama(PROBE).detach().clone()


@pytest.fixture(scope="module")
def heads(tiny_llama, tiny_pairs):
    return cv.patch(tiny_llama, tiny_pairs, over="heads", progress=False)


@pytest.fixture(scope="module")
def graph(tiny_llama, tiny_pairs):
    return cv.circuit(tiny_llama, tiny_pairs, progress=False)


@pytest.fixture(scope="module")
def patching(tiny_llama, tiny_pairs, heads):
    return PatchingView(heads, model=tiny_llama, pairs=tiny_pairs)


@pytest.fixture(scope="module")
def circuit(tiny_llama, tiny_pairs, graph):
    return CircuitView(tiny_llama, tiny_pairs, graph)


@pytest.fixture(scope="module")
def attention(tiny_llama):
    return AttentionView(tiny_llama, PROBE)


def healthy(view, model, logits_before) -> None:
    """The view still answers a normal click; no hook is left; logits are bit-identical."""
    wire = Wire(view)
    if isinstance(view, AttentionView):
        wire.custom({"type": "request_layer", "layer": 0})
        assert wire.customs() and all(c["type"] == "layer" for c in wire.customs())
    else:
        wire.custom({**CLICK, "request": 1})
        (reply,) = wire.customs()
        assert reply["type"] == "ablation" and reply["result"]["components"] == ["L0H1"]
        assert view.ablated == ["L0H1"] and view.result == view.ablation.to_dict()
    assert not has_hooks(model)
    assert torch.equal(model(PROBE), logits_before)


# ------------------------------------------------------------------ forged trait updates

#: Updates a page could forge, per view: (update, words the refusal names).
FORGED = [
    ({"n_layers": 10**9}, "n_layers"),
    ({"graph": {}}, "graph"),
    ({"map": {}}, "map"),
    ({"mode": "bogus"}, "mode"),
    ({"metric": "nope"}, "metric"),
    ({"ablated": ["L0H1"]}, "ablated"),
    ({"result": {"ablated": 99.0}}, "result"),
    ({"can_ablate": True}, "can_ablate"),
    ({"error": ""}, "error"),
    ({"_esm": "alert(1)"}, "_esm"),
    ({"faithfulness": {"circuit": 1.0}}, "faithfulness"),
    ({"selected": "L0H0", "result": {}}, "result"),  # one bad key refuses the whole update
    ({"selected": "x" * 10_000}, "10000-character"),
    ({"selected": 5}, "unicode string"),
    ({"selected": None}, "selected"),
    ({"show_scores": "<b>x</b>"}, "show_scores"),
    ({"top_nodes": "all"}, "top_nodes"),
    ({"min_rel_weight": [1]}, "min_rel_weight"),
    ({"pinned": ["L0H0"] * (MAX_ITEMS + 1)}, "items"),
    ({"pinned": [5]}, "pinned"),
    ({"no_such_trait": 1}, "no_such_trait"),
]


@pytest.mark.parametrize("kind", ["patching", "circuit", "attention"])
@pytest.mark.parametrize(("update", "names"), FORGED, ids=[str(i) for i in range(len(FORGED))])
def test_forged_trait_updates_are_refused_and_reverted(
    request, kind, update, names, tiny_llama, logits_before
):
    view = request.getfixturevalue(kind)
    before = synced(view)
    view.error = ""
    wire = Wire(view)
    wire.update(update)
    assert synced(view) == before, "a refused update changed the kernel's state"
    refused = sorted(set(update) - view.FRONTEND_TRAITS)  # else a validator refuses the value
    assert (
        view.error.startswith("Update refused") and (refused[0] if refused else names) in view.error
    )
    assert len(view.error) < 700
    echoed = [m for m in wire.sent if m["method"] == "echo_update"]
    assert not echoed, "a refused value must not be confirmed to the page"
    reverted = wire.updates()
    for key in set(update) & set(view.keys):
        kernel, _, _ = _remove_buffers(view.get_state(key))  # as ipywidgets sends it
        assert reverted[key] == json.loads(json.dumps(kernel[key]))
    healthy(view, tiny_llama, logits_before)


@pytest.mark.parametrize(
    ("kind", "update", "expect"),
    [
        ("patching", {"selected": "L1H2"}, {"selected": "L1H2"}),
        ("attention", {"selected": "L1H0", "show_scores": "induction"}, None),
        ("circuit", {"top_nodes": 3, "min_rel_weight": 0.25, "pinned": ["MLP0"]}, None),
        ("circuit", {"min_rel_weight": 7.5}, {"min_rel_weight": 1.0}),  # clamped, as from Python
    ],
)
def test_allowed_updates_go_through_the_traits_validators(
    request, kind, update, expect, tiny_llama, logits_before
):
    view = request.getfixturevalue(kind)
    view.error = ""
    wire = Wire(view)
    wire.update(update)
    for key, value in (expect or update).items():
        assert getattr(view, key) == value
    assert not view.error.startswith("Update refused")
    assert any(m["method"] == "echo_update" for m in wire.sent)
    if expect and expect != update:  # the validator changed the value: the page gets it back
        assert wire.updates() == expect
    healthy(view, tiny_llama, logits_before)


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@HYPOTHESIS
@given(
    update=st.dictionaries(
        st.sampled_from(
            [
                "selected",
                "pinned",
                "top_nodes",
                "min_rel_weight",
                "mode",
                "metric",
                "ablated",
                "result",
                "graph",
                "n_layers",
                "error",
                "can_ablate",
                "x",
            ]
        ),
        JSON,
        min_size=1,
        max_size=3,
    )
)
def test_any_update_is_applied_whole_or_not_at_all(circuit, update):
    """Property: an update either sets exactly the traits it names to validated values (and
    only FRONTEND_TRAITS), or changes nothing and names the refusal."""
    before = synced(circuit)
    circuit.error = ""
    Wire(circuit).update(update)
    after = synced(circuit)
    if circuit.error.startswith("Update refused"):
        assert after == before
    else:
        assert set(update) <= CircuitView.FRONTEND_TRAITS
        changed = {k for k in after if after[k] != before[k]}
        assert changed <= set(update) | {"graph"}  # the kernel re-selects the shown subgraph
        for key in update:  # what is set is what a Python assignment would have set
            trait = circuit.traits()[key]
            assert getattr(circuit, key) == trait._validate(circuit, update[key])


def test_forged_updates_leave_model_and_view_working(circuit, tiny_llama, logits_before):
    """Run after the property test: the view survived every update it tried."""
    healthy(circuit, tiny_llama, logits_before)


VIEWS = (AttentionView, PatchingView, CircuitView, SteeringView, LogitLensView, FeatureView)
JS_SRC = Path(__file__).parent.parent / "js" / "src"


def page_writes(path: Path) -> set[str]:
    """Traits a front-end module writes (``model.set("name", ...)``)."""
    return set(re.findall(r"model\.set\(\s*[\"'](\w+)[\"']", path.read_text()))


@pytest.mark.parametrize("view", VIEWS, ids=lambda v: v.__name__)
def test_frontend_traits_match_what_the_page_writes(view):
    """A trait the page writes but the class does not declare would be refused in use."""
    assert page_writes(JS_SRC / f"{view.BUNDLE}.ts") <= view.FRONTEND_TRAITS
    synced = {name for name, trait in view.class_traits().items() if trait.metadata.get("sync")}
    assert view.FRONTEND_TRAITS <= synced
    bundles = {v.BUNDLE for v in VIEWS}
    for module in JS_SRC.glob("*.ts"):
        if module.stem in bundles:
            continue
        # A module may write only what every view that bundles it accepts.
        users = [v for v in VIEWS if module.stem in js_imports(v.BUNDLE)]
        accepted = frozenset.intersection(*(v.FRONTEND_TRAITS for v in users or VIEWS))
        assert page_writes(module) <= accepted, module.name


def js_imports(entry: str) -> set[str]:
    """The modules ``js/src/{entry}.ts`` bundles, directly or through other modules."""
    seen: set[str] = set()
    todo = [entry]
    while todo:
        source = (JS_SRC / f"{todo.pop()}.ts").read_text()
        for name in re.findall(r"from\s+[\"']\./(\w+)(?:\.js)?[\"']", source):
            if name not in seen and (JS_SRC / f"{name}.ts").exists():
                seen.add(name)
                todo.append(name)
    return seen


# ------------------------------------------------------------------------- state restore

BAD_STATES = [
    ({"mode": "bogus"}, "mode"),
    ({"metric": "nope"}, "metric"),
    ({"ablated": ["L99H0"]}, "out of range"),
    ({"ablated": ["EMBED"]}, "Unknown component"),
    ({"ablated": "L0H1"}, "list"),
    ({"ablated": ["x" * 10**6]}, "character"),
    ({"selected": 3}, "selected"),
    ({"selected": "x" * 1000}, "selected"),
    ({"bogus": 1}, "Unknown state keys"),
    ("L0H1", "dict"),
]


@pytest.mark.parametrize(
    ("state", "expect"), BAD_STATES, ids=[str(i) for i in range(len(BAD_STATES))]
)
@pytest.mark.parametrize("with_model", [True, False])
def test_bad_state_raises_input_error(
    heads, tiny_llama, tiny_pairs, logits_before, state, expect, with_model
):
    kwargs = {"model": tiny_llama, "pairs": tiny_pairs} if with_model else {}
    if not with_model and expect == "out of range":
        # Without a model the set is only drawn: the id's form is checked, not its range.
        assert PatchingView(heads, state=state).ablated == state["ablated"]
    else:
        with pytest.raises(InputError, match=expect) as info:
            PatchingView(heads, state=state, **kwargs)
        assert len(str(info.value)) < 700  # a 1 MB id is not echoed
    assert not has_hooks(tiny_llama)
    assert torch.equal(tiny_llama(PROBE), logits_before)


@pytest.mark.parametrize(
    "state",
    [{"top_nodes": "all"}, {"min_rel_weight": "high"}, {"pinned": [5]}, {"mode": "bogus"}],
)
def test_bad_circuit_state_raises_input_error(graph, state):
    with pytest.raises(InputError, match="Bad state"):
        CircuitView(graph=graph, state=state)


def test_attention_bad_state_raises(tiny_llama):
    with pytest.raises(InputError, match="show_scores"):
        AttentionView(tiny_llama, PROBE, state={"show_scores": "<b>"})


def test_good_state_round_trips(heads, tiny_llama, tiny_pairs, logits_before):
    view = PatchingView(heads, model=tiny_llama, pairs=tiny_pairs)
    view.ablate(["L1H0", "MLP0"], mode="mean")
    view.selected = "L1H0"
    again = PatchingView(heads, model=tiny_llama, pairs=tiny_pairs, state=view.state)
    assert again.state == view.state and again.result == view.result
    healthy(again, tiny_llama, logits_before)


# ---------------------------------------------------------------------- message limits

BIG = "x" * (10 * 2**20)


@pytest.mark.parametrize(
    ("content", "expect"),
    [
        ({"type": "faithfulness", "nodes": ["L0H0"] * 200_000, "ablated": []}, "items"),
        ({"type": "faithfulness", "nodes": [], "ablated": ["L0H0"] * (MAX_ITEMS + 1)}, "items"),
        ({"type": "ablate", "components": ["L0H1"] * (MAX_ITEMS + 1)}, "items"),
        ({"type": "ablate", "components": [BIG]}, "character"),
        ({"type": "ablate", "components": ["L0H1"], "mode": BIG}, "character"),
        ({"type": "ablate", "components": [[[[[["L0H1"]]]]]]}, "nests"),
        ({"type": "ablate", "components": [], **{f"k{i}": 0 for i in range(40)}}, "keys"),
        ({"type": "ablate", "components": [], "request": BIG}, "character"),
        ({"type": "request_layer", "layer": BIG}, "character"),
        ({"type": "ablate", "components": [["L0H1"] * 1000] * 100}, "in all"),
    ],
    ids=lambda v: None if isinstance(v, (dict, str)) else str(v),
)
def test_oversized_messages_are_refused_without_echo(
    circuit, attention, tiny_llama, logits_before, content, expect
):
    view = attention if content["type"] == "request_layer" else circuit
    before = synced(view)
    wire = Wire(view)
    wire.custom(content)
    (reply,) = wire.customs()
    assert reply["type"] == "error" and expect in reply["message"]
    assert len(json.dumps(reply)) < 1000 and len(view.error) < 700  # never the input back
    assert synced(view) == before
    healthy(view, tiny_llama, logits_before)


def test_echoed_values_are_cut(circuit, graph):
    wire = Wire(circuit)
    wire.custom({"type": "<" + "y" * (MAX_TEXT - 2) + ">"})
    (reply,) = wire.customs()
    assert "Unknown message type" in reply["message"]
    # the quoted input is cut; the rest is the kernel's own text (it lists the view's types)
    assert len(reply["message"]) < QUOTE_CHARS + 100 + len(str(CircuitView.message_types()))
    with pytest.raises(InputError, match="mode") as info:
        CircuitView(graph=graph, state={"mode": "z" * MAX_TEXT})
    assert len(str(info.value)) < QUOTE_CHARS + 100


def test_faithfulness_at_the_limit_is_answered(circuit):
    nodes = circuit.node_ids
    wire = Wire(circuit)
    wire.custom({"type": "faithfulness", "nodes": nodes, "ablated": [], "request": "f"})
    assert [c["type"] for c in wire.customs()] == ["faithfulness"]
    # the kernel scores the circuit it shows (the page's node list is checked, not trusted)
    assert circuit.faithfulness["nodes"] == [n["id"] for n in circuit.shown_graph()["nodes"]]


# ---------------------------------------------------------------------- on_msg routing


def test_user_callbacks_get_messages_the_view_does_not_handle(patching, tiny_llama, logits_before):
    got = []

    def mine(widget, content, buffers):
        got.append((widget, content, buffers))

    patching.on_msg(mine)
    try:
        wire = Wire(patching)
        for content in ({"type": "my_event", "x": 1}, {"kind": "no type"}, "plain text"):
            wire.custom(content)
            assert not wire.customs(), "no error reply for a message a user callback handles"
        assert [c for _, c, _ in got] == [
            {"type": "my_event", "x": 1},
            {"kind": "no type"},
            "plain text",
        ]
        assert all(w is patching for w, _, _ in got)
        wire.custom({**CLICK, "request": 9})  # the view's own types stay reserved
        assert [c["type"] for c in wire.customs()] == ["ablation"] and len(got) == 3
    finally:
        patching.on_msg(mine, remove=True)
    wire.custom({"type": "my_event"})  # no callback: the page is told
    (reply,) = wire.customs()
    assert reply["type"] == "error" and "ablate" in reply["message"]
    healthy(patching, tiny_llama, logits_before)


def test_reserved_message_types():
    assert PatchingView.message_types() == ["ablate", "cancel"]
    assert CircuitView.message_types() == [
        "ablate",
        "cancel",
        "cancel_job",
        "faithfulness",
        "feature_card",
        "head_pattern",
        "hello",
        "mib",
        "patch_edge",
        "steer",
        "suggest_supernodes",
    ]
    assert AttentionView.message_types() == ["request_layer"]


def test_demo_model_refuses_a_forged_update(demo_model):
    pairs = cv.PromptPairs(
        ["The capital of France is"], ["The capital of Italy is"], [" Paris"], [" Rome"]
    )
    try:  # tests/ may or may not be a package
        from tests.test_export import hand_patch_result
    except ImportError:
        from test_export import hand_patch_result
    result = hand_patch_result(["The", " capital"])  # a small map: the clicks are under test
    view = PatchingView(result, model=demo_model, pairs=pairs)
    before_logits = demo_model(PROBE).detach().clone()
    before = synced(view)
    Wire(view).update({"mode": "bogus", "selected": "L0H0"})
    assert synced(view) == before and "mode" in view.error
    healthy(view, demo_model, before_logits)


# ---------------------------------------------------------------------- in a real JupyterLab

FORGER = '''
import traitlets
from circuitviz.views._base import View

class Forger(View):
    """A circuitviz View whose page writes a trait it does not own, and one it does."""
    _esm = """
    function render({ model, el }) {
      const button = (role, act) => {
        const b = document.createElement("button");
        b.dataset.role = role;
        b.textContent = role;
        b.addEventListener("click", act);
        return b;
      };
      const owned = document.createElement("span");
      owned.dataset.role = "owned";
      const selected = document.createElement("span");
      selected.dataset.role = "selected";
      const error = document.createElement("span");
      error.dataset.role = "error";
      const show = () => {
        owned.textContent = String(model.get("owned"));
        selected.textContent = model.get("selected");
        error.textContent = model.get("error");
      };
      const forge = button("forge", () => { model.set("owned", 999); model.save_changes(); show(); });
      const select = button("select", () => { model.set("selected", "L0H1"); model.save_changes(); });
      for (const name of ["owned", "selected", "error"]) model.on(`change:${name}`, show);
      show();
      el.append(forge, select, owned, selected, error);
    }
    export default { render };
    """
    owned = traitlets.Int(1).tag(sync=True)

forger = Forger()
display(forger)
print("FORGER_READY")
'''


@pytest.mark.browser
@pytest.mark.slow
def test_page_write_to_a_kernel_owned_trait_is_reverted_in_jupyterlab(jupyter_server, page):
    """Through real Jupyter comms: the page's optimistic value is replaced by the kernel's,
    the refusal is shown, and an allowed write still goes through."""
    try:  # tests/ may or may not be a package
        from tests.conftest import kernel_eval
        from tests.test_e2e_jupyter import open_notebook, run_all_cells, write_notebook
    except ImportError:
        from conftest import kernel_eval
        from test_e2e_jupyter import open_notebook, run_all_cells, write_notebook

    name = "forger.ipynb"
    write_notebook(jupyter_server.root_dir / name, [FORGER])
    open_notebook(page, jupyter_server.lab_url(name))
    run_all_cells(page, "FORGER_READY")
    page.locator('[data-role="forge"]').click()
    page.wait_for_function(
        """() => document.querySelector('[data-role="owned"]').textContent === "1"
              && document.querySelector('[data-role="error"]').textContent
                   .startsWith("Update refused")"""
    )
    page.locator('[data-role="select"]').click()
    page.wait_for_function(
        "() => document.querySelector('[data-role=\"selected\"]').textContent === 'L0H1'"
    )
    client = jupyter_server.kernel_client(name)
    try:
        out = kernel_eval(client, "print(forger.owned, forger.selected, forger.error[:14])")
    finally:
        client.stop_channels()
    assert out.split() == ["1", "L0H1", "Update", "refused"]
