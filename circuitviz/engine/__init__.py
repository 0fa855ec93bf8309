"""The analysis engine: pure torch over TransformerLens bridges; never imports widgets."""

from ._ablation import MODES, ablate
from ._attention import ROLES, attention
from ._attribution import attribution_patch
from ._hooks import has_hooks, hooks
from ._logit_attribution import logit_attribution
from ._logit_lens import LogitLensResult, logit_lens
from ._metrics import METRICS, Metric, MetricError
from ._models import ModelNotFoundError, load_model
from ._pairs import InputError, PromptPairs, Tokens, tokenize
from ._patching import TARGETS, patch
from ._path_patching import path_patch
from ._refusal import (
    REFUSAL_PHRASES,
    Generation,
    RefusalDirection,
    SteeringResult,
    refusal_direction,
    refusal_instructions,
    steer_refusal,
)
from ._results import AblationResult, AttentionResult, PatchResult, TopTokens
from ._roles import HEAD_ROLES, HeadRoles, head_roles
from ._tiny import tiny_model
from .features import SteerResult, check_saes, load_saes, steer
from .graph import (
    Edge,
    FeatureGraph,
    Graph,
    MIBScores,
    Node,
    circuit,
    edge_patch,
    exact_node_scores,
    mib_scores,
)

__all__ = [
    "HEAD_ROLES",
    "METRICS",
    "MODES",
    "REFUSAL_PHRASES",
    "ROLES",
    "TARGETS",
    "AblationResult",
    "AttentionResult",
    "Edge",
    "FeatureGraph",
    "Generation",
    "Graph",
    "HeadRoles",
    "InputError",
    "LogitLensResult",
    "MIBScores",
    "Metric",
    "MetricError",
    "ModelNotFoundError",
    "Node",
    "PatchResult",
    "PromptPairs",
    "RefusalDirection",
    "SteerResult",
    "SteeringResult",
    "Tokens",
    "TopTokens",
    "ablate",
    "attention",
    "attribution_patch",
    "check_saes",
    "circuit",
    "edge_patch",
    "exact_node_scores",
    "has_hooks",
    "head_roles",
    "hooks",
    "load_model",
    "load_saes",
    "logit_attribution",
    "logit_lens",
    "mib_scores",
    "patch",
    "path_patch",
    "refusal_direction",
    "refusal_instructions",
    "steer",
    "steer_refusal",
    "tiny_model",
    "tokenize",
]
