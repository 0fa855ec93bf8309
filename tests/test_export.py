"""Static export: SVG/PDF/PNG through kaleido, publication style, graph layout, bad input.

Kaleido starts Chromium once per process (``circuitviz.export`` keeps its server), so the
renders here cost well under a second each after the first.
"""

from __future__ import annotations

import html
import itertools
import os
import random
import re
import shutil
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

import circuitviz
from circuitviz.engine._results import PatchResult
from circuitviz.export import (
    DIVERGING,
    ExportError,
    _static,
    figure_of,
    graph_figure,
    make_style,
    render,
    save,
)
from circuitviz.export._style import NEGATIVE, POSITIVE

HOSTILE = "<img src=x onerror=alert(1)>"
PAIRS = circuitviz.PromptPairs(
    ["t5 t17 t3 t9 t5 t17", "t8 t21 t3 t9 t8 t21"],
    ["t5 t18 t3 t9 t5 t18", "t8 t22 t3 t9 t8 t22"],
    ["t3", "t3"],
    ["t9", "t9"],
)


# ----------------------------------------------------------------------------- helpers


def svg_text(path: Path) -> str:
    """All text of an SVG, which must parse as XML."""
    root = ET.parse(path).getroot()
    return " ".join(t for t in root.itertext())


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    return struct.unpack(">II", data[16:24])


def png_pixels(data: bytes) -> np.ndarray:
    """Decode an 8-bit RGB/RGBA/grey PNG (what Chromium writes) to ``[h, w, channels]``."""
    width, height = png_size(data)
    depth, colour = data[24], data[25]
    assert depth == 8, depth
    channels = {0: 1, 2: 3, 4: 2, 6: 4}[colour]
    chunks, pos = [], 8
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            chunks.append(data[pos + 8 : pos + 8 + length])
        pos += 12 + length
    raw = zlib.decompress(b"".join(chunks))
    stride = width * channels
    out = np.zeros((height, stride), dtype=np.int32)
    prev = np.zeros(stride, dtype=np.int32)
    for y in range(height):
        f = raw[y * (stride + 1)]
        line = np.frombuffer(raw, np.uint8, stride, y * (stride + 1) + 1).astype(np.int32)
        if f == 0:
            cur = line
        elif f == 2:
            cur = (line + prev) % 256
        else:  # Sub, Average, Paeth depend on the left pixel: decode byte by byte
            cur = np.zeros(stride, dtype=np.int32)
            for x in range(stride):
                a = cur[x - channels] if x >= channels else 0
                b, c = prev[x], (prev[x - channels] if x >= channels else 0)
                if f == 1:
                    pred = a
                elif f == 3:
                    pred = (a + b) // 2
                else:
                    p = a + b - c
                    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                    pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
                cur[x] = (line[x] + pred) % 256
        out[y] = cur
        prev = cur
    return out.reshape(height, width, channels)


def pdf_page_pixels(path: Path, tmp_path: Path, dpi: int = 50) -> np.ndarray:
    """The PDF's first page rendered grey by pdftoppm (PGM is trivial to read)."""
    if shutil.which("pdftoppm") is None:
        pytest.skip("pdftoppm is missing: apt-get install poppler-utils")
    stem = tmp_path / "page"
    subprocess.run(
        ["pdftoppm", "-r", str(dpi), "-gray", "-f", "1", "-l", "1", str(path), str(stem)],
        check=True,
        capture_output=True,
    )
    (pgm,) = tmp_path.glob("page*.pgm")
    data = pgm.read_bytes()
    magic, width, height, maxval, rest = data.split(maxsplit=4)
    assert magic == b"P5" and int(maxval) == 255
    return np.frombuffer(rest[: int(width) * int(height)], np.uint8).reshape(
        int(height), int(width)
    )


