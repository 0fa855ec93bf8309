"""Edge attribution patching (EAP) and EAP with integrated gradients (EAP-IG).

Sign convention: ``score(u → r) = (a_u(corrupted) − a_u(clean)) · ∂M/∂x_r``, summed over
positions and averaged over the batch, where ``a_u [batch, pos, d_model]`` is what sender ``u``
writes into the residual stream and ``x_r`` the pre-norm residual that receiver ``r`` reads.
It is the first-order estimate of ``M(clean run with this one edge patched to corrupted) −
M(clean)``: a negative score means the edge carries (part of) the clean behaviour.

Cost does not depend on the number of edges: EAP runs the corrupted and clean prompts once
each and backpropagates once; EAP-IG averages the receiver gradients over ``steps`` inputs
interpolated between the corrupted (α=0, excluded) and clean (α=1) embeddings, one forward
and one backward each. ``steps=1`` is EAP.

Per-head q/k/v gradients: the gradient at ``attn.hook_q/k/v`` ``[batch, pos, head, d_head]``
is mapped back to the post-norm input with ``W_Q[head]ᵀ`` and then through ``ln1`` (a
vector-Jacobian product on the cached residual), giving each head's own pre-norm input
gradient. This never needs ``set_use_split_qkv_input``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from .. import _hooks
from .._metrics import Metric, MetricFn, bind_metric
from .._pairs import Tokens
from .._patching import final_logits
from ._layout import Layout, Weights

EMBED_HOOK = "blocks.0.hook_resid_pre"  # token (+ position) embeddings: the EMBED sender


class ExtraSites(Protocol):
    """More nodes riding along the EAP passes (SAE latents: ``_feature_eap.SpliceSites``).

    ``hooks(run)`` are forward hooks for each pass (``run`` is ``"corrupted"``, ``"clean"`` or
    ``"ig"``); the gradient of the metric at the output of each hook in ``grad_hooks`` is
    handed to ``add_grads(run, grads)`` after that pass's backward; ``finish(diff, grads)``
    gets the senders' corrupted − clean outputs and the step-averaged receiver gradients."""

    grad_hooks: list[str]

    def hooks(self, run: str) -> _hooks.Hooks: ...

    def add_grads(self, run: str, grads: dict[str, torch.Tensor]) -> None: ...

    def finish(self, diff: torch.Tensor, grads: torch.Tensor, steps: int) -> None: ...


def sender_hooks(
    layout: Layout, weights: list[Weights], write: Callable[[int, torch.Tensor], None]
) -> _hooks.Hooks:
    """Forward hooks that hand each sender's output ``[batch, pos, n, d_model]`` (``n`` = the
    senders written at once) to ``write(first_sender_index, value)``."""

    def embed(x: torch.Tensor, hook: object) -> None:
        write(0, x[:, :, None])

    def heads(layer: int):
        W_O = weights[layer].W_O

        def fn(z: torch.Tensor, hook: object) -> None:
            write(layout.head_sender(layer), torch.einsum("bphd,hdm->bphm", z, W_O))

        return fn

    def mlp(layer: int):
        def fn(x: torch.Tensor, hook: object) -> None:
            write(layout.mlp_sender(layer), x[:, :, None])

        return fn

    out: list = [(EMBED_HOOK, embed)]
    for layer in range(layout.n_layers):
        out.append((f"blocks.{layer}.attn.hook_z", heads(layer)))
        out.append((f"blocks.{layer}.hook_mlp_out", mlp(layer)))
    return out


