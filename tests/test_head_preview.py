"""CircuitView's head preview (the ``head_pattern`` message): the pattern is the one on the
clean prompt whose positions are the graph's columns — with mixed-length pairs the longest,
not ``pairs.clean[0]``.

Reference: ``cv.attention`` on that prompt (itself checked against TransformerLens's
patterns in the attention tests); the uint8 preview is its pattern ×255, rounded.
"""

from __future__ import annotations

import numpy as np
import torch

import circuitviz as cv
from circuitviz.engine import has_hooks


def test_the_head_preview_shows_the_prompt_whose_positions_are_the_columns(tiny):
    pairs = cv.PromptPairs(  # the second prompt is the longest: its tokens are the columns
        ["t1 t2 t3", "t9 t8 t7 t6 t9 t8"],
        ["t5 t6 t7", "t1 t2 t3 t4 t1 t2"],
        [" t1", " t7"],
        [" t5", " t3"],
    )
    graph = cv.circuit(tiny, pairs, progress=False)
    view = cv.CircuitView(tiny, pairs, graph=graph)
    sent: list = []
    view.send = lambda content, buffers=None: sent.append((content, buffers))
    view._handle_custom_msg({"type": "head_pattern", "head": "L1H1", "request": "head:L1H1"})
    (reply, (data,)), *_ = sent
    assert reply["type"] == "head_pattern" and reply["request"] == "head:L1H1"
    columns = cv.engine._pairs.tokenize(tiny, pairs, pad=True).str_tokens
    assert reply["tokens"] == list(columns) == tiny.to_str_tokens(pairs.clean[1])
    ref = cv.attention(tiny, pairs.clean[1]).patterns[1, 1].float().clamp(0, 1)
    got = np.frombuffer(data, dtype=np.uint8).reshape(len(columns), len(columns))
    assert torch.equal(torch.from_numpy(got.copy()), (ref * 255).round().to(torch.uint8))
    assert set(reply["roles"]) and not has_hooks(tiny)


def test_the_column_prompt_is_the_first_longest(tiny):
    """What the head preview and the clamp panel's steer both use."""
    from circuitviz.views._head_preview import column_prompt

    pairs = cv.PromptPairs(
        ["t1 t2", "t4 t3 t2 t1 t4", "t1 t2 t3 t4 t1"],
        ["t5 t6", "t1 t2 t3 t4 t1", "t9 t8 t7 t6 t9"],
        [" t3", " t3", " t2"],
        [" t7", " t7", " t8"],
    )
    assert column_prompt(tiny, pairs) == pairs.clean[1]  # the first of the longest
