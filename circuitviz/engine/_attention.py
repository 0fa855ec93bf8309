"""Attention patterns of every head, and head-role scores."""

from __future__ import annotations

import torch
from transformer_lens.model_bridge import TransformerBridge

from . import _hooks, backends
from ._models import check_bridge, model_name
from ._pairs import InputError, check_text, encode
from ._results import AttentionResult
from .backends._toolkit_program import role_mass

ROLES = ("previous_token", "duplicate_token", "induction")
PATTERN_HELP = (
    "This model's attention implementation does not expose its pattern (sdpa or flash "
    "attention compute it inside one kernel): load it with attn_implementation='eager' "
    "(circuitviz.load_model does for local models), or use the TransformerLens bridge."
)


def role_masks(tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Where each role looks, as ``[dest, src]`` 0/1 masks for one prompt's ``tokens [pos]``.

    - previous-token: ``src == dest - 1``;
    - duplicate-token: an earlier ``src`` holding the same token as ``dest``;
    - induction: ``src`` right after an earlier occurrence of ``dest``'s token
      (``tokens[src - 1] == tokens[dest]``, ``src <= dest``).
    """
    n = tokens.shape[0]
    dest = torch.arange(n)[:, None]
    src = torch.arange(n)[None, :]
    same = tokens[:, None] == tokens[None, :]
    prev_same = torch.zeros(n, n, dtype=torch.bool)
    prev_same[:, 1:] = tokens[:, None] == tokens[None, :-1]
    return {
        "previous_token": (src == dest - 1),
        "duplicate_token": same & (src < dest),
        "induction": prev_same & (src <= dest) & (src >= 1),
    }


def role_scores(patterns: torch.Tensor, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean attention mass on each role's positions, over destinations where the role applies.

    ``patterns``: ``[..., head, dest, src]`` (e.g. ``[layer, head, dest, src]`` or one layer's
    ``[head, dest, src]``); returns ``{role: [..., head]}`` in [0, 1], on the CPU.
    """
    return _RoleScorer(tokens)(patterns)


class _RoleScorer:
    """Role masks built once per prompt, applied to one layer's patterns at a time. The masks
    are sparse (a diagonal, a few repeats), so scores gather just the masked entries: cheap
    even for a 1,000-token prompt, and no layer's patterns are copied."""

    def __init__(self, tokens: torch.Tensor):
        self.pairs = {}  # role -> (dest, src, destinations where the role applies)
        for role, mask in role_masks(tokens.cpu()).items():
            dest, src = mask.nonzero(as_tuple=True)
            self.pairs[role] = (dest, src, dest.unique())

    def __call__(self, patterns: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        for role, (dest, src, rows) in self.pairs.items():
            if rows.numel() == 0:
                out[role] = torch.zeros(patterns.shape[:-2])
                continue
            out[role] = role_mass(patterns, dest, src, rows).cpu()
        return out


def prompt_tokens(
    model: TransformerBridge, prompt: object, prepend_bos: bool | None = None
) -> torch.Tensor:
    """One prompt as token ids ``[1, pos]``: a string, or ids ``[pos]`` / ``[1, pos]``. A batch
    is refused: the patterns of one prompt are what the view shows, and the model would
    otherwise join the prompts into one sequence."""
    if isinstance(prompt, str):
        check_text(prompt, "The prompt")
        return encode(model, prompt, prepend_bos=prepend_bos)[None]
    if not isinstance(prompt, torch.Tensor) or prompt.ndim not in (1, 2):
        shape = f" of shape {tuple(prompt.shape)}" if isinstance(prompt, torch.Tensor) else ""
        raise InputError(
            f"attention takes one prompt: a string or token ids [pos]; got "
            f"{type(prompt).__name__}{shape}. For several prompts, call it once per prompt."
        )
    if prompt.ndim == 2 and prompt.shape[0] != 1:
        raise InputError(
            f"attention takes one prompt, but these token ids are a batch of "
            f"{prompt.shape[0]} ({tuple(prompt.shape)}): call it once per prompt, e.g. "
            "attention(model, tokens[0])."
        )
    if prompt.dtype.is_floating_point or prompt.dtype.is_complex or prompt.dtype == torch.bool:
        raise InputError(f"Token ids must be integer token ids, got dtype {prompt.dtype}.")
    tokens = prompt.reshape(1, -1)
    if tokens.shape[1] == 0:
        raise InputError("The prompt is empty: give at least one token.")
    vocab = int(model.cfg.d_vocab)
    if int(tokens.min()) < 0 or int(tokens.max()) >= vocab:
        raise InputError(
            f"Token ids must lie in the model's vocabulary, 0–{vocab - 1}; got ids from "
            f"{int(tokens.min())} to {int(tokens.max())}."
        )
    return tokens.to(model.cfg.device, torch.long)


def attention(
    model: TransformerBridge, prompt: str | torch.Tensor, *, prepend_bos: bool | None = None
) -> AttentionResult:
    """Attention patterns of every layer and head for one prompt, with head-role scores.

    ``prepend_bos``: whether a text prompt starts with BOS (``None``: the model's convention,
    as in :class:`PromptPairs`); token ids are used as given.

    Patterns are kept in float16 on the CPU: 30 layers × 9 heads of a 1,000-token prompt
    take 540 MB instead of 1 GB.
    """
    if (seam := backends.route(model, "attention")) is not None:
        return seam(model, prompt, prepend_bos=prepend_bos)
    tokens = prompt_tokens(check_bridge(model), prompt, prepend_bos)
    if tokens.shape[1] > model.cfg.n_ctx:
        raise InputError(
            f"The prompt has {tokens.shape[1]} tokens but the model's context is "
            f"{model.cfg.n_ctx}: shorten it."
        )
    n_layers = model.cfg.n_layers
    patterns: list[torch.Tensor | None] = [None] * n_layers
    scores: list[dict[str, torch.Tensor] | None] = [None] * n_layers
    scorer = _RoleScorer(tokens[0])

    def keep(layer: int):
        def hook(x: torch.Tensor, hook: object) -> None:
            patterns[layer] = x[0].detach().to("cpu", torch.float16)
            scores[layer] = scorer(x[0].detach())  # from the full-precision pattern

        return hook

    fwd = [(f"blocks.{layer}.attn.hook_pattern", keep(layer)) for layer in range(n_layers)]
    fwd.append((_hooks.LAST_POSITION_HOOK, _hooks.last_position_only))
    with torch.inference_mode():
        _hooks.run(model, tokens, fwd)
    return AttentionResult(
        patterns=torch.stack(patterns),  # type: ignore[arg-type]
        tokens=list(model.to_str_tokens(tokens[0])),
        scores={role: torch.stack([s[role] for s in scores]) for role in ROLES},  # type: ignore[index]
        model_name=model_name(model),
    )
