"""PatchingView on dense maps: one rule (kernel) for what each cell is and ablates, the same
colour rule on screen and in exported figures, figure marks that grow linearly with cells, and
(in a browser) zoom/pan with readable labels, unablatable cells that say so, and the ablation
panel's change readouts."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

import circuitviz as cv
from circuitviz.engine import TARGETS, InputError, PatchResult
from circuitviz.engine._cells import ablation_targets, cell_rule, zero_tolerance
from circuitviz.export import ExportError, patch_figure
from circuitviz.export._html import write_html
from circuitviz.export._style import DIVERGING
from circuitviz.views import PatchingView


def synthetic(axes: tuple[str, ...], shape: tuple[int, ...], target: str, seed: int = 0):
    """A map of random values, labelled like the engine's, for sizes no test should compute."""
    torch.manual_seed(seed)
    sizes = dict(zip(axes, shape, strict=True))
    labels = {
        "layer": [f"L{i}" for i in range(sizes.get("layer", 0))],
        "head": [f"H{i}" for i in range(sizes.get("head", 0))],
        "pos": [f"{i}: tok{i}" for i in range(sizes.get("pos", 0))],
    }
    return PatchResult(
        values=torch.randn(*shape),
        axes=axes,
        labels={a: labels[a] for a in axes},
        target=target,
        direction="denoise",
        method="activation",
        metric="logit_diff",
        clean=3.0,
        corrupted=-1.0,
        tokens=labels["pos"],
        model_name="synthetic",
    )


def bar_title(trace) -> str:
    """The colour bar's title as one line (it is wrapped to fit beside the bar)."""
    return trace.colorbar.title.text.replace("<br>", " ")


def crosses(fig) -> int:
    black = [s for s in fig.layout.shapes if s.name == "ablated" and s.line.color == "#000000"]
    return sum(s.path.count("M") for s in black) // 2


def outlines(fig) -> int:
    return sum(s.path.count("Z") for s in fig.layout.shapes if s.name == "selected")


@pytest.fixture(scope="module")
def by_pos(tiny_llama, tiny_pairs):
    return cv.patch(tiny_llama, tiny_pairs, over="heads_by_pos", progress=False)


# ----------------------------------------------------------------------------- the cell rule


def test_the_kernel_rule_names_every_cell_as_patch_result_does(tiny_llama, tiny_pairs):
    for over in TARGETS:
        result = cv.patch(tiny_llama, tiny_pairs, over=over, progress=False)
        rule = cell_rule(result)
        shape = result.values.shape
        named = [
            dict(zip(result.axes, i, strict=True)) for i in itertools.product(*map(range, shape))
        ]
        assert [rule.component.format(**n) for n in named] == result.cells(), over
        targets = ablation_targets(result)
        assert len(targets) == result.values.numel()
        if over == "heads_by_pos":  # only that head, only at that position
            assert targets == result.cells()
        elif over == "mlp_out":
            assert targets[:2] == ["MLP0:P0", "MLP0:P1"]
        elif over in ("heads", "q", "pattern"):
            assert targets == result.cells()
        else:  # resid_pre, attn_out, k, v: nothing to ablate, and the rule says why
            assert set(targets) == {None} and rule.reason, over


def test_map_payload_carries_the_rule_colour_labels_and_zero_tolerance(by_pos):
    m = PatchingView(by_pos).map
    assert m["cells"] == {
        "component": "L{layer}H{head}:P{pos}",
        "ablates": "L{layer}H{head}:P{pos}",
        "reason": "",
    }
    assert m["color_labels"]["effect"].startswith("effect = logit_diff − corrupted baseline (")
    assert f"{by_pos.corrupted:.4g}" in m["color_labels"]["value"]
    assert 0 < m["zero_tol"] < 1e-4
    resid = synthetic(("layer", "pos"), (3, 5), "resid_pre")
    cells = PatchingView(resid).map["cells"]
    assert cells["ablates"] is None and "residual stream" in cells["reason"]


# ----------------------------------------------------------------------------- colour option


def test_colour_option_is_shared_by_view_figure_and_state(by_pos):
    view = PatchingView(by_pos)
    (trace,) = view.figure().data
    assert trace.zmid == 0 and bar_title(trace) == view.map["color_labels"]["effect"]
    view.color = "value"
    (raw,) = view.figure().data
    assert raw.zmid == pytest.approx(by_pos.corrupted)
    assert bar_title(raw) == view.map["color_labels"]["value"]
    assert raw.zmax - raw.zmid == pytest.approx(trace.zmax)  # same colours, other units
    assert view.figure(color="effect").data[0].zmid == 0  # options override the view
    assert PatchingView(by_pos, state=view.state).color == "value"
    with pytest.raises(InputError, match="color"):
        view.color = "rainbow"
    with pytest.raises(ExportError, match="color"):
        patch_figure(by_pos, color="rainbow")


