"""Evaluating circuits exactly: a clean forward pass in which every edge outside the circuit
carries its corrupted (or mean) value instead.

Receiver ``r`` reads ``x_r = resid − Σ_{u: (u→r) ∉ circuit} (a_u − ref_u)``, where ``resid``
and ``a_u`` are the activations of this very (patched) pass and ``ref_u`` the corrupted run's
(or the batch mean of the clean run's). The residual stream itself is never changed; only
what each receiver reads. Heads read their input through ``ln1`` and their own ``W_Q``/``W_K``
/``W_V``, so a head's q, k and v are recomputed from its own patched input at
``attn.hook_q/k/v``; the MLP reads at ``ln2.hook_in`` and the logits at ``ln_final.hook_in``.

Many circuits run in one pass: circuit ``k`` is rows ``k·batch … (k+1)·batch − 1``. With every
edge in the circuit this is the clean run; with none, the corrupted run (exactly: each
receiver then reads the sum of the corrupted senders plus the constant biases).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from .. import backends
from .._components import check_range, listed, parse_id
from .._metrics import METRICS, Metric, MetricFn, bind_metric, check_gap, check_metric
from .._models import check_bridge
from .._pairs import InputError, PromptPairs, Tokens, tokenize
from .._patching import final_logits
from ..backends._edges import PatchedEdges
from ._eap import sender_acts, sender_hooks
from ._layout import Layout, Weights, all_weights, model_info

if TYPE_CHECKING:
    from ._graph import Graph


def circuit_logits(
    model: TransformerBridge,
    layout: Layout,
    weights: list[Weights],
    clean: torch.Tensor,
    ref: torch.Tensor,
    masks: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Final logits ``[circuit, batch, d_vocab]`` of clean runs with edges outside each circuit
    patched.

    Args:
        clean: clean tokens ``[batch, pos]``.
        ref: reference sender outputs ``[sender, batch or 1, pos, d_model]``.
        masks: ``[circuit, sender, receiver]`` or ``[circuit, sender, receiver, pos]`` bool,
            True where the edge is in the circuit (invalid edges are ignored).
        attention_mask: ``[batch, pos]`` of left-padded prompts (mixed lengths), or None.
    """
    n_circ = masks.shape[0]
    batch, n_pos = clean.shape
    edges = PatchedEdges(masks, layout.valid, ref, batch, n_pos)
    write, correction = edges.write, edges.correction

    resid: dict[int, torch.Tensor] = {}

    def keep_resid(layer: int):
        def fn(x: torch.Tensor, hook: object) -> None:
            resid[layer] = x

        return fn

    def head_input(layer: int, kind: str):
        w = weights[layer]
        rs = layout.receiver_slice(layer, kind)

        def fn(x: torch.Tensor, hook: object) -> torch.Tensor | None:
            c = correction(layout.n_senders_before(layer), rs)
            if c is None:
                return None
            rows = resid[layer][:, :, None] - c.to(x.dtype)
            return w.project(kind, w.ln1(rows)).to(x.dtype)

        return fn

    def plain_input(n_senders: int, rs: slice):
        def fn(x: torch.Tensor, hook: object) -> torch.Tensor | None:
            c = correction(n_senders, rs)
            return None if c is None else x - c[:, :, 0].to(x.dtype)

        return fn

    fwd = list(sender_hooks(layout, weights, write))
    for layer in range(layout.n_layers):
        fwd.append((f"blocks.{layer}.hook_resid_pre", keep_resid(layer)))
        for kind in "qkv":
            fwd.append((f"blocks.{layer}.attn.hook_{kind}", head_input(layer, kind)))
        fwd.append(
            (
                f"blocks.{layer}.ln2.hook_in",
                plain_input(
                    layout.n_senders_before(layer, mlp=True), layout.receiver_slice(layer, "mlp")
                ),
            )
        )
    last = layout.logits_receiver
    fwd.append(("ln_final.hook_in", plain_input(len(layout.senders), slice(last, last + 1))))
    tokens = clean.repeat(n_circ, 1)
    mask = None if attention_mask is None else attention_mask.repeat(n_circ, 1)
    with torch.inference_mode():
        logits = final_logits(model, tokens, fwd, attention_mask=mask)
    return logits.reshape(n_circ, batch, -1)