def hand_patch_result(tokens: list[str], values: torch.Tensor | None = None) -> PatchResult:
    n = len(tokens)
    values = torch.linspace(-1, 1, 2 * n).reshape(2, n) if values is None else values
    return PatchResult(
        values=values,
        axes=("layer", "pos"),
        labels={"layer": ["L0", "L1"], "pos": [f"{i}: {t}" for i, t in enumerate(tokens)]},
        target="resid_pre",
        direction="denoise",
        method="activation",
        metric="logit_diff",
        clean=1.0,
        corrupted=0.0,
        tokens=tokens,
    )


def big_graph(n_layers: int = 30, n_heads: int = 9, n_edges: int = 1200, seed: int = 0) -> dict:
    """A hand-built ``circuitviz.graph/1`` dict: every head and MLP, random edges."""
    rng = random.Random(seed)

    def node(id_, kind, layer, head=None, score=0.0):
        return {"id": id_, "type": kind, "layer": layer, "head": head, "pos": None, "label": id_,
                "score": score}  # fmt: skip

    nodes = [node("EMBED", "embed", -1, score=1.0)]
    for layer in range(n_layers):
        for head in range(n_heads):
            nodes.append(node(f"L{layer}H{head}", "head", layer, head, rng.uniform(-1, 1) ** 3))
        nodes.append(node(f"MLP{layer}", "mlp", layer, score=rng.uniform(-1, 1) ** 3))
    nodes.append(node("LOGITS", "logits", n_layers, score=1.0))
    layer_of = {n["id"]: n["layer"] for n in nodes}
    edges = []
    while len(edges) < n_edges:
        a, b = sorted(rng.sample(list(layer_of), 2), key=layer_of.get)
        if layer_of[a] < layer_of[b]:
            edges.append({"source": a, "target": b, "input": "q", "weight": rng.gauss(0, 0.05)})
    return {
        "schema": "circuitviz.graph/1", "model": "hand-built", "prompts": {}, "method": "eap",
        "metric": "logit_diff", "per_position": False, "n_layers": n_layers, "n_heads": n_heads,
        "tokens": [], "clean": 2.0, "corrupted": -1.0, "nodes": nodes, "edges": edges,
    }  # fmt: skip


def label_boxes(fig) -> list[tuple[str, tuple[float, float, float, float]]]:
    """Pixel boxes of the graph's node labels, estimated from the font size (0.6 em per
    character, 1.2 em high) and the figure's own axis ranges, margins and size."""
    (labels,) = [t for t in fig.data if t.name == "labels"]
    lay = fig.layout
    m = lay.margin
    plot_w, plot_h = lay.width - m.l - m.r, lay.height - m.t - m.b
    (x0, x1), (y0, y1) = lay.xaxis.range, lay.yaxis.range
    size = labels.textfont.size
    boxes = []
    for x, y, text in zip(labels.x, labels.y, labels.text, strict=True):
        px = m.l + (x - x0) / (x1 - x0) * plot_w
        py = m.t + (y1 - y) / (y1 - y0) * plot_h
        w, h = len(html.unescape(text)) * size * 0.6, size * 1.2
        boxes.append((text, (px - w / 2, py - h / 2, px + w / 2, py + h / 2)))
    return boxes


def overlapping(boxes):
    for (ta, a), (tb, b) in itertools.combinations(boxes, 2):
        if a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]:
            yield ta, tb


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def model():
    return circuitviz.tiny_model("llama")


@pytest.fixture(scope="module")
def heads(model):
    return circuitviz.patch(model, PAIRS, over="heads", progress=False)


@pytest.fixture(scope="module")
def heads_by_pos(model):
    return circuitviz.patch(model, PAIRS, over="heads_by_pos", progress=False)


@pytest.fixture(scope="module")
def rendered(heads_by_pos, tmp_path_factory):
    """One patching map in every static format (kaleido starts once, here)."""
    out = tmp_path_factory.mktemp("rendered")
    paths = {fmt: out / f"map.{fmt}" for fmt in ("svg", "pdf", "png")}
    for _fmt, path in paths.items():
        assert save(heads_by_pos, path, dpi=120) == path
    return paths


# ----------------------------------------------------------------------------- formats


def test_svg_parses_and_holds_axis_titles_ticks_and_tokens(rendered):
    text = svg_text(rendered["svg"])
    for expected in ("position", "layer·head", "L1H3", "logit_diff", "2: t17", "4: t9"):
        assert expected in text, expected


