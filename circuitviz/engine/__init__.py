"""The analysis engine: pure torch over TransformerLens bridges; never imports widgets."""

from ._hooks import has_hooks, hooks
from ._metrics import METRICS, Metric, MetricError
from ._models import ModelNotFoundError, load_model
from ._pairs import InputError, PromptPairs, Tokens, tokenize
from ._patching import TARGETS, patch
from ._results import AblationResult, AttentionResult, PatchResult, TopTokens
from ._tiny import tiny_model

__all__ = [
    "METRICS",
    "TARGETS",
    "AblationResult",
    "AttentionResult",
    "InputError",
    "Metric",
    "MetricError",
    "ModelNotFoundError",
    "PatchResult",
    "PromptPairs",
    "Tokens",
    "TopTokens",
    "has_hooks",
    "hooks",
    "load_model",
    "patch",
    "tiny_model",
    "tokenize",
]

# Attribution graphs (circuitviz.engine.graph).
from .graph import Edge, Graph, Node, circuit, edge_patch

__all__ += ["Edge", "Graph", "Node", "circuit", "edge_patch"]
