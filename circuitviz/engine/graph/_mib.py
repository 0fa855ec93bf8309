"""MIB faithfulness scores of an attribution method: CPR and CMD over circuit sizes.

The circuit-localization track of MIB (Mueller et al. 2025, "MIB: A Mechanistic
Interpretability Benchmark") scores a method by the faithfulness of the circuits its scores
choose, at a grid of circuit sizes given as fractions of the graph's edges (or nodes):
``0.1 %, 0.2 %, 0.5 %, 1 %, 2 %, 5 %, 10 %, 20 %, 50 %, 100 %`` (:data:`MIB_FRACTIONS`). At
fraction ``x`` the circuit may hold ``n = int(x · total)`` items (MIB's rounding). Its
faithfulness is

    f(C) = (m(C) − m(∅)) / (m(N) − m(∅)),

``m(N)`` the metric of the full model on the clean prompts, ``m(∅)`` that of the empty circuit
(every edge patched: the corrupted run) and ``m(C)`` that of the circuit, every edge outside it
patched (:meth:`Graph.faithfulness`). Over the fraction axis, with the trapezoid rule between
consecutive grid points (a linear axis, MIB's default):

- **CPR** (circuit performance ratio) = ``∫ f(x) dx``: higher is better;
- **CMD** (circuit–model distance) = ``∫ |1 − f(x)| dx``: lower is better.

The areas span 0.001 … 1: a curve at f = 1 everywhere has CPR 0.999 and CMD 0.

How circuits are chosen here (circuitviz's one pruning rule, ``_select.py``):

- ``level="edge"``: ``Graph.prune(top_edges=n)`` — the strongest edges by ``|score|`` that fit
  in ``n`` once everything off an EMBED → LOGITS path is dropped. MIB takes the ``n``
  strongest and then drops the off-path ones, so at the same ``n`` circuitviz's circuit has at
  least as many edges (both have at most ``n``);
- ``level="node"``: ``Graph.prune(top_nodes=n)`` — the ``n`` strongest heads/MLPs by
  ``|node score|`` (embeddings and logits are always in), and the edges between them that lie
  on EMBED → LOGITS paths (MIB keeps every edge between the chosen nodes; the off-path ones
  cannot reach the logits, so dropping them leaves the metric as it is). Node scores are the
  graph's own (the summed scores of a node's outgoing edges) unless ``node_scores`` are given,
  e.g. exact activation patching (:func:`exact_node_scores`). The total is the number of
  heads and MLPs with a score.

Circuits rank items by ``|score|`` by default (``absolute=True``, the default of MIB's
evaluation), or by the signed score with ``absolute=False``: the pruning rule's
``rank="signed"``, the most negative first (a score estimates ``M(patched) − M(clean)``, so
these are the items whose patching lowers the metric most). MIB's scripts rank so for CPR;
its scores have the opposite sign (a change of the loss), so its "highest first" is the same
order.

Every curve point is exactly one ``Graph.faithfulness`` call on that circuit; the points are
batched into as few forward passes as memory allows.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from .._components import listed
from .._metrics import MetricFn
from .._pairs import InputError, PromptPairs
from .._results import PatchResult
from . import _faithfulness as _f
from ._select import Pruning, graph_candidates, select

if TYPE_CHECKING:
    from ._graph import Graph

#: MIB's circuit sizes, as fractions of the graph's edges (or nodes).
MIB_FRACTIONS = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)
LEVELS = ("edge", "node")


@dataclass(frozen=True)
class MIBScores:
    """The faithfulness curve over circuit sizes and its two areas (see the module docstring).

    ``fraction[i]`` is the grid point, ``n_items[i] = int(fraction · total)`` the size limit
    (edges or nodes, by ``level``), ``n_edges``/``n_nodes`` what the circuit holds, and
    ``faithfulness[i]`` its f (0 = the corrupted run, 1 = the full model)."""

    level: str
    absolute: bool
    fraction: list[float]
    n_items: list[int]
    n_edges: list[int]
    n_nodes: list[int]
    faithfulness: list[float]
    metric: list[float]
    cpr: float
    cmd: float
    total: int
    total_edges: int
    clean: float
    corrupted: float
    model: str
    method: str
    ablation: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def __repr__(self) -> str:
        ranked = "|score|" if self.absolute else "signed score"
        return (
            f"MIBScores({self.method}, {self.level} level by {ranked}, {len(self.fraction)} sizes: "
            f"CPR {self.cpr:.4f} (higher is better), CMD {self.cmd:.4f} (lower is better))"
        )


def areas(fraction: Sequence[float], faithfulness: Sequence[float]) -> tuple[float, float]:
    """(CPR, CMD): trapezoid areas of ``f`` and of ``|1 − f|`` over the fraction axis."""
    x, f = np.asarray(fraction, float), np.asarray(faithfulness, float)
    dx = np.diff(x)
    cpr = float(np.sum(dx * (f[1:] + f[:-1]) / 2))
    gap = np.abs(1.0 - f)
    cmd = float(np.sum(dx * (gap[1:] + gap[:-1]) / 2))
    return cpr, cmd


def check_fractions(fractions: Any) -> list[float]:
    values = listed(fractions, "fractions", "circuitviz.engine.graph.MIB_FRACTIONS")
    ok = len(values) >= 2 and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in values
    )
    if not ok or any(b <= a for a, b in itertools.pairwise(values)):
        raise InputError(
            f"fractions must be at least two increasing numbers in (0, 1], got {values!r:.80}; "
            "MIB's grid is circuitviz.engine.graph.MIB_FRACTIONS."
        )
    return [float(v) for v in values]


def scored_graph(graph: Graph, node_scores: Mapping[str, float] | PatchResult | None) -> Graph:
    """``graph`` with its node scores replaced by ``node_scores`` (heads and MLPs by id; any
    head/MLP left out gets NaN: unscored, ranked after every scored node). A
    :class:`PatchResult` over ``"heads"`` gives its heads' effects (value − baseline)."""
    if node_scores is None:
        return graph
    if isinstance(node_scores, PatchResult):
        if node_scores.axes != ("layer", "head"):
            raise InputError(
                f"node_scores: a PatchResult over heads (layer × head) is needed, got axes "
                f"{node_scores.axes}; or pass a dict {{'L3H5': score, 'MLP2': score, …}}."
            )
        effects = node_scores.values - node_scores.baseline
        node_scores = {
            f"L{layer}H{head}": float(effects[layer, head])
            for layer in range(effects.shape[0])
            for head in range(effects.shape[1])
        }
    if not isinstance(node_scores, Mapping) or not node_scores:
        raise InputError(
            "node_scores must be a non-empty dict {'L3H5': score, 'MLP2': score, …} or a "
            f"PatchResult over heads, not {type(node_scores).__name__}."
        )
    if graph.per_position:
        raise InputError(
            "node_scores rank whole heads and MLPs: use a graph built without per_position."
        )
    scores = torch.full_like(graph.node_scores, float("nan"))
    index = graph.layout.node_index
    for node_id, value in node_scores.items():
        if node_id not in index or node_id in ("EMBED", "LOGITS"):
            raise InputError(
                f"node_scores: {str(node_id)!r:.60} is not a head or MLP of this graph "
                "(ids like 'L3H5', 'MLP2')."
            )
        if not isinstance(value, (int, float)) or not np.isfinite(value):
            raise InputError(f"node_scores[{node_id!r}] must be a finite number, got {value!r}.")
        scores[index[node_id]] = float(value)
    scores[0] = graph.node_scores[0]  # EMBED and LOGITS are always in; their scores are unused
    scores[-1] = graph.node_scores[-1]
    return replace(graph, node_scores=scores, _cache=graph._cache)


