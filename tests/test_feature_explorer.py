"""The feature explorer's engine: per-token top latents, logit effects, corpus statistics
(top snippets, histograms, labels), their file format, search, and bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import circuitviz
from circuitviz.engine import has_hooks
from circuitviz.engine.features import (
    SAE,
    SAESet,
    card,
    feature_activations,
    feature_stats,
    load_feature_stats,
    logit_effects,
    save_feature_stats,
    search,
)
from circuitviz.engine.features._stats import HIST_EDGES
from tests._tiny_sae import tiny_saes

PROMPT = "t5 t17 t3 t9 t5 t17 t40"
#: Texts of varied lengths (2 … 24 words), so batches are padded.
TEXTS = [
    " ".join(f"t{(7 * i + 3 * j + i * j) % 120}" for j in range(2 + i % 23)) for i in range(37)
]


@pytest.fixture(scope="module")
def saes(tiny_llama):
    return tiny_saes(tiny_llama)


@pytest.fixture(scope="module")
def stats(tiny_llama, saes):
    return feature_stats(tiny_llama, saes, TEXTS, batch_size=5, progress=False)


def cached_latents(model, sae: SAE, text: str) -> torch.Tensor:
    """Reference: TransformerLens's own activation cache, then a direct ``sae.encode``."""
    _, cache = model.run_with_cache(text)
    return sae.encode(cache[sae.hook_name][0]).float()


def logits(model, text: str = PROMPT) -> torch.Tensor:
    with torch.no_grad():
        return model(text, return_type="logits")


# ------------------------------------------------------------------------- per-token latents


def test_top_latents_per_token_equal_a_direct_encode_of_cached_activations(tiny_llama, saes):
    acts = feature_activations(tiny_llama, PROMPT, saes, k=6)
    assert acts.tokens == [str(t) for t in tiny_llama.to_str_tokens(PROMPT)]
    for hook, sae in saes.items():
        ref = cached_latents(tiny_llama, sae, PROMPT)
        torch.testing.assert_close(acts.latents[hook], ref, atol=1e-5, rtol=0)
        top = ref.topk(6, dim=-1)
        torch.testing.assert_close(acts.top_value[hook], top.values, atol=1e-5, rtol=0)
        active = top.values > 1e-4  # inactive slots (zeros) may come in any order
        assert torch.equal(acts.top_index[hook][active], top.indices[active])
    assert not has_hooks(tiny_llama)


# ------------------------------------------------------------------------------ logit effects


@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_logit_effects_equal_a_hand_computation(arch, tiny_llama, tiny_gpt2, saes):
    """``(c(W_dec[i]) ⊙ w) @ W_U``: RMSNorm (llama) scales by its weight; LayerNorm (gpt2)
    centres the direction first, then scales."""
    model = {"llama": tiny_llama, "gpt2": tiny_gpt2}[arch]
    sae = saes["blocks.1.hook_resid_post"] if arch == "llama" else tiny_saes(model, [1])[1]
    norm = getattr(model.ln_final, "_original_component", model.ln_final)
    weight = norm.weight.detach()
    for index in (0, 7, sae.d_sae - 1):
        d = sae.W_dec[index]
        if arch == "gpt2":
            d = d - d.mean()
        hand = (d * weight) @ model.W_U.detach()
        effects = logit_effects(model, sae, index, k=5)
        up = hand.topk(5)
        down = (-hand).topk(5)
        strings = [model.tokenizer.decode([i]) for i in range(model.cfg.d_vocab)]
        assert [t for t, _ in effects["promoted"]] == [strings[i] for i in up.indices]
        assert [t for t, _ in effects["suppressed"]] == [strings[i] for i in down.indices]
        np.testing.assert_allclose([v for _, v in effects["promoted"]], up.values, atol=1e-5)
        np.testing.assert_allclose([v for _, v in effects["suppressed"]], -down.values, atol=1e-5)


# ------------------------------------------------------------------------ corpus statistics


