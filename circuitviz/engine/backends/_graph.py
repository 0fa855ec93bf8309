"""The graph analyses on the seam: the EAP and EAP-IG graph (``circuit``) and the exact
evaluation of circuits behind ``Graph.faithfulness``, ``faithfulness_curve``,
``patch_edges`` and ``mib_scores`` (:func:`graph_context`).

Each is one request whatever its size: EAP(-IG) (every interpolation step's gradient, taken
at its own readout and summed on the server; two with a callable metric), and a batch of
circuits — every size of a curve — its circuits rows of the same passes.
Only readouts and ``[sender, receiver, pos]`` scores come back.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from .._metrics import MetricFn, bind_metric, check_metric
from .._pairs import InputError, PromptPairs, tokenize
from ..graph._faithfulness import Context, empty_mask, mask_source
from ..graph._layout import Layout
from ._analyses import _logits, _reduced, metric_grad, server_metric
from ._base import Run, backend_of, ported
from ._edges import pack


def circuit(
    model: Any,
    pairs: PromptPairs,
    *,
    method: str = "eap",
    steps: int = 1,
    per_position: bool = False,
    metric: str | MetricFn = "logit_diff",
) -> Any:
    """The EAP (``steps=1``) or EAP-IG graph as one request. The corrupted run keeps its
    senders (and embeddings) on the server; the clean run and each interpolated step
    (``α = (steps−1)/steps … 1/steps`` of the way from the corrupted to the clean
    embeddings, as the bridge's EAP-IG) take their receiver gradients there — the gradient of
    ``readout · weights``, with ``weights`` the metric's gradient at that run's own readout
    (:func:`._metric_program.weights`), is the metric's own — and sum them; only the
    readouts and the ``[sender, receiver, pos]`` scores come back. A callable metric is the
    user's code, which the server does not have: then a first request brings every run's
    readout, the gradients are taken here, and a second runs the graph."""
    from .._models import model_name
    from ..graph._graph import Graph

    check_metric(metric)
    with ported():
        tokens = tokenize(model, pairs, pad=True)  # mixed lengths: left-padded and masked
    layout = Layout.of(model)
    if layout.n_heads % layout.n_kv_heads:
        raise InputError(
            f"{layout.n_heads} query heads don't split into {layout.n_kv_heads} KV groups."
        )
    backend = backend_of(model)
    spec, short = _reduced(metric, tokens)
    mask = tokens.attention_mask  # every run carries it (None: one length)
    alphas = [k / steps for k in range(steps - 1, 0, -1)]  # after the clean run, α = 1
    corrupted = {"kind": "senders", "embed": True}
    if callable(metric):  # the readouts first, to take the user's metric's gradient here
        weights = _client_weights(backend, tokens, spec, short, metric, alphas, method)
    else:  # each run's own readout, against the clean run's (1) and the corrupted run's (0)
        weights = [server_metric(metric, short, "own" if k == 0 else 1, 0) for k in range(steps)]
    runs = [Run(tokens.corrupted, readout=spec, grad=corrupted, attention_mask=mask)]
    for k in range(steps):
        grad = {
            "kind": "eap",
            "weights": weights[k],
            "valid": layout.valid,
            "eps": _norm_eps(model),
            "steps": steps,
            "steps_left": steps - 1 - k,
        }
        if k:
            grad["alpha"] = alphas[k - 1]
        runs.append(Run(tokens.clean, readout=spec, grad=grad, attention_mask=mask))
    outs = backend.execute(runs, desc=method.upper(), progress=False)
    corr_l, clean_l = _logits(outs[0]), _logits(outs[1])
    bound = bind_metric(metric, short, clean_l, corr_l)
    for out in outs[2:]:  # each step's metric passes the client's checks (finite, shaped)
        bound.per_example(_logits(out))
    scores = outs[-1].readout["scores"]
    if not per_position:
        scores = scores.sum(2, keepdim=True)
    graph = Graph.build(
        layout=layout,
        scores=scores.cpu(),
        model=model_name(model),
        prompts=pairs.to_dict(),
        tokens=tokens.str_tokens,
        method=method,
        metric=bound.name,
        per_position=per_position,
        columns=tokens.columns if per_position else None,
        clean=bound(clean_l),
        corrupted=bound(corr_l),
        steps=steps,
    )
    if callable(metric):
        graph._cache["metric_fn"] = metric
    return graph


def _client_weights(backend, tokens, spec, short, metric, alphas, method) -> list:
    """A callable metric's gradient at the clean run's and each step's readout, taken here
    after a first request brings those readouts (the server cannot run the user's code)."""
    mask = tokens.attention_mask
    senders = {"kind": "senders", "embed": True} if alphas else {}
    first = [Run(tokens.corrupted, readout=spec, grad=senders, attention_mask=mask)]
    first.append(Run(tokens.clean, readout=spec, attention_mask=mask))
    for alpha in alphas:
        step = {"kind": "interpolated", "alpha": alpha}
        first.append(Run(tokens.clean, readout=spec, grad=step, attention_mask=mask))
    outs = backend.execute(first, desc=method.upper(), progress=False)
    bound = bind_metric(metric, short, _logits(outs[1]), _logits(outs[0]))
    return [metric_grad(bound, _logits(out)) for out in outs[1:]]


# ----------------------------------------------------------------------------- circuits


def _norm_eps(model: Any) -> float:
    config = model.lm.config
    return float(getattr(config, "rms_norm_eps", None) or config.layer_norm_epsilon)


def _circuit_spec(model: Any, layout: Any) -> dict:
    """What a circuits pass needs of the layout and the model, as plain data."""

    def span(layer: int, kind: str) -> tuple[int, int]:
        s = layout.receiver_slice(layer, kind)
        return (s.start, s.stop)

    layers = [
        (
            layout.n_senders_before(layer),
            layout.n_senders_before(layer, mlp=True),
            *(span(layer, kind) for kind in ("q", "k", "v", "mlp")),
        )
        for layer in range(layout.n_layers)
    ]
    return {
        "kind": "circuits",
        "valid": pack(layout.valid),
        "eps": _norm_eps(model),
        "layers": layers,
        "logits": layout.logits_receiver,
    }


def graph_context(model: Any, graph: Any, pairs: PromptPairs, ablation: str, metric: Any) -> Any:
    """``Graph``'s evaluation context on an nnsight model: the shared checks and cache of
    :func:`..graph._faithfulness.context`, with :class:`SeamContext` doing the passes."""
    from ..graph import _faithfulness

    with ported():
        return _faithfulness.context(graph, model, pairs, ablation, metric, build=_build)


def _build(graph: Any, model: Any, pairs: PromptPairs, ablation: str, metric: Any) -> Any:
    """A context whose baselines ride in its first request (see :class:`SeamContext`)."""
    layout = Layout.of(model)
    tokens = tokenize(model, pairs, pad=True)  # mixed lengths: left-padded and masked
    spec, short = _reduced(metric, tokens)
    ctx = SeamContext(layout, [], tokens, None, None, 0.0, 0.0)
    ctx.backend, ctx.spec, ctx.ablation = backend_of(model), spec, ablation
    ctx.d_model = int(getattr(model.cfg, "d_model", 0) or 0)
    ctx.template = _circuit_spec(model, layout)
    empty = empty_mask(graph)[None] if ablation == "mean" else None
    ctx.pending = (metric, short, empty)
    return ctx


@dataclass
class SeamContext(Context):
    """:class:`..graph._faithfulness.Context` whose circuits run as one request, every chunk
    of circuits rows of one pass.

    The first request also carries the baselines (the corrupted and clean readouts that bind
    the metric, and for ``"mean"`` the empty circuit's); until it has run, ``metric``,
    ``clean`` and ``reference`` are unset (every caller asks for circuits first). ``ref`` is
    the reference senders when they are kept here (locally: a circuit is then one pass), else
    ``None``: on NDIF they stay on the server (a large model's are too big to ship), and a
    senders run leads each request."""

    backend: Any = None  # the model's (called with an nnsight model object, it wraps it)
    spec: dict | None = None  # the readout
    template: dict | None = None  # a circuits run's plain data, but its masks and ref
    ablation: str = "corrupted"
    pending: tuple | None = None  # (metric, its tokens, the empty mask) until bound

    def _baselines(self) -> list[Run]:
        mean, local = self.ablation == "mean", not self.backend.remote
        senders = {"kind": "senders", "bring": local}
        tokens, spec, mask = self.tokens, self.spec or {}, self.tokens.attention_mask
        runs = [
            Run(tokens.corrupted, readout=spec, grad={} if mean else senders, attention_mask=mask),
            Run(tokens.clean, readout=spec, grad=senders if mean else {}, attention_mask=mask),
        ]
        if mean:  # the empty circuit: every edge carries the clean senders' batch mean
            empty = {**(self.template or {}), "masks": pack(self.pending[2])}
            runs.append(Run(tokens.clean, readout=spec, grad=empty, attention_mask=mask))
        return runs

    def _bind(self, outs: list) -> None:
        metric, short, _ = self.pending
        mean = self.ablation == "mean"
        corr_l, clean_l = _logits(outs[0]), _logits(outs[1])
        if not self.backend.remote:
            ref = outs[1 if mean else 0].returned["senders"]  # [sender, batch, pos, d_model]
            if mean:  # each position's mean over the prompts that have a token there
                ref = self.tokens.masked_mean(ref.permute(1, 2, 0, 3)).permute(2, 0, 1, 3)
            self.ref = ref
        self.metric = bind_metric(metric, short, clean_l, corr_l)
        self.clean = self.metric(clean_l)
        self.reference = self.metric(_logits(outs[2])) if mean else self.metric(corr_l)
        self.pending = None

    def with_ref(self, runs: list[Run]) -> list[Run]:
        """``runs`` with the reference their circuits read: kept here, or from a senders run
        (this request's, or one put first)."""
        mean = self.ablation == "mean"
        ref: Any = self.ref if self.ref is not None else ("mean" if mean else "rows")
        kinds = [r.grad.get("kind") for r in runs]
        if self.ref is None and "circuits" in kinds and "senders" not in kinds:
            lead = self.tokens.clean if mean else self.tokens.corrupted
            mask = self.tokens.attention_mask
            runs = [Run(lead, grad={"kind": "senders"}, attention_mask=mask), *runs]
        weights = self.tokens.mean_weights() if mean else None
        for run in runs:
            if run.grad.get("kind") == "circuits":
                run.grad["ref"] = ref
                if isinstance(ref, str) and weights is not None:  # the mean, on the server
                    run.grad["mean_weights"] = weights
        return runs

    def metrics(
        self,
        model: Any,
        masks: torch.Tensor | Callable[[int, int], torch.Tensor],
        n: int | None = None,
        progress: bool = False,
    ) -> list[float]:
        masks, n = mask_source(masks, n)
        first = self._baselines() if self.pending else []
        runs = []
        for start in range(0, n, self.circuits_per_pass):
            chunk = masks(start, min(n, start + self.circuits_per_pass))
            tokens = self.tokens.clean.repeat(chunk.shape[0], 1)
            mask = self.tokens.attention_mask
            mask = None if mask is None else mask.repeat(chunk.shape[0], 1)
            grad = {**(self.template or {}), "masks": pack(chunk)}
            runs.append(Run(tokens, readout=self.spec or {}, grad=grad, attention_mask=mask))
        outs = self.backend.execute(
            self.with_ref([*first, *runs]), desc="circuits", progress=progress
        )
        if first:
            self._bind(outs[-len(runs) - len(first) : -len(runs)])
        values = []
        for out in outs[-len(runs) :]:
            logits = _logits(out)
            per_circuit = logits.reshape(-1, self.tokens.batch, logits.shape[-1])
            values += [self.metric(lg) for lg in per_circuit]
        return values
