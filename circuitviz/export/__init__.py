"""Static figures and file export: ``save(obj, path, **style)`` by extension.

``.svg``/``.pdf``/``.png`` are drawn with plotly and rendered by kaleido (headless Chromium);
``.html`` is a standalone page written by :mod:`circuitviz.export._html`. Every figure uses
one publication style (:func:`make_style`) and the one diverging colour map :data:`DIVERGING`.
"""

from ._graph_figure import graph_figure
from ._static import FORMATS, figure_of, render, save, save_many
from ._style import (
    CATEGORICAL,
    COLUMN_WIDTHS,
    DIVERGING,
    SEQUENTIAL,
    STYLE_KEYS,
    ExportError,
    Style,
    apply_style,
    make_style,
)


def patch_figure(result, **options):
    """Heatmap of a :class:`~circuitviz.PatchResult` (see ``export._figures``)."""
    from ._figures import patch_figure as build

    return build(result, **options)


def attention_figure(result, **options):
    """One head's attention pattern, or the head-role scores, of an ``AttentionResult``."""
    from ._figures import attention_figure as build

    return build(result, **options)


def ablation_figure(result, **options):
    """Top tokens before/after and the metric of an ``AblationResult``."""
    from ._figures import ablation_figure as build

    return build(result, **options)


def logit_lens_figure(result, **options):
    """Heatmap of a ``LogitLensResult``: answer probability, top token in each cell."""
    from ._logit_lens_figure import logit_lens_figure as build

    return build(result, **options)


def steering_figure(result, **options):
    """One prompt's continuation before and after steering, of a ``SteeringResult``."""
    from ._steering_figure import steering_figure as build

    return build(result, **options)


__all__ = [
    "CATEGORICAL",
    "COLUMN_WIDTHS",
    "DIVERGING",
    "FORMATS",
    "SEQUENTIAL",
    "STYLE_KEYS",
    "ExportError",
    "Style",
    "ablation_figure",
    "apply_style",
    "attention_figure",
    "figure_of",
    "graph_figure",
    "logit_lens_figure",
    "make_style",
    "patch_figure",
    "render",
    "save",
    "save_many",
    "steering_figure",
]
