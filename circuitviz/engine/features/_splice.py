"""Splicing SAEs into a model's forward pass, and editing their latents there.

At a site with an SAE the activation ``x`` is replaced by ``decode(f') + error`` where
``f = encode(x)``, ``error = x - decode(f)`` and ``f'`` is ``f`` after the edits. With no
edits this is ``x`` again (up to float rounding), which is the invariant feature circuits
rest on. Every analysis that edits features builds its hooks here and runs them through the
one hook context manager (:func:`circuitviz.engine.hooks`).

Edits name a latent of one SAE, everywhere or at one position:
``LatentEdit(hook, index, value=0.0, pos=None)`` sets it (ablation, clamping);
``value`` may also be a tensor ``[batch, pos]`` (patching from another run).
``ErrorEdit(hook, value=0.0, pos=None)`` sets the site's error term the same way (``0``: the
site outputs the SAE's reconstruction; a tensor ``[1 or batch, pos, d]``: a reference run's
error term), by :func:`replace_error`, which feature-graph faithfulness uses too.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch

from .._pairs import InputError
from ._sae import SAE, SAESet


@dataclass(frozen=True)
class LatentEdit:
    """Set latent ``index`` of the SAE at ``hook`` to ``value`` (at ``pos``, or everywhere)."""

    hook: str
    index: int
    value: float | torch.Tensor = 0.0
    pos: int | None = None


@dataclass(frozen=True)
class ErrorEdit:
    """Set the error term of the SAE at ``hook`` to ``value`` (at ``pos``, or everywhere):
    ``0.0`` drops it, a tensor ``[1 or batch, pos, d]`` puts a reference run's in its place."""

    hook: str
    value: float | torch.Tensor = 0.0
    pos: int | None = None


def replace_error(
    error: torch.Tensor, value: float | torch.Tensor, where: torch.Tensor | slice | int
) -> torch.Tensor:
    """The one rule for ablating an error term: ``error [batch, pos, d]`` with the positions
    ``where`` (an index, a slice, or a ``[pos]`` bool mask) taken from ``value`` (a number, or
    ``[1 or batch, pos, d]``, broadcast over the batch)."""
    if not isinstance(value, torch.Tensor):
        value = torch.full((1, 1, 1), float(value), dtype=error.dtype, device=error.device)
    value = value.to(device=error.device, dtype=error.dtype).expand_as(error)
    if isinstance(where, torch.Tensor):
        return torch.where(where.to(error.device)[None, :, None], value, error)
    out = error.clone()
    out[:, where] = value[:, where]
    return out


def check_edits(
    saes: SAESet, edits: Iterable[LatentEdit | ErrorEdit]
) -> list[LatentEdit | ErrorEdit]:
    """The edits as a list, or an :class:`InputError` naming the first bad one."""
    out: list[LatentEdit | ErrorEdit] = []
    for e in edits:
        if e.hook not in saes:
            raise InputError(
                f"No SAE reads {e.hook!r}; the SAEs read {saes.hooks}. Pass the SAE set that "
                "has it (saes=...)."
            )
        if isinstance(e, ErrorEdit):
            if isinstance(e.value, torch.Tensor) and not torch.isfinite(e.value).all():
                raise InputError(f"The error-term values at {e.hook!r} are not all finite.")
            if isinstance(e.value, (int, float)) and not math.isfinite(float(e.value)):
                raise InputError(f"The error-term value at {e.hook!r} is {e.value!r}.")
            _check_pos(e.pos)
            out.append(e)
            continue
        d_sae = saes[e.hook].d_sae
        if isinstance(e.index, bool) or not isinstance(e.index, int) or not 0 <= e.index < d_sae:
            raise InputError(
                f"Feature index {e.index!r} is out of range for the SAE at {e.hook!r} "
                f"(0 … {d_sae - 1})."
            )
        if isinstance(e.value, (int, float)) and not math.isfinite(float(e.value)):
            raise InputError(
                f"The value for feature {e.index} at {e.hook!r} is {e.value!r}; use a finite number."
            )
        if isinstance(e.value, torch.Tensor) and not torch.isfinite(e.value).all():
            raise InputError(f"The values for feature {e.index} at {e.hook!r} are not all finite.")
        _check_pos(e.pos)
        out.append(e)
    return out


def _check_pos(pos: object) -> None:
    if pos is not None and (isinstance(pos, bool) or not isinstance(pos, int) or pos < 0):
        raise InputError(f"Position {pos!r} must be a non-negative integer or None.")