def mib_circuit(graph: Graph, level: str, n: int, *, absolute: bool = True) -> Graph:
    """The circuit of size ``n`` at ``level`` (``prune(top_edges=n)`` / ``prune(top_nodes=n)``,
    with ``rank="abs"`` or ``"signed"``; an empty selection when nothing fits)."""
    rank = "abs" if absolute else "signed"
    rule = Pruning(top_edges=n, rank=rank) if level == "edge" else Pruning(top_nodes=n, rank=rank)
    edges, nodes = select(graph_candidates(graph), rule)
    return graph.with_selection(edges, nodes)


def mib_scores(
    graph: Graph,
    model: TransformerBridge,
    pairs: PromptPairs,
    *,
    level: str = "edge",
    node_scores: Mapping[str, float] | PatchResult | None = None,
    fractions: Sequence[float] = MIB_FRACTIONS,
    absolute: bool = True,
    ablation: str = "corrupted",
    metric: str | MetricFn | None = None,
    progress: bool = True,
) -> MIBScores:
    """MIB's CPR and CMD of ``graph``'s scores on ``model`` and ``pairs`` (the pairs the graph
    was built on): the exact faithfulness of its circuit at each size in ``fractions``, and
    the areas under (CPR) and between 1 and (CMD) that curve. Definitions and how circuits are
    chosen: this module's docstring.

    Args:
        level: ``"edge"`` (circuits of the strongest edges) or ``"node"`` (of the strongest
            heads/MLPs by ``node_scores``).
        node_scores: for ``level="node"``: ``{"L3H5": score, "MLP2": score, …}`` or a
            ``patch(over="heads")`` result; default the graph's own node scores.
        fractions: the size grid (default MIB's, :data:`MIB_FRACTIONS`).
        absolute: rank by ``|score|`` (True, MIB's default) or by the signed score (False:
            the items whose patching lowers the metric most first).
        ablation: what replaces an edge outside the circuit (``"corrupted"`` or ``"mean"``).
        metric: as for :meth:`Graph.faithfulness` (default: the graph's).
    """
    if not isinstance(level, str) or level not in LEVELS:
        raise InputError(f"Unknown level={level!r}: use one of {LEVELS}.")
    if node_scores is not None and level != "node":
        raise InputError("node_scores rank nodes: pass level='node' with them.")
    if not isinstance(absolute, bool):
        raise InputError(f"absolute must be True (rank by |score|) or False, not {absolute!r:.40}.")
    grid = check_fractions(fractions)
    ctx = _f.context(graph, model, pairs, ablation, metric)  # checks model and pairs first
    graph = scored_graph(graph, node_scores)
    total_edges = int(graph.kept.sum())
    if level == "edge":
        total = total_edges
    else:
        cands = graph_candidates(graph)
        total = int((cands.ranked & np.isfinite(cands.node_score)).sum())
    if total < 1:
        raise InputError(f"The graph has no {level}s to rank.")
    sizes = [int(x * total) for x in grid]  # MIB's rounding: down
    circuits = [mib_circuit(graph, level, n, absolute=absolute) for n in sizes]
    per_pos = graph.per_position

    def masks(start: int, stop: int) -> torch.Tensor:
        return torch.stack([g.kept if per_pos else g.kept[:, :, 0] for g in circuits[start:stop]])

    values = ctx.metrics(model, masks, n=len(circuits), progress=progress)
    faith = [ctx.recovered(v) for v in values]
    cpr, cmd = areas(grid, faith)
    return MIBScores(
        level=level,
        absolute=absolute,
        fraction=grid,
        n_items=sizes,
        n_edges=[int(g.kept.sum()) for g in circuits],
        n_nodes=[int(g.node_mask.sum()) for g in circuits],
        faithfulness=faith,
        metric=values,
        cpr=cpr,
        cmd=cmd,
        total=total,
        total_edges=total_edges,
        clean=ctx.clean,
        corrupted=ctx.reference,
        model=graph.model,
        method=graph.method,
        ablation=ablation,
    )


def exact_node_scores(
    model: TransformerBridge,
    pairs: PromptPairs,
    *,
    metric: str | MetricFn = "logit_diff",
    progress: bool = True,
) -> dict[str, float]:
    """Each head's and MLP's exact effect of being patched with its corrupted output on the
    clean run (``M(patched) − M(clean)``): heads by ``patch(over="heads",
    direction="noise")``, MLPs by ``ablate(mlps=[layer], mode="resample")`` (the MLP's output
    on each pair's own corrupted prompt). For ``mib_scores(level="node", node_scores=…)``."""
    from .._ablation import ablate
    from .._patching import patch

    heads = patch(model, pairs, over="heads", direction="noise", metric=metric, progress=progress)
    effects = heads.values - heads.baseline
    out = {
        f"L{layer}H{head}": float(effects[layer, head])
        for layer in range(effects.shape[0])
        for head in range(effects.shape[1])
    }
    layers = range(int(model.cfg.n_layers))
    for layer in tqdm(layers, desc="MLPs", disable=not progress, leave=False):
        res = ablate(model, pairs, mlps=[layer], mode="resample", metric=metric)
        out[f"MLP{layer}"] = float(res.ablated - res.clean)
    return out
