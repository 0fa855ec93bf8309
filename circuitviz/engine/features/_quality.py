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
    progress: bool = True,
) -> dict[str, dict[str, float]]:
    """Per hook: ``fve`` (1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²), ``l0`` (mean active latents per
    token), ``dead_share`` (latents never active here), and with ``losses`` the next-token
    loss clean, with this SAE's reconstruction spliced in alone (``splice_hook(…,
    keep_error=False)``), and their difference ``loss_increase`` (nats per token).

    The first ``skip_first`` positions of every row (BOS, whose residual is the attention
    sink's huge outlier) are left out of the figures and keep their true activation when
    splicing, as SAELens's and Gemma Scope's evaluations do.
    """
    check_bridge(model)
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 2 or tokens.shape[1] <= skip_first:
        raise InputError(f"tokens must be [n, seq] with seq > {skip_first}.")
    sums = {
        h: {"err": 0.0, "x": torch.zeros(s.d_in, dtype=torch.float64), "xx": 0.0, "l0": 0.0}
        for h, s in saes.items()
    }
    fired = {h: torch.zeros(s.d_sae, dtype=torch.bool) for h, s in saes.items()}
    n_tok = 0
    clean_loss, spliced = 0.0, dict.fromkeys(saes, 0.0)

    def recorder(h):
        sae = saes[h]

        def fn(x, hook):
            x = x[:, skip_first:].float()
            f = sae.encode(x)
            x_hat = sae.decode(f).float()
            s = sums[h]
            s["err"] += (x - x_hat).pow(2).sum().item()
            s["x"] += x.sum((0, 1)).double().cpu()
            s["xx"] += x.pow(2).sum().item()
            s["l0"] += (f > 0).sum().item()
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
    for h, s in sums.items():
        mean = s["x"] / n_tok
        total_var = s["xx"] - n_tok * float(mean.pow(2).sum())
        row = {
            "fve": 1 - s["err"] / total_var,
            "l0": s["l0"] / n_tok,
            "dead_share": 1 - fired[h].float().mean().item(),
            "tokens": n_tok,
        }
        if losses:
            row["loss_clean"] = clean_loss / n_pred
            row["loss_spliced"] = spliced[h] / n_pred
            row["loss_increase"] = row["loss_spliced"] - row["loss_clean"]
        out[h] = row
    return out