def sender_acts(
    model: TransformerBridge,
    layout: Layout,
    weights: list[Weights],
    tokens: torch.Tensor,
    extra: _hooks.Hooks = (),
    attention_mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One forward: final logits ``[batch, d_vocab]`` and every sender's output
    ``[sender, batch, pos, d_model]`` (``attention_mask``: left-padded prompts')."""
    batch, n_pos = tokens.shape
    d_model = int(model.cfg.d_model)
    acts = torch.zeros(len(layout.senders), batch, n_pos, d_model, device=tokens.device)

    def write(i: int, value: torch.Tensor) -> None:
        # On several GPUs each layer's sender arrives on its own device.
        acts[i : i + value.shape[2]] = value.detach().permute(2, 0, 1, 3).float().to(acts.device)

    hooks = [*sender_hooks(layout, weights, write), *extra]
    logits = final_logits(model, tokens, hooks, attention_mask=attention_mask)
    return logits, acts


def receiver_grads(
    model: TransformerBridge,
    layout: Layout,
    weights: list[Weights],
    tokens: torch.Tensor,
    metric: Callable[[torch.Tensor], Callable[[torch.Tensor], torch.Tensor]],
    embed_override: torch.Tensor | None = None,
    extra: _hooks.Hooks = (),
    out_grads: dict[str, torch.Tensor] | None = None,
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """One forward and one backward: ``∂M/∂x_r`` for every receiver,
    ``[receiver, batch, pos, d_model]``, where ``M`` is the batch-mean metric.

    ``metric(logits)`` gets this run's detached final logits and returns the per-example
    metric function (so a metric can be bound to the clean logits of this very run).
    ``embed_override [batch, pos, d_model]`` replaces the token embeddings (EAP-IG's
    interpolated inputs); ``extra`` hooks ride along (caching the senders). ``out_grads``
    maps hook names to be filled with ``∂M/∂(that hook's output)`` (after ``extra``'s hooks
    there: an SAE site's spliced output). ``attention_mask``: left-padded prompts'."""
    kept: dict[str, torch.Tensor] = {}
    resid: dict[int, torch.Tensor] = {}

    def keep(name: str):
        def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
            # A new tensor: only what reads the hook gets it. (The bridge hands ln2.hook_in
            # the residual tensor itself; its gradient would include the residual path.)
            kept[name] = x.clone()
            return kept[name]

        return fn

    def keep_resid(layer: int):
        def fn(x: torch.Tensor, hook: object) -> None:
            resid[layer] = x.detach()

        return fn

    def embed(x: torch.Tensor, hook: object) -> torch.Tensor:
        # A leaf that needs grad: the metric's graph then never asks for parameter gradients.
        return (x.detach() if embed_override is None else embed_override).requires_grad_(True)

    fwd: list = [("hook_embed", embed), *extra]
    for layer in range(layout.n_layers):
        fwd.append((f"blocks.{layer}.hook_resid_pre", keep_resid(layer)))
        for kind in "qkv":
            fwd.append((f"blocks.{layer}.attn.hook_{kind}", keep(f"{kind}{layer}")))
        fwd.append((f"blocks.{layer}.ln2.hook_in", keep(f"mlp{layer}")))
    fwd.append(("ln_final.hook_in", keep("logits")))
    fwd += [(name, keep("out:" + name)) for name in out_grads or ()]
    with torch.enable_grad():
        logits = final_logits(model, tokens, fwd, attention_mask=attention_mask)
        value = metric(logits.detach())(logits).mean()
        names = list(kept)
        grads = dict(zip(names, torch.autograd.grad(value, [kept[n] for n in names]), strict=True))
        for name in out_grads or ():
            out_grads[name] = grads["out:" + name].detach().float()
        batch, n_pos = tokens.shape
        out = torch.empty(
            len(layout.receivers), batch, n_pos, int(model.cfg.d_model), device=tokens.device
        )
        for layer in range(layout.n_layers):
            w = weights[layer]
            # Per head: gradient on the post-norm input, [batch, pos, n, d_model].
            post = torch.cat(
                [
                    torch.einsum("bpnd,nmd->bpnm", grads[f"q{layer}"], w.W_Q),
                    torch.einsum("bpnd,nmd->bpnm", grads[f"k{layer}"], w.W_K),
                    torch.einsum("bpnd,nmd->bpnm", grads[f"v{layer}"], w.W_V),
                ],
                dim=2,
            )
            x = resid[layer][:, :, None].expand_as(post).clone().requires_grad_(True)
            (pre,) = torch.autograd.grad(w.ln1(x), x, post)
            out[layout.receiver_slice(layer, "attn")] = pre.permute(2, 0, 1, 3).float().to(out)
            out[layout.receiver_slice(layer, "mlp")] = grads[f"mlp{layer}"][None].float().to(out)
        out[layout.logits_receiver] = grads["logits"].float().to(out)
    return out.detach()


def eap_scores(
    model: TransformerBridge,
    layout: Layout,
    weights: list[Weights],
    tokens: Tokens,
    metric: str | MetricFn,
    *,
    steps: int = 1,
    progress: bool = True,
    sites: ExtraSites | None = None,
) -> tuple[torch.Tensor, Metric, float, float]:
    """Scores ``[sender, receiver, pos]`` (zero where the edge is invalid; empty when
    ``sites`` score the edges), the bound metric, and the clean and corrupted metric values.

    Passes: one corrupted forward, then ``steps`` forward+backward passes at α = 1 (the clean
    run, which also caches the clean senders and binds the metric), (steps−1)/steps, …, 1/steps.
    ``sites`` (SAE latents) ride along every pass (see :class:`ExtraSites`).

    Left-padded tokens (mixed lengths) run masked; positions are the padded columns, and a
    padding position scores 0 (nothing there reaches a prompt's final token).
    """
    mask = tokens.attention_mask
    embeds: dict[str, torch.Tensor] = {}

    def keep_embed(name: str):
        def fn(x: torch.Tensor, hook: object) -> None:
            embeds[name] = x.detach().clone()

        return fn

    with torch.no_grad():  # not inference mode: the embeddings feed EAP-IG's backward passes
        corr_logits, corr = sender_acts(
            model,
            layout,
            weights,
            tokens.corrupted,
            [("hook_embed", keep_embed("corrupted")), *(sites.hooks("corrupted") if sites else ())],
            mask,
        )
    clean = torch.zeros_like(corr)

    def write(i: int, value: torch.Tensor) -> None:
        clean[i : i + value.shape[2]] = value.detach().permute(2, 0, 1, 3).float().to(clean)

    bound: list[Metric] = []

    def bind(logits: torch.Tensor):
        if not bound:
            bound.append(bind_metric(metric, tokens, logits, corr_logits))
            bound.append(logits)
        return bound[0].per_example

    grads = None
    alphas = [k / steps for k in range(steps, 0, -1)]
    for k, alpha in enumerate(
        tqdm(alphas, desc="EAP-IG steps", disable=not progress or steps == 1, leave=False)
    ):
        run = "clean" if k == 0 else "ig"
        site_grads = dict.fromkeys(sites.grad_hooks) if sites else None
        site_hooks = list(sites.hooks(run)) if sites else []
        if k == 0:  # the clean run
            extra = [*sender_hooks(layout, weights, write), ("hook_embed", keep_embed("clean"))]
            g = receiver_grads(
                model,
                layout,
                weights,
                tokens.clean,
                bind,
                None,
                extra + site_hooks,
                site_grads,
                mask,
            )
        else:
            override = embeds["corrupted"] + alpha * (embeds["clean"] - embeds["corrupted"])
            g = receiver_grads(
                model, layout, weights, tokens.clean, bind, override, site_hooks, site_grads, mask
            )
        if sites:
            sites.add_grads(run, site_grads)
        grads = g if grads is None else grads + g
    grads = grads / steps
    metric_, clean_logits = bound
    diff = tokens.real(corr - clean, batch_dim=1)  # [sender, batch, pos, d_model]
    if sites:  # the sites score every edge themselves (segment by segment, sparsely)
        sites.finish(diff, grads, steps)
        return torch.zeros(0), metric_, metric_(clean_logits), metric_(corr_logits)
    scores = torch.einsum("sbpd,rbpd->srp", diff, grads)
    scores = scores * layout.valid[:, :, None].to(scores)
    return scores, metric_, metric_(clean_logits), metric_(corr_logits)
