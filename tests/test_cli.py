"""The ``circuitviz`` command line, on the tiny test models.

One subprocess run proves ``python -m circuitviz figure`` end to end (every format); the
rest call ``circuitviz.cli.main`` in-process, which keeps kaleido's Chromium warm.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from circuitviz.cli import main

ROOT = Path(__file__).resolve().parents[1]
PAIRS = {
    "clean": ["t5 t17 t3 t9 t5 t17", "t8 t21 t3 t9 t8 t21"],
    "corrupted": ["t5 t18 t3 t9 t5 t18", "t8 t22 t3 t9 t8 t22"],
    "answers": ["t3", "t3"],
    "wrong_answers": ["t9", "t9"],
}


@pytest.fixture
def pairs_file(tmp_path) -> Path:
    path = tmp_path / "pairs.json"
    path.write_text(json.dumps(PAIRS))
    return path


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])


def svg_text(path: Path) -> str:
    return " ".join(ET.parse(path).getroot().itertext())


def test_help_documents_the_commands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--help"])
    assert exit_.value.code == 0
    assert "figure" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["figure", "--help"])
    text = capsys.readouterr().out
    for flag in ("--model", "--task", "--analysis", "--over", "--layer", "--head", "--top-edges",
                 "--top-nodes", "--min-weight", "--min-rel-weight", "--metric", "--n", "--seed", "--output", "--font-family",
                 "--font-size", "--column", "--width", "--height", "--dpi"):  # fmt: skip
        assert flag in text, flag
    assert main([]) == 2  # no command: help, and a failing exit status


def test_python_m_circuitviz_writes_every_format(pairs_file, tmp_path):
    outputs = [tmp_path / f"patch.{ext}" for ext in ("svg", "pdf", "png", "html")]
    cmd = [sys.executable, "-m", "circuitviz", "figure", "--model", "tiny-llama"]
    cmd += ["--task", str(pairs_file), "--analysis", "patch", "--over", "heads_by_pos"]
    cmd += ["--dpi", "100", "--width", "3", "--height", "2"]
    for path in outputs:
        cmd += ["-o", str(path)]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    assert run.returncode == 0, run.stderr
    assert run.stdout.split() == [str(p) for p in outputs]
    svg, pdf, png, page = outputs
    assert "position" in svg_text(svg) and "2: t17" in svg_text(svg)
    assert pdf.read_bytes().startswith(b"%PDF")
    assert png_size(png) == (300, 200)
    assert "<html" in page.read_text().lower()


def test_attention_head_and_role_figures(pairs_file, tmp_path, capsys):
    head = tmp_path / "head.svg"
    args = ["figure", "--model", "tiny-llama", "--task", str(pairs_file)]
    assert (
        main([*args, "--analysis", "attention", "--layer", "1", "--head", "0", "-o", str(head)])
        == 0
    )
    assert "Attention of L1H0" in svg_text(head)
    roles = tmp_path / "roles.png"
    assert (
        main(
            [
                *args,
                "--analysis",
                "attention",
                "--column",
                "double",
                "--dpi",
                "50",
                "-o",
                str(roles),
            ]
        )
        == 0
    )
    assert png_size(roles)[0] == 350
    assert capsys.readouterr().out.split() == [str(head), str(roles)]


def test_attribution_and_circuit_figures(pairs_file, tmp_path):
    args = ["figure", "--model", "tiny-gpt2", "--task", str(pairs_file)]
    attribution = tmp_path / "attribution.svg"
    assert (
        main([*args, "--analysis", "attribution", "--over", "resid_pre", "-o", str(attribution)])
        == 0
    )
    assert "Attribution patching of resid_pre" in svg_text(attribution)
    pytest.importorskip("circuitviz.engine.graph")
    circuit = tmp_path / "circuit.svg"
    assert main([*args, "--analysis", "circuit", "--top-edges", "20", "-o", str(circuit)]) == 0
    assert "LOGITS" in svg_text(circuit)


def test_builtin_task_on_a_tiny_model(tmp_path):
    out = tmp_path / "induction.svg"
    assert (
        main(["figure", "--model", "tiny-llama", "--task", "induction", "--n", "2", "-o", str(out)])
        == 0
    )
    assert "Activation patching of heads" in svg_text(out)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-o", "{tmp}/fig.jpg"], "unknown extension .jpg"),
        (["-o", "{tmp}/missing/fig.svg"], "does not exist"),
        (["-o", "{tmp}/fig.svg", "--layer", "1"], "--layer applies to --analysis attention"),
        (["-o", "{tmp}/fig.svg", "--analysis", "attention", "--layer", "1"], "both --layer and --head"),
        (["-o", "{tmp}/fig.svg", "--top-edges", "5"], "--top-edges applies to --analysis circuit"),
        (["-o", "{tmp}/fig.svg", "--width", "-2"], "inches"),
        (["-o", "{tmp}/fig.svg", "--task", "{tmp}/nope.json"], "can't read --task file"),
        (["-o", "{tmp}/fig.svg", "--task", "{tmp}/bad.json"], "needs a JSON object"),
        (["-o", "{tmp}/fig.svg", "--task", "poetry"], "unknown --task 'poetry'"),
        (["-o", "{tmp}/fig.svg", "--over", "everything"], "Unknown over='everything'"),
        (["-o", "{tmp}/fig.svg", "--analysis", "attention", "--layer", "7", "--head", "0"], "No head L7H0"),
    ],
)  # fmt: skip
def test_bad_input_is_a_clear_error_and_writes_nothing(extra, message, tmp_path, capsys):
    (tmp_path / "bad.json").write_text(json.dumps({"clean": ["t1"]}))
    before = sorted(tmp_path.iterdir())
    argv = ["figure", "--model", "tiny-llama", "--task", "induction", "--n", "1"]
    argv += [a.format(tmp=tmp_path) for a in extra]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("circuitviz: error: ") and message in err, err
    assert "Traceback" not in err
    assert sorted(tmp_path.iterdir()) == before
