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

# The built-in formulas live in a torch-only module, shipped to NDIF with the requests.
from .backends._metric_program import baselines, formula, logit_diff  # noqa: F401

MetricFn = Callable[[torch.Tensor], torch.Tensor | float]
METRICS = ("logit_diff", "normalized_logit_diff", "answer_prob", "kl")


class MetricError(ValueError):
    """A metric returned something unusable (NaN, ±inf, wrong shape), or a normalised metric
    has no gap between its clean and corrupted baselines to normalise by."""


#: Clean and corrupted baselines closer than this (relative to their size, at least 1) leave
#: no gap to normalise by: float32 logits carry ~7 digits, so a smaller gap is noise.
GAP_RTOL = 1e-5


def gap_is_degenerate(clean: float, corrupted: float) -> bool:
    """Whether ``clean − corrupted`` is too small (or not finite) to divide by."""
    gap = clean - corrupted
    return not (math.isfinite(gap) and abs(gap) > GAP_RTOL * max(1.0, abs(clean), abs(corrupted)))


def check_gap(clean: float, corrupted: float, what: str) -> float:
    """The gap ``clean − corrupted`` that ``what`` divides by; :class:`MetricError` when it is
    degenerate (:func:`gap_is_degenerate`). The one rule every normalised quantity uses."""
    if gap_is_degenerate(clean, corrupted):
        raise MetricError(
            f"{what} divides by the gap between the clean baseline ({clean:.6g}) and the "
            f"corrupted baseline ({corrupted:.6g}), but they are equal (within {GAP_RTOL:g} "
            "relative): the corruption does not change the metric. Use corrupted prompts that "
            "change the answer (e.g. swap the answer-carrying word), or an unnormalised metric "
            "such as 'logit_diff'."
        )
    return clean - corrupted


@dataclass(eq=False)
class Metric:
    """A metric bound to one batch: its answer tokens and its clean/corrupted baselines."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]  # [batch, d_vocab] -> [batch]

    def per_example(self, logits: torch.Tensor) -> torch.Tensor:
        """The metric of each example, ``[batch]``; the one place its values are checked."""
        raw = self.fn(logits)
        try:
            out = torch.as_tensor(raw, device=logits.device)
        except (TypeError, ValueError, RuntimeError):
            out = None
        if out is None or out.dtype.is_complex:
            raise MetricError(
                f"Metric {self.name!r} returned {type(raw).__name__}; it must return a number "
                f"or a tensor of one value per example ({logits.shape[0]},)."
            )
        out = out.to(torch.float32) if out.dtype != torch.float32 else out
        if out.ndim == 0:
            out = out.expand(logits.shape[0])
        if out.shape != (logits.shape[0],):
            raise MetricError(
                f"Metric {self.name!r} returned shape {tuple(out.shape)}; it must return a "
                f"scalar or one value per example ({logits.shape[0]},)."
            )
        if not bool(torch.isfinite(out.detach()).all()):
            bad = sorted({str(float(v)) for v in out.detach()[~torch.isfinite(out.detach())]})
            raise MetricError(
                f"Metric {self.name!r} returned a non-finite value ({', '.join(bad)}). Check it "
                "for 0/0, log(0) or overflow; a metric must give a finite number per example."
            )
        return out

    def __call__(self, logits: torch.Tensor) -> float:
        """The batch mean of :meth:`per_example`."""
        return float(self.per_example(logits).mean())


def check_metric(metric: object) -> str | MetricFn:
    """``metric`` if it is a known metric name or a callable, else an :class:`InputError`."""
    if callable(metric) or (isinstance(metric, str) and metric in METRICS):
        return metric  # type: ignore[return-value]
    raise InputError(
        f"Unknown metric {metric!r}: use one of {METRICS} or a callable of final-position "
        "logits [batch, d_vocab] returning one value per example."
    )


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
    check_metric(metric)
    a, w = tokens.answers, tokens.wrong_answers
    if callable(metric):
        name = getattr(metric, "__name__", "custom")
        return Metric(name, metric)
    # The formulas are torch only, so a request can take their gradient on NDIF too.
    if metric == "normalized_logit_diff":
        clean, corrupted = baselines(a, w, clean_logits, corrupted_logits)
        check_gap(clean, corrupted, "metric='normalized_logit_diff'")
    if metric in METRICS:
        return Metric(metric, formula(metric, a, w, clean_logits, corrupted_logits))
    raise AssertionError(metric)  # pragma: no cover - check_metric is closed