def test_pdf_is_one_non_blank_page_of_the_column_width(rendered, tmp_path):
    assert rendered["pdf"].read_bytes().startswith(b"%PDF")
    page = pdf_page_pixels(rendered["pdf"], tmp_path, dpi=50)
    assert abs(page.shape[1] - 3.5 * 50) <= 1  # single column: 3.5 in wide
    assert page.std() > 10, "the PDF page is blank"
    assert (page < 128).mean() > 0.01  # some dark ink: text and cells


def ink_box(grey: np.ndarray) -> tuple[int, int, int, int]:
    rows, cols = np.nonzero(grey < 128)
    return rows.min(), rows.max(), cols.min(), cols.max()


def test_pdf_page_shows_the_same_picture_as_the_png(heads_by_pos, tmp_path):
    """The whole figure is on the page: nothing shifted or clipped at the edges."""
    pdf = save(heads_by_pos, tmp_path / "map.pdf")
    png = save(heads_by_pos, tmp_path / "map.png", dpi=100)
    page = pdf_page_pixels(pdf, tmp_path, dpi=100)
    picture = png_pixels(png.read_bytes())[..., :3].mean(axis=2)
    assert abs(page.shape[0] - picture.shape[0]) <= 1 and abs(page.shape[1] - picture.shape[1]) <= 1
    assert np.allclose(ink_box(page), ink_box(picture), atol=2), (ink_box(page), ink_box(picture))


def test_png_is_single_column_at_the_requested_dpi_and_not_blank(rendered):
    data = rendered["png"].read_bytes()
    assert png_size(data)[0] == round(3.5 * 120)
    pixels = png_pixels(data)
    assert pixels[..., :3].std() > 10


@pytest.mark.parametrize(
    ("width", "height", "dpi"), [(3.5, 2.0, 300), (2.3, 1.7, 97), (7.0, 3.33, 150)]
)
def test_png_pixels_are_inches_times_dpi(heads, width, height, dpi, tmp_path):
    path = save(heads, tmp_path / "map.png", width=width, height=height, dpi=dpi)
    assert png_size(path.read_bytes()) == (round(width * dpi), round(height * dpi))


def test_columns_and_fonts_are_physical_sizes(heads):
    single = figure_of(heads)
    double = figure_of(heads, column="double", font_size=10, font_family="Liberation Serif")
    assert single.layout.width == 3.5 * 96 and double.layout.width == 7.0 * 96
    assert single.layout.font.size == pytest.approx(8 * 96 / 72)
    assert double.layout.font.size == pytest.approx(10 * 96 / 72)
    assert double.layout.font.family == "Liberation Serif"
    assert figure_of(heads, height=2.5).layout.height == 2.5 * 96


def test_a_plotly_figure_is_restyled_on_request(heads, tmp_path):
    fig = figure_of(heads)
    assert figure_of(fig).layout.width == 3.5 * 96  # kept as styled
    wide = save(fig, tmp_path / "wide.png", column="double", dpi=100)
    assert png_size(wide.read_bytes())[0] == 700
    assert fig.layout.width == 3.5 * 96  # the caller's figure is not changed