def test_float32_noise_is_an_exact_zero_effect():
    result = synthetic(("layer", "head"), (2, 3), "heads")
    result.values[0, 0] = result.corrupted + 7.45e-9  # one float32 step off the baseline
    result.values[0, 1] = result.corrupted
    assert zero_tolerance(result) > 7.45e-9
    z = patch_figure(result).data[0].z
    assert z[0][0] == 0 and z[0][1] == 0 and z[1][2] != 0


# ----------------------------------------------------------------------------- figure marks


def test_marks_are_one_path_each_and_figure_time_grows_linearly(summary):
    """Issue 10: a residual map with an ablation set outlined every cell (one shape each,
    quadratic time). Now no cell of a residual map is marked, and heads_by_pos marks are
    one path per kind; the bounds are generous (a quadratic build takes hours here)."""
    small = synthetic(("layer", "pos"), (11, 22), "resid_pre")
    big = synthetic(("layer", "pos"), (30, 128), "resid_pre")
    for result in (small, big):
        fig = patch_figure(result, ablated=["L0H1", "MLP2:P3"])
        assert len(fig.layout.shapes) == 0  # nothing ablatable, nothing selected
    times = {}
    for n_pos in (8, 128):
        result = synthetic(("layer", "pos", "head"), (30, n_pos, 9), "heads_by_pos")
        start = time.perf_counter()
        fig = patch_figure(result, ablated=["L3H5", "L7H2:P4"], selected="L9H1")
        times[n_pos] = time.perf_counter() - start
        assert len(fig.layout.shapes) == 3  # outlines, cross halo, crosses
        assert crosses(fig) == n_pos + 1 and outlines(fig) == n_pos
    cells = {n: 30 * 9 * n for n in times}
    summary.append(
        f"patch_figure with marks: {cells[8]} cells {times[8]:.2f} s, "
        f"{cells[128]} cells {times[128]:.2f} s (loaded 2-core CPU)"
    )
    assert times[128] < 30
    # linear: 16× the cells may cost at most 16× the time plus a second of slack
    assert times[128] < 16 * times[8] * 4 + 1.0


def test_view_figure_marks_follow_the_positioned_rule(by_pos):
    view = PatchingView(by_pos)
    view.ablated = ["L0H1:P2", "L1H3"]  # one cell; a whole head (all positions)
    n_pos = by_pos.values.shape[by_pos.axes.index("pos")]
    assert crosses(view.figure()) == 1 + n_pos
    view.selected = "L1H2:P3"
    assert outlines(view.figure()) == 1
    view.selected = "L1H2"  # a head selected in another view: all its positions
    assert outlines(view.figure()) == n_pos
    view.selected = "MLP0"  # not on this map
    assert outlines(view.figure()) == 0


# ----------------------------------------------------------------------------- in a browser


@pytest.fixture(scope="module")
def demo_map(demo_model):
    pairs = cv.tasks.ioi(demo_model, 4, seed=0)
    return cv.attribution_patch(demo_model, pairs, over="heads_by_pos")


def open_view(page, tmp_path, view, name="view.html"):
    write_html(view, tmp_path / name)
    page.goto((tmp_path / name).as_uri())
    hm = page.locator(".cv-patching .cv-hm")
    hm.wait_for()
    return hm


def plot_centre(page) -> tuple[float, float]:
    box = page.locator(".cv-patching .cv-hits").bounding_box()
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2