def brute_force(model, saes: SAESet, texts: list[str]) -> dict[str, dict]:
    """One text at a time through ``run_with_cache``: every latent's peak in each text
    (BOS left out), then the texts ranked by it; every non-zero activation for the histograms."""
    out = {}
    for hook, sae in saes.items():
        peaks, where, values = [], [], []
        for text in texts:
            f = cached_latents(model, sae, text)[1:]  # BOS excluded
            peak, pos = f.max(dim=0)
            peaks.append(peak)
            where.append(pos + 1)
            values.append(f[f > 0])
        out[hook] = {
            "peaks": torch.stack(peaks),  # [doc, d_sae]
            "where": torch.stack(where),
            "values": torch.cat(values),
            "active": sum(int((cached_latents(model, sae, t)[1:] > 0).sum()) for t in texts),
        }
    return out


def test_top_snippets_and_histograms_equal_a_brute_force_scan(tiny_llama, saes, stats):
    ref = brute_force(tiny_llama, saes, TEXTS)
    n_tokens = sum(len(tiny_llama.to_tokens(t)[0]) - 1 for t in TEXTS)
    for hook, sae in saes.items():
        st, r = stats[hook], ref[hook]
        assert st.n_tokens == n_tokens
        compared = 0
        for i in range(sae.d_sae):
            order = sorted(range(len(TEXTS)), key=lambda d: -float(r["peaks"][d, i]))[: st.n_top]
            want = [float(r["peaks"][d, i]) for d in order]
            got = st.top_values[i]
            np.testing.assert_allclose(got, np.maximum(want, 0), atol=1e-5)
            for slot, d in enumerate(order):
                gap = min(
                    abs(want[slot] - float(r["peaks"][e, i])) for e in range(len(TEXTS)) if e != d
                )
                if want[slot] > 0 and gap > 1e-4:  # a clear winner: same text and position
                    assert st.top_doc[i, slot] == d
                    assert st.top_pos[i, slot] == int(r["where"][d, i])
                    compared += 1
                if want[slot] <= 0:
                    assert st.top_doc[i, slot] == -1
        assert compared > sae.d_sae  # most snippets were checked position by position
        v = r["values"].numpy()
        want_hist = np.bincount(
            np.searchsorted(HIST_EDGES[1:-1], v, side="left"), minlength=len(HIST_EDGES) - 1
        )
        assert int(st.hist_counts.sum()) == len(v) == int(st.n_active.sum()) == r["active"]
        assert np.abs(st.hist_counts.sum(0).astype(int) - want_hist).sum() <= 2  # float ties
    assert not has_hooks(tiny_llama)


def test_snippets_show_the_peak_with_its_context(tiny_llama, stats):
    st = stats["blocks.0.hook_resid_post"]
    i = int(np.argmax(st.top_values[:, 0]))
    snip = st.snippets(i)[0]
    doc = tiny_llama.to_tokens(TEXTS[int(st.top_doc[i, 0])])[0].tolist()
    pos = int(st.top_pos[i, 0])
    assert snip["ids"][snip["peak"]] == doc[pos]
    assert snip["ids"] == doc[max(0, pos - 12) : pos + 5]


def test_labels_name_the_snippet_peaks_and_the_promoted_tokens(tiny_llama, saes, stats):
    st = stats["blocks.1.hook_resid_post"]
    strings = [tiny_llama.tokenizer.decode([i]) for i in range(tiny_llama.cfg.d_vocab)]
    for i in range(saes["blocks.1.hook_resid_post"].d_sae):
        label = st.labels[i]
        promoted = logit_effects(tiny_llama, saes["blocks.1.hook_resid_post"], i, k=2)
        assert label.endswith(" | ".join(t for t, _ in promoted["promoted"]))
        peaks = st.peak_ids(i)
        if peaks:
            commonest = max(set(peaks), key=lambda t: (peaks.count(t), -peaks.index(t)))
            assert label.startswith(strings[commonest])
        else:
            assert label.startswith("(dead in corpus)")


