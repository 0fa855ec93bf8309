"""Features: sparse autoencoders and transcoders over a model's hooks, and what is built on
them (loaders, the feature explorer's statistics, feature circuits, steering)."""

from ._sae import ACTIVATIONS, SAE, SAESet, as_sae_set
from ._splice import LatentEdit, splice_hook, splice_hooks

__all__ = [
    "ACTIVATIONS",
    "SAE",
    "LatentEdit",
    "SAESet",
    "as_sae_set",
    "splice_hook",
    "splice_hooks",
]
