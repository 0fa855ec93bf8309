"""SteeringView.save(".svg" | ".pdf" | ".png" | ".html") and .figure(): the prompt's
continuation before and after, as the view shows it; the standalone page in Chromium."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

import circuitviz
from circuitviz.engine._refusal import Generation, SteeringResult
from circuitviz.export import ExportError, save, steering_figure
from circuitviz.export._style import text_label
from tests.test_refusal import HARMFUL, HARMLESS, TEMPLATE

SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture(scope="module")
def steering(tiny_llama):
    from circuitviz.views import SteeringView

    d = circuitviz.refusal_direction(tiny_llama, HARMFUL, HARMLESS, template=TEMPLATE)
    return SteeringView(tiny_llama, d, "t1 t2", coef=50.0, coef_max=60.0, max_new_tokens=3)


def words(root) -> str:
    """Every text of an SVG, lines (tspans) joined by spaces."""
    return " ".join(" ".join(t.itertext()) for t in root.iter(f"{SVG}text"))


def heading(fig) -> str:
    return next(a.text for a in fig.layout.annotations if a.name == "title")


def table_text(fig) -> list[list[str]]:
    return [list(col) for col in fig.data[0].cells["values"]]


def test_figure_is_what_the_view_shows(steering):
    fig = steering.figure()
    before, after = table_text(fig)[1:]
    assert before[2].replace("<br>", " ").split() == text_label(steering.before["text"]).split()
    assert after[2].replace("<br>", " ").split() == text_label(steering.after["text"]).split()
    assert before[0] == ("refuses" if steering.before["refused"] else "complies")
    score = steering.after["score"]  # None on the tiny model: no single-token refusal word
    assert after[1] == ("–" if score is None else f"{score:.2f}")
    header = list(fig.data[0].header["values"])
    assert header[2].replace("<br>", " ") == f"After (add 50 × direction at layer {steering.layer})"
    assert "prompt: t1 t2" in heading(fig)
    steering.mode = "ablate"
    try:
        shown = steering.figure().data[0].header["values"][2].replace("<br>", " ")
        assert shown == "After (direction ablated at every layer)"
    finally:
        steering.mode = "add"
    assert heading(steering.figure(title="mine", column="double")) == "mine"


def test_model_text_is_shown_literally_never_as_markup(tmp_path):
    hostile = '<a href="https://x.example">click</a> <b>bold</b> & more'
    res = SteeringResult(
        prompts=["<i>p</i>"],
        mode="add",
        coef=1.0,
        layer=3,
        before=Generation([hostile], [False], [None]),
        after=Generation(["I cannot help with that."], [True], [2.5]),
    )
    fig = steering_figure(res)
    cell = table_text(fig)[1][2]
    assert "<a" not in cell and "&lt;a href" in cell
    path = save(res, tmp_path / "hostile.svg")
    root = ET.parse(path).getroot()
    assert not root.findall(f".//{SVG}a")
    text = "".join(words(root).split())  # long words are broken across lines
    assert "".join(hostile.split()) in text
    assert "–" in table_text(fig)[1][1]  # no score: a dash


def test_save_svg_pdf_png(steering, tmp_path):
    svg = steering.save(tmp_path / "steer.svg")
    root = ET.parse(svg).getroot()
    shown = words(root)
    assert "Before (no intervention)" in shown and "refusal score" in shown
    assert " ".join(steering.after["text"].split()) in " ".join(shown.split())
    assert steering.save(tmp_path / "steer.pdf").read_bytes()[:5] == b"%PDF-"
    png = steering.save(tmp_path / "steer.png", dpi=100, width=3.5).read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(png[16:20], "big") == 350  # 3.5 in × 100 dpi


def test_bad_export_options(steering, tmp_path):
    with pytest.raises(TypeError, match="unknown option"):
        steering.figure(layer=2)
    with pytest.raises(ExportError, match="out of range"):
        steering_figure(steering.result, prompt=3)
    with pytest.raises(ExportError, match="SteeringResult"):
        steering_figure({"before": {}})
    with pytest.raises(ExportError, match="unknown extension"):
        steering.save(tmp_path / "steer.jpg")
    assert not (tmp_path / "steer.jpg").exists()


def test_figure_after_a_failed_generation_says_why(steering):
    steering._result = None
    steering.error = "boom"
    try:
        with pytest.raises(ExportError, match="last generation failed"):
            steering.figure()
    finally:
        steering.coef = 49.0  # regenerates
    assert steering.figure().data


@pytest.mark.browser
def test_standalone_html_shows_the_continuations_and_turns_controls_off(steering, tmp_path, page):
    path = steering.save(tmp_path / "steer.html")
    page.goto(path.as_uri())
    page.locator('[data-role="after"]').wait_for()
    page.wait_for_function(
        "() => document.querySelector('[data-role=\"standalone-notice\"]').textContent !== ''"
    )
    assert page.text_content('[data-role="before"]') == steering.before["text"]
    assert page.text_content('[data-role="after"]') == steering.after["text"]
    for role in ("prompt", "coef", "mode"):
        assert page.locator(f'[data-role="{role}"]').is_disabled()
    assert "live kernel" in page.text_content('[data-role="standalone-notice"]')
    from tests.conftest import ARTIFACTS

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.locator(".cv-steering").screenshot(path=str(ARTIFACTS / "steering_standalone.png"))
    assert not page.console_errors
