"""The TransformerLens bridge as a backend: a request's runs as hooked forward passes."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from .. import _hooks
from . import _program
from ._base import Output, Run

#: The bridge's hook for each site, formatted with the layer.
HOOKS = {
    "resid_pre": "blocks.{}.hook_resid_pre",
    "q": "blocks.{}.attn.hook_q",
    "k": "blocks.{}.attn.hook_k",
    "v": "blocks.{}.attn.hook_v",
    "z": "blocks.{}.attn.hook_z",
    "pattern": "blocks.{}.attn.hook_pattern",
    "attn_out": "blocks.{}.hook_attn_out",
    "mlp_out": "blocks.{}.hook_mlp_out",
}


class BridgeBackend:
    """Runs each run as one forward pass with hooks, through :func:`circuitviz.engine.hooks`."""

    name = "bridge"
    remote = False

    def __init__(self, model: TransformerBridge):
        self.model = model

    def sites(self) -> tuple[str, ...]:
        return _program.SITES

    def execute(
        self, runs: Sequence[Run], *, desc: str = "", progress: bool = True
    ) -> list[Output]:
        saved: dict = {}
        outputs = []
        with torch.inference_mode():
            for index, run in enumerate(
                tqdm(runs, desc=desc or "runs", disable=not progress, leave=False)
            ):
                plain = run.as_plain()
                back: dict = {}

                def hook_for(site: str, layer: int, plain=plain, index=index, back=back):
                    def hook(x: torch.Tensor, hook: object) -> torch.Tensor:
                        if site == "resid_pre":
                            x = _program.grow(x, plain, layer)
                        _program.touch(x, site, layer, plain, index, saved, back)
                        return x

                    return hook

                fwd = [
                    (HOOKS[site].format(layer), hook_for(site, layer))
                    for layer, sites in sorted(plain["touched"].items())
                    for site in sites
                ]
                fwd.append((_hooks.LAST_POSITION_HOOK, _hooks.last_position_only))
                logits = _hooks.run(self.model, plain["tokens"], fwd)[:, -1]
                outputs.append(Output(_program.readout(logits, plain["readout"]), back))
        return outputs
