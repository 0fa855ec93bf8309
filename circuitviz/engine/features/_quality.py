"""How well SAEs reconstruct a model's activations: fraction of variance explained, L0,
dead latents, and the increase in next-token loss with the reconstruction spliced in."""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from .._hooks import hooks
from .._models import check_bridge
from .._pairs import InputError
from ._sae import SAESet
from ._splice import splice_hook


def _next_token_loss(logits: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of predicting ``tokens[:, 1:]``."""
    logp = logits[:, :-1].float().log_softmax(-1)
    return -logp.gather(-1, tokens[:, 1:, None]).sum()


def sae_quality(
    model,
    saes: SAESet,
    tokens: torch.Tensor,
    *,
    skip_first: int = 1,
    losses: bool = True,
    batch: int = 8,
    outlier_factor: float = 5.0,
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Per hook: ``fve`` (1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²), ``l0`` (mean active latents per
    token), ``dead_share`` (latents never active here), and with ``losses`` the next-token
    loss clean, with this SAE's reconstruction spliced in alone (``splice_hook(…,
    keep_error=False)``), and their difference ``loss_increase`` (nats per token).

    ``fve_typical`` leaves out the rare tokens whose activation norm exceeds
    ``outlier_factor`` × the batch's median (secondary attention sinks, e.g. an indentation
    token at ~20× the median norm in the demo model's middle layers): being near-constant, they
    are easy to reconstruct and dominate the variance, so ``fve`` alone flatters an SAE.
    ``outlier_share`` is the share of tokens left out.

    The first ``skip_first`` positions of every row (BOS, whose residual is the attention
    sink's huge outlier) are left out of the figures and keep their true activation when
    splicing, as SAELens's and Gemma Scope's evaluations do.
    """
    check_bridge(model)
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.shape[1] <= skip_first:
        raise InputError(f"tokens must be [n, seq] with seq > {skip_first}.")
    sums = {
        h: {
            key: {"err": 0.0, "x": torch.zeros(s.d_in, dtype=torch.float64), "xx": 0.0, "n": 0}
            for key in ("all", "typical")
        }
        for h, s in saes.items()
    }
    l0 = dict.fromkeys(saes, 0.0)
    fired = {h: torch.zeros(s.d_sae, dtype=torch.bool) for h, s in saes.items()}
    n_tok = 0
    clean_loss, spliced = 0.0, dict.fromkeys(saes, 0.0)

    def recorder(h):
        sae = saes[h]

        def fn(x, hook):
            x = x[:, skip_first:].float()
            f = sae.encode(x)
            x_hat = sae.decode(f).float()
            x, x_hat = x.reshape(-1, x.shape[-1]), x_hat.reshape(-1, x.shape[-1])
            norm = x.norm(dim=-1)
            typical = norm <= outlier_factor * norm.median()
            for key, keep in (("all", slice(None)), ("typical", typical)):
                s = sums[h][key]
                s["err"] += (x[keep] - x_hat[keep]).pow(2).sum().item()
                s["x"] += x[keep].sum(0).double().cpu()
                s["xx"] += x[keep].pow(2).sum().item()
                s["n"] += int(x[keep].shape[0])
            l0[h] += (f > 0).sum().item()
            fired[h] |= (f > 0).any(0).any(0).cpu()

        return fn

    def spliced_keep_first(h):
        inner = splice_hook(saes[h], keep_error=False)

        def fn(x, hook):
            out = inner(x, hook).clone()
            out[:, :skip_first] = x[:, :skip_first]
            return out

        return fn

    rows = range(0, tokens.shape[0], batch)
    with torch.no_grad():
        for i in tqdm(rows, desc="SAE quality", disable=not progress):
            t = tokens[i : i + batch]
            with hooks(model, [(h, recorder(h)) for h in saes]):
                logits = model(t, return_type="logits")
            n_tok += t.shape[0] * (t.shape[1] - skip_first)
            if not losses:
                continue
            clean_loss += _next_token_loss(logits, t).item()
            for h in saes:
                with hooks(model, [(h, spliced_keep_first(h))]):
                    spliced[h] += _next_token_loss(model(t, return_type="logits"), t).item()
    n_pred = tokens.shape[0] * (tokens.shape[1] - 1)
    out = {}

    def fve(s: dict) -> float:
        total_var = s["xx"] - float((s["x"] / s["n"]).pow(2).sum()) * s["n"]
        return 1 - s["err"] / total_var

    for h, s in sums.items():
        row = {
            "fve": fve(s["all"]),
            "fve_typical": fve(s["typical"]),
            "outlier_share": 1 - s["typical"]["n"] / s["all"]["n"],
            "l0": l0[h] / n_tok,
            "dead_share": 1 - fired[h].float().mean().item(),
            "tokens": n_tok,
        }
        if losses:
            row["loss_clean"] = clean_loss / n_pred
            row["loss_spliced"] = spliced[h] / n_pred
            row["loss_increase"] = row["loss_spliced"] - row["loss_clean"]
        out[h] = row
    return out
