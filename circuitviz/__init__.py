"""circuitviz: explore transformer circuits inline in a notebook.

The engine (``circuitviz.engine``) is pure torch over TransformerLens bridges; the views
(``circuitviz.views``) are thin anywidget classes over its results.
"""

from . import tasks
from .engine import (
    AblationResult,
    AttentionResult,
    FeatureGraph,
    Graph,
    HeadRoles,
    InputError,
    LogitLensResult,
    MetricError,
    MIBScores,
    ModelNotFoundError,
    PatchResult,
    PromptPairs,
    RefusalDirection,
    SteeringResult,
    SteerResult,
    ablate,
    attention,
    attribution_patch,
    check_saes,
    circuit,
    head_roles,
    load_model,
    load_saes,
    logit_attribution,
    logit_lens,
    mib_scores,
    patch,
    path_patch,
    refusal_direction,
    refusal_instructions,
    steer,
    steer_refusal,
    tiny_model,
)
from .engine.features import feature_stats, load_feature_stats, save_feature_stats

__version__ = "0.1.0"

__all__ = [
    "AblationResult",
    "AttentionResult",
    "AttentionView",
    "CircuitView",
    "FeatureGraph",
    "FeatureView",
    "Graph",
    "HeadRoles",
    "InputError",
    "LogitLensResult",
    "LogitLensView",
    "MIBScores",
    "MetricError",
    "ModelNotFoundError",
    "PatchResult",
    "PatchingView",
    "PromptPairs",
    "RefusalDirection",
    "SteerResult",
    "SteeringResult",
    "SteeringView",
    "__version__",
    "ablate",
    "attention",
    "attribution_patch",
    "check_saes",
    "circuit",
    "explore",
    "feature_stats",
    "head_roles",
    "load_feature_stats",
    "load_model",
    "load_saes",
    "logit_attribution",
    "logit_lens",
    "mib_scores",
    "patch",
    "path_patch",
    "refusal_direction",
    "refusal_instructions",
    "save_feature_stats",
    "steer",
    "steer_refusal",
    "tasks",
    "tiny_model",
]

_VIEWS = (
    "AttentionView",
    "CircuitView",
    "FeatureView",
    "LogitLensView",
    "PatchingView",
    "SteeringView",
    "explore",
)


def __getattr__(name: str):
    # The widget stack (anywidget, ipywidgets) loads on first use, so scripts and GPU jobs
    # that only run the engine never import it.
    if name in _VIEWS:
        from . import views

        return getattr(views, name)
    raise AttributeError(f"module 'circuitviz' has no attribute {name!r}")
