"""Jupyter widgets (anywidget): attention, patching, circuit, logit-lens, steering and feature
views, and ``explore``."""

from ._attention import AttentionView
from ._circuit import CircuitView
from ._explore import Explorer, explore
from ._feature import FeatureView
from ._logit_lens import LogitLensView
from ._patching import PatchingView
from ._steering import SteeringView

__all__ = [
    "AttentionView",
    "CircuitView",
    "Explorer",
    "FeatureView",
    "LogitLensView",
    "PatchingView",
    "SteeringView",
    "explore",
]
