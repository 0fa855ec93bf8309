"""Features: sparse autoencoders and transcoders over a model's hooks, and what is built on
them (loaders, the feature explorer's statistics, feature circuits, steering)."""

from ._corpus import packed_tokens, reference_corpus
from ._explorer import (
    FeatureActivations,
    card,
    feature_activations,
    feature_id,
    logit_effects,
    parse_feature,
    search,
)
from ._loaders import check_saes, load_saes
from ._quality import sae_quality
from ._sae import ACTIVATIONS, SAE, SAESet, as_sae_set
from ._splice import ErrorEdit, LatentEdit, site_hooks, splice_hook, splice_hooks
from ._stats import (
    FeatureStats,
    SnippetCorpus,
    feature_stats,
    load_feature_stats,
    save_feature_stats,
)
from ._steer import Feature, SteerResult, steer
from ._supernodes import check_supernodes, suggest_supernodes

__all__ = [
    "ACTIVATIONS",
    "SAE",
    "ErrorEdit",
    "Feature",
    "FeatureActivations",
    "FeatureStats",
    "LatentEdit",
    "SAESet",
    "SnippetCorpus",
    "SteerResult",
    "as_sae_set",
    "card",
    "check_saes",
    "check_supernodes",
    "feature_activations",
    "feature_id",
    "feature_stats",
    "load_feature_stats",
    "load_saes",
    "logit_effects",
    "packed_tokens",
    "parse_feature",
    "reference_corpus",
    "sae_quality",
    "save_feature_stats",
    "search",
    "site_hooks",
    "splice_hook",
    "splice_hooks",
    "steer",
    "suggest_supernodes",
]