def splice_hook(
    sae: SAE,
    edits: Sequence[LatentEdit | ErrorEdit] = (),
    *,
    keep_error: bool = True,
    record: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    offset: Callable[[], int] | None = None,
    override: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    | None = None,
):
    """A forward hook for ``sae.hook_name`` that splices the SAE in, applies ``edits`` (latent
    and error-term edits) and adds the error term back (unless ``keep_error`` is False: the
    error node ablated).

    ``record(latents, error)`` sees the unedited latents ``[batch, pos, d_sae]`` and the error
    term, for analyses that read them.

    ``offset()``, when given, is the absolute position of the hook's first row: generation
    with a KV cache feeds one new position at a time, and an edit at ``pos`` then acts only
    on the pass that holds ``pos`` (without it, ``pos`` indexes the rows as they come, and one
    past the end is an error).

    ``override(latents, error) -> (latents, error)`` replaces many of them at once (a
    feature circuit's nodes outside the circuit), after ``edits``.
    """

    splice = _splicer(sae, edits, keep_error, record, offset, override)

    def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
        return splice(sae.encode(x), x)

    return fn


def _splicer(sae, edits, keep_error, record, offset, override):
    """``splice(latents, target) -> output``: ``target`` is what the SAE reconstructs (its
    input; a transcoder's: the MLP output it replaces)."""

    def splice(f: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        x_hat = sae.decode(f)
        error = x - x_hat.to(x.dtype)
        if record is not None:
            record(f, error)
        if edits:
            f = f.clone()
            start = 0 if offset is None else offset()
            for e in edits:
                where = slice(None) if e.pos is None else e.pos - start
                if e.pos is not None and not 0 <= e.pos - start < f.shape[1]:
                    if offset is not None:
                        continue  # that position is in another pass (cached or still to come)
                    raise InputError(f"Position {e.pos} is past the prompt's {f.shape[1]} tokens.")
                if isinstance(e, ErrorEdit):
                    error = replace_error(error, e.value, where)
                    continue
                value = e.value
                if isinstance(value, torch.Tensor):
                    value = value.to(f.dtype)
                    if e.pos is not None and value.ndim == 2:
                        value = value[:, e.pos]
                f[:, where, e.index] = value
            x_hat = sae.decode(f)
        if override is not None:
            f, error = override(f, error)
            x_hat = sae.decode(f)
        out = x_hat.to(x.dtype)
        return out + error if keep_error else out

    return splice


def site_hooks(
    sae: SAE,
    edits: Sequence[LatentEdit] = (),
    *,
    keep_error: bool = True,
    record: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
    offset: Callable[[], int] | None = None,
    override: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
    | None = None,
) -> list[tuple[str, Callable]]:
    """The hooks splicing ``sae`` in (same options as :func:`splice_hook`). An SAE: one hook
    on its ``hook_name``. A transcoder replaces the MLP: its latents are read at its input
    hook (left unchanged) and ``decode(f') + error`` replaces the output hook's value, with
    ``error = MLP output − decode(f)``. An SAE on ``hook_resid_mid`` also re-routes the skip
    connection into ``hook_resid_post`` through its output (the bridge's hook_resid_mid
    feeds ln2 alone)."""
    if not sae.is_transcoder:
        fn = splice_hook(
            sae, edits, keep_error=keep_error, record=record, offset=offset, override=override
        )
        layer = sae.layer
        if layer is None or sae.hook_name != f"blocks.{layer}.hook_resid_mid":
            return [(sae.hook_name, fn)]
        # The bridge hands hook_resid_mid's output to ln2 only; the skip connection adds the
        # unhooked value into resid_post. Route the skip through the splice as well.
        seen: list[torch.Tensor] = []

        def mid(x: torch.Tensor, hook: object) -> torch.Tensor:
            out = fn(x, hook)
            seen[:] = [x, out]
            return out

        def skip(y: torch.Tensor, hook: object) -> torch.Tensor:
            x, out = seen
            seen.clear()
            return y - x + out

        return [(sae.hook_name, mid), (f"blocks.{layer}.hook_resid_post", skip)]

    splice = _splicer(sae, edits, keep_error, record, offset, override)
    latents: list[torch.Tensor] = []

    def read(x: torch.Tensor, hook: object) -> None:
        latents[:] = [sae.encode(x)]

    def write(y: torch.Tensor, hook: object) -> torch.Tensor:
        return splice(latents.pop(), y)

    return [(sae.hook_name, read), (str(sae.output_hook), write)]


def splice_hooks(
    saes: SAESet,
    edits: Iterable[LatentEdit | ErrorEdit] = (),
    *,
    keep_error: bool | Iterable[str] = True,
    only: Iterable[str] | None = None,
) -> list[tuple[str, Callable]]:
    """Hooks splicing every SAE of ``saes`` (or those whose hooks are in ``only``), with the
    edits applied. ``keep_error`` may name the hooks whose error term is kept."""
    edits = check_edits(saes, edits)
    hooks_ = (
        only
        if only is not None
        else [h for h in saes if any(e.hook == h for e in edits)] or list(saes)
    )
    keep = set(saes) if keep_error is True else set() if keep_error is False else set(keep_error)
    return [
        pair
        for h in hooks_
        for pair in site_hooks(saes[h], [e for e in edits if e.hook == h], keep_error=h in keep)
    ]
