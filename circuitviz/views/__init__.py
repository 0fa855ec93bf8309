"""Jupyter widgets (anywidget): attention, patching and circuit views, and ``explore``."""

from ._attention import AttentionView
from ._circuit import CircuitView
from ._explore import Explorer, explore
from ._patching import PatchingView

__all__ = ["AttentionView", "CircuitView", "Explorer", "PatchingView", "explore"]
