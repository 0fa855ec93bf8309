"""Export hardening: text from data is never plotly markup (no live link or injected tag in an
SVG someone else's file produced), and saving keeps the permissions of the file it replaces."""

from __future__ import annotations

import os
import re
import stat
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from circuitviz.engine._components import Component
from circuitviz.engine._results import AblationResult, PatchResult, TopTokens
from circuitviz.export import graph_figure, save
from circuitviz.export._figures import ablation_figure, patch_figure
from circuitviz.export._static import write_atomically
from circuitviz.export._style import text_label

LINK = '<a href="javascript:alert(1)">x</a>'
BOLD = "<b>bold</b>"
#: Markup plotly interprets in text (svg_text_utils): every one must come out literally.
MARKUP = [
    LINK,
    BOLD,
    "<i>it</i>",
    "a<br>b",
    "H<sub>2</sub>O",
    "x<sup>2</sup>",
    '<span style="font-size:80px">big</span>',
    "<em>e</em>",
    "&lt;amp&gt;",
    "line\nbreak",
]
#: Markup the figure builders write themselves (hover templates); everything else is data.
OWN_MARKUP = re.compile(r"<br>|<extra></extra>")


def hostile_patch(text: str) -> PatchResult:
    tokens = ["<bos>", LINK, BOLD, text]
    n = len(tokens)
    return PatchResult(
        values=torch.linspace(-1, 1, 2 * n).reshape(2, n),
        axes=("layer", "pos"),
        labels={
            "layer": [f"L0 {BOLD}", f"L1 {text}"],
            "pos": [f"{i}: {t}" for i, t in enumerate(tokens)],
        },
        target=f"resid_pre{LINK}",
        direction="denoise",
        method=f"activation{BOLD}",
        metric=f"{LINK}{text}",
        clean=1.0,
        corrupted=0.0,
        tokens=tokens,
        model_name=f"{LINK} model",
    )


def hostile_graph(text: str) -> dict:
    return {
        "schema": "circuitviz.graph/1",
        "model": LINK,
        "method": f"eap{BOLD}",
        "metric": f"{LINK}{text}",
        "per_position": True,
        "n_layers": 1,
        "n_heads": 2,
        "tokens": [LINK, text],
        "nodes": [
            {
                "id": "EMBED:P0",
                "type": "embed",
                "layer": -1,
                "pos": 0,
                "score": None,
                "label": LINK,
            },
            {
                "id": "L0H1:P1",
                "type": "head",
                "layer": 0,
                "head": 1,
                "pos": 1,
                "score": 0.5,
                "label": f"{BOLD}{text}",
            },
            {"id": f"<b>{text[:20]}</b>", "type": "mlp", "layer": 0, "pos": 1, "score": -0.3},
            {
                "id": "LOGITS:P1",
                "type": "logits",
                "layer": 1,
                "pos": 1,
                "score": None,
                "label": LINK,
            },
        ],
        "edges": [
            {"source": "EMBED:P0", "target": "L0H1:P1", "input": "v", "weight": 0.4},
            {"source": "L0H1:P1", "target": "LOGITS:P1", "input": "logits", "weight": 1.0},
        ],
    }


def hostile_ablation(text: str) -> AblationResult:
    tokens = [LINK, BOLD, text]
    return AblationResult(
        targets=(Component(0, 1),),
        mode=f"zero{BOLD}",
        metric=f"{LINK}{text}",
        clean=1.0,
        corrupted=0.0,
        ablated=0.5,
        per_prompt={"clean": [1.0], "corrupted": [0.0], "ablated": [0.5]},
        top_before=TopTokens(tokens, [0.5, 0.3, 0.2]),
        top_after=TopTokens(tokens[::-1], [0.4, 0.4, 0.2]),
    )


def strings(obj) -> list[str]:
    """Every string in a figure's JSON (titles, ticks, names, hover templates, custom data)."""
    if isinstance(obj, str):
        return [obj]
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, (list, tuple)):
        return [s for v in obj for s in strings(v)]
    return []


def assert_no_data_markup(fig) -> None:
    for s in strings(fig.to_plotly_json()):
        assert "<" not in OWN_MARKUP.sub("", s), f"unescaped markup in figure text {s[:120]!r}"


@settings(max_examples=25, deadline=None)
@given(text=st.one_of(st.sampled_from(MARKUP), st.text(max_size=30)))
def test_no_figure_carries_markup_from_data(text):
    """Property: whatever the metric, labels, tokens, node ids and names hold, no string in the
    figure's JSON has a tag plotly could interpret, and the text is still there, escaped."""
    for fig in (
        patch_figure(hostile_patch(text)),
        graph_figure(hostile_graph(text)),
        ablation_figure(hostile_ablation(text)),
    ):
        assert_no_data_markup(fig)
        assert any(text_label(LINK) in s for s in strings(fig.to_plotly_json()))


def svg_text(path: Path) -> str:
    return " ".join(ET.parse(path).getroot().itertext())


@pytest.mark.parametrize(
    "make",
    [hostile_patch, hostile_graph, hostile_ablation],
    ids=["patch", "graph", "ablation"],
)
def test_exported_svg_shows_hostile_text_literally(make, tmp_path):
    path = save(make("<i>it</i>"), tmp_path / "hostile.svg")
    raw = path.read_text()
    root = ET.parse(path).getroot()  # parses as XML
    assert not [el for el in root.iter() if el.tag.split("}")[-1] in ("a", "script", "b", "i")]
    assert not [v for el in root.iter() for v in el.attrib.values() if "javascript:" in v]
    assert "<a" not in raw and "<b>" not in raw and "<i>" not in raw
    assert "font-weight:bold" not in raw and "font-style:italic" not in raw
    text = svg_text(path)
    assert LINK in text  # the link's markup is shown as text, not followed
    assert BOLD in text or "<i>it</i>" in text


def test_explicit_title_stays_the_callers_plotly_text():
    fig = patch_figure(hostile_patch("x"), title="Two<br>lines")
    assert fig.layout.title.text == "Two<br>lines"


# ----------------------------------------------------------------------------- file modes


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o604])
def test_saving_over_a_file_keeps_its_mode(mode, tmp_path):
    target = tmp_path / "map.svg"
    target.write_text("old")
    os.chmod(target, mode)
    save(hostile_patch("x"), target)
    assert stat.S_IMODE(target.stat().st_mode) == mode
    assert target.read_text().startswith("<svg")
    assert [p.name for p in tmp_path.iterdir()] == ["map.svg"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_a_new_file_gets_the_mode_open_would_give(umask, tmp_path):
    old = os.umask(umask)
    try:
        write_atomically(tmp_path / "new.svg", lambda tmp: tmp.write_text("<svg/>"))
        with open(tmp_path / "plain.svg", "w") as f:
            f.write("<svg/>")
    finally:
        os.umask(old)
    got = stat.S_IMODE((tmp_path / "new.svg").stat().st_mode)
    assert got == stat.S_IMODE((tmp_path / "plain.svg").stat().st_mode) == 0o666 & ~umask


def test_a_failed_write_keeps_the_old_file_and_its_mode(tmp_path):
    target = tmp_path / "map.svg"
    target.write_text("old figure")
    os.chmod(target, 0o600)

    def broken(tmp: Path) -> None:
        tmp.write_text("half")
        raise RuntimeError("renderer crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        write_atomically(target, broken)
    assert target.read_text() == "old figure" and stat.S_IMODE(target.stat().st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["map.svg"]
