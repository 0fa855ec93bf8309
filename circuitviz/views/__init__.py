"""Jupyter widgets (anywidget): attention, patching, circuit and logit-lens views, and
``explore``."""

from ._attention import AttentionView
from ._circuit import CircuitView
from ._explore import Explorer, explore
from ._logit_lens import LogitLensView
from ._patching import PatchingView

__all__ = ["AttentionView", "CircuitView", "Explorer", "LogitLensView", "PatchingView", "explore"]