@pytest.mark.browser
def test_heads_by_pos_map_zooms_and_keeps_labels_readable(tmp_path, page, demo_map, artifacts):
    hm = open_view(page, tmp_path, PatchingView(demo_map))
    rows = 30 * 9
    assert page.locator(".cv-patching .cv-hit").count() == rows * demo_map.values.shape[1]
    # default: 270 rows are ~2 px each, so each layer is labelled, not each head
    assert hm.get_attribute("data-group-labels") == "30"
    assert hm.get_attribute("data-row-labels") == "0"
    assert float(hm.get_attribute("data-col-label-gap")) >= 12
    title = page.locator('.cv-patching [data-role="heatmap-title"]')
    assert "heads_by_pos" in title.inner_text()
    assert title.evaluate("t => t.scrollWidth <= t.clientWidth + 1")  # never cut off
    reset = page.locator('.cv-patching [data-role="zoom-reset"]')
    assert reset.is_disabled()
    page.locator(".cv-patching").screenshot(path=str(artifacts / "patching_heads_by_pos.png"))

    x, y = plot_centre(page)
    under = page.evaluate(f"() => document.elementFromPoint({x}, {y}).dataset.component")
    cell = page.locator(f'.cv-patching [data-component="{under}"]')
    before = cell.bounding_box()
    page.mouse.move(x, y)
    for _ in range(6):
        page.mouse.wheel(0, -400)
        page.wait_for_timeout(30)
    page.wait_for_function(
        "() => document.querySelector('.cv-patching .cv-hm').dataset.rowLabels !== '0'"
    )
    assert hm.get_attribute("data-zoomed") == "true" and reset.is_enabled()
    assert float(hm.get_attribute("data-row-label-gap")) >= 12  # every shown label fits
    zoomed = cell.bounding_box()
    assert zoomed["height"] > 3 * before["height"]
    page.locator(".cv-patching").screenshot(
        path=str(artifacts / "patching_heads_by_pos_zoomed.png")
    )
    # the zoomed cell under the pointer is the one the tooltip names
    page.mouse.move(zoomed["x"] + zoomed["width"] / 2, zoomed["y"] + zoomed["height"] / 2)
    tip = page.locator('.cv-patching [data-role="tooltip"]').inner_text()
    assert tip.startswith(under)  # zooming keeps the cell under the pointer in place
    assert "click: select only (ablation needs a live kernel)" in tip

    # the exported SVG is what is on screen: the zoomed part, titled
    with page.expect_download() as download:
        page.locator('.cv-patching [data-role="export-svg"]').click()
    svg = open(download.value.path(), encoding="utf-8").read()
    assert "heads_by_pos" in svg and f'data-component="{under}"' in svg
    assert 0 < svg.count("data-component=") < rows * demo_map.values.shape[1] // 4

    # drag pans (and selects nothing); reset shows the whole map again
    page.mouse.move(x, y)
    page.mouse.down()
    page.mouse.move(x + 60, y + 80, steps=5)
    page.mouse.up()
    panned = cell.bounding_box()
    assert panned["y"] > zoomed["y"] + 40
    assert page.locator('.cv-patching [data-selected="true"]').count() == 0
    reset.click()
    page.wait_for_function(
        "() => document.querySelector('.cv-patching .cv-hm').dataset.groupLabels === '30'"
    )
    assert hm.get_attribute("data-zoomed") == "false"
    assert cell.bounding_box()["height"] == pytest.approx(before["height"], abs=0.5)
    assert not page.console_errors and not page.dialogs


@pytest.mark.browser
def test_long_residual_map_cells_say_they_cannot_be_ablated(tmp_path, page, artifacts):
    resid = synthetic(("layer", "pos"), (30, 400), "resid_pre")
    hm = open_view(page, tmp_path, PatchingView(resid))
    assert 0 < int(hm.get_attribute("data-col-labels")) < 400
    assert float(hm.get_attribute("data-col-label-gap")) >= 12
    assert hm.get_attribute("data-row-labels") == "30"
    cell = page.locator('.cv-patching [data-component="resid_pre:L4:P200"]')
    box = cell.bounding_box()
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    for _ in range(4):  # 1-px columns: zoom in on the cell, as a reader would
        page.mouse.wheel(0, -300)
        page.wait_for_timeout(30)
    page.wait_for_function(
        "() => +document.querySelector('.cv-patching .cv-hm').dataset.colLabelGap >= 12"
        " && document.querySelector('.cv-patching .cv-hm').dataset.zoomed === 'true'"
    )
    assert cell.bounding_box()["width"] > 8
    cell.hover()
    tip = page.locator('.cv-patching [data-role="tooltip"]').inner_text()
    assert "click: select only (not ablatable: the residual stream" in tip
    cell.click()
    info = page.locator('.cv-patching [data-role="click-info"]').inner_text()
    assert info.startswith("selected resid_pre:L4:P200; not ablatable")
    assert cell.get_attribute("data-selected") == "true"
    assert page.locator('.cv-patching [data-role="error"]').inner_text() == ""
    page.locator(".cv-patching").screenshot(path=str(artifacts / "patching_resid_pre_400.png"))


