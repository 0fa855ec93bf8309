"""Metrics on the final-position logits of a batch.

A metric maps ``logits: [batch, d_vocab]`` (final position only) to one value per example,
``[batch]``; analyses report the batch mean, as TransformerLens's patching does.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._pairs import InputError, Tokens

MetricFn = Callable[[torch.Tensor], torch.Tensor | float]
METRICS = ("logit_diff", "normalized_logit_diff", "answer_prob", "kl")


class MetricError(ValueError):
    """A metric returned something unusable (NaN, wrong shape)."""


def logit_diff(logits: torch.Tensor, answers: torch.Tensor, wrong: torch.Tensor) -> torch.Tensor:
    rows = torch.arange(logits.shape[0], device=logits.device)
    return logits[rows, answers] - logits[rows, wrong]


@dataclass(eq=False)
class Metric:
    """A metric bound to one batch: its answer tokens and its clean/corrupted baselines."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]  # [batch, d_vocab] -> [batch]

    def per_example(self, logits: torch.Tensor) -> torch.Tensor:
        out = torch.as_tensor(self.fn(logits), dtype=torch.float32, device=logits.device)
        if out.ndim == 0:
            out = out.expand(logits.shape[0])
        if out.shape != (logits.shape[0],):
            raise MetricError(
                f"Metric {self.name!r} returned shape {tuple(out.shape)}; it must return a "
                f"scalar or one value per example ({logits.shape[0]},)."
            )
        return out

    def __call__(self, logits: torch.Tensor) -> float:
        value = float(self.per_example(logits).mean())
        if math.isnan(value):
            raise MetricError(
                f"Metric {self.name!r} returned NaN. Check it for 0/0 — e.g. a normalised "
                "metric whose clean and corrupted baselines are equal."
            )
        return value


def bind_metric(
    metric: str | MetricFn,
    tokens: Tokens,
    clean_logits: torch.Tensor,
    corrupted_logits: torch.Tensor,
) -> Metric:
    """Resolve a metric name or callable for one batch.

    ``clean_logits`` and ``corrupted_logits`` are the unpatched final-position logits
    ``[batch, d_vocab]``; KL and the normalised logit difference need them.
    """
    a, w = tokens.answers, tokens.wrong_answers
    if callable(metric):
        name = getattr(metric, "__name__", "custom")
        return Metric(name, metric)
    if metric == "logit_diff":
        return Metric(metric, lambda lg: logit_diff(lg, a, w))
    if metric == "normalized_logit_diff":
        clean = logit_diff(clean_logits, a, w).mean()
        corrupted = logit_diff(corrupted_logits, a, w).mean()
        return Metric(metric, lambda lg: (logit_diff(lg, a, w) - corrupted) / (clean - corrupted))
    if metric == "answer_prob":
        return Metric(
            metric,
            lambda lg: lg.float().softmax(-1)[torch.arange(lg.shape[0], device=lg.device), a],
        )
    if metric == "kl":
        clean_logp = clean_logits.float().log_softmax(-1)

        def kl(lg: torch.Tensor) -> torch.Tensor:
            logp = lg.float().log_softmax(-1)
            return (clean_logp.exp() * (clean_logp - logp)).sum(-1)

        return Metric(metric, kl)
    raise InputError(f"Unknown metric {metric!r}: use one of {METRICS} or a callable.")
