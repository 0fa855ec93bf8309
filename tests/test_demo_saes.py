"""The SAEs shipped for the demo model: they load, fit the model, and reconstruct held-out
text as well as benchmarks/results/cpu2_saes.json records."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from circuitviz.engine import has_hooks, hooks
from circuitviz.engine.features import (
    check_saes,
    load_saes,
    packed_tokens,
    sae_quality,
    splice_hooks,
)
from circuitviz.engine.features._loaders import DEMO_DIR

pytestmark = pytest.mark.demo

RESULTS = Path(__file__).parents[1] / "benchmarks" / "results" / "cpu2_saes.json"
HOOKS = [f"blocks.{L}.hook_resid_post" for L in (5, 11, 17, 23)]
TEST_ROWS = 8  # the rows benchmarks/saes.py records as fve_test_rows

if not list(DEMO_DIR.glob("*/sae_weights.safetensors")):
    pytest.skip(
        f"the demo SAE weights ({DEMO_DIR}/<hook>/sae_weights.safetensors) are not in this "
        "checkout; build them with `python scripts/train_demo_saes.py --train`",
        allow_module_level=True,
    )


@pytest.fixture(scope="module")
def demo_saes():
    return load_saes("demo", device="cpu")


def test_the_demo_set_loads_and_fits_the_model(demo_model, demo_saes):
    assert demo_saes.name == "demo" and demo_saes.hooks == HOOKS
    for sae in demo_saes.values():
        assert (sae.d_in, sae.d_sae, sae.activation) == (576, 4096, "topk")
        assert sae.k <= 64 and sae.apply_b_dec_to_input
        assert sae.W_enc.dtype == torch.float32 and sae.meta["format"] == "saelens"
    assert check_saes(demo_model, demo_saes) is demo_saes
    assert not has_hooks(demo_model)


def test_splicing_with_the_error_term_changes_nothing(demo_model, demo_saes):
    tokens = demo_model.to_tokens("When John and Mary went to the store, John gave a drink to")
    with torch.no_grad():
        clean = demo_model(tokens, return_type="logits")
        with hooks(demo_model, splice_hooks(demo_saes)):
            spliced = demo_model(tokens, return_type="logits")
    assert torch.allclose(spliced, clean, atol=1e-3)
    assert not has_hooks(demo_model)


def test_fve_on_reference_text_is_the_recorded_figure(demo_model, demo_saes):
    if not RESULTS.exists():
        pytest.skip(f"{RESULTS.name} not written yet: run python benchmarks/saes.py")
    recorded = json.loads(RESULTS.read_text())["saes"]
    tokens = packed_tokens(demo_model, "reference", max_tokens=TEST_ROWS * 128 + 2000)
    got = sae_quality(demo_model, demo_saes, tokens[:TEST_ROWS], losses=False, progress=False)
    for hook in HOOKS:
        assert got[hook]["fve"] == pytest.approx(recorded[hook]["fve_test_rows"], abs=0.01)
        assert got[hook]["fve_typical"] == pytest.approx(
            recorded[hook]["fve_typical_test_rows"], abs=0.01
        )
        assert got[hook]["fve_typical"] >= 0.8
        assert got[hook]["l0"] <= 64
