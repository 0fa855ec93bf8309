"""Where each SAE of a feature circuit sits in the model's forward order, and what it replaces
(the site codes of :mod:`circuitviz.engine._sites`).

Three kinds of site (Marks et al. 2024, "Sparse Feature Circuits"):

- **resid** (``hook_resid_pre``/``_mid``/``_post``): the SAE cuts the residual stream; what
  writes before it reaches what reads after it only through its latents and its error term.
- **branch** (``hook_attn_out``, ``hook_mlp_out``): the SAE replaces the output of layer
  ``L``'s attention (all its heads) or MLP. Those components stay nodes (they still read the
  residual stream), but what they write goes only into the site's latents and error term,
  which write into the residual stream in their place.
- **transcoder**: replaces the MLP of layer ``L``: its latents read the MLP's input (the
  residual stream after layer ``L``'s attention) and write its output; its error term
  (``MLP(x) − decode(f)``) reads and writes the same places. The MLP node is gone.

Stages (``Layout``'s order: EMBED 0, layer ``L``'s heads read and write at ``2L+1``, its MLP
at ``2L+2``): resid_pre ``2L+0.6``, resid_mid ``2L+1.5``, resid_post ``2L+2.5``;
attn_out writes at ``2L+1``, mlp_out and a transcoder at ``2L+2``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .._pairs import InputError
from .._sites import SITE_HOOKS, site_code
from ..features._sae import SAESet, as_sae_set

#: Site codes in node-table order (a node's ``site`` column indexes this).
SITE_CODES = ("", "pre", "mid", "attn", "mlp", "tc")
#: Transcoder inputs the feature graph maps back to the residual stream: before ln2 (the
#: gradient is the encoder's) or at ln2's output (through ln2, a vector-Jacobian product).
TRANSCODER_INPUTS = {
    "hook_resid_mid": False,
    "ln2.hook_in": False,
    "mlp.hook_in": True,
    "ln2.hook_out": True,
}


@dataclass(frozen=True)
class Site:
    hook: str  # the SAESet key (a transcoder's input hook)
    layer: int
    code: str
    write_hook: str  # where decode(f) + error replaces the model's value
    post_norm: bool = False  # a transcoder reading ln2's output

    @property
    def kind(self) -> str:
        return {"attn": "branch", "mlp": "branch", "tc": "transcoder"}.get(self.code, "resid")

    @property
    def read_stage(self) -> float:
        return self.write_stage  # a branch site reads its component's output, then writes

    @property
    def write_stage(self) -> float:
        offset = {"": 2.5, "pre": 0.6, "mid": 1.5, "attn": 1.0, "mlp": 2.0, "tc": 2.0}
        return offset[self.code] + 2 * self.layer

    @property
    def grad_hooks(self) -> tuple[str, ...]:
        """Hooks whose output gradients sum to ``∂M/∂(the site's output)``. resid_mid: its
        splice feeds ln2 (at ``ln2.hook_in``) and, re-routed, the skip into resid_post."""
        if self.code == "mid":
            return (f"blocks.{self.layer}.ln2.hook_in", f"blocks.{self.layer}.hook_resid_post")
        return (self.write_hook,)

    @property
    def index(self) -> int:
        return SITE_CODES.index(self.code)


def sites_of(saes: SAESet) -> list[Site]:
    """The sites of checked SAEs, in forward order."""
    out = []
    for hook, sae in saes.items():
        code = site_code(sae)
        assert code is not None and sae.layer is not None
        suffix = hook.split(".", 2)[2]
        post_norm = code == "tc" and TRANSCODER_INPUTS[suffix]
        write = sae.output_hook if code == "tc" else hook
        out.append(Site(hook, sae.layer, code, str(write), post_norm))
    return sorted(out, key=lambda s: (s.write_stage, s.read_stage))


def check_saes(model, saes) -> SAESet:
    """The SAEs as a set, each at a site a feature circuit can splice (resid_pre/mid/post,
    attn_out, mlp_out, or a transcoder of one MLP) of this model with its width; else an
    :class:`InputError` naming the problem and the fix."""
    saes = as_sae_set(saes)
    d_model = int(model.cfg.d_model)
    n_layers = int(model.cfg.n_layers)
    places = ", ".join(f"'blocks.L.{h}'" for c, h in SITE_HOOKS.items() if c != "tc")
    for hook, sae in saes.items():
        layer, code = sae.layer, site_code(sae)
        if code is None:
            raise InputError(
                f"Feature circuits splice SAEs on {places}, or transcoders that write "
                f"'blocks.L.hook_mlp_out' of their own block; {sae.name!r} reads {hook!r}"
                + (f" and writes {sae.output_hook!r}" if sae.is_transcoder else "")
                + ". Pass SAEs at those sites."
            )
        if not 0 <= layer < n_layers:
            raise InputError(
                f"The SAE at {hook!r} reads a block this model lacks (layers 0–{n_layers - 1})."
            )
        # nnsight has no hook_dict (its sites are checked by the backend: ``splice_key``)
        hook_dict = getattr(model, "hook_dict", None)
        for name in (hook, sae.output_hook):
            if name is not None and hook_dict is not None and name not in hook_dict:
                raise InputError(
                    f"This model has no hook {name!r} (the SAE {sae.name!r} needs it): pass "
                    "SAEs at sites the model has."
                )
        if code == "tc":
            suffix = hook.split(".", 2)[2]
            if suffix not in TRANSCODER_INPUTS:
                raise InputError(
                    f"The transcoder {sae.name!r} reads {hook!r}; feature circuits read "
                    f"transcoders at blocks.{layer}.{{{', '.join(TRANSCODER_INPUTS)}}} (the "
                    "MLP's input, before or after ln2). Load it with one of these hooks."
                )
            # nnsight's Llama and GPT-2 layers always have one (no hook_dict there)
            if TRANSCODER_INPUTS[suffix] and hook_dict is not None and _ln2(model, layer) is None:
                raise InputError(
                    f"The transcoder {sae.name!r} reads after ln2, but block {layer} has no "
                    "ln2 module: load it on 'hook_resid_mid'."
                )
            if f"blocks.{layer}.hook_mlp_out" in saes:
                raise InputError(
                    f"Block {layer} has both a transcoder (which replaces its MLP) and an SAE "
                    f"on its MLP output: keep one of them."
                )
        bad = [
            n
            for n in ("W_enc", "b_enc", "W_dec", "b_dec")
            if not torch.isfinite(getattr(sae, n)).all()
        ]
        if bad:
            raise InputError(
                f"The SAE at {hook!r} has non-finite values in {bad}: reload its weights."
            )
        if sae.d_in != d_model or sae.d_out != d_model:
            raise InputError(
                f"The SAE at {hook!r} maps width {sae.d_in} to {sae.d_out}, but the model's "
                f"d_model is {d_model}: pass SAEs trained on this model."
            )
    return saes


def _ln2(model, layer: int):
    block = model.blocks[layer]
    ln2 = getattr(block, "ln2", None)
    return None if ln2 is None else getattr(ln2, "_original_component", ln2)


def ln2_module(model, layer: int) -> torch.nn.Module:
    """Block ``layer``'s ln2 as a plain torch module (calling it fires no hook)."""
    ln2 = _ln2(model, layer)
    assert ln2 is not None
    return ln2
