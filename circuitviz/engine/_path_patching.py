"""Path patching (Wang et al. 2022): the effect of senders' outputs reaching only receivers.

The standard recipe takes three runs. Run 1 caches the clean and corrupted activations.
Run 2 is the corrupted run with the senders' outputs set to clean and every other head and
MLP frozen to its corrupted output, recording the receivers' inputs. Run 3 is the corrupted
run with only those inputs replaced by run 2's, everything downstream recomputed.

With everything but the senders frozen, run 2's residual stream at layer ``L`` is the
corrupted one plus ``Σ δ_s`` over the senders before ``L``, where ``δ_s`` is what sender
``s`` writes into the stream (``z·W_O`` for a head, ``hook_mlp_out`` for an MLP) on the
clean run minus on the corrupted run. So run 2 needs no forward pass: the receiver's input
is ``corrupted resid_pre[L] + Σ δ_s``, passed through its own ``ln1`` and ``W_Q``/``W_K``/
``W_V``, exactly what ``transformer_lens.patching.get_act_patch_direct_path`` adds at
``hook_q_input``. Logits read the stream at ``ln_final.hook_in``.

Receivers read their input only at their own q, k or v, so a map (every head a sender) is
one row per sender of a batch; a row joins the base run at the first receiver after its
sender, so earlier layers run once, as in :func:`~circuitviz.engine.patch`. Row 0 of that
batch is the unpatched run, whose ``resid_pre`` is the corrupted stream run 2 starts from.
Everything after a receiver differs per row and is computed in full, so the saving is the
layers before the receivers: large for early receivers, about ``n_layers / (n_layers −
first receiver layer)`` for late ones.

With grouped-query attention a key/value receiver is the KV head of the query head named
(``L9H6`` with ``receiver_input="k"`` patches the keys of its whole group): the k/v input is
computed once per KV head and every head of the group reads it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm
from transformer_lens.model_bridge import TransformerBridge

from . import _devices, _hooks, backends
from ._components import Component, parse_head, parse_id
from ._metrics import MetricFn
from ._pairs import InputError, PromptPairs, Tokens
from ._patching import Direction, baselines, final_logits, pass_shape, patch_result
from ._results import PatchResult, head_id, mlp_id
from .graph._layout import Weights

RECEIVER_INPUTS = ("q", "k", "v", "resid")
LOGITS = "LOGITS"
FINAL_RESID_HOOK = "ln_final.hook_in"


@dataclass(frozen=True)
class Sender:
    kind: str  # "head" | "mlp"
    layer: int
    head: int | None = None

    @property
    def id(self) -> str:
        return head_id(self.layer, self.head) if self.kind == "head" else mlp_id(self.layer)


@dataclass(frozen=True)
class Receivers:
    """Where the senders' outputs are read: heads' q/k/v inputs per layer, or the logits."""

    input: str  # "q" | "k" | "v" | "resid"
    by_layer: dict[int, list[int]]  # layer -> query heads (q) or KV heads (k/v), sorted
    names: tuple[str, ...]  # as given, for the result

    def reached_by(self, sender: Sender) -> bool:
        """Whether ``sender`` writes before at least one receiver reads."""
        if self.input == "resid":
            return True
        return any(sender.layer < layer for layer in self.by_layer)

    def before_all(self, sender: Sender) -> bool:
        if self.input == "resid":
            return True
        return all(sender.layer < layer for layer in self.by_layer)


def check_direction(direction: object) -> None:
    if direction not in ("denoise", "noise"):
        raise InputError(f"Unknown direction={direction!r}: use 'denoise' or 'noise'.")


def _n_kv_heads(model: TransformerBridge) -> int:
    return int(getattr(model.cfg, "n_key_value_heads", None) or model.cfg.n_heads)


def _parse(item, what: str, parse) -> Component:
    """The shared component grammar (engine/_components.py); path patching runs over every
    position, so a ``":P4"`` suffix is refused."""
    try:
        comp = parse(item)
    except InputError as err:
        raise InputError(f"{what} {item!r} is not a head or an MLP here: {err}") from None
    if comp.pos is not None:
        raise InputError(
            f"{what} {comp.id}: path patching runs over every position; drop ':P{comp.pos}'."
        )
    return comp


def _check_layer_head(model: TransformerBridge, comp: Component, what: str) -> None:
    cfg = model.cfg
    if not (0 <= comp.layer < cfg.n_layers):
        raise InputError(
            f"{what} {comp.id}: layer {comp.layer} is out of range; this model has layers "
            f"0–{cfg.n_layers - 1}."
        )
    if comp.head is not None and not (0 <= comp.head < cfg.n_heads):
        raise InputError(
            f"{what} {comp.id}: head {comp.head} is out of range; this model has heads "
            f"0–{cfg.n_heads - 1}."
        )


def _parse_head(model: TransformerBridge, item, what: str) -> tuple[int, int]:
    comp = _parse(item, what, parse_head)
    _check_layer_head(model, comp, what)
    return comp.layer, comp.head  # type: ignore[return-value]


def _parse_sender(model: TransformerBridge, item) -> Sender:
    comp = _parse(item, "Sender", parse_id if isinstance(item, str) else parse_head)
    if comp.kind not in ("head", "mlp"):  # an SAE latent or error term: not a sender here
        raise InputError(
            f"Sender {comp.id}: path patching sends from heads and MLPs ('L3H5', 'MLP2'); "
            "to test an SAE feature's effect use circuitviz.ablate(features=[...], saes=...) "
            "or a feature circuit (circuit(..., saes=...))."
        )
    _check_layer_head(model, comp, "Sender")
    return Sender(comp.kind, comp.layer, comp.head)


def _as_list(value, what: str) -> list:
    if isinstance(value, str) or (
        isinstance(value, tuple) and len(value) == 2 and all(isinstance(x, int) for x in value)
    ):
        return [value]
    try:
        items = list(value)
    except TypeError:
        raise InputError(
            f"{what} must be a component id or a list of them, not {value!r}."
        ) from None
    if not items:
        raise InputError(f"{what} is empty: name at least one component, e.g. 'L9H6'.")
    return items


def _has_hook(model: TransformerBridge, name: str) -> bool:
    """Whether the bridge exposes hook ``name``; an nnsight model reads every receiver
    input from its modules (it has no ``hook_dict``)."""
    hook_dict = getattr(model, "hook_dict", None)
    return hook_dict is None or name in hook_dict


def parse_receivers(model: TransformerBridge, receivers, receiver_input: str | None) -> Receivers:
    """Validate receivers (heads, or ``"logits"``) and their input."""
    to_logits = isinstance(receivers, str) and receivers.strip().upper() == LOGITS
    if receiver_input is None:
        receiver_input = "resid" if to_logits else "q"
    if receiver_input not in RECEIVER_INPUTS:
        raise InputError(
            f"Unknown receiver_input={receiver_input!r}: use 'q', 'k' or 'v' (a head's "
            "query, key or value input) or 'resid' (the final residual stream, read by the "
            "logits)."
        )
    if receiver_input == "resid" or to_logits:
        if not (to_logits and receiver_input == "resid"):
            raise InputError(
                "receivers='logits' goes with receiver_input='resid' (and heads with 'q', 'k' "
                f"or 'v'); got receivers={receivers!r}, receiver_input={receiver_input!r}."
            )
        if not _has_hook(model, FINAL_RESID_HOOK):
            raise InputError(
                f"This model exposes no {FINAL_RESID_HOOK!r} hook, so the logits' input "
                "cannot be patched; use heads as receivers."
            )
        return Receivers("resid", {}, (LOGITS,))
    items = _as_list(receivers, "receivers")
    group = model.cfg.n_heads // _n_kv_heads(model)
    by_layer: dict[int, set[int]] = {}
    for item in items:
        layer, head = _parse_head(model, item, "Receiver")
        hook = f"blocks.{layer}.attn.hook_{receiver_input}"
        if not _has_hook(model, hook):
            raise InputError(
                f"This model exposes no {hook!r} hook, so receiver_input="
                f"{receiver_input!r} cannot be patched; use another input or 'resid'."
            )
        by_layer.setdefault(layer, set()).add(head if receiver_input == "q" else head // group)
    names = tuple(head_id(*_parse_head(model, i, "Receiver")) for i in items)
    return Receivers(receiver_input, {k: sorted(v) for k, v in sorted(by_layer.items())}, names)


def _check_weights(model: TransformerBridge, receivers: Receivers) -> dict[int, Weights]:
    weights = {layer: Weights.of(model, layer) for layer in receivers.by_layer}
    for layer, w in weights.items():
        W = {"q": w.W_Q, "k": w.W_K, "v": w.W_V}[receivers.input]
        if W is None:
            raise InputError(
                f"blocks.{layer}.attn exposes no W_{receivers.input.upper()}, so its "
                f"{receivers.input!r} input cannot be recomputed; use 'resid'."
            )
    return weights


def sender_deltas(
    model: TransformerBridge,
    senders: list[list[Sender]],
    src: dict[str, torch.Tensor],
    base: dict[str, torch.Tensor],
) -> torch.Tensor:
    """``[row, batch, pos, d_model]``: row ``i`` is Σ over ``senders[i]`` of what each writes
    into the residual stream in the source run minus in the base run."""
    out = None
    W_O = {}
    for i, row in enumerate(senders):
        for s in row:
            if s.kind == "head":
                name = f"blocks.{s.layer}.attn.hook_z"
                if s.layer not in W_O:
                    (W_O[s.layer],) = _devices.read(model, model.blocks[s.layer].attn, "W_O")
                z = src[name][:, :, s.head] - base[name][:, :, s.head]
                delta = z @ W_O[s.layer][s.head]
            else:
                name = f"blocks.{s.layer}.hook_mlp_out"
                delta = src[name] - base[name]
            if out is None:  # on the first sender's device: each layer may have its own
                out = torch.zeros(
                    len(senders), *delta.shape, dtype=delta.dtype, device=delta.device
                )
            out[i] += delta.to(out.device)
    assert out is not None
    return out


def _receiver_hooks(
    receivers: Receivers,
    weights: dict[int, Weights],
    deltas: torch.Tensor,
    reach: torch.Tensor,
) -> _hooks.Hooks:
    """Hooks of one growing pass over ``b`` prompts: group ``r + 1`` of ``b`` rows (one group
    per delta, condition-major like :func:`._patching.growing_pass`) joins the base group 0
    at the first receiver it reaches, so rows must come sorted by that layer (senders in
    layer order are); each receiver's input in that group becomes the base group's stream
    plus ``deltas[r]`` where ``reach[r, layer]`` holds.

    ``deltas``: ``[n, b, pos, d_model]``; ``reach``: ``[n, n_layers + 1]`` bool."""
    b = deltas.shape[1]
    if receivers.input == "resid":

        def logits_input(x: torch.Tensor, hook: object) -> torch.Tensor:
            grown = x[:b][None] + deltas.to(x.device, x.dtype)
            return torch.cat([x[:b], grown.flatten(0, 1)])

        return [(FINAL_RESID_HOOK, logits_input)]

    layers = list(receivers.by_layer)
    joins = reach[:, layers].float().argmax(dim=1)  # index into layers of each row's first
    joining = {layer: int((joins == i).sum()) for i, layer in enumerate(layers)}
    resid: dict[int, torch.Tensor] = {}

    def keep(layer: int):
        n = joining[layer]

        def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
            # The base group: the corrupted (run 2's frozen) stream of every prompt.
            resid[layer] = x[:b].clone()
            return torch.cat([x, x[:b].repeat(n, *([1] * (x.ndim - 1)))]) if n else x

        return fn

    def receive(layer: int, heads: list[int]):
        w = weights[layer]
        W, bias = {"q": (w.W_Q, w.b_Q), "k": (w.W_K, w.b_K), "v": (w.W_V, w.b_V)}[receivers.input]
        idx = torch.tensor(heads)
        rows = reach[:, layer].nonzero()[:, 0]
        # Batch rows of those groups: group 1 + r holds rows (1 + r)·b … (2 + r)·b − 1.
        batch_rows = ((1 + rows)[:, None] * b + torch.arange(b)[None]).flatten()

        def fn(x: torch.Tensor, hook: object) -> torch.Tensor:
            if len(rows) == 0:
                return x
            base = resid[layer]
            normed = w.ln1((base[None] + deltas[rows].to(base.device, base.dtype)).flatten(0, 1))
            new = torch.einsum("rpm,nmd->rpnd", normed, W[idx])
            if bias is not None:
                new = new + bias[idx]
            x[batch_rows[:, None], :, idx[None, :]] = new.to(x.dtype).transpose(1, 2)
            return x

        return fn

    out: list = []
    for layer, heads in receivers.by_layer.items():
        out.append((f"blocks.{layer}.hook_resid_pre", keep(layer)))
        out.append((f"blocks.{layer}.attn.hook_{receivers.input}", receive(layer, heads)))
    return out


def _sender_cache_names(senders: list[Sender], receivers: Receivers) -> list[str]:
    names = []
    for s in senders:
        names.append(
            f"blocks.{s.layer}.attn.hook_z"
            if s.kind == "head"
            else f"blocks.{s.layer}.hook_mlp_out"
        )
    return list(dict.fromkeys(names))


def path_patch(
    model: TransformerBridge,
    pairs: PromptPairs,
    *,
    senders: str | Sequence = "heads",
    receivers: str | Sequence,
    receiver_input: str | None = None,
    direction: Direction = "denoise",
    metric: str | MetricFn = "logit_diff",
    memory_budget: float = 2**30,
    max_rows: int = 1024,
    progress: bool = True,
) -> PatchResult | float:
    """Path patching: the metric when the senders' clean-minus-corrupted outputs reach only
    the receivers' inputs, every other reader still seeing the corrupted values.

    Args:
        senders: component ids (``"L3H5"``, ``"MLP2"``, or ``(3, 5)`` for a head) patched
            together, giving one float; or ``"heads"`` (default) for a map with every head
            as a sender on its own, a :class:`PatchResult` over layer × head (target
            ``"path_heads"``).
        receivers: heads (``"L9H6"`` or ``(9, 6)``) whose ``receiver_input`` reads the
            senders, or ``"logits"`` (the final residual stream, before ``ln_final``).
        receiver_input: ``"q"``, ``"k"`` or ``"v"`` for heads (under grouped-query attention
            a head's k/v input is its KV head's, shared with its group), ``"resid"`` for the
            logits; by default ``"q"``, or ``"resid"`` with ``receivers="logits"``.
        direction: ``"denoise"`` runs the corrupted prompts with the senders' clean outputs
            on the path; ``"noise"`` runs clean with the corrupted outputs.
        metric: as for :func:`~circuitviz.engine.patch`.
        memory_budget: bytes one batched pass may use; a bigger map is chunked to fit.

    A sender reaches only receivers in later layers. Explicit senders must all come before
    every receiver; in a map, a head with no later receiver keeps the unpatched metric
    (listed in ``extra["no_path"]``).

    Equals ``transformer_lens.patching.get_act_patch_direct_path`` for one sender head and
    one receiver head (with the metric averaged over the batch). Pairs may differ in length
    (each corrupted prompt as long as its clean one): they are left-padded and masked, as
    :func:`~circuitviz.engine.patch` does, so the result is the mean of each pair's own.
    """
    if (seam := backends.route(model, "path_patch")) is not None:
        return seam(
            model,
            pairs,
            senders=senders,
            receivers=receivers,
            receiver_input=receiver_input,
            direction=direction,
            metric=metric,
            memory_budget=memory_budget,
            max_rows=max_rows,
            progress=progress,
        )
    check_direction(direction)
    spec = parse_receivers(model, receivers, receiver_input)
    weights = _check_weights(model, spec)
    is_map, rows = sender_rows(model, senders, spec)
    names = _sender_cache_names([s for row in rows for s in row], spec)
    base, clean_acts, corr_acts = baselines(
        model, pairs, metric, cache={"clean": names, "corrupted": names}
    )
    tokens = base.tokens
    src, ref, run_tokens = (
        (clean_acts, corr_acts, tokens.corrupted)
        if direction == "denoise"
        else (corr_acts, clean_acts, tokens.clean)
    )
    n_layers = model.cfg.n_layers
    values = torch.empty(len(rows))
    n_forward = 2
    if rows:
        with torch.inference_mode():
            deltas = sender_deltas(model, rows, src, ref)  # [row, batch, pos, d_model]
        # reach[r, L]: row r's senders all write before layer L (n_layers: the logits).
        last = torch.tensor([max(s.layer for s in row) for row in rows])
        reach = last[:, None] < torch.arange(n_layers + 1)[None, :]
        per_pass, size = pass_shape(model, tokens, memory_budget, max_rows, len(rows))
        starts = range(0, len(rows), size)
        groups = [slice(p, p + per_pass) for p in range(0, tokens.batch, per_pass)]
        # More than one prompt in a pass: tile the model's per-prompt mask onto the groups.
        pre = (
            [(m, _hooks.tile_prompt_kwargs) for m in _hooks.attention_modules(model)]
            if per_pass > 1
            else []
        )

        def mask(rows: slice) -> torch.Tensor | None:
            m = tokens.attention_mask
            return None if m is None else m[rows]

        bar = tqdm(
            total=len(starts) * len(groups),
            desc="path patching",
            disable=not progress,
            leave=False,
        )
        try:
            with torch.inference_mode():
                for start in starts:
                    stop = min(start + size, len(rows))
                    logits = []
                    for g in groups:
                        fwd = _receiver_hooks(
                            spec, weights, deltas[start:stop, g], reach[start:stop]
                        )
                        out = final_logits(
                            model, run_tokens[g], fwd, attention_mask=mask(g), pre=pre
                        )
                        b = out.shape[0] // (1 + stop - start)
                        logits.append(out[b:].reshape(stop - start, b, -1))
                        n_forward += 1
                        bar.update()
                    stacked = torch.cat(logits, dim=1)  # [rows, batch, d_vocab]
                    for j in range(stop - start):
                        values[start + j] = base.metric(stacked[j])
        finally:
            bar.close()
    if not is_map:
        return float(values[0])
    return path_result(
        model,
        tokens,
        spec,
        rows,
        values,
        direction=direction,
        metric=base.metric,
        clean=base.clean,
        corrupted=base.corrupted,
        extra={"forward_passes": n_forward},
    )


def sender_rows(
    model: TransformerBridge, senders: str | Sequence, spec: Receivers
) -> tuple[bool, list[list[Sender]]]:
    """``(is_map, rows)``: one row of senders patched together per value — every head on
    its own that reaches a receiver for ``senders="heads"``, else the senders given."""
    if isinstance(senders, str) and senders == "heads":
        grid = [
            Sender("head", layer, head)
            for layer in range(model.cfg.n_layers)
            for head in range(model.cfg.n_heads)
        ]
        return True, [[s] for s in grid if spec.reached_by(s)]
    chosen = [_parse_sender(model, item) for item in _as_list(senders, "senders")]
    for s in chosen:
        if not spec.before_all(s):
            late = [f"L{layer}" for layer in spec.by_layer if layer <= s.layer]
            raise InputError(
                f"Sender {s.id} runs after receiver layer(s) {', '.join(late)} read their "
                f"{spec.input!r} input: a path goes from an earlier layer to a later one. "
                "Pick senders in earlier layers or receivers in later ones."
            )
    return False, [list(dict.fromkeys(chosen))]


def path_result(
    model: TransformerBridge,
    tokens: Tokens,
    spec: Receivers,
    rows: list[list[Sender]],
    values: torch.Tensor,
    *,
    direction: Direction,
    metric: Any,
    clean: float,
    corrupted: float,
    extra: dict[str, Any],
) -> PatchResult:
    """The layer × head map of a ``senders="heads"`` run: ``values[r]`` for the head of
    ``rows[r]``; a head that reaches no receiver keeps the unpatched metric."""
    n_layers = model.cfg.n_layers
    unpatched = corrupted if direction == "denoise" else clean
    full = torch.full((n_layers, model.cfg.n_heads), unpatched)
    reached = [row[0] for row in rows]
    for s, v in zip(reached, values.tolist(), strict=True):
        full[s.layer, s.head] = v
    reached_ids = {s.id for s in reached}
    no_path = [
        head_id(layer, head)
        for layer in range(n_layers)
        for head in range(model.cfg.n_heads)
        if head_id(layer, head) not in reached_ids
    ]
    return patch_result(
        model,
        tokens,
        "path_heads",
        full,
        direction=direction,
        method="path",
        metric=metric,
        clean=clean,
        corrupted=corrupted,
        extra={
            "receivers": list(spec.names),
            "receiver_input": spec.input,
            "no_path": no_path,
            **extra,
        },
        axes=("layer", "head"),
    )
