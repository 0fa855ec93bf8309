"""``circuitviz`` command line: publication figures from a shell or CI.

    circuitviz figure --task ioi --analysis patch --over heads -o patch.svg -o patch.png
    circuitviz figure --model tiny-llama --task pairs.json --analysis attention \\
        --layer 1 --head 2 -o attn.pdf

Every output path is checked (extension, writable folder) before the model loads, and
files are written atomically, so a failed run leaves no partial file.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ANALYSES = ("attention", "patch", "attribution", "circuit")
COLOR_SCALES = ("linear", "sqrt", "log")  # circuitviz.export._figures.COLOR_SCALES
TINY_MODELS = {"tiny-llama": "llama", "tiny-gpt2": "gpt2"}
PAIR_KEYS = ("clean", "corrupted", "answers", "wrong_answers")
EXIT_BAD_INPUT = 2
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report Ctrl-C


class CliError(Exception):
    """A problem with the command's input, reported as one line without a traceback."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying the files that were complete before it (each is written atomically,
    so there is never a partial one)."""

    def __init__(self, written: Sequence[Path] = ()):
        super().__init__()
        self.written = list(written)

    def message(self) -> str:
        if not self.written:
            return "circuitviz: interrupted; no file written."
        done = ", ".join(str(p) for p in self.written)
        return f"circuitviz: interrupted; only {done} written, the other outputs not."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="circuitviz",
        description="Mechanistic-interpretability figures from the command line.",
        epilog="Run `circuitviz figure --help` for the figure options.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    fig = sub.add_parser(
        "figure",
        help="run an analysis and write its figure (.svg, .pdf, .png or .html)",
        description=(
            "Run one analysis on a model and task, and write its figure. The output's\n"
            "extension picks the format: .svg, .pdf, .png (static, publication style) or\n"
            ".html (standalone interactive page). Give -o several times for several files."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "examples:\n"
            "  circuitviz figure --task ioi --analysis patch --over heads -o patch.svg\n"
            "  circuitviz figure --analysis attention --layer 4 --head 7 -o attn.png --dpi 600\n"
            "  circuitviz figure --analysis circuit --top-edges 150 --column double -o circuit.pdf\n"
            "  circuitviz figure --model tiny-llama --task pairs.json --analysis patch -o p.svg\n"
            "\n"
            'pairs.json: {"clean": [...], "corrupted": [...], "answers": [...], '
            '"wrong_answers": [...]}\n'
            "Static export uses kaleido with Chromium; set BROWSER_PATH to choose a Chromium."
        ),
    )
    what = fig.add_argument_group("model and task")
    what.add_argument(
        "--model",
        default="demo",
        help="'demo' (SmolLM2-135M-Instruct, default), 'tiny-llama', 'tiny-gpt2' "
        "(random 2-layer test models), or a Hugging Face name or local folder",
    )
    what.add_argument(
        "--task",
        default=None,
        help="'ioi', 'induction' or a JSON file of prompt pairs "
        "(default: ioi, or induction for the tiny models)",
    )
    what.add_argument(
        "--prepend-bos",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="start every prompt with the model's BOS token, or not (default: the model's "
        "convention; the demo model prepends <|im_start|>; a pairs file may set prepend_bos)",
    )
    what.add_argument("--n", type=int, default=8, help="number of prompt pairs (default 8)")
    what.add_argument("--seed", type=int, default=0, help="random seed of the task (default 0)")
    what.add_argument(
        "--metric",
        default="logit_diff",
        help="logit_diff (default), normalized_logit_diff, answer_prob or kl",
    )

    how = fig.add_argument_group("analysis")
    how.add_argument("--analysis", choices=ANALYSES, default="patch", help="default: patch")
    how.add_argument(
        "--over",
        default=None,
        help="what patch/attribution patches: heads (default), heads_by_pos, resid_pre, "
        "attn_out, mlp_out, q, k, v, pattern",
    )
    how.add_argument(
        "--direction",
        choices=("denoise", "noise"),
        default=None,
        help="patch/attribution: denoise (default) or noise",
    )
    how.add_argument(
        "--color",
        choices=("effect", "value"),
        default=None,
        help="patch/attribution colour bar: effect = value − baseline (default, as the widget) "
        "or value (the metric itself, centred on the baseline)",
    )
    how.add_argument("--layer", type=int, default=None, help="attention: the head's layer")
    how.add_argument(
        "--head",
        type=int,
        default=None,
        help="attention: the head (with --layer; without both, the head-role scores)",
    )
    how.add_argument(
        "--hide-bos",
        action="store_true",
        default=None,
        help="attention (with --layer/--head): leave out the first key column (BOS)",
    )
    how.add_argument(
        "--color-scale",
        choices=COLOR_SCALES,
        default=None,
        help="attention (with --layer/--head): linear (default), sqrt or log colours",
    )
    how.add_argument(
        "--top-edges",
        type=int,
        default=None,
        help="circuit: at most N edges, the strongest on EMBED→LOGITS paths (default 200)",
    )
    how.add_argument(
        "--top-nodes", type=int, default=None, help="circuit: at most N head/MLP nodes"
    )
    how.add_argument(
        "--min-weight",
        type=float,
        default=None,
        help="circuit: edges with |weight| >= W (absolute)",
    )
    how.add_argument(
        "--min-rel-weight",
        type=float,
        default=None,
        help="circuit: edges with |weight| >= F x the strongest (relative, 0-1)",
    )
    how.add_argument("--top-n", type=int, default=None, help="deprecated: --top-edges")
    how.add_argument("--threshold", type=float, default=None, help="deprecated: --min-weight")

    out = fig.add_argument_group("output and style")
    out.add_argument(
        "-o",
        "--output",
        action="append",
        required=True,
        metavar="PATH",
        help="file to write (.svg .pdf .png .html); repeat for several formats",
    )
    out.add_argument("--font-family", default=None, help="CSS font list (default Arial-like)")
    out.add_argument("--font-size", type=float, default=None, help="points (default 8)")
    out.add_argument(
        "--column",
        choices=("single", "double"),
        default=None,
        help="width preset: single (3.5 in, default) or double (7.0 in)",
    )
    out.add_argument("--width", type=float, default=None, help="inches (overrides --column)")
    out.add_argument("--height", type=float, default=None, help="inches (default: fits the figure)")
    out.add_argument("--dpi", type=int, default=None, help="PNG resolution (default 300)")
    out.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="show progress on stderr (default: when stderr is a terminal, so CI logs stay "
        "clean); Ctrl-C stops cleanly, writing no partial file",
    )
    fig.set_defaults(run=run_figure)
    return parser


def style_options(args: argparse.Namespace) -> dict[str, Any]:
    names = ("font_family", "font_size", "column", "width", "height", "dpi")
    return {k: getattr(args, k) for k in names if getattr(args, k) is not None}


def check_arguments(args: argparse.Namespace) -> None:
    """Options that don't fit the analysis are mistakes: say so before any slow work."""
    by_analysis = {
        "over": ("patch", "attribution"),
        "direction": ("patch", "attribution"),
        "color": ("patch", "attribution"),
        "layer": ("attention",),
        "head": ("attention",),
        "hide_bos": ("attention",),
        "color_scale": ("attention",),
        **{name: ("circuit",) for name in (*PRUNE_FLAGS, *DEPRECATED_FLAGS)},
    }
    for name, analyses in by_analysis.items():
        if getattr(args, name) is not None and args.analysis not in analyses:
            flag = "--" + name.replace("_", "-")
            raise CliError(
                f"{flag} applies to --analysis {' or '.join(analyses)}, not {args.analysis}."
            )
    if (args.layer is None) != (args.head is None):
        raise CliError("give both --layer and --head (one head's pattern), or neither.")
    if args.layer is None and (args.hide_bos or args.color_scale):
        raise CliError(
            "--hide-bos and --color-scale apply to one head's pattern: give --layer and --head."
        )
    if args.n < 1:
        raise CliError(f"--n must be at least 1, got {args.n}.")


