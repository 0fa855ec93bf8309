"""Write figures to SVG, PDF, PNG (plotly + kaleido) or standalone HTML, atomically.

Kaleido drives a headless Chromium. Starting it costs seconds, so the first static export
starts kaleido's persistent server and later exports reuse it (stopped at interpreter exit).
Chromium is found by kaleido/choreographer on its own; set ``BROWSER_PATH=/path/to/chromium``
to choose one, or install one with ``plotly_get_chrome``.
"""

from __future__ import annotations

import atexit
import os
import secrets
import stat
import threading
import warnings
from pathlib import Path
from typing import Any

from ._style import (
    PX_PER_INCH,
    STYLE_KEYS,
    ExportError,
    Style,
    apply_style,
    css_for_pixels,
    is_styled,
    png_pixels,
    split_style,
)

STATIC_FORMATS = ("svg", "pdf", "png")
FORMATS = (*STATIC_FORMATS, "html")

_server_lock = threading.Lock()
_server_started = False


def export_format(path: str | os.PathLike) -> str:
    """The format named by the path's extension, or a clear error."""
    suffix = Path(path).suffix.lower().lstrip(".")
    if suffix not in FORMATS:
        raise ExportError(
            f"Can't export to {str(path)!r}: unknown extension {('.' + suffix) if suffix else '(none)'}; "
            "use .svg, .pdf, .png or .html."
        )
    return suffix


def check_writable(path: str | os.PathLike) -> Path:
    """Fail before any rendering if ``path`` can't be written."""
    target = Path(path).expanduser()
    if target.is_dir():
        raise ExportError(f"Can't export to {str(target)!r}: it is a directory; add a file name.")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise ExportError(
            f"Can't export to {str(target)!r}: folder {str(parent)!r} does not exist; create it first."
        )
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ExportError(
            f"Can't export to {str(target)!r}: folder {str(parent)!r} is not writable."
        )
    if target.exists() and not os.access(target, os.W_OK):
        raise ExportError(f"Can't export to {str(target)!r}: the file exists and is read-only.")
    return target


def _temp_beside(target: Path) -> Path:
    """A new empty file next to ``target``, created with mode 0666 so the kernel applies the
    umask, exactly as for a plain ``open()`` (``mkstemp`` would make it 0600)."""
    while True:
        tmp = target.parent / f".{target.name}.{secrets.token_hex(6)}{target.suffix}"
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:
            continue


def write_atomically(target: Path, write) -> None:
    """Call ``write(tmp_path)`` on a temp file beside ``target``, then rename it into place,
    so a failure never leaves a partial file at ``target``. Saving over a file keeps that
    file's permissions (a private 0600 file stays private); a new file gets the permissions a
    plain ``open()`` would give it (0666 less the umask)."""
    try:
        mode: int | None = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        mode = None
    tmp = _temp_beside(target)
    try:
        write(tmp)
        if os.path.getsize(tmp) == 0:
            raise ExportError(f"Exporting {str(target)!r} produced an empty file.")
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _print_pdf_without_margins() -> None:
    """kaleido 1.x prints a PDF page the figure's size but with 0.1 in margins inside it,
    which shifts the figure and clips its bottom and right edges; print with no margins."""
    try:
        from kaleido._kaleido_tab import _devtools_utils as devtools
    except ImportError:  # another kaleido layout: leave it alone
        return
    if getattr(devtools.print_pdf, "circuitviz", False) or not hasattr(devtools, "_raise_error"):
        return

    async def print_pdf(tab):
        params = {
            "printBackground": True,
            "marginTop": 0,
            "marginBottom": 0,
            "marginLeft": 0,
            "marginRight": 0,
            "preferCSSPageSize": True,
            "pageRanges": "1",
        }
        response = await tab.send_command("Page.printToPDF", params=params)
        devtools._raise_error(response)
        return response.get("result", {}).get("data")

    print_pdf.circuitviz = True
    devtools.print_pdf = print_pdf


def _check_chromium() -> None:
    """Fail clearly when no Chromium can be found: kaleido's server thread would die on
    start-up and leave every later render waiting forever."""
    try:
        from choreographer.browsers.chromium import Chromium
    except ImportError:  # another choreographer layout: let kaleido report it
        return
    path = Chromium.find_browser(skip_local=False)
    if not path or not Path(path).is_file():
        where = os.environ.get("BROWSER_PATH")
        raise ExportError(
            "Static export (.svg/.pdf/.png) needs Chromium, and none was found"
            + (f" at BROWSER_PATH={where!r}" if where else "")
            + ". Install it (`apt-get install chromium`, or `plotly_get_chrome`) or set "
            "BROWSER_PATH=/path/to/chromium; or export .html instead."
        )


def _ensure_server() -> None:
    global _server_started
    with _server_lock:
        if _server_started:
            return
        import kaleido

        _check_chromium()

        _print_pdf_without_margins()

        # MathJax would be fetched from a CDN; figures use no LaTeX, and CI may be offline.
        kaleido.start_sync_server(silence_warnings=True, mathjax=False)
        atexit.register(kaleido.stop_sync_server, silence_warnings=True)
        _server_started = True