def figure_colours(fig) -> list[list[tuple[int, int, int]]]:
    """The RGB plotly gives each cell: linear interpolation through the colorscale stops."""
    (trace,) = fig.data
    stops = [(float(p), tuple(int(c[i : i + 2], 16) for i in (1, 3, 5))) for p, c in DIVERGING]
    lo, hi = trace.zmin, trace.zmax

    def rgb(z: float) -> tuple[int, int, int]:
        t = min(1.0, max(0.0, (z - lo) / (hi - lo)))
        for (p0, c0), (p1, c1) in itertools.pairwise(stops):
            if t <= p1:
                f = (t - p0) / (p1 - p0)
                return tuple(round(a + (b - a) * f) for a, b in zip(c0, c1, strict=True))
        return stops[-1][1]

    return [[rgb(z) for z in row] for row in trace.z]


@pytest.mark.browser
@pytest.mark.parametrize("color", ["effect", "value"])
def test_screen_colours_match_the_static_figure(tmp_path, page, by_pos, color):
    view = PatchingView(by_pos, state={"color": color})
    open_view(page, tmp_path, view)
    assert page.locator('.cv-patching select[data-role="color"]').input_value() == color
    expected = figure_colours(view.figure())
    y_labels = [str(t) for t in view.figure().data[0].y]
    on_screen = page.evaluate(
        """() => {
            const canvas = document.querySelector('.cv-patching canvas.cv-heatmap-canvas');
            const ctx = canvas.getContext('2d');
            const origin = canvas.getBoundingClientRect();
            return [...document.querySelectorAll('.cv-patching .cv-hit')].map((hit) => {
                const b = hit.getBoundingClientRect();
                const x = Math.floor(b.left - origin.left + b.width / 2);
                const y = Math.floor(b.top - origin.top + b.height / 2);
                return [+hit.dataset.row, +hit.dataset.col, [...ctx.getImageData(x, y, 1, 1).data.slice(0, 3)]];
            });
        }"""
    )
    assert len(on_screen) == by_pos.values.numel()
    for r, c, rgb in on_screen:
        assert y_labels[r] == f"L{r // 4}H{r % 4}"  # same row order on screen and in the figure
        assert max(abs(a - b) for a, b in zip(rgb, expected[r][c], strict=True)) <= 3, (r, c)


# ----------------------------------------------------------------------------- positioned ablation


def test_a_cell_click_ablates_that_head_at_that_position_only(tiny_llama, tiny_pairs, by_pos):
    view = PatchingView(by_pos, model=tiny_llama, pairs=tiny_pairs)
    assert view.result["ablated"] is None and view.result["delta"] is None  # nothing ablated
    sent = []
    view.send = lambda content, buffers=None: sent.append(content)
    view._handle_custom_msg({"type": "ablate", "components": ["L1H2:P3"], "request": 1})
    assert [m["type"] for m in sent] == ["ablation"] and view.ablated == ["L1H2:P3"]
    direct = cv.ablate(tiny_llama, tiny_pairs, heads=["L1H2:P3"])
    whole = cv.ablate(tiny_llama, tiny_pairs, heads=["L1H2"])
    assert view.result["ablated"] == pytest.approx(direct.ablated)
    assert view.result["delta"] == pytest.approx(direct.ablated - direct.clean)
    assert direct.ablated != pytest.approx(whole.ablated)  # one position is not the whole head
    n_pairs = len(tiny_pairs.clean)
    assert len(view.result["per_prompt"]["ablated"]) == n_pairs
    # mlp_out cells ablate that MLP at that position
    mlp = cv.patch(tiny_llama, tiny_pairs, over="mlp_out", progress=False)
    assert ablation_targets(mlp)[1] == "MLP0:P1"
    view.ablate(["MLP0:P1"])
    assert view.result["components"] == ["MLP0:P1"]


def test_standalone_state_turns_ablation_off(tiny_llama, tiny_pairs, by_pos):
    from circuitviz.export._html import KERNEL_NOTICE, view_spec

    view = PatchingView(by_pos, model=tiny_llama, pairs=tiny_pairs)
    state = view_spec(view)["state"]
    assert state["can_ablate"] is False and state["standalone"] == KERNEL_NOTICE
    assert view.can_ablate  # the live view is untouched