def test_stats_round_trip_through_a_compact_file(tmp_path, stats, saes):
    path = save_feature_stats(stats, tmp_path / "stats.npz")
    back = load_feature_stats(path)
    assert list(back) == list(stats)
    for hook, st in stats.items():
        b = back[hook]
        for name in ("top_values", "top_doc", "top_pos", "hist_counts", "n_active", "promoted"):
            np.testing.assert_array_equal(getattr(b, name), getattr(st, name), err_msg=name)
        assert b.labels == st.labels and b.n_tokens == st.n_tokens
        assert [s["ids"] for s in b.snippets(3)] == [s["ids"] for s in st.snippets(3)]
        b.check(saes[hook])
    assert path.stat().st_size < 60_000


def test_a_damaged_or_foreign_stats_file_is_an_input_error(tmp_path, stats):
    good = save_feature_stats(stats, tmp_path / "ok.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(circuitviz.InputError, match="Can't read"):
        load_feature_stats(tmp_path / "junk.npz")
    np.savez(tmp_path / "other.npz", x=np.zeros(3))
    with pytest.raises(circuitviz.InputError, match="not a circuitviz feature-statistics"):
        load_feature_stats(tmp_path / "other.npz")
    with np.load(good) as data:
        arrays = dict(data)
    arrays["0/top_pos"] = arrays["0/top_pos"] + 10_000  # snippets past the end of their text
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(circuitviz.InputError, match="outside the corpus"):
        load_feature_stats(tmp_path / "bad.npz")


def test_stats_of_another_width_are_refused(tiny_llama, saes, stats):
    from circuitviz.views import FeatureView

    wide = tiny_saes(tiny_llama, [1], d_sae=80)
    with pytest.raises(circuitviz.InputError, match="describe 64 latents but the SAE has 80"):
        FeatureView(tiny_llama, PROMPT, saes=wide, stats=stats)


# -------------------------------------------------------------------------------- cards, search


def test_card_holds_prompt_activations_snippets_effects_and_histogram(tiny_llama, saes, stats):
    acts = feature_activations(tiny_llama, PROMPT, saes)
    hook = "blocks.1.hook_resid_post"
    i = int(acts.top_index[hook][2, 0])
    c = card(tiny_llama, saes, acts, hook, i, stats=stats[hook])
    np.testing.assert_allclose(c["acts"], acts.latents[hook][:, i], atol=1e-5)
    assert c["label"] == c["auto_label"] == stats[hook].labels[i]
    assert len(c["snippets"]) == int((stats[hook].top_values[i] > 0).sum())
    assert sum(c["hist"]["counts"]) + c["hist"]["zeros"] == c["hist"]["n_tokens"]
    assert c["frequency"] == pytest.approx(stats[hook].n_active[i] / stats[hook].n_tokens)
    bare = card(tiny_llama, saes, acts, hook, i, stats=None, label="mine")
    assert bare["label"] == "mine" and bare["snippets"] == [] and bare["hist"] is None
    assert bare["auto_label"].startswith("→ ")


def test_search_by_label_and_by_token(tiny_llama, saes, stats):
    acts = feature_activations(tiny_llama, PROMPT, saes)
    hook = "blocks.0.hook_resid_post"
    found = search(
        tiny_llama, saes, "NAMES", by="label", stats=stats, labels={f"{hook}:5": "names"}
    )
    assert [r["id"] for r in found] == [f"{hook}:5"]
    needle = stats[hook].labels[9][:3]
    ids = {r["id"] for r in search(tiny_llama, saes, needle, by="label", stats=stats)}
    want = {
        f"{h}:{i}" for h, st in stats.items() for i, lab in enumerate(st.labels) if needle in lab
    }
    assert ids == want
    # by token: a feature whose top snippets peak on " t5", or promotes it, or fires on it here
    t5 = tiny_llama.to_single_token(" t5")
    by_token = search(tiny_llama, saes, " t5", by="token", acts=acts, stats=stats)
    assert by_token
    for r in by_token:
        st = stats[r["hook"]]
        fires = acts.latents[r["hook"]][acts.ids == t5][:, r["index"]].max() > 0
        assert t5 in st.peak_ids(r["index"]) or t5 in st.promoted[r["index"]] or fires
    scores = [r["score"] for r in by_token]
    assert scores == sorted(scores, reverse=True)
    for query, by, message in [(" ", "label", "empty"), ("x", "name", "by 'token' or 'label'")]:
        with pytest.raises(circuitviz.InputError, match=message):
            search(tiny_llama, saes, query, by=by)


# ---------------------------------------------------------------------------------- bad input


def test_bad_saes_are_input_errors_that_leave_no_hook(tiny_llama, saes):
    before = logits(tiny_llama)
    narrow = SAE(
        "blocks.0.hook_resid_post",
        torch.randn(16, 8),
        torch.zeros(8),
        torch.randn(8, 16),
        torch.zeros(16),
    )
    unknown = SAE("blocks.9.hook_resid_post", *(t.clone() for t in _weights(saes)))
    for bad, message in [
        (narrow, "reads 16-wide vectors but 'blocks.0.hook_resid_post' gives 32"),
        (unknown, "no hook 'blocks.9.hook_resid_post'"),
    ]:
        with pytest.raises(circuitviz.InputError, match=message):
            feature_activations(tiny_llama, PROMPT, bad)
        with pytest.raises(circuitviz.InputError, match=message):
            feature_stats(tiny_llama, bad, TEXTS[:3], progress=False)
        assert not has_hooks(tiny_llama)
    assert torch.equal(logits(tiny_llama), before)
    hook = "blocks.1.hook_resid_post"
    with pytest.raises(circuitviz.InputError, match=r"out of range .* \(0 … 63\)"):
        logit_effects(tiny_llama, saes[hook], 64)
    for bad_texts, message in [
        ("one text", "list of strings"),
        ([], "empty"),
        ([3], "not a string"),
    ]:
        with pytest.raises(circuitviz.InputError, match=message):
            feature_stats(tiny_llama, saes, bad_texts, progress=False)
    with pytest.raises(circuitviz.InputError, match="n_top=0"):
        feature_stats(tiny_llama, saes, TEXTS, n_top=0, progress=False)


def _weights(saes):
    s = saes["blocks.0.hook_resid_post"]
    return s.W_enc, s.b_enc, s.W_dec, s.b_dec


def test_an_interrupt_mid_corpus_leaves_no_hook(tiny_llama, saes, monkeypatch):
    from circuitviz.engine.features import _stats

    calls = []

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    original = _stats._update
    monkeypatch.setattr(_stats, "_update", interrupt)
    with pytest.raises(KeyboardInterrupt):
        feature_stats(tiny_llama, saes, TEXTS, batch_size=4, progress=False)
    assert not has_hooks(tiny_llama)


# ---------------------------------------------------------------------------------- demo model


@pytest.mark.demo
@pytest.mark.slow
def test_demo_model_with_a_random_sae(demo_model):
    """A throwaway random TopK SAE on the demo model's layer 5: stats on a few texts, a view,
    a card; hooks gone and logits unchanged."""
    from circuitviz.views import FeatureView

    g = torch.Generator().manual_seed(0)
    d = demo_model.cfg.d_model
    W = torch.randn(d, 512, generator=g) / d**0.5
    sae = SAE(
        "blocks.5.hook_resid_post",
        W,
        torch.zeros(512),
        W.T.clone(),
        torch.zeros(d),
        activation="topk",
        k=16,
    )
    before = logits(demo_model, "The cat sat on the mat.")
    texts = ["The cat sat on the mat.", "When Mary and John went to the store", "1, 2, 3, 4"]
    st = feature_stats(demo_model, sae, texts, progress=False)
    view = FeatureView(demo_model, "The cat sat on the mat.", saes=sae, stats=st)
    hook = sae.hook_name
    top = int(view.activations.top_index[hook][3, 0])
    c = view.show_feature(f"{hook}:{top}")
    assert c["snippets"] and len(c["acts"]) == len(view.tokens)
    assert len(c["promoted"]) == 10 and not has_hooks(demo_model)
    assert torch.equal(logits(demo_model, "The cat sat on the mat."), before)
