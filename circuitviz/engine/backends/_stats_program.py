"""Reading SAE hooks' activations for feature statistics, inside an nnsight trace.

Like :mod:`._program` this module imports nothing but torch (and the other shipped helper
modules), because for a remote request it is shipped by value with the trace (NDIF does not
have circuitviz).

A statistics run is one batch of right-padded texts. At each SAE hook it reads the point the
SAE reads (:data:`._feature_program.POINTS`; a transcoder: its MLP's input side) and keeps only the real tokens after the
BOS — row ``i``'s positions ``first … lengths[i] - 1`` — packed into ``[n_tokens, d_model]``
in the model's own dtype: neither the padding nor a ``[pos, d_sae]`` latent map travels,
and the client encodes the latents with its own SAE. The caller stops the forward pass
after the last hook (nothing later is needed).
"""

from __future__ import annotations

import torch

from . import _feature_program


def _order(key: tuple) -> tuple[int, int]:
    """Forward order: layer by layer, a layer's points as :data:`_feature_program.POINTS`."""
    point, layer = key
    return layer, _feature_program.POINTS.index(point)


def read(lm, arch: str, run: dict) -> dict:
    """``{(site, layer): [n_tokens, d_model]}``: the real tokens' activations at each hook of
    ``run["grad"]["sites"]``, rows in batch order, each row's positions in order."""
    spec = run["grad"]
    lengths, first = spec["lengths"], spec["first"]
    out = {}
    for key in sorted(spec["sites"], key=_order):
        x = _feature_program.point_tensor(lm, arch, key[1], key[0])
        rows = [x[i, first:n] for i, n in enumerate(lengths)]
        out[key] = torch.cat(rows).detach().clone()
    return out