@pytest.mark.browser
def test_ablation_panel_shows_the_change_and_each_prompt(
    tmp_path, page, tiny_llama, tiny_pairs, by_pos, artifacts
):
    view = PatchingView(by_pos, model=tiny_llama, pairs=tiny_pairs)
    res = view.ablate(["L1H2:P3", "L0H1"])
    open_view(page, tmp_path, view)
    panel = page.locator('.cv-patching [data-role="ablation-panel"]')
    delta = panel.locator('[data-role="metric-delta"]')
    assert float(delta.get_attribute("data-value")) == pytest.approx(res.delta)
    assert delta.inner_text().startswith(("+", "-", "−", "0"))
    gap = panel.locator('[data-role="metric-gap"]')
    if res.gap_fraction is None:
        assert gap.inner_text().startswith("–")
    else:
        assert float(gap.get_attribute("data-value")) == pytest.approx(res.gap_fraction)
        assert gap.inner_text().endswith("%")
    rows = panel.locator('[data-role="per-prompt"] tr[data-prompt]')
    assert rows.count() == len(tiny_pairs.clean)
    first = rows.first.locator("td").all_inner_texts()
    assert first[0] == "0" and float(first[1]) == pytest.approx(
        res.per_prompt["clean"][0], abs=1e-3
    )
    # crossed out: that one cell, and every position of the whole head
    n_pos = by_pos.values.shape[by_pos.axes.index("pos")]
    ablated = page.locator('.cv-patching .cv-hit[data-ablated="true"]')
    assert ablated.count() == 1 + n_pos
    assert (
        page.locator('.cv-patching [data-component="L1H2:P2"]').get_attribute("data-ablated")
        == "false"
    )
    panel.screenshot(path=str(artifacts / "patching_ablation_panel_standalone.png"))

    # The same state as a live kernel shows it (controls in place of the standalone notice).
    html = (tmp_path / "view.html").read_text(encoding="utf-8")
    live = html.replace('"can_ablate":false', '"can_ablate":true').replace(
        '"standalone":', '"_off":'
    )
    (tmp_path / "live.html").write_text(live, encoding="utf-8")
    page.goto((tmp_path / "live.html").as_uri())
    page.locator('.cv-patching select[data-role="mode"]').wait_for()
    page.locator('.cv-patching [data-component="L1H2:P3"]').hover()
    tip = page.locator('.cv-patching [data-role="tooltip"]').inner_text()
    assert "click: zero-ablate L1H2:P3 only · shift-click: add to the set" in tip
    page.locator(".cv-patching").screenshot(path=str(artifacts / "patching_ablation_panel.png"))
    assert not page.console_errors and not page.dialogs


# ----------------------------------------------------------------------------- command line


def test_cli_colours_like_the_widget_and_takes_the_other_mode(tmp_path, capsys):
    import xml.etree.ElementTree as ET

    from circuitviz.cli import main

    base = ["figure", "--model", "tiny-llama", "--task", "induction", "--n", "2"]
    effect, value, page = tmp_path / "effect.svg", tmp_path / "value.svg", tmp_path / "value.html"
    assert main([*base, "-o", str(effect)]) == 0
    assert main([*base, "--color", "value", "-o", str(value), "-o", str(page)]) == 0

    def text(path):
        return " ".join(ET.parse(path).getroot().itertext())

    assert "effect = logit_diff − corrupted baseline (" in text(effect)
    assert "logit_diff, centred on the corrupted baseline (" in text(value)
    assert '"color":"value"' in page.read_text(encoding="utf-8")
    capsys.readouterr()
    bad = [*base, "--analysis", "attention", "--color", "value", "-o", str(tmp_path / "a.svg")]
    assert main(bad) == 2
    assert "--color applies to --analysis patch or attribution" in capsys.readouterr().err


@pytest.mark.browser
def test_colour_caption_fits_a_narrow_map(tmp_path, page):
    """A 30 × 9 heads map is narrow; its colour-bar caption (the longest in attribution maps)
    must still fit inside the exported picture, not run off its right edge."""
    result = synthetic(("layer", "head"), (30, 9), "heads")
    result.method = "attribution"
    open_view(page, tmp_path, PatchingView(result))
    with page.expect_download() as download:
        page.locator('.cv-patching [data-role="export-svg"]').click()
    svg = open(download.value.path(), encoding="utf-8").read()
    fits = page.evaluate(
        """svg => {
          const box = document.createElement('div');
          box.innerHTML = svg;
          document.body.append(box);
          const root = box.querySelector('svg');
          const width = Number(root.getAttribute('width'));
          const caption = [...root.querySelectorAll('text')].find(t => t.textContent.startsWith('colour:'));
          const b = caption.getBBox();
          return { right: b.x + b.width, width, text: caption.textContent };
        }""",
        svg,
    )
    assert "corrupted baseline" in fits["text"]
    assert fits["right"] <= fits["width"], fits
