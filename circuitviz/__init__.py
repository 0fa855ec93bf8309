"""circuitviz: explore transformer circuits inline in a notebook."""

from .engine import (
    AblationResult,
    AttentionResult,
    InputError,
    MetricError,
    ModelNotFoundError,
    PatchResult,
    PromptPairs,
    load_model,
    patch,
    tiny_model,
)

__version__ = "0.1.0"

__all__ = [
    "AblationResult",
    "AttentionResult",
    "InputError",
    "MetricError",
    "ModelNotFoundError",
    "PatchResult",
    "PromptPairs",
    "__version__",
    "load_model",
    "patch",
    "tiny_model",
]

from .engine import Graph, circuit  # noqa: E402

__all__ += ["Graph", "circuit"]