def render(fig, fmt: str, *, dpi: int = 300) -> bytes:
    """The bytes of ``fig`` as ``svg``, ``pdf`` or ``png``, at the figure's layout size."""
    if fmt not in STATIC_FORMATS:
        raise ExportError(f"render() makes {STATIC_FORMATS}, not {fmt!r}.")
    width = float(fig.layout.width or 3.5 * PX_PER_INCH)
    height = float(fig.layout.height or 2.6 * PX_PER_INCH)
    opts: dict[str, Any] = {"format": fmt, "width": width, "height": height, "scale": 1}
    if fmt == "png":
        # Exactly inches × dpi pixels: scale the layout so kaleido's floor lands on it.
        scale = dpi / PX_PER_INCH
        opts["scale"] = scale
        opts["width"] = css_for_pixels(png_pixels(width / PX_PER_INCH, dpi), scale)
        opts["height"] = css_for_pixels(png_pixels(height / PX_PER_INCH, dpi), scale)
    try:
        import kaleido

        _ensure_server()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            data = kaleido.calc_fig_sync(fig.to_dict(), opts=opts)
    except ExportError:
        raise
    except Exception as err:  # kaleido/choreographer raise many types; say what to do
        name = type(err).__name__
        if "Chrom" in name or "Browser" in name or "chrom" in str(err).lower():
            raise ExportError(
                f"Static export needs Chromium, which kaleido could not start ({name}: {err}). "
                "Install it (`apt-get install chromium`, or `plotly_get_chrome`) or set "
                "BROWSER_PATH=/path/to/chromium."
            ) from err
        raise
    if not data:
        raise ExportError(f"kaleido returned no {fmt.upper()} data for this figure.")
    return bytes(data)


def figure_of(obj: Any, **options: Any):
    """A styled plotly figure of any circuitviz result, view, graph or plotly figure."""
    import plotly.graph_objects as go

    style, rest = split_style(options)
    if isinstance(obj, go.Figure):
        if rest:
            raise TypeError(f"A plotly Figure takes only style options, not {sorted(rest)}.")
        fig = go.Figure(obj)
        if is_styled(fig) and set(options) & STYLE_KEYS:  # restyle: the caller asked for it
            height_in = (fig.layout.height or 2.6 * PX_PER_INCH) / PX_PER_INCH
            apply_style(fig, style, natural_height=height_in)
    elif _is_graph(obj):
        from ._graph_figure import graph_figure

        fig = graph_figure(obj, **options)
    elif hasattr(obj, "figure"):
        fig = obj.figure(**options)
    elif type(obj).__name__ == "SteeringResult":
        from ._steering_figure import steering_figure

        fig = steering_figure(obj, **options)
    elif type(obj).__name__ == "AblationResult":
        from ._figures import ablation_figure

        fig = ablation_figure(obj, **options)
    else:
        raise ExportError(
            f"Don't know how to draw a {type(obj).__name__}: export a circuitviz result, view, "
            "Graph (or its JSON dict) or a plotly Figure."
        )
    if not fig.data:
        raise ExportError(f"Nothing to draw: the figure of this {type(obj).__name__} is empty.")
    if not is_styled(fig):  # e.g. a view or user figure that doesn't style itself
        ratio = (fig.layout.height or 450) / (fig.layout.width or 700)
        apply_style(fig, style, natural_height=style.width_in * ratio)
    return fig


def _is_graph(obj: Any) -> bool:
    if isinstance(obj, dict):
        return str(obj.get("schema", "")).startswith("circuitviz.graph/")
    # A Graph without its own figure(): draw it from its JSON.
    return hasattr(obj, "to_json") and not hasattr(obj, "figure")


def save(obj: Any, path: str | os.PathLike, **options: Any) -> Path:
    """Write ``obj`` to ``path``; the extension picks the format (.svg .pdf .png .html).

    ``obj``: a ``PatchResult``, ``AttentionResult``, ``AblationResult``, ``Graph`` (or its JSON
    dict), a view, or a plotly ``Figure``. ``options``: style (``font_family``, ``font_size``
    in pt, ``column`` ``"single"|"double"``, ``width``/``height`` in inches, ``dpi`` for PNG)
    plus what the object's ``figure()`` takes (``layer=``, ``threshold=``…). Nothing is
    written unless the whole export succeeds. Returns the path written.
    """
    fmt = export_format(path)
    target = check_writable(path)
    if fmt == "html":
        _save_html(obj, target)
        return target
    style, _ = split_style(options)  # validate style before the (slow) render
    data = render(figure_of(obj, **options), fmt, dpi=style.dpi)
    write_atomically(target, lambda tmp: tmp.write_bytes(data))
    return target


def save_many(obj: Any, paths: list[str | os.PathLike], **options: Any) -> list[Path]:
    """Like :func:`save` for several paths, building the figure once; all paths are checked
    before anything is rendered."""
    formats = [export_format(p) for p in paths]
    targets = [check_writable(p) for p in paths]
    style, _ = split_style(options)
    fig = figure_of(obj, **options) if any(f != "html" for f in formats) else None
    for fmt, target in zip(formats, targets, strict=True):
        if fmt == "html":
            _save_html(obj, target)
        else:
            data = render(fig, fmt, dpi=style.dpi)
            write_atomically(target, lambda tmp, data=data: tmp.write_bytes(data))
    return targets


def _save_html(obj: Any, target: Path) -> None:
    write_html = _html_writer()
    write_atomically(target, lambda tmp: write_html(obj, tmp))


def _html_writer():
    try:
        from ._html import write_html
    except ImportError as err:
        raise NotImplementedError(
            "HTML export needs circuitviz.export._html.write_html, which this install lacks; "
            "export .svg, .pdf or .png instead."
        ) from err
    return write_html


__all__ = ["FORMATS", "Style", "figure_of", "render", "save", "save_many"]
