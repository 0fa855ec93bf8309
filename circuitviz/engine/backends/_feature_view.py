"""What a FeatureView needs when it opens, on nnsight: the prompt's latents and the logit
effects behind its chips' automatic labels (SAEs without statistics), in one request where
the SAEs' weights are small enough to travel.

Which latents are chips depends on the latents (the ``top`` most active at each position),
which the client reads only after the activations come back. To decide them on the server in
the same request, the whole SAE goes there (every encoder column decides a top k; the chips'
decoder rows are picked there): ``ONE_REQUEST_BYTES`` bounds that upload. Larger SAEs keep
"no SAE weight leaves this machine" for the latents (:mod:`._features`) and cost a second
request — one for every SAE's chips together, the chips' decoder rows only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from .._pairs import encode
from ._base import Run, backend_of, ported
from ._features import (
    _payload,
    check_saes,
    keep,
    remember,
    returned,
    splice_site,
    unembed_k,
    unembed_rows,
    unembedded_many,
)

#: Most bytes of SAE weights (encoder and decoder, as stored) sent so that a FeatureView's
#: chips are labelled in its first request; above it, a second request sends the chips'
#: decoder rows only.
ONE_REQUEST_BYTES = 16 * 2**20


def sae_bytes(saes: Any, hooks: Sequence[str]) -> int:
    """The bytes of the encoders and decoders of ``saes[hooks]`` as stored."""
    return sum(
        saes[h].W_enc.numel() * saes[h].W_enc.element_size()
        + saes[h].W_dec.numel() * saes[h].W_dec.element_size()
        for h in hooks
    )


def feature_view_activations(
    model: Any, prompt: str, saes: Any, *, k: int, prepend_bos: Any, label: Sequence[str]
):
    """:func:`circuitviz.engine.features.feature_activations`, and the logit effects of the
    chips of the SAEs in ``label`` kept for their labels (:func:`._features.unembedded`):
    one request when those SAEs weigh at most :data:`ONE_REQUEST_BYTES`, else two."""
    from ..features._explorer import chip_latents, encoded

    check_saes(model, saes)
    label = [h for h in saes if h in set(label)]
    with ported():
        ids = encode(model, prompt, prepend_bos=prepend_bos)
    run = Run(ids[None])
    keep(model, run, saes, saes, back=True)
    runs = [run]
    bundled = bool(label) and sae_bytes(saes, label) <= ONE_REQUEST_BYTES
    if bundled:  # the activations stay on the server, where the chips are decided
        keep(model, run, saes, label)
        spec = {
            "kind": "unembed",
            "chips": [
                (splice_site(model, h, saes[h])[0], _payload(saes[h], None), k) for h in label
            ],
            "k": unembed_k(model, 2),
        }
        runs.append(Run(torch.zeros(1, 1, dtype=torch.long), grad=spec))
    outs = backend_of(model).execute(runs, desc="feature activations", progress=False)
    acts = {hook: returned(model, outs[0], saes, hook)[0] for hook in saes}
    extra = {"backend": backend_of(model).name, "requests": 1}
    result = encoded(model, ids, acts, saes, k, prepend_bos, extra)
    if bundled:
        got, start = outs[1].readout, 0
        for hook, n in zip(label, got["chip_count"].tolist(), strict=True):
            index = got["chip_index"][start : start + n].tolist()
            remember(unembed_rows(model, saes[hook]), index, got, spec["k"], start)
            start += n
    # What the server did not cover (none, unless a float tie decided a chip differently
    # there; all of them above the bound): one request for every SAE together.
    wanted = [(saes[h], chip_latents(result, h)) for h in label]
    if any(unembed_rows(model, sae).get(i, {}).get("k", 0) < 2 for sae, ii in wanted for i in ii):
        unembedded_many(model, wanted, 2)
        extra["requests"] += 1
    return result
