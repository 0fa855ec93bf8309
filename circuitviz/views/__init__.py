"""Jupyter widgets (anywidget): attention, patching, circuit and steering views, and
``explore``."""

from ._attention import AttentionView
from ._circuit import CircuitView
from ._explore import Explorer, explore
from ._patching import PatchingView
from ._steering import SteeringView

__all__ = ["AttentionView", "CircuitView", "Explorer", "PatchingView", "SteeringView", "explore"]
