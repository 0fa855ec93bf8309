"""The built-in metrics' formulas, torch only: :func:`circuitviz.engine._metrics.bind_metric`
binds them on the client, and a request takes their gradient inside the trace (on NDIF too:
shipped by value with :mod:`._program`), so a gradient analysis needs no round trip to the
client between its forward and backward passes.

Each formula maps final-position logits ``[batch, d_vocab]`` — or a readout's reduced row
(the answers' logits and one log-sum-exp of the rest, :func:`._program.readout`) — to one
value per example.
"""

from __future__ import annotations

import torch

#: The metrics whose formulas live here (a callable metric is the user's own code).
BUILT_IN = ("logit_diff", "normalized_logit_diff", "answer_prob", "kl")


def logit_diff(logits: torch.Tensor, answers: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    # Over several GPUs the logits come from the last one, the answer ids from the first.
    here = logits.device
    rows = torch.arange(logits.shape[0], device=here)
    return logits[rows, answers.to(here)] - logits[rows, wrong.to(here)]


def baselines(
    answers: torch.Tensor,
    wrong: torch.Tensor,
    clean_logits: torch.Tensor,
    corrupted_logits: torch.Tensor,
) -> tuple[float, float]:
    """The clean and corrupted mean logit differences the normalised metric is scaled by."""
    clean = float(logit_diff(clean_logits, answers, wrong).float().mean())
    corrupted = float(logit_diff(corrupted_logits, answers, wrong).float().mean())
    return clean, corrupted


def formula(
    name: str,
    answers: torch.Tensor,
    wrong: torch.Tensor,
    clean_logits: torch.Tensor,
    corrupted_logits: torch.Tensor,
):
    """The per-example function of built-in metric ``name`` for one batch. The normalised
    metric's gap is not checked here (``bind_metric`` refuses a degenerate one)."""
    a, w = answers, wrong
    if name == "logit_diff":
        return lambda lg: logit_diff(lg, a, w)
    if name == "normalized_logit_diff":
        clean, corrupted = baselines(a, w, clean_logits, corrupted_logits)
        gap = clean - corrupted
        return lambda lg: (logit_diff(lg, a, w) - corrupted) / gap
    if name == "answer_prob":
        return lambda lg: lg.float().softmax(-1)[
            torch.arange(lg.shape[0], device=lg.device), a.to(lg.device)
        ]
    if name == "kl":
        clean_logp = clean_logits.float().log_softmax(-1)

        def kl(lg: torch.Tensor) -> torch.Tensor:
            logp = lg.float().log_softmax(-1)
            ref = clean_logp.to(logp.device)
            return (ref.exp() * (ref - logp)).sum(-1)

        return kl
    raise ValueError(f"unknown metric {name!r}")


def _row(out: dict) -> torch.Tensor:
    return out["sel"] if "sel" in out else out["full"]


def weights(spec, own: dict, saved: dict) -> torch.Tensor:
    """``∂ mean(metric) / ∂ readout`` at this run's readout ``own`` (what the backward pass
    multiplies the readout by). ``spec`` is that tensor itself (computed by the client: a
    callable metric), or ``{"metric", "answers", "wrong", "clean", "corrupted"}`` with
    ``clean`` / ``corrupted`` the index of an earlier run of the request whose readout is
    that baseline (``saved[("readout", i)]``), or ``"own"`` for this run's."""
    if isinstance(spec, torch.Tensor):
        return spec

    def row(ref) -> torch.Tensor:
        return _row(own if ref == "own" else saved[("readout", ref)])

    fn = formula(
        spec["metric"], spec["answers"], spec["wrong"], row(spec["clean"]), row(spec["corrupted"])
    )
    with torch.enable_grad():
        x = _row(own).detach().clone().requires_grad_(True)
        value = torch.as_tensor(fn(x)).to(torch.float32).mean()  # as Metric.per_example
        (grad,) = torch.autograd.grad(value, x)
    return grad
