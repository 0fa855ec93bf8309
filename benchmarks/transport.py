"""Transport benchmark: attention for 12 layers × 12 heads × 512 tokens.

circuitviz's AttentionView vs CircuitsVis's ``attention_heads``:

* bytes: what each sends to the browser for the first render. circuitviz: the widget's
  initial state (JSON + binary buffers: uint8 thumbnails and float32 role scores) plus the one
  layer of float16 patterns its focus pane requests; the ESM bundle is reported separately
  (it is loaded once per session, not per view). CircuitsVis: the HTML it produces
  (``RenderedHTML.cdn_src`` — the JSON props, JS from a CDN — and ``local_src``, the same with
  its JS inlined), one ``attention_heads`` call per layer, as its docs show.
* first paint, in headless Chromium: circuitviz's standalone page (``render_html``, the
  bundled ESM with the anywidget model shim) until the thumbnail grid canvas has pixels and
  the focus pane has drawn; CircuitsVis's ``local_src`` for one layer (its CDN version cannot
  load offline) until its heatmaps are drawn.

Run: ``python benchmarks/transport.py [--out tests/artifacts/transport.json]``.
Never calls ``RenderedHTML._repr_html_``/``str`` (they probe the internet).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from circuitviz.engine._attention import role_scores  # noqa: E402
from circuitviz.engine._results import AttentionResult  # noqa: E402
from circuitviz.views import AttentionView  # noqa: E402
from tests.conftest import CHROMIUM, CHROMIUM_ARGS  # noqa: E402  (one Chromium set-up)

L, H, S = 12, 12, 512


def random_patterns(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Causal softmaxed random patterns ``[L, H, S, S]`` (float16) and token ids."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(L, H, S, S, generator=g) * 3
    mask = torch.ones(S, S, dtype=torch.bool).triu(1)
    logits.masked_fill_(mask, float("-inf"))
    tokens = torch.randint(0, 200, (S,), generator=g)
    tokens[S // 2 :] = tokens[: S - S // 2]  # a repeat, so induction scores mean something
    return torch.softmax(logits, -1).to(torch.float16), tokens


def circuitviz_bytes(view: AttentionView) -> dict[str, int]:
    from ipywidgets.widgets.widget import _remove_buffers

    names = [n for n in view.trait_names(sync=True) if n != "_esm" and n != "_css"]
    state, _paths, buffers = _remove_buffers(view.get_state(names))
    state_json = len(json.dumps(state, separators=(",", ":")).encode())
    buf = sum(memoryview(b).nbytes for b in buffers)
    layer = int(view.selected[1 : view.selected.index("H")])
    layer_bytes = sum(
        len(json.dumps(c).encode()) + sum(memoryview(b).nbytes for b in bufs)
        for c, bufs in view.layer_messages(layer)
    )
    esm = Path(view._esm).stat().st_size if isinstance(view._esm, Path) else len(str(view._esm))
    return {
        "state_json": state_json,
        "state_buffers": buf,
        "initial_state": state_json + buf,
        "focused_layer": layer_bytes,
        "first_render": state_json + buf + layer_bytes,
        "esm_bundle": esm,
    }


def circuitsvis_html(patterns: torch.Tensor, tokens: list[str]) -> tuple[dict[str, int], str]:
    from circuitsvis.attention import attention_heads

    cdn = local = 0
    layer0 = ""
    for layer in range(L):
        rendered = attention_heads(attention=patterns[layer].float(), tokens=tokens)
        cdn += len(rendered.cdn_src.encode())
        local += len(rendered.local_src.encode())
        if layer == 0:
            layer0 = rendered.local_src
    return {"cdn_html_all_layers": cdn, "local_html_all_layers": local}, layer0


PAINTED_CV = """() => {
    const c = document.querySelector('[data-role="grid-canvas"]');
    if (!c || !c.width) return false;
    const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
    for (let i = 0; i < d.length; i += 4) if (d[i] < 250 || d[i + 1] < 250) return true;
    return false;
}"""
FOCUS_CV = """() => {
    const root = document.querySelector('[data-view="attention"]');
    const f = document.querySelector('[data-role="focus"]');
    return root && root.getAttribute("data-busy") === "false" && f
        && f.querySelector("canvas, svg") && !f.querySelector('[data-role="loading"]');
}"""
PAINTED_CVIS = """() => {
    for (const c of document.querySelectorAll("canvas")) {
        if (!c.width || !c.height) continue;
        const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
        for (let i = 0; i < d.length; i += 4) if (d[i + 3] > 0 && (d[i] < 250 || d[i + 1] < 250)) return true;
    }
    return false;
}"""


def first_paint(browser, path: Path, predicate: str, timeout_ms: float) -> float | None:
    """ms from navigation start until ``predicate`` holds (checked every frame)."""
    page = browser.new_page()
    try:
        page.goto(path.as_uri(), wait_until="commit", timeout=timeout_ms)
        page.wait_for_function(predicate, polling="raf", timeout=timeout_ms)
        return float(page.evaluate("performance.now()"))
    except Exception as err:  # a page that cannot render offline
        print(f"  {path.name}: did not paint ({type(err).__name__}: {str(err)[:120]})")
        return None
    finally:
        page.close()


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "tests" / "artifacts" / "transport.json"))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-browser", action="store_true")
    args = ap.parse_args(argv)

    t0 = time.monotonic()
    patterns, token_ids = random_patterns()
    tokens = [f" tok{int(i)}" for i in token_ids]
    scores = {k: v.float() for k, v in role_scores(patterns, token_ids).items()}
    res = AttentionResult(patterns=patterns, tokens=tokens, scores=scores, model_name="random")
    view = AttentionView(res)
    cv = circuitviz_bytes(view)
    print(f"circuitviz AttentionView ({L}×{H}×{S}), built in {time.monotonic() - t0:.1f}s")
    for k, v in cv.items():
        print(f"  {k:>16}: {v:>13,} B")

    t0 = time.monotonic()
    cvis, cvis_layer0 = circuitsvis_html(patterns, tokens)
    print(f"CircuitsVis attention_heads, one per layer, built in {time.monotonic() - t0:.1f}s")
    for k, v in cvis.items():
        print(f"  {k:>21}: {v:>13,} B")
    ratio = cvis["cdn_html_all_layers"] / cv["first_render"]
    ratio_state = cvis["cdn_html_all_layers"] / cv["initial_state"]
    print(f"bytes ratio CircuitsVis / circuitviz first render: {ratio:,.0f}×")
    print(f"bytes ratio CircuitsVis / circuitviz initial state: {ratio_state:,.0f}×")

    report: dict = {
        "shape": [L, H, S, S],
        "circuitviz": cv,
        "circuitsvis": cvis,
        "ratio_first_render": ratio,
        "ratio_initial_state": ratio_state,
        "targets": {"ratio": 10, "first_paint_ms": 1000},
    }
    if not args.no_browser and Path(CHROMIUM).exists():
        from playwright.sync_api import sync_playwright

        from circuitviz.export._html import render_html

        focus_layer = int(view.selected[1 : view.selected.index("H")])
        full = view.static_replies
        # Embed only what the live page would fetch first: the focused head's layer.
        view.static_replies = lambda: [  # type: ignore[method-assign]
            r for r in full(budget=1 << 30) if r["match"]["layer"] == focus_layer
        ]
        with tempfile.TemporaryDirectory() as d:
            cv_page = Path(d) / "circuitviz.html"
            cv_page.write_text(render_html(view), encoding="utf-8")
            cvis_page = Path(d) / "circuitsvis_layer0.html"
            cvis_page.write_text(
                f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{cvis_layer0}"
                "</body></html>",
                encoding="utf-8",
            )
            report["circuitviz"]["standalone_html"] = cv_page.stat().st_size
            report["circuitsvis"]["local_html_layer0"] = cvis_page.stat().st_size
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                grid, focus = [], []
                for _ in range(args.repeats):
                    grid.append(first_paint(browser, cv_page, PAINTED_CV, 30_000))
                    focus.append(first_paint(browser, cv_page, FOCUS_CV, 30_000))
                cvis_paint = first_paint(browser, cvis_page, PAINTED_CVIS, 120_000)
                # The same page at 64 tokens shows the predicate works when CircuitsVis paints.
                from circuitsvis.attention import attention_heads

                small = attention_heads(
                    attention=patterns[0, :, :64, :64].float(), tokens=tokens[:64]
                )
                small_page = Path(d) / "circuitsvis_layer0_64tok.html"
                small_page.write_text(
                    f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{small.local_src}"
                    "</body></html>",
                    encoding="utf-8",
                )
                cvis_small = first_paint(browser, small_page, PAINTED_CVIS, 60_000)
                browser.close()
        ok = [g for g in grid if g is not None]
        okf = [f for f in focus if f is not None]
        report["first_paint_ms"] = {
            "circuitviz_grid_median": statistics.median(ok) if ok else None,
            "circuitviz_focus_median": statistics.median(okf) if okf else None,
            "circuitviz_grid_samples": grid,
            "circuitsvis_local_layer0": cvis_paint,
            "circuitsvis_local_layer0_64_tokens": cvis_small,
            "circuitsvis_cdn": "cannot load offline (JS from a CDN)",
        }
        fp = report["first_paint_ms"]
        print("first paint in headless Chromium (ms from navigation start):")
        print(f"  circuitviz grid (median of {len(ok)}): {fp['circuitviz_grid_median']}")
        print(f"  circuitviz focus pane (median of {len(okf)}): {fp['circuitviz_focus_median']}")
        print(f"  CircuitsVis, 1 of 12 layers, JS inlined: {cvis_paint} (None: not within 120 s)")
        print(f"  CircuitsVis, same at 64 tokens: {cvis_small}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2, default=float))
    print(f"wrote {out}")
    return report


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