# --- evaluating a graph's circuits on a model ------------------------------------------------

ABLATIONS = ("corrupted", "mean")


def mask_source(
    masks: torch.Tensor | Callable[[int, int], torch.Tensor], n: int | None
) -> tuple[Callable[[int, int], torch.Tensor], int]:
    """Circuits' masks as ``(source, n)``: ``source(start, stop)`` gives ``masks[start:stop]``,
    so that only one chunk of masks need exist at a time."""
    if isinstance(masks, torch.Tensor):
        tensor = masks
        return (lambda start, stop: tensor[start:stop]), masks.shape[0]
    assert n is not None
    return masks, n


@dataclass
class Context:
    """What every evaluation of one graph on one model needs, computed once and cached on the
    graph: tokens, weights, reference sender outputs, the bound metric and its baselines."""

    layout: Layout
    weights: list[Weights]
    tokens: Tokens
    ref: torch.Tensor  # [sender, batch or 1, pos, d_model]
    metric: Metric
    clean: float
    reference: float  # the metric with every edge patched (the corrupted run for "corrupted")
    max_rows: int = 64
    memory_budget: float = 2**30  # bytes of sender deviations one pass may hold
    d_model: int = 0  # the model's, where ``ref`` is not here (0: no memory bound)

    @property
    def circuits_per_pass(self) -> int:
        """Circuits per pass: ``max_rows`` rows, fewer where each circuit's sender deviations
        (``[sender, batch, pos, d_model]`` float32) would pass ``memory_budget`` — on a 70B
        model one circuit of 20 tokens alone holds about 3.4 GB, so it gets a pass of its own."""
        rows = max(1, self.max_rows // self.tokens.batch)
        if self.ref is not None:
            senders, _, n_pos, d_model = self.ref.shape
        else:  # kept on the server (NDIF): the same tensor's size, from the model's shape
            senders, n_pos, d_model = len(self.layout.senders), self.tokens.n_pos, self.d_model
        per_circuit = senders * self.tokens.batch * n_pos * d_model * 4
        return (
            rows if per_circuit == 0 else max(1, min(rows, int(self.memory_budget // per_circuit)))
        )

    def metrics(
        self,
        model: TransformerBridge,
        masks: torch.Tensor | Callable[[int, int], torch.Tensor],
        n: int | None = None,
        progress: bool = False,
    ) -> list[float]:
        """The metric of each circuit, ``masks[k]``, chunked to bound memory. ``masks`` may
        instead be a function ``(start, stop) -> masks[start:stop]`` of ``n`` circuits, so that
        only one chunk of masks exists at a time."""
        masks, n = mask_source(masks, n)
        per_pass = self.circuits_per_pass
        out = []
        with tqdm(total=n, desc="circuits", disable=not progress, leave=False) as bar:
            for start in range(0, n, per_pass):
                chunk = masks(start, min(n, start + per_pass))
                logits = circuit_logits(
                    model,
                    self.layout,
                    self.weights,
                    self.tokens.clean,
                    self.ref,
                    chunk,
                    self.tokens.attention_mask,
                )
                out += [self.metric(lg) for lg in logits]
                bar.update(chunk.shape[0])
        return out

    def recovered(self, value: float) -> float:
        gap = check_gap(self.clean, self.reference, "Faithfulness (the share recovered)")
        return (value - self.reference) / gap


def check_model(graph: Graph, model: TransformerBridge) -> None:
    info = model_info(check_bridge(model))
    mine = {k: getattr(graph, k) for k in ("model", "n_layers", "n_heads", "n_kv_heads")}
    wrong = [f"{k}: graph {mine[k]!r}, model {info[k]!r}" for k in mine if mine[k] != info[k]]
    if wrong:
        raise InputError(
            f"This graph was built for another model ({'; '.join(wrong)}). Evaluate it on the "
            "model it was built on, or build a new graph with circuitviz.circuit(model, pairs)."
        )


def check_pairs(graph: Graph, pairs: PromptPairs) -> None:
    if not isinstance(pairs, PromptPairs):
        raise InputError(f"Expected circuitviz.PromptPairs, got {type(pairs).__name__}.")
    if pairs != PromptPairs.from_dict(graph.prompts):
        raise InputError(
            "These prompt pairs are not the ones the graph was built on (the graph holds "
            f"{len(graph.prompts['clean'])} pairs starting {graph.prompts['clean'][0]!r}). "
            "Pass the same PromptPairs, or build a graph for the new pairs."
        )


def context(
    graph: Graph,
    model: TransformerBridge,
    pairs: PromptPairs,
    ablation: str = "corrupted",
    metric: str | MetricFn | None = None,
    *,
    build: Callable[..., Context] | None = None,
) -> Context:
    """The graph's evaluation context on ``model`` (checked, then cached on the graph);
    ``build`` makes a new one (default: the bridge's, :func:`bridge_context`)."""
    if build is None and (seam := backends.route(model, "graph_context")) is not None:
        return seam(model, graph, pairs, ablation, metric)  # nnsight: its own passes
    check_model(graph, model)
    check_pairs(graph, pairs)
    if not isinstance(ablation, str) or ablation not in ABLATIONS:
        raise InputError(f"Unknown ablation={ablation!r}: use one of {ABLATIONS}.")
    if metric is not None:
        check_metric(metric)
    metric = metric if metric is not None else graph._cache.get("metric_fn", graph.metric)
    key = (id(model), ablation, metric if isinstance(metric, str) else id(metric))
    if key in graph._cache:
        return graph._cache[key]
    if not callable(metric) and metric not in METRICS:
        raise InputError(
            f"The graph's metric {metric!r} was a custom function: pass it again as metric=…."
        )
    ctx = (build or bridge_context)(graph, model, pairs, ablation, metric)
    graph._cache[key] = ctx
    return ctx


def bridge_context(
    graph: Graph, model: TransformerBridge, pairs: PromptPairs, ablation: str, metric: Any
) -> Context:
    """The baselines on the bridge: the clean and corrupted runs' logits and senders."""
    layout = Layout.of(model)
    weights = all_weights(model)
    tokens = tokenize(model, pairs, pad=True)
    mask = tokens.attention_mask
    with torch.inference_mode():
        clean_logits, clean_acts = sender_acts(model, layout, weights, tokens.clean, (), mask)
        corr_logits, corr_acts = sender_acts(model, layout, weights, tokens.corrupted, (), mask)
    bound = bind_metric(metric, tokens, clean_logits, corr_logits)
    if ablation == "corrupted":
        ref = corr_acts
    else:  # each position's mean over the prompts that have a token there (mixed lengths)
        ref = tokens.masked_mean(clean_acts.permute(1, 2, 0, 3)).permute(2, 0, 1, 3)
    ctx = Context(layout, weights, tokens, ref, bound, bound(clean_logits), bound(corr_logits))
    if ablation == "mean":
        ctx.reference = ctx.metrics(model, empty_mask(graph)[None])[0]
    return ctx


def empty_mask(graph: Graph) -> torch.Tensor:
    """No edge in the circuit: ``[sender, receiver]`` or ``[sender, receiver, pos]``."""
    m = torch.zeros_like(graph.kept)
    return m if graph.per_position else m[:, :, 0]


def circuit_mask(
    graph: Graph,
    nodes: Iterable[str] | None = None,
    edges: Iterable | None = None,
    ablated: Iterable[str] = (),
) -> torch.Tensor:
    """The circuit as an edge mask ``[sender, receiver(, pos)]``: the graph's own edges by
    default, else the given edges, or every edge between the given nodes (EMBED and LOGITS
    are always in). ``ablated`` nodes then lose all their outgoing edges."""
    if nodes is not None and edges is not None:
        raise InputError("Give the circuit as nodes=… or edges=…, not both.")
    layout = graph.layout
    if edges is not None:
        edges = listed(edges, "edges", "graph.edges[:10]")
        if not edges:
            raise InputError("The circuit is empty: give at least one edge.")
        mask = torch.zeros_like(graph.kept)
        mask[tuple(torch.tensor([graph.edge_index(e) for e in edges]).T)] = True
    elif nodes is not None:
        nodes = listed(nodes, "nodes", "['L3H5', 'MLP2']")
        if not nodes:
            raise InputError("The circuit is empty: give at least one node.")
        inside = torch.zeros(len(layout.nodes), graph.n_pos, dtype=torch.bool)
        inside[0] = inside[-1] = True
        for i, p in graph.node_indices(nodes):
            inside[i, slice(None) if p is None else p] = True
        index = layout.node_index
        recv = torch.stack(
            [torch.stack([inside[index[t]] for t in r.targets]).any(0) for r in layout.receivers]
        )  # [receiver, pos]
        mask = inside[: len(layout.senders), None] & recv[None]
    else:
        mask = graph.kept.clone()
    mask &= layout.valid[:, :, None]
    if not mask.any():
        raise InputError("The circuit has no edges (after pruning): keep more edges.")
    for i, p in graph.node_indices(ablated_ids(graph, ablated)):
        mask[i, :, slice(None) if p is None else p] = False
    return mask if graph.per_position else mask[:, :, 0]


def ablated_ids(graph: Graph, ablated: Iterable[Any]) -> list[str]:
    """Check ``ablated=`` with the engine's component grammar (plus ``"EMBED"``, a sender
    here): heads and MLPs, optionally at one position, in range for this graph."""
    out = []
    for spec in listed(ablated, "ablated", "['L3H5', 'MLP2']"):
        if spec == "LOGITS":
            raise InputError("LOGITS can't be ablated; ablate the nodes that feed it.")
        if isinstance(spec, str) and spec.split(":")[0] == "EMBED":
            out.append(spec)
            continue
        comp = parse_id(spec)
        if comp.kind in ("feature", "error"):
            what = "an SAE error term" if comp.kind == "error" else "an SAE feature"
            raise InputError(
                f"{spec!r} is {what}, and this graph has no feature nodes: build one "
                "with circuitviz.circuit(model, pairs, saes=...)."
            )
        if comp.pos is not None and not graph.per_position:
            raise InputError(
                f"{spec!r} names a position, but this graph is not per position: ablate "
                f"{comp.base_id!r}, or build the graph with circuit(..., per_position=True)."
            )
        check_range(comp, n_layers=graph.n_layers, n_heads=graph.n_heads, n_pos=graph.n_pos)
        out.append(comp.id)
    return out


@dataclass(frozen=True)
class Faithfulness:
    """How much of the clean metric a circuit recovers: ``recovered = (metric − corrupted) /
    (clean − corrupted)`` (1 = the whole model's behaviour, 0 = none of it)."""

    recovered: float
    metric: float
    clean: float
    corrupted: float
    n_edges: int
    ablation: str

    def __float__(self) -> float:
        return self.recovered


@dataclass(frozen=True)
class FaithfulnessCurve:
    top_edges: list[int]  # requested: at most this many edges
    n_edges: list[int]  # edges kept (all on EMBED→LOGITS paths)
    n_nodes: list[int]
    recovered: list[float]
    metric: list[float]
    clean: float
    corrupted: float
    model: str
    method: str
    ablation: str

    @property
    def sizes(self) -> list[int]:
        """Deprecated name of :attr:`top_edges`."""
        return self.top_edges

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def figure(self):
        import plotly.graph_objects as go

        fig = go.Figure(
            go.Scatter(
                x=self.n_edges,
                y=self.recovered,
                mode="lines+markers",
                customdata=list(zip(self.top_edges, self.n_nodes, self.metric, strict=True)),
                hovertemplate="%{x} edges (top_edges=%{customdata[0]}), %{customdata[1]} nodes<br>"
                "recovered %{y:.3f} (metric %{customdata[2]:.3f})<extra></extra>",
            )
        )
        fig.add_hline(y=1.0, line_dash="dot", annotation_text="clean")
        fig.add_hline(y=0.0, line_dash="dot", annotation_text=self.ablation)
        fig.update_layout(
            title=f"Faithfulness of {self.method} circuits · {self.model}",
            xaxis={"title": "edges in circuit", "type": "log"},
            yaxis={"title": "metric recovered"},
            template="simple_white",
        )
        return fig