def load_model(name: str):
    import circuitviz

    if name in TINY_MODELS:
        return circuitviz.tiny_model(TINY_MODELS[name])
    return circuitviz.load_model(name)


def load_pairs_file(path: Path, prepend_bos: bool | None = None):
    from circuitviz import PromptPairs

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise CliError(f"can't read --task file {str(path)!r}: {err.strerror}.") from err
    except json.JSONDecodeError as err:
        raise CliError(f"--task file {str(path)!r} is not valid JSON: {err}.") from err
    if not isinstance(data, dict) or any(k not in data for k in PAIR_KEYS):
        raise CliError(
            f"--task file {str(path)!r} needs a JSON object with lists {list(PAIR_KEYS)}."
        )
    if prepend_bos is not None:  # the command line wins over the file
        data = {**data, "prepend_bos": prepend_bos}
    return PromptPairs.from_dict(data)


def make_pairs(model, args: argparse.Namespace):
    from circuitviz import tasks

    task = args.task or ("induction" if args.model in TINY_MODELS else "ioi")
    if task in ("ioi", "induction"):
        return getattr(tasks, task)(model, args.n, seed=args.seed, prepend_bos=args.prepend_bos)
    if task.endswith(".json") or Path(task).is_file():
        return load_pairs_file(Path(task), args.prepend_bos)
    raise CliError(f"unknown --task {task!r}: use ioi, induction or a .json file of pairs.")


def _engine(name: str):
    """A top-level circuitviz function, or a clear error if this build lacks it."""
    import circuitviz

    fn = getattr(circuitviz, name, None)
    if fn is None and name == "circuit":
        try:
            from circuitviz.engine.graph import circuit as fn
        except ImportError:
            fn = None
    if fn is None:
        raise CliError(f"this circuitviz build has no circuitviz.{name}() yet.")
    return fn