def test_patch_map_is_centred_on_its_baseline_with_the_shared_diverging_map(heads):
    from circuitviz.export._figures import DIVERGING as engine_diverging

    assert engine_diverging is DIVERGING
    (trace,) = figure_of(heads).data
    assert [list(c) for c in trace.colorscale] == [list(c) for c in DIVERGING]
    # colour = effect by default: value − the corrupted run's metric (denoising starts there)
    title = trace.colorbar.title.text.replace("<br>", " ")  # wrapped to fit beside the bar
    assert trace.zmid == 0 and "corrupted baseline" in title
    assert trace.z[0][0] == pytest.approx(float(heads.values[0, 0]) - heads.corrupted, abs=1e-6)
    assert trace.zmax - trace.zmid == pytest.approx(trace.zmid - trace.zmin)
    (raw,) = figure_of(heads, color="value").data  # the metric itself, centred on the baseline
    assert raw.zmid == heads.corrupted and raw.zmax - raw.zmid == pytest.approx(trace.zmax)
    assert DIVERGING[len(DIVERGING) // 2][1] == "#f7f7f7"  # white at the centre


def test_every_map_is_centred_on_the_unpatched_run(model):
    attribution = circuitviz.attribution_patch(model, PAIRS, over="heads")
    assert figure_of(attribution, color="value").data[0].zmid == attribution.corrupted
    noising = circuitviz.patch(model, PAIRS, over="resid_pre", direction="noise", progress=False)
    assert figure_of(noising, color="value").data[0].zmid == noising.clean
    assert "clean baseline" in figure_of(noising).data[0].colorbar.title.text.replace("<br>", " ")


def test_selected_cell_is_outlined(heads):
    fig = figure_of(heads, selected="L1H2")
    (shape,) = fig.layout.shapes
    assert shape.path == "M1.5,0.5H2.5V1.5H1.5Z"  # column 2 (H2), row 1 (L1)
    with pytest.raises(ExportError, match="L9H9"):
        figure_of(heads, selected="L9H9")


def test_every_figure_kind_gets_the_same_style(model, heads):
    attention = circuitviz.attention(model, PAIRS.clean[0])
    ablation = circuitviz.ablate(model, PAIRS, heads=[(0, 1)])
    figures = [
        figure_of(heads, font_size=9),
        figure_of(attention, layer=1, head=2, font_size=9),
        figure_of(attention, font_size=9),
        figure_of(ablation, font_size=9),
        figure_of(big_graph(4, 3, 20), font_size=9),
    ]
    for fig in figures:
        assert fig.layout.width == 3.5 * 96
        assert fig.layout.font.size == pytest.approx(12)
        assert fig.layout.meta["circuitviz_style"]["font_size"] == 9


def test_attention_and_ablation_figures_render(model, tmp_path):
    attention = circuitviz.attention(model, PAIRS.clean[0])
    text = svg_text(save(attention, tmp_path / "head.svg", layer=1, head=2))
    assert "Attention of L1H2" in text and "2: t17" in text and "key (source)" in text
    roles = svg_text(save(attention, tmp_path / "roles.svg", column="double"))
    assert "induction" in roles and "previous token" in roles
    ablation = circuitviz.ablate(model, PAIRS, heads=[(0, 1)], mlps=[1])
    text = svg_text(save(ablation, tmp_path / "ablate.svg"))
    assert "ablated" in text and "corrupted" in text and "L0H1" in text


# ----------------------------------------------------------------------------- tokens are text


def test_hostile_tokens_are_escaped_in_svg(tmp_path):
    result = hand_patch_result(["<bos>", HOSTILE, "<b>bold</b>", "a&b", " Mary"])
    path = save(result, tmp_path / "hostile.svg")
    raw = path.read_text()
    assert re.search(r"(&lt;|&#60;)img src=x onerror=alert\(1\)(&gt;|&#62;)", raw)
    assert "<img" not in raw and "<b>" not in raw
    root = ET.parse(path).getroot()
    assert not [el for el in root.iter() if el.tag.split("}")[-1] in ("img", "script", "b")]
    text = svg_text(path)
    # Shown literally, not interpreted as markup by plotly.
    assert f"1: {HOSTILE}" in text and "2: <b>bold</b>" in text and "3: a&b" in text


# ----------------------------------------------------------------------------- graph figure


def test_big_graph_labels_do_not_overlap_and_every_node_is_drawn():
    graph = big_graph()
    for column in ("single", "double"):
        fig = graph_figure(graph, column=column)
        drawn = sum(len(t.x) for t in fig.data if t.mode == "markers")
        assert drawn == len(graph["nodes"]) == 302
        boxes = label_boxes(fig)
        assert len(boxes) >= 40, f"only {len(boxes)} labels on the {column} column figure"
        assert list(overlapping(boxes)) == []
        for _, (x0, y0, x1, y1) in boxes:
            assert 0 <= x0 and x1 <= fig.layout.width and 0 <= y0 and y1 <= fig.layout.height
    assert {"LOGITS", "EMBED"} <= {text for text, _ in label_boxes(fig)}


def test_graph_layout_runs_embed_to_logits_upwards_and_marks_state():
    graph = big_graph(6, 4, 80)
    fig = graph_figure(graph, ablated=["L2H1"], selected="L3H0")
    by_name = {t.name: t for t in fig.data if t.mode == "markers"}
    assert list(by_name["embed"].y) == [-1] and list(by_name["logits"].y) == [6]
    assert sorted(set(by_name["head"].y)) == list(range(6))
    assert list(by_name["ablated"].x) and list(by_name["selected"].y) == [3]
    colours = {t.line.color for t in fig.data if t.mode == "lines"}
    assert {NEGATIVE, POSITIVE} <= colours  # negative and positive weights
    assert NEGATIVE in DIVERGING[1] and POSITIVE in DIVERGING[-2]  # same red/blue as heatmaps


def per_position_graph(tokens: list[str], n_layers: int = 3, n_heads: int = 2) -> dict:
    rng = random.Random(1)
    graph = big_graph(n_layers, n_heads, 0)
    nodes = []
    for p in range(len(tokens)):
        for n in graph["nodes"]:
            nodes.append({**n, "id": f"{n['id']}:P{p}", "pos": p, "label": f"{n['id']} @ {p}"})
    layer_of = {n["id"]: n["layer"] for n in nodes}
    edges = [
        {"source": a, "target": b, "input": "v", "weight": rng.gauss(0, 1)}
        for a in layer_of
        for b in layer_of
        if a.split(":")[1] == b.split(":")[1] and layer_of[a] < layer_of[b]
    ]
    return {**graph, "per_position": True, "tokens": tokens, "nodes": nodes, "edges": edges}


def test_per_position_graph_has_its_tokens_under_the_columns():
    tokens = ["<bos>", "When", HOSTILE]
    fig = graph_figure(per_position_graph(tokens))
    assert fig.layout.xaxis.visible
    assert list(fig.layout.xaxis.ticktext) == ["0: &lt;bos&gt;", "1: When", "2: &lt;img src…"]
    boxes = label_boxes(fig)
    assert len(boxes) >= 6 and list(overlapping(boxes)) == []
    assert all(":" not in text and "@" not in text for text, _ in boxes)  # tokens are on the axis


def test_graph_prune_by_top_n_and_threshold():
    graph = big_graph(6, 4, 200)

    def drawn_edges(fig):
        return sum(sum(v is None for v in t.x) for t in fig.data if t.mode == "lines")

    assert drawn_edges(graph_figure(graph)) == 200
    # pruning keeps only edges on EMBED → LOGITS paths (Graph.prune's rule)
    assert drawn_edges(graph_figure(graph, top_edges=15)) == 15
    cut = 0.03
    strong = [e for e in graph["edges"] if abs(e["weight"]) >= cut]
    assert drawn_edges(graph_figure(graph, min_weight=cut)) == len(on_paths(strong)) > 0
    with pytest.warns(DeprecationWarning, match="top_edges"):
        assert drawn_edges(graph_figure(graph, top_n=15)) == 15
    with pytest.raises(ExportError, match="no nodes"):
        graph_figure(graph, min_weight=0.5)


def on_paths(edges: list[dict]) -> list[dict]:
    """The edges on some EMBED → LOGITS path (plain reachability, for checking)."""
    fwd, bwd = {"EMBED"}, {"LOGITS"}
    for _ in edges:
        fwd |= {e["target"] for e in edges if e["source"] in fwd}
        bwd |= {e["source"] for e in edges if e["target"] in bwd}
    return [e for e in edges if e["source"] in fwd and e["target"] in bwd]


def test_graph_svg_renders(tmp_path):
    text = svg_text(save(big_graph(8, 4, 60), tmp_path / "graph.svg", column="double"))
    assert "LOGITS" in text and "embed" in text and "L7" in text


def test_circuit_graph_object_exports(model, tmp_path):
    graph_mod = pytest.importorskip("circuitviz.engine.graph")
    graph = graph_mod.circuit(model, PAIRS, progress=False)
    fig = figure_of(graph, top_edges=12)
    assert fig.data and label_boxes(fig)
    text = svg_text(save(graph, tmp_path / "circuit.svg", top_edges=12))
    assert "LOGITS" in text


# ----------------------------------------------------------------------------- bad input


def test_unknown_extension_is_refused_before_rendering(heads, tmp_path):
    with pytest.raises(ExportError, match=r"\.svg, \.pdf, \.png or \.html"):
        save(heads, tmp_path / "map.jpg")
    with pytest.raises(ExportError, match="none"):
        save(heads, tmp_path / "map")
    assert list(tmp_path.iterdir()) == []


def test_unwritable_destinations_are_refused(heads, tmp_path):
    with pytest.raises(ExportError, match="does not exist"):
        save(heads, tmp_path / "missing" / "map.svg")
    (tmp_path / "taken.svg").mkdir()
    with pytest.raises(ExportError, match="directory"):
        save(heads, tmp_path / "taken.svg")
    if os.geteuid() != 0:  # root may write anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(ExportError, match="not writable"):
            save(heads, locked / "map.svg")
        assert list(locked.iterdir()) == []
    assert not (tmp_path / "missing").exists()


def test_empty_results_are_refused_and_write_nothing(tmp_path):
    empty = hand_patch_result([], values=torch.zeros(2, 0))
    with pytest.raises(ExportError, match="empty"):
        save(empty, tmp_path / "map.svg")
    no_nodes = {**big_graph(2, 2, 0), "nodes": [], "edges": []}
    with pytest.raises(ExportError, match="no nodes"):
        save(no_nodes, tmp_path / "graph.png")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_render_keeps_the_old_file_and_leaves_no_temp_file(heads, tmp_path, monkeypatch):
    target = tmp_path / "map.svg"
    target.write_text("old figure")

    def broken(*args, **kwargs):
        raise RuntimeError("renderer crashed")

    import kaleido

    monkeypatch.setattr(kaleido, "calc_fig_sync", broken)
    with pytest.raises(RuntimeError, match="crashed"):
        save(heads, target)
    assert target.read_text() == "old figure"
    assert [p.name for p in tmp_path.iterdir()] == ["map.svg"]


def test_bad_style_and_unknown_options_are_clear_errors(heads, tmp_path):
    with pytest.raises(ExportError, match="column"):
        save(heads, tmp_path / "a.svg", column="triple")
    with pytest.raises(ExportError, match="inches"):
        make_style(width=-1)
    with pytest.raises(ExportError, match="dpi"):
        make_style(dpi=0)
    with pytest.raises(TypeError, match="colour"):
        figure_of(heads, colour="red")
    assert list(tmp_path.iterdir()) == []


def test_html_goes_to_the_standalone_writer(heads, tmp_path, monkeypatch):
    path = save(heads, tmp_path / "map.html")
    assert "<html" in path.read_text().lower()
    monkeypatch.setitem(sys.modules, "circuitviz.export._html", None)  # as if not installed
    with pytest.raises(NotImplementedError, match="HTML export"):
        save(heads, tmp_path / "other.html")
    assert not (tmp_path / "other.html").exists()


def test_render_refuses_other_formats(heads):
    with pytest.raises(ExportError):
        render(figure_of(heads), "jpg")
    assert set(_static.FORMATS) == {"svg", "pdf", "png", "html"}


def test_missing_chromium_is_a_clear_error_not_a_hang(monkeypatch, tmp_path):
    from choreographer.browsers.chromium import Chromium

    monkeypatch.setenv("BROWSER_PATH", str(tmp_path / "no-chromium"))
    if Chromium.find_browser(skip_local=False) != str(tmp_path / "no-chromium"):
        pytest.skip("a browser downloaded by choreographer takes precedence here")
    with pytest.raises(ExportError, match="needs Chromium"):
        _static._check_chromium()
