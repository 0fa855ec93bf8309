"""Feature statistics on nnsight, locally or on NDIF: the SAE hooks' activations over a
corpus, many batches of texts per request.

:func:`circuitviz.engine.features.feature_stats` tokenizes and batches the texts as on the
bridge and folds each batch's latents into the statistics; here each batch is one run of a
request (:mod:`._stats_program`), and a request carries as many batches as keep what comes
back under ``max_request_bytes``. What comes back is each SAE hook's activations at the real
tokens only — ``[n_tokens, d_model]`` per hook and batch, in the model's dtype, without the
BOS or the padding — and the forward pass stops after the last SAE hook. No SAE weight is
sent; the latents (``[pos, d_sae]``, 16k–65k wide for real SAEs) are encoded here, with the
client's SAE, exactly as the bridge encodes its hooks' activations.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch

from ._base import Run, backend_of
from ._features import splice_site


def request_plan(
    model, saes, lengths: Sequence[Sequence[int]], first: int, max_request_bytes: int
) -> list[list[int]]:
    """The batches (by index) each request runs: in order, as many as keep the activations
    coming back within ``max_request_bytes`` (at least one batch per request)."""
    per_token = len(saes) * model.cfg.d_model * torch.empty(0, dtype=model.cfg.dtype).itemsize
    plan: list[list[int]] = []
    size = 0
    for index, batch in enumerate(lengths):
        n = per_token * sum(max(0, length - first) for length in batch)
        if not plan or (size + n > max_request_bytes and plan[-1]):
            plan.append([])
            size = 0
        plan[-1].append(index)
        size += n
    return plan


def feature_stats(
    model,
    saes,
    batches: Sequence[tuple[torch.Tensor, Sequence[int]]],
    *,
    first: int,
    max_request_bytes: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """The activations at every SAE hook for each batch ``(tokens [b, w], lengths)`` of
    right-padded texts, as ``{hook: [b, w, d_model]}`` float32 — zeros at the BOS
    (``first=1``) and the padding, which the statistics leave out — batch by batch; the
    requests run as the batches are consumed. The caller checked the SAEs (``check_saes``)."""
    # (point, layer) each SAE reads (a transcoder: its MLP's input side)
    sites = {}
    for hook, sae in saes.items():
        key, read, _ = splice_site(model, hook, sae)
        sites[hook] = (read, key[1])
    lengths = [list(map(int, n)) for _, n in batches]
    plan = request_plan(model, saes, lengths, first, max_request_bytes)
    return _stream(model, sites, batches, lengths, first, plan)


def _stream(model, sites, batches, lengths, first, plan) -> Iterator[dict[str, torch.Tensor]]:
    backend = backend_of(model)
    for number, request in enumerate(plan, 1):
        runs = [
            Run(
                batches[i][0].cpu(),
                grad={
                    "kind": "activations",
                    "sites": sorted(set(sites.values())),
                    "lengths": lengths[i],
                    "first": first,
                },
            )
            for i in request
        ]
        desc = f"feature stats: request {number}/{len(plan)}"
        outs = backend.execute(runs, desc=desc, progress=False)
        for i, out in zip(request, outs, strict=True):
            tokens = batches[i][0]
            yield {
                hook: _unpacked(out.readout[site], tokens.shape, lengths[i], first)
                for hook, site in sites.items()
            }


def _unpacked(packed: torch.Tensor, shape, lengths: list[int], first: int) -> torch.Tensor:
    """``[n_tokens, d]`` (row by row, positions ``first … length - 1``) back into
    ``[batch, width, d]`` float32, zeros elsewhere."""
    out = torch.zeros(*shape, packed.shape[-1])
    start = 0
    for row, length in enumerate(lengths):
        n = max(0, length - first)
        out[row, first : first + n] = packed[start : start + n].float()
        start += n
    return out


def promoted_tokens(
    model, saes, *, k: int, max_request_bytes: int, chunk: int = 256, bar=None
) -> dict[str, torch.Tensor]:
    """``{hook: [d_sae, k]}`` the ids of the tokens each latent of every SAE promotes most,
    computed where the weights are (:func:`._feature_program.unembed`): the decoder rows go,
    in runs of ``chunk`` latents (the ``[chunk, d_vocab]`` effects stay on the server), as
    many runs a request as send at most ``max_request_bytes``; ``k`` ids per latent come
    back. ``bar`` is advanced by each request's latents."""
    from ._features import _compact

    k = min(k, model.cfg.d_vocab)
    parts = [
        (hook, _compact(sae.W_dec[start : start + chunk].detach().float()))
        for hook, sae in saes.items()
        for start in range(0, sae.d_sae, chunk)
    ]
    requests: list[list[int]] = []
    size = 0
    for index, (_, dirs) in enumerate(parts):
        n = dirs.numel() * dirs.element_size()
        if not requests or size + n > max_request_bytes:
            requests.append([])
            size = 0
        requests[-1].append(index)
        size += n
    got: dict[str, list[torch.Tensor]] = {hook: [] for hook in saes}
    backend = backend_of(model)
    for number, request in enumerate(requests, 1):
        runs = [
            Run(
                torch.zeros(1, 1, dtype=torch.long),
                grad={"kind": "unembed", "dirs": parts[i][1], "k": k},
            )
            for i in request
        ]
        desc = f"promoted tokens: request {number}/{len(requests)}"
        outs = backend.execute(runs, desc=desc, progress=False)
        for i, out in zip(request, outs, strict=True):
            got[parts[i][0]].append(out.readout["up_i"].long())
            if bar is not None:
                bar.update(len(parts[i][1]))
    return {hook: torch.cat(rows) for hook, rows in got.items()}