def _call(fn, *args: Any, **options: Any):
    """Call with the options ``fn`` accepts (not every analysis takes ``progress``)."""
    params = inspect.signature(fn).parameters
    return fn(*args, **{k: v for k, v in options.items() if k in params and v is not None})


def run_analysis(model, pairs, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """The result object and the figure options that go with it."""
    if args.analysis == "attention":
        result = _call(_engine("attention"), model, pairs.clean[0], prepend_bos=pairs.prepend_bos)
        shown = {"hide_bos": args.hide_bos, "color_scale": args.color_scale}
        return result, {"layer": args.layer, "head": args.head, **shown}
    if args.analysis in ("patch", "attribution"):
        fn = _engine("patch" if args.analysis == "patch" else "attribution_patch")
        over = args.over or "heads"
        result = _call(
            fn,
            model,
            pairs,
            over=over,
            direction=args.direction,
            metric=args.metric,
            progress=args.progress,
        )
        return result, {"color": args.color}
    graph = _call(_engine("circuit"), model, pairs, metric=args.metric, progress=args.progress)
    return graph.prune(**pruning_options(args)), {}  # once, so the HTML shows the same graph


PRUNE_FLAGS = ("top_edges", "top_nodes", "min_weight", "min_rel_weight")
DEPRECATED_FLAGS = {"top_n": "top_edges", "threshold": "min_weight"}


def pruning_options(args: argparse.Namespace) -> dict[str, Any]:
    """``Graph.prune`` options from the flags (same words); without any, the 200 strongest
    edges (unpruned graphs of real models have far too many edges to draw)."""
    options = {k: getattr(args, k) for k in PRUNE_FLAGS if getattr(args, k) is not None}
    for old, new in DEPRECATED_FLAGS.items():
        if getattr(args, old) is not None:
            if new in options:
                raise CliError(
                    f"Give --{new.replace('_', '-')} only (--{old.replace('_', '-')} is its old name)."
                )
            print(
                f"circuitviz: --{old.replace('_', '-')} is deprecated, use "
                f"--{new.replace('_', '-')}.",
                file=sys.stderr,
            )
            options[new] = getattr(args, old)
    return options or {"top_edges": 200}


def html_object(result: Any, figure_options: dict[str, Any]) -> Any:
    """What the .html page shows: an attention result as a view focused on --layer/--head
    with --hide-bos and --color-scale, so the page opens on what the static figure shows."""
    if type(result).__name__ != "AttentionResult":
        return result
    from circuitviz.views import AttentionView

    state = {k: v for k, v in figure_options.items() if k in ("hide_bos", "color_scale")}
    if "layer" in figure_options:
        state["selected"] = f"L{figure_options['layer']}H{figure_options['head']}"
    return AttentionView(result, state=state)


def run_figure(args: argparse.Namespace) -> int:
    from circuitviz._progress import Steps
    from circuitviz.export import figure_of, make_style
    from circuitviz.export._static import check_writable, export_format, save_many

    check_arguments(args)
    if args.progress is None:
        args.progress = sys.stderr.isatty()
    style = style_options(args)
    make_style(**style)  # bad style is reported before the model loads
    for path in args.output:
        export_format(path)
        check_writable(path)
    names = ["loading the model", "building the prompts", args.analysis, "writing"]
    written: list[Path] = []
    try:
        with Steps("figure", names, enabled=args.progress, file=sys.stderr) as steps:
            steps.start("loading the model")
            model = load_model(args.model)
            steps.start("building the prompts")
            pairs = make_pairs(model, args)
            steps.start(args.analysis)
            result, figure_options = run_analysis(model, pairs, args)
            figure_options = {k: v for k, v in figure_options.items() if v is not None}
            steps.start("writing")
            static = [p for p in args.output if export_format(p) != "html"]
            html = [p for p in args.output if export_format(p) == "html"]
            if static:  # one figure for every static format
                fig = figure_of(result, **figure_options, **style)
                for path in static:
                    written += save_many(fig, [path], **style)
            if html:
                shown = html_object(result, figure_options)
                if "color" in figure_options:  # the page opens in the colour mode asked for
                    from circuitviz.views import PatchingView

                    shown = PatchingView(result, state={"color": figure_options["color"]})
                for path in html:
                    written += save_many(shown, [path])
    except KeyboardInterrupt as err:
        raise Interrupted(written) from err
    for path in written:
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "run", None):
        parser.print_help()
        return EXIT_BAD_INPUT
    try:  # the import loads torch (seconds): Ctrl-C there is an interrupt too
        from circuitviz.engine import InputError, MetricError, ModelNotFoundError

        try:
            return args.run(args)
        except (CliError, InputError, MetricError, ModelNotFoundError, NotImplementedError) as err:
            print(f"circuitviz: error: {err}", file=sys.stderr)
            return EXIT_BAD_INPUT
    except KeyboardInterrupt as err:
        print(
            err.message() if isinstance(err, Interrupted) else Interrupted().message(),
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
